"""
Tests for presence rules that act: L{imgateway.core.records.PresenceRule}
(matching, checking) and the home server's rule evaluation
(L{imgateway.home.server.HomeServer}): ordering, auto-replies and their
period, forwards, refusals, loop marks, the first protocol's requests and
the quota.
"""

from __future__ import annotations

from attrs import evolve
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.errors import QuotaExceeded, UserBusy, UserOffline
from imgateway.core.events import Message, MessageMark
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import (
    MAX_REPLY_CHARS,
    AccountRecord,
    PresenceRule,
    RuleAction,
    RuleNetwork,
    checkRule,
)
from imgateway.home.server import HomeServer
from imgateway.router.router import Router
from imgateway.testing import MemoryDirectory, MemoryHomeStore
from tests.test_home import ALICE, BOB, CAROL, DOMAIN, ROMEO, HomeServerTestsMixin, RecordingRoute

PHONE = PresenceState.ON_THE_PHONE
BUSY = PresenceState.BUSY
AWAY = PresenceState.AWAY
ALICE_XMPP = Address.fromString("alice@xmpp.example")


class MatchTests(SynchronousTestCase):
    """
    Tests for L{PresenceRule.matches}.
    """

    def test_states(self) -> None:
        """
        A rule matches in any of its states, and in no other.
        """
        rule = PresenceRule([PHONE, BUSY], RuleAction.DELIVER)
        self.assertTrue(rule.matches(PHONE, ALICE, True))
        self.assertTrue(rule.matches(BUSY, ALICE, True))
        self.assertFalse(rule.matches(AWAY, ALICE, True))

    def test_sender(self) -> None:
        """
        A rule with an address matches that sender only; with a domain,
        every sender of that domain.
        """
        byAddress = PresenceRule([PHONE], RuleAction.DELIVER, sender="alice@corp.example")
        self.assertTrue(byAddress.matches(PHONE, ALICE, True))
        self.assertFalse(byAddress.matches(PHONE, CAROL, True))
        byDomain = PresenceRule([PHONE], RuleAction.DELIVER, sender="xmpp.example")
        self.assertTrue(byDomain.matches(PHONE, ROMEO, False))
        self.assertFalse(byDomain.matches(PHONE, ALICE, True))

    def test_network(self) -> None:
        """
        C{local} matches senders of the home server's domain only,
        C{remote} the others, C{any} both.
        """
        local = PresenceRule([PHONE], RuleAction.DELIVER, network=RuleNetwork.LOCAL)
        remote = PresenceRule([PHONE], RuleAction.DELIVER, network=RuleNetwork.REMOTE)
        anyone = PresenceRule([PHONE], RuleAction.DELIVER)
        self.assertEqual([r.matches(PHONE, ALICE, True) for r in (local, remote, anyone)], [True, False, True])
        self.assertEqual([r.matches(PHONE, ROMEO, False) for r in (local, remote, anyone)], [False, True, True])


class CheckTests(SynchronousTestCase):
    """
    Tests for L{checkRule}.
    """

    def test_normalises(self) -> None:
        """
        The sender is normalised (an address or a domain).
        """
        self.assertEqual(checkRule(PresenceRule([PHONE], RuleAction.DELIVER, sender="Alice@CORP.Example")).sender, "alice@corp.example")
        self.assertEqual(checkRule(PresenceRule([PHONE], RuleAction.DELIVER, sender="CORP.Example")).sender, "corp.example")

    def test_wrong(self) -> None:
        """
        A rule without states, with a state no rule may name, with what its
        action needs missing or what another action needs, is refused.
        """
        for wrong in (
            PresenceRule([], RuleAction.DELIVER),
            PresenceRule([PresenceState.ONLINE], RuleAction.DELIVER),
            PresenceRule([PresenceState.OFFLINE], RuleAction.DELIVER),
            PresenceRule([PHONE], RuleAction.REFUSE),
            PresenceRule([PHONE], RuleAction.REFUSE, alternate="not a uri"),
            PresenceRule([PHONE], RuleAction.AUTO_REPLY),
            PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="   "),
            PresenceRule([PHONE], RuleAction.FORWARD),
            PresenceRule([PHONE], RuleAction.DELIVER, text="x"),
            PresenceRule([PHONE], RuleAction.DELIVER, alternate="tel:1"),
            PresenceRule([PHONE], RuleAction.DELIVER, forwardTo=ALICE),
            PresenceRule([PHONE], RuleAction.DELIVER, sender="not an address@"),
        ):
            self.assertRaises(ValueError, checkRule, wrong)

    def test_replyLength(self) -> None:
        """
        An auto-reply of L{MAX_REPLY_CHARS} characters is taken, one more
        is not.
        """
        checkRule(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="x" * MAX_REPLY_CHARS))
        self.assertRaises(ValueError, checkRule, PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="x" * (MAX_REPLY_CHARS + 1)))


class RuleActionTests(HomeServerTestsMixin, SynchronousTestCase):
    """
    What the home server does with a message to a user with rules. bob is
    on the phone; romeo is a user of another network (a recording route).
    """

    def setUp(self) -> None:
        super().setUp()
        self.other = RecordingRoute()
        self.router.addRoute("xmpp.example", self.other)
        self.bob, self.bobClient = self.open(BOB)
        self.bob.publish(Presence(PHONE))
        self.alice, self.aliceClient = self.online(ALICE)
        self.carol, self.carolClient = self.online(CAROL)

    def setRules(self, *rules: PresenceRule) -> None:
        self.successResultOf(self.bob.setRules(rules))

    def sent(self) -> list[Message]:
        return [e for e in self.other.events if isinstance(e, Message)]

    def test_noRuleMatches(self) -> None:
        """
        A message no rule matches is delivered as usual.
        """
        self.setRules(PresenceRule([AWAY], RuleAction.AUTO_REPLY, text="away"))
        self.successResultOf(self.alice.sendMessage(BOB, "hi"))
        self.assertEqual([m.body for m in self.bobClient.messages], ["hi"])
        self.assertEqual(self.aliceClient.messages, [])

    def test_firstMatchWins(self) -> None:
        """
        Rules are looked at in order: the first that matches decides. A
        deliver rule for alice first lets her through; the refusal after
        it turns carol away.
        """
        self.setRules(
            PresenceRule([PHONE], RuleAction.DELIVER, sender=str(ALICE)),
            PresenceRule.refuse(PHONE, "tel:+15550100"),
        )
        self.befriend(self.carol, self.bob)
        self.successResultOf(self.alice.sendMessage(BOB, "from alice"))
        busy = self.failureResultOf(self.carol.sendMessage(BOB, "from carol"), UserBusy)
        self.assertEqual(busy.value.alternate, "tel:+15550100")
        self.assertEqual([m.body for m in self.bobClient.messages], ["from alice"])
        # The other order: the refusal comes first and wins for alice too
        # (who may not see bob's presence: told offline).
        self.setRules(
            PresenceRule.refuse(PHONE, "tel:+15550100"),
            PresenceRule([PHONE], RuleAction.DELIVER, sender=str(ALICE)),
        )
        self.failureResultOf(self.alice.sendMessage(BOB, "again"), UserOffline)

    def test_autoReply(self) -> None:
        """
        An auto-reply rule answers the sender with its text, marked as an
        auto-reply, from the user; the message is delivered too.
        """
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="On the phone, back soon"))
        self.successResultOf(self.alice.sendMessage(BOB, "hi"))
        self.assertEqual([m.body for m in self.bobClient.messages], ["hi"])
        [reply] = self.aliceClient.messages
        self.assertEqual((reply.sender, reply.recipient, reply.body), (BOB, ALICE, "On the phone, back soon"))
        self.assertIs(reply.mark, MessageMark.AUTO_REPLY)

    def test_autoReplyPeriod(self) -> None:
        """
        A sender gets at most one auto-reply per C{auto_reply_period}: the
        next message within the period is delivered without one; one at
        the period's end gets a reply again. Each sender has its own.
        """
        self.assertEqual(HomeConfig().autoReplyPeriod, 3600.0)
        period = 600.0
        self.home.config = evolve(self.home.config, autoReplyPeriod=period)
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="busy"))
        self.successResultOf(self.alice.sendMessage(BOB, "1"))
        self.clock.advance(period - 1)
        self.successResultOf(self.alice.sendMessage(BOB, "2"))
        self.assertEqual(len(self.aliceClient.messages), 1)
        self.successResultOf(self.carol.sendMessage(BOB, "c"))
        self.assertEqual(len(self.carolClient.messages), 1)
        self.clock.advance(1)
        self.successResultOf(self.alice.sendMessage(BOB, "3"))
        self.assertEqual(len(self.aliceClient.messages), 2)
        self.assertEqual([m.body for m in self.bobClient.messages], ["1", "2", "c", "3"])

    def test_autoReplyMemoryBounded(self) -> None:
        """
        The senders replied to are forgotten once their period is over:
        what is kept is bounded by the senders of one period (a flood of
        made-up senders over time does not grow it).
        """
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, network=RuleNetwork.REMOTE, text="busy"))
        user = self.home._users[BOB]
        for n in range(100):
            self.successResultOf(self.router.deliver(Message(Address(f"u{n}", "xmpp.example"), BOB, "hi")))
        self.assertEqual(len(user.repliedTo), 100)
        self.clock.advance(self.home.config.autoReplyPeriod)
        self.bob.publish(Presence(PHONE))
        self.successResultOf(self.router.deliver(Message(ROMEO, BOB, "hi")))
        self.assertEqual(list(user.repliedTo), [ROMEO])

    def test_autoRepliesDoNotLoop(self) -> None:
        """
        Two users with auto-replies to each other exchange exactly one
        reply each: no rule acts on an auto-reply.
        """
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="bob is on the phone"))
        self.successResultOf(
            self.alice.setRules([PresenceRule([PresenceState.BUSY], RuleAction.AUTO_REPLY, text="alice is busy")])
        )
        self.alice.publish(Presence(BUSY))
        self.successResultOf(self.alice.sendMessage(BOB, "hi bob"))
        self.successResultOf(self.bob.sendMessage(ALICE, "hi alice"))
        self.assertEqual(
            [(m.body, m.mark) for m in self.aliceClient.messages],
            [("bob is on the phone", MessageMark.AUTO_REPLY), ("hi alice", None)],
        )
        self.assertEqual(
            [(m.body, m.mark) for m in self.bobClient.messages],
            [("hi bob", None), ("alice is busy", MessageMark.AUTO_REPLY)],
        )

    def test_markedNotActedOn(self) -> None:
        """
        No auto-reply or forward acts on a marked message (an auto-reply, a
        forwarded copy, an error): it is delivered as usual. A refusal
        still refuses it (which makes no new message).
        """
        for mark in MessageMark:
            self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="busy"))
            self.successResultOf(self.router.deliver(Message(ROMEO, BOB, "auto", mark=mark)))
            self.setRules(PresenceRule([PHONE], RuleAction.FORWARD, forwardTo=ALICE_XMPP))
            self.successResultOf(self.router.deliver(Message(ROMEO, BOB, "auto", mark=mark)))
        self.assertEqual(self.sent(), [])
        self.assertEqual(len(self.bobClient.messages), 2 * len(MessageMark))
        self.setRules(PresenceRule.refuse(PHONE, "tel:1"))
        self.failureResultOf(self.router.deliver(Message(ROMEO, BOB, "auto", mark=MessageMark.AUTO_REPLY)), UserOffline)

    def test_forward(self) -> None:
        """
        A forward rule sends a copy, marked as forwarded and naming the
        sender, from the user to the rule's address on any network; the
        original is delivered to the user's sessions too. A forward rule
        for one sender forwards only theirs.
        """
        self.setRules(PresenceRule([PHONE], RuleAction.FORWARD, sender=str(ALICE), forwardTo=ALICE_XMPP))
        self.successResultOf(self.alice.sendMessage(BOB, "call me"))
        self.successResultOf(self.carol.sendMessage(BOB, "not forwarded"))
        [copy] = self.sent()
        self.assertEqual((copy.sender, copy.recipient), (BOB, ALICE_XMPP))
        self.assertEqual(copy.body, "[forwarded from alice@corp.example] call me")
        self.assertIs(copy.mark, MessageMark.FORWARDED)
        self.assertEqual([m.body for m in self.bobClient.messages], ["call me", "not forwarded"])

    def test_forwardToSelf(self) -> None:
        """
        A rule may not forward to its own user.
        """
        self.failureResultOf(
            self.bob.setRules([PresenceRule([PHONE], RuleAction.FORWARD, forwardTo=BOB)]), ValueError
        )

    def test_network(self) -> None:
        """
        A rule for the other networks acts on their senders only.
        """
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, network=RuleNetwork.REMOTE, text="busy"))
        self.successResultOf(self.alice.sendMessage(BOB, "local"))
        self.successResultOf(self.router.deliver(Message(ROMEO, BOB, "remote")))
        self.assertEqual(self.aliceClient.messages, [])
        self.assertEqual([(m.recipient, m.body) for m in self.sent()], [(ROMEO, "busy")])

    def test_logged(self) -> None:
        """
        Each decision is logged at info, without the message's body nor
        the reply's text.
        """
        self.setRules(PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="secret reply"))
        with capturedLogs() as events:
            self.successResultOf(self.alice.sendMessage(BOB, "secret body"))
        lines = [formatEvent(e) for e in events]
        [line] = [l for l in lines if "Rule 1 of bob@corp.example" in l]
        self.assertIn("replied", line)
        self.assertNotIn("secret", "\n".join(lines))

    def test_order(self) -> None:
        """
        C{addRule} inserts at a position (1 for first) or last;
        C{removeRule} takes the rule at a position out; positions out of
        range are refused.
        """
        first = PresenceRule([PHONE], RuleAction.DELIVER)
        second = PresenceRule([AWAY], RuleAction.AUTO_REPLY, text="away")
        self.successResultOf(self.bob.addRule(second))
        self.successResultOf(self.bob.addRule(first, 1))
        self.assertEqual(self.successResultOf(self.bob.rules()), [first, second])
        self.failureResultOf(self.bob.addRule(first, 4), ValueError)
        self.failureResultOf(self.bob.removeRule(3), ValueError)
        self.successResultOf(self.bob.removeRule(1))
        self.assertEqual(self.successResultOf(self.bob.rules()), [second])
        self.assertEqual(self.store.rules[BOB], [second])

    def test_quota(self) -> None:
        """
        A user may have C{max_rules} rules: that many are taken, one more
        is refused, by C{setRules}, C{addRule} and C{setRule} alike.
        """
        limit = self.home.config.maxRules
        rules = [PresenceRule([PHONE], RuleAction.AUTO_REPLY, text=f"r{n}") for n in range(limit)]
        self.successResultOf(self.bob.setRules(rules))
        self.failureResultOf(self.bob.setRules(rules + rules[:1]), QuotaExceeded)
        self.failureResultOf(self.bob.addRule(rules[0]), QuotaExceeded)
        self.failureResultOf(self.bob.setRule(AWAY, "tel:1"), QuotaExceeded)
        self.assertEqual(len(self.store.rules[BOB]), limit)

    def test_legacySetRule(self) -> None:
        """
        The first protocol's C{setRule(state, alternate)} replaces the
        refusal for that one state where it stands (other rules kept, in
        order), adds one last, and removes it with C{None}.
        """
        reply = PresenceRule([PHONE, AWAY], RuleAction.AUTO_REPLY, text="later")
        self.setRules(PresenceRule.refuse(BUSY, "tel:1"), reply)
        self.successResultOf(self.bob.setRule(BUSY, "tel:2"))
        self.successResultOf(self.bob.setRule(AWAY, "tel:3"))
        self.assertEqual(
            self.successResultOf(self.bob.rules()),
            [PresenceRule.refuse(BUSY, "tel:2"), reply, PresenceRule.refuse(AWAY, "tel:3")],
        )
        self.successResultOf(self.bob.setRule(BUSY, None))
        self.successResultOf(self.bob.setRule(PresenceState.BE_RIGHT_BACK, None))
        self.assertEqual(self.successResultOf(self.bob.rules()), [reply, PresenceRule.refuse(AWAY, "tel:3")])
        self.failureResultOf(self.bob.setRule(PresenceState.ONLINE, "tel:1"), ValueError)


class UserRulesTests(SynchronousTestCase):
    """
    Tests for L{HomeServer.userRules} and L{HomeServer.setUserRules}, the
    methods the manhole and scripts call.
    """

    def setUp(self) -> None:
        self.directory = MemoryDirectory()
        self.directory.addAccount(AccountRecord(BOB, "hs1", "Bob", True, "{}"))
        self.store = MemoryHomeStore()
        self.home = HomeServer("hs1", DOMAIN, self.directory, self.store, Router(), Clock(), HomeConfig())

    def test_offline(self) -> None:
        """
        A user without sessions has its rules read and replaced in the
        store, checked as its own request would be.
        """
        rule = PresenceRule([PHONE], RuleAction.AUTO_REPLY, text="later")
        self.successResultOf(self.home.setUserRules(BOB, [rule]))
        self.assertEqual(self.store.rules[BOB], [rule])
        self.assertEqual(self.successResultOf(self.home.userRules(BOB)), [rule])
        self.failureResultOf(self.home.setUserRules(BOB, [PresenceRule([PHONE], RuleAction.REFUSE)]), ValueError)
        self.assertEqual(self.store.rules[BOB], [rule])
