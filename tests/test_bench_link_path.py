# -*- test-case-name: tests.test_bench_link_path -*-
"""
Tests for C{bench/link_path.py}: each role runs, its figures are the calls
it counted, and the path it measures is the link's (hs1 writes link
C{MESSAGE}s and reads their bare C{200}s; hs2 reads them without the parser
and delivers them to carol's sessions).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from bench import link_path, presence_fanout
from tests.test_bench_message_path import writesPerTransport


class LinkPathBenchTests(SynchronousTestCase):
    """
    C{link_path.py} on a few pairs.
    """

    def test_runs(self) -> None:
        """
        Each role prints one JSON line with the figures per message: calls
        and CPU; C{--callgrind-rounds} runs quietly.
        """
        self.patch(link_path, "commitOf", lambda folder: "abc1234")
        for role in ("hs1", "hs2"):
            out = io.StringIO()
            with redirect_stdout(out):
                link_path.main(["--role", role, "--pairs", "2", "--batch", "3", "--rounds", "5"])
            figures = json.loads(out.getvalue())
            self.assertEqual(
                (figures["bench"], figures["role"], figures["commit"], figures["pairs"], figures["batch"]),
                ("link_path", role, "abc1234", 2, 3),
            )
            self.assertGreater(figures["calls_per_message"], 0)
            self.assertGreater(figures["cpu_us_per_message"], 0)
            out = io.StringIO()
            with redirect_stdout(out):
                link_path.main(["--role", role, "--pairs", "2", "--batch", "3", "--callgrind-rounds", "2"])
            self.assertEqual(out.getvalue(), "")

    def test_hs1WritesTheLink(self) -> None:
        """
        On hs1, each sender's message goes out on the link as a link
        C{MESSAGE}, and the bare C{200}s read back answer every one.
        """
        hs1 = link_path.HS1(2)
        hs1.exchange(hs1.prepare(3, 0))
        # Six link MESSAGEs written (answered by as many bare 200s), no
        # request left waiting on the link.
        hs1.check(6)
        client = hs1.connection._outstanding
        self.assertEqual(client, {})

    def test_hs2ReadsTheLink(self) -> None:
        """
        On hs2, the link C{MESSAGE}s are read without the parser (all taken
        by the reader) and delivered: every recipient's session got its
        messages and had them answered; the link answered each with a bare
        C{200}.
        """
        hs2 = link_path.HS2(2)
        hs2.exchange(hs2.prepare(3, 0))
        hs2.check(6)
        self.assertEqual(hs2.connection._reader.taken, 6)

    def hs1Calls(self) -> tuple[dict[str, int], Callable[[str, str], int]]:
        """
        The calls of hs1's second exchange of 6 messages (2 senders, 3
        each), after a first, and how many of them a function made (its
        name and its file's).
        """
        hs1 = link_path.HS1(2)
        hs1.exchange(hs1.prepare(3, 0))
        calls = presence_fanout.counted(lambda: hs1.exchange(hs1.prepare(3, 1)))
        hs1.check(12)

        def count(prefix: str, where: str) -> int:
            return sum(n for name, n in calls.items() if name.startswith(prefix + " (") and f"({where}:" in name)

        return calls, count

    def test_hs1NoDeferred(self) -> None:
        """
        On hs1, a message sent over the link makes no L{Deferred}: the
        link's answer reaches the native face's answer
        (C{_messageAnswered}) through the router's and the session's
        waiters (C{Router.deliverThen}, C{Session.sendMessageThen}), not
        through the router's errback, the metrics' callback or the face's
        callback on a L{Deferred}; the metrics count each message once. (The
        face's own calls are not counted: compiled, they are no Python
        frames.)
        """
        calls, count = self.hs1Calls()
        messages = 6
        self.assertEqual([name for name in calls if "(defer.py:" in name], [])
        self.assertEqual(count("sendMessageThen", "server.py"), messages)
        self.assertEqual(count("deliverThen", "router.py"), messages)
        self.assertEqual(count("deliverThen", "link.py"), messages)
        for unused in ("deliverAtOnce", "_toLink", "_linkFailed"):
            self.assertEqual(count(unused, "router.py"), 0, unused)
        self.assertEqual(count("messageOutcome", "metrics.py"), messages)

    def test_hs1SendsInPlace(self) -> None:
        """
        On hs1, a message goes from the router to the link's bytes without
        a copy, a router object or a framing step of its own: no
        L{forwarded<imgateway.core.events.forwarded>} copy (its one
        C{preCheckedMessage} is the session's), no object of the router's
        made per message (its failure answer made only for a failure), the
        hop count, the C{Via} and the C{Seq} written in place by
        C{encodeMessage} (no C{_onward}, no C{_send}, no
        L{LinkConnection.send<imgateway.router.link.LinkConnection.send>}
        nor C{withSeq}: one C{sendNumbered}); the answer reaches the face
        through the link's request and the session's waiter alone (one
        C{callback} each, no C{_tell}), told how to answer without
        C{answerWith}'s call.
        """
        calls, count = self.hs1Calls()
        messages = 6
        self.assertEqual(count("preCheckedMessage", "events.py"), messages)
        for unused, where in [
            ("forwarded", "events.py"),
            ("__init__", "router.py"),
            ("_linkAnswerFailed", "router.py"),
            ("_onward", "link.py"),
            ("_send", "link.py"),
            ("send", "link.py"),
            ("_write", "link.py"),
            ("withSeq", "framing.py"),
            ("_tell", "sending.py"),
            ("answerWith", "sending.py"),
        ]:
            self.assertEqual(count(unused, where), 0, unused)
        self.assertEqual(count("sendNumbered", "link.py"), messages)
        self.assertEqual(count("callback", "link.py"), messages)
        self.assertEqual(count("callback", "router.py"), 0)
        self.assertEqual(count("callback", "sending.py"), messages)

    def test_routingAsksOnce(self) -> None:
        """
        The routing of a message across the link makes each of its checks
        once, with no call for what is answered in place: on hs2 the
        locator is asked for the sender's home (the origination rule) and
        carol's (the router) in one call, through no C{knownHome}, with
        the clock reading of the duplicate check; the
        router does not remember a message delivered here at once (no
        C{_see}: the link's receiving side answers its duplicates); no
        C{hopKey} for a message's trace, kept in place (no C{push} or
        C{pop} of L{LinkTraces}); the origination rule's usual acceptance
        made in place (no C{_originationRefused}), and the answer
        delivered at once (no C{_finish}), all in C{messageReceived} (no
        C{_incoming}); the home server's fast
        path one call (its C{deliverAtOnce}, no C{_deliverTo} or
        C{_messageOutcome}). On hs1, the locator asked once
        for carol's home, no C{_direct} (the domain has many home
        servers), and no C{traceOf} (nor C{hopKey}) for a trace that none
        is being delivered with.
        """
        hs2 = link_path.HS2(2)
        hs2.exchange(hs2.prepare(3, 0))
        calls = presence_fanout.counted(lambda: hs2.exchange(hs2.prepare(3, 1)))
        hs2.check(12)
        messages = 6

        def count(calls: dict[str, int], prefix: str, where: str) -> int:
            return sum(n for name, n in calls.items() if name.startswith(prefix + " (") and f"({where}:" in name)

        self.assertEqual(count(calls, "cachedHomesAt", "locator.py"), messages)
        self.assertEqual(count(calls, "cachedHomeOf", "locator.py"), 0)
        # The duplicate check's look-up makes the request's entry
        # (setdefault); the answer's, one more.
        self.assertEqual((calls["OrderedDict.setdefault (builtin)"], calls["OrderedDict.get (builtin)"]), (messages, messages))
        # The clock read once per message (the duplicate check's reading,
        # which the locator's answers take), and once per recipient's read
        # of its answers.
        self.assertEqual(count(calls, "seconds", "task.py"), messages + 2)
        self.assertEqual(count(calls, "deliverAtOnce", "router.py"), messages)
        # The home server's fast path in one call (no _deliverTo).
        self.assertEqual(count(calls, "deliverAtOnce", "server.py"), messages)
        self.assertEqual(count(calls, "_deliverTo", "server.py"), 0)
        self.assertEqual(count(calls, "_messageOutcome", "server.py"), 0)
        for unused, where in [("knownHome", "locator.py"), ("_see", "router.py"), ("hopKey", "link_codec.py"), ("push", "link.py"), ("pop", "link.py"), ("_originationRefused", "link.py"), ("_finish", "link.py"), ("_incoming", "link.py")]:
            self.assertEqual(count(calls, unused, where), 0, unused)
        hs1 = link_path.HS1(2)
        hs1.exchange(hs1.prepare(3, 0))
        calls = presence_fanout.counted(lambda: hs1.exchange(hs1.prepare(3, 1)))
        hs1.check(12)
        self.assertEqual(count(calls, "cachedHomeOf", "locator.py"), messages)
        for unused, where in [("knownHome", "locator.py"), ("_direct", "server.py"), ("hopKey", "link_codec.py"), ("_see", "router.py"), ("traceOf", "link.py")]:
            self.assertEqual(count(calls, unused, where), 0, unused)

    def test_answersWrittenTogether(self) -> None:
        """
        On hs1, the link's read of bare C{200}s writes each sender's five
        C{200}s to its transport in two writes; on hs2, the link's read of
        messages writes each recipient's five C{MESSAGE}s in two (the first
        as it comes, the others when the read is done:
        L{imgateway.net.gather}).
        """
        hs1 = link_path.HS1(2)
        hs1.exchange(hs1.prepare(5, 0))
        reads = hs1.prepare(5, 1)
        for (sender, _), data in zip(hs1.senders, reads):
            sender.protocol.dataReceived(data)
            sender.transport.clear()
        count = hs1.link.value().count(b"\r\nRouting-Id: ")
        hs1.link.clear()
        counts = writesPerTransport(self)
        hs1.connection.dataReceived(b"".join(presence_fanout._OK % seq for seq in range(hs1.answered + 1, hs1.answered + count + 1)))
        self.assertEqual([counts[id(sender.transport)] for sender, _ in hs1.senders], [2, 2])
        hs2 = link_path.HS2(2)
        hs2.exchange(hs2.prepare(5, 0))
        read = hs2.prepare(5, 1)
        counts.clear()
        hs2.connection.dataReceived(read)
        self.assertEqual([counts[id(recipient.transport)] for recipient, _, _ in hs2.recipients], [2, 2])
