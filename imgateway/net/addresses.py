# -*- test-case-name: tests.test_net_addresses -*-
"""
What a peer's address says about it, for the faces' policies (SASL PLAIN
without TLS only from this host, for example).
"""

from __future__ import annotations

from ipaddress import ip_address

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

__all__ = ["isLoopback"]


def isLoopback(address: object) -> bool:
    """
    Whether a peer address is on this host (loopback IP or UNIX socket).

    @param address: A transport's C{getPeer()}.
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            ip = ip_address(address.host.split("%")[0])
        except ValueError:
            return False
        # An IPv4 peer of a dual-stack (::) listener: ::ffff:127.0.0.1.
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback
    return False
