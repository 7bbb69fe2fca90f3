# -*- test-case-name: tests.test_net_addresses -*-
"""
Tests for L{imgateway.net.addresses}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.addresses import isLoopback


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
