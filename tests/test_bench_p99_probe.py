# -*- test-case-name: tests.test_bench_p99_probe -*-
"""
Tests for C{bench/p99_probe.py}'s attribution of slow messages, on made-up
records (the script itself runs a gateway: see C{bench/README.md}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.p99_probe import attribute, hopSummary, overlaps, stallKind, stalls


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


class HopSummaryTests(SynchronousTestCase):
    """
    L{hopSummary} cuts each traced message of the window into its stages
    and counts the polls and C{epoll_ctl} calls per message.
    """

    def test_stages(self) -> None:
        """
        A message sent at 1,000 µs, whose poll returned at 1,100, which
        reached the protocol at 1,130 and was sent at 1,300, received at
        1,400: 100, 30, 170 and 100 µs; messages outside the window or
        unknown to the driver are left out; the counts are the last traced
        message's less the first's, per message after the first.
        """
        hops = [
            (1000, 1100, 1130, 1300, 150, 0, 10, 40),
            (2000, 2050, 2060, 2100, 40, 1, 12, 40),
            (3000, 3010, 3020, 3030, 10, 0, 14, 40),
            (9000, 9010, 9020, 9030, 10, 0, 99, 99),
            (4000, 4010, 4020, 4030, 10, 0, 99, 99),
        ]
        sent = [1000, 2000, 3000, 9000]
        recv = [1400, 2200, 3100, 9100]
        out = hopSummary(sent, recv, {"hops": hops}, t0=500, t1=5000)
        self.assertEqual(out["n"], 3)
        self.assertEqual(out["stages_us"]["driver send -> gateway poll returns"], {"p50": 50, "p90": 100, "p99": 100})
        self.assertEqual(out["slowest_1pct_median_us"]["whole way"], 400)
        self.assertEqual(out["slowest_1pct_median_us"]["protocol -> send to the recipient"], 170)
        self.assertEqual(out["polls_between_read_and_send"]["p99"], 1)
        self.assertEqual((out["polls_per_message"], out["epoll_ctl_per_message"]), (2.0, 0.0))

    def test_nothingTraced(self) -> None:
        """
        Without the gateway's trace there is nothing to cut.
        """
        self.assertEqual(hopSummary([1], [2], {}, 0, 10), {"n": 0})
