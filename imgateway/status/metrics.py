# -*- test-case-name: tests.test_status_metrics -*-
"""
What the gateway counts, exposed to Prometheus by C{/metrics} of
C{[status]} (L{imgateway.status.web}): L{GatewayMetrics}, an L{IMetrics}
on a registry of its own (never the client library's global one), and
L{ReactorLag}, which measures how late the reactor runs a timed call.

Counters are incremented where things happen, each a one-line call;
gauges that describe state (sessions by face, links up) are read when
C{/metrics} is scraped, so keeping them costs nothing in between.
docs/operations.md, "Status, health and metrics", lists every metric.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.errors import DeliveryError, DeliveryStatus
from imgateway.core.linkinfo import LinkInfo
from imgateway.interfaces import IMetrics, ISession

__all__ = ["GatewayMetrics", "ReactorLag"]

#: The buckets of C{imgateway_reactor_lag_seconds}, in seconds.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


#: Gives the links' states when C{/metrics} is scraped.
LinkSource = Callable[[], Iterable[LinkInfo]]


@implementer(IMetrics)
class GatewayMetrics:
    """
    See L{IMetrics}; the metrics live in L{registry}.

    @ivar registry: The L{CollectorRegistry} C{/metrics} exposes.
    @ivar reactorLag: The L{Histogram} of reactor lags (L{ReactorLag}).
    @ivar lastReactorLag: The L{Gauge} of the last lag measured.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._logins = Counter(
            "imgateway_logins", "Logins that opened a session, by face and SASL mechanism.",
            ["face", "mechanism"], registry=registry,
        )
        self._loginFailures = Counter(
            "imgateway_login_failures", "Failed logins, by face, SASL mechanism and SASL condition.",
            ["face", "mechanism", "condition"], registry=registry,
        )
        # Counted per message on every home server: a plain integer per
        # status, read by a collector at scrape time (no lock, no
        # Prometheus child per call), exposed exactly as a Counter with
        # these labels would be (_MessageCounts).
        self._messages = _MessageCounts()
        registry.register(self._messages)
        self._messageCounts = self._messages.counts
        self._presence = Counter(
            "imgateway_presence_updates", "Presences published by this home server's sessions.", registry=registry
        )
        self._limits = Counter(
            "imgateway_limit_hits", "Refusals for a configured limit, by the limit's configuration key.",
            ["limit"], registry=registry,
        )
        self._limitChildren: dict[str, Any] = {}
        self.reactorLag = Histogram(
            "imgateway_reactor_lag_seconds", "How late the reactor ran a timed call ([status] lag_interval).",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.lastReactorLag = Gauge(
            "imgateway_reactor_last_lag_seconds", "How late the reactor ran the last timed call.", registry=registry
        )
        self._sessions: dict[str, weakref.WeakSet[Any]] = {}
        self._linkSources: list[LinkSource] = []
        registry.register(_StateCollector(self))

    # -- IMetrics ----------------------------------------------------------------

    def loggedIn(self, face: str, mechanism: str, session: ISession) -> None:
        self._logins.labels(face, mechanism).inc()
        sessions = self._sessions.get(face)
        if sessions is None:
            sessions = self._sessions[face] = weakref.WeakSet()
        sessions.add(session)

    def loginFailed(self, face: str, mechanism: str, condition: str) -> None:
        self._loginFailures.labels(face, mechanism, condition).inc()

    def messageOutcome(self, result: object) -> object:
        counts = self._messageCounts
        if type(result) is DeliveryStatus:
            counts[result] += 1
        elif isinstance(result, Failure) and isinstance(result.value, DeliveryError):
            counts[result.value.status] += 1
        else:
            counts[MESSAGE_ERROR] += 1
        return result

    def presencePublished(self) -> None:
        self._presence.inc()

    def limitHit(self, limit: str) -> None:
        child = self._limitChildren.get(limit)
        if child is None:
            child = self._limitChildren[limit] = self._limits.labels(limit)
        child.inc()

    # -- state read at scrape time ----------------------------------------------

    def addLinkSource(self, source: LinkSource) -> None:
        """
        Show the links C{source} gives (called at every scrape) as
        C{imgateway_link_up} and (those that count it)
        C{imgateway_link_connects_total}.
        """
        self._linkSources.append(source)

    def sessionCounts(self) -> dict[str, int]:
        """
        @return: Face to its open sessions (those counted by L{loggedIn}
            and not closed yet).
        """
        return {
            face: sum(1 for session in sessions if not getattr(session, "closed", False))
            for face, sessions in sorted(self._sessions.items())
        }

    def linkStates(self) -> list[LinkInfo]:
        """
        @return: The links every source gives, now.
        """
        return [state for source in self._linkSources for state in source()]


#: The label of C{imgateway_messages_total} for a message whose outcome was
#: an unexpected failure (not a L{DeliveryStatus}).
MESSAGE_ERROR = "error"

#: C{imgateway_messages_total}'s help text.
MESSAGES_HELP = (
    "Messages sent by this home server's users, by the status they were answered with "
    "(200 delivered, 404, 480, 486...; error: an unexpected failure)."
)


class _MessageCounts(Collector):
    """
    C{imgateway_messages_total} by status: L{counts} holds a plain integer
    per L{DeliveryStatus} and L{MESSAGE_ERROR}, incremented by
    L{GatewayMetrics.messageOutcome} (in the reactor thread, as C{/metrics}
    is read), and read when C{/metrics} is scraped. Its exposition is
    byte for byte that of a Prometheus C{Counter} with the label C{status}
    whose children were all made when this was: the same samples in the
    same order, each with its C{_created} time (unless the client library's
    C{PROMETHEUS_DISABLE_CREATED_SERIES} turns them off).

    @ivar counts: Status (or L{MESSAGE_ERROR}) to the messages counted.
    """

    def __init__(self) -> None:
        self.counts: dict[DeliveryStatus | str, int] = {}
        self._labels: list[tuple[DeliveryStatus | str, str, float]] = []
        for key in (*DeliveryStatus, MESSAGE_ERROR):
            self.counts[key] = 0
            label = key if isinstance(key, str) else str(key.value)
            # When a Counter makes its child (its _created sample).
            self._labels.append((key, label, time.time()))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("imgateway_messages", MESSAGES_HELP, labels=["status"])
        counts = self.counts
        useCreated = _useCreated()
        for key, label, created in self._labels:
            family.add_metric([label], float(counts[key]), created if useCreated else None)
        yield family


def _useCreated() -> bool:
    """
    @return: Whether the Prometheus client's counters show their
        C{_created} samples (C{PROMETHEUS_DISABLE_CREATED_SERIES} unset).
    """
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class _StateCollector(Collector):
    """
    The gauges read when C{/metrics} is scraped.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("imgateway_sessions", "Open sessions of this process's clients, by face.", labels=["face"])
        for face, count in self._metrics.sessionCounts().items():
            sessions.add_metric([face], count)
        yield sessions
        up = GaugeMetricFamily("imgateway_link_up", "Whether a link is connected (1) or not (0).", labels=["kind", "link"])
        connects = CounterMetricFamily(
            "imgateway_link_connects", "How many times a link came up (reconnects: this minus one).", labels=["kind", "link"]
        )
        for state in self._metrics.linkStates():
            up.add_metric([state.kind, state.name], 1 if state.up else 0)
            if state.connects is not None:
                connects.add_metric([state.kind, state.name], state.connects)
        yield up
        yield connects


class ReactorLag(Service):
    """
    Measures how late the reactor runs a call timed for C{interval} seconds
    from now, every C{interval} seconds while running, into
    L{GatewayMetrics.reactorLag} and L{GatewayMetrics.lastReactorLag}.
    """

    def __init__(self, metrics: GatewayMetrics, clock: IReactorTime, interval: float) -> None:
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._measure)

    def _measure(self) -> None:
        lag = max(0.0, self._clock.seconds() - self._due)
        self._metrics.reactorLag.observe(lag)
        self._metrics.lastReactorLag.set(lag)
        self._schedule()
