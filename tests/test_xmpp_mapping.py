# -*- test-case-name: tests.test_xmpp_mapping -*-
"""
Tests for L{imgateway.adapters.xmpp.mapping}: the XMPP adapter's presence,
error and subscription tables, and their round trips.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.xmpp.mapping import (
    ERRORS,
    PRESENCE,
    ROSTER_SUBSCRIPTIONS,
    SUBSCRIPTION_KINDS,
    SUBSCRIPTION_TYPES,
    StanzaErrorSpec,
    deliveryErrorFor,
    presenceFromXMPP,
    presenceToXMPP,
    stanzaErrorFor,
    stanzaErrorText,
)
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    MovedTo,
    NoSuchUser,
    ServerError,
    UserBusy,
    statusError,
)
from imgateway.core.events import SubscriptionKind
from imgateway.core.presence import MAX_NOTE_CHARS, Presence, PresenceState
from imgateway.core.records import Subscription

#: Notes that must survive the trip through XMPP unchanged: plain text,
#: tabs and repeated spaces, leading and trailing spaces, text that looks
#: like a label, emoji sequences joined with ZWJ, right-to-left text,
#: private-use and non-BMP characters, the longest note.
NOTES = [
    "in a meeting until 3",
    "a\tb  c",
    " padded ",
    "Be right back",
    ": colon first",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "\u05e9\u05dc\u05d5\u05dd \u200fRTL",
    "\ue000 private \U00020000",
    "x" * MAX_NOTE_CHARS,
]

#: The states XMPP carries as an available presence.
AVAILABLE = [s for s in PresenceState if s not in (PresenceState.APPEAR_OFFLINE, PresenceState.OFFLINE)]

#: Notes that an XMPP status can carry but that read back as another
#: state: they start with the label of a state that shares the same
#: C{<show/>}. See L{PresenceRoundTripTests.test_labelAmbiguity}.
AMBIGUOUS = {
    PresenceState.AWAY: "Out to lunch",
    PresenceState.BUSY: "On the phone",
}



# Statuses whose stanza error reads back as another status: a loop (see
# test_loopDetected), the statuses that must not tell a stranger apart
# (test_noExistenceLeak), a quota and a server shutting down
# (test_quotaExceeded), and a stale home of this domain (test_movedIsOurs).
_SHARED_CONDITIONS = (
    DeliveryStatus.LOOP_DETECTED,
    DeliveryStatus.NO_SUCH_USER,
    DeliveryStatus.BLOCKED,
    DeliveryStatus.QUOTA_EXCEEDED,
    DeliveryStatus.SERVICE_UNAVAILABLE,
    DeliveryStatus.MOVED,
)

class PresenceTableTests(SynchronousTestCase):
    """
    The presence table covers every state.
    """

    def test_everyState(self) -> None:
        """
        Every L{PresenceState} has a row.
        """
        self.assertEqual(set(PRESENCE), set(PresenceState))

    def test_wire(self) -> None:
        """
        Each state's C{<show/>} and status text, as DESIGN.md's table has
        them.
        """
        expected = {
            PresenceState.ONLINE: (True, None, ""),
            PresenceState.BUSY: (True, "dnd", ""),
            PresenceState.BE_RIGHT_BACK: (True, "away", "Be right back"),
            PresenceState.AWAY: (True, "xa", ""),
            PresenceState.ON_THE_PHONE: (True, "dnd", "On the phone"),
            PresenceState.OUT_TO_LUNCH: (True, "xa", "Out to lunch"),
            PresenceState.APPEAR_OFFLINE: (False, None, ""),
            PresenceState.OFFLINE: (False, None, ""),
        }
        for state, wire in expected.items():
            self.assertEqual(presenceToXMPP(Presence(state)), wire, state)

    def test_noteAfterLabel(self) -> None:
        """
        A note follows the state's label, after C{": "}; states without a
        label send the note alone.
        """
        self.assertEqual(presenceToXMPP(Presence(PresenceState.ON_THE_PHONE, "with Bob")), (True, "dnd", "On the phone: with Bob"))
        self.assertEqual(presenceToXMPP(Presence(PresenceState.BUSY, "with Bob")), (True, "dnd", "with Bob"))

    def test_hiddenNote(self) -> None:
        """
        An unavailable presence carries no status: appear-offline does not
        leak its note.
        """
        self.assertEqual(presenceToXMPP(Presence(PresenceState.APPEAR_OFFLINE, "hiding")), (False, None, ""))
        self.assertEqual(presenceToXMPP(Presence(PresenceState.OFFLINE, "gone")), (False, None, ""))


class PresenceRoundTripTests(SynchronousTestCase):
    """
    C{presenceFromXMPP(*presenceToXMPP(p)) == p} for every state XMPP can
    carry.
    """

    def test_everyStateNoNote(self) -> None:
        """
        Every available state comes back without a note.
        """
        for state in AVAILABLE:
            p = Presence(state)
            self.assertEqual(presenceFromXMPP(*presenceToXMPP(p)), p, state)

    def test_everyStateWithNotes(self) -> None:
        """
        Every available state comes back with each of L{NOTES} unchanged.
        """
        for state in AVAILABLE:
            for note in NOTES:
                p = Presence(state, note)
                self.assertEqual(presenceFromXMPP(*presenceToXMPP(p)), p, (state, note))

    def test_unavailable(self) -> None:
        """
        Appear-offline and offline both travel as C{unavailable}, which
        reads back as offline with no note.
        """
        for state in (PresenceState.APPEAR_OFFLINE, PresenceState.OFFLINE):
            for note in ("", "hiding"):
                wire = presenceToXMPP(Presence(state, note))
                self.assertEqual(presenceFromXMPP(*wire), Presence(PresenceState.OFFLINE), state)

    def test_labelAmbiguity(self) -> None:
        """
        The one thing the table cannot carry: a note of C{away} or C{busy}
        that starts with the label of the state sharing its C{<show/>}
        reads back as that state. Every other note round-trips.
        """
        self.assertEqual(
            presenceFromXMPP(*presenceToXMPP(Presence(PresenceState.AWAY, "Out to lunch"))),
            Presence(PresenceState.OUT_TO_LUNCH),
        )
        self.assertEqual(
            presenceFromXMPP(*presenceToXMPP(Presence(PresenceState.BUSY, "On the phone: Bob"))),
            Presence(PresenceState.ON_THE_PHONE, "Bob"),
        )
        for state, label in AMBIGUOUS.items():
            p = Presence(state, label.lower())
            self.assertEqual(presenceFromXMPP(*presenceToXMPP(p)), p)


class GenericClientTests(SynchronousTestCase):
    """
    What ordinary XMPP clients send maps onto the nearest state.
    """

    def test_show(self) -> None:
        """
        C{<show/>} alone: none and C{chat} are online, C{away} and C{xa}
        away, C{dnd} busy; an unknown value is online.
        """
        for show, state in (
            (None, PresenceState.ONLINE),
            ("chat", PresenceState.ONLINE),
            ("away", PresenceState.AWAY),
            ("xa", PresenceState.AWAY),
            ("dnd", PresenceState.BUSY),
            ("bogus", PresenceState.ONLINE),
            ("", PresenceState.ONLINE),
        ):
            self.assertEqual(presenceFromXMPP(True, show, ""), Presence(state), show)

    def test_statusIsNote(self) -> None:
        """
        A status that names no state is the note.
        """
        self.assertEqual(presenceFromXMPP(True, "dnd", "in a meeting"), Presence(PresenceState.BUSY, "in a meeting"))

    def test_labelNeedsItsShow(self) -> None:
        """
        A label is only read as its state with that state's C{<show/>}:
        C{"On the phone"} with C{away} is an away note.
        """
        self.assertEqual(presenceFromXMPP(True, "away", "On the phone"), Presence(PresenceState.AWAY, "On the phone"))
        self.assertEqual(presenceFromXMPP(True, None, "Be right back"), Presence(PresenceState.ONLINE, "Be right back"))

    def test_unavailableIgnoresRest(self) -> None:
        """
        An unavailable presence is offline, whatever its show and status.
        """
        self.assertEqual(presenceFromXMPP(False, "dnd", "bye\x00\n"), Presence(PresenceState.OFFLINE))

    def test_multilineStatus(self) -> None:
        """
        Line breaks in a status become spaces.
        """
        self.assertEqual(presenceFromXMPP(True, None, "line 1\r\nline 2\nline 3\rline 4\x85end\n").note, "line 1 line 2 line 3 line 4 end ")

    def test_controlCharacters(self) -> None:
        """
        Other control characters (but tab) and lone surrogates are
        removed.
        """
        status = "a\x00b\x01c\x1bd\x7fe\x9ff\tg\ud800h"
        self.assertEqual(presenceFromXMPP(True, "xa", status), Presence(PresenceState.AWAY, "abcdef\tgh"))

    def test_labelledMultiline(self) -> None:
        """
        A labelled status with line breaks and control characters in its
        note gives a clean note too (it used to raise L{ValueError}).
        """
        self.assertEqual(
            presenceFromXMPP(True, "dnd", "On the phone: with\nBob\x00"),
            Presence(PresenceState.ON_THE_PHONE, "with Bob"),
        )

    def test_longStatus(self) -> None:
        """
        A status longer than a note is cut to 1024 characters, after
        cleaning, with or without a label.
        """
        status = "ab\n" * 1000
        p = presenceFromXMPP(True, None, status)
        self.assertEqual(p.note, "ab " * 341 + "a")
        p = presenceFromXMPP(True, "away", "Be right back: " + status)
        self.assertEqual(p, Presence(PresenceState.BE_RIGHT_BACK, "ab " * 341 + "a"))

    def test_anyStatusIsAPresence(self) -> None:
        """
        Every status text, whatever it holds, gives a valid L{Presence}
        (the constructor validates the note).
        """
        nasty = "".join(map(chr, range(0, 0x250))) + "\ud800\udfff\u2028\u2029\ufeff\U0001f600"
        for show in (None, "chat", "away", "xa", "dnd"):
            for status in (nasty, "Be right back: " + nasty, "On the phone: " + nasty, "Out to lunch: " + nasty * 10):
                p = presenceFromXMPP(True, show, status)
                self.assertLessEqual(len(p.note), MAX_NOTE_CHARS)


class ErrorTableTests(SynchronousTestCase):
    """
    Delivery statuses to stanza errors and back.
    """

    def test_everyFailure(self) -> None:
        """
        Every failed status has a stanza error.
        """
        self.assertEqual(set(ERRORS), set(DeliveryStatus) - {DeliveryStatus.DELIVERED})

    def test_specs(self) -> None:
        """
        Conditions and types are RFC 6120's.
        """
        conditions = {
            "bad-request", "conflict", "feature-not-implemented", "forbidden", "gone",
            "internal-server-error", "item-not-found", "jid-malformed", "not-acceptable",
            "not-allowed", "not-authorized", "policy-violation", "recipient-unavailable",
            "redirect", "registration-required", "remote-server-not-found",
            "remote-server-timeout", "resource-constraint", "service-unavailable",
            "subscription-required", "undefined-condition", "unexpected-request",
        }
        for status, spec in ERRORS.items():
            self.assertIn(spec.condition, conditions, status)
            self.assertIn(spec.type, ("auth", "cancel", "continue", "modify", "wait"), status)

    def test_roundTrip(self) -> None:
        """
        For every status but C{LOOP_DETECTED} (see L{test_loopDetected})
        and C{NO_SUCH_USER} and C{BLOCKED} (see L{test_noExistenceLeak})
        and C{QUOTA_EXCEEDED} and C{SERVICE_UNAVAILABLE} (see
        L{test_quotaExceeded}), the error a peer
        sends back with that status's condition stands for the same
        status, and keeps the text.
        """
        for status, spec in ERRORS.items():
            if status in _SHARED_CONDITIONS:
                continue
            e = deliveryErrorFor(spec.condition, "some text", None)
            self.assertIsInstance(e, DeliveryError)
            self.assertIs(e.status, status, spec.condition)
            self.assertEqual(e.text, "some text")

    def test_roundTripThroughStanzaErrorFor(self) -> None:
        """
        L{stanzaErrorFor} of each status's error, read back with
        L{deliveryErrorFor}, is the same status again (but those of
        L{_SHARED_CONDITIONS}).
        """
        for status in ERRORS:
            if status in _SHARED_CONDITIONS:
                continue
            spec, content = stanzaErrorFor(statusError(status, "why"))
            self.assertIs(deliveryErrorFor(spec.condition, "why", content).status, status)

    def test_noExistenceLeak(self) -> None:
        """
        An unknown user (404) and an offline one (480, what the core tells
        strangers about unknown, disabled, offline and blocking users) and
        a recipient that blocks the sender (403, XEP-0191 3.4) are the same
        stanza error, C{service-unavailable} of type C{cancel} (RFC 6121
        8.5), sent without the core's text; a peer's C{service-unavailable}
        reads back as offline (480), and its C{item-not-found},
        C{recipient-unavailable} and C{forbidden} as before.
        """
        self.assertIs(deliveryErrorFor("forbidden").status, DeliveryStatus.BLOCKED)
        for status in (DeliveryStatus.NO_SUCH_USER, DeliveryStatus.OFFLINE, DeliveryStatus.BLOCKED):
            e = statusError(status, f"{status.name} says who")
            self.assertEqual(stanzaErrorFor(e), (StanzaErrorSpec("service-unavailable", "cancel", private=True), None))
            self.assertIsNone(stanzaErrorText(e))
        self.assertEqual(stanzaErrorText(statusError(DeliveryStatus.BUSY, "in a meeting")), "in a meeting")
        self.assertIs(deliveryErrorFor("service-unavailable").status, DeliveryStatus.OFFLINE)
        self.assertIs(deliveryErrorFor("item-not-found").status, DeliveryStatus.NO_SUCH_USER)
        self.assertIs(deliveryErrorFor("recipient-unavailable").status, DeliveryStatus.OFFLINE)

    def test_loopDetected(self) -> None:
        """
        A loop travels as C{undefined-condition}, and a peer's
        C{undefined-condition} reads back as a server error, not as a
        loop: XMPP has no condition for loops, and most peers that send
        C{undefined-condition} mean something else.
        """
        self.assertEqual(ERRORS[DeliveryStatus.LOOP_DETECTED], StanzaErrorSpec("undefined-condition", "cancel"))
        self.assertIs(deliveryErrorFor("undefined-condition").status, DeliveryStatus.SERVER_ERROR)

    def test_movedIsOurs(self) -> None:
        """
        A L{MovedTo} that got out (the router never lets one) goes to a
        peer as our own failure, without the home server's name.
        """
        error = MovedTo("moved", "hs2")
        spec, content = stanzaErrorFor(error)
        self.assertEqual(spec, StanzaErrorSpec("internal-server-error", "cancel", private=True))
        self.assertIsNone(content)
        self.assertIsNone(stanzaErrorText(error))

    def test_quotaExceeded(self) -> None:
        """
        A quota travels as C{not-allowed}, a server shutting down as
        C{service-unavailable}; a peer's C{not-allowed} reads back as
        blocked and its C{service-unavailable} as offline, which is what
        peers mostly mean by them.
        """
        self.assertEqual(ERRORS[DeliveryStatus.QUOTA_EXCEEDED], StanzaErrorSpec("not-allowed", "cancel"))
        self.assertIs(deliveryErrorFor("not-allowed").status, DeliveryStatus.BLOCKED)
        self.assertEqual(ERRORS[DeliveryStatus.SERVICE_UNAVAILABLE], StanzaErrorSpec("service-unavailable", "wait"))
        self.assertIs(deliveryErrorFor("service-unavailable").status, DeliveryStatus.OFFLINE)

    def test_busyAlternate(self) -> None:
        """
        A busy recipient's alternate contact travels in the C{redirect}
        condition's content, both ways.
        """
        spec, content = stanzaErrorFor(UserBusy("in a meeting", "tel:+15550100"))
        self.assertEqual((spec.condition, spec.type, content), ("redirect", "modify", "tel:+15550100"))
        e = deliveryErrorFor(spec.condition, "in a meeting", content)
        self.assertIsInstance(e, UserBusy)
        assert isinstance(e, UserBusy)
        self.assertEqual((e.text, e.alternate), ("in a meeting", "tel:+15550100"))

    def test_busyWithoutAlternate(self) -> None:
        """
        A busy recipient with no alternate gives a C{redirect} with no
        content.
        """
        spec, content = stanzaErrorFor(UserBusy("busy"))
        self.assertEqual((spec.condition, content), ("redirect", None))
        e = deliveryErrorFor("redirect")
        assert isinstance(e, UserBusy)
        self.assertIsNone(e.alternate)

    def test_contentOnlyForRedirect(self) -> None:
        """
        Only C{redirect} carries content out; content on other conditions
        from a peer is ignored.
        """
        for status in ERRORS:
            if status is not DeliveryStatus.BUSY:
                self.assertIsNone(stanzaErrorFor(statusError(status, "x", "tel:1"))[1], status)
        self.assertIs(deliveryErrorFor("item-not-found", "", "xmpp:x@y").status, DeliveryStatus.NO_SUCH_USER)

    def test_defaultText(self) -> None:
        """
        Without a text from the peer, the condition names the failure.
        """
        self.assertEqual(deliveryErrorFor("item-not-found").text, "item not found")

    def test_unknownStatus(self) -> None:
        """
        An error whose status has no row (not a failure) is sent as
        C{internal-server-error}.
        """

        class Odd(DeliveryError):
            status = DeliveryStatus.DELIVERED

        self.assertEqual(stanzaErrorFor(Odd()), (StanzaErrorSpec("internal-server-error", "cancel"), None))
        self.assertEqual(stanzaErrorFor(ServerError())[0].condition, "internal-server-error")
        self.assertEqual(stanzaErrorFor(NoSuchUser())[0].condition, "service-unavailable")


class PeerConditionTests(SynchronousTestCase):
    """
    Conditions that peers send but we never do map onto the nearest
    status.
    """

    def test_peerConditions(self) -> None:
        """
        The extra conditions from peers.
        """
        for condition, status in (
            ("service-unavailable", DeliveryStatus.OFFLINE),
            ("gone", DeliveryStatus.BUSY),
            ("jid-malformed", DeliveryStatus.NO_SUCH_USER),
            ("not-acceptable", DeliveryStatus.BLOCKED),
            ("not-allowed", DeliveryStatus.BLOCKED),
            ("remote-server-timeout", DeliveryStatus.NO_ROUTE),
            ("undefined-condition", DeliveryStatus.SERVER_ERROR),
        ):
            self.assertIs(deliveryErrorFor(condition).status, status, condition)

    def test_goneAlternate(self) -> None:
        """
        C{gone} carries the new address like C{redirect} does.
        """
        e = deliveryErrorFor("gone", "moved", "xmpp:juliet@new.example")
        assert isinstance(e, UserBusy)
        self.assertEqual(e.alternate, "xmpp:juliet@new.example")

    def test_unknownCondition(self) -> None:
        """
        A condition we do not know, or none at all, is a server error.
        """
        for condition in ("made-up", "", "ITEM-NOT-FOUND", "item-not-found "):
            e = deliveryErrorFor(condition, "odd")
            self.assertIs(e.status, DeliveryStatus.SERVER_ERROR, condition)
            self.assertEqual(e.text, "odd")


class SubscriptionTests(SynchronousTestCase):
    """
    Subscription kinds to presence types and back.
    """

    def test_types(self) -> None:
        """
        The four kinds are XMPP's four subscription presence types.
        """
        self.assertEqual(
            SUBSCRIPTION_TYPES,
            {
                SubscriptionKind.SUBSCRIBE: "subscribe",
                SubscriptionKind.AUTHORISE: "subscribed",
                SubscriptionKind.UNSUBSCRIBE: "unsubscribe",
                SubscriptionKind.REFUSE: "unsubscribed",
            },
        )

    def test_roundTrip(self) -> None:
        """
        Every kind maps to a type that maps back to it, and every type back
        to a kind that maps to it.
        """
        self.assertEqual(set(SUBSCRIPTION_TYPES), set(SubscriptionKind))
        for kind, type in SUBSCRIPTION_TYPES.items():
            self.assertIs(SUBSCRIPTION_KINDS[type], kind)
        for type, kind in SUBSCRIPTION_KINDS.items():
            self.assertEqual(SUBSCRIPTION_TYPES[kind], type)

    def test_otherTypes(self) -> None:
        """
        Presence types that are not subscriptions have no kind.
        """
        for type in (None, "", "unavailable", "probe", "error", "Subscribe"):
            self.assertNotIn(type, SUBSCRIPTION_KINDS)


class RosterSubscriptionTests(SynchronousTestCase):
    """
    Contacts' subscription states to the C{subscription} attribute of
    roster items.
    """

    def test_table(self) -> None:
        """
        Each state has its RFC 6121 token, and no two states share one.
        """
        self.assertEqual(
            ROSTER_SUBSCRIPTIONS,
            {Subscription.NONE: "none", Subscription.TO: "to", Subscription.FROM: "from", Subscription.BOTH: "both"},
        )
        self.assertEqual(set(ROSTER_SUBSCRIPTIONS), set(Subscription))
        self.assertEqual(len(set(ROSTER_SUBSCRIPTIONS.values())), len(Subscription))
