"""
End-to-end tests of a router's proxied sessions (L{imgateway.router.proxy}):
a router and a home server (C{hs1}) as two real C{twistd imgateway}
processes sharing one data folder (so one SQLite directory), linked over
TLS with both certificates checked (a test certificate authority), real TCP
on loopback. A client from 127.0.0.2, outside the router's internal
network, logs in at the router and is served by a session on hs1, with a
user logged in directly at hs1; killing hs1 ends the proxied session.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.trial.unittest import TestCase

from imgateway.core.address import Address
from imgateway.core.errors import ServiceUnavailable, TooLarge, UserBusy, UserOffline
from imgateway.core.presence import PresenceState
from imgateway.client.protocol import goodbye
from tests.e2e.harness import DOMAIN, connectClient, failureOf, reactor
from tests.e2e.multihost import OUTSIDE, RouterAndHome, RouterAndTwoHomes
from tests.e2e.xmppclient import XMPPAgent

PASSWORDS = {"alice": "alice-pw-1", "carol": "carol-pw-1"}
ALICE = Address.fromString(f"alice@{DOMAIN}")
CAROL = Address.fromString(f"carol@{DOMAIN}")


def proxyPair(testCase: TestCase, xmpp: bool = False, maxSessions: int = 1000) -> RouterAndHome:
    """
    A router and a home server C{hs1} (alice and carol) linked over TLS
    (L{RouterAndHome}), with C{[links] max_sessions} of C{maxSessions}.
    """
    return RouterAndHome(testCase, PASSWORDS, xmpp=xmpp, links=True, linkKeys={"max_sessions": maxSessions})


class NativeProxyTests(TestCase):
    """
    A native client proxied by the router to hs1.
    """

    async def test_proxied(self) -> None:
        """
        carol logs in at the router from 127.0.0.2 and is served by a
        session on hs1 (the router logs the decision with her address; hs1
        logs the proxied session), with C{Presence-Answers: none} agreed as
        at a home server; she and alice, logged in at hs1, subscribe
        to each other, see each other's presence changes and exchange
        messages, with the statuses a home server gives (480 before she may
        see alice's presence is not at issue here: both authorise).
        """
        pair = proxyPair(self)
        await pair.start()
        aliceClient, alice = await connectClient(self, pair.home.endpoint, "alice", PASSWORDS["alice"])
        carolClient, carol = await connectClient(self, pair.outside, "carol", PASSWORDS["carol"], label="laptop")
        self.assertEqual(str(carolClient.address), str(CAROL))
        self.assertEqual(carolClient.transport.getPeer().port, pair.routerPort)  # type: ignore[union-attr]
        self.assertIn(f"Proxying carol@{DOMAIN} (native, from IPv4Address(type='TCP', host='{OUTSIDE}'", pair.router.log())
        self.assertIn(f"of carol@{DOMAIN} opened for server router", pair.home.log())
        # The router's face agreed to unanswered presence NOTIFYs for the
        # proxied session, as a home server's face does (docs/protocol.md
        # section 7.2): the presence below reaches her all the same.
        self.assertEqual(carolClient.presenceAnswers, "none")

        # Subscriptions both ways, answered across the router.
        await carolClient.subscribe(ALICE)
        await alice.waitForSubscription(CAROL, "subscribe", timeout=10)
        await aliceClient.authorise(CAROL, True)
        await aliceClient.subscribe(CAROL)
        await carol.waitForSubscription(ALICE, "subscribe", timeout=10)
        await carolClient.authorise(ALICE, True)

        # Presence both ways.
        await aliceClient.publish(PresenceState.BUSY, "meeting")
        await carol.waitForPresence(ALICE, PresenceState.BUSY, timeout=10)
        await carolClient.publish(PresenceState.AWAY, "lunch")
        await alice.waitForPresence(CAROL, PresenceState.AWAY, timeout=10)
        contacts = await carolClient.contacts()
        [entry] = [c for c in contacts["contacts"] if c["address"] == str(ALICE)]
        self.assertEqual((entry["subscription"], entry["presence"]), ("both", "busy"))

        # Messages both ways.
        await carolClient.sendMessage(ALICE, "hello alice, from outside")
        await alice.waitForMessage(CAROL, "hello alice, from outside", timeout=10)
        await aliceClient.sendMessage(CAROL, "hello carol")
        await carol.waitForMessage(ALICE, "hello carol", timeout=10)

        # A status from hs1 comes back to the proxied sender unchanged.
        await aliceClient.publish(PresenceState.OFFLINE)
        await failureOf(carolClient.sendMessage(ALICE, "still there?"), UserOffline)

    async def test_homeKilled(self) -> None:
        """
        Killing hs1 (SIGKILL) ends carol's proxied session promptly: the
        router closes her connection, as a home server that stops does.
        """
        pair = proxyPair(self)
        await pair.start()
        carolClient, carol = await connectClient(self, pair.outside, "carol", PASSWORDS["carol"])
        self.assertIn(f"Proxying carol@{DOMAIN}", pair.router.log())
        started = time.monotonic()
        await pair.home.stop(signal.SIGKILL)
        # Waiting for the connection's end itself (not the recorder's
        # disconnected(), which comes while the client is still closing).
        await carolClient.whenClosed().addTimeout(5, reactor())
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual(len(carol.disconnects), 1)
        self.assertIn("closing its 1 proxied sessions", pair.router.log())

    async def test_maxSessions(self) -> None:
        """
        With C{[links] max_sessions = 1}, a second proxied login is answered
        C{503} while the first is open, and logged.
        """
        pair = proxyPair(self, maxSessions=1)
        await pair.start()
        await connectClient(self, pair.outside, "carol", PASSWORDS["carol"])
        e = await failureOf(connectClient(self, pair.outside, "alice", PASSWORDS["alice"]), ServiceUnavailable)
        self.assertEqual(e.text, "Your home server is unavailable")
        self.assertIn("1 proxied sessions on its link already ([links] max_sessions)", pair.router.log())


class ProxiedAcrossHomesTests(TestCase):
    """
    A native client proxied by the router to hs1 writes to a user of hs2:
    the router sends its messages over its own link to hs2, not through
    hs1 (C{docs/protocol.md} section 9.7).
    """

    async def test_notThroughHome(self) -> None:
        """
        alice (hs1) logs in at the router from 127.0.0.2 and is proxied to
        hs1; carol logs in at hs2. alice's message reaches carol, and so
        does one sent while hs1 is stopped (C{SIGSTOP}): the message does
        not pass through hs1. hs2's statuses come back to alice as they
        would to a sender at hs1: C{486} with carol's alternate, C{480}
        once carol is offline and for a user without an account (the same
        answer), C{413} for a message longer than C{max_message_chars}
        (checked at the router); carol's answer reaches alice through hs1.
        """
        domain = RouterAndTwoHomes(self, nativeTLS=True, routerLinks=True, more={"router": {"home": {"max_message_chars": 100}}})
        domain.processes["hs1"].addUsers({"alice": PASSWORDS["alice"]})
        domain.processes["hs2"].addUsers({"carol": PASSWORDS["carol"]})
        await domain.start()
        hs1, hs2 = domain.processes["hs1"], domain.processes["hs2"]
        carolClient, carol = await connectClient(self, hs2.endpoint, "carol", PASSWORDS["carol"])
        aliceClient, alice = await connectClient(self, domain.external(), "alice", PASSWORDS["alice"])
        self.assertIn(f"Proxying alice@{DOMAIN} (native, from IPv4Address(type='TCP', host='{OUTSIDE}'", domain.router.log())
        self.assertIn(f"of alice@{DOMAIN} opened for server router", hs1.log())

        await aliceClient.sendMessage(CAROL, "hello carol, from outside")
        await carol.waitForMessage(ALICE, "hello carol, from outside", timeout=10)
        await carolClient.sendMessage(ALICE, "hello alice")
        await alice.waitForMessage(CAROL, "hello alice", timeout=10)

        assert hs1.process is not None
        os.kill(hs1.process.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, hs1.process.pid, signal.SIGCONT)
        await aliceClient.sendMessage(CAROL, "while hs1 sleeps").addTimeout(5, reactor())
        await carol.waitForMessage(ALICE, "while hs1 sleeps", timeout=5)
        os.kill(hs1.process.pid, signal.SIGCONT)

        # (A rule's alternate is told only to those who may see carol's
        # presence.)
        await aliceClient.subscribe(CAROL)
        await carol.waitForSubscription(ALICE, "subscribe", timeout=10)
        await carolClient.authorise(ALICE, True)
        await carolClient.setRule(PresenceState.ON_THE_PHONE, "tel:+15550100")
        await carolClient.publish(PresenceState.ON_THE_PHONE)
        await alice.waitForPresence(CAROL, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(aliceClient.sendMessage(CAROL, "call me"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")
        await failureOf(aliceClient.sendMessage(CAROL, "x" * 101), TooLarge)
        await goodbye(carolClient, reactor())
        offline = await failureOf(aliceClient.sendMessage(CAROL, "still there?"), UserOffline)
        nobody = await failureOf(aliceClient.sendMessage(f"nobody@{DOMAIN}", "anyone?"), UserOffline)
        self.assertEqual(str(nobody), str(offline).replace(str(CAROL), f"nobody@{DOMAIN}"))


class XMPPProxyTests(TestCase):
    """
    An XMPP client (slixmpp) proxied by the router to hs1.
    """

    async def test_proxied(self) -> None:
        """
        slixmpp logs in at the router from 127.0.0.2 over STARTTLS and its
        session is on hs1; alice, at hs1 with the native client, and carol
        exchange messages and see each other's presence.
        """
        pair = proxyPair(self, xmpp=True)
        await pair.start()
        aliceClient, alice = await connectClient(self, pair.home.endpoint, "alice", PASSWORDS["alice"])
        # Subscribed both ways before carol logs in over XMPP.
        carolNative, carolRecorder = await connectClient(self, pair.home.endpoint, "carol", PASSWORDS["carol"], label="setup")
        await carolNative.subscribe(ALICE)
        await alice.waitForSubscription(CAROL, "subscribe", timeout=10)
        await aliceClient.authorise(CAROL, True)
        await aliceClient.subscribe(CAROL)
        await carolRecorder.waitForSubscription(ALICE, "subscribe", timeout=10)
        await carolNative.authorise(ALICE, True)
        await goodbye(carolNative, reactor())
        await alice.waitForPresence(CAROL, PresenceState.OFFLINE, timeout=10)

        agent = XMPPAgent(
            self, f"carol@{DOMAIN}/agent", PASSWORDS["carol"], pair.routerXMPPPort, tls="starttls", caFile=pair.caPath, bindAddress=OUTSIDE
        )
        await agent.start()
        self.assertIn(f"Proxying carol@{DOMAIN} (xmpp, from IPv4Address(type='TCP', host='{OUTSIDE}'", pair.router.log())
        await alice.waitForPresence(CAROL, PresenceState.ONLINE, timeout=10)
        await agent.waitForPresence(str(ALICE), timeout=10)
        await aliceClient.publish(PresenceState.BUSY, "meeting")
        await agent.waitForPresence(str(ALICE), show="dnd", status="meeting", timeout=10)
        agent.setPresence(show="away", status="lunch")
        await alice.waitForPresence(CAROL, PresenceState.AWAY, timeout=10)
        agent.message(str(ALICE), "hi alice, from slixmpp")
        await alice.waitForMessage(CAROL, "hi alice, from slixmpp", timeout=10)
        await aliceClient.sendMessage(CAROL, "hi carol over xmpp")
        await agent.waitForMessage(str(ALICE), "hi carol over xmpp", timeout=10)
        # A refusal from hs1 told later to the router's c2s face (its
        # session is a RemoteSession, asked through sendMessageThen): one
        # error stanza, the one a local refusal gives.
        agent.message(f"nobody@{DOMAIN}", "anyone there?", msgid="lost-1")
        refused = await agent.waitForEvent("message", timeout=10, type="error", id="lost-1")
        self.assertEqual(refused["error"]["condition"], "service-unavailable")
        agent.message(str(ALICE), "still there?", msgid="after-1")
        await alice.waitForMessage(CAROL, "still there?", timeout=10)
        self.assertEqual(len(agent.find("message", type="error")), 1, agent.find("message", type="error"))

    async def test_homeKilled(self) -> None:
        """
        Killing hs1 (SIGKILL) ends slixmpp's proxied session promptly: the
        router ends its stream.
        """
        pair = proxyPair(self, xmpp=True)
        await pair.start()
        agent = XMPPAgent(
            self, f"carol@{DOMAIN}/agent", PASSWORDS["carol"], pair.routerXMPPPort, tls="starttls", caFile=pair.caPath, bindAddress=OUTSIDE
        )
        await agent.start()
        self.assertIn(f"Proxying carol@{DOMAIN} (xmpp", pair.router.log())
        started = time.monotonic()
        await pair.home.stop(signal.SIGKILL)
        await agent.waitForEvent("disconnected", timeout=5)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertIn("closing its 1 proxied sessions", pair.router.log())
