"""
End-to-end tests of presence rules that act (docs/rules.md): the real
C{twistd imgateway} with its native and XMPP c2s faces, the shipped native
client, slixmpp clients in their own processes (XEP-0050 commands sent by
slixmpp), restarts, and C{imgateway-admin rule} on the real home store.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.trial.unittest import TestCase

from imgateway.client.protocol import NativeClientProtocol
from imgateway.core.errors import UserBusy
from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, Recorder, sleep
from tests.e2e.test_xmpp_c2s import PASSWORDS, XMPPGateway
from tests.e2e.xmppclient import XMPPAgent

NS_COMMANDS = "http://jabber.org/protocol/commands"

#: The users: native ones (alice, bob, dave) and XMPP ones (alicex, alice's
#: other address; carol).
USERS = {**PASSWORDS, "alicex": "alicex-pw-3", "carol": "carol-pw-4", "dave": "dave-pw-5"}


def command(node: str, action: str = "execute", sessionId: str = "", fields: dict[str, list[str]] | None = None) -> str:
    """
    The XML of an ad-hoc command request (XEP-0050) to the gateway's
    domain, with a submitted form when C{fields} is given.
    """
    form = ""
    if fields is not None:
        form = "<x xmlns='jabber:x:data' type='submit'>" + "".join(
            f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"
            for var, values in fields.items()
        ) + "</x>"
    session = f" sessionid='{sessionId}'" if sessionId else ""
    return (
        f"<iq xmlns='jabber:client' type='set' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{node}'"
        f" action='{action}'{session}>{form}</command></iq>"
    )


async def runCommand(agent: XMPPAgent, node: str, fields: dict[str, list[str]]) -> str:
    """
    Run an ad-hoc command from a slixmpp client in two stages, as Gajim
    does: execute (the server answers with a form), then complete with the
    form filled in.

    @return: The XML of the final answer.
    """
    first = await agent.request({"cmd": "iq", "xml": command(node)})
    assert first["type"] == "result", first
    sessionId = re.search(r"sessionid=\"([^\"]+)\"", first["xml"])
    assert sessionId is not None, first
    done = await agent.request({"cmd": "iq", "xml": command(node, "complete", sessionId.group(1), fields)})
    assert done["type"] == "result", done
    return str(done["xml"])


class RulesEndToEndTests(TestCase):
    """
    bob is on the phone: his rules forward alice's messages to her XMPP
    account, refuse dave's, and answer everyone else with an auto-reply.
    """

    async def test_rulesAct(self) -> None:
        """
        With bob on the phone: a message from alice (native) is forwarded
        to alicex (XMPP, marked as forwarded) and delivered to bob; dave
        (native, who may see bob's presence) gets 486 with the alternate;
        carol (XMPP) gets bob's auto-reply once, however many she sends.
        carol adds an auto-reply rule with XEP-0050 commands from slixmpp
        and goes away: bob's message to her is answered once, and bob's
        and carol's auto-replies to each other are one each (no rule acts
        on an auto-reply). After a restart bob's rules are the same and
        still act; the gateway logged each decision without the bodies.
        """
        x = XMPPGateway(self)
        x.gw.addUsers({u: p for u, p in USERS.items() if u not in PASSWORDS})
        await x.gw.start()
        bob, bobSees = await x.gw.client("bob", USERS["bob"])
        alice, aliceSees = await x.gw.client("alice", USERS["alice"])
        dave, daveSees = await x.gw.client("dave", USERS["dave"])
        alicex = await x.agent("alicex", USERS["alicex"])
        carol = await x.agent("carol", USERS["carol"])

        # dave may see bob's presence: he is told why bob refuses.
        await dave.subscribe(f"bob@{DOMAIN}")
        await bob.authorise(f"dave@{DOMAIN}", True)

        rules: list[dict[str, Any]] = [
            {"states": ["on-the-phone"], "action": "forward", "sender": f"alice@{DOMAIN}", "forward": f"alicex@{DOMAIN}"},
            {"states": ["on-the-phone"], "action": "refuse", "sender": f"dave@{DOMAIN}", "alternate": "tel:+15550100"},
            {"states": ["on-the-phone"], "action": "auto-reply", "text": "Bob is on the phone"},
        ]
        for rule in rules:
            await bob.addRule(rule)
        await bob.publish(PresenceState.ON_THE_PHONE)

        # Forwarded (native sender, to an XMPP account), and delivered.
        await alice.sendMessage(f"bob@{DOMAIN}", "ring me back")
        forwarded = await alicex.waitForMessage(f"bob@{DOMAIN}", f"[forwarded from alice@{DOMAIN}] ring me back")
        self.assertEqual(forwarded["auto"], "forwarded")
        await bobSees.waitForMessage(f"alice@{DOMAIN}", "ring me back")
        self.assertEqual(aliceSees.messagesFrom(f"bob@{DOMAIN}"), [])

        # Refused (native sender).
        refused: Any = await self.assertFailure(dave.sendMessage(f"bob@{DOMAIN}", "hello?"), UserBusy)
        self.assertEqual(refused.alternate, "tel:+15550100")

        # Auto-replied once (XMPP sender), and delivered.
        since = carol.mark()
        carol.message(f"bob@{DOMAIN}", "are you there?")
        reply = await carol.waitForMessage(f"bob@{DOMAIN}", "Bob is on the phone", since=since)
        self.assertEqual(reply["auto"], "auto-reply")
        carol.message(f"bob@{DOMAIN}", "still there?")
        await bobSees.waitForMessage(f"carol@{DOMAIN}", "still there?")
        await sleep(0.5)
        self.assertEqual(len(carol.find("message", since, sender=f"bob@{DOMAIN}")), 1)

        # carol edits her rules through XEP-0050 from slixmpp, then is away.
        done = await runCommand(
            carol, "rules-add", {"states": ["away"], "action": ["auto-reply"], "text": ["Carol is away"]}
        )
        self.assertIn('status="completed"', done)
        listed = await carol.request({"cmd": "iq", "xml": command("rules-list")})
        self.assertIn("Carol is away", listed["xml"])
        carol.setPresence(show="xa")
        # Answered after the presence before it on the stream was taken.
        await carol.request({"cmd": "ping", "jid": DOMAIN})

        # bob and carol auto-reply to each other: one reply each. (carol
        # had bob's reply already: his period for her is running.)
        since = carol.mark()
        seen = len(bobSees.messagesFrom(f"carol@{DOMAIN}"))
        await bob.sendMessage(f"carol@{DOMAIN}", "call me")
        await carol.waitForMessage(f"bob@{DOMAIN}", "call me", since=since)
        await bobSees.waitForMessage(f"carol@{DOMAIN}", "Carol is away")
        carol.message(f"bob@{DOMAIN}", "later")
        await bobSees.waitForMessage(f"carol@{DOMAIN}", "later")
        await sleep(0.5)
        fromCarol = [m.body for m in bobSees.messagesFrom(f"carol@{DOMAIN}")][seen:]
        self.assertEqual(fromCarol, ["Carol is away", "later"])
        self.assertEqual([e["body"] for e in carol.find("message", since, sender=f"bob@{DOMAIN}")], ["call me"])

        # A restart keeps the rules, and they act.
        before = await bob.rules()
        await x.gw.restart()
        bob2, _ = await x.gw.client("bob", USERS["bob"], presence=PresenceState.ON_THE_PHONE)
        self.assertEqual(await bob2.rules(), before)
        self.assertEqual([{k: v for k, v in r.items() if k != "presence"} for r in before], rules)
        dave2, _ = await x.gw.client("dave", USERS["dave"])
        await self.assertFailure(dave2.sendMessage(f"bob@{DOMAIN}", "and now?"), UserBusy)

        log = x.gw.log()
        self.assertIn(f"Rule 1 of bob@{DOMAIN}", log)
        self.assertIn("forwarded to alicex@", log)
        self.assertIn("refuses message", log)
        self.assertIn("replied", log)
        for body in ("ring me back", "hello?", "are you there?", "Bob is on the phone", "Carol is away"):
            self.assertNotIn(body, log)

    async def test_adminRule(self) -> None:
        """
        C{imgateway-admin rule add|list|remove} edits a user's rules in the
        home store while the gateway is stopped; the gateway then acts on
        them, and old-style rules set by the first protocol's request show
        in the list. A wrong rule and a rule past C{max_rules} are refused.
        """
        x = XMPPGateway(self)
        x.gw.addUsers({"dave": USERS["dave"]})
        added = x.gw.admin("rule", "add", "bob", "phone,busy", "from", "dave", "reply", "Bob", "is", "busy")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertEqual(
            added.stdout, f"added rule 1 of bob@{DOMAIN}: while busy,on-the-phone from dave@{DOMAIN}: reply 'Bob is busy'\n"
        )
        first = x.gw.admin("rule", "add", "--position", "1", "bob", "away", "refuse", "tel:+15550100")
        self.assertEqual(first.returncode, 0, first.stderr)
        listed = x.gw.admin("rule", "list", "bob")
        self.assertEqual(
            listed.stdout.splitlines(),
            ["1. while away: refuse, naming tel:+15550100", f"2. while busy,on-the-phone from dave@{DOMAIN}: reply 'Bob is busy'"],
        )
        asJSON = json.loads(x.gw.admin("rule", "list", "bob", "--json").stdout)
        self.assertEqual(asJSON["rules"][1]["text"], "Bob is busy")
        wrong = x.gw.admin("rule", "add", "bob", "online", "deliver")
        self.assertEqual((wrong.returncode, wrong.stdout), (1, ""))
        self.assertIn("rules apply to busy and away states", wrong.stderr)
        removed = x.gw.admin("rule", "remove", "bob", "1")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertEqual(x.gw.admin("rule", "remove", "bob", "5").returncode, 1)

        await x.gw.start()
        bob, _ = await x.gw.client("bob", USERS["bob"], presence=PresenceState.BUSY)
        dave, daveSees = await x.gw.client("dave", USERS["dave"])
        await dave.sendMessage(f"bob@{DOMAIN}", "hi")
        await daveSees.waitForMessage(f"bob@{DOMAIN}", "Bob is busy")
        await bob.setRule(PresenceState.OUT_TO_LUNCH, "tel:+15550199")
        for n in range(3):
            await bob.addRule({"states": ["away"], "action": "deliver"})
        self.assertEqual(len(await bob.rules()), 5)
        await x.gw.stop()
        full = x.gw.admin("rule", "add", "bob", "away", "deliver")
        self.assertEqual(full.returncode, 1)
        self.assertIn("max_rules", full.stderr)
        listed = x.gw.admin("rule", "list", "bob")
        self.assertIn("2. while out-to-lunch: refuse, naming tel:+15550199", listed.stdout)


__all__ = ["NativeClientProtocol", "Recorder", "RulesEndToEndTests"]
