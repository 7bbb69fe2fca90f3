# -*- test-case-name: tests.test_router -*-
"""
In-process routing of core events by the recipient's domain.

The home server of this process is the route for the gateway's own domain;
adapters register links as the routes of the domains they reach. The router
counts hops and remembers the server-minted ids
(L{Message.routingId<imgateway.core.events.Message.routingId>}) of recent
messages, so an event going round in circles ends in L{LoopDetected}
instead of running forever. It never goes by the ids clients choose: two
messages with the same client id are two messages.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    LoopDetected,
    NoRoute,
    ServerError,
)
from imgateway.core.events import DEFAULT_MAX_HOPS, Event, Message, forwarded
from imgateway.interfaces import IRoute, IRouter

__all__ = ["Router"]

#: How many recent messages the router remembers to detect loops.
DEFAULT_SEEN_MESSAGES = 10000


@implementer(IRouter)
class Router:
    """
    Routes events to the route registered for their recipient's domain.

    @ivar localDomains: Domains whose route is in this process (no hop is
        counted when delivering to them).
    @ivar defaultRoute: Where events for other domains go, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        maxHops: int = DEFAULT_MAX_HOPS,
        seenMessages: int = DEFAULT_SEEN_MESSAGES,
    ) -> None:
        self._routes: dict[str, IRoute] = {}
        self.defaultRoute: IRoute | None = None
        self.localDomains: set[str] = set()
        self._maxHops = maxHops
        self._seenLimit = seenMessages
        self._seen: OrderedDict[str, None] = OrderedDict()

    def addRoute(self, domain: str, route: IRoute, local: bool = False) -> None:
        """
        Send events for C{domain} to C{route}.

        @param local: Whether C{route} is in this process (a home server).
        @raise ValueError: If the domain already has a route.
        """
        if domain in self._routes:
            raise ValueError(f"domain {domain!r} already has a route")
        self._routes[domain] = route
        if local:
            self.localDomains.add(domain)

    def removeRoute(self, domain: str) -> None:
        self._routes.pop(domain, None)
        self.localDomains.discard(domain)

    def routeFor(self, domain: str) -> IRoute | None:
        return self._routes.get(domain, self.defaultRoute)

    def setDefaultRoute(self, route: IRoute | None) -> None:
        """
        Send events for every domain without a route of its own to
        C{route} (for example XMPP federation); C{None} removes it.

        @raise ValueError: If another default route is set.
        """
        if route is not None and self.defaultRoute is not None and self.defaultRoute is not route:
            raise ValueError("the router already has a default route")
        self.defaultRoute = route

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver C{event} through the route of its recipient's domain.
        """
        domain = event.recipient.domain
        route = self._routes.get(domain, self.defaultRoute)
        if route is None:
            return fail(NoRoute(f"no route to {domain}"))
        if event.hops > self._maxHops:
            return fail(LoopDetected(f"more than {self._maxHops} hops"))
        if domain not in self.localDomains:
            try:
                event = forwarded(event, self._maxHops)
            except LoopDetected as e:
                return fail(e)
        key = None
        if isinstance(event, Message):
            key = event.routingId
            if key in self._seen:
                return fail(LoopDetected(f"message {event.messageId} ({key}) seen before"))
            self._seen[key] = None
            if len(self._seen) > self._seenLimit:
                self._seen.popitem(last=False)

        def failed(f: Failure) -> Failure:
            if key is not None:
                # A failed delivery may be retried (by whoever holds the
                # message) without looking like a loop.
                self._seen.pop(key, None)
            if not f.check(DeliveryError):
                self.log.failure("Route for {domain} failed to deliver {event!r}", f, domain=domain, event=event)
                return Failure(ServerError("internal error while delivering"))
            return f

        d: Deferred[DeliveryStatus] = maybeDeferred(route.deliver, event)
        d.addErrback(failed)
        return d
