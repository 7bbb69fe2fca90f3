# -*- test-case-name: tests.test_net_addresses -*-
"""
Tests for L{imgateway.net.addresses}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.addresses import isLoopback, sourceOf


def peer(host: str, port: int = 40000) -> IPv4Address | IPv6Address:
    """
    A TCP peer address.
    """
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class IsLoopbackTests(SynchronousTestCase):
    """
    L{isLoopback}.
    """

    def test_addresses(self) -> None:
        """
        Loopback IPv4, IPv6 and UNIX peers are loopback; others are not.
        """
        self.assertTrue(isLoopback(IPv4Address("TCP", "127.0.0.9", 1)))
        self.assertTrue(isLoopback(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(isLoopback(UNIXAddress(b"/tmp/x")))
        self.assertFalse(isLoopback(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertFalse(isLoopback(IPv4Address("TCP", "not-an-ip", 1)))

    def test_ipv4Mapped(self) -> None:
        """
        An IPv4 peer of a dual-stack listener (C{::ffff:127.0.0.1}) is
        loopback when its IPv4 address is.
        """
        self.assertTrue(isLoopback(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertFalse(isLoopback(IPv6Address("TCP", "::ffff:192.0.2.1", 1)))


class SourceOfTests(SynchronousTestCase):
    """
    Tests for L{sourceOf}.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 peer is its own source, whatever its port.
        """
        self.assertEqual(sourceOf(peer("192.0.2.7", 1)), "192.0.2.7")
        self.assertEqual(sourceOf(peer("192.0.2.7", 2)), "192.0.2.7")

    def test_ipv6Per64(self) -> None:
        """
        IPv6 peers count per /64: two addresses of one /64 are one source,
        of two /64s two sources.
        """
        one = sourceOf(peer("2001:db8:1:2::1"))
        self.assertEqual(one, "2001:db8:1:2::/64")
        self.assertEqual(sourceOf(peer("2001:db8:1:2:ffff:ffff:ffff:ffff")), one)
        self.assertNotEqual(sourceOf(peer("2001:db8:1:3::1")), one)

    def test_ipv6Scope(self) -> None:
        """
        A scoped (link-local) address counts without its scope.
        """
        self.assertEqual(sourceOf(peer("fe80::1%eth0")), "fe80::/64")

    def test_ipv4Mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address (a dual-stack listener) counts as the
        IPv4 address.
        """
        self.assertEqual(sourceOf(peer("::ffff:192.0.2.7")), "192.0.2.7")

    def test_unix(self) -> None:
        """
        Every UNIX socket peer is one source.
        """
        self.assertEqual(sourceOf(UNIXAddress(None)), "unix")

    def test_other(self) -> None:
        """
        Anything else has no source (no per-source limit applies).
        """
        self.assertIsNone(sourceOf(None))
        self.assertIsNone(sourceOf(object()))
        self.assertIsNone(sourceOf(IPv4Address("TCP", "not an address", 1)))


class NetworkOfTests(SynchronousTestCase):
    """
    L{networkOf}.
    """

    def test_first(self) -> None:
        """
        The first network holding the peer is returned; none, C{None}.
        """
        from ipaddress import ip_network

        from imgateway.net.addresses import networkOf

        nets = (ip_network("10.0.0.0/8"), ip_network("10.1.0.0/16"), ip_network("fd00::/8"))
        self.assertEqual(networkOf(peer("10.1.2.3"), nets), ip_network("10.0.0.0/8"))
        self.assertEqual(networkOf(peer("::ffff:10.1.2.3"), nets), ip_network("10.0.0.0/8"))
        self.assertEqual(networkOf(peer("fd00::1"), nets), ip_network("fd00::/8"))
        self.assertIsNone(networkOf(peer("192.0.2.1"), nets))
        self.assertIsNone(networkOf(UNIXAddress(b"/tmp/x"), nets))
        self.assertIsNone(networkOf(peer("10.1.2.3"), ()))
