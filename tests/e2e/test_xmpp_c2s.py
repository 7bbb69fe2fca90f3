"""
End-to-end tests of the XMPP c2s face: a real slixmpp client (in its own
process) logs in to the real C{twistd imgateway} over STARTTLS with a
verified certificate, and talks with a native-protocol user.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, GatewayProcess, freePort, makeCertificates, rawConnect
from tests.e2e.xmppclient import AgentError, XMPPAgent, connectAgent

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


class XMPPGateway:
    """
    A gateway with the native face and an XMPP c2s face that requires TLS
    with a certificate for C{corp.example} from a test authority.
    """

    def __init__(self, testCase: TestCase, **xmpp: object) -> None:
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.caPath, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        self.xmppPort = freePort()
        table: dict[str, object] = {
            "listen": [f"tcp:{self.xmppPort}:interface=127.0.0.1"],
            "certificate": pem,
            "private_key": pem,
        }
        table.update(xmpp)
        self.gw = GatewayProcess(testCase, {"xmpp": table}, directory=os.path.join(directory, "gw"))
        self.gw.waitPorts.append(self.xmppPort)
        self.gw.addUsers(PASSWORDS)
        self.testCase = testCase

    def agent(self, user: str, password: str | None = None, **kwargs: Any) -> Deferred[XMPPAgent]:
        options: dict[str, Any] = {"tls": "starttls", "caFile": self.caPath}
        options.update(kwargs)
        return connectAgent(
            self.testCase,
            f"{user}@{DOMAIN}/agent",
            password if password is not None else PASSWORDS[user],
            self.xmppPort,
            **options,
        )


class C2SEndToEndTests(TestCase):
    """
    slixmpp against the gateway's c2s face.
    """

    async def test_xmppAndNativeUsers(self) -> None:
        """
        An XMPP user (bob) and a native user (alice) add each other, see
        each other's presence through the mapping table (busy is dnd with
        the note), exchange messages, and bob's roster is the contact list
        alice's requests built.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        alice, aliceSees = await x.gw.client("alice", PASSWORDS["alice"])
        bob = await x.agent("bob")

        await alice.subscribe("bob@corp.example", "Bob")
        await bob.waitForSubscribe("alice@corp.example")
        bob.approve("alice@corp.example")
        bob.subscribe("alice@corp.example")
        await aliceSees.waitForSubscription("bob@corp.example", "subscribe")
        await alice.authorise("bob@corp.example")

        bob.setPresence(show="dnd", status="in a meeting")
        await aliceSees.waitForPresence("bob@corp.example", PresenceState.BUSY, "in a meeting")
        await alice.publish(PresenceState.OUT_TO_LUNCH, "back at 2")
        await bob.waitForPresence("alice@corp.example", show="xa", status="Out to lunch: back at 2")

        await alice.sendMessage("bob@corp.example", "hello bob")
        await bob.waitForMessage("alice@corp.example", "hello bob")
        bob.message("alice@corp.example", "hello alice")
        await aliceSees.waitForMessage("bob@corp.example", "hello alice")

        roster = await bob.request({"cmd": "roster"})
        items = {i["jid"]: i for i in roster["items"]}
        self.assertEqual(items["alice@corp.example"]["subscription"], "both")

    async def test_errorsComeBack(self) -> None:
        """
        Delivery failures reach the XMPP sender as stanza errors: unknown
        user (item-not-found), offline user (recipient-unavailable).
        """
        x = XMPPGateway(self)
        await x.gw.start()
        bob = await x.agent("bob")
        bob.message("ghost@corp.example", "anyone?")
        bob.message("alice@corp.example", "are you there?")
        ghost = await bob.waitForEvent("message", sender="ghost@corp.example", type="error")
        offline = await bob.waitForEvent("message", sender="alice@corp.example", type="error")
        self.assertIn("item-not-found", str(ghost["error"]))
        self.assertIn("recipient-unavailable", str(offline["error"]))

    async def test_tlsRequired(self) -> None:
        """
        A client that will not use TLS cannot log in; a wrong password is
        refused.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        with self.assertRaises(AgentError):
            await x.agent("bob", tls="plain")
        with self.assertRaises(AgentError):
            await x.agent("bob", password="wrong")

    async def test_garbageWhileOthersTalk(self) -> None:
        """
        A connection sending an XML bomb to the c2s port is closed while an
        XMPP user and a native user keep exchanging messages.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        alice, aliceSees = await x.gw.client("alice", PASSWORDS["alice"])
        bob = await x.agent("bob")
        raw = await rawConnect(self, f"tcp:127.0.0.1:{x.xmppPort}")
        bomb = "<!DOCTYPE lolz [<!ENTITY lol 'lol'>" + "".join(
            f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>" for i in range(1, 9)
        ) + "]>"
        raw.send(
            (
                "<?xml version='1.0'?>" + bomb + "<stream:stream xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
            ).encode()
        )
        await raw.waitForClose(5)
        self.assertIn(b"restricted-xml", raw.received)
        await alice.publish(PresenceState.ONLINE)
        for i in range(10):
            bob.message("alice@corp.example", f"m{i}")
        await aliceSees.waitForMessages("bob@corp.example", 10)
