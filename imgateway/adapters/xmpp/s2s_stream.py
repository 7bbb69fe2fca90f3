# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
Server-to-server XML streams (RFC 6120): the stream both directions share
(namespaces, negotiation, idle and close timers, closing with a footer or
a stream error), the incoming stream a remote server opens to us
(STARTTLS, SASL EXTERNAL and dialback as the receiving server, stanza
addressing checks) and our outgoing stream to a remote domain (STARTTLS,
SASL EXTERNAL or dialback as the initiating server).

Authentication itself is L{s2s_auth}'s (dialback keys, SASL EXTERNAL) and
L{imgateway.net.tls}' (peer certificates); which streams
exist, their queues and retries, L{s2s}'s (the link layer), which the
streams reach only through L{StreamOwner} and L{LinkOwner}.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
from attrs import frozen
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import ClientFactory, ServerFactory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT
from zope.interface import implementer

from imgateway.adapters.base import TLSHandshakeMixin
from imgateway.adapters.xmpp.jid import InvalidJID, parseJID
from imgateway.adapters.xmpp.s2s_auth import (
    MAX_KEY_CHARS,
    NS_DIALBACK,
    NS_DIALBACK_FEATURES,
    NS_SASL,
    externalAuthzidProblem,
)
from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits
from imgateway.core.throttle import Admission, ConnectionLimiter
from imgateway.net.addresses import sourceOf
from imgateway.net.tls import TLSCheck, TLSCreator

__all__ = [
    "Closing",
    "DialbackRefused",
    "IncomingFactory",
    "IncomingStream",
    "LinkOwner",
    "NS_SERVER",
    "OutgoingFactory",
    "OutgoingStream",
    "S2SConfig",
    "S2SStream",
    "S2S_LIMITS",
    "StreamOwner",
    "bareDomain",
]

NS_SERVER = "jabber:server"
NS_STREAMS = xmlstream.NS_STREAMS
NS_TLS = xmlstream.NS_XMPP_TLS

#: The stanzas of RFC 6120.
STANZAS = ("message", "presence", "iq")

#: Longest stream id we accept from a peer.
MAX_ID_CHARS = 256

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: s2s stream limits: larger stanzas than c2s (Prosody and ejabberd use 512
#: KiB for s2s), a pre-authentication allowance that fits any server's
#: stream features, and a rate for a whole server's traffic.
S2S_LIMITS = StreamLimits(
    preAuthStanzaBytes=16384,
    preAuthElements=64,
    stanzaBytes=524288,
    elements=4000,
    stanzasPerSecond=100.0,
    stanzaBurst=500,
    maxQueuedStanzas=5000,
)


def _routes(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@frozen
class S2SConfig:
    """
    The s2s part of the C{[xmpp]} table.

    @ivar listen: Server endpoint strings of the s2s listeners (plain TCP:
        STARTTLS happens in the stream), e.g. C{tcp:5269:interface=::}.
    @ivar routes: Static routes: remote domain to a client endpoint string
        (C{tcp:127.0.0.1:15269}); they take precedence over DNS.
    @ivar useDNS: For a domain without a static route, look up
        C{_xmpp-server._tcp} SRV records, then the domain on 5269; if
        false, such domains are unreachable.
    @ivar requireTLS: Refuse streams without STARTTLS, both ways.
    @ivar verifyCertificates: Trust certificates that chain to
        C{trustRoots} and are valid for the peer's domain: SASL EXTERNAL
        for incoming streams, XEP-0344 for incoming dialback, and
        outgoing streams to servers with a bad certificate fail unless
        C{allowDialback}. If false, certificates are never trusted (peers
        must use dialback).
    @ivar allowDialback: Accept and use XEP-0220 dialback.
    @ivar trustRoots: A PEM file of the CAs trusted for peers'
        certificates; C{None} for the platform's.
    @ivar limits: Stream limits for every s2s stream.
    @ivar connectTimeout: Seconds for DNS and TCP of one connection attempt.
    @ivar negotiationTimeout: Seconds from TCP connection to an
        authenticated stream (either way), TLS handshake included, and for
        an answer to a C{db:verify}.
    @ivar idleTimeout: Seconds without traffic after which a stream is
        closed (reopened on the next stanza).
    @ivar closeTimeout: Seconds a closing stream may take to flush before
        its connection is aborted.
    @ivar maxQueuedStanzas: Stanzas (and dialback verifications) waiting
        per remote domain while its link connects; past it, sending fails
        with C{resource-constraint}.
    @ivar maxIncomingStreams: Incoming streams open at once; more are
        refused with C{resource-constraint}.
    @ivar maxUnauthenticated: Incoming streams open at once that have not
        authenticated a domain yet; more are refused with
        C{resource-constraint} (besides the gateway's per-source limits).
    @ivar maxOutgoingLinks: Remote domains with a link (open, connecting,
        or in its give-up cooldown); more fail with
        C{resource-constraint}.
    @ivar maxDomainsPerStream: Domains one incoming stream may
        authenticate (or try to) with dialback (XEP-0220 multiplexing);
        more: C{policy-violation}.
    @ivar maxPendingDialback: Dialback keys being verified at once (each
        a C{db:verify} to the claimed domain's authoritative server, over a
        connection we may have to open), for every incoming stream
        together; past it, a C{db:result} is answered with a
        C{resource-constraint} error.
    @ivar maxPendingDialbackPerAddress: The same, for the incoming streams
        from one source address (per /64 for IPv6).
    @ivar maxAuthAttempts: Failed SASL EXTERNAL attempts on one incoming
        stream; the last closes it with C{policy-violation}.
    @ivar maxConnectAttempts: Failed attempts in a row after which a link
        gives up and fails its queue.
    @ivar retryInitialDelay: Backoff before the second attempt (then
        doubled each time, with up to 1 s of jitter).
    @ivar retryMaxDelay: Longest backoff between attempts.
    @ivar giveUpCooldown: Seconds after a link gave up during which sending
        to that domain fails at once.
    """

    listen: tuple[str, ...] = ()
    routes: Mapping[str, str] = attrs.field(factory=dict, converter=_routes)
    useDNS: bool = True
    requireTLS: bool = True
    verifyCertificates: bool = True
    allowDialback: bool = True
    trustRoots: str | None = None
    limits: StreamLimits = S2S_LIMITS
    connectTimeout: float = 20.0
    negotiationTimeout: float = 60.0
    idleTimeout: float = 600.0
    closeTimeout: float = 5.0
    maxQueuedStanzas: int = 1000
    maxIncomingStreams: int = 100
    maxUnauthenticated: int = 50
    maxOutgoingLinks: int = 1000
    maxDomainsPerStream: int = 16
    maxPendingDialback: int = 100
    maxPendingDialbackPerAddress: int = 16
    maxAuthAttempts: int = 3
    maxConnectAttempts: int = 3
    retryInitialDelay: float = 1.0
    retryMaxDelay: float = 60.0
    giveUpCooldown: float = 30.0


def bareDomain(text: str | None) -> str:
    """
    The prepared domain of a JID that must be a bare domain.

    @raise InvalidJID: If it is not one.
    """
    if not text:
        raise InvalidJID("no domain")
    jid = parseJID(text)
    if jid.user is not None or jid.resource is not None:
        raise InvalidJID(f"{text!r} is not a domain")
    return jid.host


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _domainJID(domain: str) -> JID:
    return JID(tuple=(None, domain, None))


def _isDomain(text: str | None, domain: str) -> bool:
    """
    Whether C{text} is the bare domain C{domain} (after preparation).
    """
    try:
        return bareDomain(text) == domain
    except InvalidJID:
        return False


def _child(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    for child in element.elements(uri, name):
        return child  # type: ignore[no-any-return]
    return None


def _mechanisms(features: domish.Element) -> list[str]:
    mechanisms = _child(features, NS_SASL, "mechanisms")
    if mechanisms is None:
        return []
    return [str(m).strip() for m in mechanisms.elements(NS_SASL, "mechanism")]


class StreamOwner(Protocol):
    """
    What the streams need of the link layer (L{s2s.S2SManager}).
    """

    config: S2SConfig
    clock: IReactorTime
    localDomain: str
    incoming: set[IncomingStream]
    unauthenticated: int
    connectionLimiter: ConnectionLimiter
    stopped: bool
    serverTLS: CertificateOptions | None
    clientTLS: CertificateOptions
    ourCertificateValid: bool

    def dialbackKey(self, receiving: str, streamID: str) -> str:
        """
        @return: Our dialback key for our stream C{streamID} to C{receiving}.
        """

    def dialbackKeyValid(self, receiving: str, streamID: str, key: str) -> bool:
        """
        @return: Whether C{key} is our key for that stream.
        """

    def verifyDialback(self, origin: str, streamID: str, key: str, source: str | None) -> Deferred[bool]:
        """
        Ask C{origin}'s authoritative server whether C{key} is its key for
        our stream C{streamID}, an incoming stream from C{source}.

        @return: Fires with the answer; fails with L{DialbackRefused} if
            too many verifications are pending. Cancelling it (the stream
            closed) drops the verification.
        """

    def stanzaArrived(self, domain: str, stanza: domish.Element) -> None:
        """
        A stanza from C{domain}, authenticated and addressed to us.
        """


class LinkOwner(Protocol):
    """
    What an outgoing stream needs of the link that drives it
    (L{s2s._OutgoingLink}).
    """

    domain: str

    @property
    def manager(self) -> StreamOwner:
        """
        The link layer the link belongs to.
        """

    def streamConnected(self, stream: OutgoingStream) -> None:
        """
        The stream's connection is made.
        """

    def streamUp(self, stream: OutgoingStream) -> None:
        """
        The stream is authenticated: stanzas may go.
        """

    def streamLost(self, stream: OutgoingStream, why: Closing) -> None:
        """
        The stream's connection is gone, for C{why}.
        """

    def readyForVerify(self, stream: OutgoingStream) -> None:
        """
        The stream may carry C{db:verify} requests.
        """

    def verifyAnswered(self, streamID: str, valid: bool) -> None:
        """
        The authoritative server answered our C{db:verify} for C{streamID}.
        """


class _Authenticator(xmlstream.Authenticator):
    """
    Hands stream headers to the stream. Twisted's authenticators are not
    used: they intern untrusted JIDs, and know nothing of s2s.
    """

    def __init__(self, initiating: bool) -> None:
        super().__init__()
        self.initiating = initiating

    def associateWithStream(self, xs: Any) -> None:
        super().associateWithStream(xs)
        xs.initiating = self.initiating

    def streamStarted(self, rootElement: domish.Element) -> None:
        super().streamStarted(rootElement)
        self.xmlstream.streamStarted(rootElement)  # type: ignore[union-attr]


class Closing(Exception):
    """
    Why a stream ended.
    """

    def __init__(self, condition: str, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text
        self.permanent = permanent


class DialbackRefused(Exception):
    """
    A dialback verification was not started: too many are pending (the
    text names the limit).
    """


@implementer(IHandshakeListener)
class S2SStream(HardenedXmlStream, TLSHandshakeMixin):
    """
    What incoming and outgoing s2s streams share: the stream namespaces,
    the timers (negotiation, idle, close), closing with a footer or a
    stream error, and the TLS check.

    @ivar ending: Why the stream ended or is ending (for the logs and the
        link), once known.
    """

    log = Logger()

    def __init__(self, manager: StreamOwner, initiating: bool) -> None:
        super().__init__(_Authenticator(initiating), manager.config.limits, manager.clock)
        self.manager = manager
        self.config = manager.config
        self.namespace = NS_SERVER
        self.prefixes = {NS_STREAMS: "stream", NS_DIALBACK: "db"}
        self.tlsCheck: TLSCheck | None = None
        self.ending: Closing | None = None
        self._closed = False
        self._lost = False
        self._whenLost: list[Deferred[None]] = []
        self._negotiation: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self.peer = "?"

    # -- connection --------------------------------------------------------------

    @property
    def _t(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer = _describe(self._t.getPeer())
        if ITCPTransport.providedBy(self.transport):
            self._t.setTcpNoDelay(True)
        self.addObserver(STREAM_ERROR_EVENT, self._parserFailed)
        self._negotiation = self.clock.callLater(self.config.negotiationTimeout, self._negotiationTimedOut)
        self._idle = self.clock.callLater(self.config.idleTimeout, self._idleTimedOut)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._lost = True
        self._closed = True
        for name in ("_negotiation", "_idle", "_abort"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        if self.ending is None:
            self.ending = Closing("remote-server-not-found", f"connection lost ({reason.getErrorMessage()})")
        super().connectionLost(reason)
        waiting, self._whenLost = self._whenLost, []
        for d in waiting:
            d.callback(None)

    def whenLost(self) -> Deferred[None]:
        """
        @return: Fires when the connection is gone.
        """
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenLost.append(d)
        return d

    def _parserFailed(self, f: Failure) -> None:
        # HardenedXmlStream sent a stream error (too big, restricted XML,
        # not well-formed) and is closing the connection.
        self._closed = True
        if self.ending is None:
            condition = getattr(f.value, "condition", "not-well-formed")
            self.ending = Closing("remote-server-not-found", f"we sent a stream error: {condition}", True)

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        self.fail(Closing("remote-server-timeout", f"not authenticated within {self.config.negotiationTimeout:g} s"), "connection-timeout")

    def negotiated(self) -> None:
        """
        The stream is authenticated: stop the negotiation timer and lift the
        pre-authentication limits.
        """
        if self._negotiation is not None and self._negotiation.active():
            self._negotiation.cancel()
        self._negotiation = None
        if not self.authenticated:
            self.setAuthenticated()

    def _idleTimedOut(self) -> None:
        self._idle = None
        self.close(Closing("remote-server-not-found", f"idle for {self.config.idleTimeout:g} s"))

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.config.idleTimeout)

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        super().dataReceived(data)

    def send(self, obj: Any) -> None:
        self._touch()
        super().send(obj)

    @property
    def closing(self) -> bool:
        """
        Whether the stream is closing or closed (nothing more may be sent).
        """
        return self._closed

    @property
    def secure(self) -> bool:
        """
        Whether the stream is encrypted.
        """
        return self.tlsStarted or ISSLTransport.providedBy(self.transport)

    # -- closing -----------------------------------------------------------------

    def close(self, why: Closing) -> None:
        """
        End the stream with its closing tag.
        """
        if self._closed:
            return
        self._closed = True
        if self.ending is None:
            self.ending = why
        if self._dropIfHandshakePending(why):
            return
        if self._headerSent:
            self.sendFooter()
        self._loseConnection()

    def fail(self, why: Closing, condition: str | None = None, text: str | None = None, quiet: bool = False) -> None:
        """
        End the stream with a stream error C{condition} (or just its
        closing tag, if C{None}).

        @param quiet: Log nothing (a refusal, logged once per interval by
            the caller).
        """
        if self._closed:
            return
        if condition is None:
            self.close(why)
            return
        self._closed = True
        if self.ending is None:
            self.ending = why
        if self._dropIfHandshakePending(why, quiet):
            return
        if not quiet:
            self.log.info(
                "Closing s2s stream with {peer}: {condition} ({text})", peer=self.peer, condition=condition, text=text or why.text
            )
        if not self._headerSent and not self.initiating:
            self.sendHeader()
        if self._headerSent:
            self.send(error.StreamError(condition, text=text or None).getElement())
            self.sendFooter()
        self._loseConnection()

    def _dropIfHandshakePending(self, why: Closing, quiet: bool = False) -> bool:
        """
        While a TLS handshake is pending, nothing written would ever leave
        (a peer that stalls it would hold the connection): abort instead.

        @return: Whether the connection was aborted.
        """
        if self._lost or not self.abortIfHandshakePending():
            return False
        if not quiet:
                self.log.info("Dropping s2s connection with {peer} during its TLS handshake: {why}", peer=self.peer, why=why.text)
        return True

    def _loseConnection(self) -> None:
        if self.transport is None or self._lost:
            return
        self.closeConnection()
        if self._abort is None:
            self._abort = self.clock.callLater(self.config.closeTimeout, self._abortNow)

    def _abortNow(self) -> None:
        self._abort = None
        if not self._lost and self.transport is not None:
            self._t.abortConnection()

    def onDocumentEnd(self) -> None:
        if self.ending is None:
            self.ending = Closing("remote-server-not-found", "closed by the peer")
        if not self._closed:
            self._closed = True
            if self._headerSent:
                self.sendFooter()
        self._loseConnection()

    # -- elements ----------------------------------------------------------------

    def elementReceived(self, element: domish.Element) -> None:
        if self._closed:
            return
        if element.uri == NS_STREAMS and element.name == "error":
            condition = error.exceptionFromStreamError(element).condition
            self.ending = Closing("remote-server-not-found", f"stream error from the peer: {condition}", permanent=True)
            self._closed = True
            self._loseConnection()
            return
        self.handleElement(element)

    def handleElement(self, element: domish.Element) -> None:
        """
        A top-level element other than a stream error arrived.
        """
        raise NotImplementedError

    def streamStarted(self, root: domish.Element) -> None:
        """
        The peer's stream header arrived.
        """
        raise NotImplementedError

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        if self.tlsCheck is not None:
            self.tlsCheck.done = True
        self.tlsEstablished()

    def tlsEstablished(self) -> None:
        """
        The TLS handshake is done (L{tlsCheck} can be asked).
        """

    def _checkHeader(self, root: domish.Element) -> tuple[str, str] | None:
        """
        RFC 6120 4.9.3 checks common to both directions.

        @return: C{None} if the header is fine, else the stream error
            condition and text.
        """
        if root.uri != NS_STREAMS or root.name != "stream":
            return "invalid-namespace", "expected a stream in http://etherx.jabber.org/streams"
        if root.defaultUri != NS_SERVER:
            return "invalid-namespace", "expected jabber:server"
        if self.version < (1, 0):
            return "unsupported-version", "XMPP 1.0 is required"
        return None


class IncomingStream(S2SStream):
    """
    A stream a remote server opened to us.

    @ivar domains: The remote domains authenticated on this stream.
    @ivar streamFrom: The C{from} of the stream header, once given.
    @ivar methods: How each domain authenticated.
    @ivar pending: The domains whose dialback key is being verified.
    @ivar source: The peer's source address (L{sourceOf}), which
        per-source limits count it against.
    """

    def __init__(self, manager: StreamOwner) -> None:
        super().__init__(manager, initiating=False)
        self.domains: set[str] = set()
        self.methods: dict[str, str] = {}
        self.pending: set[str] = set()
        self.streamFrom: str | None = None
        self.source: str | None = None
        self._sasl = False
        self._saslFailures = 0
        self._verifying: dict[str, Deferred[bool]] = {}
        self._counted = False
        self._admission: Admission | None = None
        self._dialbackRefusalLogged = False

    def connectionMade(self) -> None:
        super().connectionMade()
        manager = self.manager
        incoming = manager.incoming
        incoming.add(self)
        peer = self._t.getPeer()
        self.source = sourceOf(peer)
        if manager.stopped:
            self._refuse()
            self.shutdown()
            return
        if len(incoming) > self.config.maxIncomingStreams:
            manager.connectionLimiter.refused(peer, "s2s", f"{len(incoming) - 1} streams open (s2s_max_incoming_streams)")
            self._refuse()
            self.fail(Closing("resource-constraint", "too many incoming streams"), "resource-constraint", quiet=True)
            return
        if manager.unauthenticated >= self.config.maxUnauthenticated:
            manager.connectionLimiter.refused(peer, "s2s", f"{manager.unauthenticated} streams not authenticated (s2s_max_unauthenticated)")
            self._refuse()
            self.fail(
                Closing("resource-constraint", "too many unauthenticated streams"),
                "resource-constraint",
                "too many streams waiting to authenticate",
                quiet=True,
            )
            return
        # Per-source limits, shared with the other faces (imgateway.core.throttle).
        self._admission = manager.connectionLimiter.admit(peer, "s2s")
        if not self._admission.admitted:
            self._refuse()
            self.fail(Closing("resource-constraint", self._admission.reason), "policy-violation", self._admission.reason, quiet=True)
            return
        manager.unauthenticated += 1
        self._counted = True

    def _refuse(self) -> None:
        """
        Prepare to refuse the stream before its header came: we answer
        with a header of our own, from our domain.
        """
        self.thisEntity = _domainJID(self.manager.localDomain)  # type: ignore[assignment]

    def _uncount(self) -> None:
        """
        The stream authenticated, timed out or closed: it no longer holds
        an unauthenticated slot (ours, and its source's).
        """
        if self._counted:
            self._counted = False
            self.manager.unauthenticated -= 1
        if self._admission is not None:
            self._admission.release()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._uncount()
        verifying, self._verifying = self._verifying, {}
        for d in verifying.values():
            d.cancel()
        super().connectionLost(reason)
        self.manager.incoming.discard(self)
        if self.domains:
            assert self.ending is not None
            self.log.info(
                "s2s stream from {domains} ({peer}) closed: {reason}",
                domains=", ".join(sorted(self.domains)),
                peer=self.peer,
                reason=self.ending.text,
            )

    def _idleTimedOut(self) -> None:
        self._idle = None
        self.fail(Closing("remote-server-not-found", "idle"), "connection-timeout", "idle")

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        if not self.domains:
            self._uncount()
            super()._negotiationTimedOut()

    # -- negotiation -------------------------------------------------------------

    def streamStarted(self, root: domish.Element) -> None:
        if self._closed:
            return
        self.sid = binascii.hexlify(os.urandom(12)).decode("ascii")  # type: ignore[assignment]
        local = self.manager.localDomain
        self.thisEntity = _domainJID(local)  # type: ignore[assignment]
        problem = self._checkHeader(root)
        if problem is not None:
            self.fail(Closing("remote-server-not-found", problem[1]), *problem)
            return
        to = root.getAttribute("to")
        if not to:
            self.fail(Closing("remote-server-not-found", "no 'to'"), "improper-addressing", "the stream header needs a 'to'")
            return
        try:
            toDomain = bareDomain(to)
        except InvalidJID:
            toDomain = None
        if toDomain != local:
            self.fail(Closing("remote-server-not-found", f"for {to!r}"), "host-unknown", f"this server serves {local}")
            return
        fromText = root.getAttribute("from")
        if fromText:
            try:
                origin = bareDomain(fromText)
            except InvalidJID:
                self.fail(Closing("remote-server-not-found", "bad 'from'"), "invalid-from", "'from' is not a domain")
                return
            if origin == local or (self.streamFrom is not None and origin != self.streamFrom):
                self.fail(Closing("remote-server-not-found", f"'from' {origin}"), "invalid-from")
                return
            self.streamFrom = origin
            self.otherEntity = _domainJID(origin)  # type: ignore[assignment]
        self.sendHeader()
        self.send(self._features())

    def _features(self) -> domish.Element:
        features = domish.Element((NS_STREAMS, "features"))
        # XEP-0478: the stanza cap in force and the idle timeout.
        features.addChild(self.limitsFeature(self.config.idleTimeout))
        if not self.secure:
            if self.manager.serverTLS is not None:
                starttls = features.addElement((NS_TLS, "starttls"))
                if self.config.requireTLS:
                    starttls.addElement("required")
            if self.config.requireTLS:
                return features
        if self._sasl:
            return features
        if self._externalIdentity() is not None:
            mechanisms = features.addElement((NS_SASL, "mechanisms"))
            mechanisms.addElement("mechanism", content="EXTERNAL")
        if self.config.allowDialback:
            features.addElement((NS_DIALBACK_FEATURES, "dialback"))
        return features

    def _externalIdentity(self) -> str | None:
        """
        The domain SASL EXTERNAL would authenticate: the stream's C{from},
        if the peer's certificate is trusted and valid for it.
        """
        if not self.config.verifyCertificates or self.streamFrom is None or self.domains:
            return None
        if self.tlsCheck is None or self.tlsCheck.problem(self.streamFrom) is not None:
            return None
        return self.streamFrom

    def _certifiedFor(self, domain: str) -> bool:
        return self.config.verifyCertificates and self.tlsCheck is not None and self.tlsCheck.problem(domain) is None

    def handleElement(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_TLS and name == "starttls":
            self._startTLS()
        elif uri == NS_SASL:
            self._saslElement(element)
        elif uri == NS_DIALBACK and name == "result":
            self._dialbackResult(element)
        elif uri == NS_DIALBACK and name == "verify":
            self._dialbackVerify(element)
        elif uri == NS_SERVER and name in STANZAS:
            self._stanza(element)
        else:
            self.fail(Closing("remote-server-not-found", f"sent {name}"), "unsupported-stanza-type", f"{name} is not understood here")

    def _requireTLS(self) -> bool:
        """
        @return: Whether the stream may go on (it is encrypted, or need not be).
        """
        if self.config.requireTLS and not self.secure:
            self.fail(Closing("remote-server-not-found", "no STARTTLS"), "policy-violation", "STARTTLS is required")
            return False
        return True

    def _startTLS(self) -> None:
        if self.manager.serverTLS is None or self.secure or self.domains:
            self.send(domish.Element((NS_TLS, "failure")))
            self.close(Closing("remote-server-not-found", "STARTTLS refused", True))
            return
        self.send(domish.Element((NS_TLS, "proceed")))
        self.tlsCheck = TLSCheck(ignorePurpose=True)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE if self.config.verifyCertificates else SSL.VERIFY_NONE
        self.startTLS(TLSCreator(self.manager.serverTLS, self.tlsCheck, mode))
        # The restart drops whatever the peer sent after <starttls/>
        # before the handshake (CVE-2011-0411): HardenedXmlStream ignores
        # the old parser and empties the queue.
        self.reset()

    def _saslElement(self, element: domish.Element) -> None:
        if not self._requireTLS():
            return
        if element.name != "auth" or self._sasl or self.domains:
            self._saslFailure("malformed-request" if element.name != "abort" else "aborted")
            return
        if element.getAttribute("mechanism") != "EXTERNAL":
            self._saslFailure("invalid-mechanism")
            return
        identity = self._externalIdentity()
        if identity is None:
            self._saslFailure("not-authorized")
            return
        problem = externalAuthzidProblem(str(element), identity)
        if problem is not None:
            self._saslFailure(problem)
            return
        self.send(domish.Element((NS_SASL, "success")))
        self._sasl = True
        self._authenticated(identity, "SASL EXTERNAL")
        self.reset()

    def _saslFailure(self, condition: str) -> None:
        failure = domish.Element((NS_SASL, "failure"))
        failure.addElement(condition)
        self.send(failure)
        self._saslFailures += 1
        if self._saslFailures >= self.config.maxAuthAttempts:
            self.fail(Closing("remote-server-not-found", "SASL failed"), "policy-violation", "too many failed authentications")

    def _authenticated(self, domain: str, method: str) -> None:
        self.domains.add(domain)
        self.methods[domain] = method
        self._uncount()
        self.negotiated()
        self.log.info("s2s stream from {domain} ({peer}) authenticated: {method}", domain=domain, peer=self.peer, method=method)

    def _addressing(self, element: domish.Element) -> tuple[str, str] | None:
        """
        The C{from} and C{to} domains of a dialback element, checked (the
        stream is failed if they are wrong).
        """
        try:
            origin = bareDomain(element.getAttribute("from"))
            to = bareDomain(element.getAttribute("to"))
        except InvalidJID as e:
            self.fail(Closing("remote-server-not-found", "bad dialback addressing"), "improper-addressing", str(e))
            return None
        if to != self.manager.localDomain:
            self.fail(Closing("remote-server-not-found", f"dialback for {to}"), "host-unknown", f"this server serves {self.manager.localDomain}")
            return None
        return origin, to

    def _dialbackResult(self, element: domish.Element) -> None:
        if element.getAttribute("type") is not None or not self._requireTLS():
            return
        if not self.config.allowDialback:
            self.fail(Closing("remote-server-not-found", "dialback refused", True), "not-authorized", "dialback is not accepted here")
            return
        addressing = self._addressing(element)
        if addressing is None:
            return
        origin, _ = addressing
        if origin == self.manager.localDomain:
            self.fail(Closing("remote-server-not-found", "claimed our domain"), "invalid-from")
            return
        if origin in self.pending:
            return
        if origin in self.domains:
            self._sendResult(origin, True)
            return
        if len(self.domains) + len(self.pending) >= self.config.maxDomainsPerStream:
            self.fail(Closing("remote-server-not-found", "too many domains"), "policy-violation", "too many domains on one stream")
            return
        key = str(element).strip()
        if not key or len(key) > MAX_KEY_CHARS:
            self._dialbackDone(False, origin, "a malformed key")
            return
        if self._certifiedFor(origin):
            # XEP-0344: the certificate already proves the domain.
            self._dialbackDone(True, origin, "dialback (XEP-0344: certificate)")
            return
        streamID = str(self.sid)
        d = self.manager.verifyDialback(origin, streamID, key, self.source)
        if d.called:
            # Settled at once (refused, or known): nothing is pending.
            d.addCallbacks(self._dialbackVerified, self._dialbackNotVerified, (origin,), errbackArgs=(origin,))
            return
        self.pending.add(origin)
        self._verifying[origin] = d
        d.addCallbacks(self._dialbackVerified, self._dialbackNotVerified, (origin,), errbackArgs=(origin,))

    def _dialbackVerified(self, valid: bool, origin: str) -> None:
        self.pending.discard(origin)
        self._verifying.pop(origin, None)
        if self._closed:
            return
        self._dialbackDone(valid, origin, "dialback" if valid else "the authoritative server's answer")

    def _dialbackNotVerified(self, f: Failure, origin: str) -> None:
        self.pending.discard(origin)
        self._verifying.pop(origin, None)
        if f.check(CancelledError):
            return  # the stream is gone
        if not f.check(DialbackRefused):
            self.log.failure("Verifying a dialback key of {domain} from {peer}", f, domain=origin, peer=self.peer)
            if not self._closed:
                self._dialbackDone(False, origin, "an internal error")
            return
        if self._closed:
            return
        if not self._dialbackRefusalLogged:
            self._dialbackRefusalLogged = True
            self.log.warn(
                "s2s: not verifying the dialback key of {domain} from {peer} now: {why}", domain=origin, peer=self.peer, why=f.getErrorMessage()
            )
        # XEP-0220 2.4: an error result; the peer may try again later.
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"] = self.manager.localDomain
        result["to"] = origin
        result["type"] = "error"
        e = result.addElement((NS_SERVER, "error"))
        e["type"] = "wait"
        e.addElement((NS_STANZAS, "resource-constraint"))
        self.send(result)

    def _dialbackDone(self, valid: bool, origin: str, how: str) -> None:
        self._sendResult(origin, valid)
        if valid:
            self._authenticated(origin, how)
        else:
            self.log.info("s2s dialback from {peer} for {domain} refused: {how}", peer=self.peer, domain=origin, how=how)
            self.close(Closing("remote-server-not-found", f"dialback for {origin} invalid"))

    def _sendResult(self, origin: str, valid: bool) -> None:
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"] = self.manager.localDomain
        result["to"] = origin
        result["type"] = "valid" if valid else "invalid"
        self.send(result)

    def _dialbackVerify(self, element: domish.Element) -> None:
        if element.getAttribute("type") is not None or not self._requireTLS():
            return
        addressing = self._addressing(element)
        if addressing is None:
            return
        receiving, originating = addressing
        streamID = element.getAttribute("id") or ""
        key = str(element).strip()
        valid = bool(streamID) and len(streamID) <= MAX_ID_CHARS and self.manager.dialbackKeyValid(receiving, streamID, key)
        answer = domish.Element((NS_DIALBACK, "verify"))
        answer["from"] = originating
        answer["to"] = receiving
        answer["id"] = streamID[:MAX_ID_CHARS]
        answer["type"] = "valid" if valid else "invalid"
        self.send(answer)
        if not valid:
            self.log.warn("s2s: {peer} asked us to verify a dialback key for {domain} that is not ours", peer=self.peer, domain=receiving)

    def _stanza(self, stanza: domish.Element) -> None:
        if not self.domains:
            self.fail(Closing("remote-server-not-found", "stanza before authentication"), "not-authorized", "authenticate first")
            return
        sender, recipient = stanza.getAttribute("from"), stanza.getAttribute("to")
        if not sender or not recipient:
            self.fail(Closing("remote-server-not-found", "stanza without from/to"), "improper-addressing", "a stanza needs 'from' and 'to'")
            return
        try:
            senderJID, recipientJID = parseJID(sender), parseJID(recipient)
        except InvalidJID as e:
            self.fail(Closing("remote-server-not-found", "bad stanza address"), "improper-addressing", str(e))
            return
        if senderJID.host not in self.domains:
            self.fail(Closing("remote-server-not-found", f"stanza from {senderJID.host}"), "invalid-from", f"{senderJID.host} is not authenticated on this stream")
            return
        if recipientJID.host != self.manager.localDomain:
            self.fail(Closing("remote-server-not-found", f"stanza to {recipientJID.host}"), "host-unknown", f"this server serves {self.manager.localDomain}")
            return
        self.manager.stanzaArrived(senderJID.host, stanza)

    def shutdown(self) -> None:
        """
        The manager stops: close with C{system-shutdown}.
        """
        self.fail(Closing("service-unavailable", "shutting down"), "system-shutdown")


class OutgoingStream(S2SStream):
    """
    Our stream to a remote domain, driven by its link (L{LinkOwner}).

    @ivar method: How we authenticated, once we have.
    @ivar certificateProblem: What is wrong with the peer's certificate
        (C{None}: nothing, or not checked).
    @ivar featureNames: The stream features the peer offered, in order,
        for each stage (diagnostics).
    """

    def __init__(self, link: LinkOwner) -> None:
        super().__init__(link.manager, initiating=True)
        self.link = link
        self.domain = link.domain
        self.thisEntity = _domainJID(link.manager.localDomain)  # type: ignore[assignment]
        self.otherEntity = _domainJID(link.domain)  # type: ignore[assignment]
        self.state = "header"
        self.method: str | None = None
        self.certificateProblem: str | None = None
        self.readyForVerify = False
        self.featureNames: list[list[str]] = []
        self._features: domish.Element | None = None
        self._saslDone = False
        self._peerDeclaresDialback = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.link.streamConnected(self)
        self.sendHeader()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        assert self.ending is not None
        self.link.streamLost(self, self.ending)

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        if self.state != "up":
            self.fail(Closing("remote-server-timeout", f"not authenticated within {self.config.negotiationTimeout:g} s"))

    def streamStarted(self, root: domish.Element) -> None:
        if self._closed:
            return
        problem = self._checkHeader(root)
        if problem is not None:
            self.fail(Closing("remote-server-not-found", f"bad stream header: {problem[1]}", True), *problem)
            return
        streamID = root.getAttribute("id")
        if not streamID or len(streamID) > MAX_ID_CHARS:
            self.fail(Closing("remote-server-not-found", "no usable stream id", True), "invalid-xml", "a stream id is required")
            return
        self.sid = streamID
        fromText = root.getAttribute("from")
        if fromText:
            if not _isDomain(fromText, self.domain):
                self.fail(Closing("remote-server-not-found", f"answered as {fromText!r}", True), "invalid-from")
                return
        self._peerDeclaresDialback = root.localPrefixes.get("db") == NS_DIALBACK
        self.state = "features"

    def tlsEstablished(self) -> None:
        if not self.config.verifyCertificates or self.tlsCheck is None:
            return
        self.certificateProblem = self.tlsCheck.problem(self.domain)
        if self.certificateProblem is None:
            return
        if not self.config.allowDialback:
            self.fail(Closing("remote-server-not-found", f"certificate: {self.certificateProblem}", True))
        else:
            self.log.warn(
                "s2s: the certificate of {domain} is not trusted ({problem}); going on with dialback",
                domain=self.domain,
                problem=self.certificateProblem,
            )

    def handleElement(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "features" and self.state == "features":
            self._featuresReceived(element)
        elif uri == NS_TLS and self.state == "tls":
            if name == "proceed":
                self._startTLS()
            else:
                self.close(Closing("remote-server-not-found", "STARTTLS failed", True))
        elif uri == NS_SASL and self.state == "sasl":
            if name == "success":
                self._saslDone = True
                self.state = "header"
                self.reset()
                self.sendHeader()
            else:
                self.log.info("s2s: {domain} refused SASL EXTERNAL ({reply})", domain=self.domain, reply=element.toXml()[:200])
                assert self._features is not None
                self._dialback(self._features)
        elif uri == NS_DIALBACK and name == "result" and element.getAttribute("type"):
            self._dialbackAnswered(element)
        elif uri == NS_DIALBACK and name == "verify" and element.getAttribute("type"):
            if _isDomain(element.getAttribute("from"), self.domain):
                self.link.verifyAnswered(element.getAttribute("id") or "", element.getAttribute("type") == "valid")
        elif uri == NS_STREAMS and name == "features":
            self.fail(Closing("remote-server-not-found", "unexpected stream features", True), "invalid-xml")
        else:
            # Answers to a stream of ours are the receiving server's business
            # (XEP-0288 is not supported): a stanza here is dropped.
            self.log.debug("s2s: ignoring {name} from {domain} on our outgoing stream", name=name, domain=self.domain)

    def _featuresReceived(self, features: domish.Element) -> None:
        self._features = features
        if len(self.featureNames) < 5:
            self.featureNames.append([f"{c.uri} {c.name}" for c in features.elements()])
        if not self.secure:
            if _child(features, NS_TLS, "starttls") is not None:
                self.send(domish.Element((NS_TLS, "starttls")))
                self.state = "tls"
                return
            if self.config.requireTLS:
                self.close(Closing("remote-server-not-found", f"{self.domain} does not offer STARTTLS (required)", True))
                return
        if self._saslDone:
            self._up("SASL EXTERNAL")
            return
        if self.secure and self.manager.ourCertificateValid and "EXTERNAL" in _mechanisms(features):
            auth = domish.Element((NS_SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            auth.addContent("=")
            self.send(auth)
            self.state = "sasl"
            return
        self._dialback(features)

    def _startTLS(self) -> None:
        self.tlsCheck = TLSCheck(ignorePurpose=False)
        mode = SSL.VERIFY_PEER if self.config.verifyCertificates else SSL.VERIFY_NONE
        self.startTLS(TLSCreator(self.manager.clientTLS, self.tlsCheck, mode, self.domain))
        self.state = "header"
        self.reset()
        self.sendHeader()

    def _dialback(self, features: domish.Element) -> None:
        if not self.config.allowDialback:
            self.close(Closing("remote-server-not-found", f"{self.domain} did not accept our certificate (SASL EXTERNAL) and dialback is off", True))
            return
        if _child(features, NS_DIALBACK_FEATURES, "dialback") is None and not self._peerDeclaresDialback:
            self.close(Closing("remote-server-not-found", f"{self.domain} offers neither SASL EXTERNAL nor dialback", True))
            return
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"] = self.manager.localDomain
        result["to"] = self.domain
        result.addContent(self.manager.dialbackKey(self.domain, str(self.sid)))
        self.send(result)
        self.state = "dialback"
        self.readyForVerify = True
        self.link.readyForVerify(self)

    def _dialbackAnswered(self, element: domish.Element) -> None:
        if self.state != "dialback" or not _isDomain(element.getAttribute("from"), self.domain):
            return
        if element.getAttribute("type") == "valid":
            self._up("dialback")
        else:
            self.close(Closing("remote-server-not-found", f"{self.domain} refused our dialback key ({element.getAttribute('type')})", True))

    def _up(self, method: str) -> None:
        self.state = "up"
        self.method = method
        self.readyForVerify = True
        self.negotiated()
        self.link.streamUp(self)


class OutgoingFactory(ClientFactory):
    noisy = False

    def __init__(self, link: LinkOwner) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> OutgoingStream:
        stream = OutgoingStream(self.link)
        stream.factory = self
        return stream


class IncomingFactory(ServerFactory):
    noisy = False

    def __init__(self, manager: StreamOwner) -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> IncomingStream:
        stream = IncomingStream(self.manager)
        stream.factory = self
        return stream
