"""
Tests for L{imgateway.auth.sasl}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgateway.auth.checkers import Authenticator
from imgateway.auth.passwords import ScramVerifier, StoredCredentials
from imgateway.auth.sasl import (
    CONDITIONS,
    MAX_STEP_BYTES,
    ClientMechanism,
    SASLFailure,
    SASLStep,
    ServerMechanism,
    clientMechanism,
    decodeBase64,
    mechanismsFor,
    preferredMechanism,
    serverMechanism,
)
from imgateway.core.address import Address
from imgateway.core.errors import PersistenceFailed
from imgateway.core.throttle import LimitsConfig, LoginThrottle
from imgateway.testing import MemoryDirectory
from tests.test_checkers import (
    ALICE,
    BOB,
    DOMAIN,
    DeferringRunner,
    account,
    makeAuthenticator,
    makeDirectoryAuthenticator,
    runInline,
)

SCRAMS = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
ALL = SCRAMS + ["PLAIN"]

#: The examples of RFC 5802 section 5 and RFC 7677 section 3: mechanism to
#: (client nonce, server nonce, salt, the four messages).
VECTORS = {
    "SCRAM-SHA-1": (
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "QSXCR+Q6sek8bf92",
        [
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ],
    ),
    "SCRAM-SHA-256": (
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        [
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ],
    ),
}

_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def vectorAuthenticator() -> Authenticator:
    """
    An authenticator whose directory has C{user@corp.example} with the
    password C{pencil} and the SCRAM salts and iterations of the RFC
    examples.
    """
    authenticator, directory = makeAuthenticator()
    user = Address.fromParts("user", DOMAIN)
    record = account(user, "pencil")
    stored = StoredCredentials.parse(record.credentials)
    scram = {
        name: ScramVerifier.derive(_HASHES[name], b"pencil", base64.b64decode(salt), 4096)
        for name, (_, _, salt, _) in VECTORS.items()
    }
    directory.accounts[user] = attrs.evolve(
        record, credentials=attrs.evolve(stored, scram=scram).serialise()
    )
    return authenticator


def clientFinal(
    mechanism: str, password: str, clientFirstBare: bytes, serverFirst: bytes, gs2Header: bytes
) -> bytes:
    """
    Compute a SCRAM client-final message independently of the code under
    test, for any GS2 header.
    """
    hashName = _HASHES[mechanism]
    attributes = dict(part.split(b"=", 1) for part in serverFirst.split(b","))
    salted = hashlib.pbkdf2_hmac(
        hashName, password.encode(), base64.b64decode(attributes[b"s"]), int(attributes[b"i"])
    )
    clientKey = hmac.digest(salted, b"Client Key", hashName)
    storedKey = hashlib.new(hashName, clientKey).digest()
    withoutProof = b"c=" + base64.b64encode(gs2Header) + b",r=" + attributes[b"r"]
    authMessage = b",".join([clientFirstBare, serverFirst, withoutProof])
    signature = hmac.digest(storedKey, authMessage, hashName)
    proof = bytes(a ^ b for a, b in zip(clientKey, signature))
    return withoutProof + b",p=" + base64.b64encode(proof)


class SASLTestCase(SynchronousTestCase):
    """
    Helpers for driving mechanisms.
    """

    def stepOK(self, mechanism: ServerMechanism, data: bytes | None) -> SASLStep:
        """
        Take a step that must succeed.
        """
        return self.successResultOf(mechanism.step(data))

    def stepFails(self, mechanism: ServerMechanism, data: bytes | None, condition: str) -> SASLFailure:
        """
        Take a step that must fail with C{condition}.
        """
        value = self.failureResultOf(mechanism.step(data), SASLFailure).value
        assert isinstance(value, SASLFailure)
        self.assertEqual(value.condition, condition, value.text)
        return value

    def assertRaisesFailure(self, condition: str, f: Callable[..., object], *args: Any) -> SASLFailure:
        """
        Assert that C{f(*args)} raises L{SASLFailure} with C{condition}.
        """
        e: SASLFailure = self.assertRaises(SASLFailure, f, *args)
        self.assertEqual(e.condition, condition, e.text)
        return e

    def exchange(
        self,
        name: str,
        username: str,
        password: str,
        authenticator: Authenticator | None = None,
        initialResponse: bool = True,
        peer: object = None,
    ) -> tuple[ClientMechanism, SASLStep | SASLFailure]:
        """
        Run a whole exchange between a client and a server mechanism (whose
        steps must all answer at once).

        @return: The client, and the server's last step or its failure.
        """
        if authenticator is None:
            authenticator, _ = makeAuthenticator()
        client = clientMechanism(name, username, password)
        server = serverMechanism(name, authenticator, DOMAIN, secure=True, peer=peer)
        if not initialResponse:
            self.assertEqual(self.stepOK(server, None), SASLStep(b"", False))
        data = client.start()
        for _ in range(5):
            results: list[SASLStep | Failure] = []
            server.step(data).addBoth(results.append)
            [result] = results
            if isinstance(result, Failure):
                self.assertIsInstance(result.value, SASLFailure)
                assert isinstance(result.value, SASLFailure)
                return client, result.value
            if result.complete:
                return client, result
            assert result.challenge is not None
            data = client.step(result.challenge)
        self.fail("too many steps")

    def loginOK(self, name: str, username: str, password: str, **kw: Any) -> SASLStep:
        """
        Run an exchange that must succeed and have the client verify the
        server's final data.
        """
        client, step = self.exchange(name, username, password, **kw)
        assert isinstance(step, SASLStep), step
        self.assertTrue(step.complete)
        client.verifyFinal(step.challenge or b"")
        return step

    def loginFails(self, name: str, username: str, password: str, condition: str, **kw: Any) -> SASLFailure:
        """
        Run an exchange that must fail with C{condition}.
        """
        _, failure = self.exchange(name, username, password, **kw)
        assert isinstance(failure, SASLFailure), failure
        self.assertEqual(failure.condition, condition, failure.text)
        return failure


class SASLFailureTests(SynchronousTestCase):
    """
    Tests for L{SASLFailure}, L{SASLStep} and L{decodeBase64}.
    """

    def test_conditions(self) -> None:
        """
        The conditions are those of RFC 6120 section 6.5.
        """
        self.assertEqual(
            CONDITIONS,
            {
                "aborted",
                "account-disabled",
                "credentials-expired",
                "encryption-required",
                "incorrect-encoding",
                "invalid-authzid",
                "invalid-mechanism",
                "malformed-request",
                "mechanism-too-weak",
                "not-authorized",
                "temporary-auth-failure",
            },
        )

    def test_attributes(self) -> None:
        """
        A failure has its condition and text, and shows both.
        """
        e = SASLFailure("not-authorized", "wrong password")
        self.assertEqual((e.condition, e.text), ("not-authorized", "wrong password"))
        self.assertEqual(repr(e), "SASLFailure('not-authorized', 'wrong password')")
        self.assertEqual(str(e), "not-authorized: wrong password")
        self.assertEqual(str(SASLFailure("aborted")), "aborted")
        self.assertEqual(SASLFailure("aborted").text, "")

    def test_unknownCondition(self) -> None:
        """
        A condition not in RFC 6120 is a programming error.
        """
        self.assertRaises(ValueError, SASLFailure, "bad-password")

    def test_stepValue(self) -> None:
        """
        L{SASLStep}s compare by value; the address defaults to C{None}.
        """
        self.assertEqual(SASLStep(b"x", False), SASLStep(b"x", False, None))
        self.assertNotEqual(SASLStep(None, True, ALICE), SASLStep(None, True, BOB))

    def test_decodeBase64(self) -> None:
        """
        L{decodeBase64} decodes strict base64, as bytes or text.
        """
        self.assertEqual(decodeBase64(b"aGk="), b"hi")
        self.assertEqual(decodeBase64("aGk="), b"hi")
        self.assertEqual(decodeBase64(b""), b"")

    def test_decodeBase64Invalid(self) -> None:
        """
        Invalid base64 is C{incorrect-encoding}.
        """
        for data in [b"aGk", b"a*k=", b"aGk=\n", "é"]:
            e = self.assertRaises(SASLFailure, decodeBase64, data)
            self.assertEqual(e.condition, "incorrect-encoding")


class MechanismChoiceTests(SASLTestCase):
    """
    Tests for L{mechanismsFor}, L{serverMechanism}, L{clientMechanism} and
    L{preferredMechanism}.
    """

    def test_offered(self) -> None:
        """
        SCRAM is always offered, strongest first; PLAIN only on encrypted
        connections or when allowed in the clear.
        """
        self.assertEqual(mechanismsFor(True, False), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
        self.assertEqual(mechanismsFor(False, True), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
        self.assertEqual(mechanismsFor(False, False), ["SCRAM-SHA-256", "SCRAM-SHA-1"])

    def test_serverNames(self) -> None:
        """
        Server mechanisms have the name they were asked for.
        """
        authenticator, _ = makeAuthenticator()
        for name in ALL:
            self.assertEqual(serverMechanism(name, authenticator, DOMAIN, True).name, name)

    def test_serverUnknown(self) -> None:
        """
        An unknown mechanism is C{invalid-mechanism}, and so is a -PLUS one.
        """
        authenticator, _ = makeAuthenticator()
        for name in ["DIGEST-MD5", "SCRAM-SHA-1-PLUS", "plain", ""]:
            self.assertRaisesFailure("invalid-mechanism", serverMechanism, name, authenticator, DOMAIN, True)

    def test_plainInTheClear(self) -> None:
        """
        PLAIN on an unencrypted connection is C{encryption-required} unless
        allowed.
        """
        authenticator, _ = makeAuthenticator()
        self.assertRaisesFailure("encryption-required", serverMechanism, "PLAIN", authenticator, DOMAIN, False)
        mechanism = serverMechanism("PLAIN", authenticator, DOMAIN, False, allowPlaintext=True)
        self.assertEqual(mechanism.name, "PLAIN")

    def test_clientNames(self) -> None:
        """
        Client mechanisms have the name they were asked for; unknown ones are
        C{invalid-mechanism}.
        """
        for name in ALL:
            self.assertEqual(clientMechanism(name, "alice", "secret").name, name)
        self.assertRaisesFailure("invalid-mechanism", clientMechanism, "CRAM-MD5", "alice", "secret")

    def test_preferred(self) -> None:
        """
        The client picks the strongest mechanism offered.
        """
        self.assertEqual(preferredMechanism(["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"]), "SCRAM-SHA-256")
        self.assertEqual(preferredMechanism(["PLAIN", "SCRAM-SHA-1", "X"]), "SCRAM-SHA-1")
        self.assertEqual(preferredMechanism(["X", "PLAIN"]), "PLAIN")

    def test_preferredNoPlain(self) -> None:
        """
        When PLAIN is not allowed it is never chosen.
        """
        self.assertEqual(preferredMechanism(["PLAIN", "SCRAM-SHA-1"], allowPlain=False), "SCRAM-SHA-1")
        self.assertRaisesFailure("invalid-mechanism", preferredMechanism, ["PLAIN"], False)

    def test_preferredNone(self) -> None:
        """
        When nothing usable is offered, C{invalid-mechanism}.
        """
        self.assertRaisesFailure("invalid-mechanism", preferredMechanism, ["GSSAPI"])
        self.assertRaisesFailure("invalid-mechanism", preferredMechanism, [])


class PasswordDirectoryTests(SASLTestCase):
    """
    SASL with a directory that checks passwords itself and keeps no SCRAM
    verifiers (LDAP): PLAIN only.
    """

    def setUp(self) -> None:
        self.authenticator, self.directory, _ = makeDirectoryAuthenticator()

    def test_offered(self) -> None:
        """
        Without SCRAM, only PLAIN is offered, and only where PLAIN may be
        (nothing at all on an unencrypted connection that does not allow
        it).
        """
        self.assertEqual(mechanismsFor(True, False, scram=False), ["PLAIN"])
        self.assertEqual(mechanismsFor(False, True, scram=False), ["PLAIN"])
        self.assertEqual(mechanismsFor(False, False, scram=False), [])
        self.assertEqual(mechanismsFor(True, False, scram=True), ALL)

    def test_scramRefused(self) -> None:
        """
        A SCRAM mechanism is C{invalid-mechanism}: it is not offered, and
        no verifier could make it succeed.
        """
        for name in SCRAMS:
            self.assertRaisesFailure("invalid-mechanism", serverMechanism, name, self.authenticator, DOMAIN, True)
        self.directory.scramAvailable = True
        for name in SCRAMS:
            self.assertEqual(serverMechanism(name, self.authenticator, DOMAIN, True).name, name)

    def test_plain(self) -> None:
        """
        PLAIN logs the user in with the password the directory accepts;
        a wrong password and an unknown user are both C{not-authorized}.
        """
        self.assertEqual(self.loginOK("PLAIN", "alice", "secret", authenticator=self.authenticator).address, ALICE)
        wrong = self.loginFails("PLAIN", "alice", "wrong", "not-authorized", authenticator=self.authenticator)
        unknown = self.loginFails("PLAIN", "nobody", "wrong", "not-authorized", authenticator=self.authenticator)
        self.assertEqual(wrong.text, unknown.text)
        self.loginFails("PLAIN", "bob", "hunter2", "account-disabled", authenticator=self.authenticator)

    def test_unavailable(self) -> None:
        """
        When the directory cannot be asked, PLAIN fails with
        C{temporary-auth-failure} (the client may try again), and nothing
        is logged here (the directory logs its own troubles).
        """
        self.directory.unavailable = True
        with capturedLogs() as events:
            failure = self.loginFails("PLAIN", "alice", "secret", "temporary-auth-failure", authenticator=self.authenticator)
        self.assertIn("unavailable", failure.text)
        self.assertEqual(events, [])


class ScramVectorTests(SASLTestCase):
    """
    The examples of RFC 5802 section 5 (SCRAM-SHA-1) and RFC 7677 section 3
    (SCRAM-SHA-256), message for message.
    """

    def test_client(self) -> None:
        """
        With the example's nonce, the client sends the example's messages
        and accepts the example's server signature.
        """
        for name, (clientNonce, _, _, messages) in VECTORS.items():
            client = clientMechanism(name, "user", "pencil", nonce=clientNonce)
            self.assertEqual(client.start(), messages[0])
            self.assertEqual(client.step(messages[1]), messages[2])
            client.verifyFinal(messages[3])

    def test_server(self) -> None:
        """
        With the example's nonce, the server sends the example's messages
        and authenticates the user.
        """
        for name, (_, serverNonce, _, messages) in VECTORS.items():
            server = serverMechanism(name, vectorAuthenticator(), DOMAIN, False, nonce=serverNonce)
            self.assertEqual(self.stepOK(server, messages[0]), SASLStep(messages[1], False))
            self.assertEqual(
                self.stepOK(server, messages[2]),
                SASLStep(messages[3], True, Address.fromParts("user", DOMAIN)),
            )

    def test_clientWrongServerSignature(self) -> None:
        """
        The client refuses a server signature that does not prove the
        server knows the password.
        """
        for name, (clientNonce, _, _, messages) in VECTORS.items():
            client = clientMechanism(name, "user", "pencil", nonce=clientNonce)
            client.start()
            client.step(messages[1])
            wrong = b"v=" + base64.b64encode(b"\0" * len(base64.b64decode(messages[3][2:])))
            self.assertRaisesFailure("not-authorized", client.verifyFinal, wrong)

    def test_clientWrongPassword(self) -> None:
        """
        With a wrong password, the client sends another proof.
        """
        clientNonce, _, _, messages = VECTORS["SCRAM-SHA-1"]
        client = clientMechanism("SCRAM-SHA-1", "user", "pencils", nonce=clientNonce)
        client.start()
        self.assertNotEqual(client.step(messages[1]), messages[2])

    def test_serverWrongProof(self) -> None:
        """
        The server refuses a proof made with another password.
        """
        _, serverNonce, _, messages = VECTORS["SCRAM-SHA-1"]
        server = serverMechanism("SCRAM-SHA-1", vectorAuthenticator(), DOMAIN, False, nonce=serverNonce)
        self.stepOK(server, messages[0])
        final = clientFinal("SCRAM-SHA-1", "pencils", messages[0][3:], messages[1], b"n,,")
        self.stepFails(server, final, "not-authorized")


class RoundTripTests(SASLTestCase):
    """
    Whole exchanges between L{clientMechanism} and L{serverMechanism}.
    """

    def test_success(self) -> None:
        """
        Each mechanism authenticates a user with the right password, given
        as a bare local part or a full address.
        """
        for name in ALL:
            for username in ["alice", "alice@corp.example", "Alice"]:
                step = self.loginOK(name, username, "secret")
                self.assertEqual(step.address, ALICE)

    def test_finalData(self) -> None:
        """
        SCRAM completes with the server signature as additional data, PLAIN
        with none.
        """
        self.assertIsNone(self.loginOK("PLAIN", "alice", "secret").challenge)
        for name in SCRAMS:
            challenge = self.loginOK(name, "alice", "secret").challenge
            assert challenge is not None
            self.assertTrue(challenge.startswith(b"v="))

    def test_noInitialResponse(self) -> None:
        """
        A client that sends no initial response gets an empty challenge and
        answers it with what it would have sent.
        """
        for name in ALL:
            step = self.loginOK(name, "alice", "secret", initialResponse=False)
            self.assertEqual(step.address, ALICE)

    def test_wrongPassword(self) -> None:
        """
        A wrong password is C{not-authorized}.
        """
        for name in ALL:
            self.loginFails(name, "alice", "wrong", "not-authorized")

    def test_unknownUser(self) -> None:
        """
        An unknown user fails exactly as a wrong password does.
        """
        for name in ALL:
            wrong = self.loginFails(name, "alice", "wrong", "not-authorized")
            unknown = self.loginFails(name, "nobody", "wrong", "not-authorized")
            self.assertEqual(unknown.text, wrong.text)

    def test_unknownUserScramEnd(self) -> None:
        """
        With SCRAM, an unknown user gets a salt and iteration count like any
        other user, and fails only at the end.
        """
        for name in SCRAMS:
            server = serverMechanism(name, makeAuthenticator()[0], DOMAIN, True)
            client = clientMechanism(name, "nobody", "secret")
            first = self.stepOK(server, client.start())
            assert first.challenge is not None
            self.assertFalse(first.complete)
            self.assertIn(b",i=4096", first.challenge)
            self.stepFails(server, client.step(first.challenge), "not-authorized")

    def test_unknownUserSameSalt(self) -> None:
        """
        An unknown user gets the same salt every time.
        """
        authenticator, _ = makeAuthenticator()

        def salt() -> bytes:
            server = serverMechanism("SCRAM-SHA-256", authenticator, DOMAIN, True)
            challenge = self.stepOK(server, b"n,,n=nobody,r=abcdef").challenge
            assert challenge is not None
            return challenge.split(b",")[1]

        self.assertEqual(salt(), salt())

    def test_disabled(self) -> None:
        """
        A disabled account with the right password is C{account-disabled};
        with a wrong one, C{not-authorized}.
        """
        for name in ALL:
            self.loginFails(name, "bob", "hunter2", "account-disabled")
            self.loginFails(name, "bob", "wrong", "not-authorized")

    def test_otherDomain(self) -> None:
        """
        A user of another domain is C{not-authorized}.
        """
        for name in ALL:
            self.loginFails(name, "alice@other.example", "secret", "not-authorized")

    def test_invalidUsername(self) -> None:
        """
        A user name that is no valid address is C{not-authorized}.
        """
        for name in ALL:
            self.loginFails(name, "al ice", "secret", "not-authorized")

    def test_escapedUsername(self) -> None:
        """
        SCRAM user names with C{=} and C{,} are escaped by the client and
        unescaped by the server.
        """
        authenticator, directory = makeAuthenticator()
        odd = Address.fromParts("we=ird,name", DOMAIN)
        directory.accounts[odd] = account(odd, "secret")
        client = clientMechanism("SCRAM-SHA-1", "we=ird,name", "secret", nonce="abc")
        self.assertEqual(client.start(), b"n,,n=we=3Dird=2Cname,r=abc")
        for name in ALL:
            step = self.loginOK(name, "we=ird,name", "secret", authenticator=authenticator)
            self.assertEqual(step.address, odd)

    def test_nonASCII(self) -> None:
        """
        User names and passwords are UTF-8.
        """
        authenticator, directory = makeAuthenticator()
        zoe = Address.fromParts("zoë", DOMAIN)
        directory.accounts[zoe] = account(zoe, "pässword")
        for name in ALL:
            step = self.loginOK(name, "zoë", "pässword", authenticator=authenticator)
            self.assertEqual(step.address, zoe)

    def test_randomNonces(self) -> None:
        """
        Nonces are random: the client's and the server's parts differ each
        time, and the server's has at least 18 random bytes.
        """
        authenticator, _ = makeAuthenticator()
        nonces = []
        for _ in range(2):
            client = clientMechanism("SCRAM-SHA-256", "alice", "secret")
            start = client.start()
            server = serverMechanism("SCRAM-SHA-256", authenticator, DOMAIN, True)
            challenge = self.stepOK(server, start).challenge
            assert challenge is not None
            clientNonce = start.split(b"r=")[1]
            combined = challenge.split(b",")[0][2:]
            self.assertTrue(combined.startswith(clientNonce))
            serverNonce = combined[len(clientNonce) :]
            self.assertGreaterEqual(len(base64.b64decode(serverNonce)), 18)
            nonces.append((clientNonce, serverNonce))
        self.assertNotEqual(nonces[0][0], nonces[1][0])
        self.assertNotEqual(nonces[0][1], nonces[1][1])


class ServerStateTests(SASLTestCase):
    """
    How a L{ServerMechanism} refuses steps out of order.
    """

    def test_afterCompletion(self) -> None:
        """
        A step after completion is C{malformed-request}.
        """
        authenticator, _ = makeAuthenticator()
        for name in ALL:
            client = clientMechanism(name, "alice", "secret")
            server = serverMechanism(name, authenticator, DOMAIN, True)
            step = self.stepOK(server, client.start())
            if not step.complete:
                assert step.challenge is not None
                step = self.stepOK(server, client.step(step.challenge))
            self.assertTrue(step.complete)
            self.stepFails(server, b"", "malformed-request")
            self.stepFails(server, None, "malformed-request")

    def test_afterFailure(self) -> None:
        """
        A step after a failure is C{malformed-request}, even a good one.
        """
        authenticator, _ = makeAuthenticator()
        server = serverMechanism("PLAIN", authenticator, DOMAIN, True)
        self.stepFails(server, b"\0alice\0wrong", "not-authorized")
        self.stepFails(server, b"\0alice\0secret", "malformed-request")

    def test_whilePending(self) -> None:
        """
        A step while the previous one is pending fails the exchange: both
        steps fail with C{malformed-request}.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner)
        server = serverMechanism("PLAIN", authenticator, DOMAIN, True)
        first = server.step(b"\0alice\0secret")
        self.assertNoResult(first)
        self.stepFails(server, b"\0alice\0secret", "malformed-request")
        runner.runAll()
        f = self.failureResultOf(first, SASLFailure)
        self.assertEqual(f.value.condition, "malformed-request")
        self.stepFails(server, b"", "malformed-request")

    def test_abortPending(self) -> None:
        """
        Aborting the exchange makes a pending step fail with C{aborted},
        even if the step would have failed otherwise, and later steps fail
        with C{malformed-request}.
        """
        for password in ["secret", "wrong"]:
            runner = DeferringRunner()
            authenticator, _ = makeAuthenticator(runner)
            server = serverMechanism("PLAIN", authenticator, DOMAIN, True)
            pending = server.step(b"\0alice\0" + password.encode())
            server.abort()
            server.abort()
            self.assertNoResult(pending)
            runner.runAll()
            f = self.failureResultOf(pending, SASLFailure)
            self.assertEqual(f.value.condition, "aborted")
            self.stepFails(server, b"\0alice\0secret", "malformed-request")

    def test_abortBetweenSteps(self) -> None:
        """
        After an abort between steps, further steps fail with
        C{malformed-request}.
        """
        authenticator, _ = makeAuthenticator()
        server = serverMechanism("SCRAM-SHA-1", authenticator, DOMAIN, True)
        self.stepOK(server, b"n,,n=alice,r=CLIENT")
        server.abort()
        self.stepFails(server, b"c=biws,r=x,p=AAAA", "malformed-request")

    def test_twoEmptyChallenges(self) -> None:
        """
        A client that sends no response twice is C{malformed-request}.
        """
        authenticator, _ = makeAuthenticator()
        for name in ALL:
            server = serverMechanism(name, authenticator, DOMAIN, True)
            self.assertEqual(self.stepOK(server, None), SASLStep(b"", False))
            self.stepFails(server, None, "malformed-request")

    def test_tooLong(self) -> None:
        """
        A message longer than L{MAX_STEP_BYTES} is C{malformed-request}.
        """
        authenticator, _ = makeAuthenticator()
        for name in ALL:
            server = serverMechanism(name, authenticator, DOMAIN, True)
            self.stepFails(server, b"\0alice\0" + b"x" * MAX_STEP_BYTES, "malformed-request")

    def test_internalError(self) -> None:
        """
        An unexpected failure (the directory is gone) is logged and is
        C{temporary-auth-failure}.
        """
        for name in ALL:
            authenticator, directory = makeAuthenticator()
            directory.closed = True
            server = serverMechanism(name, authenticator, DOMAIN, True)
            client = clientMechanism(name, "alice", "secret")
            self.stepFails(server, client.start(), "temporary-auth-failure")
            self.assertEqual(len(self.flushLoggedErrors(PersistenceFailed)), 1)


class StepAtOnceTests(SASLTestCase):
    """
    L{ServerMechanism.stepAtOnce}: the outcome of a step that needs no
    waiting comes at once, returned or raised; a step that waits comes as
    a L{Deferred}; the checks are L{ServerMechanism.step}'s.
    """

    def test_scramFinal(self) -> None:
        """
        A SCRAM client-final message is checked at once against the keys
        read at the first step: the success is returned, a wrong proof
        raised as C{not-authorized}; the first step, which reads the
        directory, is a L{Deferred}.
        """
        authenticator, _ = makeAuthenticator()
        for name in SCRAMS:
            for password, condition in (("secret", None), ("wrong", "not-authorized")):
                client = clientMechanism(name, "alice", password)
                server = serverMechanism(name, authenticator, DOMAIN, True)
                first = server.stepAtOnce(client.start())
                assert isinstance(first, Deferred), first
                challenge = self.successResultOf(first).challenge
                assert challenge is not None
                if condition is not None:
                    self.assertRaisesFailure(condition, server.stepAtOnce, client.step(challenge))
                    continue
                final = server.stepAtOnce(client.step(challenge))
                assert isinstance(final, SASLStep), final
                self.assertEqual((final.complete, final.address), (True, ALICE))
                client.verifyFinal(final.challenge or b"")
                self.assertRaisesFailure("malformed-request", server.stepAtOnce, b"")

    def test_checksAtOnce(self) -> None:
        """
        The checks before a step raise at once: an empty first challenge is
        returned, a second one, a step after the exchange is over and a
        message too long are C{malformed-request}.
        """
        authenticator, _ = makeAuthenticator()
        for name in ALL:
            server = serverMechanism(name, authenticator, DOMAIN, True)
            self.assertEqual(server.stepAtOnce(None), SASLStep(b"", False))
            self.assertRaisesFailure("malformed-request", server.stepAtOnce, None)
            self.assertRaisesFailure("malformed-request", server.stepAtOnce, b"")
            server = serverMechanism(name, authenticator, DOMAIN, True)
            self.assertRaisesFailure("malformed-request", server.stepAtOnce, b"x" * (MAX_STEP_BYTES + 1))

    def test_internalErrorAtOnce(self) -> None:
        """
        An unexpected error raised by a step is logged and raised as
        C{temporary-auth-failure}, as L{ServerMechanism.step} fails with it.
        """
        authenticator, _ = makeAuthenticator()

        def broken(*args: object) -> Address:
            raise RuntimeError("broken")

        self.patch(authenticator, "resolveAuthcid", broken)
        for name in ALL:
            server = serverMechanism(name, authenticator, DOMAIN, True)
            first = clientMechanism(name, "alice", "secret").start()
            self.assertRaisesFailure("temporary-auth-failure", server.stepAtOnce, first)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
            server = serverMechanism(name, authenticator, DOMAIN, True)
            self.stepFails(server, first, "temporary-auth-failure")
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PlainServerTests(SASLTestCase):
    """
    Tests for the PLAIN server mechanism's parsing.
    """

    def setUp(self) -> None:
        self.authenticator, _ = makeAuthenticator()

    def plain(self, data: bytes, condition: str | None = None) -> None:
        """
        Feed C{data} to a new PLAIN mechanism: it must authenticate alice,
        or fail with C{condition}.
        """
        server = serverMechanism("PLAIN", self.authenticator, DOMAIN, True)
        if condition is None:
            self.assertEqual(self.stepOK(server, data), SASLStep(None, True, ALICE))
        else:
            self.stepFails(server, data, condition)

    def test_authzid(self) -> None:
        """
        An authzid naming the authenticated user is accepted.
        """
        self.plain(b"alice@corp.example\0alice\0secret")
        self.plain(b"alice\0alice@corp.example\0secret")
        self.plain(b"ALICE\0alice\0secret")

    def test_otherAuthzid(self) -> None:
        """
        An authzid naming anyone else is C{invalid-authzid}.
        """
        self.plain(b"bob\0alice\0secret", "invalid-authzid")
        self.plain(b"alice@other.example\0alice\0secret", "invalid-authzid")
        self.plain(b"a b\0alice\0secret", "invalid-authzid")

    def test_malformed(self) -> None:
        """
        Messages that are not C{[authzid] NUL authcid NUL passwd} are
        C{malformed-request}.
        """
        for data in [
            b"",
            b"alice\0secret",
            b"\0alice\0secret\0",
            b"\0\0secret",
            b"\0alice\0",
            b"\0alice\0\xffsecret",
            b"\xff\0alice\0secret",
        ]:
            self.plain(data, "malformed-request")

    def test_invalidAuthcid(self) -> None:
        """
        An authcid that is no address of the domain is C{not-authorized}.
        """
        self.plain(b"\0alice@other.example\0secret", "not-authorized")
        self.plain(b"\0a:b\0secret", "not-authorized")


class ScramServerTests(SASLTestCase):
    """
    Tests for the SCRAM server mechanisms' parsing and checks.
    """

    def setUp(self) -> None:
        self.authenticator, _ = makeAuthenticator()

    def server(self, name: str = "SCRAM-SHA-256") -> ServerMechanism:
        """
        A new SCRAM server mechanism with a fixed nonce.
        """
        return serverMechanism(name, self.authenticator, DOMAIN, True, nonce="SERVER")

    def first(self, data: bytes, condition: str) -> None:
        """
        Feed C{data} as client-first message to each SCRAM: it must fail
        with C{condition}.
        """
        for name in SCRAMS:
            self.stepFails(self.server(name), data, condition)

    def started(self, gs2Header: bytes = b"n,,", name: str = "SCRAM-SHA-256") -> tuple[ServerMechanism, bytes]:
        """
        A server that has answered alice's client-first message.

        @return: The server and its server-first message.
        """
        server = self.server(name)
        challenge = self.stepOK(server, gs2Header + b"n=alice,r=CLIENT").challenge
        assert challenge is not None
        return server, challenge

    def test_yFlag(self) -> None:
        """
        A client that supports channel binding but thinks we do not
        (C{y,,}) is accepted: we offer no -PLUS mechanism.
        """
        for name in SCRAMS:
            server, serverFirst = self.started(b"y,,", name)
            final = clientFinal(name, "secret", b"n=alice,r=CLIENT", serverFirst, b"y,,")
            self.assertEqual(self.stepOK(server, final).address, ALICE)

    def test_authzid(self) -> None:
        """
        An authzid naming the user is accepted; it is part of the channel
        binding data.
        """
        for gs2Header in [b"n,a=alice@corp.example,", b"n,a=alice,"]:
            server, serverFirst = self.started(gs2Header)
            final = clientFinal("SCRAM-SHA-256", "secret", b"n=alice,r=CLIENT", serverFirst, gs2Header)
            self.assertEqual(self.stepOK(server, final).address, ALICE)

    def test_otherAuthzid(self) -> None:
        """
        An authzid naming anyone else is C{invalid-authzid}.
        """
        self.first(b"n,a=bob,n=alice,r=CLIENT", "invalid-authzid")
        self.first(b"n,a=alice@other.example,n=alice,r=CLIENT", "invalid-authzid")

    def test_channelBindingRequested(self) -> None:
        """
        A client that asks for channel binding (C{p=}) is refused.
        """
        self.first(b"p=tls-unique,,n=alice,r=CLIENT", "malformed-request")
        self.first(b"p=tls-exporter,a=alice,n=alice,r=CLIENT", "malformed-request")

    def test_malformedFirst(self) -> None:
        """
        Client-first messages that break the grammar are
        C{malformed-request}.
        """
        for data in [
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=alice,r=CLIENT",
            b"n,x=alice,n=alice,r=CLIENT",
            b"n,a=,n=alice,r=CLIENT",
            b"n,,n=alice",
            b"n,,r=CLIENT,n=alice",
            b"n,,n=alice,x=CLIENT",
            b"n,,n=,r=CLIENT",
            b"n,,n=al=2Xice,r=CLIENT",
            b"n,,n=alice=,r=CLIENT",
            b"n,,n=alice,r=",
            b"n,,n=alice,r=CLI ENT",
            b"n,,n=alice,r=CLI\x7fENT",
            b"n,,n=alice,r=CLIENT,",
            b"n,,n=alice,r=CLIENT,bad",
            b"n,,n=\xffalice,r=CLIENT",
        ]:
            self.first(data, "malformed-request")

    def test_mandatoryExtension(self) -> None:
        """
        A mandatory extension (C{m=}) is refused.
        """
        self.first(b"n,,m=foo,n=alice,r=CLIENT", "malformed-request")
        self.first(b"n,,n=alice,r=CLIENT,m=foo", "malformed-request")

    def test_optionalExtension(self) -> None:
        """
        Other extensions are ignored.
        """
        server = self.server()
        self.stepOK(server, b"n,,n=alice,r=CLIENT,x=whatever")

    def test_serverFirst(self) -> None:
        """
        The server-first message has the combined nonce, the user's salt and
        iteration count.
        """
        server, serverFirst = self.started()
        self.assertEqual(serverFirst.split(b",")[0], b"r=CLIENTSERVER")
        self.assertEqual(serverFirst.split(b",")[2], b"i=4096")

    def final(self, mutate: Any, condition: str) -> None:
        """
        Answer the server-first message with a correct client-final message
        changed by C{mutate}: it must fail with C{condition}.
        """
        server, serverFirst = self.started()
        final = clientFinal("SCRAM-SHA-256", "secret", b"n=alice,r=CLIENT", serverFirst, b"n,,")
        self.stepFails(server, mutate(final), condition)

    def test_correctFinal(self) -> None:
        """
        The independent proof of this test module is accepted (so the
        failures below are due to the changes only).
        """
        server, serverFirst = self.started()
        final = clientFinal("SCRAM-SHA-256", "secret", b"n=alice,r=CLIENT", serverFirst, b"n,,")
        self.assertEqual(self.stepOK(server, final).address, ALICE)

    def test_wrongNonce(self) -> None:
        """
        A client-final message with another nonce is C{not-authorized}.
        """
        self.final(lambda m: m.replace(b"r=CLIENTSERVER", b"r=CLIENTSERVEX"), "not-authorized")
        self.final(lambda m: m.replace(b"r=CLIENTSERVER", b"r=CLIENT"), "not-authorized")

    def test_wrongChannelBinding(self) -> None:
        """
        Channel binding data other than the GS2 header is
        C{not-authorized}.
        """
        self.final(lambda m: m.replace(b"c=biws", b"c=eSws"), "not-authorized")
        self.final(
            lambda m: m.replace(b"c=biws", b"c=" + base64.b64encode(b"p=tls-unique,,xxxx")),
            "not-authorized",
        )

    def test_badBase64(self) -> None:
        """
        Invalid base64 in C{c=} or C{p=} is C{malformed-request}.
        """
        self.final(lambda m: m.replace(b"c=biws", b"c=biw"), "malformed-request")
        self.final(lambda m: m.replace(b"c=biws", b"c=bi*s"), "malformed-request")
        self.final(lambda m: m[:-2] + b"*=", "malformed-request")

    def test_wrongProofLength(self) -> None:
        """
        A proof of the wrong length is C{malformed-request}.
        """
        self.final(lambda m: m.split(b",p=")[0] + b",p=" + base64.b64encode(b"x" * 20), "malformed-request")

    def test_wrongProof(self) -> None:
        """
        A proof of the right length but wrong is C{not-authorized}.
        """
        self.final(lambda m: m.split(b",p=")[0] + b",p=" + base64.b64encode(b"x" * 32), "not-authorized")

    def test_malformedFinal(self) -> None:
        """
        Client-final messages that break the grammar are
        C{malformed-request}.
        """
        for mutate in [
            lambda m: b"",
            lambda m: m.split(b",p=")[0],
            lambda m: m.replace(b"c=", b"x="),
            lambda m: m.replace(b"r=", b"x="),
            lambda m: m.replace(b",p=", b",x="),
            lambda m: m.replace(b",p=", b",m=foo,p="),
            lambda m: m.replace(b",p=", b",,p="),
            lambda m: b"\xff" + m,
            lambda m: b"r=CLIENTSERVER,c=biws,p=" + m.split(b",p=")[1],
        ]:
            self.final(mutate, "malformed-request")

    def test_optionalExtensionFinal(self) -> None:
        """
        Extensions before the proof are part of the signed message, and
        otherwise ignored.
        """
        server, serverFirst = self.started()
        final = clientFinal("SCRAM-SHA-256", "secret", b"n=alice,r=CLIENT", serverFirst, b"n,,")
        # Recompute over a message with an extension.
        withoutProof = final.split(b",p=")[0] + b",x=y"
        hashName = "sha256"
        salt = base64.b64decode(serverFirst.split(b",")[1][2:])
        salted = hashlib.pbkdf2_hmac(hashName, b"secret", salt, 4096)
        clientKey = hmac.digest(salted, b"Client Key", hashName)
        authMessage = b",".join([b"n=alice,r=CLIENT", serverFirst, withoutProof])
        signature = hmac.digest(hashlib.sha256(clientKey).digest(), authMessage, hashName)
        proof = bytes(a ^ b for a, b in zip(clientKey, signature))
        self.assertEqual(
            self.stepOK(server, withoutProof + b",p=" + base64.b64encode(proof)).address, ALICE
        )

    def test_missingFinal(self) -> None:
        """
        No response to the server-first message is C{malformed-request}.
        """
        server, _ = self.started()
        self.stepFails(server, None, "malformed-request")

    def test_invalidServerNonce(self) -> None:
        """
        An injected server nonce must be a valid nonce.
        """
        e = self.assertRaises(
            SASLFailure, serverMechanism, "SCRAM-SHA-1", self.authenticator, DOMAIN, True, nonce="a,b"
        )
        self.assertEqual(e.condition, "malformed-request")


class ClientTests(SASLTestCase):
    """
    Tests for the client mechanisms' handling of what the server sends.
    """

    def test_plain(self) -> None:
        """
        PLAIN sends an empty authzid, the user name and the password; it
        takes no challenge and no additional data.
        """
        client = clientMechanism("PLAIN", "alice", "sécret")
        self.assertEqual(client.start(), "\0alice\0sécret".encode())
        self.assertRaisesFailure("malformed-request", client.step, b"")
        client.verifyFinal(b"")
        self.assertRaisesFailure("malformed-request", client.verifyFinal, b"v=abc")

    def scram(self, name: str = "SCRAM-SHA-1") -> ClientMechanism:
        """
        A started SCRAM client with the RFC example's nonce.
        """
        clientNonce = VECTORS[name][0]
        client = clientMechanism(name, "user", "pencil", nonce=clientNonce)
        client.start()
        return client

    def test_startTwice(self) -> None:
        """
        A SCRAM client starts once.
        """
        client = self.scram()
        self.assertRaisesFailure("malformed-request", client.start)

    def test_badServerFirst(self) -> None:
        """
        Server-first messages that break the grammar or the rules are
        C{malformed-request}.
        """
        good = VECTORS["SCRAM-SHA-1"][3][1]
        for message in [
            b"",
            good.replace(b"3rfcNHYJY1ZVvWVs7j", b""),
            good.replace(b"r=fyko", b"r=XXXX"),
            good.replace(b"s=QSXCR+Q6sek8bf92", b"s=QSXCR"),
            good.replace(b"s=QSXCR+Q6sek8bf92", b"s="),
            good.replace(b"i=4096", b"i=lots"),
            good.replace(b"i=4096", b"i=0"),
            good.replace(b"i=4096", b"i=1000000000"),
            good.replace(b",i=4096", b""),
            b"m=foo," + good,
            good + b",m=foo",
            b"\xff" + good,
        ]:
            self.assertRaisesFailure("malformed-request", self.scram().step, message)

    def test_serverError(self) -> None:
        """
        A server-final C{e=} error is C{not-authorized}, with its text.
        """
        client = self.scram()
        client.step(VECTORS["SCRAM-SHA-1"][3][1])
        e = self.assertRaisesFailure("not-authorized", client.verifyFinal, b"e=invalid-proof")
        self.assertEqual(e.text, "invalid-proof")

    def test_finalAsChallenge(self) -> None:
        """
        A server-final message sent as a challenge is verified and answered
        with an empty response; the success then carries no data.
        """
        client = self.scram()
        messages = VECTORS["SCRAM-SHA-1"][3]
        client.step(messages[1])
        self.assertEqual(client.step(messages[3]), b"")
        client.verifyFinal(b"")
        self.assertRaisesFailure("malformed-request", client.step, b"")

    def test_finalMissing(self) -> None:
        """
        A success without the server signature is refused.
        """
        client = self.scram()
        client.step(VECTORS["SCRAM-SHA-1"][3][1])
        self.assertRaisesFailure("malformed-request", client.verifyFinal, b"")

    def test_successTooEarly(self) -> None:
        """
        A success before the proof was sent is refused: the server cannot
        have verified anything.
        """
        client = self.scram()
        self.assertRaisesFailure("malformed-request", client.verifyFinal, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")

    def test_badFinal(self) -> None:
        """
        A server-final message that is neither C{v=} nor C{e=}, or has
        invalid base64, is C{malformed-request}.
        """
        for message in [b"x=abc", b"v=abc", b"\xff"]:
            client = self.scram()
            client.step(VECTORS["SCRAM-SHA-1"][3][1])
            self.assertRaisesFailure("malformed-request", client.verifyFinal, message)

    def test_afterFailure(self) -> None:
        """
        After a wrong server signature the client accepts nothing more.
        """
        client = self.scram()
        client.step(VECTORS["SCRAM-SHA-1"][3][1])
        self.assertRaisesFailure("not-authorized", client.verifyFinal, b"v=" + base64.b64encode(b"\0" * 20))
        self.assertRaisesFailure("malformed-request", client.verifyFinal, VECTORS["SCRAM-SHA-1"][3][3])

    def test_invalidNonce(self) -> None:
        """
        An injected client nonce must be a valid nonce.
        """
        e = self.assertRaises(SASLFailure, clientMechanism, "SCRAM-SHA-1", "u", "p", nonce="")
        self.assertEqual(e.condition, "malformed-request")


class RunnerTests(SASLTestCase):
    """
    The server mechanisms with a thread pool that answers later.
    """

    def test_plainWaitsForThread(self) -> None:
        """
        PLAIN completes once the password check has run in the thread.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner)
        server = serverMechanism("PLAIN", authenticator, DOMAIN, True)
        d = server.step(b"\0alice\0secret")
        self.assertNoResult(d)
        runner.runAll()
        self.assertEqual(self.successResultOf(d).address, ALICE)

    def test_scramNeedsNoThread(self) -> None:
        """
        SCRAM does no slow hashing on the server: it never uses the thread
        pool.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner)
        self.loginOK("SCRAM-SHA-256", "alice", "secret", authenticator=authenticator)
        self.assertEqual(runner.calls, [])

    def test_inlineRunner(self) -> None:
        """
        L{runInline} (the test runner of these tests) runs PLAIN at once.
        """
        directory = MemoryDirectory([account(ALICE)])
        authenticator = Authenticator(directory, DOMAIN, runInline)
        self.assertEqual(self.loginOK("PLAIN", "alice", "secret", authenticator=authenticator).address, ALICE)


ATTACKER = IPv4Address("TCP", "192.0.2.7", 40000)
ELSEWHERE = IPv4Address("TCP", "198.51.100.1", 40000)


class ThrottleTests(SASLTestCase):
    """
    Server mechanisms report their outcome to the authenticator's
    L{LoginThrottle}, per source address, and map its refusals (and a full
    password queue) to C{temporary-auth-failure}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        throttle = LoginThrottle(LimitsConfig(loginFailuresPerAccount=2, accountBlockSeconds=300.0), self.clock)
        self.authenticator, _ = makeAuthenticator(throttle=throttle)

    def test_plain(self) -> None:
        """
        Past the limit of wrong PLAIN passwords from one address, even the
        right password from that address fails with
        C{temporary-auth-failure}, saying when to retry; from another
        address the user logs in.
        """
        for _ in range(2):
            self.loginFails("PLAIN", "alice", "wrong", "not-authorized", authenticator=self.authenticator, peer=ATTACKER)
        e = self.loginFails("PLAIN", "alice", "secret", "temporary-auth-failure", authenticator=self.authenticator, peer=ATTACKER)
        self.assertEqual(e.retryAfter, 300)
        self.assertIn("too many failed logins", e.text)
        self.loginOK("PLAIN", "alice", "secret", authenticator=self.authenticator, peer=ELSEWHERE)

    def test_scram(self) -> None:
        """
        Wrong SCRAM proofs count as failures; past the limit the exchange
        is refused at its first step, whichever mechanism; the throttle is
        shared with PLAIN.
        """
        self.loginFails("SCRAM-SHA-256", "alice", "wrong", "not-authorized", authenticator=self.authenticator, peer=ATTACKER)
        self.loginFails("SCRAM-SHA-1", "alice", "wrong", "not-authorized", authenticator=self.authenticator, peer=ATTACKER)
        for name in ALL:
            e = self.loginFails(name, "alice", "secret", "temporary-auth-failure", authenticator=self.authenticator, peer=ATTACKER)
            self.assertEqual(e.retryAfter, 300)
        for name in ALL:
            self.loginOK(name, "alice", "secret", authenticator=self.authenticator, peer=ELSEWHERE)

    def test_successClears(self) -> None:
        """
        A successful SCRAM login clears that user's failures from that
        address.
        """
        for _ in range(3):
            self.loginFails("SCRAM-SHA-256", "alice", "wrong", "not-authorized", authenticator=self.authenticator, peer=ATTACKER)
            self.loginOK("SCRAM-SHA-256", "alice", "secret", authenticator=self.authenticator, peer=ATTACKER)

    def test_noPeer(self) -> None:
        """
        Without a peer address nothing is throttled.
        """
        for _ in range(5):
            self.loginFails("PLAIN", "alice", "wrong", "not-authorized", authenticator=self.authenticator)
        self.loginOK("PLAIN", "alice", "secret", authenticator=self.authenticator)

    def test_busy(self) -> None:
        """
        When the password queue is full, PLAIN fails at once with
        C{temporary-auth-failure} (no retry time: it is not a block).
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner, maxConcurrent=1, maxQueued=1)
        pending = [serverMechanism("PLAIN", authenticator, DOMAIN, True).step(b"\0alice\0secret") for _ in range(2)]
        busy = self.stepFails(serverMechanism("PLAIN", authenticator, DOMAIN, True), b"\0alice\0secret", "temporary-auth-failure")
        self.assertIsNone(busy.retryAfter)
        runner.runAll()
        for d in pending:
            self.assertTrue(self.successResultOf(d).complete)


class PreparationTests(SASLTestCase):
    """
    User names and passwords are prepared the same way by every mechanism.
    """

    def setUp(self) -> None:
        self.authenticator, self.directory = makeAuthenticator()
        self.elodie = Address.fromParts("elodie", DOMAIN)
        self.directory.accounts[self.elodie] = account(self.elodie, "caf\u00e9\u00a0cr\u00e8me")

    def test_passwordForms(self) -> None:
        """
        A password with a non-ASCII letter and a no-break space logs in
        with PLAIN and both SCRAMs whether the client types it composed or
        decomposed, with a no-break or a plain space.
        """
        for typed in ["caf\u00e9\u00a0cr\u00e8me", "cafe\u0301 cre\u0300me", "caf\u00e9\u2002cr\u00e8me"]:
            for name in ALL:
                step = self.loginOK(name, "elodie", typed, authenticator=self.authenticator)
                self.assertEqual(step.address, self.elodie)

    def test_unpreparingScramClient(self) -> None:
        """
        A SCRAM client that applies no SASLprep logs in when it sends the
        password in its prepared form (composed, plain spaces), as most
        typed passwords are.
        """
        for name in SCRAMS:
            server = serverMechanism(name, self.authenticator, DOMAIN, secure=True, nonce="SRV")
            first = b"n,,n=elodie,r=CLI"
            serverFirst = self.stepOK(server, first).challenge
            assert serverFirst is not None
            final = clientFinal(name, "caf\u00e9 cr\u00e8me", b"n=elodie,r=CLI", serverFirst, b"n,,")
            self.assertTrue(self.stepOK(server, final).complete)

    def test_userNames(self) -> None:
        """
        The user name is prepared as an address (case folded, NFKC) by
        every mechanism.
        """
        for username in ["ALICE", "Alice@CORP.example", "\uff41\uff4c\uff49\uff43\uff45"]:
            for name in ALL:
                self.assertEqual(self.loginOK(name, username, "secret", authenticator=self.authenticator).address, ALICE)

    def test_prohibitedPassword(self) -> None:
        """
        A password that SASLprep refuses never logs in (PLAIN answers
        C{not-authorized}, as for any wrong password).
        """
        self.loginFails("PLAIN", "alice", "secret\x07", "not-authorized", authenticator=self.authenticator)
