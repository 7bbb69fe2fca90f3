# -*- test-case-name: tests.test_net_srv -*-
"""
An SRV-aware client endpoint (RFC 2782) for any service: connect to
C{_service._proto.domain} as its DNS says, through an injected
L{twisted.names} resolver for every lookup (SRV, then A and AAAA of each
target), so tests and deployments decide which DNS is asked. XMPP
federation uses it for C{_xmpp-server._tcp} (RFC 6120 section 3.2); the
router will for its own service.

Twisted has L{twisted.names.srvconnect.SRVConnector}, a connector rather
than an endpoint, which resolves targets through the reactor's resolver;
this module ports its RFC 2782 selection to an L{IStreamClientEndpoint}.
"""

from __future__ import annotations

import random as _random
import socket
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from zope.interface import implementer

__all__ = ["SRVClientEndpoint", "SRVTarget", "orderSRV", "serversResolver", "systemResolver"]

log = Logger()


@frozen
class SRVTarget:
    """
    One SRV record's target.

    @ivar priority: Lower is tried first.
    @ivar weight: Relative chance among targets of the same priority.
    @ivar host: The target's host name (no trailing dot).
    @ivar port: The target's port.
    """

    priority: int
    weight: int
    host: str
    port: int


def orderSRV(targets: Sequence[SRVTarget], random: Callable[[], float] = _random.random) -> list[SRVTarget]:
    """
    The order in which to try C{targets} (RFC 2782): by priority, lowest
    first; within a priority, each next target is picked at random with a
    chance proportional to its weight (weight 0 only goes first when every
    remaining weight is 0).

    @param random: Returns a float in [0, 1).
    """
    ordered: list[SRVTarget] = []
    for priority in sorted({t.priority for t in targets}):
        # RFC 2782: zero weights first, then a running sum over the rest.
        remaining = sorted((t for t in targets if t.priority == priority), key=lambda t: t.weight)
        while remaining:
            total = sum(t.weight for t in remaining)
            pick = random() * total
            running = 0
            chosen = remaining[-1]
            for t in remaining:
                running += t.weight
                if running >= pick and (t.weight > 0 or total == 0):
                    chosen = t
                    break
            remaining.remove(chosen)
            ordered.append(chosen)
    return ordered


def systemResolver(reactor: Any) -> Any:
    """
    The resolver L{twisted.names.client.createResolver} makes (C{/etc/hosts},
    a cache, then the servers of C{/etc/resolv.conf}), on C{reactor} rather
    than the global one.

    @return: An L{twisted.internet.interfaces.IResolver}.
    """
    from twisted.names import cache, client, hosts, resolve

    return resolve.ResolverChain(
        [
            hosts.Resolver(b"/etc/hosts"),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(resolv="/etc/resolv.conf", reactor=reactor),
        ]
    )


def serversResolver(reactor: Any, servers: Sequence[tuple[str, int]]) -> Any:
    """
    A resolver that asks only C{servers} (no C{/etc/hosts}, no
    C{/etc/resolv.conf}), with a cache, on C{reactor}.

    @param servers: (host, port) pairs of DNS servers, asked in turn.
    @return: An L{twisted.internet.interfaces.IResolver}.
    """
    from twisted.names import cache, client, resolve

    return resolve.ResolverChain(
        [cache.CacheResolver(reactor=reactor), client.Resolver(servers=list(servers), reactor=reactor)]
    )


def _hostOf(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").rstrip(".")


@implementer(IStreamClientEndpoint)
class SRVClientEndpoint:
    """
    Connect to C{_service._proto.domain} as DNS says: the SRV targets in
    RFC 2782 order, each address of each (AAAA, then A) tried in turn; no
    SRV record (or a failed SRV lookup): the domain itself on
    C{fallbackPort} (as RFC 6120 3.2.2 wants for XMPP), or
    L{DNSLookupError} if there is none; a single target of C{.}: the
    service is not offered there (L{DNSLookupError}, no fallback).

    @ivar maxTargets: Most SRV targets tried (a hostile zone can list
        thousands).
    @ivar maxAddresses: Most addresses tried per target and family.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        domain: str,
        service: str,
        fallbackPort: int | None,
        protocol: str = "tcp",
        timeout: float = 30.0,
        random: Callable[[], float] = _random.random,
        maxTargets: int = 8,
        maxAddresses: int = 4,
    ) -> None:
        """
        @param reactor: An L{IReactorTCP}.
        @param resolver: An L{twisted.internet.interfaces.IResolver} (for
            example from L{twisted.names.client.createResolver}).
        @param domain: The domain, as text (IDNA-encoded for the lookups).
        @param service: The service name, without its underscore
            (C{"xmpp-server"}).
        @param fallbackPort: The port of the domain itself when it has no
            SRV record; C{None}: no fallback.
        @param protocol: The transport protocol's name (C{"tcp"}).
        @param timeout: Seconds for each TCP connection attempt.
        """
        self.reactor = reactor
        self.resolver = resolver
        self.domain = domain
        self.service = service
        self.protocol = protocol
        self.fallbackPort = fallbackPort
        self.timeout = timeout
        self.random = random
        self.maxTargets = maxTargets
        self.maxAddresses = maxAddresses

    def _ascii(self, name: str) -> str:
        try:
            return name.encode("idna").decode("ascii")
        except UnicodeError:
            raise DNSLookupError(f"{name!r} is not a valid domain name") from None

    async def targets(self) -> list[tuple[str, int]]:
        """
        @return: The host and port pairs to try, in order.
        @raise DNSLookupError: If the domain says the service is not offered.
        """
        name = f"_{self.service}._{self.protocol}.{self._ascii(self.domain)}"
        try:
            answers, _authority, _additional = await self.resolver.lookupService(name)
        except CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, DNSNameError):
                log.info("SRV lookup of {name} failed ({error})", name=name, error=e)
            return self._fallback(name)
        records = [
            SRVTarget(rr.payload.priority, rr.payload.weight, _hostOf(rr.payload.target), rr.payload.port)
            for rr in answers
            if rr.type == dns.SRV
        ]
        if not records:
            return self._fallback(name)
        if len(records) == 1 and records[0].host in ("", "."):
            raise DNSLookupError(f"{self.domain} does not offer {self.service} (SRV target '.')")
        ordered = orderSRV(records, self.random)[: self.maxTargets]
        return [(t.host, t.port) for t in ordered if t.host not in ("", ".")]

    def _fallback(self, name: str) -> list[tuple[str, int]]:
        if self.fallbackPort is None:
            raise DNSLookupError(f"no SRV record for {name}")
        return [(self.domain, self.fallbackPort)]

    async def addresses(self, host: str) -> list[tuple[int, str]]:
        """
        @return: The addresses of C{host}: (address family, address) pairs,
            IPv6 first.
        """
        name = self._ascii(host)
        found: list[tuple[int, str]] = []
        for lookup, family in ((self.resolver.lookupIPV6Address, socket.AF_INET6), (self.resolver.lookupAddress, socket.AF_INET)):
            try:
                answers, _authority, _additional = await lookup(name)
            except CancelledError:
                raise
            except Exception:
                continue
            addresses = [
                socket.inet_ntop(socket.AF_INET6, rr.payload.address) if family == socket.AF_INET6 else rr.payload.dottedQuad()
                for rr in answers
                if rr.type == (dns.AAAA if family == socket.AF_INET6 else dns.A)
            ]
            found.extend((family, a) for a in addresses[: self.maxAddresses])
        return found

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Try each address of each target in turn.

        @return: Fires with the protocol of the first connection made;
            fails with L{DNSLookupError} if no address was found, or with
            the last L{ConnectError}. Cancelling it cancels the attempt in
            progress.
        """
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        last: Exception | None = None
        for host, port in await self.targets():
            for family, address in await self.addresses(host):
                if family == socket.AF_INET6:
                    endpoint: IStreamClientEndpoint = TCP6ClientEndpoint(self.reactor, address, port, self.timeout)
                else:
                    endpoint = TCP4ClientEndpoint(self.reactor, address, port, self.timeout)
                try:
                    return await endpoint.connect(protocolFactory)
                except CancelledError:
                    raise
                except Exception as e:
                    log.debug("Connecting to {host} ({address}) port {port} failed: {error}", host=host, address=address, port=port, error=e)
                    last = e
        if last is None:
            raise DNSLookupError(f"no address found for {self.domain}")
        if isinstance(last, ConnectError):
            raise last
        raise ConnectError(string=str(last))
