"""
End-to-end tests of XMPP federation through the real gateway: C{twistd
imgateway} with C{federation = true} and a real Prosody serving
C{xmpp.example}, joined by server-to-server streams on loopback (static
routes both ways, no DNS). A slixmpp user on Prosody and a native user on
the gateway add each other, see each other's presence and talk.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from imgateway.core.errors import DeliveryError, UserOffline
from imgateway.core.presence import PresenceState
from tests.e2e.harness import REPO_ROOT, DOMAIN, GatewayProcess, failureOf, freePort, makeCertificates, reactor
from tests.e2e.peerserver import PeerServerProcess
from tests.e2e.prosody import ProsodyProcess
from tests.e2e.xmppclient import XMPPAgent, connectAgent
from tests.e2e.test_xmpp_component_prosody import NativeAlice

ALICE = f"alice@{DOMAIN}"
ROMEO = "romeo@xmpp.example"
JULIET = "juliet@xmpp.example"
USERS = {"romeo": "romeo's pw", "juliet": "juliet's pw"}


class FederationGatewayTests(TestCase):
    """
    The gateway federating with Prosody.
    """

    #: The authority of the gateway's certificate (set by L{gateway}).
    caPath: str

    #: The gateway's XMPP c2s port (set by L{gateway}, served with C{c2s}).
    c2sPort: int

    def gateway(
        self, directory: str, certificates: tuple[str, str], s2sPort: int, peer: PeerServerProcess, verify: bool, c2s: bool
    ) -> GatewayProcess:
        """
        A federating gateway for C{peer}'s domain, with the account alice;
        not started yet.

        @param directory: Where the gateway's folder goes.
        @param certificates: The paths of its authority (L{caPath}) and of
            the folder of its C{<DOMAIN>.pem}, as L{makeCertificates} gives.
        @param s2sPort: The port it takes s2s streams on.
        @param verify: Whether it verifies certificates (otherwise dialback).
        @param c2s: Whether it also serves XMPP clients, on L{c2sPort}
            (STARTTLS).
        """
        self.caPath, serverDir = certificates
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        self.c2sPort = freePort()
        xmpp: dict[str, Any] = {
            "listen": [f"tcp:{self.c2sPort}:interface=127.0.0.1"] if c2s else [],
            "certificate": pem,
            "private_key": pem,
            "federation": True,
            "s2s_listen": [f"tcp:{s2sPort}:interface=127.0.0.1"],
            "s2s_routes": {peer.domain: f"tcp:127.0.0.1:{peer.s2sPort}"},
            "s2s_use_dns": False,
            "s2s_verify_certificates": verify,
        }
        if verify:
            assert peer.caPath is not None
            xmpp["s2s_trust_roots"] = peer.caPath
        gw = GatewayProcess(self, {"xmpp": xmpp}, directory=os.path.join(directory, "gw"))
        gw.waitPorts += [s2sPort, self.c2sPort] if c2s else [s2sPort]
        gw.addUser("alice", "alice's pw")
        return gw

    async def federate(self, verify: bool, c2s: bool = False) -> tuple[GatewayProcess, PeerServerProcess]:
        """
        Start Prosody and a federating gateway.

        @param verify: Authenticate with certificates both ways (Prosody's
            C{s2s_secure_auth}, our certificate verification); otherwise
            with dialback.
        @param c2s: Whether the gateway also serves XMPP clients (see
            L{gateway}).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certificates = makeCertificates(directory, DOMAIN)
        s2sPort = freePort()
        prosody = ProsodyProcess(
            self,
            users=USERS,
            peers={DOMAIN: s2sPort},
            trust=[certificates[0]] if verify else [],
            s2sRequireEncryption=True,
            s2sSecureAuth=verify,
            dialback=not verify,
        )
        gw = self.gateway(directory, certificates, s2sPort, prosody, verify, c2s)
        await prosody.start()
        await gw.start()
        return gw, prosody

    async def befriend(self, alice: NativeAlice, romeo: XMPPAgent) -> None:
        """
        Romeo (on Prosody) and alice (on the gateway) add each other; each
        sees the other online.
        """
        # Romeo adds alice; she authorises.
        romeo.subscribe(ALICE)
        await alice.waitForSubscribe(ROMEO)
        await alice.authorise(ROMEO)
        await romeo.waitForPresence(ALICE, timeout=10)

        # She adds him back; he approves; each sees the other.
        await alice.subscribe(ROMEO)
        await romeo.waitForSubscribe(ALICE, timeout=10)
        romeo.approve(ALICE)
        await alice.waitForPresence(ROMEO, PresenceState.ONLINE)

    async def scenario(self, gw: GatewayProcess, prosody: PeerServerProcess) -> None:
        proto, recorder = await gw.client("alice", "alice's pw")
        alice = NativeAlice(proto, recorder)
        romeo = await prosody.agent("romeo")
        await self.befriend(alice, romeo)

        # Busy is dnd with its status text, both ways.
        alice.publish(PresenceState.BUSY, "in a meeting")
        await romeo.waitForPresence(ALICE, "dnd", "in a meeting", timeout=10)
        romeo.setPresence("dnd", "on a call")
        await alice.waitForPresence(ROMEO, PresenceState.BUSY, "on a call")

        # Messages both ways.
        await alice.send(ROMEO, "hello romeo over s2s")
        await romeo.waitForMessage(ALICE, "hello romeo over s2s", timeout=10)
        romeo.message(ALICE, "hi alice & co")
        await alice.waitForMessage(ROMEO, "hi alice & co")

        # Our errors reach Romeo as stanza errors that do not tell whether
        # an account exists: no such user and blocked are both
        # service-unavailable (RFC 6121 8.5, XEP-0191 3.4).
        romeo.message(f"ghost@{DOMAIN}", "anyone?")
        ghost = await romeo.waitForEvent("message", sender=f"ghost@{DOMAIN}", type="error", timeout=10)
        self.assertIn("service-unavailable", str(ghost["error"]))
        await proto.setAccess(ROMEO, "block")
        romeo.message(ALICE, "still there?")
        blocked = await romeo.waitForEvent("message", sender=ALICE, type="error", timeout=10)
        self.assertIn("service-unavailable", str(blocked["error"]))
        await proto.setAccess(ROMEO, "none")

        # Juliet is not logged in: Prosody bounces, alice gets 480.
        e = await failureOf(alice.send(JULIET, "are you there?"), DeliveryError)
        self.assertIsInstance(e, UserOffline)

        # Romeo leaves: alice sees him offline.
        await romeo.stop()
        await alice.waitForPresence(ROMEO, PresenceState.OFFLINE)

    async def test_certificates(self) -> None:
        """
        With certificates verified both ways (SASL EXTERNAL, no dialback),
        the whole scenario works.
        """
        gw, prosody = await self.federate(verify=True)
        await self.scenario(gw, prosody)

    async def test_dialback(self) -> None:
        """
        With dialback (neither side trusts the other's authority), the whole
        scenario works.
        """
        gw, prosody = await self.federate(verify=False)
        await self.scenario(gw, prosody)

    async def test_presenceKeptWhileOffline(self) -> None:
        """
        The presence a contact on the peer server sends while alice has no
        session is kept by the gateway: logging in, the one-shot
        C{imgateway-client presence} and an XMPP client see the contact's
        latest state and note in what they are first told, while the peer
        server is frozen and so cannot answer the probes their logins send.
        """
        gw, peer = await self.federate(verify=False, c2s=True)
        proto, recorder = await gw.client("alice", "alice's pw")
        romeo = await peer.agent("romeo")
        await self.befriend(NativeAlice(proto, recorder), romeo)

        # Alice leaves; Romeo sees her go.
        await proto.bye()
        await romeo.waitForPresence(ALICE, type="unavailable", timeout=10)

        # While she is away, Romeo's presence changes twice. After each, a
        # message to her comes back as an error: the gateway handles what
        # one contact sends one user in order, so his presence for her has
        # been dealt with by then.
        for show, status in [("away", "at lunch"), ("dnd", "on a call")]:
            romeo.setPresence(show, status)
            since = romeo.mark()
            romeo.message(ALICE, f"are you there? ({show})")
            await romeo.waitForEvent("message", sender=ALICE, type="error", since=since, timeout=10)

        # The peer server can answer no probe from now on.
        await peer.freeze()

        # The one-shot client logs in and asks for its contacts at once.
        environment = GatewayProcess.environment()
        environment["IMGATEWAY_PASSWORD"] = "alice's pw"
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "imgateway.client.cli", "--server", gw.endpoint, "--user", "alice", "presence", "--json"],
            env=environment,
            path=REPO_ROOT,
            reactor=reactor(),
        )
        self.assertEqual((code, err), (0, b""), out)
        contacts = {c["address"]: c for c in json.loads(out)["contacts"]}
        self.assertEqual((contacts[ROMEO]["presence"], contacts[ROMEO]["note"]), ("busy", "on a call"))

        # An XMPP client: the first presence of Romeo it gets, after its
        # initial presence, is his current one.
        agent = await connectAgent(
            self, f"{ALICE}/agent", "alice's pw", self.c2sPort, caFile=self.caPath, serverName=DOMAIN
        )
        first = await agent.waitForEvent("presence", sender=ROMEO, timeout=10)
        self.assertEqual(
            (first["type"], first["show"], first["status"]), ("available", "dnd", "on a call"), agent.summary()
        )

        # Thawed, the peer server answers the probes and gets alice's
        # presence; she has never been shown Romeo in any other state.
        peer.thaw()
        await romeo.waitForPresence(ALICE, timeout=10)
        seen = {(p["type"], p["show"], p["status"]) for p in agent.find("presence", sender=ROMEO)}
        self.assertEqual(seen, {("available", "dnd", "on a call")})

    async def test_unknownDomain(self) -> None:
        """
        A message to a domain with no route and no DNS fails with 502 once
        the link gives up, and the gateway keeps serving.
        """
        gw, prosody = await self.federate(verify=False)
        proto, recorder = await gw.client("alice", "alice's pw")
        e = await failureOf(proto.sendMessage("bob@nowhere.example", "hello?"), DeliveryError)
        self.assertEqual(e.status.value, 502)
        self.assertTrue(gw.running)
        await proto.ping()
