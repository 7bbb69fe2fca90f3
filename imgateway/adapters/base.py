# -*- test-case-name: tests.test_native_server,tests.test_face_connections -*-
"""
What every face shares: listeners that stop start-up cleanly when they
cannot bind, the limits on connections that have not logged in yet
(L{FaceConnections}), a cap on what is queued for a peer that does not
read, and what a connection may do while its TLS handshake is pending. TLS
options, certificate checks and peer addresses are L{imgateway.net}'s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport, ITransport
from twisted.logger import Logger
from zope.interface import implementer

from imgateway.core.throttle import Admission, ConnectionLimiter
from imgateway.interfaces import IHealthCheck
from imgateway.net.addresses import sourceOf

__all__ = ["ConnectionSlot", "FaceConnections", "ListenerService", "SendQueueGuard", "TLSHandshakeMixin"]

log = Logger()


@implementer(IHealthCheck)
class ListenerService(StreamServerEndpointService):
    """
    Listens on one endpoint string for a face. If the endpoint cannot
    listen, start-up stops with one line naming it (exit status 1), not a
    traceback. Its health check (C{/healthz}) is up while it listens.

    @ivar description: The endpoint string.
    @ivar what: The face, for logs (C{"Native face"}, C{"XMPP c2s"}).
    @ivar port: The listening port, once it listens.
    """

    kind = "listener"

    def __init__(self, reactor: Any, description: str, factory: Any, what: str) -> None:
        super().__init__(serverFromString(reactor, description), factory)
        self.description = description
        self.what = what
        self.port: Any = None
        self._raiseSynchronously = True

    @property
    def subject(self) -> str:
        """
        The health check's name: the face and the endpoint string.
        """
        return f"{self.what} {self.description}"

    def check(self) -> str | None:
        """
        See L{IHealthCheck.check}.
        """
        return None if self.running and self.port is not None else "not listening"

    def _listening(self, port: Any) -> Any:
        self.port = port
        return port

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            message = f"imgateway: cannot listen on {self.description}: {e.socketError or e}"
            log.critical("{message}", message=message)
            sys.stderr.write(message + "\n")
            raise SystemExit(1) from None
        self._waitingForPort.addCallback(self._listening)  # type: ignore[union-attr]
        log.info("{what} listening on {endpoint}", what=self.what, endpoint=self.description)


class FaceConnections:
    """
    What a face's factory counts of its connections for the limits that
    hold until a connection logs in: the connections not logged in yet (the
    face's C{max_unauthenticated}), the open connections from one address
    (C{max_connections_per_address}, for a face that has it), the
    per-source limits every face shares (L{ConnectionLimiter}), and, for
    each connection admitted, the bytes it may send before logging in
    (C{pre_auth_bytes}: L{ConnectionSlot.beforeLogin}).

    The limits are given at each call, not kept: a face reads them from its
    configuration then, as it does every other.

    @ivar face: Names the face in the refusals logged (C{"native"}, C{"IRC"}).
    @ivar unauthenticated: Connections admitted and not logged in yet (nor
        timed out, nor closed).
    @ivar perSource: Open connections by source address, kept only when a
        per-address cap is given to L{admit}.
    """

    def __init__(self, face: str) -> None:
        self.face = face
        self.unauthenticated = 0
        self.perSource: dict[str, int] = {}

    def admit(
        self, peer: object, limiter: ConnectionLimiter, maxUnauthenticated: int, maxPerAddress: int | None = None
    ) -> ConnectionSlot:
        """
        Decide whether a new connection may stay; if it may, it counts as
        unauthenticated (and, with C{maxPerAddress}, as open from its
        source) until its slot says otherwise. A refusal for this face's own
        limits is logged through C{limiter}, as the per-source ones are.

        @param peer: The transport's C{getPeer()}.
        @param limiter: The gateway's L{ConnectionLimiter}.
        @param maxUnauthenticated: The face's C{max_unauthenticated}.
        @param maxPerAddress: The face's C{max_connections_per_address}, or
            C{None} for none.
        @return: The connection's slot; when C{refusal} is set, the face
            closes the connection at once, and nothing is counted.
        """
        source = sourceOf(peer) if maxPerAddress is not None else None
        if source is not None and maxPerAddress is not None and self.perSource.get(source, 0) >= maxPerAddress:
            limiter.refused(peer, self.face, f"{maxPerAddress} connections from one address (max_connections_per_address)")
            return ConnectionSlot(self, peer, limiter, "Too many connections from your address")
        if self.unauthenticated >= maxUnauthenticated:
            limiter.refused(peer, self.face, f"{maxUnauthenticated} connections waiting to log in (max_unauthenticated)")
            return ConnectionSlot(self, peer, limiter, "Too many unauthenticated connections")
        admission = limiter.admit(peer, self.face)
        if not admission.admitted:
            return ConnectionSlot(self, peer, limiter, admission.reason, admission.retryAfter)
        slot = ConnectionSlot(self, peer, limiter, admission=admission, source=source)
        if source is not None:
            self.perSource[source] = self.perSource.get(source, 0) + 1
        self.unauthenticated += 1
        return slot


class ConnectionSlot:
    """
    One connection's place in its face's L{FaceConnections}.

    @ivar refusal: C{None} when the connection was admitted, else what to
        tell the client (no secrets).
    @ivar retryAfter: When refused for its source's rate, seconds until it
        may connect again (a C{Retry-After}), else C{None}.
    @ivar preAuthBytes: Bytes received before login so far.
    """

    def __init__(
        self,
        owner: FaceConnections,
        peer: object,
        limiter: ConnectionLimiter,
        refusal: str | None = None,
        retryAfter: int | None = None,
        admission: Admission | None = None,
        source: str | None = None,
    ) -> None:
        self.refusal = refusal
        self.retryAfter = retryAfter
        self.preAuthBytes = 0
        self._owner = owner
        self._peer = peer
        self._limiter = limiter
        self._admission = admission
        self._counted = refusal is None
        self._source = source

    def loggedIn(self) -> None:
        """
        The connection logged in, or timed out before: it no longer counts
        as waiting to log in (for the face, and for its source's
        L{ConnectionLimiter} slots). Idempotent.
        """
        if self._counted:
            self._counted = False
            self._owner.unauthenticated -= 1
        if self._admission is not None:
            self._admission.release()

    @property
    def settled(self) -> bool:
        """
        Whether L{closed} would change nothing: the connection no longer
        counts as waiting to log in, its admission was released, and it is
        not counted by its source. A face may then let go of the slot (a
        logged-in connection need not keep it, its admission and its peer's
        address for as long as it lasts).
        """
        # Not counted any more: loggedIn ran (and released the admission),
        # or the slot was a refusal (no admission).
        return not self._counted and self._source is None

    def closed(self) -> None:
        """
        The connection closed: it no longer counts at all. Idempotent.
        """
        self.loggedIn()
        source, self._source = self._source, None
        if source is not None:
            perSource = self._owner.perSource
            count = perSource.get(source, 0) - 1
            if count > 0:
                perSource[source] = count
            else:
                perSource.pop(source, None)

    def beforeLogin(self, data: bytes, limit: int) -> tuple[bytes, bool]:
        """
        C{data} was received before login, under C{pre_auth_bytes} of
        C{limit}: the bytes within the budget are handled as usual, however
        the stream is cut; the first byte past it ends the connection.

        @return: The bytes of C{data} within the budget, and whether some
            were past it (the face then calls L{refusePreAuth} and closes).
        """
        room = limit - self.preAuthBytes
        over = len(data) > room
        if over:
            data = data[:room]
        self.preAuthBytes += len(data)
        return data, over

    def refusePreAuth(self, limit: int) -> None:
        """
        Log that more than C{limit} bytes (C{pre_auth_bytes}) came before
        login, as refusals are: a few lines for a flood.
        """
        self._limiter.refused(
            self._peer, self._owner.face, f"more than {limit} bytes received before login (pre_auth_bytes)"
        )


@implementer(IPushProducer)
class SendQueueGuard:
    """
    Caps what may pile up for a peer that does not read what it is sent.

    The guard registers itself as the transport's streaming producer. The
    transport asks it to pause when its own buffer is full (64 KiB for TCP);
    from then until the transport asks it to resume, every byte written
    counts but the largest single write (one frame or stanza: the answer to
    a request of the peer's own, such as a long contact list, may be larger
    than C{limit}), and past C{limit} bytes C{overflow} is called once (the
    face drops the connection: the peer is not reading, and what was queued
    for it would otherwise grow without bound). So what waits for a peer
    that does not read is at most the transport's buffer, one frame and
    C{limit} bytes.

    The guard stays registered until L{release}, and a transport with a
    producer registered does not close when asked to: Twisted's TLS
    transport (C{TLSMemoryBIOProtocol.loseConnection}) only starts its
    shutdown once the producer is unregistered, and a TCP transport whose
    producer is paused resumes it, instead of closing, when its buffer has
    drained. So the protocol that owns a guard calls L{release} before every
    C{transport.loseConnection()}: it closes through one method of its own
    that does both. The guard changes nothing on the transport but its
    producer.

    @ivar limit: Bytes that may be written while the transport is paused,
        besides the largest write.
    @ivar pending: Bytes written since the transport paused.
    @ivar largest: The largest single write since the transport paused.
    @ivar tripped: Whether C{overflow} was called.
    """

    # No instance dict: one per connection.
    __slots__ = ("limit", "pending", "largest", "paused", "tripped", "_overflow", "_transport", "_registered")

    def __init__(self, transport: ITransport, limit: int, overflow: Callable[[], None]) -> None:
        self.limit = limit
        self.pending = 0
        self.largest = 0
        self.paused = False
        self.tripped = False
        self._overflow = overflow
        self._transport: Any = transport
        self._registered = True
        transport.registerProducer(self, True)  # type: ignore[attr-defined]

    @property
    def registered(self) -> bool:
        """
        Whether the guard is still the transport's producer.
        """
        return self._registered

    def release(self) -> None:
        """
        Unregister from the transport (idempotent); writes are no longer
        counted. Call it before asking the transport to close.
        """
        if self._registered:
            self._registered = False
            self.paused = False
            self._transport.unregisterProducer()

    def pauseProducing(self) -> None:
        # Twisted calls this again on every write while its buffer is full:
        # only the first call of a pause starts the count.
        if not self.paused:
            self.paused = True
            self.pending = 0
            self.largest = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.pending = 0
        self.largest = 0

    def stopProducing(self) -> None:
        self.paused = False

    def dropPeer(self, logger: Logger, who: object) -> None:
        """
        What a face does once C{overflow} is called: log a warning naming
        the peer, let go of the transport and abort the connection (what is
        queued for a peer that does not read is thrown away).

        @param logger: The face's logger.
        @param who: Who is connected, for the log (an address, or
            C{"not logged in"}).
        """
        logger.warn(
            "Dropping {peer} ({who}): it does not read, and more than {limit} bytes are queued for it (max_send_queue_bytes)",
            peer=self._transport.getPeer(),
            who=who,
            limit=self.limit,
        )
        self.release()
        self._transport.abortConnection()

    def wrote(self, size: int) -> None:
        """
        C{size} bytes were just written to the transport.
        """
        if not self.paused or self.tripped or not self._registered:
            return
        self.pending += size
        self.largest = max(self.largest, size)
        if self.pending - self.largest > self.limit:
            self.tripped = True
            self._overflow()


@implementer(IHandshakeListener)
class TLSHandshakeMixin:
    """
    For a face's protocol: whether its connection's TLS handshake is
    pending, and how to close the connection while it is.

    A handshake is pending from the TCP accept on a C{tls:} listener, or
    from L{startTLS} (STARTTLS), until L{handshakeCompleted}. Nothing
    written meanwhile reaches the peer: a goodbye written then (a stream
    error, a C{BYE}) waits in the TLS layer until the handshake completes,
    which a hostile peer never lets happen, so the connection and the
    slots it holds would stay forever. So a face runs its login timer from
    the TCP accept, and drops (L{abortIfHandshakePending}) a connection
    that it must close while the handshake is pending.

    @ivar tlsStarted: Whether L{startTLS} was called.
    @ivar handshakeDone: Whether the handshake completed.
    """

    transport: Any
    tlsStarted = False
    handshakeDone = False

    def startTLS(self, options: Any) -> None:
        """
        Start TLS on the connection (STARTTLS): the handshake is pending
        from now on.

        @param options: The connection creator for the transport's
            C{startTLS}.
        """
        self.tlsStarted = True
        self.transport.startTLS(options)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake completed (L{IHandshakeListener}).
        """
        self.handshakeDone = True

    @property
    def handshakePending(self) -> bool:
        """
        Whether the connection is TLS and its handshake has not completed.
        """
        return (self.tlsStarted or ISSLTransport.providedBy(self.transport)) and not self.handshakeDone

    def abortIfHandshakePending(self) -> bool:
        """
        If the handshake is pending, abort the connection at once (its
        C{connectionLost} follows).

        @return: Whether it did: the caller must then write nothing.
        """
        if self.transport is None or not self.handshakePending:
            return False
        self.transport.abortConnection()
        return True
