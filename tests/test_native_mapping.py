# -*- test-case-name: tests.test_native_mapping -*-
"""
Tests for L{imgateway.adapters.native.mapping}: the native face's tables
between the core model and the wire, their round trips, and that the face,
the client library and the C{imgateway-client} command line use them
rather than the core enums' values.
"""

from __future__ import annotations

import argparse
import enum
import json
import io
import os
import re
from typing import Any, cast

from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.framing import Headers, Request, Response, serialise
from imgateway.adapters.native.mapping import (
    ACCESS_LISTS,
    DECISIONS,
    DELIVERY_CODES,
    MESSAGE_MARKS,
    PRESENCE,
    REASONS,
    RULE_ACTIONS,
    RULE_NETWORKS,
    SUBSCRIBE_ANSWERS,
    SUBSCRIPTION_KINDS,
    SUBSCRIPTIONS,
    TARGETS,
    TargetForm,
    accessListFromToken,
    codeForDelivery,
    codeForError,
    decisionFromToken,
    deliveryErrorFor,
    describeTargets,
    isDeliveryCode,
    markFromToken,
    presenceFromToken,
    ruleFromJSON,
    ruleToJSON,
    subscriptionFromToken,
    subscriptionKindFromToken,
    targetForm,
)
from imgateway.client.chat import ChatSession
from imgateway.client.formatting import (
    contactPresence,
    describeFailure,
    formatPresence,
    formatSubscription,
    formatWho,
    presenceText,
)
from imgateway.client.oneshot import _Output, _rule
from imgateway.client.parsing import parseState, parseStatus
from imgateway.client.protocol import ClientObserver, NativeClientProtocol
from imgateway.core.address import Address
from imgateway.core.errors import (
    AccountDisabled,
    AuthenticationFailed,
    DeliveryStatus,
    InvalidAddress,
    NoSuchUser,
    PersistenceFailed,
    ServerError,
    TooManySessions,
    UserBusy,
    UserOffline,
    statusError,
)
from imgateway.core.events import MessageMark, SubscriptionKind
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.core.records import AccessList, AuthorisationState, PresenceRule, RuleAction, RuleNetwork, Subscription
from tests.test_client_cli import FakeClient

#: The core enums whose members the native face maps.
CORE_ENUMS: list[type[enum.Enum]] = [
    PresenceState,
    SubscriptionKind,
    Subscription,
    AccessList,
    AuthorisationState,
    DeliveryStatus,
    RuleAction,
    RuleNetwork,
    MessageMark,
]

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")


def scrambleCoreValues(testCase: SynchronousTestCase) -> None:
    """
    Give every member of the core enums the native face maps a value that
    is none of the wire's, and forget the old values, for the rest of
    C{testCase}: code that puts an enum's C{.value} on the wire, or looks a
    wire token up with C{Enum(token)}, then fails.
    """
    for cls in CORE_ENUMS:
        for member in cls:
            testCase.patch(member, "_value_", f"core-{cls.__name__}-{member.name}")
        testCase.patch(cls, "_value2member_map_", {})


class TokenTableTests(SynchronousTestCase):
    """
    Each table of tokens covers its enum, holds the spec's tokens, and
    round-trips.
    """

    def assertTable(self, table: object, cls: type[enum.Enum], expected: dict[object, str], parse: object) -> None:
        """
        C{table} maps every member of C{cls} to the token C{expected} has,
        and C{parse} gives each token (in any case, with spaces around)
        back as its member; an unknown token is a L{ValueError}.
        """
        self.assertEqual(dict(table), expected)  # type: ignore[call-overload]
        self.assertEqual(set(expected), set(cls))
        for member, token in expected.items():
            self.assertIs(parse(token), member)  # type: ignore[operator]
            self.assertIs(parse(f" {token.upper()}\t"), member)  # type: ignore[operator]
        self.assertRaises(ValueError, parse, "no-such-token")
        self.assertRaises(ValueError, parse, "")

    def test_presence(self) -> None:
        """
        Presence states and their tokens (C{docs/protocol.md} §7.3).
        """
        self.assertTable(
            PRESENCE,
            PresenceState,
            {
                PresenceState.ONLINE: "online",
                PresenceState.BUSY: "busy",
                PresenceState.BE_RIGHT_BACK: "be-right-back",
                PresenceState.AWAY: "away",
                PresenceState.ON_THE_PHONE: "on-the-phone",
                PresenceState.OUT_TO_LUNCH: "out-to-lunch",
                PresenceState.APPEAR_OFFLINE: "appear-offline",
                PresenceState.OFFLINE: "offline",
            },
            presenceFromToken,
        )

    def test_ruleTokens(self) -> None:
        """
        Rule actions, rule networks and message marks, and their tokens
        (C{docs/protocol.md} §7.7, §7.8).
        """
        self.assertTable(
            RULE_ACTIONS,
            RuleAction,
            {
                RuleAction.DELIVER: "deliver",
                RuleAction.AUTO_REPLY: "auto-reply",
                RuleAction.FORWARD: "forward",
                RuleAction.REFUSE: "refuse",
            },
            lambda token: ruleFromJSON({"states": ["busy"], "action": token}).action,
        )
        self.assertTable(
            RULE_NETWORKS,
            RuleNetwork,
            {RuleNetwork.ANY: "any", RuleNetwork.LOCAL: "local", RuleNetwork.REMOTE: "remote"},
            lambda token: ruleFromJSON({"states": ["busy"], "network": token}).network,
        )
        self.assertTable(
            MESSAGE_MARKS,
            MessageMark,
            {MessageMark.AUTO_REPLY: "auto-reply", MessageMark.FORWARDED: "forwarded", MessageMark.ERROR: "error"},
            markFromToken,
        )

    def test_ruleJSON(self) -> None:
        """
        A rule's JSON form round-trips, with the wire's tokens whatever the
        core enums hold; a first-protocol list entry (C{presence} and
        C{alternate}) reads as a refusal; wrong fields are L{ValueError}s.
        """
        scrambleCoreValues(self)
        rule = PresenceRule(
            [PresenceState.ON_THE_PHONE, PresenceState.BUSY],
            RuleAction.FORWARD,
            sender="corp.example",
            network=RuleNetwork.LOCAL,
            forwardTo=Address("bob", "xmpp.example"),
        )
        data = ruleToJSON(rule)
        self.assertEqual(
            data,
            {
                "states": ["busy", "on-the-phone"],
                "action": "forward",
                "sender": "corp.example",
                "network": "local",
                "forward": "bob@xmpp.example",
            },
        )
        self.assertEqual(ruleFromJSON(json.loads(json.dumps(data))), rule)
        reply = PresenceRule([PresenceState.AWAY], RuleAction.AUTO_REPLY, text="back at 3")
        self.assertEqual(ruleFromJSON(ruleToJSON(reply)), reply)
        self.assertEqual(
            ruleFromJSON({"presence": "away", "alternate": "tel:1"}), PresenceRule.refuse(PresenceState.AWAY, "tel:1")
        )
        wrongs: list[object] = [
            [],
            {"states": "snoozing"},
            {"states": [1]},
            {"states": ["busy"], "action": "explode"},
            {"states": ["busy"], "network": "moon"},
            {"states": ["busy"], "colour": "red"},
            {"states": ["busy"], "text": 5},
            {"states": ["busy"], "forward": "not an address"},
        ]
        for wrong in wrongs:
            self.assertRaises(ValueError, ruleFromJSON, wrong)

    def test_subscriptionKinds(self) -> None:
        """
        Subscription events and their C{Subscription:} tokens (§7.9).
        """
        self.assertTable(
            SUBSCRIPTION_KINDS,
            SubscriptionKind,
            {
                SubscriptionKind.SUBSCRIBE: "subscribe",
                SubscriptionKind.UNSUBSCRIBE: "unsubscribe",
                SubscriptionKind.AUTHORISE: "authorise",
                SubscriptionKind.REFUSE: "refuse",
            },
            subscriptionKindFromToken,
        )

    def test_subscriptions(self) -> None:
        """
        Contact subscription states and their JSON tokens (§7.5).
        """
        self.assertTable(
            SUBSCRIPTIONS,
            Subscription,
            {Subscription.NONE: "none", Subscription.TO: "to", Subscription.FROM: "from", Subscription.BOTH: "both"},
            subscriptionFromToken,
        )

    def test_accessLists(self) -> None:
        """
        Access lists and their C{List:} tokens (§7.6).
        """
        self.assertTable(
            ACCESS_LISTS,
            AccessList,
            {AccessList.ALLOW: "allow", AccessList.BLOCK: "block", AccessList.NONE: "none"},
            accessListFromToken,
        )

    def test_decisions(self) -> None:
        """
        C{Decision: allow} allows, C{deny} does not (§7.4); anything else is
        a L{ValueError}.
        """
        self.assertEqual(dict(DECISIONS), {True: "allow", False: "deny"})
        for allow, token in DECISIONS.items():
            self.assertIs(decisionFromToken(token), allow)
            self.assertIs(decisionFromToken(token.upper()), allow)
        self.assertRaises(ValueError, decisionFromToken, "maybe")


class StatusTableTests(SynchronousTestCase):
    """
    Status codes, delivery statuses and core errors.
    """

    def test_deliveryCodes(self) -> None:
        """
        Every delivery status has the code §5 and §7.8 give it.
        """
        self.assertEqual(
            dict(DELIVERY_CODES),
            {
                DeliveryStatus.DELIVERED: 200,
                DeliveryStatus.MOVED: 301,
                DeliveryStatus.NOT_AUTHORISED: 401,
                DeliveryStatus.BLOCKED: 403,
                DeliveryStatus.NO_SUCH_USER: 404,
                DeliveryStatus.TOO_LARGE: 413,
                DeliveryStatus.RATE_LIMITED: 429,
                DeliveryStatus.QUOTA_EXCEEDED: 454,
                DeliveryStatus.OFFLINE: 480,
                DeliveryStatus.LOOP_DETECTED: 482,
                DeliveryStatus.BUSY: 486,
                DeliveryStatus.SERVER_ERROR: 500,
                DeliveryStatus.NO_ROUTE: 502,
                DeliveryStatus.SERVICE_UNAVAILABLE: 503,
            },
        )
        self.assertEqual(set(DELIVERY_CODES), set(DeliveryStatus))
        self.assertLessEqual(set(DELIVERY_CODES.values()), set(REASONS))

    def test_deliveryRoundTrip(self) -> None:
        """
        A failed delivery sent as its code and read back with
        L{deliveryErrorFor} is the same status, with its text (and, for
        486, its alternate).
        """
        for status in DeliveryStatus:
            if status is DeliveryStatus.DELIVERED:
                continue
            error = statusError(status, "why", "tel:+15550100")
            code = codeForDelivery(error)
            self.assertTrue(isDeliveryCode(code))
            back = deliveryErrorFor(code, "why", "tel:+15550100")
            self.assertIs(back.status, status)
            self.assertEqual(back.text, "why")
        busy = deliveryErrorFor(486, "in a call", "tel:+15550100")
        assert isinstance(busy, UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")

    def test_otherCodes(self) -> None:
        """
        A code that is no delivery status (or is success) reads back as a
        server error; such codes are not delivery codes.
        """
        for code in (200, 400, 418, 505, 999):
            self.assertIs(deliveryErrorFor(code, "odd").status, DeliveryStatus.SERVER_ERROR)
        for code in (200, 400, 426, 453, 505):
            self.assertFalse(isDeliveryCode(code), code)

    def test_coreErrors(self) -> None:
        """
        Core errors take the code of the first class of their MRO in the
        table; an unexpected error has none.
        """
        cases: list[tuple[Exception, int | None]] = [
            (InvalidAddress("x"), 400),
            (ValueError("x"), 400),
            (AuthenticationFailed("x"), 401),
            (AccountDisabled("x"), 401),
            (TooManySessions("x"), 453),
            (PersistenceFailed("x"), 500),
            (NoSuchUser(), 404),
            (UserOffline(), 480),
            (ServerError(), 500),
            (RuntimeError("x"), None),
        ]
        for error, code in cases:
            self.assertEqual(codeForError(error), code, error)

    def test_subscribeAnswers(self) -> None:
        """
        A SUBSCRIBE is answered 200 once authorised and 202 otherwise: a
        refusal looks like a pending request.
        """
        self.assertEqual(
            dict(SUBSCRIBE_ANSWERS),
            {AuthorisationState.AUTHORISED: 200, AuthorisationState.PENDING: 202, AuthorisationState.REFUSED: 202},
        )

    def test_reasonsAsSpecified(self) -> None:
        """
        The reason phrases are those of the table in C{docs/protocol.md}
        §5, code for code.
        """
        with open(SPEC, encoding="utf-8") as f:
            spec = f.read()
        section = spec.split("## 5. Status codes", 1)[1].split("\n## ", 1)[0]
        rows = dict((int(code), reason) for code, reason in re.findall(r"^\| (\d{3}) \| ([^|]+?) \|", section, re.M))
        self.assertEqual(rows, dict(REASONS))


class TargetFormTests(SynchronousTestCase):
    """
    L{targetForm} and L{describeTargets}.
    """

    def test_forms(self) -> None:
        """
        Each target is told apart by its scheme (in any case), an C{@} or
        being C{*}; validity is not checked here.
        """
        cases = {
            "*": TargetForm.STAR,
            "im:bob@corp.example": TargetForm.IM,
            "IM:bob@corp.example": TargetForm.IM,
            "im:": TargetForm.IM,
            "pres:bob@corp.example": TargetForm.PRES,
            "Pres:bob@corp.example": TargetForm.PRES,
            "bob@corp.example": TargetForm.ADDRESS,
            "corp.example": TargetForm.DOMAIN,
            "**": TargetForm.DOMAIN,
            "xmpp:bob@corp.example": TargetForm.OTHER_URI,
            "mailto:bob@corp.example": TargetForm.OTHER_URI,
            "tel:+15550100": TargetForm.OTHER_URI,
            "impres:bob@corp.example": TargetForm.OTHER_URI,
        }
        for target, form in cases.items():
            self.assertIs(targetForm(target), form, target)

    def test_describe(self) -> None:
        """
        The forms a method takes, in words, in the spec's order.
        """
        self.assertEqual(describeTargets("PING"), "*")
        self.assertEqual(describeTargets("SUBSCRIBE"), "pres:user@domain")
        self.assertEqual(describeTargets("MESSAGE"), "im:user@domain")
        self.assertEqual(describeTargets("ACCESS"), "im:user@domain, a domain or *")

    def test_specTable(self) -> None:
        """
        The table in C{docs/protocol.md} §2 lists, for every method, the
        forms L{TARGETS} gives it.
        """
        with open(SPEC, encoding="utf-8") as f:
            spec = f.read()
        section = spec.split("## 2. ", 1)[1].split("\n## ", 1)[0]
        written = {
            "`*`": TargetForm.STAR,
            "`im:user@domain`": TargetForm.IM,
            "`pres:user@domain`": TargetForm.PRES,
            "`domain`": TargetForm.DOMAIN,
        }
        found: dict[str, set[TargetForm]] = {}
        for methods, targets in re.findall(r"^\| ((?:`[A-Z]+`(?:, )?)+) \| ([^|]+) \|", section, re.M):
            forms = {form for text, form in written.items() if text in targets}
            for method in re.findall(r"`([A-Z]+)`", methods):
                found[method] = forms
        self.assertEqual(found, {m: set(f) for m, f in TARGETS.items()})


class _Observer(ClientObserver):
    def __init__(self) -> None:
        self.presences: list[tuple[Address, Presence]] = []

    def presenceReceived(self, address: Address, presence: Presence) -> None:
        self.presences.append((address, presence))


class ClientUsesTablesTests(SynchronousTestCase):
    """
    The client library reads and writes the wire through the tables: it
    works the same when the core enums' values are changed.
    """

    def setUp(self) -> None:
        scrambleCoreValues(self)
        self.observer = _Observer()
        self.client = NativeClientProtocol(self.observer)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def sent(self) -> Request:
        """
        The one request the client wrote.
        """
        data = self.transport.value()
        self.transport.clear()
        from imgateway.adapters.native.framing import FrameParser

        [frame] = FrameParser().feed(data)
        assert isinstance(frame, Request)
        return frame

    def answer(self, seq: int, code: int, *headers: tuple[str, str]) -> None:
        """
        Answer the client's request C{seq}.
        """
        self.client.dataReceived(serialise(Response(code, REASONS[code], Headers.of(("Seq", str(seq)), *headers))))

    def test_publish(self) -> None:
        """
        C{publish} and C{setRule} send the state's token, given the state or
        its token.
        """
        self.client.publish(PresenceState.BE_RIGHT_BACK, refresh=False)
        self.assertEqual(self.sent().headers.get("Presence"), "be-right-back")
        self.client.publish("on-the-phone", refresh=False)
        self.assertEqual(self.sent().headers.get("Presence"), "on-the-phone")
        self.client.setRule(PresenceState.BUSY, "tel:+15550100")
        self.assertEqual(self.sent().headers.get("Presence"), "busy")

    def test_presenceNotify(self) -> None:
        """
        A presence C{NOTIFY} is read into the state its token names.
        """
        notify = Request(
            "NOTIFY", "pres:bob@corp.example", Headers.of(("Seq", "1"), ("Event", "presence"), ("Presence", "out-to-lunch"))
        )
        self.client.dataReceived(serialise(notify))
        [(address, presence)] = self.observer.presences
        self.assertEqual((str(address), presence.state), ("bob@corp.example", PresenceState.OUT_TO_LUNCH))

    def test_deliveryStatus(self) -> None:
        """
        A 480 answer to a message fails it with L{UserOffline}; a 453 is a
        client error, not a delivery status.
        """
        d = self.client.sendMessage("bob@corp.example", "hi")
        self.answer(self.sent().seq, 480)
        self.failureResultOf(d, UserOffline)
        d2 = self.client.call("PING")
        self.answer(self.sent().seq, 453)
        failure = self.failureResultOf(d2)
        self.assertEqual(getattr(failure.value, "code", None), 453)


class CommandLineUsesTablesTests(SynchronousTestCase):
    """
    C{imgateway-client} parses and shows presence states by their native
    tokens, and failed deliveries by their status codes, through the
    tables: it reads and prints the same when the core enums' values are
    changed.
    """

    def setUp(self) -> None:
        scrambleCoreValues(self)

    def test_parseState(self) -> None:
        """
        Every state but C{offline} is typed as its token (in any case, with
        spaces or C{_} for C{-}) or an alias; the error for an unknown state
        lists the tokens.
        """
        for state, token in PRESENCE.items():
            if state is PresenceState.OFFLINE:
                self.assertRaises(ValueError, parseState, token)
                continue
            self.assertIs(parseState(token), state)
            self.assertIs(parseState(token.upper().replace("-", " ")), state)
        self.assertIs(parseState("brb"), PresenceState.BE_RIGHT_BACK)
        self.assertEqual(parseStatus("be right back in ten"), (PresenceState.BE_RIGHT_BACK, "in ten"))
        message = str(self.assertRaises(ValueError, parseState, "asleep"))
        self.assertIn("online, busy, be-right-back, away, on-the-phone, out-to-lunch, appear-offline;", message)
        self.assertIn("brb (be-right-back)", message)
        self.assertNotIn("core-", message)

    def test_presenceShown(self) -> None:
        """
        A presence is shown by its state's token.
        """
        self.assertEqual(presenceText(Presence(PresenceState.OUT_TO_LUNCH, "back at 2")), "out-to-lunch (back at 2)")
        self.assertEqual(
            formatPresence("bob@corp.example", Presence(PresenceState.APPEAR_OFFLINE)), "** bob@corp.example is now appear-offline"
        )

    def test_contacts(self) -> None:
        """
        The C{CONTACTS} answer is read through the tables: presence and
        subscription tokens, and the pending requests.
        """
        contact = {"address": "bob@corp.example", "subscription": "both", "presence": "on-the-phone", "note": "x"}
        self.assertEqual(contactPresence(contact), Presence(PresenceState.ON_THE_PHONE, "x"))
        self.assertEqual(contactPresence({"presence": "core-PresenceState-AWAY"}), OFFLINE)
        data = {
            "contacts": [contact, {"address": "carol@corp.example", "subscription": "from", "presence": "away"}],
            "requests": ["dave@corp.example"],
        }
        self.assertEqual(
            formatWho(data),
            [
                "** 2 contacts:",
                "**   bob@corp.example: on-the-phone (x) [subscription both]",
                "**   carol@corp.example: presence not shared [subscription from]",
                "** dave@corp.example asks to see your presence: /accept dave@corp.example or /deny dave@corp.example",
            ],
        )

    def test_subscriptionEvents(self) -> None:
        """
        A subscription event's token from the server is read through the
        table.
        """
        self.assertEqual(formatSubscription("bob@corp.example", "authorise"), "** bob@corp.example authorised you")
        self.assertEqual(formatSubscription("bob@corp.example", SubscriptionKind.REFUSE), "** bob@corp.example refused")
        self.assertEqual(formatSubscription("bob@corp.example", "odd"), "** bob@corp.example: subscription event odd")

    def test_failures(self) -> None:
        """
        A failed delivery is shown with its status code.
        """
        self.assertEqual(describeFailure(UserOffline(), "bob@corp.example"), "bob@corp.example is offline (480)")
        self.assertEqual(
            describeFailure(UserBusy("", "tel:+15550100"), "bob@corp.example"),
            "bob@corp.example is busy (486); try tel:+15550100",
        )

    def test_chatRule(self) -> None:
        """
        C{/rule} in a chat session says the state's token.
        """
        output: list[str] = []
        session = ChatSession(output.append, Clock(), pingInterval=0)
        client = FakeClient()
        session.start(cast(Any, client))
        del output[:]
        session.lineReceived("/rule lunch tel:+15550100")
        session.lineReceived("/rule phone")
        self.assertEqual(
            output,
            ["-> while out-to-lunch, messages are turned away naming tel:+15550100", "-> rule for on-the-phone removed"],
        )
        session.disconnected("")

    def test_oneShotRule(self) -> None:
        """
        C{imgateway-client rule} says the state's token.
        """
        out = io.StringIO()
        arguments = argparse.Namespace(words=["brb", "tel:+15550100"])
        self.successResultOf(ensureDeferred(_rule(cast(Any, FakeClient()), arguments, _Output(out, verbose=True))))
        self.assertEqual(out.getvalue(), "-> rule for be-right-back set\n")
