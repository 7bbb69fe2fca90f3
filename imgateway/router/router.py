# -*- test-case-name: tests.test_router -*-
"""
The routing table: where each core event goes, from its recipient's domain
and, for this domain, the directory.

A recipient of this process's domain, when the domain has many servers
(a L{IHomeLocator} is given), goes to its home server: this process's home
server, or another server over a server link (L{ILinkRoutes.toServer});
one without an account is answered as a home server answers for an
unknown user (L{imgateway.home.server.answerNoAccount}), so nothing tells
whether it exists. A home server that answers L{MovedTo<imgateway.core.errors.MovedTo>} (the directory's
answer was old) makes the router forget it and deliver once more. A
recipient of another domain goes to the route an adapter registered for
it (L{Router.addRoute}), else to the peer domain's router over a link
(L{ILinkRoutes.toDomain}), else to the default route (XMPP federation).

The router counts hops and remembers the server-minted ids
(L{Message.routingId<imgateway.core.events.Message.routingId>}) of recent
messages that go on from it (not one delivered at once to sessions of this
process: it went nowhere), so an event going round in circles ends in
L{LoopDetected} instead of running forever. It never goes by the ids clients choose: two
messages with the same client id are two messages.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from enum import Enum
from typing import TYPE_CHECKING, Any, Final
from zlib import crc32

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    LoopDetected,
    MovedTo,
    NoRoute,
    ServerError,
    ServiceUnavailable,
)
from imgateway.core.events import DEFAULT_MAX_HOPS, Event, Message, forwarded
from imgateway.home.server import answerNoAccount
from imgateway.interfaces import IAtOnceRouter, IHomeLocator, ILinkRoutes, IRoute
from imgateway.router.locator import UNKNOWN, DirectoryHomeLocator, followMove, followMoves

if TYPE_CHECKING:
    from imgateway.router.link import OutcomeWaiter
    from imgateway.router.locator import _Unknown

__all__ = ["Router"]

#: How many recent messages the router remembers to detect loops.
DEFAULT_SEEN_MESSAGES = 10000


class _Unasked(Enum):
    UNASKED = "unasked"


#: L{Router.deliverAtOnce}'s C{home} when its caller did not ask the
#: locator.
UNASKED: Final = _Unasked.UNASKED


@implementer(IAtOnceRouter)
class Router:
    """
    Routes events by their recipient; see the module docstring.

    @ivar localDomains: Domains whose route is in this process (no hop is
        counted when delivering to them).
    @ivar defaultRoute: Where events for other domains go, or C{None}.
    @ivar domain: This process's domain: with a C{locator}, its recipients
        go to their home server.
    @ivar serverName: This process's name among the domain's servers (its
        C{home_server}).
    @ivar locator: Where this domain's users are homed, or C{None} for a
        domain with one home server (this process's: the route registered
        for the domain). Given at construction and not changed after: a
        route added without one is told it is routed directly
        (L{addRoute}).
    @ivar linkRoutes: The routes over server links, or C{None} while this
        process has none: the other servers of the domain are then
        unavailable (C{503}), and peer domains reachable only through the
        routes adapters registered or the default route.
    @ivar domainRouters: For a process that is not a router itself, the
        names of its domain's routers: events for other domains that no
        adapter of this process takes go to one of them over its link (the
        routers alone hold the routes, certificates and federation of the
        domain); empty to send them on from here.
    """

    log = Logger()

    def __init__(
        self,
        maxHops: int = DEFAULT_MAX_HOPS,
        seenMessages: int = DEFAULT_SEEN_MESSAGES,
        domain: str | None = None,
        serverName: str | None = None,
        locator: IHomeLocator | None = None,
        linkRoutes: ILinkRoutes | None = None,
        domainRouters: Sequence[str] = (),
    ) -> None:
        self._routes: dict[str, IRoute] = {}
        # Domain to the synchronous fast path of its route in this process
        # (IAtOnceRoute.deliverAtOnce: a home server's), for the routes that
        # have one.
        self._atOnce: dict[str, Callable[[Event], DeliveryStatus | Deferred[DeliveryStatus] | None]] = {}
        self.defaultRoute: IRoute | None = None
        self.localDomains: set[str] = set()
        self._maxHops = maxHops
        self._seenLimit = seenMessages
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.domain = domain
        self.serverName = serverName
        self.locator = locator
        self.linkRoutes = linkRoutes
        self.domainRouters = tuple(sorted(domainRouters))
        # The bound method given to links with every message (deliverThen):
        # made once.
        self._answerLinkFailure = self._linkAnswerFailed

    def addRoute(self, domain: str, route: IRoute, local: bool = False) -> None:
        """
        Send events for C{domain} to C{route}.

        @param local: Whether C{route} is in this process (a home server).
            A local route with a C{deliverAtOnce} method (an
            L{IAtOnceRoute<imgateway.interfaces.IAtOnceRoute>}: a home
            server's synchronous fast path, see L{deliverAtOnce}) is
            offered the messages it can answer at once. When the router
            hands it every message for C{domain} with nothing of its own
            between (no locator: the domain has this one home server), a
            route with a C{routedDirectly} method (an L{IDirectRoute
            <imgateway.interfaces.IDirectRoute>}) is told so
            (C{routedDirectly(router, domain, remember)}, with
            L{remember}; again with C{None} when the route is removed): a
            home server's sessions then give their messages to its users
            in place, without the router (see
            L{imgateway.home.server.Session.sendMessageAtOnce}). Both are
            looked up by name, here, once.
        @raise ValueError: If the domain already has a route.
        """
        if domain in self._routes:
            raise ValueError(f"domain {domain!r} already has a route")
        self._routes[domain] = route
        if local:
            self.localDomains.add(domain)
            # (IAtOnceRoute, then IDirectRoute.)
            atOnce = getattr(route, "deliverAtOnce", None)
            if atOnce is not None:
                self._atOnce[domain] = atOnce
                direct = getattr(route, "routedDirectly", None)
                if direct is not None and self.locator is None:
                    direct(self, domain, self.remember)

    def removeRoute(self, domain: str) -> None:
        route = self._routes.pop(domain, None)
        if self._atOnce.pop(domain, None) is not None:
            # (IDirectRoute.)
            direct = getattr(route, "routedDirectly", None)
            if direct is not None:
                direct(self, domain, None)
        self.localDomains.discard(domain)

    def remember(self, message: Message, outcome: Deferred[DeliveryStatus]) -> Deferred[DeliveryStatus]:
        """
        Take a message that a home server of this process delivered
        without the router (its sessions' own, L{addRoute}'s
        C{routedDirectly}) to a session that answers later (a proxied
        one, in another process): remembered as L{deliverAtOnce}
        remembers the messages it routes (a loop that brings it back is
        L{LoopDetected}), and its outcome taken as theirs (forgotten if it
        fails; an unexpected failure logged and answered
        L{ServerError}).

        A message delivered at once to sessions of this process never
        comes here: it did not leave the process, so nothing can bring it
        back. Its routing id is new (L{newRoutingId
        <imgateway.core.events.newRoutingId>}), so it was not seen before.

        @param outcome: The delivery's outcome, still to come.
        @return: C{outcome}, with the errback L{deliverAtOnce} gives.
        """
        key = message.routingId
        self._see(key)
        return outcome.addErrback(self._failed, key, message.recipient.domain, message)

    def _see(self, key: str) -> None:
        """
        Remember a message's routing id, forgetting the oldest past
        C{seenMessages}.
        """
        seen = self._seen
        seen[key] = None
        if len(seen) > self._seenLimit:
            seen.popitem(last=False)

    def routeFor(self, domain: str) -> IRoute | None:
        """
        @return: The route registered for C{domain} (for this domain, this
            process's home server), else the default route, or C{None}.
            Routes over server links are found per event (see
            L{deliver}).
        """
        return self._routes.get(domain, self.defaultRoute)

    def routes(self) -> dict[str, IRoute]:
        """
        See L{IRouter.routes}.
        """
        return dict(self._routes)

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
        Deliver C{event} through the route of its recipient (see the module
        docstring).
        """
        try:
            outcome = self.deliverAtOnce(event)
        except BaseException:
            return fail()
        return succeed(outcome) if type(outcome) is DeliveryStatus else outcome  # type: ignore[return-value]

    def deliverAtOnce(
        self, event: Event, home: str | None | _Unknown | _Unasked = UNASKED
    ) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        L{deliver}, answered without a L{Deferred} when the outcome is known
        at once: a message whose recipient is homed in this process (as far
        as the locator remembers), delivered by this process's home server
        at once (its fast path, C{deliverAtOnce}). A message whose recipient
        the locator remembers on another server of the domain goes to the
        link at once, and its L{Deferred} is the link's with one errback
        (L{_toLink}). Every other event goes the way L{deliver} says,
        asynchronously.

        A message delivered at once to sessions of this process is not
        remembered for the loop check (L{remember}'s reasoning): it did not
        leave the process, so no loop can bring it back; the same request
        again from a link is a duplicate, which the link's receiving side
        answers itself (C{docs/protocol.md} section 9.5, 2). Every message
        that goes on (to a link, another route, a session that answers
        later) is remembered, and one seen before is L{LoopDetected}.

        @param home: The recipient's home as L{knownHome} answers it, when
            the caller asked already (L{deliverThen}); by default asked
            here.
        @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
            outcome.
        @raise DeliveryError: If the event is refused at once.
        """
        domain = event.recipient.domain
        if event.hops > self._maxHops:
            raise LoopDetected(f"more than {self._maxHops} hops")
        key = None
        if isinstance(event, Message):
            key = event.routingId
            if key in self._seen:
                raise LoopDetected(f"message {event.messageId} ({key}) seen before")
            atOnce = self._atOnce.get(domain)
            locator = self.locator
            if locator is not None and domain == self.domain:
                if home is UNASKED:
                    # knownHome, without its call.
                    home = locator.cachedHomeOf(event.recipient) if type(locator) is DirectoryHomeLocator else UNKNOWN
                if home != self.serverName:
                    links = self.linkRoutes
                    if home is not UNKNOWN and home is not None and links is not None:
                        self._see(key)
                        return self._toLink(locator, links, home, event, key)
                    atOnce = None
            if atOnce is not None:
                try:
                    outcome = atOnce(event)
                except DeliveryError:
                    raise
                except Exception:
                    self.log.failure("Route for {domain} failed to deliver {event!r}", domain=domain, event=event)
                    raise ServerError("internal error while delivering") from None
                if type(outcome) is DeliveryStatus:
                    # Delivered here: not remembered (see above).
                    return outcome
                if outcome is not None:
                    # A session that answers later (in another process).
                    self._see(key)
                    return outcome.addErrback(self._failed, key, domain, event)  # type: ignore[union-attr]
            self._see(key)
        if self.locator is not None and domain == self.domain:
            d = self._toHome(self.locator, event)
        else:
            d = self._toDomain(event)
        return d.addErrback(self._failed, key, domain, event)

    @property
    def deliverAtHome(self) -> Callable[[Event, str | None | _Unknown], DeliveryStatus | Deferred[DeliveryStatus]]:
        """
        L{deliverAtOnce}, by the name a caller that gives it the recipient's
        C{home} as it asked L{locator} finds it (L{IAtOnceRouter.deliverAtHome
        <imgateway.interfaces.IAtOnceRouter.deliverAtHome>}): a link's
        receiving side (L{LinkReceiver<imgateway.router.link.LinkReceiver>}),
        which does not import this module (it imports the links').
        """
        return self.deliverAtOnce

    def deliverThen(self, event: Event, waiter: OutcomeWaiter) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{deliverAtOnce}, with the outcome of a message that goes to a link
        at once told to C{waiter} (a home session's message, counted and
        answered to its face: L{imgateway.home.server.Session.sendMessageThen}):
        for a recipient of this domain that the locator remembers on
        another server, whose link takes a waiter (an L{IWaiterRoute
        <imgateway.interfaces.IWaiterRoute>}, its C{deliverThen} looked up
        by name per message: L{LinkClient.deliverThen
        <imgateway.router.link.LinkClient.deliverThen>}), the link is
        given the message itself with its hop count plus one (the bytes
        of L{forwarded}'s copy, without the copy), C{waiter}, told the
        outcome when it is delivered, and L{_linkAnswerFailed}, told a
        failure, which it answers as L{_toLink}'s errback
        (L{_linkFailed}) does and tells C{waiter}: the same checks and
        outcomes, without a L{Deferred} and without an object of the
        router's per message. Every other event goes to
        L{deliverAtOnce}, and C{waiter} is not told.

        @return: C{None} when C{waiter} is told the outcome; else what
            L{deliverAtOnce} returns.
        @raise DeliveryError: If the event is refused at once (C{waiter}
            not told).
        """
        locator = self.locator
        links = self.linkRoutes
        if locator is not None and links is not None and isinstance(event, Message):
            recipient = event.recipient
            if recipient.domain == self.domain:
                # knownHome, without its call; given to deliverAtOnce, which
                # would ask again.
                home = locator.cachedHomeOf(recipient) if type(locator) is DirectoryHomeLocator else UNKNOWN
                if home != self.serverName and home is not UNKNOWN and home is not None:
                    try:
                        route: IRoute | None = links.toServer(home)
                    except KeyError:
                        route = None
                    then = getattr(route, "deliverThen", None)
                    if then is not None:
                        # deliverAtOnce's checks, then _toLink's delivery.
                        hops = event.hops
                        maxHops = self._maxHops
                        if hops > maxHops:
                            raise LoopDetected(f"more than {maxHops} hops")
                        key = event.routingId
                        seen = self._seen
                        if key in seen:
                            raise LoopDetected(f"message {event.messageId} ({key}) seen before")
                        # _see, without its call.
                        seen[key] = None
                        if len(seen) > self._seenLimit:
                            seen.popitem(last=False)
                        if hops >= maxHops:
                            # forwarded's refusal (the hop it is sent on
                            # would be one too many), as _toLink meets it.
                            seen.pop(key, None)
                            raise LoopDetected(f"more than {maxHops} hops")
                        try:
                            then(event, waiter, hops + 1, self._answerLinkFailure)
                        except LoopDetected:
                            seen.pop(key, None)
                            raise
                        except BaseException:
                            if waiter.called:
                                self.log.failure("Link route to {home} failed after answering {event!r}", home=home, event=event)
                            else:
                                self._linkAnswerFailed(Failure(), event, waiter)
                        return None
                return self.deliverAtOnce(event, home)
        return self.deliverAtOnce(event)

    def _toLink(
        self, locator: IHomeLocator, links: ILinkRoutes, home: str, message: Message, key: str
    ) -> Deferred[DeliveryStatus]:
        """
        Deliver C{message}, for a user of this domain that the locator
        remembers as homed on C{home}, another server, over the link to
        it: what L{_toHome} does, with the remembered answer used at once
        and one errback on the link's L{Deferred} (L{_linkFailed}) in place
        of L{followMoves}', L{_unreachable}'s and L{_failed}'s: the same
        outcomes for every answer (L{MovedTo<imgateway.core.errors.MovedTo>}
        retried once, C{503} answered as for a user without an account).

        @raise DeliveryError: If the message is refused at once (its hop
            limit reached).
        """
        try:
            route = links.toServer(home)
        except KeyError:
            # Not among the [servers]: the general way logs it and answers.
            return self._toHome(locator, message).addErrback(self._failed, key, message.recipient.domain, message)
        try:
            d = route.deliver(forwarded(message, self._maxHops))
        except LoopDetected:
            self._seen.pop(key, None)
            raise
        except BaseException:
            d = fail()
        # (The errback returns the failure, or the retry's Deferred: no
        # overload of addErrback types that union.)
        return d.addErrback(self._linkFailed, locator, key, message)  # type: ignore[call-overload,no-any-return]

    def _linkFailed(self, f: Failure, locator: IHomeLocator, key: str, message: Message) -> Failure | Deferred[DeliveryStatus]:
        """
        A message's delivery over a link (L{_toLink}) failed: as
        L{_unreachable}, L{followMoves} and L{_failed} answer in turn, in
        one step.
        """
        if f.check(MovedTo):
            # Forgotten and retried once, the message still remembered (a
            # retry is no loop), as followMoves does.
            retried: Deferred[DeliveryStatus] = followMove(
                f, locator, message.recipient, partial(self._routed, message), message, _unavailable
            )
            return retried.addErrback(self._failed, key, message.recipient.domain, message)
        if f.check(ServiceUnavailable):
            self._seen.pop(key, None)
            return answerNoAccount(message)
        return self._failed(f, key, message.recipient.domain, message)

    def _linkAnswerFailed(self, error: BaseException | Failure, message: Message, waiter: OutcomeWaiter) -> None:
        """
        A message that L{deliverThen} handed a link failed (the link's
        C{failed}): answered as L{_toLink}'s errback (L{_linkFailed})
        answers it, and told to C{waiter}: a failure at once; the retry of
        a L{MovedTo<imgateway.core.errors.MovedTo>}, or the answer for a
        user without an account, when it comes.
        """
        locator = self.locator
        assert locator is not None
        answer = self._linkFailed(error if isinstance(error, Failure) else Failure(error), locator, message.routingId, message)
        if isinstance(answer, Failure):
            waiter.errback(answer)
        else:
            answer.addCallbacks(waiter.callback, waiter.errback)

    def _failed(self, f: Failure, key: str | None, domain: str, event: Event) -> Failure:
        if key is not None:
            # A failed delivery may be retried (by whoever holds the
            # message) without looking like a loop.
            self._seen.pop(key, None)
        if not f.check(DeliveryError):
            self.log.failure("Route for {domain} failed to deliver {event!r}", f, domain=domain, event=event)
            return Failure(ServerError("internal error while delivering"))
        return f

    def _via(self, route: IRoute, event: Event, local: bool) -> Deferred[DeliveryStatus]:
        """
        Hand C{event} to C{route}: one hop more unless C{local} (in this
        process).
        """
        if not local:
            try:
                event = forwarded(event, self._maxHops)
            except LoopDetected as e:
                return fail(e)
        return maybeDeferred(route.deliver, event)

    def _toDomain(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver to the recipient's domain: its registered route, else (in a
        process that is not a router) one of this domain's routers, else
        the domain's router over a link, else the default route.
        """
        domain = event.recipient.domain
        route = self._routes.get(domain)
        if route is not None:
            return self._via(route, event, domain in self.localDomains)
        if self.linkRoutes is None:
            return self._default(event)
        if self.domainRouters:
            # The same router for a domain every time (its link to that
            # domain is then already up), spread over the routers.
            name = self.domainRouters[crc32(domain.encode("utf-8")) % len(self.domainRouters)]
            return self._via(self.linkRoutes.toServer(name), event, False)
        found: Deferred[IRoute | None] = maybeDeferred(self.linkRoutes.toDomain, domain)
        return found.addCallback(self._chosen, event)

    def _chosen(self, peer: IRoute | None, event: Event) -> Deferred[DeliveryStatus]:
        """
        Send C{event} on to the peer domain's router that was found, else
        by the default route.

        (A method, not a closure: the compiled build, C{imgateway._compiled},
        cannot compile a closure in a method of an C{@implementer} class.)
        """
        return self._default(event) if peer is None else self._via(peer, event, False)

    def _default(self, event: Event) -> Deferred[DeliveryStatus]:
        if self.defaultRoute is None:
            return fail(NoRoute(f"no route to {event.recipient.domain}"))
        return self._via(self.defaultRoute, event, False)

    def _toHome(self, locator: IHomeLocator, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver to the home server of a recipient of this domain; on
        L{MovedTo<imgateway.core.errors.MovedTo>}, forget where it was
        thought to live and (once) deliver again (L{followMoves}).
        """
        return followMoves(locator, event.recipient, partial(self._routed, event), event, _unavailable)

    def _routed(self, event: Event, home: str | None) -> Deferred[DeliveryStatus]:
        """
        Deliver C{event} to C{home}, its recipient's home server as the
        locator says (L{_toHome}): this process's home server, another over
        a link, or the answer for a recipient without an account.

        (A method, not a closure: the compiled build, C{imgateway._compiled},
        cannot compile a closure in a method of an C{@implementer} class.)
        """
        recipient = event.recipient
        here = self._routes.get(recipient.domain) if recipient.domain in self.localDomains else None
        if home is None:
            # No account: the home server here answers as it does for
            # unknown users; without one, the same answer.
            return answerNoAccount(event) if here is None else self._via(here, event, True)
        if home == self.serverName:
            if here is None:
                self.log.error(
                    "The directory homes {recipient} on {home}, this process, which has no home server",
                    recipient=recipient,
                    home=home,
                )
                return fail(_unavailable())
            return self._via(here, event, True)
        if self.linkRoutes is None:
            self.log.debug("No server links: {home}, home of {recipient}, is unreachable", home=home, recipient=recipient)
            return _unreachable(event, fail(_unavailable()))
        try:
            route = self.linkRoutes.toServer(home)
        except KeyError:
            self.log.error(
                "The directory homes {recipient} on {home}, which is not among the [servers] of the config",
                recipient=recipient,
                home=home,
            )
            return _unreachable(event, fail(_unavailable()))
        return _unreachable(event, self._via(route, event, False))


def _unreachable(event: Event, d: Deferred[DeliveryStatus]) -> Deferred[DeliveryStatus]:
    """
    A message that cannot reach its recipient's home server, on another
    host, gets the answer a home server gives for a user who has no session
    (or no account): the sender may be a stranger, who must not learn from a
    503 that the account exists. (Other events keep the 503: the sender's
    own home server decides what its user sees of them.)
    """
    if not isinstance(event, Message):
        return d

    def offline(f: Failure) -> Deferred[DeliveryStatus]:
        f.trap(ServiceUnavailable)
        return answerNoAccount(event)

    return d.addErrback(offline)


def _unavailable() -> ServiceUnavailable:
    """
    The answer for a recipient whose home server cannot be reached (it
    names no server).
    """
    return ServiceUnavailable("the recipient's server is unavailable")

