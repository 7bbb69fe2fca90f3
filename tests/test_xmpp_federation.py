# -*- test-case-name: tests.test_xmpp_federation -*-
"""
Tests for L{imgateway.adapters.xmpp.federation}: the translator between
core events and the stanzas of a remote XMPP network, on a fake link (a
list of the stanzas sent) over a memory gateway and a fake clock.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish
from zope.interface.verify import verifyObject

from imgateway.adapters.xmpp.federation import (
    NS_RECEIPTS,
    NS_SERVER,
    RouteLimits,
    S2SJIDMapper,
    XMPPRemoteRoute,
)
from imgateway.adapters.xmpp.jid import InvalidJID
from imgateway.core.address import Address
from imgateway.core.deadlines import Deadlines
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    NoRoute,
    NotAuthorised,
    ServerError,
    UserBusy,
    UserOffline,
)
from imgateway.adapters.xmpp.mapping import NS_AUTO, NS_HINTS
from imgateway.core.events import Event, Message, MessageMark, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.core.records import AuthorisationState
from imgateway.home.server import Session
from imgateway.interfaces import IRoute, ISession
from imgateway.testing import RecordingSessionClient, addUser, memoryGateway

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ROMEO = Address.fromString("romeo@xmpp.example")
JULIET = Address.fromString("juliet@xmpp.example")
ONLINE = Presence(PresenceState.ONLINE)
BUSY = Presence(PresenceState.BUSY)
AWAY = Presence(PresenceState.AWAY)


def parse(xml: str, namespace: str = NS_SERVER) -> domish.Element:
    """
    One stanza, parsed as it would arrive on a stream whose default
    namespace is C{namespace}.
    """
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(
        f"<stream:stream xmlns='{namespace}' xmlns:stream='http://etherx.jabber.org/streams'>{xml}".encode()
    )
    [element] = elements
    return element


class FakeLink:
    """
    A link that records what it is given to send; while C{down}, sending
    fails with L{NoRoute}.
    """

    def __init__(self) -> None:
        self.sent: list[domish.Element] = []
        self.down = False

    def send(self, element: domish.Element) -> Deferred[None]:
        if self.down:
            return fail(NoRoute("the link is down"))
        # What goes on the wire, parsed back: attributes and text as a peer
        # sees them.
        self.sent.append(parse(element.toXml(defaultUri=NS_SERVER)))
        return succeed(None)

    def take(self) -> list[domish.Element]:
        sent, self.sent = self.sent, []
        return sent


class SlowRouter:
    """
    A router whose deliveries wait until the test fires them.
    """

    def __init__(self) -> None:
        self.deliveries: list[tuple[Event, Deferred[DeliveryStatus]]] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        d: Deferred[DeliveryStatus] = Deferred()
        self.deliveries.append((event, d))
        return d


def errorOf(stanza: domish.Element) -> tuple[str | None, str, str]:
    """
    @return: The type, condition and condition text of a stanza error.
    """
    [e] = [c for c in stanza.elements() if c.name == "error"]
    [condition] = [c for c in e.elements() if c.uri == NS_STANZAS and c.name != "text"]
    return e.getAttribute("type"), condition.name, str(condition)


def child(stanza: domish.Element, name: str, uri: str = NS_SERVER) -> domish.Element | None:
    for c in stanza.elements():
        if c.name == name and c.uri == uri:
            return c  # type: ignore[no-any-return]
    return None


def text(stanza: domish.Element, name: str) -> str | None:
    c = child(stanza, name)
    return None if c is None else str(c)


class RouteTestCase(SynchronousTestCase):
    """
    A memory gateway serving C{corp.example} (alice, bob), and a route for
    C{xmpp.example} (romeo, juliet) over a L{FakeLink}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        self.alice = addUser(self.gateway, "alice", "pw")
        self.bob = addUser(self.gateway, "bob", "pw")
        self.link = FakeLink()
        self.route = self.makeRoute()
        self.gateway.router.addRoute("xmpp.example", self.route)
        self.addCleanup(self.noTimersLeft)

    def makeRoute(self, **kwargs: Any) -> XMPPRemoteRoute:
        kwargs.setdefault("domains", ["xmpp.example"])
        return XMPPRemoteRoute(self.gateway.router, S2SJIDMapper("corp.example"), self.link.send, self.clock, **kwargs)

    def noTimersLeft(self) -> None:
        self.route.stop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if not isLeaseCall(c)], [])

    def authorise(self, target: Address, watcher: Address) -> None:
        self.gateway.homeStore.authorisations[(target, watcher)] = AuthorisationState.AUTHORISED  # type: ignore[attr-defined]

    def login(self, user: Address, presence: Presence | None = ONLINE, label: str = "desk") -> tuple[ISession, RecordingSessionClient]:
        client = RecordingSessionClient(label)
        session = self.successResultOf(self.gateway.homeServer.openSession(user, client, label))
        if presence is not None:
            session.publish(presence)
        return session, client

    def receive(self, xml: str) -> None:
        self.route.stanzaReceived(parse(xml))


def isLeaseCall(call: Any) -> bool:
    """
    @return: Whether C{call} is the one of the home server's presence leases
        (sessions left open by a test keep it).
    """
    owner = getattr(getattr(call, "func", None), "__self__", None)
    return isinstance(owner, Deadlines) and owner._expired is Session._leaseExpired


class OutboundMessageTests(RouteTestCase):
    """
    L{XMPPRemoteRoute.deliver} with L{Message}s: the stanza and the status
    wait.
    """

    def message(self, body: str = "hello", messageId: str = "m1") -> Message:
        return Message(self.alice, ROMEO, body, messageId=messageId)

    def test_interface(self) -> None:
        """
        The route provides L{IRoute}.
        """
        self.assertTrue(verifyObject(IRoute, self.route))

    def test_stanza(self) -> None:
        """
        A message becomes a chat message from the sender's bare JID to the
        recipient's, with its id and body and a request for a receipt.
        """
        d = self.route.deliver(self.message())
        [m] = self.link.take()
        self.assertEqual(
            (m.name, m["from"], m["to"], m["type"], m["id"], text(m, "body")),
            ("message", "alice@corp.example", "romeo@xmpp.example", "chat", "m1", "hello"),
        )
        self.assertIsNotNone(child(m, "request", NS_RECEIPTS))
        self.assertNoResult(d)
        self.clock.advance(0.99)
        self.assertNoResult(d)

    def test_mark(self) -> None:
        """
        A marked message (an auto-reply, a forwarded copy) carries
        C{<auto xmlns="urn:imgateway:auto"/>} with its type and the
        XEP-0334 no-copy and no-store hints; one a person wrote has none.
        """
        self.route.deliver(attrs.evolve(self.message(), mark=MessageMark.FORWARDED))
        self.route.deliver(self.message(messageId="m2"))
        [marked, plain] = self.link.take()
        self.assertEqual(child(marked, "auto", NS_AUTO)["type"], "forwarded")  # type: ignore[index]
        self.assertIsNotNone(child(marked, "no-copy", NS_HINTS))
        self.assertIsNotNone(child(marked, "no-store", NS_HINTS))
        self.assertIsNone(child(plain, "auto", NS_AUTO))
        self.assertIsNone(child(plain, "no-copy", NS_HINTS))

    def test_deliveredAfterStatusWait(self) -> None:
        """
        Without an error in C{statusWait} seconds, the message counts as
        delivered.
        """
        d = self.route.deliver(self.message())
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_statusWaitConfigurable(self) -> None:
        """
        C{statusWait} sets how long the route waits.
        """
        self.route = self.makeRoute(statusWait=5.0)
        d = self.route.deliver(self.message())
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_errorWithinWait(self) -> None:
        """
        An error for the message within the wait fails it with the
        L{DeliveryError} the condition stands for: Prosody's
        C{service-unavailable} for an offline user is L{UserOffline} (480).
        """
        d = self.route.deliver(self.message())
        self.clock.advance(0.5)
        self.receive(
            "<message type='error' id='m1' from='romeo@xmpp.example' to='alice@corp.example'>"
            "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></message>"
        )
        f = self.failureResultOf(d, UserOffline)
        self.assertEqual(f.value.status.value, 480)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_errorText(self) -> None:
        """
        The error's text, when it has one, is the failure's text.
        """
        d = self.route.deliver(self.message())
        self.receive(
            "<message type='error' id='m1' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>nobody by that name</text></error></message>"
        )
        f = self.failureResultOf(d, DeliveryError)
        self.assertEqual((f.value.status, f.value.text), (DeliveryStatus.NO_SUCH_USER, "nobody by that name"))

    def test_redirect(self) -> None:
        """
        A C{redirect} error fails with L{UserBusy} carrying the alternate.
        """
        d = self.route.deliver(self.message())
        self.receive(
            "<message type='error' id='m1' from='romeo@xmpp.example' to='alice@corp.example'>"
            "<error type='modify'><redirect xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>xmpp:r@x.example</redirect>"
            "</error></message>"
        )
        f = self.failureResultOf(d, UserBusy)
        self.assertEqual(f.value.alternate, "xmpp:r@x.example")

    def test_errorFromServer(self) -> None:
        """
        An error from the remote domain itself (no localpart) counts too.
        """
        d = self.route.deliver(self.message())
        self.receive(
            "<message type='error' id='m1' from='xmpp.example' to='alice@corp.example'>"
            "<error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></message>"
        )
        self.failureResultOf(d, NoRoute)

    def test_errorFromSomeoneElse(self) -> None:
        """
        An error with the message's id from another user, or to another of
        our users, does not settle it.
        """
        d = self.route.deliver(self.message())
        for sender, to in [("juliet@xmpp.example", "alice@corp.example"), ("romeo@xmpp.example", "bob@corp.example"),
                           ("other.example", "alice@corp.example")]:
            self.receive(
                f"<message type='error' id='m1' from='{sender}' to='{to}'>"
                "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            )
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_errorAfterWait(self) -> None:
        """
        An error that comes after the wait changes nothing (the message was
        reported delivered) and is not answered.
        """
        d = self.route.deliver(self.message())
        self.clock.advance(1.0)
        self.successResultOf(d)
        self.link.take()
        self.receive(
            "<message type='error' id='m1' from='romeo@xmpp.example' to='alice@corp.example'>"
            "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        self.assertEqual(self.link.take(), [])

    def test_errorWithoutCondition(self) -> None:
        """
        An error without a condition is a server error.
        """
        d = self.route.deliver(self.message())
        self.receive("<message type='error' id='m1' from='romeo@xmpp.example' to='alice@corp.example'/>")
        self.failureResultOf(d, ServerError)

    def test_receipt(self) -> None:
        """
        An XEP-0184 receipt ends the wait at once.
        """
        d = self.route.deliver(self.message())
        self.receive(
            "<message id='r9' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<received xmlns='urn:xmpp:receipts' id='m1'/></message>"
        )
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.link.take()[1:], [])

    def test_receiptFromSomeoneElse(self) -> None:
        """
        A receipt from another user does not settle the message.
        """
        d = self.route.deliver(self.message())
        self.receive(
            "<message id='r9' from='juliet@xmpp.example/x' to='alice@corp.example'>"
            "<received xmlns='urn:xmpp:receipts' id='m1'/></message>"
        )
        self.assertNoResult(d)
        self.clock.advance(1)

    def test_sameIdTwice(self) -> None:
        """
        A second message with the id of one still waiting gets a stanza id
        of its own, so that errors go to the right one.
        """
        d1 = self.route.deliver(self.message())
        d2 = self.route.deliver(Message(self.alice, JULIET, "again", messageId="m1"))
        [m1, m2] = self.link.take()
        self.assertEqual(m1["id"], "m1")
        self.assertNotEqual(m2["id"], "m1")
        self.receive(
            f"<message type='error' id='{m2['id']}' from='juliet@xmpp.example' to='alice@corp.example'>"
            "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        self.failureResultOf(d2, UserOffline)
        self.assertNoResult(d1)
        self.clock.advance(1)
        self.successResultOf(d1)

    def test_pendingBounded(self) -> None:
        """
        At most C{maxPending} messages wait for their status: the oldest is
        settled as delivered to make room.
        """
        self.route = self.makeRoute(limits=RouteLimits(maxPending=2))
        ds = [self.route.deliver(self.message(messageId=f"m{i}")) for i in range(3)]
        self.assertEqual(self.successResultOf(ds[0]), DeliveryStatus.DELIVERED)
        self.assertNoResult(ds[1])
        self.assertNoResult(ds[2])
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.clock.advance(1)

    def test_linkDown(self) -> None:
        """
        While the link is down, delivery fails with its error at once.
        """
        self.link.down = True
        self.failureResultOf(self.route.deliver(self.message()), NoRoute)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_linkFails(self) -> None:
        """
        A link that fails with something else than a L{DeliveryError}
        fails the delivery with L{ServerError}, logged.
        """
        self.route = self.makeRoute()
        self.route._sendStanza = lambda e: fail(RuntimeError("boom"))
        self.failureResultOf(self.route.deliver(self.message()), ServerError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancel(self) -> None:
        """
        Cancelling the delivery forgets the message and its timer.
        """
        d = self.route.deliver(self.message())
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_illegalCharacters(self) -> None:
        """
        Characters XML forbids never reach the link.
        """
        self.route.deliver(self.message("a\x00b\x1bc\ufffed"))
        [m] = self.link.take()
        self.assertEqual(text(m, "body"), "abcd")
        self.clock.advance(1)

    def test_unmappableSender(self) -> None:
        """
        Over s2s, only our own domain's users can be senders.
        """
        other = Address.fromString("nick@testnet.irc")
        self.failureResultOf(self.route.deliver(Message(other, ROMEO, "hi")), NoRoute)
        self.assertEqual(self.link.take(), [])

    def test_stopped(self) -> None:
        """
        L{XMPPRemoteRoute.stop} settles what waits as delivered, and later
        deliveries fail.
        """
        d = self.route.deliver(self.message())
        self.route.stop()
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.failureResultOf(self.route.deliver(self.message(messageId="m2")), NoRoute)

    def test_throughTheHomeServer(self) -> None:
        """
        A session's message to a remote user goes out through the route,
        and an error from the remote server is the session's failure.
        """
        session, _ = self.login(self.alice)
        d = session.sendMessage(ROMEO, "are you there?", messageId="q1")
        [m] = self.link.take()
        self.assertEqual((m["to"], m["id"]), ("romeo@xmpp.example", "q1"))
        self.receive(
            "<message type='error' id='q1' from='romeo@xmpp.example' to='alice@corp.example'>"
            "<error type='wait'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        self.failureResultOf(d, UserOffline)


class OutboundPresenceTests(RouteTestCase):
    """
    L{XMPPRemoteRoute.deliver} with presence, probes and subscription
    events.
    """

    def test_presence(self) -> None:
        """
        A presence update becomes a presence from the user's bare JID with
        the C{<show/>} and status text of the XMPP mapping, delivered at
        once.
        """
        cases = [
            (Presence(PresenceState.BUSY, "in a meeting"), None, "dnd", "in a meeting"),
            (Presence(PresenceState.BE_RIGHT_BACK, "5 min"), None, "away", "Be right back: 5 min"),
            (ONLINE, None, None, None),
            (OFFLINE, "unavailable", None, None),
            (Presence(PresenceState.APPEAR_OFFLINE), "unavailable", None, None),
        ]
        for presence, kind, show, status in cases:
            d = self.route.deliver(PresenceUpdate(self.alice, ROMEO, presence))
            self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
            [p] = self.link.take()
            self.assertEqual(
                (p.name, p["from"], p["to"], p.getAttribute("type"), text(p, "show"), text(p, "status")),
                ("presence", "alice@corp.example", "romeo@xmpp.example", kind, show, status),
            )

    def test_noteIsXMLSafe(self) -> None:
        """
        A note with characters XML forbids loses them (tab stays).
        """
        self.route.deliver(PresenceUpdate(self.alice, ROMEO, Presence(PresenceState.AWAY, "a\tb\ufffe")))
        [p] = self.link.take()
        self.assertEqual(text(p, "status"), "a\tb")

    def test_probe(self) -> None:
        """
        A probe becomes a presence of type C{probe}.
        """
        self.successResultOf(self.route.deliver(PresenceProbe(self.alice, ROMEO)))
        [p] = self.link.take()
        self.assertEqual((p["type"], p["from"], p["to"]), ("probe", "alice@corp.example", "romeo@xmpp.example"))

    def test_subscriptions(self) -> None:
        """
        Subscription events become presence of the matching type.
        """
        for kind, wanted in [
            (SubscriptionKind.SUBSCRIBE, "subscribe"),
            (SubscriptionKind.AUTHORISE, "subscribed"),
            (SubscriptionKind.UNSUBSCRIBE, "unsubscribe"),
            (SubscriptionKind.REFUSE, "unsubscribed"),
        ]:
            self.successResultOf(self.route.deliver(SubscriptionEvent(kind, self.alice, ROMEO)))
            [p] = self.link.take()
            self.assertEqual((p["type"], p["from"], p["to"]), (wanted, "alice@corp.example", "romeo@xmpp.example"))

    def test_linkDown(self) -> None:
        """
        Presence fails with the link's error while it is down.
        """
        self.link.down = True
        self.failureResultOf(self.route.deliver(PresenceUpdate(self.alice, ROMEO, ONLINE)), NoRoute)


class InboundMessageTests(RouteTestCase):
    """
    Inbound messages become L{Message} events; failures are answered with
    stanza errors.
    """

    def test_message(self) -> None:
        """
        A chat message with a body is delivered to the local user, from the
        sender's bare address, with the stanza's id.
        """
        _, client = self.login(self.alice)
        self.clock.advance(12)
        self.receive(
            "<message type='chat' id='abc' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<body>hi &amp; bye</body></message>"
        )
        [m] = client.messages
        self.assertEqual((m.sender, m.recipient, m.body, m.messageId, m.timestamp), (ROMEO, self.alice, "hi & bye", "abc", 12.0))
        self.assertEqual(self.link.take(), [])

    def test_markedMessage(self) -> None:
        """
        An inbound message with imgateway's C{<auto/>} element keeps its
        mark (no rule of the recipient acts on it); one without has none.
        """
        _, client = self.login(self.alice)
        self.receive(
            "<message type='chat' id='a1' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<body>away</body><auto xmlns='urn:imgateway:auto' type='auto-reply'/></message>"
        )
        self.receive(
            "<message type='chat' id='a2' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<body>hi</body></message>"
        )
        self.assertEqual([m.mark for m in client.messages], [MessageMark.AUTO_REPLY, None])

    def test_normalMessage(self) -> None:
        """
        A message without a type (normal) is delivered too.
        """
        _, client = self.login(self.alice)
        self.receive("<message id='n1' from='romeo@xmpp.example' to='alice@corp.example/desk'><body>x</body></message>")
        self.assertEqual([m.body for m in client.messages], ["x"])

    def test_badIds(self) -> None:
        """
        A stanza id that the core would not accept (spaces, too long) is
        replaced by a new message id; a missing one too.
        """
        _, client = self.login(self.alice)
        for stanzaId in ["with space", "x" * 200, None]:
            attr = f" id='{stanzaId}'" if stanzaId is not None else ""
            self.receive(f"<message{attr} from='romeo@xmpp.example/b' to='alice@corp.example'><body>b</body></message>")
        ids = [m.messageId for m in client.messages]
        self.assertEqual(len(ids), 3)
        for stanzaId, got in zip(["with space", "x" * 200, None], ids):
            self.assertNotEqual(got, stanzaId)
            self.assertTrue(got and " " not in got and len(got) <= 128)

    def test_offline(self) -> None:
        """
        A message to a user without a session is answered with
        C{service-unavailable} (RFC 6121 8.5.2.1.1, not
        C{recipient-unavailable}), to the sender's full JID, from the
        recipient, with the stanza's id.
        """
        self.receive("<message type='chat' id='abc' from='romeo@xmpp.example/balcony' to='alice@corp.example'><body>hi</body></message>")
        [e] = self.link.take()
        self.assertEqual((e.name, e["type"], e["id"], e["to"], e["from"]), ("message", "error", "abc", "romeo@xmpp.example/balcony", "alice@corp.example"))
        self.assertEqual(errorOf(e)[:2], ("cancel", "service-unavailable"))
        self.assertIsNone(child(e, "body"))

    def test_noSuchUser(self) -> None:
        """
        A message to an unknown user is answered with
        C{service-unavailable} (RFC 6121 8.5.1), not C{item-not-found}.
        """
        self.receive("<message type='chat' id='abc' from='romeo@xmpp.example/b' to='nobody@corp.example'><body>hi</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[:2], ("cancel", "service-unavailable"))

    def test_unknownLikeOffline(self) -> None:
        """
        The errors for an unknown user and for an offline one are the same
        element, without a text that could tell them apart: a stranger
        cannot learn whether an account exists.
        """
        self.receive("<message type='chat' id='abc' from='romeo@xmpp.example/b' to='nobody@corp.example'><body>hi</body></message>")
        self.receive("<message type='chat' id='abc' from='romeo@xmpp.example/b' to='alice@corp.example'><body>hi</body></message>")
        unknown, offline = ([c for c in e.elements() if c.name == "error"][0] for e in self.link.take())
        self.assertEqual(unknown.toXml(), offline.toXml())
        self.assertEqual([c.name for c in unknown.elements()], ["service-unavailable"])

    def test_busyRedirect(self) -> None:
        """
        A user whose presence rule turns messages away answers a contact
        allowed to see its presence with a C{redirect} that names the
        alternate.
        """
        self.authorise(self.alice, ROMEO)
        session, _ = self.login(self.alice, BUSY)
        self.successResultOf(session.setRule(PresenceState.BUSY, "tel:+15550100"))
        self.link.take()
        self.receive("<message type='chat' id='abc' from='romeo@xmpp.example/b' to='alice@corp.example'><body>hi</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e), ("modify", "redirect", "tel:+15550100"))

    def test_receiptRequested(self) -> None:
        """
        A delivered message whose sender asked for a receipt is answered
        with one, to the sender's full JID.
        """
        self.login(self.alice)
        self.receive(
            "<message type='chat' id='abc' from='romeo@xmpp.example/balcony' to='alice@corp.example'>"
            "<body>hi</body><request xmlns='urn:xmpp:receipts'/></message>"
        )
        [r] = self.link.take()
        received = child(r, "received", NS_RECEIPTS)
        assert received is not None
        self.assertEqual((r["to"], r["from"], received["id"]), ("romeo@xmpp.example/balcony", "alice@corp.example", "abc"))
        self.assertIsNone(child(r, "body"))

    def test_noReceiptOnFailure(self) -> None:
        """
        A message that could not be delivered gets an error, not a receipt.
        """
        self.receive(
            "<message type='chat' id='abc' from='romeo@xmpp.example/b' to='alice@corp.example'>"
            "<body>hi</body><request xmlns='urn:xmpp:receipts'/></message>"
        )
        [e] = self.link.take()
        self.assertEqual(e["type"], "error")

    def test_noBody(self) -> None:
        """
        Messages without a body (chat states) and headlines deliver nothing
        and are not answered.
        """
        _, client = self.login(self.alice)
        self.receive(
            "<message type='chat' from='romeo@xmpp.example/b' to='alice@corp.example'>"
            "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        self.receive("<message type='headline' from='romeo@xmpp.example/b' to='alice@corp.example'><body>news</body></message>")
        self.assertEqual((client.messages, self.link.take()), ([], []))

    def test_groupchat(self) -> None:
        """
        Group chat messages are refused with C{service-unavailable}.
        """
        self.login(self.alice)
        self.receive("<message type='groupchat' id='g' from='room@xmpp.example/nick' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "service-unavailable")

    def test_tooLarge(self) -> None:
        """
        A body longer than C{maxBodyChars} is refused with
        C{policy-violation}.
        """
        self.route = self.makeRoute(limits=RouteLimits(maxBodyChars=10))
        _, client = self.login(self.alice)
        self.receive("<message id='t' from='romeo@xmpp.example/b' to='alice@corp.example'><body>12345678901</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "policy-violation")
        self.assertEqual(client.messages, [])

    def test_otherDomain(self) -> None:
        """
        A message from a domain the route does not serve is refused.
        """
        _, client = self.login(self.alice)
        self.receive("<message id='o' from='eve@evil.example/x' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual((e["to"], errorOf(e)[1]), ("eve@evil.example/x", "service-unavailable"))
        self.assertEqual(client.messages, [])

    def test_fromServer(self) -> None:
        """
        A message from a server JID (no localpart) is refused: a server is
        no address.
        """
        self.receive("<message id='s' from='xmpp.example' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "service-unavailable")

    def test_notOurUser(self) -> None:
        """
        A message to another domain, or to our domain itself, is refused
        with C{service-unavailable}.
        """
        for to in ["alice@other.example", "corp.example"]:
            self.receive(f"<message id='x' from='romeo@xmpp.example/b' to='{to}'><body>x</body></message>")
            [e] = self.link.take()
            self.assertEqual((e["from"], errorOf(e)[1]), (to, "service-unavailable"))

    def test_sameStanzaIdTwice(self) -> None:
        """
        Two messages with the same stanza id (which the peer's client
        chose) are two messages: both are delivered, neither is taken for
        a loop (the gateway goes by ids it mints itself).
        """
        _, client = self.login(self.alice)
        for _ in range(2):
            self.receive("<message id='same' from='romeo@xmpp.example/b' to='alice@corp.example'><body>x</body></message>")
        self.assertEqual([m.messageId for m in client.messages], ["same", "same"])
        self.assertEqual(self.link.take(), [])


class HostileInputTests(RouteTestCase):
    """
    Whatever arrives, nothing raises out of
    L{XMPPRemoteRoute.stanzaReceived}; what can be answered is answered.
    """

    def test_noFrom(self) -> None:
        """
        Stanzas without a C{from} (or with a malformed one) are dropped:
        there is nobody to answer.
        """
        self.login(self.alice)
        for stanza in [
            "<message id='1' to='alice@corp.example'><body>x</body></message>",
            "<message id='1' from='a@b@c' to='alice@corp.example'><body>x</body></message>",
            "<message id='1' from='' to='alice@corp.example'><body>x</body></message>",
            f"<message id='1' from='{'x' * 5000}@xmpp.example' to='alice@corp.example'><body>x</body></message>",
            "<presence from='@xmpp.example' to='alice@corp.example'/>",
            "<iq type='get' id='1' to='corp.example'><ping xmlns='urn:xmpp:ping'/></iq>",
        ]:
            self.receive(stanza)
        self.assertEqual(self.link.take(), [])

    def test_badTo(self) -> None:
        """
        A missing or malformed C{to} is answered with C{jid-malformed},
        from our service JID.
        """
        for attr in ["", " to='a@@b'", f" to='{'y' * 2000}@corp.example'"]:
            self.receive(f"<message id='1' from='romeo@xmpp.example/b'{attr}><body>x</body></message>")
            [e] = self.link.take()
            self.assertEqual((e["from"], errorOf(e)[1]), ("corp.example", "jid-malformed"))

    def test_hugeId(self) -> None:
        """
        An id too long to echo is left out of the answer.
        """
        self.receive(f"<message id='{'i' * 5000}' from='romeo@xmpp.example/b' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertIsNone(e.getAttribute("id"))
        self.assertEqual(errorOf(e)[1], "service-unavailable")

    def test_errorsAreNotAnswered(self) -> None:
        """
        Stanzas of type C{error} are never answered, whatever is wrong with
        them.
        """
        for stanza in [
            "<message type='error' id='nope' from='romeo@xmpp.example' to='alice@corp.example'/>",
            "<message type='error' from='romeo@xmpp.example' to='nobody@elsewhere.example'/>",
            "<presence type='error' from='romeo@xmpp.example' to='alice@corp.example'/>",
            "<iq type='error' id='1' from='romeo@xmpp.example' to='alice@corp.example'/>",
            "<iq type='result' id='1' from='romeo@xmpp.example' to='alice@corp.example'/>",
        ]:
            self.receive(stanza)
        self.assertEqual(self.link.take(), [])

    def test_unknownElements(self) -> None:
        """
        Unknown top-level elements and presence types are ignored.
        """
        self.receive("<foo from='romeo@xmpp.example'/>")
        self.receive("<presence type='bogus' from='romeo@xmpp.example' to='alice@corp.example'/>")
        self.assertEqual(self.link.take(), [])

    def test_unexpectedFailure(self) -> None:
        """
        A bug while handling a message is logged once and answered with
        C{internal-server-error}.
        """

        class Broken(S2SJIDMapper):
            def localAddress(self, jid: Any) -> Address:
                raise RuntimeError("bug")

        self.route = XMPPRemoteRoute(self.gateway.router, Broken("corp.example"), self.link.send, self.clock)
        self.receive("<message id='b' from='romeo@xmpp.example/b' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "internal-server-error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_routerFails(self) -> None:
        """
        A router that fails with something else than a L{DeliveryError} is
        logged and the message answered with C{internal-server-error}.
        """

        class Broken:
            def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
                raise RuntimeError("bug")

        self.route = XMPPRemoteRoute(Broken(), S2SJIDMapper("corp.example"), self.link.send, self.clock)  # type: ignore[arg-type]
        self.receive("<message id='b' from='romeo@xmpp.example/b' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "internal-server-error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_mapperRefuses(self) -> None:
        """
        A mapper that refuses an address with L{InvalidJID} is a refusal,
        not a bug.
        """

        class Picky(S2SJIDMapper):
            def remoteAddress(self, jid: Any) -> Address:
                raise InvalidJID("no")

        self.route = XMPPRemoteRoute(self.gateway.router, Picky("corp.example"), self.link.send, self.clock)
        self.receive("<message id='b' from='romeo@xmpp.example/b' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual(errorOf(e)[1], "service-unavailable")
        self.assertEqual(self.flushLoggedErrors(), [])


class InboundPresenceTests(RouteTestCase):
    """
    Inbound presence: per-resource aggregation, probes and subscriptions.
    """

    def setUp(self) -> None:
        super().setUp()
        self.authorise(ROMEO, self.alice)
        self.session, self.client = self.login(self.alice)
        self.link.take()  # the probe at login

    def presences(self) -> list[Presence]:
        seen = [p for a, p in self.client.presences if a == ROMEO]
        del self.client.presences[:]
        return seen

    def test_probeAtLogin(self) -> None:
        """
        (Setup) The home server probes a watched contact when its user logs
        in, and the route sends the probe.
        """
        self.session.close()
        self.login(self.alice)
        [p] = self.link.take()
        self.assertEqual((p["type"], p["to"]), ("probe", "romeo@xmpp.example"))

    def test_aggregate(self) -> None:
        """
        The resources of a contact are aggregated: the most available wins;
        an unavailable resource drops out; the user hears only changes.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'><show>dnd</show><status>busy</status></presence>")
        self.assertEqual(self.presences(), [Presence(PresenceState.BUSY, "busy")])
        self.receive("<presence from='romeo@xmpp.example/b' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [ONLINE])
        self.receive("<presence from='romeo@xmpp.example/c' to='alice@corp.example'><show>xa</show></presence>")
        self.assertEqual(self.presences(), [])
        self.receive("<presence type='unavailable' from='romeo@xmpp.example/b' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [AWAY])
        self.receive("<presence type='unavailable' from='romeo@xmpp.example/c' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [Presence(PresenceState.BUSY, "busy")])
        self.receive("<presence type='unavailable' from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [OFFLINE])
        self.assertEqual(self.link.take(), [])

    def test_statesAndNotes(self) -> None:
        """
        C{<show/>} and status text map back to states and notes.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'><show>away</show><status>Be right back: tea</status></presence>")
        self.assertEqual(self.presences(), [Presence(PresenceState.BE_RIGHT_BACK, "tea")])

    def test_bareUnavailable(self) -> None:
        """
        Unavailable from the bare JID takes every resource away.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.receive("<presence from='romeo@xmpp.example/b' to='alice@corp.example'><show>dnd</show></presence>")
        self.presences()
        self.receive("<presence type='unavailable' from='romeo@xmpp.example' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [OFFLINE])

    def test_resourcesBounded(self) -> None:
        """
        At most C{maxResources} resources are kept per contact: the least
        recently updated is forgotten.
        """
        self.route = self.makeRoute(limits=RouteLimits(maxResources=2))
        self.gateway.router.removeRoute("xmpp.example")
        self.gateway.router.addRoute("xmpp.example", self.route)
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.receive("<presence from='romeo@xmpp.example/b' to='alice@corp.example'><show>xa</show></presence>")
        self.receive("<presence from='romeo@xmpp.example/c' to='alice@corp.example'><show>xa</show></presence>")
        self.assertEqual(self.presences(), [ONLINE, AWAY])
        self.assertEqual(len(self.route._resources[(ROMEO, self.alice)]), 2)

    def test_contactsBounded(self) -> None:
        """
        At most C{maxContacts} (contact, user) pairs are kept.
        """
        self.route = self.makeRoute(limits=RouteLimits(maxContacts=2))
        for i in range(5):
            self.authorise(Address.fromString(f"c{i}@xmpp.example"), self.alice)
        self.session.close()
        self.login(self.alice)
        for i in range(5):
            self.receive(f"<presence from='c{i}@xmpp.example/r' to='alice@corp.example'/>")
        self.assertEqual(len(self.route._resources), 2)

    def test_notWatchedForgotten(self) -> None:
        """
        The presence of a contact the user does not watch is refused by the
        home server, and the route forgets it.
        """
        self.receive("<presence from='juliet@xmpp.example/a' to='alice@corp.example'/>")
        self.receive("<presence from='juliet@xmpp.example/a' to='nobody@corp.example'/>")
        self.assertEqual([a for a, _ in self.client.presences if a == JULIET], [])
        self.assertEqual(dict(self.route._resources), {})
        self.assertEqual(self.route._delivered, {})

    def test_probeAnswerRedelivered(self) -> None:
        """
        After a probe (a new session), the answer is delivered even if it
        says what the route delivered before.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [ONLINE])
        self.session.close()
        _, client = self.login(self.alice)
        [probe] = self.link.take()
        self.assertEqual(probe["type"], "probe")
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.assertEqual([p for a, p in client.presences if a == ROMEO], [ONLINE])

    def test_inboundProbe(self) -> None:
        """
        A probe from a contact allowed to watch the user is answered with
        the user's presence.
        """
        self.authorise(self.alice, ROMEO)
        self.session.close()
        session, _ = self.login(self.alice, Presence(PresenceState.BUSY, "call"))
        self.link.take()
        self.receive("<presence type='probe' from='romeo@xmpp.example' to='alice@corp.example'/>")
        [p] = self.link.take()
        self.assertEqual((p["from"], p["to"], text(p, "show"), text(p, "status")), ("alice@corp.example", "romeo@xmpp.example", "dnd", "call"))

    def test_unauthorisedProbe(self) -> None:
        """
        A probe from someone not allowed to watch the user is ignored, as a
        probe to an offline or unknown user is: it reveals nothing.
        """
        for to in ("alice", "bob", "nobody"):
            self.receive(f"<presence type='probe' from='juliet@xmpp.example' to='{to}@corp.example'/>")
        self.assertEqual(self.link.take(), [])

    def test_subscribe(self) -> None:
        """
        A subscription request reaches the user; its authorisation goes
        back as C{subscribed} and the user's presence.
        """
        self.receive("<presence type='subscribe' from='juliet@xmpp.example' to='alice@corp.example'/>")
        self.assertEqual(self.client.subscriptions, [SubscriptionEvent(SubscriptionKind.SUBSCRIBE, JULIET, self.alice)])
        self.successResultOf(self.session.authorise(JULIET, True))
        [subscribed, presence] = self.link.take()
        self.assertEqual((subscribed["type"], subscribed["to"]), ("subscribed", "juliet@xmpp.example"))
        self.assertEqual((presence.getAttribute("type"), presence["to"]), (None, "juliet@xmpp.example"))

    def test_subscribeUnknownUser(self) -> None:
        """
        A subscription request to an unknown user is left unanswered, as a
        request a user has not decided yet is: it reveals nothing.
        """
        self.receive("<presence type='subscribe' from='juliet@xmpp.example/x' to='nobody@corp.example'/>")
        self.assertEqual(self.link.take(), [])

    def test_subscribeFromOtherDomain(self) -> None:
        """
        A subscription request from a domain the route does not serve is
        answered with C{unsubscribed}.
        """
        self.receive("<presence type='subscribe' from='eve@evil.example' to='alice@corp.example'/>")
        [p] = self.link.take()
        self.assertEqual((p["type"], p["to"]), ("unsubscribed", "eve@evil.example"))
        self.assertEqual(self.client.subscriptions, [])

    def test_subscribedThenPresence(self) -> None:
        """
        The user's request, then the contact's C{subscribed} and its
        presence: the user sees the presence.
        """
        self.successResultOf(self.session.subscribe(JULIET))
        [request] = self.link.take()
        self.assertEqual(request["type"], "subscribe")
        self.receive("<presence type='subscribed' from='juliet@xmpp.example' to='alice@corp.example'/>")
        self.receive("<presence from='juliet@xmpp.example/r' to='alice@corp.example'><show>dnd</show></presence>")
        self.assertEqual([p for a, p in self.client.presences if a == JULIET], [BUSY])

    def test_refused(self) -> None:
        """
        C{unsubscribed} from a watched contact: the user sees it offline,
        and the route forgets its resources.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.presences()
        self.receive("<presence type='unsubscribed' from='romeo@xmpp.example' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [OFFLINE])
        self.assertEqual(dict(self.route._resources), {})

    def test_linkLostAndBack(self) -> None:
        """
        When the link goes down, the contacts seen available are reported
        offline; when it comes back, they are probed, and the home server
        is probed for the contacts that watch our users.
        """
        self.authorise(self.alice, ROMEO)
        self.session.close()
        self.session, self.client = self.login(self.alice)
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.assertEqual(self.presences(), [ONLINE])
        self.link.take()
        self.link.down = True
        self.route.linkLost()
        self.assertEqual(self.presences(), [OFFLINE])
        self.link.down = False
        self.route.linkEstablished()
        sent = sorted((p.getAttribute("type") or "available", p["to"]) for p in self.link.take())
        self.assertEqual(sent, [("available", "romeo@xmpp.example"), ("probe", "romeo@xmpp.example")])

    def test_linkLostOtherDomain(self) -> None:
        """
        L{XMPPRemoteRoute.linkLost} for one domain leaves the others alone.
        """
        self.receive("<presence from='romeo@xmpp.example/a' to='alice@corp.example'/>")
        self.presences()
        self.route.linkLost("other.example")
        self.assertEqual(self.presences(), [])


class OrderingTests(SynchronousTestCase):
    """
    Events from one contact to one user are delivered one at a time, in
    order; a contact that sends too many at once is refused.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.router = SlowRouter()
        self.link = FakeLink()
        self.route = XMPPRemoteRoute(self.router, S2SJIDMapper("corp.example"), self.link.send, self.clock,  # type: ignore[arg-type]
                                     limits=RouteLimits(maxQueued=2))

    def receive(self, xml: str) -> None:
        self.route.stanzaReceived(parse(xml))

    def test_inOrder(self) -> None:
        """
        The presence after a C{subscribed} is delivered only once the
        C{subscribed} has been.
        """
        self.receive("<presence type='subscribed' from='romeo@xmpp.example' to='alice@corp.example'/>")
        self.receive("<presence from='romeo@xmpp.example/r' to='alice@corp.example'/>")
        self.receive("<message id='m' from='juliet@xmpp.example/r' to='alice@corp.example'><body>x</body></message>")
        self.assertEqual([type(e).__name__ for e, _ in self.router.deliveries], ["SubscriptionEvent", "Message"])
        self.router.deliveries[0][1].callback(DeliveryStatus.DELIVERED)
        self.assertEqual([type(e).__name__ for e, _ in self.router.deliveries], ["SubscriptionEvent", "Message", "PresenceUpdate"])

    def test_failureDoesNotBlock(self) -> None:
        """
        A failed delivery lets the next one go.
        """
        self.receive("<message id='1' from='romeo@xmpp.example/r' to='alice@corp.example'><body>x</body></message>")
        self.receive("<message id='2' from='romeo@xmpp.example/r' to='alice@corp.example'><body>y</body></message>")
        self.router.deliveries[0][1].errback(NotAuthorised("no"))
        self.assertEqual(len(self.router.deliveries), 2)
        [e] = self.link.take()
        self.assertEqual((e["id"], errorOf(e)[1]), ("1", "not-authorized"))

    def test_coalesced(self) -> None:
        """
        Presence that arrives while a delivery waits is delivered once, as
        the aggregate of what arrived.
        """
        self.receive("<presence type='subscribed' from='romeo@xmpp.example' to='alice@corp.example'/>")
        for show in ["dnd", "xa", "away"]:
            self.receive(f"<presence from='romeo@xmpp.example/r' to='alice@corp.example'><show>{show}</show></presence>")
        self.router.deliveries[0][1].callback(DeliveryStatus.DELIVERED)
        updates = [e for e, _ in self.router.deliveries if isinstance(e, PresenceUpdate)]
        self.assertEqual([u.presence for u in updates], [AWAY])

    def test_bounded(self) -> None:
        """
        Past C{maxQueued} waiting events, messages are refused with
        C{resource-constraint}.
        """
        for i in range(4):
            self.receive(f"<message id='{i}' from='romeo@xmpp.example/r' to='alice@corp.example'><body>x</body></message>")
        [e] = self.link.take()
        self.assertEqual((e["id"], errorOf(e)[:2]), ("3", ("wait", "resource-constraint")))


class IQTests(RouteTestCase):
    """
    IQs: ping and disco for our service JID and users; nothing else.
    """

    def iq(self, to: str, payload: str, kind: str = "get", stanzaId: str = "q1") -> domish.Element:
        self.receive(f"<iq type='{kind}' id='{stanzaId}' from='romeo@xmpp.example/b' to='{to}'>{payload}</iq>")
        [reply] = self.link.take()
        self.assertEqual((reply["to"], reply.getAttribute("id")), ("romeo@xmpp.example/b", stanzaId))
        return reply

    def test_ping(self) -> None:
        """
        Pings to the service JID are answered.
        """
        reply = self.iq("corp.example", "<ping xmlns='urn:xmpp:ping'/>")
        self.assertEqual((reply["type"], reply["from"]), ("result", "corp.example"))

    def test_discoService(self) -> None:
        """
        disco#info of the service JID gives the route's identity and
        features.
        """
        reply = self.iq("corp.example", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
        [query] = reply.elements()
        [identity] = [e for e in query.elements() if e.name == "identity"]
        self.assertEqual((identity["category"], identity["type"]), ("server", "im"))
        features = {e["var"] for e in query.elements() if e.name == "feature"}
        self.assertIn("urn:xmpp:ping", features)

    def test_userLikeUnknown(self) -> None:
        """
        IQs to a user's bare JID (ping, disco#info) get the same
        C{service-unavailable} whether the account exists, is disabled or
        not: a stranger cannot tell (RFC 6121 8.5.1).
        """
        addUser(self.gateway, "carol", "pw", enabled=False)
        for payload in ["<ping xmlns='urn:xmpp:ping'/>", "<query xmlns='http://jabber.org/protocol/disco#info'/>"]:
            errors = [
                [c for c in self.iq(to, payload).elements() if c.name == "error"][0].toXml()
                for to in ["alice@corp.example", "carol@corp.example", "nobody@corp.example"]
            ]
            self.assertEqual(errors, [errors[0]] * 3)
            self.assertIn("service-unavailable", errors[0])

    def test_discoItems(self) -> None:
        """
        disco#items of the service is empty.
        """
        reply = self.iq("corp.example", "<query xmlns='http://jabber.org/protocol/disco#items'/>")
        self.assertEqual(reply["type"], "result")

    def test_unknownUser(self) -> None:
        """
        IQs to a user without an account, or to a full JID, are answered
        with C{service-unavailable}.
        """
        for to in ["nobody@corp.example", "alice@corp.example/desk"]:
            reply = self.iq(to, "<ping xmlns='urn:xmpp:ping'/>")
            self.assertEqual(errorOf(reply)[1], "service-unavailable")

    def test_unsupported(self) -> None:
        """
        Other IQs are answered with C{service-unavailable}; malformed ones
        with C{bad-request}.
        """
        reply = self.iq("corp.example", "<query xmlns='jabber:iq:version'/>")
        self.assertEqual(errorOf(reply)[1], "service-unavailable")
        reply = self.iq("corp.example", "", kind="set")
        self.assertEqual(errorOf(reply)[1], "bad-request")
        reply = self.iq("corp.example", "<ping xmlns='urn:xmpp:ping'/>", kind="bogus")
        self.assertEqual(errorOf(reply)[1], "bad-request")

    def test_noId(self) -> None:
        """
        An IQ without an id is dropped.
        """
        self.receive("<iq type='get' from='romeo@xmpp.example/b' to='corp.example'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(self.link.take(), [])

    def test_longId(self) -> None:
        """
        An IQ whose id is too long to echo is answered without it.
        """
        self.receive(f"<iq type='get' id='{'q' * 300}' from='romeo@xmpp.example/b' to='corp.example'><ping xmlns='urn:xmpp:ping'/></iq>")
        [reply] = self.link.take()
        self.assertEqual((reply["type"], reply.getAttribute("id")), ("result", None))
