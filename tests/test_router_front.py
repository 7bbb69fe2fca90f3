"""
Tests for L{imgateway.router.front} (the decision a router's face makes
after authentication), for the native and IRC faces acting on it
(L{imgateway.adapters.native.server}) and for the shipped client following
redirects (L{imgateway.client.protocol.connect}); the XMPP face's part is in
C{tests/test_xmpp_c2s.py}, real sockets in C{tests/e2e/test_router_faces.py}.
"""

from __future__ import annotations

from ipaddress import ip_network
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import evolve
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.filepath import FilePath
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test.iosim import FakeTransport, IOPump, connect as iosimConnect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgateway.adapters.irc.face import IRCConfig, IRCFaceFactory
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.auth.passwords import makeCredentials
from imgateway.auth.sasl import clientMechanism
from imgateway.client.formatting import describeConnectFailure
from imgateway.client.protocol import ClientObserver, Redirected, TooManyRedirects, connect as clientConnect
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, HostPort, RouterConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import PersistenceFailed, ServiceUnavailable
from imgateway.adapters.native.framing import Request
from imgateway.core.events import Message
from imgateway.core.presence import PresenceState
from imgateway.core.records import AccountRecord
from imgateway.gateway import Gateway, assembleGateway
from imgateway.interfaces import IGateway, IHomeLocator, ISession
from imgateway.router.front import NOT_HOMED_HERE_TEXT, SERVE, UNAVAILABLE_TEXT, FrontAction, FrontDecision, decideFront
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.auth.checkers import SASLAuthenticated
from imgateway.testing import MemoryDirectory, MemoryHomeStore, RecordingSessionClient, memoryGateway
from tests.test_irc_face import Client as IRCClient
from tests.test_native_server import Wire

T = TypeVar("T")

CAROL = Address.fromString("carol@corp.example")
ALICE = Address.fromString("alice@corp.example")

INTERNAL = IPv4Address("TCP", "10.1.2.3", 40000)
EXTERNAL = IPv4Address("TCP", "192.0.2.7", 40000)
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)

HS2_NATIVE = HostPort("hs2.corp.example", 5310)
HS2_XMPP = HostPort("hs2.corp.example", 5232)

#: hs2, taking links: a router may proxy its users' sessions.
HS2_LINKED = ServerConfig(
    "hs2", frozenset({"home"}), link=HostPort("127.0.0.1", 5312), native=HS2_NATIVE, xmpp=HS2_XMPP
)


def proxiedGateway(clock: Clock) -> tuple[Gateway, Gateway]:
    """
    A router gateway (L{routerGateway}, hs1) whose C{proxy} is the home
    server of a second gateway that stands for hs2 (an L{IHomeServer} opens
    sessions as a L{imgateway.router.proxy.ProxyHomeServer} does).

    @return: The router's gateway and hs2's.
    """
    gateway = routerGateway(clock, hs2=HS2_LINKED)
    hs2 = memoryGateway(clock)
    gateway.proxy = hs2.homeServer
    return gateway, hs2


def routerGateway(
    clock: Clock,
    roles: frozenset[str] = frozenset({"router", "home"}),
    networks: tuple[str, ...] = ("10.0.0.0/8", "127.0.0.1/32"),
    hs2: ServerConfig | None = None,
) -> Gateway:
    """
    A gateway on memory stores that is server C{hs1} (with C{roles}) of a
    domain with another home server, C{hs2}; alice is homed on C{hs1},
    carol on C{hs2}, each with the password C{<name>-pw}.
    """
    servers = {
        "hs1": ServerConfig("hs1", roles),
        "hs2": hs2 if hs2 is not None else ServerConfig("hs2", frozenset({"home"}), native=HS2_NATIVE, xmpp=HS2_XMPP),
    }
    config = GatewayConfig(
        path=FilePath("memory.toml"),
        domain="corp.example",
        dataDir=FilePath("memory"),
        homeServerName="hs1",
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        router=RouterConfig(internalNetworks=tuple(ip_network(n) for n in networks)),
        servers=servers,
    )
    gateway = assembleGateway(
        config,
        clock,
        MemoryDirectory(),
        MemoryHomeStore() if "home" in roles else None,
        runInThread=_inline,
        secret=b"test secret",
        adapters={},
    )
    for address, home in ((ALICE, "hs1"), (CAROL, "hs2")):
        credentials = makeCredentials(f"{address.local}-pw", 4096).serialise()
        gateway.directory.addAccount(AccountRecord(address, home, "", True, credentials))
    return gateway


def _inline(f: Callable[..., T], *args: object) -> Deferred[T]:
    """
    Run C{f} now (password hashing, in tests).
    """
    return maybeDeferred(f, *args)


@implementer(IHomeLocator)
class FixedLocator:
    """
    An L{imgateway.interfaces.IHomeLocator} with fixed answers.
    """

    def __init__(self, homes: dict[Address, str]) -> None:
        self.homes = homes
        self.asked: list[Address] = []

    def homeOf(self, address: Address) -> Deferred[str | None]:
        self.asked.append(address)
        return succeed(self.homes.get(address))

    def forget(self, address: Address) -> None:
        pass


class DecideFrontTests(SynchronousTestCase):
    """
    L{decideFront}.
    """

    def setUp(self) -> None:
        self.gateway = routerGateway(Clock())
        self.locator = FixedLocator({ALICE: "hs1", CAROL: "hs2"})

    def decide(self, user: Address, peer: object, face: str = "native", proxying: bool = False) -> FrontDecision:
        return self.successResultOf(decideFront(self.gateway.config, self.locator, user, peer, face, proxying))

    def test_gatewayHasLocator(self) -> None:
        """
        The gateway offers its faces an L{IHomeLocator}.
        """
        self.assertTrue(verifyObject(IGateway, self.gateway))
        self.assertTrue(verifyObject(IHomeLocator, self.gateway.locator))
        self.assertTrue(verifyObject(IHomeLocator, self.locator))

    def test_homeServerRedirects(self) -> None:
        """
        A home server that is no router (roles C{["home"]}) serves only the
        users the directory homes on it: a client of a user homed on another
        server, whatever its network, is redirected to that server's
        endpoint for the face, and the decision is logged.
        """
        self.gateway = routerGateway(Clock(), roles=frozenset({"home"}))
        self.assertIs(self.decide(ALICE, EXTERNAL).action, FrontAction.SERVE)
        for peer in (INTERNAL, EXTERNAL):
            with capturedLogs() as events:
                decision = self.decide(CAROL, peer)
            self.assertEqual(decision, FrontDecision(FrontAction.REDIRECT, "hs2", HS2_NATIVE))
            [line] = [formatEvent(e) for e in events]
            for part in ("Redirecting carol@corp.example", peer.host, "hs2.corp.example:5310", "reached hs1"):
                self.assertIn(part, line)
        self.assertEqual(self.decide(CAROL, EXTERNAL, "xmpp").location, HS2_XMPP)

    def test_homeServerNoEndpoint(self) -> None:
        """
        A home server that is no router answers a user homed on a server
        with no endpoint for the face as unavailable, with a warning naming
        the missing key.
        """
        self.gateway = routerGateway(Clock(), roles=frozenset({"home"}), hs2=ServerConfig("hs2", frozenset({"home"}), native=HS2_NATIVE))
        with capturedLogs() as events:
            decision = self.decide(CAROL, INTERNAL, "xmpp")
        self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2"))
        [line] = [formatEvent(e) for e in events]
        self.assertIn("no xmpp endpoint in [servers.hs2]", line)

    def test_singleHost(self) -> None:
        """
        A single-host gateway (no C{[servers]}, so no locator) serves
        everyone, and does not even look the user up.
        """
        self.gateway = memoryGateway(Clock())
        self.assertIsNone(self.gateway.locator)
        self.assertIs(self.successResultOf(decideFront(self.gateway.config, None, CAROL, INTERNAL, "native")), SERVE)
        self.assertIs(self.decide(CAROL, INTERNAL).action, FrontAction.SERVE)
        self.assertEqual(self.locator.asked, [])

    def test_homedHere(self) -> None:
        """
        A user homed on this process is served here, from anywhere.
        """
        for peer in (INTERNAL, EXTERNAL):
            self.assertIs(self.decide(ALICE, peer).action, FrontAction.SERVE)

    def test_noHomeRemembered(self) -> None:
        """
        A remembered answer that the user has no home (read before its
        account was made, or while it was being moved) is read again: the
        user just authenticated. Homed here, it is served; homed elsewhere,
        it is not, on a router or a home server.
        """
        for roles in (frozenset({"router", "home"}), frozenset({"home"})):
            self.gateway = routerGateway(Clock(), roles=roles)
            locator = DirectoryHomeLocator(self.gateway.directory, Clock(), 30.0)
            for user in (ALICE, CAROL):
                account = self.successResultOf(self.gateway.directory.getAccount(user))
                del self.gateway.directory.accounts[user]  # type: ignore[attr-defined]
                self.assertIsNone(self.successResultOf(locator.homeOf(user)))
                self.gateway.directory.accounts[user] = account  # type: ignore[attr-defined]
            decide = lambda user: self.successResultOf(decideFront(self.gateway.config, locator, user, INTERNAL, "native"))
            self.assertIs(decide(ALICE), SERVE)
            self.assertIs(decide(CAROL).action, FrontAction.REDIRECT)

    def test_noHome(self) -> None:
        """
        A user the directory has no home for even when asked again (its
        account was disabled or removed as it logged in) is not served:
        unavailable, with a warning.
        """
        self.locator.homes.clear()
        for roles in (frozenset({"router", "home"}), frozenset({"home"})):
            self.gateway = routerGateway(Clock(), roles=roles)
            with capturedLogs() as events:
                self.assertIs(self.decide(ALICE, INTERNAL).action, FrontAction.UNAVAILABLE)
            [line] = [formatEvent(e) for e in events]
            self.assertIn("names no home server for it", line)

    def test_routerOnlyCannotServe(self) -> None:
        """
        A router without the C{home} role cannot serve a user the directory
        homes on it (a configuration error): such a user is answered as
        unavailable, and a warning says why.
        """
        self.gateway = routerGateway(Clock(), roles=frozenset({"router"}))
        self.locator.homes[CAROL] = "hs1"
        with capturedLogs() as events:
            decision = self.decide(CAROL, INTERNAL)
        self.assertIs(decision.action, FrontAction.UNAVAILABLE)
        [line] = [formatEvent(e) for e in events]
        self.assertIn("its roles are router", line)

    def test_internalRedirected(self) -> None:
        """
        A client in an internal network, of a user homed on another server,
        is redirected to that server's endpoint for the face, and the
        decision is logged with the client, the user, the home and the
        network that matched.
        """
        with capturedLogs() as events:
            decision = self.decide(CAROL, INTERNAL)
        self.assertEqual(decision, FrontDecision(FrontAction.REDIRECT, "hs2", HS2_NATIVE, ip_network("10.0.0.0/8")))
        self.assertEqual(self.decide(CAROL, INTERNAL, "xmpp").location, HS2_XMPP)
        [line] = [formatEvent(e) for e in events]
        for part in ("carol@corp.example", "10.1.2.3", "hs2", "hs2.corp.example:5310", "10.0.0.0/8", "native"):
            self.assertIn(part, line)

    def test_firstNetworkThatMatches(self) -> None:
        """
        The decision names the first of the internal networks that holds
        the client.
        """
        self.gateway = routerGateway(Clock(), networks=("127.0.0.1/32", "127.0.0.0/8"))
        self.assertEqual(self.decide(CAROL, LOOPBACK).network, ip_network("127.0.0.1/32"))
        self.assertEqual(
            self.decide(CAROL, IPv4Address("TCP", "127.0.0.2", 1)).network, ip_network("127.0.0.0/8")
        )

    def test_ipv6(self) -> None:
        """
        IPv6 networks hold IPv6 clients; an IPv4-mapped IPv6 client counts
        as its IPv4 address.
        """
        self.gateway = routerGateway(Clock(), networks=("fd00::/8", "10.0.0.0/8"))
        self.assertEqual(self.decide(CAROL, IPv6Address("TCP", "fd12::1", 1)).network, ip_network("fd00::/8"))
        self.assertEqual(self.decide(CAROL, IPv6Address("TCP", "::ffff:10.0.0.1", 1)).network, ip_network("10.0.0.0/8"))

    def test_external(self) -> None:
        """
        A client in none of the internal networks, of a user homed on
        another server, is answered as unavailable when this process cannot
        proxy sessions (it has no links), and that is logged.
        """
        for peer in (EXTERNAL, UNIXAddress(b"/tmp/socket")):
            with capturedLogs() as events:
                decision = self.decide(CAROL, peer)
            self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2"))
            [line] = [formatEvent(e) for e in events]
            self.assertIn("carol@corp.example", line)
            self.assertIn("internal_networks", line)

    def test_proxied(self) -> None:
        """
        On a router that proxies sessions, a client in none of the internal
        networks, of a user homed on another server that takes links, is
        proxied there; the decision is logged with the client's address;
        internal clients are still redirected.
        """
        self.gateway = routerGateway(Clock(), hs2=HS2_LINKED)
        for face in ("native", "xmpp"):
            with capturedLogs() as events:
                decision = self.decide(CAROL, EXTERNAL, face, proxying=True)
            self.assertEqual(decision, FrontDecision(FrontAction.PROXY, "hs2"))
            [line] = [formatEvent(e) for e in events]
            self.assertIn("Proxying carol@corp.example", line)
            self.assertIn("192.0.2.7", line)
            self.assertIn("internal_networks", line)
        self.assertIs(self.decide(CAROL, INTERNAL, proxying=True).action, FrontAction.REDIRECT)
        self.assertIs(self.decide(ALICE, EXTERNAL, proxying=True).action, FrontAction.SERVE)

    def test_proxyNeedsLink(self) -> None:
        """
        A user whose home server takes no links (no C{[servers.NAME] link})
        cannot be proxied: its external client is answered as unavailable,
        with a warning that says why.
        """
        with capturedLogs() as events:
            decision = self.decide(CAROL, EXTERNAL, proxying=True)
        self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2"))
        [line] = [formatEvent(e) for e in events]
        self.assertIn("[servers.hs2]", line)

    def test_noEndpoint(self) -> None:
        """
        When the home server has no endpoint for the face, an internal
        client is answered as unavailable, and the missing key is logged as
        a warning.
        """
        self.gateway = routerGateway(Clock(), hs2=ServerConfig("hs2", frozenset({"home"}), native=HS2_NATIVE))
        with capturedLogs() as events:
            decision = self.decide(CAROL, INTERNAL, "xmpp")
        self.assertIs(decision.action, FrontAction.UNAVAILABLE)
        [line] = [formatEvent(e) for e in events]
        self.assertIn("[servers.hs2]", line)
        self.assertIn("xmpp", line)

    def test_locatorFails(self) -> None:
        """
        When the directory cannot be read, the decision fails as the
        look-up did.
        """

        class Failing(FixedLocator):
            def homeOf(self, address: Address) -> Deferred[str | None]:
                return fail(PersistenceFailed("directory unreachable"))

        d = decideFront(self.gateway.config, Failing({}), CAROL, INTERNAL, "native")
        self.failureResultOf(d, PersistenceFailed)


class NoRedirectFaceTests(SynchronousTestCase):
    """
    L{decideFront} for a face that cannot redirect (C{irc}): its clients
    are proxied from any network where this process can proxy, and
    answered as unavailable otherwise; never redirected.
    """

    def setUp(self) -> None:
        self.gateway = routerGateway(Clock(), hs2=HS2_LINKED)
        self.locator = FixedLocator({ALICE: "hs1", CAROL: "hs2"})

    def decide(self, user: Address, peer: object, proxying: bool = True) -> tuple[FrontDecision, list[str]]:
        with capturedLogs() as events:
            decision = self.successResultOf(decideFront(self.gateway.config, self.locator, user, peer, "irc", proxying))
        return decision, [formatEvent(e) for e in events]

    def test_internalProxied(self) -> None:
        """
        On a router, a client from an internal network, of a user homed on
        another server that takes links, is proxied there (not redirected);
        the log names the client, the face, the home and the rule: the
        internal network, and that the face does not redirect.
        """
        decision, [line] = self.decide(CAROL, INTERNAL)
        self.assertEqual(decision, FrontDecision(FrontAction.PROXY, "hs2", None, ip_network("10.0.0.0/8")))
        for part in ("Proxying carol@corp.example (irc, from", "10.1.2.3", "to its home server hs2",
                     "internal network 10.0.0.0/8", "the irc face does not redirect"):
            self.assertIn(part, line)

    def test_externalProxied(self) -> None:
        """
        On a router, a client in none of the internal networks is proxied
        too, and the rule logged says so.
        """
        decision, [line] = self.decide(CAROL, EXTERNAL)
        self.assertEqual(decision, FrontDecision(FrontAction.PROXY, "hs2"))
        for part in ("Proxying carol@corp.example (irc, from", "192.0.2.7", "in none of [router] internal_networks"):
            self.assertIn(part, line)

    def test_homedHere(self) -> None:
        """
        A user homed on this process is served here, from anywhere, and
        nothing is logged.
        """
        for peer in (INTERNAL, EXTERNAL):
            self.assertEqual(self.decide(ALICE, peer), (SERVE, []))

    def test_routerCannotProxy(self) -> None:
        """
        A router that cannot proxy to the user's home server (no links, or
        none in C{[servers.hs2]}) answers an internal or external client as
        unavailable, with a warning naming the rule and why.
        """
        for proxying, hs2 in ((False, HS2_LINKED), (True, ServerConfig("hs2", frozenset({"home"}), native=HS2_NATIVE))):
            self.gateway = routerGateway(Clock(), hs2=hs2)
            decision, [line] = self.decide(CAROL, INTERNAL, proxying)
            self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2", None, ip_network("10.0.0.0/8")))
            for part in ("Not serving carol@corp.example (irc, from", "10.1.2.3", "internal network 10.0.0.0/8",
                         "the irc face does not redirect", "[servers.hs2]"):
                self.assertIn(part, line)
            decision, [line] = self.decide(CAROL, EXTERNAL, proxying)
            self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2"))
            self.assertIn("in none of [router] internal_networks", line)

    def test_homeServerRefuses(self) -> None:
        """
        A home server that is no router (so has no proxy) answers a client
        of a user homed elsewhere as unavailable, whatever its network,
        where the native and XMPP faces would redirect; the warning says
        that the client reached a home server that is not its own, and that
        this one proxies only with the role C{router}.
        """
        self.gateway = routerGateway(Clock(), roles=frozenset({"home"}), hs2=HS2_LINKED)
        for peer in (INTERNAL, EXTERNAL):
            decision, [line] = self.decide(CAROL, peer, proxying=False)
            self.assertEqual(decision, FrontDecision(FrontAction.UNAVAILABLE, "hs2"))
            for part in ("Not serving carol@corp.example (irc, from", peer.host, "reached hs1, a home server that is not its own",
                         "hs1 proxies sessions only with the role router"):
                self.assertIn(part, line)
        self.assertIs(self.decide(ALICE, EXTERNAL, proxying=False)[0], SERVE)

    def test_homeServerThatProxies(self) -> None:
        """
        A home server that can proxy (the caller says so: a process with
        the roles C{home} and C{router} has a proxy) proxies a client of a
        user homed elsewhere over the link.
        """
        self.gateway = routerGateway(Clock(), roles=frozenset({"home"}), hs2=HS2_LINKED)
        decision, [line] = self.decide(CAROL, INTERNAL)
        self.assertEqual(decision, FrontDecision(FrontAction.PROXY, "hs2"))
        self.assertIn("reached hs1, a home server that is not its own, and the irc face does not redirect", line)


class IRCRouterFaceTests(SynchronousTestCase):
    """
    The IRC face (L{imgateway.adapters.irc.face}) of a router and of a home
    server: after a successful login, a user homed on another server is
    proxied there, from an internal network too, or told clearly why not.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def factory(self, gateway: Gateway) -> IRCFaceFactory:
        return IRCFaceFactory(gateway, IRCConfig(), self.clock)

    def test_internalProxied(self) -> None:
        """
        On a router that proxies sessions, carol from an internal network
        (where a native client would be redirected) and from outside gets
        the registration numerics and &contacts, served by a session on her
        home server (its C{proxy}), none here; a message sent to her reaches
        her IRC client.
        """
        gateway, hs2 = proxiedGateway(self.clock)
        factory = self.factory(gateway)
        for n, peer in enumerate((INTERNAL, EXTERNAL)):
            client = IRCClient(factory, peer, secure=True)
            commands = [m.command for m in client.register("carol", "carol:carol-pw")]
            self.assertIn("001", commands)
            self.assertIn("366", commands)
            self.assertFalse(client.closed)
            sessions = hs2.homeServer.sessionsOf(CAROL)
            self.assertEqual(len(sessions), n + 1)
            self.assertEqual(gateway.homeServer.sessionsOf(CAROL), [])
            sessions[-1].client.messageReceived(Message(ALICE, CAROL, f"hi carol {n}"))
            self.assertIn(("PRIVMSG", ("carol", f"hi carol {n}")), [(m.command, m.params) for m in client.read()])

    def test_routerWithoutProxy(self) -> None:
        """
        On a router that cannot proxy, carol from an internal network is
        not redirected: she is told her home server is not served here
        (C{ERROR}), the connection is closed, and no session is opened.
        """
        gateway = routerGateway(self.clock)
        client = IRCClient(self.factory(gateway), INTERNAL, secure=True)
        lines = client.register("carol", "carol:carol-pw")
        self.assertNotIn("001", [m.command for m in lines])
        self.assertIn(("ERROR", (f"Closing link: {UNAVAILABLE_TEXT}",)), [(m.command, m.params) for m in lines])
        self.assertTrue(client.closed)
        self.assertEqual(gateway.homeServer.sessionsOf(CAROL), [])

    def test_homeServerRefusesClearly(self) -> None:
        """
        On a home server that is no router, carol (homed on hs2) is told to
        connect to the domain's router, and the connection is closed;
        alice, homed here, logs in.
        """
        gateway = routerGateway(self.clock, roles=frozenset({"home"}), hs2=HS2_LINKED)
        factory = self.factory(gateway)
        client = IRCClient(factory, EXTERNAL, secure=True)
        lines = client.register("carol", "carol:carol-pw")
        self.assertIn(("ERROR", (f"Closing link: {NOT_HOMED_HERE_TEXT}",)), [(m.command, m.params) for m in lines])
        self.assertTrue(client.closed)
        alice = IRCClient(factory, EXTERNAL, secure=True)
        self.assertIn("001", [m.command for m in alice.register("alice", "alice:alice-pw")])
        self.assertEqual(len(gateway.homeServer.sessionsOf(ALICE)), 1)

    def test_wrongPasswordNoDecision(self) -> None:
        """
        A wrong password for a user homed elsewhere gets the same answer as
        for any wrong password (C{464}), and no decision is made or logged.
        """
        gateway = routerGateway(self.clock, roles=frozenset({"home"}), hs2=HS2_LINKED)
        client = IRCClient(self.factory(gateway), EXTERNAL, secure=True)
        with capturedLogs() as events:
            lines = client.register("carol", "carol:wrong")
        self.assertIn("464", [m.command for m in lines])
        self.assertFalse(any("home server" in formatEvent(e) for e in events))


class HomeServerOpensOnlyItsUsersTests(SynchronousTestCase):
    """
    A home server of a domain with several opens sessions only for the
    users the directory homes on it, whatever path led there (the last
    check, behind the faces' decision).
    """

    def setUp(self) -> None:
        self.gateway = routerGateway(Clock(), roles=frozenset({"home"}))

    def test_notHomedHere(self) -> None:
        """
        A session for carol (homed on hs2) is not opened on hs1, through
        the portal as directly: L{ServiceUnavailable}, and a warning.
        """
        with capturedLogs() as events:
            d = self.gateway.homeServer.openSession(CAROL, RecordingSessionClient())
            self.failureResultOf(d, ServiceUnavailable)
            login = self.gateway.portal.login(SASLAuthenticated(CAROL), RecordingSessionClient(), ISession)
            self.failureResultOf(login, ServiceUnavailable)
        self.assertEqual(self.gateway.homeServer.sessionsOf(CAROL), [])
        lines = [formatEvent(e) for e in events]
        self.assertIn("Not opening a session for carol@corp.example on hs1: the directory homes it on hs2", lines)

    def test_oldAnswerConfirmed(self) -> None:
        """
        A remembered answer that names another server (alice was homed
        there when it was read) is confirmed with the directory before
        refusing: alice, homed on hs1 now, gets her session.
        """
        directory = self.gateway.directory
        assert isinstance(directory, MemoryDirectory)
        directory.accounts[ALICE] = evolve(directory.accounts[ALICE], homeServer="hs2")
        assert self.gateway.locator is not None
        self.assertEqual(self.successResultOf(self.gateway.locator.homeOf(ALICE)), "hs2")
        directory.accounts[ALICE] = evolve(directory.accounts[ALICE], homeServer="hs1")
        session = self.successResultOf(self.gateway.homeServer.openSession(ALICE, RecordingSessionClient()))
        self.assertEqual(session.address, ALICE)

    def test_singleHost(self) -> None:
        """
        The domain's only home server opens sessions for every user of its
        domain, without asking where they are homed.
        """
        gateway = memoryGateway(Clock())
        gateway.directory.addAccount(AccountRecord(CAROL, "elsewhere", "", True, "{}"))
        self.successResultOf(gateway.homeServer.openSession(CAROL, RecordingSessionClient()))


class FailingProxy:
    """
    A router's proxy whose sessions cannot be opened.
    """

    def openSession(self, address: Address, client: object, label: str = "") -> Deferred[Any]:
        return fail(ServiceUnavailable("no answer from server hs2 within 10 s"))


def login(wire: Wire, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> Any:
    """
    Log in on C{wire}.

    @return: The last response and the client mechanism.
    """
    mech = clientMechanism(mechanism, user, password)
    r = wire.call("AUTH", "*", [("Mechanism", mechanism)], mech.start())
    while r.code == 110:
        r = wire.call("AUTH", "*", [], mech.step(r.body))
    return r, mech


class NativeRouterFaceTests(SynchronousTestCase):
    """
    The native face of a router: after a successful C{AUTH}, a user homed
    on another server is redirected (C{302}) or, from outside the internal
    networks, answered C{503}; the connection is then closed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = routerGateway(self.clock)
        self.factory = NativeServerFactory(self.gateway, NativeConfig(), self.clock)

    def sessionsOf(self, address: Address) -> int:
        return len(self.gateway.homeServer.sessionsOf(address))

    def test_redirectInternal(self) -> None:
        """
        carol, homed on hs2, logging in from an internal network, gets
        C{302} with C{Location: host:port} from C{[servers.hs2] native} and
        the SCRAM server-final message, which verifies; no session is opened
        here, and the connection is closed.
        """
        wire = Wire(self.factory, INTERNAL, secure=True)
        r, mech = login(wire, "carol", "carol-pw")
        self.assertEqual((r.code, r.reason), (302, "Moved Temporarily"))
        self.assertEqual(r.headers.get("Location"), "hs2.corp.example:5310")
        mech.verifyFinal(r.body)
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(self.sessionsOf(CAROL), 0)
        self.assertIsNone(wire.protocol.session)

    def test_redirectPlain(self) -> None:
        """
        The same with C{PLAIN} from loopback (C{127.0.0.1/32} is internal
        here).
        """
        wire = Wire(self.factory, LOOPBACK)
        r, _ = login(wire, "carol", "carol-pw", "PLAIN")
        self.assertEqual(r.code, 302)
        self.assertEqual(r.headers.get("Location"), "hs2.corp.example:5310")
        self.assertTrue(wire.transport.disconnecting)

    def test_external(self) -> None:
        """
        From outside the internal networks, carol gets C{503} and the
        connection is closed; no session is opened.
        """
        wire = Wire(self.factory, EXTERNAL, secure=True)
        with capturedLogs() as events:
            r, mech = login(wire, "carol", "carol-pw")
        self.assertEqual(r.code, 503)
        self.assertEqual(r.reason, "Your home server is not served here to your network")
        self.assertIsNone(r.headers.get("Location"))
        mech.verifyFinal(r.body)
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(self.sessionsOf(CAROL), 0)
        self.assertTrue(any("carol@corp.example" in formatEvent(e) for e in events))

    def test_proxied(self) -> None:
        """
        On a router that proxies sessions, carol from outside the internal
        networks logs in as on her home server: C{200} with her session
        (opened through the gateway's C{proxy}, not here), her requests go
        to that session, and what it is told reaches her.
        """
        self.gateway, hs2 = proxiedGateway(self.clock)
        self.factory = NativeServerFactory(self.gateway, NativeConfig(), self.clock)
        wire = Wire(self.factory, EXTERNAL, secure=True)
        r, mech = login(wire, "carol", "carol-pw")
        self.assertEqual(r.code, 200)
        mech.verifyFinal(r.body)
        [session] = hs2.homeServer.sessionsOf(CAROL)
        self.assertEqual(r.headers.get("Session"), session.sessionId)
        self.assertEqual(self.sessionsOf(CAROL), 0)
        self.assertFalse(wire.transport.disconnecting)
        self.assertEqual(wire.call("PUBLISH", "*", [("Presence", "away")]).code, 200)
        self.assertIs(session.presence.state, PresenceState.AWAY)
        session.client.messageReceived(Message(ALICE, CAROL, "hi carol"))
        [message] = [f for f in wire.frames() if isinstance(f, Request)]
        self.assertEqual((message.method, message.body), ("MESSAGE", b"hi carol"))

    def test_proxyUnavailable(self) -> None:
        """
        When the proxied session cannot be opened (the home server cannot
        be reached), carol gets C{503}.
        """
        self.gateway, hs2 = proxiedGateway(self.clock)
        self.gateway.proxy = FailingProxy()
        self.factory = NativeServerFactory(self.gateway, NativeConfig(), self.clock)
        wire = Wire(self.factory, EXTERNAL, secure=True)
        r, mech = login(wire, "carol", "carol-pw")
        self.assertEqual((r.code, r.reason), (503, "Your home server is unavailable"))

    def test_homedHereServed(self) -> None:
        """
        alice, homed on this process, logs in here from an internal network
        as on a single-host gateway.
        """
        wire = Wire(self.factory, INTERNAL, secure=True)
        r, _ = login(wire, "alice", "alice-pw")
        self.assertEqual(r.code, 200)
        self.assertFalse(wire.transport.disconnecting)
        self.assertEqual(self.sessionsOf(ALICE), 1)

    def test_homeServerRedirects(self) -> None:
        """
        On a home server that is no router, carol (homed on hs2) gets
        C{302} to hs2, from outside the internal networks too, and no
        session here; alice, homed here, logs in.
        """
        self.gateway = routerGateway(self.clock, roles=frozenset({"home"}))
        self.factory = NativeServerFactory(self.gateway, NativeConfig(), self.clock)
        wire = Wire(self.factory, EXTERNAL, secure=True)
        r, mech = login(wire, "carol", "carol-pw")
        self.assertEqual((r.code, r.headers.get("Location")), (302, "hs2.corp.example:5310"))
        mech.verifyFinal(r.body)
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(self.sessionsOf(CAROL), 0)
        r, _ = login(Wire(self.factory, EXTERNAL, secure=True), "alice", "alice-pw")
        self.assertEqual(r.code, 200)
        self.assertEqual(self.sessionsOf(ALICE), 1)

    def test_wrongPasswordNoLeak(self) -> None:
        """
        A wrong password for carol (homed elsewhere) is answered exactly as
        one for an account that does not exist: nothing is decided before
        authentication.
        """
        answers = []
        for user in ("carol", "nobody"):
            wire = Wire(self.factory, INTERNAL, secure=True)
            r, _ = login(wire, user, "wrong")
            answers.append((r.code, r.reason, r.headers.get("Location")))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], 401)

    def test_directoryFails(self) -> None:
        """
        When the home cannot be looked up (the directory fails), the login
        is answered C{401} with C{Error: temporary-auth-failure}, as when
        the password cannot be checked, and no session is opened.
        """

        @implementer(IHomeLocator)
        class Failing(FixedLocator):
            def homeOf(self, address: Address) -> Deferred[str | None]:
                return fail(PersistenceFailed("directory unreachable"))

        self.gateway.locator = Failing({})
        wire = Wire(self.factory, INTERNAL, secure=True)
        r, _ = login(wire, "carol", "carol-pw")
        self.assertEqual((r.code, r.headers.get("Error")), (401, "temporary-auth-failure"))
        self.assertEqual(self.sessionsOf(CAROL), 0)

    def test_lostDuringLookUp(self) -> None:
        """
        A connection lost while the home is looked up gets nothing, and no
        session is opened.
        """
        held: Deferred[str | None] = Deferred()

        class Holding(FixedLocator):
            def homeOf(self, address: Address) -> Deferred[str | None]:
                return held

        self.gateway.locator = Holding({})
        wire = Wire(self.factory, INTERNAL, secure=True)
        mech = clientMechanism("PLAIN", "alice", "alice-pw")
        wire.send("AUTH", "*", [("Mechanism", "PLAIN")], mech.start())
        wire.protocol.connectionLost()
        wire.transport.clear()
        held.callback("hs1")
        self.assertEqual(wire.transport.value(), b"")
        self.assertEqual(self.sessionsOf(ALICE), 0)


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    A client endpoint that connects, in memory (L{twisted.test.iosim}), to
    a native face on a memory gateway, from C{peer}.

    @ivar pumps: The connections made, in order.
    """

    def __init__(self, factory: NativeServerFactory, peer: IPv4Address, clock: Clock) -> None:
        self.factory = factory
        self.peer = peer
        self.clock = clock
        self.pumps: list[IOPump] = []

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        host = IPv4Address("TCP", "127.0.0.1", 5300)
        server = self.factory.buildProtocol(self.peer)
        client = protocolFactory.buildProtocol(host)
        self.pumps.append(
            iosimConnect(
                server,
                FakeTransport(server, True, host, self.peer),
                client,
                FakeTransport(client, False, self.peer, host),
                clock=self.clock,
            )
        )
        return succeed(client)


class DisconnectRecorder(ClientObserver):
    """
    Records what the observer is told of disconnections.
    """

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def disconnected(self, reason: str) -> None:
        self.reasons.append(reason)


class ClientRedirectTests(SynchronousTestCase):
    """
    L{imgateway.client.protocol.connect} follows a router's C{302} to the
    home server it names, at most C{maxRedirects} times.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        router = routerGateway(self.clock, roles=frozenset({"router"}))
        self.router = MemoryEndpoint(NativeServerFactory(router, NativeConfig(), self.clock), INTERNAL, self.clock)
        home = memoryGateway(self.clock)
        credentials = makeCredentials("carol-pw", 4096).serialise()
        home.directory.addAccount(AccountRecord(CAROL, "hs2", "", True, credentials))
        self.homeGateway = home
        self.home = MemoryEndpoint(NativeServerFactory(home, NativeConfig(), self.clock), INTERNAL, self.clock)
        self.followed: list[HostPort] = []
        self.loops = 0

    def redirectTo(self, location: HostPort) -> IStreamClientEndpoint:
        """
        The home server's endpoint, after C{self.loops} more times the
        router's.
        """
        self.followed.append(location)
        if len(self.followed) <= self.loops:
            return self.router
        return self.home

    def settle(self, d: Deferred[Any]) -> None:
        for _ in range(20):
            for pump in self.router.pumps + self.home.pumps:
                pump.flush()
            if d.called:
                return

    def connect(self, maxRedirects: int = 3, observer: ClientObserver | None = None, **kw: Any) -> Deferred[Any]:
        kw.setdefault("redirectTo", self.redirectTo)
        d = clientConnect(self.clock, self.router, "carol", "carol-pw", observer, maxRedirects=maxRedirects, **kw)
        self.settle(d)
        return d

    def test_followed(self) -> None:
        """
        Redirected by the router, the client connects to the location it
        names, logs in there with the same credentials and publishes its
        presence; the router's connection is closed, and the observer hears
        nothing of it.
        """
        observer = DisconnectRecorder()
        client = self.successResultOf(self.connect(observer=observer))
        self.assertEqual(client.address, CAROL)
        self.assertEqual(self.followed, [HS2_NATIVE])
        self.assertEqual(len(self.router.pumps), 1)
        self.assertTrue(self.router.pumps[0].client.transport.disconnected)
        self.assertEqual(len(self.homeGateway.homeServer.sessionsOf(CAROL)), 1)
        self.assertIs(client.observer, observer)
        self.assertEqual(observer.reasons, [])

    def test_atMost(self) -> None:
        """
        With C{maxRedirects} 3, three redirects are followed (the fourth
        connection logs in) ...
        """
        self.loops = 2
        client = self.successResultOf(self.connect(3))
        self.assertEqual(client.address, CAROL)
        self.assertEqual(len(self.followed), 3)

    def test_tooMany(self) -> None:
        """
        ... and a fourth redirect fails the login with L{TooManyRedirects},
        naming where it was sent, without following it.
        """
        self.loops = 3
        e = self.failureResultOf(self.connect(3), TooManyRedirects).value
        self.assertEqual(len(self.followed), 3)
        self.assertEqual(e.locations, (HS2_NATIVE,) * 4)
        self.assertIn("redirected more than 3 times", str(e))
        self.assertEqual(self.home.pumps, [])
        for pump in self.router.pumps:
            self.assertTrue(pump.client.transport.disconnected)

    def test_none(self) -> None:
        """
        With C{maxRedirects} 0, the first redirect fails the login.
        """
        self.failureResultOf(self.connect(0), TooManyRedirects)
        self.assertEqual(self.followed, [])

    def test_noWayToFollow(self) -> None:
        """
        Given an endpoint object and no C{redirectTo}, a redirect fails the
        login with L{Redirected}, which names the location.
        """
        e = self.failureResultOf(self.connect(redirectTo=None), Redirected).value
        self.assertEqual(e.location, HS2_NATIVE)

    def test_unavailable(self) -> None:
        """
        The router's C{503} (a client outside its internal networks) fails
        the login with L{ServiceUnavailable}, and C{imgateway-client} says
        why.
        """
        self.router.peer = EXTERNAL
        self.router.factory = NativeServerFactory(
            self.router.factory.gateway, NativeConfig(allowPlaintextAuth=True), self.clock
        )
        e = self.failureResultOf(self.connect(), ServiceUnavailable).value
        self.assertEqual(
            describeConnectFailure(e, "tcp:router:5300", "carol"),
            "cannot log in as carol: Your home server is not served here to your network (503)",
        )
