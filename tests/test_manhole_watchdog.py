"""
Tests for L{imgateway.manhole.watchdog}: a reactor that does not run for
longer than the threshold is logged once, with the stack of what it was
running, taken while it was blocked.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from imgateway.manhole.watchdog import ReactorWatchdog


def _here() -> FrameType:
    """
    A frame to stand for the reactor thread's, with a recognisable name.
    """
    return sys._getframe()


class ReactorWatchdogTests(SynchronousTestCase):
    """
    L{ReactorWatchdog} with a fake clock, fake monotonic time and no
    thread: the tests call L{ReactorWatchdog.check} as the thread would.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.now = 100.0
        self.frame = _here()
        self.watchdog = ReactorWatchdog(
            self.clock, 1.0, monotonic=lambda: self.now, frames=lambda: {threading.get_ident(): self.frame}, thread=False
        )
        self.watchdog.startService()
        self.addCleanup(self.watchdog.stopService)

    def block(self, seconds: float) -> list[dict[str, object]]:
        """
        Let the reactor be blocked for C{seconds} (the watching thread
        checking every interval meanwhile), then run again.

        @return: The events logged.
        """
        with capturedLogs() as events:
            start = self.now
            while self.now < start + seconds:
                self.now = min(start + seconds, self.now + self.watchdog.interval)
                self.watchdog.check()
            self.clock.advance(self.watchdog.interval)
        return [e for e in events if e.get("log_namespace") == "imgateway.manhole.watchdog.ReactorWatchdog"]

    def test_running(self) -> None:
        """
        A reactor that beats on time is never logged.
        """
        for _ in range(20):
            self.now += self.watchdog.interval
            self.watchdog.check()
            self.clock.advance(self.watchdog.interval)
        self.assertEqual(self.watchdog.reports, 0)

    def test_blocked(self) -> None:
        """
        A block longer than the threshold is logged once, as a warning,
        with how long the reactor did not run and the stack taken while it
        was blocked.
        """
        [event] = self.block(1.5 + self.watchdog.interval)
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["threshold"], 1.0)
        self.assertEqual(event["seconds"], 1.5 + self.watchdog.interval)
        self.assertIn("in _here", str(event["stack"]))
        self.assertEqual(self.watchdog.reports, 1)
        self.assertEqual(self.block(0), [])

    def test_threshold(self) -> None:
        """
        A block of the threshold is not logged; a little more is.
        """
        self.assertEqual(self.block(1.0), [])
        self.assertEqual(len(self.block(1.0 + self.watchdog.interval + 0.01)), 1)

    def test_stops(self) -> None:
        """
        Stopping the watchdog leaves no timer behind.
        """
        self.watchdog.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
