"""
Tests for L{imgateway.adapters.native.outstanding}: which of the server's
requests await a response.
"""

from __future__ import annotations

import random
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import imgateway.adapters.native.outstanding as outstandingModule
from imgateway.adapters.native.framing import MAX_SEQ
from imgateway.adapters.native.outstanding import OutstandingRequests


def _twins(rng: random.Random) -> tuple[OutstandingRequests, OutstandingRequests]:
    """
    Two L{OutstandingRequests} in one random state, for the differential
    tests: the same window (1, 3 or 64), the same start (0, or just before
    the wrap of L{MAX_SEQ}) and the same 0 to 8 requests sent.
    """
    window = rng.choice([1, 3, 64])
    start = rng.choice([0, 0, MAX_SEQ - 4])
    twins = OutstandingRequests(window), OutstandingRequests(window)
    sends = rng.randint(0, 8)
    for o in twins:
        o.sent = o.floor = start
        for _ in range(sends):
            o.next()
    return twins


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
        o.sent = o.floor = MAX_SEQ - 2
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
            o.sent = o.floor = start
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

    def test_answerAllAsAnswer(self) -> None:
        """
        L{OutstandingRequests.answerAll} takes a read's responses as
        L{OutstandingRequests.answer} takes them one by one, up to the
        first one refused: the same count taken, the same state after;
        for in-order runs, out-of-order ones, repeated, unknown and
        forgotten numbers, and runs across the wrap of L{MAX_SEQ}.
        """
        rng = random.Random(7)
        for _ in range(2000):
            one, each = _twins(rng)
            if rng.random() < 0.3 and each.sent > each.floor:
                # One answered out of order first.
                seq = (each.sent - 1) % MAX_SEQ + 1
                self.assertEqual(one.answer(seq), each.answer(seq))
            first = one.floor + rng.choice([1, 1, 1, 2, 0])
            seqs = [(n - 1) % MAX_SEQ + 1 for n in range(first, first + rng.randint(1, 5))]
            if rng.random() < 0.3:
                seqs[rng.randrange(len(seqs))] = rng.choice([0, 1, MAX_SEQ, seqs[0], rng.randint(0, 12)])
            if rng.random() < 0.2:
                rng.shuffle(seqs)
            taken = 0
            for seq in seqs:
                if not each.answer(seq):
                    break
                taken += 1
            self.assertEqual(one.answerAll(list(seqs)), taken, seqs)
            self.assertEqual((one.sent, one.floor, one._ahead), (each.sent, each.floor, each._ahead), seqs)
        o = OutstandingRequests(10)
        o.sent = o.floor = MAX_SEQ - 1
        self.assertEqual([o.next(), o.next()], [MAX_SEQ, 1])
        # The number after MAX_SEQ is 1, never MAX_SEQ + 1.
        self.assertEqual(o.answerAll([MAX_SEQ, MAX_SEQ + 1]), 1)
        self.assertEqual(o.answerAll([1]), 1)

    def test_answerAllInOrder(self) -> None:
        """
        Responses to the oldest requests awaiting one, in order, are taken
        in one step: L{OutstandingRequests.answer} is not called.
        """
        o = OutstandingRequests(10)
        for _ in range(6):
            o.next()
        self.assertTrue(o.answer(1))
        if (outstandingModule.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SkipTest("compiled: no Python calls to count")
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                calls.append(frame.f_code.co_name)

        sys.setprofile(profile)
        try:
            taken = o.answerAll([2, 3, 4])
        finally:
            sys.setprofile(None)
        self.assertEqual((taken, o.floor, o.unanswered), (3, 4, 2))
        self.assertEqual(calls, ["answerAll", "answerInOrder"])

    def test_answerInOrderAsAnswer(self) -> None:
        """
        L{OutstandingRequests.answerInOrder} takes the responses to the
        C{count} oldest requests awaiting one exactly when
        L{OutstandingRequests.answer} would take each of them, in order,
        leaving the same state; else it changes nothing: with some
        answered out of order, more than await, and across the wrap of
        L{MAX_SEQ}.
        """
        rng = random.Random(5)
        for _ in range(2000):
            one, each = _twins(rng)
            if rng.random() < 0.3 and each.sent > each.floor:
                seq = (each.floor + rng.randint(1, each.sent - each.floor) - 1) % MAX_SEQ + 1
                self.assertEqual(one.answer(seq), each.answer(seq))
            count = rng.randint(1, 6)
            before = (one.sent, one.floor, one._ahead)
            seqs = [(n - 1) % MAX_SEQ + 1 for n in range(one.floor + 1, one.floor + count + 1)]
            wraps = seqs != list(range(seqs[0], seqs[0] + count))
            all_ = not each._ahead and all(each.answer(s) for s in seqs)
            if one.answerInOrder(count):
                self.assertTrue(all_, seqs)
                self.assertEqual((one.sent, one.floor, one._ahead), (each.sent, each.floor, each._ahead), seqs)
            else:
                self.assertEqual((one.sent, one.floor, one._ahead), before, seqs)
                self.assertTrue(not all_ or wraps, seqs)
