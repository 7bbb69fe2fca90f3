"""
Unit tests for the one path every link's state takes to the status page
(L{imgateway.core.linkinfo}, wired by L{imgateway.gateway.addStatus}):
each kind of link (server links and routes, XMPP component and federation,
an IRC network's watcher and puppets) says how it is through its service's
C{linkInfo}, and C{/healthz} and C{imgateway_link_up} show just that, with
no code of its kind in L{imgateway.status}.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.irc.network import IRCNetworkConfig, IRCNetworkService
from imgateway.adapters.xmpp.federation_service import FederationConfig, FederationService
from imgateway.adapters.xmpp.s2s import S2SConfig
from imgateway.config import StatusConfig
from imgateway.core.events import Message, SubscriptionEvent, SubscriptionKind
from imgateway.core.linkinfo import LinkInfo, LinkInfoSource, findLinkSources, linkInfos
from imgateway.gateway import Gateway, addLinks, addStatus
from imgateway.testing import memoryGateway
from tests import test_xmpp_component
from tests.test_irc_network import ALICE, FRANK, FakeEndpoint, feed
from tests.test_link import configFor
from tests.test_net_srv import FakeResolver
from tests.test_status_metrics import samples
from tests.test_status_web import render
from tests.test_xmpp_s2s import ROUTE, THEIRS, message


class _Links(Service):
    """
    A service that keeps links up, with the states it is given.
    """

    def __init__(self, *infos: LinkInfo) -> None:
        self.infos = list(infos)

    def linkInfo(self) -> list[LinkInfo]:
        return self.infos


class StatusView:
    """
    The status page of a gateway whose tree is C{top}, as L{addStatus}
    builds it: the links' part of C{/healthz}, and C{imgateway_link_up}.
    """

    def __init__(self, top: MultiService, gateway: Gateway) -> None:
        gateway.config = attrs.evolve(gateway.config, status=StatusConfig(("tcp:9310:interface=127.0.0.1",)))
        addStatus(top, gateway, MemoryReactor())
        [listener, _] = list(top.getServiceNamed("status"))
        self._root: Any = listener.factory.resource
        self._metrics = gateway.metrics

    def links(self) -> dict[str, str | None]:
        """
        @return: Each link check of C{/healthz} (C{"server hs2"}) to its
            problem (C{None} when up).
        """
        request = render(self._root, b"/healthz")
        checks = json.loads(b"".join(request.written))["checks"]
        return {c["name"]: c.get("problem") for c in checks if c["kind"] == "link"}

    def up(self) -> dict[tuple[str, str], float]:
        """
        @return: (kind, link) to the value of C{imgateway_link_up}.
        """
        return {
            (dict(labels)["kind"], dict(labels)["link"]): value
            for (name, labels), value in samples(self._metrics).items()
            if name == "imgateway_link_up"
        }

    def connects(self, kind: str, link: str) -> float | None:
        """
        @return: C{imgateway_link_connects_total} of one link, or C{None}
            when it has none.
        """
        return samples(self._metrics).get(("imgateway_link_connects_total", (("kind", kind), ("link", link))))


class LinkInfoTests(SynchronousTestCase):
    """
    L{LinkInfo}, L{findLinkSources} and L{linkInfos}.
    """

    def test_problem(self) -> None:
        """
        A link is healthy when up, or when down but not required; a
        required link that is down has a problem naming its detail.
        """
        self.assertIsNone(LinkInfo("server", "hs2", True).problem)
        self.assertIsNone(LinkInfo("server", "hs2", False, "idle", required=False).problem)
        self.assertEqual(LinkInfo("server", "hs2", False, "1 waiting").problem, "down: 1 waiting")
        self.assertEqual(LinkInfo("server", "hs2", False).problem, "down")

    def test_repr(self) -> None:
        """
        Its repr (what the operator's console shows) says up, down or idle
        (down, not required).
        """
        self.assertEqual(repr(LinkInfo("server", "hs2", True, "0 waiting")), "<link server hs2 up (0 waiting)>")
        self.assertEqual(repr(LinkInfo("server", "hs2", False)), "<link server hs2 down>")
        self.assertEqual(repr(LinkInfo("server", "hs2", False, required=False)), "<link server hs2 idle>")

    def test_findLinkSources(self) -> None:
        """
        The sources are found at any depth, in order, but not under a
        source (it speaks for its children).
        """
        root = MultiService()
        first = _Links(LinkInfo("a", "1", True))
        first.setServiceParent(root)
        nested = MultiService()
        nested.setServiceParent(root)
        outer = type("Outer", (MultiService,), {"linkInfo": lambda self: [LinkInfo("b", "2", False)]})()
        outer.setServiceParent(nested)
        _Links(LinkInfo("hidden", "3", True)).setServiceParent(outer)
        sources = findLinkSources(root)
        self.assertEqual(sources, [first, outer])
        self.assertIsInstance(outer, LinkInfoSource)
        self.assertEqual(linkInfos(sources), [LinkInfo("a", "1", True), LinkInfo("b", "2", False)])

    def test_status(self) -> None:
        """
        Any service of the tree that gives L{LinkInfo}s has them in
        C{/healthz} (named by kind and name) and in C{imgateway_link_up},
        as they are at each request; C{imgateway_link_connects_total} only
        for those that count it.
        """
        gateway = memoryGateway(Clock())
        top = MultiService()
        links = _Links(LinkInfo("custom", "one", True, connects=2), LinkInfo("custom", "two", False, "why"))
        links.setServiceParent(top)
        view = StatusView(top, gateway)
        self.assertEqual(view.links(), {"custom one": None, "custom two": "down: why"})
        self.assertEqual(view.up(), {("custom", "one"): 1, ("custom", "two"): 0})
        self.assertEqual(view.connects("custom", "one"), 2)
        self.assertIsNone(view.connects("custom", "two"))
        links.infos = [LinkInfo("custom", "two", True)]
        self.assertEqual(view.links(), {"custom two": None})
        self.assertEqual(view.up(), {("custom", "two"): 1})


class ServerLinkStatusTests(SynchronousTestCase):
    """
    Server links and static routes (L{imgateway.router.link.LinkRoutes})
    and the incoming link connections, on the status page.
    """

    def test_links(self) -> None:
        """
        Each configured server and static route is listed: idle (up for
        C{/healthz}, 0 in C{imgateway_link_up}) until first used, then
        down while not connected; the incoming connections are never down.
        """
        gateway = attrs.evolve(memoryGateway(Clock()), config=configFor("hs1"))
        top = MultiService()
        links: Any = addLinks(top, gateway, MemoryReactorClock(), resolver=FakeResolver({}, {}))
        view = StatusView(top, gateway)
        servers = {s.name for s in gateway.config.servers.values() if s.link is not None and s.name != "hs1"}
        expected: dict[str, str | None] = {f"server {name}": None for name in servers}
        expected.update({"domain partner.example": None, "server-incoming all": None})
        self.assertEqual(view.links(), expected)
        self.assertEqual(view.up()[("server", "hs2")], 0)
        self.assertEqual(view.connects("server", "hs2"), 0)
        links.routes.toServer("hs2")
        self.assertEqual(view.links()["server hs2"], "down: 0 waiting")
        self.assertEqual(view.up()[("server", "hs2")], 0)
        self.assertEqual(view.up()[("server-incoming", "all")], 0)

    def test_foundByDNS(self) -> None:
        """
        A link to a domain found through DNS (not configured) is listed,
        but not required: not down for C{/healthz} while not connected.
        """
        gateway = attrs.evolve(memoryGateway(Clock()), config=configFor("hs1"))
        top = MultiService()
        links: Any = addLinks(top, gateway, MemoryReactorClock(), resolver=FakeResolver({}, {}))
        view = StatusView(top, gateway)
        links.routes._client("domain found.example", "domain found.example", object())
        self.assertIsNone(view.links()["domain found.example"])
        self.assertEqual(view.up()[("domain", "found.example")], 0)


class ComponentStatusTests(SynchronousTestCase):
    """
    An XMPP component link (its L{ComponentService}) on the status page,
    against the in-memory server of C{tests/test_xmpp_component.py} (its
    set-up, without its tests).
    """

    service: Any
    gateway: Any
    servers: list[Any]
    pump: Any
    _fixture: Any = test_xmpp_component.LinkTests
    setUp = _fixture.setUp
    stop = _fixture.stop
    connect = _fixture.connect

    def test_status(self) -> None:
        """
        Down until its stream is authenticated, up then (counted once),
        down again once it is lost.
        """
        top = MultiService()
        top.addService(self.service)
        view = StatusView(top, self.gateway)
        self.assertEqual(view.links(), {"xmpp-component gw.xmpp.example": "down: to tcp:127.0.0.1:5347"})
        self.assertEqual(view.up(), {("xmpp-component", "gw.xmpp.example"): 0})
        self.connect()
        self.assertEqual(view.links(), {"xmpp-component gw.xmpp.example": None})
        self.assertEqual(view.up(), {("xmpp-component", "gw.xmpp.example"): 1})
        self.assertEqual(view.connects("xmpp-component", "gw.xmpp.example"), 1)
        self.servers[0].transport.loseConnection()
        self.pump.flush()
        self.assertEqual(view.links(), {"xmpp-component gw.xmpp.example": "down: to tcp:127.0.0.1:5347"})


class FederationStatusTests(SynchronousTestCase):
    """
    XMPP federation (L{FederationService}) on the status page.
    """

    def test_status(self) -> None:
        """
        A link to a domain of C{[xmpp.s2s] routes} with stanzas waiting is
        down; one to a domain found through DNS is listed, not required;
        the incoming streams are never down.
        """
        gateway = memoryGateway(MemoryReactorClock())
        gateway.dataDir = FilePath(self.mktemp())
        gateway.dataDir.makedirs()
        config = FederationConfig(S2SConfig(requireTLS=False, useDNS=False, routes={THEIRS: ROUTE}))
        service = FederationService(gateway, config, None)
        top = MultiService()
        top.addService(service)
        view = StatusView(top, gateway)
        self.assertEqual(view.links(), {"xmpp-s2s-incoming all": None})
        waiting = service.manager.send(THEIRS, message())
        self.assertEqual(view.links(), {f"xmpp-s2s {THEIRS}": "down: 1 waiting", "xmpp-s2s-incoming all": None})
        self.assertEqual(view.up(), {("xmpp-s2s", THEIRS): 0, ("xmpp-s2s-incoming", "all"): 0})
        other = service.manager.send("elsewhere.example", message(recipient="juliet@elsewhere.example"))
        self.assertIsNone(view.links()["xmpp-s2s elsewhere.example"])
        self.successResultOf(service.manager.stop())
        self.failureResultOf(waiting)
        self.failureResultOf(other)


class IRCStatusTests(SynchronousTestCase):
    """
    An IRC network (L{IRCNetworkService}): its presence watcher and its
    users' puppets on the status page.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        self.endpoints: list[FakeEndpoint] = []

        def endpointFactory() -> FakeEndpoint:
            self.endpoints.append(FakeEndpoint())
            return self.endpoints[-1]

        config = IRCNetworkConfig("libera", "libera.irc", "tcp:x:1", nickTemplate="{user}[corp]")
        self.service = IRCNetworkService(self.gateway, config, endpointFactory)
        self.route = self.service.route
        self.addCleanup(self.route.stop)

    def test_status(self) -> None:
        """
        The watcher is idle (not down) until someone is watched, then down
        while connecting; a puppet is down while connecting, up once
        registered; a puppet the network banned is listed, not required.
        """
        top = MultiService()
        top.addService(self.service)
        view = StatusView(top, self.gateway)
        self.assertEqual(view.links(), {"irc-watcher libera": None})
        self.assertEqual(view.up(), {("irc-watcher", "libera"): 0})
        self.route.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, ALICE, FRANK))
        self.route.deliver(Message(ALICE, FRANK, "hi"))
        self.assertEqual(
            view.links(),
            {
                "irc-watcher libera": "down: connecting (0 failed), 0 line(s) waiting",
                f"irc-puppet libera {ALICE}": "down: connecting (0 failed), 1 line(s) waiting",
            },
        )
        puppet = self.route.puppets[ALICE].link.latest
        assert puppet is not None
        feed(puppet, ":irc.test 001 alice[corp] :Welcome alice[corp]!alice@gw.example")
        self.assertIsNone(view.links()[f"irc-puppet libera {ALICE}"])
        self.assertEqual(view.up()[("irc-puppet", f"libera {ALICE}")], 1)
        feed(puppet, "ERROR :Closing link: alice[127.0.0.1] (You are banned)")
        assert puppet.transport is not None
        puppet.transport.loseConnection()
        self.assertIsNone(view.links()[f"irc-puppet libera {ALICE}"])
        self.assertEqual(view.up()[("irc-puppet", f"libera {ALICE}")], 0)
        self.clock.advance(self.service.config.statusWait)
