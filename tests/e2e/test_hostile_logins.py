"""
End-to-end tests of the gateway's defences against one hostile address: the
real C{twistd imgateway} process with the native face (plain TCP and a
C{tls:} listener) and the XMPP c2s face (STARTTLS required), attackers on
other loopback addresses (Linux routes all of 127/8 to loopback: a client
socket bound to 127.0.0.2 is another source) and real users on 127.0.0.1:
the shipped native client and slixmpp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imgateway.adapters.native.framing import Headers, Request, serialise
from imgateway.core.presence import PresenceState
from tests.e2e.harness import (
    DOMAIN,
    GatewayProcess,
    RawConnection,
    _Waiters,
    connectClient,
    freePort,
    makeCertificates,
    reactor,
    sleep,
    tlsClientEndpoint,
    tlsServerEndpoint,
)
from tests.e2e.xmppclient import connectAgent

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}

#: The first bytes of a TLS ClientHello: a record header announcing 512
#: bytes and the start of the handshake message; the rest never comes.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

STREAM_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"

#: Limits high enough that no per-source limit applies to one attacker.
NO_SOURCE_LIMITS = {
    "max_unauthenticated_per_address": 100000,
    "connections_per_second_per_address": 100000,
    "connection_burst_per_address": 100000,
}


class Stalling(_Waiters, Protocol):
    """
    An attacker's connection that starts TLS and never finishes it: on a
    C{tls:} listener it sends the first bytes of a ClientHello; on XMPP it
    opens a stream, asks for STARTTLS, and after C{<proceed/>} does the
    same. It records when it connected and when the server closed it.

    @ivar xmpp: Whether it speaks to the c2s face.
    @ivar openedAt: When the connection was made (C{time.monotonic}).
    @ivar proceeded: Whether the server answered C{<proceed/>}.
    @ivar closedAt: When the server closed it, or C{None}.
    """

    def __init__(self, xmpp: bool) -> None:
        super().__init__()
        self.xmpp = xmpp
        self.openedAt = 0.0
        self.proceeded = False
        self.closedAt: float | None = None
        self._received = b""
        self._asked = False

    def connectionMade(self) -> None:
        self.openedAt = time.monotonic()
        assert self.transport is not None
        self.transport.write(STREAM_HEADER if self.xmpp else PARTIAL_CLIENT_HELLO)

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        assert self.transport is not None
        if self.xmpp and not self.proceeded:
            if b"<proceed" in self._received:
                self.proceeded = True
                self.transport.write(PARTIAL_CLIENT_HELLO)
            elif b"</stream:features>" in self._received and not self._asked:
                self._asked = True
                self.transport.write(STARTTLS)
        self._changed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closedAt = time.monotonic()
        self._changed()

    def abort(self) -> None:
        """
        Drop the connection if the server has not.
        """
        self.cancelWaits()
        if self.closedAt is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def connectFrom(testCase: TestCase, source: str, port: int, protocol: Protocol) -> Deferred[Any]:
    """
    Connect C{protocol} to C{127.0.0.1:port} from the loopback address
    C{source}; it is dropped when the test ends.

    A connection that the server resets before the client's reactor has
    seen it complete fails to connect: C{protocol} then counts as closed
    by the server (a L{Stalling}'s C{closedAt}, a L{RawConnection}'s
    C{lost}).
    """
    endpoint = TCP4ClientEndpoint(reactor(), "127.0.0.1", port, bindAddress=(source, 0))

    def connected(p: Any) -> Any:
        testCase.addCleanup(_drop, p)
        return p

    def refused(f: Failure) -> None:
        if isinstance(protocol, Stalling):
            protocol.openedAt = protocol.closedAt = time.monotonic()
        elif isinstance(protocol, RawConnection):
            protocol.lost = f

    return endpoint.connect(Factory.forProtocol(lambda: protocol)).addCallbacks(connected, refused)


async def connectMany(testCase: TestCase, source: str, targets: list[tuple[int, Protocol]], batch: int = 25) -> None:
    """
    Connect each C{(port, protocol)} from C{source}, C{batch} at a time, so
    that the server's listen queue (50) never overflows: the kernel would
    then hold connections that the client believes open and the server has
    not accepted, and every time measured here would be off.
    """
    for i in range(0, len(targets), batch):
        await DeferredList(
            [connectFrom(testCase, source, port, p) for port, p in targets[i : i + batch]], consumeErrors=True
        )
        await sleep(0.01)


async def waitUntil(predicate: Any, timeout: float) -> bool:
    """
    Poll C{predicate} every 0.1 s for up to C{timeout} seconds.

    @return: Whether it became true.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await sleep(0.1)
    return True


def _drop(p: Any) -> Deferred[None]:
    if isinstance(p, Stalling):
        p.abort()
    elif isinstance(p, RawConnection):
        return p.close()
    return sleep(0)


class HostileGateway:
    """
    A gateway with the native face on TCP and on a C{tls:} listener, and
    the XMPP c2s face (STARTTLS required), with a certificate for
    C{corp.example} from a test authority, and two users.
    """

    def __init__(
        self,
        testCase: TestCase,
        native: Mapping[str, object],
        xmpp: Mapping[str, object],
        limits: Mapping[str, object] | None = None,
    ) -> None:
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.caPath, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        self.port, self.tlsPort, self.xmppPort = freePort(), freePort(), freePort()
        # A listen queue longer than the default 50, so that the attackers'
        # bursts are all accepted at once: connections that the kernel holds
        # unaccepted would make the times measured here meaningless.
        tables: dict[str, Any] = {
            "native": {
                "listen": [
                    f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
                    tlsServerEndpoint(serverDir, self.tlsPort) + ":backlog=1024",
                ],
                **native,
            },
            "xmpp": {
                "enabled": True,
                "listen": [f"tcp:{self.xmppPort}:interface=127.0.0.1:backlog=1024"],
                "certificate": pem,
                "private_key": pem,
                **xmpp,
            },
        }
        if limits:
            tables["limits"] = limits
        self.gw = GatewayProcess(
            testCase, tables, directory=os.path.join(directory, "gw"), port=self.port,
            waitPorts=[self.port, self.tlsPort, self.xmppPort],
        )
        self.gw.addUsers(PASSWORDS)
        self.testCase = testCase

    async def usersChat(self) -> None:
        """
        alice logs in over native TLS and bob with slixmpp over STARTTLS,
        both from 127.0.0.1, and they exchange messages.
        """
        alice, aliceSees = await self.gw.client("alice", PASSWORDS["alice"])
        bob = await connectAgent(
            self.testCase, f"bob@{DOMAIN}/agent", PASSWORDS["bob"], self.xmppPort, tls="starttls", caFile=self.caPath
        )
        # bob's initial presence goes before his message on his stream: once
        # alice has the message, bob is online for her answer.
        bob.message(f"alice@{DOMAIN}", "hello alice")
        await aliceSees.waitForMessage(f"bob@{DOMAIN}", "hello alice")
        await alice.sendMessage(f"bob@{DOMAIN}", "hello bob")
        await bob.waitForMessage(f"alice@{DOMAIN}", "hello bob")

    async def nativeTLSUser(self) -> None:
        """
        alice logs in over the native face's TLS listener and publishes.
        """
        endpoint = tlsClientEndpoint(self.tlsPort, self.caPath, hostname=DOMAIN)
        alice, _ = await connectClient(self.testCase, endpoint, "alice", PASSWORDS["alice"], presence=PresenceState.ONLINE)
        await alice.ping()


class PerSourceLimitTests(TestCase):
    """
    One address cannot take the slots every other address needs.
    """

    async def test_attackerCannotExhaust(self) -> None:
        """
        An attacker on 127.0.0.2 opens 150 connections to each face and
        sends nothing. The faces allow 100 connections waiting to log in
        each, but the attacker keeps at most
        C{max_unauthenticated_per_address} (32, faces together): the server
        closes the others at once, logging why. Meanwhile a native user and
        an XMPP user on 127.0.0.1 log in and chat.
        """
        h = HostileGateway(self, {"max_unauthenticated": 100}, {"max_unauthenticated": 100})
        await h.gw.start()
        attackers = [RawConnection() for _ in range(300)]
        ports = [h.port] * 150 + [h.xmppPort] * 150
        await connectMany(self, "127.0.0.2", list(zip(ports, attackers)))

        def stillOpen() -> int:
            return len([a for a in attackers if a.lost is None])

        settled = await waitUntil(lambda: stillOpen() <= 32, 10.0)
        self.assertTrue(settled, f"{stillOpen()} attacker connections still open")
        refusedNative = [a for a in attackers[:150] if a.lost is not None]
        self.assertTrue(refusedNative)
        self.assertTrue(any(r.code == 503 for a in refusedNative for r in a.responses()))
        await h.usersChat()
        log = h.gw.log()
        self.assertIn("Refusing a native connection from", log)
        self.assertIn("(source 127.0.0.2)", log)


class StalledHandshakeTests(TestCase):
    """
    Connections that start TLS and never finish are closed when their
    login timeout runs out, and a thousand of them lock nobody out.
    """

    async def stall(self, h: HostileGateway, source: str, count: int) -> list[Stalling]:
        """
        Open C{count} stalling connections from C{source}, half to the
        native face's TLS listener and half to the c2s face (STARTTLS).
        """
        attackers = [Stalling(xmpp=i % 2 == 1) for i in range(count)]
        await connectMany(self, source, [(h.xmppPort if a.xmpp else h.tlsPort, a) for a in attackers])
        return attackers

    async def test_closedOnTime(self) -> None:
        """
        With no per-source limit in the way, 200 connections from
        127.0.0.3 that stall in the TLS handshake (100 on the native C{tls:}
        listener, 100 after XMPP STARTTLS) are all closed by the server
        within C{login_timeout} (2 s) of their TCP accept, plus 2 s of
        slack; a real user logs in on both faces afterwards.
        """
        h = HostileGateway(self, {"login_timeout": 2}, {"login_timeout": 2}, NO_SOURCE_LIMITS)
        await h.gw.start()
        attackers = await self.stall(h, "127.0.0.3", 200)
        closed = await waitUntil(lambda: all(a.closedAt is not None for a in attackers), 8.0)
        self.assertTrue(closed, f"{len([a for a in attackers if a.closedAt is None])} stalled connections still open after 8 s")
        self.assertTrue(all(a.proceeded for a in attackers if a.xmpp), "every XMPP attacker got <proceed/>")
        lifetimes = sorted(a.closedAt - a.openedAt for a in attackers if a.closedAt is not None)
        self.assertGreater(lifetimes[0], 1.5, "closed before the login timeout")
        self.assertLess(lifetimes[-1], 4.0, "closed long after the login timeout")
        self.assertIn("no TLS handshake within login_timeout", h.gw.log())
        await h.nativeTLSUser()
        await h.usersChat()

    async def test_thousandDoNotLockOut(self) -> None:
        """
        A thousand connections from 127.0.0.3 stalling in the TLS handshake
        (500 per face; each face allows 400 waiting to log in) leave room
        for real users from 127.0.0.1, who log in over native TLS and XMPP
        STARTTLS and chat while the attack lasts.
        """
        h = HostileGateway(self, {"max_unauthenticated": 400, "login_timeout": 30}, {"max_unauthenticated": 400, "login_timeout": 30})
        await h.gw.start()
        attackers = await self.stall(h, "127.0.0.3", 1000)
        settled = await waitUntil(lambda: len([a for a in attackers if a.closedAt is None]) <= 32, 10.0)
        self.assertTrue(settled, f"{len([a for a in attackers if a.closedAt is None])} attacker connections open")
        await h.nativeTLSUser()
        await h.usersChat()


class LoginThrottleTests(TestCase):
    """
    Password guessing from one address is throttled across connections.
    """

    async def auth(self, port: int, source: str, user: str, password: str) -> Any:
        """
        Try C{user}'s password with PLAIN on a new native connection from
        C{source}.

        @return: The response to C{AUTH}.
        """
        conn = RawConnection()
        await connectFrom(self, source, port, conn)
        body = f"\0{user}\0{password}".encode()
        conn.send(serialise(Request("AUTH", "*", Headers.of(("Seq", "1"), ("Mechanism", "PLAIN")), body)))
        await conn.waitFor(lambda: conn.responses(), 5.0, "the AUTH response")
        [response] = conn.responses()
        await conn.close()
        return response

    async def test_guessingThrottled(self) -> None:
        """
        After C{login_failures_per_account} (5) wrong passwords for alice
        from 127.0.0.4, each on a new connection, the right password from
        there is refused with 401, C{Error: temporary-auth-failure} and
        C{Retry-After}, and the refusal is logged with the address and the
        account; alice logs in from 127.0.0.1.
        """
        gw = GatewayProcess(self)
        gw.addUsers(PASSWORDS)
        await gw.start()
        for _ in range(5):
            r = await self.auth(gw.port, "127.0.0.4", "alice", "guess")
            self.assertEqual((r.code, r.headers.get("Error")), (401, "not-authorized"))
        r = await self.auth(gw.port, "127.0.0.4", "alice", PASSWORDS["alice"])
        self.assertEqual((r.code, r.headers.get("Error")), (401, "temporary-auth-failure"))
        self.assertEqual(r.headers.get("Retry-After"), "300")
        r = await self.auth(gw.port, "127.0.0.1", "alice", PASSWORDS["alice"])
        self.assertEqual(r.code, 200)
        self.assertIn("Refused a login from 127.0.0.4 as alice@corp.example", gw.log())
        self.assertIn("Blocking logins from 127.0.0.4 as alice@corp.example for 300", gw.log())

