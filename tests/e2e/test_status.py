# -*- test-case-name: tests.e2e.test_status -*-
"""
C{[status]} and C{[log]} on real C{twistd imgateway} processes: C{/metrics}
scraped over HTTP during native traffic shows the counters move and parses
with the Prometheus text-format parser; C{/healthz} answers 200, then, with
the other home server of a linked pair killed, 503 naming the link; the
JSON log parses line by line.
"""

from __future__ import annotations

import json
import signal

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from imgateway.core.address import Address
from imgateway.core.errors import AuthenticationFailed
from imgateway.core.presence import PresenceState
from tests.e2e.harness import GatewayProcess, connectClient, failureOf, freePort, reactor, sleep
from tests.e2e.multihost import linkedHomeServers
from tests.test_link import ALICE, CAROL

BOB = Address.fromString("bob@corp.example")


class _Body(Protocol):
    """
    Collects a response's body (as C{readBody} does, without its warning
    about the Agent's transport).
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.data))
        else:
            self.done.errback(reason)


async def get(port: int, path: str) -> tuple[int, bytes]:
    """
    C{GET http://127.0.0.1:port/path}, on a new connection.

    @return: The status code and the body.
    """
    agent = Agent(reactor(), pool=HTTPConnectionPool(reactor(), persistent=False))
    response = await agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode("ascii"))
    body = _Body()
    response.deliverBody(body)
    return response.code, await body.done


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    C{/metrics}, parsed by the Prometheus parser: (sample name, sorted
    labels) to value.
    """
    code, body = await get(port, "/metrics")
    assert code == 200, (code, body)
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class StatusTests(TestCase):
    """
    One gateway with C{[status] listen} and JSON logs.
    """

    async def test_metricsDuringTraffic(self) -> None:
        """
        Logins, a failed login, messages (delivered and not) and presences
        move the counters of C{/metrics}, which the Prometheus parser
        reads; C{/healthz} answers 200 listing the native listener and the
        stores; every line of the log is JSON.
        """
        statusPort = freePort()
        gw = GatewayProcess(
            self,
            {"status": {"listen": [f"tcp:{statusPort}:interface=127.0.0.1"], "lag_interval": 0.1}, "log": {"format": "json"}},
        )
        gw.addUsers({"alice": "alice's password", "bob": "bob's password"})
        await gw.start()
        before = await scrape(statusPort)
        self.assertEqual(sample(before, "imgateway_logins_total", face="native", mechanism="SCRAM-SHA-256"), 0)

        alice, _ = await gw.client("alice", "alice's password")
        bob, bobSees = await gw.client("bob", "bob's password")
        await failureOf(gw.client("alice", "wrong"), AuthenticationFailed)
        await alice.sendMessage(BOB, "hello")
        await bobSees.waitForMessage(ALICE, "hello")
        await bob.publish(PresenceState.AWAY)
        await sleep(0.3)  # a few reactor lag probes (lag_interval 0.1)
        after = await scrape(statusPort)

        logins = sum(v for (name, labels), v in after.items() if name == "imgateway_logins_total" and ("face", "native") in labels)
        self.assertEqual(logins, 2)
        failures = sum(
            v for (name, labels), v in after.items() if name == "imgateway_login_failures_total" and ("face", "native") in labels
        )
        self.assertEqual(failures, 1)
        self.assertEqual(sample(after, "imgateway_sessions", face="native"), 2)
        self.assertEqual(sample(after, "imgateway_messages_total", status="200"), 1)
        self.assertGreaterEqual(sample(after, "imgateway_presence_updates_total"), 3)
        self.assertGreater(sample(after, "imgateway_reactor_lag_seconds_count"), 0)

        code, body = await get(statusPort, "/healthz")
        self.assertEqual(code, 200, body)
        health = json.loads(body)
        self.assertEqual(health["status"], "up")
        self.assertEqual(
            {(c["kind"], c["name"]) for c in health["checks"]},
            {("listener", f"Native face tcp:{gw.port}:interface=127.0.0.1"), ("store", "directory"), ("store", "home store hs1")},
        )

        await alice.bye()
        await gw.stop()
        lines = [line for line in gw.log().splitlines() if line.strip()]
        self.assertGreater(len(lines), 5)
        records = [json.loads(line) for line in lines]
        self.assertTrue(any("logged in from" in r.get("message", "") for r in records))
        self.assertTrue(all("log_time" in r for r in records))


class LinkHealthTests(TestCase):
    """
    Two home servers of corp.example linked over TLS (as in
    C{tests/e2e/test_links.py}), C{hs1} with C{[status]}.
    """

    async def test_linkDown(self) -> None:
        """
        With the link up, C{/healthz} of C{hs1} answers 200 and
        C{imgateway_link_up} is 1; with C{hs2} killed, C{/healthz} answers
        503 naming the link, and C{imgateway_link_up} is 0.
        """
        statusPort = freePort()
        hs1, hs2 = linkedHomeServers(
            self, {"hs1": {"status": {"listen": [f"tcp:{statusPort}:interface=127.0.0.1"], "health_timeout": 2}}}
        )
        await hs1.start()
        await hs2.start()
        alice, _ = await connectClient(self, hs1.endpoint, "alice", "alice's password")
        _, carol = await connectClient(self, hs2.endpoint, "carol", "carol's password")
        await alice.sendMessage(CAROL, "hello carol")
        await carol.waitForMessage(ALICE, "hello carol", timeout=10)

        code, body = await get(statusPort, "/healthz")
        self.assertEqual(code, 200, body)
        self.assertIn({"kind": "link", "name": "server hs2", "up": True}, json.loads(body)["checks"])
        metrics = await scrape(statusPort)
        self.assertEqual(sample(metrics, "imgateway_link_up", kind="server", link="hs2"), 1)
        self.assertEqual(sample(metrics, "imgateway_link_connects_total", kind="server", link="hs2"), 1)

        await hs2.stop(signal.SIGKILL)
        for _ in range(50):
            code, body = await get(statusPort, "/healthz")
            if code != 200:
                break
            await sleep(0.2)
        self.assertEqual(code, 503, body)
        health = json.loads(body)
        self.assertEqual(health["status"], "down")
        self.assertEqual(health["failing"], ["link server hs2"])
        metrics = await scrape(statusPort)
        self.assertEqual(sample(metrics, "imgateway_link_up", kind="server", link="hs2"), 0)
