"""
Tests for the benchmark clients' C{Presence-Answers: none}
(C{docs/protocol.md} section 7.2): C{bench/_loaddriver.py}'s native
connection and C{bench/compare.py}'s option.
"""

from __future__ import annotations

import asyncio

from twisted.trial.unittest import SynchronousTestCase

from bench import compare
from bench._loaddriver import NativeConn, Stats
from tests.test_bench_compare import SPEC, _Transport

FRAMES = (
    b"NOTIFY pres:user9@corp.example IMGW/1.0\r\nSeq: 0\r\nEvent: presence\r\nPresence: online\r\nNote: 7 89\r\n\r\n"
    b"NOTIFY pres:user9@corp.example IMGW/1.0\r\nSeq: 3\r\nEvent: presence\r\nPresence: online\r\nNote: 8 90\r\n\r\n"
    b"NOTIFY pres:user8@corp.example IMGW/1.0\r\nSeq: 4\r\nEvent: subscription\r\nSubscription: subscribe\r\n\r\n"
)


class DriverTests(SynchronousTestCase):
    def test_seqZeroNotAnswered(self) -> None:
        """
        The driver's native connection answers every numbered request and
        not a presence C{NOTIFY} with C{Seq: 0}, which still counts as a
        delivery.
        """
        got: list[str] = []

        async def go() -> _Transport:
            c = NativeConn("user1", SPEC, Stats())
            t = _Transport()
            c.connection_made(t)
            c.onPresence = lambda conn, frm, note: got.append(note)
            c.data_received(FRAMES)
            return t

        t = asyncio.run(go())
        self.assertEqual(got, ["7 89", "8 90"])
        self.assertEqual(b"".join(t.written), b"IMGW/1.0 200 OK\r\nSeq: 3\r\n\r\nIMGW/1.0 200 OK\r\nSeq: 4\r\n\r\n")

    def test_optIn(self) -> None:
        """
        The driver's native connection asks for unanswered presence
        C{NOTIFY}s unless told C{presence_answers: all}.
        """

        async def go() -> tuple[bool, bool, bool]:
            return (
                NativeConn("u", SPEC, Stats()).quiet,
                NativeConn("u", dict(SPEC, presence_answers="none"), Stats()).quiet,
                NativeConn("u", dict(SPEC, presence_answers="all"), Stats()).quiet,
            )

        self.assertEqual(asyncio.run(go()), (True, True, False))


class CompareTests(SynchronousTestCase):
    def test_presenceRun(self) -> None:
        """
        C{compare.py}'s presence run passes its C{--presence-answers} to the
        driver: C{none} unless asked.
        """
        for argv, expected in [([], "none"), (["--presence-answers", "all"], "all")]:
            s = compare.settings(compare.parseArgs(["--quick", *argv]))
            run = [r for r in compare.firstServerRuns(s, ["presence"]) if r[0] == "presence"][0]
            i = run[2].index("--presence-answers")
            self.assertEqual(run[2][i + 1], expected)


class NativeLoadTests(SynchronousTestCase):
    def test_seqZeroNotAnswered(self) -> None:
        """
        C{bench/native_load.py}'s connection, with either reader, answers
        numbered requests and not a presence C{NOTIFY} with C{Seq: 0}.
        """
        from bench import native_load

        for fast in (True, False):

            async def go() -> _Transport:
                c = native_load.NativeConn("user1", native_load.Stats(), fast)
                t = _Transport()
                c.connection_made(t)
                c.data_received(FRAMES)
                return t

            t = asyncio.run(go())
            self.assertEqual(b"".join(t.written), b"IMGW/1.0 200 OK\r\nSeq: 3\r\n\r\nIMGW/1.0 200 OK\r\nSeq: 4\r\n\r\n", fast)
