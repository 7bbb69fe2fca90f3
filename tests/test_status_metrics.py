"""
Unit tests for what the gateway counts (L{imgateway.status.metrics}): the
metrics object itself, its registry's text (parsed with the Prometheus
parser), the reactor lag probe on a fake clock, and the counter calls of
the faces, the home server, the links and the limits, over a memory
gateway.
"""

from __future__ import annotations

import base64
import re
import time

import prometheus_client.metrics
import prometheus_client.values

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.adapters.native.server import NativeConfig
from imgateway.auth.sasl import clientMechanism
from imgateway.config import HomeConfig, LimitsConfig
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, DeliveryStatus, UserOffline
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.throttle import ConnectionLimiter, LoginThrottle
from imgateway.interfaces import IMetrics
from imgateway.core.linkinfo import LinkInfo
from imgateway.status.metrics import MESSAGES_HELP, GatewayMetrics, ReactorLag
from imgateway.status.nometrics import NO_METRICS
from imgateway.testing import RecordingSessionClient, addUser, memoryGateway
from tests.test_native_server import NativeFaceTestsMixin
from tests.test_xmpp_c2s import C2STestsMixin

ALICE = Address("alice", "corp.example")
BOB = Address("bob", "corp.example")
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The registry's text, parsed by the Prometheus text-format parser:
    (sample name, sorted labels) to value.
    """
    text = generate_latest(metrics.registry).decode("utf-8")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """
    One sample's value (0 when it is not there).
    """
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


class _Session:
    """
    Stands for an L{ISession}: only C{closed} is read.
    """

    closed = False


class GatewayMetricsTests(SynchronousTestCase):
    """
    L{GatewayMetrics} on its own.
    """

    def test_interfaces(self) -> None:
        """
        L{GatewayMetrics} and L{NO_METRICS} provide L{IMetrics}.
        """
        verifyObject(IMetrics, GatewayMetrics())
        verifyObject(IMetrics, NO_METRICS)

    def test_ownRegistry(self) -> None:
        """
        Each L{GatewayMetrics} has a registry of its own (never the global
        one): two of them count apart.
        """
        first, second = GatewayMetrics(), GatewayMetrics()
        first.limitHit("max_contacts")
        self.assertEqual(value(first, "imgateway_limit_hits_total", limit="max_contacts"), 1)
        self.assertEqual(value(second, "imgateway_limit_hits_total", limit="max_contacts"), 0)

    def test_logins(self) -> None:
        """
        Logins and failures are counted by face and mechanism (failures by
        condition too); the sessions of a face are those not closed.
        """
        metrics = GatewayMetrics()
        one, two = _Session(), _Session()
        metrics.loggedIn("native", "PLAIN", one)  # type: ignore[arg-type]
        metrics.loggedIn("native", "PLAIN", two)  # type: ignore[arg-type]
        metrics.loginFailed("xmpp", "SCRAM-SHA-256", "not-authorized")
        self.assertEqual(value(metrics, "imgateway_logins_total", face="native", mechanism="PLAIN"), 2)
        self.assertEqual(
            value(metrics, "imgateway_login_failures_total", face="xmpp", mechanism="SCRAM-SHA-256", condition="not-authorized"),
            1,
        )
        self.assertEqual(value(metrics, "imgateway_sessions", face="native"), 2)
        two.closed = True
        self.assertEqual(value(metrics, "imgateway_sessions", face="native"), 1)

    def test_messageOutcome(self) -> None:
        """
        C{messageOutcome} counts a status, a delivery error's status, and
        any other failure as C{error}, and returns what it was given.
        """
        metrics = GatewayMetrics()
        self.assertIs(metrics.messageOutcome(DeliveryStatus.DELIVERED), DeliveryStatus.DELIVERED)
        offline = Failure(UserOffline("gone"))
        self.assertIs(metrics.messageOutcome(offline), offline)
        other = Failure(ValueError("bad"))
        self.assertIs(metrics.messageOutcome(other), other)
        self.assertEqual(value(metrics, "imgateway_messages_total", status="200"), 1)
        self.assertEqual(value(metrics, "imgateway_messages_total", status="480"), 1)
        self.assertEqual(value(metrics, "imgateway_messages_total", status="error"), 1)

    def test_messagesExposedAsACounter(self) -> None:
        """
        C{imgateway_messages_total}, counted in plain integers, is exposed
        byte for byte as the Prometheus C{Counter} with the label C{status}
        that counted it before (its children all made at start, in the
        order of L{DeliveryStatus} then C{error}), for the same counts: the
        same lines in the same order, at the same place among the other
        metrics, each C{_created} time taken when the metrics were made.
        """
        before = time.time()
        metrics = GatewayMetrics()
        after = time.time()
        reference = CollectorRegistry(auto_describe=True)
        counter = Counter("imgateway_messages", MESSAGES_HELP, ["status"], registry=reference)
        children = {status: counter.labels(str(status.value)) for status in DeliveryStatus}
        error = counter.labels("error")
        for index, status in enumerate(DeliveryStatus):
            for _ in range(index * 3 % 7):
                metrics.messageOutcome(status)
                children[status].inc()
            failed = DeliveryError("failed")
            failed.status = status
            metrics.messageOutcome(Failure(failed))
            children[status].inc()
        for _ in range(5):
            metrics.messageOutcome(Failure(ValueError("bad")))
            error.inc()

        def created(text: str) -> tuple[str, list[float]]:
            times: list[float] = []

            def replace(match: re.Match[str]) -> str:
                times.append(float(match.group(2)))
                return match.group(1) + " T"

            return re.sub(r"^(imgateway_messages_created\{[^}]*\}) (\S+)$", replace, text, flags=re.M), times

        full = generate_latest(metrics.registry).decode("utf-8")
        ours = "".join(line + "\n" for line in full.splitlines() if "imgateway_messages_" in line)
        expected, _ = created(generate_latest(reference).decode("utf-8"))
        got, times = created(ours)
        self.assertEqual(got, expected)
        self.assertEqual(len(times), len(DeliveryStatus) + 1)
        self.assertEqual(times, sorted(times))
        self.assertTrue(before <= times[0] and times[-1] <= after)
        order = [line.split()[2] for line in full.splitlines() if line.startswith("# HELP")]
        self.assertEqual(
            order[:5],
            [
                "imgateway_logins_total",
                "imgateway_login_failures_total",
                "imgateway_messages_total",
                "imgateway_messages_created",
                "imgateway_presence_updates_total",
            ],
        )

    def test_messagesWithoutCreated(self) -> None:
        """
        With the client library's C{_created} series turned off
        (C{PROMETHEUS_DISABLE_CREATED_SERIES}), C{imgateway_messages} has
        none either, as a C{Counter} would.
        """
        self.patch(prometheus_client.metrics, "_use_created", False)
        metrics = GatewayMetrics()
        metrics.messageOutcome(DeliveryStatus.DELIVERED)
        text = generate_latest(metrics.registry).decode("utf-8")
        self.assertIn('imgateway_messages_total{status="200"} 1.0\n', text)
        self.assertNotIn("imgateway_messages_created", text)

    def test_messageCountedWithoutTheClientLibrary(self) -> None:
        """
        Counting a message's outcome (once per message on every home
        server) touches none of the Prometheus client's values or their
        locks: the counts are read when C{/metrics} is scraped.
        """
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("a Prometheus value was incremented")

        metrics = GatewayMetrics()
        self.patch(prometheus_client.values.MutexValue, "inc", refuse)
        metrics.messageOutcome(DeliveryStatus.DELIVERED)
        metrics.messageOutcome(Failure(UserOffline("gone")))
        metrics.messageOutcome(Failure(ValueError("bad")))
        self.assertEqual(value(metrics, "imgateway_messages_total", status="200"), 1)
        self.assertEqual(value(metrics, "imgateway_messages_total", status="480"), 1)
        self.assertEqual(value(metrics, "imgateway_messages_total", status="error"), 1)

    def test_links(self) -> None:
        """
        The links a source gives are read at each scrape: up (1/0) and how
        many times each came up.
        """
        metrics = GatewayMetrics()
        states = [LinkInfo("server", "hs2", True, connects=3)]
        metrics.addLinkSource(lambda: states)
        self.assertEqual(value(metrics, "imgateway_link_up", kind="server", link="hs2"), 1)
        self.assertEqual(value(metrics, "imgateway_link_connects_total", kind="server", link="hs2"), 3)
        states[0] = LinkInfo("server", "hs2", False, connects=3)
        self.assertEqual(value(metrics, "imgateway_link_up", kind="server", link="hs2"), 0)

    def test_linksNotCounted(self) -> None:
        """
        A link whose connections are not counted (C{connects} C{None}) has
        an C{imgateway_link_up} sample and no C{imgateway_link_connects_total}.
        """
        metrics = GatewayMetrics()
        metrics.addLinkSource(lambda: [LinkInfo("irc-watcher", "libera", True)])
        found = samples(metrics)
        self.assertEqual(found[("imgateway_link_up", (("kind", "irc-watcher"), ("link", "libera")))], 1)
        self.assertNotIn(("imgateway_link_connects_total", (("kind", "irc-watcher"), ("link", "libera"))), found)


class ReactorLagTests(SynchronousTestCase):
    """
    L{ReactorLag} measures how late a timed call runs.
    """

    def test_lag(self) -> None:
        """
        A call due in C{interval} seconds that runs 0.25 s late is a lag of
        0.25 s; stopping cancels the next call.
        """
        clock = Clock()
        metrics = GatewayMetrics()
        lag = ReactorLag(metrics, clock, 1.0)
        lag.startService()
        clock.advance(1.25)
        self.assertEqual(value(metrics, "imgateway_reactor_last_lag_seconds"), 0.25)
        self.assertEqual(value(metrics, "imgateway_reactor_lag_seconds_count"), 1)
        self.assertEqual(value(metrics, "imgateway_reactor_lag_seconds_bucket", le="0.5"), 1)
        self.assertEqual(value(metrics, "imgateway_reactor_lag_seconds_bucket", le="0.1"), 0)
        clock.advance(1.0)
        self.assertEqual(value(metrics, "imgateway_reactor_last_lag_seconds"), 0.0)
        lag.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class HomeServerCountingTests(SynchronousTestCase):
    """
    The home server counts messages by status, presences and its quota
    refusals in the gateway's metrics.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock, home=HomeConfig(maxSessionsPerUser=1, maxMessageChars=10))
        addUser(self.gateway, "alice", "alice-pw")
        addUser(self.gateway, "bob", "bob-pw")
        self.metrics = self.gateway.metrics

    def open(self, address: Address) -> object:
        return self.successResultOf(self.gateway.homeServer.openSession(address, RecordingSessionClient()))

    def test_messages(self) -> None:
        """
        A message to a user offline counts as 480, as one to nobody does
        (the same answer: no status tells whether an account exists), one
        delivered as 200, one too long as 413 and a hit of
        C{max_message_chars}; a presence published counts.
        """
        alice = self.open(ALICE)
        self.failureResultOf(alice.sendMessage(BOB, "hi"))  # type: ignore[attr-defined]
        self.failureResultOf(alice.sendMessage(Address("nobody", "corp.example"), "hi"))  # type: ignore[attr-defined]
        bob = self.open(BOB)
        bob.publish(Presence(PresenceState.ONLINE))  # type: ignore[attr-defined]
        self.clock.advance(0)
        self.assertIs(self.successResultOf(alice.sendMessage(BOB, "hi")), DeliveryStatus.DELIVERED)  # type: ignore[attr-defined]
        self.failureResultOf(alice.sendMessage(BOB, "x" * 11))  # type: ignore[attr-defined]
        self.assertEqual(value(self.metrics, "imgateway_messages_total", status="480"), 2)
        self.assertEqual(value(self.metrics, "imgateway_messages_total", status="200"), 1)
        self.assertEqual(value(self.metrics, "imgateway_messages_total", status="413"), 1)
        self.assertEqual(value(self.metrics, "imgateway_limit_hits_total", limit="max_message_chars"), 1)
        self.assertEqual(value(self.metrics, "imgateway_presence_updates_total"), 1)

    def test_tooManySessions(self) -> None:
        """
        A session refused for C{max_sessions_per_user} is a hit of it.
        """
        self.open(ALICE)
        self.failureResultOf(self.gateway.homeServer.openSession(ALICE, RecordingSessionClient()))
        self.assertEqual(value(self.metrics, "imgateway_limit_hits_total", limit="max_sessions_per_user"), 1)

    def test_quota(self) -> None:
        """
        A contact refused for C{max_contacts} is a hit of it.
        """
        gateway = memoryGateway(self.clock, home=HomeConfig(maxContacts=1))
        addUser(gateway, "alice", "alice-pw")
        alice = self.successResultOf(gateway.homeServer.openSession(ALICE, RecordingSessionClient()))
        self.successResultOf(alice.putContact(BOB))
        self.failureResultOf(alice.putContact(Address("carol", "corp.example")))
        self.assertEqual(value(gateway.metrics, "imgateway_limit_hits_total", limit="max_contacts"), 1)


class ThrottleCountingTests(SynchronousTestCase):
    """
    The per-source limits count their refusals by key.
    """

    def test_loginThrottle(self) -> None:
        """
        A login refused by the throttle is a hit of the limit that blocked
        it.
        """
        metrics = GatewayMetrics()
        throttle = LoginThrottle(LimitsConfig(loginFailuresPerAccount=1), Clock())
        throttle.countLimit = metrics.limitHit
        throttle.failed("192.0.2.7", "alice@corp.example")
        self.assertRaises(Exception, throttle.check, "192.0.2.7", "alice@corp.example")
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="login_failures_per_account"), 1)

    def test_connectionLimiter(self) -> None:
        """
        Connections refused by the limiter, for a per-source limit or a
        face's own, are hits of the limit named at the end of the reason.
        """
        metrics = GatewayMetrics()
        limiter = ConnectionLimiter(LimitsConfig(maxUnauthenticatedPerAddress=1), Clock())
        limiter.countLimit = metrics.limitHit
        self.assertTrue(limiter.admit(REMOTE, "native").admitted)
        self.assertFalse(limiter.admit(REMOTE, "native").admitted)
        limiter.refused(REMOTE, "s2s", "9 streams open (s2s_max_incoming_streams)")
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="max_unauthenticated_per_address"), 1)
        self.assertEqual(value(metrics, "imgateway_limit_hits_total", limit="s2s_max_incoming_streams"), 1)

    def test_gatewayWiring(self) -> None:
        """
        The gateway gives its metrics to its limiter, throttle,
        authenticator and home server.
        """
        gateway = memoryGateway(Clock())
        limitHit = gateway.metrics.limitHit
        self.assertEqual(gateway.connectionLimiter.countLimit, limitHit)
        self.assertEqual(gateway.loginThrottle.countLimit, limitHit)
        self.assertIs(gateway.authenticator.metrics, gateway.metrics)
        self.assertIs(gateway.homeServer.metrics, gateway.metrics)


class NativeCountingTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    The native face counts logins and failures by mechanism, and its
    sessions.
    """

    config = NativeConfig()

    def test_logins(self) -> None:
        """
        A PLAIN login, a SCRAM login and a wrong password are counted; the
        face's sessions are those open.
        """
        w = self.loggedIn("alice")
        self.assertEqual(self.wire().login("bob", "bob-pw", "SCRAM-SHA-256").code, 200)
        self.assertEqual(self.wire().login("alice", "nope").code, 401)
        metrics = self.gateway.metrics
        self.assertEqual(value(metrics, "imgateway_logins_total", face="native", mechanism="PLAIN"), 1)
        self.assertEqual(value(metrics, "imgateway_logins_total", face="native", mechanism="SCRAM-SHA-256"), 1)
        self.assertEqual(
            value(metrics, "imgateway_login_failures_total", face="native", mechanism="PLAIN", condition="not-authorized"), 1
        )
        self.assertEqual(value(metrics, "imgateway_sessions", face="native"), 2)
        w.protocol.connectionLost()
        self.assertEqual(value(metrics, "imgateway_sessions", face="native"), 1)


class XMPPCountingTests(C2STestsMixin, SynchronousTestCase):
    """
    The XMPP face counts logins (at bind) and failures by mechanism.
    """

    def test_logins(self) -> None:
        """
        A bound SCRAM login and a failed PLAIN one are counted.
        """
        self.bound("alice")
        c = self.client()
        c.open()
        mech = clientMechanism("PLAIN", "alice", "nope")
        c.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{base64.b64encode(mech.start()).decode()}</auth>")
        metrics = self.gateway.metrics
        self.assertEqual(value(metrics, "imgateway_logins_total", face="xmpp", mechanism="SCRAM-SHA-256"), 1)
        self.assertEqual(
            value(metrics, "imgateway_login_failures_total", face="xmpp", mechanism="PLAIN", condition="not-authorized"), 1
        )
        self.assertEqual(value(metrics, "imgateway_sessions", face="xmpp"), 1)
