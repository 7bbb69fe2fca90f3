"""
Tests for L{imgateway.router.locator}.
"""

from __future__ import annotations

import gc

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.core.address import Address
from imgateway.core.errors import MovedTo, PersistenceFailed, ServiceUnavailable
from imgateway.core.records import AccountRecord
from imgateway.interfaces import IHomeLocator
from imgateway.router.locator import UNKNOWN, DirectoryHomeLocator, followMoves, homeOfAuthenticated, knownHome
from imgateway.testing import MemoryDirectory

ALICE = Address.fromString("alice@corp.example")
CAROL = Address.fromString("carol@corp.example")
NOBODY = Address.fromString("nobody@corp.example")


class CountingDirectory(MemoryDirectory):
    """
    A directory that counts its reads and can hold them.
    """

    def __init__(self, accounts: list[AccountRecord]) -> None:
        super().__init__(accounts)
        self.reads = 0
        self.held: list[tuple[Deferred[AccountRecord | None], AccountRecord | None]] = []
        self.hold = False
        self.fail = False

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        self.reads += 1
        if self.fail:
            return fail(PersistenceFailed("directory unreachable"))
        d = super().getAccount(address)
        if not self.hold:
            return d
        held: Deferred[AccountRecord | None] = Deferred()
        d.addCallback(lambda r: self.held.append((held, r)))
        return held

    def release(self) -> None:
        held, self.held = self.held, []
        for d, r in held:
            d.callback(r)


class DirectoryHomeLocatorTests(SynchronousTestCase):
    """
    L{DirectoryHomeLocator}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = CountingDirectory(
            [
                AccountRecord(ALICE, "hs1", "", True, ""),
                AccountRecord(CAROL, "hs2", "", False, ""),
            ]
        )
        self.locator = DirectoryHomeLocator(self.directory, self.clock, 30.0, maxCached=2)

    def test_interface(self) -> None:
        """
        It provides L{IHomeLocator}.
        """
        verifyObject(IHomeLocator, self.locator)

    def test_homeOf(self) -> None:
        """
        A user's home is the directory's; an unknown or disabled account has
        none.
        """
        self.assertEqual(self.successResultOf(self.locator.homeOf(ALICE)), "hs1")
        self.assertIsNone(self.successResultOf(self.locator.homeOf(CAROL)))
        self.assertIsNone(self.successResultOf(self.locator.homeOf(NOBODY)))

    def test_cachedForLifetime(self) -> None:
        """
        An answer is remembered for the lifetime, then read again.
        """
        self.locator.homeOf(ALICE)
        self.clock.advance(29.9)
        self.assertEqual(self.successResultOf(self.locator.homeOf(ALICE)), "hs1")
        self.assertEqual(self.directory.reads, 1)
        self.clock.advance(0.1)
        self.locator.homeOf(ALICE)
        self.assertEqual(self.directory.reads, 2)

    def test_cachedHomeOf(self) -> None:
        """
        C{cachedHomeOf} (and L{knownHome}) answer at once what L{homeOf}
        would answer from what is remembered, a remembered "no home"
        included; L{UNKNOWN} before the directory was read and once the
        answer's lifetime is over. It reads nothing itself.
        """
        self.assertIs(self.locator.cachedHomeOf(ALICE), UNKNOWN)
        self.assertIs(knownHome(self.locator, NOBODY), UNKNOWN)
        self.locator.homeOf(ALICE)
        self.locator.homeOf(NOBODY)
        self.assertEqual(self.locator.cachedHomeOf(ALICE), "hs1")
        self.assertEqual(knownHome(self.locator, ALICE), "hs1")
        self.assertIsNone(knownHome(self.locator, NOBODY))
        self.clock.advance(30.0)
        self.assertIs(knownHome(self.locator, ALICE), UNKNOWN)
        self.assertEqual(self.directory.reads, 2)

    def test_cachedHomesAt(self) -> None:
        """
        C{cachedHomesAt} answers for two users what C{cachedHomeOf} answers
        for each, at the time it is given (a reading of the locator's
        C{clock}, which it does not read itself): remembered homes, a
        remembered "no home", L{UNKNOWN} before the directory was read and
        from the end of an answer's lifetime on. It reads nothing itself.
        """
        self.assertIs(self.locator.clock, self.clock)
        self.assertEqual(self.locator.cachedHomesAt(0.0, ALICE, NOBODY), (UNKNOWN, UNKNOWN))
        self.locator.homeOf(ALICE)
        self.clock.advance(10.0)
        self.locator.homeOf(NOBODY)
        self.clock.advance(1000.0)
        readings: list[float] = []

        def reading() -> float:
            readings.append(0.0)
            return 0.0

        self.patch(self.clock, "seconds", reading)
        for now, alice, nobody in [(0.0, "hs1", None), (29.9, "hs1", None), (30.0, UNKNOWN, None), (39.9, UNKNOWN, None), (40.0, UNKNOWN, UNKNOWN)]:
            self.assertEqual(self.locator.cachedHomesAt(now, ALICE, NOBODY), (alice, nobody), now)
            self.assertEqual(self.locator.cachedHomesAt(now, NOBODY, ALICE), (nobody, alice), now)
        self.assertEqual(self.locator.cachedHomesAt(0.0, ALICE, ALICE), ("hs1", "hs1"))
        self.assertEqual(readings, [])
        self.assertEqual(self.directory.reads, 2)

    def test_knownHomeOtherLocators(self) -> None:
        """
        L{knownHome} knows nothing of another L{IHomeLocator}: the caller
        asks its C{homeOf}.
        """

        class Other:
            def homeOf(self, address: Address) -> Deferred[str | None]:
                return succeed("hs1")

            def forget(self, address: Address) -> None:
                pass

        self.assertIs(knownHome(Other(), ALICE), UNKNOWN)  # type: ignore[arg-type]

    def test_unknownCached(self) -> None:
        """
        That an account does not exist is remembered too (a flood of
        messages to nobody does not read the directory each time).
        """
        self.locator.homeOf(NOBODY)
        self.locator.homeOf(NOBODY)
        self.assertEqual(self.directory.reads, 1)

    def test_concurrentReadsShared(self) -> None:
        """
        Look-ups of one user while its read is under way share that read.
        """
        self.directory.hold = True
        first, second = self.locator.homeOf(ALICE), self.locator.homeOf(ALICE)
        self.assertNoResult(first)
        self.directory.release()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("hs1", "hs1"))
        self.assertEqual(self.directory.reads, 1)

    def test_forget(self) -> None:
        """
        L{DirectoryHomeLocator.forget} drops the remembered answer, and a
        read under way when it is called answers its callers but is not
        remembered (it may be from before a move).
        """
        self.locator.homeOf(ALICE)
        self.locator.forget(ALICE)
        self.locator.homeOf(ALICE)
        self.assertEqual(self.directory.reads, 2)
        self.directory.hold = True
        self.locator.forget(ALICE)
        under = self.locator.homeOf(ALICE)
        self.locator.forget(ALICE)
        self.directory.release()
        self.assertEqual(self.successResultOf(under), "hs1")
        self.directory.hold = False
        self.locator.homeOf(ALICE)
        self.assertEqual(self.directory.reads, 4)

    def test_bounded(self) -> None:
        """
        At most C{maxCached} answers are remembered; the oldest goes first.
        """
        for who in (ALICE, CAROL, NOBODY):
            self.locator.homeOf(who)
        self.locator.homeOf(ALICE)
        self.assertEqual(self.directory.reads, 4)

    def test_failure(self) -> None:
        """
        A failed directory read fails the look-up and is not remembered.
        """
        self.directory.fail = True
        self.failureResultOf(self.locator.homeOf(ALICE), PersistenceFailed)
        self.directory.fail = False
        self.assertEqual(self.successResultOf(self.locator.homeOf(ALICE)), "hs1")


class StaleAnswerTests(SynchronousTestCase):
    """
    L{homeOfAuthenticated} and L{followMoves}: what is done with an answer
    of the locator that has gone stale.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = CountingDirectory([])
        self.locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)

    def test_authenticatedNoHome(self) -> None:
        """
        A remembered "no home" for a user who has just authenticated is
        older than its account: it is forgotten and the directory read
        again, and the new answer remembered.
        """
        self.assertIsNone(self.successResultOf(self.locator.homeOf(ALICE)))
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        self.assertEqual(self.successResultOf(homeOfAuthenticated(self.locator, ALICE)), "hs1")
        self.assertEqual(self.directory.reads, 2)
        self.assertEqual(self.successResultOf(homeOfAuthenticated(self.locator, ALICE)), "hs1")
        self.assertEqual(self.directory.reads, 2)

    def test_authenticatedStillNoHome(self) -> None:
        """
        When the directory has no home for the user even now (its account
        was disabled as it logged in), the answer is C{None}.
        """
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", False, "{}")
        self.assertIsNone(self.successResultOf(homeOfAuthenticated(self.locator, ALICE)))
        self.assertEqual(self.directory.reads, 2)

    def test_followOneMove(self) -> None:
        """
        An attempt that fails with L{MovedTo} is made once more, with the
        directory's new answer.
        """
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        self.successResultOf(self.locator.homeOf(ALICE))
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs2", "", True, "{}")
        tried: list[str | None] = []

        def attempt(home: str | None) -> Deferred[str]:
            tried.append(home)
            if home == "hs1":
                return fail(MovedTo("moved", "hs2"))
            return succeed(f"done at {home}")

        d = followMoves(self.locator, ALICE, attempt, "a test", lambda: ServiceUnavailable("gave up"))
        self.assertEqual(self.successResultOf(d), "done at hs2")
        self.assertEqual(tried, ["hs1", "hs2"])

    def test_rememberedAttemptRaises(self) -> None:
        """
        With the home remembered, C{attempt} is called at once; if it
        raises, the result fails with its error (as when the directory is
        asked).
        """
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        for remembered in (False, True):

            def attempt(home: str | None) -> Deferred[str]:
                raise PersistenceFailed(f"at {home}")

            d = followMoves(self.locator, ALICE, attempt, "a test", lambda: ServiceUnavailable("gave up"))
            self.assertEqual(self.failureResultOf(d, PersistenceFailed).value.args[0], "at hs1")
        self.assertEqual(self.directory.reads, 1)

    def test_noReferenceCycle(self) -> None:
        """
        Following a user's home leaves no reference cycle behind: what it
        made is freed at once, not left to the garbage collector (it runs
        for every delivery; cycles there made full collections of a busy
        server's heap a large part of its CPU time).
        """
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        self.successResultOf(self.locator.homeOf(ALICE))
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                d = followMoves(self.locator, ALICE, lambda home: succeed(home), "a test", lambda: ServiceUnavailable("gave up"))
                self.assertEqual(self.successResultOf(d), "hs1")
            del d
            self.assertEqual(gc.collect(), 0)
        finally:
            gc.enable()

    def test_giveUpOnSecondMove(self) -> None:
        """
        A second L{MovedTo} is logged and becomes what C{giveUp} makes;
        other failures pass as they are.
        """
        self.directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        with capturedLogs() as events:
            d = followMoves(self.locator, ALICE, lambda home: fail(MovedTo("moved", "hs2")), "a test", lambda: ServiceUnavailable("gave up"))
            self.assertEqual(self.failureResultOf(d, ServiceUnavailable).value.text, "gave up")
        self.assertIn("alice@corp.example moved again (to hs2) during a test; giving up", [formatEvent(e) for e in events])
        d = followMoves(self.locator, ALICE, lambda home: fail(PersistenceFailed("no")), "a test", lambda: ServiceUnavailable("gave up"))
        self.failureResultOf(d, PersistenceFailed)
