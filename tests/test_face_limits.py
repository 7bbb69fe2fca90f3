"""
Unit tests of the faces' hooks into the gateway's per-source limits
(L{imgateway.core.throttle}) and login timer: the native face and the XMPP
c2s face on fake transports and a fake clock over one memory gateway, and
under a real TLS layer (L{TLSMemoryBIOProtocol}) whose handshake never
completes. The real-socket proof is in C{tests/e2e/test_hostile_logins.py}.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.adapters.xmpp.c2s import C2SConfig, C2SFactory
from imgateway.auth.sasl import clientMechanism
from imgateway.core.throttle import ConnectionLimiter, LimitsConfig, LoginThrottle
from imgateway.testing import addUser, memoryGateway, selfSignedOptions
from tests.test_native_server import Wire
from tests.test_xmpp_c2s import Client

ATTACKER = IPv4Address("TCP", "192.0.2.7", 40000)
USER = IPv4Address("TCP", "198.51.100.1", 40000)


class TCPTransport(StringTransport):
    """
    A L{StringTransport} with the TCP options the faces set.
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


def assertOwnCapLogged(test: SynchronousTestCase, clock: Clock, face: str, connect: Callable[[IPv4Address], Any]) -> None:
    """
    With a face's own C{max_unauthenticated} at 1 and held by a first
    connection, five connections from five addresses (so no per-address
    limit applies) and, 10 s later, a sixth are refused; the refusals are
    logged as the per-address ones are: the first at once, then one line
    per 10 seconds counting the others. Nothing else is logged for them.

    @param face: The face's name in the log.
    @param connect: Opens a connection of the face from an address.
    """
    connect(USER)
    with capturedLogs() as events:
        for n in range(1, 6):
            connect(IPv4Address("TCP", f"192.0.2.{n}", 40000))
        clock.advance(10)
        connect(IPv4Address("TCP", "203.0.113.9", 40000))
    lines = [formatEvent(e) for e in events]
    test.assertEqual([e["log_namespace"] for e in events], ["imgateway.core.throttle"] * 3, lines)
    why = "1 connections waiting to log in (max_unauthenticated)"
    test.assertIn(f"Refusing a {face} connection from ", lines[0])
    test.assertTrue(lines[0].endswith(f"(source 192.0.2.1): {why}"), lines[0])
    test.assertEqual(lines[1], f"Refused 4 more {face} connections ({why})")
    test.assertTrue(lines[2].endswith(f"(source 203.0.113.9): {why}"), lines[2])


class FaceLimitsMixin:
    """
    A memory gateway with small per-source limits, a native face and a
    c2s face.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        addUser(self.gateway, "alice", "alice-pw")
        self.limits = LimitsConfig(
            maxUnauthenticatedPerAddress=3,
            connectionsPerSecondPerAddress=1.0,
            connectionBurstPerAddress=6,
            loginFailuresPerAccount=2,
            accountBlockSeconds=300.0,
        )
        self.gateway.connectionLimiter = ConnectionLimiter(self.limits, self.clock)
        self.gateway.authenticator.throttle = LoginThrottle(self.limits, self.clock)
        self.native = NativeServerFactory(self.gateway, NativeConfig(loginTimeout=30.0), self.clock)
        self.c2s = C2SFactory(self.gateway, C2SConfig(requireTLS=False, loginTimeout=60.0), None, self.clock)

    def wire(self, peer: IPv4Address) -> Wire:
        """
        A native connection from C{peer}.
        """
        return Wire(self.native, peer)

    def client(self, peer: IPv4Address) -> Client:
        """
        A c2s connection from C{peer}.
        """
        return Client(self.c2s, peer)


class NativeLimitsTests(FaceLimitsMixin, SynchronousTestCase):
    """
    The native face asks the gateway's L{ConnectionLimiter} about each
    connection and reports failed logins to its L{LoginThrottle}.
    """

    def test_unauthenticatedPerAddress(self) -> None:
        """
        C{max_unauthenticated_per_address} connections from one address
        wait to log in; the next gets an unsolicited 503 naming the reason
        and is closed; another address still connects.
        """
        held = [self.wire(ATTACKER) for _ in range(3)]
        self.assertFalse(any(w.transport.disconnecting for w in held))
        refused = self.wire(ATTACKER)
        r = refused.response(0)
        self.assertEqual((r.code, r.reason), (503, "Too many connections from your address waiting to log in"))
        self.assertTrue(refused.transport.disconnecting)
        self.assertEqual(self.native.unauthenticated, 3)
        user = self.wire(USER)
        self.assertFalse(user.transport.disconnecting)
        self.assertEqual(user.login("alice", "alice-pw", "SCRAM-SHA-256").code, 200)

    def test_loginFreesSlot(self) -> None:
        """
        A connection that logs in no longer counts against its address.
        """
        first = self.wire(ATTACKER)
        self.assertEqual(first.login("alice", "alice-pw", "SCRAM-SHA-256").code, 200)
        held = [self.wire(ATTACKER) for _ in range(3)]
        self.assertFalse(any(w.transport.disconnecting for w in held))

    def test_closeAndTimeoutFreeSlot(self) -> None:
        """
        A connection that closes, or whose login timer runs out, no longer
        counts against its address.
        """
        held = [self.wire(ATTACKER) for _ in range(3)]
        held[0].protocol.connectionLost()
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 2)
        self.clock.advance(30)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 0)
        self.assertEqual(self.native.unauthenticated, 0)

    def test_rate(self) -> None:
        """
        Past C{connection_burst_per_address} connections at once, the next
        is refused with 503 and C{Retry-After}.
        """
        for _ in range(6):
            w = self.wire(ATTACKER)
            w.protocol.connectionLost()
        refused = self.wire(ATTACKER)
        r = refused.response(0)
        self.assertEqual((r.code, r.reason), (503, "Too many connections from your address"))
        self.assertEqual(r.headers.get("Retry-After"), "1")
        self.assertTrue(refused.transport.disconnecting)

    def test_sharedWithC2S(self) -> None:
        """
        The limit counts the connections of every face together.
        """
        self.wire(ATTACKER)
        self.client(ATTACKER)
        self.wire(ATTACKER)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 3)
        self.assertTrue(self.client(ATTACKER).transport.disconnecting)
        self.assertEqual(self.wire(ATTACKER).response(0).code, 503)

    def test_ownCapLoggedOncePerInterval(self) -> None:
        """
        Connections refused past the native face's own
        C{max_unauthenticated} (503, closed) are logged once per interval
        with a count, as the per-address refusals are.
        """
        self.native.config = NativeConfig(loginTimeout=30.0, maxUnauthenticated=1)
        refused: list[Wire] = []

        def connect(peer: IPv4Address) -> None:
            refused.append(self.wire(peer))

        assertOwnCapLogged(self, self.clock, "native", connect)
        self.assertEqual([w.response(0).code for w in refused[1:]], [503] * 6)

    def test_throttledLogin(self) -> None:
        """
        Past C{login_failures_per_account} wrong passwords from one address
        (over several connections), AUTH from that address is answered 401
        with C{Error: temporary-auth-failure} and C{Retry-After}, even with
        the right password; the user logs in from another address.
        """
        for _ in range(2):
            r = self.wire(ATTACKER).login("alice", "wrong", "SCRAM-SHA-1")
            self.assertEqual((r.code, r.headers.get("Error")), (401, "not-authorized"))
            self.assertIsNone(r.headers.get("Retry-After"))
        r = self.wire(ATTACKER).login("alice", "alice-pw", "SCRAM-SHA-256")
        self.assertEqual(r.code, 401)
        self.assertEqual(r.headers.get("Error"), "temporary-auth-failure")
        self.assertEqual(r.headers.get("Retry-After"), "300")
        self.assertEqual(self.wire(USER).login("alice", "alice-pw", "SCRAM-SHA-256").code, 200)


class C2SLimitsTests(FaceLimitsMixin, SynchronousTestCase):
    """
    The XMPP c2s face shares the gateway's limits.
    """

    def test_unauthenticatedPerAddress(self) -> None:
        """
        Past C{max_unauthenticated_per_address} streams from one address,
        the next connection is closed at once; another address connects.
        """
        held = [self.client(ATTACKER) for _ in range(3)]
        self.assertFalse(any(c.transport.disconnecting for c in held))
        refused = self.client(ATTACKER)
        self.assertTrue(refused.transport.disconnecting)
        # Its send queue guard let go first (a TLS transport waits for it).
        self.assertIsNone(refused.transport.producer)
        self.assertEqual(self.c2s.unauthenticated, 3)
        user = self.client(USER)
        self.assertFalse(user.transport.disconnecting)
        user.bind("alice", "alice-pw")

    def test_ownCapLoggedOncePerInterval(self) -> None:
        """
        Connections refused past the c2s face's own C{max_unauthenticated}
        (closed at once) are logged once per interval with a count, as the
        per-address refusals are.
        """
        self.c2s = C2SFactory(self.gateway, C2SConfig(requireTLS=False, loginTimeout=60.0, maxUnauthenticated=1), None, self.clock)
        refused: list[Client] = []

        def connect(peer: IPv4Address) -> None:
            refused.append(self.client(peer))

        assertOwnCapLogged(self, self.clock, "XMPP c2s", connect)
        self.assertEqual([c.transport.disconnecting for c in refused], [False] + [True] * 6)

    def test_timeoutFreesSlot(self) -> None:
        """
        A stream whose login timer runs out no longer counts against its
        address.
        """
        [self.client(ATTACKER) for _ in range(3)]
        self.clock.advance(60)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 0)
        self.assertFalse(self.client(ATTACKER).transport.disconnecting)

    def saslLogin(self, client: Client, user: str, password: str) -> domish.Element:
        """
        Run a SCRAM-SHA-256 exchange on a new stream of C{client}.

        @return: The server's C{<success/>} or C{<failure/>}.
        """
        client.open()
        mech = clientMechanism("SCRAM-SHA-256", user, password)
        client.write(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
            f"{base64.b64encode(mech.start()).decode()}</auth>"
        )
        while True:
            [reply] = client.read()
            if reply.name != "challenge":
                return reply
            data = mech.step(base64.b64decode(str(reply)))
            client.write(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(data).decode()}</response>")

    def test_throttledLogin(self) -> None:
        """
        Past the limit of failed logins from one address, SASL answers
        C{temporary-auth-failure} with a text saying when to retry; the
        user logs in from another address.
        """
        for _ in range(2):
            failure = self.saslLogin(self.client(ATTACKER), "alice", "wrong")
            self.assertEqual([e.name for e in failure.elements()], ["not-authorized"])
        failure = self.saslLogin(self.client(ATTACKER), "alice", "alice-pw")
        self.assertEqual([e.name for e in failure.elements()], ["temporary-auth-failure", "text"])
        self.assertIn("try again in 300 s", str(list(failure.elements())[1]))
        self.client(USER).bind("alice", "alice-pw")


class StalledTLSTests(FaceLimitsMixin, SynchronousTestCase):
    """
    Connections on a TLS listener whose handshake never completes: nothing
    can be written to them, so the faces drop them, on time, and they hold
    no slot beyond the login timeout.
    """

    def tlsConnection(self, factory: Any, peer: IPv4Address = ATTACKER) -> tuple[StringTransport, Any]:
        """
        Open a connection on C{factory} behind a server TLS layer, as a
        C{tls:} listener does; the client sends nothing.

        @return: The TCP transport and the face's protocol.
        """
        tls = TLSMemoryBIOFactory(self.options, False, factory)
        wrapper = tls.buildProtocol(peer)
        transport = TCPTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5301))
        wrapper.makeConnection(transport)
        return transport, wrapper.wrappedProtocol

    def setUp(self) -> None:
        super().setUp()
        self.options = selfSignedOptions()

    def test_nativeLoginTimeout(self) -> None:
        """
        The native face's login timer starts at TCP accept; when it runs
        out during the handshake, the connection is dropped at once and its
        slots are freed.
        """
        transport, protocol = self.tlsConnection(self.native)
        self.assertTrue(IHandshakeListener.providedBy(protocol))
        self.assertEqual(self.native.unauthenticated, 1)
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.native.unauthenticated, 0)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 0)

    def test_nativeRefusal(self) -> None:
        """
        A connection refused during its handshake is dropped (a 503 could
        never be sent).
        """
        for _ in range(3):
            self.tlsConnection(self.native)
        transport, _ = self.tlsConnection(self.native)
        self.assertTrue(transport.disconnected)

    def test_c2sLoginTimeout(self) -> None:
        """
        The c2s face (direct TLS) drops a connection whose handshake has not
        completed when the login timer runs out, and frees its slots.
        """
        transport, protocol = self.tlsConnection(self.c2s)
        self.assertTrue(IHandshakeListener.providedBy(protocol))
        self.clock.advance(60)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.c2s.unauthenticated, 0)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated("192.0.2.7"), 0)

    def test_c2sRefusal(self) -> None:
        """
        The c2s face drops a connection it refuses during its handshake
        (past C{max_unauthenticated_per_address}, and past its own
        C{max_unauthenticated}): closing it politely would wait for the
        handshake forever.
        """
        for _ in range(3):
            self.tlsConnection(self.c2s)
        transport, _ = self.tlsConnection(self.c2s)
        self.assertTrue(transport.disconnected)
        c2s = C2SFactory(self.gateway, C2SConfig(requireTLS=False, maxUnauthenticated=1), None, self.clock)
        self.tlsConnection(c2s, USER)
        transport, _ = self.tlsConnection(c2s, USER)
        self.assertTrue(transport.disconnected)

    def test_completedHandshake(self) -> None:
        """
        Once the handshake has completed, the login timeout says goodbye as
        on plain TCP (it is not dropped).
        """
        transport, protocol = self.tlsConnection(self.native)
        protocol.handshakeCompleted()
        self.clock.advance(30)
        self.assertFalse(transport.disconnected)
