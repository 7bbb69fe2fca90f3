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
before and after authentication through L{HardenedXmlStream}. Against
hostile peers, incoming streams are admitted by the gateway's per-source
L{ConnectionLimiter} (shared with every face) and C{maxUnauthenticated};
the negotiation timer runs from the TCP accept (a stalled TLS handshake is
dropped on time, L{imgateway.adapters.base.TLSHandshakeMixin}); dialback verifications, which make
us open connections for unauthenticated peers, are capped per stream, per
source and in all, end with the stream that asked, and leave no link
behind that has nothing to deliver.

This module is the link management (queues, backoff, which streams exist);
the streams and their negotiation are L{s2s_stream}'s, dialback keys
L{s2s_auth}'s, certificate checks and the SRV endpoint L{imgateway.net}'s.
Its public names are re-exported here.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from imgateway.adapters.base import ListenerService
from imgateway.adapters.xmpp.jid import InvalidJID, parseJID
from imgateway.adapters.xmpp.s2s_auth import (
    ALPN_PROTOCOLS,
    NS_DIALBACK,
    NS_DIALBACK_FEATURES,
    DialbackKeys,
    dialbackKey,
)
from imgateway.adapters.xmpp.s2s_stream import (
    NS_SERVER,
    S2S_LIMITS,
    Closing,
    DialbackRefused,
    IncomingFactory,
    IncomingStream,
    OutgoingFactory,
    OutgoingStream,
    S2SConfig,
    bareDomain,
)
from imgateway.core.errors import DeliveryStatus, NoRoute
from imgateway.core.throttle import ConnectionLimiter, LimitsConfig
from imgateway.net.certificates import CertificateProblem, loadTrustRootFile
from imgateway.net.endpoints import clientEndpointFromString
from imgateway.net.srv import SRVClientEndpoint, systemResolver
from imgateway.net.tls import ServerTLSOptions, TLSFiles, trustRoot, validFor

__all__ = [
    "DialbackRefused",
    "NS_DIALBACK",
    "NS_DIALBACK_FEATURES",
    "NS_SERVER",
    "S2SConfig",
    "S2SError",
    "S2SManager",
    "S2S_LIMITS",
    "dialbackKey",
]


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


@attrs.define
class _Verify:
    """
    A C{db:verify} we send to a domain's authoritative server.
    """

    streamID: str
    key: str = attrs.field(repr=False)
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
        self.stream: OutgoingStream | None = None
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

        def cancel(d: Deferred[bool]) -> None:
            # The incoming stream that asked is gone.
            v = self.verifies.get(streamID)
            if v is not None and v.result is d:
                del self.verifies[streamID]
                if v.timer is not None and v.timer.active():
                    v.timer.cancel()
                self._stopIfUnused()

        v = _Verify(streamID, key, Deferred(cancel))
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
        stream.close(Closing("service-unavailable", "shutting down"))
        return stream.whenLost()

    def _stopIfUnused(self) -> None:
        """
        Nothing waits for a link that is not connected (its last dialback
        verification was dropped or timed out): stop connecting, and
        forget it. A link exists for what it has to deliver; one kept
        retrying for nothing would let unauthenticated peers, who make us
        open links to verify their keys, hold links and connections.
        """
        if self._waiting() or self.stream is not None or self.failure is not None:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        connecting, self._connecting = self._connecting, None
        self.manager._forgetLink(self)
        if connecting is not None:
            connecting.cancel()

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
            self._failed(Closing(e.condition, e.text, permanent=True))
            return
        self._timedOut = False
        d = endpoint.connect(OutgoingFactory(self))
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
        if self._connecting is None:
            return  # abandoned (_stopIfUnused)
        self._connecting = None
        if self.manager.stopped:
            return
        self.attempts += 1
        if self._timedOut or f.check(DeferredTimeout, ConnectTimeout):
            why = Closing("remote-server-timeout", f"no connection within {self.config.connectTimeout:g} s")
        elif f.check(DNSLookupError):
            why = Closing("remote-server-not-found", f"DNS: {f.getErrorMessage()}")
        else:
            why = Closing("remote-server-not-found", f"cannot connect: {f.getErrorMessage()}")
        self._failed(why)

    def streamConnected(self, stream: OutgoingStream) -> None:
        self.stream = stream

    def streamUp(self, stream: OutgoingStream) -> None:
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
        self.readyForVerify(stream)
        self.manager._linkUp(self.domain)
        for _, d in queued:
            d.callback(None)

    def streamLost(self, stream: OutgoingStream, why: Closing) -> None:
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

    def _failed(self, why: Closing) -> None:
        if not self._waiting():
            # Nothing to deliver: no retry, no cooldown.
            self.log.info("s2s link to {domain} failed with nothing waiting: {reason}", domain=self.domain, reason=why.text)
            self.attempts = 0
            self.manager._forgetLink(self)
            return
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

    def _giveUp(self, why: Closing) -> None:
        failure = S2SError(why.condition, f"cannot reach {self.domain}: {why.text}")
        self.log.warn(
            "s2s link to {domain} failed: {reason} ({count} stanzas failed)", domain=self.domain, reason=why.text, count=len(self.queue)
        )
        self.attempts = 0
        # Settle our state before firing anything: a callback may send
        # again, or stop the manager. Only stanzas earn a cooldown: a link
        # that only had dialback verifications to make (asked for by
        # peers not authenticated yet) is forgotten at once, so that they
        # cannot fill maxOutgoingLinks with links to dead domains.
        if self.config.giveUpCooldown > 0 and self.queue:
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

    def readyForVerify(self, stream: OutgoingStream) -> None:
        for v in list(self.verifies.values()):
            if not v.sent:
                self._sendVerify(stream, v)

    def _sendVerify(self, stream: OutgoingStream, v: _Verify) -> None:
        element = domish.Element((NS_DIALBACK, "verify"))
        element["from"] = self.manager.localDomain
        element["to"] = self.domain
        element["id"] = v.streamID
        element.addContent(v.key)
        stream.send(element)
        v.sent = True

    def verifyAnswered(self, streamID: str, valid: bool) -> None:
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
            self._stopIfUnused()
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
    @ivar unauthenticated: Incoming streams that have not authenticated a
        domain yet.
    @ivar connectionLimiter: The per-source limits incoming streams are
        admitted by.
    @ivar pendingVerifications: Dialback keys being verified for incoming
        streams.
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
        connectionLimiter: ConnectionLimiter | None = None,
    ) -> None:
        """
        @param reactor: Connects and listens (and is the clock unless
            C{clock} is given).
        @param localDomain: Our domain.
        @param tls: Our certificate and key, presented to peers both ways.
        @param resolver: The L{twisted.names} resolver for SRV and address
            lookups; by default the system's, made when first needed.
        @param secret: Keys our dialback keys (XEP-0185); random by default.
        @param connectionLimiter: The per-source limits shared with the
            gateway's other faces (L{IGateway.connectionLimiter}); by
            default, the manager's own with the default limits.
        @raise ValueError: If the configuration cannot work.
        """
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.localDomain = bareDomain(localDomain)
        self.config = config
        if not config.verifyCertificates and not config.allowDialback:
            raise ValueError("with verifyCertificates and allowDialback both off, no peer could authenticate")
        if config.requireTLS and tls is None and config.listen:
            raise ValueError("requireTLS needs a certificate to offer STARTTLS on the s2s listeners")
        self.resolver = resolver
        self.dialback = DialbackKeys(secret if secret is not None else os.urandom(32), self.localDomain)
        self.routes = {bareDomain(domain): endpoint for domain, endpoint in config.routes.items()}
        self.stanzaReceived: Callable[[str, domish.Element], None] = _unhandled
        self.linkEstablished: Callable[[str], None] = lambda domain: None
        self.linkLost: Callable[[str], None] = lambda domain: None
        self.incoming: set[IncomingStream] = set()
        self.unauthenticated = 0
        self.connectionLimiter = connectionLimiter if connectionLimiter is not None else ConnectionLimiter(LimitsConfig(), self.clock)
        self.pendingVerifications = 0
        self._pendingBySource: dict[str, int] = {}
        self.links: dict[str, _OutgoingLink] = {}
        self.stopped = False
        self.factory = IncomingFactory(self)
        self._services: list[IService] | None = None

        trust = None
        if config.verifyCertificates:
            trust = trustRoot(loadTrustRootFile(config.trustRoots) if config.trustRoots is not None else None)
        own: dict[str, Any] = {}
        if tls is not None:
            own = {"privateKey": tls.key, "certificate": tls.chain[0], "extraCertChain": list(tls.chain[1:])}
        self.ourCertificateValid = tls is not None and validFor(tls.chain[0], self.localDomain) is None
        if tls is not None and not self.ourCertificateValid:
            self.log.warn("s2s: our certificate is not valid for {domain}: peers will need dialback", domain=self.localDomain)
        trustArgs = {"trustRoot": trust} if trust is not None else {}
        self.clientTLS = CertificateOptions(**own, **trustArgs)
        self.serverTLS: CertificateOptions | None = None
        if tls is not None:
            self.serverTLS = ServerTLSOptions(**own, **trustArgs, acceptableProtocols=ALPN_PROTOCOLS)

    # -- the API -------------------------------------------------------------------

    def services(self) -> list[IService]:
        """
        @return: One listener service per C{listen} endpoint, for the caller
            to parent (start-up stops with one line if one cannot listen).
        """
        if self._services is None:
            self._services = [ListenerService(self.reactor, d, self.factory, "XMPP s2s") for d in self.config.listen]
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
            domain = bareDomain(domain)
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
            try:
                return clientEndpointFromString(self.reactor, route)
            except CertificateProblem as e:
                # Checked at start-up; a file may have gone since.
                raise S2SError("remote-server-not-found", f"the route to {domain} cannot be used: {e}") from None
        if not self.config.useDNS:
            raise S2SError("remote-server-not-found", f"no route to {domain} (DNS lookups are off)")
        if self.resolver is None:
            self.resolver = systemResolver(self.reactor)
        return SRVClientEndpoint(
            self.reactor, self.resolver, domain, "xmpp-server", fallbackPort=5269, timeout=self.config.connectTimeout
        )

    def dialbackKey(self, receiving: str, streamID: str) -> str:
        """
        See L{StreamOwner.dialbackKey}.
        """
        return self.dialback.key(receiving, streamID)

    def dialbackKeyValid(self, receiving: str, streamID: str, key: str) -> bool:
        """
        See L{StreamOwner.dialbackKeyValid}.
        """
        return self.dialback.valid(receiving, streamID, key)

    def verifyDialback(self, origin: str, streamID: str, key: str, source: str | None) -> Deferred[bool]:
        """
        See L{StreamOwner.verifyDialback}: at most C{maxPendingDialback}
        verifications are pending at once, and
        C{maxPendingDialbackPerAddress} for streams from one source.
        """
        c = self.config
        if self.pendingVerifications >= c.maxPendingDialback:
            return fail(DialbackRefused(f"{self.pendingVerifications} dialback verifications pending (s2s_max_pending_dialback)"))
        fromSource = self._pendingBySource.get(source, 0) if source is not None else 0
        if fromSource >= c.maxPendingDialbackPerAddress:
            return fail(
                DialbackRefused(f"{fromSource} dialback verifications pending for {source} (s2s_max_pending_dialback_per_address)")
            )
        link = self._link(origin)
        if link is None or self.stopped:
            return succeed(False)
        d = link.verify(streamID, key)
        if d.called:
            return d
        self.pendingVerifications += 1
        if source is not None:
            self._pendingBySource[source] = fromSource + 1

        def settled(result: object) -> object:
            self.pendingVerifications -= 1
            if source is not None:
                left = self._pendingBySource.pop(source, 1) - 1
                if left:
                    self._pendingBySource[source] = left
            return result

        return d.addBoth(settled)

    def stanzaArrived(self, domain: str, stanza: domish.Element) -> None:
        """
        See L{StreamOwner.stanzaArrived}.
        """
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
