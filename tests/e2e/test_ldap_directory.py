"""
End-to-end tests of the LDAP directory against a real OpenLDAP C{slapd}
that the tests configure and start on loopback (L{tests.e2e.slapd}): once
for the whole module, stopped after its last test.

First the directory on its own (look-ups, binds, StartTLS and C{ldaps://},
escaping, SCRAM verifiers, a restarted server), then a real C{twistd
imgateway} whose C{[directory]} is that slapd: users from LDAP log in over
the native face with PLAIN over TLS and exchange messages.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from imgateway.auth.checkers import Authenticator
from imgateway.auth.sasl import SASLFailure, SASLStep, clientMechanism, serverMechanism
from imgateway.core.address import Address
from imgateway.core.errors import AuthenticationFailed, DirectoryUnavailable
from imgateway.directory.ldap import DECOY_RDN, LDAPDirectory
from imgateway.directory.ldapconfig import LDAPConfig, parseLDAPURL
from imgateway.testing import writePEM
from tests.e2e.harness import (
    GatewayProcess,
    connectClient,
    failureOf,
    freePort,
    makeCertificates,
    rawConnect,
    reactor,
    sleep,
    tlsClientEndpoint,
    tlsServerEndpoint,
)
from tests.e2e import slapd
from tests.e2e.slapd import BIND_DN, BIND_PASSWORD, PEOPLE, LDAPUser, SharedSlapd, SlapdServer, rfc5803

DOMAIN = "corp.example"
ALICE = Address.fromParts("alice", DOMAIN)
BOB = Address.fromParts("bob", DOMAIN)
CAROL = Address.fromParts("carol", DOMAIN)
DAVE = Address.fromParts("dave", DOMAIN)
JEROME = Address.fromParts("jerome", DOMAIN)
TWIN = Address.fromParts("twin", DOMAIN)
NOBODY = Address.fromParts("nobody", DOMAIN)

PASSWORDS = {"alice": "alice in ldap", "bob": "bob in ldap", "carol": "carol in ldap", "dave": "dave in ldap", "jerome": "pässwörd ✓"}

USERS = [
    LDAPUser("alice", PASSWORDS["alice"], ("alice@corp.example",), "Alice Liddell", home="hs1"),
    LDAPUser("bob", PASSWORDS["bob"], ("Bob@Corp.Example",), "Bob Builder"),
    LDAPUser("carol", PASSWORDS["carol"], ("carol@corp.example",), "Carol", employeeType=("staff", "Disabled")),
    LDAPUser("dave", PASSWORDS["dave"], ("dave@corp.example",), scram=(rfc5803(PASSWORDS["dave"]), rfc5803(PASSWORDS["dave"], "SCRAM-SHA-1"))),
    LDAPUser("jerome", PASSWORDS["jerome"], ("jerome@corp.example",), "Jérôme"),
    LDAPUser("twin1", "twin", ("twin@corp.example",)),
    LDAPUser("twin2", "twin", ("twin@corp.example",)),
    # Whoever searches (uid=*...) unescaped finds this one first.
    LDAPUser("aaron", "aaron", ("aaron@corp.example",)),
]

#: The slapd of this module.
SLAPD = SharedSlapd(USERS)


def testSuite() -> Any:
    """
    The module's tests, stopping the shared slapd after the last.
    """
    return SLAPD.suite(__name__)


class SlapdTestCase(TestCase):
    """
    A test that needs the module's slapd (L{slapd}).
    """

    slapd: SlapdServer

    async def setUp(self) -> None:  # type: ignore[override]
        self.slapd = await SLAPD.require(self)

    def config(self, url: str | None = None, **kwargs: Any) -> LDAPConfig:
        """
        An L{LDAPConfig} for the module's slapd (C{ldap://} on loopback by
        default), reading the test schema's attributes.
        """
        values: dict[str, Any] = dict(
            url=parseLDAPURL(url or self.slapd.url),
            baseDN=PEOPLE,
            defaultHome="hs1",
            bindDN=BIND_DN,
            bindPassword=BIND_PASSWORD,
            homeAttribute="imgatewayHomeServer",
            disabledAttribute="employeeType",
            disabledValues=("disabled",),
            caCertificates=self.slapd.caPath,
            reconnectDelay=0.2,
            reconnectMaxDelay=1.0,
            timeout=5.0,
        )
        values.update(kwargs)
        return LDAPConfig(**values)

    def directory(self, url: str | None = None, **kwargs: Any) -> LDAPDirectory:
        """
        A directory on the module's slapd, closed when the test ends.
        """
        directory = LDAPDirectory(reactor(), self.config(url, **kwargs))
        self.addCleanup(directory.close)
        return directory

    def slapdLogSince(self, start: int) -> str:
        """
        What slapd logged since it had logged C{start} characters.
        """
        return self.slapd.log()[start:]


class DirectoryTests(SlapdTestCase):
    """
    L{LDAPDirectory} against slapd.
    """

    async def test_lookUp(self) -> None:
        """
        Users are found by their mail attribute (in any case), with their
        display name, home server (the default when the entry names none)
        and whether they are disabled; unknown users are C{None}.
        """
        directory = self.directory()
        alice = await directory.getAccount(ALICE)
        bob = await directory.getAccount(BOB)
        carol = await directory.getAccount(CAROL)
        assert alice is not None and bob is not None and carol is not None
        self.assertEqual((alice.displayName, alice.homeServer, alice.enabled, alice.credentials), ("Alice Liddell", "hs1", True, ""))
        self.assertEqual((bob.address, bob.displayName, bob.homeServer), (BOB, "Bob Builder", "hs1"))
        self.assertFalse(carol.enabled)
        self.assertIsNone(await directory.getAccount(NOBODY))
        self.assertIsNone(await directory.getAccount(TWIN))
        self.assertEqual([r.address.local for r in await directory.listAccounts(DOMAIN)], ["aaron", "alice", "bob", "carol", "dave", "jerome"])

    async def test_transports(self) -> None:
        """
        Passwords are checked by binding as the user, over plain LDAP on
        loopback, with StartTLS, and over C{ldaps://} (each verifying the
        server's certificate): the right password gives the account, a
        wrong one C{None}; a UTF-8 password works.
        """
        for directory in (
            self.directory(),
            self.directory(startTLS=True),
            self.directory(self.slapd.tlsURL),
        ):
            record = await directory.checkPassword(ALICE, PASSWORDS["alice"])
            assert record is not None
            self.assertEqual(record.address, ALICE)
            self.assertIsNone(await directory.checkPassword(ALICE, "not " + PASSWORDS["alice"]))
            self.assertIsNotNone(await directory.checkPassword(JEROME, PASSWORDS["jerome"]))
        log = self.slapd.log()
        self.assertRegex(log, r"conn=\d+ op=0 EXT oid=1\.3\.6\.1\.4\.1\.1466\.20037")
        self.assertIn("tls_ssf=", log)

    async def test_unknownUserBinds(self) -> None:
        """
        A password for an unknown user is checked all the same: slapd sees
        a search then a bind (as a DN that does not exist), as for a wrong
        password, and the answer is the same.
        """
        directory = self.directory(poolSize=1)
        await directory.getAccount(ALICE)
        start = len(self.slapd.log())
        self.assertIsNone(await directory.checkPassword(NOBODY, "guess"))
        self.assertIsNone(await directory.checkPassword(ALICE, "guess"))
        await sleep(0.1)
        operations = re.findall(r"op=\d+ (SRCH base|BIND dn=\"[^\"]*\" method|RESULT tag=97 err=\d+)", self.slapdLogSince(start))
        decoy = f'BIND dn="{DECOY_RDN},{PEOPLE}" method'
        alice = f'BIND dn="uid=alice,{PEOPLE}" method'
        self.assertEqual(
            [o for o in operations if o != f'BIND dn="{BIND_DN}" method' and not o.startswith("RESULT tag=97 err=0")],
            ["SRCH base", decoy, "RESULT tag=97 err=49", "SRCH base", alice, "RESULT tag=97 err=49"],
        )

    async def test_injection(self) -> None:
        """
        An address that would change an unescaped filter (C{*)(uid=*}
        would match everyone) finds no one, and its password (anyone's)
        is refused: slapd receives the address escaped.
        """
        directory = self.directory()
        evil = Address.fromParts("*)(uid=*", DOMAIN)
        start = len(self.slapd.log())
        self.assertIsNone(await directory.getAccount(evil))
        self.assertIsNone(await directory.checkPassword(evil, "aaron"))
        self.assertIsNone(await directory.checkPassword(Address.fromParts("*", DOMAIN), "aaron"))
        evilUid = Address.fromParts("*", DOMAIN)
        uidDirectory = self.directory(userFilter="(uid={local})")
        self.assertIsNone(await uidDirectory.getAccount(evilUid))
        await sleep(0.1)
        self.assertIn('filter="(mail=\\2A\\29\\28uid=\\2A@corp.example)"', self.slapdLogSince(start))

    async def test_scram(self) -> None:
        """
        With a C{scram_attribute}, accounts carry their RFC 5803 verifiers
        and a SCRAM exchange logs in (an account without verifiers fails
        as a wrong password would); PLAIN still binds.
        """
        directory = self.directory(scramAttribute="imgatewayScram")
        self.assertTrue(directory.scramAvailable)
        authenticator = Authenticator(directory, DOMAIN, lambda f, *a: Deferred.fromCoroutine(_call(f, *a)))
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            step = await _exchange(authenticator, mechanism, "dave", PASSWORDS["dave"])
            self.assertEqual(step.address, DAVE)
        failure = await failureOf(Deferred.fromCoroutine(_exchange(authenticator, "SCRAM-SHA-256", "alice", PASSWORDS["alice"])), SASLFailure)
        self.assertEqual(failure.condition, "not-authorized")
        self.assertEqual((await authenticator.checkPassword(ALICE, PASSWORDS["alice"])).address, ALICE)

    async def test_liveChanges(self) -> None:
        """
        Nothing is cached: a change in the directory is seen by the next
        look-up.
        """
        directory = self.directory()
        self.slapd.replace(f"uid=alice,{PEOPLE}", "imgatewayHomeServer", "hs2")
        self.addCleanup(self.slapd.replace, f"uid=alice,{PEOPLE}", "imgatewayHomeServer", "hs1")
        alice = await directory.getAccount(ALICE)
        assert alice is not None
        self.assertEqual(alice.homeServer, "hs2")

    async def test_untrustedCertificate(self) -> None:
        """
        A server whose certificate the configured authority did not issue
        is not used: the directory is unavailable, with the reason.
        """
        otherCA, _ = makeCertificates(os.path.abspath(self.mktemp()))
        directory = self.directory(self.slapd.tlsURL, caCertificates=otherCA, poolSize=1)
        error = await failureOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.assertIn("certificate verify failed", str(error))
        directory = self.directory(self.slapd.url, startTLS=True, caCertificates=otherCA, poolSize=1)
        error = await failureOf(directory.getAccount(ALICE), DirectoryUnavailable)

    async def test_wrongServicePassword(self) -> None:
        """
        A wrong service password leaves the directory unavailable, saying
        the bind was refused.
        """
        directory = self.directory(bindPassword="wrong", poolSize=1)
        error = await failureOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.assertIn(f"the bind as {BIND_DN} was refused: invalidCredentials (49)", str(error))

    async def test_restart(self) -> None:
        """
        While slapd is down, operations fail promptly with
        L{DirectoryUnavailable} (none hangs); once it is back, the pooled
        connections reconnect by themselves and operations work again.
        """
        directory = self.directory(poolSize=2)
        self.assertIsNotNone(await directory.getAccount(ALICE))
        await self.slapd.stop()
        try:
            began = time.monotonic()
            for _ in range(3):
                await failureOf(directory.checkPassword(ALICE, PASSWORDS["alice"]), DirectoryUnavailable)
            self.assertLess(time.monotonic() - began, 3.0)
        finally:
            await self.slapd.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                record = await directory.checkPassword(ALICE, PASSWORDS["alice"])
                break
            except DirectoryUnavailable:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.1)
        assert record is not None
        self.assertEqual(record.address, ALICE)
        self.assertIsNotNone(await directory.getAccount(BOB))


async def _call(f: Any, *args: Any) -> Any:
    return f(*args)


async def _exchange(authenticator: Authenticator, mechanism: str, user: str, password: str) -> SASLStep:
    """
    A whole SASL exchange between our client and server mechanisms.

    @return: The server's final step; raises L{SASLFailure} if it fails.
    """
    client = clientMechanism(mechanism, user, password)
    server = serverMechanism(mechanism, authenticator, DOMAIN, True)
    data = client.start()
    for _ in range(4):
        step = await server.step(data)
        if step.complete:
            client.verifyFinal(step.challenge or b"")
            return step
        assert step.challenge is not None
        data = client.step(step.challenge)
    raise AssertionError("too many steps")


class GatewayTests(SlapdTestCase):
    """
    A real C{twistd imgateway} with C{[directory] backend = "ldap"} on the
    module's slapd.
    """

    async def gateway(self, **directory: object) -> tuple[GatewayProcess, str, int]:
        """
        Start a gateway on slapd (over C{ldaps://}) with a native face on
        TCP and TLS.

        @return: The gateway, its CA certificate and its TLS port.
        """
        folder = os.path.abspath(self.mktemp())
        caPath, serverDir = makeCertificates(os.path.join(folder, "certificates"))
        passwordFile = writePEM(os.path.join(folder, "bind-password"), BIND_PASSWORD.encode() + b"\n")
        tcpPort, tlsPort = freePort(), freePort()
        table: dict[str, object] = {
            "backend": "ldap",
            "url": self.slapd.tlsURL,
            "ca_file": self.slapd.caPath,
            "bind_dn": BIND_DN,
            "bind_password_file": passwordFile,
            "base_dn": PEOPLE,
            "home_attribute": "imgatewayHomeServer",
            "disabled_attribute": "employeeType",
            "disabled_values": ["disabled"],
            "reconnect_delay": 0.2,
            "reconnect_max_delay": 1.0,
        }
        table.update(directory)
        gw = GatewayProcess(
            self,
            {
                "native": {"listen": [f"tcp:{tcpPort}:interface=127.0.0.1", tlsServerEndpoint(serverDir, tlsPort)]},
                "directory": table,
            },
            directory=os.path.join(folder, "gateway"),
            port=tcpPort,
            waitPorts=[tcpPort, tlsPort],
        )
        await gw.start()
        return gw, caPath, tlsPort

    async def test_loginAndMessages(self) -> None:
        """
        alice and bob, users of the LDAP directory, log in over TLS with
        PLAIN (the only mechanism offered: the directory keeps no SCRAM
        verifiers) and exchange messages; the gateway logged that it
        connected to the directory, and never the service password.
        """
        gw, caPath, tlsPort = await self.gateway()
        endpoint = tlsClientEndpoint(tlsPort, caPath)
        alice, aliceSees = await connectClient(self, endpoint, "alice", PASSWORDS["alice"])
        bob, bobSees = await connectClient(self, endpoint, "bob@corp.example", PASSWORDS["bob"])
        self.assertEqual((await alice.options())["Mechanisms"], "PLAIN")
        await alice.sendMessage(BOB, "hello from LDAP")
        await bobSees.waitForMessage(ALICE, "hello from LDAP")
        await bob.sendMessage(ALICE, "hello back ✓")
        await aliceSees.waitForMessage(BOB, "hello back ✓")
        log = gw.log()
        self.assertIn(f"LDAP directory {self.slapd.tlsURL}: connected, bound as {BIND_DN}", log)
        self.assertNotIn(BIND_PASSWORD, log)

    async def test_refusals(self) -> None:
        """
        A wrong password and an unknown user get the very same answer; a
        disabled account, with its right password only, says so; SCRAM is
        an unknown mechanism. The imgateway-admin command refuses to touch
        an LDAP directory.
        """
        gw, caPath, tlsPort = await self.gateway()
        endpoint = tlsClientEndpoint(tlsPort, caPath)

        async def auth(user: str, password: str, mechanism: str = "PLAIN") -> tuple[int, str, str | None]:
            raw = await rawConnect(self, endpoint)
            body = clientMechanism(mechanism, user, password).start()
            raw.send(f"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: {mechanism}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await raw.waitFor(lambda: raw.responses(), 10, "the answer to AUTH")
            [r] = raw.responses()
            await raw.close()
            return r.code, r.reason, r.headers.get("Error")

        wrong = await auth("alice", "not her password")
        self.assertEqual(wrong, (401, "Authentication failed (not-authorized)", "not-authorized"))
        self.assertEqual(await auth("nobody", "not her password"), wrong)
        self.assertEqual(await auth("*)(uid=*", PASSWORDS["alice"]), wrong)
        self.assertEqual(await auth("carol", "wrong"), wrong)
        self.assertEqual(await auth("carol", PASSWORDS["carol"]), (401, "Authentication failed (account-disabled)", "account-disabled"))
        self.assertEqual((await auth("alice", PASSWORDS["alice"], "SCRAM-SHA-256"))[:2], (401, "Unknown mechanism SCRAM-SHA-256"))
        done = gw.admin("user", "add", "zoe", "--password-stdin", input="pw\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn("read-only to imgateway", done.stderr)

    async def test_directoryDown(self) -> None:
        """
        With slapd down, a login gets a prompt C{temporary-auth-failure}
        (the gateway logs the outage, no traceback); once slapd is back,
        logins work again without restarting the gateway.
        """
        gw, caPath, tlsPort = await self.gateway()
        endpoint = tlsClientEndpoint(tlsPort, caPath)
        await connectClient(self, endpoint, "alice", PASSWORDS["alice"])
        await self.slapd.stop()
        try:
            began = time.monotonic()
            error = await failureOf(connectClient(self, endpoint, "bob", PASSWORDS["bob"]), AuthenticationFailed)
            self.assertLess(time.monotonic() - began, 5.0)
            self.assertIn("temporary-auth-failure", str(error))
        finally:
            await self.slapd.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                bob, _ = await connectClient(self, endpoint, "bob", PASSWORDS["bob"])
                break
            except AuthenticationFailed:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.2)
        self.assertEqual(bob.address, BOB)
        log = gw.log()
        self.assertIn("is unreachable", log)
        self.assertIn("is reachable again", log)


class RequireSlapdTests(SynchronousTestCase):
    """
    L{requireSlapd}: a missing slapd skips a test, or fails it under CI.
    """

    def missing(self, ci: str | None) -> None:
        """
        Pretend slapd is missing, with C{CI} set to C{ci} (unset if
        C{None}).
        """
        self.patch(slapd, "_missing", lambda: "slapd is not installed (test)")
        environ = {k: v for k, v in os.environ.items() if k != "CI"}
        if ci is not None:
            environ["CI"] = ci
        self.patch(os, "environ", environ)

    def test_skips(self) -> None:
        """
        Without C{CI} (or with it empty), the test skips, saying why.
        """
        for ci in (None, ""):
            self.missing(ci)
            e = self.assertRaises(SkipTest, slapd.requireSlapd, self)
            self.assertIn("slapd is not installed", str(e))

    def test_failsUnderCI(self) -> None:
        """
        With C{CI} set, the test fails instead.
        """
        self.missing("true")
        e = self.assertRaises(self.failureException, slapd.requireSlapd, self)
        self.assertIn("CI is set", str(e))

    def test_present(self) -> None:
        """
        When slapd is there, nothing happens (whatever C{CI} says).
        """
        self.patch(slapd, "_missing", lambda: None)
        slapd.requireSlapd(self)
