# -*- test-case-name: tests.test_irc_mapping -*-
"""
The IRC adapter's mappings, one table each, shared by the face and the
bridge: presence states to and from IRC's away state and message, and the
nick that stands for an address on the IRC face.

Presence: an IRC user is online or not, and away or not with an away
message. A gateway user's state other than online goes to IRC as an away
message starting with the state's label (L{AWAY_LABELS}), then C{": "} and
the note; an away message from IRC is read back the same way, and one that
starts with no label is C{away} with the message as its note.

Nicks (the face's nick for an address, L{nickForAddress}): deterministic,
collision-free and reversible (L{addressForNick}); only characters of
RFC 2812 nicks, in lower case (the face's C{CASEMAPPING} is C{ascii}):
    - C{a}-C{z}, C{0}-C{9}, C{-} and C{_} stand for themselves; C{.} is
      written C{^};
    - every other character is C{[hex]}, its code point in lower-case
      hexadecimal without leading zeros (C{+} is C{[2b]}, C{é} is C{[e9]}),
      and so is a digit or C{-} that would start the nick;
    - an address on the user's own domain is its local part alone
      (C{bob@example.org} is C{bob}); any other is the local part, C{|},
      then the domain (C{frank@libera.irc} is C{frank|libera^irc}).
"""

from __future__ import annotations

import re
import unicodedata

from imgateway.core.address import Address
from imgateway.core.errors import InvalidAddress
from imgateway.core.presence import MAX_NOTE_CHARS, OFFLINE, Presence, PresenceState

__all__ = [
    "AWAY_LABELS",
    "addressForNick",
    "awayFromPresence",
    "maskForAddress",
    "nickForAddress",
    "presenceFromIRC",
]

#: Presence state to the label that starts its IRC away message; C{None}
#: for the states that are not away on IRC (online is here and not away;
#: appear-offline and offline are not on IRC at all).
AWAY_LABELS: dict[PresenceState, str | None] = {
    PresenceState.ONLINE: None,
    PresenceState.BUSY: "Busy",
    PresenceState.BE_RIGHT_BACK: "Be right back",
    PresenceState.AWAY: "Away",
    PresenceState.ON_THE_PHONE: "On the phone",
    PresenceState.OUT_TO_LUNCH: "Out to lunch",
    PresenceState.APPEAR_OFFLINE: None,
    PresenceState.OFFLINE: None,
}

_FORMATTING = re.compile(
    r"\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?"
    r"|\x04(?:[0-9A-Fa-f]{6}(?:,[0-9A-Fa-f]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")


def awayFromPresence(presence: Presence) -> str | None:
    """
    @return: The IRC away message for a presence: C{None} when not away
        (online, and the closed states, which the caller shows as being
        offline), else the state's label, then C{": "} and the note if
        there is one.
    """
    label = AWAY_LABELS[presence.state]
    if label is None:
        return None
    return f"{label}: {presence.note}" if presence.note else label


def _note(message: str) -> str:
    # IRC away messages may hold formatting codes, control characters and
    # anything the sender's charset had; a note may not.
    text = _LINE_BREAK.sub(" ", _FORMATTING.sub("", message))
    return "".join(c for c in text if c == "\t" or unicodedata.category(c) not in ("Cc", "Cs"))


def presenceFromIRC(online: bool, awayMessage: str | None) -> Presence:
    """
    The presence an IRC user's state stands for; the inverse of
    L{awayFromPresence} for every open state and note.

    @param online: Whether the user is on the network.
    @param awayMessage: Their away message, C{None} when not away.
    """
    if not online:
        return OFFLINE
    if awayMessage is None:
        return Presence(PresenceState.ONLINE)
    message = _note(awayMessage)
    for state, label in AWAY_LABELS.items():
        if label is None:
            continue
        if message == label:
            return Presence(state)
        if message.startswith(label + ": "):
            return Presence(state, message[len(label) + 2 :][:MAX_NOTE_CHARS])
    return Presence(PresenceState.AWAY, message[:MAX_NOTE_CHARS])


_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_ESCAPE = re.compile(r"\[([0-9a-f]{1,6})\]|\^")


def _encode(text: str, first: bool) -> str:
    out = []
    for i, c in enumerate(text):
        if c == ".":
            out.append("^")
        elif c in _LITERAL and not (first and i == 0 and c in "0123456789-"):
            out.append(c)
        else:
            out.append(f"[{ord(c):x}]")
    return "".join(out)


def nickForAddress(address: Address, homeDomain: str) -> str:
    """
    @param address: A contact's (or the user's own) address.
    @param homeDomain: The domain of the user the nick is shown to.
    @return: The nick that stands for C{address} (see the module's
        docstring).
    """
    nick = _encode(address.local, True)
    if address.domain != homeDomain:
        nick += "|" + _encode(address.domain, False)
    return nick


def maskForAddress(address: Address, homeDomain: str) -> str:
    """
    @return: The full source C{nick!user@host} of messages from
        C{address}: its nick, its local part written as in the nick, and
        its domain.
    """
    return f"{nickForAddress(address, homeDomain)}!{_encode(address.local, False)}@{address.domain}"


def _decode(text: str) -> str:
    def unescape(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return "."
        code = int(match.group(1), 16)
        if code > 0x10FFFF:
            raise ValueError("not a code point")
        return chr(code)

    return _ESCAPE.sub(unescape, text)


def addressForNick(nick: str, homeDomain: str) -> Address | None:
    """
    The address a nick stands for; the inverse of L{nickForAddress}.

    @param nick: A nick as a client wrote it (ASCII letters in any case).
    @param homeDomain: The domain of the user who wrote it.
    @return: The address, or C{None} if no address has this nick.
    """
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in nick)
    local, bar, domain = lowered.partition("|")
    try:
        address = Address.fromParts(_decode(local), _decode(domain) if bar else homeDomain)
    except (InvalidAddress, ValueError):
        return None
    # Only the one spelling nickForAddress gives names the address: no
    # needless escapes, no "|" and the home domain, nothing that
    # normalising changed.
    if nickForAddress(address, homeDomain) != lowered:
        return None
    return address
