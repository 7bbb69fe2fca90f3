# -*- test-case-name: tests.test_net_addresses -*-
"""
What a peer's address says about it, for the faces' policies: whether it is
on this host (SASL PLAIN without TLS only from loopback, for example), and
which source per-address limits count it against.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address as _IPv4, IPv4Network, IPv6Address as _IPv6, IPv6Network, ip_address

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

__all__ = ["isLoopback", "networkOf", "sourceOf"]


def _ipOf(address: object) -> _IPv4 | _IPv6 | None:
    """
    The IP address of a TCP peer, without an IPv6 scope, and an IPv4-mapped
    IPv6 address (an IPv4 peer of a dual-stack C{::} listener) as its IPv4
    address; C{None} for any other peer.
    """
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    try:
        ip = ip_address(address.host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, _IPv6) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def isLoopback(address: object) -> bool:
    """
    Whether a peer address is on this host (loopback IP or UNIX socket).

    @param address: A transport's C{getPeer()}.
    """
    if isinstance(address, UNIXAddress):
        return True
    ip = _ipOf(address)
    return ip is not None and ip.is_loopback


def sourceOf(address: object) -> str | None:
    """
    The source that per-address limits count a peer against.

    @param address: A transport's C{getPeer()}.
    @return: The IPv4 address (C{"192.0.2.7"}), the /64 of an IPv6 address
        (C{"2001:db8:1:2::/64"}: one host commonly holds a whole /64; an
        IPv4-mapped IPv6 address counts as its IPv4 address), C{"unix"} for
        a UNIX socket peer, or C{None} for anything else (which no
        per-source limit applies to).
    """
    if isinstance(address, UNIXAddress):
        return "unix"
    ip = _ipOf(address)
    if ip is None:
        return None
    if isinstance(ip, _IPv6):
        return str(IPv6Network((ip, 64), strict=False))
    return str(ip)


def networkOf(
    address: object, networks: Iterable[IPv4Network | IPv6Network]
) -> IPv4Network | IPv6Network | None:
    """
    The first of C{networks} that holds a peer (an IPv4-mapped IPv6 peer as
    its IPv4 address, as everywhere here).

    @param address: A transport's C{getPeer()}.
    @return: That network, or C{None} when none holds it, or the peer is not
        a TCP peer (a UNIX socket peer is in no network).
    """
    ip = _ipOf(address)
    if ip is None:
        return None
    for network in networks:
        if ip.version == network.version and ip in network:
            return network
    return None
