# -*- test-case-name: tests.e2e.test_links -*-
"""
Server links (L{imgateway.router.link}) over real TCP and real TLS on
loopback: two servers of one domain (C{hs1}, C{hs2}) in this process, each
with its link listener and its links built by L{makeLinkService}, with
certificates from a test certificate authority. Events cross both ways with
their statuses; a forged or misnamed certificate is refused; a peer that
goes away gives a prompt 503 and the link recovers when it is back; a
message resent after a reconnect is delivered once. The queue, timers and
rules are tested in memory in C{tests/test_link.py}.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from imgateway._testcerts import CertificateAuthority
from imgateway.config import HostPort, ServerConfig
from imgateway.core.errors import Blocked, DeliveryStatus, LoopDetected, ServiceUnavailable, UserBusy, UserOffline
from imgateway.core.events import Message, PresenceUpdate
from imgateway.core.presence import Presence, PresenceState
from imgateway.router.link import LinkClient, LinkService, LinkTLS, makeLinkService

from tests.e2e.harness import GatewayProcess, connectClient, failureOf, freePort, reactor, sleep
from tests.e2e.multihost import LinkCertificates, linkTLS, linkedHomeServers
from tests.test_link import ALICE, CAROL, FakeLocator, FakeRouter, configFor


class Node:
    """
    One server with its links, on a real port.
    """

    def __init__(self, name: str, ports: dict[str, int], tls: LinkTLS, requestTimeout: float = 10.0) -> None:
        servers = {
            n: ServerConfig(n, frozenset({"home"}), link=HostPort("127.0.0.1", p), tlsName=f"{n}.corp.example")
            for n, p in ports.items()
        }
        config = configFor(name, allowPlaintextLoopback=False, requestTimeout=requestTimeout, reconnectMaxDelay=2.0, maxQueue=100)
        self.config = attrs.evolve(
            config,
            servers=servers,
            links=attrs.evolve(config.links, listen=(f"tcp:{ports[name]}:interface=127.0.0.1",)),
        )
        self.name = name
        self.router = FakeRouter()
        self.locator = FakeLocator()
        self.tls = tls
        self.links: LinkService = makeLinkService(self.config, reactor(), self.router, self.locator, tls=tls)

    def start(self) -> None:
        self.links.service.startService()

    async def kill(self) -> None:
        """
        Drop every connection at once, as a killed process would, and stop
        listening.
        """
        for connection in list(self.links.acceptor.connections):
            connection.abort()
        await self.links.service.stopService()

    def _acceptor(self) -> Any:
        return self.links.acceptor

    def restart(self) -> None:
        """
        A fresh server of the same name on the same port.
        """
        self.links = makeLinkService(self.config, reactor(), self.router, self.locator, tls=self.tls)
        self.start()

    def to(self, name: str) -> LinkClient:
        route = self.links.routes.toServer(name)
        assert isinstance(route, LinkClient)
        return route


class LinkTests(TestCase):
    """
    Two servers of corp.example linked over TLS on loopback.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority()
        self.ports = {"hs1": freePort(), "hs2": freePort()}
        self.logged: list[LogEvent] = []
        observer: Any = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def node(self, name: str, tls: LinkTLS | None = None, requestTimeout: float = 10.0) -> Node:
        node = Node(name, self.ports, tls or linkTLS(self.authority, [f"{name}.corp.example"]), requestTimeout)
        node.start()
        self.addCleanup(lambda: node.links.service.stopService() if node.links.service.running else None)
        return node

    def messages(self, text: str) -> list[str]:
        return [m for m in (formatEvent(e) for e in self.logged) if text in m]

    async def waitFor(self, condition: Any, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"condition not met within {seconds} s")
            await sleep(0.05)

    async def test_bothWays(self) -> None:
        """
        Events cross the link both ways, each with its status: delivered,
        486 with its alternate, 480.
        """
        hs1, hs2 = self.node("hs1"), self.node("hs2")
        message = Message(ALICE, CAROL, "hello over TLS")
        self.assertIs(await hs1.to("hs2").deliver(message), DeliveryStatus.DELIVERED)
        self.assertEqual(hs2.router.events, [message])
        update = PresenceUpdate(CAROL, ALICE, Presence(PresenceState.BUSY, "meeting"))
        self.assertIs(await hs2.to("hs1").deliver(update), DeliveryStatus.DELIVERED)
        self.assertEqual(hs1.router.events, [update])
        hs1.router.answer = lambda e: _fail(UserBusy("busy", "tel:+15550100"))
        busy = await failureOf(hs2.to("hs1").deliver(Message(CAROL, ALICE, "call?")), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")
        hs2.router.answer = lambda e: _fail(UserOffline("carol@corp.example is offline"))
        await failureOf(hs1.to("hs2").deliver(Message(ALICE, CAROL, "there?")), UserOffline)
        self.assertTrue(self.messages("Link from server hs1"))
        self.assertTrue(self.messages("Link from server hs2"))

    async def test_loopStopped(self) -> None:
        """
        Two servers misconfigured to forward everything to each other: the
        event comes back to the first with its name in C{Via}, is answered
        482, and the sender gets a loop error; nothing is delivered.
        """
        hs1, hs2 = self.node("hs1"), self.node("hs2")
        hs1.router.answer = lambda e: hs1.to("hs2").deliver(e)
        hs2.router.answer = lambda e: hs2.to("hs1").deliver(e)
        error = await failureOf(hs1.to("hs2").deliver(Message(ALICE, CAROL, "round and round")), LoopDetected)
        self.assertEqual(error.status, DeliveryStatus.LOOP_DETECTED)
        self.assertEqual((len(hs1.router.events), len(hs2.router.events)), (0, 1))
        self.assertTrue(self.messages("Link from server hs2: loop, this server is in Via corp.example/hs1, corp.example/hs2"))

    async def test_forgedCertificate(self) -> None:
        """
        A peer whose certificate another authority signed (with the right
        name) is refused by the TLS handshake, and logged; its requests get
        503 once C{request_timeout} has passed; nothing is delivered.
        """
        forger = CertificateAuthority()
        hs1 = self.node("hs1")
        hs2 = self.node("hs2", tls=linkTLS(forger, ["hs2.corp.example"], roots=self.authority), requestTimeout=1.5)
        await failureOf(hs2.to("hs1").deliver(Message(CAROL, ALICE, "forged")), ServiceUnavailable)
        self.assertEqual(hs1.router.events, [])
        self.assertTrue(self.messages("closed before its HELLO"))

    async def test_untrustedServer(self) -> None:
        """
        The connecting side refuses a server whose certificate another
        authority signed.
        """
        forger = CertificateAuthority()
        hs1 = self.node("hs1", tls=linkTLS(forger, ["hs1.corp.example"], roots=self.authority))
        hs2 = self.node("hs2", requestTimeout=1.5)
        await failureOf(hs2.to("hs1").deliver(Message(CAROL, ALICE, "to a forger")), ServiceUnavailable)
        self.assertEqual(hs1.router.events, [])
        self.assertTrue(self.messages("Link to server hs1: connection lost before HELLO"))

    async def test_wrongName(self) -> None:
        """
        A certificate from the right authority for another name is refused:
        by the accepting side (it names no configured server: 403, logged),
        and by the connecting side (not its peer's tls_name).
        """
        hs1 = self.node("hs1")
        hs2 = self.node("hs2", tls=linkTLS(self.authority, ["hs9.corp.example"]), requestTimeout=1.5)
        await failureOf(hs2.to("hs1").deliver(Message(CAROL, ALICE, "misnamed")), ServiceUnavailable)
        self.assertTrue(self.messages("certificate for server hs2 not issued for hs2.corp.example"))
        await failureOf(hs1.to("hs2").deliver(Message(ALICE, CAROL, "to the misnamed")), ServiceUnavailable)
        self.assertTrue(self.messages("Link to server hs2: connection lost before HELLO"))
        self.assertEqual((hs1.router.events, hs2.router.events), ([], []))

    async def test_peerRestart(self) -> None:
        """
        With the peer gone, a request gets 503 within C{request_timeout};
        when the peer is back, the link reconnects by itself and delivers.
        """
        hs1 = self.node("hs1", requestTimeout=2.0)
        hs2 = self.node("hs2")
        self.assertIs(await hs1.to("hs2").deliver(Message(ALICE, CAROL, "before")), DeliveryStatus.DELIVERED)
        await hs2.kill()
        started = time.monotonic()
        await failureOf(hs1.to("hs2").deliver(Message(ALICE, CAROL, "while down")), ServiceUnavailable)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 3.0)
        hs2.restart()
        self.addCleanup(lambda: hs2.links.service.stopService() if hs2.links.service.running else None)
        client = hs1.to("hs2")
        await self.waitFor(lambda: client.connected)
        self.assertIs(await client.deliver(Message(ALICE, CAROL, "after")), DeliveryStatus.DELIVERED)
        self.assertEqual([e.body for e in hs2.router.events], ["before", "after"])  # type: ignore[union-attr]

    async def test_duplicateAfterReconnect(self) -> None:
        """
        A message whose connection dropped before its answer is resent after
        the reconnection with the same routing id, and delivered once; its
        sender gets the first delivery's answer.
        """
        hs1, hs2 = self.node("hs1"), self.node("hs2")
        held: Deferred[DeliveryStatus] = Deferred()
        hs2.router.answer = lambda e: held
        message = Message(ALICE, CAROL, "once")
        client = hs1.to("hs2")
        result = client.deliver(message)
        await self.waitFor(lambda: len(hs2.router.events) == 1)
        for connection in list(hs2._acceptor().connections):
            connection.abort()
        await self.waitFor(lambda: not client.connected)
        await self.waitFor(lambda: client.connected)
        await self.waitFor(lambda: self.messages(f"duplicate {message.routingId} answered as the first"))
        held.callback(DeliveryStatus.DELIVERED)
        self.assertIs(await result, DeliveryStatus.DELIVERED)
        self.assertEqual(hs2.router.events, [message])


def _fail(error: Exception) -> Deferred[DeliveryStatus]:
    d: Deferred[DeliveryStatus] = Deferred()
    d.errback(error)
    return d


class GatewayLinkTests(TestCase):
    """
    A real C{twistd imgateway} process (home server C{hs1}) with its link
    listener on TLS, and this process as C{hs2}.
    """

    async def test_twistd(self) -> None:
        """
        C{hs2} delivers a message from its user to a user of C{hs1} logged
        in over the native face: C{200}, and the message reaches her; an
        event from a user homed on C{hs1} sent by C{hs2} is refused (403)
        and logged by the gateway.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        certificates = LinkCertificates(folder)
        ports = {"hs1": freePort(), "hs2": freePort()}
        servers = {
            name: {"roles": ["home"], "link": f"127.0.0.1:{port}", "tls_name": f"{name}.corp.example"}
            for name, port in ports.items()
        }
        gw = GatewayProcess(self, {"gateway": {"home_server": "hs1"}, "servers": servers, "links": certificates.links("hs1", listen=ports["hs1"])})
        gw.addUser("alice", "alice's password")
        # carol is homed on hs2: the lab's processes share one data_dir.
        gw.tables["gateway"]["home_server"] = "hs2"
        gw.writeConfig()
        gw.addUser("carol", "carol's password")
        gw.tables["gateway"]["home_server"] = "hs1"
        gw.writeConfig()
        await gw.start()
        _, alice = await connectClient(self, gw.endpoint, "alice", "alice's password")

        hs2 = Node("hs2", ports, linkTLS(certificates.authority, ["hs2.corp.example"]))
        hs2.start()
        self.addCleanup(hs2.links.service.stopService)
        self.assertIs(await hs2.to("hs1").deliver(Message(CAROL, ALICE, "over the link")), DeliveryStatus.DELIVERED)
        received = await alice.waitForMessage(CAROL, "over the link")
        self.assertEqual(received.body, "over the link")
        await failureOf(hs2.to("hs1").deliver(Message(ALICE, ALICE, "forged origin")), Blocked)
        await sleep(0.2)
        with open(gw.logPath, encoding="utf-8") as f:
            log = f.read()
        self.assertIn("Link from server hs2", log)
        self.assertIn("alice@corp.example is not homed on hs2", log)


class TwoProcessTests(TestCase):
    """
    Two real C{twistd imgateway} home servers of corp.example, C{hs1} (alice)
    and C{hs2} (carol), sharing one directory (the single-host lab: one
    C{data_dir}), linked over TLS; native clients on each.
    """

    async def servers(self) -> tuple[GatewayProcess, GatewayProcess]:
        hs1, hs2 = linkedHomeServers(self)
        await hs1.start()
        await hs2.start()
        return hs1, hs2

    async def test_acrossProcesses(self) -> None:
        """
        alice (hs1) and carol (hs2) exchange messages across the link with
        their statuses (200; 480 before carol authorises alice, then her
        presence and 486 with carol's alternate); with hs2 killed,
        alice's message gets a prompt error, and once hs2 is back the link
        recovers and delivers.
        """
        hs1, hs2 = await self.servers()
        aliceClient, alice = await connectClient(self, hs1.endpoint, "alice", "alice's password")
        carolClient, carol = await connectClient(self, hs2.endpoint, "carol", "carol's password")
        await aliceClient.sendMessage(CAROL, "hello carol")
        await carol.waitForMessage(ALICE, "hello carol", timeout=10)
        await carolClient.sendMessage(ALICE, "hello alice")
        await alice.waitForMessage(CAROL, "hello alice", timeout=10)
        await carolClient.setRule(PresenceState.ON_THE_PHONE, "tel:+15550100")
        await carolClient.publish(PresenceState.ON_THE_PHONE)
        # alice may not see carol's presence: the uniform 480 (no leak).
        await failureOf(aliceClient.sendMessage(CAROL, "are you there?"), UserOffline)
        # Once carol lets her, alice sees carol's presence and gets 486.
        await aliceClient.subscribe(CAROL)
        await carol.waitForSubscription(ALICE, "subscribe", timeout=10)
        await carolClient.authorise(ALICE, True)
        await alice.waitForPresence(CAROL, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(aliceClient.sendMessage(CAROL, "are you there?"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")

        await hs2.stop(signal.SIGKILL)
        started = time.monotonic()
        await failureOf(aliceClient.sendMessage(CAROL, "while hs2 is down"), UserOffline)
        self.assertLess(time.monotonic() - started, 4.0)

        await hs2.start()
        _, carolAgain = await connectClient(self, hs2.endpoint, "carol", "carol's password")
        deadline = time.monotonic() + 20
        while True:
            try:
                await aliceClient.sendMessage(CAROL, "after the restart")
                break
            except UserOffline:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.5)
        await carolAgain.waitForMessage(ALICE, "after the restart", timeout=10)
        self.assertIn("Link to server hs2 is up", hs1.log())
