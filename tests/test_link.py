"""
Tests for L{imgateway.router.link}: server links over in-memory connections
(L{twisted.test.iosim}) and a L{Clock}: the sender's queue bound, time
limit and resend after a reconnect; the receiver's peer identities,
origination rule, C{Via} and C{Max-Hops}, and duplicates.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from imgateway._testcerts import CertificateAuthority
from imgateway.adapters.native.framing import MAX_SEQ, FrameParser, Headers, Request, Response, serialise
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, HostPort, LinksConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import (
    ConfigError,
    DeliveryError,
    DeliveryStatus,
    LoopDetected,
    NoSuchUser,
    NotAuthorised,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    UserBusy,
    UserOffline,
)
from imgateway.core.events import Event, Message, MessageMark, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import AccountRecord
from imgateway.core.throttle import REFUSAL_LOG_INTERVAL
from imgateway.core.linkinfo import LinkInfo, LinkInfoSource
from imgateway.interfaces import IHomeLocator, ILinkRoutes, IRoute, IRouter, IWaiterRoute
from imgateway.router.link import (
    LinkClient,
    LinkConnection,
    LinkPeer,
    LinkReceiver,
    LinkRoutes,
    LinkServerFactory,
    LinkTraces,
    identifyPeer,
    makeLinkService,
    serialiseUnsequenced,
    withSeq,
)
from imgateway.net.gather import GATHER
from imgateway.router import link
from imgateway.router.link_codec import DELIVERED, decodeResponse, encodeMessage, encodeRequest, encodeResponse, hopKey
from imgateway.router.locator import UNKNOWN, DirectoryHomeLocator
from imgateway.router.router import UNASKED, Router
from imgateway.testing import MemoryDirectory, MemoryLinkRoutes

from tests.test_net_srv import FakeResolver

ALICE = Address.fromString("alice@corp.example")  # homed on hs1
CAROL = Address.fromString("carol@corp.example")  # homed on hs2
ROMEO = Address.fromString("romeo@partner.example")
JULIET = Address.fromString("juliet@other.example")

LINKS = LinksConfig(
    allowPlaintextLoopback=True,
    maxQueue=3,
    requestTimeout=10.0,
    duplicateWindow=300.0,
    maxHops=8,
    reconnectMaxDelay=60.0,
    maxIncoming=2,
)

SERVERS = {
    "hs1": ServerConfig("hs1", frozenset({"home"}), link=HostPort("127.0.0.1", 5311), tlsName="hs1.corp.example"),
    "hs2": ServerConfig("hs2", frozenset({"home"}), link=HostPort("127.0.0.1", 5312), tlsName="hs2.corp.example"),
    "router": ServerConfig("router", frozenset({"router"}), link=HostPort("127.0.0.1", 5310)),
}


def configFor(name: str, domain: str = "corp.example", **links: Any) -> GatewayConfig:
    """
    The config of server C{name} of C{domain} (the servers of corp.example,
    a static route to partner.example).
    """
    return GatewayConfig(
        path=FilePath("links.toml"),
        domain=domain,
        dataDir=FilePath("links"),
        homeServerName=name,
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        links=attrs.evolve(LINKS, **links),
        servers=SERVERS if domain == "corp.example" else {},
        routes={"partner.example": HostPort("127.0.0.1", 5320)} if domain == "corp.example" else {},
    )


@implementer(IRouter)
class FakeRouter:
    """
    A router that records what it is given and answers with C{answer}.
    """

    defaultRoute = None

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.answer: Callable[[Event], Deferred[DeliveryStatus]] = lambda e: succeed(DeliveryStatus.DELIVERED)

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return self.answer(event)

    def addRoute(self, domain: str, route: IRoute) -> None:
        raise NotImplementedError()

    def removeRoute(self, domain: str) -> None:
        raise NotImplementedError()

    def routeFor(self, domain: str) -> IRoute | None:
        return None

    def routes(self) -> dict[str, IRoute]:
        return {}

    def setDefaultRoute(self, route: IRoute | None) -> None:
        raise NotImplementedError()


@implementer(IHomeLocator)
class FakeLocator:
    def __init__(self) -> None:
        self.homes = {ALICE: "hs1", CAROL: "hs2"}

    def homeOf(self, address: Address) -> Deferred[str | None]:
        return succeed(self.homes.get(address))

    def forget(self, address: Address) -> None:
        pass


class Server:
    """
    The receiving side of one server: its receiver and listener factory,
    on an in-memory network.
    """

    def __init__(self, config: GatewayConfig, clock: Clock) -> None:
        self.config = config
        self.router = FakeRouter()
        self.locator = FakeLocator()
        self.traces = LinkTraces()
        self.receiver = LinkReceiver(config, self.router, self.locator, clock, self.traces)
        self.factory = LinkServerFactory(self.receiver, config.links, clock, plaintext=True)
        self.up = True


class Network:
    """
    In-memory connections from link clients to servers.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []
        self.clientTransports: list[iosim.FakeTransport] = []
        self.ports = 40000

    def endpoint(self, server: Server, clientHost: str = "127.0.0.1") -> FakeEndpoint:
        return FakeEndpoint(self, server, clientHost)

    def flush(self) -> None:
        for _ in range(5):
            for pump in list(self.pumps):
                pump.flush()


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    def __init__(self, network: Network, server: Server, clientHost: str) -> None:
        self.network = network
        self.server = server
        self.clientHost = clientHost
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        if not self.server.up:
            return fail(ConnectionRefusedError())
        self.network.ports += 1
        serverAddress = IPv4Address("TCP", "127.0.0.1", 5311)
        clientAddress = IPv4Address("TCP", self.clientHost, self.network.ports)
        serverProtocol = self.server.factory.buildProtocol(clientAddress)
        clientProtocol = factory.buildProtocol(serverAddress)
        assert serverProtocol is not None and clientProtocol is not None
        pump = iosim.connect(
            serverProtocol,
            iosim.FakeTransport(serverProtocol, True, serverAddress, clientAddress),
            clientProtocol,
            iosim.FakeTransport(clientProtocol, False, clientAddress, serverAddress),
            greet=False,
            clock=self.network.clock,
        )
        self.network.pumps.append(pump)
        self.network.clientTransports.append(pump.clientIO)
        return succeed(clientProtocol)


def captureLogs(case: SynchronousTestCase) -> list[LogEvent]:
    """
    @return: The log events emitted during C{case}, as they come.
    """
    events: list[LogEvent] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def answering(received: list[Request]) -> Callable[[LinkConnection, Request], Response]:
    """
    @return: A link request handler that records requests and answers 200.
    """

    def handler(connection: LinkConnection, request: Request) -> Response:
        received.append(request)
        return Response(200, "OK", Headers())

    return handler


def hello(name: str, domain: str = "corp.example") -> Headers:
    return Headers((("Server", name), ("Domain", domain)))


class LinkTestCase(SynchronousTestCase):
    """
    A server (C{hs1} unless a test says otherwise) and link clients to it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = Network(self.clock)
        self.server = Server(configFor("hs1"), self.clock)
        self.logged = captureLogs(self)
        self.clients: list[LinkClient] = []

    def client(self, name: str = "hs2", domain: str = "corp.example", server: Server | None = None, **links: Any) -> LinkClient:
        """
        A running link client from server C{name} of C{domain} to the
        server, with a fixed backoff of 1 s.
        """
        config = configFor(name, domain, **links)
        client = LinkClient(
            "server hs1",
            self.network.endpoint(server or self.server),
            config.links,
            self.clock,
            hello(name, domain),
            LinkTraces(),
            f"{domain}/{name}",
            retryPolicy=lambda attempts: 1.0,
        )
        client.startService()
        self.clients.append(client)
        self.addCleanup(self.stop, client)
        self.network.flush()
        return client

    def stop(self, client: LinkClient) -> None:
        if client.running:
            client.stopService()
            self.network.flush()

    def messages(self, text: str) -> list[str]:
        return [m for m in (formatEvent(e) for e in self.logged) if text in m]

    def drop(self) -> None:
        """
        Drop every connection (the server side goes away).
        """
        for connection in list(self.server.factory.connections):
            connection.abort()
        self.network.flush()
        self.network.pumps.clear()


class DeliveryTests(LinkTestCase):
    """
    Events cross a link and their statuses come back.
    """

    def test_interfaces(self) -> None:
        """
        A link client is an L{IRoute}.
        """
        self.assertTrue(verifyObject(IRoute, self.client()))

    def test_waiterInterface(self) -> None:
        """
        A link client provides L{IWaiterRoute}: the C{deliverThen} the
        router looks up by name has the signature it declares, so a change
        to either side fails here.
        """
        self.assertTrue(verifyClass(IWaiterRoute, LinkClient))
        self.assertTrue(verifyObject(IWaiterRoute, self.client()))

    def test_everyEvent(self) -> None:
        """
        Every kind of event from a user homed on the sending server reaches
        the receiver's router unchanged, and C{200} comes back as
        delivered.
        """
        client = self.client(maxQueue=10)
        sent: list[Event] = [
            Message(CAROL, ALICE, "hi"),
            PresenceUpdate(CAROL, ALICE, Presence(PresenceState.AWAY, "lunch")),
            PresenceProbe(CAROL, ALICE),
            SubscriptionEvent(SubscriptionKind.SUBSCRIBE, CAROL, ALICE),
        ]
        results = [client.deliver(e) for e in sent]
        self.network.flush()
        for d in results:
            self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(self.server.router.events, sent)
        self.assertEqual(self.server.router.events[0].routingId, sent[0].routingId)  # type: ignore[union-attr]

    def test_errorStatus(self) -> None:
        """
        The receiver's delivery error comes back as the same error: 486
        with its alternate, 480.
        """
        client = self.client()
        self.server.router.answer = lambda e: fail(UserBusy("busy", "tel:+15550100"))
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        error = self.failureResultOf(d, UserBusy).value
        self.assertEqual(error.alternate, "tel:+15550100")
        self.server.router.answer = lambda e: fail(UserOffline("alice@corp.example is offline"))
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.assertEqual(self.failureResultOf(d, UserOffline).value.text, "alice@corp.example is offline")

    def test_unexpectedFailure(self) -> None:
        """
        An unexpected failure of the receiver's router is logged there and
        answered 500 (a server error for the sender).
        """
        client = self.client()
        self.server.router.answer = lambda e: fail(RuntimeError("boom"))
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.assertEqual(self.failureResultOf(d, DeliveryError).value.status, DeliveryStatus.SERVER_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LinkInfoTests(LinkTestCase):
    """
    What the links tell the operator's console (L{LinkInfoSource}).
    """

    def test_client(self) -> None:
        """
        A link client says whether it is up and how many requests wait.
        """
        client = self.client()
        self.assertIsInstance(client, LinkInfoSource)
        self.assertEqual(client.linkInfo(), [LinkInfo("server", "hs1", True, "0 waiting", connects=1)])
        self.drop()
        waiting = client.deliver(Message(Address.fromString("a@corp.example"), Address.fromString("b@corp.example"), "hi"))
        self.assertEqual(client.linkInfo(), [LinkInfo("server", "hs1", False, "1 waiting", connects=1)])
        self.clock.advance(configFor("hs2").links.requestTimeout)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_incoming(self) -> None:
        """
        The service of a process's links holds one that counts the incoming
        link connections.
        """
        made = makeLinkService(configFor("hs1"), MemoryReactorClock(), FakeRouter(), FakeLocator())
        [incoming] = [s for s in made.service if isinstance(s, LinkInfoSource) and s is not made.routes]
        self.assertEqual(incoming.linkInfo(), [LinkInfo("server-incoming", "all", False, "0 connection(s)", required=False)])
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        connection = made.acceptor.buildProtocol(address)
        assert connection is not None
        connection.makeConnection(iosim.FakeTransport(connection, True, address, address))
        self.assertEqual(incoming.linkInfo(), [LinkInfo("server-incoming", "all", True, "1 connection(s)", required=False)])
        connection.connectionLost(Failure(ConnectionDone()))


class QueueAndTimeoutTests(LinkTestCase):
    """
    The sender never hangs: a bounded queue, a time limit per request.
    """

    def test_queueBound(self) -> None:
        """
        With the link down, C{max_queue} requests wait; one more is answered
        503 at once.
        """
        self.server.up = False
        client = self.client(maxQueue=3)
        waiting = [client.deliver(Message(CAROL, ALICE, str(i))) for i in range(3)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(client.queued, 3)
        refused = client.deliver(Message(CAROL, ALICE, "one more"))
        self.assertIn("3 requests waiting", self.failureResultOf(refused, ServiceUnavailable).value.text)
        self.clock.advance(10)
        for d in waiting:
            self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(client.queued, 0)

    def test_queueFullLogged(self) -> None:
        """
        A request refused for a full queue is logged at once, naming the
        peer and C{max_queue}; the next ones within
        L{REFUSAL_LOG_INTERVAL} seconds are counted in one line when it
        ends, and a refusal after a quiet interval is logged at once again.
        """
        self.server.up = False
        client = self.client(maxQueue=1, requestTimeout=1000.0)
        waiting = client.deliver(Message(CAROL, ALICE, "waits"))
        waiting.addErrback(lambda f: None)

        def full() -> list[str]:
            return [formatEvent(e) for e in self.logged if "max_queue" in formatEvent(e)]

        self.assertEqual(full(), [])
        for i in range(3):
            self.failureResultOf(client.deliver(Message(CAROL, ALICE, str(i))), ServiceUnavailable)
        self.assertEqual(full(), ["Link to server hs1: 1 requests waiting already (max_queue); 503"])
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.assertEqual(full()[1:], [f"Link to server hs1: 2 more requests refused in {REFUSAL_LOG_INTERVAL:g} s (max_queue 1); 503"])
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.assertEqual(len(full()), 2)
        self.failureResultOf(client.deliver(Message(CAROL, ALICE, "later")), ServiceUnavailable)
        self.assertEqual(len(full()), 3)
        self.assertEqual(full()[2], full()[0])

    def test_timeoutEach(self) -> None:
        """
        Requests made at different times each fail when their own
        C{request_timeout} has passed (one timer serves them all), also one
        made again as the previous one fails; one answered meanwhile does
        not fail.
        """
        self.server.up = False
        client = self.client(requestTimeout=10.0)
        first = client.deliver(Message(CAROL, ALICE, "1"))
        self.clock.advance(3)
        second = client.deliver(Message(CAROL, ALICE, "2"))
        again: list[Deferred[DeliveryStatus]] = []
        first.addErrback(lambda f: again.append(client.deliver(Message(CAROL, ALICE, "1 again"))))
        self.clock.advance(6.9)
        self.assertNoResult(first)
        self.clock.advance(0.1)
        self.assertEqual(len(again), 1)
        self.assertNoResult(second)
        self.clock.advance(2.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, ServiceUnavailable)
        self.assertNoResult(again[0])
        self.clock.advance(6.9)
        self.assertNoResult(again[0])
        self.clock.advance(0.1)
        self.failureResultOf(again[0], ServiceUnavailable)
        self.assertEqual(client.queued, 0)

    def test_timeoutLinkDown(self) -> None:
        """
        With the link down, a request fails with 503 once C{request_timeout}
        has passed, not before.
        """
        self.server.up = False
        client = self.client(requestTimeout=10.0)
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("no answer from server hs1 within 10 s", self.failureResultOf(d, ServiceUnavailable).value.text)
        self.assertTrue(self.messages("no answer within 10.0 s"))

    def test_timeoutUnanswered(self) -> None:
        """
        With the link up but no answer (the receiver's delivery hangs), the
        request fails with 503 after C{request_timeout}; a late answer is
        ignored.
        """
        client = self.client()
        late: Deferred[DeliveryStatus] = Deferred()
        self.server.router.answer = lambda e: late
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.assertNoResult(d)
        self.clock.advance(10)
        self.failureResultOf(d, ServiceUnavailable)
        late.callback(DeliveryStatus.DELIVERED)
        self.network.flush()

    def test_halfOpen(self) -> None:
        """
        A request unanswered on a link that looks up (the peer's host is
        gone: nothing comes back) is followed by a C{PING}; with no answer
        to that either within C{request_timeout}, the connection is dropped
        so that the link reconnects.
        """
        client = self.client()
        self.network.pumps.clear()
        transport = self.network.clientTransports[-1]
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.clock.advance(10)
        self.failureResultOf(d, ServiceUnavailable)
        self.assertIn(b"PING * IMGW/1.0", b"".join(transport.stream))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(self.messages("no answer to PING within 10.0 s; reconnecting"))

    def test_slowPeerKept(self) -> None:
        """
        A peer that answers C{PING} but not (yet) a delivery keeps its
        connection: only the delivery fails.
        """
        client = self.client()
        self.server.router.answer = lambda e: Deferred()
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.clock.advance(10)
        self.network.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.clock.advance(10)
        self.network.flush()
        self.assertTrue(client.connected)
        self.assertFalse(self.network.clientTransports[-1].disconnecting)

    def test_unsendable(self) -> None:
        """
        A request that cannot be written (a header value with a line break)
        fails at once with a server error and takes no place in the queue.
        """
        client = self.client()
        d = client.request(Request("SESSION", "*", Headers((("Session", "a\r\nInjected: yes"),))))
        self.failureResultOf(d, ServerError)
        self.assertEqual(client.queued, 0)

    def test_requestEncoded(self) -> None:
        """
        A request its caller serialised already (L{LinkClient.requestEncoded})
        is sent as it is and answered as any; it waits in the same queue,
        within the same C{max_queue}.
        """
        client = self.client(maxQueue=1)
        d = client.requestEncoded(serialiseUnsequenced(Request("PING", "*", Headers())))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.server.up = False
        self.drop()
        waiting = client.requestEncoded(serialiseUnsequenced(Request("PING", "*", Headers())))
        refused = client.requestEncoded(serialiseUnsequenced(Request("PING", "*", Headers())))
        self.assertIn("1 requests waiting", self.failureResultOf(refused, ServiceUnavailable).value.text)
        self.assertNoResult(waiting)
        self.clock.advance(10)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_requestEncodedDecoded(self) -> None:
        """
        A request sent with what reads its answer
        (L{LinkClient.requestEncoded}'s C{decode}) fires its L{Deferred}
        with what that returns, or fails with what it raises, and carries
        no callback while it waits; the queue, time limit and
        C{max_queue} are the same.
        """
        client = self.client(maxQueue=1)
        ping = serialiseUnsequenced(Request("PING", "*", Headers()))
        d = client.requestEncoded(ping, lambda response: ("read", response.code))
        self.assertEqual(len(d._callbacks), 0)
        self.network.flush()
        self.assertEqual(self.successResultOf(d), ("read", 200))

        def refuse(response: Response) -> object:
            raise UserBusy("busy", "tel:+15550100")

        d = client.requestEncoded(ping, refuse)
        self.network.flush()
        self.assertEqual(self.failureResultOf(d, UserBusy).value.alternate, "tel:+15550100")
        self.server.up = False
        self.drop()
        waiting = client.requestEncoded(ping, refuse)
        self.failureResultOf(client.requestEncoded(ping, refuse), ServiceUnavailable)
        self.clock.advance(10)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_firedByCaller(self) -> None:
        """
        A request's L{Deferred} its caller fired first (a proxied session
        that ended) is left alone: neither the answer that comes later nor
        the time limit fires it again, and the request leaves the queue
        when either comes.
        """
        client = self.client()
        late: Deferred[DeliveryStatus] = Deferred()
        answers = [late, Deferred()]
        self.server.router.answer = lambda e: answers.pop(0)
        answered = client.request(encodeRequest(Message(CAROL, ALICE, "1"), ("corp.example/hs2",), 8, "r.1"))
        unanswered = client.request(encodeRequest(Message(CAROL, ALICE, "2"), ("corp.example/hs2",), 8, "r.2"))
        self.network.flush()
        for d in (answered, unanswered):
            d.errback(ServiceUnavailable("the session has ended"))
            self.failureResultOf(d, ServiceUnavailable)
        late.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertEqual(client.queued, 1)
        self.clock.advance(10)
        self.assertEqual(client.queued, 0)

    def test_stopFailsWaiting(self) -> None:
        """
        Stopping the link fails what waits on it with 503 at once.
        """
        self.server.up = False
        client = self.client()
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        client.stopService()
        self.failureResultOf(d, ServiceUnavailable)


class ReconnectTests(LinkTestCase):
    """
    A link that drops reconnects, and resends what was not answered with
    the same routing id; the receiver delivers it once.
    """

    def test_sentOnceUp(self) -> None:
        """
        A request made while the link is down is sent once it is up.
        """
        self.server.up = False
        client = self.client()
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.server.up = True
        self.clock.advance(1)
        self.network.flush()
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(len(self.server.router.events), 1)

    def test_resendDeliveredOnce(self) -> None:
        """
        A request whose connection dropped before its answer is sent again
        on the next connection with the same C{Routing-Id}; the receiver,
        still delivering the first copy, answers the second with the first's
        answer, and delivers the event once.
        """
        client = self.client()
        pending: Deferred[DeliveryStatus] = Deferred()
        self.server.router.answer = lambda e: pending
        message = Message(CAROL, ALICE, "hi")
        d = client.deliver(message)
        self.network.flush()
        self.assertEqual(len(self.server.router.events), 1)
        self.drop()
        self.assertFalse(client.connected)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.network.flush()
        self.assertTrue(client.connected)
        self.assertNoResult(d)
        pending.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(self.server.router.events, [message])
        self.assertTrue(self.messages(f"duplicate {message.routingId} answered as the first"))

    def test_oneWaiterPerRequest(self) -> None:
        """
        Each transmission of a request (the first, and the one on the next
        connection after a drop) is given the same waiter: one object per
        request, not one more per transmission; it is sent once per
        connection, and answered once.
        """
        client = self.client()
        pending: Deferred[DeliveryStatus] = Deferred()
        self.server.router.answer = lambda e: pending
        waiters: list[object] = []
        sentOn: list[LinkConnection] = []
        original = LinkConnection.send

        def send(connection: LinkConnection, encoded: bytes, waiter: Any) -> bool:
            if encoded.startswith(b"MESSAGE "):
                waiters.append(waiter)
                sentOn.append(connection)
            return original(connection, encoded, waiter)

        self.patch(LinkConnection, "send", send)
        d = client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        self.drop()
        self.clock.advance(1)
        self.network.flush()
        pending.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertIs(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.assertEqual(len(waiters), 2)
        self.assertIsNot(sentOn[0], sentOn[1])
        self.assertIs(waiters[0], waiters[1])
        self.assertEqual(client.queued, 0)

    def test_backoffOnRefusedHello(self) -> None:
        """
        A peer that refuses this side's C{HELLO} is tried again with growing
        delays, as for failed connections.
        """
        delays: list[int] = []

        def policy(attempts: int) -> float:
            delays.append(attempts)
            return 1.0

        config = configFor("nobody")
        client = LinkClient(
            "server hs1",
            self.network.endpoint(self.server),
            config.links,
            self.clock,
            hello("nobody"),
            LinkTraces(),
            "corp.example/nobody",
            retryPolicy=policy,
        )
        client.startService()
        self.addCleanup(self.stop, client)
        for _ in range(3):
            self.network.flush()
            self.clock.advance(1)
        self.network.flush()
        self.assertEqual(delays[:3], [1, 2, 3])
        self.assertTrue(self.messages("refused: 403"))


class RawTestCase(LinkTestCase):
    """
    Bare link connections to the server, one per peer.
    """

    def setUp(self) -> None:
        super().setUp()
        self.raws: dict[str, LinkConnection] = {}

    def raw(self, name: str = "hs2") -> tuple[LinkConnection, Callable[[], None]]:
        """
        A bare link connection from C{name} to the server, after C{HELLO}.
        """
        if name in self.raws:
            return self.raws[name], self.network.flush
        ready: list[LinkConnection] = []
        protocol = LinkConnection({}, self.clock, 10.0, hello=hello(name), onReady=ready.append)

        class F:
            def buildProtocol(self, addr: Any) -> LinkConnection:
                return protocol

        self.network.endpoint(self.server).connect(F())  # type: ignore[arg-type]
        self.network.flush()
        self.assertEqual(ready, [protocol])
        self.raws[name] = protocol
        return protocol, self.network.flush


class DuplicateTests(RawTestCase):
    """
    The receiver answers a repeated C{Routing-Id} with the first answer,
    within C{duplicate_window}.
    """

    def test_duplicateWindow(self) -> None:
        """
        The same message twice within the window is delivered once and
        both are answered alike (here 486 with the alternate); at the end of
        the window it is delivered again.
        """
        connection, flush = self.raw()
        self.server.router.answer = lambda e: fail(UserBusy("busy", "tel:+15550100"))
        request = encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2"], 8, "rid-1")
        first = connection.request(request)
        flush()
        self.clock.advance(299.9)
        second = connection.request(request)
        flush()
        for d in (first, second):
            response = self.successResultOf(d)
            self.assertEqual((response.code, response.headers.get("Alternate")), (486, "tel:+15550100"))
        self.assertEqual(len(self.server.router.events), 1)
        self.clock.advance(0.1)
        third = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(third).code, 486)
        self.assertEqual(len(self.server.router.events), 2)

    def test_answerRemembered(self) -> None:
        """
        Once the first request is answered, what is remembered for its
        duplicates is the answer itself (no L{Deferred}: up to 100,000
        stay in memory), and a duplicate gets it at once.
        """
        connection, flush = self.raw()
        request = encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2"], 8, "rid-2")
        first = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(first).code, 200)
        expires, remembered = self.server.receiver._answers["rid-2"]
        self.assertEqual((expires, remembered.code), (300.0, 200))  # type: ignore[union-attr]
        self.assertIsInstance(remembered, Response)
        second = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(second).code, 200)
        self.assertEqual(len(self.server.router.events), 1)

    def test_unexpectedFailureFreesItsPlace(self) -> None:
        """
        A delivery whose answer cannot be made (here the router answers a
        failed status as a plain value, not as its error) is answered 500,
        its duplicate waiting meanwhile too; it counts no longer as in
        progress, and is not remembered: sent again, it is delivered again.
        """
        connection, flush = self.raw()
        held: Deferred[DeliveryStatus] = Deferred()
        self.server.router.answer = lambda e: held
        request = encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2"], 8, "rid-3")
        first = connection.request(request)
        flush()
        second = connection.request(request)
        flush()
        self.assertNoResult(second)
        [accepted] = list(self.server.factory.connections)
        self.assertEqual(accepted.inProgress, 1)
        held.callback(DeliveryStatus.NO_SUCH_USER)
        flush()
        self.assertEqual([self.successResultOf(d).code for d in (first, second)], [500, 500])
        self.assertEqual(accepted.inProgress, 0)
        self.assertNotIn("rid-3", self.server.receiver._answers)
        self.server.router.answer = lambda e: succeed(DeliveryStatus.DELIVERED)
        third = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(third).code, 200)
        self.assertEqual(len(self.server.router.events), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_inProgressBound(self) -> None:
        """
        A peer may have C{max_queue} requests in progress on a connection;
        one more is answered 503 at once, and once one is answered another
        is taken.
        """
        connection, flush = self.raw()
        held: list[Deferred[DeliveryStatus]] = []

        def hold(event: Event) -> Deferred[DeliveryStatus]:
            held.append(Deferred())
            return held[-1]

        self.server.router.answer = hold
        waiting = [connection.request(encodeRequest(Message(CAROL, ALICE, str(i)), [], 8, f"q{i}")) for i in range(3)]
        flush()
        for d in waiting:
            self.assertNoResult(d)
        refused = connection.request(encodeRequest(Message(CAROL, ALICE, "3"), [], 8, "q3"))
        flush()
        self.assertEqual(self.successResultOf(refused).code, 503)
        held[0].callback(DeliveryStatus.DELIVERED)
        flush()
        self.assertEqual(self.successResultOf(waiting[0]).code, 200)
        taken = connection.request(encodeRequest(Message(CAROL, ALICE, "4"), [], 8, "q4"))
        flush()
        self.assertNoResult(taken)
        self.assertEqual(len(held), 4)
        for h in held[1:]:
            h.callback(DeliveryStatus.DELIVERED)
        flush()

    def test_inProgressRefusalsLoggedPerInterval(self) -> None:
        """
        Requests refused for C{max_queue} are logged once at the first,
        then in one line per L{REFUSAL_LOG_INTERVAL} counting the others,
        not one line each; an interval without refusals ends the count, so
        the next refusal is logged at once.
        """
        connection, flush = self.raw()
        held: list[Deferred[DeliveryStatus]] = []

        def hold(event: Event) -> Deferred[DeliveryStatus]:
            held.append(Deferred())
            return held[-1]

        self.server.router.answer = hold
        for i in range(3):
            connection.request(encodeRequest(Message(CAROL, ALICE, str(i)), [], 8, f"f{i}"))
        refused = [connection.request(encodeRequest(Message(CAROL, ALICE, "x"), [], 8, f"r{i}")) for i in range(5)]
        flush()
        self.assertEqual([self.successResultOf(d).code for d in refused], [503] * 5)
        first = "Link from server hs2: 3 requests in progress already (max_queue); 503"
        count = "Link from server hs2: 4 more requests refused in 10 s (max_queue 3); 503"
        self.assertEqual(self.messages("max_queue"), [first])
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.assertEqual(self.messages("max_queue"), [first, count])
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.assertEqual(len(self.messages("max_queue")), 2)
        connection.request(encodeRequest(Message(CAROL, ALICE, "x"), [], 8, "r5"))
        flush()
        self.assertEqual(self.messages("max_queue"), [first, count, first])
        for h in held:
            h.callback(DeliveryStatus.DELIVERED)
        flush()
        self.clock.advance(REFUSAL_LOG_INTERVAL)

    def test_maxRemembered(self) -> None:
        """
        The duplicate check remembers C{[links] max_remembered} answers: with
        2, a third request's answer makes the first's forgotten (delivered
        again if repeated), the second's still kept.
        """
        self.server = Server(configFor("hs1", maxRemembered=2), self.clock)
        connection, flush = self.raw()
        requests = [encodeRequest(Message(CAROL, ALICE, str(i)), [], 8, f"m{i}") for i in range(3)]
        for request in requests:
            connection.request(request)
        flush()
        self.assertEqual(list(self.server.receiver._answers), ["m1", "m2"])
        connection.request(requests[1])
        flush()
        self.assertEqual(len(self.server.router.events), 3)
        connection.request(requests[0])
        flush()
        self.assertEqual(len(self.server.router.events), 4)

    def test_directoryFailure(self) -> None:
        """
        When the directory cannot say where the sender is homed, the request
        is answered 503 (and may be retried: the answer is not
        remembered), and the failure logged.
        """
        connection, flush = self.raw()
        self.server.locator.homeOf = lambda address: fail(RuntimeError("directory down"))  # type: ignore[method-assign]
        request = encodeRequest(Message(CAROL, ALICE, "hi"), [], 8, "dir-1")
        d = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.server.router.events, [])

    def test_retryableNotRemembered(self) -> None:
        """
        An answer after which a retry may succeed (5xx: nothing was
        delivered) is not repeated: the same routing id is tried again.
        """
        connection, flush = self.raw()
        self.server.router.answer = lambda e: fail(ServiceUnavailable("later"))
        request = encodeRequest(Message(CAROL, ALICE, "hi"), [], 8, "rid-2")
        d = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.server.router.answer = lambda e: succeed(DeliveryStatus.DELIVERED)
        d = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(self.server.router.events), 2)


class OriginationTests(RawTestCase):
    """
    A link is pinned to the identity it authenticated as.
    """

    def send(self, peer: str, sender: Address, domain: str = "corp.example", event: Event | None = None) -> int:
        connection, flush = self.raw(peer) if domain == "corp.example" else self.rawDomain(domain)
        if event is None:
            event = Message(sender, ALICE, "hi")
        d = connection.request(encodeRequest(event, [], 8, f"r-{peer}-{sender}-{type(event).__name__}"))
        flush()
        return self.successResultOf(d).code

    def rawDomain(self, domain: str) -> tuple[LinkConnection, Callable[[], None]]:
        ready: list[LinkConnection] = []
        protocol = LinkConnection({}, self.clock, 10.0, hello=hello("router", domain), onReady=ready.append)

        class F:
            def buildProtocol(self, addr: Any) -> LinkConnection:
                return protocol

        self.network.endpoint(self.server).connect(F())  # type: ignore[arg-type]
        self.network.flush()
        return protocol, self.network.flush

    def test_homeServer(self) -> None:
        """
        A home server may send events from users homed on it, not from users
        homed elsewhere, nor from other domains: 403, logged.
        """
        self.assertEqual(self.send("hs2", CAROL), 200)
        self.assertEqual(self.send("hs2", ALICE), 403)
        self.assertEqual(self.send("hs2", ROMEO), 403)
        self.assertEqual([(e.sender, e.recipient) for e in self.server.router.events], [(CAROL, ALICE)])
        self.assertTrue(self.messages("alice@corp.example is not homed on hs2"))
        self.assertTrue(self.messages("server hs2 is no router and sent an event from partner.example"))

    def test_router(self) -> None:
        """
        A router of this domain may send events from users of other
        domains, and messages (its proxied sessions') from users of this
        domain with an account, wherever they are homed; no other event
        from them, and no message from a user the directory does not know.
        """
        self.assertEqual(self.send("router", ROMEO), 200)
        self.assertEqual(self.send("router", CAROL), 200)
        self.assertEqual(self.send("router", ALICE), 200)
        self.assertEqual(self.send("router", Address.fromString("nobody@corp.example")), 403)
        self.assertTrue(self.messages("nobody@corp.example has no account in the directory"))
        self.assertEqual([(e.sender, e.recipient) for e in self.server.router.events], [(ROMEO, ALICE), (CAROL, ALICE), (ALICE, ALICE)])
        presence = PresenceUpdate(CAROL, ALICE, Presence(PresenceState.AWAY))
        subscription = SubscriptionEvent(SubscriptionKind.SUBSCRIBE, CAROL, ALICE)
        for event in (presence, subscription, PresenceProbe(CAROL, ALICE)):
            self.assertEqual(self.send("router", CAROL, event=event), 403, event)
        self.assertEqual(len(self.server.router.events), 3)
        self.assertTrue(self.messages("server router is no home server and sent an event other than a message from corp.example"))

    def test_peerDomain(self) -> None:
        """
        A peer domain's router may send events from users of its domain
        only.
        """
        self.assertEqual(self.send("router", ROMEO, "partner.example"), 200)
        self.assertEqual(self.send("router", JULIET, "partner.example"), 403)
        self.assertTrue(self.messages("a router of partner.example sent an event from other.example"))


class RememberedOriginationTests(SynchronousTestCase):
    """
    The origination rule answers at once, without a L{Deferred}, when the
    locator remembers the sender's home.
    """

    def test_rememberedHome(self) -> None:
        """
        With the sender's home remembered, a home server's event is checked
        at once: accepted from its home, refused from another server.
        Without, the directory is asked (a L{Deferred}).
        """
        clock = Clock()
        locator = DirectoryHomeLocator(MemoryDirectory([AccountRecord(CAROL, "hs2", "", True, "")]), clock, 30.0)
        config = configFor("hs1")
        receiver = LinkReceiver(config, FakeRouter(), locator, clock, LinkTraces())
        hs2 = LinkPeer("corp.example", "hs2", frozenset({"home"}))
        router = LinkPeer("corp.example", "router", frozenset({"home"}))
        event = Message(CAROL, ALICE, "hi")
        asked = receiver._originationRefused(hs2, event)
        assert isinstance(asked, Deferred)
        self.assertIsNone(self.successResultOf(asked))
        self.assertIsNone(receiver._originationRefused(hs2, event))
        self.assertEqual(receiver._originationRefused(router, event), "carol@corp.example is not homed on router")
        clock.advance(30.0)
        self.assertIsInstance(receiver._originationRefused(hs2, event), Deferred)


    def test_inPlaceSameAsRule(self) -> None:
        """
        The receiver's hot path accepts in place (no call of
        C{_originationRefused}) exactly the events the rule accepts at
        once, and asks the rule for every other: over peers (a home
        server, a router, one with both roles, a peer domain's router),
        senders (homed on the peer, elsewhere, disabled, unknown to the
        directory, of another domain) and events (a message, a presence,
        a subscription event, a probe), each event's answer is the rule's
        (C{403} for a refusal, delivered for an acceptance, the directory
        asked when the home is not remembered). In place: the events of a
        home server's own users, and a router's messages from users with
        an account.
        """
        clock = Clock()
        bob = Address.fromString("bob@corp.example")
        gone = Address.fromString("gone@corp.example")
        nobody = Address.fromString("nobody@corp.example")
        stranger = Address.fromString("romeo@xmpp.example")
        directory = MemoryDirectory(
            [
                AccountRecord(CAROL, "hs2", "", True, ""),
                AccountRecord(bob, "hs3", "", True, ""),
                AccountRecord(ALICE, "hs1", "", True, ""),
                AccountRecord(gone, "hs2", "", False, ""),
            ]
        )
        peers = [
            LinkPeer("corp.example", "hs2", frozenset({"home"})),
            LinkPeer("corp.example", "hs2", frozenset({"router"})),
            LinkPeer("corp.example", "hs2", frozenset({"home", "router"})),
            LinkPeer("xmpp.example", None, frozenset()),
        ]
        events: list[Callable[[Address], Event]] = [
            lambda sender: Message(sender, ALICE, "hi"),
            lambda sender: PresenceUpdate(sender, ALICE, Presence(PresenceState.AWAY)),
            lambda sender: SubscriptionEvent(SubscriptionKind.SUBSCRIBE, sender, ALICE),
            lambda sender: PresenceProbe(sender, ALICE),
        ]
        n = 0
        for remembered in (True, False):
            for peer in peers:
                for sender in (CAROL, bob, gone, nobody, stranger):
                    for make in events:
                        receivers = []
                        for _ in range(2):
                            locator = DirectoryHomeLocator(directory, clock, 30.0)
                            if remembered:
                                for user in (CAROL, bob, gone, nobody):
                                    self.successResultOf(locator.homeOf(user))
                            receivers.append(LinkReceiver(configFor("hs1"), AtOnceRouter(), locator, clock, LinkTraces()))
                        # The rule's answer, from a receiver of its own
                        # (asking the directory fills its locator).
                        event = make(sender)
                        expected = receivers[0]._originationRefused(peer, event)
                        if isinstance(expected, Deferred):
                            expected = self.successResultOf(expected)
                        receiver = receivers[1]
                        ruled: list[Event] = []
                        rule = receiver._originationRefused

                        def counted(p: LinkPeer, e: Event, rule: Any = rule, ruled: list[Event] = ruled) -> object:
                            ruled.append(e)
                            return rule(p, e)

                        self.patch(receiver, "_originationRefused", counted)
                        connection = LinkConnection(receiver.handlers, clock, 10.0)
                        connection.markReady(peer)
                        n += 1
                        request = encodeRequest(event, [f"{peer.domain}/x"], 8, f"rid-{n}")
                        answer = receiver.handlers[request.method](connection, request)
                        if isinstance(answer, Deferred):
                            answer = self.successResultOf(answer)
                        assert isinstance(answer, Response)
                        case = (remembered, peer, sender, type(event).__name__)
                        self.assertEqual(answer.code, 200 if expected is None else 403, case)
                        # (CAROL, homed on hs2: the peer's own user; bob
                        # homed elsewhere.)
                        inPlace = (
                            remembered
                            and expected is None
                            and peer.name is not None
                            and (
                                (sender == CAROL and "home" in peer.roles)
                                or (sender in (CAROL, bob) and type(event) is Message and "router" in peer.roles)
                            )
                        )
                        self.assertEqual(len(ruled), 0 if inPlace else 1, case)
                        if type(event) is Message and "router" in peer.roles and sender in (gone, nobody):
                            self.assertEqual(expected, f"{sender} has no account in the directory", case)
        self.flushLoggedErrors()


class HomeRecordingRouter(Router):
    """
    A L{Router} that records the C{home} its C{deliverAtOnce} is given
    (L{UNASKED} when it asks the locator itself).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.homes: list[object] = []

    def deliverAtOnce(self, event: Event, home: Any = UNASKED) -> DeliveryStatus | Deferred[DeliveryStatus]:
        self.homes.append(home)
        return super().deliverAtOnce(event, home)


@implementer(IRoute)
class AtOnceHome:
    """
    This process's home server, as the router sees it: every message
    delivered at once (C{deliverAtOnce}), recorded.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliverAtOnce(self, event: Event) -> DeliveryStatus:
        self.events.append(event)
        return DeliveryStatus.DELIVERED

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


class RecipientHomeTests(SynchronousTestCase):
    """
    The receiver asks the locator for the sender's home (the origination
    rule) and the recipient's (for the router) in one call, with the clock
    reading of its duplicate check, and gives the router the recipient's
    (L{Router.deliverAtOnce}'s C{home}): the same answers and deliveries
    as the router asking itself.
    """

    bob = Address.fromString("bob@corp.example")  # homed on hs3
    dave = Address.fromString("dave@corp.example")  # homed on hs1, not remembered
    nobody = Address.fromString("nobody@corp.example")

    def stack(self, sameLocator: bool = True, sameClock: bool = True) -> tuple[LinkReceiver, HomeRecordingRouter, AtOnceHome, AtOnceHome, Clock]:
        """
        hs1's receiver and router (a home server here that takes every
        message at once, hs3 over a link) with CAROL, ALICE, bob and nobody
        remembered by the locator.
        """
        clock = Clock()
        directory = MemoryDirectory(
            [
                AccountRecord(CAROL, "hs2", "", True, ""),
                AccountRecord(ALICE, "hs1", "", True, ""),
                AccountRecord(self.bob, "hs3", "", True, ""),
                AccountRecord(self.dave, "hs1", "", True, ""),
            ]
        )
        locator = DirectoryHomeLocator(directory, clock if sameClock else Clock(), 30.0)
        for user in (CAROL, ALICE, self.bob, self.nobody):
            self.successResultOf(locator.homeOf(user))
        hs3 = AtOnceHome()
        router = HomeRecordingRouter(
            domain="corp.example",
            serverName="hs1",
            locator=locator if sameLocator else DirectoryHomeLocator(directory, clock, 30.0),
            linkRoutes=MemoryLinkRoutes(servers={"hs3": hs3}),
        )
        home = AtOnceHome()
        router.addRoute("corp.example", home, local=True)
        return LinkReceiver(configFor("hs1"), router, locator, clock, LinkTraces()), router, home, hs3, clock

    def send(self, receiver: LinkReceiver, recipient: Address, n: int) -> int:
        connection = LinkConnection(receiver.handlers, Clock(), 10.0)
        connection.markReady(LinkPeer("corp.example", "hs2", frozenset({"home"})))
        request = encodeRequest(Message(CAROL, recipient, "hi"), ["corp.example/hs2"], 8, f"rid-{n}")
        answer = receiver.handlers["MESSAGE"](connection, request)
        if isinstance(answer, Deferred):
            answer = self.successResultOf(answer)
        assert isinstance(answer, Response)
        return answer.code

    def test_homeGiven(self) -> None:
        """
        With the router asking the receiver's locator, which keeps the
        receiver's clock's time, the router is given each recipient's home
        as remembered (a home here, one on another server, none, or
        L{UNKNOWN}); for one remembered on a server, the locator's
        C{cachedHomeOf} is not called and the clock read once per message.
        The answers and where the messages went are those of a router
        asking itself.
        """
        receiver, router, home, hs3, clock = self.stack()
        readings: list[float] = []
        seconds = clock.seconds

        def reading() -> float:
            readings.append(seconds())
            return readings[-1]

        self.patch(clock, "seconds", reading)
        asked: list[Address] = []
        cachedHomeOf = DirectoryHomeLocator.cachedHomeOf

        def counted(locator: DirectoryHomeLocator, address: Address) -> object:
            asked.append(address)
            return cachedHomeOf(locator, address)

        self.patch(DirectoryHomeLocator, "cachedHomeOf", counted)
        recipients = [ALICE, self.bob, self.nobody, self.dave]
        codes = [self.send(receiver, r, n) for n, r in enumerate(recipients[:2])]
        self.assertEqual((router.homes, asked, len(readings)), (["hs1", "hs3"], [], 2))
        # The others go the router's general way, which asks the locator.
        codes += [self.send(receiver, r, n) for n, r in enumerate(recipients[2:], 2)]
        self.assertEqual(router.homes, ["hs1", "hs3", None, UNKNOWN])
        other, otherRouter, otherHome, otherHs3, _ = self.stack(sameClock=False)
        expected = [self.send(other, r, n) for n, r in enumerate(recipients)]
        self.assertEqual(otherRouter.homes, [UNASKED] * 4)
        self.assertEqual(codes, expected)
        self.assertEqual(codes, [200] * 4)
        self.assertEqual([e.recipient for e in home.events], [e.recipient for e in otherHome.events])
        self.assertEqual([e.recipient for e in home.events], [ALICE, self.nobody, self.dave])
        self.assertEqual([e.recipient for e in hs3.events], [e.recipient for e in otherHs3.events])
        self.assertEqual([e.recipient for e in hs3.events], [self.bob])

    def test_homeNotGiven(self) -> None:
        """
        A router that asks another locator, or a locator that keeps
        another clock's time, is not given the recipient's home: the
        router asks itself (C{UNASKED}), and the message is delivered.
        """
        for same in [{"sameLocator": False}, {"sameClock": False}]:
            receiver, router, home, _, _ = self.stack(**same)
            self.assertEqual(self.send(receiver, ALICE, 0), 200)
            self.assertEqual(router.homes, [UNASKED], same)
            self.assertEqual([e.recipient for e in home.events], [ALICE])


class AtOnceRouter(FakeRouter):
    """
    A router with a synchronous fast path (as L{Router.deliverAtOnce}):
    C{atOnce} answers each event, with a status, a L{Deferred}, or an
    exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self.atOnce: Callable[[Event], DeliveryStatus | Deferred[DeliveryStatus]] = lambda e: DeliveryStatus.DELIVERED

    def deliverAtOnce(self, event: Event) -> DeliveryStatus | Deferred[DeliveryStatus]:
        self.events.append(event)
        return self.atOnce(event)


class AtOnceTests(SynchronousTestCase):
    """
    An incoming link event that the router delivers at once (a session of
    this process) is answered without a L{Deferred}, with every check of
    the receiver kept (duplicates, in-progress count, traces).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        locator = DirectoryHomeLocator(MemoryDirectory([AccountRecord(CAROL, "hs2", "", True, "")]), self.clock, 30.0)
        self.successResultOf(locator.homeOf(CAROL))
        self.router = AtOnceRouter()
        self.traces = LinkTraces()
        self.receiver = LinkReceiver(configFor("hs1"), self.router, locator, self.clock, self.traces)
        self.connection = LinkConnection(self.receiver.handlers, self.clock, 10.0)
        self.connection.markReady(LinkPeer("corp.example", "hs2", frozenset({"home"})))

    def event(self, routingId: str) -> Deferred[Response] | Response:
        request = encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2"], 8, routingId)
        return self.receiver.handlers["MESSAGE"](self.connection, request)

    def test_answeredAtOnce(self) -> None:
        """
        A message delivered at once is answered with a response, not a
        L{Deferred}; its trace is left, its place in progress freed, and a
        duplicate gets the same answer without a second delivery.
        """
        traced: list[object] = []

        def deliver(e: Event) -> DeliveryStatus:
            traced.append(self.traces.traceOf(e))
            return DeliveryStatus.DELIVERED

        self.router.atOnce = deliver
        answer = self.event("rid-1")
        self.assertIsInstance(answer, Response)
        self.assertEqual(answer.code, 200)  # type: ignore[union-attr]
        self.assertEqual(traced, [(("corp.example/hs2",), 8)])
        self.assertIsNone(self.traces.traceOf(self.router.events[0]))
        self.assertEqual(self.connection.inProgress, 0)
        again = self.event("rid-1")
        self.assertIsInstance(again, Response)
        self.assertEqual((again.code, len(self.router.events)), (200, 1))  # type: ignore[union-attr]

    def test_refusedAtOnce(self) -> None:
        """
        A message refused at once (here 486 with the alternate) is answered
        at once with that status, remembered for its duplicates; one that
        a retry may get through (503) is not remembered.
        """

        def busy(e: Event) -> DeliveryStatus:
            raise UserBusy("busy", "tel:+15550100")

        self.router.atOnce = busy
        answer = self.event("rid-2")
        assert isinstance(answer, Response)
        self.assertEqual((answer.code, answer.headers.get("Alternate")), (486, "tel:+15550100"))

        self.assertIn("rid-2", self.receiver._answers)

        def unavailable(e: Event) -> DeliveryStatus:
            raise ServiceUnavailable("not now")

        self.router.atOnce = unavailable
        answer = self.event("rid-3")
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 503)
        self.assertNotIn("rid-3", self.receiver._answers)
        self.assertEqual(self.connection.inProgress, 0)

    def test_unexpectedAtOnce(self) -> None:
        """
        An unexpected exception of the fast path is logged and answered
        500, as the asynchronous path's failure is.
        """

        def boom(e: Event) -> DeliveryStatus:
            raise RuntimeError("boom")

        self.router.atOnce = boom
        answer = self.event("rid-4")
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_later(self) -> None:
        """
        A delivery that answers later (a proxied session) keeps the
        asynchronous path: the answer comes when it fires.
        """
        later: Deferred[DeliveryStatus] = Deferred()
        self.router.atOnce = lambda e: later
        answer = self.event("rid-5")
        assert isinstance(answer, Deferred)
        self.assertNoResult(answer)
        self.assertEqual(self.connection.inProgress, 1)
        later.callback(DeliveryStatus.DELIVERED)
        self.assertEqual(self.successResultOf(answer).code, 200)
        self.assertEqual(self.connection.inProgress, 0)


    def test_duplicateWhileDelivered(self) -> None:
        """
        A duplicate that arrives while the first is delivered at once
        (here from within the delivery) waits for its answer and gets it
        when the first is answered; the duplicate check then holds the
        answer itself, and the place in progress is freed. An entry the
        check forgot meanwhile (here pushed out by another request past
        the number remembered) is not made again.
        """
        duplicates: list[Deferred[Response] | Response] = []

        def deliver(e: Event) -> DeliveryStatus:
            if e.routingId == "rid-11":  # type: ignore[union-attr]
                duplicates.append(self.event("rid-11"))
                self.assertNoResult(duplicates[0])
            elif e.routingId == "rid-12":  # type: ignore[union-attr]
                self.receiver._maxRemembered = 1
                self.assertEqual(self.event("rid-13").code, 200)  # type: ignore[union-attr]
            return DeliveryStatus.DELIVERED

        self.router.atOnce = deliver
        self.assertIs(self.event("rid-11"), DELIVERED)
        self.assertIs(self.successResultOf(duplicates[0]), DELIVERED)  # type: ignore[arg-type]
        self.assertIs(self.receiver._answers["rid-11"][1], DELIVERED)
        self.assertEqual((self.connection.inProgress, len(self.router.events)), (0, 1))
        self.assertIs(self.event("rid-12"), DELIVERED)
        self.assertEqual(list(self.receiver._answers), ["rid-13"])
        self.assertEqual(self.connection.inProgress, 0)

    def test_forgetsAsTheFirstTestDid(self) -> None:
        """
        The duplicate check forgets answers from the time the first
        remembered one expires, as when it tested the first entry at every
        request: over fuzzed requests (new and repeated routing ids, some
        answered with a retryable 503 and not remembered, past a small
        C{max_remembered}, the clock moving on by little or by more than
        the duplicate window, the memory emptied and filled again), the
        same entries are remembered after each request as a model of that
        test keeps, and each request is delivered or answered from memory
        as the model says.
        """
        rng = random.Random(8)
        window = self.receiver._config.links.duplicateWindow
        self.receiver._maxRemembered = 5
        model: dict[str, float] = {}
        outcomes: dict[str, bool] = {}

        def deliver(e: Event) -> DeliveryStatus:
            if outcomes[e.routingId]:  # type: ignore[union-attr]
                return DeliveryStatus.DELIVERED
            raise ServiceUnavailable("not now")

        self.router.atOnce = deliver
        for n in range(3000):
            self.clock.advance(rng.choice([0.0, 1.0, 37.5, window / 3, window, 2 * window]) if rng.random() < 0.3 else 0.0)
            now = self.clock.seconds()
            routingId = f"rid-{rng.randrange(12)}"
            # The model: the first entry tested, then the ones expired forgotten.
            if model and next(iter(model.values())) <= now:
                for key in [k for k, expires in model.items() if expires <= now]:
                    del model[key]
            duplicate = routingId in model
            if not duplicate:
                outcomes[routingId] = rng.random() < 0.8
                model[routingId] = now + window
                while len(model) > 5:
                    del model[next(iter(model))]
                if not outcomes[routingId]:
                    del model[routingId]
            delivered = len(self.router.events)
            answer = self.event(routingId)
            if isinstance(answer, Deferred):
                # The sender's home read again (the locator's answer too old).
                answer = self.successResultOf(answer)
            self.assertEqual((list(self.receiver._answers), len(self.router.events) - delivered), (list(model), 0 if duplicate else 1), n)
            self.assertEqual(answer.code, 200 if outcomes[routingId] else 503, n)

    def test_traceInPlace(self) -> None:
        """
        With no other delivery from a link under way, a message's trace is
        kept in place (L{LinkTraces.current}) while the router delivers it:
        seen by L{LinkTraces.traceOf} then, no entry made or removed
        (neither C{push} nor C{pop} called), nothing left after.
        """
        calls: list[str] = []
        self.patch(self.traces, "push", lambda *a: calls.append("push"))
        self.patch(self.traces, "pop", lambda *a: calls.append("pop"))
        seen: list[object] = []

        def deliver(e: Event) -> DeliveryStatus:
            seen.append((self.traces.traceOf(e), dict(self.traces._traces)))
            return DeliveryStatus.DELIVERED

        self.router.atOnce = deliver
        self.assertEqual(self.event("rid-6").code, 200)  # type: ignore[union-attr]
        self.assertEqual(seen, [((("corp.example/hs2",), 8), {})])
        self.assertEqual(calls, [])
        self.assertIsNone(self.traces.current)
        self.assertIsNone(self.traces.traceOf(self.router.events[0]))

    def test_traceNested(self) -> None:
        """
        A delivery from a link within another's (the first kept in place)
        keeps its trace as an entry: both seen while it is delivered, the
        second's as the newest for the same key; nothing left after.
        """
        seen: list[object] = []
        inner = Message(CAROL, ALICE, "hi", routingId="rid-8")
        answers: list[object] = []

        def deliver(e: Event) -> DeliveryStatus:
            if e.routingId == "rid-7":  # type: ignore[union-attr]
                request = encodeRequest(inner, ["corp.example/hs2", "corp.example/router"], 5, "rid-8")
                answers.append(self.receiver.handlers["MESSAGE"](self.connection, request))
                seen.append(("outer after", self.traces.traceOf(e)))
            else:
                seen.append(("inner", self.traces.traceOf(e), self.traces.current is not None))
            return DeliveryStatus.DELIVERED

        self.router.atOnce = deliver
        self.assertEqual(self.event("rid-7").code, 200)  # type: ignore[union-attr]
        self.assertEqual([a.code for a in answers], [200])  # type: ignore[attr-defined]
        self.assertEqual(
            seen, [("inner", (("corp.example/hs2", "corp.example/router"), 5), True), ("outer after", (("corp.example/hs2",), 8))]
        )
        self.assertEqual((self.traces._traces, self.traces.current), ({}, None))

    def test_traceLater(self) -> None:
        """
        A delivery whose outcome comes later keeps its trace as an entry
        from when the router returns until the outcome, older than any
        made for the same key meanwhile; then nothing is left. A delivery
        that raises leaves nothing either.
        """
        later: Deferred[DeliveryStatus] = Deferred()
        event: list[Event] = []

        def deliver(e: Event) -> Deferred[DeliveryStatus]:
            event.append(e)
            self.traces.push("rid-9", ("corp.example/other",), 2)
            return later

        self.router.atOnce = deliver
        answer = self.event("rid-9")
        self.assertIsInstance(answer, Deferred)
        self.assertEqual(self.traces._traces, {"rid-9": [(("corp.example/hs2",), 8), (("corp.example/other",), 2)]})
        self.traces.pop("rid-9", (("corp.example/other",), 2))
        self.assertEqual(self.traces.traceOf(event[0]), (("corp.example/hs2",), 8))
        later.callback(DeliveryStatus.DELIVERED)
        self.assertEqual(self.successResultOf(answer).code, 200)  # type: ignore[arg-type]
        self.assertEqual((self.traces._traces, self.traces.current), ({}, None))

        def boom(e: Event) -> DeliveryStatus:
            raise RuntimeError("boom")

        self.router.atOnce = boom
        self.assertEqual(self.event("rid-10").code, 500)  # type: ignore[union-attr]
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual((self.traces._traces, self.traces.current), ({}, None))


class TracesTests(SynchronousTestCase):
    """
    L{LinkTraces}: the trace of an event delivered from a link, for a link
    that forwards it.
    """

    def test_pushPop(self) -> None:
        """
        L{LinkTraces.push} and L{LinkTraces.pop} (the receiving side's hot
        path, no closure): a trace is seen while pushed; of two for the same
        event the latest is seen, and popping one leaves the other.
        """
        traces = LinkTraces()
        event = Message(CAROL, ALICE, "hi", routingId="rid-1")
        key = hopKey(event)
        first = traces.push(key, ("corp.example/hs2",), 8)
        self.assertEqual(traces.traceOf(event), (("corp.example/hs2",), 8))
        second = traces.push(key, ("corp.example/hs2", "corp.example/router"), 7)
        self.assertEqual(traces.traceOf(event), (("corp.example/hs2", "corp.example/router"), 7))
        traces.pop(key, second)
        self.assertEqual(traces.traceOf(event), (("corp.example/hs2",), 8))
        traces.pop(key, first)
        traces.pop(key, first)
        self.assertIsNone(traces.traceOf(event))
        self.assertEqual(traces._traces, {})

    def test_enter(self) -> None:
        """
        L{LinkTraces.enter} remembers a trace until the callable it returns
        is called.
        """
        traces = LinkTraces()
        event = Message(CAROL, ALICE, "hi")
        leave = traces.enter(event, ("corp.example/hs2",), 3)
        self.assertEqual(traces.traceOf(event), (("corp.example/hs2",), 3))
        leave()
        self.assertIsNone(traces.traceOf(event))


class HopTests(RawTestCase):
    """
    C{Via} and C{Max-Hops} stop loops.
    """

    def test_ownNameInVia(self) -> None:
        """
        A request that has passed through this server already is answered
        482 and not delivered.
        """
        connection, flush = self.raw()
        d = connection.request(encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2", "corp.example/hs1", "corp.example/hs2"], 8, "r"))
        flush()
        self.assertEqual(self.successResultOf(d).code, 482)
        self.assertEqual(self.server.router.events, [])
        self.assertTrue(self.messages("loop, this server is in Via"))

    def test_maxHopsZero(self) -> None:
        """
        A request with no hop left is answered 482; one with one hop left is
        delivered here.
        """
        connection, flush = self.raw()
        request = encodeRequest(Message(CAROL, ALICE, "hi"), ["corp.example/hs2"], 1, "r1")
        d0 = connection.request(attrs.evolve(request, headers=request.headers.with_("Max-Hops", "0").with_("Routing-Id", "r0")))
        d1 = connection.request(request)
        flush()
        self.assertEqual(self.successResultOf(d0).code, 482)
        self.assertEqual(self.successResultOf(d1).code, 200)

    def test_forwarded(self) -> None:
        """
        An event received over a link and forwarded over another carries on
        its C{Via} with this server added, and one hop fewer; with one hop
        left it cannot be forwarded (482).
        """
        # hs1's router forwards everything to a link to "router".
        onward = Server(configFor("router"), self.clock)
        forward = LinkClient(
            "server router",
            self.network.endpoint(onward),
            self.server.config.links,
            self.clock,
            hello("hs1"),
            self.server.traces,
            "corp.example/hs1",
        )
        forward.startService()
        self.addCleanup(self.stop, forward)
        self.server.router.answer = forward.deliver
        onward.locator.homes[ROMEO] = "x"
        received: list[Request] = []
        onward.receiver.handlers["MESSAGE"] = answering(received)
        connection, flush = self.raw("router")
        d = connection.request(encodeRequest(Message(ROMEO, ALICE, "hi"), ["corp.example/router"], 5, "r5"))
        flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        (request,) = received
        self.assertEqual(request.headers.getAll("Via"), ["corp.example/router", "corp.example/hs1"])
        self.assertEqual(request.headers.get("Max-Hops"), "4")
        d = connection.request(encodeRequest(Message(ROMEO, ALICE, "hi"), ["corp.example/router"], 1, "r1"))
        flush()
        self.assertEqual(self.successResultOf(d).code, 482)
        self.assertEqual(len(received), 1)

    def test_originated(self) -> None:
        """
        An event this server originates starts with its own C{Via} and
        C{max_hops}.
        """
        received: list[Request] = []
        self.server.receiver.handlers["MESSAGE"] = answering(received)
        client = self.client(maxHops=6)
        client.deliver(Message(CAROL, ALICE, "hi"))
        self.network.flush()
        (request,) = received
        self.assertEqual(request.headers.getAll("Via"), ["corp.example/hs2"])
        self.assertEqual(request.headers.get("Max-Hops"), "6")


class HelloTests(RawTestCase):
    """
    Who the peer is: the C{HELLO} exchange, and the certificate.
    """

    def test_unknownServer(self) -> None:
        """
        A peer naming no configured server of this domain is refused (403),
        logged, and the connection closed.
        """
        ready: list[LinkConnection] = []
        protocol = LinkConnection({}, self.clock, 10.0, hello=hello("hs9"), onReady=ready.append)

        class F:
            def buildProtocol(self, addr: Any) -> LinkConnection:
                return protocol

        self.network.endpoint(self.server).connect(F())  # type: ignore[arg-type]
        self.network.flush()
        self.clock.advance(0)
        self.network.flush()
        self.assertEqual(ready, [])
        self.assertFalse(protocol.connected)
        self.assertTrue(self.messages("'hs9' is not one of the other [servers] of corp.example"))

    def test_helloFirst(self) -> None:
        """
        Before C{HELLO}, an event request is answered 401.
        """
        protocol = LinkConnection({}, self.clock, 10.0)

        class F:
            def buildProtocol(self, addr: Any) -> LinkConnection:
                return protocol

        self.network.endpoint(self.server).connect(F())  # type: ignore[arg-type]
        d = protocol.request(encodeRequest(Message(CAROL, ALICE, "hi"), [], 8, "r"))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 401)

    def test_helloTimeout(self) -> None:
        """
        A connection without a C{HELLO} within C{request_timeout} is
        dropped.
        """
        protocol = LinkConnection({}, self.clock, 10.0)

        class F:
            def buildProtocol(self, addr: Any) -> LinkConnection:
                return protocol

        self.network.endpoint(self.server).connect(F())  # type: ignore[arg-type]
        self.network.flush()
        self.clock.advance(10)
        self.network.flush()
        self.assertFalse(protocol.connected)
        self.assertTrue(self.messages("no HELLO exchange within 10.0 s"))

    def test_addMethod(self) -> None:
        """
        More methods can be answered on links (a proxied session's
        requests); only after C{HELLO}, and never twice.
        """
        seen: list[tuple[LinkPeer | None, str | None]] = []

        def session(connection: LinkConnection, request: Request) -> Response:
            seen.append((connection.peer, request.headers.get("Session")))
            return Response(200, "OK", Headers())

        self.server.receiver.addMethod("SESSION", session)
        self.assertRaises(ValueError, self.server.receiver.addMethod, "SESSION", lambda c, r: Response(200, "OK", Headers()))
        client = self.client()
        d = client.request(Request("SESSION", "*", Headers((("Session", "s1"),))))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(seen, [(LinkPeer("corp.example", "hs2", frozenset({"home"})), "s1")])

    def test_unknownMethod(self) -> None:
        """
        An unknown method is answered 405.
        """
        client = self.client()
        d = client.request(Request("FROB", "*", Headers()))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 405)

    def test_identifyByCertificate(self) -> None:
        """
        A certificate maps a peer to the server whose C{tls_name} it names,
        or to the peer domain it names; a certificate for another name is
        refused.
        """
        authority = CertificateAuthority()
        config = configFor("hs1")
        _, hs2 = authority.issue(["hs2.corp.example"])
        _, router = authority.issue(["127.0.0.1.example"])
        _, partner = authority.issue(["partner.example"])
        self.assertEqual(identifyPeer(config, "corp.example", "hs2", hs2), LinkPeer("corp.example", "hs2", frozenset({"home"})))
        self.assertIn("not issued for hs2.corp.example", str(identifyPeer(config, "corp.example", "hs2", partner)))
        self.assertIn("not issued for 127.0.0.1", str(identifyPeer(config, "corp.example", "router", router)))
        self.assertEqual(identifyPeer(config, "PARTNER.example", "router", partner), LinkPeer("partner.example"))
        self.assertIn("not issued for other.example", str(identifyPeer(config, "other.example", None, partner)))
        self.assertIn("is not one of the other", str(identifyPeer(config, "corp.example", "hs1", hs2)))
        self.assertEqual(identifyPeer(config, None, "hs2", hs2), "HELLO without Domain")


class ListenerTests(SynchronousTestCase):
    """
    The accepting side's limits.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = Server(configFor("hs1"), self.clock)
        self.logged = captureLogs(self)

    def test_maxIncoming(self) -> None:
        """
        C{max_incoming} connections are accepted; one more is dropped and
        logged.
        """
        factory = self.server.factory
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        accepted = [factory.buildProtocol(address) for _ in range(2)]
        for p in accepted:
            self.assertIsInstance(p, LinkConnection)
            p.makeConnection(iosim.FakeTransport(p, True, address, address))  # type: ignore[union-attr]
        refused = factory.buildProtocol(address)
        self.assertNotIsInstance(refused, LinkConnection)
        transport = iosim.FakeTransport(refused, True, address, address)
        refused.makeConnection(transport)  # type: ignore[union-attr]
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("max_incoming" in formatEvent(e) for e in self.logged))
        accepted[0].connectionLost()  # type: ignore[union-attr]
        self.assertIsInstance(factory.buildProtocol(address), LinkConnection)

    def test_plaintextLoopbackOnly(self) -> None:
        """
        A plaintext listener takes connections from loopback addresses only.
        """
        factory = self.server.factory
        self.assertIsInstance(factory.buildProtocol(IPv6Address("TCP", "::1", 40001)), LinkConnection)
        self.assertNotIsInstance(factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40001)), LinkConnection)
        self.assertTrue(any("not a loopback address" in formatEvent(e) for e in self.logged))
        # From loopback to an address of the host that is not loopback.
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40002))
        transport = iosim.FakeTransport(connection, True, IPv4Address("TCP", "192.0.2.1", 5310), IPv4Address("TCP", "127.0.0.1", 40002))
        connection.makeConnection(transport)  # type: ignore[union-attr]
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("Plaintext link to" in formatEvent(e) for e in self.logged))


class FrameLimitTests(RawTestCase):
    """
    What a link takes from its peer is C{[links] max_headers} (and the
    other frame limits), on both sides of a link.
    """

    def test_maxHeaders(self) -> None:
        """
        With C{max_headers = 8}, a request of 8 header lines is taken and
        one of 9 is refused (C{431}, logged, and the connection closed, as
        on the native face).
        """
        self.server = Server(configFor("hs1", maxHeaders=8), self.clock)
        connection, flush = self.raw()
        request = encodeRequest(Message(CAROL, ALICE, "hi"), [], 8, "h1")

        def lines(frame: Request) -> int:
            # As sent: with Seq (and Content-Length, for a body).
            head = link.withSeq(link.serialiseUnsequenced(frame), 1).split(b"\r\n\r\n")[0]
            return head.count(b"\r\n")

        spare = 8 - lines(request)
        fits = attrs.evolve(request, headers=Headers(request.headers.items + tuple((f"X-{i}", "x") for i in range(spare))))
        over = attrs.evolve(fits, headers=Headers(fits.headers.items + (("X-More", "x"),)))
        self.assertEqual((lines(fits), lines(over)), (8, 9))
        taken = connection.request(fits)
        flush()
        self.assertEqual(self.successResultOf(taken).code, 200)
        refused = connection.request(over)
        flush()
        self.failureResultOf(refused, ConnectionLost)
        self.assertTrue(self.messages("431 Header Too Large: more than 8 headers"))

    def test_bothSides(self) -> None:
        """
        The connections a link client opens and those a listener accepts
        read with the limits of C{[links]}.
        """
        config = configFor("hs1", maxStartLineBytes=100, maxHeaderBytes=200, maxHeaders=3, maxBodyBytes=400)
        limits = link.linkLimits(config.links)
        self.assertEqual((limits.maxStartLineBytes, limits.maxHeaderBytes, limits.maxHeaders, limits.maxBodyBytes), (100, 200, 3, 400))
        self.assertEqual(link.LINK_LIMITS, link.linkLimits(LinksConfig()))
        server = Server(config, self.clock)
        accepted = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(accepted, LinkConnection)
        self.assertEqual(accepted._parser._limits, limits)
        client = LinkClient("server hs2", FakeEndpoint(self.network, server, "127.0.0.1"), config.links, self.clock, hello("hs1"), LinkTraces(), "corp.example/hs1")
        self.assertEqual(client._buildProtocol()._parser._limits, limits)


class RoutesTests(SynchronousTestCase):
    """
    L{LinkRoutes}: links by server name and by peer domain.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver({"_imgw._tcp.far.example": [(10, 0, 5330, "router.far.example")]}, {})
        self.server = Server(configFor("hs1"), self.clock)
        self.routes = LinkRoutes(self.server.config, MemoryReactorClock(), None, self.server.receiver, self.server.traces, resolver=self.resolver, clock=self.clock)
        self.routes.startService()
        self.addCleanup(self.routes.stopService)

    def test_interfaces(self) -> None:
        """
        L{LinkRoutes} provides L{ILinkRoutes}.
        """
        self.assertTrue(verifyObject(ILinkRoutes, self.routes))

    def test_toServer(self) -> None:
        """
        C{toServer} gives one link client per server, kept; an unknown name
        is a L{KeyError}; this server's own name is no link.
        """
        route = self.routes.toServer("hs2")
        self.assertIsInstance(route, LinkClient)
        self.assertIs(self.routes.toServer("hs2"), route)
        self.assertRaises(KeyError, self.routes.toServer, "hs9")
        self.failureResultOf(self.routes.toServer("hs1").deliver(Message(ALICE, CAROL, "hi")), ServiceUnavailable)

    def test_toServerByName(self) -> None:
        """
        A server's link client, once made, is found by the server's name
        alone (asked for with every message sent to that server: no key
        formatted), and is the one L{LinkRoutes.clients} lists.
        """
        route = self.routes.toServer("hs2")
        self.assertEqual(dict(self.routes.clients), {"server hs2": route})

        class NoKeys(dict[str, LinkClient]):
            def get(self, *args: Any) -> Any:
                raise AssertionError("looked up by key")

        self.patch(self.routes, "_clients", NoKeys(self.routes._clients))
        self.assertIs(self.routes.toServer("hs2"), route)

    def test_toDomain(self) -> None:
        """
        C{toDomain}: the static route first, then the C{_imgw._tcp} SRV
        records; a domain with neither (and this domain) has none, and is
        not looked up again for a while.
        """
        partner = self.successResultOf(self.routes.toDomain("partner.example"))
        self.assertIsInstance(partner, LinkClient)
        self.assertIs(self.successResultOf(self.routes.toDomain("partner.example")), partner)
        self.assertIsNone(self.successResultOf(self.routes.toDomain("corp.example")))
        self.assertIsNone(self.successResultOf(self.routes.toDomain("xmpp.example")))
        self.assertIsNone(self.successResultOf(self.routes.toDomain("xmpp.example")))
        self.assertEqual(self.resolver.asked.count("SRV _imgw._tcp.xmpp.example"), 1)

    def test_noRouteSeconds(self) -> None:
        """
        A domain without an C{_imgw._tcp} record is not looked up again for
        C{[links] no_route_seconds}: with 5, not at 4.9 s, again at 5 s.
        """
        config = configFor("hs1", noRouteSeconds=5.0)
        routes = LinkRoutes(config, MemoryReactorClock(), None, self.server.receiver, self.server.traces, resolver=self.resolver, clock=self.clock)
        self.assertIsNone(self.successResultOf(routes.toDomain("xmpp.example")))
        self.clock.advance(4.9)
        self.assertIsNone(self.successResultOf(routes.toDomain("xmpp.example")))
        self.assertEqual(self.resolver.asked.count("SRV _imgw._tcp.xmpp.example"), 1)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(routes.toDomain("xmpp.example")))
        self.assertEqual(self.resolver.asked.count("SRV _imgw._tcp.xmpp.example"), 2)

    def test_federationWithoutLinkRoute(self) -> None:
        """
        A router with these routes sends events for a domain with neither a
        static route nor an C{_imgw._tcp} record (an XMPP server's) to its
        default route (XMPP federation); a domain with a static route or
        an C{_imgw._tcp} record goes over a link instead.
        """
        from imgateway.router.router import Router
        from tests.test_router import RecordingRoute

        router = Router(domain="corp.example", serverName="hs1", locator=FakeLocator(), linkRoutes=self.routes)
        federation = RecordingRoute()
        router.setDefaultRoute(federation)
        juliet = Address("juliet", "xmpp.example")
        self.successResultOf(router.deliver(Message(ALICE, juliet, "over XMPP")))
        router.deliver(Message(ALICE, ROMEO, "over the static link")).addErrback(lambda f: None)
        self.failureResultOf(router.deliver(Message(ALICE, Address("far", "far.example"), "over SRV")), ServiceUnavailable)
        self.assertEqual([e.recipient for e in federation.events], [juliet])
        self.assertIn("SRV _imgw._tcp.xmpp.example", self.resolver.asked)

    def test_srvNeedsTLS(self) -> None:
        """
        A peer domain found by SRV is only ever reached over TLS: without a
        certificate, its route answers 503.
        """
        route = self.successResultOf(self.routes.toDomain("far.example"))
        assert route is not None
        self.failureResultOf(route.deliver(Message(ALICE, ROMEO, "hi")), ServiceUnavailable)

    def test_plaintextNeedsLoopback(self) -> None:
        """
        Without a certificate, a link to a server that is not on a loopback
        address is refused (its route answers 503).
        """
        config = attrs.evolve(
            self.server.config,
            servers={**SERVERS, "hs3": ServerConfig("hs3", frozenset({"home"}), link=HostPort("192.0.2.3", 5310))},
        )
        routes = LinkRoutes(config, MemoryReactorClock(), None, self.server.receiver, self.server.traces, clock=self.clock)
        self.failureResultOf(routes.toServer("hs3").deliver(Message(ALICE, CAROL, "hi")), ServiceUnavailable)

    def test_makeLinkServiceNeedsTLS(self) -> None:
        """
        Links without a certificate are refused at start-up unless plaintext
        loopback links are allowed.
        """
        config = configFor("hs1", allowPlaintextLoopback=False)
        e = self.assertRaises(ConfigError, makeLinkService, config, MemoryReactorClock(), FakeRouter(), FakeLocator())
        self.assertIn("certificate and private_key are required", str(e))
        made = makeLinkService(configFor("hs1"), MemoryReactorClock(), FakeRouter(), FakeLocator())
        self.assertIsInstance(made.routes, LinkRoutes)


class GatewayLinksTests(SynchronousTestCase):
    """
    L{imgateway.gateway.addLinks}: a gateway with C{[servers]} gets links
    under its service tree; a single-host gateway none.
    """

    def gateway(self, config: GatewayConfig) -> Any:
        from imgateway.testing import memoryGateway

        gateway = memoryGateway(Clock())
        return attrs.evolve(gateway, config=config)

    def test_singleHost(self) -> None:
        """
        Without C{[servers]}, C{[routes]} or link listeners, no links.
        """
        from twisted.application.service import MultiService

        from imgateway.gateway import addLinks

        config = attrs.evolve(configFor("hs1"), servers={}, routes={})
        top = MultiService()
        self.assertIsNone(addLinks(top, self.gateway(config), MemoryReactorClock(), resolver=FakeResolver({}, {})))
        self.assertEqual(list(top), [])

    def test_servers(self) -> None:
        """
        With C{[servers]}, the links run under the given service as
        C{links}, routed to the gateway's router.
        """
        from twisted.application.service import MultiService

        from imgateway.gateway import addLinks

        top = MultiService()
        links = addLinks(top, self.gateway(configFor("hs1")), MemoryReactorClock(), resolver=FakeResolver({}, {}))
        self.assertIs(top.getServiceNamed("links"), links.service)
        self.assertIsInstance(links.routes.toServer("hs2"), LinkClient)

    def test_dnsServers(self) -> None:
        """
        With C{[links] dns_servers}, the C{_imgw._tcp} look-ups ask those
        servers only (no C{/etc/hosts}, no C{/etc/resolv.conf}).
        """
        from twisted.application.service import MultiService
        from twisted.names import client

        from imgateway.gateway import addLinks

        config = configFor("hs1")
        config = attrs.evolve(config, links=attrs.evolve(config.links, dnsServers=(HostPort("127.0.0.1", 5353),)))
        links = addLinks(MultiService(), self.gateway(config), MemoryReactorClock())
        resolver = links.routes.resolver()
        asked = [r for r in resolver.resolvers if isinstance(r, client.Resolver)]
        self.assertEqual([r.servers for r in asked], [[("127.0.0.1", 5353)]])
        self.assertEqual([type(r).__name__ for r in resolver.resolvers], ["CacheResolver", "Resolver"])

    def test_stopClosesIncoming(self) -> None:
        """
        When the links stop, the incoming link connections are closed.
        """
        made = makeLinkService(configFor("hs1"), MemoryReactorClock(), FakeRouter(), FakeLocator())
        made.service.startService()
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        connection = made.acceptor.buildProtocol(address)
        transport = iosim.FakeTransport(connection, True, address, address)
        connection.makeConnection(transport)  # type: ignore[union-attr]
        made.service.stopService()
        self.assertTrue(transport.disconnecting)

    def test_noCertificate(self) -> None:
        """
        Links without a certificate, and without plaintext loopback links
        allowed, stop start-up with a L{ConfigError}.
        """
        from twisted.application.service import MultiService

        from imgateway.gateway import addLinks

        gateway = self.gateway(configFor("hs1", allowPlaintextLoopback=False))
        self.assertRaises(ConfigError, addLinks, MultiService(), gateway, MemoryReactorClock(), FakeResolver({}, {}))


class WireTests(SynchronousTestCase):
    """
    A link request is serialised once, whatever connection carries it:
    L{serialiseUnsequenced}, then L{withSeq} per connection.
    """

    def frames(self) -> list[Request | Response]:
        message = encodeRequest(Message(ALICE, CAROL, "héllo\r\n\r\nIMGW/1.0 200 OK"), ("corp.example/hs1",), 8, "r1")
        return [
            message,
            Request("PING", "*", Headers()),
            Response(200, "OK", Headers()),
            Response(486, "Busy Here", Headers((("Detail", "on the phone"), ("Alternate", "tel:+15550100")))),
        ]

    def test_sameBytesAsSerialise(self) -> None:
        """
        C{withSeq(serialiseUnsequenced(frame), n)} is exactly what
        L{serialise} writes for the frame with C{Seq: n} as its first
        header, and parses back to the frame with that C{Seq}.
        """
        for frame in self.frames():
            expected = serialise(attrs.evolve(frame, headers=Headers((("Seq", "4711"),) + frame.headers.items)))
            data = withSeq(serialiseUnsequenced(frame), 4711)
            self.assertEqual(data, expected)
            [parsed] = list(FrameParser().feed(data))
            assert isinstance(parsed, (Request, Response))
            self.assertEqual(parsed.seq, 4711)
            self.assertEqual(parsed.body, frame.body)

    def test_deliveredKept(self) -> None:
        """
        A delivery's answer is one response (L{DELIVERED}), whose bytes a
        connection keeps: they are those of a fresh C{200 OK}, and each
        answer carries the C{Seq} of its request.
        """
        self.assertIs(encodeResponse(DeliveryStatus.DELIVERED), DELIVERED)
        self.assertEqual(link._DELIVERED_BYTES, serialiseUnsequenced(Response(200, "OK", Headers())))
        transport = StringTransport()
        connection = LinkConnection({}, Clock(), 10.0)
        connection.makeConnection(transport)
        connection._respond(7, encodeResponse(DeliveryStatus.DELIVERED))
        connection._respond(8, encodeResponse(DeliveryStatus.DELIVERED))
        self.assertEqual(transport.value(), b"".join(serialise(Response(200, "OK", Headers((("Seq", str(n)),)))) for n in (7, 8)))

    def test_seqReplaced(self) -> None:
        """
        A C{Seq} the caller put in the frame (in any case) is dropped: the
        connection's is the only one.
        """
        frame = Request("PING", "*", Headers((("seq", "99"), ("Session", "s1"))))
        self.assertEqual(withSeq(serialiseUnsequenced(frame), 5), b"PING * IMGW/1.0\r\nSeq: 5\r\nSession: s1\r\n\r\n")

    def test_unsendable(self) -> None:
        """
        A frame that cannot be serialised raises L{ValueError} (the link
        client answers its sender with a server error, L{QueueAndTimeoutTests}).
        """
        self.assertRaises(ValueError, serialiseUnsequenced, Request("PING", "*", Headers((("Note", "a\r\nb"),))))


class CountingTransport(StringTransport):
    """
    A transport that keeps each write apart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class BatchedWriteTests(SynchronousTestCase):
    """
    What a link connection writes while it handles a read (the answers to
    the requests it brings, requests it sends meanwhile) goes out in one
    C{transport.write} at the end of the read: one TLS record, not one per
    frame; in the order written, and before the connection is closed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handled: list[Request] = []
        self.later: list[Deferred[Response]] = []
        self.connection = LinkConnection({"PING": self.ping, "WAIT": self.wait, "SEND": self.send}, self.clock, 10.0)
        self.transport = CountingTransport()
        self.connection.makeConnection(self.transport)

    def ping(self, connection: LinkConnection, request: Request) -> Response:
        self.handled.append(request)
        return Response(200, "OK", Headers((("Note", request.headers.get("Note") or ""),)))

    def wait(self, connection: LinkConnection, request: Request) -> Deferred[Response]:
        d: Deferred[Response] = Deferred()
        self.later.append(d)
        return d

    def send(self, connection: LinkConnection, request: Request) -> Response:
        connection.request(Request("PING", "*", Headers((("Note", "sent"),))))
        return Response(200, "OK", Headers())

    def request(self, seq: int, method: str = "PING", note: str = "") -> bytes:
        headers = (("Seq", str(seq)),) + ((("Note", note),) if note else ())
        return serialise(Request(method, "*", Headers(headers)))

    def answers(self, data: bytes) -> list[tuple[int, str | None]]:
        frames = list(FrameParser().feed(data))
        return [(f.seq, f.headers.get("Note")) for f in frames if isinstance(f, (Request, Response))]

    def test_oneWritePerRead(self) -> None:
        """
        Three requests in one read, answered at once: one write, with the
        three answers in order.
        """
        self.connection.dataReceived(b"".join(self.request(n, note=f"n{n}") for n in (1, 2, 3)))
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(self.answers(self.transport.value()), [(1, "n1"), (2, "n2"), (3, "n3")])

    def test_splitAnywhere(self) -> None:
        """
        However a stream of requests is cut into reads, every request is
        answered once, in order, and the answers parse.
        """
        stream = b"".join(self.request(n, note=f"n{n}") for n in range(1, 41))
        rng = random.Random(8)
        for _ in range(30):
            self.setUp()
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 25)))
            for start, end in zip([0] + cuts, cuts + [len(stream)]):
                self.connection.dataReceived(stream[start:end])
            self.assertEqual(self.answers(self.transport.value()), [(n, f"n{n}") for n in range(1, 41)])
            self.assertLessEqual(len(self.transport.writes), len(cuts) + 1)

    def test_answeredLater(self) -> None:
        """
        An answer that comes after the read is written when it comes.
        """
        self.connection.dataReceived(self.request(1, "WAIT") + self.request(2))
        self.assertEqual(self.answers(self.transport.value()), [(2, "")])
        self.later[0].callback(Response(200, "OK", Headers((("Note", "late"),))))
        self.assertEqual(len(self.transport.writes), 2)
        self.assertEqual(self.answers(self.transport.writes[1]), [(1, "late")])

    def test_requestsSentMeanwhile(self) -> None:
        """
        A request this side sends while it handles a read goes in the
        same write, where it was written.
        """
        self.connection.dataReceived(self.request(1) + self.request(2, "SEND") + self.request(3))
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(self.answers(self.transport.value()), [(1, ""), (1, "sent"), (2, None), (3, "")])

    def test_closedByFramingError(self) -> None:
        """
        A fatal framing error after a valid request: the request's answer
        and the error's are written before the connection is closed.
        """
        self.connection.dataReceived(self.request(1) + b"NOT A FRAME\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        codes = [f.code for f in FrameParser().feed(self.transport.value()) if isinstance(f, Response)]
        self.assertEqual(codes[0], 200)
        self.assertEqual(len(codes), 2)
        self.assertGreaterEqual(codes[1], 400)

    def test_nestedRead(self) -> None:
        """
        A read handled within another (a handler that feeds the
        connection) is answered in the same write, in order.
        """

        def feed(connection: LinkConnection, request: Request) -> Response:
            connection.dataReceived(self.request(2))
            return Response(200, "OK", Headers((("Note", "outer"),)))

        self.connection.handlers = {"PING": self.ping, "FEED": feed}
        self.connection.dataReceived(self.request(1, "FEED"))
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(self.answers(self.transport.value()), [(2, ""), (1, "outer")])


class GatheredAnswersTests(SynchronousTestCase):
    """
    What the answers of one link read make other connections write (a
    client's C{200}s) is gathered while the read is handled
    (L{imgateway.net.gather}) and written when it is done, however the
    read ends.
    """

    class Waiter:
        """
        A L{ResponseWaiter} that records whether writes were being gathered
        when it was told, and holds a frame for a connection then.
        """

        def __init__(self, seen: list[tuple[str, bool]], writer: Any, fails: bool = False) -> None:
            self.seen = seen
            self.writer = writer
            self.fails = fails

        def callback(self, response: Response) -> None:
            self.seen.append(("answer", GATHER.active))
            if self.writer not in GATHER.held:
                GATHER.held.append(self.writer)
            if self.fails:
                raise RuntimeError("the answer's handler failed")

        def errback(self, fail: BaseException) -> None:
            pass

    class Writer:
        def __init__(self, seen: list[tuple[str, bool]]) -> None:
            self.seen = seen

        def flushGathered(self) -> None:
            self.seen.append(("flushed", GATHER.active))

    def setUp(self) -> None:
        self.connection = LinkConnection({}, Clock(), 10.0, peer=LinkPeer("corp.example", "hs2"))
        self.connection.makeConnection(StringTransport())
        self.seen: list[tuple[str, bool]] = []
        self.writer = self.Writer(self.seen)
        self.addCleanup(lambda: self.assertEqual((GATHER.active, GATHER.held), (False, [])))

    def test_writtenAfterTheRead(self) -> None:
        """
        Each answer of a read of bare C{200}s is told while writes are
        gathered; what they held is written once, after the last.
        """
        for _ in range(3):
            self.connection.send(b"PING * IMGW/1.0\r\n\r\n", self.Waiter(self.seen, self.writer))
        self.connection.dataReceived(b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq for seq in (1, 2, 3)))
        self.assertEqual(self.seen, [("answer", True)] * 3 + [("flushed", False)])
        self.assertFalse(GATHER.active)

    def test_parsedAnswers(self) -> None:
        """
        Answers the parser reads (not only bare C{200}s) are gathered for
        in the same way.
        """
        for _ in range(2):
            self.connection.send(b"PING * IMGW/1.0\r\n\r\n", self.Waiter(self.seen, self.writer))
        self.connection.dataReceived(b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\nIMGW/1.0 480 Offline\r\nSeq: 2\r\n\r\n")
        self.assertEqual(self.seen, [("answer", True)] * 2 + [("flushed", False)])

    def test_failedAnswer(self) -> None:
        """
        An answer whose handler raises ends the read as before (the error
        goes to the reactor, which drops the connection), and what was held
        is still written.
        """
        self.connection.send(b"PING * IMGW/1.0\r\n\r\n", self.Waiter(self.seen, self.writer, fails=True))
        self.assertRaises(RuntimeError, self.connection.dataReceived, b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\n")
        self.assertEqual(self.seen, [("answer", True), ("flushed", False)])
        self.assertFalse(GATHER.active)

    def test_failedLinkWrite(self) -> None:
        """
        A write of the link connection itself that raises at the end of the
        read (its answers to the read's requests) still ends the gather, so
        that other connections' later reads are not all kept; what was
        held is written.
        """
        connection = self.connection

        class Answering(GatheredAnswersTests.Waiter):
            def callback(self, response: Response) -> None:
                super().callback(response)
                connection._write(b"IMGW/1.0 200 OK\r\nSeq: 7\r\n\r\n")

        def refuse(data: bytes) -> None:
            raise RuntimeError("the link's transport failed")

        connection.send(b"PING * IMGW/1.0\r\n\r\n", Answering(self.seen, self.writer))
        self.patch(connection.transport, "write", refuse)
        self.assertRaises(RuntimeError, connection.dataReceived, b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\n")
        self.assertEqual(self.seen, [("answer", True), ("flushed", False)])
        self.assertEqual((GATHER.active, GATHER.held), (False, []))
        self.assertIsNone(connection._batch)

    def test_withinAnotherRead(self) -> None:
        """
        A link read handled within another read being gathered for writes
        with the outer one: nothing is written before it ends.
        """
        self.connection.send(b"PING * IMGW/1.0\r\n\r\n", self.Waiter(self.seen, self.writer))
        self.assertTrue(GATHER.begin())
        try:
            self.connection.dataReceived(b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\n")
            self.assertEqual(self.seen, [("answer", True)])
        finally:
            GATHER.end()
        self.assertEqual(self.seen, [("answer", True), ("flushed", False)])


class GatheredLinkWritesTests(SynchronousTestCase):
    """
    What a link connection is made to write while another connection's
    read is handled (L{GATHER}: a client's read of ten C{MESSAGE}s for the
    peer's users) is written as the native face's writes are: the first
    frame at once, the frames after it kept and written in one
    C{transport.write} when the read is done, in order, before the read's
    reader returns.
    """

    def setUp(self) -> None:
        self.connection = LinkConnection({"PING": self.ping}, Clock(), 10.0, peer=LinkPeer("corp.example", "hs2"))
        self.transport = CountingTransport()
        self.connection.makeConnection(self.transport)
        self.answers: list[Response | BaseException] = []
        self.addCleanup(lambda: self.assertEqual((GATHER.active, GATHER.held), (False, [])))

    def ping(self, connection: LinkConnection, request: Request) -> Response:
        return Response(200, "OK", Headers((("Note", request.headers.get("Note") or ""),)))

    def callback(self, response: Response) -> None:
        self.answers.append(response)

    def errback(self, fail: BaseException) -> None:
        self.answers.append(fail)

    def frame(self, note: str) -> bytes:
        return serialiseUnsequenced(Request("PING", "*", Headers((("Note", note),))))

    def sendThree(self, prefix: str) -> None:
        """
        Write three frames, one each way a link connection writes: a
        request numbered here (L{LinkConnection.send}), one written with
        its C{Seq} in place (L{LinkConnection.sendNumbered}, as
        L{LinkClient.deliverThen} writes a message), an answer
        (L{LinkConnection._respond}).
        """
        connection = self.connection
        connection.send(self.frame(f"{prefix}1"), self)
        seq = connection._seq + 1
        connection.sendNumbered(withSeq(self.frame(f"{prefix}2"), seq), seq, self)
        connection._respond(99, Response(200, "OK", Headers((("Note", f"{prefix}3"),))))

    def notes(self, data: bytes) -> list[str | None]:
        return [f.headers.get("Note") for f in FrameParser().feed(data) if isinstance(f, (Request, Response))]

    def test_keptAfterTheFirst(self) -> None:
        """
        Within a read being gathered for, the first frame is written at
        once and those after it in one write when the read is done, in
        the order written.
        """
        self.assertTrue(GATHER.begin())
        try:
            self.sendThree("a")
            self.connection.send(self.frame("a4"), self)
            self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"]])
        finally:
            GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["a2", "a3", "a4"]])
        self.assertIsNone(self.connection._batch)

    def test_tenMessagesTwoWrites(self) -> None:
        """
        Ten messages of one read (L{LinkConnection.sendNumbered}) make two
        transport writes, not ten.
        """
        connection = self.connection
        self.assertTrue(GATHER.begin())
        try:
            for n in range(10):
                seq = connection._seq + 1
                connection.sendNumbered(withSeq(self.frame(f"m{n}"), seq), seq, self)
        finally:
            GATHER.end()
        self.assertEqual(len(self.transport.writes), 2)
        self.assertEqual(self.notes(self.transport.value()), [f"m{n}" for n in range(10)])

    def test_outsideAGather(self) -> None:
        """
        Outside a read being gathered for (a timer's C{PING}, an answer
        that comes later), each frame is written at once.
        """
        self.sendThree("a")
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["a2"], ["a3"]])
        self.assertIsNone(self.connection._batch)

    def test_eachReadItsFirst(self) -> None:
        """
        The first frame of each read is written at once, whatever the
        connection wrote in the reads before.
        """
        for prefix in "ab":
            self.assertTrue(GATHER.begin())
            try:
                self.sendThree(prefix)
            finally:
                GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["a2", "a3"], ["b1"], ["b2", "b3"]])

    def test_linkReadWhileKept(self) -> None:
        """
        A read of the link connection handled while it keeps frames (a
        test pumping two connections) adds its answers after them: nothing
        is written before the outer read is done.
        """
        self.assertTrue(GATHER.begin())
        try:
            self.sendThree("a")
            self.connection.dataReceived(serialise(Request("PING", "*", Headers((("Seq", "5"), ("Note", "read"))))))
            self.connection.send(self.frame("a4"), self)
            self.assertEqual(len(self.transport.writes), 1)
        finally:
            GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["a2", "a3", "read", "a4"]])

    def test_linkReadAfterTheFirst(self) -> None:
        """
        A read of the link connection handled after its first frame of the
        outer read, before it keeps any, writes its answers when it ends,
        after that frame; what is written after them is kept.
        """
        self.assertTrue(GATHER.begin())
        try:
            self.connection.send(self.frame("a1"), self)
            self.connection.dataReceived(serialise(Request("PING", "*", Headers((("Seq", "5"), ("Note", "read"))))))
            self.connection.send(self.frame("a2"), self)
            self.connection.send(self.frame("a3"), self)
            self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["read"]])
        finally:
            GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["read"], ["a2", "a3"]])

    def test_closedWhileKept(self) -> None:
        """
        A connection closed while it keeps frames writes them before it
        closes; an answer written after the close goes after them.
        """
        closedAt: list[bool] = []
        write = self.transport.write

        def recording(data: bytes) -> None:
            closedAt.append(self.transport.disconnecting)
            write(data)

        self.patch(self.transport, "write", recording)
        self.assertTrue(GATHER.begin())
        try:
            self.sendThree("a")
            self.connection.close()
            self.connection._respond(100, Response(200, "OK", Headers((("Note", "after"),))))
        finally:
            GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["a2", "a3"], ["after"]])
        self.assertEqual(closedAt, [False, False, True])
        self.assertIsNone(self.connection._batch)

    def test_lostWhileKept(self) -> None:
        """
        A connection lost while it keeps frames writes nothing more: their
        requests fail as those written and not answered do.
        """
        self.assertTrue(GATHER.begin())
        try:
            self.sendThree("a")
            self.connection.connectionLost(Failure(ConnectionDone()))
        finally:
            GATHER.end()
        self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"]])
        self.assertEqual([type(a) for a in self.answers], [ConnectionLost, ConnectionLost])
        self.assertIsNone(self.connection._batch)

    def test_failedWrite(self) -> None:
        """
        A write of kept frames that raises is logged; the other
        connections' kept frames are still written, and the connection
        keeps nothing more: the first frame of the next read is written at
        once.
        """
        other = LinkConnection({}, Clock(), 10.0)
        otherTransport = CountingTransport()
        other.makeConnection(otherTransport)

        def refuse(data: bytes) -> None:
            raise RuntimeError("the link's transport failed")

        self.assertTrue(GATHER.begin())
        try:
            self.sendThree("a")
            for note in ("o1", "o2"):
                other.send(self.frame(note), self)
            self.patch(self.transport, "write", refuse)
        finally:
            GATHER.end()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([self.notes(w) for w in otherTransport.writes], [["o1"], ["o2"]])
        self.assertIsNone(self.connection._batch)
        self.patch(self.transport, "write", self.transport.writes.append)
        self.assertTrue(GATHER.begin())
        try:
            self.connection.send(self.frame("b1"), self)
            self.assertEqual([self.notes(w) for w in self.transport.writes], [["a1"], ["b1"]])
        finally:
            GATHER.end()

    def test_keptMessagesResent(self) -> None:
        """
        L{LinkClient.deliverThen}'s messages kept by a connection lost
        before they are written stay in the link's queue, counted, and are
        sent on the next connection.
        """
        from tests.test_router import RecordingWaiter

        clock = Clock()
        endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312)
        client = LinkClient("server hs2", endpoint, attrs.evolve(LINKS, maxQueue=100), clock, Headers(), LinkTraces(), "corp.example/hs1")
        client._ready(self.connection)
        self.connection.markReady(LinkPeer("corp.example", "hs2"))
        waiters = [RecordingWaiter() for _ in range(3)]
        self.assertTrue(GATHER.begin())
        try:
            for n, waiter in enumerate(waiters):
                client.deliverThen(Message(ALICE, CAROL, f"m{n}"), waiter, 1)
            self.assertEqual((len(self.transport.writes), client.queued), (1, 3))
            self.connection.connectionLost(Failure(ConnectionDone()))
        finally:
            GATHER.end()
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(client.queued, 3)
        connection = LinkConnection({}, clock, 10.0, peer=LinkPeer("corp.example", "hs2"))
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.markReady(LinkPeer("corp.example", "hs2"))
        client._ready(connection)
        bodies = [f.body for f in FrameParser().feed(transport.value()) if isinstance(f, Request)]
        self.assertEqual(bodies, [b"m0", b"m1", b"m2"])
        connection.dataReceived(b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq for seq in (1, 2, 3)))
        self.assertEqual([w.results for w in waiters], [[DeliveryStatus.DELIVERED]] * 3)
        client.stopService()


class AnswerWhenFiredTests(SynchronousTestCase):
    """
    L{LinkConnection.answerWhenFired}: a handler that leaves its request's
    answer to the connection, written when an outcome fires.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.outcomes: list[Deferred[object]] = []
        self.connection = LinkConnection({"WAIT": self.wait}, self.clock, 10.0)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def wait(self, connection: LinkConnection, request: Request) -> Response:
        d: Deferred[object] = Deferred()
        self.outcomes.append(d)
        return connection.answerWhenFired(request, d, self.failed)

    def failed(self, error: BaseException) -> Response:
        if isinstance(error, ZeroDivisionError):
            raise error
        return Response(486, "Busy", Headers((("Detail", str(error)),)))

    def answers(self) -> list[tuple[int, int, str | None]]:
        frames = list(FrameParser().feed(self.transport.value()))
        self.transport.clear()
        return [(f.seq, f.code, f.headers.get("Detail")) for f in frames if isinstance(f, Response)]

    def test_answers(self) -> None:
        """
        Nothing is written until the outcome fires; then C{200} for a
        result (whatever it is), the answer C{failed} makes of an error, and
        C{500}, logged, when C{failed} raises. Each answer carries its
        request's C{Seq}.
        """
        for seq in (1, 2, 3):
            self.connection.dataReceived(serialise(Request("WAIT", "*", Headers((("Seq", str(seq)),)))))
        self.assertEqual(self.transport.value(), b"")
        first, second, third = self.outcomes
        third.errback(ZeroDivisionError())
        second.errback(ValueError("busy now"))
        first.callback("anything")
        self.assertEqual(self.answers(), [(3, 500, "internal error"), (2, 486, "busy now"), (1, 200, None)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class DeliverDecodedTests(SynchronousTestCase):
    """
    L{LinkClient.deliver}'s L{Deferred} fires with the delivery's outcome,
    decoded as the answer comes (no callback of its own on it).
    """

    def test_decodedAsItComes(self) -> None:
        """
        A C{200} fires it with L{DeliveryStatus.DELIVERED}, a C{486} fails
        it with L{UserBusy} and its alternate.
        """
        clock = Clock()
        endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312)
        client = LinkClient("server hs2", endpoint, LINKS, clock, Headers(), LinkTraces(), "corp.example/hs1")
        connection = LinkConnection({}, clock, 10.0, peer=LinkPeer("corp.example", "hs2"))
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.markReady(LinkPeer("corp.example", "hs2"))
        client._ready(connection)
        first = client.deliver(Message(ALICE, CAROL, "hi"))
        second = client.deliver(Message(ALICE, CAROL, "hi again"))
        connection.dataReceived(
            serialise(Response(200, "OK", Headers((("Seq", "1"),))))
            + serialise(Response(486, "Busy Here", Headers((("Seq", "2"), ("Alternate", "tel:+15550100")))))
        )
        self.assertIs(self.successResultOf(first), DeliveryStatus.DELIVERED)
        failure = self.failureResultOf(second, UserBusy)
        self.assertEqual(failure.value.alternate, "tel:+15550100")


class DeliverFastPathTests(SynchronousTestCase):
    """
    A delivery over a link is sent as it is queued (no look-up of it
    again, L{LinkClient._transmit}), and its bare C{200} fires it with
    L{DeliveryStatus.DELIVERED} without calling L{decodeResponse}; any other
    answer is decoded.
    """

    def test_calls(self) -> None:
        clock = Clock()
        endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312)
        client = LinkClient("server hs2", endpoint, LINKS, clock, Headers(), LinkTraces(), "corp.example/hs1")
        connection = LinkConnection({}, clock, 10.0, peer=LinkPeer("corp.example", "hs2"))
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.markReady(LinkPeer("corp.example", "hs2"))
        client._ready(connection)
        calls: list[str] = []
        transmit = client._transmit
        decode = link.decodeResponse  # type: ignore[attr-defined]

        def countingTransmit(ident: int) -> None:
            calls.append("_transmit")
            transmit(ident)

        def countingDecode(response: Response) -> DeliveryStatus:
            calls.append("decodeResponse")
            return decode(response)

        client._transmit = countingTransmit  # type: ignore[method-assign]
        self.patch(link, "decodeResponse", countingDecode)
        first = client.deliver(Message(ALICE, CAROL, "hi"))
        second = client.deliver(Message(ALICE, CAROL, "hi again"))
        self.assertEqual([f.seq for f in FrameParser().feed(transport.value()) if isinstance(f, Request)], [1, 2])
        connection.dataReceived(serialise(Response(200, "OK", Headers((("Seq", "1"),)))))
        self.assertIs(self.successResultOf(first), DeliveryStatus.DELIVERED)
        self.assertEqual(calls, [])
        connection.dataReceived(serialise(Response(486, "Busy Here", Headers((("Seq", "2"),)))))
        self.failureResultOf(second, UserBusy)
        self.assertEqual(calls, ["decodeResponse"])


class BareDeliveredTests(SynchronousTestCase):
    """
    A read made only of bare C{200}s (as a link writes L{DELIVERED}) is
    taken without the parser, with the results the parser gives.
    """

    def answers(self, chunks: list[bytes], requests: int) -> list[tuple[int, int, str, tuple[tuple[str, str], ...], bytes]]:
        """
        Send C{requests} requests on a connection, feed it C{chunks}, and
        return each answer: its request's C{Seq}, code, reason, headers
        other than C{Seq}, and body, in the order they came.
        """
        connection = LinkConnection({}, Clock(), 10.0, peer=LinkPeer("corp.example", "hs2"))
        connection.makeConnection(StringTransport())
        answers: list[tuple[int, int, str, tuple[tuple[str, str], ...], bytes]] = []
        for seq in range(1, requests + 1):
            d = connection.request(Request("PING", "*", Headers()))

            def answered(r: Response, seq: int) -> None:
                answers.append((seq, r.code, r.reason, tuple(i for i in r.headers.items if i[0] != "Seq"), r.body))

            d.addCallback(answered, seq)
        for chunk in chunks:
            connection.dataReceived(chunk)
        return answers

    def test_sameAsParser(self) -> None:
        """
        Over fuzzed streams of responses (bare C{200}s, C{200}s with
        headers or a body, errors, a C{Seq} with a leading zero or too
        large, unknown or repeated, keep-alive blank lines), cut into
        chunks at random, each request gets the answer the parser reads
        for it, in the same order.
        """
        rng = random.Random(20261205)
        fast = 0
        for i in range(600):
            frames = []
            allBare = rng.random() < 0.3
            for _ in range(rng.randint(1, 12)):
                seq = rng.choice([rng.randint(1, 15), rng.randint(1, 15), 999999999, 1000000000, 2**31 - 1])
                kind = 0 if allBare else rng.randrange(6)
                if kind < 3:
                    frames.append(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq)
                elif kind == 3:
                    frames.append(b"IMGW/1.0 200 OK\r\nSeq: 0%d\r\n\r\n" % (seq % 100))
                elif kind == 4:
                    frames.append(serialise(Response(rng.choice([200, 404, 503]), "X", Headers((("Seq", str(seq)), ("Detail", "d"))), rng.choice([b"", b"{}"]))))
                else:
                    frames.append(b"\r\n" + b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq)
            stream = b"".join(frames)
            cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randint(0, 3), len(stream) - 1)))
            if rng.random() < 0.5:
                # Whole frames per read, as a busy link mostly gets them.
                cuts = sorted(rng.sample([sum(map(len, frames[:k])) for k in range(1, len(frames))], min(2, len(frames) - 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            expected = []
            waiting = set(range(1, 16))
            for item in FrameParser(link.LINK_LIMITS).feed(stream):
                assert isinstance(item, Response)
                if item.seq in waiting:
                    waiting.discard(item.seq)
                    expected.append((item.seq, item.code, item.reason, tuple(h for h in item.headers.items if h[0] != "Seq"), item.body))
            self.assertEqual(self.answers(chunks, 15), expected, chunks)
            fast += sum(1 for c in chunks if FrameParser(link.LINK_LIMITS).takeBareOKs(c) is not None)
        # The fast path was taken for many reads.
        self.assertGreater(fast, 150)

    def test_inOrderRunsSameAsParser(self) -> None:
        """
        Over fuzzed streams of mostly in-order bare C{200}s (the run a busy
        link reads, L{FrameParser.bareOKRun}), with answers taken out of
        order, repeated or unknown, a C{Seq} at or past the largest a bare
        C{200} has (10**9 - 1) and the sequence numbers wrapping, other
        answers and blank lines in the middle of a run, cut into reads
        anywhere or between frames: each request gets the answer the
        parser reads for it, in the same order; and the run is recognised
        for many reads.
        """
        rng = random.Random(20261206)
        runs = 0
        for i in range(800):
            start = rng.choice([0, 0, 0, rng.randint(1, 50), 10**9 - 8, 2**31 - 5])
            requests = rng.randint(1, 12)
            seqs = [(start + k) % (2**31 - 1) + 1 for k in range(requests)]
            answering = list(seqs)
            if rng.random() < 0.3:
                # Some answered out of order.
                a, b = rng.randrange(requests), rng.randrange(requests)
                answering[a], answering[b] = answering[b], answering[a]
            if rng.random() < 0.2:
                # One repeated, or one answering nothing.
                answering.insert(rng.randrange(len(answering) + 1), rng.choice([seqs[0], seqs[-1] + 1, 10**9]))
            frames = [b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq for seq in answering]
            if rng.random() < 0.3:
                # Something else in the middle of a run.
                k = rng.randrange(len(frames))
                seq = answering[k]
                frames[k] = rng.choice(
                    [
                        serialise(Response(rng.choice([200, 404, 503]), "X", Headers((("Seq", str(seq)), ("Detail", "d"))))),
                        serialise(Response(200, "OK", Headers((("Seq", str(seq)),)), b"{}")),
                        b"\r\n" + frames[k],
                        b"IMGW/1.0 200 OK\r\nSeq: 0%d\r\n\r\n" % (seq % 100),
                    ]
                )
            stream = b"".join(frames)
            if rng.random() < 0.5:
                # Whole frames per read, as a busy link mostly gets them.
                cuts = sorted(rng.sample([sum(map(len, frames[:k])) for k in range(1, len(frames))], min(rng.randint(0, 2), len(frames) - 1)))
            else:
                cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randint(0, 3), len(stream) - 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            expected = []
            waiting = set(seqs)
            for item in FrameParser(link.LINK_LIMITS).feed(stream):
                assert isinstance(item, Response)
                if item.seq in waiting:
                    waiting.discard(item.seq)
                    expected.append((item.seq, item.code, item.reason, tuple(h for h in item.headers.items if h[0] != "Seq"), item.body))
            connection = LinkConnection({}, Clock(), 10.0, peer=LinkPeer("corp.example", "hs2"))
            connection.makeConnection(StringTransport())
            connection._seq = start
            parser = connection._parser
            found: list[int] = []

            class Counting:
                def __getattr__(self, name: str) -> Any:
                    return getattr(parser, name)

                def bareOKRun(self, data: bytes, first: int, most: int) -> int:
                    count = parser.bareOKRun(data, first, most)
                    found.append(count)
                    return count

            connection._parser = Counting()  # type: ignore[assignment]
            answers: list[tuple[int, int, str, tuple[tuple[str, str], ...], bytes]] = []
            for seq in seqs:
                d = connection.request(Request("PING", "*", Headers()))

                def answered(r: Response, seq: int) -> None:
                    answers.append((seq, r.code, r.reason, tuple(h for h in r.headers.items if h[0] != "Seq"), r.body))

                d.addCallback(answered, seq)
            for chunk in chunks:
                connection.dataReceived(chunk)
            self.assertEqual(answers, expected, chunks)
            runs += sum(1 for count in found if count)
        # The run was recognised for many reads.
        self.assertGreater(runs, 300)

    def test_lostInRun(self) -> None:
        """
        When an answer's callback in a run of bare C{200}s loses the
        connection, the later requests of the run fail with
        L{ConnectionLost} once, and are not answered as well.
        """
        connection = LinkConnection({}, Clock(), 10.0, peer=LinkPeer("corp.example", "hs2"))
        connection.makeConnection(StringTransport())
        first = connection.request(Request("PING", "*", Headers()))
        second = connection.request(Request("PING", "*", Headers()))
        first.addCallback(lambda r: connection.connectionLost(Failure(ConnectionDone())))
        connection.dataReceived(b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\nIMGW/1.0 200 OK\r\nSeq: 2\r\n\r\n")
        self.successResultOf(first)
        self.failureResultOf(second, ConnectionLost)

    def test_partialFrameFirst(self) -> None:
        """
        A read of bare C{200}s that continues a frame cut by the previous
        read (here: its body) goes to the parser, which completes that
        frame with it.
        """
        bare = b"IMGW/1.0 200 OK\r\nSeq: 2\r\n\r\n"
        head = b"IMGW/1.0 200 OK\r\nSeq: 1\r\nContent-Length: %d\r\n\r\n" % len(bare)
        answers = self.answers([head, bare, b"IMGW/1.0 200 OK\r\nSeq: 3\r\n\r\n"], 3)
        self.assertEqual(answers, [(1, 200, "OK", (), bare), (3, 200, "OK", (), b"")])


class MessageReaderTests(SynchronousTestCase):
    """
    On the accepting side, the link C{MESSAGE}s a peer writes are read
    without the parser (L{link.LinkFrameReader}) and handed to the receiver
    decoded (L{LinkReceiver.messageReceived}), with the same answers,
    deliveries and log lines as when every frame is parsed.
    """

    def run_(
        self, chunks: list[bytes], fast: bool, ready: bool = True, answer: Callable[[Event], Deferred[DeliveryStatus]] | None = None
    ) -> tuple[bytes, list[Event], list[str], bool, int]:
        """
        Feed C{chunks} to a connection of a fresh receiver (C{hs1}, peer
        C{hs2}, C{max_queue} 3), with the reader or without.

        @return: What the connection wrote, what the router was given, the
            log lines, whether the connection is closing, and how many
            messages the reader handed over decoded.
        """
        clock = Clock()
        server = Server(configFor("hs1"), clock)
        if answer is not None:
            server.router.answer = answer
        logged = captureLogs(self)
        event, decoded = server.receiver.messageHandlers
        taken: list[object] = []

        def counting(connection: LinkConnection, request: Any) -> Any:
            taken.append(request)
            return decoded(connection, request)

        connection = LinkConnection(server.receiver.handlers, clock, 10.0, limits=link.LINK_LIMITS, onMessage=(event, counting) if fast else None)
        transport = StringTransport()
        connection.makeConnection(transport)
        if ready:
            connection.markReady(LinkPeer("corp.example", "hs2", frozenset({"home"})))
        for chunk in chunks:
            connection.dataReceived(chunk)
        return transport.value(), list(server.router.events), [formatEvent(e) for e in logged], transport.disconnecting, len(taken)

    def request(self, rng: random.Random, seq: int) -> bytes:
        """
        A request as a peer sends it: mostly link messages (accepted, or
        refused by the origination rule, the decoding, the hop checks, as
        duplicates), sometimes another request or a broken frame.
        """
        kind = rng.randrange(10)
        if kind < 7:
            message = Message(rng.choice([CAROL, CAROL, ALICE, ROMEO]), ALICE, rng.choice(["hi", "", "☃"]), routingId=f"r{rng.randrange(6)}")
            via = rng.choice([["corp.example/hs2"], ["corp.example/hs2"], ["corp.example/hs1"], []])
            data = encodeMessage(message, via, rng.choice([8, 8, 1]), message.routingId)
            if rng.random() < 0.2:
                data = data.replace(b"Timestamp: ", rng.choice([b"Timestamp: x", b"Timestamp:  "]))
            elif rng.random() < 0.1:
                data = data.replace(b"Routing-Id", b"Max-Hops: 0\r\nRouting-Id")
            return withSeq(data, seq)
        if kind == 7:
            return serialise(encodeRequest(PresenceUpdate(CAROL, ALICE, Presence(PresenceState.AWAY)), ["corp.example/hs2"], 8, f"n{seq}")).replace(
                b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1
            )
        if kind == 8:
            return serialise(Request(rng.choice(["PING", "NOPE"]), "*", Headers((("Seq", str(seq)),))))
        return rng.choice([b"MESSAGE im:alice@corp.example IMGW/1.0\r\n\r\n", b"MESSAGE \r\n\r\n"])

    def test_sameAsParsed(self) -> None:
        """
        Over fuzzed streams of requests cut into reads at random, the
        connection writes the same bytes, the router gets the same events
        and the same lines are logged with the reader as without; and the
        reader took most messages.
        """
        rng = random.Random(20261205)
        taken = 0
        for _ in range(150):
            stream = b"".join(self.request(rng, seq) for seq in range(1, rng.randint(2, 12)))
            cuts = sorted(set(rng.sample(range(1, len(stream)), min(rng.randint(0, 4), len(stream) - 1))))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            *fast, count = self.run_(chunks, True)
            *parsed, none = self.run_(chunks, False)
            self.assertEqual(fast, parsed, chunks)
            self.assertEqual(none, 0)
            taken += count
        self.assertGreater(taken, 200)

    def test_limitsAndPeer(self) -> None:
        """
        A message read without the parser is answered 401 before C{HELLO},
        503 past C{max_queue} requests in progress (logged once), 400 when
        its decoding fails (logged), as the parsed one.
        """
        messages = [withSeq(encodeMessage(Message(CAROL, ALICE, "hi", routingId=f"r{n}"), ["corp.example/hs2"], 8, f"r{n}"), n) for n in range(1, 6)]
        bad = withSeq(encodeMessage(Message(CAROL, ALICE, "hi"), [], 8, "rb").replace(b"Timestamp: ", b"Timestamp: x"), 6)
        cases: list[tuple[list[bytes], bool, Callable[[Event], Deferred[DeliveryStatus]] | None]] = [
            ([b"".join(messages)], False, None),
            ([b"".join(messages) + bad], True, lambda e: Deferred()),
            ([bad], True, None),
        ]
        codes: list[list[int]] = []
        for chunks, ready, answer in cases:
            *fast, count = self.run_(chunks, True, ready, answer)
            *parsed, _ = self.run_(chunks, False, ready, answer)
            self.assertEqual(fast, parsed)
            self.assertEqual(count, len(FrameParser(link.LINK_LIMITS).feed(b"".join(chunks))))
            written = fast[0]
            assert isinstance(written, bytes)
            codes.append([f.code for f in FrameParser().feed(written) if isinstance(f, Response)])
        self.assertEqual(codes, [[401] * 5, [503, 503, 503], [400]])
        logged = fast[2]
        assert isinstance(logged, list)
        self.assertEqual(len([m for m in logged if "MESSAGE refused (400)" in m]), 1)

    def test_handlerReplaced(self) -> None:
        """
        While C{MESSAGE} is answered by another handler than the
        receiver's, messages are parsed and given to it.
        """
        received: list[Request] = []
        clock = Clock()
        server = Server(configFor("hs1"), clock)
        connection = LinkConnection(server.receiver.handlers, clock, 10.0, onMessage=server.receiver.messageHandlers)
        connection.makeConnection(StringTransport())
        connection.markReady(LinkPeer("corp.example", "hs2", frozenset({"home"})))
        connection.handlers = {"MESSAGE": answering(received)}
        connection.dataReceived(withSeq(encodeMessage(Message(CAROL, ALICE, "hi"), [], 8, "r1"), 1))
        self.assertEqual([r.method for r in received], ["MESSAGE"])
        self.assertEqual(server.router.events, [])

    def test_acceptedLinksReadMessages(self) -> None:
        """
        The connections a link listener accepts read messages without the
        parser; those a link client opens (whose peer sends no messages)
        do not.
        """
        server = Server(configFor("hs1"), Clock())
        accepted = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        assert isinstance(accepted, LinkConnection)
        self.assertEqual(accepted._onMessage, server.receiver.messageHandlers)
        client = LinkClient("server hs1", FakeEndpoint(Network(Clock()), server, "127.0.0.1"), LINKS, Clock(), hello("hs2"), LinkTraces(), "corp.example/hs2")
        self.assertIsNone(client._buildProtocol()._onMessage)

    def test_deliveredAtOnceInTheReadLoop(self) -> None:
        """
        Link C{MESSAGE}s the router delivers at once are answered within the
        read's loop, without L{LinkConnection._handle} or
        L{LinkConnection._respond}: the same bytes, in one write, as a
        connection that parses them and answers each the general way.
        """

        class AtOnce(FakeRouter):
            def deliverAtOnce(self, event: Event) -> DeliveryStatus:
                self.events.append(event)
                return DeliveryStatus.DELIVERED

        data = b"".join(
            withSeq(encodeMessage(m, ("corp.example/hs2",), 8, m.routingId), n)
            for n, m in enumerate((Message(CAROL, ALICE, f"hi {n}") for n in range(3)), start=7)
        )
        written: list[bytes] = []
        calls: list[str] = []
        for fast in (True, False):
            clock = Clock()
            router = AtOnce()
            # carol's home remembered: the origination rule answers at once.
            locator = DirectoryHomeLocator(MemoryDirectory([AccountRecord(CAROL, "hs2", "", True, "")]), clock, 30.0)
            self.successResultOf(locator.homeOf(CAROL))
            receiver = LinkReceiver(configFor("hs1"), router, locator, clock, LinkTraces())
            connection = LinkConnection(receiver.handlers, clock, 10.0, onMessage=receiver.messageHandlers if fast else None)
            for name in ("_handle", "_respond"):
                real = getattr(connection, name)

                def counting(*args: Any, _name: str = name, _real: Any = real) -> Any:
                    calls.append(_name)
                    return _real(*args)

                setattr(connection, name, counting)
            transport = CountingTransport()
            connection.makeConnection(transport)
            connection.markReady(LinkPeer("corp.example", "hs2", frozenset({"home"})))
            connection.dataReceived(data)
            self.assertEqual(len(transport.writes), 1)
            self.assertEqual(len(router.events), 3)
            written.append(transport.value())
            if fast:
                self.assertEqual(calls, [])
        self.assertEqual(calls, ["_handle", "_respond"] * 3)
        self.assertEqual(written[0], written[1])
        self.assertEqual(written[0], b"".join(link._DELIVERED_WITH_SEQ % n for n in (7, 8, 9)))

    def test_deliveredBytes(self) -> None:
        """
        A C{200} answering a request is what L{withSeq} makes of
        L{DELIVERED}, whatever its C{Seq}.
        """
        for seq in (1, 9, 10, 12345, 2**31 - 1):
            self.assertEqual(link._DELIVERED_WITH_SEQ % seq, withSeq(link.serialiseUnsequenced(DELIVERED), seq))


class DeliverThenTests(LinkTestCase):
    """
    L{LinkClient.deliverThen}: a message delivered over the link with its
    outcome told to a waiter in place of a L{Deferred}, with what
    L{LinkClient.deliver}'s L{Deferred} gives: the same bytes, statuses,
    queue limit and time limit.
    """

    def outcome(self, results: list[object]) -> object:
        """
        @return: What a waiter or a L{Deferred} was given: the status, or
            the failure's type, text and alternate.
        """
        [result] = results
        if isinstance(result, Failure):
            return (type(result.value), str(result.value), getattr(result.value, "alternate", None))
        return result

    def test_sameOutcomes(self) -> None:
        """
        For each answer of the receiving side (200, 404, 480, 403, 486 with
        its alternate, 413, 429, 503, 500, an unexpected failure there),
        the waiter is told what L{LinkClient.deliver}'s L{Deferred} fires
        with, once.
        """
        from tests.test_router import RecordingWaiter

        answers: list[DeliveryStatus | Exception] = [
            DeliveryStatus.DELIVERED,
            NoSuchUser("no such user"),
            UserOffline("alice@corp.example is offline"),
            NotAuthorised("no"),
            UserBusy("busy", "tel:+15550100"),
            TooLarge("too large"),
            RateLimited("slow down"),
            ServiceUnavailable("later"),
            ServerError("internal error"),
            RuntimeError("boom"),
        ]
        client = self.client()
        for answer in answers:
            self.server.router.answer = lambda e: succeed(answer) if isinstance(answer, DeliveryStatus) else fail(answer)
            waiter = RecordingWaiter()
            client.deliverThen(Message(CAROL, ALICE, "hi"), waiter)
            d = client.deliver(Message(CAROL, ALICE, "hi"))
            self.assertEqual(waiter.results, [])
            self.network.flush()
            self.assertEqual(self.outcome(waiter.results), self.outcome(_fired(d)), answer)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(client.queued, 0)

    def test_sameBytes(self) -> None:
        """
        A message is written on the link as L{LinkClient.deliver} writes
        it, and its bare C{200} tells the waiter L{DeliveryStatus.DELIVERED}.
        """
        from tests.test_router import RecordingWaiter

        written = []
        message = Message(ALICE, CAROL, "hi")
        for then in (False, True):
            clock = Clock()
            endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312)
            client = LinkClient("server hs2", endpoint, LINKS, clock, Headers(), LinkTraces(), "corp.example/hs1")
            connection = LinkConnection({}, clock, 10.0, peer=LinkPeer("corp.example", "hs2"))
            transport = StringTransport()
            connection.makeConnection(transport)
            connection.markReady(LinkPeer("corp.example", "hs2"))
            client._ready(connection)
            waiter = RecordingWaiter()
            if then:
                client.deliverThen(message, waiter)
            else:
                client.deliver(message).addBoth(waiter.callback)
            written.append(transport.value())
            connection.dataReceived(b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\n")
            self.assertEqual(waiter.results, [DeliveryStatus.DELIVERED])
        self.assertEqual(written[0], written[1])

    def test_queueAndTimeout(self) -> None:
        """
        With the link down, C{max_queue} messages wait and one more is told
        503 at once (logged as a full queue); the waiting ones are told 503
        once C{request_timeout} has passed, not before.
        """
        from tests.test_router import RecordingWaiter

        self.server.up = False
        client = self.client(maxQueue=2, requestTimeout=10.0)
        waiting = [RecordingWaiter() for _ in range(2)]
        for waiter in waiting:
            client.deliverThen(Message(CAROL, ALICE, "hi"), waiter)
        refused = RecordingWaiter()
        client.deliverThen(Message(CAROL, ALICE, "one more"), refused)
        self.assertIn("2 requests waiting", self.outcome(refused.results)[1])  # type: ignore[index]
        self.assertTrue(self.messages("(max_queue); 503"))
        self.clock.advance(9.9)
        self.assertEqual([w.results for w in waiting], [[], []])
        self.clock.advance(0.1)
        for waiter in waiting:
            self.assertEqual(self.outcome(waiter.results)[:2], (ServiceUnavailable, "no answer from server hs1 within 10 s"))  # type: ignore[index]
        self.assertEqual(client.queued, 0)

    def test_resentAndStopped(self) -> None:
        """
        A message whose connection is lost is sent again once the link is
        back, and its waiter told the answer once; one still waiting when
        the link stops is told 503.
        """
        from tests.test_router import RecordingWaiter

        client = self.client()
        pending: Deferred[DeliveryStatus] = Deferred()
        self.server.router.answer = lambda e: pending
        waiter = RecordingWaiter()
        client.deliverThen(Message(CAROL, ALICE, "hi"), waiter)
        self.network.flush()
        self.drop()
        self.clock.advance(1)
        self.network.flush()
        self.assertEqual(waiter.results, [])
        # Delivered once: the receiver answers the message sent again when
        # its delivery ends.
        pending.callback(DeliveryStatus.DELIVERED)
        self.network.flush()
        self.assertEqual(waiter.results, [DeliveryStatus.DELIVERED])
        self.assertEqual(len(self.server.router.events), 1)
        self.server.up = False
        self.drop()
        stopped = RecordingWaiter()
        client.deliverThen(Message(CAROL, ALICE, "later"), stopped)
        client.stopService()
        self.assertEqual(self.outcome(stopped.results)[0], ServiceUnavailable)  # type: ignore[index]
        self.assertEqual(waiter.results, [DeliveryStatus.DELIVERED])

    def sameBytesClients(self) -> list[tuple[LinkClient, LinkConnection, StringTransport]]:
        """
        Two link clients, each with its connection up on a
        L{StringTransport}: one for L{LinkClient.deliverThen}, one for
        L{LinkClient.deliver}.
        """
        made = []
        for _ in range(2):
            clock = Clock()
            endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312)
            client = LinkClient("server hs2", endpoint, attrs.evolve(LINKS, maxQueue=100), clock, Headers(), LinkTraces(), "corp.example/hs1")
            made.append((client, self.connect(client, clock)))
        return [(client, connection, transport) for client, (connection, transport) in made]

    def connect(self, client: LinkClient, clock: Clock, seq: int = 0) -> tuple[LinkConnection, StringTransport]:
        """
        Bring C{client}'s link up on a new connection whose last C{Seq}
        was C{seq}.
        """
        connection = LinkConnection({}, clock, 10.0, peer=LinkPeer("corp.example", "hs2"))
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.markReady(LinkPeer("corp.example", "hs2"))
        connection._seq = seq
        client._ready(connection)
        return connection, transport

    def test_seqInPlace(self) -> None:
        """
        A message sent with a hop count (a router's, for the hop it sends
        it on) is written with its C{Seq} in place (no L{LinkConnection.send}):
        the bytes L{LinkClient.deliver} writes for the message with that
        hop count, in every shape (the usual one, another content type, a
        mark, a long body), with C{Seq} wrapping past L{MAX_SEQ}; the bare
        C{200}s answer them.
        """
        from tests.test_router import RecordingWaiter

        messages = [
            Message(ALICE, CAROL, "hi", timestamp=1767225600.125),
            Message(ALICE, CAROL, "hi", contentType="text/html"),
            Message(ALICE, CAROL, "", mark=MessageMark.AUTO_REPLY, hops=3),
            Message(ALICE, CAROL, "x\x00" * 3000),
        ]
        (then, thenConnection, thenWritten), (plain, _, plainWritten) = self.sameBytesClients()
        thenConnection._seq = MAX_SEQ - 2
        plain.connection._seq = MAX_SEQ - 2  # type: ignore[union-attr]
        self.patch(thenConnection, "send", lambda *a: self.fail("sent with withSeq"))
        waiters = []
        for message in messages:
            waiter = RecordingWaiter()
            then.deliverThen(message, waiter, message.hops + 1)
            waiters.append(waiter)
            plain.deliver(attrs.evolve(message, hops=message.hops + 1))
        self.assertEqual(thenWritten.value(), plainWritten.value())
        self.assertEqual(sorted(thenConnection._outstanding), [1, 2, MAX_SEQ - 1, MAX_SEQ])
        # Each request made without its __init__ has every slot its
        # __init__ sets, with the values it would set.
        for (ident, item), message, waiter in zip(then._pending.items(), messages, waiters):
            made = link._Outgoing(item.encoded, waiter, item.deadline, decodeResponse, then, ident, item.seq, None, message)
            made.connection = thenConnection
            self.assertEqual(
                {name: getattr(item, name) for name in link._Outgoing.__slots__},
                {name: getattr(made, name) for name in link._Outgoing.__slots__},
            )
        thenConnection.dataReceived(b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq for seq in (MAX_SEQ - 1, MAX_SEQ, 1, 2)))
        self.assertEqual([w.results for w in waiters], [[DeliveryStatus.DELIVERED]] * 4)

    def test_resentWithoutItsSeq(self) -> None:
        """
        A message written with its C{Seq} in place whose connection is lost
        is sent on the next with that connection's C{Seq} alone, as
        L{LinkClient.deliver}'s resend is; one sent while the connection
        is closing is written once the link is back.
        """
        from tests.test_router import RecordingWaiter

        (then, thenConnection, _), (plain, plainConnection, _) = self.sameBytesClients()
        message = Message(ALICE, CAROL, "hi", timestamp=1767225600.125)
        waiter = RecordingWaiter()
        then.deliverThen(message, waiter, 1)
        plain.deliver(attrs.evolve(message, hops=1))
        thenConnection.closing = plainConnection.closing = True
        closing = Message(ALICE, CAROL, "closing")
        then.deliverThen(closing, RecordingWaiter())
        plain.deliver(closing)
        written = []
        for client, connection in ((then, thenConnection), (plain, plainConnection)):
            connection.connectionLost(Failure(ConnectionDone()))
            written.append(self.connect(client, Clock(), 41)[1].value())
        self.assertEqual(written[0], written[1])
        self.assertEqual(written[0].count(b"\r\nSeq: "), 2)
        self.assertTrue(written[0].startswith(b"MESSAGE im:carol@corp.example IMGW/1.0\r\nSeq: 42\r\nFrom: "), written[0])
        then.connection.dataReceived(b"IMGW/1.0 200 OK\r\nSeq: 42\r\n\r\n")  # type: ignore[union-attr]
        self.assertEqual(waiter.results, [DeliveryStatus.DELIVERED])

    def test_failedTold(self) -> None:
        """
        Given C{failed}, every failure of the message is told to it, with
        the message and the waiter, and not to the waiter: hops used up, a
        full queue, an error answer, the time limit, the link stopping; a
        delivered one is told to the waiter.
        """
        from tests.test_router import RecordingWaiter

        told: list[tuple[object, Message, object]] = []

        def failed(error: BaseException | Failure, message: Message, waiter: object) -> None:
            told.append((type(error.value if isinstance(error, Failure) else error), message, waiter))

        client = self.client(maxQueue=2, requestTimeout=10.0)
        self.server.router.answer = lambda e: fail(UserBusy("busy", "tel:+1555"))
        busy, waiter = Message(CAROL, ALICE, "busy"), RecordingWaiter()
        client.deliverThen(busy, waiter, 1, failed)
        self.network.flush()
        self.assertEqual(told, [(UserBusy, busy, waiter)])
        self.server.router.answer = lambda e: succeed(DeliveryStatus.DELIVERED)
        delivered = RecordingWaiter()
        client.deliverThen(Message(CAROL, ALICE, "hi"), delivered, 1, failed)
        self.network.flush()
        self.assertEqual(delivered.results, [DeliveryStatus.DELIVERED])
        self.server.router.answer = lambda e: Deferred()
        late = [(Message(CAROL, ALICE, f"late {n}"), RecordingWaiter()) for n in range(2)]
        for message, w in late:
            client.deliverThen(message, w, 1, failed)
        full = Message(CAROL, ALICE, "full")
        client.deliverThen(full, waiter, 1, failed)
        self.network.flush()
        self.clock.advance(10)
        traces = LinkTraces()
        ended = LinkClient(
            "server hs2", TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312), LINKS, Clock(), Headers(), traces, "corp.example/hs1"
        )
        used = Message(CAROL, ALICE, "used up")
        leave = traces.enter(used, ("corp.example/hs2",), 1)
        ended.deliverThen(used, waiter, 1, failed)
        leave()
        stopped = Message(CAROL, ALICE, "stopped")
        ended.deliverThen(stopped, waiter, 1, failed)
        ended.stopService()
        self.assertEqual(
            told[1:],
            [
                (ServiceUnavailable, full, waiter),
                *((ServiceUnavailable, message, w) for message, w in late),
                (LoopDetected, used, waiter),
                (ServiceUnavailable, stopped, waiter),
            ],
        )
        self.assertEqual([waiter.results, *(w.results for _, w in late)], [[], [], []])

    def test_hopsUsedUp(self) -> None:
        """
        A message that came over a link with its last hop is not sent on:
        its waiter is told L{LoopDetected} at once, as L{LinkClient.deliver}
        fails.
        """
        from tests.test_router import RecordingWaiter

        traces = LinkTraces()
        client = LinkClient(
            "server hs2", TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 5312), LINKS, Clock(), Headers(), traces, "corp.example/hs1"
        )
        message = Message(CAROL, ALICE, "hi")
        leave = traces.enter(message, ("corp.example/hs2",), 1)
        waiter = RecordingWaiter()
        client.deliverThen(message, waiter)
        self.assertEqual(self.outcome(waiter.results)[:2], (LoopDetected, "Max-Hops exhausted"))  # type: ignore[index]
        self.failureResultOf(client.deliver(message), LoopDetected)
        leave()
        self.assertEqual(client.queued, 0)


def _fired(d: Deferred[Any]) -> list[object]:
    results: list[object] = []
    d.addBoth(results.append)
    return results
