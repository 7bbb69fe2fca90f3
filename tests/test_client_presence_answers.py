"""
Tests for the shipped client's C{Presence-Answers: none}
(C{docs/protocol.md} sections 7.2 and 7.9): it opts in by default and does
not answer a presence C{NOTIFY} sent with C{Seq: 0}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.framing import FrameParser, Headers, Request, Response, serialise
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.client.protocol import NativeClientProtocol
from imgateway.core.address import Address
from imgateway.core.presence import Presence, PresenceState
from imgateway.testing import addUser, memoryGateway
from tests.test_native_client import HOST, PEER, PresenceRecorder

CAROL = Address.fromString("carol@corp.example")


class AgainstServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        addUser(self.gateway, "alice", "alice-pw")

    def connected(self, quiet: bool | None) -> tuple[NativeClientProtocol, Any, Any, PresenceRecorder]:
        server = NativeServerFactory(self.gateway, NativeConfig(), self.clock).buildProtocol(PEER)
        observer = PresenceRecorder()
        client = NativeClientProtocol(observer, clock=self.clock)
        if quiet is not None:
            client.askQuietPresence = quiet
        pump = connect(server, FakeTransport(server, True, HOST, PEER), client, FakeTransport(client, False, PEER, HOST), clock=self.clock)
        d = client.login("alice", "alice-pw")
        pump.flush()
        self.successResultOf(d)
        return client, server, pump, observer

    def test_optedInByDefault(self) -> None:
        """
        The shipped client asks for unanswered presence C{NOTIFY}s; it is
        told the presence and answers nothing: the server counts nothing
        awaiting an answer and the connection stays open.
        """
        client, server, pump, observer = self.connected(None)
        self.assertEqual(client.presenceAnswers, "none")
        self.assertTrue(server.quietPresence)
        server.presenceReceived(CAROL, Presence(PresenceState.AWAY, "back at 2"))
        pump.flush()
        self.assertEqual(observer.seen[-1], (CAROL, Presence(PresenceState.AWAY, "back at 2")))
        self.assertEqual((server._outstanding.sent, server._outstanding.unanswered), (0, 0))
        self.assertFalse(server._closing)
        d = client.ping()
        pump.flush()
        self.successResultOf(d)

    def test_optedOut(self) -> None:
        """
        A client that does not opt in gets numbered presence C{NOTIFY}s
        and answers each.
        """
        client, server, pump, observer = self.connected(False)
        self.assertEqual(client.presenceAnswers, "all")
        self.assertFalse(server.quietPresence)
        server.presenceReceived(CAROL, Presence(PresenceState.AWAY, "x"))
        pump.flush()
        self.assertEqual(observer.seen[-1][0], CAROL)
        self.assertEqual((server._outstanding.sent, server._outstanding.unanswered), (1, 0))


class WireTests(SynchronousTestCase):
    """
    What the client answers, whatever the server agreed to (a server that
    does not know the header sends numbered presence C{NOTIFY}s).
    """

    def test_answers(self) -> None:
        """
        A presence C{NOTIFY} with C{Seq: 0} is not answered; a numbered one,
        and every other request, is.
        """
        observer = PresenceRecorder()
        client = NativeClientProtocol(observer)
        transport = StringTransport()
        client.makeConnection(transport)
        frames = [
            Request("NOTIFY", CAROL.presURI(), Headers.of(("Seq", "0"), ("Event", "presence"), ("Presence", "away"))),
            Request("NOTIFY", CAROL.presURI(), Headers.of(("Seq", "4"), ("Event", "presence"), ("Presence", "busy"))),
            Request("PING", "*", Headers.of(("Seq", "5"))),
        ]
        client.dataReceived(b"".join(serialise(f) for f in frames))
        self.assertEqual([p.state for _, p in observer.seen], [PresenceState.AWAY, PresenceState.BUSY])
        answers = FrameParser().feed(transport.value())
        self.assertEqual([(r.code, r.seq) for r in answers if isinstance(r, Response)], [(200, 4), (200, 5)])
