# -*- test-case-name: tests.test_xmpp_component -*-
"""
XEP-0114 component mode: the gateway connects to an existing XMPP server's
component port as a subdomain of it (C{gw.xmpp.example}), authenticated by
a shared secret, and bridges that server's users to ours.

Our user C{alice@corp.example} appears on the XMPP server as
C{alice\\40corp.example@gw.xmpp.example} (XEP-0106 escaping,
L{escapeLocalpart}); the server's users keep their own JIDs
(C{romeo@xmpp.example}), and the domains the component reaches
(C{xmpp.example}) are routed to it (L{makeComponentService}). The
translation between stanzas and core events is
L{imgateway.adapters.xmpp.federation.XMPPRemoteRoute}'s.

The link runs on a L{HardenedXmlStream} (stanzas up to 512 KiB by default,
as Prosody allows components) under a L{ClientService} that reconnects with
exponential backoff; a session that ends before the handshake succeeds (a
wrong secret, a server that does not answer) counts as a failed attempt,
so a misconfigured link backs off instead of hammering the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from attrs import frozen
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import component, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT

from imgateway.adapters.xmpp.federation import COMPONENT_IDENTITY, Identity, RouteLimits, XMPPRemoteRoute
from imgateway.adapters.xmpp.jid import MAX_PART_BYTES, InvalidJID, addressOf, jidOf, parseJID
from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits
from imgateway.config import ConfigTable
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import ConfigError, InvalidAddress, NoRoute
from imgateway.core.linkinfo import LinkInfo
from imgateway.interfaces import IGateway
from imgateway.net.endpoints import clientEndpointFromString

__all__ = [
    "COMPONENT_LIMITS",
    "ComponentConfig",
    "ComponentJIDMapper",
    "ComponentLink",
    "ComponentService",
    "ComponentStream",
    "NS_COMPONENT",
    "escapeLocalpart",
    "makeComponentService",
    "parseComponentConfig",
    "parseComponents",
    "unescapeLocalpart",
]

#: The stanza namespace of XEP-0114 component streams.
NS_COMPONENT = component.NS_COMPONENT_ACCEPT

#: Stream limits of a component link: it carries the traffic of every user
#: of the server, so stanzas may be large (512 KiB, Prosody's cap for
#: components) and many.
COMPONENT_LIMITS = StreamLimits(stanzaBytes=512 * 1024, stanzasPerSecond=500.0, stanzaBurst=1000, maxQueuedStanzas=10000)

# -- XEP-0106 -----------------------------------------------------------------------

#: XEP-0106's table: character to escape sequence.
ESCAPES = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
    "\\": "\\5c",
}
_UNESCAPES = {code[1:]: char for char, code in ESCAPES.items()}


def escapeLocalpart(text: str) -> str:
    """
    Escape C{text} for use as a JID localpart (XEP-0106 section 4.2): each
    character of the table becomes its escape sequence, except a backslash
    that does not start something that reads as an escape sequence, which
    stays as it is (C{c:\\net} gives C{c\\3a\\net}, C{c:\\5commas} gives
    C{c\\3a\\5c5commas}).

    @raise ValueError: If C{text} is empty or starts or ends with a space
        (which XEP-0106 forbids).
    """
    if not text or text[0] == " " or text[-1] == " ":
        raise ValueError("a localpart to escape may not be empty nor start or end with a space")
    out = []
    for i, char in enumerate(text):
        if char == "\\" and text[i + 1 : i + 3] not in _UNESCAPES:
            out.append(char)
        else:
            out.append(ESCAPES.get(char, char))
    return "".join(out)


def unescapeLocalpart(text: str) -> str:
    """
    Undo L{escapeLocalpart} (XEP-0106 section 4.3): each escape sequence of
    the table becomes its character; any other backslash stays as it is.
    """
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 3] in _UNESCAPES:
            out.append(_UNESCAPES[text[i + 1 : i + 3]])
            i += 3
        else:
            out.append(char)
            i += 1
    return "".join(out)


class ComponentJIDMapper:
    """
    The L{imgateway.adapters.xmpp.federation.JIDMapper} of a component: our
    user C{alice@corp.example} is C{alice\\40corp.example@<component>};
    remote users are their own JIDs.

    @ivar domain: The component's domain.
    @ivar localDomains: The domains of our users (others cannot be reached
        through the component).
    """

    def __init__(self, domain: str, localDomains: Iterable[str]) -> None:
        self.domain = domain
        self.localDomains = frozenset(localDomains)

    def localJID(self, address: Address) -> JID:
        local = escapeLocalpart(str(address))
        if len(local.encode("utf-8")) > MAX_PART_BYTES:
            raise InvalidJID(f"{address} is too long for a JID localpart once escaped")
        return JID(tuple=(local, self.domain, None))

    def localAddress(self, jid: JID) -> Address:
        if jid.host != self.domain or not jid.user:
            raise InvalidJID(f"{jid.full()} is not a user of this component")
        try:
            address = Address.fromString(unescapeLocalpart(jid.user))
        except InvalidAddress as e:
            raise InvalidJID(str(e)) from None
        if address.domain not in self.localDomains:
            raise InvalidJID(f"{address} is not a user of this gateway")
        if self.localJID(address).user != jid.user:
            # Only the canonical form names a user (no aliases such as
            # "im\3aalice\40corp.example").
            raise InvalidJID(f"{jid.full()} is not the canonical JID of {address}")
        return address

    def remoteJID(self, address: Address) -> JID:
        return jidOf(address)

    def remoteAddress(self, jid: JID) -> Address:
        return addressOf(jid)


# -- configuration ---------------------------------------------------------------------


@frozen
class ComponentConfig:
    """
    One component link (a C{[[xmpp.component]]} table).

    @ivar jid: The component's JID, a domain (C{gw.xmpp.example}).
    @ivar secret: The shared secret of the handshake (never in C{repr} nor
        in a log).
    @ivar endpoint: Twisted client endpoint string of the server's
        component port (C{tcp:127.0.0.1:5347}).
    @ivar domains: The remote domains reached through the component (the
        server's own, C{xmpp.example}); the router sends events for them to
        this link.
    @ivar statusWait: Seconds a message waits for an error (or a receipt)
        before it counts as delivered.
    @ivar limits: The stream's limits.
    @ivar handshakeTimeout: Seconds the server has to accept the handshake.
    @ivar initialDelay: Seconds before the first reconnection attempt.
    @ivar maxDelay: Longest wait between reconnection attempts.
    """

    jid: str
    secret: str = attrs.field(repr=False)
    endpoint: str
    domains: tuple[str, ...]
    statusWait: float = 1.0
    limits: StreamLimits = COMPONENT_LIMITS
    handshakeTimeout: float = 30.0
    initialDelay: float = 1.0
    maxDelay: float = 60.0


def parseComponentConfig(table: ConfigTable, reactor: IReactorCore) -> ComponentConfig:
    """
    Read one component table: C{jid}, C{secret}, C{endpoint}, C{domains}
    (required); C{status_wait}, C{stanza_bytes}, C{stanzas_per_second},
    C{stanza_burst}, C{stanza_queue}, C{handshake_timeout}, C{max_reconnect_delay}
    (optional). Calls C{table.finish()}.

    @raise ConfigError: Naming the table and key at fault.
    """
    t = table
    jidText = t.get("jid", str)
    try:
        jid = parseJID(jidText)
    except InvalidJID as e:
        raise t.error("jid", f"not a valid JID: {e}") from None
    if jid.user or jid.resource:
        raise t.error("jid", "a component's JID is a domain (gw.xmpp.example), without '@' or '/'")
    secret = t.get("secret", str)
    if not secret:
        raise t.error("secret", "must not be empty")
    endpoint = t.get("endpoint", str)
    try:
        clientEndpointFromString(reactor, endpoint)
    except Exception as e:  # clientFromString raises many kinds
        raise t.error("endpoint", f"bad client endpoint {endpoint!r}: {e}") from None
    domainList = t.get("domains", list)
    domains: list[str] = []
    for item in domainList:
        if not isinstance(item, str):
            raise t.error("domains", f"expected domain names, got {item!r}")
        try:
            domain = normaliseDomain(item)
        except InvalidAddress as e:
            raise t.error("domains", str(e)) from None
        if domain in domains:
            raise t.error("domains", f"{domain} is listed twice")
        domains.append(domain)
    if not domains:
        raise t.error("domains", "name at least one domain reached through the component (the server's own)")
    d = ComponentConfig(jid.host, secret, endpoint, tuple(domains))
    l = d.limits
    limits = StreamLimits(
        stanzaBytes=t.positive("stanza_bytes", int, l.stanzaBytes),
        stanzasPerSecond=t.positive("stanzas_per_second", float, l.stanzasPerSecond),
        stanzaBurst=t.positive("stanza_burst", int, l.stanzaBurst),
        maxQueuedStanzas=t.positive("stanza_queue", int, l.maxQueuedStanzas),
    )
    if limits.stanzaBytes < 10000:
        raise t.error("stanza_bytes", "must be at least 10000 (RFC 6120 13.12)")
    config = ComponentConfig(
        jid=jid.host,
        secret=secret,
        endpoint=endpoint,
        domains=tuple(domains),
        statusWait=t.positive("status_wait", float, d.statusWait),
        limits=limits,
        handshakeTimeout=t.positive("handshake_timeout", float, d.handshakeTimeout),
        maxDelay=t.positive("max_reconnect_delay", float, d.maxDelay),
    )
    t.finish()
    return config


def parseComponents(table: ConfigTable, reactor: IReactorCore, key: str = "component") -> tuple[ComponentConfig, ...]:
    """
    Read the array of tables C{key} of the C{[xmpp]} table
    (C{[[xmpp.component]]}): one L{ComponentConfig} each, with distinct
    JIDs and no domain reached twice.

    @raise ConfigError: Naming the table and key at fault.
    """
    items = table.get(key, list, [])
    configs: list[ComponentConfig] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise table.error(key, f"expected tables ([[xmpp.{key}]]), got {item!r}")
        sub = ConfigTable(item, f"{table.where} {key}[{i}]", table.baseDir)
        config = parseComponentConfig(sub, reactor)
        for other in configs:
            if other.jid == config.jid:
                raise sub.error("jid", f"{config.jid} is configured twice")
            shared = set(other.domains) & set(config.domains)
            if shared:
                raise sub.error("domains", f"{sorted(shared)[0]} is already reached through {other.jid}")
        configs.append(config)
    return tuple(configs)


# -- the stream --------------------------------------------------------------------------


class _Authenticator(component.ConnectComponentAuthenticator):
    """
    Twisted's component authenticator (stream header, C{<handshake/>}),
    except that the server's header is not interned (L{internJID} caches
    every string forever) and a header without an C{id} fails the stream.
    """

    def streamStarted(self, rootElement: domish.Element) -> None:
        xmlstream.Authenticator.streamStarted(self, rootElement)
        xs = self.xmlstream
        assert xs is not None
        sid = rootElement.getAttribute("id")
        if not sid:
            xs.dispatch(Failure(ValueError("the server's stream header has no id")), xmlstream.INIT_FAILED_EVENT)
            return
        xs.sid = sid
        self.initializeStream()


class ComponentStream(HardenedXmlStream):
    """
    One connection of a component link: the handshake, then stanzas to the
    link's route.
    """

    log = Logger()

    def __init__(self, link: ComponentLink) -> None:
        config = link.config
        super().__init__(_Authenticator(config.jid, config.secret), config.limits, link.clock)
        self.link = link
        self._handshakeTimer: IDelayedCall | None = None
        self.addObserver(xmlstream.STREAM_AUTHD_EVENT, self._authenticated)
        self.addObserver(xmlstream.INIT_FAILED_EVENT, self._initFailed)
        self.addObserver(STREAM_ERROR_EVENT, self._streamError)

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        super().connectionMade()
        self._handshakeTimer = self.clock.callLater(self.link.config.handshakeTimeout, self._handshakeTimedOut)

    def _cancelTimer(self) -> None:
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        self.log.error(
            "XMPP component {jid}: no handshake answer from {endpoint} within {timeout} s",
            jid=self.link.config.jid,
            endpoint=self.link.config.endpoint,
            timeout=self.link.config.handshakeTimeout,
        )
        self.closeConnection()

    def _authenticated(self, _: object) -> None:
        self._cancelTimer()
        self.setAuthenticated()
        self.link.streamAuthenticated(self)

    def _initFailed(self, f: Failure) -> None:
        self.log.error("XMPP component {jid}: the handshake failed: {error}", jid=self.link.config.jid, error=f.value)
        self.closeConnection()

    def _streamError(self, f: Failure) -> None:
        condition = getattr(f.value, "condition", None) or str(f.value)
        text = getattr(f.value, "text", None) or ""
        if not self.authenticated and condition == "not-authorized":
            self.log.error(
                "XMPP component {jid}: {endpoint} refused the handshake (not-authorized): check the secret",
                jid=self.link.config.jid,
                endpoint=self.link.config.endpoint,
            )
        else:
            self.log.warn(
                "XMPP component {jid}: stream error {condition} {text}", jid=self.link.config.jid, condition=condition, text=text
            )

    def elementReceived(self, element: domish.Element) -> None:
        if self.authenticated and element.uri == NS_COMPONENT and element.name in ("message", "presence", "iq"):
            self.link.stanzaReceived(element)
        else:
            super().elementReceived(element)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._cancelTimer()
        try:
            super().connectionLost(reason)
        finally:
            self.link.streamLost(self)


class _StreamFactory(Factory):
    def __init__(self, link: ComponentLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> ComponentStream:
        stream = ComponentStream(self.link)
        stream.factory = self
        return stream


# -- the link ------------------------------------------------------------------------------


class ComponentLink:
    """
    The current authenticated stream of a component, as its route sees it:
    L{send} writes on it, and the route hears when it comes and goes.

    @ivar stream: The authenticated stream, or C{None} while there is none.
    @ivar route: The route stanzas go to (set before the link connects).
    @ivar failures: Consecutive connections that ended before the handshake
        succeeded; the reconnection delay grows with it.
    @ivar connects: How many times a stream was authenticated (C{/metrics}).
    """

    log = Logger()

    def __init__(self, config: ComponentConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.stream: ComponentStream | None = None
        self.route: XMPPRemoteRoute | None = None
        self.failures = 0
        self.connects = 0
        self._backoff = backoffPolicy(initialDelay=config.initialDelay, maxDelay=config.maxDelay)

    def factory(self) -> Factory:
        """
        @return: The factory of this link's streams.
        """
        return _StreamFactory(self)

    def retryDelay(self, attempt: int) -> float:
        """
        The L{ClientService} retry policy: exponential backoff with jitter
        over failed connection attempts I{and} handshakes.
        """
        return float(self._backoff(max(attempt, self.failures)))

    def send(self, element: domish.Element) -> Deferred[None]:
        """
        Send a stanza on the authenticated stream.

        @return: Fires once it is written; fails with L{NoRoute} while the
            link is down.
        """
        stream = self.stream
        if stream is None:
            return fail(NoRoute(f"the XMPP component link {self.config.jid} is not connected"))
        stream.send(element)
        return succeed(None)

    def stanzaReceived(self, element: domish.Element) -> None:
        if self.route is not None:
            self.route.stanzaReceived(element)

    def streamAuthenticated(self, stream: ComponentStream) -> None:
        self.failures = 0
        self.connects += 1
        self.stream = stream
        self.log.info(
            "XMPP component {jid} connected to {endpoint}, serving {domains}",
            jid=self.config.jid,
            endpoint=self.config.endpoint,
            domains=", ".join(self.config.domains),
        )
        if self.route is not None:
            self.route.linkEstablished()

    def streamLost(self, stream: ComponentStream) -> None:
        if self.stream is not stream:
            self.failures += 1
            return
        self.stream = None
        self.log.info("XMPP component {jid} disconnected from {endpoint}", jid=self.config.jid, endpoint=self.config.endpoint)
        if self.route is not None:
            self.route.linkLost()


class ComponentService(MultiService):
    """
    Runs one component link: routes its domains to its route while running,
    and keeps it connected. Its L{linkInfo} is what C{/healthz} and
    C{/metrics} show of it.

    @ivar link: The L{ComponentLink}.
    @ivar route: The L{XMPPRemoteRoute} registered for C{config.domains}.
    @ivar client: The L{ClientService} that (re)connects.
    """

    def __init__(
        self,
        gateway: IGateway,
        config: ComponentConfig,
        endpoint: IStreamClientEndpoint,
        identity: Identity = COMPONENT_IDENTITY,
        limits: RouteLimits | None = None,
    ) -> None:
        super().__init__()
        self.gateway = gateway
        self.config = config
        clock = gateway.clock
        self.link = ComponentLink(config, clock)
        routeLimits = limits if limits is not None else RouteLimits(maxBodyChars=gateway.config.home.maxMessageChars)
        self.route = XMPPRemoteRoute(
            router=gateway.router,
            mapper=ComponentJIDMapper(config.jid, [gateway.domain]),
            send=self.link.send,
            clock=clock,
            namespace=NS_COMPONENT,
            domains=config.domains,
            statusWait=config.statusWait,
            identity=Identity(identity.category, identity.type, f"{identity.name} ({gateway.domain})"),
            limits=routeLimits,
        )
        self.link.route = self.route
        self.client = ClientService(endpoint, self.link.factory(), retryPolicy=self.link.retryDelay, clock=clock)
        self.client.setServiceParent(self)
        self._routed: list[str] = []

    def startService(self) -> None:
        router = self.gateway.router
        for domain in self.config.domains:
            router.addRoute(domain, self.route)
            self._routed.append(domain)
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        router = self.gateway.router
        for domain in self._routed:
            router.removeRoute(domain)
        self._routed = []
        d: Deferred[None] | None = super().stopService()

        def stopped(result: object) -> object:
            self.route.stop()
            return result

        if d is None:
            self.route.stop()
            return None
        return d.addBoth(stopped)

    def linkInfo(self) -> list[LinkInfo]:
        """
        The component link's state (L{imgateway.core.linkinfo.LinkInfoSource}):
        up while its stream is authenticated, down (required) otherwise.
        """
        link = self.link
        return [LinkInfo("xmpp-component", self.config.jid, link.stream is not None, f"to {self.config.endpoint}", connects=link.connects)]


def makeComponentService(
    gateway: IGateway, config: ComponentConfig, endpoint: IStreamClientEndpoint | None = None
) -> ComponentService:
    """
    The service of one component link, for the XMPP adapter's
    C{makeService}: set it as a child of the adapter's service.

    @param endpoint: Where to connect; C{config.endpoint} on the gateway's
        reactor when C{None}.
    @raise ConfigError: If one of C{config.domains} is the gateway's own.
    """
    if gateway.domain in config.domains:
        raise ConfigError(f"XMPP component {config.jid}: {gateway.domain} is this gateway's own domain")
    if endpoint is None:
        endpoint = clientEndpointFromString(gateway.reactor, config.endpoint)
    return ComponentService(gateway, config, endpoint)
