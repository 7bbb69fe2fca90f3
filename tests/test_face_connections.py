"""
Unit tests for L{imgateway.adapters.base.FaceConnections}: the limits a
face applies to its connections until they log in (C{max_unauthenticated},
C{max_connections_per_address}, the shared per-source limits,
C{pre_auth_bytes}), which the native and IRC faces share. Their own tests
(C{tests/test_native_server.py}, C{tests/test_irc_face.py},
C{tests/test_face_limits.py}) check the same through the wire.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.base import FaceConnections, SendQueueGuard
from imgateway.config import LimitsConfig
from imgateway.core.throttle import ConnectionLimiter

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
OTHER = IPv4Address("TCP", "192.0.2.8", 40000)


class FaceConnectionsTests(SynchronousTestCase):
    """
    L{FaceConnections.admit} and the slots it gives.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = ConnectionLimiter(
            LimitsConfig(maxUnauthenticatedPerAddress=100, connectionsPerSecondPerAddress=100.0, connectionBurstPerAddress=100),
            self.clock,
        )
        self.hits: list[str] = []
        self.limiter.countLimit = self.hits.append
        self.connections = FaceConnections("test")

    def test_maxUnauthenticated(self) -> None:
        """
        C{maxUnauthenticated} connections waiting to log in are admitted,
        the next is refused (and counted as a hit of C{max_unauthenticated});
        one logging in frees its place, once however often it says so.
        """
        slots = [self.connections.admit(PEER, self.limiter, 2) for _ in range(2)]
        self.assertEqual([s.refusal for s in slots], [None, None])
        self.assertEqual(self.connections.unauthenticated, 2)
        with capturedLogs():
            refused = self.connections.admit(OTHER, self.limiter, 2)
        self.assertEqual(refused.refusal, "Too many unauthenticated connections")
        self.assertEqual(self.hits, ["max_unauthenticated"])
        self.assertEqual(self.limiter.unauthenticated("192.0.2.7"), 2)
        slots[0].loggedIn()
        slots[0].loggedIn()
        slots[0].closed()
        refused.closed()
        self.assertEqual(self.connections.unauthenticated, 1)
        self.assertEqual(self.limiter.unauthenticated("192.0.2.7"), 1)
        self.assertIsNone(self.connections.admit(OTHER, self.limiter, 2).refusal)

    def test_maxPerAddress(self) -> None:
        """
        With C{maxPerAddress}, that many open connections from one address
        are admitted, the next is refused (a hit of
        C{max_connections_per_address}), another address's is not; a
        connection counts until it closes, logged in or not.
        """
        slots = [self.connections.admit(PEER, self.limiter, 100, maxPerAddress=2) for _ in range(2)]
        self.assertEqual(self.connections.perSource, {"192.0.2.7": 2})
        slots[0].loggedIn()
        with capturedLogs():
            refused = self.connections.admit(PEER, self.limiter, 100, maxPerAddress=2)
        self.assertEqual(refused.refusal, "Too many connections from your address")
        self.assertEqual(self.hits, ["max_connections_per_address"])
        self.assertIsNone(self.connections.admit(OTHER, self.limiter, 100, maxPerAddress=2).refusal)
        slots[0].closed()
        slots[0].closed()
        self.assertEqual(self.connections.perSource, {"192.0.2.7": 1, "192.0.2.8": 1})
        self.assertIsNone(self.connections.admit(PEER, self.limiter, 100, maxPerAddress=2).refusal)

    def test_notPerAddress(self) -> None:
        """
        Without C{maxPerAddress}, nothing is kept per address.
        """
        for _ in range(3):
            self.connections.admit(PEER, self.limiter, 100)
        self.assertEqual(self.connections.perSource, {})
        self.assertEqual(self.connections.unauthenticated, 3)

    def test_sharedLimits(self) -> None:
        """
        A connection the shared L{ConnectionLimiter} refuses is refused with
        its reason and C{Retry-After}, and counts nothing here.
        """
        limiter = ConnectionLimiter(
            LimitsConfig(connectionsPerSecondPerAddress=1.0, connectionBurstPerAddress=1), self.clock
        )
        self.assertIsNone(self.connections.admit(PEER, limiter, 100, maxPerAddress=5).refusal)
        with capturedLogs():
            refused = self.connections.admit(PEER, limiter, 100, maxPerAddress=5)
        self.assertIsNotNone(refused.refusal)
        self.assertEqual(refused.retryAfter, 1)
        self.assertEqual(self.connections.unauthenticated, 1)
        self.assertEqual(self.connections.perSource, {"192.0.2.7": 1})

    def test_beforeLogin(self) -> None:
        """
        Up to C{limit} bytes before login are kept, however they are cut;
        the first byte past it is cut off and said to be over, and logged
        as a hit of C{pre_auth_bytes}.
        """
        slot = self.connections.admit(PEER, self.limiter, 100)
        self.assertEqual(slot.beforeLogin(b"abc", 5), (b"abc", False))
        self.assertEqual(slot.beforeLogin(b"de", 5), (b"de", False))
        self.assertEqual(slot.beforeLogin(b"f", 5), (b"", True))
        other = self.connections.admit(PEER, self.limiter, 100)
        self.assertEqual(other.beforeLogin(b"abcdefg", 5), (b"abcde", True))
        self.assertEqual(other.preAuthBytes, 5)
        with capturedLogs():
            other.refusePreAuth(5)
        self.assertEqual(self.hits, ["pre_auth_bytes"])


class DropPeerTests(SynchronousTestCase):
    """
    L{SendQueueGuard.dropPeer}: what the native and IRC faces do with a
    peer that does not read.
    """

    def test_dropPeer(self) -> None:
        """
        It logs a warning naming the peer, who it is and the limit, lets go
        of the transport and aborts the connection.
        """
        transport = StringTransport(peerAddress=PEER)
        guard = SendQueueGuard(transport, 10, lambda: None)
        with capturedLogs() as events:
            guard.dropPeer(Logger(), "not logged in")
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            formatEvent(event),
            f"Dropping {PEER} (not logged in): it does not read, and more than 10 bytes are queued for it (max_send_queue_bytes)",
        )
        self.assertFalse(guard.registered)
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
