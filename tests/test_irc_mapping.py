# -*- test-case-name: tests.test_irc_mapping -*-
"""
Tests for L{imgateway.adapters.irc.mapping}: the presence/away table and
the face's nick mapping, with their round trips.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.irc.mapping import (
    AWAY_LABELS,
    addressForNick,
    awayFromPresence,
    maskForAddress,
    nickForAddress,
    presenceFromIRC,
)
from imgateway.adapters.irc.wire import IRCMessage, parseLine, serialise, splitPrefix
from imgateway.core.address import Address
from imgateway.core.presence import MAX_NOTE_CHARS, OFFLINE, Presence, PresenceState

NOTES = ["", "in a meeting", "Busy", "Away: x", " padded ", "a\tb", "\U0001f600 \u05e9", "x" * MAX_NOTE_CHARS]

HOME = "example.org"

ADDRESSES = [
    "bob@example.org",
    "john.smith@example.org",
    "a_b-c@example.org",
    "1st@example.org",
    "-dash@example.org",
    "alice+tag@example.org",
    "caf\u00e9@example.org",
    "\U0001f600@example.org",
    "a|b@example.org",
    "a^b@example.org",
    "a[2b]b@example.org",
    "frank@libera.irc",
    "frank@1and1.com",
    "bob@example.org.evil",
    "x@xn--caf-dma.example",
]


class PresenceTableTests(SynchronousTestCase):
    """
    The one presence/away table, both ways.
    """

    def test_roundTrip(self) -> None:
        """
        Every open state with every note comes back from IRC as it went.
        """
        for state in PresenceState:
            if not state.isOpen:
                continue
            for note in NOTES:
                presence = Presence(state, note)
                away = awayFromPresence(presence)
                if state is PresenceState.ONLINE:
                    self.assertIsNone(away)
                    continue
                self.assertIsNotNone(away)
                self.assertEqual(presenceFromIRC(True, away), presence, (state, note))

    def test_closedStates(self) -> None:
        """
        Offline and appear-offline are not away (the caller shows them as
        not on IRC); an IRC user not online is offline.
        """
        self.assertIsNone(awayFromPresence(OFFLINE))
        self.assertIsNone(awayFromPresence(Presence(PresenceState.APPEAR_OFFLINE, "x")))
        self.assertEqual(presenceFromIRC(False, "Busy"), OFFLINE)
        self.assertEqual(presenceFromIRC(False, None), OFFLINE)

    def test_fromIRC(self) -> None:
        """
        Not away is online; an away message without a label is away with
        the message as note; a label alone is its state.
        """
        self.assertEqual(presenceFromIRC(True, None), Presence(PresenceState.ONLINE))
        self.assertEqual(presenceFromIRC(True, "gone fishing"), Presence(PresenceState.AWAY, "gone fishing"))
        self.assertEqual(presenceFromIRC(True, "On the phone"), Presence(PresenceState.ON_THE_PHONE))
        self.assertEqual(presenceFromIRC(True, ""), Presence(PresenceState.AWAY))

    def test_hostileAwayMessage(self) -> None:
        """
        Formatting codes, control characters and line breaks in an away
        message are removed, and a long one is cut: the note is valid.
        """
        presence = presenceFromIRC(True, "\x02bold\x02\x0304red\x03\x00\x07\r\nx" + "y" * 5000)
        self.assertEqual(presence.state, PresenceState.AWAY)
        self.assertTrue(presence.note.startswith("boldred x"))
        self.assertEqual(len(presence.note), MAX_NOTE_CHARS)

    def test_everyState(self) -> None:
        """
        The table names every presence state.
        """
        self.assertEqual(set(AWAY_LABELS), set(PresenceState))


class NickMappingTests(SynchronousTestCase):
    """
    The face's nick for an address: deterministic, collision-free,
    reversible, and a valid RFC 2812 nick.
    """

    def test_examples(self) -> None:
        """
        The documented examples.
        """
        self.assertEqual(nickForAddress(Address.fromString("bob@example.org"), HOME), "bob")
        self.assertEqual(nickForAddress(Address.fromString("frank@libera.irc"), HOME), "frank|libera^irc")
        self.assertEqual(nickForAddress(Address.fromString("alice+x@example.org"), HOME), "alice[2b]x")
        self.assertEqual(nickForAddress(Address.fromString("1st@example.org"), HOME), "[31]st")

    def test_roundTripAndValid(self) -> None:
        """
        Every address comes back from its nick; every nick is distinct and
        made of RFC 2812 nick characters, not starting with a digit or
        C{-}.
        """
        nicks = set()
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-[]\\`^_{|}")
        for text in ADDRESSES:
            address = Address.fromString(text)
            nick = nickForAddress(address, HOME)
            self.assertEqual(addressForNick(nick, HOME), address, nick)
            self.assertTrue(set(nick) <= allowed, nick)
            self.assertNotIn(nick[0], "0123456789-")
            nicks.add(nick)
        self.assertEqual(len(nicks), len(ADDRESSES))

    def test_caseInsensitive(self) -> None:
        """
        A nick written in upper case (hex escapes too: C{CASEMAPPING=ascii}
        makes it the same nick) names the same address.
        """
        self.assertEqual(addressForNick("Alice[2B]X", HOME), Address.fromString("alice+x@example.org"))
        self.assertEqual(addressForNick("FRANK|Libera^IRC", HOME), Address.fromString("frank@libera.irc"))

    def test_onlyCanonical(self) -> None:
        """
        Other spellings name no address: needless escapes, leading zeros, the home domain spelt out, an escape beyond Unicode,
        garbage.
        """
        for nick in ["[62]ob", "alice[02b]x", "bob|example^org", "a[110000]", "", "|x", "bob|", "a b", "a[zz]"]:
            self.assertIsNone(addressForNick(nick, HOME), nick)

    def test_mask(self) -> None:
        """
        The mask is a valid source: it splits into the nick, a user and
        the domain, and survives a line.
        """
        address = Address.fromString("alice+x@libera.irc")
        mask = maskForAddress(address, HOME)
        self.assertEqual(splitPrefix(mask), ("alice[2b]x|libera^irc", "alice[2b]x", "libera.irc"))
        line = serialise(IRCMessage({}, mask, "PRIVMSG", ("me", "hi")))
        self.assertEqual(parseLine(line).prefix, mask)
