# -*- test-case-name: tests.test_net_srv -*-
"""
Tests for L{imgateway.net.srv}: RFC 2782 ordering and the SRV endpoint,
against a resolver that answers from a table and a memory reactor.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.srv import SRVClientEndpoint, SRVTarget, orderSRV

THEIRS = "other.example"


class FakeResolver:
    """
    A resolver that answers from a table: name to SRV records (priority,
    weight, port, target), A and AAAA addresses; other names do not exist.
    """

    def __init__(
        self,
        srv: dict[str, list[tuple[int, int, int, str]]],
        a: dict[str, list[str]],
        aaaa: dict[str, list[str]] | None = None,
    ) -> None:
        self.srv = srv
        self.a = a
        self.aaaa = aaaa or {}
        self.asked: list[str] = []

    def _answer(self, records: list[dns.RRHeader]) -> Deferred[Any]:
        return succeed((records, [], []))

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.asked.append(f"SRV {name}")
        if name not in self.srv:
            return fail(DNSNameError(name))
        return self._answer([
            dns.RRHeader(name.encode(), dns.SRV, payload=dns.Record_SRV(priority, weight, port, target.encode()))
            for priority, weight, port, target in self.srv[name]
        ])

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.asked.append(f"A {name}")
        if name not in self.a:
            return fail(DNSNameError(name))
        return self._answer([dns.RRHeader(name.encode(), dns.A, payload=dns.Record_A(a)) for a in self.a[name]])

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.asked.append(f"AAAA {name}")
        if name not in self.aaaa:
            return fail(DNSNameError(name))
        return self._answer([dns.RRHeader(name.encode(), dns.AAAA, payload=dns.Record_AAAA(a)) for a in self.aaaa[name]])


class SRVTests(SynchronousTestCase):
    """
    L{orderSRV} and L{SRVClientEndpoint} (RFC 2782, RFC 6120 3.2).
    """

    def test_priority(self) -> None:
        """
        Lower priorities come first, whatever the weights.
        """
        targets = [SRVTarget(20, 100, "c", 1), SRVTarget(10, 0, "a", 1), SRVTarget(30, 5, "d", 1), SRVTarget(10, 0, "b", 1)]
        ordered = orderSRV(targets, random=lambda: 0.0)
        self.assertEqual([t.host for t in ordered], ["a", "b", "c", "d"])

    def test_weight(self) -> None:
        """
        Within a priority, a target is picked with a chance proportional to
        its weight: the random draw picks along the running sum of weights.
        """
        targets = [SRVTarget(10, 10, "light", 1), SRVTarget(10, 90, "heavy", 1)]
        self.assertEqual([t.host for t in orderSRV(targets, random=lambda: 0.05)], ["light", "heavy"])
        self.assertEqual([t.host for t in orderSRV(targets, random=lambda: 0.5)], ["heavy", "light"])
        counts = {"light": 0, "heavy": 0}
        rng = random.Random(1)
        for _ in range(1000):
            counts[orderSRV(targets, random=rng.random)[0].host] += 1
        self.assertTrue(800 < counts["heavy"] < 980, counts)

    def connect(
        self, resolver: FakeResolver, service: str = "xmpp-server", fallbackPort: int | None = 5269
    ) -> tuple[MemoryReactorClock, Deferred[Any]]:
        reactor = MemoryReactorClock()
        endpoint = SRVClientEndpoint(reactor, resolver, THEIRS, service, fallbackPort, random=lambda: 0.0)
        return reactor, endpoint.connect(Factory.forProtocol(Protocol))

    def test_order(self) -> None:
        """
        Targets are tried in SRV order, each on its own port, each address
        (IPv6 first) in turn, until one connects.
        """
        resolver = FakeResolver(
            {f"_xmpp-server._tcp.{THEIRS}": [(20, 0, 5270, "backup.other.example"), (10, 0, 5269, "xmpp.other.example")]},
            {"xmpp.other.example": ["192.0.2.10"], "backup.other.example": ["192.0.2.20"]},
            {"xmpp.other.example": ["2001:db8::10"]},
        )
        reactor, d = self.connect(resolver)
        self.assertEqual(reactor.tcpClients[-1][:2], ("2001:db8::10", 5269))
        reactor.tcpClients[-1][2].clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.tcpClients[-1][:2], ("192.0.2.10", 5269))
        reactor.tcpClients[-1][2].clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.tcpClients[-1][:2], ("192.0.2.20", 5270))
        self.assertNoResult(d)
        connected: Any = reactor.tcpClients[-1][2].buildProtocol(None)
        connected.makeConnection(StringTransport())
        self.successResultOf(d)
        self.assertEqual(resolver.asked[0], f"SRV _xmpp-server._tcp.{THEIRS}")

    def test_fallback(self) -> None:
        """
        Without SRV records, the domain itself is tried on port 5269.
        """
        reactor, d = self.connect(FakeResolver({}, {THEIRS: ["192.0.2.30"]}))
        self.assertEqual(reactor.tcpClients[-1][:2], ("192.0.2.30", 5269))

    def test_notOffered(self) -> None:
        """
        A single SRV target of C{.} means the service is not offered: no
        fallback.
        """
        reactor, d = self.connect(FakeResolver({f"_xmpp-server._tcp.{THEIRS}": [(0, 0, 0, ".")]}, {THEIRS: ["192.0.2.30"]}))
        self.failureResultOf(d, DNSLookupError)
        self.assertEqual(reactor.tcpClients, [])

    def test_noAddress(self) -> None:
        """
        No address at all: L{DNSLookupError}.
        """
        reactor, d = self.connect(FakeResolver({}, {}))
        self.failureResultOf(d, DNSLookupError)

    def test_allRefused(self) -> None:
        """
        When every address refuses, the last error is reported.
        """
        reactor, d = self.connect(FakeResolver({}, {THEIRS: ["192.0.2.30"]}))
        reactor.tcpClients[-1][2].clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_serviceName(self) -> None:
        """
        The service and protocol names are parameters: another service
        (the router's C{_imgw._tcp}) is looked up under its own name.
        """
        resolver = FakeResolver({f"_imgw._tcp.{THEIRS}": [(10, 0, 5310, "hs1.other.example")]}, {"hs1.other.example": ["192.0.2.40"]})
        reactor, d = self.connect(resolver, service="imgw", fallbackPort=None)
        self.assertEqual(resolver.asked[0], f"SRV _imgw._tcp.{THEIRS}")
        self.assertEqual(reactor.tcpClients[-1][:2], ("192.0.2.40", 5310))

    def test_noFallback(self) -> None:
        """
        With no fallback port, a domain without SRV records fails with
        L{DNSLookupError} and its own address is not tried.
        """
        resolver = FakeResolver({}, {THEIRS: ["192.0.2.30"]})
        reactor, d = self.connect(resolver, service="imgw", fallbackPort=None)
        self.assertIn("_imgw._tcp.other.example", str(self.failureResultOf(d, DNSLookupError).value))
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(resolver.asked, [f"SRV _imgw._tcp.{THEIRS}"])
