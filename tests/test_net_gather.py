# -*- test-case-name: tests.test_net_gather -*-
"""
Tests for L{imgateway.net.gather}: a read's writes gathered, and written
when the read is done.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.gather import GATHER, WriteGather


class _Writer:
    """
    A L{GatheredWriter<imgateway.net.gather.GatheredWriter>} that records
    when it is told to write, and can fail.
    """

    def __init__(self, name: str, flushed: list[str], fails: bool = False) -> None:
        self.name = name
        self.flushed = flushed
        self.fails = fails

    def flushGathered(self) -> None:
        self.flushed.append(self.name)
        if self.fails:
            raise RuntimeError(f"{self.name} cannot write")


class WriteGatherTests(SynchronousTestCase):
    """
    L{WriteGather}.
    """

    def test_beginOnce(self) -> None:
        """
        L{WriteGather.begin} begins a gather only when none is under way
        (a read within another's writes with the outer one), one epoch more
        each time; L{WriteGather.end} ends it.
        """
        gather = WriteGather()
        self.assertFalse(gather.active)
        self.assertTrue(gather.begin())
        self.assertEqual((gather.active, gather.epoch), (True, 1))
        self.assertFalse(gather.begin())
        self.assertEqual((gather.active, gather.epoch), (True, 1))
        gather.end()
        self.assertFalse(gather.active)
        self.assertTrue(gather.begin())
        self.assertEqual(gather.epoch, 2)
        gather.end()

    def test_endFlushesInOrder(self) -> None:
        """
        L{WriteGather.end} tells each connection holding frames to write
        them, in the order they began to, once, and holds none after.
        """
        gather = WriteGather()
        flushed: list[str] = []
        gather.begin()
        gather.held.extend([_Writer("b", flushed), _Writer("a", flushed), _Writer("c", flushed)])
        gather.end()
        self.assertEqual(flushed, ["b", "a", "c"])
        self.assertEqual(gather.held, [])
        gather.begin()
        gather.end()
        self.assertEqual(flushed, ["b", "a", "c"])

    def test_notActiveWhileFlushing(self) -> None:
        """
        The gather is over when the connections write what they held: what
        they write meanwhile is not gathered.
        """
        gather = WriteGather()
        seen: list[bool] = []

        class Writer:
            def flushGathered(self) -> None:
                seen.append(gather.active)

        gather.begin()
        gather.held.append(Writer())
        gather.end()
        self.assertEqual(seen, [False])

    def test_failureLogged(self) -> None:
        """
        A connection that fails to write what it held is logged, and the
        others still write theirs.
        """
        gather = WriteGather()
        flushed: list[str] = []
        gather.begin()
        gather.held.extend([_Writer("a", flushed, fails=True), _Writer("b", flushed)])
        gather.end()
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(gather.active)

    def test_processGather(self) -> None:
        """
        The process's gather is one L{WriteGather}, idle between reads.
        """
        self.assertIsInstance(GATHER, WriteGather)
        self.assertFalse(GATHER.active)
        self.assertEqual(GATHER.held, [])
