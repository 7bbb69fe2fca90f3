# -*- test-case-name: tests.test_bench_proxy_path -*-
"""
Tests for C{bench/proxy_path.py}: it runs, and the path it measures is the
router's proxied message as the router runs it (the native face's
C{MESSAGE} to the link as a C{SESSION message}, hs1's bare C{200} back to
the client), with no L{Deferred}.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from bench import presence_fanout, proxy_path
from imgateway.router.proxy import RemoteSession
from tests.test_bench_message_path import writesPerTransport


class ProxyPathBenchTests(SynchronousTestCase):
    """
    C{proxy_path.py} on a few senders.
    """

    def test_runs(self) -> None:
        """
        It prints one JSON line with the figures per message: calls in all
        and in each half, and CPU.
        """
        self.patch(proxy_path, "commitOf", lambda folder: "abc1234")
        out = io.StringIO()
        with redirect_stdout(out):
            proxy_path.main(["--senders", "2", "--batch", "3", "--rounds", "5", "--cpu-sets", "1"])
        figures = json.loads(out.getvalue())
        self.assertEqual(
            (figures["bench"], figures["commit"], figures["senders"], figures["batch"]), ("proxy_path", "abc1234", 2, 3)
        )
        self.assertAlmostEqual(figures["send_calls_per_message"] + figures["answer_calls_per_message"], figures["calls_per_message"], places=1)
        self.assertGreater(figures["cpu_us_per_message"], 0)

    def test_routerPathNoDeferred(self) -> None:
        """
        Each client's C{MESSAGE}s go to the link as compact C{SESSION
        message}s and are answered C{200} once hs1's bare C{200}s are read,
        through L{RemoteSession.sendMessageThen}, with no L{Deferred} made
        and nothing of hs1's side (its L{SessionHost}) run.
        """
        router = proxy_path._Router(2)
        self.addCleanup(router.close)
        router.exchange(3, 0)
        written: list[bytes] = []
        write = router.linkTransport.write

        def recording(data: bytes) -> None:
            written.append(data)
            write(data)

        self.patch(router.linkTransport, "write", recording)
        calls = presence_fanout.counted(lambda: router.exchange(3, 1))
        self.assertEqual(sum(count for name, count in calls.items() if name.startswith("__init__ (defer.py:")), 0)
        self.assertEqual(calls["sendMessageThen (proxy.py:%d)" % RemoteSession.sendMessageThen.__code__.co_firstlineno], 6)
        self.assertEqual([name for name in calls if "requestReceived" in name and "proxy.py" in name], [])
        self.assertEqual(b"".join(written).count(b"SESSION message IMGW/1.0\r\n"), 6)

    def test_answersWrittenTogether(self) -> None:
        """
        The link's read of hs1's answers writes each client's five C{200}s
        to its transport in two writes (the first as it comes, the others
        when the read is done: L{imgateway.net.gather}), through the
        link's request (C{_Outgoing}) and the face's C{_respondSent}
        alone.
        """
        router = proxy_path._Router(2)
        self.addCleanup(router.close)
        router.exchange(5, 0)
        router.send(5, 1)
        counts = writesPerTransport(self)
        calls = presence_fanout.counted(lambda: router.answer(5))
        self.assertEqual([counts[id(transport)] for _, transport, _ in router.clients], [2, 2])
        # Each answer told to its waiter by the link's own _Outgoing, with
        # no call to LinkClient; the face's 200 made without sentResponse.
        self.assertEqual([name for name in calls if name.startswith(("_answered (link.py:", "sentResponse ("))], [])


class HS1ProxyPathBenchTests(SynchronousTestCase):
    """
    C{proxy_path.py --role hs1}: hs1's side of the proxied message.
    """

    def test_runs(self) -> None:
        """
        It prints one JSON line with hs1's figures per message.
        """
        self.patch(proxy_path, "commitOf", lambda folder: "abc1234")
        out = io.StringIO()
        with redirect_stdout(out):
            proxy_path.main(["--role", "hs1", "--senders", "2", "--batch", "3", "--rounds", "5", "--cpu-sets", "1"])
        figures = json.loads(out.getvalue())
        self.assertEqual((figures["bench"], figures["role"], figures["senders"], figures["batch"]), ("proxy_path", "hs1", 2, 3))
        self.assertAlmostEqual(figures["send_calls_per_message"] + figures["answer_calls_per_message"], figures["calls_per_message"], places=1)

    def test_sessionMessageOneCall(self) -> None:
        """
        Each of the router's C{SESSION message}s is read by one call of
        L{SessionHost}'s (C{requestReceived}, no method between it and the
        home session), sent on to hs2 as a link C{MESSAGE}, and answered
        with a bare C{200} once hs2's is read (C{_messageAnswered}), with
        no L{Deferred} made and no ABCMeta check (an C{isinstance} of the
        link's C{ANSWERED_LATER} against L{Deferred}, an C{abc.ABC}).
        """
        hs1 = proxy_path._HS1(2)
        hs1.exchange(3, 0)
        before = hs1.routerAnswers
        calls = presence_fanout.counted(lambda: hs1.exchange(3, 1))
        self.assertEqual(hs1.routerAnswers - before, 6)
        self.assertEqual(hs1.answered, 12)
        mine = {name.split(" ")[0]: count for name, count in calls.items() if "(proxy.py:" in name}
        self.assertEqual(mine, {"requestReceived": 6, "_messageAnswered": 6})
        self.assertEqual(sum(count for name, count in calls.items() if name.startswith("__init__ (defer.py:")), 0)
        self.assertEqual([name for name in calls if name.startswith("__instancecheck__")], [])
