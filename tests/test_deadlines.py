"""
Tests for L{imgateway.core.deadlines}: many timers on one delayed call per
delay, each running out exactly when a call of its own would.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgateway.core.deadlines import Deadlines

#: A step of the clock that floating point adds and subtracts exactly.
TICK = 2**-10


class DeadlinesTests(SynchronousTestCase):
    """
    L{Deadlines}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[str, float]] = []
        self.timers: Deadlines[str] = Deadlines(self.clock, self.expired)

    def expired(self, key: str) -> None:
        self.fired.append((key, self.clock.seconds()))

    def tearDown(self) -> None:
        for key in ["a", "b", "c", "d", *map(str, range(100))]:
            self.timers.stop(key)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exactDelay(self) -> None:
        """
        A timer runs out exactly C{delay} seconds after it was started: not
        a moment before.
        """
        self.clock.advance(0.5)
        self.timers.start("a", 30)
        self.clock.advance(30 - TICK)
        self.assertEqual(self.fired, [])
        self.assertIn("a", self.timers)
        self.clock.advance(TICK)
        self.assertEqual(self.fired, [("a", 30.5)])
        self.assertNotIn("a", self.timers)
        self.assertEqual(len(self.timers), 0)

    def test_restart(self) -> None:
        """
        A timer started again (L{Deadlines.start} or L{Deadlines.restart})
        runs out C{delay} seconds after the last start, once.
        """
        self.timers.start("a", 10)
        self.clock.advance(9)
        self.timers.restart("a")
        self.clock.advance(9)
        self.timers.start("a", 10)
        self.assertEqual(self.timers.when("a"), 28)
        self.clock.advance(10 - TICK)
        self.assertEqual(self.fired, [])
        self.clock.advance(TICK)
        self.assertEqual(self.fired, [("a", 28)])
        self.clock.advance(100)
        self.assertEqual(self.fired, [("a", 28)])

    def test_restartNotRunning(self) -> None:
        """
        L{Deadlines.restart} starts nothing for a key without a timer.
        """
        self.timers.restart("a")
        self.assertNotIn("a", self.timers)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """
        A stopped timer does not run out; the others do, on time; once none
        runs, no delayed call is left.
        """
        self.timers.start("a", 10)
        self.clock.advance(1)
        self.timers.start("b", 10)
        self.timers.stop("a")
        self.timers.stop("c")
        self.clock.advance(10)
        self.assertEqual(self.fired, [("b", 11)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneCallPerDelay(self) -> None:
        """
        The timers of one delay share one delayed call, whatever their
        number; each runs out at its own time, in order.
        """
        for i in range(100):
            self.timers.start(str(i), 60)
            self.clock.advance(0.25)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.timers.start("a", 5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        for _ in range(400):
            self.clock.advance(0.25)
        self.assertEqual(self.fired[0], ("a", 30))
        self.assertEqual(self.fired[1:], [(str(i), 60 + 0.25 * i) for i in range(100)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_otherDelay(self) -> None:
        """
        Starting a running timer with another delay replaces it.
        """
        self.timers.start("a", 10)
        self.timers.start("a", 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3)
        self.assertEqual(self.fired, [("a", 3)])
        self.clock.advance(10)
        self.assertEqual(self.fired, [("a", 3)])

    def test_headRestarted(self) -> None:
        """
        When the first timer is restarted, the shared call finds nothing
        due when it runs, and waits for the next timer, which runs out on
        time.
        """
        self.timers.start("a", 10)
        self.clock.advance(2)
        self.timers.start("b", 10)
        self.clock.advance(7)
        self.timers.restart("a")
        self.clock.advance(1)
        self.assertEqual(self.fired, [])
        self.clock.advance(2)
        self.assertEqual(self.fired, [("b", 12)])
        self.clock.advance(7)
        self.assertEqual(self.fired, [("b", 12), ("a", 19)])

    def test_startedWhileRunningOut(self) -> None:
        """
        A timer started again by C{expired} (or another started then) waits
        its delay, and the timers already waiting still run out on time.
        """
        def expired(key: str) -> None:
            self.fired.append((key, self.clock.seconds()))
            if key == "a":
                self.timers.start("a", 10)

        self.timers = Deadlines(self.clock, expired)
        self.timers.start("a", 10)
        self.clock.advance(5)
        self.timers.start("b", 10)
        self.clock.advance(5)
        self.assertEqual(self.fired, [("a", 10)])
        self.clock.advance(5)
        self.assertEqual(self.fired, [("a", 10), ("b", 15)])
        self.clock.advance(5)
        self.assertEqual(self.fired, [("a", 10), ("b", 15), ("a", 20)])

    def test_stoppedWhileRunningOut(self) -> None:
        """
        C{expired} may stop the other timers, all of them too.
        """
        def expired(key: str) -> None:
            self.fired.append((key, self.clock.seconds()))
            self.timers.stop("b")
            self.timers.stop("c")

        self.timers = Deadlines(self.clock, expired)
        self.timers.start("a", 10)
        self.timers.start("b", 10)
        self.timers.start("c", 10)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("a", 10)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingExpired(self) -> None:
        """
        An exception from C{expired} is logged; the other timers due run
        out all the same.
        """
        def expired(key: str) -> None:
            self.fired.append((key, self.clock.seconds()))
            raise RuntimeError(key)

        self.timers = Deadlines(self.clock, expired)
        self.timers.start("a", 1)
        self.timers.start("b", 1)
        self.timers.start("c", 2)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [("a", 1), ("b", 1), ("c", 2)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_fractionalDeadlines(self) -> None:
        """
        Deadlines that are not whole numbers of seconds run out in order,
        none before its time.
        """
        start = 0.1
        self.clock.advance(start)
        for i in range(50):
            self.timers.start(str(i), 0.7)
            self.clock.advance(0.013)
        for i in range(50):
            self.clock.advance(0.013)
        self.clock.advance(1)
        self.assertEqual([k for k, _ in self.fired], [str(i) for i in range(50)])
        for (key, when), i in zip(self.fired, range(50)):
            self.assertGreaterEqual(when, start + 0.013 * i + 0.7 - 1e-9)
