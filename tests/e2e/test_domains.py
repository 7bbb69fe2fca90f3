# -*- test-case-name: tests.e2e.test_domains -*-
"""
Two domains deliver to each other over server links, as real C{twistd
imgateway} processes on loopback:

  - C{corp.example}: a router (C{router}, roles C{["router"]}) and a home
    server (C{hs1}), two processes sharing one data folder (the
    single-host lab); alice, bob and carol are homed on C{hs1}.
  - C{partner.example}: one process (C{gw}, roles C{["home", "router"]});
    pat and paul are homed there.

corp reaches partner by a static route in its router's C{[routes]}
(C{hs1}, a home server only, hands its users' events for other domains to
the corp router, and needs neither routes nor a certificate naming the
domain). partner
has no route to corp: it finds the corp router by DNS, the SRV record
C{_imgw._tcp.corp.example}, which a C{twisted.names} server (C{twistd dns}
with a Python zone) answers on a free loopback port, the one partner's
C{[links] dns_servers} names. The link certificates come from one test
authority; each router's names its domain.

The processes (and the DNS server) start once for the module, on first
use, and are stopped when the test run's process exits; every test checks
that none of them has logged a traceback so far. XMPP federation as the
route of a domain with neither a static route nor an C{_imgw._tcp} record
is tested in memory (C{tests.test_link.RoutesTests.test_federationWithoutLinkRoute},
C{tests.test_router.HomeRoutingTests.test_otherDomains}).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imgateway._testcerts import CertificateAuthority
from imgateway.config import HostPort
from imgateway.core.address import Address
from imgateway.core.errors import Blocked, DeliveryStatus, LoopDetected, ServiceUnavailable, UserBusy, UserOffline
from imgateway.core.events import Message
from imgateway.core.presence import PresenceState
from imgateway.router.link import LinkClient, makeLinkService
from tests.e2e.harness import REPO_ROOT, GatewayProcess, _accepts, connectClient, failureOf, freePort, reactor, sleep
from tests.e2e.multihost import LinkCertificates, linkTLS
from tests.test_link import FakeLocator, FakeRouter, configFor

CORP = "corp.example"
PARTNER = "partner.example"

#: A domain both routers are misconfigured to route to each other.
LOOP = "loop.example"

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-1", "carol": "carol-pw-1", "pat": "pat-pw-1", "paul": "paul-pw-1"}

ALICE = Address("alice", CORP)
BOB = Address("bob", CORP)
CAROL = Address("carol", CORP)
PAT = Address("pat", PARTNER)
PAUL = Address("paul", PARTNER)

#: Seconds a link request waits for its answer (link down included).
REQUEST_TIMEOUT = 3

#: The names each link certificate carries.
CERTIFICATE_NAMES = {
    "router": ["router.corp.example", CORP, LOOP],
    "hs1": ["hs1.corp.example"],
    "gw": ["gw.partner.example", PARTNER, LOOP],
}


class _ModuleOwner:
    """
    Stands for a test case to the module's L{GatewayProcess}es, which
    outlive every test: folders in one temporary folder, and the processes
    stopped when this (trial's) process exits.
    """

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="test_domains-", dir=os.getcwd())
        self.processes: list[subprocess.Popen[bytes]] = []
        self.gateways: list[GatewayProcess] = []
        atexit.register(self.stopAll)

    def mktemp(self) -> str:
        return tempfile.mkdtemp(dir=self.base)

    def addCleanup(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """
        Nothing: the processes are stopped at exit (L{stopAll}).
        """

    def stopAll(self) -> None:
        """
        Stop every process (SIGTERM, then SIGKILL), without a reactor.
        """
        running = [g.process for g in self.gateways if g.process is not None] + self.processes
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for gateway in self.gateways:
            if gateway.process is not None:
                gateway._reaped()
        for process in self.processes:
            process.wait()


ZONE = """\
zone = [
    SOA("corp.example", mname="ns.corp.example", rname="root.corp.example", serial=1,
        refresh=60, retry=60, expire=60, minimum=0, ttl=0),
    SRV("_imgw._tcp.corp.example", 0, 0, {routerLink}, "router.corp.example", ttl=0),
    A("router.corp.example", "127.0.0.1", ttl=0),
]
"""


class Domains:
    """
    The two domains' processes and the DNS server (see the module
    docstring).

    @ivar router: The corp router's process.
    @ivar hs1: corp's home server's process.
    @ivar partner: partner's process.
    @ivar links: The link port of each process, by server name.
    @ivar certificates: The test authority that signs every link
        certificate, and the files of the certificates.
    """

    def __init__(self, owner: _ModuleOwner) -> None:
        self.owner = owner
        base = owner.base
        self.certificates = LinkCertificates(base)
        self.links = {name: freePort() for name in CERTIFICATE_NAMES}
        self.dnsPort = freePort()
        corpData = os.path.join(base, "corp-data")
        servers = {
            "router": {"roles": ["router"], "link": f"127.0.0.1:{self.links['router']}", "tls_name": "router.corp.example"},
            "hs1": {"roles": ["home"], "link": f"127.0.0.1:{self.links['hs1']}", "tls_name": "hs1.corp.example"},
        }
        toPartner = f"127.0.0.1:{self.links['gw']}"
        self.router = self.gateway(
            "router",
            {
                "gateway": {"home_server": "router", "data_dir": corpData},
                "servers": servers,
                "routes": {PARTNER: toPartner, LOOP: toPartner},
            },
        )
        self.hs1 = self.gateway(
            "hs1",
            {"gateway": {"home_server": "hs1", "data_dir": corpData}, "servers": servers},
        )
        self.partner = self.gateway(
            "gw",
            {
                "gateway": {"domain": PARTNER, "home_server": "gw"},
                "servers": {
                    "gw": {"roles": ["home", "router"], "link": f"127.0.0.1:{self.links['gw']}", "tls_name": "gw.partner.example"}
                },
                # No route to corp.example: the DNS says where its router is.
                "routes": {LOOP: f"127.0.0.1:{self.links['router']}"},
                "links": {"dns_servers": [f"127.0.0.1:{self.dnsPort}"]},
            },
        )

    def gateway(self, name: str, tables: dict[str, Any]) -> GatewayProcess:
        """
        A process of server C{name} with its link listener, certificate and
        the authority as trust roots; not started yet.
        """
        base = self.owner.base
        links = self.certificates.links(
            name, listen=self.links[name], names=CERTIFICATE_NAMES[name], requestTimeout=REQUEST_TIMEOUT, more=tables.pop("links", {})
        )
        process = GatewayProcess(
            self.owner,  # type: ignore[arg-type]
            {**tables, "links": links},
            directory=os.path.join(base, name),
            checkLog=False,
        )
        process.waitPorts.append(self.links[name])
        self.owner.gateways.append(process)
        return process

    async def start(self) -> None:
        """
        Write the zone, start the DNS server, add the users and start the
        three gateways.
        """
        zone = os.path.join(self.owner.base, "corp.zone.py")
        with open(zone, "w", encoding="utf-8") as f:
            f.write(ZONE.format(routerLink=self.links["router"]))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.dnsLog = os.path.join(self.owner.base, "dns.log")
        dns = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.dnsLog}", "dns", "--verbose",
             "--interface=127.0.0.1", f"--port={self.dnsPort}", f"--pyzone={zone}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=GatewayProcess.environment(),
            cwd=REPO_ROOT,
        )
        self.owner.processes.append(dns)
        for user in ("alice", "bob", "carol"):
            self.hs1.addUser(user, PASSWORDS[user])
        for user in ("pat", "paul"):
            self.partner.addUser(user, PASSWORDS[user])
        deadline = time.monotonic() + 20
        while not _accepts(self.dnsPort):
            if dns.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the DNS server did not start:\n{_read(self.dnsLog)}")
            await sleep(0.05)
        for process in (self.hs1, self.router, self.partner):
            await process.start()

    def problems(self) -> list[str]:
        """
        @return: The traceback lines every process has logged so far.
        """
        return [f"{os.path.basename(p.directory)}: {line}" for p in (self.router, self.hs1, self.partner) for line in p.problems()]

    async def client(self, testCase: TestCase, user: str, presence: PresenceState = PresenceState.ONLINE) -> Any:
        """
        Log C{user} in at its home server (closed when the test ends).

        @return: The client protocol and its recorder.
        """
        home = self.partner if user in ("pat", "paul") else self.hs1
        return await connectClient(testCase, home.endpoint, user, PASSWORDS[user], presence=presence)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


_started: Deferred[Domains] | None = None


def domains() -> Deferred[Domains]:
    """
    The module's processes, started on first use.
    """
    global _started
    if _started is None:

        async def start() -> Domains:
            made = Domains(_ModuleOwner())
            await made.start()
            return made

        _started = Deferred.fromCoroutine(start())
    result: Deferred[Domains] = Deferred()

    def share(outcome: Any) -> Any:
        if isinstance(outcome, Failure):
            result.errback(outcome)
            return None
        result.callback(outcome)
        return outcome

    _started.addBoth(share)
    return result


class TwoDomainTests(TestCase):
    """
    corp.example and partner.example, each with its own router, deliver to
    each other over links.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.domains = await domains()
        self.addCleanup(self.noProblems)

    def noProblems(self) -> None:
        problems = self.domains.problems()
        if problems:
            self.fail("a gateway logged unexpected errors:\n" + "\n".join(problems))

    async def waitForLog(self, process: GatewayProcess, text: str, seconds: float = 10.0) -> None:
        """
        Wait until C{process} has logged C{text}.
        """
        deadline = time.monotonic() + seconds
        while text not in process.log():
            if time.monotonic() > deadline:
                self.fail(f"{text!r} not logged within {seconds} s:\n{process.log()[-3000:]}")
            await sleep(0.05)

    def peer(self, domain: str, names: list[str], routes: dict[str, int], authority: CertificateAuthority | None = None) -> Any:
        """
        A link service of C{domain} in this process, with a certificate for
        C{names} (from the module's authority unless C{authority}) and
        static C{routes} (domain to link port); stopped when the test ends.
        """
        config = configFor("gw", domain=domain, allowPlaintextLoopback=False, requestTimeout=float(REQUEST_TIMEOUT))
        config = attrs.evolve(config, routes={d: HostPort("127.0.0.1", port) for d, port in routes.items()})
        service = makeLinkService(config, reactor(), FakeRouter(), FakeLocator(), tls=linkTLS(authority or self.domains.certificates.authority, names))
        service.service.startService()
        self.addCleanup(service.service.stopService)
        return service

    async def route(self, service: Any, domain: str) -> LinkClient:
        found = await service.routes.toDomain(domain)
        assert isinstance(found, LinkClient), found
        return found

    async def test_messagesAndStatuses(self) -> None:
        """
        alice (corp, on hs1) and pat (partner) exchange messages both ways
        with their statuses: 200; 480 from pat while alice may not see his
        presence, then, once he lets her, his presence and 486 with his
        alternate; 480 for bob (offline) and for someone corp has no
        account for, alike, across the corp router.
        """
        d = self.domains
        aliceClient, alice = await d.client(self, "alice")
        patClient, pat = await d.client(self, "pat")
        await aliceClient.sendMessage(PAT, "hello pat")
        await pat.waitForMessage(ALICE, "hello pat", timeout=10)
        # partner.example -> DNS SRV _imgw._tcp.corp.example -> corp router -> hs1.
        await patClient.sendMessage(ALICE, "hello alice")
        await alice.waitForMessage(PAT, "hello alice", timeout=10)

        await patClient.setRule(PresenceState.ON_THE_PHONE, "tel:+15550199")
        await patClient.publish(PresenceState.ON_THE_PHONE)
        await failureOf(aliceClient.sendMessage(PAT, "are you there?"), UserOffline)
        await aliceClient.subscribe(PAT)
        await pat.waitForSubscription(ALICE, "subscribe", timeout=10)
        await patClient.authorise(ALICE, True)
        await alice.waitForPresence(PAT, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(aliceClient.sendMessage(PAT, "are you there?"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550199")

        offline = await failureOf(patClient.sendMessage(BOB, "bob?"), UserOffline)
        nobody = await failureOf(patClient.sendMessage(Address("nobody", CORP), "anyone?"), UserOffline)
        self.assertEqual(offline.status, nobody.status)
        self.assertIn("Link from domain partner.example", d.router.log())
        self.assertIn("Link from domain corp.example", d.partner.log())
        # partner found the corp router by asking the test's DNS server.
        self.assertIn(f"Link to domain corp.example is up (127.0.0.1:{d.links['router']})", d.partner.log())
        self.assertIn("SRV query from", _read(d.dnsLog))

    async def test_presenceBothWays(self) -> None:
        """
        paul (partner) subscribes to carol (corp) and carol to paul; each
        sees the other's presence changes.
        """
        d = self.domains
        carolClient, carol = await d.client(self, "carol")
        paulClient, paul = await d.client(self, "paul")
        await paulClient.subscribe(CAROL)
        await carol.waitForSubscription(PAUL, "subscribe", timeout=10)
        await carolClient.authorise(PAUL, True)
        await paul.waitForPresence(CAROL, PresenceState.ONLINE, timeout=10)
        await carolClient.subscribe(PAUL)
        await paul.waitForSubscription(CAROL, "subscribe", timeout=10)
        await paulClient.authorise(CAROL, True)
        await carol.waitForPresence(PAUL, PresenceState.ONLINE, timeout=10)
        await carolClient.publish(PresenceState.AWAY, "lunch")
        seen = await paul.waitForPresence(CAROL, PresenceState.AWAY, timeout=10)
        self.assertEqual(seen.note, "lunch")
        await paulClient.publish(PresenceState.BUSY)
        await carol.waitForPresence(PAUL, PresenceState.BUSY, timeout=10)

    async def test_certificateNamesTheDomain(self) -> None:
        """
        A peer router's certificate must name its domain: the corp router
        refuses a router of partner.example whose certificate (from the
        trusted authority) names another domain (403 to its HELLO, logged;
        its request gets 503 within the request timeout), and a link to
        partner.example refuses the corp router's certificate, which does
        not name partner.example. Nothing is delivered.
        """
        d = self.domains
        _, alice = await d.client(self, "alice")
        misnamed = self.peer(PARTNER, ["other.example"], {CORP: d.links["router"]})
        route = await self.route(misnamed, CORP)
        await failureOf(route.deliver(Message(PAT, ALICE, "from a misnamed router")), ServiceUnavailable)
        await self.waitForLog(d.router, "certificate for domain partner.example not issued for partner.example")

        # A third domain told partner.example is at the corp router's port.
        third = self.peer("third.example", ["third.example"], {PARTNER: d.links["router"]})
        route = await self.route(third, PARTNER)
        await failureOf(route.deliver(Message(Address("tom", "third.example"), PAT, "to the wrong router")), ServiceUnavailable)
        self.assertEqual(alice.messagesFrom(PAT), [])
        self.assertNotIn("from a misnamed router", d.hs1.log())

    async def test_originationRule(self) -> None:
        """
        A router of partner.example may only send events from users of
        partner.example: one from a corp user, or from a user of a third
        domain, is refused (403) and logged by the corp router; one from
        pat is delivered.
        """
        d = self.domains
        _, alice = await d.client(self, "alice")
        forger = self.peer(PARTNER, [PARTNER], {CORP: d.links["router"]})
        route = await self.route(forger, CORP)
        await failureOf(route.deliver(Message(CAROL, ALICE, "forged from carol")), Blocked)
        await failureOf(route.deliver(Message(Address("eve", "third.example"), ALICE, "forged from eve")), Blocked)
        await self.waitForLog(d.router, "a router of partner.example sent an event from corp.example")
        await self.waitForLog(d.router, "a router of partner.example sent an event from third.example")
        self.assertIs(await route.deliver(Message(PAT, ALICE, "really from pat")), DeliveryStatus.DELIVERED)
        await alice.waitForMessage(PAT, "really from pat", timeout=10)
        self.assertEqual([m.body for m in alice.messagesFrom(CAROL)], [])

    async def test_loopBetweenRouters(self) -> None:
        """
        Both routers are misconfigured to route loop.example to each other:
        pat's message goes partner -> corp router -> partner, which finds
        itself in C{Via} and answers 482; pat gets the loop status and
        nothing runs in circles.
        """
        d = self.domains
        patClient, _ = await d.client(self, "pat")
        error = await failureOf(patClient.sendMessage(Address("someone", LOOP), "round and round"), LoopDetected)
        self.assertEqual(error.status, DeliveryStatus.LOOP_DETECTED)
        await self.waitForLog(d.partner, "loop, this server is in Via")
