"""
Tests for L{imgateway.malloctrim}: trims of the C library's heap, at most
one per interval, only after something was freed.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgateway.malloctrim import MallocTrimmer, glibcMallocTrim

TICK = 2**-10


class MallocTrimmerTests(SynchronousTestCase):
    """
    L{MallocTrimmer} with a fake trim.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.trims: list[float] = []
        self.trimmer = MallocTrimmer(self.clock, 10, lambda: self.trims.append(self.clock.seconds()))

    def test_oneTrimPerInterval(self) -> None:
        """
        The first request since the last trim is answered by a trim exactly
        C{interval} seconds later; the requests until then are part of it.
        """
        self.clock.advance(1)
        self.trimmer.freed()
        self.clock.advance(3)
        self.trimmer.freed()
        self.clock.advance(7 - TICK)
        self.assertEqual(self.trims, [])
        self.trimmer.freed()
        self.clock.advance(TICK)
        self.assertEqual(self.trims, [11])
        self.assertEqual(self.trimmer.trims, 1)
        self.clock.advance(100)
        self.assertEqual(self.trims, [11])
        self.trimmer.freed()
        self.clock.advance(10)
        self.assertEqual(self.trims, [11, 121])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_off(self) -> None:
        """
        An interval of 0, or no way to trim (not glibc), means no trim and
        no timer.
        """
        off = MallocTrimmer(self.clock, 0, lambda: self.trims.append(0))
        noLibrary = MallocTrimmer(self.clock, 10)
        noLibrary._trim = None
        for trimmer in (off, noLibrary):
            self.assertFalse(trimmer.available)
            trimmer.freed()
            self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.trims, [])

    def test_stop(self) -> None:
        """
        L{MallocTrimmer.stop} cancels a trim that is due.
        """
        self.trimmer.freed()
        self.trimmer.stop()
        self.clock.advance(20)
        self.assertEqual(self.trims, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class GlibcTests(SynchronousTestCase):
    """
    L{glibcMallocTrim}.
    """

    def test_trims(self) -> None:
        """
        On glibc it is C{malloc_trim(0)}, which returns 0 or 1.
        """
        trim = glibcMallocTrim()
        if trim is None:
            raise self.skipTest("not glibc")
        self.assertIn(trim(), (0, 1))
