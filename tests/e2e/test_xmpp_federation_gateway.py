"""
End-to-end tests of XMPP federation through the real gateway: C{twistd
imgateway} with C{federation = true} and a real Prosody serving
C{xmpp.example}, joined by server-to-server streams on loopback (static
routes both ways, no DNS). A slixmpp user on Prosody and a native user on
the gateway add each other, see each other's presence and talk.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from imgateway.core.errors import DeliveryError, UserOffline
from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, GatewayProcess, failureOf, freePort, makeCertificates
from tests.e2e.prosody import ProsodyProcess
from tests.e2e.test_xmpp_component_prosody import NativeAlice

ALICE = f"alice@{DOMAIN}"
ROMEO = "romeo@xmpp.example"
JULIET = "juliet@xmpp.example"
USERS = {"romeo": "romeo's pw", "juliet": "juliet's pw"}


class FederationGatewayTests(TestCase):
    """
    The gateway federating with Prosody.
    """

    async def federate(self, verify: bool) -> tuple[GatewayProcess, ProsodyProcess]:
        """
        Start Prosody and a federating gateway.

        @param verify: Authenticate with certificates both ways (Prosody's
            C{s2s_secure_auth}, our certificate verification); otherwise
            with dialback.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        caPath, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        s2sPort = freePort()
        prosody = ProsodyProcess(
            self,
            users=USERS,
            peers={DOMAIN: s2sPort},
            trust=[caPath] if verify else [],
            s2sRequireEncryption=True,
            s2sSecureAuth=verify,
            dialback=not verify,
        )
        xmpp: dict[str, Any] = {
            "listen": [],
            "certificate": pem,
            "private_key": pem,
            "federation": True,
            "s2s_listen": [f"tcp:{s2sPort}:interface=127.0.0.1"],
            "s2s_routes": {prosody.domain: f"tcp:127.0.0.1:{prosody.s2sPort}"},
            "s2s_use_dns": False,
            "s2s_verify_certificates": verify,
        }
        if verify:
            xmpp["s2s_trust_roots"] = prosody.caPath
        gw = GatewayProcess(self, {"xmpp": xmpp}, directory=os.path.join(directory, "gw"))
        gw.waitPorts.append(s2sPort)
        gw.addUser("alice", "alice's pw")
        await prosody.start()
        await gw.start()
        return gw, prosody

    async def scenario(self, gw: GatewayProcess, prosody: ProsodyProcess) -> None:
        proto, recorder = await gw.client("alice", "alice's pw")
        alice = NativeAlice(proto, recorder)
        romeo = await prosody.agent("romeo")

        # Romeo (on Prosody) adds alice (on the gateway); she authorises.
        romeo.subscribe(ALICE)
        await alice.waitForSubscribe(ROMEO)
        await alice.authorise(ROMEO)
        await romeo.waitForPresence(ALICE, timeout=10)

        # She adds him back; he approves; each sees the other.
        await alice.subscribe(ROMEO)
        await romeo.waitForSubscribe(ALICE, timeout=10)
        romeo.approve(ALICE)
        await alice.waitForPresence(ROMEO, PresenceState.ONLINE)

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
