# -*- test-case-name: tests.e2e.test_xmpp_stream_sockets -*-
"""
L{imgateway.adapters.xmpp.stream} on a real TCP listener (loopback): what
the in-memory tests of C{tests/test_xmpp_stream.py} cannot show, one
connection's XML bomb not holding up another.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_CONNECTED_EVENT, STREAM_END_EVENT

from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits
from tests.test_xmpp_stream import HEADER, HeaderAuthenticator, Output, billionLaughs


class EchoClient(protocol.Protocol):
    """
    Collects what a real server sends, and fires C{lost} with it when the
    connection closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[bytes] = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for marker, d in list(self._waiting):
            if marker in self.data:
                self._waiting.remove((marker, d))
                d.callback(self.data)

    def waitFor(self, marker: bytes) -> defer.Deferred[bytes]:
        """
        @return: A L{defer.Deferred} that fires once C{marker} has arrived.
        """
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiting.append((marker, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost.callback(self.data)


class RealSocketTests(TestCase):
    """
    On a real TCP listener (loopback): one connection's XML bomb does not
    hold up another connection.
    """

    @defer.inlineCallbacks
    def test_bombDoesNotStallOthers(self) -> Any:
        """
        While one connection sends a nine-level billion-laughs document, a
        second connection on the same listener keeps getting answers; the
        bomb's connection gets C{<restricted-xml/>} and is closed.
        """
        from twisted.internet import reactor

        streams: list[HardenedXmlStream] = []
        closed: list[defer.Deferred[None]] = []

        def answerPings(xs: HardenedXmlStream) -> None:
            streams.append(xs)
            d: defer.Deferred[None] = defer.Deferred()
            xs.addObserver(STREAM_END_EVENT, lambda reason: d.callback(None))
            closed.append(d)

            def pong(iq: domish.Element) -> None:
                xs.send(xmlstream.toResponse(iq, "result"))

            xs.addObserver("/iq[@type='get']", pong)

        factory = xmlstream.XmlStreamServerFactory(HeaderAuthenticator)
        factory.protocol = lambda authenticator: HardenedXmlStream(authenticator, StreamLimits(), reactor)  # type: ignore[assignment]
        factory.addBootstrap(STREAM_CONNECTED_EVENT, answerPings)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.gatherResults(closed))
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        good = yield client.connect(protocol.Factory.forProtocol(EchoClient))
        self.addCleanup(lambda: good.transport.loseConnection() or good.lost)
        good.transport.write(HEADER)
        yield good.waitFor(b"<stream:stream")

        bad = yield client.connect(protocol.Factory.forProtocol(EchoClient))
        bad.transport.write(billionLaughs(9))
        good.transport.write(b"<iq type='get' id='ping1'/>")
        data = yield good.waitFor(b"ping1")
        badData = yield bad.lost

        self.assertEqual(Output(badData).streamError()[0], "restricted-xml")
        replies = [e for e in Output(data).elements if e.name == "iq"]
        self.assertEqual([(e["type"], e["id"]) for e in replies], [("result", "ping1")])
        self.assertEqual(len(streams), 2)

        # The good connection still works after the bad one is gone.
        good.transport.write(b"<iq type='get' id='ping2'/>")
        yield good.waitFor(b"ping2")
