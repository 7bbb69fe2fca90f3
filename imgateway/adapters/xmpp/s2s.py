# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
The XMPP server-to-server link layer (RFC 6120; XEP-0220 dialback with
XEP-0185 keys and XEP-0344; XEP-0178 SASL EXTERNAL): it moves
authenticated stanzas between our domain and remote domains, and knows
nothing of what they mean (L{imgateway.adapters.xmpp.federation} does).

Outgoing (L{S2SManager.send}): one stream per remote domain, opened on the
first stanza for it, through a static route (an endpoint string) or DNS
(C{_xmpp-server._tcp} SRV, then the domain itself on 5269, through an
injected L{twisted.names} resolver). STARTTLS is required unless
C{requireTLS} is false; we present our certificate as the TLS client
certificate. We authenticate with SASL EXTERNAL when the peer offers it
(it accepted our certificate) and our certificate is valid for our domain,
otherwise with dialback. Stanzas wait in a bounded queue until the stream
is authenticated; a failed attempt is retried with exponential backoff and
jitter, and after C{maxConnectAttempts} failed attempts (or at once, for a
failure that retrying cannot fix: no STARTTLS, a refused certificate,
authentication refused) the link gives up: queued stanzas fail with an
L{S2SError}, and stanzas for that domain fail at once for
C{giveUpCooldown} seconds.

Incoming (the listeners of L{S2SManager.services}): STARTTLS offered
(required unless C{requireTLS} is false), a client certificate requested
but not required; then SASL EXTERNAL if that certificate is valid for the
stream's C{from} domain, and dialback. A C{db:result} is answered C{valid}
at once if the TLS certificate is valid for its domain (XEP-0344), otherwise
after asking the domain's authoritative server with C{db:verify} over our
outgoing stream to it. We answer others' C{db:verify} from our secret
(XEP-0185). Stanzas reach L{S2SManager.stanzaReceived} only if their
C{from} is in a domain authenticated on that stream and their C{to} is in
ours.

Certificates are checked in two parts: OpenSSL checks the chain against
C{trustRoots} (recording failures rather than aborting the handshake, so
that dialback remains possible), and L{service_identity} checks the DNS-ID
against the remote I{domain} (not the host connected to; XmppAddr
identities are not supported). C{verifyCertificates} false means we never
trust a certificate: peers must use dialback (we still present ours, and
use SASL EXTERNAL when a peer offers it). With C{allowDialback} false,
certificates are the only way in or out, as Prosody's C{s2s_secure_auth}.

Every limit is in L{S2SConfig}; stream limits (L{StreamLimits}) apply
before and after authentication through L{HardenedXmlStream}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from attrs import frozen
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.application.internet import StreamServerEndpointService, backoffPolicy
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, ServerFactory
from twisted.internet.ssl import Certificate, CertificateOptions, platformTrust, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT
from zope.interface import implementer

from imgateway.adapters.base import ServerTLSOptions
from imgateway.adapters.xmpp.jid import InvalidJID, parseJID
from imgateway.adapters.xmpp.srv import SRVClientEndpoint
from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits
from imgateway.core.errors import DeliveryStatus, NoRoute

if TYPE_CHECKING:
    from imgateway.adapters.xmpp.adapter import TLSFiles

__all__ = [
    "NS_DIALBACK",
    "NS_DIALBACK_FEATURES",
    "NS_SERVER",
    "S2SConfig",
    "S2SError",
    "S2SManager",
    "S2S_LIMITS",
    "dialbackKey",
]

NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURES = "urn:xmpp:features:dialback"
NS_STREAMS = xmlstream.NS_STREAMS
NS_TLS = xmlstream.NS_XMPP_TLS
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: The stanzas of RFC 6120.
STANZAS = ("message", "presence", "iq")

#: Longest stream id we accept from a peer, and longest dialback key.
MAX_ID_CHARS = 256
MAX_KEY_CHARS = 1024

#: OpenSSL's "unsupported certificate purpose": XMPP servers present their
#: server certificates as client certificates, whatever their EKU says
#: (Prosody ignores the purpose too).
_X509_V_ERR_INVALID_PURPOSE = 26

#: OpenSSL's names of the usual chain verification errors (X509_V_ERR_*).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}

#: SASL failures an incoming stream may cause before it is closed.
MAX_SASL_FAILURES = 3

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
)


class S2SError(NoRoute):
    """
    A stanza could not be sent to a remote domain.

    @ivar condition: The RFC 6120 stanza error condition that says why:
        C{remote-server-not-found} (no route, connection refused, TLS or
        authentication failed), C{remote-server-timeout} (connecting or
        negotiating took too long), C{resource-constraint} (too many
        stanzas queued or links open; its C{status} is C{RATE_LIMITED}),
        C{service-unavailable} (the manager is stopping).
    """

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(text or condition)
        self.condition = condition
        if condition == "resource-constraint":
            self.status = DeliveryStatus.RATE_LIMITED

    def __repr__(self) -> str:
        return f"S2SError({self.condition!r}, {self.text!r})"


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
        authenticated stream (either way), and for an answer to a
        C{db:verify}.
    @ivar idleTimeout: Seconds without traffic after which a stream is
        closed (reopened on the next stanza).
    @ivar closeTimeout: Seconds a closing stream may take to flush before
        its connection is aborted.
    @ivar maxQueuedStanzas: Stanzas (and dialback verifications) waiting
        per remote domain while its link connects; past it, sending fails
        with C{resource-constraint}.
    @ivar maxIncomingStreams: Incoming streams open at once; more are
        refused with C{resource-constraint}.
    @ivar maxOutgoingLinks: Remote domains with a link (open, connecting,
        or in its give-up cooldown); more fail with
        C{resource-constraint}.
    @ivar maxDomainsPerStream: Domains one incoming stream may
        authenticate (or try to) with dialback (XEP-0220 multiplexing).
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
    maxOutgoingLinks: int = 1000
    maxDomainsPerStream: int = 16
    maxConnectAttempts: int = 3
    retryInitialDelay: float = 1.0
    retryMaxDelay: float = 60.0
    giveUpCooldown: float = 30.0


def dialbackKey(secret: bytes, receiving: str, originating: str, streamID: str) -> str:
    """
    A dialback key (XEP-0185):
    C{HMAC-SHA256(hex(SHA256(secret)), receiving + ' ' + originating + ' ' + streamID)},
    in hex.
    """
    keyed = hashlib.sha256(secret).hexdigest().encode("ascii")
    return hmac.new(keyed, f"{receiving} {originating} {streamID}".encode(), hashlib.sha256).hexdigest()


def _domain(text: str | None) -> str:
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
        return _domain(text) == domain
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


def _validFor(certificate: x509.Certificate, domain: str) -> str | None:
    """
    @return: C{None} if C{certificate} has a DNS-ID for C{domain}, else why not.
    """
    try:
        verify_certificate_hostname(certificate, domain)
    except (VerificationError, CertificateError) as e:
        return f"not issued for {domain} ({e})"
    return None


def _trustRoot(path: str | None) -> Any:
    """
    The trust root for peers' certificates: the CAs of a PEM file, or the
    platform's. Built from C{cryptography} objects (no pyOpenSSL
    deprecation warnings).
    """
    if path is None:
        return platformTrust()
    with open(path, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
    return trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in certificates])


class _TLSCheck:
    """
    What one TLS session says about the peer's certificate: OpenSSL's
    chain verification errors (recorded, not fatal), and the certificate.
    """

    def __init__(self, ignorePurpose: bool) -> None:
        self.ignorePurpose = ignorePurpose
        self.errors: list[tuple[int, int]] = []
        self.connection: SSL.Connection | None = None
        self.done = False

    def verify(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok and not (self.ignorePurpose and errno == _X509_V_ERR_INVALID_PURPOSE) and len(self.errors) < 10:
            self.errors.append((depth, errno))
        return True

    def problem(self, domain: str) -> str | None:
        """
        @return: C{None} if the peer's certificate chains to a trusted CA
            and is valid for C{domain}; otherwise what is wrong.
        """
        if not self.done or self.connection is None:
            return "no TLS"
        certificate = self.connection.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            return "no certificate"
        if self.errors:
            depth, errno = self.errors[0]
            text = _VERIFY_ERRORS.get(errno, f"OpenSSL verify error {errno}")
            return f"untrusted certificate: {text} (at depth {depth})"
        return _validFor(certificate, domain)


#: What we answer a TLS client's ALPN with (XEP-0368).
_ALPN_PROTOCOLS = [b"xmpp-server"]


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class _TLSCreator:
    """
    TLS connections for one stream: the shared options, and a verify
    callback that records the peer certificate's problems in a L{_TLSCheck}
    instead of failing the handshake.
    """

    def __init__(self, options: CertificateOptions, check: _TLSCheck, verifyMode: int, serverName: str | None = None) -> None:
        self.options = options
        self.check = check
        self.verifyMode = verifyMode
        self.serverName = serverName

    def _prepare(self, connection: SSL.Connection) -> SSL.Connection:
        connection.set_verify(self.verifyMode, self.check.verify)
        self.check.connection = connection
        return connection

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.serverName is not None:
            try:
                connection.set_tlsext_host_name(self.serverName.encode("idna"))
            except UnicodeError:
                pass
        return self._prepare(connection)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._prepare(self.options.serverConnectionForTLS(tlsProtocol))


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


class _Closing(Exception):
    """
    Why a stream ended.
    """

    def __init__(self, condition: str, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text
        self.permanent = permanent


@implementer(IHandshakeListener)
class _S2SStream(HardenedXmlStream):
    """
    What incoming and outgoing s2s streams share: the stream namespaces,
    the timers (negotiation, idle, close), closing with a footer or a
    stream error, and the TLS check.

    @ivar ending: Why the stream ended or is ending (for the logs and the
        link), once known.
    """

    log = Logger()

    def __init__(self, manager: S2SManager, initiating: bool) -> None:
        super().__init__(_Authenticator(initiating), manager.config.limits, manager.clock)
        self.manager = manager
        self.config = manager.config
        self.namespace = NS_SERVER
        self.prefixes = {NS_STREAMS: "stream", NS_DIALBACK: "db"}
        self.tlsCheck: _TLSCheck | None = None
        self.ending: _Closing | None = None
        self._secure = False
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
            self.ending = _Closing("remote-server-not-found", f"connection lost ({reason.getErrorMessage()})")
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
            self.ending = _Closing("remote-server-not-found", f"we sent a stream error: {condition}", True)

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        self.fail(_Closing("remote-server-timeout", f"not authenticated within {self.config.negotiationTimeout:g} s"), "connection-timeout")

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
        self.close(_Closing("remote-server-not-found", f"idle for {self.config.idleTimeout:g} s"))

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
        return self._secure or ISSLTransport.providedBy(self.transport)

    # -- closing -----------------------------------------------------------------

    def close(self, why: _Closing) -> None:
        """
        End the stream with its closing tag.
        """
        if self._closed:
            return
        self._closed = True
        if self.ending is None:
            self.ending = why
        if self._headerSent:
            self.sendFooter()
        self._loseConnection()

    def fail(self, why: _Closing, condition: str | None = None, text: str | None = None) -> None:
        """
        End the stream with a stream error C{condition} (or just its
        closing tag, if C{None}).
        """
        if self._closed:
            return
        if condition is None:
            self.close(why)
            return
        self._closed = True
        if self.ending is None:
            self.ending = why
        self.log.info(
            "Closing s2s stream with {peer}: {condition} ({text})", peer=self.peer, condition=condition, text=text or why.text
        )
        if not self._headerSent and not self.initiating:
            self.sendHeader()
        if self._headerSent:
            self.send(error.StreamError(condition, text=text or None).getElement())
            self.sendFooter()
        self._loseConnection()

    def _loseConnection(self) -> None:
        if self.transport is None or self._lost:
            return
        self.transport.loseConnection()
        if self._abort is None:
            self._abort = self.clock.callLater(self.config.closeTimeout, self._abortNow)

    def _abortNow(self) -> None:
        self._abort = None
        if not self._lost and self.transport is not None:
            self._t.abortConnection()

    def onDocumentEnd(self) -> None:
        if self.ending is None:
            self.ending = _Closing("remote-server-not-found", "closed by the peer")
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
            self.ending = _Closing("remote-server-not-found", f"stream error from the peer: {condition}", permanent=True)
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


class _IncomingStream(_S2SStream):
    """
    A stream a remote server opened to us.

    @ivar domains: The remote domains authenticated on this stream.
    @ivar streamFrom: The C{from} of the stream header, once given.
    @ivar methods: How each domain authenticated.
    """

    def __init__(self, manager: S2SManager) -> None:
        super().__init__(manager, initiating=False)
        self.domains: set[str] = set()
        self.methods: dict[str, str] = {}
        self.pending: set[str] = set()
        self.streamFrom: str | None = None
        self._sasl = False
        self._saslFailures = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        incoming = self.manager.incoming
        incoming.add(self)
        if self.manager.stopped:
            self.thisEntity = _domainJID(self.manager.localDomain)  # type: ignore[assignment]
            self.shutdown()
        elif len(incoming) > self.config.maxIncomingStreams:
            self.log.warn("Refusing an s2s stream from {peer}: {count} streams open", peer=self.peer, count=len(incoming) - 1)
            self.thisEntity = _domainJID(self.manager.localDomain)  # type: ignore[assignment]
            self.fail(_Closing("resource-constraint", "too many incoming streams"), "resource-constraint")

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
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
        self.fail(_Closing("remote-server-not-found", "idle"), "connection-timeout", "idle")

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        if not self.domains:
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
            self.fail(_Closing("remote-server-not-found", problem[1]), *problem)
            return
        to = root.getAttribute("to")
        if not to:
            self.fail(_Closing("remote-server-not-found", "no 'to'"), "improper-addressing", "the stream header needs a 'to'")
            return
        try:
            toDomain = _domain(to)
        except InvalidJID:
            toDomain = None
        if toDomain != local:
            self.fail(_Closing("remote-server-not-found", f"for {to!r}"), "host-unknown", f"this server serves {local}")
            return
        fromText = root.getAttribute("from")
        if fromText:
            try:
                origin = _domain(fromText)
            except InvalidJID:
                self.fail(_Closing("remote-server-not-found", "bad 'from'"), "invalid-from", "'from' is not a domain")
                return
            if origin == local or (self.streamFrom is not None and origin != self.streamFrom):
                self.fail(_Closing("remote-server-not-found", f"'from' {origin}"), "invalid-from")
                return
            self.streamFrom = origin
            self.otherEntity = _domainJID(origin)  # type: ignore[assignment]
        self.sendHeader()
        self.send(self._features())

    def _features(self) -> domish.Element:
        features = domish.Element((NS_STREAMS, "features"))
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
            self.fail(_Closing("remote-server-not-found", f"sent {name}"), "unsupported-stanza-type", f"{name} is not understood here")

    def _requireTLS(self) -> bool:
        """
        @return: Whether the stream may go on (it is encrypted, or need not be).
        """
        if self.config.requireTLS and not self.secure:
            self.fail(_Closing("remote-server-not-found", "no STARTTLS"), "policy-violation", "STARTTLS is required")
            return False
        return True

    def _startTLS(self) -> None:
        if self.manager.serverTLS is None or self.secure or self.domains:
            self.send(domish.Element((NS_TLS, "failure")))
            self.close(_Closing("remote-server-not-found", "STARTTLS refused", True))
            return
        self.send(domish.Element((NS_TLS, "proceed")))
        self.tlsCheck = _TLSCheck(ignorePurpose=True)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE if self.config.verifyCertificates else SSL.VERIFY_NONE
        self._t.startTLS(_TLSCreator(self.manager.serverTLS, self.tlsCheck, mode))
        self._secure = True
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
        text = str(element).strip()
        if text not in ("", "="):
            try:
                authzid = base64.b64decode(text, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                self._saslFailure("incorrect-encoding")
                return
            try:
                wanted = _domain(authzid) if authzid else identity
            except InvalidJID:
                wanted = None
            if wanted != identity:
                self._saslFailure("invalid-authzid")
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
        if self._saslFailures >= MAX_SASL_FAILURES:
            self.fail(_Closing("remote-server-not-found", "SASL failed"), "policy-violation", "too many failed authentications")

    def _authenticated(self, domain: str, method: str) -> None:
        self.domains.add(domain)
        self.methods[domain] = method
        self.negotiated()
        self.log.info("s2s stream from {domain} ({peer}) authenticated: {method}", domain=domain, peer=self.peer, method=method)

    def _addressing(self, element: domish.Element) -> tuple[str, str] | None:
        """
        The C{from} and C{to} domains of a dialback element, checked (the
        stream is failed if they are wrong).
        """
        try:
            origin = _domain(element.getAttribute("from"))
            to = _domain(element.getAttribute("to"))
        except InvalidJID as e:
            self.fail(_Closing("remote-server-not-found", "bad dialback addressing"), "improper-addressing", str(e))
            return None
        if to != self.manager.localDomain:
            self.fail(_Closing("remote-server-not-found", f"dialback for {to}"), "host-unknown", f"this server serves {self.manager.localDomain}")
            return None
        return origin, to

    def _dialbackResult(self, element: domish.Element) -> None:
        if element.getAttribute("type") is not None or not self._requireTLS():
            return
        if not self.config.allowDialback:
            self.fail(_Closing("remote-server-not-found", "dialback refused", True), "not-authorized", "dialback is not accepted here")
            return
        addressing = self._addressing(element)
        if addressing is None:
            return
        origin, _ = addressing
        if origin == self.manager.localDomain:
            self.fail(_Closing("remote-server-not-found", "claimed our domain"), "invalid-from")
            return
        if origin in self.pending:
            return
        if origin in self.domains:
            self._sendResult(origin, True)
            return
        if len(self.domains) + len(self.pending) >= self.config.maxDomainsPerStream:
            self.fail(_Closing("remote-server-not-found", "too many domains"), "policy-violation", "too many domains on one stream")
            return
        key = str(element).strip()
        if not key or len(key) > MAX_KEY_CHARS:
            self._dialbackDone(False, origin, "a malformed key")
            return
        if self._certifiedFor(origin):
            # XEP-0344: the certificate already proves the domain.
            self._dialbackDone(True, origin, "dialback (XEP-0344: certificate)")
            return
        self.pending.add(origin)
        streamID = str(self.sid)
        self.manager._verifyDialback(origin, streamID, key).addCallback(self._dialbackVerified, origin)

    def _dialbackVerified(self, valid: bool, origin: str) -> None:
        self.pending.discard(origin)
        if self._closed:
            return
        self._dialbackDone(valid, origin, "dialback" if valid else "the authoritative server's answer")

    def _dialbackDone(self, valid: bool, origin: str, how: str) -> None:
        self._sendResult(origin, valid)
        if valid:
            self._authenticated(origin, how)
        else:
            self.log.info("s2s dialback from {peer} for {domain} refused: {how}", peer=self.peer, domain=origin, how=how)
            self.close(_Closing("remote-server-not-found", f"dialback for {origin} invalid"))

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
        valid = bool(streamID) and len(streamID) <= MAX_ID_CHARS and self.manager._keyValid(receiving, streamID, key)
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
            self.fail(_Closing("remote-server-not-found", "stanza before authentication"), "not-authorized", "authenticate first")
            return
        sender, recipient = stanza.getAttribute("from"), stanza.getAttribute("to")
        if not sender or not recipient:
            self.fail(_Closing("remote-server-not-found", "stanza without from/to"), "improper-addressing", "a stanza needs 'from' and 'to'")
            return
        try:
            senderJID, recipientJID = parseJID(sender), parseJID(recipient)
        except InvalidJID as e:
            self.fail(_Closing("remote-server-not-found", "bad stanza address"), "improper-addressing", str(e))
            return
        if senderJID.host not in self.domains:
            self.fail(_Closing("remote-server-not-found", f"stanza from {senderJID.host}"), "invalid-from", f"{senderJID.host} is not authenticated on this stream")
            return
        if recipientJID.host != self.manager.localDomain:
            self.fail(_Closing("remote-server-not-found", f"stanza to {recipientJID.host}"), "host-unknown", f"this server serves {self.manager.localDomain}")
            return
        self.manager._received(senderJID.host, stanza)

    def shutdown(self) -> None:
        """
        The manager stops: close with C{system-shutdown}.
        """
        self.fail(_Closing("service-unavailable", "shutting down"), "system-shutdown")


class _OutgoingStream(_S2SStream):
    """
    Our stream to a remote domain, driven by its L{_OutgoingLink}.

    @ivar method: How we authenticated, once we have.
    @ivar certificateProblem: What is wrong with the peer's certificate
        (C{None}: nothing, or not checked).
    @ivar featureNames: The stream features the peer offered, in order,
        for each stage (diagnostics).
    """

    def __init__(self, link: _OutgoingLink) -> None:
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
        self.link._streamConnected(self)
        self.sendHeader()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        assert self.ending is not None
        self.link._streamLost(self, self.ending)

    def _negotiationTimedOut(self) -> None:
        self._negotiation = None
        if self.state != "up":
            self.fail(_Closing("remote-server-timeout", f"not authenticated within {self.config.negotiationTimeout:g} s"))

    def streamStarted(self, root: domish.Element) -> None:
        if self._closed:
            return
        problem = self._checkHeader(root)
        if problem is not None:
            self.fail(_Closing("remote-server-not-found", f"bad stream header: {problem[1]}", True), *problem)
            return
        streamID = root.getAttribute("id")
        if not streamID or len(streamID) > MAX_ID_CHARS:
            self.fail(_Closing("remote-server-not-found", "no usable stream id", True), "invalid-xml", "a stream id is required")
            return
        self.sid = streamID
        fromText = root.getAttribute("from")
        if fromText:
            if not _isDomain(fromText, self.domain):
                self.fail(_Closing("remote-server-not-found", f"answered as {fromText!r}", True), "invalid-from")
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
            self.fail(_Closing("remote-server-not-found", f"certificate: {self.certificateProblem}", True))
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
                self.close(_Closing("remote-server-not-found", "STARTTLS failed", True))
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
                self.link._verifyAnswered(element.getAttribute("id") or "", element.getAttribute("type") == "valid")
        elif uri == NS_STREAMS and name == "features":
            self.fail(_Closing("remote-server-not-found", "unexpected stream features", True), "invalid-xml")
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
                self.close(_Closing("remote-server-not-found", f"{self.domain} does not offer STARTTLS (required)", True))
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
        self.tlsCheck = _TLSCheck(ignorePurpose=False)
        mode = SSL.VERIFY_PEER if self.config.verifyCertificates else SSL.VERIFY_NONE
        self._t.startTLS(_TLSCreator(self.manager.clientTLS, self.tlsCheck, mode, self.domain))
        self._secure = True
        self.state = "header"
        self.reset()
        self.sendHeader()

    def _dialback(self, features: domish.Element) -> None:
        if not self.config.allowDialback:
            self.close(_Closing("remote-server-not-found", f"{self.domain} did not accept our certificate (SASL EXTERNAL) and dialback is off", True))
            return
        if _child(features, NS_DIALBACK_FEATURES, "dialback") is None and not self._peerDeclaresDialback:
            self.close(_Closing("remote-server-not-found", f"{self.domain} offers neither SASL EXTERNAL nor dialback", True))
            return
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"] = self.manager.localDomain
        result["to"] = self.domain
        result.addContent(self.manager._key(self.domain, str(self.sid)))
        self.send(result)
        self.state = "dialback"
        self.readyForVerify = True
        self.link._readyForVerify(self)

    def _dialbackAnswered(self, element: domish.Element) -> None:
        if self.state != "dialback" or not _isDomain(element.getAttribute("from"), self.domain):
            return
        if element.getAttribute("type") == "valid":
            self._up("dialback")
        else:
            self.close(_Closing("remote-server-not-found", f"{self.domain} refused our dialback key ({element.getAttribute('type')})", True))

    def _up(self, method: str) -> None:
        self.state = "up"
        self.method = method
        self.readyForVerify = True
        self.negotiated()
        self.link._streamUp(self)


class _OutgoingFactory(ClientFactory):
    noisy = False

    def __init__(self, link: _OutgoingLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _OutgoingStream:
        stream = _OutgoingStream(self.link)
        stream.factory = self
        return stream


class _IncomingFactory(ServerFactory):
    noisy = False

    def __init__(self, manager: S2SManager) -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> _IncomingStream:
        stream = _IncomingStream(self.manager)
        stream.factory = self
        return stream


@attrs.define
class _Verify:
    """
    A C{db:verify} we send to a domain's authoritative server.
    """

    streamID: str
    key: str
    result: Deferred[bool]
    timer: IDelayedCall | None = None
    sent: bool = False


class _OutgoingLink:
    """
    Our link to one remote domain: its stream (one at a time), the stanzas
    and dialback verifications waiting for it, and the retry state.

    @ivar stream: The current stream, connected (not necessarily
        authenticated), or C{None}.
    @ivar attempts: Failed attempts since the last success.
    """

    log = Logger()

    def __init__(self, manager: S2SManager, domain: str) -> None:
        self.manager = manager
        self.config = manager.config
        self.domain = domain
        self.stream: _OutgoingStream | None = None
        self.queue: deque[tuple[domish.Element, Deferred[None]]] = deque()
        self.verifies: dict[str, _Verify] = {}
        self.attempts = 0
        self.failure: S2SError | None = None
        self._connecting: Deferred[Any] | None = None
        self._timedOut = False
        self._retry: IDelayedCall | None = None
        self._forget: IDelayedCall | None = None
        self._policy = backoffPolicy(manager.config.retryInitialDelay, manager.config.retryMaxDelay, factor=2.0)

    @property
    def up(self) -> bool:
        """
        Whether stanzas go out at once.
        """
        return self.stream is not None and self.stream.state == "up" and not self.stream.closing

    def _waiting(self) -> int:
        return len(self.queue) + len(self.verifies)

    # -- the API of the manager ----------------------------------------------------

    def send(self, stanza: domish.Element) -> Deferred[None]:
        if self.failure is not None:
            return fail(self.failure)
        if self.up:
            assert self.stream is not None
            self.stream.send(stanza)
            return succeed(None)
        if self._waiting() >= self.config.maxQueuedStanzas:
            return fail(S2SError("resource-constraint", f"{self.config.maxQueuedStanzas} stanzas already wait for the link to {self.domain}"))

        def cancel(d: Deferred[None]) -> None:
            for entry in self.queue:
                if entry[1] is d:
                    self.queue.remove(entry)
                    break

        d: Deferred[None] = Deferred(cancel)
        self.queue.append((stanza, d))
        self._ensureConnecting()
        return d

    def verify(self, streamID: str, key: str) -> Deferred[bool]:
        if self.failure is not None or streamID in self.verifies or self._waiting() >= self.config.maxQueuedStanzas:
            return succeed(False)
        v = _Verify(streamID, key, Deferred())
        v.timer = self.manager.clock.callLater(self.config.negotiationTimeout, self._verifyTimedOut, streamID)
        self.verifies[streamID] = v
        if self.stream is not None and self.stream.readyForVerify:
            self._sendVerify(self.stream, v)
        else:
            self._ensureConnecting()
        return v.result

    def close(self) -> Deferred[None]:
        """
        Stop: fail what waits, cancel timers, close the stream.
        """
        for timer in (self._retry, self._forget):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._forget = None
        if self._connecting is not None:
            self._connecting.cancel()
        self._failWaiting(S2SError("service-unavailable", "the s2s service is stopping"))
        stream = self.stream
        if stream is None:
            return succeed(None)
        stream.close(_Closing("service-unavailable", "shutting down"))
        return stream.whenLost()

    # -- connecting ----------------------------------------------------------------

    def _ensureConnecting(self) -> None:
        if self.stream is None and self._connecting is None and self._retry is None:
            self._connect()

    def _connect(self) -> None:
        self._retry = None
        try:
            endpoint = self.manager._endpointFor(self.domain)
        except S2SError as e:
            self.attempts += 1
            self._failed(_Closing(e.condition, e.text, permanent=True))
            return
        self._timedOut = False
        d = endpoint.connect(_OutgoingFactory(self))
        timer = self.manager.clock.callLater(self.config.connectTimeout, self._connectTimedOut, d)

        def stopTimer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        self._connecting = d
        d.addBoth(stopTimer)
        d.addCallbacks(self._connected, self._connectFailed)

    def _connectTimedOut(self, d: Deferred[Any]) -> None:
        self._timedOut = True
        d.cancel()

    def _connected(self, stream: Any) -> None:
        self._connecting = None

    def _connectFailed(self, f: Failure) -> None:
        self._connecting = None
        if self.manager.stopped:
            return
        self.attempts += 1
        if self._timedOut or f.check(DeferredTimeout, ConnectTimeout):
            why = _Closing("remote-server-timeout", f"no connection within {self.config.connectTimeout:g} s")
        elif f.check(DNSLookupError):
            why = _Closing("remote-server-not-found", f"DNS: {f.getErrorMessage()}")
        else:
            why = _Closing("remote-server-not-found", f"cannot connect: {f.getErrorMessage()}")
        self._failed(why)

    def _streamConnected(self, stream: _OutgoingStream) -> None:
        self.stream = stream

    def _streamUp(self, stream: _OutgoingStream) -> None:
        self.attempts = 0
        tls = "no TLS"
        if stream.secure:
            if not self.config.verifyCertificates:
                tls = "TLS, certificate not checked"
            elif stream.certificateProblem is None:
                tls = "TLS, certificate verified"
            else:
                tls = f"TLS, certificate not trusted: {stream.certificateProblem}"
        self.log.info(
            "s2s link to {domain} up ({peer}): {method}, {tls}", domain=self.domain, peer=stream.peer, method=stream.method, tls=tls
        )
        # Write everything before firing anything: a callback that sends
        # again must not overtake the queue.
        queued, self.queue = self.queue, deque()
        for stanza, _ in queued:
            stream.send(stanza)
        self._readyForVerify(stream)
        self.manager._linkUp(self.domain)
        for _, d in queued:
            d.callback(None)

    def _streamLost(self, stream: _OutgoingStream, why: _Closing) -> None:
        if stream is not self.stream:
            return
        self.stream = None
        for v in self.verifies.values():
            v.sent = False
        if stream.state == "up":
            self.log.info("s2s link to {domain} down: {reason}", domain=self.domain, reason=why.text)
            self.manager._linkDown(self.domain)
            if self.manager.stopped:
                return
            if self._waiting():
                self._connect()
            else:
                self.manager._forgetLink(self)
            return
        if self.manager.stopped:
            return
        self.attempts += 1
        self._failed(why)

    def _failed(self, why: _Closing) -> None:
        if why.permanent or self.attempts >= self.config.maxConnectAttempts:
            self._giveUp(why)
            return
        delay = self._policy(self.attempts - 1)
        self.log.warn(
            "s2s link to {domain}: attempt {attempt} of {attempts} failed: {reason}; retrying in {delay:.1f} s",
            domain=self.domain,
            attempt=self.attempts,
            attempts=self.config.maxConnectAttempts,
            reason=why.text,
            delay=delay,
        )
        self._retry = self.manager.clock.callLater(delay, self._connect)

    def _giveUp(self, why: _Closing) -> None:
        failure = S2SError(why.condition, f"cannot reach {self.domain}: {why.text}")
        self.log.warn(
            "s2s link to {domain} failed: {reason} ({count} stanzas failed)", domain=self.domain, reason=why.text, count=len(self.queue)
        )
        self.attempts = 0
        # Settle our state before firing anything: a callback may send
        # again, or stop the manager.
        if self.config.giveUpCooldown > 0:
            self.failure = failure
            self._forget = self.manager.clock.callLater(self.config.giveUpCooldown, self.manager._forgetLink, self)
        else:
            self.manager._forgetLink(self)
        self._failWaiting(failure)

    def _failWaiting(self, error: S2SError) -> None:
        queued, self.queue = self.queue, deque()
        verifies, self.verifies = self.verifies, {}
        for v in verifies.values():
            if v.timer is not None and v.timer.active():
                v.timer.cancel()
            v.result.callback(False)
        for _, d in queued:
            d.errback(S2SError(error.condition, error.text))

    # -- dialback verification -----------------------------------------------------

    def _readyForVerify(self, stream: _OutgoingStream) -> None:
        for v in list(self.verifies.values()):
            if not v.sent:
                self._sendVerify(stream, v)

    def _sendVerify(self, stream: _OutgoingStream, v: _Verify) -> None:
        element = domish.Element((NS_DIALBACK, "verify"))
        element["from"] = self.manager.localDomain
        element["to"] = self.domain
        element["id"] = v.streamID
        element.addContent(v.key)
        stream.send(element)
        v.sent = True

    def _verifyAnswered(self, streamID: str, valid: bool) -> None:
        v = self.verifies.pop(streamID, None)
        if v is None:
            return
        if v.timer is not None and v.timer.active():
            v.timer.cancel()
        v.result.callback(valid)

    def _verifyTimedOut(self, streamID: str) -> None:
        v = self.verifies.pop(streamID, None)
        if v is not None:
            v.timer = None
            self.log.info("s2s: {domain} did not answer a dialback verification in time", domain=self.domain)
            v.result.callback(False)


def _unhandled(domain: str, stanza: domish.Element) -> None:
    S2SManager.log.warn("No handler for the s2s stanza from {domain}: {name}", domain=domain, name=stanza.name)


class S2SManager:
    """
    Our domain's server-to-server links.

    @ivar stanzaReceived: Called with (authenticated remote domain, stanza)
        for every stanza from a remote server: its C{from} is in that
        domain, its C{to} in ours. Set by whoever uses the manager.
    @ivar linkEstablished: Called with a remote domain when our outgoing
        link to it is authenticated.
    @ivar linkLost: Called with a remote domain when our authenticated
        outgoing link to it closes.
    @ivar incoming: The incoming streams.
    @ivar links: The outgoing links, by remote domain.
    @ivar ourCertificateValid: Whether our certificate names our domain
        (SASL EXTERNAL is only tried if so).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        localDomain: str,
        tls: TLSFiles | None,
        config: S2SConfig,
        resolver: Any = None,
        clock: IReactorTime | None = None,
        secret: bytes | None = None,
    ) -> None:
        """
        @param reactor: Connects and listens (and is the clock unless
            C{clock} is given).
        @param localDomain: Our domain.
        @param tls: Our certificate and key, presented to peers both ways.
        @param resolver: The L{twisted.names} resolver for SRV and address
            lookups; by default the system's, made when first needed.
        @param secret: Keys our dialback keys (XEP-0185); random by default.
        @raise ValueError: If the configuration cannot work.
        """
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.localDomain = _domain(localDomain)
        self.config = config
        if not config.verifyCertificates and not config.allowDialback:
            raise ValueError("with verifyCertificates and allowDialback both off, no peer could authenticate")
        if config.requireTLS and tls is None and config.listen:
            raise ValueError("requireTLS needs a certificate to offer STARTTLS on the s2s listeners")
        self.resolver = resolver
        self.secret = secret if secret is not None else os.urandom(32)
        self.routes = {_domain(domain): endpoint for domain, endpoint in config.routes.items()}
        self.stanzaReceived: Callable[[str, domish.Element], None] = _unhandled
        self.linkEstablished: Callable[[str], None] = lambda domain: None
        self.linkLost: Callable[[str], None] = lambda domain: None
        self.incoming: set[_IncomingStream] = set()
        self.links: dict[str, _OutgoingLink] = {}
        self.stopped = False
        self.factory = _IncomingFactory(self)
        self._services: list[IService] | None = None

        trust = _trustRoot(config.trustRoots) if config.verifyCertificates else None
        own: dict[str, Any] = {}
        if tls is not None:
            own = {"privateKey": tls.key, "certificate": tls.chain[0], "extraCertChain": list(tls.chain[1:])}
        self.ourCertificateValid = tls is not None and _validFor(tls.chain[0], self.localDomain) is None
        if tls is not None and not self.ourCertificateValid:
            self.log.warn("s2s: our certificate is not valid for {domain}: peers will need dialback", domain=self.localDomain)
        trustArgs = {"trustRoot": trust} if trust is not None else {}
        self.clientTLS = CertificateOptions(**own, **trustArgs)
        self.serverTLS: CertificateOptions | None = None
        if tls is not None:
            self.serverTLS = ServerTLSOptions(**own, **trustArgs, acceptableProtocols=_ALPN_PROTOCOLS)

    # -- the API -------------------------------------------------------------------

    def services(self) -> list[IService]:
        """
        @return: One listener service per C{listen} endpoint, for the caller
            to parent.
        """
        if self._services is None:
            self._services = [
                StreamServerEndpointService(serverFromString(self.reactor, d), self.factory) for d in self.config.listen
            ]
        return list(self._services)

    def send(self, domain: str, stanza: domish.Element) -> Deferred[None]:
        """
        Send a stanza to a remote domain.

        @param stanza: In the C{jabber:server} namespace, from a JID of our
            domain, to a JID of C{domain}.
        @return: Fires once the stanza is written to an authenticated stream
            to C{domain}; fails with L{S2SError} if it cannot be, or with
            L{ValueError} if the stanza is not addressed as above.
        """
        if self.stopped:
            return fail(S2SError("service-unavailable", "the s2s service is stopped"))
        try:
            domain = _domain(domain)
        except InvalidJID as e:
            return fail(S2SError("remote-server-not-found", f"not a domain: {e}"))
        try:
            sender = parseJID(stanza.getAttribute("from") or "")
            recipient = parseJID(stanza.getAttribute("to") or "")
        except InvalidJID as e:
            return fail(ValueError(f"an s2s stanza needs a valid 'from' and 'to': {e}"))
        if sender.host != self.localDomain or recipient.host != domain:
            return fail(ValueError(f"an s2s stanza to {domain} must be from {self.localDomain} and to {domain}"))
        if domain == self.localDomain:
            return fail(S2SError("remote-server-not-found", f"{domain} is our own domain"))
        link = self._link(domain)
        if link is None:
            return fail(S2SError("resource-constraint", f"{self.config.maxOutgoingLinks} s2s links are open"))
        return link.send(stanza)

    def stop(self) -> Deferred[None]:
        """
        Close every stream (a closing tag on outgoing ones, C{system-shutdown}
        on incoming ones), cancel every timer and connection attempt, and
        fail what waits with C{service-unavailable}.

        @return: Fires when every connection is closed (aborted after
            C{closeTimeout}).
        """
        self.stopped = True
        waits = [link.close() for link in list(self.links.values())]
        self.links.clear()
        for stream in list(self.incoming):
            stream.shutdown()
            waits.append(stream.whenLost())
        return DeferredList(waits).addCallback(lambda _: None)

    # -- for links and streams -------------------------------------------------------

    def _link(self, domain: str) -> _OutgoingLink | None:
        link = self.links.get(domain)
        if link is None:
            if len(self.links) >= self.config.maxOutgoingLinks:
                return None
            link = self.links[domain] = _OutgoingLink(self, domain)
        return link

    def _forgetLink(self, link: _OutgoingLink) -> None:
        if self.links.get(link.domain) is link:
            del self.links[link.domain]

    def _endpointFor(self, domain: str) -> IStreamClientEndpoint:
        route = self.routes.get(domain)
        if route is not None:
            endpoint: IStreamClientEndpoint = clientFromString(self.reactor, route)
            return endpoint
        if not self.config.useDNS:
            raise S2SError("remote-server-not-found", f"no route to {domain} (DNS lookups are off)")
        if self.resolver is None:
            # What twisted.names.client.createResolver makes, on our reactor.
            from twisted.names import cache, client, hosts, resolve

            self.resolver = resolve.ResolverChain(
                [
                    hosts.Resolver(b"/etc/hosts"),
                    cache.CacheResolver(reactor=self.reactor),
                    client.Resolver(resolv="/etc/resolv.conf", reactor=self.reactor),
                ]
            )
        return SRVClientEndpoint(self.reactor, self.resolver, domain, timeout=self.config.connectTimeout)

    def _key(self, receiving: str, streamID: str) -> str:
        return dialbackKey(self.secret, receiving, self.localDomain, streamID)

    def _keyValid(self, receiving: str, streamID: str, key: str) -> bool:
        return hmac.compare_digest(self._key(receiving, streamID).encode("ascii"), key.encode("utf-8", "replace"))

    def _verifyDialback(self, origin: str, streamID: str, key: str) -> Deferred[bool]:
        """
        Ask C{origin}'s authoritative server whether C{key} is its key for
        our stream C{streamID}.
        """
        link = self._link(origin)
        if link is None or self.stopped:
            return succeed(False)
        return link.verify(streamID, key)

    def _received(self, domain: str, stanza: domish.Element) -> None:
        try:
            self.stanzaReceived(domain, stanza)
        except Exception:
            self.log.failure("Handling an s2s stanza from {domain}", domain=domain)

    def _linkUp(self, domain: str) -> None:
        try:
            self.linkEstablished(domain)
        except Exception:
            self.log.failure("Announcing the s2s link to {domain}", domain=domain)

    def _linkDown(self, domain: str) -> None:
        try:
            self.linkLost(domain)
        except Exception:
            self.log.failure("Announcing the loss of the s2s link to {domain}", domain=domain)
