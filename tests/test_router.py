"""
Tests for L{imgateway.router.router}.
"""

from __future__ import annotations

from typing import Any

import attrs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from imgateway.core.address import Address
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    LoopDetected,
    MovedTo,
    NoRoute,
    NoSuchUser,
    NotAuthorised,
    PersistenceFailed,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    UserBusy,
    UserOffline,
)
from imgateway.core.events import (
    Event,
    Message,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    SubscriptionKind,
)
from imgateway.core.presence import OFFLINE, Presence
from imgateway.core.records import AccountRecord
from imgateway.home.server import HomeServer
from imgateway.interfaces import IAtOnceRouter, ILinkRoutes, IRoute, IRouter
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.home.server import answerNoAccount
from imgateway.router.router import Router
from imgateway.testing import MemoryDirectory, MemoryHomeStore, MemoryLinkRoutes, RecordingSessionClient

ALICE = Address.fromString("alice@corp.example")
REMOTE = Address.fromString("romeo@xmpp.example")


@implementer(IRoute)
class RecordingRoute:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


@implementer(IRoute)
class BrokenRoute:
    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        raise RuntimeError("boom")


class RouterTests(SynchronousTestCase):
    """
    Routing by domain, the default route, hops and loops.
    """

    def test_interface(self) -> None:
        """
        L{Router} provides L{IRouter}.
        """
        verifyObject(IRouter, Router())
        verifyObject(ILinkRoutes, MemoryLinkRoutes())

    def test_atOnceInterface(self) -> None:
        """
        L{Router} provides L{IAtOnceRouter}: the fast paths a home server's
        sessions and a link's receiving side look up by name have the
        signatures it declares (C{deliverAtHome}, a property, checked on
        an instance), so a change to either side fails here.
        """
        self.assertTrue(verifyClass(IAtOnceRouter, Router))
        self.assertTrue(verifyObject(IAtOnceRouter, Router()))

    def test_remoteCountsHop(self) -> None:
        """
        An event for a non-local route leaves with one more hop; a local
        route sees it unchanged.
        """
        router, local, remote = Router(), RecordingRoute(), RecordingRoute()
        router.addRoute("corp.example", local, local=True)
        router.addRoute("xmpp.example", remote)
        self.successResultOf(router.deliver(Message(REMOTE, ALICE, "hi")))
        self.successResultOf(router.deliver(Message(ALICE, REMOTE, "hi")))
        self.assertEqual(local.events[0].hops, 0)
        self.assertEqual(remote.events[0].hops, 1)

    def test_defaultRoute(self) -> None:
        """
        Domains without a route take the default route; without one they get
        L{NoRoute}. A second, different default route is refused.
        """
        router, default = Router(), RecordingRoute()
        self.failureResultOf(router.deliver(Message(ALICE, REMOTE, "hi")), NoRoute)
        router.setDefaultRoute(default)
        self.assertIs(router.routeFor("anything.example"), default)
        self.successResultOf(router.deliver(Message(ALICE, REMOTE, "hi")))
        self.assertEqual(len(default.events), 1)
        self.assertRaises(ValueError, router.setDefaultRoute, RecordingRoute())
        router.setDefaultRoute(None)
        self.assertIsNone(router.routeFor("anything.example"))

    def test_hopLimit(self) -> None:
        """
        An event already at the hop limit is not forwarded.
        """
        router = Router(maxHops=3)
        router.addRoute("xmpp.example", RecordingRoute())
        self.failureResultOf(router.deliver(Message(ALICE, REMOTE, "hi", hops=3)), LoopDetected)

    def test_sameMessageTwiceIsLoop(self) -> None:
        """
        The same message (its server-minted id) coming through the router
        again is a loop; a failed delivery does not count.
        """
        router, local = Router(), RecordingRoute()
        router.addRoute("corp.example", local, local=True)
        m = Message(REMOTE, ALICE, "hi", messageId="client-id")
        self.successResultOf(router.deliver(m))
        self.failureResultOf(router.deliver(m), LoopDetected)
        self.failureResultOf(router.deliver(Message(ALICE, REMOTE, "hi")), NoRoute)

    def test_clientIdsNotTrusted(self) -> None:
        """
        Messages whose client-chosen ids are the same are different
        messages: each is delivered.
        """
        router, local = Router(), RecordingRoute()
        router.addRoute("corp.example", local, local=True)
        for body in ("one", "two"):
            self.successResultOf(router.deliver(Message(REMOTE, ALICE, body, messageId="same")))
        self.assertEqual([e.body for e in local.events], ["one", "two"])  # type: ignore[union-attr]

    def test_brokenRoute(self) -> None:
        """
        A route that raises is logged once and the sender gets
        L{ServerError}.
        """
        router = Router()
        router.addRoute("xmpp.example", BrokenRoute())
        self.failureResultOf(router.deliver(Message(ALICE, REMOTE, "hi")), ServerError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


HS1, HS2 = "hs1", "hs2"
CAROL = Address.fromString("carol@corp.example")
GHOST = Address.fromString("ghost@corp.example")
PARTNER = Address.fromString("pat@partner.example")


@implementer(IRoute)
class AnsweringRoute:
    """
    A route that records events and answers each with the next of the
    outcomes it was given (then delivered).
    """

    def __init__(self, *outcomes: Exception) -> None:
        self.events: list[Event] = []
        self._outcomes = list(outcomes)

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        if self._outcomes:
            return fail(self._outcomes.pop(0))
        return succeed(DeliveryStatus.DELIVERED)


class HomeRoutingTests(SynchronousTestCase):
    """
    A domain with many servers: recipients of this domain go to their home
    server, found through the directory (L{DirectoryHomeLocator}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory(
            [AccountRecord(ALICE, HS1, "", True, "{}"), AccountRecord(CAROL, HS2, "", True, "{}")]
        )
        self.locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.hs2 = AnsweringRoute()
        self.links = MemoryLinkRoutes(servers={HS2: self.hs2})

    def router(self, home: IRoute | None = None, linked: bool = True) -> Router:
        router = Router(
            domain="corp.example",
            serverName=HS1,
            locator=self.locator,
            linkRoutes=self.links if linked else None,
        )
        if home is not None:
            router.addRoute("corp.example", home, local=True)
        return router

    def test_homeHere(self) -> None:
        """
        A user homed on this process goes to its home server, with no hop
        counted.
        """
        here = RecordingRoute()
        self.successResultOf(self.router(here).deliver(Message(REMOTE, ALICE, "hi")))
        self.assertEqual([e.hops for e in here.events], [0])
        self.assertEqual(self.hs2.events, [])

    def test_otherHome(self) -> None:
        """
        A user homed on another server goes over the link to it, one hop
        further.
        """
        here = RecordingRoute()
        self.successResultOf(self.router(here).deliver(Message(ALICE, CAROL, "hi")))
        self.assertEqual(here.events, [])
        self.assertEqual([(e.recipient, e.hops) for e in self.hs2.events], [(CAROL, 1)])
        self.assertEqual([name for name, _ in self.links.sent], [HS2])

    def test_statusesComeBack(self) -> None:
        """
        Whatever the other home server answers comes back to the sender
        as it is.
        """
        self.hs2 = AnsweringRoute(UserOffline("carol@corp.example is offline"), UserBusy("busy", "tel:+1555"))
        self.links.servers[HS2] = self.hs2
        router = self.router(RecordingRoute())
        self.failureResultOf(router.deliver(Message(ALICE, CAROL, "1")), UserOffline)
        busy = self.failureResultOf(router.deliver(Message(ALICE, CAROL, "2")), UserBusy)
        self.assertEqual(busy.value.alternate, "tel:+1555")
        self.assertEqual(self.successResultOf(router.deliver(Message(ALICE, CAROL, "3"))), DeliveryStatus.DELIVERED)

    def test_noAccountToHomeHere(self) -> None:
        """
        A recipient without an account goes to this process's home server,
        which answers as it answers for unknown users.
        """
        here = RecordingRoute()
        self.successResultOf(self.router(here).deliver(Message(REMOTE, GHOST, "hi")))
        self.assertEqual([e.recipient for e in here.events], [GHOST])

    def test_noAccountRouterOnly(self) -> None:
        """
        A router without a home server answers every event for a user the
        directory does not know exactly as a home server answers it for
        an unknown user of its domain, from a sender not homed there:
        nothing tells whether the account exists.
        """
        router = self.router()
        home = HomeServer("hs9", "corp.example", self.directory, MemoryHomeStore(), Router(), self.clock)
        events: list[Event] = [
            Message(PARTNER, GHOST, "hi"),
            PresenceUpdate(PARTNER, GHOST, Presence()),
            PresenceUpdate(PARTNER, GHOST, OFFLINE),
            PresenceProbe(PARTNER, GHOST),
        ]
        events += [SubscriptionEvent(kind, PARTNER, GHOST) for kind in SubscriptionKind]

        def outcome(d: Deferred[DeliveryStatus]) -> object:
            result: list[object] = []
            d.addBoth(result.append)
            [r] = result
            if isinstance(r, Failure):
                return (type(r.value), r.value.text)  # type: ignore[union-attr]
            return r

        for event in events:
            self.assertEqual(outcome(router.deliver(event)), outcome(home.deliver(event)), event)
        self.assertEqual(outcome(router.deliver(events[0])), (UserOffline, "ghost@corp.example is offline"))
        self.assertEqual(
            outcome(router.deliver(events[1])),
            (NotAuthorised, "ghost@corp.example does not watch pat@partner.example"),
        )

    def test_otherDomains(self) -> None:
        """
        A recipient of another domain takes the route an adapter
        registered for it, else its router over a link, else the default
        route, else none.
        """
        router = self.router(RecordingRoute())
        registered, peer, default = RecordingRoute(), RecordingRoute(), RecordingRoute()
        self.failureResultOf(router.deliver(Message(ALICE, PARTNER, "0")), NoRoute)
        router.setDefaultRoute(default)
        self.successResultOf(router.deliver(Message(ALICE, PARTNER, "1")))
        self.links.domains["partner.example"] = peer
        self.successResultOf(router.deliver(Message(ALICE, PARTNER, "2")))
        router.addRoute("partner.example", registered)
        self.successResultOf(router.deliver(Message(ALICE, PARTNER, "3")))
        bodies = [[e.body for e in r.events] for r in (default, peer, registered)]  # type: ignore[union-attr]
        self.assertEqual(bodies, [["1"], ["2"], ["3"]])
        self.assertEqual([e.hops for e in peer.events], [1])

    def test_throughDomainRouter(self) -> None:
        """
        A process that is not a router hands events for other domains to
        one of its domain's routers over the link (the same one for a
        domain every time), unless an adapter of its own registered a
        route for that domain; it looks up no peer domain itself.
        """
        router = self.router(RecordingRoute())
        router.domainRouters = ("r1", "r2")
        r1, r2, peer, registered = RecordingRoute(), RecordingRoute(), RecordingRoute(), RecordingRoute()
        self.links.servers.update({"r1": r1, "r2": r2})
        self.links.domains["partner.example"] = peer
        for body in ("1", "2"):
            self.successResultOf(router.deliver(Message(ALICE, PARTNER, body)))
        chosen = [r for r in (r1, r2) if r.events]
        self.assertEqual(len(chosen), 1)
        self.assertEqual([(e.body, e.hops) for e in chosen[0].events], [("1", 1), ("2", 1)])  # type: ignore[union-attr]
        self.assertEqual(peer.events, [])
        router.addRoute("partner.example", registered)
        self.successResultOf(router.deliver(Message(ALICE, PARTNER, "3")))
        self.assertEqual([e.body for e in registered.events], ["3"])  # type: ignore[union-attr]

    def test_noLinks(self) -> None:
        """
        Without server links (C{linkRoutes} is C{None}), a user of another
        home server is unavailable (503; a message gets the uniform 480) and
        a peer domain takes the default route.
        """
        router = self.router(RecordingRoute(), linked=False)
        self.failureResultOf(router.deliver(Message(ALICE, CAROL, "hi")), UserOffline)
        self.failureResultOf(router.deliver(PresenceProbe(ALICE, CAROL)), ServiceUnavailable)
        self.failureResultOf(router.deliver(Message(ALICE, PARTNER, "hi")), NoRoute)
        default = RecordingRoute()
        router.setDefaultRoute(default)
        self.successResultOf(router.deliver(Message(ALICE, PARTNER, "hi")))
        self.assertEqual(len(default.events), 1)

    def test_linkDown(self) -> None:
        """
        A link that is down answers 503; a message's sender gets the answer
        a home server gives for a user without a session or an account (480,
        one text), so that a stranger cannot tell that the account exists;
        the message may be sent again without counting as a loop.
        """
        router = self.router(RecordingRoute())
        self.links.down.add(HS2)
        message = Message(ALICE, CAROL, "hi")
        down = self.failureResultOf(router.deliver(message), UserOffline)
        unknown = self.failureResultOf(answerNoAccount(Message(ALICE, GHOST, "hi")), UserOffline)
        self.assertEqual(down.value.text.replace(CAROL.local, GHOST.local), unknown.value.text)
        self.failureResultOf(router.deliver(PresenceProbe(ALICE, CAROL)), ServiceUnavailable)
        self.links.down.clear()
        self.successResultOf(router.deliver(message))

    def test_unknownServer(self) -> None:
        """
        A home server the directory names but the config does not know is
        unavailable (503, naming no server) and logged as an error.
        """
        self.directory.accounts[CAROL] = AccountRecord(CAROL, "hs7", "", True, "{}")
        router = self.router(RecordingRoute())
        with capturedLogs() as events:
            f = self.failureResultOf(router.deliver(PresenceProbe(ALICE, CAROL)), ServiceUnavailable)
        self.assertNotIn("hs7", f.value.text)
        self.assertIn("hs7", " ".join(formatEvent(e) for e in events))

    def test_homeHereWithoutHomeServer(self) -> None:
        """
        A router-only process that the directory names as a user's home (a
        misconfiguration) answers 503 and logs it.
        """
        router = self.router()
        with capturedLogs() as events:
            self.failureResultOf(router.deliver(Message(REMOTE, ALICE, "hi")), ServiceUnavailable)
        self.assertIn("no home server", " ".join(formatEvent(e) for e in events))

    def test_movedRetriedOnce(self) -> None:
        """
        A home server that answers L{MovedTo} (the router's cached answer
        is old) makes the router forget it and deliver again, to the home
        the directory names now; the message is not taken for a loop.
        """
        here = AnsweringRoute()
        router = self.router(here)
        self.successResultOf(router.deliver(Message(REMOTE, CAROL, "before")))
        self.directory.accounts[CAROL] = AccountRecord(CAROL, HS1, "", True, "{}")
        self.hs2 = AnsweringRoute(MovedTo("moved", HS1))
        self.links.servers[HS2] = self.hs2
        self.successResultOf(router.deliver(Message(REMOTE, CAROL, "after")))
        self.assertEqual([e.body for e in self.hs2.events], ["after"])  # type: ignore[union-attr]
        self.assertEqual([e.body for e in here.events], ["after"])  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(self.locator.homeOf(CAROL)), HS1)

    def test_movedTwice(self) -> None:
        """
        A second L{MovedTo} for the same event is not followed: the sender
        gets 503, and it is logged.
        """
        self.hs2 = AnsweringRoute(MovedTo("moved", HS1), MovedTo("moved", HS1))
        self.links.servers[HS2] = self.hs2
        router = self.router(RecordingRoute())
        with capturedLogs() as events:
            self.failureResultOf(router.deliver(Message(ALICE, CAROL, "hi")), ServiceUnavailable)
        self.assertEqual(len(self.hs2.events), 2)
        self.assertIn("moved again", " ".join(formatEvent(e) for e in events))

    def test_hopsOverLinks(self) -> None:
        """
        Each link counts a hop: an event at the hop limit does not leave
        for another home server.
        """
        router = Router(maxHops=3, domain="corp.example", serverName=HS1, locator=self.locator, linkRoutes=self.links)
        self.failureResultOf(router.deliver(Message(ALICE, CAROL, "hi", hops=3)), LoopDetected)
        self.assertEqual(self.hs2.events, [])

    def test_directoryFails(self) -> None:
        """
        A directory that cannot be read gives the sender L{ServerError};
        the failure is logged once.
        """
        self.directory.closed = True
        router = self.router(RecordingRoute())
        self.failureResultOf(router.deliver(Message(ALICE, CAROL, "hi")), ServerError)
        self.assertEqual(len(self.flushLoggedErrors(PersistenceFailed)), 1)


@implementer(IRoute)
class PendingRoute:
    """
    A route whose answers the test gives: each event gets a L{Deferred} of
    its own, left pending, as a link's answer is.

    @ivar calls: Each event handed to it, with its L{Deferred}.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Event, Deferred[DeliveryStatus]]] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        d: Deferred[DeliveryStatus] = Deferred()
        self.calls.append((event, d))
        return d


#: What the other home server answers, for each status a sender can get
#: (docs/protocol.md section 9), and what the sender gets then.
_LINK_ANSWERS: list[tuple[str, list[object], object]] = [
    ("delivered", [DeliveryStatus.DELIVERED], DeliveryStatus.DELIVERED),
    ("404", [NoSuchUser("no such user")], (NoSuchUser, "no such user", None)),
    ("480", [UserOffline("carol@corp.example is offline")], (UserOffline, "carol@corp.example is offline", None)),
    ("403", [NotAuthorised("not authorised")], (NotAuthorised, "not authorised", None)),
    ("486", [UserBusy("busy", "tel:+1555")], (UserBusy, "busy", "tel:+1555")),
    ("413", [TooLarge("too large")], (TooLarge, "too large", None)),
    ("429", [RateLimited("slow down")], (RateLimited, "slow down", None)),
    # 503 (the link's queue is full, or no answer within request_timeout):
    # answered as for a user without an account (no existence leak).
    ("503", [ServiceUnavailable("link to server hs2: 1000 requests waiting")], (UserOffline, "carol@corp.example is offline", None)),
    ("loop", [LoopDetected("Max-Hops exhausted")], (LoopDetected, "Max-Hops exhausted", None)),
    ("500", [ServerError("internal error")], (ServerError, "internal error", None)),
    # A home server that no longer homes carol: forgotten, and sent once
    # more to where the directory says now (hs2 again here).
    ("moved once", [MovedTo("moved", HS2), DeliveryStatus.DELIVERED], DeliveryStatus.DELIVERED),
    ("moved, then 480", [MovedTo("moved", HS2), UserOffline("offline")], (UserOffline, "offline", None)),
    ("moved, then 503", [MovedTo("moved", HS2), ServiceUnavailable("down")], (UserOffline, "carol@corp.example is offline", None)),
    ("moved twice", [MovedTo("moved", HS2), MovedTo("moved", HS2)], (ServiceUnavailable, "the recipient's server is unavailable", None)),
]


class LinkFastPathTests(SynchronousTestCase):
    """
    A message for a user of this domain whose home, another server, the
    locator remembers goes to the link at once with one errback of the
    router's on the link's L{Deferred} (L{Router.deliverAtOnce}'s
    C{_toLink}), and its sender gets exactly what the general way (the
    directory asked, L{followMoves} and its callbacks) gives, for every
    answer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory(
            [AccountRecord(ALICE, HS1, "", True, "{}"), AccountRecord(CAROL, HS2, "", True, "{}")]
        )

    def deliver(self, remembered: bool, answers: list[object], message: Message | None = None) -> dict[str, object]:
        """
        Deliver a message from alice to carol through a new router, the
        locator remembering carol's home or not, the link answering with
        C{answers} in turn.

        @return: What happened: the sender's outcome, the router's
            callbacks on the link's L{Deferred} while it waited, the hops of
            what the link was given, and whether the same message may be
            sent again (C{"again"}: not if delivered, a loop then).
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        if remembered:
            self.successResultOf(locator.homeOf(CAROL))
        hs2 = PendingRoute()
        here = RecordingRoute()
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=MemoryLinkRoutes(servers={HS2: hs2}))
        router.addRoute("corp.example", here, local=True)
        if message is None:
            message = Message(ALICE, CAROL, "hi")
        answer = router.deliverAtOnce(message)
        assert isinstance(answer, Deferred)
        # (Deferred.callbacks is deprecated: its list, read directly.)
        waiting = len(answer._callbacks)
        for index, outcome in enumerate(answers):
            event, d = hs2.calls[index]
            if isinstance(outcome, Exception):
                d.errback(outcome)
            else:
                d.callback(outcome)  # type: ignore[arg-type]
        result: list[object] = []
        answer.addBoth(result.append)
        again = router.deliver(message)
        if hs2.calls and not hs2.calls[-1][1].called:
            hs2.calls[-1][1].callback(DeliveryStatus.DELIVERED)
        return {
            "outcome": _outcome(result),
            "waiting": waiting,
            "hops": [event.hops for event, _ in hs2.calls],
            "again": _againOutcome(again),
            "remembered": locator.cachedHomeOf(CAROL),
        }

    def test_sameOutcomes(self) -> None:
        """
        For every answer of the other home server, the sender gets the same
        outcome with the home remembered (the synchronous path) as with the
        directory asked (the general one), the link is given the same
        events, the message may be sent again exactly when it was not
        delivered, and the locator remembers the same.
        """
        for name, answers, expected in _LINK_ANSWERS:
            fast = self.deliver(True, answers)
            general = self.deliver(False, answers)
            self.assertEqual(fast["outcome"], expected, name)
            for key in ("outcome", "hops", "again", "remembered"):
                self.assertEqual(fast[key], general[key], (name, key))
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)

    def test_oneErrback(self) -> None:
        """
        With the home remembered, the link's L{Deferred} carries one
        callback of the router's while it waits (not one each for the
        move, the 503 and the loop bookkeeping).
        """
        for name, answers, _ in _LINK_ANSWERS:
            self.assertEqual(self.deliver(True, answers)["waiting"], 1, name)

    def test_unexpectedFailure(self) -> None:
        """
        A link's failure that is no delivery status becomes L{ServerError}
        for the sender and is logged, on both paths; the message may be
        sent again.
        """
        for remembered in (True, False):
            seen = self.deliver(remembered, [RuntimeError("bug")])
            self.assertEqual(seen["outcome"], (ServerError, "internal error while delivering", None))
            self.assertEqual(seen["again"], DeliveryStatus.DELIVERED)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_movedHere(self) -> None:
        """
        A move to this process's home server (the directory homes carol
        here now) is followed at once on the synchronous path: carol's
        message goes to the home server here, and the locator remembers.
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        hs2, here = PendingRoute(), RecordingRoute()
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=MemoryLinkRoutes(servers={HS2: hs2}))
        router.addRoute("corp.example", here, local=True)
        answer = router.deliverAtOnce(Message(ALICE, CAROL, "hi"))
        assert isinstance(answer, Deferred)
        self.directory.accounts[CAROL] = AccountRecord(CAROL, HS1, "", True, "{}")
        hs2.calls[0][1].errback(MovedTo("moved", HS1))
        self.assertEqual(self.successResultOf(answer), DeliveryStatus.DELIVERED)
        self.assertEqual([(e.body, e.hops) for e in here.events], [("hi", 0)])  # type: ignore[union-attr]
        self.assertEqual(locator.cachedHomeOf(CAROL), HS1)

    def test_hopLimit(self) -> None:
        """
        A message at the hop limit is refused at once on the synchronous
        path (L{LoopDetected}), the link given nothing, and the message
        forgotten by the loop check (it may be retried).
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        hs2 = PendingRoute()
        router = Router(maxHops=3, domain="corp.example", serverName=HS1, locator=locator, linkRoutes=MemoryLinkRoutes(servers={HS2: hs2}))
        message = Message(ALICE, CAROL, "hi", hops=3)
        self.assertRaises(LoopDetected, router.deliverAtOnce, message)
        self.failureResultOf(router.deliver(message), LoopDetected)
        self.assertEqual(hs2.calls, [])

    def test_unknownServer(self) -> None:
        """
        A remembered home that is not among the [servers] of the config
        goes the general way: logged, and the sender answered as for a
        user without an account.
        """
        self.directory.accounts[CAROL] = AccountRecord(CAROL, "hs7", "", True, "{}")
        for remembered in (True, False):
            with capturedLogs() as events:
                seen = self.deliver(remembered, [])
            self.assertEqual(seen["outcome"], (UserOffline, "carol@corp.example is offline", None))
            self.assertIn("hs7", " ".join(formatEvent(e) for e in events))

    def test_throughHomeServer(self) -> None:
        """
        A home server's session sends through the synchronous path: its
        C{sendMessageAtOnce} hands back the link's L{Deferred} itself, and
        the outcome the link gives reaches the sender, with two callbacks
        on the way (the router's errback, the metrics' count).
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        hs2 = PendingRoute()
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=MemoryLinkRoutes(servers={HS2: hs2}))
        home = HomeServer(HS1, "corp.example", self.directory, MemoryHomeStore(), router, self.clock, locator=locator)
        router.addRoute("corp.example", home, local=True)
        self.successResultOf(locator.homeOf(CAROL))
        session = self.successResultOf(home.openSession(ALICE, RecordingSessionClient()))
        answer = session.sendMessageAtOnce(CAROL, "hi")  # type: ignore[attr-defined]
        self.assertIs(answer, hs2.calls[0][1])
        # The router's errback and the metrics' callback, nothing more.
        self.assertEqual(len(answer._callbacks), 2)
        hs2.calls[0][1].errback(UserBusy("busy", "tel:+1555"))
        self.assertEqual(self.failureResultOf(answer, UserBusy).value.alternate, "tel:+1555")



class PendingWaiterRoute(PendingRoute):
    """
    A L{PendingRoute} that also takes a message with a waiter, as a link
    does (L{LinkClient.deliverThen<imgateway.router.link.LinkClient.deliverThen>}):
    recorded as the message it sends (with the hop count given) and, in
    place of a L{Deferred}, a L{LinkTold}, which the test tells the answer.
    """

    def deliverThen(self, message: Message, waiter: Any, hops: int | None = None, failed: Any = None) -> None:
        sent = message if hops is None else attrs.evolve(message, hops=hops)
        # (Recorded where a Deferred would be: the tests call the same two
        # methods on either.)
        told: Any = LinkTold(message, waiter, failed)
        self.calls.append((sent, told))


class LinkTold:
    """
    What a link that takes a waiter tells (as its request,
    C{imgateway.router.link._Outgoing}, does): the outcome to the waiter; a
    failure to C{failed}, with the message and the waiter, if it was
    given, else to the waiter.
    """

    def __init__(self, message: Message, waiter: Any, failed: Any) -> None:
        self.called = False
        self.message = message
        self.waiter = waiter
        self.failed = failed

    def callback(self, result: object) -> None:
        self.called = True
        self.waiter.callback(result)

    def errback(self, fail: BaseException | Failure) -> None:
        self.called = True
        if self.failed is None:
            self.waiter.errback(fail)
        else:
            self.failed(fail, self.message, self.waiter)


class WaiterLinkRoutes(MemoryLinkRoutes):
    """
    L{MemoryLinkRoutes} whose routes to the servers are the routes it is
    given, as they are (a L{PendingWaiterRoute} keeps its C{deliverThen}).
    """

    def toServer(self, name: str) -> IRoute:
        return self.servers[name]


class RecordingWaiter:
    """
    An L{OutcomeWaiter<imgateway.router.link.OutcomeWaiter>} that records
    what it is told.
    """

    def __init__(self) -> None:
        self.called = False
        self.results: list[object] = []

    def callback(self, result: object) -> None:
        self.called = True
        self.results.append(result)

    def errback(self, fail: BaseException | Failure) -> None:
        self.called = True
        self.results.append(fail if isinstance(fail, Failure) else Failure(fail))


class LinkWaiterTests(SynchronousTestCase):
    """
    L{Router.deliverThen}: a message that goes to a link at once is handed
    to the link with a waiter (no L{Deferred}), and its outcome is told to
    the caller's waiter: for every answer of the other home server the same
    as L{Router.deliverAtOnce}'s L{Deferred} gives.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory(
            [AccountRecord(ALICE, HS1, "", True, "{}"), AccountRecord(CAROL, HS2, "", True, "{}")]
        )

    def deliver(self, waiter: bool, answers: list[object], route: PendingRoute | None = None) -> dict[str, object]:
        """
        Deliver a message from alice to carol, whose home the locator
        remembers, through a new router: L{Router.deliverThen} if
        C{waiter}, else L{Router.deliverAtOnce}; the link answers with
        C{answers} in turn.

        @return: What happened, as L{LinkFastPathTests.deliver} says, and
            (C{"returned"}) what the router returned at once, C{"told"}
            what the link was given to answer (C{"deferred"} or
            C{"waiter"}, per call).
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        hs2 = PendingWaiterRoute() if route is None else route
        here = RecordingRoute()
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={HS2: hs2}))
        router.addRoute("corp.example", here, local=True)
        message = Message(ALICE, CAROL, "hi")
        recorder = RecordingWaiter()
        result: list[object] = []
        returned: object
        if waiter:
            returned = router.deliverThen(message, recorder)
        else:
            returned = router.deliverAtOnce(message)
            assert isinstance(returned, Deferred)
            returned.addBoth(result.append)
            returned = "deferred"
        for index, outcome in enumerate(answers):
            event, d = hs2.calls[index]
            if isinstance(outcome, Exception):
                d.errback(outcome)
            else:
                d.callback(outcome)  # type: ignore[arg-type]
        if waiter:
            self.assertLessEqual(len(recorder.results), 1)
            result = recorder.results
        again = router.deliver(message)
        if hs2.calls and not hs2.calls[-1][1].called:
            hs2.calls[-1][1].callback(DeliveryStatus.DELIVERED)
        return {
            "outcome": _outcome(result),
            "returned": returned,
            "hops": [event.hops for event, _ in hs2.calls],
            "told": ["deferred" if isinstance(d, Deferred) else "waiter" for _, d in hs2.calls],
            "again": _againOutcome(again),
            "remembered": locator.cachedHomeOf(CAROL),
        }

    def test_sameOutcomes(self) -> None:
        """
        For every answer of the other home server (every status, a 503, a
        loop, a move followed once or twice), the caller's waiter is told
        the outcome L{Router.deliverAtOnce}'s L{Deferred} gives; the link
        is given the same events, the message may be sent again exactly
        when it was not delivered, and the locator remembers the same. The
        link is given a waiter, not a L{Deferred} (a move's retry goes the
        general way).
        """
        for name, answers, expected in _LINK_ANSWERS:
            then = self.deliver(True, answers)
            deferred = self.deliver(False, answers)
            self.assertEqual(then["outcome"], expected, name)
            self.assertIsNone(then["returned"], name)
            for key in ("outcome", "hops", "again", "remembered"):
                self.assertEqual(then[key], deferred[key], (name, key))
            told = then["told"]
            assert isinstance(told, list)
            self.assertEqual(told[:1], ["waiter"], name)
            self.assertEqual(set(deferred["told"]), {"deferred"}, name)  # type: ignore[call-overload]

    def test_unexpectedFailure(self) -> None:
        """
        A link's failure that is no delivery status becomes L{ServerError}
        for the waiter and is logged once, as on the L{Deferred} path; the
        message may be sent again.
        """
        for waiter in (True, False):
            with capturedLogs() as events:
                seen = self.deliver(waiter, [RuntimeError("bug")])
            self.assertEqual(seen["outcome"], (ServerError, "internal error while delivering", None))
            self.assertEqual(seen["again"], DeliveryStatus.DELIVERED)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
            self.assertIn("failed to deliver", " ".join(formatEvent(e) for e in events))

    def test_linkRaises(self) -> None:
        """
        A link whose C{deliverThen} raises: the waiter is told
        L{ServerError}, logged once, as L{Router._toLink} answers a link
        whose C{deliver} raises.
        """

        class Raising(PendingWaiterRoute):
            def deliverThen(self, message: Message, waiter: Any, hops: int | None = None, failed: Any = None) -> None:
                raise RuntimeError("bug")

        seen = self.deliver(True, [], Raising())
        self.assertEqual(seen["outcome"], (ServerError, "internal error while delivering", None))
        self.assertEqual(seen["again"], DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_noDeferred(self) -> None:
        """
        A message delivered over a link that takes a waiter makes no
        L{Deferred} at all, no copy of the message and no object of the
        router's: the link is given the message itself, its hop count plus
        one, the caller's waiter (whose answer reaches it with no call of
        the router's between) and the router's answer to a failure.
        """
        from bench.presence_fanout import counted

        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        given: list[tuple[object, ...]] = []

        class Recording(PendingWaiterRoute):
            def deliverThen(self, message: Message, waiter: Any, hops: int | None = None, failed: Any = None) -> None:
                given.append((message, waiter, hops, failed))
                super().deliverThen(message, waiter, hops, failed)

        hs2 = Recording()
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={HS2: hs2}))
        recorder = RecordingWaiter()
        message = Message(ALICE, CAROL, "hi", hops=2)

        def send() -> None:
            self.assertIsNone(router.deliverThen(message, recorder))
            hs2.calls[0][1].callback(DeliveryStatus.DELIVERED)

        calls = counted(send)
        self.assertEqual(recorder.results, [DeliveryStatus.DELIVERED])
        [(sent, waiter, hops, failed)] = given
        self.assertIs(sent, message)
        self.assertIs(waiter, recorder)
        self.assertEqual((hops, failed), (3, router._linkAnswerFailed))
        self.assertEqual([name for name in calls if "(defer.py:" in name], [])
        self.assertEqual([name for name in calls if name.startswith(("forwarded ", "preCheckedMessage "))], [])
        self.assertEqual([name for name in calls if name.startswith("__init__ (router.py")], [])
        self.assertEqual([name for name in calls if name.startswith(("deliverAtOnce ", "_toLink ", "_linkFailed ", "_failed ", "_linkAnswerFailed "))], [])
        self.assertEqual(calls["deliverThen (test_router.py:" + str(Recording.deliverThen.__code__.co_firstlineno) + ")"], 1)

    def session(self, route: PendingRoute) -> tuple[Any, list[object]]:
        """
        alice's session on hs1, whose router reaches hs2 by C{route}, and
        the list of the message outcomes its home server counts.
        """
        from tests.test_home import _CountingMetrics

        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={HS2: route}))
        home = HomeServer(HS1, "corp.example", self.directory, MemoryHomeStore(), router, self.clock, locator=locator)
        metrics = _CountingMetrics()
        home.metrics = metrics
        router.addRoute("corp.example", home, local=True)
        self.successResultOf(locator.homeOf(CAROL))
        return self.successResultOf(home.openSession(ALICE, RecordingSessionClient())), metrics.outcomes

    def test_throughHomeServer(self) -> None:
        """
        A home server's session sends through L{Router.deliverThen}: its
        C{sendMessageAtOnce} returns a L{Deferred} of its own with no
        callback on it (the face adds the only one), the link is given a
        waiter, and for every answer the sender gets, and the metrics
        count once, what the L{Deferred} path (a link without
        C{deliverThen}) gives.
        """
        for name, answers, expected in _LINK_ANSWERS:
            seen = []
            for route in (PendingWaiterRoute(), PendingRoute()):
                session, counted = self.session(route)
                answer = session.sendMessageAtOnce(CAROL, "hi")
                assert isinstance(answer, Deferred)
                told = route.calls[0][1]
                self.assertEqual(isinstance(told, Deferred), type(route) is PendingRoute, name)
                if type(route) is PendingWaiterRoute:
                    self.assertEqual(answer._callbacks, [], name)
                self.assertEqual(counted, [], name)
                for index, outcome in enumerate(answers):
                    d = route.calls[index][1]
                    if isinstance(outcome, Exception):
                        d.errback(outcome)
                    else:
                        d.callback(outcome)  # type: ignore[arg-type]
                self.assertEqual(len(counted), 1, name)
                seen.append((_outcome(_fired(answer)), _outcome(counted)))
            self.assertEqual(seen[0], seen[1], name)
            self.assertEqual(seen[0][0], expected, name)

    def test_throughHomeServerThen(self) -> None:
        """
        A home server's session asked with a call (C{sendMessageThen}, the
        native face's way) returns C{None} for a message that goes to a
        link with a waiter, makes no L{Deferred}, and calls its C{answer}
        once, after, with the outcome C{sendMessageAtOnce}'s L{Deferred}
        gives on the L{Deferred} path (a link without C{deliverThen}), the
        token and the message id as given; the metrics count it once.
        """
        from bench.presence_fanout import counted

        for name, answers, expected in _LINK_ANSWERS:
            route = PendingWaiterRoute()
            session, metered = self.session(route)
            answered: list[tuple[object, ...]] = []
            calls = counted(lambda: answered.append(("returned", session.sendMessageThen(lambda *a: answered.append(a), "token", CAROL, "hi", "text/plain", "m-1"))))
            self.assertEqual(answered, [("returned", None)], name)
            self.assertEqual([call for call in calls if "(defer.py:" in call], [], name)
            for index, outcome in enumerate(answers):
                d = route.calls[index][1]
                if isinstance(outcome, Exception):
                    d.errback(outcome)
                else:
                    d.callback(outcome)  # type: ignore[arg-type]
            self.assertEqual(len(answered), 2, name)
            result, token, messageId = answered[1]
            self.assertEqual((_outcome([result]), token, messageId), (expected, "token", "m-1"), name)
            self.assertEqual(_outcome(metered), expected, name)

            plain = PendingRoute()
            session, metered = self.session(plain)
            viaDeferred = session.sendMessageThen(lambda *a: self.fail("called"), "token", CAROL, "hi", "text/plain", "m-1")
            assert isinstance(viaDeferred, Deferred)
            for index, outcome in enumerate(answers):
                d = plain.calls[index][1]
                if isinstance(outcome, Exception):
                    d.errback(outcome)
                else:
                    d.callback(outcome)  # type: ignore[arg-type]
            self.assertEqual(_outcome(_fired(viaDeferred)), expected, name)

    def test_answerFails(self) -> None:
        """
        A C{sendMessageThen} answer that raises is logged, not raised into
        the link that told the outcome.
        """
        route = PendingWaiterRoute()
        session, _ = self.session(route)

        def answer(*arguments: object) -> None:
            raise RuntimeError("face broken")

        self.assertIsNone(session.sendMessageThen(answer, None, CAROL, "hi"))
        route.calls[0][1].callback(DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_throughHomeServerAtOnce(self) -> None:
        """
        A link that tells its waiter at once (a full queue: 503) leaves the
        session's L{Deferred} fired when it is returned (with
        C{sendMessageThen} too, whose call is then not made), counted once,
        and the sender answered as for a user without an account.
        """

        class Full(PendingWaiterRoute):
            def deliverThen(self, message: Message, waiter: Any, hops: int | None = None, failed: Any = None) -> None:
                LinkTold(message, waiter, failed).errback(ServiceUnavailable("link to server hs2: 1000 requests waiting"))

        session, counted = self.session(Full())
        answer = session.sendMessageAtOnce(CAROL, "hi")
        self.assertEqual(_outcome(_fired(answer)), (UserOffline, "carol@corp.example is offline", None))
        self.assertEqual(len(counted), 1)
        # Asked with a call: not called before it returns, the fired
        # Deferred returned instead.
        answer = session.sendMessageThen(lambda *a: self.fail("called"), None, CAROL, "hi")
        assert isinstance(answer, Deferred)
        self.assertEqual(_outcome(_fired(answer)), (UserOffline, "carol@corp.example is offline", None))
        self.assertEqual(len(counted), 2)

    def test_otherEventsAtOnce(self) -> None:
        """
        Every other event goes to L{Router.deliverAtOnce} (the waiter not
        told): a recipient homed here, one whose home is not remembered,
        one whose link takes no waiter, a presence update, another domain's
        recipient; a hop limit reached is refused at once, as there, and
        the link is given nothing.
        """
        locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        hs2 = PendingWaiterRoute()
        here = RecordingRoute()
        router = Router(maxHops=3, domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={HS2: hs2}))
        router.addRoute("corp.example", here, local=True)
        atOnce: list[Event] = []
        deliverAtOnce = router.deliverAtOnce

        def recording(event: Event, *home: object) -> object:
            atOnce.append(event)
            return deliverAtOnce(event, *home)  # type: ignore[arg-type]

        self.patch(router, "deliverAtOnce", recording)
        recorder = RecordingWaiter()
        self.successResultOf(locator.homeOf(ALICE))
        toAlice = Message(CAROL, ALICE, "hi")
        self.assertIsNotNone(router.deliverThen(toAlice, recorder))
        # carol's home not remembered: the directory asked, the general way.
        unknown = Message(ALICE, CAROL, "hi")
        outcome = router.deliverThen(unknown, recorder)
        assert isinstance(outcome, Deferred)
        [(_, told)] = hs2.calls
        self.assertIsInstance(told, Deferred)
        presence = PresenceUpdate(ALICE, CAROL, Presence())
        self.assertIsNotNone(router.deliverThen(presence, recorder))
        toRomeo = Message(ALICE, REMOTE, "hi")
        toRomeoOutcome = router.deliverThen(toRomeo, recorder)
        assert isinstance(toRomeoOutcome, Deferred)
        self.failureResultOf(toRomeoOutcome, NoRoute)
        # carol's home now remembered, her link one that takes no waiter.
        plain = PendingRoute()
        router.linkRoutes.servers[HS2] = plain  # type: ignore[union-attr]
        viaPlain = Message(ALICE, CAROL, "hi")
        self.assertIsInstance(router.deliverThen(viaPlain, recorder), Deferred)
        self.assertEqual(len(plain.calls), 1)
        self.assertEqual(recorder.results, [])
        self.assertEqual(atOnce, [toAlice, unknown, presence, toRomeo, viaPlain])
        router.linkRoutes.servers[HS2] = hs2  # type: ignore[union-attr]
        sent = len(hs2.calls)
        self.assertRaises(LoopDetected, router.deliverThen, Message(ALICE, CAROL, "hi", hops=3), recorder)
        self.assertEqual(len(hs2.calls), sent)
        self.assertEqual(recorder.results, [])


def _againOutcome(d: Deferred[DeliveryStatus]) -> object:
    """
    The outcome of a message sent again: its L{_outcome}, a loop's without
    its text (which names the message's ids).
    """
    outcome = _outcome(_fired(d))
    if isinstance(outcome, tuple) and outcome[0] is LoopDetected:
        return LoopDetected
    return outcome


def _fired(d: Deferred[DeliveryStatus]) -> list[object]:
    result: list[object] = []
    d.addBoth(result.append)
    return result


def _outcome(result: list[object]) -> object:
    """
    A L{Deferred}'s result as a comparable value: the status, or the
    failure's type, text and alternate; C{None} if it has not fired.
    """
    if not result:
        return None
    [r] = result
    if isinstance(r, Failure):
        r.cleanFailure()
        return (type(r.value), r.value.text, getattr(r.value, "alternate", None))  # type: ignore[union-attr]
    return r


@implementer(IRoute)
class AtOnceRoute:
    """
    A home server's route with its fast path (C{deliverAtOnce}): each
    message answered with the next of C{answers} (C{None}: not for the
    fast path, then L{deliver} takes it).
    """

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.atOnce: list[Event] = []
        self.events: list[Event] = []

    def deliverAtOnce(self, event: Event) -> object:
        self.atOnce.append(event)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


class SeenMessagesTests(SynchronousTestCase):
    """
    What the loop check remembers (L{Router.deliverAtOnce}): every message
    that goes on from the router, not one delivered at once to sessions of
    this process (it did not leave it: no loop brings it back; a link's
    duplicate is its receiving side's to answer).
    """

    def test_deliveredHereNotRemembered(self) -> None:
        """
        A message the home server here delivers at once is not remembered:
        the same again is given to it again, not L{LoopDetected}; nor is
        one it refuses at once (as before). One whose outcome comes later
        (a session in another process), or that the fast path does not
        take (the general way), is remembered: the same again is a loop.
        """
        m = Message(REMOTE, ALICE, "hi")
        cases: list[tuple[list[object], object, object]] = [
            ([DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED], DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED),
            ([UserBusy("busy"), DeliveryStatus.DELIVERED], UserBusy, DeliveryStatus.DELIVERED),
            ([Deferred()], Deferred, LoopDetected),
            ([None], Deferred, LoopDetected),
        ]
        for answers, first, again in cases:
            router, local = Router(), AtOnceRoute(answers)
            router.addRoute("corp.example", local, local=True)
            outcomes: list[object] = []
            for expected in (first, again):
                try:
                    outcome = router.deliverAtOnce(m)
                except DeliveryError as e:
                    outcomes.append(type(e))
                else:
                    outcomes.append(outcome if type(outcome) is DeliveryStatus else type(outcome))
            self.assertEqual(outcomes, [first, again], answers)
            self.assertEqual(list(router._seen), [] if again is DeliveryStatus.DELIVERED else [m.routingId])

    def test_goingOnRemembered(self) -> None:
        """
        A message the router hands a link (the locator remembering its
        recipient on another server) is remembered, by L{Router.deliverAtOnce}
        and by L{Router.deliverThen}: the same again is L{LoopDetected}.
        """
        directory = MemoryDirectory([AccountRecord(CAROL, HS2, "", True, "{}")])
        locator = DirectoryHomeLocator(directory, Clock(), 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        for deliver in ("deliverAtOnce", "deliverThen"):
            hs2 = PendingWaiterRoute()
            router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={HS2: hs2}))
            router.addRoute("corp.example", AtOnceRoute([]), local=True)
            m = Message(ALICE, CAROL, "hi")
            args: tuple[object, ...] = (RecordingWaiter(),) if deliver == "deliverThen" else ()
            getattr(router, deliver)(m, *args)
            self.assertEqual(list(router._seen), [m.routingId])
            self.assertRaises(LoopDetected, getattr(router, deliver), m, *args)
            self.assertEqual(len(hs2.calls), 1)

    def test_homeAskedOnce(self) -> None:
        """
        In a domain of several home servers, a session's message to a user
        homed on this one (L{Router.deliverThen}, then
        L{Router.deliverAtOnce}) asks the locator once.
        """
        directory = MemoryDirectory([AccountRecord(ALICE, HS1, "", True, "{}")])
        locator = DirectoryHomeLocator(directory, Clock(), 30.0)
        self.successResultOf(locator.homeOf(ALICE))
        asked: list[Address] = []
        cached = locator.cachedHomeOf

        def counting(address: Address) -> object:
            asked.append(address)
            return cached(address)

        self.patch(locator, "cachedHomeOf", counting)
        local = AtOnceRoute([DeliveryStatus.DELIVERED])
        router = Router(domain="corp.example", serverName=HS1, locator=locator, linkRoutes=WaiterLinkRoutes(servers={}))
        router.addRoute("corp.example", local, local=True)
        self.assertIs(router.deliverThen(Message(CAROL, ALICE, "hi"), RecordingWaiter()), DeliveryStatus.DELIVERED)
        self.assertEqual(asked, [ALICE])
        self.assertEqual(len(local.atOnce), 1)
