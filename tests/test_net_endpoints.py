# -*- test-case-name: tests.test_net_endpoints -*-
"""
Tests for L{imgateway.net.endpoints}: the files endpoint strings name,
checked where a listener's string is read from the configuration
(L{imgateway.config.ConfigTable.endpoints}) and where a client endpoint
string is accepted.
"""

from __future__ import annotations

import datetime
import os
import warnings

from twisted.internet.endpoints import _parse, clientFromString, quoteStringArgument
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath, UnlistableError
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import ConfigTable
from imgateway.core.errors import ConfigError
from imgateway.net.certificates import CertificateProblem
from imgateway.net.endpoints import (
    checkClientEndpoint,
    checkServerEndpoint,
    clientEndpointFromString,
    redirectedDescription,
    splitDescription,
)
from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM
from tests.test_net_certificates import DAY, NOW


def q(path: str) -> str:
    """
    C{path} quoted for an endpoint string.
    """
    quoted: str = quoteStringArgument(path)
    return quoted


class SplitDescriptionTests(SynchronousTestCase):
    """
    L{splitDescription} splits as Twisted's own parser does.
    """

    def test_likeTwisted(self) -> None:
        """
        Positional and keyword parameters, values holding C{=}, escaped
        colons and backslashes, and empty parameters split as Twisted's
        (private) parser splits them.
        """
        for description in [
            "tcp:5300:interface=127.0.0.1",
            r"tls:/etc/imgateway/certs:port=5301:interface=\:\:1",
            "tls:gw.corp.example:5301:trustRoots=/etc/ssl/corp-ca",
            "tls:h:1:endpoint=" + q("tcp:127.0.0.1:5301"),
            "ssl:443:privateKey=a=b.pem",
            "tls:" + q(r"C:\odd:folder") + ":port=1",
            "unix::mode=660",
            "tls",
        ]:
            self.assertEqual(splitDescription(description), tuple(_parse(description)), description)

    def test_quoted(self) -> None:
        """
        A path quoted with L{quoteStringArgument} comes back as it was.
        """
        path = r"/srv/a:b\c"
        self.assertEqual(splitDescription(f"tls:{q(path)}:port=1"), (["tls", path], {"port": "1"}))


class ServerEndpointTests(SynchronousTestCase):
    """
    L{checkServerEndpoint}.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority(NOW)
        self.folder = FilePath(self.mktemp())
        self.now = NOW.timestamp()

    def pair(self, name: str = "gw.pem", **dates: datetime.datetime) -> str:
        """
        Write a key and its certificate to one file of the folder.

        @return: Its path.
        """
        key, certificate = self.authority.issue(**dates)  # type: ignore[arg-type]
        return writePEM(self.folder.child(name), keyPEM(key), certificatePEM(certificate))

    def problem(self, description: str) -> str:
        return str(self.assertRaises(CertificateProblem, checkServerEndpoint, description, self.now))

    def test_tls(self) -> None:
        """
        The folder of a C{tls:} string is checked, given by position or as
        C{path=}.
        """
        self.pair()
        checkServerEndpoint(f"tls:{q(self.folder.path)}:port=5301:interface=127.0.0.1", self.now)
        checkServerEndpoint(f"tls:path={q(self.folder.path)}:port=5301", self.now)
        missing = self.folder.child("nowhere").path
        self.assertEqual(self.problem(f"tls:{q(missing)}:port=5301"), f"tls: folder {missing} does not exist")
        self.assertEqual(self.problem(f"TLS:path={q(missing)}"), f"tls: folder {missing} does not exist")

    def test_tlsFile(self) -> None:
        """
        A C{tls:} string naming a file instead of a folder is refused.
        """
        path = self.pair()
        self.assertIn(f"{path} is a file: put it in a folder", self.problem(f"tls:{q(path)}:port=5301"))

    def test_tlsExpired(self) -> None:
        """
        An expired certificate in the folder is refused.
        """
        path = self.pair(notBefore=NOW - 30 * DAY, notAfter=NOW - DAY)
        self.assertIn(f"{path}: the certificate for gw.corp.example expired", self.problem(f"tls:{q(self.folder.path)}:port=1"))

    def test_ssl(self) -> None:
        """
        An C{ssl:} string's C{privateKey} (by position or name), C{certKey}
        and C{extraCertChain} are checked: they must be readable, match and
        be valid now.
        """
        both = self.pair()
        checkServerEndpoint(f"ssl:5301:privateKey={q(both)}", self.now)
        checkServerEndpoint(f"ssl:5301:{q(both)}", self.now)
        key, certificate = self.authority.issue()
        keyPath = writePEM(self.folder.child("gw.key"), keyPEM(key))
        certPath = writePEM(self.folder.child("gw.crt"), certificatePEM(certificate))
        chain = writePEM(self.folder.child("chain.crt"), certificatePEM(self.authority.certificate))
        checkServerEndpoint(f"ssl:5301:privateKey={q(keyPath)}:certKey={q(certPath)}:extraCertChain={q(chain)}", self.now)
        self.assertEqual(
            self.problem(f"ssl:5301:privateKey={q(keyPath)}:certKey={q(both)}"),
            f"{keyPath} does not match the certificate in {both}",
        )
        old = self.pair("old.pem", notBefore=NOW - 30 * DAY, notAfter=NOW - DAY)
        self.assertIn(f"{old}: the certificate for gw.corp.example expired", self.problem(f"ssl:5301:privateKey={q(old)}"))
        folder = self.folder.path
        self.assertEqual(self.problem(f"ssl:5301:privateKey={q(folder)}"), f"{folder} is a folder, not a PEM file")

    def test_sslDefaultKey(self) -> None:
        """
        Without C{privateKey}, C{ssl:} reads C{server.pem} in the current
        directory, as Twisted does; the message gives its absolute path.
        """
        expected = f"cannot read {os.path.abspath('server.pem')}: No such file or directory"
        self.assertEqual(self.problem("ssl:5301"), expected)

    def test_others(self) -> None:
        """
        Endpoint types that name no certificate pass, as do strings Twisted
        itself will refuse (for it to say why).
        """
        for description in ["tcp:5300:interface=127.0.0.1", "tcp6:5300", "unix:/tmp/imgw.sock", "systemd:domain=INET:index=0", "tls", ""]:
            checkServerEndpoint(description, self.now)


class ClientEndpointTests(SynchronousTestCase):
    """
    L{checkClientEndpoint} and L{clientEndpointFromString}.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority(NOW)
        self.folder = FilePath(self.mktemp())
        self.ca = writePEM(self.folder.child("ca").child("ca.pem"), certificatePEM(self.authority.certificate))
        self.now = NOW.timestamp()

    def problem(self, description: str) -> str:
        return str(self.assertRaises(CertificateProblem, checkClientEndpoint, description, self.now))

    def test_trustRootsFile(self) -> None:
        """
        C{trustRoots} naming a PEM file gets a clear error; Twisted's own
        parser fails with an C{UnlistableError} that names nothing.
        """
        description = f"tls:gw.corp.example:5301:trustRoots={q(self.ca)}"
        self.assertEqual(
            self.problem(description),
            f"trustRoots must be a folder of PEM files; {self.ca} is a file: put it in a folder",
        )
        self.assertRaises(UnlistableError, clientFromString, MemoryReactor(), description)

    def test_trustRootsFolder(self) -> None:
        """
        C{trustRoots} naming a folder of CA certificates passes, and
        L{clientEndpointFromString} makes the endpoint.
        """
        description = f"tls:gw.corp.example:5301:trustRoots={q(self.folder.child('ca').path)}"
        checkClientEndpoint(description, self.now)
        endpoint = clientEndpointFromString(MemoryReactor(), description)
        self.assertTrue(IStreamClientEndpoint.providedBy(endpoint))

    def test_fromStringChecks(self) -> None:
        """
        L{clientEndpointFromString} checks before Twisted parses.
        """
        e = self.assertRaises(
            CertificateProblem, clientEndpointFromString, MemoryReactor(), f"tls:h:1:trustRoots={q(self.ca)}"
        )
        self.assertIn("trustRoots must be a folder of PEM files", str(e))

    def test_nested(self) -> None:
        """
        A C{tls:} string given as the C{endpoint=} of another is checked
        too.
        """
        inner = f"tls:relay.corp.example:5301:trustRoots={q(self.ca)}"
        self.assertIn("trustRoots must be a folder", self.problem(f"tls:gw.corp.example:5301:endpoint={q(inner)}"))

    def test_clientCertificate(self) -> None:
        """
        A client C{certificate} must be readable, valid now and match its
        C{privateKey} (by default, in the same file); a key alone is
        refused (Twisted ignores it).
        """
        key, certificate = self.authority.issue()
        both = writePEM(self.folder.child("client.pem"), keyPEM(key), certificatePEM(certificate))
        checkClientEndpoint(f"tls:h:1:certificate={q(both)}", self.now)
        other, _ = self.authority.issue()
        wrong = writePEM(self.folder.child("other.key"), keyPEM(other))
        self.assertEqual(
            self.problem(f"tls:h:1:certificate={q(both)}:privateKey={q(wrong)}"),
            f"{wrong} does not match the certificate in {both}",
        )
        self.assertEqual(
            self.problem(f"tls:h:1:privateKey={q(wrong)}"), f"privateKey={wrong} needs certificate= (Twisted ignores a key alone)"
        )
        self.assertIn("expired", str(self.assertRaises(CertificateProblem, checkClientEndpoint, f"tls:h:1:certificate={q(both)}", (NOW + 365 * DAY).timestamp())))

    def test_ssl(self) -> None:
        """
        An C{ssl:} client string's C{caCertsDir} is a folder too, named as
        such in the error.
        """
        self.assertEqual(
            self.problem(f"ssl:h:1:caCertsDir={q(self.ca)}"),
            f"caCertsDir must be a folder of PEM files; {self.ca} is a file: put it in a folder",
        )
        checkClientEndpoint(f"ssl:h:1:caCertsDir={q(self.folder.child('ca').path)}", self.now)

    def test_others(self) -> None:
        """
        Other client strings pass unchecked.
        """
        for description in ["tcp:127.0.0.1:5300", "unix:/tmp/imgw.sock", "tls:gw.corp.example:5301", ""]:
            checkClientEndpoint(description, self.now)


class ConfigTests(SynchronousTestCase):
    """
    L{ConfigTable.endpoints} checks the certificates of every listener
    before any port opens, with one message naming the file, table, key and
    string.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority(NOW)
        self.folder = FilePath(self.mktemp())

    def endpoints(self, *listen: str) -> tuple[str, ...]:
        table = ConfigTable({"listen": list(listen)}, "x.toml [native]")
        with warnings.catch_warnings():
            # Twisted's tls: parser calls pyOpenSSL APIs that warn.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="twisted")
            return table.endpoints("listen", MemoryReactor())

    def test_badFolder(self) -> None:
        """
        A C{tls:} listener whose folder does not exist stops the parse,
        even after a good listener.
        """
        missing = self.folder.child("certs").path
        description = f"tls:{q(missing)}:port=5301:interface=127.0.0.1"
        e = self.assertRaises(ConfigError, self.endpoints, "tcp:5300:interface=127.0.0.1", description)
        self.assertEqual(str(e), f"x.toml [native]: listen: {description!r}: tls: folder {missing} does not exist")

    def test_expired(self) -> None:
        """
        A C{tls:} folder holding an expired certificate stops the parse.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        key, old = self.authority.issue(notBefore=now - 30 * DAY, notAfter=now - DAY)
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(old))
        e = self.assertRaises(ConfigError, self.endpoints, f"tls:{q(self.folder.path)}:port=5301")
        self.assertIn(f"x.toml [native]: listen: 'tls:{self.folder.path}:port=5301': {path}: the certificate", str(e))

    def test_good(self) -> None:
        """
        A C{tls:} listener with a good folder is read as written.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        key, certificate = self.authority.issue(notBefore=now - DAY, notAfter=now + DAY)
        writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        description = f"tls:{q(self.folder.path)}:port=5301:interface=127.0.0.1"
        self.assertEqual(self.endpoints(description), (description,))


class RedirectedDescriptionTests(SynchronousTestCase):
    """
    L{redirectedDescription}: the endpoint string a redirect is followed
    with keeps the TLS choice and every other parameter.
    """

    def test_tcp(self) -> None:
        """
        A C{tcp:} endpoint gets the new host and port, and keeps its bind
        address and timeout.
        """
        self.assertEqual(
            redirectedDescription("tcp:127.0.0.1:5300:timeout=5:bindAddress=127.0.0.2", "hs2.corp.example", 5310),
            "tcp:host=hs2.corp.example:port=5310:timeout=5:bindAddress=127.0.0.2",
        )

    def test_tls(self) -> None:
        """
        A C{tls:} endpoint stays C{tls:} (its certificate check is then
        made against the new host's name), with its trust roots and client
        certificate.
        """
        self.assertEqual(
            redirectedDescription("tls:gw.corp.example:5301:trustRoots=/etc/ca:certificate=me.pem", "hs2.corp.example", 5311),
            "tls:host=hs2.corp.example:port=5311:trustRoots=/etc/ca:certificate=me.pem",
        )

    def test_tlsOverEndpoint(self) -> None:
        """
        The C{endpoint=} a C{tls:} endpoint connects over is redirected too
        (else the client would reach the router again).
        """
        self.assertEqual(
            redirectedDescription("tls:gw.corp.example:5301:endpoint=tcp\\:127.0.0.1\\:5301", "localhost", 5311),
            "tls:host=localhost:port=5311:endpoint=tcp\\:host=localhost\\:port=5311",
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 host is quoted as endpoint strings need it.
        """
        self.assertEqual(redirectedDescription("tcp:127.0.0.1:5300", "::1", 5310), "tcp:host=\\:\\:1:port=5310")

    def test_other(self) -> None:
        """
        An endpoint type that names no host and port cannot be redirected.
        """
        self.assertRaises(ValueError, redirectedDescription, "unix:/run/imgateway.sock", "hs2", 5310)
