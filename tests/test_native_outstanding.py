"""
Tests for L{imgateway.adapters.native.outstanding}: which of the server's
requests await a response.
"""

from __future__ import annotations

import random

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

    def test_sameAsModel(self) -> None:
        """
        Random runs of requests and responses (mostly in order, as clients
        answer; some out of order, repeated, unknown or forgotten; some
        across the wrap of L{MAX_SEQ}) take exactly the responses a plain
        model takes: one per request sent among the latest C{window}, not
        answered yet.
        """
        rng = random.Random(11)
        for _ in range(300):
            window = rng.choice([1, 2, 5, 64])
            o = OutstandingRequests(window)
            start = rng.choice([0, 0, MAX_SEQ - 3])
            o.sent = o._floor = start
            sent: list[int] = []  # request numbers (from 1, unwrapped)
            answered: set[int] = set()
            for _ in range(200):
                if rng.random() < 0.5:
                    sent.append(start + len(sent) + 1)
                    self.assertEqual(o.next(), (sent[-1] - 1) % MAX_SEQ + 1)
                    continue
                live = [n for n in sent[-window:] if n not in answered]
                choice = rng.random()
                if live and choice < 0.7:
                    n = live[0]  # in order
                elif live and choice < 0.85:
                    n = rng.choice(live)
                else:
                    n = rng.choice(sent or [1]) if rng.random() < 0.7 else rng.randint(0, 10)
                seq = (n - 1) % MAX_SEQ + 1 if n > 0 else n
                # The request awaiting an answer with that number, if any
                # (numbers are unique within a window).
                match = [m for m in sent[-window:] if m not in answered and (m - 1) % MAX_SEQ + 1 == seq]
                self.assertEqual(o.answer(seq), bool(match), (window, start, n))
                answered.update(match)
            self.assertEqual(o.unanswered, len([n for n in sent[-window:] if n not in answered]))
