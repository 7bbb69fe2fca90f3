# -*- test-case-name: tests.test_bench_p99_probe -*-
"""
Tests for C{bench/p99_probe.py}'s attribution of slow messages, on made-up
records (the script itself runs a gateway: see C{bench/README.md}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.p99_probe import (
    PARTS,
    attribute,
    hopSummary,
    overlaps,
    stallKind,
    stalls,
    tailAttribution,
    tailParts,
    threadsCpuIn,
)


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


class TailPartsTests(SynchronousTestCase):
    """
    L{tailParts} cuts one message's latency into the gateway's and the
    driver's parts, which add up to it.
    """

    def test_gatewayBusy(self) -> None:
        """
        Sent at 1,000 while the gateway was in a turn until its poll at
        1,300 (returned at 1,310): 300 µs busy, 10 waking; read and sent by
        1,500 with 120 µs of CPU: 120 on CPU, 70 off; the driver's poll
        started at 1,450 (before the send: it was waiting) and returned at
        1,560, the copy read at 1,600.
        """
        parts = tailParts(1000, 1600, 1450, 1560, (1000, 1310, 1320, 1500, 120), gwStart=1300)
        self.assertEqual(dict(zip(PARTS, parts)), {
            "gateway busy in an earlier turn": 300, "gateway waking (idle in its poll)": 10,
            "gateway turn, its CPU": 120, "gateway turn, off CPU": 70, "driver busy when the copy was sent": 0,
            "driver waking (idle in its poll)": 60, "driver turn, reads before it": 40,
        })  # fmt: skip
        self.assertEqual(sum(parts), 600)

    def test_driverBusy(self) -> None:
        """
        The gateway waited in its poll (started before the send); the
        driver's poll started after the gateway sent: the driver was busy
        until then.
        """
        parts = tailParts(1000, 1500, 1400, 1410, (1000, 1100, 1110, 1200, 100), gwStart=900)
        self.assertEqual(parts, (0, 100, 100, 0, 200, 10, 90))


class TailAttributionTests(SynchronousTestCase):
    """
    L{tailAttribution} takes the slowest 1 % of the traced messages and
    says what the gateway turns on their way held.
    """

    def test_tail(self) -> None:
        """
        Of 100 messages, the slowest waited behind a gateway turn (from the
        poll returning at 5,010 to the next starting at 5,900) that held a
        collection, a log event and a timed call; it is put down to that
        turn. The other messages are fast and in turns of their own.
        """
        polls: list[int] = []
        hops = []
        sent, recv, starts, ends = [], [], [], []
        # Poll rows: start, CPU at start, return, CPU at return, process CPU, collections, log events, timed calls.
        for i in range(99):
            t = 10_000 + 100 * i
            polls += [t - 5, 0, t, 0, 0, 0, 0, 0]
        polls = [5000, 0, 5010, 0, 0, 0, 0, 0, 5900, 800, 5910, 800, 800, 1, 1, 1, *polls]
        hops.append((5100, 5910, 5915, 6000, 80))
        sent.append(5100)
        recv.append(6100)
        starts.append(6005)
        ends.append(6050)
        for i in range(99):
            t = 10_000 + 100 * i
            hops.append((t - 20, t, t + 5, t + 30, 25))
            sent.append(t - 20)
            recv.append(t + 60)
            starts.append(t + 20)
            ends.append(t + 40)
        server = {"hops": hops, "polls": polls, "timed": [[5500, 300, 290, "Lease.ended"]], "gc": [[5200, 400, 0, 0, 400]]}
        out = tailAttribution(sent, recv, starts, ends, server, t0=0, t1=100_000)
        self.assertEqual((out["n"], out["tail_n"], out["tail_from_us"]), (100, 1, 1000))
        self.assertEqual(out["tail_by_largest_part"]["gateway busy in an earlier turn"], 1)
        self.assertEqual(out["tail_median_us"]["gateway busy in an earlier turn"], 800)
        self.assertEqual(out["tail_turns_held"], {
            "turns with a collection": 1, "turns with timed or thread calls > 100 µs": 1, "turns with log events": 1,
            "turns where other threads used > 100 µs CPU": 0,
        })  # fmt: skip
        self.assertEqual(out["tail_turn_calls"], [("Lease.ended", 1)])
        # The fast ones came 15 µs before their poll started, and it returned 5 µs later.
        self.assertEqual(out["all_median_us"]["gateway busy in an earlier turn"], 15)
        self.assertEqual(out["all_median_us"]["gateway waking (idle in its poll)"], 5)

    def test_nothingTraced(self) -> None:
        """
        Without the gateway's trace there is nothing to cut.
        """
        self.assertEqual(tailAttribution([1], [2], [1], [1], {}, 0, 10), {"n": 0})


class ThreadsCpuTests(SynchronousTestCase):
    """
    L{threadsCpuIn} gives each gateway thread's CPU between the first and
    last samples inside the window.
    """

    def test_window(self) -> None:
        """
        Samples outside the window are left out; a thread that started
        inside it counts from 0; fewer than two samples inside give nothing.
        """
        samples = [(5, {"a/1": 100}), (10, {"a/1": 200}), (20, {"a/1": 900, "b/2": 30}), (40, {"a/1": 5000})]
        self.assertEqual(threadsCpuIn(samples, 10, 30), {"a/1": 700, "b/2": 30})
        self.assertEqual(threadsCpuIn(samples, 30, 50), {})
