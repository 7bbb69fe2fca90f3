"""
Tests for L{imgateway.home.server}: sessions, presence aggregation and
leases, subscriptions and authorisation, access lists, rules and message
delivery statuses.
"""

from __future__ import annotations

import sys
import weakref
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from imgateway.adapters.native.framing import Request
from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.errors import (
    InvalidAddress,
    LoopDetected,
    MovedTo,
    NoRoute,
    NotAuthorised,
    QuotaExceeded,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    TooManySessions,
    UserBusy,
    UserOffline,
)
from imgateway.core.errors import DeliveryStatus
from imgateway.core.events import Event, Message, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import OFFLINE, Presence, PresenceState, aggregate
from imgateway.core.records import (
    MAX_DISPLAY_NAME_CHARS,
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    PresenceRule,
    RuleAction,
    Subscription,
)
from imgateway.core import events
from imgateway.core import sending as sendingModule
from imgateway.home import server as homeModule
from imgateway.home.server import MAX_LABEL_CHARS, HomeServer, HomeServerService, Session, _forget, _States, _UserState
from imgateway.interfaces import (
    IAnsweringSession,
    IAtOnceRoute,
    IAtOnceSession,
    IDirectRoute,
    IHomeServer,
    IRoute,
    ISession,
    ISessionClient,
)
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.router.router import Router
from imgateway.status.nometrics import NoMetrics
from imgateway.testing import (
    MemoryDirectory,
    MemoryHomeStore,
    MemoryLinkRoutes,
    RecordingSessionClient,
    addUser,
    memoryGateway,
)

DOMAIN = "corp.example"
ALICE = Address.fromString("alice@corp.example")
BOB = Address.fromString("bob@corp.example")
CAROL = Address.fromString("carol@corp.example")
GHOST = Address.fromString("ghost@corp.example")
ROMEO = Address.fromString("romeo@xmpp.example")


@implementer(IRoute)
class RecordingRoute:
    """
    A route to another network that takes every event and answers nothing.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


class HomeServerTestsMixin:
    """
    A home server on memory stores, with alice, bob and carol.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory()
        for a in (ALICE, BOB, CAROL):
            self.directory.addAccount(AccountRecord(a, "hs1", a.local.title(), True, "{}"))
        self.store = MemoryHomeStore()
        self.router = Router()
        self.home = HomeServer(
            "hs1", DOMAIN, self.directory, self.store, self.router, self.clock, HomeConfig(maxSessionsPerUser=3)
        )
        self.router.addRoute(DOMAIN, self.home, local=True)

    def open(self, address: Address, label: str = "") -> tuple[Session, RecordingSessionClient]:
        client = RecordingSessionClient()
        session = self.successResultOf(self.home.openSession(address, client, label))  # type: ignore[attr-defined]
        return session, client

    def recordRouted(self) -> list[Event]:
        """
        @return: The events handed to the router's L{Router.deliver} from
            now on (they are still delivered).
        """
        routed: list[Event] = []
        deliver = self.router.deliver

        def recording(event: Event) -> Deferred[DeliveryStatus]:
            routed.append(event)
            return deliver(event)

        self.router.deliver = recording  # type: ignore[method-assign]
        return routed

    def online(self, address: Address) -> tuple[Session, RecordingSessionClient]:
        session, client = self.open(address)
        session.publish(Presence())
        return session, client

    def befriend(self, watcher: Session, target: Session) -> None:
        """
        C{watcher} subscribes to C{target}, who authorises.
        """
        self.successResultOf(watcher.subscribe(target.address))  # type: ignore[attr-defined]
        self.successResultOf(target.authorise(watcher.address, True))  # type: ignore[attr-defined]


class SessionTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Opening and closing sessions.
    """

    def test_interfaces(self) -> None:
        """
        The home server provides L{IHomeServer}, sessions L{ISession}, the
        recording client L{ISessionClient}.
        """
        session, client = self.open(ALICE)
        verifyObject(IHomeServer, self.home)
        verifyObject(ISession, session)
        verifyObject(ISessionClient, client)

    def test_fastPathInterfaces(self) -> None:
        """
        The home server provides L{IDirectRoute} (and so L{IAtOnceRoute}),
        its sessions L{IAtOnceSession} and L{IAnsweringSession}: the
        optional fast paths the router and the faces look up by name have
        the signatures these interfaces declare, so a change to either side
        fails here.
        """
        session, _ = self.open(ALICE)
        self.assertTrue(verifyClass(IAtOnceRoute, HomeServer))
        self.assertTrue(verifyObject(IAtOnceRoute, self.home))
        self.assertTrue(verifyClass(IDirectRoute, HomeServer))
        self.assertTrue(verifyObject(IDirectRoute, self.home))
        self.assertTrue(verifyClass(IAtOnceSession, Session))
        self.assertTrue(verifyObject(IAtOnceSession, session))
        self.assertTrue(verifyClass(IAnsweringSession, Session))
        self.assertTrue(verifyObject(IAnsweringSession, session))

    def test_startsOffline(self) -> None:
        """
        A new session counts as offline until it publishes.
        """
        session, _ = self.open(ALICE)
        self.assertEqual(self.home.presenceOf(ALICE), OFFLINE)
        self.assertEqual(self.home.sessionsOf(ALICE), [session])

    def test_sessionLimit(self) -> None:
        """
        Past C{max_sessions_per_user}, opening a session fails with
        L{TooManySessions}; closing one makes room.
        """
        sessions = [self.open(ALICE)[0] for _ in range(3)]
        self.failureResultOf(self.home.openSession(ALICE, RecordingSessionClient()), TooManySessions)
        sessions[0].close()
        self.open(ALICE)

    def test_closeIdempotent(self) -> None:
        """
        Closing a session twice is harmless; the user is forgotten once its
        last session closes.
        """
        session, _ = self.open(ALICE)
        session.close("bye")
        session.close("bye")
        self.assertEqual(self.home.sessionsOf(ALICE), [])
        self.assertEqual(self.home.users(), [])

    def test_labelsUnique(self) -> None:
        """
        A label another session of the user has gets a suffix; another
        user's sessions do not count; a closed session's label is free
        again.
        """
        phone, _ = self.open(ALICE, "phone")
        second, _ = self.open(ALICE, "phone")
        third, _ = self.open(ALICE, "phone")
        bob, _ = self.open(BOB, "phone")
        self.assertEqual([phone.label, second.label, third.label, bob.label], ["phone", "phone-2", "phone-3", "phone"])
        second.close()
        again, _ = self.open(ALICE, "phone")
        self.assertEqual(again.label, "phone-2")

    def test_labelCut(self) -> None:
        """
        A label is cut to L{MAX_LABEL_CHARS}; a suffix keeps it within that.
        """
        long = "x" * (MAX_LABEL_CHARS + 10)
        first, _ = self.open(ALICE, long)
        second, _ = self.open(ALICE, long)
        self.assertEqual(first.label, "x" * MAX_LABEL_CHARS)
        self.assertEqual(second.label, "x" * (MAX_LABEL_CHARS - 2) + "-2")

    def test_emptyLabel(self) -> None:
        """
        A session opened without a label is labelled with its id.
        """
        session, _ = self.open(ALICE)
        self.assertEqual(session.label, session.sessionId)

    def test_loginReadsOnce(self) -> None:
        """
        A user's first session reads everything the home server keeps of
        the user in one store read (L{IHomeStore.getUserRecords}), and the
        state it builds is the stored one; a second session reads nothing.
        """
        self.store.contacts[ALICE] = {BOB: ContactRecord(BOB, "Bob")}
        self.store.authorisations[(ALICE, BOB)] = AuthorisationState.AUTHORISED
        self.store.authorisations[(ALICE, CAROL)] = AuthorisationState.PENDING
        self.store.access[ALICE] = {"spam.example": AccessList.BLOCK}
        session, _ = self.open(ALICE)
        self.assertEqual(self.store.reads, [("getUserRecords", ALICE)])
        self.open(ALICE)
        self.assertEqual(self.store.reads, [("getUserRecords", ALICE)])
        self.assertEqual(
            [(v.address, v.displayName) for v in self.successResultOf(session.contacts())], [(BOB, "Bob")]
        )
        self.assertEqual(self.successResultOf(session.pendingRequests()), [CAROL])
        self.assertEqual(self.successResultOf(session.accessLists()), {"spam.example": AccessList.BLOCK})

    def test_closeAll(self) -> None:
        """
        L{HomeServer.closeAll} tells every client why and closes them.
        """
        _, client = self.open(ALICE)
        self.home.closeAll("server shutting down")
        self.assertEqual(client.closed, ["server shutting down"])
        self.assertEqual(self.home.users(), [])


class PresenceTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Presence aggregation, leases and fan-out.
    """

    def test_aggregateAcrossSessions(self) -> None:
        """
        A user's presence is the most available of its sessions'; all of the
        user's sessions are told of the aggregate.
        """
        phone, phoneClient = self.open(ALICE, "phone")
        desk, _ = self.open(ALICE, "desk")
        phone.publish(Presence(PresenceState.AWAY, "walking"))
        desk.publish(Presence(PresenceState.BUSY, "meeting"))
        self.assertEqual(self.home.presenceOf(ALICE), Presence(PresenceState.AWAY, "walking"))
        desk.publish(Presence(PresenceState.ONLINE))
        self.assertEqual(self.home.presenceOf(ALICE), Presence())
        self.assertEqual(phoneClient.presences[-1], (ALICE, Presence()))

    def test_watcherSeesChanges(self) -> None:
        """
        An authorised watcher is told each change of what it may see, once.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.assertEqual(aliceClient.presences[-1], (BOB, Presence()))
        bob.publish(Presence(PresenceState.ON_THE_PHONE, "call"))
        bob.publish(Presence(PresenceState.ON_THE_PHONE, "call"))
        seen = [p for a, p in aliceClient.presences if a == BOB]
        self.assertEqual(seen, [Presence(), Presence(PresenceState.ON_THE_PHONE, "call")])

    def test_appearOffline(self) -> None:
        """
        Watchers see an appear-offline user as offline, and messages to it
        fail as for an offline user.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        bob.publish(Presence(PresenceState.APPEAR_OFFLINE))
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)

    def test_leaseExpires(self) -> None:
        """
        A session that does not re-publish within its lease counts as offline;
        a re-publish restarts the lease.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.open(BOB)
        self.befriend(alice, bob)
        granted = bob.publish(Presence(PresenceState.AWAY), lease=100)
        self.assertEqual(granted, 100)
        self.clock.advance(99)
        bob.publish(Presence(PresenceState.AWAY), lease=100)
        self.clock.advance(99)
        self.assertEqual(self.home.presenceOf(BOB).state, PresenceState.AWAY)
        self.clock.advance(1)
        self.assertEqual(self.home.presenceOf(BOB), OFFLINE)
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIn(alice, self.home.leases)

    def test_noInstanceDicts(self) -> None:
        """
        A session and its user's cached state have no instance dict (one
        each per logged-in user: slots take less memory); the metrics may
        still refer to a session weakly.
        """
        alice, _ = self.open(ALICE)
        for o in (alice, alice._user):
            self.assertFalse(hasattr(o, "__dict__"), type(o))
        self.assertIs(weakref.ref(alice)(), alice)

    def test_leasesShareOneDelayedCall(self) -> None:
        """
        Sessions present with the same lease hold no delayed call of their
        own: one for all of them. Each lease still runs out exactly when
        it should, and a closed session's lease is gone.
        """
        alice, _ = self.open(ALICE)
        bob, _ = self.open(BOB)
        carol, _ = self.open(Address.fromParts("carol", ALICE.domain))
        alice.publish(Presence(PresenceState.AWAY), lease=100)
        self.clock.advance(1)
        bob.publish(Presence(PresenceState.AWAY), lease=100)
        carol.publish(Presence(PresenceState.AWAY), lease=100)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual((alice.leaseEnd(), bob.leaseEnd()), (100, 101))
        carol.close()
        self.assertIsNone(carol.leaseEnd())
        self.clock.advance(99 - 2**-10)
        self.assertEqual(self.home.presenceOf(ALICE).state, PresenceState.AWAY)
        self.clock.advance(2**-10)
        self.assertEqual(self.home.presenceOf(ALICE), OFFLINE)
        self.assertEqual(self.home.presenceOf(BOB).state, PresenceState.AWAY)
        self.clock.advance(1)
        self.assertEqual(self.home.presenceOf(BOB), OFFLINE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leaseBounds(self) -> None:
        """
        Leases asked for are kept between the configured bounds.
        """
        alice, _ = self.open(ALICE)
        self.assertEqual(alice.publish(Presence(), lease=1), HomeConfig().minPresenceLease)
        self.assertEqual(alice.publish(Presence(), lease=10**9), HomeConfig().maxPresenceLease)
        self.assertEqual(alice.publish(Presence()), HomeConfig().presenceLease)

    def test_lastSessionClosing(self) -> None:
        """
        When a user's last session closes, its watchers see it offline and
        no timer is left behind.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        bob.close()
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))
        alice.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_contactPresenceOnLogin(self) -> None:
        """
        A user who logs in learns the presence of the contacts it watches.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        bob.publish(Presence(PresenceState.OUT_TO_LUNCH, "back at 2"))
        alice.close()
        alice, aliceClient = self.open(ALICE)
        self.assertIn((BOB, Presence(PresenceState.OUT_TO_LUNCH, "back at 2")), aliceClient.presences)
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual(view.presence, Presence(PresenceState.OUT_TO_LUNCH, "back at 2"))

    def test_probesAnsweredInPlace(self) -> None:
        """
        At login, a contact of this server whose lane is idle is asked for
        its presence in place, and its answer taken in at once (nothing
        waits behind the login in the user's lane): nothing goes through
        the router, and the user learns the presence of those online as
        before; a contact without sessions costs nothing.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        carol, _ = self.online(CAROL)
        self.befriend(alice, bob)
        self.befriend(alice, carol)
        bob.publish(Presence(PresenceState.BUSY, "meeting"))
        carol.close()
        alice.close()
        routed = self.recordRouted()
        alice, aliceClient = self.open(ALICE)
        self.assertEqual(routed, [])
        self.assertEqual(aliceClient.presences, [(BOB, Presence(PresenceState.BUSY, "meeting"))])

    def test_probeAnswerWaitsBehindLane(self) -> None:
        """
        When work waits behind the login in the user's lane, a contact's
        answer goes through the router, behind that work, as before.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        alice.close()
        busy: Deferred[None] = Deferred()
        self.home._serial(ALICE, lambda: busy)
        client = RecordingSessionClient()
        opening = self.home.openSession(ALICE, client)
        order: list[str] = []
        self.home._serial(ALICE, lambda: order.append(f"behind, {len(client.presences)} presences"))
        routed = self.recordRouted()
        busy.callback(None)
        self.successResultOf(opening)
        self.assertEqual([(e.sender, e.recipient) for e in routed], [(BOB, ALICE)])
        self.assertEqual(order, ["behind, 0 presences"])
        self.assertEqual(client.presences, [(BOB, Presence())])

    def test_probeWaitsForBusyLane(self) -> None:
        """
        A contact whose lane has work under way at the user's login gets
        the probe through the router, in its lane, after that work; the
        user then learns its presence.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        alice.close()
        busy: Deferred[None] = Deferred()
        self.home._serial(BOB, lambda: busy)
        routed = self.recordRouted()
        alice, aliceClient = self.open(ALICE)
        self.assertEqual([(e.sender, e.recipient) for e in routed if isinstance(e, PresenceProbe)], [(ALICE, BOB)])
        self.assertEqual(aliceClient.presences, [])
        busy.callback(None)
        self.assertEqual(aliceClient.presences, [(BOB, Presence())])

    def test_offlineWatchersNotSent(self) -> None:
        """
        A presence change sends nothing through the router to a watcher of
        this server without sessions (it would be refused as offline); the
        watcher learns the presence at its next login.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.befriend(bob, alice)
        bob.close()
        routed = self.recordRouted()
        alice.publish(Presence(PresenceState.AWAY, "lunch"))
        self.assertEqual([e for e in routed if e.recipient == BOB], [])
        _, bobClient = self.open(BOB)
        self.assertIn((ALICE, Presence(PresenceState.AWAY, "lunch")), bobClient.presences)

    def test_presenceDeliveredInPlace(self) -> None:
        """
        A presence change reaches a watcher of this server with sessions
        and an idle lane in place, not through the router; a watcher whose
        lane has work under way gets it through the router, after that
        work.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        carol, carolClient = self.online(CAROL)
        self.befriend(bob, alice)
        self.befriend(carol, alice)
        busy: Deferred[None] = Deferred()
        self.home._serial(CAROL, lambda: busy)
        routed = self.recordRouted()
        alice.publish(Presence(PresenceState.AWAY, "lunch"))
        self.assertEqual([e.recipient for e in routed], [CAROL])
        self.assertEqual(bobClient.presences[-1], (ALICE, Presence(PresenceState.AWAY, "lunch")))
        self.assertNotEqual(carolClient.presences[-1], (ALICE, Presence(PresenceState.AWAY, "lunch")))
        busy.callback(None)
        self.assertEqual(carolClient.presences[-1], (ALICE, Presence(PresenceState.AWAY, "lunch")))
        self.assertEqual(self.home._lanes, {})

    def test_unauthorisedPresenceRefused(self) -> None:
        """
        A presence update from someone the recipient does not watch is
        refused.
        """
        self.online(ALICE)
        update = PresenceUpdate(BOB, ALICE, Presence())
        self.failureResultOf(self.home.deliver(update), NotAuthorised)


class SubscriptionTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Subscriptions, authorisation and the contact list.
    """

    def test_requestAndAuthorise(self) -> None:
        """
        A subscription request is pending until the target authorises it; the
        target is asked, the watcher is told the answer, and both contact
        views follow.
        """
        alice, aliceClient = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        state = self.successResultOf(alice.subscribe(BOB, "Bob"))
        self.assertEqual(state, AuthorisationState.PENDING)
        self.assertEqual(bobClient.subscriptions, [SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, BOB)])
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [ALICE])
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.displayName, view.subscription, view.pending), ("Bob", Subscription.NONE, True))

        self.successResultOf(bob.authorise(ALICE, True))
        self.assertIn(SubscriptionEvent(SubscriptionKind.AUTHORISE, BOB, ALICE), aliceClient.subscriptions)
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.subscription, view.pending, view.presence), (Subscription.TO, False, Presence()))
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [])
        self.assertEqual(aliceClient.contacts[-1].subscription, Subscription.TO)

    def test_mutual(self) -> None:
        """
        When both authorise each other, both contact entries say C{both}.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.befriend(bob, alice)
        [a] = self.successResultOf(alice.contacts())
        [b] = self.successResultOf(bob.contacts())
        self.assertEqual((a.subscription, b.subscription), (Subscription.BOTH, Subscription.BOTH))

    def test_refuse(self) -> None:
        """
        A refused watcher is told, and sees nothing.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.successResultOf(alice.subscribe(BOB))
        self.successResultOf(bob.authorise(ALICE, False))
        self.assertIn(SubscriptionEvent(SubscriptionKind.REFUSE, BOB, ALICE), aliceClient.subscriptions)
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.subscription, view.pending, view.presence), (Subscription.NONE, False, OFFLINE))

    def test_revoke(self) -> None:
        """
        Denying an authorised watcher revokes it: it sees the user offline.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.successResultOf(bob.authorise(ALICE, False))
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))
        bob.publish(Presence(PresenceState.BUSY))
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))

    def test_requestToOfflineUserPersists(self) -> None:
        """
        A request to a user with no session waits in the store; the user finds
        it on login and can authorise it.
        """
        alice, aliceClient = self.online(ALICE)
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.PENDING)
        bob, _ = self.online(BOB)
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [ALICE])
        self.successResultOf(bob.authorise(ALICE, True))
        self.assertEqual(aliceClient.presences[-1], (BOB, Presence()))

    def test_unknownTarget(self) -> None:
        """
        Subscribing to a user that does not exist (or is disabled) is
        answered as a real request still pending is, and stays pending: the
        requester cannot tell whether the account exists.
        """
        self.directory.updateAccount(CAROL, enabled=False)
        alice, _ = self.online(ALICE)
        for target in (GHOST, CAROL, BOB):
            self.assertEqual(self.successResultOf(alice.subscribe(target)), AuthorisationState.PENDING)
        views = self.successResultOf(alice.contacts())
        self.assertEqual([(v.address, v.pending) for v in views], [(BOB, True), (CAROL, True), (GHOST, True)])

    def test_noRoute(self) -> None:
        """
        Subscribing to a user of a domain with no route fails with
        L{NoRoute}.
        """
        alice, _ = self.online(ALICE)
        self.failureResultOf(alice.subscribe(Address.fromString("x@elsewhere.example")), NoRoute)

    def test_self(self) -> None:
        """
        A user cannot subscribe to itself.
        """
        alice, _ = self.online(ALICE)
        self.failureResultOf(alice.subscribe(ALICE), InvalidAddress)

    def test_unsubscribe(self) -> None:
        """
        Unsubscribing removes the contact and the watch, and tells the target.
        """
        alice, aliceClient = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.befriend(alice, bob)
        self.successResultOf(alice.unsubscribe(BOB))
        self.assertEqual(self.successResultOf(alice.contacts()), [])
        self.assertEqual(aliceClient.removed, [BOB])
        self.assertIn(SubscriptionEvent(SubscriptionKind.UNSUBSCRIBE, ALICE, BOB), bobClient.subscriptions)
        bob.publish(Presence(PresenceState.AWAY))
        self.assertNotIn((BOB, Presence(PresenceState.AWAY)), aliceClient.presences)

    def test_putContact(self) -> None:
        """
        L{Session.putContact} adds or renames a contact without a request;
        every session of the user is told.
        """
        alice, aliceClient = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.successResultOf(alice.putContact(BOB, "Bobby"))
        self.successResultOf(alice.putContact(BOB, "Robert"))
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.displayName, view.subscription, view.pending), ("Robert", Subscription.NONE, False))
        self.assertEqual([c.displayName for c in aliceClient.contacts], ["Bobby", "Robert"])
        self.assertEqual(bobClient.subscriptions, [])
        self.failureResultOf(alice.putContact(ALICE), InvalidAddress)

    def test_allowList(self) -> None:
        """
        A request from an entry (address or domain) of the allow list is
        authorised without asking.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.successResultOf(bob.setAccess("corp.example", AccessList.ALLOW))
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.AUTHORISED)
        self.assertEqual(bobClient.subscriptions, [])

    def test_blockedRequest(self) -> None:
        """
        A request from a blocked address is answered as a request still
        pending is (no 403: it cannot tell it is blocked), and the blocking
        user is not asked.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.successResultOf(bob.setAccess("im:alice@corp.example", AccessList.BLOCK))
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.PENDING)
        self.assertEqual(bobClient.subscriptions, [])
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [])

    def test_blockHidesPresence(self) -> None:
        """
        Blocking an authorised watcher makes it see the user offline;
        unblocking shows the presence again.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.NONE))
        self.assertEqual(aliceClient.presences[-1], (BOB, Presence()))

    def test_badAccessEntry(self) -> None:
        """
        An access entry that is neither an address nor a domain is refused.
        """
        bob, _ = self.online(BOB)
        self.failureResultOf(bob.setAccess("not a domain!", AccessList.BLOCK), InvalidAddress)


class MessageTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Message delivery and its statuses.
    """

    def test_deliveredToEverySession(self) -> None:
        """
        A message reaches every present session of the recipient.
        """
        alice, _ = self.online(ALICE)
        _, phone = self.online(BOB)
        _, desk = self.online(BOB)
        status = self.successResultOf(alice.sendMessage(BOB, "hello", messageId="m1"))
        self.assertEqual(status, DeliveryStatus.DELIVERED)
        for client in (phone, desk):
            [m] = client.messages
            self.assertEqual((m.sender, m.recipient, m.body, m.messageId), (ALICE, BOB, "hello", "m1"))

    def test_messageMadePreChecked(self) -> None:
        """
        A session's message is made by L{preCheckedMessage} (what the
        L{Message} constructor checks, the id, checked first): the message
        delivered equals the one the constructor makes, with or without an
        id; an id the constructor refuses is refused with the same text, as
        L{InvalidAddress}, and nothing is delivered.
        """
        made: list[Message] = []

        def recording(*arguments: Any) -> Message:
            message = events.preCheckedMessage(*arguments)
            made.append(message)
            return message

        self.patch(sendingModule, "preCheckedMessage", recording)
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        self.successResultOf(alice.sendMessage(BOB, "hello", "text/html", messageId="m1"))
        self.successResultOf(alice.sendMessage(BOB, "again"))
        self.assertEqual(made, bob.messages)
        first, second = bob.messages
        self.assertEqual(first, Message(ALICE, BOB, "hello", "text/html", "m1", first.timestamp))
        self.assertEqual(second, Message(ALICE, BOB, "again", "text/plain", second.messageId, second.timestamp))
        self.assertNotEqual(first.routingId, second.routingId)
        for bad in [" m", "m 1", "m\x00", "m" * (events.MAX_MESSAGE_ID_CHARS + 1)]:
            with self.assertRaises(ValueError) as raised:
                Message(ALICE, BOB, "hi", messageId=bad)
            refused = self.failureResultOf(alice.sendMessage(BOB, "hi", messageId=bad), InvalidAddress)
            self.assertEqual(str(refused.value), str(raised.exception))
        self.assertEqual(len(bob.messages), 2)
        self.successResultOf(alice.sendMessage(BOB, "last", messageId="m" * events.MAX_MESSAGE_ID_CHARS))
        self.assertEqual(len(made), 3)

    def test_failedSessionNotCounted(self) -> None:
        """
        A session whose client fails to take a message is logged and does
        not count: the message is delivered if another session took it,
        and fails as offline if none did.
        """
        alice, _ = self.online(ALICE)
        _, phone = self.online(BOB)
        _, desk = self.online(BOB)
        phone.failWith = ConnectionError("gone")
        self.assertEqual(self.successResultOf(alice.sendMessage(BOB, "one")), DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        desk.failWith = ConnectionError("gone too")
        self.failureResultOf(alice.sendMessage(BOB, "two"), UserOffline)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 2)
        self.assertEqual([m.body for m in desk.messages], ["one", "two"])

    def test_deliveryWaitsForSessions(self) -> None:
        """
        A message counts as delivered when a session's client says it took
        it (a session in another process answers later).
        """
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        bob.hold = True
        d = alice.sendMessage(BOB, "hi")
        self.assertNoResult(d)
        bob.held[0].callback(None)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_failedPushLogged(self) -> None:
        """
        A client that fails to take a presence or contact update is logged;
        the other sessions still get it.
        """
        alice, aliceClient = self.online(ALICE)
        _, otherClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        aliceClient.failWith = ConnectionError("gone")
        bob.publish(Presence(PresenceState.AWAY))
        self.assertEqual(otherClient.presences[-1], (BOB, Presence(PresenceState.AWAY)))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_unavailableSessionNoTraceback(self) -> None:
        """
        A session whose client is unavailable (L{ServiceUnavailable}: the
        router of a proxied session no longer has it, its client having
        just left) is logged at C{info}, without a traceback, for a
        presence as for a message; the message then fails as offline.
        """
        alice, aliceClient = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.befriend(alice, bob)
        aliceClient.failWith = ServiceUnavailable("the router answered 503")
        bobClient.failWith = ServiceUnavailable("the router answered 503")
        with capturedLogs() as events:
            bob.publish(Presence(PresenceState.AWAY))
            self.failureResultOf(alice.sendMessage(BOB, "still there?"), UserOffline)
        self.assertEqual(self.flushLoggedErrors(ServiceUnavailable), [])
        took = [formatEvent(e) for e in events if "could not take" in formatEvent(e)]
        self.assertTrue(all(e.get("log_failure") is None for e in events))
        self.assertIn(f"Session {alice} could not take a presence: the router answered 503", took)
        self.assertIn(f"Session {bob} could not take message ", took[-1])

    def test_noSuchUser(self) -> None:
        """
        A message to an unknown user fails as for an offline one: the same
        error, the same text.
        """
        alice, _ = self.online(ALICE)
        ghost = self.failureResultOf(alice.sendMessage(GHOST, "hi"), UserOffline)
        offline = self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)
        self.assertEqual(ghost.value.text.replace("ghost", "bob"), offline.value.text)

    def test_disabledUser(self) -> None:
        """
        A disabled account is treated as an offline one.
        """
        self.directory.updateAccount(CAROL, enabled=False)
        alice, _ = self.online(ALICE)
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)

    def test_offline(self) -> None:
        """
        A message to a user with no present session fails with
        L{UserOffline} (480), including one whose only session has not
        published yet.
        """
        alice, _ = self.online(ALICE)
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)
        self.open(BOB)
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)

    def test_blocked(self) -> None:
        """
        A message from a blocked sender fails as for an offline recipient
        (480, not 403), whether the recipient is online or not, and is not
        delivered.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)
        bob.close()
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)
        self.assertEqual(bobClient.messages, [])

    def test_busyRule(self) -> None:
        """
        A presence rule turns messages away while the user is in that
        state: a sender who may see the user's presence gets L{UserBusy}
        and the alternate contact; any other sender gets L{UserOffline}, as
        for an offline user.
        """
        alice, _ = self.online(ALICE)
        carol, _ = self.online(CAROL)
        bob, bobClient = self.online(BOB)
        self.befriend(alice, bob)
        self.successResultOf(bob.setRule(PresenceState.ON_THE_PHONE, "tel:+15550100"))
        bob.publish(Presence(PresenceState.ON_THE_PHONE))
        f = self.failureResultOf(alice.sendMessage(BOB, "hi"), UserBusy)
        self.assertEqual(f.value.alternate, "tel:+15550100")
        self.failureResultOf(carol.sendMessage(BOB, "hi"), UserOffline)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        self.failureResultOf(alice.sendMessage(BOB, "hi"), UserOffline)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.NONE))
        bob.publish(Presence())
        self.successResultOf(alice.sendMessage(BOB, "hi"))
        self.successResultOf(carol.sendMessage(BOB, "hi"))
        self.assertEqual(len(bobClient.messages), 2)

    def test_ruleValidation(self) -> None:
        """
        Rules cannot be set for online or offline states.
        """
        bob, _ = self.online(BOB)
        self.failureResultOf(bob.setRule(PresenceState.ONLINE, "tel:1"), ValueError)

    def test_tooLarge(self) -> None:
        """
        A message longer than C{max_message_chars} fails with L{TooLarge}.
        """
        alice, _ = self.online(ALICE)
        self.online(BOB)
        self.successResultOf(alice.sendMessage(BOB, "x" * HomeConfig().maxMessageChars))
        self.failureResultOf(alice.sendMessage(BOB, "x" * (HomeConfig().maxMessageChars + 1)), TooLarge)

    def test_clientIdsNotTrusted(self) -> None:
        """
        Two messages whose client ids are the same are two messages: both
        are delivered (the server goes by ids it mints), and the client's
        id is what the recipient sees.
        """
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        self.successResultOf(alice.sendMessage(BOB, "one", messageId="m1"))
        self.successResultOf(alice.sendMessage(BOB, "two", messageId="m1"))
        self.assertEqual([(m.body, m.messageId) for m in bob.messages], [("one", "m1"), ("two", "m1")])
        self.assertNotEqual(bob.messages[0].routingId, bob.messages[1].routingId)

    def test_hopLimit(self) -> None:
        """
        An event with too many hops is refused as a loop.
        """
        self.online(BOB)
        m = Message(ALICE, BOB, "hi", hops=17)
        self.failureResultOf(self.router.deliver(m), LoopDetected)


class OrderTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    One request, one transaction; one user's requests and the events for
    that user take effect in the order they arrived, while the store is
    still writing earlier ones.
    """

    def test_oneTransactionPerRequest(self) -> None:
        """
        A subscription request writes the contact and the pending request
        in one store transaction; unsubscribing removes both in one.
        """
        alice, _ = self.online(ALICE)
        self.store.hold = True
        d = alice.subscribe(CAROL, "Carol")
        self.assertEqual(len(self.store.held), 1)
        self.store.release(1)
        self.assertEqual(self.store.contacts[ALICE], {CAROL: ContactRecord(CAROL, "Carol")})
        self.assertEqual(self.store.authorisations, {(CAROL, ALICE): AuthorisationState.PENDING})
        self.store.release()
        self.assertEqual(self.successResultOf(d), AuthorisationState.PENDING)
        gone = alice.unsubscribe(CAROL)
        self.assertEqual(len(self.store.held), 1)
        self.store.release(1)
        self.assertEqual((self.store.contacts, self.store.authorisations), ({}, {}))
        self.store.release()
        self.successResultOf(gone)

    def test_pipelinedUnsubscribeSubscribe(self) -> None:
        """
        UNSUBSCRIBE then SUBSCRIBE sent back to back, while the store writes
        slowly, leave the target holding a request that the sender's
        contact list has, whether the target is online or not.
        """
        for online in (True, False):
            self.setUp()
            alice, _ = self.online(ALICE)
            carol = self.online(CAROL)[0] if online else None
            self.successResultOf(alice.subscribe(CAROL, "Carol"))
            self.store.hold = True
            first = alice.unsubscribe(CAROL)
            second = alice.subscribe(CAROL, "Carol")
            self.store.release()
            self.successResultOf(first)
            self.assertEqual(self.successResultOf(second), AuthorisationState.PENDING)
            self.store.hold = False
            self.assertEqual(self.store.contacts[ALICE], {CAROL: ContactRecord(CAROL, "Carol")})
            self.assertEqual(self.store.authorisations, {(CAROL, ALICE): AuthorisationState.PENDING})
            [view] = self.successResultOf(alice.contacts())
            self.assertEqual((view.address, view.pending), (CAROL, True))
            if carol is not None:
                self.assertEqual(self.successResultOf(carol.pendingRequests()), [ALICE])

    def test_eventsWaitForRequests(self) -> None:
        """
        An event for a user waits in the user's lane until the user's
        earlier requests are done.
        """
        alice, aliceClient = self.online(ALICE)
        carol, _ = self.online(CAROL)
        self.store.hold = True
        request = carol.subscribe(ALICE)
        d = alice.putContact(BOB, "Bob")
        # carol's request is written, and reaches alice while her own
        # request is still being written: it waits.
        self.store.release(1)
        self.assertEqual(aliceClient.subscriptions, [])
        self.store.release()
        self.successResultOf(d)
        self.assertEqual(aliceClient.subscriptions, [SubscriptionEvent(SubscriptionKind.SUBSCRIBE, CAROL, ALICE)])
        self.assertEqual(self.successResultOf(request), AuthorisationState.PENDING)

    def test_answerWaitsForRequest(self) -> None:
        """
        An answer that arrives while the request it answers is still being
        written waits for it, and is taken (not dropped as an answer to
        nothing).
        """
        alice, aliceClient = self.online(ALICE)
        remote = RecordingRoute()
        self.router.addRoute("xmpp.example", remote)
        self.store.hold = True
        asked = alice.subscribe(ROMEO)
        answer = self.home.deliver(SubscriptionEvent(SubscriptionKind.AUTHORISE, ROMEO, ALICE))
        self.store.release()
        self.assertEqual([e.kind for e in remote.events], [SubscriptionKind.SUBSCRIBE])  # type: ignore[union-attr]
        self.successResultOf(answer)
        self.assertEqual(self.successResultOf(asked), AuthorisationState.AUTHORISED)
        self.store.hold = False
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.subscription, view.pending), (Subscription.TO, False))

    def test_mutualAtOnce(self) -> None:
        """
        Two users asking each other at the same moment, while the store
        writes slowly, both get their answer (neither lane waits for the
        other).
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.store.hold = True
        one = alice.subscribe(BOB)
        two = bob.subscribe(ALICE)
        self.store.release()
        self.assertEqual(self.successResultOf(one), AuthorisationState.PENDING)
        self.assertEqual(self.successResultOf(two), AuthorisationState.PENDING)
        three = alice.authorise(BOB, True)
        four = bob.authorise(ALICE, True)
        self.store.release()
        self.successResultOf(three)
        self.successResultOf(four)
        [a] = self.successResultOf(alice.contacts())
        [b] = self.successResultOf(bob.contacts())
        self.store.release()
        self.assertEqual((a.subscription, b.subscription), (Subscription.BOTH, Subscription.BOTH))

    def test_answeredAfterTargetDecided(self) -> None:
        """
        A request to a user whose allow list lets the requester in is
        answered authorised once the target's answer has been taken in,
        even while the store writes slowly.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.ALLOW))
        self.store.hold = True
        d = alice.subscribe(BOB)
        self.store.release()
        self.assertEqual(self.successResultOf(d), AuthorisationState.AUTHORISED)
        self.store.hold = False
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual(view.subscription, Subscription.TO)

    def test_publishInOrder(self) -> None:
        """
        A presence published after a request takes effect after it: a
        watcher blocked by a request sent before the publish never sees it.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.store.hold = True
        d = bob.setAccess("alice@corp.example", AccessList.BLOCK)
        bob.publish(Presence(PresenceState.AWAY, "secret"))
        self.store.release()
        self.successResultOf(d)
        self.assertNotIn((BOB, Presence(PresenceState.AWAY, "secret")), aliceClient.presences)
        self.assertEqual(aliceClient.presences[-1], (BOB, OFFLINE))


class OfflineCostTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Events for users without sessions cost reads proportional to the event,
    not to the users' lists.
    """

    def setUp(self) -> None:
        super().setUp()
        # bob has long lists.
        for n in range(50):
            other = Address.fromString(f"u{n}@corp.example")
            self.store.contacts.setdefault(BOB, {})[other] = ContactRecord(other)
            self.store.authorisations[(BOB, other)] = AuthorisationState.AUTHORISED
            self.store.access.setdefault(BOB, {})[f"d{n}.example"] = AccessList.BLOCK

    def test_subscribeToOffline(self) -> None:
        """
        A subscription request to a user without sessions reads the one
        authorisation row and the requester's access entries, nothing else.
        """
        alice, _ = self.online(ALICE)
        self.store.reads.clear()
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.PENDING)
        self.assertEqual(self.store.reads, [("getAccessOf", BOB, ALICE), ("getAuthorisation", BOB, ALICE)])
        self.assertEqual(self.store.authorisations[(BOB, ALICE)], AuthorisationState.PENDING)

    def test_answersToOffline(self) -> None:
        """
        Answers and withdrawals reaching a user without sessions read
        nothing: the store changes the row only if it is there.
        """
        romeo = Address.fromString("romeo@xmpp.example")
        self.store.authorisations[(romeo, BOB)] = AuthorisationState.PENDING
        for kind in (SubscriptionKind.AUTHORISE, SubscriptionKind.REFUSE, SubscriptionKind.UNSUBSCRIBE):
            self.successResultOf(self.home.deliver(SubscriptionEvent(kind, romeo, BOB)))
        self.successResultOf(
            self.home.deliver(SubscriptionEvent(SubscriptionKind.AUTHORISE, Address.fromString("x@xmpp.example"), BOB))
        )
        self.assertEqual(self.store.reads, [])
        self.assertEqual(self.store.authorisations[(romeo, BOB)], AuthorisationState.REFUSED)
        self.assertNotIn((Address.fromString("x@xmpp.example"), BOB), self.store.authorisations)

    def test_allowedWhileOffline(self) -> None:
        """
        A request from an entry of the allow list of a user without
        sessions is authorised at once, from targeted reads.
        """
        self.store.access[BOB]["alice@corp.example"] = AccessList.ALLOW
        alice, _ = self.online(ALICE)
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.AUTHORISED)
        self.assertEqual(self.store.authorisations[(BOB, ALICE)], AuthorisationState.AUTHORISED)


class QuotaTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Per-user quotas on contacts, access-list entries and rules: the limit
    is accepted, one more is refused with L{QuotaExceeded} and changes
    nothing.
    """

    def setUp(self) -> None:
        super().setUp()
        self.home.config = HomeConfig(maxSessionsPerUser=3, maxContacts=3, maxAccessEntries=2, maxRules=2)

    def others(self, n: int) -> list[Address]:
        return [Address.fromString(f"u{i}@xmpp.example") for i in range(n)]

    def test_contacts(self) -> None:
        """
        C{max_contacts} contacts are accepted, by C{SUBSCRIBE} or by a
        contact put; one more is refused and stored nowhere; a contact on
        the list can still be renamed or asked again.
        """
        self.router.addRoute("xmpp.example", RecordingRoute())
        alice, _ = self.online(ALICE)
        u = self.others(4)
        self.successResultOf(alice.subscribe(u[0]))
        self.successResultOf(alice.putContact(u[1]))
        self.successResultOf(alice.subscribe(u[2]))
        for attempt in (alice.subscribe(u[3]), alice.putContact(u[3])):
            f = self.failureResultOf(attempt, QuotaExceeded)
            self.assertIn("max_contacts = 3", f.value.text)
        self.assertEqual(len(self.store.contacts[ALICE]), 3)
        self.assertNotIn((u[3], ALICE), self.store.authorisations)
        self.successResultOf(alice.putContact(u[0], "renamed"))
        self.successResultOf(alice.subscribe(u[1]))
        self.successResultOf(alice.unsubscribe(u[2]))
        self.successResultOf(alice.subscribe(u[3]))

    def test_accessEntries(self) -> None:
        """
        C{max_access_entries} entries are accepted; one more is refused; an
        entry on the list can still be changed or removed.
        """
        alice, _ = self.online(ALICE)
        self.successResultOf(alice.setAccess("a.example", AccessList.BLOCK))
        self.successResultOf(alice.setAccess("bob@corp.example", AccessList.ALLOW))
        self.failureResultOf(alice.setAccess("c.example", AccessList.BLOCK), QuotaExceeded)
        self.assertEqual(len(self.store.access[ALICE]), 2)
        self.successResultOf(alice.setAccess("a.example", AccessList.ALLOW))
        self.successResultOf(alice.setAccess("c.example", AccessList.NONE))
        self.successResultOf(alice.setAccess("a.example", AccessList.NONE))
        self.successResultOf(alice.setAccess("c.example", AccessList.BLOCK))

    def test_rules(self) -> None:
        """
        C{max_rules} rules are accepted; one for another state is refused; a
        rule can still be replaced or removed.
        """
        alice, _ = self.online(ALICE)
        self.successResultOf(alice.setRule(PresenceState.BUSY, "tel:1"))
        self.successResultOf(alice.setRule(PresenceState.AWAY, "tel:2"))
        self.failureResultOf(alice.setRule(PresenceState.ON_THE_PHONE, "tel:3"), QuotaExceeded)
        self.assertEqual(len(self.store.rules[ALICE]), 2)
        self.successResultOf(alice.setRule(PresenceState.BUSY, "tel:4"))
        self.successResultOf(alice.setRule(PresenceState.AWAY, None))
        self.successResultOf(alice.setRule(PresenceState.ON_THE_PHONE, "tel:3"))

    def test_displayNameCut(self) -> None:
        """
        Display names longer than C{MAX_DISPLAY_NAME_CHARS} are cut, by
        C{SUBSCRIBE} and by a contact put alike (whatever the face: the
        bound on list answers relies on it).
        """
        self.router.addRoute("xmpp.example", RecordingRoute())
        alice, _ = self.online(ALICE)
        u = self.others(2)
        long = "\N{GRINNING FACE}" * (MAX_DISPLAY_NAME_CHARS + 1)
        self.successResultOf(alice.subscribe(u[0], long))
        self.successResultOf(alice.putContact(u[1], long))
        self.assertEqual(
            {c.displayName for c in self.store.contacts[ALICE].values()}, {long[:MAX_DISPLAY_NAME_CHARS]}
        )

    def test_defaults(self) -> None:
        """
        The shipped quotas: 1000 contacts, 1000 access-list entries, a rule
        for every state that can have one, 1000 pending requests.
        """
        c = HomeConfig()
        self.assertEqual((c.maxContacts, c.maxAccessEntries, c.maxRules), (1000, 1000, 5))
        self.assertEqual(c.maxPendingRequests, 1000)


class PendingRequestTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    C{max_pending_requests}: a user keeps at most that many subscription
    requests awaiting an answer, from users of this server or of others.
    One more is not kept, and is answered exactly as a pending one is.
    """

    LIMIT = 3

    def setUp(self) -> None:
        super().setUp()
        self.home.config = HomeConfig(maxSessionsPerUser=3, maxPendingRequests=self.LIMIT)
        self.remote = RecordingRoute()
        self.router.addRoute("xmpp.example", self.remote)

    def remotes(self, n: int) -> list[Address]:
        return [Address.fromString(f"r{i}@xmpp.example") for i in range(n)]

    def locals(self, n: int) -> list[Address]:
        users = [Address.fromString(f"u{i}@corp.example") for i in range(n)]
        for u in users:
            self.directory.addAccount(AccountRecord(u, "hs1", "", True, "{}"))
        return users

    def ask(self, watcher: Address, target: Address = ALICE) -> DeliveryStatus:
        """
        C{watcher}, a user of another network, asks to watch C{target}.
        """
        return self.successResultOf(self.home.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, watcher, target)))

    def kept(self, target: Address = ALICE) -> list[Address]:
        return sorted(w for (t, w), s in self.store.authorisations.items() if t == target and s is AuthorisationState.PENDING)

    def test_remoteBoundary(self) -> None:
        """
        C{max_pending_requests} requests from users of other networks are
        kept and shown; one more is answered as they were and neither kept
        nor shown, whether the target has sessions or not. A request still
        pending may be made again; answering one makes room for one more.
        """
        for online in (True, False):
            self.setUp()
            alice, client = self.open(ALICE) if online else (None, None)
            r = self.remotes(self.LIMIT + 1)
            answers = [self.ask(w) for w in r]
            self.assertEqual(answers, [DeliveryStatus.DELIVERED] * (self.LIMIT + 1))
            self.assertEqual(self.kept(), r[: self.LIMIT])
            self.assertEqual(self.ask(r[0]), DeliveryStatus.DELIVERED)
            self.assertEqual(self.kept(), r[: self.LIMIT])
            if client is not None and alice is not None:
                self.assertEqual([e.sender for e in client.subscriptions], r[: self.LIMIT] + [r[0]])
                self.assertEqual(self.successResultOf(alice.pendingRequests()), r[: self.LIMIT])
            alice = alice or self.open(ALICE)[0]
            self.successResultOf(alice.authorise(r[1], False))
            self.assertEqual(self.ask(r[self.LIMIT]), DeliveryStatus.DELIVERED)
            self.assertEqual(self.kept(), [r[0], r[2], r[3]])
            self.assertEqual(self.successResultOf(alice.pendingRequests()), [r[0], r[2], r[3]])

    def test_localBoundary(self) -> None:
        """
        Requests from users of this server count alike: past the limit,
        C{SUBSCRIBE} still adds the contact and is answered pending, as
        the others were, but the request is neither kept nor shown to its
        target.
        """
        for online in (True, False):
            self.setUp()
            alice, client = self.open(ALICE) if online else (None, None)
            u = self.locals(self.LIMIT + 1)
            sessions = [self.open(w)[0] for w in u]
            answers = [self.successResultOf(s.subscribe(ALICE, "Alice")) for s in sessions]
            self.assertEqual(answers, [AuthorisationState.PENDING] * (self.LIMIT + 1))
            self.assertEqual(self.kept(), u[: self.LIMIT])
            for w in u:
                self.assertEqual(self.store.contacts[w], {ALICE: ContactRecord(ALICE, "Alice")})
            if client is not None:
                self.assertEqual([e.sender for e in client.subscriptions], u[: self.LIMIT])
            [last] = self.successResultOf(sessions[-1].contacts())
            self.assertEqual((last.address, last.pending), (ALICE, False))
            # Allowed: authorised at once, past the limit.
            alice = alice or self.open(ALICE)[0]
            self.successResultOf(alice.setAccess(str(u[-1]), AccessList.ALLOW))
            self.assertEqual(self.successResultOf(sessions[-1].subscribe(ALICE)), AuthorisationState.AUTHORISED)

    def test_allowedPastLimit(self) -> None:
        """
        A request from an entry of the target's allow list is authorised,
        however many requests the target has pending.
        """
        alice, _ = self.open(ALICE)
        r = self.remotes(self.LIMIT + 1)
        for w in r[: self.LIMIT]:
            self.ask(w)
        self.successResultOf(alice.setAccess("xmpp.example", AccessList.ALLOW))
        self.ask(r[-1])
        self.assertIs(self.store.authorisations[(ALICE, r[-1])], AuthorisationState.AUTHORISED)
        self.assertIn(SubscriptionEvent(SubscriptionKind.AUTHORISE, ALICE, r[-1]), [evolve(e, hops=0) for e in self.remote.events])

    def test_nothingTold(self) -> None:
        """
        No existence leak: a stranger whose request is not kept gets the
        answer and the events (none) that a stranger whose request is kept
        gets, and that a stranger asking a user who does not exist gets;
        so does a user of this server.
        """
        r = self.remotes(self.LIMIT + 2)
        for w in r[: self.LIMIT]:
            self.ask(w)
        # Requests of users of this server wait for GHOST too (the store
        # keeps them, whether the account exists or not).
        self.store.authorisations.update({(GHOST, w): AuthorisationState.PENDING for w in r[: self.LIMIT]})
        del self.remote.events[:]
        answers = [self.ask(r[-1], BOB), self.ask(r[-1]), self.ask(r[-2], GHOST), self.ask(r[-2], CAROL)]
        self.assertEqual(answers, [DeliveryStatus.DELIVERED] * 4)
        self.assertEqual(self.remote.events, [])
        # Users of this server: GHOST (who does not exist) and alice have
        # full lists, carol has room.
        u = self.locals(1)
        session, client = self.open(u[0])
        states = [self.successResultOf(session.subscribe(t)) for t in (CAROL, ALICE, GHOST)]
        self.assertEqual(states, [AuthorisationState.PENDING] * 3)
        self.assertEqual(client.subscriptions, [])
        views = {v.address: v for v in self.successResultOf(session.contacts())}
        self.assertEqual(evolve(views[ALICE], address=GHOST), views[GHOST])

    def test_loggedOncePerInterval(self) -> None:
        """
        The first request not kept is logged at once; the next are counted
        and logged in one line every interval while they go on, by target.
        """
        r = self.remotes(self.LIMIT)
        for w in r:
            self.ask(w)
            self.ask(w, BOB)
        flood = [Address.fromString(f"x{i}@xmpp.example") for i in range(60)]
        with capturedLogs() as events:
            for w in flood[:50]:
                self.ask(w)
            self.ask(flood[50], BOB)
            self.assertEqual(len(events), 1)
            self.assertIn("from x0@xmpp.example to alice@corp.example not kept", formatEvent(events[0]))
            self.assertIn("max_pending_requests", formatEvent(events[0]))
            self.clock.advance(10)
            self.assertEqual(len(events), 2)
            self.assertEqual(
                formatEvent(events[1]),
                "50 more subscription requests not kept (max_pending_requests = 3),"
                " to alice@corp.example (49), bob@corp.example (1)",
            )
            self.ask(flood[51])
            self.clock.advance(10)
            self.assertEqual(len(events), 3)
            self.assertIn("1 more subscription requests", formatEvent(events[2]))
            self.clock.advance(10)
            self.assertEqual(len(events), 3)
            self.ask(flood[52])
            self.assertEqual(len(events), 4)
            self.assertIn("from x52@xmpp.example", formatEvent(events[3]))
        self.clock.advance(10)

    def test_drainLogsCount(self) -> None:
        """
        When the home server stops, the requests not kept since the last
        line are logged.
        """
        for w in self.remotes(self.LIMIT + 3):
            self.ask(w)
        with capturedLogs() as events:
            self.successResultOf(self.home.drain())
        self.assertIn("2 more subscription requests not kept", " ".join(formatEvent(e) for e in events))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BlockTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Blocking a user takes effect at once on everything they can do.
    """

    def test_subscribeAsksTarget(self) -> None:
        """
        A subscription request goes to the target even when the requester
        was authorised before (the target decides, not the requester's
        cached row); the answer is authorised only when the target says so.
        """
        route = RecordingRoute()
        self.router.addRoute("xmpp.example", route)
        self.store.authorisations[(ROMEO, ALICE)] = AuthorisationState.AUTHORISED
        alice, _ = self.online(ALICE)
        del route.events[:]
        self.assertEqual(self.successResultOf(alice.subscribe(ROMEO)), AuthorisationState.PENDING)
        self.assertEqual([evolve(e, hops=0) for e in route.events], [SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, ROMEO)])

    def test_authorisedBeforeStillAuthorised(self) -> None:
        """
        A user authorised before, and not blocked, who asks again is
        answered authorised by the target, and sees its presence.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        bob.publish(Presence(PresenceState.AWAY))
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.AUTHORISED)
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual((view.subscription, view.presence), (Subscription.TO, Presence(PresenceState.AWAY)))

    def test_blockedAfterAuthorisation(self) -> None:
        """
        A user authorised before and blocked since who asks again is not
        answered authorised but as a request still pending is, and sees
        nothing.
        """
        alice, aliceClient = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        del aliceClient.presences[:]
        self.assertEqual(self.successResultOf(alice.subscribe(BOB)), AuthorisationState.PENDING)
        self.assertNotIn(BOB, [a for a, p in aliceClient.presences if p != OFFLINE])

    def test_blockedRequestHidden(self) -> None:
        """
        A pending request from a user blocked since is not listed while the
        block lasts.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.successResultOf(alice.subscribe(BOB))
        self.successResultOf(bob.setAccess("corp.example", AccessList.BLOCK))
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [])
        self.successResultOf(bob.setAccess("corp.example", AccessList.NONE))
        self.assertEqual(self.successResultOf(bob.pendingRequests()), [ALICE])

    def test_blockedPresenceNotSeen(self) -> None:
        """
        A user who blocks a contact it watches sees it offline at once and
        is told none of its changes; unblocked, it sees it again.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.befriend(bob, alice)
        alice.publish(Presence(PresenceState.AWAY))
        self.assertEqual(bobClient.presences[-1], (ALICE, Presence(PresenceState.AWAY)))
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        self.assertEqual(bobClient.presences[-1], (ALICE, OFFLINE))
        alice.publish(Presence(PresenceState.BUSY))
        self.assertEqual(bobClient.presences[-1], (ALICE, OFFLINE))
        [view] = self.successResultOf(bob.contacts())
        self.assertEqual(view.presence, OFFLINE)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.NONE))
        self.assertEqual(bobClient.presences[-1], (ALICE, Presence(PresenceState.BUSY)))


@implementer(IRoute)
class SlowRemoteRoute:
    """
    A route to another network that takes every event and answers none
    (a probe's answer would come much later).
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


class KeptPresenceTests(SynchronousTestCase):
    """
    Presence that arrives from another network for a user without sessions
    is kept, so that the user sees it at once on logging in.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock, home=HomeConfig(maxKeptPresences=3))
        self.alice = addUser(self.gateway, "alice", "pw")
        self.bob = addUser(self.gateway, "bob", "pw")
        self.route = SlowRemoteRoute()
        self.gateway.router.addRoute("xmpp.example", self.route)
        self.romeos = [Address.fromString(f"romeo{i}@xmpp.example") for i in range(5)]
        store = self.gateway.homeStore
        for romeo in self.romeos:
            store.authorisations[(romeo, self.alice)] = AuthorisationState.AUTHORISED  # type: ignore[attr-defined]
            store.contacts.setdefault(self.alice, {})[romeo] = ContactRecord(romeo)  # type: ignore[attr-defined]

    def arrive(self, sender: Address, presence: Presence, to: Address | None = None) -> Deferred[DeliveryStatus]:
        return self.gateway.router.deliver(PresenceUpdate(sender, to or self.alice, presence))

    def login(self, user: Address | None = None) -> tuple[ISession, RecordingSessionClient]:
        client = RecordingSessionClient()
        session = self.successResultOf(self.gateway.homeServer.openSession(user or self.alice, client, "x"))
        return session, client

    def test_seenAtLogin(self) -> None:
        """
        A user who logs in is told, at once, the presence its contacts of
        another network had while it was away, and its contact list shows
        it (as the one-shot C{imgateway-client presence} reads it); the
        probes still go out.
        """
        away = Presence(PresenceState.AWAY, "walking")
        self.successResultOf(self.arrive(self.romeos[0], away))
        session, client = self.login()
        self.assertEqual(client.presences, [(self.romeos[0], away)])
        views = {v.address: v.presence for v in self.successResultOf(session.contacts())}
        self.assertEqual(views[self.romeos[0]], away)
        self.assertEqual(views[self.romeos[1]], OFFLINE)
        self.assertEqual({e.recipient for e in self.route.events if isinstance(e, PresenceProbe)}, set(self.romeos))

    def test_offlineClears(self) -> None:
        """
        An offline presence forgets what was kept.
        """
        self.successResultOf(self.arrive(self.romeos[0], Presence()))
        self.successResultOf(self.arrive(self.romeos[0], OFFLINE))
        _, client = self.login()
        self.assertEqual(client.presences, [])

    def test_onlyAuthorised(self) -> None:
        """
        Presence from a sender the user may not watch (not authorised, or
        blocked) is refused and not kept; nor is presence from a user of
        this server (it answers probes at once).
        """
        stranger = Address.fromString("iago@xmpp.example")
        self.failureResultOf(self.arrive(stranger, Presence()), NotAuthorised)
        self.gateway.homeStore.access[self.alice] = {str(self.romeos[1]): AccessList.BLOCK}  # type: ignore[attr-defined]
        self.failureResultOf(self.arrive(self.romeos[1], Presence()), NotAuthorised)
        self.gateway.homeStore.authorisations[(self.bob, self.alice)] = AuthorisationState.AUTHORISED  # type: ignore[attr-defined]
        self.failureResultOf(self.arrive(self.bob, Presence()), UserOffline)
        _, client = self.login()
        self.assertEqual(client.presences, [])

    def test_bounded(self) -> None:
        """
        At most C{max_kept_presences} entries are kept; the least recently
        updated go first.
        """
        for romeo in self.romeos:
            self.successResultOf(self.arrive(romeo, Presence()))
        self.successResultOf(self.arrive(self.romeos[0], Presence(PresenceState.BUSY)))
        self.assertEqual(len(self.gateway.homeServer._kept), 3)
        _, client = self.login()
        self.assertEqual(
            sorted(client.presences), sorted([(self.romeos[0], Presence(PresenceState.BUSY)), (self.romeos[3], Presence()), (self.romeos[4], Presence())])
        )

    def test_keptAcrossSessions(self) -> None:
        """
        What a user saw of contacts of another network is kept when its
        last session closes, for the next login; a refusal forgets it.
        """
        session, _ = self.login()
        self.successResultOf(self.arrive(self.romeos[0], Presence(PresenceState.AWAY)))
        self.successResultOf(self.arrive(self.romeos[1], Presence(PresenceState.BUSY)))
        session.close()
        self.successResultOf(
            self.gateway.router.deliver(SubscriptionEvent(SubscriptionKind.REFUSE, self.romeos[1], self.alice))
        )
        _, client = self.login()
        self.assertEqual(client.presences, [(self.romeos[0], Presence(PresenceState.AWAY))])

    def test_laterSessionsTold(self) -> None:
        """
        A second session is told at once the presence of the contacts the
        user sees.
        """
        self.login()
        self.successResultOf(self.arrive(self.romeos[2], Presence(PresenceState.AWAY)))
        _, client = self.login()
        self.assertEqual(client.presences, [(self.romeos[2], Presence(PresenceState.AWAY))])


class SemanticsTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    The points docs/protocol.md settles: aggregation, notification of
    one's own presence, what AUTHORISE does to the contact list, messages
    to oneself.
    """

    def test_aggregateNoteOfLatest(self) -> None:
        """
        Of several sessions in the winning state, the one that published
        last gives the note.
        """
        phone, _ = self.open(ALICE, "phone")
        desk, _ = self.open(ALICE, "desk")
        phone.publish(Presence(PresenceState.AWAY, "walking"))
        desk.publish(Presence(PresenceState.AWAY, "lunch"))
        self.assertEqual(self.home.presenceOf(ALICE), Presence(PresenceState.AWAY, "lunch"))
        phone.publish(Presence(PresenceState.AWAY, "back soon"))
        self.assertEqual(self.home.presenceOf(ALICE), Presence(PresenceState.AWAY, "back soon"))
        desk.publish(Presence(PresenceState.BUSY, "meeting"))
        self.assertEqual(self.home.presenceOf(ALICE), Presence(PresenceState.AWAY, "back soon"))
        desk.publish(Presence(PresenceState.APPEAR_OFFLINE))
        self.assertEqual(self.home.presenceOf(ALICE).state, PresenceState.APPEAR_OFFLINE)

    def test_ownPresenceOnChange(self) -> None:
        """
        A user's sessions are told the user's own aggregate presence when it
        changes (not when a publish leaves it as it was); a new session is
        told it at once.
        """
        phone, phoneClient = self.open(ALICE, "phone")
        phone.publish(Presence())
        phone.publish(Presence())
        self.assertEqual(phoneClient.presences, [(ALICE, Presence())])
        _, deskClient = self.open(ALICE, "desk")
        self.assertEqual(deskClient.presences, [(ALICE, Presence())])
        phone.publish(Presence(PresenceState.APPEAR_OFFLINE))
        self.assertEqual(phoneClient.presences[-1], (ALICE, Presence(PresenceState.APPEAR_OFFLINE)))
        self.assertEqual(deskClient.presences[-1], (ALICE, Presence(PresenceState.APPEAR_OFFLINE)))

    def test_authoriseAddsContact(self) -> None:
        """
        Allowing a watcher adds it to the authoriser's contact list
        (subscription C{from}) if it is not there; denying leaves the list
        as it is.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        carol, _ = self.online(CAROL)
        self.successResultOf(alice.subscribe(BOB))
        self.successResultOf(carol.subscribe(BOB))
        self.successResultOf(bob.authorise(ALICE, True))
        self.successResultOf(bob.authorise(CAROL, False))
        [view] = self.successResultOf(bob.contacts())
        self.assertEqual((view.address, view.subscription, view.pending), (ALICE, Subscription.FROM, False))
        self.assertEqual(bobClient.contacts[-1], view)
        self.assertEqual(self.store.contacts[BOB], {ALICE: ContactRecord(ALICE)})

    def test_authoriseQuota(self) -> None:
        """
        An authorisation that would take the contact list past
        C{max_contacts} is refused and changes nothing.
        """
        self.home.config = HomeConfig(maxContacts=1)
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.successResultOf(bob.putContact(CAROL))
        self.successResultOf(alice.subscribe(BOB))
        self.failureResultOf(bob.authorise(ALICE, True), QuotaExceeded)
        self.assertEqual(self.store.authorisations[(BOB, ALICE)], AuthorisationState.PENDING)
        self.successResultOf(bob.authorise(ALICE, False))

    def test_messageToSelf(self) -> None:
        """
        A message to oneself reaches one's other present sessions, not the
        one that sent it; with no other present session it fails as
        offline.
        """
        phone, phoneClient = self.online(ALICE)
        self.failureResultOf(phone.sendMessage(ALICE, "note to self"), UserOffline)
        desk, deskClient = self.online(ALICE)
        _, hidden = self.open(ALICE)
        self.assertEqual(self.successResultOf(phone.sendMessage(ALICE, "note to self")), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in deskClient.messages], ["note to self"])
        self.assertEqual((phoneClient.messages, hidden.messages), ([], []))

    def test_authoriseSelf(self) -> None:
        """
        A user cannot authorise itself.
        """
        alice, _ = self.online(ALICE)
        self.failureResultOf(alice.authorise(ALICE, True), InvalidAddress)


class RuleAlternateTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    A rule's alternate must be a URI.
    """

    def test_uris(self) -> None:
        """
        Alternates of the known schemes are accepted, up to 256 characters.
        """
        bob, _ = self.online(BOB)
        for alternate in (
            "tel:+15550100", "sip:bob@pbx.example", "im:bob.mobile@corp.example", "xmpp:bob@xmpp.example",
            "mailto:bob@corp.example", "https://corp.example/bob", "SMS:+15550100", "tel:" + "1" * 252,
        ):
            self.successResultOf(bob.setRule(PresenceState.BUSY, alternate))
            self.assertEqual(self.successResultOf(bob.rules())[0].alternate, alternate)

    def test_notURIs(self) -> None:
        """
        Free text, unknown schemes, an empty rest, spaces, control
        characters and more than 256 characters are refused with
        C{ValueError} (400 on the native face) and change nothing.
        """
        bob, _ = self.online(BOB)
        for alternate in ("not a uri", "call me", "note:busy", "tel:", "tel:+1 555", "tel:+1\x07", "", "tel:" + "1" * 253):
            self.failureResultOf(bob.setRule(PresenceState.BUSY, alternate), ValueError)
        self.assertEqual(self.successResultOf(bob.rules()), [])


class FastPathTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    L{HomeServer.deliverAtOnce} and L{Router.deliverAtOnce}: a message to
    sessions of this process, whose recipient's lane is idle, is delivered
    without a L{Deferred}, with the same statuses and order as
    L{HomeServer.deliver}.
    """

    def test_deliveredAtOnce(self) -> None:
        """
        A message to a present user is delivered at once: the status
        itself, not a L{Deferred}, from the home server and from the
        router; the lane is free afterwards.
        """
        self.online(ALICE)
        _, bob = self.online(BOB)
        self.assertIs(self.home.deliverAtOnce(Message(ALICE, BOB, "one")), DeliveryStatus.DELIVERED)
        self.assertIs(self.router.deliverAtOnce(Message(ALICE, BOB, "two")), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in bob.messages], ["one", "two"])
        self.assertEqual(self.home._lanes, {})

    def test_sessionUsesFastPath(self) -> None:
        """
        A session's message goes to the router's fast path
        (L{Router.deliverAtOnce}), not through L{Router.deliver}'s
        L{Deferred}; its outcome, delivered or refused, is the same.
        """
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        viaDeliver = self.recordRouted()
        self.assertEqual(self.successResultOf(alice.sendMessage(BOB, "hi")), DeliveryStatus.DELIVERED)
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        self.failureResultOf(alice.sendMessage(BOB, "x" * (self.home.config.maxMessageChars + 1)), TooLarge)
        self.assertEqual([m.body for m in bob.messages], ["hi"])
        self.assertEqual(viaDeliver, [])

    def test_refusedAtOnce(self) -> None:
        """
        A refusal is raised at once, the same as L{HomeServer.deliver}'s:
        486 with the alternate for a sender who may see the recipient's
        presence, offline for a stranger. The router forgets a refused
        message, so that it may be sent again (not a loop).
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        self.befriend(alice, bob)
        bob.publish(Presence(PresenceState.BUSY))
        self.successResultOf(bob.setRule(PresenceState.BUSY, "tel:+15550100"))
        message = Message(ALICE, BOB, "hi")
        for _ in range(2):
            with self.assertRaises(UserBusy) as caught:
                self.router.deliverAtOnce(message)
            self.assertEqual(caught.exception.alternate, "tel:+15550100")
        self.online(CAROL)
        with self.assertRaises(UserOffline):
            self.home.deliverAtOnce(Message(CAROL, BOB, "hi"))
        self.assertEqual(self.home._lanes, {})

    def test_outcomeOverSessionStates(self) -> None:
        """
        The outcome of a message to a user with one to three sessions, in
        every combination of states (one that never published counts as
        offline), with and without a presence rule, through the fast path
        and through L{HomeServer.deliver}: as the aggregate presence says
        (L{aggregate}: offline when a session appears offline or none is in
        another state than offline), then given to the sessions in a state
        other than offline; a rule for a state the user is not in does not
        act.
        """
        self.online(ALICE)
        states = [None, PresenceState.ONLINE, PresenceState.BUSY, PresenceState.OFFLINE, PresenceState.APPEAR_OFFLINE]
        combinations: list[tuple[PresenceState | None, ...]] = [(a,) for a in states]
        combinations += [(a, b) for a in states for b in states]
        combinations += [(a, b, c) for a in states for b in states[1:] for c in states[2:]]
        for rule in (False, True):
            for combination in combinations:
                opened = [self.open(BOB, f"s{i}") for i in range(len(combination))]
                if rule:
                    self.successResultOf(opened[0][0].setRule(PresenceState.AWAY, "tel:+15550100"))
                for (session, _), state in zip(opened, combination):
                    if state is not None:
                        session.publish(Presence(state))
                published = [Presence(s) if s is not None else OFFLINE for s in combination]
                expected = [c for (_, c), p in zip(opened, published) if p.state is not PresenceState.OFFLINE]
                if not aggregate(published).isOpen:
                    expected = []
                for how in ("at once", "deliver"):
                    message = Message(ALICE, BOB, f"{combination} {how} {rule}")
                    if how == "at once":
                        try:
                            outcome: object = self.home.deliverAtOnce(message)
                        except UserOffline:
                            outcome = UserOffline
                    else:
                        d = self.home.deliver(message)
                        failure = self.failureResultOf(d, UserOffline) if not expected else None
                        outcome = UserOffline if failure is not None else self.successResultOf(d)
                    got = [c for _, c in opened if c.messages and c.messages[-1] is message]
                    self.assertEqual(
                        (outcome, got),
                        (DeliveryStatus.DELIVERED if expected else UserOffline, expected),
                        (combination, how, rule),
                    )
                for session, _ in opened:
                    session.close()
        self.assertEqual(self.home._lanes, {})

    def test_blockedAtOnce(self) -> None:
        """
        A message from a sender the recipient blocks (by address or by
        domain) is refused at once as L{HomeServer.deliver} refuses it:
        L{UserOffline} with the same text, nothing given to the sessions,
        the lane free; one from a sender blocked by nothing is delivered.
        """
        self.online(ALICE)
        self.online(CAROL)
        bob, bobClient = self.online(BOB)
        self.successResultOf(bob.setAccess("alice@corp.example", AccessList.BLOCK))
        self.successResultOf(bob.setAccess("xmpp.example", AccessList.BLOCK))
        romeo = Address.fromString("romeo@xmpp.example")
        for sender in (ALICE, romeo):
            with self.assertRaises(UserOffline) as caught:
                self.home.deliverAtOnce(Message(sender, BOB, "at once"))
            failure = self.failureResultOf(self.home.deliver(Message(sender, BOB, "deliver")), UserOffline)
            self.assertEqual(str(caught.exception), str(failure.value))
        self.assertEqual((bobClient.messages, self.home._lanes), ([], {}))
        self.assertIs(self.home.deliverAtOnce(Message(CAROL, BOB, "hi")), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in bobClient.messages], ["hi"])

    def test_notAtOnce(self) -> None:
        """
        What the fast path does not take is left to L{HomeServer.deliver}
        (C{None}, nothing done): a user without sessions here, an event
        that is no message, a server that is stopping.
        """
        self.online(ALICE)
        self.assertIsNone(self.home.deliverAtOnce(Message(BOB, CAROL, "hi")))
        self.assertIsNone(self.home.deliverAtOnce(PresenceUpdate(BOB, ALICE, Presence())))
        self.home.drain()
        self.assertIsNone(self.home.deliverAtOnce(Message(BOB, ALICE, "hi")))

    def test_busyLaneKeepsOrder(self) -> None:
        """
        While the recipient's lane has work under way (here a request
        waiting for the store), a message is not delivered at once but
        queued behind it, and delivered once that work is done.
        """
        self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.store.hold = True
        subscribed = bob.subscribe(CAROL)
        self.assertIsNone(self.home.deliverAtOnce(Message(ALICE, BOB, "one")))
        d = self.router.deliver(Message(ALICE, BOB, "two"))
        self.assertNoResult(d)
        self.assertEqual(bobClient.messages, [])
        self.store.release()
        self.successResultOf(subscribed)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in bobClient.messages], ["two"])

    def test_laneTakenMeanwhile(self) -> None:
        """
        What comes for the recipient while the fast path delivers to it
        (here a message its client's delivery causes) waits in its lane
        and runs once the delivery is over, in order; a drain begun
        meanwhile fires once the lane is done. Through the home server's
        fast path and the router's.
        """
        self.online(ALICE)
        _, bob = self.online(BOB)
        caused: list[Deferred[DeliveryStatus]] = []
        drained: list[Deferred[None]] = []
        received = bob.messageReceived

        def messageReceived(message: Message) -> Deferred[None]:
            if message.body == "one":
                caused.append(self.router.deliver(Message(ALICE, BOB, "caused")))
                self.assertNoResult(caused[-1])
            elif message.body == "drain":
                drained.append(self.home.drain())
                self.assertNoResult(drained[-1])
            return received(message)

        self.patch(bob, "messageReceived", messageReceived)
        self.assertIs(self.home.deliverAtOnce(Message(ALICE, BOB, "one")), DeliveryStatus.DELIVERED)
        self.assertIs(self.router.deliverAtOnce(Message(ALICE, BOB, "one")), DeliveryStatus.DELIVERED)
        self.assertEqual([self.successResultOf(d) for d in caused], [DeliveryStatus.DELIVERED] * 2)
        self.assertEqual([m.body for m in bob.messages], ["one", "caused", "one", "caused"])
        self.assertEqual(self.home._lanes, {})
        self.assertIs(self.home.deliverAtOnce(Message(ALICE, BOB, "drain")), DeliveryStatus.DELIVERED)
        self.successResultOf(drained[0])
        self.assertEqual(self.home._lanes, {})

    def test_deliveredNoMemberLookUp(self) -> None:
        """
        A message given to sessions of this process is answered with
        L{DeliveryStatus.DELIVERED} from a module constant: no member of
        the C{Enum} looked up on its class (through the class's attribute
        hook, about 1,000 instructions each under Python 3.11).
        """
        looked: list[str] = []

        class Recording:
            def __getattr__(self, name: str) -> object:
                looked.append(name)
                return getattr(DeliveryStatus, name)

        self.online(ALICE)
        session, bob = self.online(BOB)
        self.patch(homeModule, "DeliveryStatus", Recording())
        self.assertIs(self.home._give([session], Message(ALICE, BOB, "hi")), DeliveryStatus.DELIVERED)
        self.assertEqual(([m.body for m in bob.messages], looked), (["hi"], []))

    def test_sessionAnswersLater(self) -> None:
        """
        A session that answers later (in another process) gets the
        message at once, and the outcome is a L{Deferred}: the lane waits
        for it, so the next message for the user comes after it.
        """
        self.online(ALICE)
        _, bob = self.online(BOB)
        bob.hold = True
        first = self.home.deliverAtOnce(Message(ALICE, BOB, "one"))
        assert isinstance(first, Deferred)
        self.assertNoResult(first)
        second = self.router.deliver(Message(ALICE, BOB, "two"))
        self.assertEqual([m.body for m in bob.messages], ["one"])
        bob.held[0].callback(None)
        self.assertEqual(self.successResultOf(first), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in bob.messages], ["one", "two"])
        bob.held[1].errback(ConnectionError("gone"))
        self.failureResultOf(second, UserOffline)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertEqual(self.home._lanes, {})


class _CountingMetrics(NoMetrics):
    """
    Records each message outcome counted.
    """

    def __init__(self) -> None:
        self.outcomes: list[object] = []

    def messageOutcome(self, result: object) -> object:
        self.outcomes.append(result)
        return result


class SendMessageAtOnceTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    L{Session.sendMessageAtOnce}: L{Session.sendMessage} without a
    L{Deferred} when the outcome is known at once, counted the same.
    """

    def setUp(self) -> None:
        super().setUp()
        self.metrics = self.home.metrics = _CountingMetrics()

    def test_deliveredAtOnce(self) -> None:
        """
        A message to a present user of this process: the status itself,
        counted once.
        """
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        self.assertIs(alice.sendMessageAtOnce(BOB, "hi", "text/plain", "m-1"), DeliveryStatus.DELIVERED)
        self.assertEqual([(m.body, m.messageId) for m in bob.messages], [("hi", "m-1")])
        self.assertEqual(self.metrics.outcomes, [DeliveryStatus.DELIVERED])

    def test_refusedAtOnce(self) -> None:
        """
        A refusal known at once is raised (and counted): too long, busy
        with an alternate. One known later (no sessions here: the
        asynchronous way) fails its L{Deferred}, counted when it does.
        """
        alice, _ = self.online(ALICE)
        bob, _ = self.online(BOB)
        with self.assertRaises(TooLarge):
            alice.sendMessageAtOnce(BOB, "x" * (self.home.config.maxMessageChars + 1))
        self.befriend(alice, bob)
        bob.publish(Presence(PresenceState.BUSY))
        self.successResultOf(bob.setRule(PresenceState.BUSY, "tel:+15550100"))
        with self.assertRaises(UserBusy) as caught:
            alice.sendMessageAtOnce(BOB, "hi")
        self.assertEqual(caught.exception.alternate, "tel:+15550100")
        offline = alice.sendMessageAtOnce(CAROL, "hi")
        assert isinstance(offline, Deferred)
        self.failureResultOf(offline, UserOffline)
        self.assertEqual([type(f.value) for f in self.metrics.outcomes], [TooLarge, UserBusy, UserOffline])  # type: ignore[attr-defined]

    def test_answeredLater(self) -> None:
        """
        A session that answers later: a L{Deferred}, counted when it fires.
        """
        alice, _ = self.online(ALICE)
        _, bob = self.online(BOB)
        bob.hold = True
        d = alice.sendMessageAtOnce(BOB, "hi")
        assert isinstance(d, Deferred)
        self.assertEqual(self.metrics.outcomes, [])
        bob.held[0].callback(None)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(self.metrics.outcomes, [DeliveryStatus.DELIVERED])


class _World(HomeServerTestsMixin):
    """
    A home server, its router and romeo's network (a recording route),
    with its sessions' messages given in place (C{direct}) or through the
    router only (the router's C{routedDirectly} undone).
    """

    def __init__(self, test: SynchronousTestCase, direct: bool) -> None:
        self._test = test
        self.successResultOf = test.successResultOf
        self.setUp()
        self.other = RecordingRoute()
        self.router.addRoute("xmpp.example", self.other)
        if not direct:
            self.home.routedDirectly(self.router, DOMAIN, None)


def _outcome(test: SynchronousTestCase, send: Any) -> object:
    """
    What a session's C{sendMessageAtOnce} answered, comparable between two
    worlds: the status, or the refusal's type, text and alternate; a
    L{Deferred}'s result, or C{"waiting"}.
    """
    try:
        outcome = send()
    except Exception as e:
        return (type(e), str(e), getattr(e, "alternate", None))
    if isinstance(outcome, Deferred):
        results: list[object] = []
        outcome.addBoth(results.append)
        if not results:
            return "waiting"
        outcome = results[0]
        if isinstance(outcome, Failure):
            error = outcome.value
            return (type(error), str(error), getattr(error, "alternate", None))
    return outcome


class DirectDeliveryTests(SynchronousTestCase):
    """
    L{Session.sendMessageAtOnce} to a user of the domain of a home server
    the router routes directly (L{HomeServer.routedDirectly}): given to
    the recipient's sessions in place, without the router, with the
    statuses, rules and order the router's way gives.
    """

    def setUp(self) -> None:
        self.world = _World(self, direct=True)
        self.home, self.router = self.world.home, self.world.router
        self.routerCalls: list[str] = []
        for name in ("deliver", "deliverAtOnce"):
            self.patch(self.router, name, self._recording(name, getattr(self.router, name)))

    def _recording(self, name: str, method: Any) -> Any:
        def recording(event: Event) -> object:
            self.routerCalls.append(f"{name} {type(event).__name__} to {event.recipient}")
            return method(event)

        return recording

    def test_told(self) -> None:
        """
        The router tells its local home server that it routes the home's
        domain directly (a domain without a locator); the home takes it
        only for its own domain and router, and forgets it when the route
        is removed.
        """
        self.assertIsNotNone(self.home._remember)
        self.home.routedDirectly(Router(), DOMAIN, None)
        self.home.routedDirectly(self.router, "other.example", None)
        self.assertIsNotNone(self.home._remember)
        self.router.removeRoute(DOMAIN)
        self.assertIsNone(self.home._remember)

    def test_noRouterHop(self) -> None:
        """
        A message to a present user with sessions here is delivered
        without a call of the router, at once (the status itself), and the
        router remembers nothing of it; its recipient's lane is free
        after.
        """
        alice, _ = self.world.online(ALICE)
        _, bob = self.world.online(BOB)
        del self.routerCalls[:]
        self.assertIs(alice.sendMessageAtOnce(BOB, "hi", "text/plain", "m-1"), DeliveryStatus.DELIVERED)
        self.assertEqual([(m.sender, m.body, m.messageId, m.hops) for m in bob.messages], [(ALICE, "hi", "m-1", 0)])
        self.assertEqual(self.routerCalls, [])
        self.assertEqual(dict(self.router._seen), {})
        self.assertEqual(self.home._lanes, {})

    def test_otherMessagesThroughRouter(self) -> None:
        """
        What the direct way does not take goes to the router, as before: a
        recipient without sessions here, a recipient whose lane is busy, a
        recipient of another domain.
        """
        alice, _ = self.world.online(ALICE)
        _, bob = self.world.online(BOB)
        del self.routerCalls[:]
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        self.successResultOf(alice.sendMessage(ROMEO, "hi"))
        self.world.store.hold = True
        d = self.home._users[BOB].sessions[0].subscribe(CAROL)
        queued = alice.sendMessageAtOnce(BOB, "queued")
        assert isinstance(queued, Deferred)
        self.assertNoResult(queued)
        self.world.store.release()
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(queued), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in bob.messages], ["queued"])
        self.assertEqual([m.body for m in self.world.other.events if isinstance(m, Message)], ["hi"])
        self.assertEqual(
            [call for call in self.routerCalls if " Message " in call],
            [
                "deliverAtOnce Message to carol@corp.example",
                "deliverAtOnce Message to romeo@xmpp.example",
                "deliverAtOnce Message to bob@corp.example",
            ],
        )

    def test_manyHomesThroughRouter(self) -> None:
        """
        A home server of a domain with several (a locator) is not routed
        directly: its sessions' messages, to users on it or on another
        server, go through the router.
        """
        many = ManyHomesTests()
        many.successResultOf = self.successResultOf  # type: ignore[method-assign]
        many.setUp()
        hs1 = many.homes["hs1"]
        self.assertIsNone(hs1._remember)
        alice, _ = many.open(ALICE)
        many.open(BOB)
        many.open(CAROL)
        calls: list[Address] = []
        deliverAtOnce = hs1.router.deliverAtOnce  # type: ignore[attr-defined]

        def recording(event: Event, *home: object) -> object:
            calls.append(event.recipient)
            return deliverAtOnce(event, *home)

        self.patch(hs1.router, "deliverAtOnce", recording)
        self.assertEqual(self.successResultOf(alice.sendMessage(BOB, "hi")), DeliveryStatus.DELIVERED)
        self.assertEqual(self.successResultOf(alice.sendMessage(CAROL, "hi")), DeliveryStatus.DELIVERED)
        self.assertEqual(calls, [BOB, CAROL])

    def test_sameAsRouter(self) -> None:
        """
        The same messages sent in a world whose sessions give them in
        place and in one whose sessions hand them to the router get the
        same answers (statuses, refusals' texts and alternates) and leave
        every client with the same messages (auto-replies, forwards,
        one's own other sessions), and the other network the same.
        """
        self.assertEqual(self._sendAll(_World(self, direct=False)), self._sendAll(self.world))

    def _sendAll(self, world: _World) -> tuple[list[object], list[object]]:
        alice, aliceClient = world.online(ALICE)
        alice2, alice2Client = world.open(ALICE, "second")
        bob, bobClient = world.online(BOB)
        carol, carolClient = world.open(CAROL)
        world.befriend(alice, bob)
        outcomes: list[object] = []

        def send(session: Session, to: Address, body: str, messageId: str | None = None) -> None:
            outcomes.append(_outcome(self, lambda: session.sendMessageAtOnce(to, body, "text/plain", messageId)))

        send(alice, BOB, "delivered")
        send(alice, CAROL, "carol never published")
        send(alice, GHOST, "no account")
        send(alice, ROMEO, "another network")
        send(alice, BOB, "x" * (world.home.config.maxMessageChars + 1))
        send(alice, BOB, "bad id", "a b")
        send(alice, BOB, "own id", "id-1")
        send(alice, ALICE, "to myself: alice2 never published")
        alice2.publish(Presence())
        send(alice, ALICE, "to myself")
        carol.publish(Presence())
        send(carol, BOB, "from a stranger")
        bob.publish(Presence(PresenceState.BUSY))
        self.successResultOf(bob.setRule(PresenceState.BUSY, "tel:+15550100"))
        send(alice, BOB, "busy, to a friend")
        send(carol, BOB, "busy, to a stranger")
        self.successResultOf(
            bob.setRules([PresenceRule([PresenceState.BUSY], RuleAction.AUTO_REPLY, text="bob is busy")])
        )
        send(alice, BOB, "auto-reply")
        send(alice, BOB, "auto-reply within the period")
        self.successResultOf(bob.setRules([PresenceRule([PresenceState.BUSY], RuleAction.FORWARD, forwardTo=CAROL)]))
        send(alice, BOB, "forwarded")
        self.successResultOf(bob.setRules([]))
        self.successResultOf(bob.setAccess(str(CAROL), AccessList.BLOCK))
        send(carol, BOB, "blocked")
        bob.publish(Presence(PresenceState.APPEAR_OFFLINE))
        send(alice, BOB, "appears offline")
        bob.publish(Presence())
        bobClient.hold = True
        send(alice, BOB, "answered later")
        bobClient.held.pop().callback(None)
        send(alice, BOB, "failed later")
        bobClient.held.pop().errback(ConnectionError("gone"))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        bobClient.hold = False
        carol.close()
        send(carol, BOB, "closed session")
        world.home.drain()
        send(alice, BOB, "stopping")
        received: list[object] = [
            [(m.sender, m.recipient, m.body, m.contentType, m.messageId if m.messageId == "id-1" else "", m.mark) for m in c.messages]
            for c in (aliceClient, alice2Client, bobClient, carolClient)
        ]
        received.append([(e.sender, e.recipient, e.body) for e in world.other.events if isinstance(e, Message)])
        return outcomes, received

    def test_answeredLaterRemembered(self) -> None:
        """
        A message given in place to a session that answers later (in
        another process) is remembered by the router as one it routed
        (a loop that brings it back is detected), and forgotten if its
        delivery fails, as the router's way does; its recipient's lane
        waits for the answer.
        """
        alice, _ = self.world.online(ALICE)
        _, bob = self.world.online(BOB)
        bob.hold = True
        first = alice.sendMessageAtOnce(BOB, "one")
        assert isinstance(first, Deferred)
        [message] = bob.messages
        self.assertEqual(list(self.router._seen), [message.routingId])
        with self.assertRaises(LoopDetected):
            self.router.deliverAtOnce(message)
        second = alice.sendMessageAtOnce(BOB, "two")
        assert isinstance(second, Deferred)
        self.assertEqual(len(bob.messages), 1)
        bob.held[0].errback(ConnectionError("gone"))
        self.failureResultOf(first, UserOffline)
        self.assertNotIn(message.routingId, self.router._seen)
        self.assertEqual(len(bob.messages), 2)
        bob.held[1].callback(None)
        self.assertEqual(self.successResultOf(second), DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertEqual(self.home._lanes, {})

    def test_nativeFace(self) -> None:
        """
        The native face's C{MESSAGE} to a present user of its gateway is
        given in place: C{200} with its C{Message-ID}, the C{MESSAGE}
        written to the recipient, no call of the router; one to a user
        without a session still goes through the router and is answered
        C{480}.
        """
        from tests.test_native_server import NativeFaceTestsMixin

        face = NativeFaceTestsMixin()
        face.setUp()
        addUser(face.gateway, "carol", "carol-pw")
        router = face.gateway.router
        for name in ("deliver", "deliverAtOnce"):
            self.patch(router, name, self._recording(name, getattr(router, name)))
        alice, bob = face.loggedIn("alice"), face.loggedIn("bob")
        for wire in (alice, bob):
            self.assertEqual(wire.call("PUBLISH", "*", [("Presence", "online")]).code, 200)
        bob.frames()
        del self.routerCalls[:]
        answer = alice.call("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-1")], b"hi")
        self.assertEqual((answer.code, answer.headers.get("Message-ID")), (200, "m-1"))
        [delivered] = bob.frames()
        assert isinstance(delivered, Request)
        self.assertEqual((delivered.method, delivered.headers.get("From"), delivered.body), ("MESSAGE", "im:alice@corp.example", b"hi"))
        self.assertEqual(self.routerCalls, [])
        self.assertEqual(alice.call("MESSAGE", "im:carol@corp.example", [], b"hi").code, 480)
        self.assertEqual(self.routerCalls, ["deliverAtOnce Message to carol@corp.example"])

    def test_unexpectedError(self) -> None:
        """
        An unexpected error while delivering in place is answered as the
        router answers it (L{ServerError}, logged), and the recipient's
        lane is freed.
        """
        alice, _ = self.world.online(ALICE)
        self.world.online(BOB)

        def broken(user: object, message: Message) -> DeliveryStatus:
            raise RuntimeError("broken")

        self.patch(self.home, "_messageOutcome", broken)
        with self.assertRaises(ServerError):
            alice.sendMessageAtOnce(BOB, "hi")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.home._lanes, {})


class DrainTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    Stopping loses nothing: the home server stops taking new work, lets
    the work under way end, and says when it has.
    """

    def test_waitsForWork(self) -> None:
        """
        L{HomeServer.drain} fires once the requests already queued are
        written, not before.
        """
        alice, _ = self.online(ALICE)
        self.store.hold = True
        first = alice.putContact(BOB, "Bob")
        second = alice.putContact(CAROL, "Carol")
        drained = self.home.drain()
        self.assertNoResult(drained)
        self.store.release(1)
        self.assertNoResult(drained)
        self.store.release()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertIsNone(self.successResultOf(drained))
        self.assertEqual(set(self.store.contacts[ALICE]), {BOB, CAROL})

    def test_refusesNewWork(self) -> None:
        """
        Once draining, requests of sessions, new sessions and events from
        other servers fail with L{ServiceUnavailable} (503, "shutting
        down").
        """
        alice, _ = self.online(ALICE)
        self.successResultOf(self.home.drain())
        for d in (
            alice.putContact(BOB),
            alice.subscribe(BOB),
            alice.sendMessage(BOB, "hi"),
            alice.contacts(),
            self.home.openSession(BOB, RecordingSessionClient()),
            self.home.deliver(Message(ROMEO, ALICE, "hi")),
        ):
            f = self.failureResultOf(d, ServiceUnavailable)
            self.assertEqual((f.value.status.value, f.value.text), (503, "shutting down"))

    def test_finishesWhatItStarted(self) -> None:
        """
        A request under way when the drain starts ends normally, with what
        it sends to this server's users in turn; the drain fires after it.
        """
        alice, _ = self.online(ALICE)
        bob, bobClient = self.online(BOB)
        self.store.hold = True
        asked = alice.subscribe(BOB)
        drained = self.home.drain()
        self.store.release()
        self.assertEqual(self.successResultOf(asked), AuthorisationState.PENDING)
        self.assertEqual(bobClient.subscriptions, [SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, BOB)])
        self.successResultOf(drained)

    def test_timeout(self) -> None:
        """
        Work that never ends does not hold the stop forever: after
        C{drain_timeout} seconds the drain fires anyway, and says so.
        """
        alice, _ = self.online(ALICE)
        self.store.hold = True
        alice.putContact(BOB)
        drained = self.home.drain()
        self.clock.advance(HomeConfig().drainTimeout - 0.1)
        self.assertNoResult(drained)
        self.clock.advance(0.1)
        self.successResultOf(drained)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIn(alice, self.home.leases)

    def test_service(self) -> None:
        """
        Stopping L{HomeServerService} drains the home server, tells every
        session it is shutting down and closes it, and waits for the
        drain.
        """
        alice, client = self.online(ALICE)
        service = HomeServerService(self.home)
        service.startService()
        self.store.hold = True
        alice.putContact(BOB)
        stopped = service.stopService()
        self.assertEqual(client.closed, ["shutdown"])
        self.assertNoResult(stopped)
        self.store.release()
        self.successResultOf(stopped)
        self.assertEqual(self.home.users(), [])

    def test_storesCloseAfterDrain(self) -> None:
        """
        The gateway closes its stores only once the home server has
        drained, so the work under way is written before they close.
        """
        from imgateway.gateway import _StoresService

        alice, _ = self.online(ALICE)
        stores = _StoresService(self.store, after=self.home.drain)
        stores.startService()
        self.store.hold = True
        d = alice.putContact(BOB)
        stopped = stores.stopService()
        self.assertFalse(self.store.closed)
        self.store.release()
        self.successResultOf(d)
        self.successResultOf(stopped)
        self.assertTrue(self.store.closed)


DAVE = Address.fromString("dave@corp.example")


class ManyHomesTests(SynchronousTestCase):
    """
    Two home servers of one domain, each with its own store and router,
    sharing the directory: alice and bob on hs1, carol and dave on hs2.
    Their links are L{MemoryLinkRoutes} that hand an event to the other
    server at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory(
            [AccountRecord(a, "hs1", "", True, "{}") for a in (ALICE, BOB)]
            + [AccountRecord(a, "hs2", "", True, "{}") for a in (CAROL, DAVE)]
        )
        self.stores = {name: MemoryHomeStore() for name in ("hs1", "hs2")}
        self.links = {name: MemoryLinkRoutes() for name in ("hs1", "hs2")}
        self.homes: dict[str, HomeServer] = {}
        for name in ("hs1", "hs2"):
            locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
            router = Router(domain=DOMAIN, serverName=name, locator=locator, linkRoutes=self.links[name])
            home = HomeServer(name, DOMAIN, self.directory, self.stores[name], router, self.clock, HomeConfig(), locator)
            router.addRoute(DOMAIN, home, local=True)
            self.homes[name] = home
        self.links["hs1"].servers["hs2"] = self.homes["hs2"]
        self.links["hs2"].servers["hs1"] = self.homes["hs1"]

    def open(self, address: Address, online: bool = True, lease: float | None = None) -> tuple[Session, RecordingSessionClient]:
        home = self.homes[self.directory.accounts[address].homeServer]
        client = RecordingSessionClient()
        session = self.successResultOf(home.openSession(address, client))
        assert isinstance(session, Session)
        if online:
            session.publish(Presence(), lease)
        return session, client

    def rows(self, name: str) -> dict[tuple[Address, Address], AuthorisationState]:
        return dict(self.stores[name].authorisations)

    def befriend(self, watcher: Session, target: Session) -> None:
        self.successResultOf(watcher.subscribe(target.address))
        self.successResultOf(target.authorise(watcher.address, True))

    def test_homedHereAtOnce(self) -> None:
        """
        A message for a user homed on this server, whose home the locator
        remembers, is delivered by the router at once (no L{Deferred});
        before the locator knows it, the router asks (a L{Deferred}).
        """
        self.open(CAROL)
        router = self.homes["hs2"].router
        assert isinstance(router, Router) and router.locator is not None
        router.locator.forget(CAROL)
        first = router.deliverAtOnce(Message(DAVE, CAROL, "one"))
        assert isinstance(first, Deferred)
        self.assertEqual(self.successResultOf(first), DeliveryStatus.DELIVERED)
        self.assertIs(router.deliverAtOnce(Message(DAVE, CAROL, "two")), DeliveryStatus.DELIVERED)

    def test_subscribeBothWays(self) -> None:
        """
        alice (hs1) and carol (hs2) subscribe to each other and authorise
        each other: each server writes the rows and contacts of its own
        users only, and the two stores agree.
        """
        alice, aliceClient = self.open(ALICE)
        self.assertEqual(self.successResultOf(alice.subscribe(CAROL)), AuthorisationState.PENDING)
        self.assertEqual(self.rows("hs1"), {(CAROL, ALICE): AuthorisationState.PENDING})
        self.assertEqual(self.rows("hs2"), {(CAROL, ALICE): AuthorisationState.PENDING})
        carol, carolClient = self.open(CAROL)
        self.assertEqual(self.successResultOf(carol.pendingRequests()), [ALICE])
        self.successResultOf(carol.authorise(ALICE, True))
        self.assertEqual(self.successResultOf(carol.subscribe(ALICE)), AuthorisationState.PENDING)
        self.successResultOf(alice.authorise(CAROL, True))
        both = {(CAROL, ALICE): AuthorisationState.AUTHORISED, (ALICE, CAROL): AuthorisationState.AUTHORISED}
        self.assertEqual(self.rows("hs1"), both)
        self.assertEqual(self.rows("hs2"), both)
        self.assertEqual(list(self.stores["hs1"].contacts), [ALICE])
        self.assertEqual(list(self.stores["hs2"].contacts), [CAROL])
        [aliceView] = self.successResultOf(alice.contacts())
        [carolView] = self.successResultOf(carol.contacts())
        self.assertEqual((aliceView.address, aliceView.subscription), (CAROL, Subscription.BOTH))
        self.assertEqual((carolView.address, carolView.subscription), (ALICE, Subscription.BOTH))
        self.assertEqual(aliceView.presence, Presence())
        self.assertEqual(carolView.presence, Presence())

    def test_unsubscribeAndRefuse(self) -> None:
        """
        Unsubscribing and refusing across servers leave both stores
        agreeing.
        """
        alice, _ = self.open(ALICE)
        carol, _ = self.open(CAROL)
        self.befriend(alice, carol)
        self.befriend(carol, alice)
        self.successResultOf(alice.unsubscribe(CAROL))
        self.successResultOf(carol.authorise(ALICE, False))
        expected = {(ALICE, CAROL): AuthorisationState.AUTHORISED, (CAROL, ALICE): AuthorisationState.REFUSED}
        self.assertEqual(self.rows("hs2"), expected)
        # alice's server took carol's refusal into alice's row too.
        self.assertEqual(self.rows("hs1"), {(ALICE, CAROL): AuthorisationState.AUTHORISED})

    def test_presenceBothWays(self) -> None:
        """
        Presence changes cross between the servers both ways, with the
        lease left of the user's sessions.
        """
        alice, aliceClient = self.open(ALICE, lease=600)
        carol, carolClient = self.open(CAROL, lease=600)
        self.befriend(alice, carol)
        self.befriend(carol, alice)
        away = Presence(PresenceState.AWAY, "lunch")
        self.clock.advance(100)
        carol.publish(away, 600)
        self.assertEqual(aliceClient.presences[-1], (CAROL, away))
        alice.publish(Presence(PresenceState.BUSY), 600)
        self.assertEqual(carolClient.presences[-1], (ALICE, Presence(PresenceState.BUSY)))
        [update] = [e for _, e in self.links["hs2"].sent if isinstance(e, PresenceUpdate) and e.presence == away]
        self.assertEqual(update.lease, 600)

    def test_messagesEveryStatus(self) -> None:
        """
        A message from alice to carol gets the status it would get on one
        server: 480 while carol is offline (and for an unknown user, with
        the same text), 200 once she is online, 486 with the alternate
        for a watcher when her rule turns it away, 480 when she blocks
        alice, 413 when too long, and 480 again, with the same text as for
        an unknown user, when hs2 cannot be reached (a stranger must not
        learn from a 503 that dave's account exists).
        """
        alice, _ = self.open(ALICE)
        offline = self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        unknown = self.failureResultOf(alice.sendMessage(GHOST, "hi"), UserOffline)
        self.assertEqual(offline.value.text.replace("carol", "ghost"), unknown.value.text)
        carol, carolClient = self.open(CAROL)
        self.assertEqual(self.successResultOf(alice.sendMessage(CAROL, "hi")), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in carolClient.messages], ["hi"])
        self.befriend(alice, carol)
        self.successResultOf(carol.setRule(PresenceState.BUSY, "tel:+15550100"))
        carol.publish(Presence(PresenceState.BUSY))
        busy = self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserBusy)
        self.assertEqual(busy.value.alternate, "tel:+15550100")
        carol.publish(Presence())
        self.successResultOf(carol.setAccess(str(ALICE), AccessList.BLOCK))
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        self.failureResultOf(alice.sendMessage(CAROL, "x" * (HomeConfig().maxMessageChars + 1)), TooLarge)
        self.links["hs1"].down.add("hs2")
        down = self.failureResultOf(alice.sendMessage(DAVE, "hi"), UserOffline)
        self.assertEqual(down.value.text.replace("dave", "ghost"), unknown.value.text)

    def test_probesAtLogin(self) -> None:
        """
        A user logging in asks its contacts on the other server for their
        presence.
        """
        alice, _ = self.open(ALICE)
        carol, _ = self.open(CAROL)
        self.befriend(alice, carol)
        alice.close()
        alice, aliceClient = self.open(ALICE, online=False)
        self.assertIn((CAROL, Presence()), aliceClient.presences)
        probes = [e for _, e in self.links["hs1"].sent if isinstance(e, PresenceProbe)]
        self.assertEqual([(p.sender, p.recipient) for p in probes][-1], (ALICE, CAROL))

    def test_keptPresenceAtLogin(self) -> None:
        """
        The presence of a contact on the other server that changed while
        the user was offline is kept for it, and shown at login even when
        the other server cannot answer the login's probe.
        """
        alice, _ = self.open(ALICE)
        carol, _ = self.open(CAROL)
        self.befriend(alice, carol)
        alice.close()
        away = Presence(PresenceState.AWAY)
        carol.publish(away)
        self.links["hs1"].down.add("hs2")
        alice, aliceClient = self.open(ALICE, online=False)
        self.assertEqual(aliceClient.presences, [(CAROL, away)])

    def test_localContactNotKept(self) -> None:
        """
        Presence of a contact homed on the same server is not kept for an
        offline user (it answers the login's probe at once): only that of
        contacts homed elsewhere is.
        """
        alice, _ = self.open(ALICE)
        bob, _ = self.open(BOB)
        carol, _ = self.open(CAROL)
        self.befriend(alice, bob)
        self.befriend(alice, carol)
        alice.close()
        bob.publish(Presence(PresenceState.AWAY))
        carol.publish(Presence(PresenceState.AWAY))
        self.assertEqual(len(self.homes["hs1"]._kept), 1)

    def test_leaseExpires(self) -> None:
        """
        When carol's server stops telling (it died), alice's server shows
        carol offline once the lease it last heard runs out; a renewal
        before then keeps her online.
        """
        alice, aliceClient = self.open(ALICE, lease=1000)
        carol, _ = self.open(CAROL, lease=100)
        self.befriend(alice, carol)
        self.clock.advance(60)
        before = len(self.links["hs2"].sent)
        carol.publish(Presence(), 100)  # renewed: holds until 160
        renewals = [e for _, e in self.links["hs2"].sent[before:]]
        self.assertEqual(renewals, [PresenceUpdate(CAROL, ALICE, Presence(), hops=1, lease=100)])
        self.links["hs2"].down.add("hs1")  # hs2 dies: nothing more arrives
        self.clock.advance(99)
        self.assertEqual(aliceClient.presences[-1], (CAROL, Presence()))
        self.clock.advance(1)
        self.assertEqual(aliceClient.presences[-1], (CAROL, OFFLINE))
        [view] = self.successResultOf(alice.contacts())
        self.assertEqual(view.presence, OFFLINE)

    def test_keptPresenceExpires(self) -> None:
        """
        Presence kept for an offline user expires with its lease: at login
        after it ran out, the contact is not shown present.
        """
        alice, _ = self.open(ALICE)
        carol, _ = self.open(CAROL, lease=100)
        self.befriend(alice, carol)
        alice.close()
        carol.publish(Presence(PresenceState.AWAY), 100)
        self.links["hs2"].down.add("hs1")
        self.links["hs1"].down.add("hs2")
        self.clock.advance(101)
        alice, aliceClient = self.open(ALICE, online=False)
        self.assertEqual(aliceClient.presences, [])

    def test_leaseKeptOverLogout(self) -> None:
        """
        A contact's presence kept when the user's last session closes
        keeps what was left of its lease.
        """
        alice, _ = self.open(ALICE, lease=1000)
        carol, _ = self.open(CAROL, lease=100)
        self.befriend(alice, carol)
        self.links["hs2"].down.add("hs1")
        self.links["hs1"].down.add("hs2")
        self.clock.advance(50)
        alice.close()
        self.clock.advance(49)
        alice, aliceClient = self.open(ALICE, online=False)
        self.assertEqual(aliceClient.presences, [(CAROL, Presence())])
        alice.close()
        self.clock.advance(1)
        alice, aliceClient = self.open(ALICE, online=False)
        self.assertEqual(aliceClient.presences, [])

    def test_localWatchersNoLease(self) -> None:
        """
        A contact homed on the same server never expires by lease (it
        tells when it goes offline); a single-server home sends no lease.
        """
        alice, aliceClient = self.open(ALICE, lease=1000)
        bob, _ = self.open(BOB, lease=100)
        self.befriend(alice, bob)
        self.clock.advance(99)
        bob.publish(Presence(), 100)
        self.clock.advance(60)
        self.assertEqual([p for a, p in aliceClient.presences if a == BOB][-1], Presence())

    def test_movedTo(self) -> None:
        """
        A home server answers L{MovedTo} (naming the new home) for a user
        without sessions that the directory homes elsewhere; the sender's
        router, whose cached answer was old, delivers again to the new
        home.
        """
        alice, _ = self.open(ALICE)
        self.failureResultOf(alice.sendMessage(CAROL, "cache hs2"), UserOffline)
        self.directory.accounts[CAROL] = AccountRecord(CAROL, "hs1", "", True, "{}")
        moved = self.failureResultOf(self.homes["hs2"].deliver(Message(ALICE, CAROL, "hi")), MovedTo)
        self.assertEqual(moved.value.home, "hs1")
        # Sent to hs2, answered MovedTo, delivered again here: carol has no
        # session yet.
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        self.assertEqual(
            [e.body for _, e in self.links["hs1"].sent if isinstance(e, Message)], ["cache hs2", "hi"]
        )
        carol, carolClient = self.open(CAROL)
        self.assertEqual(self.successResultOf(alice.sendMessage(CAROL, "hi again")), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in carolClient.messages], ["hi again"])

    def test_movedSubscription(self) -> None:
        """
        A subscription request for a moved user reaches its new home too.
        """
        alice, _ = self.open(ALICE)
        self.successResultOf(alice.sendMessage(DAVE, "cache hs2").addErrback(lambda _: None))
        self.directory.accounts[DAVE] = AccountRecord(DAVE, "hs1", "", True, "{}")
        self.successResultOf(alice.subscribe(DAVE))
        self.assertEqual(self.rows("hs1"), {(DAVE, ALICE): AuthorisationState.PENDING})
        self.assertEqual(self.rows("hs2"), {})

    def test_drainRefusesOtherHomes(self) -> None:
        """
        A draining home server refuses events from users homed on other
        servers (503, which a message's sender sees as the uniform 480) but
        takes those of its own users.
        """
        self.successResultOf(self.homes["hs2"].drain())
        alice, _ = self.open(ALICE)
        self.failureResultOf(alice.sendMessage(CAROL, "hi"), UserOffline)
        self.failureResultOf(
            self.homes["hs2"].deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, CAROL)), ServiceUnavailable
        )
        self.failureResultOf(self.homes["hs2"].deliver(Message(DAVE, CAROL, "hi")), UserOffline)

    def test_messageToSessionAsksNoDirectory(self) -> None:
        """
        A message for a user with sessions here is delivered without asking
        the locator anything (the user is homed here; where the sender is
        homed matters only while the server stops).
        """
        carol, carolClient = self.open(CAROL)
        home = self.homes["hs2"]
        locator = home.locator
        assert locator is not None
        asked: list[Address] = []
        original = locator.homeOf

        def homeOf(address: Address) -> Deferred[str | None]:
            asked.append(address)
            return original(address)

        self.patch(locator, "homeOf", homeOf)
        self.assertEqual(self.successResultOf(home.deliver(Message(ALICE, CAROL, "hi"))), DeliveryStatus.DELIVERED)
        self.assertEqual(asked, [])
        self.assertEqual([m.body for m in carolClient.messages], ["hi"])

    def test_drainRefusesOtherHomesToSessions(self) -> None:
        """
        A draining home server refuses a message for a user with sessions
        from a user homed on another server (503), and delivers one from a
        user homed on it.
        """
        carol, carolClient = self.open(CAROL)
        home = self.homes["hs2"]
        self.successResultOf(home.drain())
        self.failureResultOf(home.deliver(Message(ALICE, CAROL, "from hs1")), ServiceUnavailable)
        self.assertEqual(self.successResultOf(home.deliver(Message(DAVE, CAROL, "from hs2"))), DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in carolClient.messages], ["from hs2"])


class SingleHomeTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    A home server that is its domain's only one (no locator) behaves as
    before: no lease, no L{MovedTo}.
    """

    def test_noLeaseNoMove(self) -> None:
        """
        Its users' presence goes out without a lease, and a user the
        directory names on another server is still delivered to here.
        """
        sent: list[Event] = []
        route = RecordingRoute()
        self.router.addRoute("xmpp.example", route)
        alice, _ = self.online(ALICE)
        self.successResultOf(alice.subscribe(ROMEO))
        self.successResultOf(self.home.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ROMEO, ALICE)))
        self.successResultOf(alice.authorise(ROMEO, True))
        sent = [e for e in route.events if isinstance(e, PresenceUpdate)]
        self.assertTrue(sent)
        self.assertEqual({e.lease for e in sent}, {None})  # type: ignore[union-attr]
        self.directory.accounts[BOB] = AccountRecord(BOB, "hs2", "", True, "{}")
        self.failureResultOf(self.home.deliver(Message(ROMEO, BOB, "hi")), UserOffline)


class StatesIndexTests(SynchronousTestCase):
    """
    L{_States}' index by domain is made when first asked for, and kept up
    to date from then on.
    """

    def test_noIndexUntilAsked(self) -> None:
        """
        States put and removed make no index; the first L{_States.inDomain}
        finds the parties of the domain among those left.
        """
        states = _States()
        a, b = Address.fromString("a@corp.example"), Address.fromString("b@corp.example")
        c = Address.fromString("c@other.example")
        for other in (a, b, c):
            states.put(other, AuthorisationState.AUTHORISED)
        states.put(b, None)
        self.assertIsNone(states._byDomain)
        self.assertEqual(states.inDomain("corp.example"), {a})
        self.assertEqual(states.of("other.example"), [c])

    def test_indexKept(self) -> None:
        """
        Once made, the index follows every put and removal.
        """
        states = _States()
        a, b = Address.fromString("a@corp.example"), Address.fromString("b@corp.example")
        states.put(a, AuthorisationState.PENDING)
        self.assertEqual(states.inDomain("corp.example"), {a})
        states.put(b, AuthorisationState.AUTHORISED)
        self.assertEqual(states.inDomain("corp.example"), {a, b})
        states.put(a, None)
        states.put(b, None)
        self.assertEqual(states.inDomain("corp.example"), set())
        self.assertEqual(states._byDomain, {})


class IdleUserStateTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    A user's cached state holds no empty table of its own while idle: the
    access lists, the SUBSCRIBEs awaiting an answer and the contacts of
    other servers start as shared read-only empties, get a table of their
    own at their first entry and the shared one again when emptied; the
    rules are a tuple (issue 11, session 8).
    """

    def state(self, address: Address) -> _UserState:
        user = self.home._localState(address)
        assert user is not None
        return user

    def test_sharedWhileEmpty(self) -> None:
        """
        Two idle users share their empty access list, awaiting table and
        set of remote contacts; their rules are the empty tuple.
        """
        self.online(ALICE)
        self.online(BOB)
        alice, bob = self.state(ALICE), self.state(BOB)
        self.assertIs(alice.access, bob.access)
        self.assertIs(alice.awaiting, bob.awaiting)
        self.assertIs(alice.remote, bob.remote)
        self.assertEqual((len(alice.access), len(alice.awaiting), len(alice.remote)), (0, 0, 0))
        self.assertIs(alice.rules, ())

    def test_accessOwnedThenShared(self) -> None:
        """
        An access-list entry gives the user a table of its own (only that
        user is changed); removing the last gives the shared one back.
        """
        alice, _ = self.online(ALICE)
        self.online(BOB)
        self.successResultOf(alice.setAccess("carol@corp.example", AccessList.BLOCK))
        self.assertEqual(dict(self.state(ALICE).access), {"carol@corp.example": AccessList.BLOCK})
        self.assertEqual(dict(self.state(BOB).access), {})
        self.successResultOf(alice.setAccess("carol@corp.example", AccessList.NONE))
        self.assertIs(self.state(ALICE).access, self.state(BOB).access)

    def test_awaitingOwnedThenShared(self) -> None:
        """
        A SUBSCRIBE waiting for its answer is kept in a table of the user's
        own (L{_UserState.awaitAnswer}); once forgotten, the shared empty
        one is back. A SUBSCRIBE answered at once leaves the shared one.
        """
        alice, _ = self.online(ALICE)
        self.online(BOB)
        self.successResultOf(alice.subscribe(BOB))
        self.assertIs(self.state(ALICE).awaiting, self.state(BOB).awaiting)
        user = self.state(ALICE)
        answer = [False]
        user.awaitAnswer(CAROL, answer)
        self.assertEqual(dict(user.awaiting), {CAROL: [answer]})
        self.assertEqual(len(self.state(BOB).awaiting), 0)
        _forget(user, CAROL, answer)
        self.assertIs(user.awaiting, self.state(BOB).awaiting)

    def test_markRemote(self) -> None:
        """
        L{_UserState.markRemote} gives the user a set of its own; the
        shared empty one is not changed.
        """
        self.online(ALICE)
        self.online(BOB)
        alice, bob = self.state(ALICE), self.state(BOB)
        other = Address.fromString("dave@xmpp.example")
        alice.markRemote(other)
        self.assertEqual(alice.remote, {other})
        self.assertEqual(bob.remote, frozenset())
        self.assertIsNot(alice.remote, bob.remote)

    def test_rulesReplaced(self) -> None:
        """
        Setting rules replaces the user's tuple of rules.
        """
        alice, _ = self.online(ALICE)
        rule = PresenceRule(frozenset([PresenceState.BUSY]), RuleAction.DELIVER)
        self.successResultOf(alice.setRules([rule]))
        self.assertEqual(self.state(ALICE).rules, (rule,))


class _SharedAnswerClient(RecordingSessionClient):
    """
    A client of this process that answers every presence with one
    L{Deferred} fired before the test counts (so the client makes none
    per delivery).
    """

    def __init__(self, answer: Deferred[None]) -> None:
        super().__init__()
        self.answer = answer

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        self.presences.append((sender, presence))
        return self.answer


class _RaisingClient(RecordingSessionClient):
    """
    A client whose C{presenceReceived} raises instead of answering with a
    failed L{Deferred}.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        self.presences.append((sender, presence))
        raise self.error


def _compiled(cls: type) -> bool:
    """
    @return: Whether C{cls} comes from a module of the compiled build
        (L{imgateway._compiled}).
    """
    return (sys.modules[cls.__module__].__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


class PresenceFanOutTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    A user's presence to its watchers of this server (the fan-out): a
    client that answers at once is taken at its word, with no L{Deferred}
    of the home server's per recipient; failures are logged as always, and
    each watcher gets the changes in order.
    """

    def watchers(self, count: int, client: RecordingSessionClient | None = None) -> list[Address]:
        """
        Make C{count} users who watch bob, each with one present session
        whose client is C{client} (by default one of their own).

        @return: Their addresses.
        """
        bob = self.home.sessionsOf(BOB)[0]
        made = []
        for n in range(count):
            address = Address.fromString(f"w{n}@corp.example")
            self.directory.addAccount(AccountRecord(address, "hs1", f"W{n}", True, "{}"))
            session = self.successResultOf(
                self.home.openSession(address, client if client is not None else RecordingSessionClient(), "")
            )
            session.publish(Presence())
            self.befriend(session, bob)  # type: ignore[arg-type]
            made.append(address)
        return made

    def deferredsMade(self, count: int) -> int:
        """
        How many L{Deferred}s a presence change of bob's makes, with
        C{count} watchers whose clients answer with an already fired
        L{Deferred} of their own.
        """
        bob, _ = self.online(BOB)
        client = _SharedAnswerClient(succeed(None))
        self.watchers(count, client)
        made = [0]
        init = Deferred.__init__

        def counting(d: Deferred[Any], *args: Any, **kwargs: Any) -> None:
            made[0] += 1
            init(d, *args, **kwargs)

        self.patch(Deferred, "__init__", counting)
        bob.publish(Presence(PresenceState.AWAY))
        self.assertEqual(client.presences[-count:], [(BOB, Presence(PresenceState.AWAY))] * count)
        return made[0]

    def fanOutCounts(self, count: int) -> tuple[int, int, int]:
        """
        What a presence change of bob's costs, with C{count} watchers (each
        with a session whose client answers with an already fired
        L{Deferred}), once every watcher saw bob's earlier presence.

        @return: How many times addresses were hashed, presences
            compared, and functions of L{imgateway.home.server} called.
        """
        bob, _ = self.online(BOB)
        client = _SharedAnswerClient(succeed(None))
        self.watchers(count, client)
        bob.publish(Presence(PresenceState.BUSY, "earlier"))
        hashes, compared = [0], [0]
        addressHash, presenceEq = Address.__hash__, Presence.__eq__

        def hashing(a: Address) -> int:
            hashes[0] += 1
            return addressHash(a)

        def comparing(p: Presence, other: object) -> bool:
            compared[0] += 1
            return presenceEq(p, other)

        if not _compiled(Address):
            # A compiled class takes no attribute (the pure-Python run of
            # the same test counts its hashes).
            self.patch(Address, "__hash__", hashing)
        self.patch(Presence, "__eq__", comparing)
        home = sys.modules[HomeServer.__module__].__file__
        calls = [0]

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename == home:
                calls[0] += 1

        sys.setprofile(profile)
        try:
            bob.publish(Presence(PresenceState.AWAY))
        finally:
            sys.setprofile(None)
        counts = hashes[0], compared[0], calls[0]
        self.assertEqual(client.presences[-count:], [(BOB, Presence(PresenceState.AWAY))] * count)
        return counts

    def perRecipient(self) -> tuple[float, float, float]:
        """
        L{fanOutCounts} per recipient: the difference between a fan-out
        to 31 watchers and one to a single watcher, divided by 30.
        """
        one = self.fanOutCounts(1)
        self.tearDown()
        self.setUp()
        many = self.fanOutCounts(31)
        return tuple((b - a) / 30 for a, b in zip(one, many))  # type: ignore[return-value]

    def test_addressHashesPerRecipient(self) -> None:
        """
        A fan-out hashes addresses six times per watcher: the watcher's
        state found, its lane claimed and ended; the sender's
        authorisation and presence as the watcher saw it read, and the
        new one written. (The watchers are not asked again whether they
        may see the user: their rows were just read; nor is the lane
        looked up apart from its claim.)
        """
        if _compiled(Address):
            raise SkipTest("compiled: Address.__hash__ cannot be counted")
        hashes, _, _ = self.perRecipient()
        self.assertEqual(hashes, 6)

    def test_presencesComparedOncePerFanOut(self) -> None:
        """
        The new presence is compared with what the watchers saw before
        (and with L{OFFLINE}) once per fan-out, not once per watcher: they
        all saw the same presence object before.
        """
        _, compared, _ = self.perRecipient()
        self.assertEqual(compared, 0)

    def test_homeServerCallsPerRecipient(self) -> None:
        """
        Per watcher, a fan-out calls four functions of the home server's
        module: the lane's part (L{HomeServer._takeInPlace}), the watcher
        taking the presence (L{HomeServer._takePresence}), the comparison
        remembered (L{_Told.differsFrom}) and the push to its sessions
        (L{HomeServer._pushPresence}).
        """
        _, _, calls = self.perRecipient()
        self.assertEqual(calls, 4)

    def test_privacyRespected(self) -> None:
        """
        A fan-out tells neither a watcher the user blocks, by address or
        by domain, nor one still waiting for the user's authorisation;
        the others are told.
        """
        bob, _ = self.online(BOB)
        told, blocked, pending = self.watchers(3)
        waiting = self.home.sessionsOf(pending)[0]
        self.successResultOf(waiting.unsubscribe(BOB))
        self.successResultOf(waiting.subscribe(BOB))
        self.successResultOf(bob.setAccess(str(blocked), AccessList.BLOCK))
        clients = {a: self.home.sessionsOf(a)[0].client for a in (told, blocked, pending)}
        for client in clients.values():
            del client.presences[:]
        bob.publish(Presence(PresenceState.AWAY))
        self.assertEqual(clients[told].presences, [(BOB, Presence(PresenceState.AWAY))])
        self.assertEqual(clients[blocked].presences, [])
        self.assertEqual(clients[pending].presences, [])
        self.successResultOf(bob.setAccess("corp.example", AccessList.BLOCK))
        bob.publish(Presence(PresenceState.BUSY))
        self.assertEqual(clients[told].presences[-1], (BOB, OFFLINE))

    def test_usersKeyedByInternedAddress(self) -> None:
        """
        A user's cached state is found under the address its rows (and its
        contacts' rows) hold, by identity: one equal to it but made apart
        is not the key.
        """
        bob, _ = self.online(BOB)
        [watcher] = self.watchers(1)
        apart = Address(watcher.local, watcher.domain)
        self.successResultOf(self.home.openSession(apart, RecordingSessionClient(), "apart"))
        [key] = [a for a in self.home._users if a == watcher]
        self.assertIs(key, self.home._users[watcher].address)
        self.assertIn(key, [w for w in self.home._users[BOB].watchers])
        self.assertIs(key, [w for w in self.home._users[BOB].watchers if w == watcher][0])

    def test_noDeferredPerRecipient(self) -> None:
        """
        A fan-out to watchers whose clients answer at once makes no
        L{Deferred} per recipient: as many for 30 watchers as for one.
        """
        one = self.deferredsMade(1)
        self.tearDown()
        self.setUp()
        self.assertEqual(self.deferredsMade(30), one)

    def test_failuresLogged(self) -> None:
        """
        A client that fails (a failed L{Deferred}, a raised exception, or
        a L{Deferred} that fails later) is logged as before, with a
        traceback unless it is unavailable; every other watcher still
        gets the presence.
        """
        bob, _ = self.online(BOB)
        first, second, third, fourth = self.watchers(4)
        clients = {a: self.home.sessionsOf(a)[0].client for a in (first, second, third, fourth)}
        clients[first].failWith = ConnectionError("gone")
        raising = _RaisingClient(ServiceUnavailable("the router answered 503"))
        raisingSession = self.successResultOf(self.home.openSession(second, raising, "other"))
        raisingSession.publish(Presence())
        clients[third].hold = True
        with capturedLogs() as events:
            bob.publish(Presence(PresenceState.AWAY))
            clients[third].held[-1].errback(ValueError("later"))
        away = (BOB, Presence(PresenceState.AWAY))
        for address in (first, second, third, fourth):
            self.assertEqual(clients[address].presences[-1], away)
        self.assertEqual(raising.presences[-1], away)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.flushLoggedErrors(ServiceUnavailable), [])
        took = [(formatEvent(e), e.get("log_failure") is not None) for e in events if "could not take" in formatEvent(e)]
        self.assertEqual(
            sorted(took),
            sorted([
                (f"Session {self.home.sessionsOf(first)[0]} could not take a presence", True),
                (f"Session {raisingSession} could not take a presence: the router answered 503", False),
                (f"Session {self.home.sessionsOf(third)[0]} could not take a presence", True),
            ]),
        )

    def test_ownPresenceFailureLogged(self) -> None:
        """
        A session that cannot take its user's own presence is logged as
        before; the user's other sessions get it.
        """
        bob, bobClient = self.online(BOB)
        other = RecordingSessionClient()
        self.successResultOf(self.home.openSession(BOB, other, "other"))
        bobClient.failWith = ConnectionError("gone")
        with capturedLogs() as events:
            bob.publish(Presence(PresenceState.BUSY))
        self.assertEqual(other.presences[-1], (BOB, Presence(PresenceState.BUSY)))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertIn(f"Session {bob} could not take a own presence", [formatEvent(e) for e in events])

    def test_refusalLogged(self) -> None:
        """
        A watcher that refuses the presence (it blocks the user since) is
        logged as L{HomeServer._send}'s refusals are, naming the update.
        """
        bob, _ = self.online(BOB)
        [watcher] = self.watchers(1)
        self.home._localState(watcher).access = {"bob@corp.example": AccessList.BLOCK}  # type: ignore[union-attr]
        with capturedLogs() as events:
            bob.publish(Presence(PresenceState.AWAY))
        update = PresenceUpdate(BOB, watcher, Presence(PresenceState.AWAY))
        self.assertIn(f"{update!r} not delivered: {NotAuthorised(f'{watcher} does not watch {BOB}')!r}", [formatEvent(e) for e in events])
        self.assertEqual(self.home._lanes, {})

    def test_order(self) -> None:
        """
        Each watcher gets the user's changes in order, including one whose
        lane is busy (its changes wait behind its work, then come in
        order); the watchers are told in the order of the user's
        watchers.
        """
        bob, _ = self.online(BOB)
        watchers = self.watchers(3)
        clients = [self.home.sessionsOf(a)[0].client for a in watchers]
        told: list[Address] = []
        for address, client in zip(watchers, clients):
            record = client.presenceReceived

            def recording(sender: Address, presence: Presence, address: Address = address, record: Any = record) -> Any:
                told.append(address)
                return record(sender, presence)

            client.presenceReceived = recording
        for client in clients:
            del client.presences[:]
        self.store.hold = True
        busy = self.home.sessionsOf(watchers[1])[0].subscribe(CAROL)
        states = [PresenceState.AWAY, PresenceState.BUSY, PresenceState.ONLINE]
        for state in states:
            bob.publish(Presence(state))
        self.assertEqual(told, [watchers[0], watchers[2]] * 3)
        self.assertEqual(clients[1].presences, [])
        self.store.release()
        self.successResultOf(busy)
        for client in clients:
            self.assertEqual(client.presences, [(BOB, Presence(s)) for s in states])
        self.assertEqual(self.home._lanes, {})

    def test_workQueuedDuringDelivery(self) -> None:
        """
        Work that a watcher's client starts in its user's lane while the
        presence is being given to it (here: it publishes in reaction)
        waits behind the delivery, as in any lane, and runs once the
        delivery is over; the lane is free afterwards.
        """
        bob, _ = self.online(BOB)
        [watcher] = self.watchers(1)
        session = self.home.sessionsOf(watcher)[0]
        client = session.client
        record = client.presenceReceived
        busy = (watcher, Presence(PresenceState.BUSY))
        doneAtOnce: list[bool] = []

        def reacting(sender: Address, presence: Presence) -> Any:
            if sender == BOB:
                session.publish(busy[1])
                doneAtOnce.append(busy in client.presences)
            return record(sender, presence)

        client.presenceReceived = reacting
        bob.publish(Presence(PresenceState.AWAY))
        self.assertEqual(doneAtOnce, [False])
        self.assertEqual(client.presences[-2:], [(BOB, Presence(PresenceState.AWAY)), busy])
        self.assertEqual(self.home.presenceOf(watcher), busy[1])
        self.assertEqual(self.home._lanes, {})
