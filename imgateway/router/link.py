# -*- test-case-name: tests.test_link,tests.e2e.test_links -*-
"""
Server links (C{docs/protocol.md} section 9): connections between the
servers of a domain and to peer domains' routers, carrying core events as
native-protocol requests (L{imgateway.router.link_codec}) over TLS with both
sides' certificates checked.

  - L{LinkConnection}: one connection, either side: frames both ways, its
    own requests matched to their responses by C{Seq}, the peer's requests
    answered by the handler of their method (L{LinkReceiver.addMethod} adds
    methods).
  - L{LinkClient}: the sending side of a link to one peer, an L{IRoute}: a
    bounded queue, a time limit on every request (link down included),
    reconnection with backoff and jitter (L{ClientService}), and requests
    not answered yet resent with the same C{Routing-Id} after a reconnect.
  - L{LinkReceiver}: the receiving side: who the peer is (certificate and
    C{HELLO}), the origination rule, C{Via} and C{Max-Hops}, duplicates, and
    the hand-over to the process's L{IRouter}.
  - L{LinkRoutes}: L{ILinkRoutes}, the links of a process, by server name
    and peer domain (static routes, then DNS SRV C{_imgw._tcp}).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import ip_address
import math
from typing import Any, Final, Protocol as TypingProtocol, overload

import attrs
from attrs import frozen
from cryptography import x509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_ip_address
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.adapters.base import ListenerService
from imgateway.adapters.native.framing import (
    MAX_SEQ,
    FrameParser,
    FramingError,
    Headers,
    Limits,
    Request,
    Response,
    serialise,
    serialiseUnsequenced,
    withSeq,
)
from imgateway.adapters.native.mapping import REASONS
from imgateway.config import GatewayConfig, LinksConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, DeliveryError, DeliveryStatus, LoopDetected, ServerError, ServiceUnavailable
from imgateway.core.events import Event, Message
from imgateway.core.linkinfo import LinkInfo
from imgateway.core.throttle import REFUSAL_LOG_INTERVAL
from imgateway.interfaces import IHomeLocator, ILinkRoutes, IMetrics, IRoute, IRouter, IWaiterRoute
from imgateway.net.addresses import isLoopback
from imgateway.net.gather import GATHER
from imgateway.net.tls import TLSFiles, trustRoot, validFor
from imgateway.status.nometrics import NO_METRICS
from imgateway.router.link_codec import (
    DELIVERED,
    EVENT_METHODS,
    LinkCodecError,
    LinkFrameReader,
    LinkRequest,
    decodeRequest,
    decodeResponse,
    encodeMessage,
    encodeRequest,
    encodeResponse,
    hopKey,
    newRoutingId,
    viaEntry,
)
from imgateway.router.locator import UNKNOWN, DirectoryHomeLocator, _Unknown

__all__ = [
    "ANSWERED_LATER",
    "LINK_LIMITS",
    "LinkClient",
    "LinkConnection",
    "LinkPeer",
    "LinkReceiver",
    "LinkRoutes",
    "LinkServerFactory",
    "LinkTLS",
    "LinkTraces",
    "identifyPeer",
    "linkLimits",
    "makeLinkService",
    "serialiseUnsequenced",
    "withSeq",
]

log = Logger()

def linkLimits(links: LinksConfig) -> Limits:
    """
    @return: What a link accepts from its peer (C{[links]
        max_start_line_bytes}, C{max_header_bytes}, C{max_headers},
        C{max_body_bytes}). Larger by default than a native server's client
        limits: the peer is an authenticated server, and a request carries a
        C{Via} per server passed.
    """
    return Limits(
        maxStartLineBytes=links.maxStartLineBytes,
        maxHeaderBytes=links.maxHeaderBytes,
        maxHeaders=links.maxHeaders,
        maxBodyBytes=links.maxBodyBytes,
    )


#: What a link accepts from its peer with the default C{[links]} keys.
LINK_LIMITS = linkLimits(LinksConfig())

#: The service name of a domain's link listener in DNS SRV records.
SRV_SERVICE = "imgw"

#: What a request handler returns when the request is answered by
#: L{LinkConnection.answerWhenFired} (no response of its own).
ANSWERED_LATER = Response(0, "answered later", Headers())

#: A handler of a request method: it gets the connection the request came
#: on and the request, and returns the response (without C{Seq}), or
#: L{ANSWERED_LATER}.
RequestHandler = Callable[["LinkConnection", Request], "Deferred[Response] | Response"]

#: The handler of the C{MESSAGE}s a link connection reads without the
#: parser (L{LinkFrameReader}): it gets the connection and the request
#: decoded, or the error decoding it raised (L{decodeRequest}).
MessageHandler = Callable[["LinkConnection", "LinkRequest | LinkCodecError"], "Deferred[Response] | Response"]


class ResponseWaiter(TypingProtocol):
    """
    What waits for the response to a request sent on a L{LinkConnection}:
    a L{Deferred}, or a lighter object with the same two methods
    (L{LinkClient}'s, one per request it sends).
    """

    def callback(self, response: Response) -> object:
        """
        The response came.
        """

    def errback(self, fail: BaseException) -> object:
        """
        The connection was lost first (a L{ConnectionLost}).
        """


class OutcomeWaiter(TypingProtocol):
    """
    What a L{LinkClient} request's outcome is told to: a L{Deferred}, or
    a lighter object with the same three members (a proxied session's
    message answered to its face, L{LinkClient.requestEncoded}'s
    C{waiter}). Told once: C{called} is true after.
    """

    called: bool

    def callback(self, result: Any) -> object:
        """
        The outcome (what the answer was read as).
        """

    def errback(self, fail: BaseException | Failure) -> object:
        """
        The request failed (refused, timed out, or the link stopped).
        """


#: What a failure of a message sent with L{LinkClient.deliverThen} is told
#: to, if given: called with the failure, the message and its waiter, in
#: place of the waiter's C{errback} (the router's answer to a failed link
#: delivery, C{Router._linkAnswerFailed}).
FailureTeller = Callable[[BaseException | Failure, Message, OutcomeWaiter], object]


def _tell(error: BaseException, message: Message, waiter: OutcomeWaiter, failed: FailureTeller | None) -> None:
    """
    Tell C{waiter} (or C{failed}, if given) that C{message} failed at
    once (L{LinkClient.deliverThen}).
    """
    if failed is None:
        waiter.errback(error)
    else:
        failed(error, message, waiter)


#: object.__new__: an _Outgoing made without its __init__'s call
#: (LinkClient.deliverThen).
_newObject = object.__new__


def _response(code: int, detail: str = "", headers: Sequence[tuple[str, str]] = ()) -> Response:
    pairs = tuple(headers) + ((("Detail", detail),) if detail else ())
    return Response(code, REASONS.get(code, "Error"), Headers(pairs))


#: L{DELIVERED} as L{serialiseUnsequenced} writes it: the answer to most
#: requests, serialised once.
_DELIVERED_BYTES = serialiseUnsequenced(DELIVERED)
#: L{DELIVERED} with its C{Seq}, for C{%}: what L{withSeq} makes of
#: L{_DELIVERED_BYTES} (a start line and the blank line).
_DELIVERED_WITH_SEQ = _DELIVERED_BYTES[:-2] + b"Seq: %d\r\n\r\n"
#: L{DeliveryStatus.DELIVERED}, for the delivery and answer paths: a member
#: looked up on its class goes through the C{Enum} class's attribute hook
#: (about 900 instructions under Python 3.11), a module global does not.
_STATUS_DELIVERED: Final = DeliveryStatus.DELIVERED
#: How a bare 200 starts (L{FrameParser.bareOKRun}): a read that does not
#: start so is not tried as a run of them.
_BARE_OK_START = b"IMGW/1.0 200 OK\r\nSeq: "

@frozen
class LinkPeer:
    """
    Who is at the other end of a link, as authenticated.

    @ivar domain: Its domain.
    @ivar name: Its C{[servers.NAME]} name, for a server of this domain;
        C{None} for a peer domain's router.
    @ivar roles: Its roles (C{"home"}, C{"router"}); a peer domain's router
        has none here.
    """

    domain: str
    name: str | None = None
    roles: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"server {self.name}" if self.name is not None else f"domain {self.domain}"


def identifyPeer(
    config: GatewayConfig,
    claimedDomain: str | None,
    claimedServer: str | None,
    certificate: x509.Certificate | None,
) -> LinkPeer | str:
    """
    Map a link peer to a configured identity: a C{[servers.NAME]} of this
    domain (its certificate must name the server's C{tls_name}, by default
    the host of its C{link}), or a peer domain's router (its certificate
    must name that domain).

    @param claimedDomain: The C{Domain} of its C{HELLO}.
    @param claimedServer: The C{Server} of its C{HELLO}.
    @param certificate: Its certificate, verified up to the trust roots; or
        C{None} on a plaintext loopback link (the claims are believed).
    @return: The peer, or why it is refused.
    """
    if not claimedDomain:
        return "HELLO without Domain"
    domain = claimedDomain.lower()
    if domain == config.domain:
        server = config.servers.get(claimedServer or "")
        if server is None or server.name == config.homeServerName:
            return f"{claimedServer!r} is not one of the other [servers] of {domain}"
        if certificate is not None:
            name = _tlsNameOf(server)
            if name is None:
                return f"server {server.name} has no link or tls_name to check its certificate against"
            problem = _validFor(certificate, name)
            if problem is not None:
                return f"certificate for server {server.name} {problem}"
        return LinkPeer(domain, server.name, server.roles)
    if certificate is not None:
        problem = validFor(certificate, domain)
        if problem is not None:
            return f"certificate for domain {domain} {problem}"
    return LinkPeer(domain)


def _validFor(certificate: x509.Certificate, name: str) -> str | None:
    """
    @return: C{None} if C{certificate} is valid for C{name} (a DNS name, or
        an IP address: then an IP SAN), else why not.
    """
    try:
        address = ip_address(name)
    except ValueError:
        return validFor(certificate, name)
    try:
        verify_certificate_ip_address(certificate, str(address))
    except (VerificationError, CertificateError) as e:
        return f"not issued for {name} ({e})"
    return None


def _tlsNameOf(server: ServerConfig) -> str | None:
    if server.tlsName:
        return server.tlsName
    return server.link.host if server.link is not None else None


def _isLoopbackHost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class LinkConnection(Protocol):
    """
    One link connection, on either side.

    Requests this side sends (L{request}) are numbered and matched to their
    responses by C{Seq}; requests the peer sends are answered by
    C{handlers[method]} (unknown methods C{405}), in any order. Framing
    errors are answered as the native protocol does (C{docs/protocol.md}
    section 3.4).

    @ivar peer: Who the peer is, once known (the acceptor learns it from
        C{HELLO}; the connector knows it from the start).
    @ivar ready: Whether the C{HELLO} exchange is done.
    """

    def __init__(
        self,
        handlers: Mapping[str, RequestHandler],
        clock: IReactorTime,
        helloTimeout: float,
        peer: LinkPeer | None = None,
        limits: Limits = LINK_LIMITS,
        onLost: Callable[[LinkConnection], None] | None = None,
        hello: Headers | None = None,
        onReady: Callable[[LinkConnection], None] | None = None,
        onRefused: Callable[[LinkConnection], None] | None = None,
        onMessage: tuple[RequestHandler, MessageHandler] | None = None,
    ) -> None:
        """
        @param handlers: Request method to the handler that answers it.
        @param helloTimeout: Seconds the C{HELLO} exchange may take before
            the connection is dropped.
        @param peer: Who the peer is, when known from the start.
        @param onLost: Called with this connection when it is lost.
        @param hello: On the connecting side, the headers of the C{HELLO}
            to send first (C{None} on the accepting side).
        @param onReady: Called once the C{HELLO} exchange is done.
        @param onRefused: Called if the peer refused this side's C{HELLO}.
        @param onMessage: A handler of C{MESSAGE} requests and the same
            handler for them decoded (L{LinkReceiver.messageHandlers}):
            while C{handlers["MESSAGE"]} is the first, the link messages the
            peer writes are decoded as they are read (L{LinkFrameReader})
            and given to the second; else they are read as any request.
        """
        self.handlers = handlers
        self.clock = clock
        self.peer = peer
        self.ready = False
        self._parser = FrameParser(limits)
        self._onMessage = onMessage
        self._reader = LinkFrameReader(self._parser, limits)
        self._seq = 0
        self._outstanding: dict[int, ResponseWaiter] = {}
        self._helloTimeout = helloTimeout
        self._helloTimer: IDelayedCall | None = None
        self._onLost = onLost
        self._hello = hello
        self._onReady = onReady
        self._onRefused = onRefused
        self.connected = False
        self.closing = False
        self.lostReason: Failure | None = None
        #: Requests of the peer being handled now (see L{LinkReceiver}).
        self.inProgress = 0
        self._lostObservers: list[Callable[[LinkConnection], None]] = []
        # What this side writes while it handles a read (dataReceived), or,
        # after its first frame, while another connection's read is handled
        # (imgateway.net.gather): written in one transport.write at the end
        # of that read (one TLS record, not one per frame); None when
        # neither.
        self._batch: list[bytes] | None = None
        # The gather's epoch of the read this side last wrote in directly
        # (0: none): written after it in the same read, a frame is kept.
        self._wroteIn = 0

    def whenLost(self, observer: Callable[[LinkConnection], None]) -> None:
        """
        Call C{observer} with this connection when it is lost (at once if
        it is not connected now): what lives as long as the connection (a
        proxied session, L{imgateway.router.proxy}) ends with it.
        """
        if not self.connected:
            observer(self)
            return
        self._lostObservers.append(observer)

    def connectionMade(self) -> None:
        self.connected = True
        self._helloTimer = self.clock.callLater(self._helloTimeout, self._helloTimedOut)
        if self._hello is not None:
            self.request(Request("HELLO", "*", self._hello)).addCallbacks(self._helloAnswered, lambda f: None)

    def _helloAnswered(self, response: Response) -> None:
        if response.code != 200:
            log.error(
                "Link to {peer} ({address}) refused: {code} {detail}",
                peer=self.peer or "unknown peer",
                address=self.peerAddress(),
                code=response.code,
                detail=response.headers.get("Detail") or response.reason,
            )
            if self._onRefused is not None:
                self._onRefused(self)
            self.close()
            return
        expected = self.peer
        self.markReady(expected or LinkPeer(response.headers.get("Domain") or "", response.headers.get("Server")))
        if self._onReady is not None:
            self._onReady(self)

    def _helloTimedOut(self) -> None:
        self._helloTimer = None
        if not self.ready:
            log.warn("Link with {peer} ({address}): no HELLO exchange within {seconds} s; dropped", peer=self.peer or "unknown peer", address=self.peerAddress(), seconds=self._helloTimeout)
            self.abort()

    def markReady(self, peer: LinkPeer) -> None:
        """
        The C{HELLO} exchange is done: C{peer} is who the other side is.
        """
        self.peer = peer
        self.ready = True
        if self._helloTimer is not None and self._helloTimer.active():
            self._helloTimer.cancel()
        self._helloTimer = None

    def peerAddress(self) -> str:
        """
        @return: The peer's address, for logs.
        """
        if self.transport is None:
            return "?"
        address: IAddress = self.transport.getPeer()
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def peerCertificate(self) -> x509.Certificate | None:
        """
        @return: The peer's certificate (verified by the TLS layer), or
            C{None} on a plaintext connection.
        """
        getter = getattr(self.transport, "getPeerCertificate", None)
        if getter is None:
            return None
        certificate = getter()
        return None if certificate is None else certificate.to_cryptography()

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> None:
        """
        Close the connection once what was written has been sent.
        """
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        self.connected = False
        self.lostReason = reason
        # Frames kept to be written are not: there is nowhere to write them
        # (their requests fail below, as those written and not answered).
        self._batch = None
        if not self.ready and not self.closing and self._hello is None:
            # A TLS handshake that failed (an untrusted certificate, none at
            # all), or a peer that went away before saying who it is.
            log.warn("Link from {address} closed before its HELLO: {reason}", address=self.peerAddress(), reason=reason.getErrorMessage())
        if self._helloTimer is not None and self._helloTimer.active():
            self._helloTimer.cancel()
        self._helloTimer = None
        outstanding, self._outstanding = self._outstanding, {}
        for d in outstanding.values():
            d.errback(ConnectionLost(f"link connection lost: {reason.getErrorMessage()}"))
        if self._onLost is not None:
            self._onLost(self)
        observers, self._lostObservers = self._lostObservers, []
        for observer in observers:
            try:
                observer(self)
            except Exception:
                log.failure("Link with {peer}: an observer of the lost connection failed", peer=self.peer or "unknown peer")

    # -- sending ----------------------------------------------------------------

    def request(self, request: Request, encoded: bytes | None = None) -> Deferred[Response]:
        """
        Send a request (its C{Seq} is set here).

        @param encoded: C{request} as L{serialiseUnsequenced} wrote it, if
            the caller has it already (it is not serialised again).
        @return: Fires with the peer's response; fails with
            L{ConnectionLost} if the connection closes first.
        """
        if not self.connected or self.closing:
            return fail(ConnectionLost("link connection is closed"))
        d: Deferred[Response] = Deferred()
        self.send(encoded if encoded is not None else serialiseUnsequenced(request), d)
        return d

    def send(self, encoded: bytes, waiter: ResponseWaiter) -> bool:
        """
        Send a request as L{serialiseUnsequenced} wrote it (its C{Seq} is
        set here), without a L{Deferred} of its own: C{waiter} is called
        with the response, or with L{ConnectionLost} if the connection
        closes first.

        @return: Whether it was sent (C{False}: the connection is closed or
            closing, and C{waiter} is not called).
        """
        if not self.connected or self.closing:
            return False
        seq = self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        self._outstanding[seq] = waiter
        # withSeq's bytes (its start line never holds a CRLF: the first one
        # ends it), by one replace: about half withSeq's instructions (its
        # two slices and bytes formatting), and _write without its call.
        data = encoded.replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)
        batch = self._batch
        if batch is not None:
            batch.append(data)
            return True
        gather = GATHER
        if gather.active:
            if self._wroteIn == gather.epoch:
                self._batch = [data]
                gather.held.append(self)
                return True
            self._wroteIn = gather.epoch
        self.transport.write(data)  # type: ignore[union-attr]
        return True

    def sendNumbered(self, data: bytes, seq: int, waiter: ResponseWaiter) -> None:
        """
        L{send} a request written with its C{Seq} in place: C{data} has
        C{Seq: seq} as its first header, C{seq} being the one after the
        last sent here (C{_seq + 1}, or 1 after L{MAX_SEQ}), on a connection
        neither closed nor closing, with nothing sent here since it was
        read (L{LinkClient.deliverThen} writes a message so: the bytes
        L{send} makes, without a copy of them).
        """
        self._seq = seq
        self._outstanding[seq] = waiter
        # _write, without its call.
        batch = self._batch
        if batch is not None:
            batch.append(data)
            return
        gather = GATHER
        if gather.active:
            if self._wroteIn == gather.epoch:
                self._batch = [data]
                gather.held.append(self)
                return
            self._wroteIn = gather.epoch
        self.transport.write(data)  # type: ignore[union-attr]

    def _write(self, data: bytes) -> None:
        """
        Write C{data}: at once, or, while a read is handled, with the rest
        of what that read makes this side write: this connection's read
        (L{dataReceived}), or another's after this side's first frame in it
        (L{GATHER}: a client's read of ten C{MESSAGE}s for the peer's
        users), written once it is handled (L{flushGathered}).
        """
        batch = self._batch
        if batch is not None:
            batch.append(data)
            return
        gather = GATHER
        if gather.active:
            if self._wroteIn == gather.epoch:
                self._batch = [data]
                gather.held.append(self)
                return
            self._wroteIn = gather.epoch
        self.transport.write(data)  # type: ignore[union-attr]

    def _flush(self) -> None:
        """
        Write what the read being handled made this side write so far.
        """
        batch = self._batch
        if batch:
            self._batch = []
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])  # type: ignore[union-attr]

    def flushGathered(self) -> None:
        """
        Another connection's read is handled: write the frames kept while
        it was (L{_write}), in one C{transport.write}, and keep no more.
        """
        batch = self._batch
        self._batch = None
        if batch:
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])  # type: ignore[union-attr]

    def _answered(self, response: Response, seq: int) -> None:
        self._respond(seq, response)

    def _respond(self, seq: int, response: Response) -> None:
        if not self.connected:
            return
        if response is DELIVERED:
            self._write(_DELIVERED_WITH_SEQ % seq)
            return
        try:
            data = withSeq(serialiseUnsequenced(response), seq)
        except ValueError as e:
            log.error("Link with {peer}: cannot send response {code}: {error}", peer=self.peer or "unknown peer", code=response.code, error=e)
            data = serialise(_response(500, "internal error", (("Seq", str(seq)),)))
        self._write(data)

    # -- receiving ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._batch is not None:
            # Within a read being handled (a handler that fed this
            # connection, or another connection's read while this one keeps
            # frames): its writes go with that read's.
            self._received(data)
            return
        self._batch = []
        # What the read makes this side write to other connections after
        # their first frame (the clients' answers to the messages a read of
        # bare 200s answers) is written at the end of the read, one write
        # per connection (imgateway.net.gather).
        began = GATHER.begin()
        try:
            self._received(data)
        finally:
            # The gather ends whatever happens, a write of this connection
            # that raises included: left on, it would keep every native
            # connection's frames after its first for good.
            try:
                self._flush()
            finally:
                self._batch = None
                if began:
                    GATHER.end()

    def _received(self, data: bytes) -> None:
        """
        Handle C{data}, a read: the answers it completes, and the requests
        it brings (answered with one write for the whole read, see
        L{dataReceived}).
        """
        outstanding = self._outstanding
        seqs: Iterable[int] | None = None
        if outstanding and data.startswith(_BARE_OK_START):
            # First the usual read of a busy link's sending side: the bare
            # 200s answering the oldest requests awaiting one, in order,
            # recognised by their bytes (what takeBareOKs would take as
            # those numbers).
            first = next(iter(outstanding))
            count = self._parser.bareOKRun(data, first, len(outstanding))
            if count:
                seqs = range(first, first + count)
        if seqs is None:
            seqs = self._parser.takeBareOKs(data)
        if seqs is not None:
            # Only bare 200s (the usual read on a busy link's sending side):
            # each is DELIVERED, which a parsed one equals but for its Seq.
            for seq in seqs:
                if self.closing:
                    return
                # self._outstanding, not outstanding: a callback may have
                # lost the connection (connectionLost replaces it).
                waiter = self._outstanding.pop(seq, None)
                if waiter is not None:
                    waiter.callback(DELIVERED)
            return
        onMessage = self._onMessage
        if onMessage is not None and self.handlers.get("MESSAGE") is onMessage[0]:
            items = self._reader.read(data)
            decodedHandler = onMessage[1]
        else:
            items = self._reader.read(data, messages=False)
            decodedHandler = None
        for item in items:
            if self.closing:
                return
            if isinstance(item, tuple):
                # A MESSAGE read without the parser, decoded (only by the
                # reader, so with its handler).
                assert decodedHandler is not None
                seq = item[0]
                try:
                    answer = decodedHandler(self, item[1])
                except Exception:
                    self._failed(Failure(), seq, "MESSAGE")
                    continue
                batch = self._batch
                if answer is DELIVERED and batch is not None and self.connected:
                    # Delivered at once (most are): its bytes, as _respond
                    # writes them, with the rest of the read's.
                    batch.append(_DELIVERED_WITH_SEQ % seq)
                elif isinstance(answer, Deferred):
                    answer.addCallbacks(self._answered, self._failed, callbackArgs=(seq,), errbackArgs=(seq, "MESSAGE"))
                elif answer is not ANSWERED_LATER:
                    self._respond(seq, answer)
            elif isinstance(item, FramingError):
                self._framingError(item)
            elif isinstance(item, Response):
                d = self._outstanding.pop(item.seq, None)
                if d is not None:
                    d.callback(item)
            else:
                self._requestReceived(item)

    def _framingError(self, error: FramingError) -> None:
        log.warn("Link with {peer} ({address}): {error}", peer=self.peer or "unknown peer", address=self.peerAddress(), error=str(error))
        if not error.inResponse:
            self._respond(error.seq or 0, _response(error.code, error.detail))
        if error.fatal:
            self.close()

    def _requestReceived(self, request: Request) -> None:
        seq = request.seq
        handler = self.handlers.get(request.method)
        if handler is None:
            self._respond(seq, _response(405, f"unknown method {request.method}"))
            return
        self._handle(seq, request.method, handler, request)

    def _handle(self, seq: int, method: str, handler: Callable[[LinkConnection, Any], Deferred[Response] | Response], argument: object) -> None:
        """
        Answer the peer's request C{seq}: C{handler(self, argument)}'s
        answer, or C{500} if it fails.
        """
        # No maybeDeferred: most answers are there at once, or come in one
        # callback.
        try:
            answer = handler(self, argument)
        except Exception:
            self._failed(Failure(), seq, method)
            return
        if answer is ANSWERED_LATER:
            # (Tested first: isinstance() of a Response against Deferred, an
            # abc.ABC through Awaitable, runs ABCMeta's check, about 2,000
            # instructions; every proxied SESSION message is answered later.)
            return
        if type(answer) is not Response and isinstance(answer, Deferred):
            answer.addCallbacks(self._answered, self._failed, callbackArgs=(seq,), errbackArgs=(seq, method))
        else:
            self._respond(seq, answer)

    def _failed(self, f: Failure, seq: int, method: str) -> None:
        log.failure("Link with {peer}: handling {method} failed", f, peer=self.peer or "unknown peer", method=method)
        self._respond(seq, _response(500, "internal error"))

    def answerWhenFired(self, request: Request, outcome: Deferred[Any], failed: Callable[[BaseException], Response]) -> Response:
        """
        Answer the peer's C{request} when C{outcome} fires, with one
        callback on it: C{200} (L{DELIVERED}) when it succeeds, whatever its
        result; C{failed(error)} when it fails (C{500}, logged, if that
        raises). What a handler whose answer is only delivered or a
        refusal calls (a proxied session's message,
        L{imgateway.router.proxy}), rather than adding a callback that makes
        the response and leaving another to this connection to write it.

        @return: L{ANSWERED_LATER}, for the handler to return.
        """
        outcome.addCallbacks(
            self._firedDelivered, self._firedFailed, callbackArgs=(request.seq,), errbackArgs=(request.seq, request.method, failed)
        )
        return ANSWERED_LATER

    def answerOutcome(self, request: Request, outcome: object, failed: Callable[[BaseException], Response]) -> None:
        """
        Answer the peer's C{request} with an outcome told by a call rather
        than a L{Deferred} (the C{answer} of a home session's
        C{sendMessageThen}): as L{answerWhenFired} answers when its
        L{Deferred} fires with C{outcome}: C{200} (L{DELIVERED}) unless
        C{outcome} is a L{Failure}, then C{failed(error)} (C{500}, logged,
        if that raises).
        """
        if isinstance(outcome, Failure):
            self._firedFailed(outcome, request.seq, request.method, failed)
        else:
            self._respond(request.seq, DELIVERED)

    def _firedDelivered(self, result: object, seq: int) -> None:
        self._respond(seq, DELIVERED)

    def _firedFailed(self, f: Failure, seq: int, method: str, failed: Callable[[BaseException], Response]) -> None:
        try:
            assert f.value is not None
            response = failed(f.value)
        except Exception:
            self._failed(Failure(), seq, method)
            return
        self._respond(seq, response)


#: One trace of L{LinkTraces}: the C{Via} and C{Max-Hops} an event arrived
#: with (a plain tuple: one is made for every delivery from a link).
_Trace = tuple[tuple[str, ...], int]


class LinkTraces:
    """
    The C{Via} and C{Max-Hops} of the events this process received over
    links and is delivering now, by L{hopKey}: a link that forwards one of
    them goes on from there (its own entry added to C{Via}, one hop
    fewer) instead of starting afresh.
    """

    def __init__(self) -> None:
        self._traces: dict[object, list[_Trace]] = {}
        #: The key and trace of the event the receiving side is delivering
        #: now when no other from a link is under way (its usual
        #: delivery, at once), kept here rather than as an entry (see
        #: L{LinkReceiver.messageReceived}); C{None} between such deliveries.
        #: Every entry made while it is set is newer than it.
        self.current: tuple[object, _Trace] | None = None

    def enter(self, event: Event, via: tuple[str, ...], maxHops: int) -> Callable[[], None]:
        """
        Remember C{event}'s trace while it is delivered.

        @return: Call it once the delivery is over.
        """
        key = hopKey(event)
        trace = self.push(key, via, maxHops)
        return lambda: self.pop(key, trace)

    def push(self, key: object, via: tuple[str, ...], maxHops: int) -> _Trace:
        """
        L{enter} without the closure (the receiving side's hot path):
        remember a trace under C{key} (L{hopKey} of the event).

        @return: The trace, for L{pop}.
        """
        trace = (via, maxHops)
        traces = self._traces.get(key)
        if traces is None:
            self._traces[key] = [trace]
        else:
            traces.append(trace)
        return trace

    def pushFirst(self, key: object, trace: _Trace) -> None:
        """
        Remember C{trace} under C{key} as older than any entry there: the
        trace that was L{current}, whose delivery goes on (the entries made
        meanwhile came after it).
        """
        traces = self._traces.get(key)
        if traces is None:
            self._traces[key] = [trace]
        else:
            traces.insert(0, trace)

    def pop(self, key: object, trace: _Trace) -> None:
        """
        Forget a trace L{push} returned, once its delivery is over.
        """
        traces = self._traces.get(key)
        if traces is not None and trace in traces:
            traces.remove(trace)
            if not traces:
                del self._traces[key]

    def traceOf(self, event: Event) -> tuple[tuple[str, ...], int] | None:
        """
        @return: The C{Via} and C{Max-Hops} C{event} arrived with, if it is
            being delivered from a link now.
        """
        everything = self._traces
        current = self.current
        if current is None and not everything:
            # None being delivered (the usual case on a sending side).
            return None
        key = hopKey(event)
        traces = everything.get(key)
        if traces:
            # The newest (newer than current, if set).
            return traces[-1]
        if current is not None and current[0] == key:
            return current[1]
        return None


@frozen
class LinkTLS:
    """
    TLS for links: this server's certificate and key, and the roots that
    sign its peers' certificates.
    """

    files: TLSFiles
    roots: tuple[x509.Certificate, ...]

    def serverOptions(self) -> Any:
        """
        @return: Server options that require a client certificate signed
            by the roots.
        """
        from imgateway.net.tls import ServerTLSOptions

        return ServerTLSOptions(
            privateKey=self.files.key,
            certificate=self.files.chain[0],
            extraCertChain=list(self.files.chain[1:]),
            trustRoot=trustRoot(list(self.roots)),
        )

    def clientOptions(self, name: str) -> Any:
        """
        @param name: The name the peer's certificate must carry.
        @return: Client options that check it, and present this server's
            certificate.
        """
        return optionsForClientTLS(
            name,
            trustRoot=trustRoot(list(self.roots)),
            extraCertificateOptions={
                "privateKey": self.files.key,
                "certificate": self.files.chain[0],
                "extraCertChain": list(self.files.chain[1:]),
            },
        )


class _Outgoing:
    """
    A L{LinkClient}'s request until it is answered: its bytes, what its
    outcome is told to (its L{Deferred}, or an L{OutcomeWaiter}), its deadline, and what its answer is read with, if not
    given as it is (a delivery's: L{decodeResponse}; its L{Deferred} fires
    with what that returns, or fails with what it raises). It is also the
    L{ResponseWaiter} of its transmission (L{LinkConnection.send}), with the
    connection it was last sent on: a response answers the request; a
    lost connection leaves it to be sent again. One object per request,
    however often it is sent.

    A message sent with L{LinkClient.deliverThen} may have a C{failed}:
    a failure is told to it (with the message and the waiter) in place of
    the waiter's C{errback} (L{fail}).
    """

    __slots__ = ("encoded", "deferred", "deadline", "decode", "client", "ident", "connection", "seq", "failed", "message")

    def __init__(
        self,
        encoded: bytes,
        deferred: OutcomeWaiter,
        deadline: float,
        decode: Callable[[Response], object] | None,
        client: LinkClient,
        ident: int,
        seq: int = 0,
        failed: FailureTeller | None = None,
        message: Message | None = None,
    ) -> None:
        self.encoded = encoded
        self.deferred = deferred
        self.deadline = deadline
        self.decode = decode
        self.client = client
        self.ident = ident
        #: The connection it was last sent on, while that is up.
        self.connection: LinkConnection | None = None
        #: The C{Seq} written in C{encoded} (L{LinkConnection.sendNumbered}),
        #: or 0: C{encoded} has none (L{LinkConnection.send} adds it).
        self.seq = seq
        self.failed = failed
        self.message = message

    def unsequenced(self) -> bytes:
        """
        @return: Its bytes without a C{Seq}, for L{LinkConnection.send}
            (a transmission after the first, on another connection).
        """
        encoded = self.encoded
        seq = self.seq
        if seq:
            end = encoded.index(b"\r\n") + 2
            encoded = self.encoded = encoded[:end] + encoded[end + len(b"Seq: %d\r\n" % seq) :]
            self.seq = 0
        return encoded

    def fail(self, error: BaseException | Failure) -> None:
        """
        Tell its failure: to its C{failed}, if it has one, else to its
        waiter's C{errback}.
        """
        failed = self.failed
        if failed is None:
            self.deferred.errback(error)
        else:
            assert self.message is not None
            failed(error, self.message, self.deferred)

    def callback(self, response: Response) -> None:
        """
        Its answer came: its outcome told, unless it timed out, its client
        stopped or its caller told it first (its L{Deferred} fired).
        """
        if self.client._pending.pop(self.ident, None) is None:
            return
        deferred = self.deferred
        if deferred.called:
            return
        decode = self.decode
        if decode is None:
            deferred.callback(response)
        elif decode is decodeResponse and response is DELIVERED:
            # A delivery answered with a bare 200 (most are): what
            # decodeResponse makes of it, without the call.
            deferred.callback(_STATUS_DELIVERED)
        else:
            # An answer read for its caller (a delivery's outcome, a
            # proxied session's message): without a callback of its own on
            # the Deferred.
            try:
                outcome = decode(response)
            except Exception:
                self.fail(Failure())
            else:
                deferred.callback(outcome)

    def errback(self, fail: BaseException) -> None:
        # The connection it was sent on is lost (that connection is no
        # longer connected when it says so; a later transmission's is):
        # sent again once the link is back (or failed by its timer).
        connection = self.connection
        if connection is not None and not connection.connected:
            self.connection = None


@implementer(IWaiterRoute)
class LinkClient(MultiService):
    """
    The sending side of the link to one peer: an L{IRoute} over a
    persistent connection.

    Requests wait in a queue of at most C{config.maxQueue} (past it, C{503}
    at once) until answered; each fails with L{ServiceUnavailable} when no
    answer came within C{config.requestTimeout} seconds (a link that is down
    included). The connection is kept up by a L{ClientService} (backoff with
    jitter up to C{config.reconnectMaxDelay}); once it is up again, every
    request not answered yet is sent again, with the same C{Routing-Id},
    so the peer's duplicate check delivers it once.

    @ivar name: The peer, for logs and errors (C{server hs2},
        C{domain partner.example}).
    @ivar connects: How many times the link came up (C{/metrics}).
    @ivar metrics: Counts the requests refused for a full queue.
    """

    connects = 0
    metrics: IMetrics = NO_METRICS

    def __init__(
        self,
        name: str,
        endpoint: IStreamClientEndpoint,
        config: LinksConfig,
        clock: IReactorTime,
        hello: Headers,
        traces: LinkTraces,
        ownVia: str,
        handlers: Mapping[str, RequestHandler] | None = None,
        retryPolicy: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param hello: The headers of this side's C{HELLO}.
        @param ownVia: This server's C{Via} entry.
        @param handlers: Requests the peer may send on this connection.
        @param retryPolicy: Seconds to wait before the attempt after that
            many failed ones; backoff with jitter by default.
        """
        super().__init__()
        self.name = name
        self._config = config
        self._clock = clock
        self._hello = hello
        self._traces = traces
        self._ownVia = ownVia
        self._ownVias = (ownVia,)
        self._handlers: Mapping[str, RequestHandler] = handlers if handlers is not None else {}
        self._pending: dict[int, _Outgoing] = {}
        self._ids = 0
        self._connection: LinkConnection | None = None
        # HELLOs refused in a row: they count as failed attempts for the
        # backoff (the TCP connection itself succeeded).
        self._refusals = 0
        self._probing: LinkConnection | None = None
        # Requests refused for a full queue since the last log line about
        # it, and the timer of the next such line (None: not refusing).
        self._refusedQuiet = 0
        self._refusedTimer: IDelayedCall | None = None
        # One timer for every request's time limit, armed for the oldest
        # request's deadline (requests are kept in the order they were
        # made, so in the order of their deadlines), not one per request.
        self._sweeper: IDelayedCall | None = None
        self._sweepAt = 0.0
        policy = retryPolicy or backoffPolicy(maxDelay=config.reconnectMaxDelay)
        factory = Factory.forProtocol(self._buildProtocol)
        # No prepareConnection: ClientService (Twisted 26.10) cannot take a
        # connection lost while it is being prepared. The HELLO exchange is
        # the connection's own.
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=lambda attempts: policy(max(attempts, self._refusals)),
            clock=clock,
        )
        self.service.setServiceParent(self)

    def _buildProtocol(self) -> LinkConnection:
        return LinkConnection(
            self._handlers,
            self._clock,
            self._config.requestTimeout,
            onLost=self._lost,
            hello=self._hello,
            onReady=self._ready,
            onRefused=self._refused,
            limits=linkLimits(self._config),
        )

    @property
    def queued(self) -> int:
        """
        Requests waiting for their answer.
        """
        return len(self._pending)

    @property
    def connected(self) -> bool:
        """
        Whether the link is up (its C{HELLO} answered).
        """
        return self._connection is not None

    @property
    def connection(self) -> LinkConnection | None:
        """
        The connection the link's requests go on now (its C{HELLO}
        answered), or C{None} while the link is down. A response fires its
        request's L{Deferred} while it is still this connection.
        """
        return self._connection

    def linkInfo(self) -> list[LinkInfo]:
        """
        The link's state (L{imgateway.core.linkinfo.LinkInfoSource}): kind
        and name from its C{name} (C{"server hs2"}); down while not
        connected.
        """
        kind, _, name = str(self.name).partition(" ")
        return [LinkInfo(kind, name, self.connected, f"{self.queued} waiting", connects=self.connects)]

    def _refused(self, connection: LinkConnection) -> None:
        self._refusals += 1

    def _ready(self, connection: LinkConnection) -> None:
        log.info("Link to {peer} is up ({address})", peer=self.name, address=connection.peerAddress())
        self.connects += 1
        self._refusals = 0
        self._connection = connection
        for ident in list(self._pending):
            self._transmit(ident)

    def _lost(self, connection: LinkConnection) -> None:
        if not connection.ready and not connection.closing and connection.lostReason is not None:
            log.warn("Link to {peer}: connection lost before HELLO: {reason}", peer=self.name, reason=connection.lostReason.getErrorMessage())
        if self._connection is connection:
            self._connection = None
            log.info("Link to {peer} is down; {count} requests waiting", peer=self.name, count=len(self._pending))

    def _transmit(self, ident: int) -> None:
        connection = self._connection
        item = self._pending.get(ident)
        if connection is None or item is None or item.connection is connection:
            return
        item.connection = connection
        if not connection.send(item.unsequenced(), item):
            item.connection = None

    def request(self, request: Request) -> Deferred[Response]:
        """
        Send a request over the link: the way every method, events and
        those added later (a proxied session's requests, with a C{Session}
        header), is sent. Its C{Seq} is set per connection.

        @return: Fires with the peer's response; fails with
            L{ServiceUnavailable} when the queue is full or no answer came
            within C{request_timeout}. Its caller may fire it first (a
            proxied session that ended fails its requests at once): the
            answer that comes later is then dropped.
        """
        if len(self._pending) >= self._config.maxQueue:
            self._queueFull()
            return fail(ServiceUnavailable(f"link to {self.name}: {self._config.maxQueue} requests waiting"))
        try:
            encoded = serialiseUnsequenced(request)
        except ValueError as e:
            log.error("Link to {peer}: cannot send {method}: {error}", peer=self.name, method=request.method, error=e)
            return fail(ServerError(f"cannot send {request.method} over a link"))
        return self._enqueue(encoded)

    @overload
    def requestEncoded(self, encoded: bytes, decode: Callable[[Response], Any] | None = None) -> Deferred[Any]: ...

    @overload
    def requestEncoded(self, encoded: bytes, decode: Callable[[Response], Any] | None, waiter: OutcomeWaiter) -> None: ...

    def requestEncoded(
        self, encoded: bytes, decode: Callable[[Response], Any] | None = None, waiter: OutcomeWaiter | None = None
    ) -> Deferred[Any] | None:
        """
        As L{request}, for a request its caller serialised already, as
        L{serialiseUnsequenced} would (the proxied sessions' messages,
        L{imgateway.router.proxy}, and events, L{encodeMessage}): the
        same queue, limit, time limit and resends.

        @param decode: What reads the answer, if given: the outcome is then
            what C{decode(response)} returns, or fails with what it raises,
            with no callback added for it (the answer of a proxied
            session's message read as it comes).
        @param waiter: What is told the outcome, if given, in place of a new
            L{Deferred} (a proxied session's message answered to its face
            directly, L{imgateway.router.proxy}); then nothing is returned,
            and a full queue raises L{ServiceUnavailable} rather than
            failing it.
        @return: The outcome's L{Deferred}, without C{waiter}.
        """
        if waiter is None:
            return self._enqueue(encoded, decode)
        self._send(encoded, decode, waiter)
        return None

    def _enqueue(self, encoded: bytes, decode: Callable[[Response], object] | None = None) -> Deferred[Any]:
        """
        Queue a serialised request and send it if the link is up
        (L{_send}).

        @param decode: What reads its answer for its L{Deferred}
            (L{requestEncoded}); for an event (L{deliver}),
            L{decodeResponse}: the L{Deferred} then fires with the
            delivery's outcome.
        @return: Its L{Deferred} (failed with L{ServiceUnavailable} if the
            queue is full).
        """
        d: Deferred[Any] = Deferred()
        try:
            self._send(encoded, decode, d)
        except ServiceUnavailable as refused:
            return fail(refused)
        return d

    def _send(self, encoded: bytes, decode: Callable[[Response], object] | None, waiter: OutcomeWaiter) -> None:
        """
        Queue a serialised request whose outcome C{waiter} is told, and
        send it if the link is up.

        @raise ServiceUnavailable: If the queue is full.
        """
        if len(self._pending) >= self._config.maxQueue:
            self._queueFull()
            raise ServiceUnavailable(f"link to {self.name}: {self._config.maxQueue} requests waiting")
        self._ids += 1
        ident = self._ids
        deadline = self._clock.seconds() + self._config.requestTimeout
        item = self._pending[ident] = _Outgoing(encoded, waiter, deadline, decode, self, ident)
        if self._sweeper is None:
            self._armSweeper(deadline)
        # Sent at once if the link is up (what _transmit does for a request
        # not sent yet).
        connection = self._connection
        if connection is not None:
            item.connection = connection
            if not connection.send(encoded, item):
                item.connection = None

    def _queueFull(self) -> None:
        """
        Log a request refused for a full queue: the first at once, then one
        line every L{REFUSAL_LOG_INTERVAL} seconds counting the others (as
        L{imgateway.core.throttle} logs refused connections).
        """
        self.metrics.limitHit("max_queue")
        if self._refusedTimer is not None:
            self._refusedQuiet += 1
            return
        log.warn(
            "Link to {peer}: {limit} requests waiting already (max_queue); 503",
            peer=self.name,
            limit=self._config.maxQueue,
        )
        self._refusedTimer = self._clock.callLater(REFUSAL_LOG_INTERVAL, self._queueFullCount)

    def _queueFullCount(self) -> None:
        quiet, self._refusedQuiet = self._refusedQuiet, 0
        if not quiet:
            self._refusedTimer = None
            return
        log.warn(
            "Link to {peer}: {n} more requests refused in {seconds:g} s (max_queue {limit}); 503",
            peer=self.name,
            n=quiet,
            seconds=REFUSAL_LOG_INTERVAL,
            limit=self._config.maxQueue,
        )
        self._refusedTimer = self._clock.callLater(REFUSAL_LOG_INTERVAL, self._queueFullCount)

    def _armSweeper(self, deadline: float) -> None:
        self._sweepAt = deadline
        self._sweeper = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), self._sweep)

    def _sweep(self) -> None:
        """
        Fail the requests whose time limit has passed, then arm the timer
        for the oldest one left.
        """
        self._sweeper = None
        # At least the deadline it was armed for, whatever the rounding of
        # the delay.
        now = max(self._clock.seconds(), self._sweepAt)
        expired = []
        for ident, item in self._pending.items():
            if item.deadline > now:
                break
            expired.append(ident)
        for ident in expired:
            self._timedOut(ident)
        if self._sweeper is not None:
            # Armed by a request made while failing these: for its own
            # deadline, which may come after older ones.
            self._sweeper.cancel()
            self._sweeper = None
        if self._pending:
            self._armSweeper(next(iter(self._pending.values())).deadline)

    def _timedOut(self, ident: int) -> None:
        item = self._pending.pop(ident, None)
        if item is not None:
            state = "up" if self._connection is not None else "down"
            log.warn("Link to {peer} ({state}): no answer within {seconds} s", peer=self.name, state=state, seconds=self._config.requestTimeout)
            if not item.deferred.called:
                item.fail(ServiceUnavailable(f"no answer from {self.name} within {self._config.requestTimeout:g} s"))
            if self._connection is not None:
                self._probe(self._connection)

    def _probe(self, connection: LinkConnection) -> None:
        """
        A request went unanswered on a connection that looks up: C{PING}
        it (the peer answers at once, whatever its deliveries wait for), and
        drop it if that goes unanswered too (the peer's host is gone, a
        half-open connection), so that the link reconnects.
        """
        if self._probing is connection:
            return
        self._probing = connection
        timer = self._clock.callLater(self._config.requestTimeout, self._probeTimedOut, connection)

        def over(result: object) -> None:
            # Answered, or the connection is gone anyway.
            if timer.active():
                timer.cancel()
            if self._probing is connection:
                self._probing = None

        connection.request(Request("PING", "*", Headers())).addBoth(over)

    def _probeTimedOut(self, connection: LinkConnection) -> None:
        if self._probing is connection:
            self._probing = None
        if connection.connected:
            log.warn("Link to {peer}: no answer to PING within {seconds} s; reconnecting", peer=self.name, seconds=self._config.requestTimeout)
            connection.abort()

    def _onward(self, event: Event) -> tuple[tuple[str, ...], int]:
        """
        The C{Via} and C{Max-Hops} that C{event} goes on with over this
        link: this server's own, or those it arrived with over a link, this
        server added and one hop fewer (under 1: its hops are used up).
        """
        traces = self._traces
        # (traceOf's first test before its call: nothing is being delivered
        # from a link, as for every message a session of this process sends.)
        trace = traces.traceOf(event) if traces.current is not None or traces._traces else None
        if trace is None:
            return self._ownVias, self._config.maxHops
        return trace[0] + (self._ownVia,), trace[1] - 1

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver C{event} over the link. It goes on with the C{Via} and
        C{Max-Hops} it arrived with if it came over a link.
        """
        via, maxHops = self._onward(event)
        if maxHops < 1:
            return fail(LoopDetected("Max-Hops exhausted"))
        try:
            if isinstance(event, Message):
                # The hot path: its bytes written at once (encodeMessage),
                # its answer decoded as it comes (_Outgoing.callback).
                return self._enqueue(encodeMessage(event, via, maxHops, event.routingId), decodeResponse)
            request = encodeRequest(event, via, maxHops, newRoutingId())
        except ValueError as e:
            log.error("Cannot send {event!r} to {peer}: {error}", event=event, peer=self.name, error=e)
            return fail(ServerError("cannot send this event over a link"))
        return self.request(request).addCallback(decodeResponse)

    def deliverThen(self, message: Message, waiter: OutcomeWaiter, hops: int | None = None, failed: FailureTeller | None = None) -> None:
        """
        L{deliver} a message, its outcome told to C{waiter} in place of a
        L{Deferred} (the router's link delivery, C{Router.deliverThen}): the
        same bytes, queue, limit, time limit and resends; what L{deliver}'s
        L{Deferred} would fail with at once (its hops used up, a message
        that cannot be written, a full queue) is told to C{waiter} at once.

        @param hops: The hop count it goes with, if not its own (a router
            counting the hop it sends it on: the bytes L{deliver} writes
            for L{forwarded<imgateway.core.events.forwarded>}'s copy,
            without the copy).
        @param failed: If given, a failure is told by C{failed(error,
            message, waiter)} in place of C{waiter.errback(error)} (the
            router's answer to a failed link delivery, made only when one
            fails).
        """
        traces = self._traces
        if traces.current is None and not traces._traces:
            # _onward's answer for what no link is delivering now (every
            # message a session of this process sends), without its call.
            via: tuple[str, ...] = self._ownVias
            maxHops = self._config.maxHops
        else:
            via, maxHops = self._onward(message)
        if maxHops < 1:
            _tell(LoopDetected("Max-Hops exhausted"), message, waiter, failed)
            return
        # Written with the Seq the connection gives it next, if it is up
        # (as sendNumbered says), without a call: sent without a copy
        # (sendNumbered).
        connection = self._connection
        seq: int | None = None
        if connection is not None and connection.connected and not connection.closing:
            last = connection._seq
            seq = last + 1 if last < MAX_SEQ else 1
        try:
            encoded = encodeMessage(message, via, maxHops, message.routingId, hops, seq)
        except ValueError as e:
            log.error("Cannot send {event!r} to {peer}: {error}", event=message, peer=self.name, error=e)
            _tell(ServerError("cannot send this event over a link"), message, waiter, failed)
            return
        # _send, without its call.
        pending = self._pending
        config = self._config
        if len(pending) >= config.maxQueue:
            self._queueFull()
            _tell(ServiceUnavailable(f"link to {self.name}: {config.maxQueue} requests waiting"), message, waiter, failed)
            return
        ident = self._ids = self._ids + 1
        deadline = self._clock.seconds() + config.requestTimeout
        if seq is None or connection is None:
            item = pending[ident] = _Outgoing(encoded, waiter, deadline, decodeResponse, self, ident, 0, failed, message)
            if self._sweeper is None:
                self._armSweeper(deadline)
            # Not sent: the link is down (or its connection closing), and
            # sends it once it is back (_transmit).
            return
        # _Outgoing(...) without its __init__'s call (a quarter of its
        # cost): every slot set, as there.
        item = _newObject(_Outgoing)
        item.encoded = encoded
        item.deferred = waiter
        item.deadline = deadline
        item.decode = decodeResponse
        item.client = self
        item.ident = ident
        item.connection = connection
        item.seq = seq
        item.failed = failed
        item.message = message
        pending[ident] = item
        if self._sweeper is None:
            self._armSweeper(deadline)
        connection.sendNumbered(encoded, seq, item)

    def stopService(self) -> Deferred[None]:
        pending, self._pending = self._pending, {}
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for item in pending.values():
            if not item.deferred.called:
                item.fail(ServiceUnavailable(f"link to {self.name} closed: the server is stopping"))
        if self._refusedTimer is not None:
            self._refusedTimer.cancel()
            self._refusedTimer = None
        d = super().stopService()
        return d if d is not None else succeed(None)


#: What the duplicate check remembers of a request: when to forget it, and
#: its answer once sent (a plain tuple holding the response: up to
#: C{[links] max_remembered} of them stay in memory, where each object more
#: is one more for every full collection of the garbage collector), or,
#: while it is being handled, the list of its duplicates' L{Deferred}s
#: waiting for that answer.
_Answer = tuple[float, "list[Deferred[Response]] | Response"]


class LinkReceiver:
    """
    The receiving side of links: who a peer is (L{identifyPeer} at
    C{HELLO}), the origination rule, C{Via} and C{Max-Hops}, duplicate
    requests, and the hand-over of accepted events to the process's router.

    @ivar handlers: Request method to its handler; L{addMethod} adds one.
    @ivar metrics: Counts the requests refused for C{max_queue}.
    """

    metrics: IMetrics = NO_METRICS

    def __init__(
        self,
        config: GatewayConfig,
        router: IRouter,
        locator: IHomeLocator,
        clock: IReactorTime,
        traces: LinkTraces,
        maxRemembered: int | None = None,
    ) -> None:
        """
        @param maxRemembered: Answers the duplicate check remembers at most;
            C{None}: C{[links] max_remembered}.
        """
        self._config = config
        self._router = router
        self._locator = locator
        self._clock = clock
        self._traces = traces
        self._maxRemembered = maxRemembered if maxRemembered is not None else config.links.maxRemembered
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        # No entry of _answers expires before this time (the first one's
        # expiry when _forgetExpired last looked: entries are made in
        # order of expiry, and only taken out after): the duplicate check
        # looks for expired ones only from then on.
        self._forgetFrom = -math.inf
        # Peer to the requests refused for max_queue since the last log
        # line about it (see _queueFull).
        self._refusedQuiet: dict[str, int] = {}
        # The router's synchronous fast path (IAtOnceRouter.deliverAtOnce,
        # Router's: an event for a session of this process answered at
        # once), else its deliver; looked up by name, once.
        self._deliverAtOnce: Callable[[Event], DeliveryStatus | Deferred[DeliveryStatus]] = getattr(
            router, "deliverAtOnce", router.deliver
        )
        # The locator when it is a DirectoryHomeLocator (the origination
        # rule's usual answer is then asked of what it remembers), else None.
        self._directory = locator if type(locator) is DirectoryHomeLocator else None
        # The router's deliverAtOnce given the recipient's home
        # (IAtOnceRouter.deliverAtHome, looked up by name, once), which the
        # receiver asks with the sender's (one call, one clock reading:
        # cachedHomesAt), when the router asks that locator and the locator
        # keeps this clock's time; else None.
        atHome: Callable[[Event, str | None | _Unknown], DeliveryStatus | Deferred[DeliveryStatus]] | None = getattr(
            router, "deliverAtHome", None
        )
        self._deliverAtHome = (
            atHome
            if atHome is not None
            and self._directory is not None
            and getattr(router, "locator", None) is locator
            and self._directory.clock is clock
            else None
        )
        self.ownVia = viaEntry(config.domain, config.homeServerName)
        self.handlers: dict[str, RequestHandler] = {"HELLO": self._hello, "PING": lambda c, r: _response(200)}
        event: RequestHandler = self._event
        for method in EVENT_METHODS:
            self.handlers[method] = event
        #: The handler of C{MESSAGE} requests in L{handlers}, and the same
        #: for them decoded (L{messageReceived}): what link connections
        #: read without the parser while that handler answers C{MESSAGE}s.
        self.messageHandlers: tuple[RequestHandler, MessageHandler] = (event, self.messageReceived)
        #: Request method to its handler, for the requests a peer sends back
        #: on a connection this side opened (L{addBackMethod}).
        self.backHandlers: dict[str, RequestHandler] = {"PING": lambda c, r: _response(200)}

    def addMethod(self, method: str, handler: RequestHandler) -> None:
        """
        Answer requests of C{method} on every link connection with
        C{handler} (for example a proxied session's requests); it is called
        only on connections whose peer is known (after C{HELLO}).

        @raise ValueError: If the method already has a handler.
        """
        self._add(self.handlers, method, handler)

    def addBackMethod(self, method: str, handler: RequestHandler) -> None:
        """
        Answer requests of C{method} that the peer sends back on the
        connections this side opened (C{docs/protocol.md} section 9.7: a
        proxied session's callbacks), once their C{HELLO} is answered.
        Nothing else is taken on those connections.

        @raise ValueError: If the method already has a handler.
        """
        self._add(self.backHandlers, method, handler)

    def _add(self, handlers: dict[str, RequestHandler], method: str, handler: RequestHandler) -> None:
        if method in handlers:
            raise ValueError(f"{method} already has a handler")

        def guarded(connection: LinkConnection, request: Request) -> Deferred[Response] | Response:
            if not connection.ready:
                return _response(401, "HELLO first")
            return handler(connection, request)

        handlers[method] = guarded

    def helloHeaders(self) -> Headers:
        """
        @return: What this side says of itself in a C{HELLO} and its answer.
        """
        return Headers((("Server", self._config.homeServerName), ("Domain", self._config.domain)))

    def _hello(self, connection: LinkConnection, request: Request) -> Response:
        if connection.ready:
            return _response(400, "HELLO already done")
        peer = identifyPeer(self._config, request.headers.get("Domain"), request.headers.get("Server"), connection.peerCertificate())
        if isinstance(peer, str):
            log.warn("Link from {address} refused: {reason}", address=connection.peerAddress(), reason=peer)
            self._clock.callLater(0, connection.close)
            return _response(403, "unknown link peer")
        connection.markReady(peer)
        log.info("Link from {peer} ({address}) accepted", peer=peer, address=connection.peerAddress())
        return _response(200, headers=self.helloHeaders().items)

    # -- events ------------------------------------------------------------------

    def _event(self, connection: LinkConnection, request: Request) -> Deferred[Response] | Response:
        peer = self._admitted(connection)
        if isinstance(peer, Response):
            return peer
        try:
            incoming = decodeRequest(request)
        except LinkCodecError as e:
            return self._undecodable(peer, request.method, e)
        # Admitted, and nothing changed since (messageReceived's first test
        # passes again): the rest is messageReceived's.
        return self.messageReceived(connection, incoming)

    def _admitted(self, connection: LinkConnection) -> LinkPeer | Response:
        """
        @return: The peer an event request on C{connection} comes from; or
            its answer when it is refused before it is read: C{401} before
            C{HELLO}, C{503} past C{max_queue} requests in progress.
        """
        peer = connection.peer
        if not connection.ready or peer is None:
            return _response(401, "HELLO first")
        limit = self._config.links.maxQueue
        if connection.inProgress >= limit:
            self._queueFull(peer, limit)
            return _response(503, f"{limit} requests in progress")
        return peer

    def _undecodable(self, peer: LinkPeer, method: str, e: LinkCodecError) -> Response:
        log.warn("Link from {peer}: {method} refused ({code}): {detail}", peer=peer, method=method, code=e.code, detail=e.detail)
        return _response(e.code, e.detail)

    def messageReceived(self, connection: LinkConnection, decoded: LinkRequest | LinkCodecError) -> Deferred[Response] | Response:
        """
        Answer a C{MESSAGE} read without the parser (a L{MessageHandler}
        for L{LinkConnection}), given as L{decodeRequest} decoded it: as
        the C{MESSAGE} handler answers the request. Also the rest of
        L{_event} for every event request, once it is decoded.
        """
        peer = connection.peer
        if not connection.ready or peer is None or connection.inProgress >= self._config.links.maxQueue:
            # Refused before it is read (_admitted says how).
            refused = self._admitted(connection)
            assert isinstance(refused, Response)
            return refused
        if isinstance(decoded, LinkCodecError):
            return self._undecodable(peer, "MESSAGE", decoded)
        incoming = decoded
        if self.ownVia in incoming.via:
            log.warn("Link from {peer}: loop, this server is in Via {via}", peer=peer, via=", ".join(incoming.via))
            return encodeResponse(LoopDetected("loop: this server is already on the path"))
        now = self._clock.seconds()
        answers = self._answers
        if now >= self._forgetFrom:
            self._forgetExpired(now)
        routingId = incoming.routingId
        # Those waiting for this request's answer (its duplicates); the list
        # stands for the request in the duplicate check while it is handled
        # (its entry, made in the same look-up as the check's).
        waiters: list[Deferred[Response]] = []
        expires = now + self._config.links.duplicateWindow
        entry: _Answer = (expires, waiters)
        previous = answers.setdefault(routingId, entry)
        if previous is not entry:
            log.info("Link from {peer}: duplicate {routingId} answered as the first", peer=peer, routingId=routingId)
            earlier = previous[1]
            if isinstance(earlier, list):
                # The first is being handled: its answer, once there.
                waiting: Deferred[Response] = Deferred()
                earlier.append(waiting)
                return waiting
            return earlier
        if len(answers) > self._maxRemembered:
            while len(answers) > self._maxRemembered:
                answers.popitem(last=False)
        connection.inProgress += 1
        event = incoming.event
        # The recipient's home, when asked here for the router (atHome then
        # the router's method that takes it).
        home: str | None | _Unknown = UNKNOWN
        atHome = None
        try:
            sender = event.sender
            name = peer.name
            directory = self._directory
            if name is not None and directory is not None and sender.domain == self._config.domain:
                atHome = self._deliverAtHome
                if atHome is not None:
                    # The recipient's home with the sender's: one call, and
                    # the duplicate check's clock reading.
                    known, home = directory.cachedHomesAt(now, sender, event.recipient)
                else:
                    known = directory.cachedHomeOf(sender)
                # What _originationRefused answers, without its call, for
                # the usual events: from a user of this domain whom the
                # directory (as remembered) homes on the peer, a home
                # server; a message from one it homes anywhere, from a
                # router.
                if known == name and "home" in peer.roles:
                    check = None
                elif known is not UNKNOWN and known is not None and type(event) is Message and "router" in peer.roles:
                    check = None
                else:
                    check = self._originationRefused(peer, event)
            else:
                check = self._originationRefused(peer, event)
        except Exception:
            return self._checkFailed(Failure(), connection, peer, event, routingId, expires, waiters)
        if check is not None:
            return self._checkedLater(check, connection, peer, incoming, expires, waiters)
        # The hot path: accepted at once (the sender's home remembered) and,
        # mostly, delivered at once (a session of this process): answered
        # with no Deferred and no closure. Any other outcome goes the
        # general way (_checked), with the same answers and logs.
        traces = self._traces
        # hopKey, without its call for a message.
        key = event.routingId if type(event) is Message else hopKey(event)
        trace = (incoming.via, incoming.maxHops)
        if traces.current is not None or traces._traces:
            # Another delivery from a link under way (this one within it,
            # or one whose outcome is still to come): its trace kept the
            # general way.
            return self._deliverTraced(connection, peer, incoming, key, trace, expires, waiters)
        # The only one: its trace kept in place (LinkTraces.current) while
        # the router delivers it, given an entry only if its outcome is
        # still to come.
        failed: DeliveryError | Failure | None = None
        traces.current = (key, trace)
        try:
            if atHome is None:
                result = self._deliverAtOnce(event)
            else:
                result = atHome(event, home)
        except DeliveryError as e:
            failed = e
        except Exception:
            failed = Failure()
        finally:
            traces.current = None
        if failed is None:
            if result is _STATUS_DELIVERED:
                # _finish, without its call, for an answer to repeat: the
                # duplicate check keeps it, the place in progress is freed,
                # the duplicates get it.
                if answers.get(routingId) is entry:
                    answers[routingId] = (expires, DELIVERED)
                connection.inProgress -= 1
                for waiting in waiters:
                    waiting.callback(DELIVERED)
                return DELIVERED
            traces.pushFirst(key, trace)
            return self._checkedLater(None, connection, peer, incoming, expires, waiters, (key, trace, result))
        if isinstance(failed, DeliveryError):
            return self._finish(connection, routingId, expires, waiters, encodeResponse(failed))
        return self._deliveryFailed(failed, connection, peer, event, routingId, expires, waiters)

    def _deliverTraced(
        self,
        connection: LinkConnection,
        peer: LinkPeer,
        incoming: LinkRequest,
        key: object,
        trace: _Trace,
        expires: float,
        waiters: list[Deferred[Response]],
    ) -> Deferred[Response] | Response:
        """
        L{messageReceived}'s delivery of an accepted event while another from a
        link is under way: its trace an entry of L{LinkTraces} from the
        start.
        """
        routingId = incoming.routingId
        event = incoming.event
        traces = self._traces
        traces.push(key, trace[0], trace[1])
        try:
            result = self._deliverAtOnce(event)
        except DeliveryError as e:
            traces.pop(key, trace)
            return self._finish(connection, routingId, expires, waiters, encodeResponse(e))
        except Exception:
            traces.pop(key, trace)
            return self._deliveryFailed(Failure(), connection, peer, event, routingId, expires, waiters)
        if result is _STATUS_DELIVERED:
            traces.pop(key, trace)
            return self._finish(connection, routingId, expires, waiters, DELIVERED)
        return self._checkedLater(None, connection, peer, incoming, expires, waiters, (key, trace, result))

    def _finish(
        self, connection: LinkConnection, routingId: str, expires: float, waiters: list[Deferred[Response]], response: Response
    ) -> Response:
        """
        A request is answered: the duplicate check keeps its answer (or
        forgets it, when nothing was delivered and a retry may succeed),
        its place in progress is freed, its duplicates get the answer.
        """
        answer = self._answers.get(routingId)
        if answer is not None and answer[1] is waiters:
            if not 200 <= response.code < 500 or 300 <= response.code < 400:
                # Nothing was delivered and a retry may succeed: not an
                # answer to repeat.
                del self._answers[routingId]
            else:
                # The answer itself from now on.
                self._answers[routingId] = (expires, response)
        connection.inProgress -= 1
        for waiting in waiters:
            waiting.callback(response)
        return response

    def _checkFailed(
        self,
        f: Failure,
        connection: LinkConnection,
        peer: LinkPeer,
        event: Event,
        routingId: str,
        expires: float,
        waiters: list[Deferred[Response]],
    ) -> Response:
        log.failure("Link from {peer}: checking who may send {event!r} failed", f, peer=peer, event=event)
        return self._finish(connection, routingId, expires, waiters, encodeResponse(ServiceUnavailable("cannot check the sender now")))

    def _deliveryFailed(
        self,
        f: Failure,
        connection: LinkConnection,
        peer: LinkPeer,
        event: Event,
        routingId: str,
        expires: float,
        waiters: list[Deferred[Response]],
    ) -> Response:
        if isinstance(f.value, DeliveryError):
            return self._finish(connection, routingId, expires, waiters, encodeResponse(f.value))
        log.failure("Delivering {event!r} from {peer} failed", f, peer=peer, event=event)
        return self._finish(connection, routingId, expires, waiters, encodeResponse(ServerError("internal error")))

    def _checkedLater(
        self,
        check: Deferred[str | None] | str | None,
        connection: LinkConnection,
        peer: LinkPeer,
        incoming: LinkRequest,
        expires: float,
        waiters: list[Deferred[Response]],
        started: tuple[object, _Trace, DeliveryStatus | Deferred[DeliveryStatus]] | None = None,
    ) -> Deferred[Response] | Response:
        """
        The rest of L{_event} when its hot path does not apply: the
        origination check answered later (C{check} a L{Deferred}) or
        refused (a reason); or, with C{started}, accepted at once and
        delivered by the router with an outcome other than delivered at
        once (its trace's key, the trace and that outcome).
        """
        routingId = incoming.routingId
        event = incoming.event
        finished: list[Response] = []

        def finish(response: Response) -> Response:
            if finished:
                return finished[0]
            finished.append(response)
            return self._finish(connection, routingId, expires, waiters, response)

        def checkFailed(f: Failure) -> Response:
            if finished:
                return finished[0]
            finished.append(self._checkFailed(f, connection, peer, event, routingId, expires, waiters))
            return finished[0]

        def outcome(key: object, trace: _Trace, result: DeliveryStatus | Deferred[DeliveryStatus]) -> Deferred[Response] | Response:
            def delivered(status: DeliveryStatus) -> Response:
                self._traces.pop(key, trace)
                return finish(encodeResponse(status))

            def deliveryFailed(f: Failure) -> Response:
                self._traces.pop(key, trace)
                if finished:
                    return finished[0]
                finished.append(self._deliveryFailed(f, connection, peer, event, routingId, expires, waiters))
                return finished[0]

            if isinstance(result, Deferred):
                return result.addCallbacks(delivered, deliveryFailed)
            # Another status, not a Deferred (which no failed delivery
            # is): not an answer a response can carry (encodeResponse
            # raises).
            self._traces.pop(key, trace)
            return finish(encodeResponse(result))

        def checked(refusal: str | None) -> Deferred[Response] | Response:
            if refusal is not None:
                log.warn("Link from {peer}: {event!r} refused (403): {reason}", peer=peer, event=event, reason=refusal)
                return finish(_response(403, "not originated by this peer"))
            key = hopKey(event)
            trace = self._traces.push(key, incoming.via, incoming.maxHops)
            try:
                result = self._deliverAtOnce(event)
            except DeliveryError as e:
                self._traces.pop(key, trace)
                return finish(encodeResponse(e))
            except Exception:
                self._traces.pop(key, trace)
                f = Failure()
                if finished:
                    return finished[0]
                finished.append(self._deliveryFailed(f, connection, peer, event, routingId, expires, waiters))
                return finished[0]
            if result is _STATUS_DELIVERED:
                self._traces.pop(key, trace)
                return finish(DELIVERED)
            return outcome(key, trace, result)

        def unexpected(f: Failure) -> Response:
            log.failure("Link from {peer}: handling {event!r} failed", f, peer=peer, event=event)
            return finish(_response(500, "internal error"))

        try:
            if started is not None:
                answer = outcome(*started)
            elif not isinstance(check, Deferred):
                answer = checked(check)
            else:
                return check.addCallbacks(checked, checkFailed).addErrback(unexpected)
        except Exception:
            return checkFailed(Failure())
        return answer.addErrback(unexpected) if isinstance(answer, Deferred) else answer

    def _queueFull(self, peer: LinkPeer, limit: int) -> None:
        """
        Count and log a request of C{peer} refused for C{max_queue}: the
        first at once, then one line every L{REFUSAL_LOG_INTERVAL} seconds
        counting the others (as the sending side logs its full queue), not a
        line per request.
        """
        self.metrics.limitHit("max_queue")
        key = str(peer)
        quiet = self._refusedQuiet.get(key)
        if quiet is not None:
            self._refusedQuiet[key] = quiet + 1
            return
        log.warn("Link from {peer}: {limit} requests in progress already (max_queue); 503", peer=peer, limit=limit)
        self._refusedQuiet[key] = 0
        self._clock.callLater(REFUSAL_LOG_INTERVAL, self._queueFullCount, key, limit)

    def _queueFullCount(self, key: str, limit: int) -> None:
        quiet = self._refusedQuiet.pop(key, 0)
        if not quiet:
            # None since the last line: the next is logged at once.
            return
        log.warn(
            "Link from {peer}: {n} more requests refused in {seconds:g} s (max_queue {limit}); 503",
            peer=key,
            n=quiet,
            seconds=REFUSAL_LOG_INTERVAL,
            limit=limit,
        )
        self._refusedQuiet[key] = 0
        self._clock.callLater(REFUSAL_LOG_INTERVAL, self._queueFullCount, key, limit)

    def _forgetExpired(self, now: float) -> None:
        """
        Forget the answers whose time is over at C{now}, and note when the
        first left expires (L{messageReceived} calls this again then).
        """
        answers = self._answers
        while answers:
            routingId = next(iter(answers))
            expires = answers[routingId][0]
            if expires > now:
                self._forgetFrom = expires
                return
            del answers[routingId]
        # Nothing left: asked again at the next request.
        self._forgetFrom = -math.inf

    def _originationRefused(self, peer: LinkPeer, event: Event) -> Deferred[str | None] | str | None:
        """
        @return: Why C{peer} may not send C{event}, or C{None}: a home
            server only events from users the directory homes on it, a
            router only events from users of other domains and messages
            from users the directory homes on a server of this domain (an
            account, enabled: its proxied sessions' messages,
            C{docs/protocol.md} section 9.7), a peer domain's router only
            events from users of its domain. A L{Deferred} of that when the
            directory is asked (an event from this domain).
        """
        sender: Address = event.sender
        if peer.name is None:
            if sender.domain == peer.domain:
                return None
            return f"a router of {peer.domain} sent an event from {sender.domain}"
        if sender.domain != self._config.domain:
            if "router" in peer.roles:
                return None
            return f"server {peer.name} is no router and sent an event from {sender.domain}"
        name = peer.name
        judge: Callable[[str | None], str | None]
        if type(event) is Message and "router" in peer.roles:
            # A router authenticates the domain's users and proxies their
            # sessions: it is trusted with the messages of those it could
            # open a session for.
            def judge(home: str | None) -> str | None:
                if home is not None:
                    return None
                return f"{sender} has no account in the directory"

        elif "home" in peer.roles:

            def judge(home: str | None) -> str | None:
                if home == name:
                    return None
                return f"{sender} is not homed on {name}"

        else:
            return f"server {name} is no home server and sent an event other than a message from {sender.domain}"
        locator = self._locator
        # knownHome, without its call.
        known = locator.cachedHomeOf(sender) if type(locator) is DirectoryHomeLocator else UNKNOWN
        if known is not UNKNOWN:
            # Remembered: answered at once, no Deferred.
            return judge(known)
        return locator.homeOf(sender).addCallback(judge)


class _Refused(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class LinkServerFactory(Factory):
    """
    Builds the accepting side of link connections: at most
    C{links.maxIncoming} at once; on a plaintext listener, only connections
    between loopback addresses.

    @ivar metrics: Counts the connections refused for C{max_incoming}.
    """

    metrics: IMetrics = NO_METRICS

    def __init__(self, receiver: LinkReceiver, config: LinksConfig, clock: IReactorTime, plaintext: bool) -> None:
        self.receiver = receiver
        self.config = config
        self.clock = clock
        self.plaintext = plaintext
        self.connections: set[LinkConnection] = set()
        self._limits = linkLimits(config)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if len(self.connections) >= self.config.maxIncoming:
            self.metrics.limitHit("max_incoming")
            log.warn("Link from {address} refused: {limit} link connections already (max_incoming)", address=addr, limit=self.config.maxIncoming)
            return _Refused()
        if self.plaintext and not isLoopback(addr):
            log.warn("Plaintext link from {address} refused: not a loopback address", address=addr)
            return _Refused()
        connection = _AcceptedLink(
            self.receiver.handlers,
            self.clock,
            self.config.requestTimeout,
            limits=self._limits,
            onLost=self.connections.discard,
            onMessage=self.receiver.messageHandlers,
        )
        connection.loopbackOnly = self.plaintext
        self.connections.add(connection)
        return connection


class _AcceptedLink(LinkConnection):
    """
    The accepting side of a link connection; on a plaintext listener, the
    local end must be a loopback address too.
    """

    loopbackOnly = False

    def connectionMade(self) -> None:
        super().connectionMade()
        host = self.transport.getHost() if self.transport is not None else None
        if self.loopbackOnly and not isLoopback(host):
            log.warn("Plaintext link to {address} refused: not a loopback address", address=host)
            self.abort()


@implementer(ILinkRoutes)
class LinkRoutes(MultiService):
    """
    L{ILinkRoutes}: one L{LinkClient} per peer, made when first asked for
    and kept (its service runs under this one).

    @ivar resolver: The DNS resolver for C{_imgw._tcp} SRV records
        (L{imgateway.net.srv.systemResolver} in a deployment), or a
        callable that makes it, called when the first SRV look-up is needed
        (the system's resolver re-reads its configuration every minute
        once made); C{None}: no SRV look-ups.
    @ivar metrics: Given to every L{LinkClient} made.
    """

    metrics: IMetrics = NO_METRICS

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        tls: LinkTLS | None,
        receiver: LinkReceiver,
        traces: LinkTraces,
        resolver: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._tls = tls
        self._receiver = receiver
        self._traces = traces
        self.resolver = resolver
        self._clients: dict[str, LinkClient] = {}
        #: The links to the domain's servers by server name (toServer's:
        #: in _clients as "server " and the name).
        self._servers: dict[str, LinkClient] = {}
        self._noRoute: dict[str, float] = {}

    def _endpoint(self, host: str, port: int, tlsName: str, what: str) -> IStreamClientEndpoint | None:
        endpoint = HostnameEndpoint(self._reactor, host, port)
        if self._tls is not None:
            return wrapClientTLS(self._tls.clientOptions(tlsName), endpoint)
        if self._config.links.allowPlaintextLoopback and _isLoopbackHost(host):
            return endpoint
        log.error("No link to {what} at {host}:{port}: no [links] certificate, and plaintext is only allowed to loopback addresses", what=what, host=host, port=port)
        return None

    def _client(self, key: str, name: str, endpoint: IStreamClientEndpoint) -> LinkClient:
        client = LinkClient(
            name,
            endpoint,
            self._config.links,
            self._clock,
            self._receiver.helloHeaders(),
            self._traces,
            self._receiver.ownVia,
            handlers=self._receiver.backHandlers,
        )
        client.metrics = self.metrics
        self._clients[key] = client
        client.setServiceParent(self)
        return client

    def linkInfo(self) -> list[LinkInfo]:
        """
        The state of the links to the configured servers and static routes
        (one not made yet is idle: links open on first use) and of those
        found through DNS since (never required), by key
        (L{imgateway.core.linkinfo.LinkInfoSource}).
        """
        config = self._config
        configured = [f"server {s.name}" for s in config.servers.values() if s.link is not None and s.name != config.homeServerName]
        configured += [f"domain {domain}" for domain in config.routes]
        found = []
        for key in sorted(set(configured) | set(self._clients)):
            client = self._clients.get(key)
            if client is None:
                kind, _, name = key.partition(" ")
                found.append(LinkInfo(kind, name, False, "idle: not used yet", required=False, connects=0))
            else:
                found.extend(attrs.evolve(info, required=key in configured) for info in client.linkInfo())
        return found

    @property
    def clients(self) -> Mapping[str, LinkClient]:
        """
        The links made so far, by key (C{"server hs2"}, C{"domain
        partner.example"}).
        """
        return self._clients

    def toServer(self, name: str) -> IRoute:
        # The servers' links by name too (one is asked for with every
        # message sent to another server): no key to format.
        client = self._servers.get(name)
        if client is not None:
            return client
        server = self._config.servers[name]
        if server.link is None or name == self._config.homeServerName:
            return _Unreachable(f"server {name} takes no links")
        tlsName = _tlsNameOf(server) or server.link.host
        endpoint = self._endpoint(server.link.host, server.link.port, tlsName, f"server {name}")
        if endpoint is None:
            return _Unreachable(f"no link to server {name}")
        client = self._servers[name] = self._client(f"server {name}", f"server {name}", endpoint)
        return client

    def toDomain(self, domain: str) -> Deferred[IRoute | None]:
        key = f"domain {domain}"
        client = self._clients.get(key)
        if client is not None:
            return succeed(client)
        if domain == self._config.domain:
            return succeed(None)
        static = self._config.routes.get(domain)
        if static is not None:
            endpoint = self._endpoint(static.host, static.port, domain, key)
            return succeed(self._client(key, key, endpoint) if endpoint is not None else _Unreachable(f"no link to {domain}"))
        if self.resolver is None or self._noRoute.get(domain, 0.0) > self._clock.seconds():
            return succeed(None)
        if callable(self.resolver) and not hasattr(self.resolver, "lookupService"):
            self.resolver = self.resolver()
        return Deferred.fromCoroutine(self._bySRV(domain))

    async def _bySRV(self, domain: str) -> IRoute | None:
        from imgateway.net.srv import SRVClientEndpoint

        srv = SRVClientEndpoint(self._reactor, self.resolver, domain, SRV_SERVICE, fallbackPort=None)
        try:
            targets = await srv.targets()
        except DNSLookupError:
            targets = []
        if not targets:
            self._noRoute[domain] = self._clock.seconds() + self._config.links.noRouteSeconds
            return None
        key = f"domain {domain}"
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        if self._tls is None:
            log.error("No link to domain {domain}: no [links] certificate", domain=domain)
            return _Unreachable(f"no link to {domain}")
        return self._client(key, key, wrapClientTLS(self._tls.clientOptions(domain), srv))


@implementer(IRoute)
class _Unreachable:
    """
    A route that cannot be used (misconfigured); every delivery gets C{503}.
    """

    def __init__(self, why: str) -> None:
        self.why = why

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        return fail(ServiceUnavailable(self.why))


@frozen
class LinkService:
    """
    What L{makeLinkService} builds.

    @ivar routes: The L{ILinkRoutes} of this process.
    @ivar receiver: The receiving side.
    @ivar acceptor: The factory of the incoming link connections (which
        knows them).
    @ivar service: The listeners and the links, to start and stop.
    """

    routes: LinkRoutes
    receiver: LinkReceiver
    acceptor: LinkServerFactory
    service: MultiService


def loadLinkTLS(links: LinksConfig) -> LinkTLS | None:
    """
    Read C{[links]}' certificate, key and trust roots.

    @return: C{None} when no certificate is configured.
    @raise ConfigError: If a file is unusable, or trust roots are missing.
    """
    from imgateway.net.certificates import CertificateProblem, loadTLSFiles, loadTrustRootFile

    if links.certificate is None or links.privateKey is None:
        return None
    if links.trustRoots is None:
        raise ConfigError("[links] certificate needs trust_roots: the certificates that sign the other servers'")
    try:
        return LinkTLS(loadTLSFiles(links.certificate, links.privateKey), tuple(loadTrustRootFile(links.trustRoots)))
    except CertificateProblem as e:
        raise ConfigError(f"[links]: {e}") from None


def makeLinkService(
    config: GatewayConfig,
    reactor: Any,
    router: IRouter,
    locator: IHomeLocator,
    resolver: Any = None,
    tls: LinkTLS | None = None,
    clock: IReactorTime | None = None,
) -> LinkService:
    """
    The links of a process: its listeners (C{[links] listen}) and its
    routes to the other servers and peer domains.

    @param resolver: See L{LinkRoutes.resolver}.
    @param tls: The link TLS; read from C{config.links} when C{None}.
    @raise ConfigError: If links are configured without a certificate and
        plaintext is not allowed on loopback.
    """
    clock = clock if clock is not None else reactor
    links = config.links
    if tls is None:
        tls = loadLinkTLS(links)
    if tls is None and not links.allowPlaintextLoopback:
        raise ConfigError("[links]: certificate and private_key are required (or allow_plaintext_loopback, for loopback links only)")
    traces = LinkTraces()
    receiver = LinkReceiver(config, router, locator, clock, traces)
    top = MultiService()
    routes = LinkRoutes(config, reactor, tls, receiver, traces, resolver=resolver, clock=clock)
    routes.setServiceParent(top)
    acceptor = LinkServerFactory(receiver, links, clock, plaintext=tls is None)
    factory: Any = acceptor
    if tls is not None:
        factory = TLSMemoryBIOFactory(tls.serverOptions(), False, factory)
    _IncomingLinks(acceptor).setServiceParent(top)
    for description in links.listen:
        ListenerService(reactor, description, factory, "Server links").setServiceParent(top)
    return LinkService(routes, receiver, acceptor, top)


class _IncomingLinks(Service):
    """
    Closes the incoming link connections when the links stop (after the
    listeners, which stop first: they were added after it).
    """

    def __init__(self, factory: LinkServerFactory) -> None:
        self._factory = factory

    def linkInfo(self) -> list[LinkInfo]:
        """
        The incoming link connections, for the operator's console
        (L{imgateway.core.linkinfo.LinkInfoSource}).
        """
        count = len(self._factory.connections)
        return [LinkInfo("server-incoming", "all", count > 0, f"{count} connection(s)", required=False)]

    def stopService(self) -> None:
        super().stopService()
        for connection in list(self._factory.connections):
            connection.close()
