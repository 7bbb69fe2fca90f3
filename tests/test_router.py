"""
Tests for L{imgateway.router.router}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgateway.core.address import Address
from imgateway.core.errors import DeliveryStatus, LoopDetected, NoRoute, ServerError
from imgateway.core.events import Event, Message
from imgateway.interfaces import IRoute, IRouter
from imgateway.router.router import Router

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
