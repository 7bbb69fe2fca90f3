"""
Tests for L{imgateway.router.proxy}: a router's proxied sessions over a
link (in memory, L{twisted.test.iosim}, timed by a L{Clock}) to a home
server whose sessions are doubles: every L{ISession} call and every
L{ISessionClient} callback crosses the link and comes back, errors
included; a lost link closes both ends; C{[links] max_sessions}.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from imgateway.adapters.native.framing import FrameParser, Headers, Request, Response
from imgateway.config import GatewayConfig
from imgateway.core.address import Address
from imgateway.core.errors import (
    DeliveryStatus,
    InvalidAddress,
    PersistenceFailed,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    TooManySessions,
    UserBusy,
    UserOffline,
)
from imgateway.core.events import Message, MessageMark, SubscriptionEvent, SubscriptionKind, newMessageId
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.core.records import (
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactView,
    PresenceRule,
    RuleAction,
    RuleNetwork,
    Subscription,
)
from imgateway.interfaces import IAnsweringSession, IHomeServer, ILinkRoutes, IRoute, ISession, ISessionClient
from imgateway.router.link import ANSWERED_LATER, LINK_LIMITS, LinkClient, LinkReceiver, LinkTraces, serialiseUnsequenced, withSeq
from imgateway.router import proxy
from imgateway.router.link_codec import DELIVERED, encodeRequest
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.router.proxy import LINK_LOST, ProxyHomeServer, RemoteSession, SessionHost, installProxy
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.testing import MemoryDirectory, RecordingSessionClient, addUser, memoryGateway
from imgateway.status.nometrics import NO_METRICS, NoMetrics

from tests.test_link import ALICE, CAROL, FakeLocator, FakeRouter, LinkTestCase, Server, configFor, hello

BOB = Address.fromString("bob@corp.example")


@implementer(ISession)
class RecordingSession:
    """
    A home server's session double: records every call as
    C{(method, arguments)} and answers with what C{answers} holds for the
    method (a value, or an exception to fail with).
    """

    def __init__(self, address: Address, client: ISessionClient, label: str, sessionId: str) -> None:
        self.address = address
        self.client = client
        self.label = label
        self.sessionId = sessionId
        self.presence = OFFLINE
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.answers: dict[str, Any] = {}
        self.closed: list[str] = []

    def _answer(self, name: str, default: Any, *arguments: Any) -> Deferred[Any]:
        self.calls.append((name, arguments))
        answer = self.answers.get(name, default)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def publish(self, presence: Presence, lease: float | None = None) -> float:
        self.calls.append(("publish", (presence, lease)))
        self.presence = presence
        return 60.0

    def sendMessage(
        self, recipient: Address, body: str, contentType: str = "text/plain", messageId: str | None = None
    ) -> Deferred[DeliveryStatus]:
        return self._answer("sendMessage", DeliveryStatus.DELIVERED, recipient, body, contentType, messageId)

    def subscribe(self, target: Address, displayName: str = "") -> Deferred[AuthorisationState]:
        return self._answer("subscribe", AuthorisationState.PENDING, target, displayName)

    def putContact(self, contact: Address, displayName: str = "") -> Deferred[None]:
        return self._answer("putContact", None, contact, displayName)

    def unsubscribe(self, target: Address) -> Deferred[None]:
        return self._answer("unsubscribe", None, target)

    def authorise(self, watcher: Address, allow: bool) -> Deferred[None]:
        return self._answer("authorise", None, watcher, allow)

    def contacts(self) -> Deferred[list[ContactView]]:
        return self._answer("contacts", [])

    def pendingRequests(self) -> Deferred[list[Address]]:
        return self._answer("pendingRequests", [])

    def setAccess(self, entry: str, accessList: AccessList) -> Deferred[None]:
        return self._answer("setAccess", None, entry, accessList)

    def accessLists(self) -> Deferred[dict[str, AccessList]]:
        return self._answer("accessLists", {})

    def setRule(self, state: PresenceState, alternate: str | None) -> Deferred[None]:
        return self._answer("setRule", None, state, alternate)

    def rules(self) -> Deferred[list[PresenceRule]]:
        return self._answer("rules", [])

    def setRules(self, rules: Sequence[PresenceRule]) -> Deferred[None]:
        return self._answer("setRules", None, list(rules))

    def addRule(self, rule: PresenceRule, position: int | None = None) -> Deferred[None]:
        return self._answer("addRule", None, rule, position)

    def removeRule(self, position: int) -> Deferred[None]:
        return self._answer("removeRule", None, position)

    def close(self, reason: str = "") -> None:
        self.closed.append(reason)


@implementer(IHomeServer)
class RecordingHome:
    """
    A home server double whose sessions are L{RecordingSession}s.

    @ivar failWith: When set, L{openSession} fails with it.
    """

    domain = "corp.example"

    def __init__(self, name: str = "hs1") -> None:
        self.name = name
        self.sessions: list[RecordingSession] = []
        self.failWith: Exception | None = None
        self.hold = False
        self.held: list[Deferred[None]] = []

    def openSession(self, address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        if self.failWith is not None:
            return fail(self.failWith)
        sessionId = f"{self.name}-{len(self.sessions) + 1}"
        session = RecordingSession(address, client, label or sessionId, sessionId)
        self.sessions.append(session)
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held.append(d)
            opened: Deferred[ISession] = d.addCallback(lambda _: session)
            return opened
        return succeed(session)

    def sessionsOf(self, address: Address) -> list[ISession]:
        return [s for s in self.sessions if s.address == address and not s.closed]

    def presenceOf(self, address: Address) -> Presence:
        return OFFLINE

    def userRules(self, address: Address) -> Deferred[list[PresenceRule]]:
        raise NotImplementedError()

    def setUserRules(self, address: Address, rules: Sequence[PresenceRule]) -> Deferred[None]:
        raise NotImplementedError()

    def users(self) -> list[Address]:
        return sorted({s.address for s in self.sessions if not s.closed})

    def deliver(self, event: Any) -> Deferred[DeliveryStatus]:
        return succeed(DeliveryStatus.DELIVERED)


@implementer(ILinkRoutes)
class OneLink:
    """
    Link routes with one link, to C{hs1} (and any more in C{links}).
    """

    def __init__(self, link: LinkClient) -> None:
        self.link = link
        self.links = {"hs1": link}

    def toServer(self, name: str) -> IRoute:
        return self.links[name]

    def toDomain(self, domain: str) -> Deferred[IRoute | None]:
        return succeed(None)


class ProxyTestCase(LinkTestCase):
    """
    hs1 (its link receiver, with a L{SessionHost} on a L{RecordingHome}),
    and a router's L{ProxyHomeServer} with a link to it.
    """

    maxSessions = 3

    def setUp(self) -> None:
        super().setUp()
        self.server = Server(configFor("hs1", maxSessions=self.maxSessions, maxQueue=20), self.clock)
        self.home = RecordingHome()
        self.host = SessionHost(self.server.config, self.home, self.server.locator, self.clock)
        self.server.receiver.addMethod("SESSION", self.host.requestReceived)
        self.routerConfig = configFor("router", maxSessions=self.maxSessions, maxQueue=20)
        self.routerReceiver = LinkReceiver(self.routerConfig, FakeRouter(), FakeLocator(), self.clock, LinkTraces())
        self.link = self.linkFrom("router")
        self.routes = OneLink(self.link)
        self.proxy = ProxyHomeServer(self.routerConfig, FakeLocator(), self.routes)
        self.routerReceiver.addBackMethod("CLIENT", self.proxy.callbackReceived)

    def linkFrom(self, name: str, server: Server | None = None) -> LinkClient:
        """
        A running link client from server C{name} to hs1 (or C{server})
        that takes requests back (the router's C{CLIENT}).
        """
        config = configFor(name, maxSessions=self.maxSessions, maxQueue=20)
        client = LinkClient(
            f"server {(server or self.server).config.homeServerName}",
            self.network.endpoint(server or self.server),
            config.links,
            self.clock,
            hello(name),
            LinkTraces(),
            f"corp.example/{name}",
            handlers=self.routerReceiver.backHandlers,
            retryPolicy=lambda attempts: 1.0,
        )
        client.startService()
        self.addCleanup(self.stop, client)
        self.network.flush()
        return client

    def open(self, address: Address = ALICE, label: str = "phone") -> tuple[RemoteSession, RecordingSession, RecordingSessionClient]:
        """
        Open a proxied session; return it, its home session and the face's
        client.
        """
        client = RecordingSessionClient(label)
        d = self.proxy.openSession(address, client, label)
        self.network.flush()
        self.clock.advance(0)
        self.network.flush()
        session = self.successResultOf(d)
        assert isinstance(session, RemoteSession)
        return session, self.home.sessions[-1], client

    def settle(self, d: Deferred[Any]) -> Any:
        self.network.flush()
        return d

    def sent(self) -> list[Request]:
        """
        Record the requests the router's link sends from now on.
        """
        requests: list[Request] = []
        send = self.link.request
        sendEncoded = self.link.requestEncoded

        def recording(request: Request) -> Deferred[Any]:
            requests.append(request)
            return send(request)

        def recordingEncoded(encoded: bytes, decode: Callable[[Response], Any] | None = None, waiter: Any = None) -> Any:
            # What was written, parsed back (a Seq added for the parser).
            [frame] = FrameParser(LINK_LIMITS).feed(withSeq(encoded, 1))
            assert isinstance(frame, Request)
            requests.append(attrs.evolve(frame, headers=frame.headers.without("Seq")))
            return sendEncoded(encoded, decode, waiter)

        self.link.request = recording  # type: ignore[method-assign]
        self.link.requestEncoded = recordingEncoded  # type: ignore[method-assign]
        return requests


class OpenTests(ProxyTestCase):
    """
    Opening a proxied session.
    """

    def test_interfaces(self) -> None:
        """
        A proxied session is an L{ISession}; what the home server gives its
        session is an L{ISessionClient}.
        """
        session, home, client = self.open()
        self.assertTrue(verifyObject(ISession, session))
        self.assertTrue(verifyObject(ISessionClient, home.client))

    def test_answeringInterface(self) -> None:
        """
        A proxied session provides L{IAnsweringSession}: the C{sendMessageThen}
        the faces look up by name has the signature it declares, so a
        change to either side fails here.
        """
        session, _, _ = self.open()
        self.assertTrue(verifyClass(IAnsweringSession, RemoteSession))
        self.assertTrue(verifyObject(IAnsweringSession, session))

    def test_open(self) -> None:
        """
        The session opens on the home server for the user, with the label
        the face asked for; the router's session has the home server's id
        and final label.
        """
        session, home, client = self.open(label="phone")
        self.assertEqual((home.address, home.label), (ALICE, "phone"))
        self.assertEqual((session.address, session.sessionId, session.label), (ALICE, home.sessionId, "phone"))
        self.assertIs(session.client, client)
        self.assertEqual(self.host.sessionsOn(next(iter(self.server.factory.connections))), [home])

    def test_homeRefuses(self) -> None:
        """
        The home server's refusal comes back as the same error:
        L{TooManySessions}, L{ServiceUnavailable}.
        """
        self.home.failWith = TooManySessions("10 sessions already")
        d = self.proxy.openSession(ALICE, RecordingSessionClient(), "")
        self.network.flush()
        self.assertEqual(str(self.failureResultOf(d, TooManySessions).value), "10 sessions already")
        self.home.failWith = ServiceUnavailable("stopping")
        d = self.proxy.openSession(ALICE, RecordingSessionClient(), "")
        self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.proxy.sessionCount(self.link), 0)

    def test_notHomedThere(self) -> None:
        """
        The home server opens no session for a user the directory homes
        nowhere (whatever the router believes; asked of the directory once
        more, the user having just authenticated): 403, and the router's
        L{ServiceUnavailable}.
        """
        self.proxy._locator.homes[BOB] = "hs1"  # type: ignore[attr-defined]
        d = self.proxy.openSession(BOB, RecordingSessionClient(), "")
        self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.home.sessions, [])
        self.assertTrue(self.messages("not homed on hs1"))

    def test_notHomedThereAnswers301(self) -> None:
        """
        A home server asked to open a session for a user the directory homes
        on another server answers C{301} with that server's name in
        C{Home}, as it answers an event (the router's answer was old), and
        logs it.
        """
        body = b'{"address": "carol@corp.example", "label": ""}'
        d = self.link.request(Request("SESSION", "open", Headers(), body))
        self.network.flush()
        response = self.successResultOf(d)
        self.assertEqual((response.code, response.headers.get("Home")), (301, "hs2"))
        self.assertEqual(self.home.sessions, [])
        self.assertTrue(self.messages("a session for carol@corp.example not opened (301): the directory homes it on hs2"))

    def test_noHomeRemembered(self) -> None:
        """
        A home server whose locator remembers that a user has no home (from
        before its account was made) forgets that and asks the directory
        again, the router having authenticated the user: the session opens.
        """
        directory = MemoryDirectory()
        locator = DirectoryHomeLocator(directory, self.clock, 30.0)
        self.host._locator = locator
        self.assertIsNone(self.successResultOf(locator.homeOf(ALICE)))
        directory.accounts[ALICE] = AccountRecord(ALICE, "hs1", "", True, "{}")
        session, home, client = self.open(ALICE)
        self.assertEqual(home.address, ALICE)

    def test_directoryFails(self) -> None:
        """
        When the home server cannot read the directory, it opens no session
        and answers C{503} (logged, no traceback); the router fails the
        login with L{ServiceUnavailable}.
        """
        self.server.locator.homeOf = lambda address: fail(PersistenceFailed("directory unreachable"))  # type: ignore[method-assign]
        d = self.proxy.openSession(ALICE, RecordingSessionClient(), "")
        self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.home.sessions, [])
        self.assertTrue(self.messages("the directory cannot be read: directory unreachable"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_onlyRouters(self) -> None:
        """
        A home server takes C{SESSION} requests only from a peer with the
        role C{router}: another home server gets C{403}.
        """
        link = self.linkFrom("hs2")
        d = link.request(Request("SESSION", "open", Headers(), b'{"address": "alice@corp.example", "label": ""}'))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 403)
        self.assertEqual(self.home.sessions, [])

    def test_noHome(self) -> None:
        """
        A user with no home server, or homed on the router itself, is not
        proxied: L{ServiceUnavailable}, nothing sent.
        """
        d = self.proxy.openSession(BOB, RecordingSessionClient(), "")
        self.failureResultOf(d, ServiceUnavailable)
        self.proxy._locator.homes[BOB] = "router"  # type: ignore[attr-defined]
        d = self.proxy.openSession(BOB, RecordingSessionClient(), "")
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.home.sessions, [])

    def test_linkDown(self) -> None:
        """
        With the link down, opening fails with L{ServiceUnavailable} within
        C{request_timeout}: never a hang.
        """
        self.drop()
        self.server.up = False
        d = self.proxy.openSession(ALICE, RecordingSessionClient(), "")
        self.assertNoResult(d)
        self.clock.advance(10)
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.proxy.sessionCount(self.link), 0)


class MovedTests(ProxyTestCase):
    """
    A router whose locator's answer is old (the user was moved to another
    home server since) opens the session on the new home server.
    """

    def setUp(self) -> None:
        super().setUp()
        self.hs2 = Server(configFor("hs2", maxSessions=self.maxSessions, maxQueue=20), self.clock)
        self.home2 = RecordingHome("hs2")
        host2 = SessionHost(self.hs2.config, self.home2, self.hs2.locator, self.clock)
        self.hs2.receiver.addMethod("SESSION", host2.requestReceived)
        self.routes.links["hs2"] = self.linkFrom("router", self.hs2)
        # The router read carol's home before her move to hs2.
        self.directory = MemoryDirectory([AccountRecord(CAROL, "hs1", "", True, "{}")])
        self.locator = DirectoryHomeLocator(self.directory, self.clock, 30.0)
        self.proxy._locator = self.locator
        self.assertEqual(self.successResultOf(self.locator.homeOf(CAROL)), "hs1")
        self.directory.accounts[CAROL] = AccountRecord(CAROL, "hs2", "", True, "{}")

    def test_moved(self) -> None:
        """
        hs1 answers C{301} (C{Home: hs2}); the router forgets its answer,
        asks the directory again, and opens the session on hs2; the
        locator remembers the new answer.
        """
        client = RecordingSessionClient("phone")
        d = self.proxy.openSession(CAROL, client, "phone")
        for _ in range(3):
            self.network.flush()
            self.clock.advance(0)
        session = self.successResultOf(d)
        assert isinstance(session, RemoteSession)
        [home] = self.home2.sessions
        self.assertEqual((home.address, session.sessionId), (CAROL, home.sessionId))
        self.assertEqual(self.home.sessions, [])
        self.assertEqual(self.successResultOf(self.locator.homeOf(CAROL)), "hs2")
        self.assertEqual((self.proxy.sessionCount(self.link), self.proxy.sessionCount(self.routes.links["hs2"])), (0, 1))
        self.assertTrue(self.messages("Proxied session of carol@corp.example not opened on hs1: the directory homes it on hs2 now"))

    def test_movedTwice(self) -> None:
        """
        A router that is sent to another server once more (the user moved
        again meanwhile) gives up: L{ServiceUnavailable}, logged; it asked
        twice.
        """
        stale = FakeLocator()
        stale.homes[CAROL] = "hs1"
        self.proxy._locator = stale
        d = self.proxy.openSession(CAROL, RecordingSessionClient(), "")
        for _ in range(3):
            self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(len(self.messages("a session for carol@corp.example not opened (301)")), 2)
        self.assertEqual(self.home2.sessions, [])
        self.assertTrue(self.messages("carol@corp.example moved again (to hs2)"))
        self.assertEqual(self.proxy.sessionCount(self.link), 0)


class LimitTests(ProxyTestCase):
    """
    C{[links] max_sessions} proxied sessions on a link (3 here).
    """

    def test_routerLimit(self) -> None:
        """
        The router opens 3 sessions over the link, and refuses the 4th
        (L{ServiceUnavailable}, logged) without asking the home server;
        once one closes, one more may open.
        """
        sessions = [self.open(label=f"s{i}")[0] for i in range(3)]
        self.assertEqual(self.proxy.sessionCount(self.link), 3)
        d = self.proxy.openSession(ALICE, RecordingSessionClient(), "s4")
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(len(self.home.sessions), 3)
        self.assertTrue(self.messages("3 proxied sessions on its link already"))
        sessions[0].close()
        self.network.flush()
        self.open(label="s5")
        self.assertEqual(self.proxy.sessionCount(self.link), 3)

    def test_homeLimit(self) -> None:
        """
        The home server opens 3 sessions on one connection, and answers
        the 4th C{503} (a router with a higher limit, or another
        implementation, may ask).
        """
        for i in range(3):
            self.open(label=f"s{i}")
        d = self.link.request(Request("SESSION", "open", Headers(), b'{"address": "alice@corp.example", "label": ""}'))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(self.home.sessions), 3)
        self.assertTrue(self.messages("3 proxied sessions on the link already"))

    def test_homeLimitCountsOpening(self) -> None:
        """
        Sessions being opened count towards the home server's limit.
        """
        self.home.hold = True
        requests = [
            self.link.request(Request("SESSION", "open", Headers(), b'{"address": "alice@corp.example", "label": ""}'))
            for i in range(4)
        ]
        self.network.flush()
        self.assertEqual(self.successResultOf(requests[3]).code, 503)
        self.assertEqual(len(self.home.held), 3)
        for held in self.home.held:
            held.callback(None)
        self.network.flush()
        self.assertEqual([self.successResultOf(d).code for d in requests[:3]], [200, 200, 200])


class SessionMethodTests(ProxyTestCase):
    """
    Every L{ISession} method crosses the link to the home session.
    """

    def test_publish(self) -> None:
        """
        C{publish} returns the lease the router's C{[home]} bounds grant
        (as the home server's would) and publishes on the home session.
        """
        session, home, client = self.open()
        granted = session.publish(Presence(PresenceState.AWAY, "lunch"), 5.0)
        self.network.flush()
        self.assertEqual(granted, self.routerConfig.home.minPresenceLease)
        self.assertEqual(home.calls, [("publish", (Presence(PresenceState.AWAY, "lunch"), 5.0))])
        self.assertEqual(session.presence, Presence(PresenceState.AWAY, "lunch"))
        self.assertEqual(session.publish(Presence(), None), self.routerConfig.home.presenceLease)
        self.network.flush()
        self.assertEqual(home.calls[-1], ("publish", (Presence(), None)))

    def test_sendMessage(self) -> None:
        """
        C{sendMessage} sends with the recipient, body, content type and
        message id, and fires with delivered.
        """
        session, home, client = self.open()
        d = self.settle(session.sendMessage(CAROL, "hi ☃", "text/html", "m-1"))
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi ☃", "text/html", "m-1"))])
        d = self.settle(session.sendMessage(CAROL, "again"))
        self.successResultOf(d)
        self.assertEqual(home.calls[-1], ("sendMessage", (CAROL, "again", "text/plain", None)))

    def test_sendMessageCompact(self) -> None:
        """
        C{sendMessage} sends the compact C{SESSION message}: the recipient,
        content type (left out when C{text/plain}) and message id (left out
        when there is none) as headers, the text as the body; no JSON.
        """
        session, home, client = self.open()
        requests = self.sent()
        self.successResultOf(self.settle(session.sendMessage(CAROL, "hi ☃", "text/html", "m-1")))
        self.successResultOf(self.settle(session.sendMessage(CAROL, "{}")))
        self.assertEqual(
            [(r.method, r.target, r.headers.items, r.body) for r in requests],
            [
                ("SESSION", "message", (("Session", session.sessionId), ("To", str(CAROL)), ("Content-Type", "text/html"), ("Message-ID", "m-1")), "hi ☃".encode()),
                ("SESSION", "message", (("Session", session.sessionId), ("To", str(CAROL))), b"{}"),
            ],
        )
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi ☃", "text/html", "m-1")), ("sendMessage", (CAROL, "{}", "text/plain", None))])

    def test_sendMessageNotForHeaders(self) -> None:
        """
        A content type or message id a header cannot carry as it is
        (control characters, white space at either end, empty, longer than
        L{proxy.MAX_HEADER_VALUE_CHARS}) goes in the JSON form, and reaches
        the home session unchanged.
        """
        session, home, client = self.open()
        requests = self.sent()
        long = "m" * (proxy.MAX_HEADER_VALUE_CHARS + 1)
        cases = [("text/plain", "a\nb"), ("text/plain", " m-2"), ("text/plain", "m-3\t"), ("", None), ("text/plain", long)]
        for contentType, messageId in cases:
            self.successResultOf(self.settle(session.sendMessage(CAROL, "hi", contentType, messageId)))
        self.assertEqual([r.headers.get("To") for r in requests], [None] * len(cases))
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi", c, m)) for c, m in cases])
        self.successResultOf(self.settle(session.sendMessage(CAROL, "hi", "text/plain", "m" * proxy.MAX_HEADER_VALUE_CHARS)))
        self.assertEqual(requests[-1].headers.get("Message-ID"), "m" * proxy.MAX_HEADER_VALUE_CHARS)

    def test_messageJSONForm(self) -> None:
        """
        The home server still takes C{SESSION message} in the JSON form
        (from a router of an earlier version).
        """
        session, home, client = self.open()
        body = b'{"to": "carol@corp.example", "body": "hi", "contentType": "text/plain", "messageId": null}'
        d = self.settle(self.link.request(Request("SESSION", "message", Headers((("Session", session.sessionId),)), body)))
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi", "text/plain", None))])

    def test_compactMessageEmptyContentType(self) -> None:
        """
        A compact C{SESSION message} whose C{Content-Type} header is empty
        reaches the home session as C{text/plain}, as one without the
        header does (C{messageArguments}' reading).
        """
        session, home, client = self.open()
        for headers in [(("Content-Type", ""),), ()]:
            request = Request("SESSION", "message", Headers((("Session", session.sessionId), ("To", str(CAROL))) + headers), b"hi")
            self.assertEqual(self.successResultOf(self.settle(self.link.request(request))).code, 200)
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi", "text/plain", None))] * 2)

    def test_compactMessageMalformed(self) -> None:
        """
        A compact C{SESSION message} whose body is not UTF-8 is answered
        C{400}, as is one whose C{To} is not an address; neither reaches
        the home session.
        """
        session, home, client = self.open()
        for to, body in [(str(CAROL), b"\xff"), ("not an address", b"hi")]:
            request = Request("SESSION", "message", Headers((("Session", session.sessionId), ("To", to))), body)
            self.assertEqual(self.successResultOf(self.settle(self.link.request(request))).code, 400)
        self.assertEqual(home.calls, [])

    def test_messageAnsweredAtOnce(self) -> None:
        """
        A home session that knows a message's outcome at once
        (C{sendMessageAtOnce}, a home server's session) is asked that way,
        not through C{sendMessage}: delivered is C{200}; a refusal raised
        at once its status (486 with the alternate); an unexpected error
        C{500}. An outcome that comes later (a L{Deferred}) is answered
        when it fires.
        """
        session, home, client = self.open()
        answers: list[Any] = [DeliveryStatus.DELIVERED, UserBusy("busy", "tel:+15550100"), RuntimeError("boom")]
        later: Deferred[DeliveryStatus] = Deferred()
        answers.append(later)
        atOnce: list[tuple[Any, ...]] = []

        def sendMessageAtOnce(*arguments: Any) -> Any:
            atOnce.append(arguments)
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        home.sendMessageAtOnce = sendMessageAtOnce  # type: ignore[attr-defined]
        self.assertIs(self.successResultOf(self.settle(session.sendMessage(CAROL, "hi ☃", "text/html", "m-1"))), DeliveryStatus.DELIVERED)
        busy = self.failureResultOf(self.settle(session.sendMessage(CAROL, "hi")), UserBusy)
        self.assertEqual(busy.value.alternate, "tel:+15550100")
        self.failureResultOf(self.settle(session.sendMessage(CAROL, "hi")), ServerError)
        d = self.settle(session.sendMessage(CAROL, "last", "text/plain", "m-4"))
        self.assertNoResult(d)
        later.callback(DeliveryStatus.DELIVERED)
        self.assertIs(self.successResultOf(self.settle(d)), DeliveryStatus.DELIVERED)
        self.assertEqual(home.calls, [])
        self.assertEqual(
            atOnce,
            [(CAROL, "hi ☃", "text/html", "m-1"), (CAROL, "hi", "text/plain", None), (CAROL, "hi", "text/plain", None), (CAROL, "last", "text/plain", "m-4")],
        )

    def test_messageThen(self) -> None:
        """
        A home session that takes a call for an outcome that comes later
        (C{sendMessageThen}, a home server's session) is asked that way,
        before C{sendMessageAtOnce} and without a L{Deferred}: an outcome
        at once answered as C{sendMessageAtOnce}'s (delivered C{200}, a
        refusal raised its status, an unexpected error C{500}, a
        L{Deferred} when it fires); one told later through the call
        answered then, as C{answerWhenFired} answers the same outcome
        fired (C{200}; 486 with the alternate; C{500}).
        """
        session, home, client = self.open()
        atOnce: list[Any] = []
        home.sendMessageAtOnce = lambda *a: atOnce.append(a)  # type: ignore[attr-defined]
        answers: list[Any] = [DeliveryStatus.DELIVERED, UserBusy("busy", "tel:+15550100"), RuntimeError("boom")]
        later: Deferred[DeliveryStatus] = Deferred()
        answers.append(later)
        answers.extend([None, None, None])
        asked: list[tuple[Any, ...]] = []

        def sendMessageThen(answer: Any, token: Any, *arguments: Any) -> Any:
            asked.append((answer, token, arguments))
            outcome = answers.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        home.sendMessageThen = sendMessageThen  # type: ignore[attr-defined]
        self.assertIs(self.successResultOf(self.settle(session.sendMessage(CAROL, "hi ☃", "text/html", "m-1"))), DeliveryStatus.DELIVERED)
        busy = self.failureResultOf(self.settle(session.sendMessage(CAROL, "hi")), UserBusy)
        self.assertEqual(busy.value.alternate, "tel:+15550100")
        self.failureResultOf(self.settle(session.sendMessage(CAROL, "hi")), ServerError)
        d = self.settle(session.sendMessage(CAROL, "later", "text/plain", "m-4"))
        self.assertNoResult(d)
        later.callback(DeliveryStatus.DELIVERED)
        self.assertIs(self.successResultOf(self.settle(d)), DeliveryStatus.DELIVERED)
        told = [self.settle(session.sendMessage(CAROL, f"told {n}")) for n in range(3)]
        for sent in told:
            self.assertNoResult(sent)
        self.assertEqual(atOnce, [])
        self.assertEqual(
            [a[2] for a in asked],
            [(CAROL, "hi ☃", "text/html", "m-1"), (CAROL, "hi", "text/plain", None), (CAROL, "hi", "text/plain", None), (CAROL, "later", "text/plain", "m-4")]
            + [(CAROL, f"told {n}", "text/plain", None) for n in range(3)],
        )
        made = []
        original = Deferred.__init__

        def counting(self: Deferred[Any], *args: Any, **kwargs: Any) -> None:
            made.append(self)
            original(self, *args, **kwargs)

        self.patch(Deferred, "__init__", counting)
        (a1, t1, _), (a2, t2, _), (a3, t3, _) = asked[4:]
        a1(DeliveryStatus.DELIVERED, t1, None)
        a2(Failure(UserBusy("busy", "tel:+15550100")), t2, None)
        a3(Failure(RuntimeError("boom")), t3, None)
        self.network.flush()
        self.assertEqual(made, [])
        self.patch(Deferred, "__init__", original)
        self.assertIs(self.successResultOf(self.settle(told[0])), DeliveryStatus.DELIVERED)
        self.assertEqual(self.failureResultOf(self.settle(told[1]), UserBusy).value.alternate, "tel:+15550100")
        self.failureResultOf(self.settle(told[2]), ServerError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertEqual(home.calls, [])

    def test_laterOutcomeOneCallback(self) -> None:
        """
        An outcome that comes later (a L{Deferred} from
        C{sendMessageAtOnce}, or from C{sendMessage} for a session without
        it) gets one callback from the home server's side of the link, not
        one making the response and another writing it; its answers are
        those of the general way: C{200} when it succeeds, a refusal's
        status (486 with the alternate), C{500} for an unexpected error.
        """

        class Counting(Deferred[DeliveryStatus]):
            added = 0

            def addCallbacks(self, *args: Any, **kwargs: Any) -> Any:
                self.added += 1
                return super().addCallbacks(*args, **kwargs)

        session, home, client = self.open()
        outcomes: list[Counting] = []

        def later(*arguments: Any) -> Counting:
            d = Counting()
            outcomes.append(d)
            return d

        for asked in ["sendMessageAtOnce", "sendMessage"]:
            setattr(home, asked, later)
            sent = [self.settle(session.sendMessage(CAROL, f"hi {n}")) for n in range(3)]
            for d in sent:
                self.assertNoResult(d)
            self.assertEqual([d.added for d in outcomes], [1, 1, 1], asked)
            first, second, third = outcomes
            del outcomes[:]
            first.callback(DeliveryStatus.DELIVERED)
            second.errback(UserBusy("busy", "tel:+15550100"))
            third.errback(RuntimeError("boom"))
            self.assertIs(self.successResultOf(self.settle(sent[0])), DeliveryStatus.DELIVERED)
            self.assertEqual(self.failureResultOf(self.settle(sent[1]), UserBusy).value.alternate, "tel:+15550100")
            self.failureResultOf(self.settle(sent[2]), ServerError)
            if asked == "sendMessageAtOnce":
                del home.sendMessageAtOnce  # type: ignore[attr-defined]

    def test_sessionMessageFields(self) -> None:
        """
        L{proxy.sessionMessageFields} reads what L{Headers.get} reads for
        C{Session}, C{To}, C{Content-Type} and C{Message-ID} (the first
        value of each name in any case, C{None} when absent), over fuzzed
        header lists: names in mixed case, repeated, missing, among others.
        """
        rng = random.Random(20261205)
        names = ["Session", "session", "SESSION", "To", "to", "tO", "Content-Type", "content-type", "Message-ID", "message-id", "Message-Id", "Seq", "seq", "Via", "Tol", "X"]
        for _ in range(4000):
            items = tuple((rng.choice(names), rng.choice(["", "a", "hs1-1", "carol@corp.example", str(rng.random())])) for _ in range(rng.randint(0, 8)))
            headers = Headers(items)
            expected = [headers.get(n) for n in ("Session", "To", "Content-Type", "Message-ID")]
            self.assertEqual(proxy.sessionMessageFields(Headers(items)), expected, items)

    def test_atOnceWithoutABCCheck(self) -> None:
        """
        A C{SESSION message} whose home session knows the outcome at once
        (C{sendMessageThen} or C{sendMessageAtOnce} answering
        C{DELIVERED}: a recipient in hs1's process) is answered
        L{DELIVERED} without an C{isinstance} of the status against
        L{Deferred} (an C{abc.ABC}, whose check is ABCMeta's); one answered
        with a L{Deferred} is answered when it fires.
        """
        from bench.presence_fanout import counted

        session, home, client = self.open()
        [connection] = self.host._sessions
        request = Request("SESSION", "message", Headers((("Seq", "5"), ("Session", session.sessionId), ("To", str(CAROL)), ("Message-ID", "m-1"))), b"hi")
        object.__setattr__(request, "seq", 5)
        answers: list[object] = []

        def sendMessageThen(answer: object, token: object, *arguments: Any) -> object:
            return DeliveryStatus.DELIVERED

        def sendMessageAtOnce(*arguments: Any) -> DeliveryStatus:
            return DeliveryStatus.DELIVERED

        for name, method in (("sendMessageThen", sendMessageThen), ("sendMessageAtOnce", sendMessageAtOnce)):
            setattr(home, name, method)
            calls = counted(lambda: answers.append(self.host.requestReceived(connection, request)))
            self.assertIs(answers[-1], DELIVERED, name)
            self.assertEqual([c for c in calls if c.startswith("__instancecheck__")], [], name)
            delattr(home, name)
        later: Deferred[DeliveryStatus] = Deferred()
        home.sendMessageAtOnce = lambda *arguments: later  # type: ignore[attr-defined]
        self.assertIs(self.host.requestReceived(connection, request), ANSWERED_LATER)
        later.callback(DeliveryStatus.DELIVERED)

    def test_usualFieldsByPosition(self) -> None:
        """
        A C{SESSION message} in the shape the link reads the router's
        (C{Seq}, C{Session}, C{To}, C{Message-ID}) reaches the session
        without L{proxy.sessionMessageFields}; over that shape with one
        thing changed (or none, or two: a name's case, another name, a
        value, a header repeated or left out, two swapped), the session is
        given what L{proxy.sessionMessageFields} reads, or the request
        answered C{503} where it names no session and C{400} where it names
        no recipient the body's form gives.
        """
        session, home, client = self.open()
        [connection] = self.host._sessions

        def sendMessageAtOnce(*arguments: Any) -> DeliveryStatus:
            home.calls.append(("sendMessage", arguments))
            return DeliveryStatus.DELIVERED

        home.sendMessageAtOnce = sendMessageAtOnce  # type: ignore[attr-defined]
        fields: list[Any] = []
        read = proxy.sessionMessageFields

        def reading(headers: Headers) -> list[str | None]:
            fields.append(headers)
            return read(headers)

        self.patch(proxy, "sessionMessageFields", reading)

        def message(items: tuple[tuple[str, str], ...]) -> object:
            request = Request("SESSION", "message", Headers(items), b"hi")
            object.__setattr__(request, "seq", 5)
            return self.host.requestReceived(connection, request)

        usual = (("Seq", "5"), ("Session", session.sessionId), ("To", str(CAROL)), ("Message-ID", "m-1"))
        self.assertIs(message(usual), DELIVERED)
        self.assertEqual(fields, [])
        self.assertEqual(home.calls[-1], ("sendMessage", (CAROL, "hi", "text/plain", "m-1")))
        rng = random.Random(20261206)
        names = ["Seq", "seq", "SEQ", "Session", "session", "To", "to", "Message-ID", "message-id", "Message-Id", "Content-Type", "X"]
        values = [session.sessionId, "hs1-other", str(CAROL), str(ALICE), "m-x", "text/html", ""]

        def changed(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
            # The usual shape with one thing changed: a name's case, another
            # name, a value, a header repeated (in place of another, or
            # added), one left out, two swapped.
            at = rng.randrange(len(items))
            name, value = items[at]
            kind = rng.randrange(7)
            if kind == 0:
                items[at] = (rng.choice([name.lower(), name.upper(), name.swapcase()]), value)
            elif kind == 1:
                items[at] = (rng.choice(names), value)
            elif kind == 2:
                items[at] = (name, rng.choice(values))
            elif kind == 3:
                items[rng.randrange(len(items))] = items[at]
            elif kind == 4:
                items.insert(rng.randrange(len(items) + 1), items[at])
            elif kind == 5:
                del items[at]
            else:
                other = rng.randrange(len(items))
                items[at], items[other] = items[other], items[at]
            return items

        taken = 0
        for i in range(2000):
            items = [("Seq", "5"), ("Session", session.sessionId), ("To", str(CAROL)), ("Message-ID", f"m-{i}")]
            for _ in range(rng.choice([0, 1, 1, 1, 1, 1, 1, 2])):
                items = changed(items) if items else items
            expected = read(Headers(tuple(items)))
            del home.calls[:]
            del fields[:]
            answer = message(tuple(items))
            taken += not fields
            if expected[0] != session.sessionId:
                self.assertEqual(getattr(answer, "code", None), 503, items)
            elif expected[1] is None:
                # The JSON form's arguments, which the body "hi" is not.
                self.assertEqual((getattr(answer, "code", None), home.calls), (400, []), items)
            elif expected[1] in (str(CAROL), str(ALICE)):
                to = Address.fromString(expected[1])
                self.assertIs(answer, DELIVERED, items)
                self.assertEqual(home.calls, [("sendMessage", (to, "hi", expected[2] or "text/plain", expected[3]))], items)
            else:
                self.assertEqual((getattr(answer, "code", None), home.calls), (400, []), items)
        # Both ways taken often: the usual shape read by position, and the
        # shapes one change away read by sessionMessageFields.
        self.assertGreater(taken, 300)
        self.assertGreater(2000 - taken, 1000)

    def test_sendMessageErrors(self) -> None:
        """
        A delivery error comes back as the same error, a 486's alternate
        included.
        """
        session, home, client = self.open()
        home.answers["sendMessage"] = UserBusy("busy", "tel:+15550100")
        d = self.settle(session.sendMessage(CAROL, "hi"))
        self.assertEqual(self.failureResultOf(d, UserBusy).value.alternate, "tel:+15550100")
        home.answers["sendMessage"] = UserOffline("carol is offline")
        d = self.settle(session.sendMessage(CAROL, "hi"))
        self.assertEqual(self.failureResultOf(d, UserOffline).value.text, "carol is offline")

    def test_subscribe(self) -> None:
        """
        C{subscribe} fires with the home session's state.
        """
        session, home, client = self.open()
        for state in AuthorisationState:
            home.answers["subscribe"] = state
            d = self.settle(session.subscribe(CAROL, "Carol"))
            self.assertIs(self.successResultOf(d), state)
        self.assertEqual(home.calls[-1], ("subscribe", (CAROL, "Carol")))

    def test_contactChanges(self) -> None:
        """
        C{putContact}, C{unsubscribe}, C{authorise}, C{setAccess} and
        C{setRule} reach the home session with their arguments.
        """
        session, home, client = self.open()
        for d in [
            session.putContact(CAROL, "C"),
            session.unsubscribe(CAROL),
            session.authorise(BOB, True),
            session.authorise(CAROL, False),
            session.setAccess("partner.example", AccessList.BLOCK),
            session.setRule(PresenceState.BUSY, "tel:+1555"),
            session.setRule(PresenceState.AWAY, None),
        ]:
            self.assertIsNone(self.successResultOf(self.settle(d)))
        self.assertEqual(
            home.calls,
            [
                ("putContact", (CAROL, "C")),
                ("unsubscribe", (CAROL,)),
                ("authorise", (BOB, True)),
                ("authorise", (CAROL, False)),
                ("setAccess", ("partner.example", AccessList.BLOCK)),
                ("setRule", (PresenceState.BUSY, "tel:+1555")),
                ("setRule", (PresenceState.AWAY, None)),
            ],
        )

    def test_ruleEdits(self) -> None:
        """
        C{setRules}, C{addRule} and C{removeRule} reach the home session
        with their rules whole; C{rules} comes back whole.
        """
        session, home, client = self.open()
        forward = PresenceRule(
            [PresenceState.ON_THE_PHONE, PresenceState.BUSY],
            RuleAction.FORWARD,
            sender="corp.example",
            network=RuleNetwork.LOCAL,
            forwardTo=CAROL,
        )
        reply = PresenceRule([PresenceState.AWAY], RuleAction.AUTO_REPLY, text="later ☃")
        for d in [session.setRules([forward, reply]), session.addRule(reply, 2), session.addRule(forward), session.removeRule(1)]:
            self.assertIsNone(self.successResultOf(self.settle(d)))
        self.assertEqual(
            home.calls,
            [("setRules", ([forward, reply],)), ("addRule", (reply, 2)), ("addRule", (forward, None)), ("removeRule", (1,))],
        )
        home.answers["rules"] = [forward, reply]
        self.assertEqual(self.successResultOf(self.settle(session.rules())), [forward, reply])

    def test_reads(self) -> None:
        """
        C{contacts}, C{pendingRequests}, C{accessLists} and C{rules} fire
        with the home session's answers, unchanged.
        """
        session, home, client = self.open()
        views = [
            ContactView(CAROL, "Carol", Subscription.BOTH, False, Presence(PresenceState.BUSY, "meeting")),
            ContactView(BOB, "", Subscription.NONE, True, OFFLINE),
        ]
        home.answers["contacts"] = views
        home.answers["pendingRequests"] = [BOB, CAROL]
        home.answers["accessLists"] = {"bob@corp.example": AccessList.ALLOW, "spam.example": AccessList.BLOCK}
        home.answers["rules"] = [PresenceRule.refuse(PresenceState.BUSY, "tel:+1555")]
        self.assertEqual(self.successResultOf(self.settle(session.contacts())), views)
        self.assertEqual(self.successResultOf(self.settle(session.pendingRequests())), [BOB, CAROL])
        self.assertEqual(self.successResultOf(self.settle(session.accessLists())), home.answers["accessLists"])
        self.assertEqual(self.successResultOf(self.settle(session.rules())), home.answers["rules"])

    def test_errors(self) -> None:
        """
        Other errors come back as the face maps them: L{InvalidAddress}
        (400) as itself, L{PersistenceFailed} as a server error.
        """
        session, home, client = self.open()
        home.answers["setAccess"] = InvalidAddress("not an address or domain")
        d = self.settle(session.setAccess("@@", AccessList.BLOCK))
        self.assertEqual(str(self.failureResultOf(d, InvalidAddress).value), "not an address or domain")
        home.answers["putContact"] = PersistenceFailed("disk full")
        d = self.settle(session.putContact(CAROL))
        self.failureResultOf(d, ServerError)

    def test_close(self) -> None:
        """
        C{close} closes the home session with the face's reason, once; the
        router's session then refuses calls, and the face's client is not
        told (it closed it).
        """
        session, home, client = self.open()
        session.close("bye")
        session.close("again")
        self.network.flush()
        self.assertEqual(home.closed, ["bye"])
        self.assertEqual(self.host.sessionsOn(next(iter(self.server.factory.connections))), [])
        self.failureResultOf(session.contacts(), ServiceUnavailable)
        self.assertEqual(client.closed, [])
        self.assertEqual(self.proxy.sessionCount(self.link), 0)

    def test_unknownSession(self) -> None:
        """
        A request for a session that is not open on the connection is
        answered C{503}.
        """
        d = self.link.request(Request("SESSION", "contacts", Headers((("Session", "hs1-9"),))))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 503)


class _CountingMetrics(NoMetrics):
    """
    Records the message outcomes and the limits counted.
    """

    def __init__(self) -> None:
        self.outcomes: list[object] = []
        self.limits: list[str] = []

    def messageOutcome(self, result: object) -> object:
        self.outcomes.append(result)
        return result

    def limitHit(self, limit: str) -> None:
        self.limits.append(limit)


class WaiterRouter(FakeRouter):
    """
    A router that takes a waiter (C{deliverThen}, as L{Router.deliverThen
    <imgateway.router.router.Router.deliverThen>} for a message it hands a
    link): it keeps each message and its waiter, told later by the test.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []
        self.waiters: list[Any] = []

    def deliverThen(self, event: Message, waiter: Any) -> None:
        self.events.append(event)
        self.messages.append(event)
        self.waiters.append(waiter)


class RoutedMessageTests(ProxyTestCase):
    """
    With this process's router (L{ProxyHomeServer.sendThrough}), a proxied
    session's message to another user of the domain goes to the router,
    not to the home server (C{docs/protocol.md} section 9.7): checked as a
    home session checks it, and counted in this process's metrics.
    """

    def setUp(self) -> None:
        super().setUp()
        self.router = WaiterRouter()
        self.metrics = self.proxy.metrics = _CountingMetrics()
        self.proxy.sendThrough(self.router, self.clock)
        self.clock.advance(1234.5)

    def test_toRouter(self) -> None:
        """
        L{RemoteSession.sendMessageThen} hands the router a message from the
        session's user, with its text, content type and id and the clock's
        time, and no hop yet; the waiter's outcome is given to the answer
        with the token and id, and counted. Nothing crosses the session's
        link.
        """
        session, home, client = self.open()
        requests = self.sent()
        answers: list[tuple[object, object, object]] = []
        outcome = session.sendMessageThen(lambda *a: answers.append(a), "token", CAROL, "hi ☃", "text/plain", "m-1")
        self.network.flush()
        self.assertIsNone(outcome)
        [message] = self.router.messages
        self.assertEqual(
            (message.sender, message.recipient, message.body, message.contentType, message.messageId, message.timestamp, message.hops),
            (ALICE, CAROL, "hi ☃", "text/plain", "m-1", 1234.5, 0),
        )
        self.assertEqual(answers, [])
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", "m-1")])
        self.assertEqual(self.metrics.outcomes, [DeliveryStatus.DELIVERED])
        self.assertEqual(requests, [])
        self.assertEqual(home.calls, [])

    def test_failureToAnswer(self) -> None:
        """
        A failure the router tells (hs2's 486, with its alternate) is given
        to the answer and counted; a message without an id is given a new
        one, told with the answer.
        """
        session, home, client = self.open()
        answers: list[tuple[Any, ...]] = []
        session.sendMessageThen(lambda *a: answers.append(a), None, CAROL, "hi")
        [message] = self.router.messages
        self.router.waiters[0].errback(UserBusy("on the phone", "tel:+15550100"))
        [(outcome, token, messageId)] = answers
        self.assertIsInstance(outcome, Failure)
        self.assertEqual(outcome.value.alternate, "tel:+15550100")
        self.assertEqual(messageId, message.messageId)
        self.assertTrue(messageId)
        self.assertEqual([type(o) for o in self.metrics.outcomes], [Failure])

    def test_sendMessage(self) -> None:
        """
        L{RemoteSession.sendMessage} goes the same way, its outcome a
        L{Deferred}; a router without C{deliverThen} is given the message
        through C{deliver}.
        """
        session, home, client = self.open()
        d = session.sendMessage(CAROL, "hi", "text/html", "m-2")
        self.assertNoResult(d)
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        plain = FakeRouter()
        self.proxy.sendThrough(plain, self.clock)
        self.assertIs(self.successResultOf(session.sendMessage(CAROL, "again")), DeliveryStatus.DELIVERED)
        self.assertEqual([(e.recipient, e.body) for e in plain.events if isinstance(e, Message)], [(CAROL, "again")])
        self.assertEqual(home.calls, [])

    def test_refusedAtOnce(self) -> None:
        """
        Text longer than this process's C{[home] max_message_chars} is
        refused at once (counted, with the limit), as is an invalid id; a
        message of a session that has ended is refused as the home
        server's way refuses it (C{503}, not counted). None reaches the
        router.
        """
        session, home, client = self.open()
        limit = self.routerConfig.home.maxMessageChars
        with self.assertRaises(TooLarge):
            session.sendMessageThen(lambda *a: None, None, CAROL, "x" * (limit + 1))
        self.assertEqual(self.metrics.limits, ["max_message_chars"])
        with self.assertRaises(InvalidAddress):
            session.sendMessageThen(lambda *a: None, None, CAROL, "hi", "text/plain", "bad id\x00")
        self.failureResultOf(session.sendMessage(CAROL, "x" * (limit + 1)), TooLarge)
        session.ended("gone")
        with self.assertRaises(ServiceUnavailable):
            session.sendMessageThen(lambda *a: None, None, CAROL, "hi")
        self.assertEqual(self.router.events, [])
        self.assertEqual(len(self.metrics.outcomes), 3)

    def test_othersThroughHome(self) -> None:
        """
        A message to the user's own other sessions, or to another domain,
        still goes to the home server as a C{SESSION message}.
        """
        session, home, client = self.open()
        stranger = Address.fromString("romeo@xmpp.example")
        # The user's address made again (an equal address, not the same
        # object), and a user of another domain with the same name.
        again = Address.fromParts("alice", "corp.example")
        namesake = Address.fromParts("alice", "xmpp.example")
        self.assertIsNot(again, session.address)
        self.successResultOf(self.settle(session.sendMessage(ALICE, "to my phone")))
        self.successResultOf(self.settle(session.sendMessage(stranger, "hi romeo")))
        self.successResultOf(self.settle(session.sendMessage(again, "to my laptop")))
        answers: list[tuple[object, ...]] = []
        for recipient in (again, namesake):
            self.assertIsNone(session.sendMessageThen(lambda *a: answers.append(a), None, recipient, "then"))
            self.network.flush()
        self.assertEqual(
            [c[1][:2] for c in home.calls],
            [(ALICE, "to my phone"), (stranger, "hi romeo"), (ALICE, "to my laptop"), (ALICE, "then"), (namesake, "then")],
        )
        self.assertEqual([outcome for outcome, _, _ in answers], [DeliveryStatus.DELIVERED] * 2)
        self.assertEqual(self.router.events, [])

    def test_messageWaitsForPublish(self) -> None:
        """
        A message sent while a request to the home server (a C{PUBLISH}) is
        unanswered is held, and handed to the router once it is answered:
        the presence reaches the recipient first (C{docs/protocol.md}
        section 4.1). Its outcome is told as usual.
        """
        session, home, client = self.open()
        session.publish(Presence(PresenceState.AWAY, "lunch"))
        answers: list[tuple[object, object, object]] = []
        self.assertIsNone(session.sendMessageThen(lambda *a: answers.append(a), "t", CAROL, "back soon", "text/plain", "m-4"))
        d = session.sendMessage(CAROL, "and again")
        self.assertEqual(self.router.events, [])
        self.network.flush()
        self.assertEqual(home.calls, [("publish", (Presence(PresenceState.AWAY, "lunch"), None))])
        self.assertEqual([m.body for m in self.router.messages], ["back soon", "and again"])
        for waiter in self.router.waiters:
            waiter.callback(DeliveryStatus.DELIVERED)
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "t", "m-4")])
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_publishWaitsForMessages(self) -> None:
        """
        A request to the home server made while a message the router sent
        is unanswered is held until it is; what comes after it waits for it
        in turn, in order.
        """
        session, home, client = self.open()
        session.sendMessageThen(lambda *a: None, None, CAROL, "bye", "text/plain", "m-5")
        session.publish(Presence(PresenceState.OFFLINE))
        contacts = session.contacts()
        session.sendMessageThen(lambda *a: None, None, CAROL, "one more", "text/plain", "m-6")
        self.network.flush()
        self.assertEqual(home.calls, [])
        self.assertEqual([m.body for m in self.router.messages], ["bye"])
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.assertEqual([m.body for m in self.router.messages], ["bye"])
        self.network.flush()
        self.assertEqual([name for name, arguments in home.calls], ["publish", "contacts"])
        self.successResultOf(contacts)
        self.assertEqual([m.body for m in self.router.messages], ["bye", "one more"])

    def test_settledHoweverAnswered(self) -> None:
        """
        A message the router sent counts as answered for the session's
        order however its outcome comes: a failure, and an answer that
        raises (logged), each release the request held after it.
        """
        session, home, client = self.open()
        failed: list[tuple[Any, ...]] = []
        session.sendMessageThen(lambda *a: failed.append(a), "t", CAROL, "one", "text/plain", "m-10")
        rules = session.rules()
        self.network.flush()
        self.assertEqual(home.calls, [])
        self.router.waiters[0].errback(UserBusy("on the phone", None))
        self.assertEqual([(o.type, t, m) for o, t, m in failed], [(UserBusy, "t", "m-10")])
        self.network.flush()
        self.assertEqual([name for name, arguments in home.calls], ["rules"])
        self.successResultOf(rules)

        def broken(*a: object) -> None:
            raise RuntimeError("the face broke")

        session.sendMessageThen(broken, "u", CAROL, "two", "text/plain", "m-11")
        contacts = session.contacts()
        self.router.waiters[1].callback(DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.network.flush()
        self.assertEqual([name for name, arguments in home.calls], ["rules", "contacts"])
        self.successResultOf(contacts)
        self.assertEqual((session._routedBusy, session._homeBusy, session._held), (0, 0, None))

    def test_closeAfterMessages(self) -> None:
        """
        A session closed while a message the router sent is unanswered is
        closed at its home server once the message is answered.
        """
        session, home, client = self.open()
        answers: list[tuple[object, object, object]] = []
        session.sendMessageThen(lambda *a: answers.append(a), "t", CAROL, "bye", "text/plain", "m-7")
        session.close("bye")
        self.network.flush()
        self.assertEqual(home.closed, [])
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "t", "m-7")])
        self.assertEqual(len(home.closed), 1)

    def test_heldFailWhenEnded(self) -> None:
        """
        When the session ends (its link lost) with requests held, each fails
        as a request of an ended session does (C{503}); the message the
        router sent still gets its answer.
        """
        session, home, client = self.open()
        first: list[tuple[Any, ...]] = []
        held: list[tuple[Any, ...]] = []
        session.sendMessageThen(lambda *a: first.append(a), "t", CAROL, "one", "text/plain", "m-8")
        rules = session.rules()
        session.sendMessageThen(lambda *a: held.append(a), "u", CAROL, "two", "text/plain", "m-9")
        self.link.connection.transport.loseConnection()  # type: ignore[union-attr]
        self.network.flush()
        self.assertTrue(session.closed)
        self.failureResultOf(rules, ServiceUnavailable)
        [(outcome, token, messageId)] = held
        self.assertEqual((outcome.type, token, messageId), (ServiceUnavailable, "u", "m-9"))
        self.assertEqual([m.body for m in self.router.messages], ["one"])
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.assertEqual(first, [(DeliveryStatus.DELIVERED, "t", "m-8")])
        self.assertEqual(home.calls, [])

    def test_sessionEndsMeanwhile(self) -> None:
        """
        A message handed to the router is answered when the router tells
        its outcome, even if the session's link is lost first: it does not
        depend on that link.
        """
        session, home, client = self.open()
        answers: list[tuple[object, object, object]] = []
        session.sendMessageThen(lambda *a: answers.append(a), "t", CAROL, "hi", "text/plain", "m-3")
        self.link.connection.transport.loseConnection()  # type: ignore[union-attr]
        self.network.flush()
        self.assertTrue(session.closed)
        self.assertEqual(answers, [])
        self.router.waiters[0].callback(DeliveryStatus.DELIVERED)
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "t", "m-3")])


class CallbackTests(ProxyTestCase):
    """
    Every L{ISessionClient} callback of the home session reaches the
    face's client.
    """

    def test_callbacks(self) -> None:
        """
        Messages, presences, subscription events and contact changes reach
        the face's client unchanged, and their L{Deferred}s fire once it
        took them.
        """
        session, home, client = self.open()
        message = Message(CAROL, ALICE, "hello ☃", contentType="text/html", messageId="c-1", timestamp=1767225600.125)
        view = ContactView(CAROL, "Carol", Subscription.TO, False, Presence(PresenceState.ON_THE_PHONE, "call"))
        results = [
            home.client.messageReceived(message),
            home.client.presenceReceived(CAROL, Presence(PresenceState.AWAY, "lunch")),
            home.client.subscriptionReceived(SubscriptionEvent(SubscriptionKind.AUTHORISE, CAROL, ALICE)),
            home.client.contactUpdated(view),
            home.client.contactRemoved(BOB),
        ]
        self.network.flush()
        for d in results:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(client.messages, [message])
        self.assertEqual(client.messages[0].routingId, message.routingId)
        self.assertEqual(client.presences, [(CAROL, Presence(PresenceState.AWAY, "lunch"))])
        self.assertEqual(client.subscriptions, [SubscriptionEvent(SubscriptionKind.AUTHORISE, CAROL, ALICE)])
        self.assertEqual(client.contacts, [view])
        self.assertEqual(client.removed, [BOB])

    def test_markedMessage(self) -> None:
        """
        A marked message (an auto-reply) reaches the face's client with
        its mark.
        """
        session, home, client = self.open()
        message = Message(CAROL, ALICE, "in a call", mark=MessageMark.AUTO_REPLY)
        d = home.client.messageReceived(message)
        self.network.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(client.messages, [message])
        self.assertIs(client.messages[0].mark, MessageMark.AUTO_REPLY)

    def test_clientFails(self) -> None:
        """
        A delivery the face's client could not take fails on the home
        server too.
        """
        session, home, client = self.open()
        client.failWith = ServiceUnavailable("gone")
        d = home.client.messageReceived(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)

    def test_clientSlow(self) -> None:
        """
        A delivery the router does not answer within C{request_timeout}
        fails on the home server: never a hang.
        """
        session, home, client = self.open()
        client.hold = True
        d = home.client.messageReceived(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.assertNoResult(d)
        self.clock.advance(10)
        self.failureResultOf(d)
        client.held[0].callback(None)
        self.network.flush()

    def test_beforeOpened(self) -> None:
        """
        What the home server tells a session while it is being opened
        reaches the face's client after the session is open (after the
        answer to C{open}, which the router needs to know the session).
        """
        self.home.hold = True
        order: list[str] = []
        client = RecordingSessionClient()
        client.presenceReceived = lambda sender, presence: order.append("presence") or succeed(None)  # type: ignore[method-assign,func-returns-value]
        d = self.proxy.openSession(ALICE, client, "")
        d.addCallback(lambda session: order.append("open"))
        self.network.flush()
        home = self.home.sessions[0]
        home.client.presenceReceived(CAROL, Presence(PresenceState.BUSY))
        self.assertEqual(order, [])
        self.home.held[0].callback(None)
        self.network.flush()
        self.assertEqual(order, ["open", "presence"])

    def test_homeCloses(self) -> None:
        """
        A session the home server ends (its shutdown, a lease) ends for the
        face's client with the home server's reason.
        """
        session, home, client = self.open()
        home.client.sessionClosed("server shutting down")
        self.network.flush()
        self.assertEqual(client.closed, ["server shutting down"])
        self.assertTrue(session.closed)
        self.assertEqual(self.proxy.sessionCount(self.link), 0)
        session.close("bye")
        self.network.flush()
        self.assertEqual(home.closed, [])


class LinkLossTests(ProxyTestCase):
    """
    A lost link connection ends its proxied sessions on both sides.
    """

    def test_lost(self) -> None:
        """
        When the connection is lost, the face's clients are told their
        session ended and the home sessions are closed: nothing dangles;
        the router's count is back to 0.
        """
        opened = [self.open(label=f"s{i}") for i in range(2)]
        self.drop()
        for session, home, client in opened:
            self.assertEqual(client.closed, [LINK_LOST])
            self.assertEqual(home.closed, [LINK_LOST])
            self.assertTrue(session.closed)
        self.assertEqual(self.proxy.sessionCount(self.link), 0)
        self.assertTrue(self.messages("closing its 2 proxied sessions"))

    def test_inFlightFailsAtOnce(self) -> None:
        """
        A request of a proxied session still unanswered when its link
        connection is lost fails at once with L{ServiceUnavailable}, not
        after C{request_timeout}.
        """
        session, home, client = self.open()
        d = session.contacts()
        self.drop()
        self.assertEqual(str(self.failureResultOf(d, ServiceUnavailable).value), LINK_LOST)
        self.clock.advance(10)

    def test_messageInFlightWhenSessionEnds(self) -> None:
        """
        A message of a proxied session still unanswered when the home
        server ends the session fails at once with the home server's
        reason; the answer that comes later is dropped by the link (no
        error), which then has nothing waiting.
        """
        session, home, client = self.open()
        held: Deferred[DeliveryStatus] = Deferred()
        home.sendMessage = lambda *arguments: held  # type: ignore[method-assign]
        d = session.sendMessage(CAROL, "hi")
        self.network.flush()
        self.assertNoResult(d)
        home.client.sessionClosed("server shutting down")
        self.network.flush()
        self.assertEqual(str(self.failureResultOf(d, ServiceUnavailable).value), "server shutting down")
        held.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertEqual(self.link.queued, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_messageAnswerRead(self) -> None:
        """
        A proxied message's L{Deferred} carries one callback of the
        session's while it waits (counting it answered, for the order of
        the session's requests): the link reads the answer as it comes
        (delivered; a refusal's status, a 486's alternate included; 503).
        """
        session, home, client = self.open()
        answers: list[Any] = [succeed(DeliveryStatus.DELIVERED), fail(UserBusy("busy", "tel:+15550100")), fail(ServiceUnavailable("down"))]
        home.sendMessage = lambda *arguments: answers.pop(0)  # type: ignore[method-assign]
        sent = [session.sendMessage(CAROL, "hi") for _ in range(3)]
        self.assertEqual([len(d._callbacks) for d in sent], [1, 1, 1])
        self.network.flush()
        self.assertIs(self.successResultOf(sent[0]), DeliveryStatus.DELIVERED)
        self.assertEqual(self.failureResultOf(sent[1], UserBusy).value.alternate, "tel:+15550100")
        self.assertEqual(self.failureResultOf(sent[2], ServiceUnavailable).value.text, "down")

    def test_messagesKeptBounded(self) -> None:
        """
        A session keeps its messages' L{Deferred}s to fail them when it
        ends, but not those answered long ago: after 1,000 answered
        messages it keeps at most twice L{proxy._IN_FLIGHT_SWEEP}; one held
        among them still fails at once when the session ends.
        """
        session, home, client = self.open()
        held: Deferred[DeliveryStatus] = Deferred()
        home.sendMessage = lambda *arguments: held  # type: ignore[method-assign]
        waiting = session.sendMessage(CAROL, "held")
        self.network.flush()
        home.sendMessage = lambda *arguments: succeed(DeliveryStatus.DELIVERED)  # type: ignore[method-assign]
        for i in range(1000):
            self.successResultOf(self.settle(session.sendMessage(CAROL, str(i))))
        self.assertLessEqual(len(session._inFlight), 2 * proxy._IN_FLIGHT_SWEEP)
        self.assertIn(waiting, session._inFlight)
        home.client.sessionClosed("server shutting down")
        self.network.flush()
        self.assertEqual(str(self.failureResultOf(waiting, ServiceUnavailable).value), "server shutting down")

    def test_reopenAfterReconnect(self) -> None:
        """
        Once the link is back, sessions open again; a request for a session
        of the lost connection is not taken on the new one.
        """
        session, home, client = self.open()
        self.drop()
        self.clock.advance(1)
        self.network.flush()
        d = self.link.request(Request("SESSION", "contacts", Headers((("Session", session.sessionId),))))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.open()


class MessageThenTests(ProxyTestCase):
    """
    L{RemoteSession.sendMessageThen}: a message's outcome given to a call
    the face passes (the router's native face), with no L{Deferred} on the
    router for it; the same outcomes as L{RemoteSession.sendMessage}'s.
    """

    def sendThen(self, session: RemoteSession, *arguments: Any) -> tuple[object, list[tuple[Any, ...]]]:
        """
        Send a message with C{sendMessageThen}; return what it returned and
        the list its answers are recorded in, as (outcome, token, id).
        """
        answers: list[tuple[Any, ...]] = []
        returned = session.sendMessageThen(lambda *answer: answers.append(answer), "token", *arguments)
        return returned, answers

    def countDeferreds(self) -> list[int]:
        """
        Count the L{Deferred}s made from now on.
        """
        made = [0]
        init = Deferred.__init__

        def counting(d: Deferred[Any], *a: Any, **kw: Any) -> None:
            made[0] += 1
            init(d, *a, **kw)

        self.patch(Deferred, "__init__", counting)
        return made

    def test_delivered(self) -> None:
        """
        The compact C{SESSION message} is sent at once with no L{Deferred}
        made; the call is told C{DELIVERED}, the token and the id when the
        home server answers (not before C{sendMessageThen} returns), once.
        """
        session, home, client = self.open()
        made = self.countDeferreds()
        returned, answers = self.sendThen(session, CAROL, "hi ☃", "text/html", "m-1")
        self.assertIsNone(returned)
        self.assertEqual(made, [0])
        self.assertEqual(answers, [])
        [item] = self.link._pending.values()
        self.assertIsInstance(item.deferred, proxy._MessageAnswer)
        self.network.flush()
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", "m-1")])
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi ☃", "text/html", "m-1"))])
        self.assertEqual(self.link.queued, 0)

    def test_refused(self) -> None:
        """
        A refusal comes as the L{Failure} of the same error
        L{RemoteSession.sendMessage} fails with (a 486's alternate
        included).
        """
        session, home, client = self.open()
        home.answers["sendMessage"] = UserBusy("busy", "tel:+15550100")
        returned, answers = self.sendThen(session, CAROL, "hi", "text/plain", "m-1")
        self.network.flush()
        [(outcome, token, messageId)] = answers
        self.assertIsInstance(outcome, Failure)
        self.assertEqual(outcome.value.alternate, "tel:+15550100")
        self.assertEqual((token, messageId), ("token", "m-1"))

    def test_sessionEnds(self) -> None:
        """
        A message in flight when the home server ends the session is
        answered at once with L{ServiceUnavailable} and its reason; the
        home server's answer that comes later is dropped.
        """
        session, home, client = self.open()
        held: Deferred[DeliveryStatus] = Deferred()
        home.sendMessage = lambda *arguments: held  # type: ignore[method-assign]
        returned, answers = self.sendThen(session, CAROL, "hi", "text/plain", "m-1")
        self.network.flush()
        self.assertEqual(answers, [])
        home.client.sessionClosed("server shutting down")
        self.network.flush()
        [(outcome, token, messageId)] = answers
        self.assertEqual(str(outcome.value), "server shutting down")
        self.assertIsInstance(outcome.value, ServiceUnavailable)
        held.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertEqual(len(answers), 1)
        self.assertEqual(self.link.queued, 0)

    def test_linkLost(self) -> None:
        """
        A message in flight when the link connection is lost is answered
        at once with L{ServiceUnavailable}.
        """
        session, home, client = self.open()
        returned, answers = self.sendThen(session, CAROL, "hi", "text/plain", "m-1")
        self.drop()
        [(outcome, token, messageId)] = answers
        self.assertEqual(str(outcome.value), LINK_LOST)
        self.clock.advance(10)
        self.assertEqual(len(answers), 1)

    def test_timeout(self) -> None:
        """
        A message with no answer within C{request_timeout} is answered with
        L{ServiceUnavailable}, as its L{Deferred} would fail.
        """
        session, home, client = self.open()
        held: Deferred[DeliveryStatus] = Deferred()
        home.sendMessage = lambda *arguments: held  # type: ignore[method-assign]
        returned, answers = self.sendThen(session, CAROL, "hi", "text/plain", None)
        self.network.flush()
        self.clock.advance(self.routerConfig.links.requestTimeout + 1)
        [(outcome, token, messageId)] = answers
        self.assertIsInstance(outcome.value, ServiceUnavailable)
        self.assertIsNone(messageId)

    def test_refusedAtOnce(self) -> None:
        """
        What L{RemoteSession.sendMessage} fails with at once is raised: a
        full link queue (C{503}, logged once), a session that has ended,
        text that cannot be encoded; the call is never told.
        """
        session, home, client = self.open()
        answers: list[Any] = []
        self.network.pumps.clear()
        queued = [session.sendMessage(CAROL, str(i)) for i in range(self.routerConfig.links.maxQueue)]
        e = self.assertRaises(ServiceUnavailable, session.sendMessageThen, answers.append, "token", CAROL, "hi")
        self.assertIn("requests waiting", str(e))
        self.assertRaises(InvalidAddress, session.sendMessageThen, answers.append, "token", CAROL, "\ud800")
        session.ended("gone")
        self.assertRaises(ServiceUnavailable, session.sendMessageThen, answers.append, "token", CAROL, "hi")
        self.assertEqual(answers, [])
        for d in queued:
            self.assertEqual(str(self.failureResultOf(d, ServiceUnavailable).value), "gone")

    def test_refusedAtOnceUsual(self) -> None:
        """
        The usual message (C{text/plain}, a printable id) to a recipient
        written to before, which is written without C{_compactMessage}'s
        checks, is refused as any other once the session has ended: raised,
        the call never told, nothing sent.
        """
        session, home, client = self.open()
        answers: list[Any] = []
        tell = lambda *answer: answers.append(answer)
        for i in range(2):
            self.assertIsNone(session.sendMessageThen(tell, "token", CAROL, "hi", "text/plain", f"m-{i}"))
        self.network.flush()
        self.assertEqual(len(answers), 2)
        self.assertEqual(len(home.calls), 2)
        session.ended("gone")
        e = self.assertRaises(ServiceUnavailable, session.sendMessageThen, tell, "token", CAROL, "hi", "text/plain", "m-2")
        self.assertEqual(str(e), "the session has ended")
        self.network.flush()
        self.assertEqual((len(answers), len(home.calls), self.link.queued), (2, 2, 0))

    def test_jsonForm(self) -> None:
        """
        A message whose id a header cannot carry goes in the JSON form, as
        with L{RemoteSession.sendMessage}, through the L{Deferred} that
        C{sendMessage} returns.
        """
        session, home, client = self.open()
        returned, answers = self.sendThen(session, CAROL, "hi", "text/plain", " m-1")
        assert isinstance(returned, Deferred)
        self.network.flush()
        self.assertIs(self.successResultOf(returned), DeliveryStatus.DELIVERED)
        self.assertEqual(answers, [])
        self.assertEqual(home.calls, [("sendMessage", (CAROL, "hi", "text/plain", " m-1"))])

    def test_answerFails(self) -> None:
        """
        A call that raises is logged, and the link goes on reading: the
        next message is answered.
        """
        session, home, client = self.open()

        def failing(*answer: Any) -> None:
            raise RuntimeError("boom")

        session.sendMessageThen(failing, "token", CAROL, "hi")
        returned, answers = self.sendThen(session, CAROL, "again", "text/plain", "m-2")
        self.network.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", "m-2")])

    def test_headsKept(self) -> None:
        """
        The start of a session's messages to a recipient is written once
        (L{proxy.sessionMessageHead}), for at most L{proxy._HEADS_KEPT}
        recipients at a time; what is sent is L{proxy.encodeSessionMessage}'s
        bytes, with and without C{Message-ID}, content type and text, and
        for a recipient that is not plain.
        """
        session, home, client = self.open()
        made: list[tuple[str, str]] = []
        head = proxy.sessionMessageHead

        def counting(sessionId: str, recipient: str) -> bytes | None:
            made.append((sessionId, recipient))
            return head(sessionId, recipient)

        self.patch(proxy, "sessionMessageHead", counting)
        sent: list[bytes] = []
        requestEncoded = self.link.requestEncoded

        def recording(encoded: bytes, decode: Any = None, waiter: Any = None) -> Any:
            sent.append(encoded)
            return requestEncoded(encoded, decode, waiter)

        self.patch(self.link, "requestEncoded", recording)
        odd = Address("c\u200earol", "corp.example")
        cases: list[tuple[Address, str, str, str | None]] = [
            (CAROL, "hi", "text/plain", "m-1"),
            (CAROL, "", "text/plain", "m-2"),
            (CAROL, "hi", "text/html", None),
            (CAROL, "", "text/plain", None),
            (BOB, "hi \u2603", "text/plain", "m-3"),
            (odd, "hi", "text/plain", "m-\u200e"),
        ]
        for recipient, body, contentType, messageId in cases:
            self.assertIsNone(session.sendMessageThen(lambda *a: None, None, recipient, body, contentType, messageId))
        self.assertEqual(made, [(session.sessionId, str(CAROL)), (session.sessionId, str(BOB)), (session.sessionId, str(odd))])
        self.assertEqual(
            sent,
            [proxy.encodeSessionMessage(session.sessionId, str(r), b.encode(), c, m) for r, b, c, m in cases],
        )
        for i in range(proxy._HEADS_KEPT + 1):
            session.sendMessageThen(lambda *a: None, None, Address(f"user{i}", "corp.example"), "hi", "text/plain", None)
            self.network.flush()
        self.assertLessEqual(len(session._heads or {}), proxy._HEADS_KEPT)
        self.network.flush()

    def test_usualWithoutCalls(self) -> None:
        """
        The usual message (plain text, a printable id, to a recipient the
        session wrote to before) is written and kept without
        C{_compactMessage}, C{_headerSafe}, C{_plainValue},
        C{encodeSessionMessageAfter} or C{_keep}, and its bare C{200} read
        without C{_messageOutcome}; the call is told C{DELIVERED} once, the
        message kept until then, and hs1 given the same message.
        """
        session, home, client = self.open()
        session.sendMessageThen(lambda *a: None, None, CAROL, "first", "text/plain", "m-0")
        self.network.flush()
        called: list[str] = []

        def forbidden(name: str) -> Callable[..., Any]:
            def call(*a: Any, **kw: Any) -> Any:
                called.append(name)
                raise AssertionError(name)

            return call

        for name in ("_headerSafe", "_plainValue", "encodeSessionMessageAfter", "_messageOutcome", "sessionMessageHead"):
            self.patch(proxy, name, forbidden(name))
        self.patch(session, "_compactMessage", forbidden("_compactMessage"))
        self.patch(session, "_keep", forbidden("_keep"))
        returned, answers = self.sendThen(session, CAROL, "hi \u2603", "text/plain", "m-1 x")
        self.assertIsNone(returned)
        [item] = self.link._pending.values()
        self.assertIn(item.deferred, session._inFlight)
        self.network.flush()
        self.assertEqual(called, [])
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", "m-1 x")])
        self.assertEqual(home.calls[-1], ("sendMessage", (CAROL, "hi \u2603", "text/plain", "m-1 x")))
        # The same recipient again: its address not even written out.
        written: list[Address] = []
        toText = Address.__str__

        def writing(address: Address) -> str:
            written.append(address)
            return toText(address)

        self.patch(Address, "__str__", writing)
        returned, answers = self.sendThen(session, CAROL, "again", "text/plain", "m-2")
        self.assertEqual(written, [])
        self.patch(Address, "__str__", toText)
        self.network.flush()
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", "m-2")])
        self.assertEqual(home.calls[-1], ("sendMessage", (CAROL, "again", "text/plain", "m-2")))

    def test_madeIdWithoutIsPrintable(self) -> None:
        """
        The usual message with an id of ASCII letters and digits (the form
        L{newMessageId} makes, the id of every message whose client gave
        none) is written without C{str.isprintable}: the id's UTF-8 bytes
        are tested instead, the same bytes written (the message's C{200}
        told with the id).
        """
        from bench.presence_fanout import counted

        session, home, client = self.open()
        session.sendMessageThen(lambda *a: None, None, CAROL, "first", "text/plain", "m-0")
        self.network.flush()
        messageId = newMessageId()
        sent: list[bytes] = []
        requestEncoded = self.link.requestEncoded

        def recording(encoded: bytes, decode: Any = None, waiter: Any = None) -> Any:
            sent.append(encoded)
            return requestEncoded(encoded, decode, waiter)

        self.patch(self.link, "requestEncoded", recording)
        answers: list[tuple[object, ...]] = []
        calls = counted(lambda: session.sendMessageThen(lambda *a: answers.append(a), "token", CAROL, "hi", "text/plain", messageId))
        self.assertEqual([name for name in calls if name.startswith("str.isprintable")], [])
        self.assertEqual(sent, [session._compactMessage(CAROL, "hi", "text/plain", messageId)])
        self.network.flush()
        self.assertEqual(answers, [(DeliveryStatus.DELIVERED, "token", messageId)])
        self.assertEqual(home.calls[-1], ("sendMessage", (CAROL, "hi", "text/plain", messageId)))

    def test_usualSameAsCompact(self) -> None:
        """
        Over fuzzed texts and ids, a message to a recipient the session
        wrote to before is sent as C{_compactMessage} writes it: the same
        bytes, the JSON form where it says C{None}, the same error raised
        where it raises.
        """
        session, home, client = self.open()
        self.network.pumps.clear()
        self.link._config = attrs.evolve(self.link._config, maxQueue=100_000)
        session.sendMessageThen(lambda *a: None, None, CAROL, "first", "text/plain", "m-0")
        sent: list[bytes] = []
        requestEncoded = self.link.requestEncoded

        def recording(encoded: bytes, decode: Any = None, waiter: Any = None) -> Any:
            sent.append(encoded)
            return requestEncoded(encoded, decode, waiter)

        self.patch(self.link, "requestEncoded", recording)
        rng = random.Random(20261206)
        alphabet = ["a", "Z", "0", "-", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "\u200e", "\u3000", "\xa0"]

        def text(low: int, high: int) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))

        direct = 0
        for i in range(3000):
            body = rng.choice(["", "hi", text(0, 10)])
            messageId = rng.choice(
                ["m-1", "", " m", "m ", "x" * 1024, "x" * 1025, "0" * 1023 + "\u00e9", newMessageId(), "\u00e9t\u00e9", "a\ud800", text(0, 8), text(1, 3) + "-" + text(1, 3)]
            )
            try:
                expected: object = session._compactMessage(CAROL, body, "text/plain", messageId)
            except Exception as e:
                expected = type(e)
            del sent[:]
            try:
                returned: object = session.sendMessageThen(lambda *a: None, None, CAROL, body, "text/plain", messageId)
            except Exception as e:
                self.assertEqual(type(e), expected, (body, messageId))
                continue
            if expected is None:
                assert isinstance(returned, Deferred), (body, messageId)
                # Never answered here (no pumps): failed when the link stops.
                returned.addErrback(lambda f: None)
            else:
                self.assertIsNone(returned)
                self.assertEqual(sent, [expected], (body, messageId))
                direct += 1
        self.assertGreater(direct, 500)

    def test_keptBounded(self) -> None:
        """
        The session keeps its messages to fail them when it ends, as for
        L{RemoteSession.sendMessage}: bounded by those in flight.
        """
        session, home, client = self.open()
        held: Deferred[DeliveryStatus] = Deferred()
        home.sendMessage = lambda *arguments: held  # type: ignore[method-assign]
        returned, waiting = self.sendThen(session, CAROL, "held", "text/plain", "m-0")
        self.network.flush()
        home.sendMessage = lambda *arguments: succeed(DeliveryStatus.DELIVERED)  # type: ignore[method-assign]
        answers: list[Any] = []
        for i in range(1000):
            session.sendMessageThen(lambda *answer: answers.append(answer), "token", CAROL, str(i))
            self.network.flush()
        self.assertEqual(len(answers), 1000)
        self.assertLessEqual(len(session._inFlight), 2 * proxy._IN_FLIGHT_SWEEP)
        home.client.sessionClosed("server shutting down")
        self.network.flush()
        [(outcome, token, messageId)] = waiting
        self.assertIsInstance(outcome.value, ServiceUnavailable)


class NativeFaceThroughProxyTests(ProxyTestCase):
    """
    The router's native face over a proxied session: a client's C{MESSAGE}
    is answered from the home server's answer through one call, no
    L{Deferred} on the router for it; the answers are those of
    L{RemoteSession.sendMessage}'s outcomes.
    """

    def loggedIn(self) -> tuple[Any, RecordingSession]:
        """
        A native client logged in at a router face whose session is
        replaced by a proxied one on hs1.
        """
        from tests.test_native_server import Wire

        gateway = memoryGateway(self.clock)
        addUser(gateway, "alice", "alice-pw")
        wire = Wire(NativeServerFactory(gateway, NativeConfig(), self.clock))
        self.assertEqual(wire.login("alice", "alice-pw").code, 200)
        original = wire.protocol.session
        assert original is not None
        original.close("replaced")
        session, home, client = self.open()
        wire.protocol.session = session
        return wire, home

    def test_message(self) -> None:
        """
        C{MESSAGE} is answered C{200} with its id once hs1 answers (none
        before); a refusal with its status and C{Alternate}; a C{BYE}
        waits for the answers before it; no L{Deferred} is made on the
        router while the message is sent.
        """
        wire, home = self.loggedIn()
        outcomes: list[Any] = [succeed(DeliveryStatus.DELIVERED), fail(UserBusy("busy", "tel:+15550100"))]

        def sendMessage(*arguments: Any) -> Deferred[DeliveryStatus]:
            home.calls.append(("sendMessage", arguments))
            outcome: Deferred[DeliveryStatus] = outcomes.pop(0)
            return outcome

        home.sendMessage = sendMessage  # type: ignore[method-assign,assignment]
        made = MessageThenTests.countDeferreds(self)  # type: ignore[arg-type]
        first = wire.send("MESSAGE", "im:carol@corp.example", [("Message-ID", "m-1")], b"hi")
        self.assertEqual(made, [0])
        second = wire.send("MESSAGE", "im:carol@corp.example", [("Message-ID", "m-2")], b"again")
        bye = wire.send("BYE")
        self.assertEqual(wire.frames(), [])
        self.assertEqual(wire.protocol._inFlight, 2)
        self.network.flush()
        responses = [f for f in wire.frames() if isinstance(f, Response)]
        self.assertEqual(
            [(r.seq, r.code, r.headers.get("Message-ID"), r.headers.get("Alternate")) for r in responses],
            [(first, 200, "m-1", None), (second, 486, None, "tel:+15550100"), (bye, 200, None, None)],
        )
        self.assertEqual([c[1][:2] for c in home.calls], [(CAROL, "hi"), (CAROL, "again")])

    def test_answerReadsNothing(self) -> None:
        """
        An answer with nothing held behind it writes the C{200} and asks the
        connection's parser for nothing (a read, or a timer, brings what
        comes next); with a C{BYE} held behind it, the C{BYE} is handled.
        """
        from tests.test_native_server import watchParser

        wire, home = self.loggedIn()
        watched = watchParser(wire.protocol)
        asked: list[str] = []
        parser = watched.parser

        def nextBareOK() -> int | None:
            asked.append("nextBareOK")
            return parser.nextBareOK()

        def next() -> object:
            asked.append("next")
            return parser.next()

        watched.nextBareOK = nextBareOK  # type: ignore[attr-defined]
        watched.next = next  # type: ignore[method-assign]
        first = wire.send("MESSAGE", "im:carol@corp.example", [("Message-ID", "m-1")], b"hi")
        del asked[:]
        self.network.flush()
        self.assertEqual([(f.seq, f.code) for f in wire.frames() if isinstance(f, Response)], [(first, 200)])
        self.assertEqual(asked, [])
        second = wire.send("MESSAGE", "im:carol@corp.example", [("Message-ID", "m-2")], b"hi")
        bye = wire.send("BYE")
        self.assertEqual(wire.frames(), [])
        self.network.flush()
        self.assertEqual([(f.seq, f.code) for f in wire.frames() if isinstance(f, Response)], [(second, 200), (bye, 200)])

    def test_refusedAtOnce(self) -> None:
        """
        A message the proxied session refuses at once (it has ended) is
        answered at once with C{503}; nothing is left in flight.
        """
        wire, home = self.loggedIn()
        session = wire.protocol.session
        assert isinstance(session, RemoteSession)
        session.ended("gone")
        r = wire.call("MESSAGE", "im:carol@corp.example", [("Message-ID", "m-1")], b"hi")
        self.assertEqual((r.code, r.reason), (503, "the session has ended"))
        self.assertEqual(wire.protocol._inFlight, 0)


class InstallTests(SynchronousTestCase):
    """
    L{installProxy} adds the methods a process's roles call for.
    """

    def links(self, config: GatewayConfig) -> Any:
        receiver = LinkReceiver(config, FakeRouter(), FakeLocator(), Clock(), LinkTraces())
        return attrs.make_class("Links", ["receiver", "routes"])(receiver, None)

    def gateway(self, config: GatewayConfig) -> Any:
        return attrs.make_class("G", ["config", "homeServer", "clock", "metrics", "router"])(config, RecordingHome(), Clock(), NO_METRICS, FakeRouter())

    def test_router(self) -> None:
        """
        A router gets a L{ProxyHomeServer} and answers C{CLIENT} on the
        connections it opens; it takes no C{SESSION}.
        """
        config = configFor("router")
        links = self.links(config)
        gateway = self.gateway(config)
        proxy = installProxy(gateway, links, FakeLocator())
        assert isinstance(proxy, ProxyHomeServer)
        # Its sessions' messages to the domain's users go through the
        # process's router.
        self.assertIs(proxy.router, gateway.router)
        self.assertIs(proxy.clock, gateway.clock)
        self.assertIn("CLIENT", links.receiver.backHandlers)
        self.assertNotIn("SESSION", links.receiver.handlers)

    def test_home(self) -> None:
        """
        A home server answers C{SESSION} and proxies nothing.
        """
        config = configFor("hs1")
        links = self.links(config)
        self.assertIsNone(installProxy(self.gateway(config), links, FakeLocator()))
        self.assertIn("SESSION", links.receiver.handlers)
        self.assertNotIn("CLIENT", links.receiver.backHandlers)


class BackMethodTests(ProxyTestCase):
    """
    What a home server may send back on the connection a router opened.
    """

    def test_onlyBackMethods(self) -> None:
        """
        On the connection the router opened, the home server's C{CLIENT}
        and C{PING} are answered, and nothing else: an event request gets
        C{405} (events go on the home server's own link, under the
        origination rule).
        """
        [connection] = self.server.factory.connections
        ping = connection.request(Request("PING", "*", Headers()))
        event = connection.request(
            encodeRequest(Message(ALICE, CAROL, "sneaked"), ("corp.example/hs1",), 8, "r-1")
        )
        self.network.flush()
        self.assertEqual(self.successResultOf(ping).code, 200)
        self.assertEqual(self.successResultOf(event).code, 405)

    def test_whenLostAfterLoss(self) -> None:
        """
        An observer added to a connection that is already lost is called at
        once.
        """
        [connection] = self.server.factory.connections
        self.drop()
        lost: list[object] = []
        connection.whenLost(lost.append)
        self.assertEqual(lost, [connection])


class AnswerTests(SynchronousTestCase):
    """
    The home server's answers to a router's session requests.
    """

    def test_plainAnswerIsDelivered(self) -> None:
        """
        An operation that succeeds with nothing to say is answered with the
        link's one C{200} response (L{DELIVERED}, whose bytes a connection
        keeps); one with a result, with its JSON.
        """
        self.assertIs(proxy._ok(), DELIVERED)
        answer = proxy._ok({"lease": 60})
        self.assertEqual((answer.code, answer.headers.get("Content-Type"), answer.body), (200, "application/json", b'{"lease": 60}'))


class HeaderSafeTests(SynchronousTestCase):
    """
    L{proxy._headerSafe}, which decides between the compact and the JSON
    form of C{SESSION message}, decides as its first definition did: a
    length of 1 to L{proxy.MAX_HEADER_VALUE_CHARS} and no match of
    C{[\\x00-\\x1f\\x7f-\\x9f]|^\\s|\\s$}.
    """

    def test_sameAsPattern(self) -> None:
        """
        Over fuzzed values (ASCII and Unicode white space, control
        characters, line ends, at either end and inside, empty and too
        long), both agree.
        """
        pattern = re.compile(r"[\x00-\x1f\x7f-\x9f]|^\s|\s$")
        rng = random.Random(20261205)
        alphabet = ["a", "Z", "/", "-", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u1680", "\u2000", "\u2028", "\u3000", "\u200b", "\ufeff", "é", "\ud800"]
        safe = 0
        for _ in range(20000):
            value = rng.choice(["text/plain", "x" * 1024, "x" * 1025, ""]) if rng.random() < 0.05 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            expected = 0 < len(value) <= proxy.MAX_HEADER_VALUE_CHARS and pattern.search(value) is None
            self.assertEqual(proxy._headerSafe(value), expected, repr(value))
            safe += expected
        self.assertGreater(safe, 1000)
        self.assertTrue(proxy._headerSafe("x" * 1024))
        self.assertFalse(proxy._headerSafe("x" * 1025))


class SessionMessageEncodingTests(SynchronousTestCase):
    """
    L{proxy.encodeSessionMessage} writes the compact C{SESSION message}
    directly, with exactly the bytes and errors of L{serialiseUnsequenced}
    over the request built header by header.
    """

    def outcome(self, encode: Any) -> object:
        try:
            return encode()
        except ValueError as e:
            return ("error", type(e), str(e))

    def general(self, sessionId: str, recipient: str, text: bytes, contentType: str, messageId: str | None) -> bytes:
        headers = [("Session", sessionId), ("To", recipient)]
        if contentType != "text/plain":
            headers.append(("Content-Type", contentType))
        if messageId is not None:
            headers.append(("Message-ID", messageId))
        return serialiseUnsequenced(Request("SESSION", "message", Headers(tuple(headers)), text))

    def fuzzedArguments(self, seed: int, count: int = 4000) -> Iterator[tuple[str, str, bytes, str, str | None]]:
        """
        C{count} argument tuples of L{proxy.encodeSessionMessage} from
        C{seed}: the usual values, and text of control characters, line
        ends, white space, non-ASCII text and lone surrogates (U+200E and
        U+3000: not printable, yet nothing the pattern finds).
        """
        rng = random.Random(seed)
        alphabet = ["a", "Z", "0", "-", ".", ":", "@", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "é", "\x1b", "\u200e", "\u3000"]

        def text(low: int = 0, high: int = 12) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))

        for _ in range(count):
            yield (
                rng.choice(["hs1-1", "hs1-12345678", text(0, 8)]),
                rng.choice(["carol@corp.example", "bob@partner.example", text(0, 12)]),
                rng.choice([b"", b"hi", "hi \u2603".encode(), b"\x00\r\n\r\n", bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))]),
                rng.choice(["text/plain", "text/plain", "text/html", "", text(0, 10)]),
                rng.choice([None, None, "m-1", "", "x" * 1024, text(0, 10)]),
            )

    def test_sameAsGeneral(self) -> None:
        """
        Over fuzzed arguments (control characters, line ends, white space,
        non-ASCII text and lone surrogates in every value; empty and
        non-empty bodies), both encodings agree, and the bytes parse back
        to the same request.
        """
        encoded = 0
        for arguments in self.fuzzedArguments(20261205):
            general = self.outcome(lambda: self.general(*arguments))
            direct = self.outcome(lambda: proxy.encodeSessionMessage(*arguments))
            self.assertEqual(direct, general, arguments)
            if isinstance(direct, bytes):
                encoded += 1
                parsed = FrameParser(LINK_LIMITS).feed(withSeq(direct, 7))
                self.assertEqual(len(parsed), 1)
        self.assertGreater(encoded, 1000)

    def test_headsSameAsWhole(self) -> None:
        """
        A message written after its start (L{proxy.sessionMessageHead},
        L{proxy.encodeSessionMessageAfter}) is what
        L{proxy.encodeSessionMessage} writes, over fuzzed arguments
        (L{fuzzedArguments}); where either says C{None}, the whole message
        is one L{proxy.encodeSessionMessage} would not write directly, or a
        value UTF-8 cannot encode.
        """
        after = 0
        for arguments in self.fuzzedArguments(20261206):
            whole = self.outcome(lambda: proxy.encodeSessionMessage(*arguments))
            head = proxy.sessionMessageHead(arguments[0], arguments[1])
            written = None if head is None else proxy.encodeSessionMessageAfter(head, *arguments[2:])
            if written is None:
                # Then the whole is the general way's, or an error.
                values = "\t".join(v for v in (arguments[0], arguments[1], arguments[3], arguments[4]) if v is not None)
                self.assertTrue(
                    proxy._VALUES_NOT_PLAIN.search(values) is not None or "\ud800" in values,
                    arguments,
                )
            else:
                after += 1
                self.assertEqual(written, whole, arguments)
        self.assertGreater(after, 1000)

    def test_printableWithoutPattern(self) -> None:
        """
        Printable values are written without being searched by the
        pattern; a value that is not printable, but holds nothing it finds
        (U+200E), is searched (alone) and still written directly. Both are
        the general way's bytes.
        """
        plain = ("hs1-1", "carol@corp.example", b"hi", "text/html", "m-1 \u2603")
        odd = ("hs1-1", "carol@corp.example", b"hi", "text/plain", "m-\u200e")
        expected = [self.general(*arguments) for arguments in (plain, odd)]
        searched: list[str] = []

        class Recording:
            def search(self, text: str) -> re.Match[str] | None:
                searched.append(text)
                return pattern.search(text)

        pattern = proxy._VALUES_NOT_PLAIN
        self.patch(proxy, "_VALUES_NOT_PLAIN", Recording())
        self.assertEqual(proxy.encodeSessionMessage(*plain), expected[0])
        self.assertEqual(searched, [])
        self.assertEqual(proxy.encodeSessionMessage(*odd), expected[1])
        self.assertEqual(searched, ["m-\u200e"])
