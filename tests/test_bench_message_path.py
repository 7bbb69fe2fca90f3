# -*- test-case-name: tests.test_bench_message_path -*-
"""
Tests for C{bench/message_path.py}: it runs, its figures are the calls it
counted, and the path it measures is the one the home server's direct
delivery gives (no router, no L{Deferred} but the client's own).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bench import message_path, presence_fanout


def writesPerTransport(case: SynchronousTestCase) -> dict[int, int]:
    """
    Count each L{StringTransport}'s C{write} calls from now on, by the
    transport's C{id}.
    """
    counts: dict[int, int] = {}
    write = StringTransport.write

    def counting(self: StringTransport, data: bytes) -> None:
        counts[id(self)] = counts.get(id(self), 0) + 1
        write(self, data)

    case.patch(StringTransport, "write", counting)
    return counts


class MessagePathBenchTests(SynchronousTestCase):
    """
    C{message_path.py} on a few pairs.
    """

    def test_runs(self) -> None:
        """
        It prints one JSON line with the figures per message: calls and
        CPU.
        """
        self.patch(message_path, "commitOf", lambda folder: "abc1234")
        out = io.StringIO()
        with redirect_stdout(out):
            message_path.main(["--pairs", "2", "--batch", "3", "--rounds", "5"])
        figures = json.loads(out.getvalue())
        self.assertEqual(
            (figures["bench"], figures["commit"], figures["pairs"], figures["batch"]), ("message_path", "abc1234", 2, 3)
        )
        self.assertGreater(figures["calls_per_message"], 0)
        self.assertGreater(figures["cpu_us_per_message"], 0)

    def test_noRouterNoDeferred(self) -> None:
        """
        A native 1:1 message between two users of one home server, both
        online, calls nothing of the router, and makes no L{Deferred} but
        the one the recipient's client answers with (C{succeed(None)},
        L{ISessionClient.messageReceived
        <imgateway.interfaces.ISessionClient.messageReceived>}); every
        message is delivered and answered.
        """
        pairs = message_path.setUp(2)
        message_path.exchange(pairs, 3, 0)
        before = [recipient.protocol._outstanding.sent for _, recipient, _ in pairs]
        calls = presence_fanout.counted(lambda: message_path.exchange(pairs, 3, 1))
        self.assertEqual([name for name in calls if "(router.py:" in name], [])
        deferreds = sum(count for name, count in calls.items() if name.startswith("__init__ (defer.py:"))
        self.assertLessEqual(deferreds, 2 * 3)
        for (_, recipient, _), sent in zip(pairs, before):
            outstanding = recipient.protocol._outstanding
            self.assertEqual((outstanding.sent, outstanding.floor), (sent + 3, sent + 3))

    def test_oneReadTwoWrites(self) -> None:
        """
        A sender's read of five messages writes its five C{200}s to its
        transport in two writes (the first as it comes, the others when
        the read is done: L{imgateway.net.gather}), and the recipient's
        five C{MESSAGE}s in two.
        """
        pairs = message_path.setUp(2)
        message_path.exchange(pairs, 5, 0)
        counts = writesPerTransport(self)
        message_path.exchange(pairs, 5, 1)
        for sender, recipient, _ in pairs:
            self.assertEqual((counts[id(sender.transport)], counts[id(recipient.transport)]), (2, 2))
