"""
End-to-end tests of the s2s listener against hostile peers: the real
C{twistd imgateway} federating with a real Prosody (dialback, STARTTLS
required, static routes on loopback) while attackers on other loopback
addresses (a socket bound to 127.0.0.2 is another source) hold s2s
connections in a stalled TLS handshake and flood dialback requests for
domains whose servers never answer. The federation link keeps working,
the attackers get no more than their per-source share, and the stalled
connections are dropped on time.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, GatewayProcess, _Waiters, freePort, makeCertificates, reactor
from tests.e2e.prosody import ProsodyProcess
from tests.e2e.test_hostile_logins import Stalling, connectFrom, connectMany, waitUntil
from tests.e2e.test_xmpp_component_prosody import NativeAlice

ALICE = f"alice@{DOMAIN}"
ROMEO = "romeo@xmpp.example"
USERS = {"romeo": "romeo's pw"}

S2S_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    f" xmlns:db='jabber:server:dialback' to='{DOMAIN}' version='1.0'>"
).encode()
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"

#: Seconds the gateway gives an incoming stream to authenticate.
NEGOTIATION_TIMEOUT = 10

#: Dialback verifications the gateway runs at once, in all and per address.
PENDING_DIALBACK, PENDING_DIALBACK_PER_ADDRESS = 6, 4

#: Domains the flooder claims; their routes lead to a server that never
#: answers, so each verification stays pending.
EVIL = [f"evil{n}.example" for n in range(10)]


class S2SStalling(Stalling):
    """
    An s2s attacker that opens a stream, asks for STARTTLS and, after
    C{<proceed/>}, sends the first bytes of a ClientHello and nothing more.
    """

    def __init__(self) -> None:
        super().__init__(xmpp=True)

    def connectionMade(self) -> None:
        self.openedAt = time.monotonic()
        assert self.transport is not None
        self.transport.write(S2S_HEADER)


class DialbackFlooder(_Waiters, Protocol):
    """
    An attacker that opens an s2s stream, does STARTTLS (checking nothing),
    then sends a C{db:result} for each of L{EVIL} at once: each makes the
    gateway verify a key with that domain's server.

    @ivar received: What the gateway sent after the TLS handshake.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = "features"
        self.received = b""
        self._buffer = b""
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(S2S_HEADER)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self._buffer += data
        if self.state == "features" and b"</stream:features>" in self._buffer:
            self.state = "proceed"
            self.transport.write(STARTTLS)
        elif self.state == "proceed" and b"<proceed" in self._buffer:
            self.state = "tls"
            self._buffer = b""
            self.transport.startTLS(CertificateOptions())  # type: ignore[attr-defined]
            self.transport.write(S2S_HEADER)
        elif self.state == "tls" and b"</stream:features>" in self._buffer:
            self.state = "sent"
            self.transport.write(
                b"".join(f"<db:result from='{d}' to='{DOMAIN}'>key-{d}</db:result>".encode() for d in EVIL)
            )
        if self.state in ("tls", "sent"):
            self.received = self._buffer
        self._changed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        self._changed()

    def refusals(self) -> int:
        """
        @return: How many C{db:result}s were answered with a
            C{resource-constraint} error.
        """
        return self.received.count(b"type='error'") if b"resource-constraint" in self.received else 0


class Silent(Protocol):
    """
    A server that accepts connections and never says anything.
    """

    accepted = 0

    def connectionMade(self) -> None:
        Silent.accepted += 1


class HostileFederationTests(TestCase):
    """
    A real federation link survives attackers on the s2s listener.
    """

    async def test_federationSurvives(self) -> None:
        """
        With 150 s2s connections from 127.0.0.2 stalled in their STARTTLS
        handshake (at most C{max_unauthenticated_per_address}, 32, are
        kept) and a stream from 127.0.0.3 asking to verify 10 dialback keys
        with servers that never answer (4 are verified at once, the others
        get a C{resource-constraint} error), a Prosody user and a gateway
        user add each other, see each other online and talk. The stalled
        connections are dropped C{s2s_negotiation_timeout} after their TCP
        accept, and the silent servers see no more connections than the
        verifications allowed (each retried at most once). (Before the
        per-source limits, the stalled connections took every one of the
        100 incoming stream slots, and Prosody's stream was refused.)
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        _, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        silent = reactor().listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        Silent.accepted = 0
        s2sPort = freePort()
        prosody = ProsodyProcess(
            self, users=USERS, peers={DOMAIN: s2sPort}, trust=[], s2sRequireEncryption=True, s2sSecureAuth=False, dialback=True
        )
        routes = {prosody.domain: f"tcp:127.0.0.1:{prosody.s2sPort}"}
        routes.update({d: f"tcp:127.0.0.1:{silent.getHost().port}" for d in EVIL})
        xmpp: dict[str, Any] = {
            "listen": [],
            "certificate": pem,
            "private_key": pem,
            "federation": True,
            "s2s_listen": [f"tcp:{s2sPort}:interface=127.0.0.1:backlog=1024"],
            "s2s_routes": routes,
            "s2s_use_dns": False,
            "s2s_verify_certificates": False,
            "s2s_negotiation_timeout": NEGOTIATION_TIMEOUT,
            "s2s_max_pending_dialback": PENDING_DIALBACK,
            "s2s_max_pending_dialback_per_address": PENDING_DIALBACK_PER_ADDRESS,
        }
        gw = GatewayProcess(self, {"xmpp": xmpp}, directory=os.path.join(directory, "gw"))
        gw.waitPorts.append(s2sPort)
        gw.addUser("alice", "alice's pw")
        await prosody.start()
        await gw.start()

        flooder = DialbackFlooder()
        await connectFrom(self, "127.0.0.3", s2sPort, flooder)
        await flooder.waitFor(lambda: flooder.refusals() >= len(EVIL) - PENDING_DIALBACK_PER_ADDRESS or None, 10.0, "refused verifications")
        stalled = [S2SStalling() for _ in range(150)]
        await connectMany(self, "127.0.0.2", [(s2sPort, a) for a in stalled])
        held = await waitUntil(lambda: len([a for a in stalled if a.closedAt is None]) <= 32, 5.0)
        self.assertTrue(held, f"{len([a for a in stalled if a.closedAt is None])} stalled connections open")
        kept = [a for a in stalled if a.closedAt is None]
        self.assertTrue(kept and all(a.proceeded for a in kept))

        # The real federation, while the attackers hold what they may.
        proto, recorder = await gw.client("alice", "alice's pw")
        alice = NativeAlice(proto, recorder)
        romeo = await prosody.agent("romeo")
        romeo.subscribe(ALICE)
        await alice.waitForSubscribe(ROMEO)
        self.assertTrue(any(a.closedAt is None for a in kept), "the attack ended before the link came up")
        await alice.authorise(ROMEO)
        await romeo.waitForPresence(ALICE, timeout=10)
        await alice.subscribe(ROMEO)
        await romeo.waitForSubscribe(ALICE, timeout=10)
        romeo.approve(ALICE)
        await alice.waitForPresence(ROMEO, PresenceState.ONLINE)
        await alice.send(ROMEO, "hello romeo, under attack")
        await romeo.waitForMessage(ALICE, "hello romeo, under attack", timeout=10)
        romeo.message(ALICE, "hi alice")
        await alice.waitForMessage(ROMEO, "hi alice")

        # The stalled connections go on time.
        closed = await waitUntil(lambda: all(a.closedAt is not None for a in stalled), NEGOTIATION_TIMEOUT + 5.0)
        self.assertTrue(closed, f"{len([a for a in stalled if a.closedAt is None])} stalled connections still open")
        lifetimes = sorted(a.closedAt - a.openedAt for a in kept if a.closedAt is not None)
        self.assertGreater(lifetimes[0], NEGOTIATION_TIMEOUT - 0.5, "dropped before the negotiation timeout")
        self.assertLess(lifetimes[-1], NEGOTIATION_TIMEOUT + 3.0, "dropped long after the negotiation timeout")
        self.assertLessEqual(Silent.accepted, 2 * PENDING_DIALBACK_PER_ADDRESS)
        log = gw.log()
        self.assertIn("Refusing a s2s connection from", log)
        self.assertIn("(source 127.0.0.2)", log)
        self.assertIn("s2s_max_pending_dialback_per_address", log)
        self.assertIn("during its TLS handshake", log)


class ListenerTests(TestCase):
    """
    The s2s listener's start-up error.
    """

    async def test_portInUse(self) -> None:
        """
        A taken C{s2s_listen} port stops start-up: non-zero exit, one line
        naming the endpoint, no traceback.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        _, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        taken = freePort()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", taken))
        holder.listen(1)
        endpoint = f"tcp:{taken}:interface=127.0.0.1"
        xmpp = {"listen": [], "certificate": pem, "private_key": pem, "federation": True, "s2s_listen": [endpoint], "s2s_use_dns": False}
        gw = GatewayProcess(self, {"xmpp": xmpp}, directory=os.path.join(directory, "gw"), checkLog=False)
        code, _ = await gw.runUntilExit()
        self.assertEqual(code, 1)
        output = gw.output() + gw.log()
        self.assertIn(f"imgateway: cannot listen on {endpoint}", output)
        self.assertNotIn("Traceback", output)
