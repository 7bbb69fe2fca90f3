"""
Unit tests of the IRC bridge (L{imgateway.adapters.irc.network},
L{imgateway.adapters.irc.puppet}): the C{[[irc.network]]} tables, pacing
under the flood allowance, splitting, registration (CAP, SASL, nick
collisions) and the caps that cut off a misbehaving network, bans, and the
route's events. Time is a L{Clock}; connections are string transports.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgateway.adapters.irc.network import (
    IRCNetworkConfig,
    IRCNetworkRoute,
    cleanIncoming,
    parseNetworkConfig,
    parseNetworks,
    puppetNick,
)
from imgateway.adapters.irc.puppet import (
    ConnectionLimits,
    FloodAllowance,
    IRCClientConnection,
    IRCLink,
    LinkStopped,
    Registration,
    alternateNick,
)
from imgateway.adapters.irc.wire import TRUNCATION_MARK, IRCMessage, parseLine
from imgateway.config import ConfigTable
from imgateway.core.address import Address
from imgateway.core.errors import (
    ConfigError,
    DeliveryStatus,
    NoSuchUser,
    RateLimited,
    ServiceUnavailable,
    UserOffline,
)
from imgateway.core.events import Event, Message, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind
from imgateway.core.linkinfo import LinkInfo
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.interfaces import IRoute

ALICE = Address.fromString("alice@corp.example")
FRANK = Address.fromString("frank@libera.irc")


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects each factory at once to a string transport.
    """

    def __init__(self) -> None:
        self.transports: list[StringTransportWithDisconnection] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        proxy = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = proxy
        proxy.makeConnection(transport)
        self.transports.append(transport)
        return succeed(proxy)


@implementer(IRoute)
class RecordingRouter:
    """
    A router that records what it is given and answers C{DELIVERED}.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        self.events.append(event)
        return succeed(DeliveryStatus.DELIVERED)


class Owner:
    """
    Records what a link tells its owner.
    """

    def __init__(self) -> None:
        self.registered = 0
        self.messages: list[IRCMessage] = []
        self.lost = 0
        self.banned: list[str] = []

    def linkRegistered(self, link: IRCLink) -> None:
        self.registered += 1

    def linkMessage(self, link: IRCLink, message: IRCMessage) -> None:
        self.messages.append(message)

    def linkLost(self, link: IRCLink) -> None:
        self.lost += 1

    def linkBanned(self, link: IRCLink, reason: str) -> None:
        self.banned.append(reason)


def lines(transport: StringTransportWithDisconnection) -> list[IRCMessage]:
    """
    What was written on C{transport}, parsed; cleared.
    """
    data = transport.value()
    transport.clear()
    return [parseLine(line) for line in data.split(b"\r\n") if line]


def feed(connection: IRCClientConnection, *texts: str | bytes) -> None:
    for text in texts:
        connection.dataReceived((text.encode("utf-8") if isinstance(text, str) else text) + b"\r\n")


def makeLink(
    test: SynchronousTestCase,
    flood: FloodAllowance = FloodAllowance(burst=5, rate=1.0),
    limits: ConnectionLimits = ConnectionLimits(),
    registration: Registration | None = None,
    **kwargs: Any,
) -> tuple[IRCLink, FakeEndpoint, Clock, Owner]:
    clock = Clock()
    endpoint = FakeEndpoint()
    owner = Owner()
    link = IRCLink(
        "testnet",
        endpoint,
        registration or Registration("alice", "alice", "alice@corp.example"),
        owner,
        clock,
        flood=flood,
        limits=limits,
        **kwargs,
    )
    test.addCleanup(lambda: link.stop("test over"))
    return link, endpoint, clock, owner


def register(link: IRCLink, endpoint: FakeEndpoint, clock: Clock, nick: str = "alice", isupport: str = "") -> IRCClientConnection:
    """
    Start C{link} and answer its registration: no capabilities, then
    C{001} (and C{005} with C{isupport}); the flood allowance is refilled.
    """
    link.start()
    connection = link.latest
    assert connection is not None
    feed(connection, ":irc.test CAP * LS :multi-prefix", f":irc.test 001 {nick} :Welcome {nick}!alice@gateway.host")
    if isupport:
        feed(connection, f":irc.test 005 {nick} {isupport} :are supported")
    clock.advance(60)
    lines(endpoint.transports[-1])
    return connection


class ConfigTests(SynchronousTestCase):
    """
    L{parseNetworks}: the C{[[irc.network]]} tables.
    """

    def parse(self, *tables: dict[str, object]) -> tuple[IRCNetworkConfig, ...]:
        return parseNetworks(ConfigTable({"network": list(tables)}, "t.toml [irc]"))

    def test_defaults(self) -> None:
        """
        A table with name, domain and endpoint gets the documented defaults.
        """
        (config,) = self.parse({"name": "libera", "domain": "Libera.IRC", "endpoint": "tls:irc.libera.chat:6697"})
        self.assertEqual(config.domain, "libera.irc")
        self.assertEqual(config.nickTemplate, "{user}")
        self.assertEqual(config.flood, FloodAllowance(burst=5, rate=1.0))
        self.assertEqual(config.limits, ConnectionLimits())
        self.assertEqual((config.maxPuppets, config.idleClose, config.fallbackCharset), (50, 600.0, "latin-1"))
        self.assertEqual(config.maxRememberedPresences, 100000)
        self.assertIsNone(config.sasl)

    def test_everyKey(self) -> None:
        """
        Every key is read; secrets stay out of the C{repr}.
        """
        (config,) = self.parse(
            {
                "name": "corp",
                "domain": "corp.irc",
                "endpoint": "tcp:127.0.0.1:6667",
                "nick_template": "{user}[corp]",
                "password": "server-secret",
                "sasl_account": "gw",
                "sasl_password": "sasl-secret",
                "flood_burst": 3,
                "flood_rate": 0.5,
                "max_puppets": 7,
                "idle_close": 30,
                "fallback_charset": "cp1252",
                "registration_timeout": 10,
                "max_lines_per_second": 50,
                "max_names": 100,
                "ping_interval": 60,
                "presence_nick": "watcher",
                "presence_interval": 30,
                "max_watched": 10,
                "max_message_lines": 4,
                "max_queued_lines": 20,
                "line_timeout": 15,
                "status_wait": 2,
                "max_reconnect_delay": 120,
                "max_remembered_presences": 9,
            }
        )
        self.assertEqual(config.sasl, ("gw", "sasl-secret"))
        self.assertEqual(config.limits, ConnectionLimits(10.0, 50, 100, 60.0))
        self.assertEqual((config.maxPuppets, config.maxMessageLines, config.maxQueuedLines), (7, 4, 20))
        self.assertEqual(config.maxRememberedPresences, 9)
        self.assertNotIn("secret", repr(config))

    def test_errors(self) -> None:
        """
        Missing and wrong keys are refused naming the table and the key.
        """
        base: dict[str, object] = {"name": "n", "domain": "n.irc", "endpoint": "tcp:127.0.0.1:6667"}
        cases: list[tuple[dict[str, object], str]] = [
            ({"endpoint": "nonsense:x"}, "endpoint"),
            ({"nick_template": "alice"}, "nick_template"),
            ({"nick_template": "{user}{other}"}, "nick_template"),
            ({"nick_template": "{user} x"}, "nick_template"),
            ({"sasl_account": "gw"}, "sasl_password"),
            ({"fallback_charset": "no-such-charset"}, "fallback_charset"),
            ({"flood_rate": 0}, "flood_rate"),
            ({"max_puppets": -1}, "max_puppets"),
            ({"max_remembered_presences": 0}, "max_remembered_presences"),
            ({"presence_nick": "1bad"}, "presence_nick"),
            ({"unknown": 1}, "unknown"),
        ]
        for change, key in cases:
            with self.assertRaises(ConfigError) as e:
                self.parse({**base, **change})
            self.assertIn(f"[irc] network[0]: {key}", str(e.exception))
        with self.assertRaises(ConfigError):
            self.parse({k: v for k, v in base.items() if k != "domain"})
        with self.assertRaises(ConfigError) as e:
            self.parse(base, {**base, "name": "other"})
        self.assertIn("domain", str(e.exception))

    def test_noNetworks(self) -> None:
        """
        Without C{[[irc.network]]} tables there is no network.
        """
        self.assertEqual(parseNetworks(ConfigTable({}, "t")), ())


class NickTests(SynchronousTestCase):
    """
    Nicks: the template, and alternates on a collision.
    """

    def test_template(self) -> None:
        """
        The user's local part fills C{{user}}; characters a nick cannot hold
        become C{-}, and a leading digit gets C{_} before it.
        """
        self.assertEqual(puppetNick("{user}[corp]", ALICE), "alice[corp]")
        self.assertEqual(puppetNick("{user}", Address.fromString("j.doe+x@corp.example")), "j-doe-x")
        self.assertEqual(puppetNick("{user}", Address.fromString("7up@corp.example")), "_7up")

    def test_alternates(self) -> None:
        """
        Alternates are predictable: C{nick_}, C{nick_2}, ..., cut to fit.
        """
        self.assertEqual([alternateNick("alice", i) for i in (1, 2, 3)], ["alice_", "alice_2", "alice_3"])
        self.assertEqual(alternateNick("abcdefghi", 2, 9), "abcdefg_2")


class PacingTests(SynchronousTestCase):
    """
    Every line leaves within the flood allowance, none is lost.
    """

    def test_burstThenRate(self) -> None:
        """
        With a burst of 5 and 1 line/s, 5 lines leave at once, the 6th
        one second later, the next ones one a second; each line's
        L{Deferred} fires when it is written.
        """
        link, endpoint, clock, _ = makeLink(self)
        register(link, endpoint, clock)
        transport = endpoint.transports[0]
        written = [link.send("PRIVMSG", "frank", f"line {i}") for i in range(8)]
        self.assertEqual([m.params[1] for m in lines(transport)], [f"line {i}" for i in range(5)])
        self.assertEqual([d.called for d in written], [True] * 5 + [False] * 3)
        clock.advance(0.999)
        self.assertEqual(lines(transport), [])
        clock.advance(0.001)
        self.assertEqual([m.params[1] for m in lines(transport)], ["line 5"])
        clock.advance(2)
        self.assertEqual([m.params[1] for m in lines(transport)], ["line 6", "line 7"])
        self.assertTrue(all(d.called for d in written))

    def test_registrationCountsToo(self) -> None:
        """
        Registration lines take from the same allowance: with a burst of 2,
        C{CAP LS} and C{NICK} leave at once, C{USER} a second later.
        """
        link, endpoint, clock, _ = makeLink(self, flood=FloodAllowance(burst=2, rate=1.0))
        link.start()
        transport = endpoint.transports[0]
        self.assertEqual([m.command for m in lines(transport)], ["CAP", "NICK"])
        clock.advance(1)
        self.assertEqual([m.command for m in lines(transport)], ["USER"])

    def test_linesWaitForRegistration(self) -> None:
        """
        Lines sent before the connection is registered wait for it (and
        for the connection itself), then leave in order.
        """
        link, endpoint, clock, _ = makeLink(self)
        first = link.send("PRIVMSG", "frank", "early")
        link.start()
        transport = endpoint.transports[0]
        self.assertNotIn("PRIVMSG", [m.command for m in lines(transport)])
        feed(link.latest, ":irc.test 001 alice :Welcome")  # type: ignore[arg-type]
        clock.advance(5)
        self.assertIn(("frank", "early"), [m.params for m in lines(transport) if m.command == "PRIVMSG"])
        self.assertTrue(first.called)

    def test_queueLimit(self) -> None:
        """
        C{max_queued_lines} lines may wait; the next one fails at once with
        L{RateLimited} (its sender gets an error status).
        """
        link, _, _, _ = makeLink(self, maxQueuedLines=3)
        waiting = [link.send("PRIVMSG", "frank", str(i)) for i in range(3)]
        self.failureResultOf(link.send("PRIVMSG", "frank", "one too many"), RateLimited)
        for d in waiting:
            self.assertNoResult(d)
            d.addErrback(lambda f: None)

    def test_lineTimeout(self) -> None:
        """
        A line that cannot leave within C{line_timeout} seconds (the
        network is unreachable) fails with L{ServiceUnavailable}, not
        earlier.
        """
        link, _, clock, _ = makeLink(self, lineTimeout=30.0)
        d = link.send("PRIVMSG", "frank", "hello")
        clock.advance(29.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, ServiceUnavailable)

    def test_unsafeLine(self) -> None:
        """
        A line holding CR or LF is never written: it fails with
        C{ValueError}.
        """
        link, _, _, _ = makeLink(self)
        self.failureResultOf(link.send("PRIVMSG", "frank", "hi\r\nQUIT :x"), ValueError)
        self.assertEqual(link.queued, 0)


class RegistrationTests(SynchronousTestCase):
    """
    Registration: CAP, SASL, server password, nick collisions, and the
    caps on a network that misbehaves.
    """

    def test_passwordAndSASL(self) -> None:
        """
        The server password goes first; with SASL configured the link asks
        for the C{sasl} capability and authenticates with PLAIN before
        C{CAP END}.
        """
        registration = Registration("alice", "alice", "real", password="pw", sasl=("gw", "secret"))
        link, endpoint, clock, owner = makeLink(self, flood=FloodAllowance(burst=50, rate=50.0), registration=registration)
        link.start()
        transport = endpoint.transports[0]
        sent = lines(transport)
        self.assertEqual([m.command for m in sent], ["PASS", "CAP", "NICK", "USER"])
        self.assertEqual(sent[0].params, ("pw",))
        connection = link.latest
        assert connection is not None
        feed(connection, ":irc.test CAP * LS :away-notify sasl=PLAIN,EXTERNAL")
        self.assertEqual([m.params for m in lines(transport)], [("REQ", "sasl away-notify")])
        feed(connection, ":irc.test CAP * ACK :sasl away-notify")
        self.assertEqual([m.params for m in lines(transport)], [("PLAIN",)])
        feed(connection, "AUTHENTICATE +")
        (auth,) = lines(transport)
        self.assertEqual(base64.b64decode(auth.params[0]), b"gw\0gw\0secret")
        feed(connection, ":irc.test 903 alice :SASL authentication successful")
        self.assertEqual([m.params for m in lines(transport)], [("END",)])
        feed(connection, ":irc.test 001 alice :Welcome")
        self.assertEqual(owner.registered, 1)

    def test_saslFailureStops(self) -> None:
        """
        A refused SASL login is a configuration error: the link stops (no
        retries) and says why.
        """
        registration = Registration("alice", "alice", "real", sasl=("gw", "wrong"))
        link, endpoint, clock, owner = makeLink(self, flood=FloodAllowance(burst=50, rate=50.0), registration=registration)
        link.start()
        feed(link.latest, ":irc.test CAP * LS :sasl", ":irc.test CAP * ACK :sasl", "AUTHENTICATE +")  # type: ignore[arg-type]
        feed(link.latest, ":irc.test 904 alice :SASL authentication failed")  # type: ignore[arg-type]
        self.assertEqual(len(owner.banned), 1)
        self.assertIn("SASL", owner.banned[0])
        self.assertIsNotNone(link.stopped)
        clock.advance(1000)
        self.assertEqual(len(endpoint.transports), 1)

    def test_nickCollision(self) -> None:
        """
        A nick in use gives C{alice_}, then C{alice_2}; once registered
        under an alternate the link asks (C{ISON}) whether the nick is free
        and takes it back when it is.
        """
        link, endpoint, clock, owner = makeLink(self, flood=FloodAllowance(burst=50, rate=50.0))
        router = RecordingRouter()
        route = IRCNetworkRoute(
            IRCNetworkConfig("n", "libera.irc", "tcp:x:1", presenceInterval=10.0), router, clock, FakeEndpoint
        )
        self.addCleanup(route.stop)
        route.deliver(Message(ALICE, FRANK, "hi"))
        puppet = route.puppets[ALICE]
        transport = puppet.link.latest.transport  # type: ignore[union-attr]
        connection = puppet.link.latest
        assert connection is not None
        lines(transport)  # type: ignore[arg-type]
        feed(connection, ":irc.test 433 * alice :Nickname is already in use")
        self.assertEqual([m.params for m in lines(transport)], [("alice_",)])  # type: ignore[arg-type]
        feed(connection, ":irc.test 433 * alice_ :Nickname is already in use")
        self.assertEqual([m.params for m in lines(transport)], [("alice_2",)])  # type: ignore[arg-type]
        feed(connection, ":irc.test 001 alice_2 :Welcome")
        self.assertEqual(puppet.link.nick, "alice_2")
        clock.advance(5)
        lines(transport)  # type: ignore[arg-type]
        clock.advance(10)
        self.assertEqual([(m.command, m.params) for m in lines(transport)], [("ISON", ("alice",))])  # type: ignore[arg-type]
        feed(connection, ":irc.test 303 alice_2 :alice")
        self.assertEqual(lines(transport), [])  # type: ignore[arg-type]
        clock.advance(10)
        lines(transport)  # type: ignore[arg-type]
        feed(connection, ":irc.test 303 alice_2 :")
        self.assertEqual([(m.command, m.params) for m in lines(transport)], [("NICK", ("alice",))])  # type: ignore[arg-type]
        feed(connection, ":alice_2!alice@host NICK :alice")
        self.assertEqual(puppet.link.nick, "alice")

    def test_registrationTimeout(self) -> None:
        """
        A network that does not finish registration within
        C{registration_timeout} seconds is cut off (not a moment earlier),
        and the attempt counts as a failure (longer backoff).
        """
        link, endpoint, clock, owner = makeLink(self, limits=ConnectionLimits(registrationTimeout=20.0))
        link.start()
        transport = endpoint.transports[0]
        clock.advance(19.9)
        self.assertTrue(transport.connected)
        clock.advance(0.1)
        self.assertFalse(transport.connected)
        self.assertEqual(link.failures, 1)
        self.assertEqual(owner.registered, 0)

    def test_linesPerSecond(self) -> None:
        """
        C{max_lines_per_second} lines at once are read; the next one cuts
        the connection.
        """
        link, endpoint, clock, owner = makeLink(self, limits=ConnectionLimits(maxLinesPerSecond=10))
        connection = register(link, endpoint, clock)
        transport = endpoint.transports[0]
        feed(connection, *[f":frank!f@h NOTICE alice :{i}" for i in range(10)])
        self.assertTrue(transport.connected)
        self.assertEqual(len(owner.messages), 10)
        feed(connection, ":frank!f@h NOTICE alice :one more")
        self.assertFalse(transport.connected)
        self.assertEqual(len(owner.messages), 10)

    def test_namesFlood(self) -> None:
        """
        A C{NAMES} reply of C{max_names} names is read; one name more cuts
        the connection.
        """
        link, endpoint, clock, owner = makeLink(self, limits=ConnectionLimits(maxNames=6))
        connection = register(link, endpoint, clock)
        transport = endpoint.transports[0]
        feed(connection, ":irc.test 353 alice = #c :a b c", ":irc.test 353 alice = #c :d e f")
        self.assertTrue(transport.connected)
        feed(connection, ":irc.test 366 alice #c :End", ":irc.test 353 alice = #c :a b c d e f")
        self.assertTrue(transport.connected)
        feed(connection, ":irc.test 353 alice = #c :g")
        self.assertFalse(transport.connected)

    def test_pingPong(self) -> None:
        """
        The network's C{PING} is answered before waiting lines; a network
        silent for C{ping_interval} gets a C{PING}, and is cut off after as
        long again without a word.
        """
        link, endpoint, clock, owner = makeLink(self, limits=ConnectionLimits(pingInterval=100.0))
        connection = register(link, endpoint, clock)
        transport = endpoint.transports[0]
        for i in range(6):
            link.send("PRIVMSG", "frank", str(i))
        lines(transport)
        feed(connection, "PING :token")
        clock.advance(1)
        self.assertEqual([(m.command, m.params) for m in lines(transport)], [("PONG", ("token",))])
        clock.advance(100)
        self.assertIn("PING", [m.command for m in lines(transport)])
        self.assertTrue(transport.connected)
        clock.advance(100)
        self.assertFalse(transport.connected)

    def test_reconnects(self) -> None:
        """
        A lost connection is made again (backoff), and registers again.
        """
        link, endpoint, clock, owner = makeLink(self)
        register(link, endpoint, clock)
        endpoint.transports[0].loseConnection()
        self.assertEqual(owner.lost, 1)
        clock.advance(400)
        self.assertEqual(len(endpoint.transports), 2)


class BanTests(SynchronousTestCase):
    """
    A K-line or ban stops the link for good, and says so.
    """

    def assertStopsOn(self, *texts: str) -> None:
        link, endpoint, clock, owner = makeLink(self)
        connection = register(link, endpoint, clock)
        waiting = [link.send("PRIVMSG", "frank", str(i)) for i in range(8)]
        feed(connection, *texts)
        endpoint.transports[0].loseConnection()
        self.assertEqual(len(owner.banned), 1)
        for d in waiting[5:]:
            self.failureResultOf(d, LinkStopped)
        self.failureResultOf(link.send("PRIVMSG", "frank", "later"), LinkStopped)
        clock.advance(10000)
        self.assertEqual(len(endpoint.transports), 1)

    def test_465(self) -> None:
        """
        C{465 ERR_YOUREBANNEDCREEP}.
        """
        self.assertStopsOn(":irc.test 465 alice :You are banned from this server- spam")

    def test_klined(self) -> None:
        """
        C{ERROR :Closing link ... (K-Lined)}.
        """
        self.assertStopsOn("ERROR :Closing link: alice[127.0.0.1] (K-Lined: spam)")

    def test_floodedSaysWhatToChange(self) -> None:
        """
        Cut off for C{Excess Flood}, the link reconnects, and the log names
        the keys to lower.
        """
        link, endpoint, clock, owner = makeLink(self)
        connection = register(link, endpoint, clock)
        with capturedLogs() as events:
            feed(connection, "ERROR :Closing link: (alice@127.0.0.1) [Excess Flood]")
        self.assertIn("lower flood_burst and flood_rate", " ".join(formatEvent(e) for e in events))
        endpoint.transports[0].loseConnection()
        self.assertEqual(owner.banned, [])
        clock.advance(400)
        self.assertEqual(len(endpoint.transports), 2)

    def test_otherErrorReconnects(self) -> None:
        """
        Any other C{ERROR} (a ping timeout) is a disconnect like others.
        """
        link, endpoint, clock, owner = makeLink(self)
        connection = register(link, endpoint, clock)
        feed(connection, "ERROR :Closing link: alice[127.0.0.1] (Ping timeout: 120 seconds)")
        endpoint.transports[0].loseConnection()
        self.assertEqual(owner.banned, [])
        clock.advance(400)
        self.assertEqual(len(endpoint.transports), 2)


class RouteTests(SynchronousTestCase):
    """
    L{IRCNetworkRoute}: messages, subscriptions, presence, puppets.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.router = RecordingRouter()
        self.endpoints: list[FakeEndpoint] = []

        def endpointFactory() -> FakeEndpoint:
            endpoint = FakeEndpoint()
            self.endpoints.append(endpoint)
            return endpoint

        self.config = IRCNetworkConfig(
            "libera",
            "libera.irc",
            "tcp:x:1",
            nickTemplate="{user}[corp]",
            flood=FloodAllowance(burst=100, rate=100.0),
            maxPuppets=2,
            idleClose=300.0,
            presenceInterval=10.0,
        )
        self.route = IRCNetworkRoute(self.config, self.router, self.clock, endpointFactory)
        self.addCleanup(self.route.stop)

    def puppetConnection(self, user: Address = ALICE, nick: str = "alice[corp]") -> tuple[IRCClientConnection, StringTransportWithDisconnection]:
        puppet = self.route.puppets[user]
        connection = puppet.link.latest
        assert connection is not None
        if not connection.registered:
            feed(connection, f":irc.test 001 {nick} :Welcome {nick}!alice@gw.example")
        transport = connection.transport
        assert isinstance(transport, StringTransportWithDisconnection)
        return connection, transport

    def test_interface(self) -> None:
        """
        The route is an L{IRoute}.
        """
        verifyObject(IRoute, self.route)

    def test_messageSplitUnderRealPrefix(self) -> None:
        """
        A long message with line breaks becomes one C{PRIVMSG} per text
        line, each within 512 bytes once the network adds our real prefix;
        an embedded C{QUIT} stays text; the message is C{DELIVERED} once
        written and no C{401} came within C{status_wait}.
        """
        body = "first line\r\nQUIT :x\n" + "é" * 700
        d = self.route.deliver(Message(ALICE, FRANK, body))
        connection, transport = self.puppetConnection()
        self.clock.advance(0.5)
        sent = [m for m in lines(transport) if m.command == "PRIVMSG"]
        self.assertEqual(sent[0].params, ("frank", "first line"))
        self.assertEqual(sent[1].params, ("frank", "QUIT :x"))
        self.assertEqual("".join(m.params[1] for m in sent[2:]), "é" * 700)
        for m in sent:
            relayed = f":alice[corp]!alice@gw.example PRIVMSG frank :{m.params[1]}\r\n".encode()
            self.assertLessEqual(len(relayed), 512)
        self.assertNoResult(d)
        self.clock.advance(self.config.statusWait - 0.5)
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)

    def test_action(self) -> None:
        """
        C{/me waves} goes out as a CTCP ACTION.
        """
        self.route.deliver(Message(ALICE, FRANK, "/me waves"))
        connection, transport = self.puppetConnection()
        self.clock.advance(1)
        self.assertIn(("frank", "\x01ACTION waves\x01"), [m.params for m in lines(transport)])

    def test_truncated(self) -> None:
        """
        Past C{max_message_lines} lines the message is cut, the last line
        marked.
        """
        self.route.deliver(Message(ALICE, FRANK, "\n".join(str(i) for i in range(30))))
        connection, transport = self.puppetConnection()
        self.clock.advance(1)
        sent = [m.params[1] for m in lines(transport) if m.command == "PRIVMSG"]
        self.assertEqual(len(sent), self.config.maxMessageLines)
        self.assertTrue(sent[-1].endswith(TRUNCATION_MARK), sent[-1])

    def test_noSuchNick(self) -> None:
        """
        A C{401} for the target within C{status_wait} fails the message
        with L{UserOffline}.
        """
        d = self.route.deliver(Message(ALICE, FRANK, "hi"))
        connection, transport = self.puppetConnection()
        self.clock.advance(0.1)
        feed(connection, ":irc.test 401 alice[corp] frank :No such nick/channel")
        self.failureResultOf(d, UserOffline)

    def test_notANick(self) -> None:
        """
        An address that cannot be a nick is no such user.
        """
        self.failureResultOf(self.route.deliver(Message(ALICE, Address.fromString("a.b@libera.irc"), "x")), NoSuchUser)

    def test_maxPuppets(self) -> None:
        """
        C{max_puppets} users get a connection; the next one's message fails
        with L{ServiceUnavailable}.
        """
        for name in ("alice", "bob"):
            self.route.deliver(Message(Address.fromString(f"{name}@corp.example"), FRANK, "hi")).addErrback(lambda f: None)
        self.assertEqual(len(self.route.puppets), 2)
        self.failureResultOf(self.route.deliver(Message(Address.fromString("carol@corp.example"), FRANK, "hi")), ServiceUnavailable)

    def test_idleClose(self) -> None:
        """
        A puppet unused for C{idle_close} seconds quits, and no longer
        counts against C{max_puppets}.
        """
        self.route.deliver(Message(ALICE, FRANK, "hi"))
        connection, transport = self.puppetConnection()
        self.clock.advance(299)
        self.assertIn(ALICE, self.route.puppets)
        feed(connection, ":frank!f@h PRIVMSG alice[corp] :still there?")
        self.clock.advance(299)
        self.assertIn(ALICE, self.route.puppets)
        self.clock.advance(1)
        self.assertNotIn(ALICE, self.route.puppets)
        self.assertIn("QUIT", [m.command for m in lines(transport)])

    def test_incoming(self) -> None:
        """
        A C{PRIVMSG} to the puppet reaches its user from C{nick@domain}:
        formatting and control codes removed, latin-1 decoded, an ACTION
        as C{/me}; channel messages are not for the user.
        """
        self.route.deliver(Message(ALICE, FRANK, "hi"))
        connection, transport = self.puppetConnection()
        feed(connection, ":Frank!f@h PRIVMSG alice[corp] :\x02bold\x02 \x0304,01red\x0f\x07 ok")
        feed(connection, b":frank!f@h PRIVMSG alice[corp] :caf\xe9")
        feed(connection, ":frank!f@h PRIVMSG alice[corp] :\x01ACTION waves\x01")
        feed(connection, ":frank!f@h PRIVMSG #chan :not for alice")
        messages = [e for e in self.router.events if isinstance(e, Message)]
        self.assertEqual([(m.sender, m.recipient) for m in messages], [(FRANK, ALICE)] * 3)
        self.assertEqual([m.body for m in messages], ["bold red ok", "café", "/me waves"])

    def test_cleanIncoming(self) -> None:
        """
        L{cleanIncoming} leaves no control character.
        """
        text, action = cleanIncoming("a\x00b\x1bc\x7fd\x85e\tf")
        self.assertEqual((text, action), ("abcde\tf", False))

    def test_subscribe(self) -> None:
        """
        A subscription to an IRC user is authorised at once, the IRC user
        asks back to watch the gateway user, and the presence watcher
        follows the nick.
        """
        self.assertEqual(self.successResultOf(self.route.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, FRANK))), DeliveryStatus.DELIVERED)
        self.assertEqual(
            self.router.events,
            [SubscriptionEvent(SubscriptionKind.AUTHORISE, FRANK, ALICE), SubscriptionEvent(SubscriptionKind.SUBSCRIBE, FRANK, ALICE)],
        )
        self.assertIn("frank", self.route.presence.watchers)

    def test_presenceWithMonitor(self) -> None:
        """
        Where ISUPPORT offers C{MONITOR}, watched nicks are monitored;
        C{730} makes them online (then C{WHOIS} says whether away), C{731}
        offline; each change reaches the watchers.
        """
        self.route.deliver(PresenceProbe(ALICE, FRANK))
        link = self.route.presence.link
        connection = link.latest
        assert connection is not None
        transport = connection.transport
        feed(connection, ":irc.test 001 imgw :Welcome", ":irc.test 005 imgw MONITOR=30 :are supported")
        feed(connection, ":irc.test 376 imgw :End of MOTD")
        self.clock.advance(1)
        self.assertIn(("MONITOR", ("+", "frank")), [(m.command, m.params) for m in lines(transport)])  # type: ignore[arg-type]
        feed(connection, ":irc.test 730 imgw :frank!f@h")
        self.assertEqual(self.router.events[-1], PresenceUpdate(FRANK, ALICE, Presence(PresenceState.ONLINE)))
        self.clock.advance(1)
        self.assertIn(("WHOIS", ("frank",)), [(m.command, m.params) for m in lines(transport)])  # type: ignore[arg-type]
        feed(connection, ":irc.test 311 imgw frank f h * :Frank", ":irc.test 301 imgw frank :\x02at lunch", ":irc.test 318 imgw frank :End")
        self.assertEqual(self.router.events[-1], PresenceUpdate(FRANK, ALICE, Presence(PresenceState.AWAY, "at lunch")))
        feed(connection, ":irc.test 731 imgw :frank")
        self.assertEqual(self.router.events[-1], PresenceUpdate(FRANK, ALICE, OFFLINE))

    def test_presenceWithISON(self) -> None:
        """
        Without C{MONITOR}, watched nicks are polled with C{ISON} every
        C{presence_interval} seconds; a lost watcher connection shows them
        offline.
        """
        self.route.deliver(PresenceProbe(ALICE, FRANK))
        connection = self.route.presence.link.latest
        assert connection is not None
        transport = connection.transport
        feed(connection, ":irc.test 001 imgw :Welcome")
        self.clock.advance(1)
        self.assertIn(("ISON", ("frank",)), [(m.command, m.params) for m in lines(transport)])  # type: ignore[arg-type]
        feed(connection, ":irc.test 303 imgw :frank")
        self.assertEqual(self.router.events[-1], PresenceUpdate(FRANK, ALICE, Presence(PresenceState.ONLINE)))
        self.clock.advance(10)
        sent = [(m.command, m.params) for m in lines(transport)]  # type: ignore[arg-type]
        self.assertIn(("ISON", ("frank",)), sent)
        self.assertIn(("WHOIS", ("frank",)), sent)
        transport.loseConnection()  # type: ignore[union-attr]
        self.assertEqual(self.router.events[-1], PresenceUpdate(FRANK, ALICE, OFFLINE))

    def test_awayFromPresence(self) -> None:
        """
        The user's presence, once the user lets IRC see it, sets C{AWAY}
        with the note (or the state) as message, and clears it when
        available again; a puppet opened later starts with it (the one
        table: L{imgateway.adapters.irc.mapping.awayFromPresence}).
        """
        self.route.deliver(PresenceUpdate(ALICE, FRANK, Presence(PresenceState.BUSY, "in a meeting")))
        self.route.deliver(Message(ALICE, FRANK, "hi"))
        connection, transport = self.puppetConnection()
        self.clock.advance(1)
        self.assertIn(("AWAY", ("Busy: in a meeting",)), [(m.command, m.params) for m in lines(transport)])
        self.route.deliver(PresenceUpdate(ALICE, FRANK, Presence(PresenceState.ONLINE)))
        self.clock.advance(1)
        self.assertIn(("AWAY", ()), [(m.command, m.params) for m in lines(transport)])
        self.route.deliver(PresenceUpdate(ALICE, FRANK, Presence(PresenceState.ONLINE)))
        self.clock.advance(1)
        self.assertEqual(lines(transport), [])

    def rememberingRoute(self, bound: int, *users: Address) -> IRCNetworkRoute:
        """
        A route that remembers C{bound} users' presence, told that C{users}
        are busy (in that order).
        """
        import attrs

        config = attrs.evolve(self.config, maxRememberedPresences=bound, maxPuppets=10)
        route = IRCNetworkRoute(config, self.router, self.clock, FakeEndpoint)
        self.addCleanup(route.stop)
        for user in users:
            route.deliver(PresenceUpdate(user, FRANK, Presence(PresenceState.BUSY, "in a meeting")))
        return route

    def startsAway(self, route: IRCNetworkRoute, user: Address) -> bool:
        """
        @return: Whether C{user}'s puppet, opened now by a message, sets
            C{AWAY} from the remembered presence.
        """
        route.deliver(Message(user, FRANK, "hi"))
        connection = route.puppets[user].link.latest
        assert connection is not None
        feed(connection, f":irc.test 001 {user.local}[corp] :Welcome")
        self.clock.advance(route.config.statusWait)
        transport = connection.transport
        assert isinstance(transport, StringTransportWithDisconnection)
        return ("AWAY", ("Busy: in a meeting",)) in [(m.command, m.params) for m in lines(transport)]

    def test_rememberedPresencesBound(self) -> None:
        """
        The route remembers the presence of the last
        C{max_remembered_presences} users, for their puppets opened later:
        with a bound of 2 and two users' presences, the older user's puppet
        starts C{AWAY}; a third user's presence makes it forget the oldest,
        whose puppet then starts without C{AWAY} while the second's still
        starts C{AWAY}.
        """
        ann, bob, cy = (Address.fromParts(name, "corp.example") for name in ("ann", "bob", "cy"))
        self.assertTrue(self.startsAway(self.rememberingRoute(2, ann, bob), ann))
        crowded = self.rememberingRoute(2, ann, bob, cy)
        self.assertFalse(self.startsAway(crowded, ann))
        self.assertTrue(self.startsAway(crowded, bob))

    def test_bannedPuppet(self) -> None:
        """
        A puppet the network bans stops, its user's waiting message fails
        with the network's reason, and later ones fail at once.
        """
        first = self.route.deliver(Message(ALICE, FRANK, "hi"))
        connection = self.route.puppets[ALICE].link.latest
        assert connection is not None
        more = [self.route.deliver(Message(ALICE, FRANK, f"msg {i}")) for i in range(300)]
        feed(connection, "ERROR :Closing link: alice[127.0.0.1] (You are banned)")
        connection.transport.loseConnection()  # type: ignore[union-attr]
        self.failureResultOf(first, ServiceUnavailable)
        for d in more:
            self.failureResultOf(d, ServiceUnavailable)
        later = self.failureResultOf(self.route.deliver(Message(ALICE, FRANK, "again")), ServiceUnavailable)
        self.assertIn("banned", str(later.value))
        self.assertNotIn(ALICE, self.route.puppets)


    def test_linkInfo(self) -> None:
        """
        The route tells the operator's console the state of each of the
        network's connections: the presence watcher (idle until someone is
        watched), each user's puppet (connecting, then registered under its
        nick, with the lines waiting), the users the network banned.
        """
        self.assertEqual(self.route.linkInfo(), [LinkInfo("irc-watcher", "libera", False, "idle: nobody watches anyone there", required=False)])
        self.route.deliver(Message(ALICE, FRANK, "hi"))
        self.assertEqual(
            self.route.linkInfo()[1:], [LinkInfo("irc-puppet", "libera alice@corp.example", False, "connecting (0 failed), 1 line(s) waiting")]
        )
        self.puppetConnection()
        self.clock.advance(1)
        self.route.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, FRANK))
        self.assertEqual(
            self.route.linkInfo(),
            [
                LinkInfo("irc-watcher", "libera", False, "connecting (0 failed), 0 line(s) waiting"),
                LinkInfo("irc-puppet", "libera alice@corp.example", True, "as alice[corp], 0 line(s) waiting"),
            ],
        )
        connection, transport = self.puppetConnection()
        feed(connection, "ERROR :Closing link: alice[127.0.0.1] (You are banned)")
        transport.loseConnection()
        [_, banned] = self.route.linkInfo()
        self.assertEqual((banned.kind, banned.name, banned.up, banned.required), ("irc-puppet", "libera alice@corp.example", False, False))
        self.assertTrue(banned.detail.startswith("banned: "), banned.detail)
        self.clock.advance(self.config.statusWait)


class ExampleConfigTests(SynchronousTestCase):
    """
    The commented C{[[irc.network]]} table of C{etc/imgateway.toml}.
    """

    def test_everyKeyWithItsDefault(self) -> None:
        """
        Uncommented, the example parses; it names every key the parser
        reads, and gives each optional key its default (but the secrets).
        """
        import os
        import tomllib

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "imgateway.toml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        block = text.split("# [[irc.network]]\n", 1)[1].split("\n\n", 1)[0]
        keys = [line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("#  ")]
        table = tomllib.loads("\n".join(keys))
        example = ConfigTable(table, "example")
        config = parseNetworkConfig(example)
        self.assertEqual(sorted(example._read), sorted(table))
        defaults = IRCNetworkConfig(config.name, config.domain, config.endpoint)
        secrets = {"password", "sasl_account", "sasl_password"}
        bare = parseNetworks(
            ConfigTable({"network": [{k: v for k, v in table.items() if k in ("name", "domain", "endpoint")}]}, "example")
        )[0]
        self.assertEqual(bare, defaults)
        self.assertEqual(
            attrsEvolveWithoutSecrets(config),
            attrsEvolveWithoutSecrets(defaults),
            f"the example's values are not the defaults ({sorted(set(table) - secrets)})",
        )


def attrsEvolveWithoutSecrets(config: IRCNetworkConfig) -> IRCNetworkConfig:
    import attrs

    return attrs.evolve(config, password=None, saslAccount=None, saslPassword=None)
