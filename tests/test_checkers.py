"""
Tests for L{imgateway.auth.checkers}.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from imgateway.auth.checkers import (
    AuthenticationBusy,
    Authenticator,
    GatewayRealm,
    ISASLAuthenticated,
    PasswordChecker,
    SASLAuthenticated,
    SASLAuthenticatedChecker,
    makePortal,
)
from imgateway.auth.passwords import SCRAM_HASHES, StoredCredentials, checkPassword, makeCredentials
from imgateway.core.address import Address
from imgateway.core.errors import AccountDisabled, AuthenticationFailed, DirectoryUnavailable, InvalidAddress
from imgateway.core.records import AccountRecord
from imgateway.core.throttle import LimitsConfig, LoginThrottle, LoginThrottled
from imgateway.interfaces import IHomeServer, ISession, ISessionClient
from imgateway.testing import MemoryDirectory, PasswordCheckingDirectory

DOMAIN = "corp.example"
ALICE = Address.fromParts("alice", DOMAIN)
BOB = Address.fromParts("bob", DOMAIN)
NOBODY = Address.fromParts("nobody", DOMAIN)


@functools.cache
def credentials(password: str) -> str:
    """
    Serialised credentials of C{password}, with few SCRAM iterations to keep
    the tests fast (made once per password).
    """
    return makeCredentials(password, scramIterations=4096).serialise()


def runInline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Stand in for a thread pool: call C{f} at once.
    """
    return maybeDeferred(f, *args)


class DeferringRunner:
    """
    Stand in for a thread pool that runs nothing until told to.

    @ivar calls: The calls waiting, as C{(f, args, deferred)}.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def runAll(self) -> None:
        """
        Run the waiting calls.
        """
        while self.calls:
            f, args, d = self.calls.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


def account(address: Address, password: str = "secret", enabled: bool = True) -> AccountRecord:
    """
    An account of C{address} with C{password}.
    """
    return AccountRecord(address, "hs1", "", enabled, credentials(password))


def makeAuthenticator(
    runInThread: Callable[..., Deferred[Any]] = runInline,
    secret: bytes | None = b"k" * 32,
    **kwargs: Any,
) -> tuple[Authenticator, MemoryDirectory]:
    """
    An authenticator of C{corp.example} whose directory holds alice
    (password C{secret}) and bob (password C{hunter2}, disabled).

    @param kwargs: More arguments for L{Authenticator}.
    """
    directory = MemoryDirectory([account(ALICE), account(BOB, "hunter2", enabled=False)])
    return Authenticator(directory, DOMAIN, runInThread, secret=secret, fakeIterations=4096, **kwargs), directory


@implementer(ISessionClient)
class FakeClient:
    """
    A mind for the realm: a session client that records nothing.
    """

    sessionLabel = "laptop"

    def messageReceived(self, message: object) -> Deferred[None]:
        return succeed(None)

    def presenceReceived(self, sender: object, presence: object) -> Deferred[None]:
        return succeed(None)

    def subscriptionReceived(self, event: object) -> Deferred[None]:
        return succeed(None)

    def contactUpdated(self, contact: object) -> Deferred[None]:
        return succeed(None)

    def contactRemoved(self, contact: object) -> Deferred[None]:
        return succeed(None)

    def sessionClosed(self, reason: str) -> None:
        pass


@attrs.define
class StubSession:
    """
    Stands in for an L{ISession}: records how it was closed.
    """

    address: Address
    client: object
    label: str
    closedWith: list[str] = attrs.Factory(list)

    def close(self, reason: str = "") -> None:
        self.closedWith.append(reason)


@implementer(IHomeServer)
class FakeHomeServer:
    """
    A home server that opens L{StubSession}s and remembers them.
    """

    name = "hs1"
    domain = DOMAIN

    def __init__(self) -> None:
        self.sessions: list[StubSession] = []

    def openSession(self, address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        session = StubSession(address, client, label)
        self.sessions.append(session)
        return succeed(cast(ISession, session))

    def sessionsOf(self, address: Address) -> list[ISession]:
        raise NotImplementedError()

    def presenceOf(self, address: Address) -> Any:
        raise NotImplementedError()

    def deliver(self, event: Any) -> Any:
        raise NotImplementedError()

    def userRules(self, address: Address) -> Any:
        raise NotImplementedError()

    def setUserRules(self, address: Address, rules: Any) -> Any:
        raise NotImplementedError()

    def users(self) -> list[Address]:
        raise NotImplementedError()


class AuthenticatorResolveTests(SynchronousTestCase):
    """
    Tests for L{Authenticator.resolveAuthcid}.
    """

    def setUp(self) -> None:
        self.authenticator, _ = makeAuthenticator()

    def test_bareLocalPart(self) -> None:
        """
        A bare local part is a user of the authenticator's domain.
        """
        self.assertEqual(self.authenticator.resolveAuthcid("alice"), ALICE)

    def test_fullAddress(self) -> None:
        """
        A full address of the domain is taken as it is, normalised.
        """
        self.assertEqual(self.authenticator.resolveAuthcid("Alice@CORP.example"), ALICE)

    def test_otherDomain(self) -> None:
        """
        An address of another domain is refused.
        """
        self.assertRaises(
            AuthenticationFailed, self.authenticator.resolveAuthcid, "alice@elsewhere.example"
        )

    def test_invalid(self) -> None:
        """
        Something that is no valid address is refused with
        L{AuthenticationFailed}, not L{InvalidAddress}.
        """
        for authcid in ["", "a b", "@corp.example", "alice@", "alice@-bad-.example"]:
            with self.assertRaises(AuthenticationFailed):
                self.authenticator.resolveAuthcid(authcid)

    def test_explicitDomain(self) -> None:
        """
        A domain given explicitly replaces the authenticator's.
        """
        other = Address.fromParts("alice", "other.example")
        resolve = self.authenticator.resolveAuthcid
        self.assertEqual(resolve("alice", "OTHER.example"), other)
        self.assertEqual(resolve("alice@other.example", "other.example"), other)
        self.assertRaises(AuthenticationFailed, resolve, "alice@corp.example", "other.example")

    def test_normalisedOnce(self) -> None:
        """
        A user name is normalised once (a bounded cache): the same name
        again resolves to the same address without normalising its parts
        again, an invalid one is refused every time, and a flood of names
        keeps at most L{AUTHCID_CACHE_SIZE} of them.
        """
        from imgateway.auth import checkers

        checkers._authcidAddress.cache_clear()
        self.addCleanup(checkers._authcidAddress.cache_clear)
        calls: list[tuple[str, str]] = []
        real = Address.fromParts.__func__  # type: ignore[attr-defined]

        def counting(cls: type[Address], local: str, domain: str) -> Address:
            calls.append((local, domain))
            return real(cls, local, domain)  # type: ignore[no-any-return]

        self.patch(Address, "fromParts", classmethod(counting))
        resolve = self.authenticator.resolveAuthcid
        first = resolve("Alice")
        self.assertIs(resolve("Alice"), first)
        self.assertIs(resolve("Alice", "corp.example"), first)
        self.assertEqual(calls, [("Alice", "corp.example")])
        for _ in range(2):
            self.assertRaises(AuthenticationFailed, resolve, "a b")
        self.assertEqual(calls[1:], [("a b", "corp.example")] * 2)
        for i in range(checkers.AUTHCID_CACHE_SIZE + 10):
            resolve(f"user{i}")
        self.assertEqual(checkers._authcidAddress.cache_info().currsize, checkers.AUTHCID_CACHE_SIZE)

    def test_invalidExplicitDomain(self) -> None:
        """
        An invalid explicit domain is a programming error: L{InvalidAddress}.
        """
        self.assertRaises(InvalidAddress, self.authenticator.resolveAuthcid, "alice", "not a domain")

    def test_invalidDomain(self) -> None:
        """
        An authenticator cannot be made for an invalid domain.
        """
        self.assertRaises(InvalidAddress, Authenticator, MemoryDirectory(), "bad domain", runInline)


class AuthenticatorPasswordTests(SynchronousTestCase):
    """
    Tests for L{Authenticator.checkPassword}.
    """

    def test_rightPassword(self) -> None:
        """
        The right password gives the account.
        """
        authenticator, directory = makeAuthenticator()
        record = self.successResultOf(authenticator.checkPassword(ALICE, "secret"))
        self.assertEqual(record, directory.accounts[ALICE])

    def test_wrongPassword(self) -> None:
        """
        A wrong password fails with L{AuthenticationFailed}.
        """
        authenticator, _ = makeAuthenticator()
        f = self.failureResultOf(authenticator.checkPassword(ALICE, "wrong"), AuthenticationFailed)
        self.assertNotIsInstance(f.value, AccountDisabled)

    def test_unknownUser(self) -> None:
        """
        An unknown user fails as a wrong password does, after hashing the
        password in the thread all the same.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner)
        d = authenticator.checkPassword(NOBODY, "secret")
        self.assertNoResult(d)
        self.assertEqual(len(runner.calls), 1)
        runner.runAll()
        f = self.failureResultOf(d, AuthenticationFailed)
        self.assertNotIsInstance(f.value, AccountDisabled)
        self.assertEqual(str(f.value), "wrong user name or password")

    def test_sameFailure(self) -> None:
        """
        Wrong passwords and unknown users fail with the same message.
        """
        authenticator, _ = makeAuthenticator()
        wrong = self.failureResultOf(authenticator.checkPassword(ALICE, "wrong"))
        unknown = self.failureResultOf(authenticator.checkPassword(NOBODY, "wrong"))
        self.assertIs(type(wrong.value), type(unknown.value))
        self.assertEqual(str(wrong.value), str(unknown.value))

    def test_hashingInThread(self) -> None:
        """
        The password is checked through the C{runInThread} function: nothing
        is decided until it has run.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner)
        d = authenticator.checkPassword(ALICE, "secret")
        self.assertNoResult(d)
        runner.runAll()
        self.assertEqual(self.successResultOf(d).address, ALICE)

    def test_disabledRightPassword(self) -> None:
        """
        A disabled account with the right password fails with
        L{AccountDisabled}.
        """
        authenticator, _ = makeAuthenticator()
        self.failureResultOf(authenticator.checkPassword(BOB, "hunter2"), AccountDisabled)

    def test_disabledWrongPassword(self) -> None:
        """
        A disabled account with a wrong password fails as any wrong
        password does: whether it is disabled is not revealed.
        """
        authenticator, _ = makeAuthenticator()
        f = self.failureResultOf(authenticator.checkPassword(BOB, "wrong"), AuthenticationFailed)
        self.assertNotIsInstance(f.value, AccountDisabled)

    def test_unreadableCredentials(self) -> None:
        """
        An account whose credentials cannot be read cannot log in, and the
        problem is logged.
        """
        authenticator, directory = makeAuthenticator()
        directory.accounts[ALICE] = attrs.evolve(directory.accounts[ALICE], credentials="{")
        with capturedLogs() as events:
            f = self.failureResultOf(authenticator.checkPassword(ALICE, "secret"), AuthenticationFailed)
        self.assertNotIsInstance(f.value, AccountDisabled)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["address"], "alice@corp.example")

    def test_directoryFailure(self) -> None:
        """
        A failure of the directory is passed on as it is.
        """
        authenticator, directory = makeAuthenticator()
        directory.closed = True
        f = self.failureResultOf(authenticator.checkPassword(ALICE, "secret"))
        self.assertNotIsInstance(f.value, AuthenticationFailed)


class AuthenticatorCostTests(SynchronousTestCase):
    """
    What checking a password in the clear costs, and how much of it may
    run or wait at once.
    """

    def test_oneDerivationAgainstScramVerifier(self) -> None:
        """
        A password in the clear is checked by one function call in the
        thread, against the account's SCRAM-SHA-256 verifier (no second
        hash is kept).
        """
        runner = DeferringRunner()
        authenticator, directory = makeAuthenticator(runner)
        authenticator.checkPassword(ALICE, "secret")
        [(f, (stored, password), _)] = runner.calls
        self.assertIs(f, checkPassword)
        self.assertEqual(stored, StoredCredentials.parse(directory.accounts[ALICE].credentials))
        self.assertEqual(password, "secret")

    def test_unknownUserSameCost(self) -> None:
        """
        An unknown user's password is checked against a made-up verifier
        with the same iteration count as real ones (that of
        L{scramVerifier}), so it costs the same.
        """
        runner = DeferringRunner()
        authenticator, directory = makeAuthenticator(runner)
        authenticator.checkPassword(ALICE, "secret")
        authenticator.checkPassword(NOBODY, "secret")
        (_, (known, _), _), (_, (unknown, _), _) = runner.calls
        self.assertEqual(unknown.plainVerifier()[0], known.plainVerifier()[0])
        self.assertEqual(unknown.plainVerifier()[1].iterations, known.plainVerifier()[1].iterations)
        fake, _ = self.successResultOf(authenticator.scramVerifier(NOBODY, "SCRAM-SHA-256"))
        self.assertEqual(unknown.plainVerifier()[1], fake)

    def test_boundedConcurrency(self) -> None:
        """
        At most C{maxConcurrent} checks run at once; the others wait for
        their turn and run as the running ones finish.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner, maxConcurrent=2, maxQueued=10)
        results = [authenticator.checkPassword(ALICE, "secret") for _ in range(5)]
        self.assertEqual(len(runner.calls), 2)
        self.assertEqual(authenticator.passwordChecksWaiting, 3)
        f, args, d = runner.calls.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)
        self.assertEqual(len(runner.calls), 2)
        runner.runAll()
        for d in results:
            self.assertEqual(self.successResultOf(d).address, ALICE)
        self.assertEqual(authenticator.passwordChecksWaiting, 0)

    def test_boundedQueue(self) -> None:
        """
        C{maxQueued} checks may wait; one more is refused at once with
        L{AuthenticationBusy} (an L{AuthenticationFailed}), logged once,
        without touching the thread; once the queue drains, checks are
        accepted again.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner, maxConcurrent=1, maxQueued=3)
        waiting = [authenticator.checkPassword(ALICE, "secret") for _ in range(4)]
        self.assertEqual((len(runner.calls), authenticator.passwordChecksWaiting), (1, 3))
        with capturedLogs() as events:
            refused = [authenticator.checkPassword(NOBODY, "secret") for _ in range(3)]
        for d in refused:
            f = self.failureResultOf(d, AuthenticationBusy)
            self.assertIsInstance(f.value, AuthenticationFailed)
        self.assertEqual(len(events), 1)
        self.assertIn("password_queue", events[0]["log_format"])
        self.assertEqual(len(runner.calls), 1)
        runner.runAll()
        for d in waiting:
            self.successResultOf(d)
        again = authenticator.checkPassword(ALICE, "secret")
        runner.runAll()
        self.assertEqual(self.successResultOf(again).address, ALICE)


class AuthenticatorThrottleTests(SynchronousTestCase):
    """
    L{Authenticator} with a L{LoginThrottle}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = DeferringRunner()
        self.throttle = LoginThrottle(LimitsConfig(loginFailuresPerAccount=2, accountBlockSeconds=60.0), self.clock)
        self.authenticator, _ = makeAuthenticator(self.runner, throttle=self.throttle)

    def check(self, address: Address, password: str, source: str | None) -> Deferred[AccountRecord]:
        """
        Check a password, letting the thread run.
        """
        d = self.authenticator.checkPassword(address, password, source)
        self.runner.runAll()
        return d

    def test_refusedWithoutChecking(self) -> None:
        """
        Past the limit, a login from the same source (even with the right
        password, even for an unknown user) is refused with
        L{LoginThrottled} without a directory look-up or a derivation; from
        another source the user logs in.
        """
        for address in (ALICE, NOBODY):
            for _ in range(2):
                self.failureResultOf(self.check(address, "wrong", "192.0.2.7"), AuthenticationFailed)
            d = self.authenticator.checkPassword(address, "secret", "192.0.2.7")
            self.assertEqual(self.runner.calls, [])
            f = self.failureResultOf(d, LoginThrottled)
            self.assertEqual(f.value.retryAfter, 60)
        self.assertEqual(self.successResultOf(self.check(ALICE, "secret", "198.51.100.1")).address, ALICE)

    def test_successResets(self) -> None:
        """
        A right password clears the failures of that user from that source.
        """
        self.failureResultOf(self.check(ALICE, "wrong", "192.0.2.7"), AuthenticationFailed)
        self.successResultOf(self.check(ALICE, "secret", "192.0.2.7"))
        self.failureResultOf(self.check(ALICE, "wrong", "192.0.2.7"), AuthenticationFailed)
        self.successResultOf(self.check(ALICE, "secret", "192.0.2.7"))

    def test_scram(self) -> None:
        """
        L{Authenticator.scramVerifier} is refused for a blocked source, and
        L{Authenticator.loginFailed} counts towards the block.
        """
        self.successResultOf(self.authenticator.scramVerifier(ALICE, "SCRAM-SHA-1", "192.0.2.7"))
        self.authenticator.loginFailed(ALICE, "192.0.2.7")
        self.authenticator.loginFailed(ALICE, "192.0.2.7")
        self.failureResultOf(self.authenticator.scramVerifier(ALICE, "SCRAM-SHA-1", "192.0.2.7"), LoginThrottled)
        self.clock.advance(60)
        self.successResultOf(self.authenticator.scramVerifier(ALICE, "SCRAM-SHA-1", "192.0.2.7"))


class AuthenticatorScramTests(SynchronousTestCase):
    """
    Tests for L{Authenticator.scramVerifier}.
    """

    def test_known(self) -> None:
        """
        A known user gets the verifier of the account, and the account.
        """
        authenticator, directory = makeAuthenticator()
        stored = StoredCredentials.parse(directory.accounts[ALICE].credentials)
        for mechanism in SCRAM_HASHES:
            verifier, record = self.successResultOf(authenticator.scramVerifier(ALICE, mechanism))
            self.assertEqual(verifier, stored.scram[mechanism])
            self.assertEqual(record, directory.accounts[ALICE])

    def test_disabled(self) -> None:
        """
        A disabled account gets its real verifier too; the caller checks
        C{enabled}.
        """
        authenticator, directory = makeAuthenticator()
        verifier, record = self.successResultOf(authenticator.scramVerifier(BOB, "SCRAM-SHA-1"))
        stored = StoredCredentials.parse(directory.accounts[BOB].credentials)
        self.assertEqual(verifier, stored.scram["SCRAM-SHA-1"])
        self.assertIsNotNone(record)
        assert record is not None
        self.assertFalse(record.enabled)

    def test_unknown(self) -> None:
        """
        An unknown user gets a made-up verifier, like a real one, with no
        record.
        """
        authenticator, _ = makeAuthenticator()
        verifier, record = self.successResultOf(authenticator.scramVerifier(NOBODY, "SCRAM-SHA-256"))
        self.assertIsNone(record)
        self.assertEqual(verifier.iterations, 4096)
        self.assertEqual(len(verifier.salt), 16)
        self.assertEqual(len(verifier.storedKey), 32)
        self.assertEqual(len(verifier.serverKey), 32)
        sha1, _ = self.successResultOf(authenticator.scramVerifier(NOBODY, "SCRAM-SHA-1"))
        self.assertEqual(len(sha1.storedKey), 20)

    def test_unknownDeterministic(self) -> None:
        """
        The made-up verifier is the same each time for the same user,
        mechanism and secret, and differs otherwise.
        """
        authenticator, _ = makeAuthenticator()
        again, _ = makeAuthenticator()
        other, _ = makeAuthenticator(secret=b"x" * 32)

        def verifier(a: Authenticator, address: Address, mechanism: str) -> object:
            return self.successResultOf(a.scramVerifier(address, mechanism))[0]

        first = verifier(authenticator, NOBODY, "SCRAM-SHA-256")
        self.assertEqual(verifier(authenticator, NOBODY, "SCRAM-SHA-256"), first)
        self.assertEqual(verifier(again, NOBODY, "SCRAM-SHA-256"), first)
        self.assertNotEqual(verifier(other, NOBODY, "SCRAM-SHA-256"), first)
        self.assertNotEqual(verifier(authenticator, Address.fromParts("x", DOMAIN), "SCRAM-SHA-256"), first)
        self.assertNotEqual(verifier(authenticator, NOBODY, "SCRAM-SHA-1"), first)

    def test_randomSecret(self) -> None:
        """
        Without a secret, each authenticator makes up its own.
        """
        one, _ = makeAuthenticator(secret=None)
        two, _ = makeAuthenticator(secret=None)
        self.assertNotEqual(
            self.successResultOf(one.scramVerifier(NOBODY, "SCRAM-SHA-1"))[0],
            self.successResultOf(two.scramVerifier(NOBODY, "SCRAM-SHA-1"))[0],
        )

    def test_missingMechanism(self) -> None:
        """
        An account without a verifier for the mechanism is treated as
        unknown.
        """
        authenticator, directory = makeAuthenticator()
        stored = StoredCredentials.parse(directory.accounts[ALICE].credentials)
        stored = attrs.evolve(stored, scram={"SCRAM-SHA-1": stored.scram["SCRAM-SHA-1"]})
        directory.accounts[ALICE] = attrs.evolve(directory.accounts[ALICE], credentials=stored.serialise())
        verifier, record = self.successResultOf(authenticator.scramVerifier(ALICE, "SCRAM-SHA-256"))
        self.assertIsNone(record)

    def test_notScram(self) -> None:
        """
        Asking for a mechanism that is not SCRAM is a programming error.
        """
        authenticator, _ = makeAuthenticator()
        self.assertRaises(ValueError, authenticator.scramVerifier, ALICE, "PLAIN")


class AuthenticatorRequireAccountTests(SynchronousTestCase):
    """
    Tests for L{Authenticator.requireAccount}.
    """

    def test_enabled(self) -> None:
        """
        An enabled account is given.
        """
        authenticator, directory = makeAuthenticator()
        self.assertEqual(self.successResultOf(authenticator.requireAccount(ALICE)), directory.accounts[ALICE])

    def test_disabled(self) -> None:
        """
        A disabled account fails with L{AccountDisabled}.
        """
        authenticator, _ = makeAuthenticator()
        self.failureResultOf(authenticator.requireAccount(BOB), AccountDisabled)

    def test_unknown(self) -> None:
        """
        An unknown user fails with L{AuthenticationFailed}.
        """
        authenticator, _ = makeAuthenticator()
        self.failureResultOf(authenticator.requireAccount(NOBODY), AuthenticationFailed)

    def test_otherDomain(self) -> None:
        """
        A user of another domain fails, even if the directory knows it.
        """
        authenticator, directory = makeAuthenticator()
        stranger = Address.fromParts("alice", "other.example")
        directory.accounts[stranger] = account(stranger)
        self.failureResultOf(authenticator.requireAccount(stranger), AuthenticationFailed)


class PasswordCheckerTests(SynchronousTestCase):
    """
    Tests for L{PasswordChecker}.
    """

    def setUp(self) -> None:
        authenticator, _ = makeAuthenticator()
        self.checker = PasswordChecker(authenticator)

    def test_interface(self) -> None:
        """
        L{PasswordChecker} is an L{ICredentialsChecker}.
        """
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_bareLocalPart(self) -> None:
        """
        A bare local part and the right password give the address as the
        avatar ID.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
        self.assertEqual(self.successResultOf(d), b"alice@corp.example")

    def test_fullAddress(self) -> None:
        """
        A full address works too, and the avatar ID is normalised.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"ALICE@corp.example", b"secret"))
        self.assertEqual(self.successResultOf(d), b"alice@corp.example")

    def test_wrongPassword(self) -> None:
        """
        A wrong password fails with L{AuthenticationFailed}.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"wrong"))
        self.failureResultOf(d, AuthenticationFailed)

    def test_disabled(self) -> None:
        """
        A disabled account fails with L{AccountDisabled}.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"bob", b"hunter2"))
        self.failureResultOf(d, AccountDisabled)

    def test_otherDomain(self) -> None:
        """
        A user of another domain fails with L{AuthenticationFailed}.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"alice@other.example", b"secret"))
        self.failureResultOf(d, AuthenticationFailed)

    def test_notUTF8(self) -> None:
        """
        A user name or password that is not UTF-8 fails with
        L{AuthenticationFailed}.
        """
        for username, password in [(b"\xffalice", b"secret"), (b"alice", b"\xff")]:
            d = self.checker.requestAvatarId(UsernamePassword(username, password))
            self.failureResultOf(d, AuthenticationFailed)

    def test_nonASCII(self) -> None:
        """
        User names and passwords are UTF-8.
        """
        authenticator, directory = makeAuthenticator()
        zoe = Address.fromParts("zoë", DOMAIN)
        directory.accounts[zoe] = account(zoe, "pässword")
        d = PasswordChecker(authenticator).requestAvatarId(
            UsernamePassword("zoë".encode(), "pässword".encode())
        )
        self.assertEqual(self.successResultOf(d), "zoë@corp.example".encode())


class SASLAuthenticatedTests(SynchronousTestCase):
    """
    Tests for L{SASLAuthenticated} and L{SASLAuthenticatedChecker}.
    """

    def setUp(self) -> None:
        authenticator, _ = makeAuthenticator()
        self.checker = SASLAuthenticatedChecker(authenticator)

    def test_interfaces(self) -> None:
        """
        L{SASLAuthenticated} provides L{ISASLAuthenticated}, and
        L{SASLAuthenticatedChecker} is an L{ICredentialsChecker} for it.
        """
        self.assertTrue(verifyObject(ISASLAuthenticated, SASLAuthenticated(ALICE)))
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        self.assertEqual(self.checker.credentialInterfaces, (ISASLAuthenticated,))

    def test_enabled(self) -> None:
        """
        An enabled account's address is the avatar ID.
        """
        d = self.checker.requestAvatarId(SASLAuthenticated(ALICE))
        self.assertEqual(self.successResultOf(d), b"alice@corp.example")

    def test_disabled(self) -> None:
        """
        A disabled account fails with L{AccountDisabled}.
        """
        self.failureResultOf(self.checker.requestAvatarId(SASLAuthenticated(BOB)), AccountDisabled)

    def test_unknown(self) -> None:
        """
        An unknown user fails with L{AuthenticationFailed}.
        """
        self.failureResultOf(self.checker.requestAvatarId(SASLAuthenticated(NOBODY)), AuthenticationFailed)


class GatewayRealmTests(SynchronousTestCase):
    """
    Tests for L{GatewayRealm}.
    """

    def setUp(self) -> None:
        self.homeServer = FakeHomeServer()
        self.realm = GatewayRealm(self.homeServer)

    def test_interface(self) -> None:
        """
        L{GatewayRealm} is an L{IRealm}.
        """
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_openSession(self) -> None:
        """
        The realm opens a session for the avatar ID's address, with the
        mind as the client and its C{sessionLabel} as the label; logging out
        closes it.
        """
        mind = FakeClient()
        d = self.realm.requestAvatar(b"alice@corp.example", mind, ISession)
        interface, avatar, logout = self.successResultOf(d)
        self.assertIs(interface, ISession)
        [session] = self.homeServer.sessions
        self.assertIs(avatar, session)
        self.assertEqual((session.address, session.client, session.label), (ALICE, mind, "laptop"))
        self.assertEqual(session.closedWith, [])
        logout()
        self.assertEqual(session.closedWith, ["logout"])

    def test_noLabel(self) -> None:
        """
        A mind without a C{sessionLabel} (or with one that is not a string)
        gets an empty label.
        """
        mind = FakeClient()
        mind.sessionLabel = None  # type: ignore[assignment]
        self.successResultOf(self.realm.requestAvatar(b"alice@corp.example", mind, ISession))
        self.assertEqual(self.homeServer.sessions[0].label, "")

    def test_otherInterfaces(self) -> None:
        """
        L{ISession} may be one of several interfaces asked for.
        """

        class IOther(Interface):
            pass

        d = self.realm.requestAvatar(b"alice@corp.example", FakeClient(), IOther, ISession)
        self.assertIs(self.successResultOf(d)[0], ISession)

    def test_notISession(self) -> None:
        """
        Asking for anything but L{ISession} raises L{NotImplementedError}.
        """

        class IOther(Interface):
            pass

        self.assertRaises(
            NotImplementedError, self.realm.requestAvatar, b"alice@corp.example", FakeClient(), IOther
        )

    def test_mindNotClient(self) -> None:
        """
        A mind that is not an L{ISessionClient} raises
        L{NotImplementedError}.
        """
        self.assertRaises(
            NotImplementedError, self.realm.requestAvatar, b"alice@corp.example", None, ISession
        )

    def test_anonymous(self) -> None:
        """
        Anonymous logins raise L{NotImplementedError}.
        """
        self.assertRaises(NotImplementedError, self.realm.requestAvatar, (), FakeClient(), ISession)


class PortalTests(SynchronousTestCase):
    """
    Tests for L{makePortal}.
    """

    def setUp(self) -> None:
        self.homeServer = FakeHomeServer()
        authenticator, _ = makeAuthenticator()
        self.portal = makePortal(self.homeServer, authenticator)

    def test_password(self) -> None:
        """
        A user logs in with a user name and password and gets a session.
        """
        d = self.portal.login(UsernamePassword(b"alice", b"secret"), FakeClient(), ISession)
        interface, avatar, logout = self.successResultOf(d)
        self.assertIs(interface, ISession)
        self.assertEqual(cast(StubSession, avatar).address, ALICE)

    def test_sasl(self) -> None:
        """
        A user authenticated by SASL logs in and gets a session.
        """
        d = self.portal.login(SASLAuthenticated(ALICE), FakeClient(), ISession)
        interface, avatar, logout = self.successResultOf(d)
        self.assertEqual(cast(StubSession, avatar).address, ALICE)

    def test_wrongPassword(self) -> None:
        """
        A wrong password opens no session.
        """
        d = self.portal.login(UsernamePassword(b"alice", b"wrong"), FakeClient(), ISession)
        self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(self.homeServer.sessions, [])

    def test_disabledSASL(self) -> None:
        """
        A disabled account opens no session, even after SASL.
        """
        d = self.portal.login(SASLAuthenticated(BOB), FakeClient(), ISession)
        self.failureResultOf(d, AccountDisabled)
        self.assertEqual(self.homeServer.sessions, [])


def makeDirectoryAuthenticator(
    **kwargs: Any,
) -> tuple[Authenticator, PasswordCheckingDirectory, DeferringRunner]:
    """
    An authenticator of C{corp.example} on a directory that checks
    passwords itself (as LDAP does), holding alice (password C{secret})
    and bob (password C{hunter2}, disabled); and the thread runner it was
    given (which it should never use).

    @param kwargs: More arguments for L{Authenticator}.
    """
    directory = PasswordCheckingDirectory()
    directory.addUser(ALICE, "secret")
    directory.addUser(BOB, "hunter2", enabled=False)
    runner = DeferringRunner()
    return Authenticator(directory, DOMAIN, runner, secret=b"k" * 32, fakeIterations=4096, **kwargs), directory, runner


class AuthenticatorPasswordDirectoryTests(SynchronousTestCase):
    """
    L{Authenticator} with an L{IPasswordDirectory} (LDAP): the directory
    checks passwords given in the clear; SCRAM is not offered unless its
    accounts carry verifiers.
    """

    def test_rightPassword(self) -> None:
        """
        The directory checks the password (no derivation in a thread), and
        the right one gives the account.
        """
        authenticator, directory, runner = makeDirectoryAuthenticator()
        record = self.successResultOf(authenticator.checkPassword(ALICE, "secret"))
        self.assertEqual(record, directory.accounts[ALICE])
        self.assertEqual(directory.checked, [(ALICE, "secret")])
        self.assertEqual(runner.calls, [])

    def test_wrongPasswordAndUnknownUser(self) -> None:
        """
        A wrong password and an unknown user fail alike, both checked by
        the directory (which binds for unknown users too).
        """
        authenticator, directory, _ = makeDirectoryAuthenticator()
        wrong = self.failureResultOf(authenticator.checkPassword(ALICE, "wrong"), AuthenticationFailed)
        unknown = self.failureResultOf(authenticator.checkPassword(NOBODY, "wrong"), AuthenticationFailed)
        self.assertIs(type(wrong.value), AuthenticationFailed)
        self.assertIs(type(unknown.value), AuthenticationFailed)
        self.assertEqual(str(wrong.value), str(unknown.value))
        self.assertEqual(directory.checked, [(ALICE, "wrong"), (NOBODY, "wrong")])

    def test_disabled(self) -> None:
        """
        A disabled account fails with L{AccountDisabled} after the right
        password only.
        """
        authenticator, _, _ = makeDirectoryAuthenticator()
        self.failureResultOf(authenticator.checkPassword(BOB, "hunter2"), AccountDisabled)
        f = self.failureResultOf(authenticator.checkPassword(BOB, "wrong"), AuthenticationFailed)
        self.assertNotIsInstance(f.value, AccountDisabled)

    def test_unavailable(self) -> None:
        """
        When the directory cannot be asked, the check fails with
        L{DirectoryUnavailable} (not a wrong password: the throttle does
        not count it).
        """
        throttle = LoginThrottle(LimitsConfig(loginFailuresPerAccount=1), Clock())
        authenticator, directory, _ = makeDirectoryAuthenticator(throttle=throttle)
        directory.unavailable = True
        self.failureResultOf(authenticator.checkPassword(ALICE, "secret", "192.0.2.7"), DirectoryUnavailable)
        directory.unavailable = False
        self.successResultOf(authenticator.checkPassword(ALICE, "secret", "192.0.2.7"))

    def test_throttle(self) -> None:
        """
        Failures count towards the throttle, and a blocked source is
        refused without asking the directory.
        """
        throttle = LoginThrottle(LimitsConfig(loginFailuresPerAccount=2, accountBlockSeconds=60.0), Clock())
        authenticator, directory, _ = makeDirectoryAuthenticator(throttle=throttle)
        for _ in range(2):
            self.failureResultOf(authenticator.checkPassword(ALICE, "wrong", "192.0.2.7"), AuthenticationFailed)
        self.failureResultOf(authenticator.checkPassword(ALICE, "secret", "192.0.2.7"), LoginThrottled)
        self.assertEqual(len(directory.checked), 2)

    def test_boundedQueue(self) -> None:
        """
        The directory's checks are bounded as derivations are: at most
        C{maxConcurrent} at once, C{maxQueued} waiting, then refused at
        once with L{AuthenticationBusy}.
        """
        authenticator, directory, _ = makeDirectoryAuthenticator(maxConcurrent=1, maxQueued=2)
        directory.hold = True
        waiting = [authenticator.checkPassword(ALICE, "secret") for _ in range(3)]
        self.assertEqual((len(directory.held), authenticator.passwordChecksWaiting), (1, 2))
        with capturedLogs():
            self.failureResultOf(authenticator.checkPassword(ALICE, "secret"), AuthenticationBusy)
        while directory.held:
            directory.held.pop(0).callback(None)
        for d in waiting:
            self.assertEqual(self.successResultOf(d).address, ALICE)

    def test_scramAvailable(self) -> None:
        """
        L{Authenticator.scramAvailable} follows the directory's: false for
        a directory without verifiers, true with; always true for a
        directory that keeps verifiers itself.
        """
        authenticator, directory, _ = makeDirectoryAuthenticator()
        self.assertFalse(authenticator.scramAvailable)
        directory.scramAvailable = True
        self.assertTrue(authenticator.scramAvailable)
        self.assertTrue(makeAuthenticator()[0].scramAvailable)

    def test_emptyCredentialsQuiet(self) -> None:
        """
        An account without verifiers (empty credentials, as LDAP's without a
        C{scram_attribute}) gets a made-up SCRAM verifier, without logging
        its credentials as unreadable.
        """
        authenticator, _, _ = makeDirectoryAuthenticator()
        with capturedLogs() as events:
            verifier, record = self.successResultOf(authenticator.scramVerifier(ALICE, "SCRAM-SHA-256"))
        self.assertIsNone(record)
        self.assertEqual(events, [])
