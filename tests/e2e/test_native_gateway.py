"""
End-to-end tests of the native face: the real C{twistd imgateway} process,
accounts made by C{imgateway-admin}, and the shipped client library (or raw
bytes) over real TCP on loopback.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any, cast

from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import ITCPTransport
from twisted.trial.unittest import TestCase

from imgateway.adapters.native.framing import Request
from imgateway.client.protocol import ClientError
from imgateway.core.errors import (
    AuthenticationFailed,
    NoRoute,
    NotAuthorised,
    TooLarge,
    UserBusy,
    UserOffline,
)

from tests.e2e.harness import GatewayProcess, failureOf, freePort, sleep

ALICE = "alice@corp.example"
BOB = "bob@corp.example"
CAROL = "carol@corp.example"
DAVE = "dave@corp.example"

PASSWORDS = {
    "alice": "alice's secret",
    "bob": "b0b-pass word",
    "carol": "carol:colon:pass",
    "dave": "dave-🔑",
}


def _contact(contacts: dict[str, object], address: str) -> dict[str, object]:
    entries = [c for c in contacts["contacts"] if c["address"] == address]  # type: ignore[attr-defined]
    assert len(entries) == 1, f"{address} not once in {contacts}"
    return entries[0]  # type: ignore[no-any-return]


class WholeStoryTests(TestCase):
    """
    Two users meet, watch each other and talk, through the real gateway.
    """

    async def test_wholeStory(self) -> None:
        """
        alice and bob, made with C{imgateway-admin}, log in over TCP. alice's
        subscription to bob is pending (202) until bob, told by a
        subscription NOTIFY, authorises it; then alice sees bob's presence,
        and the same the other way. alice sees every presence bob publishes
        (with its note), sees C{appear-offline} as C{offline} (and bob then
        takes no messages), and messages go both ways with the right sender,
        body and identifier.
        """
        gw = GatewayProcess(self)
        gw.addUsers({"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"], label="laptop")
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"], label="phone")
        self.assertEqual((str(alice.address), str(bob.address)), (ALICE, BOB))

        # alice asks to see bob: pending until bob says yes.
        self.assertFalse(await alice.subscribe(BOB, name="Bob"))
        await bobSees.waitForSubscription(ALICE, "subscribe")
        self.assertEqual((await bob.contacts())["requests"], [ALICE])
        entry = _contact(await alice.contacts(), BOB)
        self.assertEqual((entry["subscription"], entry["pending"], entry["presence"]), ("none", True, "offline"))
        await bob.authorise(ALICE)
        await aliceSees.waitForSubscription(BOB, "authorise")
        await aliceSees.waitForPresence(BOB, "online")

        # And the other way round.
        self.assertFalse(await bob.subscribe(ALICE, name="Alice"))
        await aliceSees.waitForSubscription(BOB, "subscribe")
        await alice.authorise(BOB)
        await bobSees.waitForSubscription(ALICE, "authorise")
        await bobSees.waitForPresence(ALICE, "online")
        entry = _contact(await alice.contacts(), BOB)
        self.assertEqual(
            (entry["name"], entry["subscription"], entry["pending"], entry["presence"]),
            ("Bob", "both", False, "online"),
        )
        self.assertEqual((await alice.contacts())["requests"], [])

        # Every presence bob publishes reaches alice.
        for state, note in [
            ("busy", ""),
            ("be-right-back", ""),
            ("away", ""),
            ("on-the-phone", ""),
            ("out-to-lunch", "back at 2 ☕"),
            ("online", ""),
        ]:
            await bob.publish(state, note)
            presence = await aliceSees.waitForPresence(BOB, state, note)
            self.assertEqual(presence.note, note)
        await bob.publish("appear-offline")
        await aliceSees.waitForPresence(BOB, "offline")
        self.assertEqual(_contact(await alice.contacts(), BOB)["presence"], "offline")
        await failureOf(alice.sendMessage(BOB, "are you there?"), UserOffline)
        self.assertEqual(bobSees.messages, [])
        await bob.publish("online", "back")
        await aliceSees.waitForPresence(BOB, "online", "back")

        # Messages, both ways.
        self.assertEqual(await alice.sendMessage(BOB, "Hi Bob!", messageId="laptop-0001"), "laptop-0001")
        got = await bobSees.waitForMessage(ALICE, "Hi Bob!")
        self.assertEqual((got.messageId, got.contentType), ("laptop-0001", "text/plain"))
        self.assertGreater(got.timestamp, 0)
        reply = "Grüße, Alice! 👋\nLine two."
        replyId = await bob.sendMessage(ALICE, reply)
        got = await aliceSees.waitForMessage(BOB, reply)
        self.assertEqual(got.messageId, replyId)
        self.assertEqual([m.body for m in bobSees.messages], ["Hi Bob!"])
        self.assertEqual([m.body for m in aliceSees.messages], [reply])

    async def test_twoSessions(self) -> None:
        """
        bob logs in twice: a message to him reaches both sessions, alice
        sees the most available of their presences, and when one connection
        drops without a BYE and the other says BYE, alice sees bob away and
        then offline, and her messages to him fail with L{UserOffline}.
        """
        gw = GatewayProcess(self)
        gw.addUsers({"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        phone, phoneSees = await gw.client("bob", PASSWORDS["bob"], label="phone")
        laptop, laptopSees = await gw.client("bob", PASSWORDS["bob"], label="laptop", presence="away")
        self.assertNotEqual(phone.sessionId, laptop.sessionId)
        self.assertFalse(await alice.subscribe(BOB))
        await phoneSees.waitForSubscription(ALICE, "subscribe")
        await laptopSees.waitForSubscription(ALICE, "subscribe")
        await laptop.authorise(ALICE)
        await aliceSees.waitForPresence(BOB, "online")

        await alice.sendMessage(BOB, "to every device")
        await phoneSees.waitForMessage(ALICE, "to every device")
        await laptopSees.waitForMessage(ALICE, "to every device")

        cast(ITCPTransport, phone.transport).abortConnection()
        await phone.whenClosed()
        await aliceSees.waitForPresence(BOB, "away")
        await alice.sendMessage(BOB, "laptop only")
        await laptopSees.waitForMessage(ALICE, "laptop only")
        self.assertEqual([m.body for m in phoneSees.messages], ["to every device"])

        await laptop.bye()
        await aliceSees.waitForPresence(BOB, "offline")
        await failureOf(alice.sendMessage(BOB, "gone?"), UserOffline)


class DeliveryStatusTests(TestCase):
    """
    Every way a message can fail reaches the sender as its typed error.
    """

    async def test_statuses(self) -> None:
        """
        A message to an unknown domain fails with L{NoRoute} (502); to a
        user who exists but is not logged in, or to an unknown user (no
        existence leaks), with L{UserOffline} (480). When bob blocks alice,
        alice sees him offline and her message fails as for an offline
        user (480); when he unblocks her she sees him again. bob's rule for
        C{on-the-phone} turns the message of alice, who may see his
        presence, away with L{UserBusy} (486) naming the alternate. carol allow-lists the whole domain, so alice's
        subscription to her is authorised at once.
        """
        gw = GatewayProcess(self)
        gw.addUsers({k: PASSWORDS[k] for k in ("alice", "bob", "carol")})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])

        await failureOf(alice.sendMessage("nobody@corp.example", "hello?"), UserOffline)
        await failureOf(alice.sendMessage("bob@elsewhere.example", "hello?"), NoRoute)
        await failureOf(alice.sendMessage(CAROL, "hello?"), UserOffline)

        # alice watches bob.
        self.assertFalse(await alice.subscribe(BOB))
        await bobSees.waitForSubscription(ALICE, "subscribe")
        await bob.authorise(ALICE)
        await aliceSees.waitForPresence(BOB, "online")

        # bob blocks alice: she sees him offline, her messages bounce.
        await bob.setAccess(ALICE, "block")
        await aliceSees.waitForPresence(BOB, "offline")
        await failureOf(alice.sendMessage(BOB, "why?"), UserOffline)
        self.assertEqual(await bob.accessLists(), {"allow": [], "block": [ALICE]})
        await bob.setAccess(ALICE, "none")
        await aliceSees.waitForPresence(BOB, "online")
        await alice.sendMessage(BOB, "friends again")
        await bobSees.waitForMessage(ALICE, "friends again")

        # bob's presence rule.
        await bob.setRule("on-the-phone", "tel:+15550100")
        self.assertEqual(
            await bob.rules(),
            [{"states": ["on-the-phone"], "action": "refuse", "presence": "on-the-phone", "alternate": "tel:+15550100"}],
        )
        await bob.publish("on-the-phone")
        busy = await failureOf(alice.sendMessage(BOB, "call me"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")
        self.assertEqual([m.body for m in bobSees.messages], ["friends again"])
        await bob.publish("busy")
        await alice.sendMessage(BOB, "no rule for busy")
        await bobSees.waitForMessage(ALICE, "no rule for busy")

        # carol lets the whole domain watch her.
        carol, carolSees = await gw.client("carol", PASSWORDS["carol"])
        await carol.setAccess("corp.example", "allow")
        self.assertEqual(await carol.accessLists(), {"allow": ["corp.example"], "block": []})
        self.assertTrue(await alice.subscribe(CAROL))
        await aliceSees.waitForPresence(CAROL, "online")
        self.assertEqual(_contact(await alice.contacts(), CAROL)["subscription"], "to")
        self.assertEqual((await carol.contacts())["requests"], [])
        self.assertNotIn((alice.address, "subscribe"), carolSees.subscriptions)


class TargetFormTests(TestCase):
    """
    Targets of the wrong form are refused over the real wire.
    """

    async def test_wrongForms(self) -> None:
        """
        Through the real gateway, alice's C{SUBSCRIBE im:bob@...},
        C{MESSAGE pres:bob@...}, C{MESSAGE bob@...} and C{PUBLISH
        im:bob@...} are each answered 400 with a reason naming the
        expected form, and none of them reaches bob; an C{OPTIONS} to
        something other than C{*} before login is answered 400 too. The
        right forms then work.
        """
        gw = GatewayProcess(self)
        gw.addUsers({"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])

        for method, target, reason in [
            ("SUBSCRIBE", "im:bob@corp.example", "SUBSCRIBE takes pres:user@domain as its target"),
            ("MESSAGE", "pres:bob@corp.example", "MESSAGE takes im:user@domain as its target"),
            ("MESSAGE", "bob@corp.example", "MESSAGE takes im:user@domain as its target"),
            ("PUBLISH", "im:bob@corp.example", "PUBLISH takes * as its target"),
        ]:
            r = await alice.request(method, target, [("Presence", "busy")], b"hi")
            self.assertEqual((r.code, r.reason), (400, reason))
        raw = await gw.raw()
        raw.send(b"OPTIONS corp.example IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitFor(raw.codes, description="OPTIONS answered")
        self.assertEqual(raw.codes(), [400])

        self.assertEqual((await alice.contacts())["contacts"], [])
        await alice.sendMessage(BOB, "the right form")
        await bobSees.waitForMessage(ALICE, "the right form")
        self.assertEqual([m.body for m in bobSees.messages], ["the right form"])
        self.assertEqual(bobSees.subscriptions, [])
        self.assertFalse(await alice.subscribe(BOB))
        await bobSees.waitForSubscription(ALICE, "subscribe")


class RestartTests(TestCase):
    """
    What users set up survives a restart of the gateway.
    """

    async def test_restartLosesNothing(self) -> None:
        """
        After alice and bob authorise each other and set a block entry, an
        allow entry and a presence rule, SIGTERM stops the gateway with
        a clean shutdown, and their clients are told C{shutdown}. Started again on
        the same configuration: both log in with their old passwords, see
        the same contacts (C{both}), access lists and rules, see each
        other's presence without authorising again, and the rule still
        applies; dave, added before the restart but never logged in, logs in
        with his password.
        """
        gw = GatewayProcess(self)
        gw.addUsers({k: PASSWORDS[k] for k in ("alice", "bob", "dave")})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        self.assertFalse(await alice.subscribe(BOB, name="Bob"))
        await bobSees.waitForSubscription(ALICE, "subscribe")
        await bob.authorise(ALICE)
        self.assertFalse(await bob.subscribe(ALICE, name="Alice"))
        await aliceSees.waitForSubscription(BOB, "subscribe")
        await alice.authorise(BOB)
        await aliceSees.waitForPresence(BOB, "online")
        await bobSees.waitForPresence(ALICE, "online")
        await alice.setAccess("spam.example", "block")
        await alice.setAccess("mallory@corp.example", "block")
        await alice.setAccess("partner.example", "allow")
        await bob.setRule("on-the-phone", "tel:+15550100")
        await bob.setRule("out-to-lunch", "im:bob.mobile@corp.example")

        before: dict[str, Any] = {
            "alice contacts": await alice.contacts(),
            "bob contacts": await bob.contacts(),
            "alice access": await alice.accessLists(),
            "bob access": await bob.accessLists(),
            "alice rules": await alice.rules(),
            "bob rules": await bob.rules(),
        }

        gw.assertCleanExit(await gw.stop())
        self.assertEqual(await alice.whenClosed(), "shutdown")
        self.assertEqual(await bob.whenClosed(), "shutdown")
        self.assertEqual((aliceSees.disconnects, bobSees.disconnects), (["shutdown"], ["shutdown"]))

        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        # No authorising again: presence flows both ways.
        await aliceSees.waitForPresence(BOB, "online")
        await bobSees.waitForPresence(ALICE, "online")
        after: dict[str, Any] = {
            "alice contacts": await alice.contacts(),
            "bob contacts": await bob.contacts(),
            "alice access": await alice.accessLists(),
            "bob access": await bob.accessLists(),
            "alice rules": await alice.rules(),
            "bob rules": await bob.rules(),
        }
        self.assertEqual(after, before)
        self.assertEqual(_contact(after["alice contacts"], BOB)["subscription"], "both")
        self.assertEqual(_contact(after["bob contacts"], ALICE)["subscription"], "both")
        self.assertEqual(after["alice access"], {"allow": ["partner.example"], "block": ["mallory@corp.example", "spam.example"]})
        self.assertEqual(
            after["bob rules"],
            [
                {"states": ["on-the-phone"], "action": "refuse", "presence": "on-the-phone", "alternate": "tel:+15550100"},
                {"states": ["out-to-lunch"], "action": "refuse", "presence": "out-to-lunch", "alternate": "im:bob.mobile@corp.example"},
            ],
        )
        self.assertEqual(bobSees.subscriptions, [])
        self.assertEqual(aliceSees.subscriptions, [])

        await bob.publish("away", "after the restart")
        await aliceSees.waitForPresence(BOB, "away", "after the restart")
        await bob.publish("on-the-phone")
        busy = await failureOf(alice.sendMessage(BOB, "still there?"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")

        dave, _ = await gw.client("dave", PASSWORDS["dave"])
        self.assertEqual(str(dave.address), DAVE)
        await dave.sendMessage(ALICE, "hello from dave")
        await aliceSees.waitForMessage(DAVE, "hello from dave")

    async def test_restartTwiceWithClientsConnected(self) -> None:
        """
        A gateway restarted twice in a row, with a client connected each
        time, shuts down cleanly each time and comes back with the account intact.
        """
        gw = GatewayProcess(self)
        gw.addUser("alice", PASSWORDS["alice"])
        await gw.start()
        for _ in range(2):
            alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
            gw.assertCleanExit(await gw.restart())
            self.assertEqual(await alice.whenClosed(), "shutdown")
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        await alice.ping()


class AdminWhileRunningTests(TestCase):
    """
    C{imgateway-admin} changes accounts while the gateway runs.
    """

    async def test_accountsChangeWhileRunning(self) -> None:
        """
        An account added while the gateway runs can log in at once; after
        C{user passwd} only the new password works; a disabled account
        cannot log in and is offline to senders (L{UserOffline}), and once
        enabled again it logs in and receives.
        """
        gw = GatewayProcess(self)
        gw.addUser("alice", PASSWORDS["alice"])
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])

        gw.addUser("erin", "first password", name="Erin")
        erin, _ = await gw.client("erin", "first password")
        await erin.bye()

        changed = gw.admin("user", "passwd", "erin", "--password-stdin", input="second password\n")
        self.assertEqual(changed.returncode, 0, changed.stderr)
        await failureOf(gw.client("erin", "first password"), AuthenticationFailed)
        erin, _ = await gw.client("erin", "second password")
        await erin.bye()

        disabled = gw.admin("user", "disable", "erin")
        self.assertEqual(disabled.returncode, 0, disabled.stderr)
        await failureOf(gw.client("erin", "second password"), AuthenticationFailed)
        await failureOf(alice.sendMessage("erin@corp.example", "hello?"), UserOffline)

        enabled = gw.admin("user", "enable", "erin")
        self.assertEqual(enabled.returncode, 0, enabled.stderr)
        erin, erinSees = await gw.client("erin", "second password")
        await alice.sendMessage("erin@corp.example", "welcome back")
        await erinSees.waitForMessage(ALICE, "welcome back")
        listed = gw.admin("user", "list")
        self.assertIn("erin@corp.example", listed.stdout)
        self.assertIn("Erin", listed.stdout)

class GarbageTests(TestCase):
    """
    A connection that sends garbage harms nobody else.
    """

    async def test_garbageIsolated(self) -> None:
        """
        While alice and bob exchange messages, raw connections send random
        bytes, a header line over C{max_header_bytes}, a bogus start line,
        an HTTP request and a flood of requests without logging in. Each
        gets its error status (400, 431, 505; 401 for each request of the
        flood, in order, at the rate limit: none is refused with 429) and
        the fatal ones are closed; alice and bob go on being served
        (20 more messages each way all arrive), and the gateway is still
        running with no traceback in its log.
        """
        gw = GatewayProcess(self)
        gw.addUsers({"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])

        sent = [alice.sendMessage(BOB, f"before {i}") for i in range(5)]
        sent += [bob.sendMessage(ALICE, f"before {i}") for i in range(5)]

        noise, bigHeader, bogus, http, flood, partial = [await gw.raw() for _ in range(6)]
        noise.send(random.Random(20261121).randbytes(4096))
        bigHeader.send(
            b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: 1\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n"
        )
        bogus.send(b"HELLO WORLD\r\n\r\n")
        http.send(b"GET / HTTP/1.1\r\nHost: gw.corp.example\r\n\r\n")
        flood.send(
            b"".join(
                b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: %d\r\nContent-Length: 5\r\n\r\nhello" % i
                for i in range(1, 101)
            )
        )
        # A frame cut off in the middle of its body, then silence.
        partial.send(b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: 1\r\nContent-Length: 100\r\n\r\nonly part")

        sent += [alice.sendMessage(BOB, f"during {i}") for i in range(5)]
        await gatherResults(sent)

        for conn, expected in [(noise, {400, 431, 505}), (bigHeader, {431}), (bogus, {400}), (http, {505})]:
            await conn.waitForClose()
            self.assertEqual(len(conn.codes()), 1, conn.summary())
            self.assertIn(conn.codes()[0], expected, conn.summary())
            self.assertEqual(conn.responses()[0].seq, 0)
        # 10 (request_burst) at once, then 20 a second.
        await flood.waitFor(lambda: len(flood.codes()) >= 100, timeout=15, description="100 answers to the flood")
        self.assertEqual(flood.codes(), [401] * 100)
        self.assertEqual([r.seq for r in flood.responses()], list(range(1, 101)))
        self.assertIsNone(flood.lost)
        self.assertIsNone(partial.lost)
        self.assertEqual(partial.codes(), [])

        sent = [alice.sendMessage(BOB, f"after {i}") for i in range(20)]
        sent += [bob.sendMessage(ALICE, f"after {i}") for i in range(20)]
        await gatherResults(sent)
        toBob = await bobSees.waitForMessages(ALICE, 30)
        toAlice = await aliceSees.waitForMessages(BOB, 25)
        self.assertEqual(
            [m.body for m in toBob],
            [f"before {i}" for i in range(5)] + [f"during {i}" for i in range(5)] + [f"after {i}" for i in range(20)],
        )
        self.assertEqual([m.body for m in toAlice], [f"before {i}" for i in range(5)] + [f"after {i}" for i in range(20)])
        self.assertTrue(gw.running)
        self.assertEqual(gw.problems(), [])


class PipelineTests(TestCase):
    """
    Requests pipelined in one TCP write are handled at the configured rate,
    in order, over a real socket.
    """

    async def test_floodInOneWrite(self) -> None:
        """
        With C{requests_per_second = 200} and C{request_burst = 50}, alice
        logs in and sends 600 MESSAGEs to bob in one write: every one is
        answered 200, in order, none 429; bob receives all 600 in order;
        and a third user's pings are answered while it lasts. alice's
        connection is then served as usual.
        """
        gw = GatewayProcess(self, {"native": {"requests_per_second": 200, "request_burst": 50}})
        gw.addUsers({k: PASSWORDS[k] for k in ("alice", "bob", "carol")})
        await gw.start()
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        carol, _ = await gw.client("carol", PASSWORDS["carol"])
        alice = await gw.raw()
        plain = b"\0alice\0" + PASSWORDS["alice"].encode()
        alice.send(b"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: PLAIN\r\nContent-Length: %d\r\n\r\n%s" % (len(plain), plain))
        await alice.waitFor(alice.codes, description="AUTH answered")
        self.assertEqual(alice.codes(), [200])
        count = 600
        alice.send(
            b"".join(
                b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s"
                % (i, len(b"m%d" % i), b"m%d" % i)
                for i in range(2, count + 2)
            )
        )
        pings = 0
        while len(alice.codes()) < count + 1:
            await carol.ping()
            pings += 1
            await alice.waitFor(lambda: len(alice.codes()) > 1, timeout=15, description="answers to the flood")
        self.assertGreater(pings, 1)
        await alice.waitFor(lambda: len(alice.codes()) == count + 1, timeout=15, description="every answer")
        self.assertEqual(alice.codes(), [200] * (count + 1))
        self.assertEqual([r.seq for r in alice.responses()], list(range(1, count + 2)))
        received = await bobSees.waitForMessages(ALICE, count, timeout=15)
        self.assertEqual([m.body for m in received], [f"m{i}" for i in range(2, count + 2)])
        alice.send(b"PING * IMGW/1.0\r\nSeq: 9999\r\n\r\n")
        await alice.waitFor(lambda: alice.responses()[-1].seq == 9999, description="PING answered")
        self.assertIsNone(alice.lost)


class ResponseTests(TestCase):
    """
    A client's responses must answer the server's requests, over a real
    socket (docs/protocol.md section 3.3).
    """

    async def test_responsesMustAnswer(self) -> None:
        """
        A connection that writes 1,000 responses in one write before logging
        in gets one C{400} (C{Seq: 0}) and is closed. A logged-in client
        that answers the server's C{MESSAGE} is served as usual; when it
        answers it a second time, it gets C{400} and is closed.
        """
        gw = GatewayProcess(self)
        gw.addUsers({k: PASSWORDS[k] for k in ("alice", "bob")})
        await gw.start()
        bob, _ = await gw.client("bob", PASSWORDS["bob"])
        flood = await gw.raw()
        flood.send(b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % i for i in range(1, 1001)))
        await flood.waitForClose()
        self.assertEqual([(r.code, r.seq) for r in flood.responses()], [(400, 0)])
        self.assertIn("response before login", flood.responses()[0].reason)

        alice = await gw.raw()
        plain = b"\0alice\0" + PASSWORDS["alice"].encode()
        alice.send(b"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: PLAIN\r\nContent-Length: %d\r\n\r\n%s" % (len(plain), plain))
        alice.send(b"PUBLISH * IMGW/1.0\r\nSeq: 2\r\nPresence: online\r\n\r\n")
        await alice.waitFor(lambda: len(alice.codes()) == 2, description="AUTH and PUBLISH answered")
        self.assertEqual(alice.codes(), [200, 200])
        await bob.sendMessage(ALICE, "hello")

        def message() -> Request | None:
            return next((f for f in alice.frames if isinstance(f, Request) and f.method == "MESSAGE"), None)

        seq = (await alice.waitFor(message, description="bob's message")).seq
        alice.send(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\nPING * IMGW/1.0\r\nSeq: 3\r\n\r\n" % seq)
        await alice.waitFor(lambda: len(alice.codes()) == 3, description="PING answered")
        self.assertEqual((alice.codes()[-1], alice.responses()[-1].seq), (200, 3))
        alice.send(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq)
        await alice.waitForClose()
        self.assertEqual((alice.codes()[-1], alice.responses()[-1].seq), (400, 0))
        self.assertTrue(gw.running)
        self.assertEqual(gw.problems(), [])


class LimitTests(TestCase):
    """
    The configured limits hold over the real wire.
    """

    async def test_limits(self) -> None:
        """
        With C{max_body_bytes = 4096}, a message whose body is exactly 4096
        bytes is delivered, and one of 4097 is answered 413 (L{TooLarge})
        while the connection stays usable. With C{max_sessions_per_user =
        3}, a fourth login is answered 453 and that connection stays open,
        not logged in. Three wrong passwords on one connection end it with
        C{BYE} C{auth-failures}.
        """
        gw = GatewayProcess(
            self,
            {
                "native": {"max_body_bytes": 4096},
                "home": {"max_message_chars": 100000, "max_sessions_per_user": 3},
            },
        )
        gw.addUsers({"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        self.assertEqual((await alice.options())["Max-Body"], "4096")

        exact = "x" * 4095 + "y"
        self.assertEqual(len(exact.encode("utf-8")), 4096)
        await alice.sendMessage(BOB, exact)
        await bobSees.waitForMessage(ALICE, exact)
        # Multi-byte characters count in bytes at the framing layer.
        tooBig = "é" * 2048 + "!"
        self.assertEqual(len(tooBig.encode("utf-8")), 4097)
        await failureOf(alice.sendMessage(BOB, tooBig), TooLarge)
        await alice.ping()
        await alice.sendMessage(BOB, "after the big one")
        await bobSees.waitForMessage(ALICE, "after the big one")
        self.assertEqual(len(bobSees.messages), 2)

        # Sessions: alice has one; two more are allowed, a fourth is not.
        await gw.client("alice", PASSWORDS["alice"], label="second")
        await gw.client("alice", PASSWORDS["alice"], label="third")
        error = await failureOf(gw.client("alice", PASSWORDS["alice"], label="fourth"), ClientError)
        self.assertEqual(error.code, 453)
        fourth = await gw.connection()
        error = await failureOf(fourth.login("alice", PASSWORDS["alice"]), ClientError)
        self.assertEqual(error.code, 453)
        await fourth.ping()
        self.assertIsNone(fourth.address)
        # Still not logged in: anything but OPTIONS, AUTH, PING, BYE is 401.
        await failureOf(fourth.sendMessage(BOB, "sneaky"), NotAuthorised)
        # Once a session ends, the next login succeeds.
        await alice.bye()
        await fourth.login("alice", PASSWORDS["alice"])

        # Wrong passwords: the third failure ends the connection.
        guesser = await gw.connection()
        for _ in range(3):
            await failureOf(guesser.login("bob", "wrong password"), AuthenticationFailed)
        self.assertEqual(await guesser.whenClosed(), "auth-failures")
        # Nobody else is affected.
        await bob.ping()

    async def test_maxUnauthenticated(self) -> None:
        """
        With C{max_unauthenticated = 2}, a third connection that has not
        logged in is answered C{503} (C{Seq: 0}) and closed, while the two
        waiting ones are still served; once one of them goes, a client can
        connect and log in again.
        """
        gw = GatewayProcess(self, {"native": {"max_unauthenticated": 2}})
        gw.addUser("alice", PASSWORDS["alice"])
        await gw.start()
        waiting = [await gw.raw() for _ in range(2)]
        for conn in waiting:
            conn.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        for conn in waiting:
            await conn.waitFor(conn.codes, description="OPTIONS answered")
            self.assertEqual(conn.codes(), [200])
        third = await gw.raw()
        await third.waitForClose()
        self.assertEqual(third.codes(), [503], third.summary())
        self.assertEqual(third.responses()[0].seq, 0)
        await failureOf(gw.client("alice", PASSWORDS["alice"]), ClientError)

        await waiting[0].close()
        deadline = time.monotonic() + 5
        while True:
            try:
                alice, _ = await gw.client("alice", PASSWORDS["alice"])
                break
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.05)
        await alice.ping()
        waiting[1].send(b"PING * IMGW/1.0\r\nSeq: 2\r\n\r\n")
        await waiting[1].waitFor(lambda: waiting[1].codes() == [200, 200], description="PING answered")

    async def test_timers(self) -> None:
        """
        With C{login_timeout = 1}, a connection that does not log in gets
        C{BYE} C{login-timeout} and is closed. With C{idle_timeout = 2}, a
        logged-in client that sends nothing gets C{BYE} C{idle-timeout},
        while one that pings stays. A presence published with a one-second
        lease and not refreshed falls back to offline for its watchers
        while the session stays open; one that the client refreshes (at 80%
        of its lease) never does.
        """
        gw = GatewayProcess(
            self,
            {"native": {"login_timeout": 1, "idle_timeout": 2}, "home": {"min_presence_lease": 1}},
        )
        gw.addUsers({k: PASSWORDS[k] for k in ("alice", "bob", "carol")})
        await gw.start()
        lurker = await gw.raw()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        carol, carolSees = await gw.client("carol", PASSWORDS["carol"])
        await carol.setAccess(ALICE, "allow")
        self.assertTrue(await alice.subscribe(CAROL))
        self.assertEqual(await carol.publish("away", "refreshed", expires=1), 1)
        await aliceSees.waitForPresence(CAROL, "away", "refreshed")
        self.assertFalse(await alice.subscribe(BOB))
        await bobSees.waitForSubscription(ALICE, "subscribe")
        await bob.authorise(ALICE)
        await aliceSees.waitForPresence(BOB, "online")
        self.assertEqual(await bob.publish("busy", "short lease", expires=1, refresh=False), 1)
        await aliceSees.waitForPresence(BOB, "busy", "short lease")

        bobClosed = bob.whenClosed()
        await aliceSees.waitForPresence(BOB, "offline")
        self.assertFalse(bobClosed.called)
        await bob.ping()

        deadline = time.monotonic() + 10
        while not bobClosed.called and time.monotonic() < deadline:
            await alice.ping()
            await sleep(0.3)
        self.assertEqual(await bobClosed, "idle-timeout")
        await alice.ping()
        self.assertEqual(aliceSees.disconnects, [])
        # carol's lease was refreshed throughout (which kept her connection
        # from idling out too).
        self.assertEqual(
            [p.state.value for a, p in aliceSees.presences if str(a) == CAROL], ["online", "away"]
        )
        self.assertEqual(carolSees.disconnects, [])

        await lurker.waitForClose()
        byes = [f for f in lurker.frames if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual([b.headers.get("Reason") for b in byes], ["login-timeout"])


class PreAuthBytesTests(TestCase):
    """
    C{pre_auth_bytes} over a real socket, with the shipped default.
    """

    async def test_blankLineFlood(self) -> None:
        """
        A connection that floods blank lines (keep-alives, which take no
        token) without logging in is closed once it has sent
        C{pre_auth_bytes} (256 KiB), in well under C{login_timeout} (30 s);
        if anything reaches it first, it is BYE C{pre-auth-bytes}. The
        refusal is logged; a user logging in meanwhile is served.
        """
        gw = GatewayProcess(self)
        gw.addUser("alice", PASSWORDS["alice"])
        await gw.start()
        flood = await gw.raw()
        started = time.monotonic()
        flood.send(b"\r\n" * (512 * 1024))
        await flood.waitForClose(timeout=10)
        self.assertLess(time.monotonic() - started, 10)
        byes = [f for f in flood.frames if isinstance(f, Request)]
        self.assertEqual([(b.method, b.headers.get("Reason")) for b in byes], [("BYE", "pre-auth-bytes")][: len(byes)])
        self.assertEqual(flood.codes(), [])
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        await alice.ping()
        self.assertIn("262144 bytes received before login (pre_auth_bytes)", gw.log())
        self.assertTrue(gw.running)
        self.assertEqual(gw.problems(), [])


class ConfigErrorTests(TestCase):
    """
    A bad configuration stops C{twistd imgateway} before any port opens,
    with one message naming the file and the key.
    """

    def _assertOneMessage(self, gw: GatewayProcess, *fragments: str) -> None:
        output = gw.output() + gw.log()
        tail = "\n".join(output.splitlines()[-3:])
        for fragment in fragments:
            self.assertIn(fragment, output, f"{fragment!r} not in the output, which ends:\n{tail}")
        self.assertNotIn("Traceback", output, f"a traceback in the output, which ends:\n{tail}")

    async def test_unknownKey(self) -> None:
        """
        A misspelt key in C{[native]} (whose C{listen} is valid) stops
        start-up: non-zero exit, a message naming the file and the key, and
        the listed port never accepts a connection.
        """
        gw = GatewayProcess(self, {"native": {"max_body_byte": 4096}}, checkLog=False)
        code, opened = await gw.runUntilExit()
        self.assertNotEqual(code, 0)
        self.assertFalse(opened)
        self._assertOneMessage(gw, gw.configPath, "max_body_byte", "unknown key")

    async def test_unknownTable(self) -> None:
        """
        A table no adapter claims stops start-up the same way.
        """
        gw = GatewayProcess(self, {"natve": {"enabled": True}}, checkLog=False)
        code, opened = await gw.runUntilExit()
        self.assertNotEqual(code, 0)
        self.assertFalse(opened)
        self._assertOneMessage(gw, gw.configPath, "[natve]")

    async def test_badEndpoint(self) -> None:
        """
        A listen list whose first endpoint is valid and second is not stops
        start-up before the first is opened, naming the file, C{listen} and
        the bad endpoint.
        """
        port = freePort()
        gw = GatewayProcess(
            self,
            {"native": {"listen": [f"tcp:{port}:interface=127.0.0.1", "tcp:notaport:interface=127.0.0.1"]}},
            port=port,
            checkLog=False,
        )
        code, opened = await gw.runUntilExit()
        self.assertNotEqual(code, 0)
        self.assertFalse(opened)
        self._assertOneMessage(gw, gw.configPath, "listen", "tcp:notaport")

    async def test_missingFile(self) -> None:
        """
        A configuration file that does not exist stops start-up with a
        message naming it.
        """
        gw = GatewayProcess(self, checkLog=False)
        missing = os.path.join(gw.directory, "nowhere", "imgateway.toml")
        command = gw.command()
        command[command.index(gw.configPath)] = missing
        code, opened = await gw.runUntilExit(command)
        self.assertNotEqual(code, 0)
        self.assertFalse(opened)
        self._assertOneMessage(gw, missing)

    async def test_portInUse(self) -> None:
        """
        When the second of two listeners cannot listen (its port is taken),
        the gateway exits non-zero with one line naming the endpoint, and
        does not stay listening on the first.
        """
        import socket

        first, taken = freePort(), freePort()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", taken))
        holder.listen(1)
        gw = GatewayProcess(
            self,
            {"native": {"listen": [f"tcp:{first}:interface=127.0.0.1", f"tcp:{taken}:interface=127.0.0.1"]}},
            port=first,
            checkLog=False,
        )
        code, _ = await gw.runUntilExit()
        self.assertNotEqual(code, 0)
        self.assertFalse(gw.running)
        self._assertOneMessage(gw, f"tcp:{taken}:interface=127.0.0.1")


class SignalTests(TestCase):
    """
    How the gateway process ends.
    """

    async def test_sigint(self) -> None:
        """
        SIGINT (Control-C in a terminal) stops the gateway as SIGTERM does:
        clients are told C{shutdown} and the process shuts down cleanly.
        """
        gw = GatewayProcess(self)
        gw.addUser("alice", PASSWORDS["alice"])
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        gw.assertCleanExit(await gw.stop(signal.SIGINT), signal.SIGINT)
        self.assertEqual(await alice.whenClosed(), "shutdown")

    async def test_sigintWhenStartedIgnoringIt(self) -> None:
        """
        The harness starts the gateway with SIGINT's default action even
        when the test run was started with SIGINT ignored (a background
        command of a shell without job control is), so that
        L{test_sigint} tests the gateway, not how the suite was launched.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            gw = GatewayProcess(self)
            await gw.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        gw.assertCleanExit(await gw.stop(signal.SIGINT), signal.SIGINT)

    async def test_shutdownTellsWaitingConnections(self) -> None:
        """
        A connection that has not logged in is told C{BYE} C{shutdown} too
        when the gateway stops (C{docs/protocol.md} section 7.10).
        """
        gw = GatewayProcess(self)
        await gw.start()
        waiting = await gw.raw()
        waiting.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await waiting.waitFor(waiting.codes, description="OPTIONS answered")
        gw.assertCleanExit(await gw.stop())
        await waiting.waitForClose()
        byes = [f for f in waiting.frames if isinstance(f, Request) and f.method == "BYE"]
        self.assertEqual([b.headers.get("Reason") for b in byes], ["shutdown"])
