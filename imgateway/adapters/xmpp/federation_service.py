# -*- test-case-name: tests.e2e.test_xmpp_federation_gateway -*-
"""
XMPP federation as a service of the gateway: the s2s link layer
(L{imgateway.adapters.xmpp.s2s}) joined to the stanza translator
(L{imgateway.adapters.xmpp.federation}), registered with the router as the
route of remote XMPP domains.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.words.xish import domish

from imgateway.adapters.xmpp.federation import S2SJIDMapper, XMPPRemoteRoute
from imgateway.adapters.xmpp.jid import InvalidJID, parseJID
from imgateway.adapters.xmpp.s2s import NS_SERVER, S2SConfig, S2SError, S2SManager
from imgateway.core.linkinfo import LinkInfo
from imgateway.interfaces import IGateway
from imgateway.secretfile import loadSecret

__all__ = ["DIALBACK_SECRET_FILE", "FederationConfig", "FederationService"]

#: The dialback secret's file in the data directory, by default.
DIALBACK_SECRET_FILE = "s2s-dialback-secret"


@frozen
class FederationConfig:
    """
    How the gateway federates with other XMPP servers.

    @ivar s2s: The link layer's configuration.
    @ivar defaultRoute: Whether federation is the route for every domain
        that has no route of its own (otherwise only C{s2s.routes}' domains).
    @ivar statusWait: Seconds to wait for an error before a message counts
        as delivered.
    @ivar dialbackSecretFile: The file of the secret that keys our dialback
        keys (XEP-0185), created (random, mode 0600) if missing; C{None}
        for C{s2s-dialback-secret} in the data directory. Every process
        serving the domain must share it, and it must outlive restarts:
        a peer checks a key by asking any of them.
    """

    s2s: S2SConfig
    defaultRoute: bool = True
    statusWait: float = 1.0
    dialbackSecretFile: str | None = None


class FederationService(MultiService):
    """
    Runs the s2s links and registers their route with the router while
    running.

    @ivar manager: The L{S2SManager}.
    @ivar route: The L{XMPPRemoteRoute} the router uses.
    """

    def __init__(self, gateway: IGateway, config: FederationConfig, tls: Any) -> None:
        super().__init__()
        self.gateway = gateway
        self.config = config
        secretFile = (
            FilePath(config.dialbackSecretFile)
            if config.dialbackSecretFile is not None
            else gateway.dataDir.child(DIALBACK_SECRET_FILE)
        )
        self.manager = S2SManager(
            gateway.reactor,
            gateway.domain,
            tls,
            config.s2s,
            clock=gateway.clock,
            secret=loadSecret(secretFile),
            connectionLimiter=gateway.connectionLimiter,
        )
        self.route = XMPPRemoteRoute(
            gateway.router,
            S2SJIDMapper(gateway.domain),
            self._send,
            gateway.clock,
            namespace=NS_SERVER,
            statusWait=config.statusWait,
        )
        self.manager.stanzaReceived = lambda domain, stanza: self.route.stanzaReceived(stanza)
        self.manager.linkEstablished = self.route.linkEstablished
        self.manager.linkLost = self.route.linkLost
        for service in self.manager.services():
            service.setServiceParent(self)

    def _send(self, stanza: domish.Element) -> Deferred[None]:
        try:
            domain = parseJID(stanza.getAttribute("to") or "").host
        except InvalidJID:
            raise S2SError("remote-server-not-found", "bad recipient") from None
        return self.manager.send(domain, stanza)

    def startService(self) -> None:
        router = self.gateway.router
        for domain in self.config.s2s.routes:
            if router.routeFor(domain) is None or router.routeFor(domain) is router.defaultRoute:
                router.addRoute(domain, self.route)
        if self.config.defaultRoute:
            router.setDefaultRoute(self.route)
        super().startService()

    def stopService(self) -> Deferred[Any]:
        router = self.gateway.router
        if getattr(router, "defaultRoute", None) is self.route:
            router.setDefaultRoute(None)
        for domain in self.config.s2s.routes:
            if router.routeFor(domain) is self.route:
                router.removeRoute(domain)
        self.route.stop()
        d: Deferred[Any] = super().stopService()
        stopped = self.manager.stop()
        return stopped.addCallback(lambda _: d)

    def linkInfo(self) -> list[LinkInfo]:
        """
        The state of each outgoing s2s link, by domain, and of the incoming
        streams (L{imgateway.core.linkinfo.LinkInfoSource}). A link exists
        while it has stanzas to deliver; one to a domain of C{[xmpp.s2s]
        routes} is required (down while not up), one found through DNS is
        not (anyone can make the gateway try a domain that answers
        nothing), nor are the incoming streams.
        """
        routes = self.config.s2s.routes
        found = [
            LinkInfo("xmpp-s2s", domain, link.up, f"{len(link.queue)} waiting", required=domain in routes)
            for domain, link in sorted(self.manager.links.items())
        ]
        incoming = len(self.manager.incoming)
        found.append(LinkInfo("xmpp-s2s-incoming", "all", incoming > 0, f"{incoming} stream(s)", required=False))
        return found
