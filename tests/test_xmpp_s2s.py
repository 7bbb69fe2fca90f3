# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
Tests for L{imgateway.adapters.xmpp.s2s} (the s2s link layer).

Stream negotiation, addressing checks, queues, retries and timers are
tested synchronously: a fake clock, a memory reactor and string transports
stand for the network, and a parser reads back what we wrote. TLS is
tested for real: two managers for two domains over loopback TCP with
certificates from L{imgateway.testing.makeCertificates} (SASL EXTERNAL,
dialback, XEP-0344, refused certificates, a peer without STARTTLS) in
C{tests/e2e/test_xmpp_s2s_tls.py}.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from imgateway.adapters.xmpp.adapter import XMPPAdapter
from imgateway.adapters.xmpp.federation_service import DIALBACK_SECRET_FILE, FederationConfig, FederationService
from imgateway.config import ConfigTable
from imgateway.adapters.xmpp.s2s import (
    NS_DIALBACK,
    NS_SERVER,
    S2S_LIMITS,
    S2SConfig,
    S2SError,
    S2SManager,
    dialbackKey,
)
from imgateway.adapters.xmpp.stream import NS_STREAM_LIMITS
from imgateway.core.errors import ConfigError, DeliveryStatus, NoRoute
from imgateway.core.linkinfo import LinkInfo
from imgateway.net.certificates import loadTLSFiles
from imgateway.net.tls import TLSFiles
from imgateway.testing import XmlStreamPeer, makeCertificates, memoryGateway
from tests.test_net_srv import FakeResolver

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"

OURS = "corp.example"
THEIRS = "other.example"
ROUTE = "tcp:127.0.0.1:15269"


def header(
    to: str | None = OURS,
    sender: str | None = THEIRS,
    namespace: str = NS_SERVER,
    streams: str = NS_STREAMS,
    version: str | None = "1.0",
    streamID: str | None = None,
) -> bytes:
    """
    A stream header as a remote server sends it.
    """
    attributes = [f"xmlns='{namespace}'", f"xmlns:stream='{streams}'", f"xmlns:db='{NS_DIALBACK}'"]
    for name, value in (("to", to), ("from", sender), ("version", version), ("id", streamID)):
        if value is not None:
            attributes.append(f"{name}='{value}'")
    return f"<?xml version='1.0'?><stream:stream {' '.join(attributes)}>".encode()


class Reader:
    """
    Parses what one side of a stream wrote.

    @ivar root: The stream header.
    @ivar elements: The top-level elements, in order.
    @ivar ended: Whether the closing tag came.
    """

    def __init__(self) -> None:
        self.root: domish.Element | None = None
        self.elements: list[domish.Element] = []
        self.ended = False
        self._stream = self._newStream()

    def _newStream(self) -> Any:
        stream = domish.elementStream()
        stream.DocumentStartEvent = self._started
        stream.ElementEvent = self.elements.append
        stream.DocumentEndEvent = self._ended
        return stream

    def _started(self, root: domish.Element) -> None:
        self.root = root

    def _ended(self) -> None:
        self.ended = True

    def feed(self, transport: StringTransport) -> list[domish.Element]:
        """
        Parse what was written to C{transport} since the last call.

        @return: The new elements.
        """
        data = transport.value()
        transport.clear()
        before = len(self.elements)
        if data:
            self._stream.parse(data)
        return self.elements[before:]

    def streamError(self) -> str | None:
        """
        The condition of the stream error written, if any.
        """
        for e in self.elements:
            if e.uri == NS_STREAMS and e.name == "error":
                for child in e.elements():
                    if child.uri == NS_ERRORS and child.name != "text":
                        return str(child.name)
        return None

    def named(self, uri: str, name: str) -> list[domish.Element]:
        return [e for e in self.elements if e.uri == uri and e.name == name]


def message(sender: str = f"romeo@{OURS}", recipient: str = f"juliet@{THEIRS}", body: str = "hi") -> domish.Element:
    m = domish.Element((NS_SERVER, "message"))
    m["from"] = sender
    m["to"] = recipient
    m["type"] = "chat"
    m.addElement("body", content=body)
    return m


class _Harness:
    """
    A manager on a memory reactor, and the connections it made or was
    given (string transports), for one synchronous test.
    """

    def __init__(
        self, testCase: SynchronousTestCase, tls: TLSFiles | None = None, connectionLimiter: Any = None, **configuration: Any
    ) -> None:
        configuration.setdefault("requireTLS", False)
        configuration.setdefault("verifyCertificates", False)
        configuration.setdefault("useDNS", False)
        configuration.setdefault("routes", {THEIRS: ROUTE})
        self.reactor = MemoryReactorClock()
        self.config = S2SConfig(**configuration)
        extra = {"connectionLimiter": connectionLimiter} if connectionLimiter is not None else {}
        self.manager = S2SManager(self.reactor, OURS, tls, self.config, secret=b"our secret", **extra)
        self.received: list[tuple[str, domish.Element]] = []
        self.manager.stanzaReceived = lambda domain, stanza: self.received.append((domain, stanza))
        self.protocols: list[Any] = []
        self.sent: list[Deferred[None]] = []
        testCase.addCleanup(self.cleanUp, testCase)

    def send(self, stanza: domish.Element | None = None, domain: str = THEIRS) -> Deferred[None]:
        """
        Send a stanza whose outcome the test does not look at (a failure
        when the manager stops is expected).
        """
        d = self.manager.send(domain, stanza if stanza is not None else message())
        self.sent.append(d)
        return d

    def incoming(self, peer: IPv4Address = IPv4Address("TCP", "192.0.2.1", 40000)) -> tuple[Any, StringTransport, Reader]:
        """
        A remote server connects to our listener from C{peer}.
        """
        proto = self.manager.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        self.protocols.append(proto)
        return proto, transport, Reader()

    def connectOutgoing(self, index: int = -1) -> tuple[Any, StringTransport, Reader]:
        """
        Let our pending connection attempt succeed.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        proto: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        proto.makeConnection(transport)
        # The endpoint wraps our protocol.
        stream = getattr(proto, "_wrappedProtocol", proto)
        self.protocols.append(stream)
        return stream, transport, Reader()

    def refuseOutgoing(self, index: int = -1) -> None:
        """
        Let our pending connection attempt fail (connection refused).
        """
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(ConnectionRefusedError()))

    def cleanUp(self, testCase: SynchronousTestCase) -> None:
        self.manager.stop()
        for d in self.sent:
            d.addErrback(lambda f: f.trap(S2SError))
        for proto in self.protocols:
            if not proto._lost:
                proto.connectionLost(Failure(ConnectionDone()))
        testCase.assertEqual(self.reactor.getDelayedCalls(), [])


def _dialbackDomain(harness: _Harness, proto: Any, transport: StringTransport, reader: Reader, domain: str = THEIRS) -> None:
    """
    Authenticate C{domain} on an incoming stream by dialback, the
    authoritative server (over our outgoing link) saying the key is valid.
    """
    proto.dataReceived(header(sender=domain))
    reader.feed(transport)
    proto.dataReceived(f"<db:result from='{domain}' to='{OURS}'>key</db:result>".encode())
    out, outTransport, outReader = harness.connectOutgoing()
    out.dataReceived(header(to=OURS, sender=domain, streamID="their-id"))
    out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    [_, verify] = outReader.feed(outTransport)
    out.dataReceived(
        f"<db:verify from='{domain}' to='{OURS}' id='{verify['id']}' type='valid'/>".encode()
    )
    reader.feed(transport)


class DialbackKeyTests(SynchronousTestCase):
    """
    L{dialbackKey} follows XEP-0185; the secret and the keys never show.
    """

    def test_secretHidden(self) -> None:
        """
        Neither the C{repr} of the manager's keys and of a pending
        verification, nor anything logged during a dialback exchange (a
        valid one, and an invalid C{db:verify} of a key that is not ours),
        holds the secret or a key.
        """
        harness = _Harness(self)
        self.assertNotIn("our secret", repr(harness.manager.dialback))
        self.assertNotIn(repr(b"our secret")[2:-1], repr(harness.manager.dialback))
        with capturedLogs() as events:
            proto, transport, reader = harness.incoming()
            proto.dataReceived(header())
            reader.feed(transport)
            proto.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}'>their-key-123</db:result>".encode())
            [verify] = harness.manager.links[THEIRS].verifies.values()
            self.assertNotIn("their-key-123", repr(verify))
            out, outTransport, outReader = harness.connectOutgoing()
            out.dataReceived(header(to=OURS, sender=THEIRS, streamID="their-id"))
            out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
            sent = outReader.feed(outTransport)
            ourKey = str(sent[0])
            out.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='{verify.streamID}' type='valid'/>".encode())
            out.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='valid'/>".encode())
            other, otherTransport, _ = harness.incoming()
            other.dataReceived(header())
            other.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='x1'>forged-key-456</db:verify>".encode())
        self.assertEqual(proto.domains, {THEIRS})
        self.assertTrue(events)
        for event in events:
            text = f"{formatEvent(event)} {event!r}"
            for secret in ("our secret", "their-key-123", ourKey, "forged-key-456"):
                self.assertNotIn(secret, text)

    def test_formula(self) -> None:
        """
        The key is the hex HMAC-SHA256, keyed with the hex SHA-256 of the
        secret, of the receiving domain, the originating domain and the
        stream id, separated by spaces.
        """
        secret = b"s3cr3tf0rd14lb4ck"
        keyed = hashlib.sha256(secret).hexdigest()
        self.assertEqual(keyed, "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc")
        expected = hmac.new(keyed.encode(), b"example.net example.com D60000229F", hashlib.sha256).hexdigest()
        self.assertEqual(dialbackKey(secret, "example.net", "example.com", "D60000229F"), expected)

    def test_bound(self) -> None:
        """
        Another stream id, another receiving domain or another secret gives
        another key.
        """
        key = dialbackKey(b"s", "a.example", "b.example", "1")
        self.assertNotEqual(key, dialbackKey(b"s", "a.example", "b.example", "2"))
        self.assertNotEqual(key, dialbackKey(b"s", "c.example", "b.example", "1"))
        self.assertNotEqual(key, dialbackKey(b"t", "a.example", "b.example", "1"))


class ConfigTests(SynchronousTestCase):
    """
    L{S2SConfig}, L{S2SManager}'s checks and L{S2SError}.
    """

    def federation(self, gateway: Any, secretFile: str | None = None) -> FederationService:
        config = FederationConfig(S2SConfig(requireTLS=False, useDNS=False), dialbackSecretFile=secretFile)
        return FederationService(gateway, config, None)

    def test_dialbackSecretStable(self) -> None:
        """
        The dialback secret comes from a file in the data directory by
        default, made once (mode 0600): a second service (a restart, or
        another process serving the domain) has the same keys. A file
        named in the config is used instead, as it is.
        """
        gateway = memoryGateway(MemoryReactorClock())
        gateway.dataDir = FilePath(self.mktemp())
        gateway.dataDir.makedirs()
        first, second = self.federation(gateway), self.federation(gateway)
        self.assertEqual(first.manager.dialbackKey(THEIRS, "id1"), second.manager.dialbackKey(THEIRS, "id1"))
        secretFile = gateway.dataDir.child(DIALBACK_SECRET_FILE)
        self.assertEqual(secretFile.getPermissions().shorthand(), "rw-------")
        self.assertEqual(len(secretFile.getContent()), 32)
        named = FilePath(self.mktemp())
        named.setContent(b"shared by every process")
        third = self.federation(gateway, named.path)
        self.assertEqual(third.manager.dialbackKey(THEIRS, "id1"), dialbackKey(b"shared by every process", THEIRS, OURS, "id1"))

    def test_linkInfo(self) -> None:
        """
        The federation service tells the operator's console the state of
        each outgoing link (by domain, with the stanzas waiting) and of the
        incoming streams.
        """
        gateway = memoryGateway(MemoryReactorClock())
        gateway.dataDir = FilePath(self.mktemp())
        gateway.dataDir.makedirs()
        config = FederationConfig(S2SConfig(requireTLS=False, useDNS=False, routes={THEIRS: ROUTE}))
        service = FederationService(gateway, config, None)
        self.assertEqual(service.linkInfo(), [LinkInfo("xmpp-s2s-incoming", "all", False, "0 stream(s)", required=False)])
        waiting = service.manager.send(THEIRS, message())
        self.assertEqual(
            service.linkInfo(),
            [
                LinkInfo("xmpp-s2s", THEIRS, False, "1 waiting"),
                LinkInfo("xmpp-s2s-incoming", "all", False, "0 stream(s)", required=False),
            ],
        )
        self.successResultOf(service.manager.stop())
        self.failureResultOf(waiting)

    def test_dialbackSecretKey(self) -> None:
        """
        C{s2s_dialback_secret_file} is read relative to the config file's
        folder, and need not exist yet.
        """
        base = self.mktemp()
        os.makedirs(base)
        table = {"federation": True, "require_tls": False, "listen": [], "s2s_require_tls": False, "s2s_dialback_secret_file": "dialback.key"}
        config: Any = XMPPAdapter().parseConfig(ConfigTable(table, "x.toml [xmpp]", base), MemoryReactorClock())
        self.assertEqual(config.federation.dialbackSecretFile, os.path.join(base, "dialback.key"))

    def test_defaults(self) -> None:
        """
        The defaults require TLS, verify certificates, allow dialback, and
        cap s2s stanzas at 512 KiB as Prosody and ejabberd do.
        """
        config = S2SConfig()
        self.assertTrue(config.requireTLS and config.verifyCertificates and config.allowDialback)
        self.assertEqual(config.limits, S2S_LIMITS)
        self.assertEqual(S2S_LIMITS.stanzaBytes, 524288)
        self.assertEqual(config.routes, {})

    def test_noAuthentication(self) -> None:
        """
        With certificates not trusted and dialback off, nothing could
        authenticate: refused.
        """
        config = S2SConfig(verifyCertificates=False, allowDialback=False)
        self.assertRaises(ValueError, S2SManager, MemoryReactorClock(), OURS, None, config)

    def test_listenersNeedCertificate(self) -> None:
        """
        Listeners that must offer STARTTLS need a certificate.
        """
        config = S2SConfig(listen=("tcp:0",), requireTLS=True)
        self.assertRaises(ValueError, S2SManager, MemoryReactorClock(), OURS, None, config)

    def test_error(self) -> None:
        """
        L{S2SError} is a L{NoRoute} with its condition; a full queue is
        rate limiting.
        """
        e = S2SError("remote-server-timeout", "slow")
        self.assertIsInstance(e, NoRoute)
        self.assertEqual((e.condition, e.text, e.status), ("remote-server-timeout", "slow", DeliveryStatus.NO_ROUTE))
        self.assertEqual(S2SError("resource-constraint").status, DeliveryStatus.RATE_LIMITED)

    def test_services(self) -> None:
        """
        One listener service per endpoint, the same ones each time.
        """
        harness = _Harness(self, listen=("tcp:5269", "tcp:5270"))
        services = harness.manager.services()
        self.assertEqual(len(services), 2)
        self.assertEqual(services, harness.manager.services())


class IncomingHeaderTests(SynchronousTestCase):
    """
    Stream headers from remote servers are checked (RFC 6120 4.9.3).
    """

    def error(self, data: bytes) -> str | None:
        harness = _Harness(self)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(data)
        reader.feed(transport)
        self.assertTrue(transport.disconnecting or reader.streamError() is None)
        return reader.streamError()

    def test_good(self) -> None:
        """
        A good header is answered with ours (from our domain, to theirs, a
        stream id, the dialback prefix) and features offering dialback.
        """
        harness = _Harness(self)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header())
        [features] = reader.feed(transport)
        assert reader.root is not None
        self.assertEqual(reader.root.getAttribute("from"), OURS)
        self.assertEqual(reader.root.getAttribute("to"), THEIRS)
        self.assertTrue(reader.root.getAttribute("id"))
        self.assertEqual(reader.root.defaultUri, NS_SERVER)
        self.assertEqual(reader.root.localPrefixes.get("db"), NS_DIALBACK)
        self.assertEqual(
            [(c.uri, c.name) for c in features.elements()],
            [(NS_STREAM_LIMITS, "limits"), ("urn:xmpp:features:dialback", "dialback")],
        )

    def test_namespace(self) -> None:
        """
        A client stream, or a stream in another namespace: C{invalid-namespace}.
        """
        self.assertEqual(self.error(header(namespace="jabber:client")), "invalid-namespace")
        self.assertEqual(self.error(header(streams="urn:example:not-streams")), "invalid-namespace")

    def test_version(self) -> None:
        """
        A stream without version 1.0: C{unsupported-version}.
        """
        self.assertEqual(self.error(header(version=None)), "unsupported-version")
        self.assertEqual(self.error(header(version="0.9")), "unsupported-version")

    def test_to(self) -> None:
        """
        A stream to another domain: C{host-unknown}; without C{to}:
        C{improper-addressing}.
        """
        self.assertEqual(self.error(header(to="elsewhere.example")), "host-unknown")
        self.assertEqual(self.error(header(to=None)), "improper-addressing")

    def test_from(self) -> None:
        """
        A C{from} that is not a domain, or is ours: C{invalid-from}.
        """
        self.assertEqual(self.error(header(sender=f"user@{THEIRS}")), "invalid-from")
        self.assertEqual(self.error(header(sender=OURS)), "invalid-from")

    def test_startTLSRequired(self) -> None:
        """
        With TLS required, the first features offer only STARTTLS, required,
        and anything else before it is a C{policy-violation}.
        """
        directory = self.mktemp()
        _, tls = loadTLS(directory, OURS)
        reactor = MemoryReactorClock()
        manager = S2SManager(reactor, OURS, tls, S2SConfig(useDNS=False), secret=b"s")
        proto: Any = manager.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        reader = Reader()
        proto.dataReceived(header())
        [features] = reader.feed(transport)
        [limits, starttls] = list(features.elements())
        self.assertEqual((limits.uri, limits.name), (NS_STREAM_LIMITS, "limits"))
        self.assertEqual((starttls.uri, starttls.name), (NS_TLS, "starttls"))
        self.assertEqual([c.name for c in starttls.elements()], ["required"])
        proto.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}'>k</db:result>".encode())
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_streamLimitsAdvertised(self) -> None:
        """
        XEP-0478: the features of an incoming stream advertise the stanza
        cap in force (before authentication) and the idle timeout.
        """
        harness = _Harness(self)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header())
        [features] = reader.feed(transport)
        [limits] = [e for e in features.elements() if (e.uri, e.name) == (NS_STREAM_LIMITS, "limits")]
        self.assertEqual({c.name: str(c) for c in limits.elements()}, {"max-bytes": "16384", "idle-seconds": "600"})
        proto.setAuthenticated()
        self.assertEqual(str(next(proto.limitsFeature().elements())), "524288")

    def test_startTLSInjection(self) -> None:
        """
        What a remote server sends in the same read after C{<starttls/>}
        is dropped, never handled as if it had come over TLS
        (CVE-2011-0411): a plaintext C{db:result} pipelined behind it
        starts no dialback verification; after the handshake the stream
        offers authentication afresh.
        """
        _, tls = loadTLS(self.mktemp(), OURS)
        reactor = MemoryReactorClock()
        manager = S2SManager(reactor, OURS, tls, S2SConfig(useDNS=False, routes={THEIRS: ROUTE}), secret=b"s")
        peer = XmlStreamPeer(manager.factory.buildProtocol(None), IPv4Address("TCP", "192.0.2.1", 40000))
        peer.write(header())
        peer.read()
        peer.write(f"<starttls xmlns='{NS_TLS}'/><db:result from='{THEIRS}' to='{OURS}'>key</db:result>")
        self.assertEqual([e.name for e in peer.read()], ["proceed"])
        self.assertIsNotNone(peer.transport.tlsOptions)
        self.assertEqual((reactor.tcpClients, peer.protocol.pending, peer.protocol.domains), ([], set(), set()))
        peer.transport.completeHandshake()
        peer.restart()
        peer.write(header())
        [features] = peer.read()
        self.assertIn("dialback", [e.name for e in features.elements()])
        self.assertFalse(peer.disconnecting)
        manager.stop()
        peer.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_tooManyStreams(self) -> None:
        """
        Past C{maxIncomingStreams}, a new stream is refused with
        C{resource-constraint}; closing one makes room.
        """
        harness = _Harness(self, maxIncomingStreams=2)
        first, _, _ = harness.incoming()
        harness.incoming()
        _, transport, reader = harness.incoming()
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "resource-constraint")
        self.assertTrue(transport.disconnecting)
        harness.protocols[-1].connectionLost(Failure(ConnectionDone()))
        first.connectionLost(Failure(ConnectionDone()))
        _, transport, reader = harness.incoming()
        reader.feed(transport)
        self.assertIsNone(reader.streamError())

    def test_negotiationTimeout(self) -> None:
        """
        A stream not authenticated within C{negotiationTimeout} is closed
        with C{connection-timeout}.
        """
        harness = _Harness(self, negotiationTimeout=30.0)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header())
        harness.reactor.advance(29)
        reader.feed(transport)
        self.assertIsNone(reader.streamError())
        harness.reactor.advance(1)
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "connection-timeout")

    def test_stopped(self) -> None:
        """
        After L{S2SManager.stop}, a new incoming stream is closed with
        C{system-shutdown}.
        """
        harness = _Harness(self)
        harness.manager.stop()
        _, transport, reader = harness.incoming()
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "system-shutdown")

    def test_closeTimeout(self) -> None:
        """
        A closing connection that does not go away within C{closeTimeout}
        is aborted.
        """
        harness = _Harness(self, closeTimeout=5.0)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header(to="elsewhere.example"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        harness.reactor.advance(5)
        self.assertTrue(transport.disconnected)

    def test_preAuthenticationLimit(self) -> None:
        """
        Before authentication, stanzas are capped at the s2s
        pre-authentication size.
        """
        harness = _Harness(self)
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header())
        proto.dataReceived(b"<db:result from='x.example' to='corp.example'>" + b"k" * S2S_LIMITS.preAuthStanzaBytes)
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")


class IncomingDialbackTests(SynchronousTestCase):
    """
    Dialback on incoming streams (XEP-0220): keys verified with the
    authoritative server, our own keys verified for others, and the
    addressing of stanzas on authenticated streams.
    """

    def setUp(self) -> None:
        self.harness = _Harness(self)
        self.proto, self.transport, self.reader = self.harness.incoming()

    def test_verified(self) -> None:
        """
        A C{db:result} is checked by sending C{db:verify} with the key and
        our stream id to the originating domain over our outgoing link; its
        C{valid} makes us answer C{valid} and authenticates the domain.
        """
        self.proto.dataReceived(header())
        self.reader.feed(self.transport)
        assert self.reader.root is not None
        streamID = self.reader.root.getAttribute("id")
        self.proto.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}'>their key</db:result>".encode())
        self.assertEqual(len(self.harness.reactor.tcpClients), 1)
        self.assertEqual(self.harness.reactor.tcpClients[0][:2], ("127.0.0.1", 15269))

        out, outTransport, outReader = self.harness.connectOutgoing()
        outReader.feed(outTransport)
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="out-id"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        [result, verify] = outReader.feed(outTransport)
        self.assertEqual((result.uri, result.name), (NS_DIALBACK, "result"))
        self.assertEqual((verify.uri, verify.name), (NS_DIALBACK, "verify"))
        self.assertEqual(
            (verify["from"], verify["to"], verify["id"], str(verify)), (OURS, THEIRS, streamID, "their key")
        )
        self.assertEqual(self.reader.feed(self.transport), [])

        out.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='{streamID}' type='valid'/>".encode())
        [answer] = self.reader.feed(self.transport)
        self.assertEqual((answer.name, answer["from"], answer["to"], answer["type"]), ("result", OURS, THEIRS, "valid"))
        self.assertEqual(self.proto.domains, {THEIRS})
        self.assertEqual(self.proto.methods[THEIRS], "dialback")

    def test_refused(self) -> None:
        """
        If the authoritative server says the key is not its own, we answer
        C{invalid} and close the stream.
        """
        self.proto.dataReceived(header())
        self.reader.feed(self.transport)
        assert self.reader.root is not None
        streamID = self.reader.root.getAttribute("id")
        self.proto.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}'>forged</db:result>".encode())
        out, outTransport, _ = self.harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="out-id"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        out.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='{streamID}' type='invalid'/>".encode())
        [answer] = self.reader.feed(self.transport)
        self.assertEqual(answer["type"], "invalid")
        self.assertTrue(self.reader.ended)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.proto.domains, set())

    def test_unreachableAuthority(self) -> None:
        """
        If the authoritative server cannot be reached, the key is invalid.
        """
        self.proto.dataReceived(header(sender="nowhere.example"))
        self.reader.feed(self.transport)
        self.proto.dataReceived(b"<db:result from='nowhere.example' to='corp.example'>k</db:result>")
        [answer] = self.reader.feed(self.transport)
        self.assertEqual((answer.name, answer["type"]), ("result", "invalid"))

    def test_verifyOurKey(self) -> None:
        """
        A C{db:verify} quoting a key we made for that receiving domain and
        stream id is answered C{valid}; any other key C{invalid}.
        """
        self.proto.dataReceived(header())
        good = dialbackKey(b"our secret", THEIRS, OURS, "abc")
        self.proto.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='abc'>{good}</db:verify>".encode())
        self.proto.dataReceived(f"<db:verify from='{THEIRS}' to='{OURS}' id='abd'>{good}</db:verify>".encode())
        self.proto.dataReceived(f"<db:verify from='third.example' to='{OURS}' id='abc'>{good}</db:verify>".encode())
        self.reader.feed(self.transport)
        answers = self.reader.named(NS_DIALBACK, "verify")
        self.assertEqual([(a["to"], a["id"], a["type"]) for a in answers], [
            (THEIRS, "abc", "valid"),
            (THEIRS, "abd", "invalid"),
            ("third.example", "abc", "invalid"),
        ])
        self.assertEqual({a["from"] for a in answers}, {OURS})

    def test_dialbackForOtherHost(self) -> None:
        """
        A C{db:result} to a domain we do not serve: C{host-unknown}.
        """
        self.proto.dataReceived(header())
        self.proto.dataReceived(f"<db:result from='{THEIRS}' to='elsewhere.example'>k</db:result>".encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "host-unknown")

    def test_tooManyDomains(self) -> None:
        """
        One stream may try to authenticate at most C{maxDomainsPerStream}
        domains.
        """
        harness = _Harness(self, maxDomainsPerStream=2, routes={f"d{n}.example": ROUTE for n in range(3)})
        proto, transport, reader = harness.incoming()
        proto.dataReceived(header())
        for n in range(2):
            proto.dataReceived(f"<db:result from='d{n}.example' to='{OURS}'>k</db:result>".encode())
        reader.feed(transport)
        self.assertIsNone(reader.streamError())
        self.assertEqual(proto.pending, {"d0.example", "d1.example"})
        proto.dataReceived(f"<db:result from='d2.example' to='{OURS}'>k</db:result>".encode())
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "policy-violation")
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_stanzaBeforeAuthentication(self) -> None:
        """
        A stanza on a stream that authenticated no domain: C{not-authorized}.
        """
        self.proto.dataReceived(header())
        self.proto.dataReceived(message(f"juliet@{THEIRS}", f"romeo@{OURS}").toXml().encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "not-authorized")
        self.assertEqual(self.harness.received, [])

    def authenticated(self) -> None:
        _dialbackDomain(self.harness, self.proto, self.transport, self.reader)
        self.assertEqual(self.proto.domains, {THEIRS})

    def test_stanzaDelivered(self) -> None:
        """
        A stanza from the authenticated domain to ours reaches
        C{stanzaReceived} with that domain.
        """
        self.authenticated()
        self.proto.dataReceived(message(f"juliet@{THEIRS}/balcony", f"romeo@{OURS}", "hello").toXml().encode())
        [(domain, stanza)] = self.harness.received
        self.assertEqual(domain, THEIRS)
        self.assertEqual((stanza.uri, stanza.name, stanza["from"], stanza["to"]), (NS_SERVER, "message", f"juliet@{THEIRS}/balcony", f"romeo@{OURS}"))
        self.assertIsNone(self.reader.streamError())

    def test_invalidFrom(self) -> None:
        """
        A stanza from a domain not authenticated on the stream:
        C{invalid-from}, and it is not delivered.
        """
        self.authenticated()
        self.proto.dataReceived(message("mallory@third.example", f"romeo@{OURS}").toXml().encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "invalid-from")
        self.assertEqual(self.harness.received, [])

    def test_hostUnknown(self) -> None:
        """
        A stanza to a domain we do not serve: C{host-unknown}.
        """
        self.authenticated()
        self.proto.dataReceived(message(f"juliet@{THEIRS}", "someone@elsewhere.example").toXml().encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "host-unknown")
        self.assertEqual(self.harness.received, [])

    def test_improperAddressing(self) -> None:
        """
        A stanza without C{to}, or with an address that is not a JID:
        C{improper-addressing}.
        """
        self.authenticated()
        self.proto.dataReceived(f"<message from='juliet@{THEIRS}'><body>x</body></message>".encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "improper-addressing")
        self.assertEqual(self.harness.received, [])

    def test_badJID(self) -> None:
        """
        A C{from} that is not a valid JID: C{improper-addressing}.
        """
        self.authenticated()
        self.proto.dataReceived(f"<message from='@{THEIRS}' to='romeo@{OURS}'/>".encode())
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "improper-addressing")

    def test_unknownElement(self) -> None:
        """
        An element that is neither a stanza nor negotiation:
        C{unsupported-stanza-type}.
        """
        self.proto.dataReceived(header())
        self.proto.dataReceived(b"<foo xmlns='urn:example:foo'/>")
        self.reader.feed(self.transport)
        self.assertEqual(self.reader.streamError(), "unsupported-stanza-type")

    def test_handlerFailure(self) -> None:
        """
        A handler that raises is logged; the stream goes on.
        """
        self.authenticated()

        def broken(domain: str, stanza: domish.Element) -> None:
            raise RuntimeError("boom")

        self.harness.manager.stanzaReceived = broken
        self.proto.dataReceived(message(f"juliet@{THEIRS}", f"romeo@{OURS}").toXml().encode())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.reader.feed(self.transport)
        self.assertIsNone(self.reader.streamError())

    def test_idle(self) -> None:
        """
        An authenticated stream idle for C{idleTimeout} is closed.
        """
        harness = _Harness(self, idleTimeout=100.0)
        proto, transport, reader = harness.incoming()
        _dialbackDomain(harness, proto, transport, reader)
        harness.reactor.advance(99)
        proto.dataReceived(b" ")
        harness.reactor.advance(99)
        self.assertFalse(transport.disconnecting)
        harness.reactor.advance(1)
        self.assertTrue(transport.disconnecting)


class OutgoingTests(SynchronousTestCase):
    """
    Outgoing links: queueing, negotiation, retries and failures.
    """

    def test_header(self) -> None:
        """
        Our stream header names both domains, the server namespace, the
        dialback prefix and version 1.0; the first stanza opens one
        connection, through the static route, and later stanzas wait on it.
        """
        harness = _Harness(self)
        d1 = harness.send()
        d2 = harness.send()
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        out, transport, reader = harness.connectOutgoing()
        reader.feed(transport)
        root = reader.root
        assert root is not None
        self.assertEqual((root.uri, root.name, root.defaultUri), (NS_STREAMS, "stream", NS_SERVER))
        self.assertEqual((root["from"], root["to"], root["version"]), (OURS, THEIRS, "1.0"))
        self.assertEqual(root.localPrefixes.get("db"), NS_DIALBACK)
        self.assertNoResult(d1)
        self.assertNoResult(d2)

    def test_dialback(self) -> None:
        """
        Without TLS (not required here) and SASL, we authenticate with
        dialback: our key for their stream id; once they answer C{valid},
        the queued stanzas are written in order and their Deferreds fire,
        and later stanzas are written at once.
        """
        harness = _Harness(self)
        up: list[str] = []
        harness.manager.linkEstablished = up.append
        d1 = harness.manager.send(THEIRS, message(body="one"))
        d2 = harness.manager.send(THEIRS, message(body="two"))
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        [result] = reader.feed(transport)
        self.assertEqual((result.name, result["from"], result["to"]), ("result", OURS, THEIRS))
        self.assertEqual(str(result), dialbackKey(b"our secret", THEIRS, OURS, "s1"))
        self.assertNoResult(d1)
        out.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='valid'/>".encode())
        self.assertEqual([str(e.body) for e in reader.feed(transport)], ["one", "two"])
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(up, [THEIRS])
        self.successResultOf(harness.manager.send(THEIRS, message(body="three")))
        self.assertEqual([str(e.body) for e in reader.feed(transport)], ["three"])

    def test_dialbackRefused(self) -> None:
        """
        If the receiving server answers C{invalid}, the link gives up at
        once (retrying would not help): queued stanzas fail.
        """
        harness = _Harness(self)
        d = harness.manager.send(THEIRS, message())
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        out.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='invalid'/>".encode())
        out.connectionLost(Failure(ConnectionDone()))
        e = self.failureResultOf(d, S2SError).value
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertIn("refused our dialback key", e.text)

    def test_noStartTLS(self) -> None:
        """
        With TLS required, a peer that does not offer STARTTLS fails the
        link at once, before anything is sent.
        """
        harness = _Harness(self, requireTLS=True)
        d = harness.manager.send(THEIRS, message())
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        self.assertEqual(reader.feed(transport), [])
        self.assertTrue(reader.ended)
        out.connectionLost(Failure(ConnectionDone()))
        e = self.failureResultOf(d, S2SError).value
        self.assertIn("does not offer STARTTLS", e.text)
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_startTLS(self) -> None:
        """
        A peer that offers STARTTLS gets C{<starttls/>} (even when TLS is
        optional here).
        """
        harness = _Harness(self)
        harness.send()
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(f"<stream:features><starttls xmlns='{NS_TLS}'/></stream:features>".encode())
        [starttls] = reader.feed(transport)
        self.assertEqual((starttls.uri, starttls.name), (NS_TLS, "starttls"))

    def test_nothingAfterProceed(self) -> None:
        """
        What the peer sends in the same read after C{<proceed/>} came
        before TLS: it is dropped (these features would otherwise fail
        the stream as unexpected), and the stream waits for the handshake.
        """
        harness = _Harness(self)
        harness.send()
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(f"<stream:features><starttls xmlns='{NS_TLS}'/></stream:features>".encode())
        reader.feed(transport)
        transport.startTLS = lambda *a: None  # type: ignore[attr-defined]
        out.dataReceived(f"<proceed xmlns='{NS_TLS}'/><stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>".encode())
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(out.ending)
        self.assertEqual(out.state, "header")

    def test_noAuthentication(self) -> None:
        """
        A peer offering neither SASL EXTERNAL nor dialback (no dialback
        feature and no dialback namespace in its header) fails the link.
        """
        harness = _Harness(self)
        d = harness.manager.send(THEIRS, message())
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
            b" from='other.example' id='x' version='1.0'><stream:features/>"
        )
        out.connectionLost(Failure(ConnectionDone()))
        self.assertIn("neither SASL EXTERNAL nor dialback", self.failureResultOf(d, S2SError).value.text)

    def test_answeredAsOtherDomain(self) -> None:
        """
        A peer answering as another domain: C{invalid-from}, the link fails.
        """
        harness = _Harness(self)
        d = harness.manager.send(THEIRS, message())
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender="third.example", streamID="s1"))
        reader.feed(transport)
        self.assertEqual(reader.streamError(), "invalid-from")
        out.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, S2SError)

    def test_queueBound(self) -> None:
        """
        At most C{maxQueuedStanzas} stanzas wait for a link; the next fails
        at once with C{resource-constraint}, and the waiting ones stay.
        """
        harness = _Harness(self, maxQueuedStanzas=3)
        waiting = [harness.send() for _ in range(3)]
        e = self.failureResultOf(harness.manager.send(THEIRS, message()), S2SError).value
        self.assertEqual(e.condition, "resource-constraint")
        for d in waiting:
            self.assertNoResult(d)

    def test_cancel(self) -> None:
        """
        Cancelling a queued send takes it out of the queue.
        """
        harness = _Harness(self, maxQueuedStanzas=1)
        d = harness.manager.send(THEIRS, message())
        d.cancel()
        self.failureResultOf(d)
        self.assertNoResult(harness.send())

    def test_retryThenGiveUp(self) -> None:
        """
        A refused connection is retried with exponential backoff; after
        C{maxConnectAttempts} failures the queued stanzas fail with
        C{remote-server-not-found}, and for C{giveUpCooldown} seconds new
        stanzas fail at once; after it a new attempt is made.
        """
        harness = _Harness(self, maxConnectAttempts=3, retryInitialDelay=1.0, retryMaxDelay=60.0, giveUpCooldown=30.0)
        d = harness.manager.send(THEIRS, message())
        harness.refuseOutgoing()
        self.assertNoResult(d)
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        harness.reactor.advance(2.0)  # 1 s + up to 1 s of jitter
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        harness.refuseOutgoing()
        harness.reactor.advance(1.9)
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        harness.reactor.advance(1.1)  # 2 s + up to 1 s of jitter
        self.assertEqual(len(harness.reactor.tcpClients), 3)
        harness.refuseOutgoing()
        e = self.failureResultOf(d, S2SError).value
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertIn("cannot connect", e.text)
        self.failureResultOf(harness.manager.send(THEIRS, message()), S2SError)
        harness.reactor.advance(30)
        harness.send()
        self.assertEqual(len(harness.reactor.tcpClients), 4)

    def test_connectTimeout(self) -> None:
        """
        A connection attempt that takes longer than C{connectTimeout} is
        abandoned; when the link gives up, stanzas fail with
        C{remote-server-timeout}.
        """
        harness = _Harness(self, maxConnectAttempts=1, connectTimeout=20.0)
        d = harness.manager.send(THEIRS, message())
        harness.reactor.advance(19)
        self.assertNoResult(d)
        harness.reactor.advance(1)
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.failureResultOf(d, S2SError).value.condition, "remote-server-timeout")

    def test_negotiationTimeout(self) -> None:
        """
        A connected stream that is not authenticated within
        C{negotiationTimeout} counts as a failed attempt:
        C{remote-server-timeout}.
        """
        harness = _Harness(self, maxConnectAttempts=1, negotiationTimeout=60.0)
        d = harness.manager.send(THEIRS, message())
        out, transport, reader = harness.connectOutgoing()
        harness.reactor.advance(60)
        self.assertTrue(transport.disconnecting)
        out.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(d, S2SError).value.condition, "remote-server-timeout")

    def test_lostWhileUp(self) -> None:
        """
        An authenticated link that closes calls C{linkLost}; the next stanza
        opens a new connection.
        """
        harness = _Harness(self)
        lost: list[str] = []
        harness.manager.linkLost = lost.append
        harness.send()
        out, _, _ = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        out.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='valid'/>".encode())
        out.dataReceived(b"</stream:stream>")
        out.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lost, [THEIRS])
        self.assertNotIn(THEIRS, harness.manager.links)
        harness.send()
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_closingLink(self) -> None:
        """
        A stanza sent while the authenticated stream is closing (idle, say)
        waits, and goes out on the next stream.
        """
        harness = _Harness(self, idleTimeout=100.0)
        harness.send()
        out, transport, reader = harness.connectOutgoing()
        out.dataReceived(header(to=OURS, sender=THEIRS, streamID="s1"))
        out.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        out.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='valid'/>".encode())
        harness.reactor.advance(100)
        reader.feed(transport)
        self.assertTrue(reader.ended)
        d = harness.send(message(body="late"))
        self.assertEqual(reader.feed(transport), [])
        self.assertNoResult(d)
        out.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        out2, transport2, reader2 = harness.connectOutgoing()
        out2.dataReceived(header(to=OURS, sender=THEIRS, streamID="s2"))
        out2.dataReceived(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        out2.dataReceived(f"<db:result from='{THEIRS}' to='{OURS}' type='valid'/>".encode())
        self.assertEqual([str(e.body) for e in reader2.feed(transport2) if e.name == "message"], ["late"])
        self.successResultOf(d)

    def test_noRoute(self) -> None:
        """
        Without a static route and with DNS off, a domain is unreachable:
        C{remote-server-not-found}, at once.
        """
        harness = _Harness(self, routes={})
        e = self.failureResultOf(harness.manager.send(THEIRS, message()), S2SError).value
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_routeCannotServe(self) -> None:
        """
        A static route whose C{trustRoots} folder has gone since start-up
        fails the stanza with C{remote-server-not-found}, saying why,
        instead of raising out of the link.
        """
        folder = FilePath(self.mktemp())
        route = f"tls:{THEIRS}:5269:trustRoots={folder.path}"
        harness = _Harness(self, routes={THEIRS: route}, maxConnectAttempts=1)
        e = self.failureResultOf(harness.manager.send(THEIRS, message()), S2SError).value
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertIn(f"trustRoots folder {folder.path} does not exist", e.text)
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_routeTrustRootsFile(self) -> None:
        """
        An C{s2s_routes} endpoint whose C{trustRoots} names a file stops
        start-up with what to do.
        """
        ca = FilePath(self.mktemp())
        ca.setContent(b"")
        table = {"federation": True, "require_tls": False, "listen": [], "s2s_require_tls": False,
                 "s2s_routes": {THEIRS: f"tls:{THEIRS}:5269:trustRoots={ca.path}"}}
        e = self.assertRaises(ConfigError, XMPPAdapter().parseConfig, ConfigTable(table, "x.toml [xmpp]"), MemoryReactorClock())
        self.assertIn(f"x.toml [xmpp]: s2s_routes: {THEIRS} = ", str(e))
        self.assertIn(f"trustRoots must be a folder of PEM files; {ca.path} is a file: put it in a folder", str(e))

    def test_addressing(self) -> None:
        """
        A stanza not from our domain, or not to the domain it is sent to, is
        a programming error (L{ValueError}); our own domain, or a
        non-domain, is not a remote domain.
        """
        harness = _Harness(self)
        self.failureResultOf(harness.manager.send(THEIRS, message(sender="a@third.example")), ValueError)
        self.failureResultOf(harness.manager.send(THEIRS, message(recipient="b@third.example")), ValueError)
        self.failureResultOf(harness.manager.send(OURS, message(recipient=f"b@{OURS}")), S2SError)
        self.failureResultOf(harness.manager.send("a@b", message()), S2SError)

    def test_tooManyLinks(self) -> None:
        """
        At most C{maxOutgoingLinks} remote domains have a link.
        """
        harness = _Harness(self, maxOutgoingLinks=1, routes={THEIRS: ROUTE, "third.example": ROUTE})
        harness.send()
        d = harness.manager.send("third.example", message(recipient="x@third.example"))
        self.assertEqual(self.failureResultOf(d, S2SError).value.condition, "resource-constraint")

    def test_stop(self) -> None:
        """
        Stopping fails waiting stanzas with C{service-unavailable}, cancels
        connection attempts, and refuses new stanzas.
        """
        harness = _Harness(self)
        d = harness.manager.send(THEIRS, message())
        harness.manager.stop()
        self.assertEqual(self.failureResultOf(d, S2SError).value.condition, "service-unavailable")
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)
        self.failureResultOf(harness.manager.send(THEIRS, message()), S2SError)


class SRVRouteTests(SynchronousTestCase):
    """
    How the manager reaches a domain without a static route.
    """

    def test_manager(self) -> None:
        """
        A manager with DNS on and no static route connects through SRV with
        its injected resolver; a domain with no address fails with
        C{remote-server-not-found}.
        """
        resolver = FakeResolver({f"_xmpp-server._tcp.{THEIRS}": [(10, 0, 5269, "xmpp.other.example")]}, {"xmpp.other.example": ["192.0.2.10"]})
        reactor = MemoryReactorClock()
        manager = S2SManager(reactor, OURS, None, S2SConfig(requireTLS=False, verifyCertificates=False, maxConnectAttempts=1), resolver=resolver)
        first = manager.send(THEIRS, message())
        self.assertEqual(reactor.tcpClients[-1][:2], ("192.0.2.10", 5269))
        e = self.failureResultOf(manager.send("third.example", message(recipient="x@third.example")), S2SError).value
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertIn("DNS", e.text)
        manager.stop()
        self.failureResultOf(first, S2SError)
        self.assertEqual(reactor.getDelayedCalls(), [])


def loadTLS(directory: str, domain: str, name: str | None = None) -> tuple[str, TLSFiles]:
    """
    A CA and a certificate for C{name} (by default C{domain}) signed by it.

    @return: The CA's PEM file, and the certificate and key.
    """
    caPath, serverDir = makeCertificates(os.path.join(directory, domain), name or domain)
    pem = os.path.join(serverDir, f"{name or domain}.pem")
    return caPath, loadTLSFiles(pem, pem)
