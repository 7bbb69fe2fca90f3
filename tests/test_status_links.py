"""
Unit tests for what the server links count and report
(L{imgateway.router.link}, wired by L{imgateway.gateway.addLinks}): their
refusals for C{max_queue} and C{max_incoming}, how many times each came
up, and the refusals for C{[auth] password_queue}; on the in-memory
network of C{tests/test_link.py}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.framing import Headers, Request
from imgateway.core.errors import DeliveryStatus, ServiceUnavailable
from imgateway.core.events import Event, Message
from imgateway.gateway import addLinks
from imgateway.router.link import LinkConnection
from imgateway.router.link_codec import encodeRequest
from imgateway.status.metrics import GatewayMetrics
from imgateway.testing import RecordingSessionClient, memoryGateway
from tests.test_checkers import ALICE as CHECKED, DeferringRunner, makeAuthenticator
from tests.test_link import ALICE, CAROL, RawTestCase, configFor
from tests.test_net_srv import FakeResolver
from tests.test_status_metrics import value
from tests import test_proxy


class LinkCountingTests(RawTestCase):
    """
    A link client and the receiving side count their refusals, and the
    client how many times it came up.
    """

    def test_queueFull(self) -> None:
        """
        A request refused for a full queue is a hit of C{max_queue}.
        """
        metrics = GatewayMetrics()
        self.server.up = False
        client = self.client(maxQueue=1)
        client.metrics = metrics
        waiting = client.deliver(Message(CAROL, ALICE, "waits"))
        self.failureResultOf(client.deliver(Message(CAROL, ALICE, "refused")), ServiceUnavailable)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_queue"), 1)
        self.clock.advance(10)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_connects(self) -> None:
        """
        C{connects} counts the times the link came up: once, then again
        after a reconnection.
        """
        client = self.client()
        self.assertEqual(client.connects, 1)
        self.drop()
        self.clock.advance(1.0)
        self.network.flush()
        self.assertTrue(client.connected)
        self.assertEqual(client.connects, 2)

    def test_inProgress(self) -> None:
        """
        A request refused for C{max_queue} requests in progress on the
        receiving side is a hit of C{max_queue}.
        """
        metrics = GatewayMetrics()
        self.server.receiver.metrics = metrics
        connection, flush = self.raw()
        held: list[Deferred[DeliveryStatus]] = []

        def hold(event: Event) -> Deferred[DeliveryStatus]:
            held.append(Deferred())
            return held[-1]

        self.server.router.answer = hold
        for i in range(3):
            connection.request(encodeRequest(Message(CAROL, ALICE, str(i)), [], 8, f"q{i}"))
        refused = connection.request(encodeRequest(Message(CAROL, ALICE, "3"), [], 8, "q3"))
        flush()
        self.assertEqual(self.successResultOf(refused).code, 503)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_queue"), 1)
        for d in held:
            d.callback(DeliveryStatus.DELIVERED)
        flush()

    def test_maxIncoming(self) -> None:
        """
        A link connection refused for C{max_incoming} is a hit of it.
        """
        metrics = GatewayMetrics()
        factory = self.server.factory
        factory.metrics = metrics
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        accepted = [factory.buildProtocol(address) for _ in range(2)]
        for p in accepted:
            p.makeConnection(iosim.FakeTransport(p, True, address, address))  # type: ignore[union-attr]
        self.assertNotIsInstance(factory.buildProtocol(address), LinkConnection)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_incoming"), 1)
        for p in accepted:
            p.connectionLost()  # type: ignore[union-attr]


class GatewayLinksStatusTests(SynchronousTestCase):
    """
    L{addLinks} gives the links the gateway's metrics. (Their states on
    the status page: C{tests/test_status_linkinfo.py}.)
    """

    def test_wiring(self) -> None:
        """
        The link routes, receiver and acceptor count in the gateway's
        metrics; the links made get them too.
        """
        gateway = attrs.evolve(memoryGateway(Clock()), config=configFor("hs1"))
        links: Any = addLinks(MultiService(), gateway, MemoryReactorClock(), resolver=FakeResolver({}, {}))
        for counting in (links.routes, links.receiver, links.acceptor):
            self.assertIs(counting.metrics, gateway.metrics)
        client = links.routes.toServer("hs2")
        self.assertIs(client.metrics, gateway.metrics)


class PasswordQueueTests(SynchronousTestCase):
    """
    The authenticator counts the checks refused for C{[auth]
    password_queue}.
    """

    def test_refused(self) -> None:
        """
        Each check refused for a full queue is a hit of C{password_queue}.
        """
        runner = DeferringRunner()
        authenticator, _ = makeAuthenticator(runner, maxConcurrent=1, maxQueued=1)
        metrics = GatewayMetrics()
        authenticator.metrics = metrics
        waiting = [authenticator.checkPassword(CHECKED, "secret") for _ in range(2)]
        for _ in range(2):
            self.failureResultOf(authenticator.checkPassword(CHECKED, "secret"))
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="password_queue"), 2)
        runner.runAll()
        for d in waiting:
            self.successResultOf(d)


class ProxyCountingTests(test_proxy.ProxyTestCase):
    """
    Proxied sessions refused for C{[links] max_sessions} (3 here) are hits
    of it, on the router and on the home server.
    """

    def test_router(self) -> None:
        """
        The router's fourth session over the link is a hit.
        """
        metrics = GatewayMetrics()
        self.proxy.metrics = metrics
        for i in range(3):
            self.open(label=f"s{i}")
        self.failureResultOf(self.proxy.openSession(ALICE, RecordingSessionClient(), "s4"), ServiceUnavailable)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_sessions"), 1)

    def test_home(self) -> None:
        """
        The home server's fourth session on one connection is a hit.
        """
        metrics = GatewayMetrics()
        self.host.metrics = metrics
        for i in range(3):
            self.open(label=f"s{i}")
        d = self.link.request(Request("SESSION", "open", Headers(), b'{"address": "alice@corp.example", "label": ""}'))
        self.network.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_sessions"), 1)
