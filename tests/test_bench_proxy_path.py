# -*- test-case-name: tests.test_bench_proxy_path -*-
"""
Tests for C{bench/proxy_path.py}: it runs, and the paths it measures are
the router's as the router runs them: a proxied session's message to
another user of the domain checked and sent by the router's own L{Router}
as a link C{MESSAGE} to hs2, hs2's bare C{200}s answering the clients
(C{--path routed}); a message to oneself as a C{SESSION message} to hs1
(C{--path session}); hs1's side of the latter (C{--role hs1}); with no
L{Deferred}.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import redirect_stdout
from importlib.machinery import EXTENSION_SUFFIXES

from twisted.trial.unittest import SynchronousTestCase

import imgateway.adapters.native.server as nativeFace
from bench import presence_fanout, proxy_path
from imgateway.router.proxy import RemoteSession
from tests.test_bench_message_path import writesPerTransport


def _counter(calls: dict[str, int]) -> Callable[[str, str], int]:
    """
    @return: How many of C{calls} a function made, by its name and its
        file's.
    """

    def count(prefix: str, where: str) -> int:
        return sum(n for name, n in calls.items() if name.startswith(prefix + " (") and f"({where}:" in name)

    return count


class ProxyPathBenchTests(SynchronousTestCase):
    """
    C{proxy_path.py} on a few senders.
    """

    def test_runs(self) -> None:
        """
        Each path prints one JSON line with the figures per message: calls
        in all and in each half, and CPU; C{--cpu-sets 0} and
        C{--callgrind-rounds} run quietly.
        """
        self.patch(proxy_path, "commitOf", lambda folder: "abc1234")
        for path in ("routed", "session"):
            out = io.StringIO()
            with redirect_stdout(out):
                proxy_path.main(["--path", path, "--senders", "2", "--batch", "3", "--rounds", "5", "--cpu-sets", "1", "--top", "3"])
            figures = json.loads(out.getvalue())
            self.assertEqual(
                (figures["bench"], figures["role"], figures["path"], figures["commit"], figures["senders"], figures["batch"]),
                ("proxy_path", "router", path, "abc1234", 2, 3),
            )
            self.assertAlmostEqual(figures["send_calls_per_message"] + figures["answer_calls_per_message"], figures["calls_per_message"], places=1)
            self.assertGreater(figures["cpu_us_per_message"], 0)
            self.assertEqual(len(figures["top"]), 3)
            for quiet in (["--rounds", "2", "--cpu-sets", "0"], ["--callgrind-rounds", "2"]):
                out = io.StringIO()
                with redirect_stdout(out):
                    proxy_path.main(["--path", path, "--senders", "2", "--batch", "3", *quiet])
                self.assertEqual(out.getvalue(), "")

    def routerCalls(self, path: str) -> tuple[proxy_path._Router, dict[str, int], list[bytes], list[bytes]]:
        """
        The router's second exchange of 6 messages (2 senders, 3 each) on
        C{path}, after a first: its calls, and what it wrote to hs1 and to
        hs2 meanwhile.
        """
        router = proxy_path._Router(2, path)
        router.exchange(router.prepare(3, 0))
        written: dict[str, list[bytes]] = {"hs1": [], "hs2": []}
        for name, transport in (("hs1", router.hs1Link), ("hs2", router.hs2Link)):
            write = transport.write

            def recording(data: bytes, write: Callable[[bytes], None] = write, into: list[bytes] = written[name]) -> None:
                into.append(data)
                write(data)

            self.patch(transport, "write", recording)
        answers: list[bytes] = []
        for client, _ in router.clients:
            write = client.transport.write

            def answered(data: bytes, write: Callable[[bytes], None] = write) -> None:
                answers.append(data)
                write(data)

            self.patch(client.transport, "write", answered)
        calls = presence_fanout.counted(lambda: router.exchange(router.prepare(3, 1)))
        router.check(12)
        # Each client answered 200, with its message's id.
        self.assertEqual(b"".join(answers).count(b"IMGW/1.0 200 OK\r\nSeq: "), 6)
        self.assertEqual(b"".join(answers).count(b"\r\nMessage-ID: "), 6)
        return router, calls, written["hs1"], written["hs2"]

    def test_loggedInProxied(self) -> None:
        """
        The clients log in on the router's face as a router's clients do:
        each session proxied (a L{RemoteSession}, opened by a C{SESSION
        open} on the link to hs1), and the proxy sends its messages through
        the router's own L{Router} (L{ProxyHomeServer.sendThrough}).
        """
        router = proxy_path._Router(2)
        self.assertEqual([type(client.protocol.session) for client, _ in router.clients], [RemoteSession, RemoteSession])
        self.assertIs(router.proxy.router, router.gateway.router)
        self.assertEqual([to for _, to in router.clients], [b"r0@corp.example", b"r1@corp.example"])

    def test_routedToHS2(self) -> None:
        """
        C{--path routed}: each client's C{MESSAGE}s go to hs2's link as
        link C{MESSAGE}s from the client's user, through
        L{RemoteSession.sendMessageThen} and the router's own
        L{Router.deliverThen<imgateway.router.router.Router.deliverThen>}
        and link, nothing to hs1; every client is answered C{200} once
        hs2's bare C{200}s are read, with no L{Deferred} made.
        """
        router, calls, toHS1, toHS2 = self.routerCalls("routed")
        count = _counter(calls)
        messages = 6
        self.assertEqual(toHS1, [])
        sent = b"".join(toHS2)
        self.assertEqual(sent.count(b"MESSAGE im:r"), messages)
        self.assertEqual((sent.count(b"\r\nFrom: im:s0@corp.example\r\n"), sent.count(b"\r\nFrom: im:s1@corp.example\r\n")), (3, 3))
        self.assertEqual(count("sendMessageThen", "proxy.py"), messages)
        self.assertEqual(count("deliverThen", "router.py"), messages)
        self.assertEqual(count("deliverThen", "link.py"), messages)
        self.assertEqual(count("sessionMessage", "sending.py"), messages)
        self.assertEqual(count("messageOutcome", "metrics.py"), messages)
        self.assertEqual(sum(n for name, n in calls.items() if name.startswith("__init__ (defer.py:")), 0)

    def test_routedAnsweredByOneWaiter(self) -> None:
        """
        On the routed path, hs2's answer reaches the face's answer
        (C{_messageAnswered}) through the link's request and the router's
        waiter for the proxied session (C{_RoutedOutcome.callback}) alone,
        which counts the message answered for the session's order in place:
        no C{_routedAnswered} with a tuple of the answer and its token, no
        C{_routedSettled}, nor L{SentOutcome}'s own C{callback}.
        """
        router, calls, toHS1, toHS2 = self.routerCalls("routed")
        count = _counter(calls)
        messages = 6
        self.assertEqual(count("callback", "link.py"), messages)
        self.assertEqual(count("callback", "proxy.py"), messages)
        if not (nativeFace.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            # (The face's own calls, Python calls only when it is not
            # compiled.)
            self.assertEqual(count("_messageAnswered", "server.py"), messages)
        for unused, where in [("_routedAnswered", "proxy.py"), ("_routedSettled", "proxy.py"), ("callback", "sending.py"), ("_tell", "sending.py")]:
            self.assertEqual(count(unused, where), 0, unused)

    def test_routingDecidedInPlace(self) -> None:
        """
        On the routed path, L{RemoteSession.sendMessageThen} decides
        (C{_routes}) that the recipient is another user of the domain by
        comparing the addresses' parts: no C{Address.__eq__} (which C{!=}
        calls through C{object.__ne__}).
        """
        router, calls, toHS1, toHS2 = self.routerCalls("routed")
        self.assertEqual(_counter(calls)("__eq__", "address.py"), 0)

    def test_routedOnce(self) -> None:
        """
        On the routed path, L{RemoteSession.sendMessageThen} hands each
        message to C{_routedNow}, the one home of the routed steps, which
        checks it and hands it to the router once: one C{_routedNow}, one
        C{sessionMessage} and one C{sendRouted} per message, and no
        C{SESSION} request.
        """
        router, calls, toHS1, toHS2 = self.routerCalls("routed")
        count = _counter(calls)
        self.assertEqual(
            (count("_routedNow", "proxy.py"), count("sessionMessage", "sending.py"), count("sendRouted", "sending.py")), (6, 6, 6)
        )
        self.assertEqual(count("_sessionMessageThen", "proxy.py"), 0)

    def test_sessionToHS1(self) -> None:
        """
        C{--path session}: each client's C{MESSAGE}s to itself go to hs1's
        link as compact C{SESSION message}s, nothing to hs2, and are
        answered C{200} once hs1's bare C{200}s are read, through
        L{RemoteSession.sendMessageThen}, with no L{Deferred} made and
        nothing of hs1's side (its L{SessionHost}) run.
        """
        router, calls, toHS1, toHS2 = self.routerCalls("session")
        self.assertEqual(toHS2, [])
        self.assertEqual(b"".join(toHS1).count(b"SESSION message IMGW/1.0\r\n"), 6)
        self.assertEqual(_counter(calls)("sendMessageThen", "proxy.py"), 6)
        self.assertEqual(sum(n for name, n in calls.items() if name.startswith("__init__ (defer.py:")), 0)
        self.assertEqual([name for name in calls if "requestReceived" in name and "proxy.py" in name], [])

    def test_answersWrittenTogether(self) -> None:
        """
        On either path, the link's read of the answers writes each client's
        five C{200}s to its transport in two writes (the first as it comes,
        the others when the read is done: L{imgateway.net.gather}), without
        the link's C{_answered} or the face's C{sentResponse}.
        """
        for path in ("routed", "session"):
            router = proxy_path._Router(2, path)
            router.exchange(router.prepare(5, 0))
            router.send(router.prepare(5, 1))
            for client, _ in router.clients:
                client.transport.clear()
            counts = writesPerTransport(self)
            calls = presence_fanout.counted(router.answer)
            self.assertEqual([counts[id(client.transport)] for client, _ in router.clients], [2, 2], path)
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
        hs1.exchange(hs1.prepare(3, 0))
        before = hs1.routerAnswers
        calls = presence_fanout.counted(lambda: hs1.exchange(hs1.prepare(3, 1)))
        self.assertEqual(hs1.routerAnswers - before, 6)
        hs1.check(12)
        mine = {name.split(" ")[0]: count for name, count in calls.items() if "(proxy.py:" in name}
        self.assertEqual(mine, {"requestReceived": 6, "_messageAnswered": 6})
        self.assertEqual(sum(count for name, count in calls.items() if name.startswith("__init__ (defer.py:")), 0)
        self.assertEqual([name for name in calls if name.startswith("__instancecheck__")], [])
