# -*- test-case-name: tests.test_sendqueue -*-
"""
Tests for L{imgateway.adapters.base.SendQueueGuard}, and for every face
closing a TLS connection while its guard is registered: over Twisted's real
TLS layer (L{TLSMemoryBIOProtocol}), in memory (L{twisted.test.iosim}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.base import SendQueueGuard
from imgateway.adapters.native.framing import FrameParser, Headers, Request, Response, serialise
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.adapters.xmpp.c2s import C2SConfig, C2SFactory
from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits
from imgateway.testing import addUser, memoryGateway, selfSignedOptions
from tests.test_xmpp_s2s import _Harness, header
from tests.test_xmpp_stream import HEADER, HeaderAuthenticator

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 5300)

#: A stream error as a peer sends it.
STREAM_ERROR = (
    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
)


class Peer(Protocol):
    """
    The other end of a connection: records what arrives, and why the
    connection ended.

    @ivar received: Every byte received.
    @ivar lost: Why the connection ended, once it has.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = reason

    def send(self, data: bytes) -> None:
        """
        Send C{data} (over TLS).
        """
        assert self.transport is not None
        self.transport.write(data)


class TLSConnection:
    """
    A protocol built by a server factory, behind Twisted's TLS layer,
    connected in memory to a L{Peer} behind its own TLS layer; the
    handshake is done when the constructor returns.

    @ivar server: The protocol under test.
    @ivar peer: The L{Peer}.
    """

    def __init__(self, factory: Factory[Any], clock: Clock) -> None:
        serverTLS = TLSMemoryBIOFactory(selfSignedOptions(), False, factory, clock=clock)
        clientTLS = TLSMemoryBIOFactory(CertificateOptions(), True, Factory.forProtocol(Peer), clock=clock)
        server, client = serverTLS.buildProtocol(PEER), clientTLS.buildProtocol(HOST)
        assert server is not None and client is not None
        self._tlsServer = server
        self._clock = clock
        self.pump: IOPump = connect(
            server, FakeTransport(server, True, HOST, PEER), client, FakeTransport(client, False, PEER, HOST), clock=clock
        )
        self.server: Any = server.wrappedProtocol
        peer = client.wrappedProtocol
        assert isinstance(peer, Peer)
        self.peer = peer
        assert server._handshakeDone

    def send(self, data: bytes) -> None:
        """
        The peer sends C{data}; everything moves until nothing more does.
        """
        self.peer.send(data)
        self.pump.flush()

    def advance(self, seconds: float) -> None:
        """
        Time passes; everything moves until nothing more does.
        """
        self._clock.advance(seconds)
        self.pump.flush()

    @property
    def closed(self) -> bool:
        """
        Whether the connection has really ended, on both sides.
        """
        self.pump.flush()
        return self.peer.lost is not None and not self._tlsServer.connected


class Guarded(Protocol):
    """
    A protocol with a send queue guard and nothing else.
    """

    guard: SendQueueGuard

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.guard = SendQueueGuard(self.transport, 100, lambda: None)


class GuardTests(SynchronousTestCase):
    """
    L{SendQueueGuard} on its own.
    """

    def guarded(self, limit: int = 100) -> tuple[StringTransport, SendQueueGuard, list[None]]:
        transport = StringTransport()
        overflows: list[None] = []
        guard = SendQueueGuard(transport, limit, lambda: overflows.append(None))
        return transport, guard, overflows

    def test_registersAndChangesNothingElse(self) -> None:
        """
        The guard registers itself as the transport's streaming producer and
        changes nothing else on the transport: its C{loseConnection} is the
        transport's own method.
        """
        transport = StringTransport()
        before = dict(vars(transport))
        guard = SendQueueGuard(transport, 100, lambda: None)
        self.assertIs(transport.producer, guard)
        self.assertTrue(transport.streaming)
        changed = {k for k, v in vars(transport).items() if k not in before or before[k] is not v}
        self.assertEqual(changed, {"producer", "streaming"})
        self.assertNotIn("loseConnection", vars(transport))

    def test_limitBoundary(self) -> None:
        """
        While the transport is paused, C{limit} bytes written besides the
        largest write are allowed; one more calls C{overflow}, once.
        """
        _, guard, overflows = self.guarded(100)
        guard.pauseProducing()
        guard.wrote(60)
        guard.wrote(40)
        guard.wrote(60)
        self.assertEqual(overflows, [])
        guard.wrote(1)
        self.assertEqual(overflows, [None])
        self.assertTrue(guard.tripped)
        guard.wrote(1000)
        self.assertEqual(overflows, [None])

    def test_oneLargeFrame(self) -> None:
        """
        One write larger than C{limit} (a long answer to the peer's own
        request), even one that fills the transport's buffer, is allowed;
        C{limit} more bytes are too, one more is not.
        """
        _, guard, overflows = self.guarded(100)
        guard.pauseProducing()
        guard.wrote(10_000)
        guard.wrote(100)
        self.assertEqual(overflows, [])
        guard.wrote(1)
        self.assertEqual(overflows, [None])
        # A second large write while paused counts.
        _, guard, overflows = self.guarded(100)
        guard.pauseProducing()
        guard.wrote(5_000)
        guard.wrote(5_000)
        self.assertEqual(overflows, [None])

    def test_countsOnlyWhilePaused(self) -> None:
        """
        Writes count only while the transport is paused; resuming starts the
        count again, a repeated pause (Twisted pauses on every write while
        its buffer is full) does not.
        """
        _, guard, overflows = self.guarded(100)
        guard.wrote(1000)
        guard.pauseProducing()
        guard.wrote(100)
        guard.resumeProducing()
        guard.wrote(1000)
        guard.pauseProducing()
        guard.wrote(60)
        guard.pauseProducing()
        guard.wrote(40)
        guard.wrote(60)
        self.assertEqual(overflows, [])
        guard.wrote(1)
        self.assertEqual(overflows, [None])

    def test_release(self) -> None:
        """
        L{SendQueueGuard.release} unregisters the guard (once, however often
        it is called), and writes no longer count.
        """
        transport, guard, overflows = self.guarded(100)
        guard.pauseProducing()
        guard.release()
        self.assertIsNone(transport.producer)
        self.assertFalse(guard.registered)
        guard.release()
        guard.pauseProducing()
        guard.wrote(1000)
        self.assertEqual(overflows, [])


class TwistedTLSTests(SynchronousTestCase):
    """
    Why every face must release its guard before it closes: Twisted's TLS
    transport does not close while a producer is registered.
    """

    def test_tlsWaitsForTheProducer(self) -> None:
        """
        C{loseConnection} on a TLS transport whose producer is the guard
        leaves the connection open; releasing the guard lets it close.
        """
        c = TLSConnection(Factory.forProtocol(Guarded), Clock())
        c.server.transport.loseConnection()
        self.assertFalse(c.closed)
        c.server.guard.release()
        self.assertTrue(c.closed)


class NativeFaceTLSTests(SynchronousTestCase):
    """
    The native face closes TLS connections with its guard registered.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        addUser(self.gateway, "alice", "alice-pw")
        self.config = NativeConfig()
        self.c = TLSConnection(NativeServerFactory(self.gateway, self.config, self.clock), self.clock)
        self.assertTrue(self.c.server._sendGuard.registered)

    def responses(self) -> list[Response]:
        return [f for f in FrameParser().feed(self.c.peer.received) if isinstance(f, Response)]

    def test_bye(self) -> None:
        """
        The client says BYE: it gets C{200} and the connection ends.
        """
        self.c.send(serialise(Request("BYE", "*", Headers.of(("Seq", "1")))))
        self.assertEqual([r.code for r in self.responses()], [200])
        self.assertTrue(self.c.closed)

    def test_loginTimeout(self) -> None:
        """
        A client that does not log in in time is told BYE and the connection
        ends.
        """
        self.c.advance(self.config.loginTimeout)
        self.assertIn(b"login-timeout", self.c.peer.received)
        self.assertTrue(self.c.closed)


class XmlStreamTLSTests(SynchronousTestCase):
    """
    L{HardenedXmlStream} closes TLS connections with its guard registered,
    whoever closes: the stream itself, or Twisted's L{XmlStream} code.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        factory = Factory.forProtocol(lambda: HardenedXmlStream(HeaderAuthenticator(), StreamLimits(), self.clock))
        self.c = TLSConnection(factory, self.clock)
        self.c.send(HEADER)
        self.assertIn(b"<stream:stream", self.c.peer.received)
        self.assertTrue(self.c.server._sendGuard.registered)

    def test_streamError(self) -> None:
        """
        On a stream error (a comment: restricted XML), the stream sends the
        error and its closing tag, and the connection ends.
        """
        self.c.send(b"<!-- no -->")
        self.assertIn(b"restricted-xml", self.c.peer.received)
        self.assertTrue(self.c.peer.received.endswith(b"</stream:stream>"))
        self.assertTrue(self.c.closed)

    def test_peerClosesItsStream(self) -> None:
        """
        When the peer closes its stream, the connection ends
        (L{XmlStream.onDocumentEnd}).
        """
        self.c.send(b"</stream:stream>")
        self.assertTrue(self.c.closed)

    def test_peerStreamError(self) -> None:
        """
        When the peer sends a stream error, the connection ends
        (L{XmlStream.onStreamError}).
        """
        self.c.send(STREAM_ERROR)
        self.assertTrue(self.c.closed)

    def test_closeConnection(self) -> None:
        """
        L{HardenedXmlStream.closeConnection} ends the connection.
        """
        self.c.server.closeConnection()
        self.assertTrue(self.c.closed)


class C2STLSTests(SynchronousTestCase):
    """
    The XMPP c2s face closes TLS connections with its guard registered.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)
        self.c = TLSConnection(factory, self.clock)
        self.c.send(HEADER)
        self.assertIn(b"</stream:features>", self.c.peer.received)
        self.assertTrue(self.c.server._sendGuard.registered)

    def test_clientStreamError(self) -> None:
        """
        A client's stream error ends the connection.
        """
        self.c.send(STREAM_ERROR)
        self.assertTrue(self.c.closed)

    def test_loginTimeout(self) -> None:
        """
        A client that does not log in in time gets C{connection-timeout} and
        the connection ends.
        """
        self.c.advance(C2SConfig().loginTimeout)
        self.assertIn(b"connection-timeout", self.c.peer.received)
        self.assertTrue(self.c.closed)

    def test_secondStartTLS(self) -> None:
        """
        C{<starttls/>} on a stream that is already encrypted is refused with
        C{<failure/>}, and the connection ends.
        """
        self.c.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertIn(b"<failure", self.c.peer.received)
        self.assertTrue(self.c.closed)


class S2STLSTests(SynchronousTestCase):
    """
    The XMPP s2s face closes TLS connections with its guard registered, at
    once (not after C{closeTimeout}, when it aborts them).
    """

    def setUp(self) -> None:
        self.harness = _Harness(self)
        self.c = TLSConnection(self.harness.manager.factory, self.harness.reactor)

    def test_unknownHost(self) -> None:
        """
        A stream to a domain we do not serve gets C{host-unknown}, and the
        connection ends.
        """
        self.c.send(header(to="elsewhere.example"))
        self.assertIn(b"host-unknown", self.c.peer.received)
        self.assertTrue(self.c.closed)

    def test_peerClosesItsStream(self) -> None:
        """
        When the remote server closes its stream, we close ours and the
        connection ends.
        """
        self.c.send(header())
        self.assertTrue(self.c.server._sendGuard.registered)
        self.c.send(b"</stream:stream>")
        self.assertTrue(self.c.peer.received.endswith(b"</stream:stream>"))
        self.assertTrue(self.c.closed)

    def test_peerStreamError(self) -> None:
        """
        A remote server's stream error ends the connection.
        """
        self.c.send(header())
        self.c.send(STREAM_ERROR)
        self.assertTrue(self.c.closed)
