"""
Unit tests for the C{[status]} site (L{imgateway.status.web}): C{/healthz}
and C{/metrics} rendered on fake requests, the C{[status]} and C{[log]}
tables, and the status service a gateway builds.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from imgateway.adapters.base import ListenerService
from imgateway.config import LogConfig, StatusConfig, parseConfig
from imgateway.core.errors import ConfigError
from imgateway.gateway import addStatus
from imgateway.status.metrics import GatewayMetrics, ReactorLag
from imgateway.status.web import StatusSite, statusResource
from imgateway.testing import memoryGateway
from tests.test_status_health import FakeCheck


def render(resource: Any, path: bytes) -> DummyRequest:
    """
    GET C{path} from the site's root C{resource}.
    """
    request = DummyRequest(path.strip(b"/").split(b"/"))
    child = getChildForRequest(resource, request)
    result = child.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


class HealthResourceTests(SynchronousTestCase):
    """
    C{GET /healthz}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks: list[Any] = []
        self.root = statusResource(GatewayMetrics(), lambda: self.checks, self.clock, 5.0)

    def test_allUp(self) -> None:
        """
        All checks up: C{200}, a JSON body listing them, nothing failing.
        """
        self.checks = [FakeCheck("Native face tcp:5300", None, "listener"), FakeCheck("directory", None, "store")]
        request = render(self.root, b"/healthz")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["status"], "up")
        self.assertEqual(body["failing"], [])
        self.assertEqual([c["name"] for c in body["checks"]], ["Native face tcp:5300", "directory"])

    def test_oneDown(self) -> None:
        """
        One check down: C{503}, naming it and why.
        """
        self.checks = [FakeCheck("Native face tcp:5300", None, "listener"), FakeCheck("server hs2", "down: not connected")]
        request = render(self.root, b"/healthz")
        self.assertEqual(request.responseCode, 503)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["status"], "down")
        self.assertEqual(body["failing"], ["link server hs2"])
        self.assertEqual(body["checks"][1]["problem"], "down: not connected")

    def test_later(self) -> None:
        """
        The answer waits for a slow check, up to the timeout; a client gone
        meanwhile is not written to.
        """
        self.checks = [FakeCheck("directory", Deferred(), "store")]
        request = render(self.root, b"/healthz")
        self.assertEqual(request.written, [])
        self.clock.advance(5.0)
        self.assertEqual(request.responseCode, 503)
        self.assertIn(b"no answer within 5 s", b"".join(request.written))
        gone = render(self.root, b"/healthz")
        gone.processingFailed(Exception("client gone"))
        self.clock.advance(5.0)
        self.assertNotIn(b"no answer", b"".join(gone.written))


class MetricsResourceTests(SynchronousTestCase):
    """
    C{GET /metrics}.
    """

    def test_text(self) -> None:
        """
        The metrics in the Prometheus text format, which its parser reads.
        """
        metrics = GatewayMetrics()
        metrics.limitHit("max_contacts")
        root = statusResource(metrics, list, Clock(), 5.0)
        request = render(root, b"/metrics")
        self.assertEqual(request.responseCode or 200, 200)
        [contentType] = request.responseHeaders.getRawHeaders(b"content-type") or []
        self.assertTrue(contentType.startswith(b"text/plain; version=0.0.4"), contentType)
        families = {f.name: f for f in text_string_to_metric_families(b"".join(request.written).decode("utf-8"))}
        self.assertIn("imgateway_logins", families)
        self.assertIn("imgateway_sessions", families)
        [hit] = [s for s in families["imgateway_limit_hits"].samples if s.name == "imgateway_limit_hits_total"]
        self.assertEqual((hit.labels, hit.value), ({"limit": "max_contacts"}, 1.0))

    def test_notLogged(self) -> None:
        """
        The site logs no request.
        """
        logged: list[Any] = []
        site = StatusSite(statusResource(GatewayMetrics(), list, Clock(), 5.0))
        site.logFile = logged
        site.log(DummyRequest([b"metrics"]))
        self.assertEqual(logged, [])


CONFIG = FilePath("/etc/imgateway/imgateway.toml")


class ConfigTests(SynchronousTestCase):
    """
    The C{[status]} and C{[log]} tables.
    """

    def parse(self, **tables: dict[str, Any]) -> Any:
        return parseConfig({"gateway": {"domain": "corp.example"}, **tables}, CONFIG, MemoryReactor(), {})

    def test_defaults(self) -> None:
        """
        Without the tables: no status listener, text logs.
        """
        config = self.parse()
        self.assertEqual(config.status, StatusConfig())
        self.assertEqual(config.status.listen, ())
        self.assertEqual(config.log, LogConfig("text"))

    def test_values(self) -> None:
        """
        Every key is read.
        """
        config = self.parse(
            status={"listen": ["tcp:9310:interface=127.0.0.1"], "health_timeout": 2, "lag_interval": 0.5},
            log={"format": "json"},
        )
        self.assertEqual(config.status, StatusConfig(("tcp:9310:interface=127.0.0.1",), 2.0, 0.5))
        self.assertEqual(config.log.format, "json")

    def test_errors(self) -> None:
        """
        A bad format, endpoint, number or key is refused, naming the key.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"log": {"format": "xml"}}, "[log]: format"),
            ({"status": {"listen": ["nope:1"]}}, "[status]: listen"),
            ({"status": {"health_timeout": 0}}, "[status]: health_timeout"),
            ({"status": {"port": 9310}}, "[status]: port: unknown key"),
        ]
        for tables, key in cases:
            e = self.assertRaises(ConfigError, self.parse, **tables)
            self.assertIn(key, str(e))


class GatewayStatusTests(SynchronousTestCase):
    """
    What L{addStatus} adds to a gateway's tree.
    """

    def test_off(self) -> None:
        """
        Without C{[status] listen}: the tree's checks (its listeners), no
        status listener (a memory gateway has no stores to check).
        """
        gateway = memoryGateway(Clock())
        top = MultiService()
        listener = ListenerService(MemoryReactor(), "tcp:5300", Factory(), "Native face")
        listener.setServiceParent(top)
        addStatus(top, gateway, MemoryReactor())
        self.assertEqual(list(top), [listener])
        self.assertEqual(gateway.healthChecks, [listener])

    def test_on(self) -> None:
        """
        With C{[status] listen}: a listener per endpoint and the reactor
        lag probe, under the tree (stopped first).
        """
        gateway = memoryGateway(Clock())
        gateway.config = attrs.evolve(gateway.config, status=StatusConfig(("tcp:9310:interface=127.0.0.1",)))
        top = MultiService()
        addStatus(top, gateway, MemoryReactor())
        [status] = list(top)
        kinds = [type(s) for s in status]
        self.assertEqual(kinds, [ListenerService, ReactorLag])
