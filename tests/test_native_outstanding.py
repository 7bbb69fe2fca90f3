"""
Tests for L{imgateway.adapters.native.outstanding}: which of the server's
requests await a response.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.framing import MAX_SEQ
from imgateway.adapters.native.outstanding import OutstandingRequests


class OutstandingRequestsTests(SynchronousTestCase):
    """
    L{OutstandingRequests} numbers requests and takes one response for
    each, in any order, within its window.
    """

    def test_numbers(self) -> None:
        """
        Requests are numbered from 1.
        """
        o = OutstandingRequests(10)
        self.assertEqual([o.next() for _ in range(3)], [1, 2, 3])
        self.assertEqual(o.unanswered, 3)

    def test_nothingSent(self) -> None:
        """
        Before any request, no response is taken, whatever its number.
        """
        o = OutstandingRequests(10)
        self.assertEqual([o.answer(s) for s in (0, 1, MAX_SEQ, -1, MAX_SEQ + 1)], [False] * 5)

    def test_oncePerRequest(self) -> None:
        """
        Each request takes one response, in any order; a second one, or one
        to a number not sent, is refused.
        """
        o = OutstandingRequests(10)
        for _ in range(4):
            o.next()
        self.assertFalse(o.answer(5))
        self.assertFalse(o.answer(0))
        self.assertTrue(o.answer(3))
        self.assertFalse(o.answer(3))
        self.assertTrue(o.answer(1))
        self.assertFalse(o.answer(1))
        self.assertEqual(o.unanswered, 2)
        self.assertTrue(o.answer(4))
        self.assertTrue(o.answer(2))
        self.assertEqual(o.unanswered, 0)
        self.assertEqual([o.answer(s) for s in range(0, 6)], [False] * 6)

    def test_windowBoundary(self) -> None:
        """
        Of C{window + 1} requests, the latest C{window} can be answered; the
        oldest is forgotten.
        """
        o = OutstandingRequests(3)
        for _ in range(4):
            o.next()
        self.assertEqual(o.unanswered, 3)
        self.assertFalse(o.answer(1))
        self.assertEqual([o.answer(s) for s in (2, 3, 4)], [True] * 3)

    def test_forgettingKeepsAnswers(self) -> None:
        """
        When the oldest unanswered request is forgotten, the later ones
        already answered stay answered (and are settled), and the memory of
        answers never spans more than the window.
        """
        o = OutstandingRequests(4)
        for _ in range(4):
            o.next()
        self.assertTrue(o.answer(2))
        self.assertTrue(o.answer(3))
        o.next()  # 5: request 1 is forgotten, 2 and 3 settle with it
        self.assertEqual(o.unanswered, 2)
        self.assertEqual([o.answer(s) for s in (1, 2, 3)], [False] * 3)
        self.assertEqual([o.answer(s) for s in (4, 5)], [True] * 2)
        # A peer that never answers request 6 but answers all the later ones.
        o.next()
        for s in range(7, 1000):
            o.next()
            self.assertTrue(o.answer(s))
            self.assertLessEqual(o._ahead.bit_length(), 4)
        self.assertFalse(o.answer(6))

    def test_wraps(self) -> None:
        """
        After L{MAX_SEQ} the numbers start at 1 again, and responses on
        both sides of the wrap are matched.
        """
        o = OutstandingRequests(10)
        o.sent = o._floor = MAX_SEQ - 2
        self.assertEqual([o.next() for _ in range(4)], [MAX_SEQ - 1, MAX_SEQ, 1, 2])
        self.assertTrue(o.answer(1))
        self.assertTrue(o.answer(MAX_SEQ))
        self.assertFalse(o.answer(MAX_SEQ - 2))
        self.assertTrue(o.answer(MAX_SEQ - 1))
        self.assertTrue(o.answer(2))
        self.assertEqual(o.unanswered, 0)

    def test_badWindow(self) -> None:
        """
        The window is at least 1 and below L{MAX_SEQ}.
        """
        self.assertRaises(ValueError, OutstandingRequests, 0)
        self.assertRaises(ValueError, OutstandingRequests, MAX_SEQ)
