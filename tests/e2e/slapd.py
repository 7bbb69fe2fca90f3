# -*- test-case-name: tests.e2e.test_ldap_directory -*-
"""
A private, real OpenLDAP C{slapd} for the end-to-end tests of the LDAP
directory (L{SlapdServer}), and a fixture that shares one between the tests
of a module (L{SharedSlapd}): started by the first test that needs it,
stopped once the module's last test has run.

Its configuration (a C{slapd.conf} with the suffix L{SUFFIX}), database,
certificates and log live in a temporary folder of their own; it listens on
free loopback ports only: C{ldap://} (StartTLS offered) and C{ldaps://},
with a certificate for C{localhost} from a test authority. Accounts are
loaded with C{slapadd} before it starts, from L{LDAPUser}s; tests change
entries while it runs with C{ldapmodify} (L{SlapdServer.modify}).

The tests depend on nothing outside the project but the Debian packages
C{slapd} and C{ldap-utils} (L{requireSlapd}: missing, they skip the test, or
fail it when C{CI} is set, as L{tests.e2e.harness.requirePeer} does).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.trial.runner import TestLoader
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase, TestSuite

from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM
from tests.e2e.harness import _accepts, _deferred, _readText, freePort, sleep

__all__ = [
    "BIND_DN",
    "BIND_PASSWORD",
    "LDAPUser",
    "PEOPLE",
    "SCHEMA",
    "SUFFIX",
    "SharedSlapd",
    "SlapdServer",
    "findProgram",
    "requireSlapd",
    "rfc5803",
    "ssha",
]

#: The test directory's suffix.
SUFFIX = "dc=corp,dc=example"

#: Where the people are.
PEOPLE = f"ou=people,{SUFFIX}"

#: The gateway's service account: it may read people's entries, nothing else.
BIND_DN = f"cn=imgateway,ou=services,{SUFFIX}"

#: Its password.
BIND_PASSWORD = "service secret"

#: The directory manager (writes by the tests, with ldapmodify).
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root secret"

#: The name the server's certificate is for (the URLs use it).
HOSTNAME = "localhost"

#: Folders where Debian puts slapd and its tools, besides PATH.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

#: How long slapd may take to listen, and to stop, in seconds.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_POLL = 0.05

#: A schema for the tests: a home-server attribute and a SCRAM-verifier
#: attribute (RFC 5803 form), on an auxiliary class. The OIDs are under
#: OpenLDAP's experimental arc (1.3.6.1.4.1.4203.666): test use only.
SCHEMA = """\
attributetype ( 1.3.6.1.4.1.4203.666.11.7001.1 NAME 'imgatewayHomeServer'
    DESC 'The imgateway home server of a user (test schema)'
    EQUALITY caseIgnoreMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.4203.666.11.7001.2 NAME 'imgatewayScram'
    DESC 'SCRAM verifiers of a user, RFC 5803 form (test schema)'
    EQUALITY octetStringMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )
objectclass ( 1.3.6.1.4.1.4203.666.11.7001.3 NAME 'imgatewayAccount'
    DESC 'An imgateway user (test schema)'
    AUXILIARY MAY ( imgatewayHomeServer $ imgatewayScram ) )
"""

_CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {schema}

pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb

TLSCACertificateFile {ca}
TLSCertificateFile {certificate}
TLSCertificateKeyFile {key}

database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{rootDN}"
rootpw "{rootPassword}"
directory {directory}/db

access to attrs=userPassword
    by anonymous auth
    by * none
access to attrs=imgatewayScram
    by dn.exact="{bindDN}" read
    by * none
access to *
    by dn.exact="{bindDN}" read
    by self read
    by * none
"""


def findProgram(name: str) -> str | None:
    """
    Find one of OpenLDAP's programs on C{PATH} or in the C{sbin} folders
    (where Debian installs C{slapd}, off a user's C{PATH}).
    """
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))


def _missing() -> str | None:
    """
    @return: Why slapd cannot run here, or C{None} if it can.
    """
    for program, package in (("slapd", "slapd"), ("slapadd", "slapd"), ("ldapmodify", "ldap-utils")):
        if findProgram(program) is None:
            return f"{program} is not installed (install the Debian packages slapd and ldap-utils; run-tests.sh does as root)"
    if not os.path.exists("/usr/lib/ldap/back_mdb.so") or not os.path.exists("/etc/ldap/schema/core.schema"):
        return "slapd's mdb backend or schemas are missing (/usr/lib/ldap, /etc/ldap/schema: the Debian package slapd)"
    return None


def requireSlapd(testCase: SynchronousTestCase) -> None:
    """
    Skip the test if slapd and ldap-utils are missing, or fail it if the
    environment variable C{CI} is set (so that CI cannot pass by skipping
    what it was meant to run).
    """
    why = _missing()
    if why is None:
        return
    if os.environ.get("CI"):
        testCase.fail(f"{why}; CI is set, so a test that needs slapd fails instead of skipping")
    raise SkipTest(why)


def ssha(password: str, salt: bytes | None = None) -> str:
    """
    An OpenLDAP C{{SSHA}} C{userPassword} value.
    """
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def rfc5803(password: str, mechanism: str = "SCRAM-SHA-256", iterations: int = 4096) -> str:
    """
    A SCRAM verifier of C{password} in the form of RFC 5803
    (C{SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>}), derived
    from the password prepared with SASLprep.
    """
    from imgateway.auth.passwords import SCRAM_HASHES, ScramVerifier, preparePassword

    salt = os.urandom(16)
    v = ScramVerifier.derive(SCRAM_HASHES[mechanism], preparePassword(password).encode("utf-8"), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{mechanism}${iterations}:{b64(v.salt)}${b64(v.storedKey)}:{b64(v.serverKey)}"


def _ldif(attributes: Sequence[tuple[str, str]]) -> str:
    """
    LDIF lines of an entry, base64 for values that need it.
    """
    lines = []
    for name, value in attributes:
        safe = value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")) and not value.endswith(" ")
        if safe:
            lines.append(f"{name}: {value}")
        else:
            lines.append(f"{name}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return "\n".join(lines) + "\n"


@frozen
class LDAPUser:
    """
    A person in the test directory: C{uid=<uid>,ou=people,dc=corp,dc=example}.

    @ivar uid: Their C{uid} (and RDN).
    @ivar password: Their password (stored as C{{SSHA}}), or C{None} for
        an entry without one.
    @ivar mail: Their C{mail} values.
    @ivar displayName: Their C{displayName}, or C{""} for none.
    @ivar home: Their C{imgatewayHomeServer}, or C{""} for none.
    @ivar employeeType: Their C{employeeType} values (the tests mark
        disabled accounts with C{disabled}).
    @ivar scram: Their C{imgatewayScram} values.
    """

    uid: str
    password: str | None = field(repr=False)
    mail: tuple[str, ...] = ()
    displayName: str = ""
    home: str = ""
    employeeType: tuple[str, ...] = ()
    scram: tuple[str, ...] = field(default=(), repr=False)

    @property
    def dn(self) -> str:
        """
        The entry's DN.
        """
        return f"uid={self.uid},{PEOPLE}"

    def ldif(self) -> str:
        """
        The entry as LDIF.
        """
        attributes = [("dn", self.dn), ("objectClass", "inetOrgPerson"), ("objectClass", "imgatewayAccount")]
        attributes += [("uid", self.uid), ("cn", self.displayName or self.uid), ("sn", self.uid)]
        attributes += [("mail", m) for m in self.mail]
        if self.displayName:
            attributes.append(("displayName", self.displayName))
        if self.home:
            attributes.append(("imgatewayHomeServer", self.home))
        attributes += [("employeeType", t) for t in self.employeeType]
        attributes += [("imgatewayScram", s) for s in self.scram]
        if self.password is not None:
            attributes.append(("userPassword", ssha(self.password)))
        return _ldif(attributes)


def _baseLDIF() -> str:
    entries = [
        [("dn", SUFFIX), ("objectClass", "dcObject"), ("objectClass", "organization"), ("o", "Corp"), ("dc", "corp")],
        [("dn", PEOPLE), ("objectClass", "organizationalUnit"), ("ou", "people")],
        [("dn", f"ou=services,{SUFFIX}"), ("objectClass", "organizationalUnit"), ("ou", "services")],
        [
            ("dn", BIND_DN),
            ("objectClass", "organizationalRole"),
            ("objectClass", "simpleSecurityObject"),
            ("cn", "imgateway"),
            ("userPassword", ssha(BIND_PASSWORD)),
        ],
    ]
    return "\n".join(_ldif(e) for e in entries)


class SlapdServer:
    """
    A real C{slapd} on a configuration, database and certificates of its
    own in a temporary folder, listening on free loopback ports.

    @ivar directory: Its folder.
    @ivar port: Its C{ldap://} port (StartTLS offered).
    @ivar tlsPort: Its C{ldaps://} port.
    @ivar caPath: The certificate of the authority that issued its
        certificate (for C{localhost}).
    @ivar logPath: Its log (C{stats} level: connections, binds, searches).
    @ivar process: The running process, or C{None}.
    """

    def __init__(self, users: Sequence[LDAPUser]) -> None:
        """
        Make the folder, configuration, certificates and database; start
        nothing yet.

        @param users: The people to load.
        """
        slapadd = findProgram("slapadd")
        assert slapadd is not None
        self.directory = tempfile.mkdtemp(prefix="imgateway-slapd-")
        self.port = freePort()
        self.tlsPort = freePort()
        self.logPath = os.path.join(self.directory, "slapd.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        authority = CertificateAuthority()
        key, certificate = authority.issue([HOSTNAME])
        self.caPath = writePEM(os.path.join(self.directory, "ca.pem"), certificatePEM(authority.certificate))
        certificatePath = writePEM(os.path.join(self.directory, "server.pem"), certificatePEM(certificate))
        keyPath = writePEM(os.path.join(self.directory, "server.key"), keyPEM(key))
        schemaPath = os.path.join(self.directory, "imgateway-test.schema")
        with open(schemaPath, "w", encoding="ascii") as f:
            f.write(SCHEMA)
        self.configPath = os.path.join(self.directory, "slapd.conf")
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(
                _CONFIG.format(
                    schema=schemaPath,
                    directory=self.directory,
                    ca=self.caPath,
                    certificate=certificatePath,
                    key=keyPath,
                    suffix=SUFFIX,
                    rootDN=ROOT_DN,
                    rootPassword=ROOT_PASSWORD,
                    bindDN=BIND_DN,
                )
            )
        os.makedirs(os.path.join(self.directory, "db"))
        ldif = _baseLDIF() + "\n" + "\n".join(u.ldif() for u in users)
        done = subprocess.run(
            [slapadd, "-f", self.configPath, "-q"], input=ldif.encode("utf-8"), capture_output=True, timeout=60
        )
        if done.returncode != 0:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise AssertionError(f"slapadd exited {done.returncode}: {done.stderr.decode(errors='replace')}")

    @property
    def url(self) -> str:
        """
        The C{ldap://} URL of this server.
        """
        return f"ldap://{HOSTNAME}:{self.port}"

    @property
    def tlsURL(self) -> str:
        """
        The C{ldaps://} URL of this server.
        """
        return f"ldaps://{HOSTNAME}:{self.tlsPort}"

    def command(self) -> list[str]:
        """
        The command line that runs this server in the foreground.
        """
        slapd = findProgram("slapd")
        assert slapd is not None
        listen = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tlsPort}/"
        return [slapd, "-f", self.configPath, "-h", listen, "-d", "stats"]

    @property
    def running(self) -> bool:
        """
        Whether it runs.
        """
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """
        @return: Everything it logged so far.
        """
        return _readText(self.logPath)

    def start(self) -> Deferred[None]:
        """
        Start it and wait until both ports accept connections.

        @return: Fires once it is up; fails (with its log) if it exits
            first or is not up within L{START_TIMEOUT}.
        """

        async def run() -> None:
            if self.running:
                raise AssertionError("slapd is already running")
            self._log = open(self.logPath, "ab")
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + START_TIMEOUT
            while not (_accepts(self.port) and _accepts(self.tlsPort)):
                code = self.process.poll()
                if code is not None:
                    self._reap()
                    raise AssertionError(f"slapd exited with status {code} while starting:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.stopNow()
                    raise AssertionError(f"slapd did not listen within {START_TIMEOUT} s:\n{self.log()}")
                await sleep(_POLL)

        return _deferred(run())

    def _reap(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """
        Send it C{sig} and wait (letting the reactor run) until it has
        exited; kill it after L{STOP_TIMEOUT}.

        @return: Fires with its exit status.
        """

        async def run() -> int:
            process = self.process
            if process is None:
                raise AssertionError("slapd is not running")
            if process.poll() is None:
                process.send_signal(sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None:
                if time.monotonic() > deadline:
                    process.kill()
                    break
                await sleep(_POLL)
            return self._reap()

        return _deferred(run())

    def restart(self) -> Deferred[None]:
        """
        Stop it (SIGTERM) and start it again on the same ports and data.
        """

        async def run() -> None:
            await self.stop()
            await self.start()

        return _deferred(run())

    def stopNow(self) -> None:
        """
        Stop it, blocking (for when no reactor runs: after the module's
        tests, or at exit).
        """
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
        self._reap()

    def destroy(self) -> None:
        """
        Stop it and remove its folder.
        """
        self.stopNow()
        shutil.rmtree(self.directory, ignore_errors=True)

    def modify(self, ldif: str) -> None:
        """
        Apply an LDIF change (C{changetype: modify}, C{add}, C{delete}) as
        the directory manager, with C{ldapmodify} (blocking briefly).

        @raise AssertionError: If ldapmodify fails.
        """
        ldapmodify = findProgram("ldapmodify")
        assert ldapmodify is not None
        done = subprocess.run(
            [ldapmodify, "-x", "-H", f"ldap://127.0.0.1:{self.port}", "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode("utf-8"),
            capture_output=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise AssertionError(f"ldapmodify exited {done.returncode}: {done.stderr.decode(errors='replace')}")

    def replace(self, dn: str, attribute: str, *values: str) -> None:
        """
        Replace (or, with no C{values}, delete) an attribute of an entry.
        """
        lines = [f"dn: {dn}", "changetype: modify", f"replace: {attribute}"]
        lines += [_ldif([(attribute, v)]).rstrip("\n") for v in values]
        self.modify("\n".join(lines) + "\n-\n")


class SharedSlapd:
    """
    One L{SlapdServer} shared by the tests of a module: made and started by
    the first test that asks for it (L{require}), stopped and removed after
    the module's last test when the module is run whole (its C{testSuite}
    is L{suite}), and at exit in any case.

    A test that changes entries must put them back before it ends; a test
    that stops the server must start it again.
    """

    def __init__(self, users: Sequence[LDAPUser]) -> None:
        """
        @param users: The people to load.
        """
        self.users = list(users)
        self.server: SlapdServer | None = None
        self._registered = False

    def require(self, testCase: TestCase) -> Deferred[SlapdServer]:
        """
        Skip or fail C{testCase} if slapd is missing (L{requireSlapd});
        otherwise start the shared server if it is not running.

        @return: Fires with the running server.
        """

        async def run() -> SlapdServer:
            requireSlapd(testCase)
            if self.server is None:
                self.server = SlapdServer(self.users)
                if not self._registered:
                    atexit.register(self.destroy)
                    self._registered = True
            if not self.server.running:
                await self.server.start()
            return self.server

        return _deferred(run())

    def destroy(self) -> None:
        """
        Stop the server and remove its folder (nothing if never started).
        """
        server, self.server = self.server, None
        if server is not None:
            server.destroy()

    def suite(self, moduleName: str) -> TestSuite:
        """
        The tests of a module, as one suite that ends by L{destroy}ing the
        server. Give it as the module's C{testSuite}:
        C{def testSuite(): return SHARED.suite(__name__)}.
        """
        loader = TestLoader()
        module = sys.modules[moduleName]
        suite = _SuiteThenDestroy(self)
        for testClass in loader.findTestClasses(module):
            suite.addTest(loader.loadClass(testClass))
        return suite


class _SuiteThenDestroy(TestSuite):
    """
    A suite that destroys a L{SharedSlapd} once its tests have run.
    """

    def __init__(self, shared: SharedSlapd) -> None:
        super().__init__()
        self._shared = shared

    def run(self, result: Any, debug: bool = False) -> Any:
        try:
            return super().run(result, debug)
        finally:
            self._shared.destroy()
