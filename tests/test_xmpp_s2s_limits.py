# -*- test-case-name: tests.test_xmpp_s2s_limits -*-
"""
Tests for the hostile-peer limits of the incoming side of XMPP federation
(L{imgateway.adapters.xmpp.s2s_stream}, L{imgateway.adapters.xmpp.s2s}):
the gateway's per-source limits and a cap of our own on streams not
authenticated yet, a negotiation timer that covers a stalled TLS
handshake, bounded dialback verifications and SASL EXTERNAL attempts, and
the listener's start-up error. Synchronous: a fake clock, string
transports, L{imgateway.testing}'s L{XmlStreamPeer} and a real TLS layer
over a string transport. The real-socket proof is in
C{tests/e2e/test_xmpp_s2s_hostile.py}.
"""

from __future__ import annotations

import errno
import io
import sys
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.base import ListenerService
from imgateway.adapters.xmpp.adapter import XMPPAdapter
from imgateway.adapters.xmpp.federation_service import FederationConfig, FederationService
from imgateway.adapters.xmpp.s2s import NS_DIALBACK, NS_SERVER, S2SConfig, S2SManager
from imgateway.config import ConfigTable
from imgateway.core.errors import ConfigError
from imgateway.core.throttle import ConnectionLimiter, LimitsConfig
from imgateway.testing import XmlStreamPeer, memoryGateway, selfSignedOptions
from tests.test_face_limits import TCPTransport
from tests.test_xmpp_s2s import NS_SASL, NS_TLS, OURS, ROUTE, THEIRS, Reader, _dialbackDomain, _Harness, header, loadTLS

ATTACKER = IPv4Address("TCP", "192.0.2.7", 40000)
PEER = IPv4Address("TCP", "198.51.100.1", 40000)
OTHER = IPv4Address("TCP", "203.0.113.9", 40000)
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def limitedHarness(testCase: SynchronousTestCase, **configuration: Any) -> _Harness:
    """
    A L{_Harness} whose manager admits incoming streams through a
    L{ConnectionLimiter} with small limits: 3 streams waiting to
    authenticate per source, 6 connections at once then 1 a second.
    """
    harness = _Harness(testCase, **configuration)
    harness.manager.connectionLimiter = ConnectionLimiter(
        LimitsConfig(maxUnauthenticatedPerAddress=3, connectionsPerSecondPerAddress=1.0, connectionBurstPerAddress=6),
        harness.reactor,
    )
    return harness


def opened(harness: _Harness, peer: IPv4Address = PEER, sender: str | None = THEIRS) -> tuple[Any, StringTransport, Reader]:
    """
    A stream from C{peer} that sent its header; what we answered is read.
    """
    proto, transport, reader = harness.incoming(peer)
    proto.dataReceived(header(sender=sender))
    reader.feed(transport)
    return proto, transport, reader


class PerSourceTests(SynchronousTestCase):
    """
    Incoming s2s streams are admitted by the gateway's per-source limits,
    as the other faces' connections are, under the face name C{s2s}.
    """

    def test_unauthenticatedPerAddress(self) -> None:
        """
        C{max_unauthenticated_per_address} streams from one address wait to
        authenticate; the next is closed at once with C{policy-violation}
        naming the reason (logged once); another address still connects.
        """
        h = limitedHarness(self)
        held = [h.incoming(ATTACKER) for _ in range(3)]
        self.assertFalse(any(t.disconnecting for _, t, _ in held))
        with capturedLogs() as events:
            _, transport, reader = h.incoming(ATTACKER)
            h.incoming(ATTACKER)
        self.assertEqual([e["log_namespace"] for e in events], ["imgateway.core.throttle"])
        self.assertIn("Refusing a s2s connection from", formatEvent(events[0]))
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")
        self.assertIn("Too many connections from your address", transport.value().decode() + str(reader.elements[-1].toXml()))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.manager.unauthenticated, 3)
        self.assertEqual(h.manager.connectionLimiter.unauthenticated("192.0.2.7"), 3)
        _, transport, reader = opened(h, PEER)
        self.assertIsNone(reader.streamError())
        self.assertFalse(transport.disconnecting)

    def test_authenticationFreesSlot(self) -> None:
        """
        A stream that authenticated a domain no longer counts against its
        address, nor against C{s2s_max_unauthenticated}.
        """
        h = limitedHarness(self)
        proto, transport, reader = h.incoming(ATTACKER)
        h.incoming(ATTACKER)
        h.incoming(ATTACKER)
        _dialbackDomain(h, proto, transport, reader)
        self.assertEqual(proto.domains, {THEIRS})
        self.assertEqual(h.manager.connectionLimiter.unauthenticated("192.0.2.7"), 2)
        self.assertEqual(h.manager.unauthenticated, 2)
        _, transport, _ = h.incoming(ATTACKER)
        self.assertFalse(transport.disconnecting)

    def test_closeAndTimeoutFreeSlots(self) -> None:
        """
        A stream that closes frees its slots; one whose negotiation timer
        runs out frees them at once, before its connection is gone.
        """
        h = limitedHarness(self, negotiationTimeout=30.0)
        held = [h.incoming(ATTACKER) for _ in range(3)]
        held[0][0].connectionLost(Failure(ConnectionError()))
        self.assertEqual(h.manager.connectionLimiter.unauthenticated("192.0.2.7"), 2)
        self.assertEqual(h.manager.unauthenticated, 2)
        h.reactor.advance(30)
        self.assertTrue(all(t.disconnecting for _, t, _ in held[1:]))
        self.assertEqual(h.manager.connectionLimiter.unauthenticated("192.0.2.7"), 0)
        self.assertEqual(h.manager.unauthenticated, 0)

    def test_rate(self) -> None:
        """
        Past C{connection_burst_per_address} connections at once, the next
        is refused with C{policy-violation}.
        """
        h = limitedHarness(self)
        for _ in range(6):
            proto, transport, _ = h.incoming(ATTACKER)
            self.assertFalse(transport.disconnecting)
            proto.connectionLost(Failure(ConnectionError()))
        _, transport, reader = h.incoming(ATTACKER)
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")

    def test_gatewayLimiter(self) -> None:
        """
        Federation admits incoming streams through the gateway's
        L{ConnectionLimiter}, which every face shares.
        """
        gateway = memoryGateway(MemoryReactorClock())
        gateway.dataDir = FilePath(self.mktemp())
        gateway.dataDir.makedirs()
        service = FederationService(gateway, FederationConfig(S2SConfig(requireTLS=False, useDNS=False)), None)
        self.assertIs(service.manager.connectionLimiter, gateway.connectionLimiter)

    def test_ownLimiter(self) -> None:
        """
        A manager made without a limiter has one of its own, with the
        default limits.
        """
        manager = S2SManager(MemoryReactorClock(), OURS, None, S2SConfig(requireTLS=False), secret=b"s")
        self.assertEqual(manager.connectionLimiter.config, LimitsConfig())


class UnauthenticatedCapTests(SynchronousTestCase):
    """
    C{s2s_max_unauthenticated} caps the incoming streams not authenticated
    yet, all sources together.
    """

    def test_boundary(self) -> None:
        """
        C{maxUnauthenticated} streams (from any addresses) wait to
        authenticate; the next is refused with C{resource-constraint}; one
        that authenticates makes room.
        """
        h = _Harness(self, maxUnauthenticated=2)
        proto, transport, reader = h.incoming(PEER)
        h.incoming(OTHER)
        _, refused, refusedReader = h.incoming(ATTACKER)
        refusedReader.feed(refused)
        self.assertEqual(refusedReader.streamError(), "resource-constraint")
        self.assertTrue(refused.disconnecting)
        self.assertEqual(h.manager.unauthenticated, 2)
        _dialbackDomain(h, proto, transport, reader)
        self.assertEqual(h.manager.unauthenticated, 1)
        _, transport, reader = h.incoming(ATTACKER)
        reader.feed(transport)
        self.assertIsNone(reader.streamError())
        self.assertEqual(h.manager.unauthenticated, 2)

    def test_refusalsLoggedOncePerInterval(self) -> None:
        """
        Refusals for C{s2s_max_unauthenticated} are logged as the
        per-source ones are: the first at once, then one line per 10
        seconds counting the others; nothing else is logged for them.
        """
        h = _Harness(self, maxUnauthenticated=1)
        h.incoming(PEER)
        with capturedLogs() as events:
            for _ in range(5):
                h.incoming(ATTACKER)
            h.reactor.advance(10)
            h.incoming(OTHER)
        lines = [formatEvent(e) for e in events]
        self.assertEqual([e["log_namespace"] for e in events], ["imgateway.core.throttle"] * 3, lines)
        self.assertIn("Refusing a s2s connection from", lines[0])
        self.assertIn("(source 192.0.2.7)", lines[0])
        self.assertIn("s2s_max_unauthenticated", lines[0])
        self.assertEqual(lines[1], "Refused 4 more s2s connections (1 streams not authenticated (s2s_max_unauthenticated))")
        self.assertIn("(source 203.0.113.9)", lines[2])


class StalledTLSTests(SynchronousTestCase):
    """
    The negotiation timer runs from the TCP accept, TLS handshake
    included: a peer that starts TLS and never finishes it is dropped on
    time (nothing written to it could leave), and frees its slots at once.
    """

    def startTLS(self, harness: _Harness, peer: IPv4Address = ATTACKER) -> XmlStreamPeer:
        """
        A peer that opens a stream, asks for STARTTLS, gets C{<proceed/>}
        and never completes the handshake.
        """
        stream = XmlStreamPeer(harness.manager.factory.buildProtocol(peer), peer)
        harness.protocols.append(stream.protocol)
        stream.write(header())
        stream.read()
        stream.write(f"<starttls xmlns='{NS_TLS}'/>")
        self.assertEqual([e.name for e in stream.read()], ["proceed"])
        self.assertIsNotNone(stream.transport.tlsOptions)
        return stream

    def tlsHarness(self, **configuration: Any) -> _Harness:
        _, tls = loadTLS(self.mktemp(), OURS)
        configuration.setdefault("negotiationTimeout", 30.0)
        return limitedHarness(self, tls=tls, requireTLS=True, **configuration)

    def directTLS(self, harness: _Harness, peer: IPv4Address = ATTACKER) -> tuple[TCPTransport, Any]:
        """
        A connection on a direct TLS listener (XEP-0368) whose client sends
        nothing: its handshake is pending from the accept.
        """
        wrapper = TLSMemoryBIOFactory(selfSignedOptions(), False, harness.manager.factory).buildProtocol(peer)
        transport = TCPTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5270))
        wrapper.makeConnection(transport)
        harness.protocols.append(wrapper.wrappedProtocol)
        return transport, wrapper.wrappedProtocol

    def test_startTLSNeverCompletes(self) -> None:
        """
        After C{<proceed/>}, a handshake that never completes: when the
        negotiation timer (from the TCP accept) runs out, the connection
        is aborted, nothing is written into the pending TLS layer, and
        the stream's slots are free at once.
        """
        h = self.tlsHarness()
        stream = self.startTLS(h)
        self.assertEqual((h.manager.unauthenticated, h.manager.connectionLimiter.unauthenticated("192.0.2.7")), (1, 1))
        h.reactor.advance(29.9)
        self.assertFalse(stream.transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(stream.transport.disconnected)
        self.assertEqual(stream.transport.value(), b"")
        self.assertEqual((h.manager.unauthenticated, h.manager.connectionLimiter.unauthenticated("192.0.2.7")), (0, 0))

    def test_directTLSNeverCompletes(self) -> None:
        """
        On a direct TLS listener, a client that never completes the
        handshake is dropped when the negotiation timer runs out, not
        C{closeTimeout} later.
        """
        h = self.tlsHarness()
        transport, stream = self.directTLS(h)
        h.reactor.advance(29.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(h.manager.unauthenticated, 0)

    def test_refusedDuringHandshake(self) -> None:
        """
        A connection refused while its handshake is pending (direct TLS) is
        dropped at once: a stream error could never be sent.
        """
        h = self.tlsHarness(maxUnauthenticated=1)
        self.directTLS(h, PEER)
        transport, _ = self.directTLS(h, ATTACKER)
        self.assertTrue(transport.disconnected)
        self.assertEqual(h.manager.unauthenticated, 1)

    def test_shutdownDuringHandshake(self) -> None:
        """
        Stopping the manager drops a stream whose handshake is pending at
        once.
        """
        h = self.tlsHarness()
        stream = self.startTLS(h)
        h.manager.stop()
        self.assertTrue(stream.transport.disconnected)

    def test_completedHandshake(self) -> None:
        """
        Once the handshake has completed, the timer closes the stream with
        a C{connection-timeout} stream error, as on plain TCP.
        """
        h = self.tlsHarness()
        stream = self.startTLS(h)
        stream.transport.completeHandshake()
        stream.restart()
        stream.write(header())
        stream.read()
        h.reactor.advance(30)
        self.assertEqual(XmlStreamPeer.streamError(stream.read()), "connection-timeout")
        self.assertTrue(stream.transport.disconnecting)
        self.assertFalse(stream.transport.disconnected)
        self.assertEqual(h.manager.unauthenticated, 0)


def _result(proto: Any, domain: str) -> None:
    proto.dataReceived(f"<db:result from='{domain}' to='{OURS}'>key</db:result>".encode())


def _errorResult(reader: Reader, transport: StringTransport, domain: str) -> bool:
    """
    Whether we answered C{domain}'s C{db:result} with a
    C{resource-constraint} error (and nothing else).
    """
    answers = [e for e in reader.feed(transport) if (e.uri, e.name) == (NS_DIALBACK, "result")]
    if len(answers) != 1:
        return False
    [answer] = answers
    conditions = [(c.uri, c.name) for e in answer.elements(NS_SERVER, "error") for c in e.elements()]
    return (answer["to"], answer["type"], conditions) == (domain, "error", [(NS_STANZAS, "resource-constraint")])


class DialbackLimitsTests(SynchronousTestCase):
    """
    Dialback verifications that unauthenticated peers make us start (a
    C{db:verify} to the claimed domain, over a link we may have to open)
    are bounded: per stream (C{maxDomainsPerStream}), per source
    address, and in all; they end with the stream that asked; and a link
    opened only to verify does not outlive its use.
    """

    def harness(self, **configuration: Any) -> _Harness:
        configuration.setdefault("routes", {f"d{n}.example": ROUTE for n in range(6)})
        return _Harness(self, **configuration)

    def test_globalCap(self) -> None:
        """
        C{maxPendingDialback} verifications may be pending, whatever the
        streams and addresses; one more is answered with a
        C{resource-constraint} error, opens no connection, and leaves the
        stream open. Once one is answered, another may start.
        """
        h = self.harness(maxPendingDialback=2)
        first, firstTransport, firstReader = opened(h, PEER)
        _result(first, "d0.example")
        _result(first, "d1.example")
        self.assertEqual(len(h.reactor.tcpClients), 2)
        second, transport, reader = opened(h, OTHER)
        _result(second, "d2.example")
        self.assertTrue(_errorResult(reader, transport, "d2.example"))
        self.assertEqual(len(h.reactor.tcpClients), 2)
        self.assertEqual(h.manager.pendingVerifications, 2)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(second.pending, set())

        out, outTransport, outReader = h.connectOutgoing(0)
        out.dataReceived(header(to=OURS, sender="d0.example", streamID="out-id"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        [_, verify] = outReader.feed(outTransport)
        out.dataReceived(f"<db:verify from='d0.example' to='{OURS}' id='{verify['id']}' type='valid'/>".encode())
        self.assertEqual(first.domains, {"d0.example"})
        self.assertEqual(h.manager.pendingVerifications, 1)
        _result(second, "d3.example")
        self.assertEqual(second.pending, {"d3.example"})
        self.assertEqual(len(h.reactor.tcpClients), 3)

    def test_perAddressCap(self) -> None:
        """
        C{maxPendingDialbackPerAddress} verifications may be pending for the
        streams of one address; one more (on another stream from there) is
        refused; another address is not held up.
        """
        h = self.harness(maxPendingDialbackPerAddress=2)
        first, _, _ = opened(h, ATTACKER)
        _result(first, "d0.example")
        _result(first, "d1.example")
        second, transport, reader = opened(h, ATTACKER)
        _result(second, "d2.example")
        self.assertTrue(_errorResult(reader, transport, "d2.example"))
        peer, _, _ = opened(h, PEER)
        _result(peer, "d3.example")
        self.assertEqual(peer.pending, {"d3.example"})
        self.assertEqual(len(h.reactor.tcpClients), 3)

    def test_refusalLoggedOncePerStream(self) -> None:
        """
        A stream's refused verifications are logged once.
        """
        h = self.harness(maxPendingDialback=1)
        first, _, _ = opened(h, PEER)
        _result(first, "d0.example")
        second, transport, reader = opened(h, OTHER)
        with capturedLogs() as events:
            for n in range(1, 4):
                _result(second, f"d{n}.example")
        self.assertEqual(len([e for e in events if "not verifying" in formatEvent(e)]), 1)
        self.assertEqual(len(reader.named(NS_DIALBACK, "result")), 0)
        reader.feed(transport)
        self.assertEqual(len(reader.named(NS_DIALBACK, "result")), 3)

    def test_droppedWithStream(self) -> None:
        """
        When the stream that asked for verifications closes, they are
        dropped: the connection attempts opened for them stop, and their
        links are forgotten.
        """
        h = self.harness()
        proto, _, _ = opened(h, ATTACKER)
        _result(proto, "d0.example")
        _result(proto, "d1.example")
        self.assertEqual((h.manager.pendingVerifications, sorted(h.manager.links)), (2, ["d0.example", "d1.example"]))
        proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual((h.manager.pendingVerifications, h.manager.links), (0, {}))
        self.assertTrue(all(c.stoppedConnecting for c in h.reactor.connectors))

    def test_verificationLinkNotKept(self) -> None:
        """
        A link opened only to verify a key, which cannot connect, is
        forgotten when it gives up (the key is invalid): no cooldown keeps
        it, so peers cannot fill C{maxOutgoingLinks} with dead domains. A
        link that failed stanzas is still kept for its cooldown.
        """
        h = self.harness(maxConnectAttempts=1)
        proto, transport, reader = opened(h, ATTACKER)
        _result(proto, "d0.example")
        h.refuseOutgoing()
        [answer] = reader.feed(transport)
        self.assertEqual((answer.name, answer["type"]), ("result", "invalid"))
        self.assertEqual((h.manager.links, h.manager.pendingVerifications), ({}, 0))
        h.send(domain=THEIRS)
        h.refuseOutgoing()
        self.assertEqual(list(h.manager.links), [THEIRS])
        h.reactor.advance(h.config.giveUpCooldown)

    def test_verificationTimeoutStopsLink(self) -> None:
        """
        A verification that times out (with its stream's negotiation)
        while its link waits to retry stops the link: it is not retried
        for nothing.
        """
        h = self.harness(maxConnectAttempts=3, negotiationTimeout=5.0, retryInitialDelay=10.0)
        proto, _, _ = opened(h, ATTACKER)
        _result(proto, "d0.example")
        h.refuseOutgoing()
        self.assertEqual(list(h.manager.links), ["d0.example"])
        h.reactor.advance(5)
        self.assertEqual((h.manager.links, h.manager.pendingVerifications), ({}, 0))
        h.reactor.advance(10)
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_maxDomainsPerStream(self) -> None:
        """
        C{maxDomainsPerStream} domains may be pending or authenticated on
        one stream; one more is a C{policy-violation}.
        """
        h = self.harness(maxDomainsPerStream=3)
        proto, transport, reader = opened(h, ATTACKER)
        for n in range(3):
            _result(proto, f"d{n}.example")
        reader.feed(transport)
        self.assertIsNone(reader.streamError())
        _result(proto, "d3.example")
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")


class SASLAttemptsTests(SynchronousTestCase):
    """
    Failed SASL EXTERNAL attempts on one incoming stream are capped by
    C{maxAuthAttempts}.
    """

    def test_boundary(self) -> None:
        """
        With C{maxAuthAttempts} 2, the first failure leaves the stream
        open; the second closes it with C{policy-violation}.
        """
        h = _Harness(self, maxAuthAttempts=2)
        proto, transport, reader = opened(h, ATTACKER)
        proto.dataReceived(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>".encode())
        [failure] = reader.feed(transport)
        self.assertEqual((failure.name, [c.name for c in failure.elements()]), ("failure", ["not-authorized"]))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>=</auth>".encode())
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")
        self.assertTrue(transport.disconnecting)


class _PortTaken(MemoryReactorClock):
    """
    A reactor on which every TCP port is taken.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))


class ListenerTests(SynchronousTestCase):
    """
    The s2s listeners are L{ListenerService}s, as the other faces'.
    """

    def test_portTaken(self) -> None:
        """
        A taken s2s port stops start-up with one line naming the endpoint
        and exit status 1, not a traceback.
        """
        config = S2SConfig(listen=("tcp:5269:interface=127.0.0.1",), requireTLS=False)
        [service] = S2SManager(_PortTaken(), OURS, None, config, secret=b"s").services()
        self.assertIsInstance(service, ListenerService)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with capturedLogs():
            e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(e.code, 1)
        self.assertEqual(
            stderr.getvalue(), "imgateway: cannot listen on tcp:5269:interface=127.0.0.1: [Errno 98] Address already in use\n"
        )


class ConfigTests(SynchronousTestCase):
    """
    The limits are keys of C{[xmpp]}.
    """

    def parse(self, **keys: object) -> S2SConfig:
        table = {"federation": True, "require_tls": False, "listen": [], "s2s_require_tls": False, **keys}
        config: Any = XMPPAdapter().parseConfig(ConfigTable(table, "x.toml [xmpp]", self.mktemp()), MemoryReactorClock())
        s2s: S2SConfig = config.federation.s2s
        return s2s

    def test_defaults(self) -> None:
        """
        The defaults: 50 streams waiting to authenticate, 60 s to do so,
        16 domains per stream, 100 dialback verifications pending in all
        and 16 per address, 3 failed SASL attempts per stream.
        """
        c = self.parse()
        self.assertEqual(
            (c.maxUnauthenticated, c.negotiationTimeout, c.maxDomainsPerStream, c.maxPendingDialback, c.maxPendingDialbackPerAddress, c.maxAuthAttempts),
            (50, 60.0, 16, 100, 16, 3),
        )
        self.assertEqual(c, S2SConfig(requireTLS=False, listen=(), useDNS=True))

    def test_keys(self) -> None:
        """
        Each limit is read from its key.
        """
        c = self.parse(
            s2s_max_unauthenticated=7,
            s2s_negotiation_timeout=12.5,
            s2s_max_domains_per_stream=2,
            s2s_max_pending_dialback=9,
            s2s_max_pending_dialback_per_address=4,
            s2s_max_auth_attempts=1,
        )
        self.assertEqual(
            (c.maxUnauthenticated, c.negotiationTimeout, c.maxDomainsPerStream, c.maxPendingDialback, c.maxPendingDialbackPerAddress, c.maxAuthAttempts),
            (7, 12.5, 2, 9, 4, 1),
        )

    def test_positive(self) -> None:
        """
        A limit of 0 is refused with the key's name.
        """
        e = self.assertRaises(ConfigError, self.parse, s2s_max_pending_dialback=0)
        self.assertIn("s2s_max_pending_dialback", str(e))
