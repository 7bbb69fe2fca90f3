"""
Unit tests for the native face (L{imgateway.adapters.native.server}): the
protocol on a fake transport and a fake clock, over a memory gateway. The
real-socket proof is in C{tests/e2e/}.
"""

from __future__ import annotations

import ast
import json
import random
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

import imgateway as imgatewayPackage
from imgateway.adapters.native.adapter import NativeAdapter
from imgateway.adapters.native.framing import MAX_SEQ, FrameParser, Headers, Limits, Request, Response, serialise
from imgateway.adapters.native.mapping import TARGETS, TargetForm, describeTargets, targetForm
from imgateway.adapters.native.server import (
    _HANDLERS,
    NativeConfig,
    _isIMTarget,
    NativeServerFactory,
    _messageFields,
    _messageHeaders,
    _presenceHeaders,
    messageRequest,
    presenceNotify,
    sentResponse,
)
from imgateway.auth.sasl import clientMechanism
from imgateway.config import ConfigTable, HomeConfig
from imgateway.core.address import Address
from tests.test_native_client import LONG_DOMAIN
from imgateway.core.errors import ConfigError, DeliveryStatus, UserBusy, UserOffline
from imgateway.core.events import Message, MessageMark
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import AuthorisationState
from imgateway.interfaces import IProtocolAdapter, ISessionClient
from imgateway.net.gather import GATHER
from imgateway.testing import PasswordCheckingDirectory, TLSStringTransport, addUser, memoryGateway
from tests.test_native_mapping import scrambleCoreValues

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)


class Wire:
    """
    One client connection to a native face: write requests, read what the
    server wrote.
    """

    def __init__(self, factory: NativeServerFactory, peer: IPv4Address = LOOPBACK, secure: bool = False) -> None:
        host = IPv4Address("TCP", "127.0.0.1", 5300)
        if secure:
            # As on a tls: listener: encrypted before the first byte.
            tls = TLSStringTransport(hostAddress=host, peerAddress=peer)
            tls.startTLS(object())
            tls.completeHandshake()
            self.transport: StringTransport = tls
        else:
            self.transport = StringTransport(peerAddress=peer, hostAddress=host)
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self._parser = FrameParser()
        self._seq = 0

    def send(self, method: str, target: str = "*", headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> int:
        self._seq += 1
        self.raw(serialise(Request(method, target, Headers.of(("Seq", str(self._seq)), *headers), body)))
        return self._seq

    def raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def frames(self) -> list[Request | Response]:
        data = self.transport.value()
        self.transport.clear()
        out = self._parser.feed(data)
        assert all(isinstance(f, (Request, Response)) for f in out), out
        return out  # type: ignore[return-value]

    def response(self, seq: int | None = None) -> Response:
        """
        The one response the server wrote since the last read.
        """
        responses = [f for f in self.frames() if isinstance(f, Response)]
        assert len(responses) == 1, responses
        if seq is not None:
            assert responses[0].seq == seq, (responses[0].seq, seq)
        return responses[0]

    def call(self, method: str, target: str = "*", headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Response:
        return self.response(self.send(method, target, headers, body))

    def login(self, user: str, password: str, mechanism: str = "PLAIN") -> Response:
        mech = clientMechanism(mechanism, user, password)
        r = self.call("AUTH", "*", [("Mechanism", mechanism)], mech.start())
        while r.code == 110:
            r = self.call("AUTH", "*", [], mech.step(r.body))
        if r.code == 200:
            mech.verifyFinal(r.body)
        return r


class WatchedParser:
    """
    A connection's L{FrameParser}, watched: what it was given to store
    (L{receive}) and the frames its general parser made (L{next}). (A
    wrapper: the compiled build's parser takes no attribute of its own;
    with the face compiled too, see L{watchParser}.)
    """

    def __init__(self, parser: FrameParser) -> None:
        self.parser = parser
        self.stored: list[bytes] = []
        self.parsed: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)

    def receive(self, data: bytes) -> None:
        self.stored.append(data)
        self.parser.receive(data)

    def next(self) -> object:
        item = self.parser.next()
        if item is not None:
            self.parsed.append(item)
        return item


def watchParser(protocol: Any) -> WatchedParser:
    """
    Watch C{protocol}'s parser (L{WatchedParser}).

    @raise SkipTest: In the compiled build, where the protocol's parser
        attribute takes a L{FrameParser} only (the pure-Python run of the
        same test checks the same code).
    """
    import imgateway.adapters.native.server as module

    if (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
        raise SkipTest("compiled: a connection's parser cannot be replaced by a watching wrapper")
    parser = protocol._parser = WatchedParser(protocol._parser)
    return parser


class NativeFaceTestsMixin:
    config = NativeConfig()

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock, home=HomeConfig(maxSessionsPerUser=2))
        addUser(self.gateway, "alice", "alice-pw")
        addUser(self.gateway, "bob", "bob-pw")
        self.factory = NativeServerFactory(self.gateway, self.config, self.clock)
        # The gather is the process's: a test that left it on, or with
        # connections holding frames, would change how later tests write.
        if isinstance(self, SynchronousTestCase):
            self.addCleanup(lambda: self.assertEqual((GATHER.active, GATHER.held), (False, [])))

    def wire(self, peer: IPv4Address = LOOPBACK) -> Wire:
        return Wire(self.factory, peer)

    def loggedIn(self, user: str = "alice") -> Wire:
        w = self.wire()
        r = w.login(user, f"{user}-pw")
        assert r.code == 200, r
        return w


class LoginTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    OPTIONS and AUTH.
    """

    def test_interfaces(self) -> None:
        """
        The protocol is an L{ISessionClient}; the plugin an
        L{IProtocolAdapter}.
        """
        verifyObject(ISessionClient, self.wire().protocol)
        verifyObject(IProtocolAdapter, NativeAdapter())

    def test_optionsLoopback(self) -> None:
        """
        OPTIONS advertises the domain, the limits and, on loopback, PLAIN.
        """
        r = self.wire().call("OPTIONS")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.get("Domain"), "corp.example")
        self.assertEqual(r.headers.get("Mechanisms"), "SCRAM-SHA-256, SCRAM-SHA-1, PLAIN")
        self.assertEqual(r.headers.get("Max-Body"), str(self.config.maxBodyBytes))
        self.assertEqual(r.headers.get("Max-Message-Chars"), "16384")

    def test_plainRefusedInClear(self) -> None:
        """
        From a non-loopback address over plain TCP, PLAIN is neither offered
        nor accepted (426); SCRAM works.
        """
        w = self.wire(REMOTE)
        self.assertNotIn("PLAIN", w.call("OPTIONS").headers.get("Mechanisms") or "")
        self.assertEqual(w.login("alice", "alice-pw").code, 426)
        self.assertEqual(w.login("alice", "alice-pw", "SCRAM-SHA-256").code, 200)

    def test_mechanismsByPeer(self) -> None:
        """
        PLAIN is offered and accepted on TLS and on loopback (IPv4, IPv6,
        IPv4-mapped IPv6, UNIX sockets) whatever C{allow_plaintext_auth}
        says; from any other address over plain TCP it is neither offered
        nor accepted (426) unless C{allow_plaintext_auth}.
        """
        scram = "SCRAM-SHA-256, SCRAM-SHA-1"
        loopback = [
            IPv4Address("TCP", "127.0.0.1", 40000),
            IPv4Address("TCP", "127.8.9.10", 40000),
            IPv6Address("TCP", "::1", 40000),
            IPv6Address("TCP", "::ffff:127.0.0.1", 40000),
            UNIXAddress(b"/run/imgateway.sock"),
        ]
        remote = [
            IPv4Address("TCP", "192.0.2.7", 40000),
            IPv6Address("TCP", "2001:db8::7", 40000),
            IPv6Address("TCP", "::ffff:192.0.2.7", 40000),
        ]
        for allow in (False, True):
            self.factory.config = NativeConfig(allowPlaintextAuth=allow)
            for peer, secure in [(p, False) for p in loopback + remote] + [(p, True) for p in remote]:
                plain = secure or allow or peer in loopback
                w = Wire(self.factory, peer, secure)  # type: ignore[arg-type]
                self.assertEqual(
                    w.call("OPTIONS").headers.get("Mechanisms"), scram + ", PLAIN" if plain else scram, (allow, peer, secure)
                )
                self.assertEqual(w.login("alice", "alice-pw").code, 200 if plain else 426, (allow, peer, secure))
                w.protocol.connectionLost()

    def test_noStartTLS(self) -> None:
        """
        There is no STARTTLS: from a non-loopback peer over plain TCP, a
        C{STARTTLS *} request and a PLAIN C{AUTH} in the same segment get
        405 and then 426, as if the STARTTLS had not been sent; nothing is
        taken as encrypted, and PLAIN is still not offered.
        """
        w = self.wire(REMOTE)
        w.raw(
            b"STARTTLS * IMGW/1.0\r\nSeq: 1\r\n\r\n"
            + serialise(Request("AUTH", "*", Headers.of(("Seq", "2"), ("Mechanism", "PLAIN")), b"\0alice\0alice-pw"))
        )
        self.assertEqual([(r.seq, r.code) for r in w.frames() if isinstance(r, Response)], [(1, 405), (2, 426)])
        self.assertIsNone(w.protocol.session)
        self.assertFalse(w.protocol.secure)
        self.assertNotIn("PLAIN", w.call("OPTIONS").headers.get("Mechanisms") or "")
        self.assertEqual(w.call("STARTTLS", "*", [("Mechanism", "PLAIN")]).code, 405)
        self.assertEqual(w.login("alice", "alice-pw").code, 426)

    def test_plainAllowedByConfig(self) -> None:
        """
        C{allow_plaintext_auth} lets PLAIN through from anywhere.
        """
        self.factory.config = NativeConfig(allowPlaintextAuth=True)
        self.assertEqual(self.wire(REMOTE).login("alice", "alice-pw").code, 200)

    def test_plain(self) -> None:
        """
        A successful login answers 200 with the address and a session id.
        """
        r = self.wire().login("alice", "alice-pw")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.get("Address"), "alice@corp.example")
        self.assertTrue(r.headers.get("Session"))
        self.assertEqual(self.factory.unauthenticated, 0)

    def test_scram(self) -> None:
        """
        SCRAM-SHA-256 and SCRAM-SHA-1 log in through 110 challenges, and the
        client verifies the server's signature.
        """
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            self.assertEqual(self.wire().login("bob@corp.example", "bob-pw", mech).code, 200)

    def test_wrongPassword(self) -> None:
        """
        A wrong password gets 401; after C{max_auth_attempts} failures the
        server says BYE (auth-failures) and closes.
        """
        w = self.wire()
        for _ in range(self.config.maxAuthAttempts):
            self.assertEqual(w.login("alice", "nope").code, 401)
        self.clock.advance(0)
        [bye] = w.frames()
        assert isinstance(bye, Request)
        self.assertEqual((bye.method, bye.headers.get("Reason")), ("BYE", "auth-failures"))
        self.assertTrue(w.transport.disconnecting)

    def test_unknownUserLooksLikeWrongPassword(self) -> None:
        """
        An unknown user gets the same answer as a wrong password.
        """
        self.assertEqual(self.wire().login("nobody", "x").reason, self.wire().login("alice", "x").reason)

    def test_needsLogin(self) -> None:
        """
        Before login only OPTIONS, AUTH, PING and BYE are allowed (401).
        """
        w = self.wire()
        self.assertEqual(w.call("PING").code, 200)
        self.assertEqual(w.call("PUBLISH", "*", [("Presence", "online")]).code, 401)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"hi").code, 401)

    def test_unknownMethod(self) -> None:
        """
        An unknown method gets 405.
        """
        self.assertEqual(self.wire().call("FROB").code, 405)

    def test_loginTimeout(self) -> None:
        """
        A connection that does not log in within C{login_timeout} gets BYE
        (login-timeout) and is closed.
        """
        w = self.wire()
        self.clock.advance(self.config.loginTimeout)
        [bye] = w.frames()
        assert isinstance(bye, Request)
        self.assertEqual(bye.headers.get("Reason"), "login-timeout")
        self.assertTrue(w.transport.disconnecting)

    def test_tooManySessions(self) -> None:
        """
        Past C{max_sessions_per_user}, AUTH gets 453 and the connection
        stays open.
        """
        self.loggedIn()
        self.loggedIn()
        w = self.wire()
        self.assertEqual(w.login("alice", "alice-pw").code, 453)
        self.assertEqual(w.call("PING").code, 200)

    def test_maxUnauthenticated(self) -> None:
        """
        Past C{max_unauthenticated} waiting connections, a new one gets 503
        and is closed; a login frees its place.
        """
        self.factory.config = NativeConfig(maxUnauthenticated=1)
        first = self.wire()
        second = self.wire()
        self.assertEqual(second.response().code, 503)
        self.assertTrue(second.transport.disconnecting)
        second.protocol.connectionLost()
        self.assertEqual(first.login("alice", "alice-pw").code, 200)
        third = self.wire()
        self.assertEqual(third.call("PING").code, 200)

    def test_connectionLostClosesSession(self) -> None:
        """
        When the connection goes, so does the session.
        """
        w = self.loggedIn()
        self.assertEqual([str(a) for a in self.gateway.homeServer.users()], ["alice@corp.example"])
        w.protocol.connectionLost()
        self.assertEqual(self.gateway.homeServer.users(), [])


class LimitTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    Framing limits, rate limit and timeouts as the face applies them.
    """

    config = NativeConfig(requestsPerSecond=1, requestBurst=3, maxBodyBytes=100, maxHeaderBytes=256)

    def test_rateLimit(self) -> None:
        """
        Requests past the token bucket wait for their token instead of being
        refused: the fourth PING in a row is answered once a token has
        refilled, never 429, and reading is paused meanwhile.
        """
        w = self.wire()
        for _ in range(3):
            self.assertEqual(w.call("PING").code, 200)
        seq = w.send("PING")
        self.assertEqual(w.frames(), [])
        self.assertEqual(w.transport.producerState, "paused")
        self.clock.advance(1)
        self.assertEqual(w.response(seq).code, 200)
        self.assertEqual(w.transport.producerState, "producing")

    def test_defaultBurst(self) -> None:
        """
        With the shipped C{request_burst} (10), ten requests in one read are
        answered at once; an eleventh waits for a token.
        """
        self.factory.config = NativeConfig()
        self.assertEqual(self.factory.config.requestBurst, 10)
        w = self.wire()
        w.raw(pings(1, 11))
        self.assertEqual([f.seq for f in w.frames()], list(range(1, 11)))
        self.assertEqual(w.transport.producerState, "paused")
        self.clock.advance(1 / self.factory.config.requestsPerSecond)
        self.assertEqual([f.seq for f in w.frames()], [11])

    def test_bodyTooLarge(self) -> None:
        """
        A body of C{max_body_bytes} passes the framing; one byte more gets
        413 and the connection stays usable.
        """
        w = self.loggedIn()
        self.clock.advance(10)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"x" * 100).code, 480)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"x" * 101).code, 413)
        self.clock.advance(10)
        self.assertEqual(w.call("PING").code, 200)

    def test_headerTooLarge(self) -> None:
        """
        A header section over C{max_header_bytes} gets 431 and the
        connection is closed.
        """
        w = self.wire()
        w.send("PING", "*", [("X-Pad", "y" * 300)])
        r = w.response()
        self.assertEqual((r.code, r.seq), (431, 0))
        self.assertTrue(w.transport.disconnecting)

    def test_garbage(self) -> None:
        """
        A start line that is not the protocol gets 400 and the connection is
        closed.
        """
        w = self.wire()
        w.raw(b"GARBAGE\r\n\r\n")
        self.assertEqual(w.response().code, 400)
        self.assertTrue(w.transport.disconnecting)


    def test_idleTimeout(self) -> None:
        """
        A logged-in connection silent for C{idle_timeout} gets BYE
        (idle-timeout); any received bytes restart the timer.
        """
        w = self.loggedIn()
        self.clock.advance(self.config.idleTimeout - 1)
        w.raw(b"\r\n")
        self.clock.advance(self.config.idleTimeout - 1)
        self.assertFalse(w.transport.disconnecting)
        w.frames()
        self.clock.advance(1)
        [bye] = [f for f in w.frames() if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual(bye.headers.get("Reason"), "idle-timeout")
        self.assertTrue(w.transport.disconnecting)

    def test_idleConnectionsHoldNoDelayedCall(self) -> None:
        """
        An idle logged-in connection holds no delayed call of its own: its
        login and idle timers are the factory's shared ones, so the clock
        holds as many delayed calls with five such connections as with
        one.
        """
        users = ["u1", "u2", "u3", "u4", "u5"]
        for u in users:
            addUser(self.gateway, u, f"{u}-pw")
        wires = [self.loggedIn(users[0])]
        one = len(self.clock.getDelayedCalls())
        wires += [self.loggedIn(u) for u in users[1:]]
        self.assertEqual(len(self.clock.getDelayedCalls()), one)
        protocols = {id(w.protocol) for w in wires}
        for call in self.clock.getDelayedCalls():
            self.assertNotIn(id(getattr(getattr(call, "func", None), "__self__", None)), protocols)
        self.assertEqual(len(self.factory.idleTimers), 5)
        self.assertEqual(len(self.factory.loginTimers), 0)

    def test_idleTimeoutsExact(self) -> None:
        """
        Connections that went quiet at different times each get BYE
        (idle-timeout) exactly C{idle_timeout} after their last bytes: not
        a moment before.
        """
        tick = 2**-10
        idle = self.config.idleTimeout
        a = self.loggedIn("alice")
        self.clock.advance(1)
        b = self.loggedIn("bob")
        self.clock.advance(4)
        a.raw(b"\r\n")  # alice's last bytes, at 5
        self.clock.advance(idle - 4 - tick)
        self.assertFalse(b.transport.disconnecting)
        self.clock.advance(tick)
        self.assertTrue(b.transport.disconnecting)
        self.assertFalse(a.transport.disconnecting)
        self.clock.advance(4 - tick)
        self.assertFalse(a.transport.disconnecting)
        self.clock.advance(tick)
        self.assertTrue(a.transport.disconnecting)
        [bye] = [f for f in a.frames() if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual(bye.headers.get("Reason"), "idle-timeout")

    def test_loginTimeoutsExact(self) -> None:
        """
        Connections that do not log in each get BYE (login-timeout) exactly
        C{login_timeout} after they were opened; one that logged in in time
        does not (its idle timer runs on).
        """
        tick = 2**-10
        login = self.config.loginTimeout
        a = self.wire()
        self.clock.advance(3)
        b = self.wire()
        c = self.loggedIn("alice")
        self.clock.advance(login - 3 - tick)
        self.assertFalse(a.transport.disconnecting)
        self.clock.advance(tick)
        self.assertTrue(a.transport.disconnecting)
        self.clock.advance(3 - tick)
        self.assertFalse(b.transport.disconnecting)
        self.clock.advance(tick)
        self.assertTrue(b.transport.disconnecting)
        [bye] = [f for f in b.frames() if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual(bye.headers.get("Reason"), "login-timeout")
        self.assertFalse(c.transport.disconnecting)
        self.assertIn(c.protocol, self.factory.idleTimers)

    def test_closedConnectionStopsItsTimers(self) -> None:
        """
        A connection lost takes its timers off the factory's.
        """
        a = self.wire()
        b = self.loggedIn()
        for w in (a, b):
            w.protocol.connectionLost()
        self.assertEqual((len(self.factory.loginTimers), len(self.factory.idleTimers)), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PreAuthBytesTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    C{pre_auth_bytes}: what a connection may send before a successful AUTH
    (blank lines included, which take no token), counted in bytes received
    however they are cut; past it, BYE C{pre-auth-bytes} and the connection
    is closed.
    """

    config = NativeConfig(preAuthBytes=300)

    def stream(self, size: int) -> bytes:
        """
        C{size} bytes: OPTIONS (Seq 1), blank lines, then PING (Seq 2)
        ending at the last byte.
        """
        head = serialise(Request("OPTIONS", "*", Headers.of(("Seq", "1"))))
        tail = serialise(Request("PING", "*", Headers.of(("Seq", "2"))))
        pad = size - len(head) - len(tail)
        assert pad >= 2, pad
        return head + b"\n" * (pad % 2) + b"\r\n" * (pad // 2) + tail

    def cuts(self, data: bytes) -> list[list[bytes]]:
        """
        C{data} as one write, one byte per write, and two writes split at
        every offset.
        """
        return [[data], [data[i : i + 1] for i in range(len(data))]] + [[data[:i], data[i:]] for i in range(1, len(data))]

    def connectAndSend(self, writes: list[bytes], n: int) -> Wire:
        """
        A new connection (from an address of its own, clear of the
        per-source limits) that sends C{writes}.
        """
        w = Wire(self.factory, IPv4Address("TCP", f"10.0.{n // 250}.{n % 250 + 1}", 40000))
        for data in writes:
            w.raw(data)
        return w

    def test_boundary(self) -> None:
        """
        Exactly C{pre_auth_bytes} bytes before login are handled as usual
        (OPTIONS and PING answered, the connection open); with one byte
        more, the OPTIONS is answered, then BYE C{pre-auth-bytes}, the
        connection is closed and the PING (its last byte past the limit)
        never handled; the same however the bytes are cut.
        """
        limit = self.config.preAuthBytes
        n = 0
        for size, closed in [(limit, False), (limit + 1, True)]:
            for writes in self.cuts(self.stream(size)):
                n += 1
                w = self.connectAndSend(writes, n)
                frames = w.frames()
                summary = [(type(f).__name__, f.seq, getattr(f, "code", None) or getattr(f, "method", None)) for f in frames]
                if closed:
                    self.assertEqual(summary, [("Response", 1, 200), ("Request", 1, "BYE")], (size, len(writes)))
                    assert isinstance(frames[1], Request)
                    self.assertEqual(frames[1].headers.get("Reason"), "pre-auth-bytes")
                    self.assertTrue(w.transport.disconnecting)
                    w.raw(pings(3, 1))
                    self.assertEqual(w.frames(), [])
                else:
                    self.assertEqual(summary, [("Response", 1, 200), ("Response", 2, 200)], (size, len(writes)))
                    self.assertFalse(w.transport.disconnecting)
                w.protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_blankLineFlood(self) -> None:
        """
        Blank lines take no token, but they count: a connection that sends
        nothing else is closed at the limit, long before C{login_timeout}.
        """
        w = self.wire()
        for _ in range(10):
            w.raw(b"\r\n" * 64)
        [bye] = w.frames()
        assert isinstance(bye, Request)
        self.assertEqual((bye.method, bye.headers.get("Reason")), ("BYE", "pre-auth-bytes"))
        self.assertTrue(w.transport.disconnecting)
        self.assertEqual(self.clock.seconds(), 0)

    def test_notCountedOnceLoggedIn(self) -> None:
        """
        Counting stops at the successful AUTH: a logged-in connection may
        send any number of bytes.
        """
        w = self.loggedIn()
        w.raw(b"\r\n" * self.config.preAuthBytes + pings(10, 1))
        self.assertEqual([(r.seq, r.code) for r in w.frames() if isinstance(r, Response)], [(10, 200)])
        self.assertFalse(w.transport.disconnecting)

    def test_overDuringLogin(self) -> None:
        """
        Bytes past the limit that arrive while an AUTH is being checked
        (over TLS, decrypted records may still come in) end the connection;
        the login that succeeds afterwards opens no session.
        """
        portal = SlowPortal(self.gateway.portal)
        self.gateway.portal = portal  # type: ignore[assignment]
        w = self.wire()
        w.raw(serialise(Request("AUTH", "*", Headers.of(("Seq", "1"), ("Mechanism", "PLAIN")), b"\0alice\0alice-pw")))
        w.raw(b"\r\n" * self.config.preAuthBytes)
        [bye] = w.frames()
        assert isinstance(bye, Request)
        self.assertEqual(bye.headers.get("Reason"), "pre-auth-bytes")
        self.assertTrue(w.transport.disconnecting)
        portal.release()
        w.protocol.connectionLost()
        self.assertEqual(self.gateway.homeServer.users(), [])
        self.assertEqual(self.factory.unauthenticated, 0)

    def test_scramLoginWithinDefault(self) -> None:
        """
        The shipped C{pre_auth_bytes} holds the largest legitimate exchange
        before login (C{docs/protocol.md} section 4): OPTIONS, two failed
        SCRAM-SHA-256 logins (one more would end the connection) and a
        successful one, with a frame at the framing limits pipelined behind
        its last AUTH in the same write; what follows the login is not
        counted.
        """
        self.factory.config = config = NativeConfig()
        self.assertEqual(config.preAuthBytes, 262144)
        w = self.wire()
        self.assertEqual(w.call("OPTIONS").code, 200)
        for _ in range(2):
            self.assertEqual(w.login("alice", "wrong", "SCRAM-SHA-256").code, 401)
        mech = clientMechanism("SCRAM-SHA-256", "alice", "alice-pw")
        r = w.call("AUTH", "*", [("Mechanism", "SCRAM-SHA-256")], mech.start())
        self.assertEqual(r.code, 110)
        final = serialise(Request("AUTH", "*", Headers.of(("Seq", "100")), mech.step(r.body)))
        lines = len("Seq: 101\r\n") + len(f"Content-Length: {config.maxBodyBytes}\r\n") + len("X-Pad: \r\n")
        big = serialise(
            Request(
                "MESSAGE",
                "im:bob@corp.example",
                Headers.of(("Seq", "101"), ("X-Pad", "p" * (config.maxHeaderBytes - lines))),
                b"x" * config.maxBodyBytes,
            )
        )
        w.raw(final + big)
        responses = {r.seq: r for r in w.frames() if isinstance(r, Response)}
        self.assertEqual(responses[100].code, 200)
        mech.verifyFinal(responses[100].body)
        self.assertIn(101, responses)
        w.raw(b"\r\n" * config.preAuthBytes + pings(102, 1))
        self.assertEqual([(r.seq, r.code) for r in w.frames() if isinstance(r, Response)], [(102, 200)])
        self.assertFalse(w.transport.disconnecting)


def messageFrames(count: int, to: str = "bob@corp.example") -> list[bytes]:
    """
    C{count} MESSAGE requests to C{to}, with sequence numbers from 1 and
    bodies C{"m<seq>"}.
    """
    return [serialise(Request("MESSAGE", f"im:{to}", Headers.of(("Seq", str(i))), b"m%d" % (i,))) for i in range(1, count + 1)]


class FakeSession:
    """
    Stands in for a logged-in connection's L{ISession}: records the calls
    and answers each with a L{Deferred} the test fires.
    """

    def __init__(self, session: object) -> None:
        self.session = session
        self.calls: list[tuple[str, str]] = []
        self.pending: list[Deferred[object]] = []

    def _call(self, name: str, target: object) -> Deferred[object]:
        self.calls.append((name, str(target)))
        d: Deferred[object] = Deferred()
        self.pending.append(d)
        return d

    def subscribe(self, target: object, name: str = "") -> Deferred[object]:
        return self._call("subscribe", target)

    def unsubscribe(self, target: object) -> Deferred[object]:
        return self._call("unsubscribe", target)

    def close(self, reason: str = "") -> None:
        self.calls.append(("close", reason))
        self.session.close(reason)  # type: ignore[attr-defined]


class AtOnceSession:
    """
    Stands in for a home server's session that knows a message's outcome
    at once (C{sendMessageAtOnce}, and no C{sendMessage}): records the
    arguments and answers with C{outcome} (raised when an exception).
    """

    def __init__(self, session: object, outcome: object) -> None:
        self.session = session
        self.outcome = outcome
        self.sent: list[tuple[object, ...]] = []

    def sendMessageAtOnce(self, *arguments: object) -> object:
        self.sent.append(arguments)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def close(self, reason: str = "") -> None:
        self.session.close(reason)  # type: ignore[attr-defined]


class LaterSession(AtOnceSession):
    """
    A session whose messages are answered later (a router's proxied one):
    C{sendMessage} only, each answered by a L{Deferred} the test fires.
    """

    sendMessageAtOnce = None  # type: ignore[assignment]

    def __init__(self, session: object) -> None:
        super().__init__(session, None)
        self.pending: list[Deferred[object]] = []

    def sendMessage(self, *arguments: object) -> Deferred[object]:
        self.sent.append(arguments)
        d: Deferred[object] = Deferred()
        self.pending.append(d)
        return d


class SlowPortal:
    """
    Logs in through a real portal, but answers only when L{release}d (as a
    login that checks the password in a thread would).
    """

    def __init__(self, portal: object) -> None:
        self.portal = portal
        self.waiting: list[tuple[Deferred[object], object]] = []

    def login(self, *args: object) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.portal.login(*args).addBoth(lambda result: self.waiting.append((d, result)))  # type: ignore[attr-defined]
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, result in waiting:
            d.callback(result)


class ShapingTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    The rate limit shapes requests, not reads: whatever one read holds, a
    connection gets at most C{request_burst} requests handled at once and
    then C{requests_per_second}; the rest wait (reading paused) and are
    handled in order, none refused.
    """

    # frames_per_turn out of the way: these are about the token bucket
    # (TurnTests are about the budget of frames per turn).
    config = NativeConfig(requestsPerSecond=20, requestBurst=50, framesPerTurn=10000)

    def present(self, user: str) -> Wire:
        """
        A logged-in, present connection of C{user} with a full bucket.
        """
        w = self.loggedIn(user)
        w.call("PUBLISH", "*", [("Presence", "online")])
        self.clock.advance(10)
        w.frames()
        return w

    def test_floodInOneWrite(self) -> None:
        """
        1,000 MESSAGEs in one write: 50 (the burst) are delivered and
        answered at once, the rest stay unparsed with reading paused, then
        20 a second follow; all 1,000 are delivered and answered 200 in
        order, none 429, and reading resumes when they are done. Meanwhile
        bob's own requests are answered at once.
        """
        alice, bob = self.present("alice"), self.present("bob")
        frames = messageFrames(1000)
        alice.raw(b"".join(frames))
        responses = [f for f in alice.frames() if isinstance(f, Response)]
        delivered = [f for f in bob.frames() if isinstance(f, Request) and f.method == "MESSAGE"]
        self.assertEqual([(r.seq, r.code) for r in responses], [(i, 200) for i in range(1, 51)])
        self.assertEqual(len(delivered), 50)
        self.assertEqual(alice.transport.producerState, "paused")
        # Frame 51 is parsed and waits for its token; the rest are bytes.
        self.assertEqual(alice.protocol._parser.bufferedBytes, sum(len(f) for f in frames[51:]))
        self.assertEqual(bob.call("PING").code, 200)

        perSecond = []
        while len(responses) < 1000:
            self.clock.advance(1)
            new = [f for f in alice.frames() if isinstance(f, Response)]
            perSecond.append(len(new))
            responses += new
            delivered += [f for f in bob.frames() if isinstance(f, Request) and f.method == "MESSAGE"]
        self.assertLessEqual(max(perSecond), 20)
        self.assertEqual([(r.seq, r.code) for r in responses], [(i, 200) for i in range(1, 1001)])
        self.assertEqual([m.body for m in delivered], [b"m%d" % (i,) for i in range(1, 1001)])
        self.assertEqual(alice.transport.producerState, "producing")
        self.assertEqual(alice.protocol._parser.bufferedBytes, 0)

    def test_bytesAfterPause(self) -> None:
        """
        Bytes that still arrive while reading is paused (the rest of a TLS
        record) are kept unparsed and handled in turn.
        """
        alice, bob = self.present("alice"), self.present("bob")
        frames = messageFrames(60)
        alice.raw(b"".join(frames[:55]))
        self.assertEqual(alice.transport.producerState, "paused")
        alice.raw(b"".join(frames[55:]))
        self.assertEqual(len([f for f in alice.frames() if isinstance(f, Response)]), 50)
        self.clock.advance(1)
        self.assertEqual([f.seq for f in alice.frames() if isinstance(f, Response)], list(range(51, 61)))
        self.assertEqual(alice.transport.producerState, "producing")

    def test_floodBeforeLogin(self) -> None:
        """
        A flood before login is shaped the same way (each answered 401 in
        its turn).
        """
        w = self.wire()
        w.raw(b"".join(messageFrames(100)))
        self.assertEqual([r.code for r in w.frames() if isinstance(r, Response)], [401] * 50)
        self.clock.advance(3)
        self.assertEqual([r.seq for r in w.frames() if isinstance(r, Response)], list(range(51, 101)))

    def test_framingErrorsTakeTokens(self) -> None:
        """
        Requests answered with a (non-fatal) framing error take tokens too:
        1,000 frames without a Seq in one write get 50 answers at once.
        """
        w = self.wire()
        w.raw(b"PING * IMGW/1.0\r\n\r\n" * 1000)
        self.assertEqual([r.code for r in w.frames() if isinstance(r, Response)], [400] * 50)
        self.assertEqual(w.transport.producerState, "paused")
        self.clock.advance(1)
        self.assertEqual(len(w.frames()), 20)

    def test_waitingIsNotIdle(self) -> None:
        """
        A connection whose requests wait for tokens longer than
        C{idle_timeout} is not closed as idle; once they are answered, the
        idle timer runs again.
        """
        self.factory.config = NativeConfig(requestsPerSecond=0.01, requestBurst=1, idleTimeout=60)
        w = self.loggedIn()
        w.raw(b"".join(serialise(Request("PING", "*", Headers.of(("Seq", str(i))))) for i in range(11, 14)))
        for _ in range(3):
            self.clock.advance(100)
        self.assertEqual([f.seq for f in w.frames() if isinstance(f, Response)], [11, 12, 13])
        self.assertFalse(w.transport.disconnecting)
        self.clock.advance(60)
        self.assertTrue(w.transport.disconnecting)


def pings(first: int, count: int) -> bytes:
    """
    C{count} PING requests in one string, with sequence numbers from C{first}.
    """
    return b"".join(serialise(Request("PING", "*", Headers.of(("Seq", str(i))))) for i in range(first, first + count))


def answer(seq: int, code: int = 200) -> bytes:
    """
    A client's response to the server's request C{seq}.
    """
    return serialise(Response(code, "OK", Headers.of(("Seq", str(seq)))))


def runTurn(clock: Clock) -> None:
    """
    One turn of the reactor: run the calls due now, but not those they
    schedule for now (the reactor runs those in its next turn, where
    L{Clock.advance} would run them at once).
    """
    for call in [c for c in clock.calls if c.getTime() <= clock.seconds()]:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class ResponseTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    The client's responses must answer the server's requests: a response
    before login, or one that answers no request awaiting an answer, is a
    protocol error (400 with Seq 0, then the connection is closed), so a
    client never sends more responses than the server has requests awaiting
    them (docs/protocol.md sections 1 and 3.3).
    """

    def notify(self, w: Wire, count: int) -> list[int]:
        """
        Have the server send C{count} requests (contact NOTIFYs) on C{w}.

        @return: Their sequence numbers.
        """
        for i in range(count):
            w.protocol.contactRemoved(Address.fromString(f"c{i}@corp.example"))
        seqs = [f.seq for f in w.frames() if isinstance(f, Request)]
        self.assertEqual(len(seqs), count)
        return seqs

    def assertClosedFor(self, w: Wire, detail: str) -> None:
        """
        The server answered C{400} with C{Seq: 0} and a reason holding
        C{detail}, handled nothing else, and is closing the connection.
        """
        frames = w.frames()
        self.assertEqual([(f.code, f.seq) for f in frames if isinstance(f, Response)], [(400, 0)], frames)
        self.assertIn(detail, frames[0].reason)  # type: ignore[union-attr]
        self.assertTrue(w.transport.disconnecting)

    def test_beforeLogin(self) -> None:
        """
        A response before login closes the connection; the requests after
        it in the same read are not handled.
        """
        w = self.wire()
        w.raw(answer(1) + pings(1, 3))
        self.assertClosedFor(w, "response before login")

    def test_floodBeforeLogin(self) -> None:
        """
        1,000 responses in one read before login: the first closes the
        connection, the rest are never parsed.
        """
        w = self.wire()
        w.raw(b"".join(answer(i) for i in range(1, 1001)))
        self.assertClosedFor(w, "response before login")
        self.assertEqual(w.protocol._turnFrames, 1)

    def test_answered(self) -> None:
        """
        Responses to the server's requests, in any order and of any code,
        are taken without an answer; the connection goes on.
        """
        w = self.loggedIn()
        seqs = self.notify(w, 3)
        w.raw(answer(seqs[2]) + answer(seqs[0], 404) + answer(seqs[1]))
        self.assertEqual(w.call("PING").code, 200)
        self.assertEqual(w.protocol._outstanding.unanswered, 0)

    def test_unsolicited(self) -> None:
        """
        After login, a response whose Seq is not one the server sent closes
        the connection.
        """
        w = self.loggedIn()
        [seq] = self.notify(w, 1)
        w.raw(answer(seq + 1) + pings(100, 1))
        self.assertClosedFor(w, f"response to no request awaiting one (Seq {seq + 1})")

    def test_noMoreThanRequests(self) -> None:
        """
        N requests of the server take N responses; one more (answering one
        of them again) closes the connection.
        """
        w = self.loggedIn()
        seqs = self.notify(w, 5)
        w.raw(b"".join(answer(s) for s in seqs))
        self.assertFalse(w.transport.disconnecting)
        self.assertEqual(w.frames(), [])
        w.raw(answer(seqs[2]))
        self.assertClosedFor(w, f"(Seq {seqs[2]})")

    def test_answerWindowBoundary(self) -> None:
        """
        With C{answer_window = 3}, after 4 requests the latest 3 can be
        answered, and a response to the oldest (forgotten) closes the
        connection.
        """
        self.factory.config = NativeConfig(answerWindow=3)
        w = self.loggedIn()
        seqs = self.notify(w, 4)
        w.raw(b"".join(answer(s) for s in seqs[1:]))
        self.assertFalse(w.transport.disconnecting)
        w.raw(answer(seqs[0]))
        self.assertClosedFor(w, f"(Seq {seqs[0]})")

    def test_bareAnswersNotParsed(self) -> None:
        """
        Bare C{200}s (C{Seq} their only header, the client's usual answer)
        are taken without the general parser making a frame of each: only
        the other answers (another code, another header) go through it; all
        of them count as answers.
        """
        w = self.loggedIn()
        seqs = self.notify(w, 6)
        parser = watchParser(w.protocol)
        w.raw(answer(seqs[0]) + answer(seqs[1], 404) + b"".join(answer(s) for s in seqs[2:5]))
        w.raw(serialise(Response(200, "OK", Headers.of(("Seq", str(seqs[5])), ("X", "y")))))
        self.assertEqual([(r.code, r.seq) for r in parser.parsed], [(404, seqs[1]), (200, seqs[5])])
        self.assertEqual(w.protocol._outstanding.unanswered, 0)
        w.raw(answer(seqs[3]))
        self.assertClosedFor(w, f"(Seq {seqs[3]})")

    def test_readOfBareAnswers(self) -> None:
        """
        A read made only of bare C{200}s, up to C{frames_per_turn} of them,
        is taken whole, without being stored for the parser; a longer one,
        or one with anything else, goes the usual way (and is sliced per
        turn); the answers are checked alike: one answering nothing closes
        the connection.
        """
        n = self.config.framesPerTurn
        w = self.loggedIn()
        seqs = self.notify(w, n + 3)
        parser = watchParser(w.protocol)
        stored = parser.stored
        w.raw(b"".join(answer(s) for s in seqs[:n]))
        self.assertEqual((stored, w.protocol._outstanding.unanswered, w.protocol._turnFrames), ([], 3, n))
        w.raw(answer(seqs[n]) + pings(1, 1))
        self.assertEqual(len(stored), 1)
        self.assertEqual([(f.code, f.seq) for f in w.frames() if isinstance(f, Response)], [(200, 1)])
        w.raw(answer(seqs[n + 1]) + answer(seqs[0]) + answer(seqs[n + 2]))
        self.assertEqual(len(stored), 1)
        self.assertClosedFor(w, f"(Seq {seqs[0]})")
        self.assertEqual(w.protocol._outstanding.unanswered, 1)

    def test_readOfBareAnswersMatched(self) -> None:
        """
        A read of bare C{200}s is matched to the server's requests as the
        frames of a read are, one by one: in order or not, each request
        takes one answer; a repeated or stray one in the read closes the
        connection after the answers before it were taken, and those after
        it are not.
        """
        w = self.loggedIn()
        seqs = self.notify(w, 8)
        w.raw(answer(seqs[1]) + answer(seqs[0]))
        self.assertEqual(w.protocol._outstanding.unanswered, 6)
        w.raw(answer(seqs[2]) + answer(seqs[3]))
        self.assertEqual((w.frames(), w.protocol._outstanding.unanswered), ([], 4))
        w.raw(answer(seqs[4]) + answer(seqs[5]) + answer(seqs[5]) + answer(seqs[6]))
        self.assertClosedFor(w, f"(Seq {seqs[5]})")
        self.assertEqual(w.protocol._outstanding.unanswered, 2)
        w2 = self.loggedIn("bob")
        [seq] = self.notify(w2, 1)
        w2.raw(answer(seq) + answer(seq + 1))
        self.assertClosedFor(w2, f"(Seq {seq + 1})")
        self.assertEqual(w2.protocol._outstanding.unanswered, 0)

    def test_readOfBareAnswersCalls(self) -> None:
        """
        A read of bare C{200}s answering the oldest requests in order (a
        recipient's usual read) costs the face one call to take the read
        and one to match its answers, however many they are: no frame, no
        call per answer.
        """
        import imgateway.adapters.native.server as module

        if (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SkipTest("compiled: no Python calls to count")
        w = self.loggedIn()
        seqs = self.notify(w, 3)
        package = str(FilePath(imgatewayPackage.__file__).parent().path)
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(package):
                calls.append(frame.f_code.co_name)

        data = b"".join(answer(s) for s in seqs)
        sys.setprofile(profile)
        try:
            w.protocol.dataReceived(data)
        finally:
            sys.setprofile(None)
        self.assertEqual(w.protocol._outstanding.unanswered, 0)
        self.assertEqual([c for c in calls if c != "restart"], ["dataReceived", "bareOKRun", "answerInOrder"])

    def test_readOfRequestsNotTriedAsAnswers(self) -> None:
        """
        A read that does not start as a bare C{200} does (a client's
        requests, a blank line before a frame) goes to the parser without
        being tried as a read of bare C{200}s; a bare C{200} behind a blank
        line is still taken, as any frame.
        """
        import imgateway.adapters.native.server as module

        if (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SkipTest("compiled: no Python calls to count")
        w = self.loggedIn()
        [seq] = self.notify(w, 1)
        package = str(FilePath(imgatewayPackage.__file__).parent().path)
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(package):
                calls.append(frame.f_code.co_name)

        reads = [pings(100, 2), b"\r\n" + answer(seq)]
        sys.setprofile(profile)
        try:
            for data in reads:
                w.protocol.dataReceived(data)
        finally:
            sys.setprofile(None)
        self.assertEqual([(f.code, f.seq) for f in w.frames() if isinstance(f, Response)], [(200, 100), (200, 101)])
        self.assertEqual(w.protocol._outstanding.unanswered, 0)
        self.assertFalse(w.transport.disconnecting)
        self.assertNotIn("bareOKRun", calls)
        self.assertNotIn("takeBareOKs", calls)

    def test_readOfBareAnswersOverTurn(self) -> None:
        """
        More bare C{200}s in one read than C{frames_per_turn}: the usual way,
        C{frames_per_turn} of them in this turn.
        """
        n = self.config.framesPerTurn
        w = self.loggedIn()
        seqs = self.notify(w, n + 1)
        w.raw(b"".join(answer(s) for s in seqs))
        self.assertEqual(w.protocol._outstanding.unanswered, 1)
        self.assertEqual(w.transport.producerState, "paused")
        runTurn(self.clock)
        self.assertEqual(w.protocol._outstanding.unanswered, 0)

    def test_badResponse(self) -> None:
        """
        A response with a body over C{max_body_bytes} is skipped, not
        answered, and counts as the answer to its request (a second one
        closes); a response whose Seq cannot be read closes the connection.
        """
        w = self.loggedIn()
        seqs = self.notify(w, 2)
        big = b"IMGW/1.0 200 OK\r\nSeq: %d\r\nContent-Length: 70000\r\n\r\n" % seqs[0] + b"x" * 70000
        w.raw(big)
        self.assertEqual(w.frames(), [])
        self.assertFalse(w.transport.disconnecting)
        w.raw(answer(seqs[1]) + big)
        self.assertClosedFor(w, f"(Seq {seqs[0]})")
        w2 = self.loggedIn("bob")
        w2.raw(b"IMGW/1.0 200 OK\r\nSeq: nope\r\n\r\n")
        self.assertClosedFor(w2, "response without a valid Seq")


class TurnTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    C{frames_per_turn}: however many frames one read brings (requests,
    responses, frames with framing errors), the connection parses at most
    C{frames_per_turn} of them before the reactor's other work has its turn;
    the rest stays unparsed, reading paused, until the next turn. (The
    token bucket is out of the way here: C{request_burst} alone bounds the
    requests of a turn when it is the smaller.)
    """

    config = NativeConfig(requestBurst=1000)

    def test_requestsBoundary(self) -> None:
        """
        C{frames_per_turn} PINGs in one read are all answered in that turn,
        and reading goes on; with one more, the last waits for the next turn
        (reading paused) and is answered then.
        """
        n = self.config.framesPerTurn
        w = self.wire()
        w.raw(pings(1, n))
        self.assertEqual([f.seq for f in w.frames()], list(range(1, n + 1)))
        self.assertEqual(w.transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls()[2:], [])  # login and idle timers only

        w = self.wire()
        w.raw(pings(1, n + 1))
        self.assertEqual([f.seq for f in w.frames()], list(range(1, n + 1)))
        self.assertEqual(w.transport.producerState, "paused")
        runTurn(self.clock)
        self.assertEqual([f.seq for f in w.frames()], [n + 1])
        self.assertEqual(w.transport.producerState, "producing")

    def test_responsesInSlices(self) -> None:
        """
        The answers to 100 of the server's requests in one read (as a client
        whose reading was paused sends them) are parsed
        C{frames_per_turn} per turn; between turns, another connection's
        request is answered at once.
        """
        n = self.config.framesPerTurn
        w, bob = self.loggedIn(), self.loggedIn("bob")
        seqs = ResponseTests.notify(self, w, 100)  # type: ignore[arg-type]
        w.raw(b"".join(answer(s) for s in seqs))
        left = [w.protocol._outstanding.unanswered]
        while w.protocol._outstanding.unanswered:
            self.assertEqual(w.transport.producerState, "paused")
            self.assertEqual(bob.call("PING").code, 200)
            runTurn(self.clock)
            left.append(w.protocol._outstanding.unanswered)
        self.assertEqual(left, [100 - n * k for k in range(1, 100 // n + 1)] + [0])
        self.assertEqual(w.transport.producerState, "producing")
        self.assertFalse(w.transport.disconnecting)

    def test_framingErrorsCount(self) -> None:
        """
        Frames answered with a non-fatal framing error count as frames.
        """
        n = self.config.framesPerTurn
        w = self.wire()
        w.raw(b"PING * IMGW/1.0\r\n\r\n" * (n + 5))
        self.assertEqual([r.code for r in w.frames() if isinstance(r, Response)], [400] * n)
        runTurn(self.clock)
        self.assertEqual([r.code for r in w.frames() if isinstance(r, Response)], [400] * 5)

    def test_blankLinesFree(self) -> None:
        """
        Blank lines are not frames: 100,000 of them before a PING do not
        hold it back.
        """
        w = self.wire()
        w.raw(b"\r\n" * 50000 + b"\n" * 50000 + pings(1, 1))
        self.assertEqual([f.seq for f in w.frames()], [1])

    def test_lostDuringTurn(self) -> None:
        """
        A connection lost while its next turn is due leaves no call behind.
        """
        w = self.wire()
        w.raw(pings(1, self.config.framesPerTurn + 1))
        w.protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OrderTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    Requests on one connection are handled in the order sent; their
    responses may come back in another order (matched by Seq), except
    that C{AUTH} and C{BYE} are handled alone.
    """

    def test_pipelinedLogin(self) -> None:
        """
        AUTH, then PUBLISH and PING in the same write, with a login that
        completes later: nothing after AUTH is handled (reading paused)
        until AUTH is answered, so PUBLISH is served as logged in.
        """
        portal = SlowPortal(self.gateway.portal)
        self.gateway.portal = portal  # type: ignore[assignment]
        w = self.wire()
        w.raw(
            serialise(Request("AUTH", "*", Headers.of(("Seq", "1"), ("Mechanism", "PLAIN")), b"\0alice\0alice-pw"))
            + serialise(Request("PUBLISH", "*", Headers.of(("Seq", "2"), ("Presence", "busy"))))
            + serialise(Request("PING", "*", Headers.of(("Seq", "3"))))
        )
        self.assertEqual(w.frames(), [])
        self.assertEqual(w.transport.producerState, "paused")
        portal.release()
        responses = [f for f in w.frames() if isinstance(f, Response)]
        self.assertEqual([(r.seq, r.code) for r in responses], [(1, 200), (2, 200), (3, 200)])
        self.assertEqual(w.transport.producerState, "producing")

    def test_callsInOrderResponsesBySeq(self) -> None:
        """
        UNSUBSCRIBE then SUBSCRIBE in one write reach the session in that
        order without waiting for each other; when the second finishes
        first, its response is sent first (matched by Seq).
        """
        w = self.loggedIn()
        session = FakeSession(w.protocol.session)
        w.protocol.session = session  # type: ignore[assignment]
        w.raw(
            serialise(Request("UNSUBSCRIBE", "pres:bob@corp.example", Headers.of(("Seq", "7"))))
            + serialise(Request("SUBSCRIBE", "pres:bob@corp.example", Headers.of(("Seq", "8"))))
        )
        self.assertEqual(session.calls, [("unsubscribe", "bob@corp.example"), ("subscribe", "bob@corp.example")])
        first, second = session.pending
        second.callback(AuthorisationState.PENDING)
        first.callback(None)
        self.assertEqual([(r.seq, r.code) for r in w.frames() if isinstance(r, Response)], [(8, 202), (7, 200)])

    def test_byeWaitsForAnswers(self) -> None:
        """
        A BYE sent behind a request still being handled waits for it: the
        request is answered, then the BYE, then the connection closes.
        """
        w = self.loggedIn()
        session = FakeSession(w.protocol.session)
        w.protocol.session = session  # type: ignore[assignment]
        w.raw(
            serialise(Request("SUBSCRIBE", "pres:bob@corp.example", Headers.of(("Seq", "4"))))
            + serialise(Request("BYE", "*", Headers.of(("Seq", "5"))))
        )
        self.assertEqual(w.frames(), [])
        self.assertFalse(w.transport.disconnecting)
        session.pending[0].callback(AuthorisationState.AUTHORISED)
        self.assertEqual([(r.seq, r.code) for r in w.frames() if isinstance(r, Response)], [(4, 200), (5, 200)])
        self.assertTrue(w.transport.disconnecting)
        self.assertEqual(session.calls[-1], ("close", "bye"))


class SessionTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    The methods of a logged-in session.
    """

    def test_publish(self) -> None:
        """
        PUBLISH grants a lease; bad states, notes and leases get 400.
        """
        w = self.loggedIn()
        r = w.call("PUBLISH", "*", [("Presence", "out-to-lunch"), ("Note", "back at 2"), ("Expires", "600")])
        self.assertEqual((r.code, r.headers.get("Expires")), (200, "600"))
        self.assertEqual(w.call("PUBLISH", "*", [("Presence", "sleepy")]).code, 400)
        self.assertEqual(w.call("PUBLISH", "*", [("Presence", "away"), ("Note", "x" * 1025)]).code, 400)
        self.assertEqual(w.call("PUBLISH", "*", [("Presence", "away"), ("Expires", "soon")]).code, 400)
        self.assertEqual(w.call("PUBLISH", "*").code, 400)

    def test_messageBothWays(self) -> None:
        """
        A MESSAGE is delivered to the recipient as a server MESSAGE request
        carrying the sender, id and body; the sender gets 200 and the id.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        bob.call("PUBLISH", "*", [("Presence", "online")])
        r = alice.call("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-1")], "héllo".encode())
        self.assertEqual((r.code, r.headers.get("Message-ID")), (200, "m-1"))
        [m] = [f for f in bob.frames() if isinstance(f, Request) and f.method == "MESSAGE"]
        self.assertEqual(m.headers.get("From"), "im:alice@corp.example")
        self.assertEqual(m.headers.get("Message-ID"), "m-1")
        self.assertEqual(m.body.decode(), "héllo")

    def test_messageStatuses(self) -> None:
        """
        Failed deliveries answer with their status: 480 (for an unknown user
        as for an offline one), 400 for a bad address or a non-UTF-8 body.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("MESSAGE", "im:nobody@corp.example", [], b"x").code, 480)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"x").code, 480)
        self.assertEqual(w.call("MESSAGE", "im:not-an-address", [], b"x").code, 400)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"\xff").code, 400)
        self.assertEqual(w.call("MESSAGE", "im:x@elsewhere.example", [], b"x").code, 502)

    def test_longestAddresses(self) -> None:
        """
        Under the default limits, a request may aim at the longest valid
        address (a local part of 1023 bytes at a domain of 253 characters):
        the longest request line, C{UNSUBSCRIBE} with it, is not refused as
        too long.
        """
        local = "\N{LATIN SMALL LETTER E WITH ACUTE}" * 511 + "x"
        target = Address.fromParts(local, LONG_DOMAIN)
        self.assertEqual((len(target.local.encode("utf-8")), len(target.domain)), (1023, 253))
        line = f"UNSUBSCRIBE {target.presURI()} IMGW/1.0".encode("utf-8")
        self.assertEqual(len(line), 1303)
        w = self.loggedIn()
        self.assertEqual(w.call("UNSUBSCRIBE", target.presURI()).code, 200)
        self.assertEqual(w.call("MESSAGE", target.imURI(), [], b"x").code, 502)

    def test_quotaExceeded(self) -> None:
        """
        A request past a quota is answered C{454 Quota Exceeded}.
        """
        self.gateway.homeServer.config = HomeConfig(maxAccessEntries=1)
        w = self.loggedIn()
        self.assertEqual(w.call("ACCESS", "a.example", [("List", "block")]).code, 200)
        r = w.call("ACCESS", "b.example", [("List", "block")])
        self.assertEqual(r.code, 454)
        self.assertIn("max_access_entries = 1", r.reason)

    def test_busyWithAlternate(self) -> None:
        """
        A presence rule answers 486 with the Alternate header, to a sender
        who may see the user's presence.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        alice.call("SUBSCRIBE", "pres:bob@corp.example")
        self.assertEqual(bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "allow")]).code, 200)
        self.assertEqual(bob.call("RULE", "*", [("Presence", "on-the-phone"), ("Alternate", "tel:+15550100")]).code, 200)
        bob.call("PUBLISH", "*", [("Presence", "on-the-phone")])
        r = alice.call("MESSAGE", "im:bob@corp.example", [], b"x")
        self.assertEqual((r.code, r.headers.get("Alternate")), (486, "tel:+15550100"))
        self.assertIn(b"tel:+15550100", bob.call("RULE").body)

    def test_ruleActions(self) -> None:
        """
        C{RULE *} with C{Rule-Action: add} (a JSON rule, C{Position}
        optional), C{remove} (C{Position}) and C{replace} (C{{"rules":
        [...]}}) edits the ordered rules; the list shows them in order, a
        first-protocol rule with C{presence} too. Wrong rules, bodies,
        positions and actions are answered 400, and change nothing.
        """
        w = self.loggedIn()
        call = w.call

        def paced(*args: Any) -> Response:
            # Within the request rate.
            self.clock.advance(1)
            return call(*args)

        w.call = paced  # type: ignore[method-assign,assignment]
        add = [("Rule-Action", "add"), ("Content-Type", "application/json")]
        reply = {"states": ["on-the-phone"], "action": "auto-reply", "text": "later"}
        forward = {"states": ["busy", "on-the-phone"], "action": "forward", "sender": "bob@corp.example", "forward": "alice@xmpp.example"}
        self.assertEqual(w.call("RULE", "*", add, json.dumps(reply).encode()).code, 200)
        self.assertEqual(w.call("RULE", "*", add + [("Position", "1")], json.dumps(forward).encode()).code, 200)
        self.assertEqual(w.call("RULE", "*", [("Presence", "away"), ("Alternate", "tel:1")]).code, 200)
        legacy = {"states": ["away"], "action": "refuse", "alternate": "tel:1", "presence": "away"}
        self.assertEqual(json.loads(w.call("RULE").body), {"rules": [forward, reply, legacy]})
        for headers, body in [
            (add, b"{"),
            (add, json.dumps({"states": ["online"], "action": "deliver"}).encode()),
            (add, json.dumps({"states": ["busy"], "action": "auto-reply"}).encode()),
            (add + [("Position", "9")], json.dumps(reply).encode()),
            (add + [("Position", "first")], json.dumps(reply).encode()),
            ([("Rule-Action", "remove")], b""),
            ([("Rule-Action", "remove"), ("Position", "4")], b""),
            ([("Rule-Action", "shuffle")], b""),
            ([("Rule-Action", "replace")], json.dumps([reply]).encode()),
        ]:
            self.assertEqual(w.call("RULE", "*", headers, body).code, 400, (headers, body))
        self.assertEqual(json.loads(w.call("RULE").body), {"rules": [forward, reply, legacy]})
        self.assertEqual(w.call("RULE", "*", [("Rule-Action", "remove"), ("Position", "1")]).code, 200)
        self.assertEqual(json.loads(w.call("RULE").body), {"rules": [reply, legacy]})
        replace = [("Rule-Action", "replace"), ("Content-Type", "application/json")]
        self.assertEqual(w.call("RULE", "*", replace, json.dumps({"rules": [forward]}).encode()).code, 200)
        self.assertEqual(json.loads(w.call("RULE").body), {"rules": [forward]})

    def test_ruleQuota(self) -> None:
        """
        C{max_rules} rules are taken; one more is answered 454.
        """
        w = self.loggedIn()
        add = [("Rule-Action", "add"), ("Content-Type", "application/json")]
        rule = json.dumps({"states": ["busy"], "action": "deliver"}).encode()
        for _ in range(HomeConfig().maxRules):
            self.clock.advance(1)
            self.assertEqual(w.call("RULE", "*", add, rule).code, 200)
        self.assertEqual(w.call("RULE", "*", add, rule).code, 454)

    def test_autoMark(self) -> None:
        """
        An auto-reply reaches the sender's client as a C{MESSAGE} with
        C{Auto: auto-reply}; a message a person wrote has no C{Auto}.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        add = [("Rule-Action", "add"), ("Content-Type", "application/json")]
        rule = {"states": ["on-the-phone"], "action": "auto-reply", "text": "on the phone"}
        self.assertEqual(bob.call("RULE", "*", add, json.dumps(rule).encode()).code, 200)
        bob.call("PUBLISH", "*", [("Presence", "on-the-phone")])
        alice.call("PUBLISH", "*", [("Presence", "online")])
        alice.send("MESSAGE", "im:bob@corp.example", [], b"hi")
        frames = alice.frames()
        self.assertEqual([f.code for f in frames if isinstance(f, Response)], [200])
        [original] = [f for f in bob.frames() if isinstance(f, Request) and f.method == "MESSAGE"]
        [reply] = [f for f in frames if isinstance(f, Request) and f.method == "MESSAGE"]
        self.assertIsNone(original.headers.get("Auto"))
        self.assertEqual((reply.headers.get("Auto"), reply.body), ("auto-reply", b"on the phone"))

    def test_ruleAlternateURI(self) -> None:
        """
        A rule whose alternate is not a URI is answered 400.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("RULE", "*", [("Presence", "busy"), ("Alternate", "not a uri")]).code, 400)
        self.assertEqual(w.call("RULE", "*", [("Presence", "busy"), ("Alternate", "tel:+15550100")]).code, 200)

    def test_noLeaks(self) -> None:
        """
        To a sender who may not see the recipient's presence, an unknown,
        disabled or offline recipient, one that blocks the sender and one
        whose presence rule turns messages away all answer the same: 480,
        the same reason but for the address. A SUBSCRIBE to an unknown or
        blocking user is answered 202, as a real pending one is.
        """
        addUser(self.gateway, "carol", "carol-pw", enabled=False)
        addUser(self.gateway, "dave", "dave-pw")
        addUser(self.gateway, "frank", "frank-pw")
        alice, bob, dave = self.loggedIn("alice"), self.loggedIn("bob"), self.loggedIn("dave")
        bob.call("PUBLISH", "*", [("Presence", "on-the-phone")])
        bob.call("RULE", "*", [("Presence", "on-the-phone"), ("Alternate", "tel:+15550100")])
        dave.call("PUBLISH", "*", [("Presence", "online")])
        dave.call("ACCESS", "im:alice@corp.example", [("List", "block")])
        answers = set()
        for to in ("nobody", "carol", "frank", "bob", "dave"):
            r = alice.call("MESSAGE", f"im:{to}@corp.example", [], b"x")
            answers.add((r.code, r.reason.replace(to, "X"), r.headers.get("Alternate")))
        self.assertEqual(answers, {(480, "X@corp.example is offline", None)})
        for to in ("nobody", "carol", "dave", "bob"):
            self.assertEqual(alice.call("SUBSCRIBE", f"pres:{to}@corp.example").code, 202, to)

    def test_subscribeFlow(self) -> None:
        """
        SUBSCRIBE answers 202 and notifies the target; AUTHORISE lets the
        watcher see presence; CONTACTS lists the result.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        bob.call("PUBLISH", "*", [("Presence", "busy"), ("Note", "meeting")])
        self.assertEqual(alice.call("SUBSCRIBE", "pres:bob@corp.example", [("Name", "Bob")]).code, 202)
        notes = [f for f in bob.frames() if isinstance(f, Request)]
        self.assertIn(("subscription", "subscribe"), [(n.headers.get("Event"), n.headers.get("Subscription")) for n in notes])
        self.assertEqual(bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "allow")]).code, 200)
        presence = [
            f for f in alice.frames() if isinstance(f, Request) and f.headers.get("Event") == "presence" and f.target == "pres:bob@corp.example"
        ]
        self.assertEqual([(p.headers.get("Presence"), p.headers.get("Note")) for p in presence], [("busy", "meeting")])
        body = alice.call("CONTACTS").body
        self.assertIn(b'"subscription": "to"', body)
        self.assertEqual(bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "maybe")]).code, 400)

    def test_access(self) -> None:
        """
        ACCESS sets and lists entries; a bad list or entry gets 400.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("ACCESS", "im:bob@corp.example", [("List", "block")]).code, 200)
        self.assertEqual(w.call("ACCESS", "corp.example", [("List", "allow")]).code, 200)
        self.assertEqual(w.call("ACCESS").body, b'{"allow": ["corp.example"], "block": ["bob@corp.example"]}')
        self.assertEqual(w.call("ACCESS", "im:bob@corp.example", [("List", "grey")]).code, 400)
        self.assertEqual(w.call("ACCESS", "bad_entry!", [("List", "block")]).code, 400)

    def test_notificationsSanitised(self) -> None:
        """
        A presence note with a TAB (allowed in notes) is sent intact; control
        characters never reach the wire.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        alice.call("SUBSCRIBE", "pres:bob@corp.example")
        bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "allow")])
        alice.frames()
        bob.call("PUBLISH", "*", [("Presence", "away"), ("Note", "a\tb")])
        [p] = [f for f in alice.frames() if isinstance(f, Request) and f.target == "pres:bob@corp.example"]
        self.assertEqual(p.headers.get("Note"), "a\tb")

    def test_shutdown(self) -> None:
        """
        When the home server closes all sessions, clients get BYE (shutdown).
        """
        w = self.loggedIn()
        self.gateway.homeServer.closeAll("shutdown")
        byes = [f for f in w.frames() if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual([b.headers.get("Reason") for b in byes], ["shutdown"])
        self.assertTrue(w.transport.disconnecting)

    def test_bye(self) -> None:
        """
        BYE is answered 200 and the connection closed.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("BYE").code, 200)
        self.assertTrue(w.transport.disconnecting)


#: A target of each form, aimed at bob (or his domain).
TARGET_OF_FORM = {
    TargetForm.STAR: "*",
    TargetForm.IM: "im:bob@corp.example",
    TargetForm.PRES: "pres:bob@corp.example",
    TargetForm.ADDRESS: "bob@corp.example",
    TargetForm.DOMAIN: "corp.example",
    TargetForm.OTHER_URI: "xmpp:bob@corp.example",
}

#: Headers (and a body) that make each method succeed when its target is
#: of a right form, so that any 400 is the target's doing.
VALID_REQUEST: dict[str, tuple[list[tuple[str, str]], bytes]] = {
    "OPTIONS": ([], b""),
    "AUTH": ([("Mechanism", "SCRAM-SHA-256")], b"n,,n=alice,r=abcdefghijklmnop"),
    "PING": ([], b""),
    "BYE": ([], b""),
    "PUBLISH": ([("Presence", "online")], b""),
    "CONTACTS": ([], b""),
    "RULE": ([], b""),
    "SUBSCRIBE": ([], b""),
    "UNSUBSCRIBE": ([], b""),
    "AUTHORISE": ([("Decision", "deny")], b""),
    "MESSAGE": ([], b"hi"),
    "ACCESS": ([("List", "none")], b""),
}


class MessagePathTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    C{MESSAGE} without L{Deferred} layers: a session that knows the
    outcome at once (C{sendMessageAtOnce}) is answered now; one that
    answers later with one callback; the answers are the other handlers'.
    """

    def test_answeredAtOnce(self) -> None:
        """
        A session with C{sendMessageAtOnce} gets the message's arguments
        (the content type without its parameters, a made id when the
        request has none) and its status is the answer: C{200} and the id.
        """
        w = self.loggedIn()
        session = w.protocol.session = AtOnceSession(w.protocol.session, DeliveryStatus.DELIVERED)  # type: ignore[assignment]
        r = w.call("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-1"), ("Content-Type", "text/html; charset=utf-8")], "héllo".encode())
        self.assertEqual((r.code, r.reason, r.headers.get("Message-ID")), (200, "OK", "m-1"))
        r = w.call("MESSAGE", "im:bob@corp.example", [], b"x")
        self.assertEqual(r.code, 200)
        made = r.headers.get("Message-ID")
        self.assertTrue(made)
        self.assertEqual(
            session.sent,
            [
                (Address.fromString("bob@corp.example"), "héllo", "text/html", "m-1"),
                (Address.fromString("bob@corp.example"), "x", "text/plain", made),
            ],
        )
        self.assertEqual(w.protocol._inFlight, 0)

    def test_refusedAtOnce(self) -> None:
        """
        A refusal raised at once is answered with its status (486 with the
        alternate; an unexpected error 500, logged); a bad address or body
        is 400 without asking the session.
        """
        w = self.loggedIn()
        session = w.protocol.session = AtOnceSession(w.protocol.session, UserBusy("busy", "tel:+15550100"))  # type: ignore[assignment]
        r = w.call("MESSAGE", "im:bob@corp.example", [], b"x")
        self.assertEqual((r.code, r.headers.get("Alternate")), (486, "tel:+15550100"))
        session.outcome = RuntimeError("boom")
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"x").code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(w.call("MESSAGE", "im:not-an-address", [], b"x").code, 400)
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", [], b"\xff").code, 400)
        self.assertEqual(len(session.sent), 2)

    def test_answeredLater(self) -> None:
        """
        A session that answers later: the answer is written when its
        L{Deferred} fires, delivered or refused, in flight until then (a
        C{BYE} waits for it).
        """
        w = self.loggedIn()
        session = w.protocol.session = LaterSession(w.protocol.session)  # type: ignore[assignment]
        first = w.send("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-1")], b"x")
        second = w.send("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-2")], b"y")
        bye = w.send("BYE")
        self.assertEqual(w.frames(), [])
        self.assertEqual(w.protocol._inFlight, 2)
        session.pending[1].errback(UserOffline("offline"))
        self.assertEqual([(r.seq, r.code) for r in w.frames()], [(second, 480)])  # type: ignore[union-attr]
        session.pending[0].callback(DeliveryStatus.DELIVERED)
        responses = w.frames()
        self.assertEqual([(r.seq, r.code) for r in responses][:2], [(first, 200), (bye, 200)])  # type: ignore[union-attr]
        self.assertEqual(responses[0].headers.get("Message-ID"), "m-1")

    def test_thenBeforeAtOnce(self) -> None:
        """
        A session with both C{sendMessageThen} and C{sendMessageAtOnce} (a
        home server's) is asked through C{sendMessageThen}: a status it
        returns is the answer at once; when it returns C{None}, the call
        it makes later is, the request in flight until then.
        """

        class BothSession(AtOnceSession):
            def __init__(self, session: object) -> None:
                super().__init__(session, DeliveryStatus.DELIVERED)
                self.answers: list[tuple[Any, Any]] = []
                self.later = False

            def sendMessageThen(self, answer: Any, token: Any, *arguments: object) -> object:
                self.sent.append(("then",) + arguments)
                if self.later:
                    self.answers.append((answer, token))
                    return None
                return self.outcome

        w = self.loggedIn()
        session = w.protocol.session = BothSession(w.protocol.session)  # type: ignore[assignment]
        r = w.call("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-1")], b"x")
        self.assertEqual((r.code, r.headers.get("Message-ID")), (200, "m-1"))
        session.later = True
        seq = w.send("MESSAGE", "im:bob@corp.example", [("Message-ID", "m-2")], b"y")
        self.assertEqual(w.frames(), [])
        self.assertEqual(w.protocol._inFlight, 1)
        [(answer, token)] = session.answers
        answer(Failure(UserBusy("busy", "tel:+15550100")), token, "m-2")
        [later] = w.frames()
        assert isinstance(later, Response)
        self.assertEqual((later.seq, later.code, later.headers.get("Alternate")), (seq, 486, "tel:+15550100"))
        self.assertEqual(w.protocol._inFlight, 0)
        self.assertEqual([call[0] for call in session.sent], ["then", "then"])

    def test_sentResponseBytes(self) -> None:
        """
        L{sentResponse} writes exactly what L{serialise} makes of the
        C{200} response, for fuzzed ids and sequence numbers (control
        characters, line ends, non-ASCII text, lone surrogates), or leaves
        it to the general way (C{None}) when the id is not plain.
        """
        rng = random.Random(20261205)
        alphabet = ["a", "Z", "0", "-", ".", "@", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "é", "\x1b", ":"]
        direct = 0
        for _ in range(4000):
            messageId = rng.choice(["m-1", "", "x" * 2000, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))])
            seq = rng.choice([0, 1, 7, 2**31 - 1, rng.randrange(2**31)])
            data = sentResponse(seq, messageId)
            try:
                general: object = serialise(Response(200, "OK", Headers.of(("Seq", str(seq)), ("Message-ID", messageId))))
            except ValueError:
                general = None
            if data is None:
                continue
            direct += 1
            self.assertEqual(data, general, (seq, messageId))
        self.assertGreater(direct, 1000)

    def test_respondSentSameAsSentResponse(self) -> None:
        """
        The face's C{200} to a sent C{MESSAGE} (C{_respondSent}, which
        writes L{sentResponse} out) is the bytes L{sentResponse} makes,
        for fuzzed ids and sequence numbers; an id it leaves to the
        general way is answered as L{_respond} answers it (a C{200}
        L{serialise} can write, or none, logged, when it cannot).
        """
        w = self.loggedIn()
        rng = random.Random(20261206)
        alphabet = ["a", "Z", "0", "-", ".", "@", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "é", "\x1b", ":"]
        for _ in range(3000):
            messageId = rng.choice(["m-1", "", "x" * 2000, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))])
            seq = rng.choice([0, 1, 7, 2**31 - 1, rng.randrange(2**31)])
            w.transport.clear()
            w.protocol._respondSent(seq, messageId)
            expected = sentResponse(seq, messageId)
            if expected is None:
                try:
                    expected = serialise(Response(200, "OK", Headers.of(("Seq", str(seq)), ("Message-ID", messageId))))
                except ValueError:
                    expected = b""
            self.assertEqual(w.transport.value(), expected, (seq, messageId))
        self.flushLoggedErrors(ValueError)

    def test_notPlainIdAnsweredTheGeneralWay(self) -> None:
        """
        An id with a TAB (plain in a header value) is answered with it; one
        with another control character is left to the general way
        (C{None}).
        """
        w = self.loggedIn()
        w.protocol.session = AtOnceSession(w.protocol.session, DeliveryStatus.DELIVERED)  # type: ignore[assignment]
        r = w.call("MESSAGE", "im:bob@corp.example", [("Message-ID", "m\t1")], b"x")
        self.assertEqual((r.code, r.headers.get("Message-ID")), (200, "m\t1"))
        self.assertIsNone(sentResponse(1, "m\x85"))

    def test_messageFields(self) -> None:
        """
        L{_messageFields} reads a C{MESSAGE}'s C{Content-Type} and
        C{Message-ID} as L{Headers.get} does (the first of each name, in any
        case), over fuzzed header lists.
        """
        rng = random.Random(7)
        names = ["Content-Type", "content-type", "CONTENT-TYPE", "Message-ID", "message-id", "Message-Id", "Seq", "Content-Typ", "Message-IDs", "X-Message-ID", "Contenttype1"]
        for _ in range(4000):
            headers = Headers(tuple((rng.choice(names), rng.choice(["", "a", "text/html", "m-1"])) for _ in range(rng.randint(0, 6))))
            self.assertEqual(_messageFields(headers), (headers.get("Content-Type"), headers.get("Message-ID")), headers)

    def fuzzedMessages(self, count: int) -> list[tuple[int, Message]]:
        """
        C{count} messages with fuzzed values (control characters, line
        ends, white space, non-ASCII text, lone surrogates; ids and
        addresses set past their validation, as no face makes them), each
        with a sequence number.
        """
        rng = random.Random(20261205)
        alphabet = ["a", "Z", "0", "-", ".", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "é", "\x1b", "\u3000", ";"]

        def text(longest: int) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))

        out = []
        for _ in range(count):
            message = Message(
                Address.fromString("alice@corp.example"),
                Address.fromString(rng.choice(["bob@corp.example", "ünï@xn--bcher-kva.example"])),
                rng.choice(["hi", "", text(20), "x" * 3000]),
                rng.choice(["text/plain", "text/html; q=1", text(12)]),
                timestamp=rng.choice([0.0, 1767225600.1255, rng.uniform(0, 2e9), -1.5]),
                mark=rng.choice([None, *MessageMark]),
            )
            if rng.random() < 0.5:
                object.__setattr__(message, "messageId", rng.choice(["m-1", "x" * 128, text(10) or "m"]))
            if rng.random() < 0.05:
                object.__setattr__(message, "sender", Address(rng.choice(["a b", "a\x00", "a\ud800", "ok"]), "corp.example"))
            if rng.random() < 0.05:
                object.__setattr__(message, "recipient", Address(rng.choice(["a b", "a\u3000", "a\x85", "ok"]), "corp.example"))
            out.append((rng.choice([1, 7, 2**31 - 1, rng.randrange(1, 2**31)]), message))
        return out

    def test_messageRequestBytes(self) -> None:
        """
        L{messageRequest} writes exactly what L{serialise} makes of the
        C{MESSAGE} delivering a message (its headers from
        L{_messageHeaders}), for fuzzed values, or leaves it to the general
        way (C{None}) when a value is not plain.
        """
        direct = general = 0
        for seq, message in self.fuzzedMessages(4000):
            try:
                body = message.body.encode("utf-8")
            except UnicodeEncodeError:
                continue
            data = messageRequest(seq, message, body)
            try:
                expected: object = serialise(
                    Request("MESSAGE", message.recipient.imURI(), Headers((("Seq", str(seq)),) + _messageHeaders(message)), body)
                )
            except ValueError:
                expected = None
            if data is None:
                general += 1
                continue
            direct += 1
            self.assertEqual(data, expected, (seq, message))
        self.assertGreater(direct, 2000)
        self.assertGreater(general, 200)

    def test_messageReceivedBytes(self) -> None:
        """
        A message delivered to a session is written as the general way
        writes it, whichever way it takes; one that cannot be serialised
        is logged and not written, its sequence number used (as before);
        a body that is not text (lone surrogates) raises, as before.
        """
        w = self.loggedIn()
        unsendable = 0
        for _, message in self.fuzzedMessages(500):
            seq = w.protocol._outstanding.sent + 1
            try:
                body = message.body.encode("utf-8")
            except UnicodeEncodeError:
                self.assertRaises(UnicodeEncodeError, w.protocol.messageReceived, message)
                self.assertEqual(w.protocol._outstanding.sent, seq - 1)
                continue
            try:
                expected = serialise(
                    Request("MESSAGE", message.recipient.imURI(), Headers((("Seq", str(seq)),) + _messageHeaders(message)), body)
                )
            except ValueError:
                expected = b""
                unsendable += 1
            w.protocol.messageReceived(message)
            self.assertEqual(w.transport.value(), expected, message)
            self.assertEqual(w.protocol._outstanding.sent, seq)
            w.transport.clear()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), unsendable)
        self.assertGreater(unsendable, 0)

    def test_presenceOncePerFanOut(self) -> None:
        """
        A presence told to many sessions is serialised once
        (L{presenceNotify}, asked once per fan-out: the recipients after
        the first find it by identity); each session gets the bytes the
        general way writes, with its own C{Seq}. One that cannot be
        serialised (a lone surrogate in the note) is logged and not
        written, as before, to every recipient.
        """
        presenceNotify.cache_clear()
        wires = [self.loggedIn(), self.loggedIn(), self.loggedIn("bob")]
        sender = Address.fromString("carol@corp.example")
        for presence in [Presence(PresenceState.AWAY, "back at 2"), Presence(PresenceState.ONLINE), Presence(PresenceState.BUSY, "\u2603\t")]:
            for w in wires:
                self.assertWritesGeneralNotify(w, sender, presence)
        self.assertEqual((presenceNotify.cache_info().misses, presenceNotify.cache_info().hits), (3, 0))
        unsendable = Presence(PresenceState.AWAY, "x")
        object.__setattr__(unsendable, "note", "\ud800")  # past the validation, as no face makes it
        for w in wires:
            w.transport.clear()
            w.protocol.presenceReceived(sender, unsendable)
            self.assertEqual(w.transport.value(), b"")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    def assertWritesGeneralNotify(self, w: Wire, sender: Address, presence: Presence) -> None:
        """
        The presence C{NOTIFY} a session's client gets from
        C{presenceReceived} is the one the general way serialises, with
        the session's next C{Seq}.
        """
        w.transport.clear()
        seq = w.protocol._outstanding.sent + 1
        w.protocol.presenceReceived(sender, presence)
        general = serialise(Request("NOTIFY", sender.presURI(), Headers.of(("Seq", str(seq)), *_presenceHeaders(presence))))
        self.assertEqual(w.transport.value(), general)

    def test_presenceWriterCalls(self) -> None:
        """
        A recipient of a fan-out after the first costs the native face its
        writer's call and one transport write: the request is counted for
        its C{Seq} without a call (L{test_presenceWriterCounts}), and the
        send queue guard is not called while the transport is not paused
        (it counts nothing then).
        """
        wires = [self.loggedIn(), self.loggedIn("bob")]
        sender = Address.fromString("carol@corp.example")
        presence = Presence(PresenceState.AWAY, "back at 2")
        wires[0].protocol.presenceReceived(sender, presence)
        package = str(FilePath(imgatewayPackage.__file__).parent().path)
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(package):
                calls.append(frame.f_code.co_name)

        w = wires[1]
        w.transport.clear()
        writes: list[bytes] = []
        write = w.transport.write

        def recording(data: bytes) -> None:
            writes.append(data)
            write(data)

        w.transport.write = recording  # type: ignore[method-assign]
        sys.setprofile(profile)
        try:
            w.protocol.presenceReceived(sender, presence)
        finally:
            sys.setprofile(None)
        self.assertEqual(len(writes), 1)
        self.assertEqual(w.transport.value(), writes[0])
        import imgateway.adapters.native.server as module

        if (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            # Compiled functions make no Python frames to count (the
            # pure-Python run of the same test counts them).
            raise SkipTest("compiled: no Python calls to count")
        self.assertEqual(calls, ["presenceReceived"])

    def test_presenceWriterCounts(self) -> None:
        """
        The presence writer numbers its C{NOTIFY}s as every request is
        numbered: past C{answer_window} the oldest is forgotten (an answer
        to it closes the connection), and after L{MAX_SEQ} the numbers
        start at 1 again.
        """
        self.factory.config = NativeConfig(answerWindow=3)
        sender = Address.fromString("carol@corp.example")
        w = self.loggedIn()
        w.frames()
        for note in "abcd":
            w.protocol.presenceReceived(sender, Presence(PresenceState.AWAY, note))
        seqs = [f.seq for f in w.frames() if isinstance(f, Request)]
        self.assertEqual(seqs, [1, 2, 3, 4])
        self.assertEqual(w.protocol._outstanding.unanswered, 3)
        w.raw(answer(2) + answer(3))
        w.raw(answer(1))
        self.assertEqual([(f.code, f.seq) for f in w.frames() if isinstance(f, Response)], [(400, 0)])
        self.assertTrue(w.transport.disconnecting)
        w = self.loggedIn("bob")
        w.frames()
        out = w.protocol._outstanding
        out.sent = out.floor = MAX_SEQ - 1
        for note in "abc":
            w.protocol.presenceReceived(sender, Presence(PresenceState.AWAY, note))
        self.assertEqual([f.seq for f in w.frames() if isinstance(f, Request)], [MAX_SEQ, 1, 2])
        w.raw(answer(MAX_SEQ) + answer(1) + answer(2))
        self.assertEqual((w.frames(), out.unanswered), ([], 0))

    def test_presenceInterleaved(self) -> None:
        """
        Fan-outs of different presences that follow each other, or the
        same presence from different senders, each give every session the
        bytes the general way writes, with its own C{Seq}.
        """
        wires = [self.loggedIn(), self.loggedIn("bob")]
        carol = Address.fromString("carol@corp.example")
        dave = Address.fromString("dave@corp.example")
        away, online = Presence(PresenceState.AWAY, "back at 2"), Presence(PresenceState.ONLINE)
        for sender, presence in [(carol, away), (carol, online), (dave, online), (carol, away), (carol, away)]:
            for w in wires:
                self.assertWritesGeneralNotify(w, sender, presence)


class TargetFormTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    Each method takes its target in the forms C{docs/protocol.md} §2
    gives; any other form is answered 400 naming the expected form, and
    the request is not processed.
    """

    def test_handlersShared(self) -> None:
        """
        The method table is one for all connections: a connection holds no
        table of its own (an idle session does not pay for it).
        """
        first, second = self.wire().protocol, self.wire().protocol
        self.assertFalse([k for k in vars(first) if "handler" in k.lower()])
        self.assertIs(_HANDLERS["PING"], type(first).do_PING)
        self.assertEqual(vars(first).keys(), vars(second).keys())

    def test_imTargetShortcut(self) -> None:
        """
        The face's shortcut for a C{MESSAGE}'s target (L{_isIMTarget}) says
        what L{targetForm} says of it being C{im:}, over targets made of
        schemes in every case (and characters whose case mapping is not
        ASCII's: C{İ}, C{ı}, the Kelvin sign), separators and rests, and
        over random ones; so a C{MESSAGE} is handled at once exactly when
        the general checks would let it through.
        """
        schemes = ["im", "IM", "Im", "iM", "pres", "İm", "ım", "iｍ", "\u212aim", "im ", " im", "", "i", "m", "xmpp", "imx", "mi"]
        rests = ["bob@corp.example", "", "*", ":", "im:", "x y", "\u0130"]
        targets = ["*", "im", "IM", "i", ""] + [f"{a}{sep}{b}" for a in schemes for sep in (":", "", "::", "@") for b in rests]
        rng = random.Random(11)
        alphabet = "imIMprs:@*. \u0130\u0131\u212a"
        targets += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(7))) for _ in range(5000)]
        for target in targets:
            self.assertEqual(_isIMTarget(target), targetForm(target) is TargetForm.IM, repr(target))

    def test_messageTargetsAnswered(self) -> None:
        """
        A C{MESSAGE} is answered the same whatever the case of its scheme,
        and one whose target has another form is refused with C{400},
        before and after login as before (C{401} first).
        """
        w = self.wire()
        self.assertEqual(w.call("MESSAGE", "im:bob@corp.example", body=b"hi").code, 401)
        w = self.loggedIn()
        self.loggedIn("bob").call("PUBLISH", "*", [("Presence", "online")])
        for target, code in [("im:bob@corp.example", 200), ("IM:bob@corp.example", 200), ("Im:bob@corp.example", 200),
                             ("pres:bob@corp.example", 400), ("bob@corp.example", 400), ("*", 400),
                             ("xmpp:bob@corp.example", 400), ("im:", 400), ("im:nobody", 400)]:  # fmt: skip
            self.assertEqual(w.call("MESSAGE", target, body=b"hi").code, code, target)

    def test_tableCoversMethods(self) -> None:
        """
        The table has a row for every method the server handles, and the
        spec's forms for each.
        """
        self.assertEqual(set(TARGETS), set(_HANDLERS))
        star = {TargetForm.STAR}
        self.assertEqual(
            {m: set(f) for m, f in TARGETS.items()},
            {
                **{m: star for m in ("OPTIONS", "AUTH", "PING", "BYE", "PUBLISH", "CONTACTS", "RULE")},
                **{m: {TargetForm.PRES} for m in ("SUBSCRIBE", "UNSUBSCRIBE", "AUTHORISE")},
                "MESSAGE": {TargetForm.IM},
                "ACCESS": {TargetForm.IM, TargetForm.DOMAIN, TargetForm.STAR},
            },
        )

    def answer(self, method: str, target: str) -> Response:
        """
        Send C{method} to C{target} with L{VALID_REQUEST}'s headers on a
        fresh connection (logged in as alice unless the method is C{AUTH}),
        and close it.
        """
        w = self.wire() if method == "AUTH" else self.loggedIn()
        headers, body = VALID_REQUEST[method]
        r = w.call(method, target, headers, body)
        w.protocol.connectionLost()
        return r

    def test_everyMethodAndForm(self) -> None:
        """
        Every method, with a target of every form: a form the method takes
        is served (C{MESSAGE} to bob, who is offline, gets 480); any other is answered 400 with a reason naming the
        forms the method takes.
        """
        for method, forms in TARGETS.items():
            for form, target in TARGET_OF_FORM.items():
                r = self.answer(method, target)
                if form in forms:
                    self.assertIn(r.code, (110, 200, 202, 480), (method, target, r))
                else:
                    self.assertEqual(
                        (r.code, r.reason),
                        (400, f"{method} takes {describeTargets(method)} as its target"),
                        (method, target),
                    )

    def test_reasons(self) -> None:
        """
        The reasons say the expected form as the spec writes it.
        """
        self.assertEqual(self.answer("SUBSCRIBE", "im:bob@corp.example").reason, "SUBSCRIBE takes pres:user@domain as its target")
        self.assertEqual(self.answer("MESSAGE", "pres:bob@corp.example").reason, "MESSAGE takes im:user@domain as its target")
        self.assertEqual(self.answer("PUBLISH", "im:bob@corp.example").reason, "PUBLISH takes * as its target")
        self.assertEqual(
            self.answer("ACCESS", "pres:bob@corp.example").reason, "ACCESS takes im:user@domain, a domain or * as its target"
        )

    def test_schemeCaseInsensitive(self) -> None:
        """
        URI schemes are compared without case.
        """
        self.assertEqual(self.answer("SUBSCRIBE", "PRES:bob@corp.example").code, 202)
        self.assertEqual(self.answer("MESSAGE", "Im:bob@corp.example").code, 480)

    def test_notProcessed(self) -> None:
        """
        A refused target changes nothing: bob hears of no subscription,
        gets no message, and alice's contact list and access lists stay
        empty.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        bob.call("PUBLISH", "*", [("Presence", "online")])
        bob.frames()
        self.assertEqual(alice.call("SUBSCRIBE", "im:bob@corp.example").code, 400)
        self.assertEqual(alice.call("SUBSCRIBE", "bob@corp.example").code, 400)
        self.assertEqual(alice.call("MESSAGE", "pres:bob@corp.example", [], b"hi").code, 400)
        self.assertEqual(alice.call("MESSAGE", "bob@corp.example", [], b"hi").code, 400)
        self.assertEqual(alice.call("ACCESS", "pres:bob@corp.example", [("List", "block")]).code, 400)
        self.assertEqual(alice.call("ACCESS", "bob@corp.example", [("List", "block")]).code, 400)
        self.assertEqual(bob.frames(), [])
        self.assertEqual(json.loads(alice.call("CONTACTS").body), {"contacts": [], "requests": []})
        self.assertEqual(json.loads(alice.call("ACCESS").body), {"allow": [], "block": []})

    def test_byeWithWrongTarget(self) -> None:
        """
        C{BYE} with a target other than C{*} is refused like any request:
        the connection stays open.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("BYE", "im:bob@corp.example").code, 400)
        self.assertFalse(w.transport.disconnecting)
        self.assertEqual(w.call("PING").code, 200)

    def test_loginFirst(self) -> None:
        """
        Before login, a method that needs it is answered 401 whatever its
        target; those allowed before login check their target (400).
        """
        w = self.wire()
        self.assertEqual(w.call("SUBSCRIBE", "im:bob@corp.example").code, 401)
        self.assertEqual(w.call("OPTIONS", "im:bob@corp.example").code, 400)
        self.assertEqual(w.call("AUTH", "corp.example", [("Mechanism", "PLAIN")], b"\0alice\0alice-pw").code, 400)
        self.assertEqual(w.call("FROB", "im:bob@corp.example").code, 405)

    def test_validForm(self) -> None:
        """
        A target of the right form whose address is invalid is answered
        400 too.
        """
        w = self.loggedIn()
        self.assertEqual(w.call("SUBSCRIBE", "pres:not-an-address").code, 400)
        self.assertEqual(w.call("ACCESS", "bad_domain!", [("List", "block")]).code, 400)


class CoreValuesTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    The face writes and reads the wire through its mapping tables, never
    through the core enums' values: with those values changed, every token
    and status code on the wire is still the spec's.
    """

    def setUp(self) -> None:
        scrambleCoreValues(self)
        super().setUp()

    def test_tokens(self) -> None:
        """
        Presence, subscription and access-list tokens in headers and JSON
        bodies, both ways, and the SUBSCRIBE answer codes.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        self.assertEqual(bob.call("PUBLISH", "*", [("Presence", "out-to-lunch"), ("Note", "back at 2")]).code, 200)
        self.assertEqual(alice.call("SUBSCRIBE", "pres:bob@corp.example").code, 202)
        [request] = [f for f in bob.frames() if isinstance(f, Request) and f.headers.get("Event") == "subscription"]
        self.assertEqual(request.headers.get("Subscription"), "subscribe")
        self.assertEqual(bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "allow")]).code, 200)
        notes = [f for f in alice.frames() if isinstance(f, Request)]
        self.assertIn(("subscription", "authorise"), [(n.headers.get("Event"), n.headers.get("Subscription")) for n in notes])
        self.assertIn(("presence", "out-to-lunch"), [(n.headers.get("Event"), n.headers.get("Presence")) for n in notes])
        [entry] = json.loads(alice.call("CONTACTS").body)["contacts"]
        self.assertEqual((entry["subscription"], entry["presence"]), ("to", "out-to-lunch"))
        self.assertEqual(alice.call("SUBSCRIBE", "pres:bob@corp.example").code, 200)
        self.assertEqual(alice.call("ACCESS", "corp.example", [("List", "BLOCK")]).code, 200)
        self.assertEqual(json.loads(alice.call("ACCESS").body), {"allow": [], "block": ["corp.example"]})
        self.assertEqual(alice.call("RULE", "*", [("Presence", "on-the-phone"), ("Alternate", "tel:1")]).code, 200)
        self.assertEqual(
            json.loads(alice.call("RULE").body),
            {"rules": [{"states": ["on-the-phone"], "action": "refuse", "alternate": "tel:1", "presence": "on-the-phone"}]},
        )

    def test_statusCodes(self) -> None:
        """
        Failed deliveries are answered with the spec's codes (an unknown
        user as an offline one: 480; a rule's 486 to a sender who may see
        the recipient's presence).
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        self.assertEqual(alice.call("MESSAGE", "im:nobody@corp.example", [], b"x").code, 480)
        self.assertEqual(alice.call("MESSAGE", "im:bob@corp.example", [], b"x").code, 480)
        alice.call("SUBSCRIBE", "pres:bob@corp.example")
        bob.call("AUTHORISE", "pres:alice@corp.example", [("Decision", "allow")])
        bob.call("RULE", "*", [("Presence", "busy"), ("Alternate", "tel:+15550100")])
        bob.call("PUBLISH", "*", [("Presence", "busy")])
        r = alice.call("MESSAGE", "im:bob@corp.example", [], b"x")
        self.assertEqual((r.code, r.headers.get("Alternate")), (486, "tel:+15550100"))
        bob.call("PUBLISH", "*", [("Presence", "online")])
        self.assertEqual(alice.call("MESSAGE", "im:bob@corp.example", [], b"x").code, 200)


def parse(table: dict[str, object]) -> NativeConfig:
    """
    Parse a C{[native]} table as the gateway does: unread keys are errors.
    """
    t = ConfigTable(table, "x.toml [native]")
    config = NativeAdapter().parseConfig(t, MemoryReactor())
    t.finish()
    return config


class IdleMemoryTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    What a logged-in connection does not keep (an idle session's memory,
    C{bench/README.md}, issue 11 session 8).
    """

    def labelled(self, user: str, label: str) -> Wire:
        w = self.wire()
        mech = clientMechanism("PLAIN", user, f"{user}-pw")
        r = w.call("AUTH", "*", [("Mechanism", "plain"), ("Label", label)], mech.start())
        self.assertEqual(r.code, 200)
        return w

    def test_slotReleasedAtLogin(self) -> None:
        """
        A connection keeps its place among the connections not logged in
        (its L{ConnectionSlot}, with its admission and its peer's address)
        until it logs in, not after; the counts are as before, and stay so
        when it closes.
        """
        w = self.wire()
        self.assertIsNotNone(w.protocol._slot)
        self.assertEqual(self.factory.unauthenticated, 1)
        self.assertEqual(w.login("alice", "alice-pw").code, 200)
        self.assertIsNone(w.protocol._slot)
        self.assertEqual(self.factory.unauthenticated, 0)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated(LOOPBACK.host), 0)
        w.protocol.connectionLost()
        self.assertEqual(self.factory.unauthenticated, 0)
        self.assertEqual(self.gateway.connectionLimiter.unauthenticated(LOOPBACK.host), 0)

    def test_slotKeptWhenLoginFails(self) -> None:
        """
        A connection whose login failed still counts as not logged in, in
        its slot (C{pre_auth_bytes} and C{max_unauthenticated} go on).
        """
        w = self.wire()
        self.assertEqual(w.login("alice", "wrong").code, 401)
        self.assertIsNotNone(w.protocol._slot)
        self.assertEqual(self.factory.unauthenticated, 1)

    def test_limitsShared(self) -> None:
        """
        The framing limits are made once per configuration: every
        connection's parser has the same L{Limits}, not a copy of its own.
        """
        self.assertIs(self.config.limits, self.config.limits)
        self.assertEqual(
            self.config.limits,
            Limits(
                self.config.maxStartLineBytes, self.config.maxHeaderBytes, self.config.maxHeaders, self.config.maxBodyBytes
            ),
        )

    def test_labelAndMechanismInterned(self) -> None:
        """
        Two sessions with the same label (and mechanism), each parsed from
        its own request, keep one string between them.
        """
        a, b = self.labelled("alice", "phone"), self.labelled("bob", "phone")
        self.assertIs(a.protocol.sessionLabel, b.protocol.sessionLabel)
        self.assertIs(a.protocol.mechanismName, b.protocol.mechanismName)
        self.assertEqual((a.protocol.mechanismName, a.protocol.sessionLabel), ("PLAIN", "phone"))
        assert a.protocol.session is not None and b.protocol.session is not None
        self.assertIs(a.protocol.session.label, b.protocol.session.label)

    def test_perConnectionObjectsWithoutDict(self) -> None:
        """
        The token bucket, the table of outstanding requests and the send
        queue guard of a connection have no instance dictionary
        (C{__slots__}).
        """
        w = self.loggedIn()
        for name in ("_bucket", "_outstanding", "_sendGuard"):
            self.assertFalse(hasattr(getattr(w.protocol, name), "__dict__"), name)


class CompilableTests(SynchronousTestCase):
    """
    What the compiled build (mypyc, L{imgateway._compiled}) needs of
    C{adapters/native/server.py}, checked on its source: mypy 2.4's mypyc
    stops with an internal error on a function nested in a method of a
    class it cannot make native (an C{@implementer} class), and a compiled
    module crashes at import when a class annotation names a class defined
    further down without quotes.
    """

    def source(self) -> ast.Module:
        import imgateway.adapters.native.server as module

        path = FilePath(module.__file__ or "").sibling("server.py")
        return ast.parse(path.getContent())

    def test_noNestedFunctionsInMethods(self) -> None:
        """
        No method of a class holds a nested function or a lambda.
        """
        nested = []
        for cls in [n for n in ast.walk(self.source()) if isinstance(n, ast.ClassDef)]:
            for method in [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                for node in ast.walk(method):
                    if node is not method and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                        nested.append(f"{cls.name}.{method.name}:{node.lineno}")
        self.assertEqual(nested, [])

    def test_forwardAnnotationsQuoted(self) -> None:
        """
        A class annotation naming a class of the module defined after it is
        a string.
        """
        tree = self.source()
        defined = {n.name: n.lineno for n in tree.body if isinstance(n, ast.ClassDef)}
        unquoted = []
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            for item in cls.body:
                if isinstance(item, ast.AnnAssign):
                    for name in [n.id for n in ast.walk(item.annotation) if isinstance(n, ast.Name)]:
                        if defined.get(name, 0) > cls.lineno:
                            unquoted.append(f"{cls.name}: {name}")
        self.assertEqual(unquoted, [])


class ConfigTests(SynchronousTestCase):
    """
    The C{[native]} table.
    """

    def test_defaults(self) -> None:
        """
        An empty table gives the documented defaults.
        """
        self.assertEqual(parse({}), NativeConfig())

    def test_unknownKey(self) -> None:
        """
        An unknown key is an error naming the table and key.
        """
        e = self.assertRaises(ConfigError, parse, {"max_bodybytes": 1})
        self.assertEqual(str(e), "x.toml [native]: max_bodybytes: unknown key")

    def test_badEndpoint(self) -> None:
        """
        A listen entry that is not an endpoint string is an error.
        """
        e = self.assertRaises(ConfigError, parse, {"listen": ["bogus:1"]})
        self.assertIn("listen: bad endpoint 'bogus:1'", str(e))

    def test_badValue(self) -> None:
        """
        A limit of the wrong type or not positive is an error.
        """
        self.assertRaises(ConfigError, parse, {"max_body_bytes": "big"})
        self.assertRaises(ConfigError, parse, {"max_body_bytes": 0})
        self.assertRaises(ConfigError, parse, {"allow_plaintext_auth": 1})

    def test_turnAndWindow(self) -> None:
        """
        C{frames_per_turn} and C{answer_window} are read; the window must
        stay below the largest sequence number (so that a number is never
        reused inside it).
        """
        self.assertEqual(
            (parse({"frames_per_turn": 7, "answer_window": 100}).framesPerTurn, parse({"answer_window": 100}).answerWindow),
            (7, 100),
        )
        self.assertEqual(parse({"answer_window": 2**31 - 2}).answerWindow, 2**31 - 2)
        e = self.assertRaises(ConfigError, parse, {"answer_window": 2**31 - 1})
        self.assertIn("answer_window: must be below 2147483647", str(e))
        self.assertRaises(ConfigError, parse, {"frames_per_turn": 0})

    def test_preAuthBytes(self) -> None:
        """
        C{pre_auth_bytes} is read, and must be positive.
        """
        self.assertEqual(parse({"pre_auth_bytes": 5000}).preAuthBytes, 5000)
        self.assertRaises(ConfigError, parse, {"pre_auth_bytes": 0})


class GatheredWriteTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    What a read makes the face write to a connection after its first frame
    (L{imgateway.net.gather}) is kept and written in one C{transport.write}
    once the read is handled: in the order written, before a close, and
    counted by the send queue guard.
    """

    def writes(self, wire: Wire) -> list[bytes]:
        """
        Record each C{transport.write} of C{wire}'s connection from now on.
        """
        writes: list[bytes] = []
        write = wire.transport.write

        def recording(data: bytes) -> None:
            writes.append(data)
            write(data)

        self.patch(wire.transport, "write", recording)
        return writes

    def test_oneReadTwoWrites(self) -> None:
        """
        A read of five C{MESSAGE}s to a user online here: the sender's five
        C{200}s reach its transport in two writes (the first as it comes,
        the others at the end of the read), the recipient's five
        C{MESSAGE}s in two; every frame in the order it was written.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        bob.call("PUBLISH", "*", [("Presence", "online")])
        toAlice, toBob = self.writes(alice), self.writes(bob)
        data = b"".join(
            serialise(Request("MESSAGE", "im:bob@corp.example", Headers.of(("Seq", str(n)), ("Message-ID", f"m{n}")), b"%d" % n))
            for n in range(10, 15)
        )
        alice.raw(data)
        self.assertEqual((len(toAlice), len(toBob)), (2, 2))
        self.assertFalse(GATHER.active)
        answers = alice.frames()
        self.assertEqual([(r.seq, r.code, r.headers.get("Message-ID")) for r in answers], [(n, 200, f"m{n}") for n in range(10, 15)])  # type: ignore[union-attr]
        self.assertEqual([m.body for m in bob.frames()], [b"%d" % n for n in range(10, 15)])

    def test_outsideReadAtOnce(self) -> None:
        """
        Outside a read (a call from a timer, another face, a test), each
        frame is written as it comes.
        """
        bob = self.loggedIn("bob")
        writes = self.writes(bob)
        carol = Address.fromString("carol@corp.example")
        for n in range(3):
            bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), f"m{n}"))
        self.assertEqual(len(writes), 3)

    def test_orderWithPresence(self) -> None:
        """
        Within a read, a presence C{NOTIFY} written after kept frames is
        kept behind them, and frames after it behind it: the connection's
        frames go out in the order written.
        """
        bob = self.loggedIn("bob")
        writes = self.writes(bob)
        carol = Address.fromString("carol@corp.example")
        bobAddress = Address.fromString("bob@corp.example")
        self.assertTrue(GATHER.begin())
        try:
            bob.protocol.messageReceived(Message(carol, bobAddress, "one"))
            bob.protocol.messageReceived(Message(carol, bobAddress, "two"))
            bob.protocol.presenceReceived(carol, Presence(PresenceState.AWAY, "away"))
            bob.protocol.messageReceived(Message(carol, bobAddress, "three"))
            self.assertEqual(len(writes), 1)
        finally:
            GATHER.end()
        self.assertEqual(len(writes), 2)
        frames = bob.frames()
        self.assertEqual(
            [(f.method, f.body) for f in frames],  # type: ignore[union-attr]
            [("MESSAGE", b"one"), ("MESSAGE", b"two"), ("NOTIFY", b""), ("MESSAGE", b"three")],
        )

    def test_presenceFirstAtOnce(self) -> None:
        """
        Within a read, a presence C{NOTIFY} to a connection that holds
        nothing is written at once; what comes after it is kept.
        """
        bob = self.loggedIn("bob")
        writes = self.writes(bob)
        carol = Address.fromString("carol@corp.example")
        self.assertTrue(GATHER.begin())
        try:
            bob.protocol.presenceReceived(carol, Presence(PresenceState.AWAY, "away"))
            bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), "one"))
            bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), "two"))
            self.assertEqual(len(writes), 1)
        finally:
            GATHER.end()
        self.assertEqual([(f.method, f.body) for f in bob.frames()], [("NOTIFY", b""), ("MESSAGE", b"one"), ("MESSAGE", b"two")])  # type: ignore[union-attr]
        self.assertEqual(len(writes), 2)

    def test_closeWritesKeptFirst(self) -> None:
        """
        A connection closed within a read (a C{BYE}) writes what it kept
        before it asks its transport to close.
        """
        bob = self.loggedIn("bob")
        carol = Address.fromString("carol@corp.example")
        atClose: list[bytes] = []
        loseConnection = bob.transport.loseConnection

        def closing() -> None:
            atClose.append(bob.transport.value())
            loseConnection()

        self.patch(bob.transport, "loseConnection", closing)
        self.assertTrue(GATHER.begin())
        try:
            bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), "one"))
            bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), "two"))
            bob.protocol.bye("shutdown")
        finally:
            GATHER.end()
        [value] = atClose
        frames = list(FrameParser().feed(value))
        self.assertEqual([f.method for f in frames], ["MESSAGE", "MESSAGE", "BYE"])  # type: ignore[union-attr]
        self.assertEqual(bob.transport.value(), value)

    def test_lostWithinRead(self) -> None:
        """
        A connection lost while it holds frames: the read goes on, the
        other connections' frames are written, nothing is logged.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        carol = Address.fromString("carol@corp.example")
        self.assertTrue(GATHER.begin())
        try:
            for n in range(2):
                bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), f"b{n}"))
                alice.protocol.messageReceived(Message(carol, Address.fromString("alice@corp.example"), f"a{n}"))
            bob.protocol.connectionLost()
        finally:
            GATHER.end()
        self.assertEqual([f.body for f in alice.frames()], [b"a0", b"a1"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_guardCountsKeptFrames(self) -> None:
        """
        Frames kept while the transport is paused count for the send queue
        guard one by one, as they would written one by one: past
        C{max_send_queue_bytes} (besides the largest frame) the connection
        is dropped.
        """
        self.config = NativeConfig(maxSendQueueBytes=2000)
        self.setUp()
        bob = self.loggedIn("bob")
        guard = bob.protocol._sendGuard
        assert guard is not None
        guard.pauseProducing()
        carol = Address.fromString("carol@corp.example")
        self.assertTrue(GATHER.begin())
        try:
            for n in range(4):
                bob.protocol.messageReceived(Message(carol, Address.fromString("bob@corp.example"), "x" * 1000))
            self.assertFalse(bob.transport.disconnecting)
        finally:
            GATHER.end()
        # Dropped by the third frame, as written one by one: each counted
        # as a write of its own (the largest is one frame, not the four).
        self.assertTrue(bob.transport.disconnecting)
        self.assertTrue(guard.tripped)
        frame = len(bob.transport.value()) // 4
        self.assertEqual((guard.pending, guard.largest), (3 * frame, frame))


class SendQueueTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    C{max_send_queue_bytes}: a client that does not read is dropped.
    """

    config = NativeConfig(maxSendQueueBytes=2000)

    def test_slowReaderDropped(self) -> None:
        """
        While the transport is paused (its buffer is full), writes count
        (but the largest one); past the limit the connection is aborted and
        the session closed. A transport that resumes starts the count again.
        """
        alice, bob = self.loggedIn("alice"), self.loggedIn("bob")
        bob.call("PUBLISH", "*", [("Presence", "online")])
        guard = bob.protocol._sendGuard
        assert guard is not None
        self.assertIs(bob.transport.producer, guard)
        guard.pauseProducing()
        alice.call("MESSAGE", "im:bob@corp.example", [], b"x" * 1000)
        guard.resumeProducing()
        guard.pauseProducing()
        alice.call("MESSAGE", "im:bob@corp.example", [], b"x" * 1000)
        # Twisted pauses again on every write while its buffer stays full.
        guard.pauseProducing()
        alice.call("MESSAGE", "im:bob@corp.example", [], b"x" * 1000)
        self.assertFalse(bob.transport.disconnecting)
        alice.call("MESSAGE", "im:bob@corp.example", [], b"x" * 1000)
        self.assertTrue(bob.transport.disconnecting)
        bob.protocol.connectionLost()
        self.assertEqual(alice.call("MESSAGE", "im:bob@corp.example", [], b"x").code, 480)


    def test_slowPresenceReaderDropped(self) -> None:
        """
        Presence C{NOTIFY}s written while the transport is paused count as
        messages do: every one of them, and the connection is aborted by
        the one that takes the count past the limit, besides the largest
        write.
        """
        bob = self.loggedIn("bob")
        guard = bob.protocol._sendGuard
        assert guard is not None
        carol = Address.fromString("carol@corp.example")
        guard.pauseProducing()
        bob.transport.clear()
        n = 0
        while not bob.transport.disconnecting and n < 100:
            n += 1
            bob.protocol.presenceReceived(carol, Presence(PresenceState.AWAY, f"{n:0100}"))
        self.assertTrue(bob.transport.disconnecting)
        self.assertEqual(guard.pending, len(bob.transport.value()))
        self.assertGreater(guard.pending - guard.largest, 2000)
        self.assertLessEqual(guard.pending - 2 * guard.largest, 2000)


class PasswordDirectoryLoginTests(SynchronousTestCase):
    """
    Logins when the directory checks passwords itself and keeps no SCRAM
    verifiers (LDAP): PLAIN only, where PLAIN may be used.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = PasswordCheckingDirectory()
        self.gateway = memoryGateway(self.clock, directory=self.directory)
        self.directory.addUser(Address.fromParts("alice", "corp.example"), "alice-pw")
        self.factory = NativeServerFactory(self.gateway, NativeConfig(), self.clock)

    def test_plainOnly(self) -> None:
        """
        OPTIONS offers PLAIN alone on loopback or TLS, and nothing on an
        unencrypted connection from elsewhere (where PLAIN gets 426).
        """
        self.assertEqual(Wire(self.factory, LOOPBACK).call("OPTIONS").headers.get("Mechanisms"), "PLAIN")
        self.assertEqual(Wire(self.factory, REMOTE, secure=True).call("OPTIONS").headers.get("Mechanisms"), "PLAIN")
        remote = Wire(self.factory, REMOTE)
        self.assertEqual(remote.call("OPTIONS").headers.get("Mechanisms"), "")
        self.assertEqual(remote.login("alice", "alice-pw").code, 426)

    def test_scramUnknown(self) -> None:
        """
        A SCRAM mechanism gets 401, as an unknown mechanism (it is not
        offered), on any connection; the directory is not asked.
        """
        for wire in (Wire(self.factory, LOOPBACK), Wire(self.factory, REMOTE)):
            r = wire.call("AUTH", "*", [("Mechanism", "SCRAM-SHA-256")], clientMechanism("SCRAM-SHA-256", "alice", "x").start())
            self.assertEqual((r.code, r.reason), (401, "Unknown mechanism SCRAM-SHA-256"))
        self.assertEqual(self.directory.checked, [])

    def test_plainLogin(self) -> None:
        """
        PLAIN logs in with the password the directory accepts; a wrong
        password and an unknown user get the same 401.
        """
        w = Wire(self.factory, LOOPBACK)
        self.assertEqual(w.login("alice", "alice-pw").code, 200)
        wrong = Wire(self.factory, LOOPBACK).login("alice", "nope")
        unknown = Wire(self.factory, LOOPBACK).login("nobody", "nope")
        self.assertEqual((wrong.code, wrong.reason, wrong.headers.get("Error")), (401, unknown.reason, "not-authorized"))
        self.assertEqual((unknown.code, unknown.headers.get("Error")), (401, "not-authorized"))


class InstanceMemoryTests(NativeFaceTestsMixin, SynchronousTestCase):
    """
    What a logged-in connection's instance costs: its attributes' keys
    shared with the class's other instances (a split dictionary).
    """

    def test_keysShared(self) -> None:
        """
        A logged-in, idle connection's instance dictionary holds only its
        values, its keys being shared with the other instances'. CPython
        shares at most 29 keys: a 30th attribute gave every session a
        dictionary of its own keys, 1,584 bytes against 296 (1.3 KiB of
        each idle session). An attribute too many fails this test: merge
        two, or move one to an object that not every connection needs.
        """
        w = self.wire()
        self.assertEqual(w.login("alice", "alice-pw").code, 200)
        self.wire().login("bob", "bob-pw")
        attributes = getattr(w.protocol, "__dict__", None)
        if attributes is None:
            raise SkipTest("a compiled class: its attributes are in its layout, not in a dictionary")
        shared = sys.getsizeof(attributes)
        combined = sys.getsizeof(dict(attributes))
        self.assertLess(shared, combined / 2, f"{len(attributes)} attributes: {sorted(attributes)}")
