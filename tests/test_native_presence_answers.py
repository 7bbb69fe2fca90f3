"""
Tests for C{Presence-Answers: none} on the native face (C{docs/protocol.md}
sections 7.2 and 7.9): a session that asked for it gets its presence
C{NOTIFY}s with C{Seq: 0}, not counted as awaiting an answer.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import imgateway as imgatewayPackage
from imgateway.adapters.native.framing import Headers, Request, Response, serialise
from imgateway.adapters.native.mapping import presenceAnswersNone
from imgateway.adapters.native.server import NativeConfig, _presenceHeaders
from imgateway.auth.sasl import clientMechanism
from imgateway.core.address import Address
from imgateway.core.presence import Presence, PresenceState
from tests.test_native_server import NativeFaceTestsMixin, Wire, answer

CAROL = Address.fromString("carol@corp.example")
AWAY = Presence(PresenceState.AWAY, "back at 2")


def quietLogin(w: Wire, user: str, value: str = "none", mechanism: str = "PLAIN") -> Response:
    """
    Log C{w} in as C{user}, the first C{AUTH} with C{Presence-Answers:
    value}.
    """
    mech = clientMechanism(mechanism, user, f"{user}-pw")
    r = w.call("AUTH", "*", [("Mechanism", mechanism), ("Presence-Answers", value)], mech.start())
    while r.code == 110:
        r = w.call("AUTH", "*", [], mech.step(r.body))
    if r.code == 200:
        mech.verifyFinal(r.body)
    return r


class HeaderValueTests(SynchronousTestCase):
    def test_values(self) -> None:
        """
        C{none}, in any case and with spaces around it, asks for unanswered
        presence C{NOTIFY}s; anything else, or no header, does not.
        """
        for value in ["none", "NONE", " None "]:
            self.assertTrue(presenceAnswersNone(value), value)
        for other in [None, "", "all", "no", "none,all"]:
            self.assertFalse(presenceAnswersNone(other), other)


class PresenceAnswersTests(NativeFaceTestsMixin, SynchronousTestCase):
    def quiet(self, user: str = "alice", mechanism: str = "PLAIN") -> Wire:
        w = self.wire()
        r = quietLogin(w, user, mechanism=mechanism)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.get("Presence-Answers"), "none")
        return w

    def test_quietNotify(self) -> None:
        """
        An opted-in session's presence C{NOTIFY} is the general frame with
        C{Seq: 0}; nothing is counted as awaiting an answer, however many
        are sent, and the session's own requests are still numbered from 1.
        """
        w = self.quiet()
        out = w.protocol._outstanding
        for n in range(5):
            w.transport.clear()
            presence = Presence(PresenceState.AWAY, f"note {n}")
            w.protocol.presenceReceived(CAROL, presence)
            general = serialise(Request("NOTIFY", CAROL.presURI(), Headers.of(("Seq", "0"), *_presenceHeaders(presence))))
            self.assertEqual(w.transport.value(), general)
        self.assertEqual((out.sent, out.unanswered), (0, 0))
        self.assertEqual(w.call("PING").code, 200)

    def test_scramOptIn(self) -> None:
        """
        The header is read from the C{AUTH} that starts the exchange: a
        SCRAM login (two C{AUTH}s) opts in too.
        """
        w = self.quiet(mechanism="SCRAM-SHA-256")
        w.protocol.presenceReceived(CAROL, AWAY)
        self.assertEqual([f.seq for f in w.frames()], [0])

    def test_notOptedIn(self) -> None:
        """
        Without the header, or with another value, nothing changes: the
        C{200} does not carry it and presence C{NOTIFY}s are numbered and
        counted.
        """
        for value in [None, "all", "bogus"]:
            w = self.wire()
            if value is None:
                r = w.login("alice", "alice-pw")
            else:
                r = quietLogin(w, "alice", value)
            self.assertEqual(r.code, 200)
            self.assertIsNone(r.headers.get("Presence-Answers"))
            w.protocol.presenceReceived(CAROL, AWAY)
            self.assertEqual([f.seq for f in w.frames()], [1])
            self.assertEqual(w.protocol._outstanding.unanswered, 1)
            w.raw(answer(1))
            self.assertEqual((w.frames(), w.protocol._outstanding.unanswered), ([], 0))
            w.protocol.connectionLost()

    def test_mixedFanOut(self) -> None:
        """
        One fan-out to an opted-in session and to one that is not: each
        gets its own form, whichever comes first.
        """
        quiet, loud = self.quiet(), self.loggedIn("bob")
        for first, second in [(quiet, loud), (loud, quiet)]:
            presence = Presence(PresenceState.BUSY, repr(first))
            first.protocol.presenceReceived(CAROL, presence)
            second.protocol.presenceReceived(CAROL, presence)
        self.assertEqual([f.seq for f in quiet.frames()], [0, 0])
        self.assertEqual([f.seq for f in loud.frames()], [1, 2])

    def test_failedAuthResets(self) -> None:
        """
        An exchange started anew (a failed C{AUTH}, then one without the
        header) follows the C{AUTH} that started the exchange that
        succeeded.
        """
        w = self.wire()
        r = w.call("AUTH", "*", [("Mechanism", "PLAIN"), ("Presence-Answers", "none")], b"\0alice\0wrong")
        self.assertEqual(r.code, 401)
        self.assertEqual(w.login("alice", "alice-pw").code, 200)
        w.protocol.presenceReceived(CAROL, AWAY)
        self.assertEqual([f.seq for f in w.frames()], [1])

    def test_otherRequestsAnswered(self) -> None:
        """
        Only presence C{NOTIFY}s go unanswered: an opted-in session's
        subscription and contact C{NOTIFY}s and C{MESSAGE}s are numbered
        and counted as before.
        """
        alice = self.quiet()
        alice.call("PUBLISH", "*", [("Presence", "online")])
        bob = self.loggedIn("bob")
        bob.call("SUBSCRIBE", "pres:alice@corp.example")
        alice.protocol.presenceReceived(CAROL, AWAY)
        self.assertEqual(bob.call("MESSAGE", "im:alice@corp.example", [], b"hi").code, 200)
        requests = [f for f in alice.frames() if isinstance(f, Request)]
        seqs = [(f.method, f.headers.get("Event"), f.seq) for f in requests]
        self.assertIn(("NOTIFY", "presence", 0), seqs)
        numbered = [s for s in seqs if s[2] != 0]
        self.assertEqual([s[2] for s in numbered], list(range(1, len(numbered) + 1)))
        self.assertIn(("MESSAGE", None), [s[:2] for s in numbered])
        self.assertIn(("NOTIFY", "subscription"), [s[:2] for s in numbered])
        self.assertEqual(alice.protocol._outstanding.unanswered, len(numbered))

    def test_strayAnswer(self) -> None:
        """
        An opted-in client that answers a presence C{NOTIFY} anyway (C{Seq:
        0}, or a number it never got) sends a response to no request: as
        any such response, C{400} with C{Seq: 0} and the connection closed,
        by the read of bare C{200}s and by the parser alike.
        """
        for data in [answer(0), answer(1), b"\r\n" + answer(0), answer(0, 486)]:
            w = self.quiet()
            w.protocol.presenceReceived(CAROL, AWAY)
            w.frames()
            w.raw(data)
            self.assertEqual([(f.code, f.seq) for f in w.frames() if isinstance(f, Response)], [(400, 0)], data)
            self.assertTrue(w.transport.disconnecting)
            w.protocol.connectionLost()

    def test_quietWriterCalls(self) -> None:
        """
        An opted-in recipient costs its writer's call and one transport
        write, nothing counted.
        """
        wires = [self.quiet(), self.quiet("bob")]
        wires[0].protocol.presenceReceived(CAROL, AWAY)
        package = str(FilePath(imgatewayPackage.__file__).parent().path)
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(package):
                calls.append(frame.f_code.co_name)

        w = wires[1]
        w.transport.clear()
        sys.setprofile(profile)
        try:
            w.protocol.presenceReceived(CAROL, AWAY)
        finally:
            sys.setprofile(None)
        self.assertEqual([f.seq for f in w.frames()], [0])
        import imgateway.adapters.native.server as module

        if (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SkipTest("compiled: no Python calls to count")
        self.assertEqual(calls, ["presenceReceived"])

    def test_unsendable(self) -> None:
        """
        A presence that cannot be serialised is logged and not written,
        and counts nothing.
        """
        w = self.quiet()
        unsendable = Presence(PresenceState.AWAY, "x")
        object.__setattr__(unsendable, "note", "\ud800")
        w.transport.clear()
        w.protocol.presenceReceived(CAROL, unsendable)
        self.assertEqual(w.transport.value(), b"")
        self.assertEqual(w.protocol._outstanding.sent, 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class QuietSendQueueTests(NativeFaceTestsMixin, SynchronousTestCase):
    config = NativeConfig(maxSendQueueBytes=2000)

    def test_slowQuietReaderDropped(self) -> None:
        """
        C{max_send_queue_bytes} still drops an opted-in client that does
        not read: its unanswered presence C{NOTIFY}s count while the
        transport is paused.
        """
        bob = self.wire()
        self.assertEqual(quietLogin(bob, "bob").code, 200)
        guard = bob.protocol._sendGuard
        assert guard is not None
        guard.pauseProducing()
        bob.transport.clear()
        n = 0
        while not bob.transport.disconnecting and n < 100:
            n += 1
            bob.protocol.presenceReceived(CAROL, Presence(PresenceState.AWAY, f"{n:0100}"))
        self.assertTrue(bob.transport.disconnecting)
        self.assertEqual(guard.pending, len(bob.transport.value()))
        self.assertEqual(bob.protocol._outstanding.sent, 0)
