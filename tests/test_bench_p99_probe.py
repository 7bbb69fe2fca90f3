# -*- test-case-name: tests.test_bench_p99_probe -*-
"""
Tests for C{bench/p99_probe.py}'s attribution of slow messages, on made-up
records (the script itself runs a gateway: see C{bench/README.md}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.p99_probe import attribute, overlaps, stallKind, stalls


class StallKindTests(SynchronousTestCase):
    """
    L{stallKind} tells a working thread from another thread holding the GIL
    and from a process waiting for a core.
    """

    def test_busy(self) -> None:
        """
        The timer's thread used at least half the stall's wall time.
        """
        self.assertEqual(stallKind(late=4000, cpu=2500, proc=2600), "busy")

    def test_otherThread(self) -> None:
        """
        The process used the time, its timer thread did not.
        """
        self.assertEqual(stallKind(late=4000, cpu=100, proc=3000), "thread")

    def test_waiting(self) -> None:
        """
        Neither used it: the process waited for a core.
        """
        self.assertEqual(stallKind(late=4000, cpu=100, proc=200), "waiting")

    def test_stallsOverTwoMs(self) -> None:
        """
        L{stalls} keeps the stalls over 2 ms of one kind, sorted by start.
        """
        lags = [(50, 5000, 5000, 5000), (10, 3000, 0, 0), (20, 1500, 1500, 1500), (5, 2500, 3000, 3000)]
        self.assertEqual(stalls(lags, "busy"), [(5, 2500), (50, 5000)])
        self.assertEqual(stalls(lags, "waiting"), [(10, 3000)])


class OverlapsTests(SynchronousTestCase):
    """
    L{overlaps} finds a span that overlaps an interval.
    """

    def test_overlaps(self) -> None:
        """
        A span overlaps from either side, inside or around; one that ends
        before or starts after does not.
        """
        spans = [(100, 10), (200, 50)]
        self.assertTrue(overlaps(spans, 105, 107))
        self.assertTrue(overlaps(spans, 90, 101))
        self.assertTrue(overlaps(spans, 240, 300))
        self.assertTrue(overlaps(spans, 150, 400))
        self.assertFalse(overlaps(spans, 111, 199))
        self.assertFalse(overlaps(spans, 251, 300))
        self.assertFalse(overlaps([], 0, 10))


class AttributeTests(SynchronousTestCase):
    """
    L{attribute} sorts the slow messages by the first cause that overlaps
    their time in flight.
    """

    def test_causes(self) -> None:
        """
        A gen-2 collection wins over a stall it overlaps; a stall with the
        reactor's CPU is the reactor's work, one without is waiting; a
        message that overlaps nothing is counted as such; fast messages are
        not counted.
        """
        server: dict[str, Any] = {
            "gc": [(1000, 3000, 2, 10, 3000), (1000, 500, 0, 0, 500)],
            "lags": [(1500, 4000, 4000, 4000), (20000, 6000, 100, 100), (40000, 3000, 3000, 3000)],
        }
        driver: dict[str, Any] = {"gc": [], "lags": []}
        sent = [900, 19000, 39000, 60000, 70000]
        recv = [6900, 26000, 45000, 66000, 71000]
        got = attribute(sent, recv, server, [driver], 0, 100000, 5000)
        self.assertEqual(got["slow"], 4)
        by = got["slow_by_cause"]
        self.assertEqual(by["gateway gen-2 collection"], 1)
        self.assertEqual(by["gateway waiting for a core > 2 ms"], 1)
        self.assertEqual(by["gateway reactor busy > 2 ms (no collection)"], 1)
        self.assertEqual(by["nothing recorded"], 1)
        self.assertEqual(got["gateway_gc"]["gen2"]["n"], 1)
