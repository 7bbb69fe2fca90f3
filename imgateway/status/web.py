# -*- test-case-name: tests.test_status_web -*-
"""
The C{[status]} listener (twisted.web): C{/healthz}, every health check's
answer as JSON (C{200} when all are up, C{503} naming those that are not),
and C{/metrics}, the gateway's metrics in the Prometheus text format.

Requests are not logged (a scraper asks every few seconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from imgateway.adapters.base import ListenerService
from imgateway.interfaces import IHealthCheck
from imgateway.status.health import HealthReport, checkHealth
from imgateway.status.metrics import GatewayMetrics, ReactorLag

__all__ = ["HealthResource", "MetricsResource", "StatusSite", "makeStatusService", "statusResource"]


class HealthResource(Resource):
    """
    C{GET /healthz}: asks every check (L{checkHealth}) and answers
    C{200} when all are up, else C{503}; the body is JSON::

        {"status": "down", "failing": ["link server hs2"],
         "checks": [{"kind": "listener", "name": "native tcp:5300", "up": true}, ...]}
    """

    isLeaf = True

    def __init__(self, checks: Callable[[], Sequence[IHealthCheck]], clock: IReactorTime, timeout: float) -> None:
        """
        @param checks: Gives the checks to ask, at each request.
        @param timeout: Seconds a check may take (past it, it is down).
        """
        super().__init__()
        self._checks = checks
        self._clock = clock
        self._timeout = timeout

    def render_GET(self, request: Request) -> Any:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(reports: list[HealthReport]) -> None:
            if gone:
                return
            failing = [f"{r.kind} {r.name}" for r in reports if not r.up]
            request.setResponseCode(503 if failing else 200)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            body = {"status": "down" if failing else "up", "failing": failing, "checks": [r.asJSON() for r in reports]}
            request.write(json.dumps(body).encode("utf-8") + b"\n")
            request.finish()

        checkHealth(self._checks(), self._clock, self._timeout).addCallback(answer)
        return NOT_DONE_YET


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry's metrics in the Prometheus text format
    (version 0.0.4, which every Prometheus reads).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        body: bytes = generate_latest(self._registry)
        return body


class _Root(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"imgateway status: /healthz, /metrics\n"


def statusResource(metrics: GatewayMetrics, checks: Callable[[], Sequence[IHealthCheck]], clock: IReactorTime, timeout: float) -> Resource:
    """
    @return: The root of the status site: C{/healthz} and C{/metrics}.
    """
    root = _Root()
    root.putChild(b"healthz", HealthResource(checks, clock, timeout))
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    return root


class StatusSite(Site):
    """
    A L{Site} that logs neither its requests nor its start and stop.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def makeStatusService(
    reactor: Any,
    listen: Sequence[str],
    metrics: GatewayMetrics,
    checks: Callable[[], Sequence[IHealthCheck]],
    clock: IReactorTime,
    healthTimeout: float,
    lagInterval: float,
) -> MultiService:
    """
    The C{[status]} service: a listener per endpoint string of C{listen},
    and the reactor lag probe.
    """
    top = MultiService()
    site = StatusSite(statusResource(metrics, checks, clock, healthTimeout))
    for description in listen:
        ListenerService(reactor, description, site, "Status (/healthz, /metrics)").setServiceParent(top)
    ReactorLag(metrics, clock, lagInterval).setServiceParent(top)
    return top
