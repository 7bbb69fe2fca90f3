# -*- test-case-name: tests.test_xmpp_mapping -*-
"""
The XMPP adapter's mappings, one table each: presence states to
C{<show/>} and status text, delivery statuses to stanza errors,
subscription events to presence types, and contacts' subscription states
to the C{subscription} attribute of roster items. The core enums' values
never reach the wire: every token XMPP sends comes from a table here.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from attrs import frozen

from twisted.words.xish import domish

from imgateway.adapters.xmpp.stream import xmlAttribute, xmlSafe, xmlTextElement
from imgateway.core.errors import DeliveryError, DeliveryStatus, statusError
from imgateway.core.address import Address
from imgateway.core.events import MessageMark, SubscriptionKind
from imgateway.core.presence import MAX_NOTE_CHARS, Presence, PresenceState
from imgateway.core.records import Subscription

__all__ = [
    "ERRORS",
    "MARKS",
    "NS_AUTO",
    "NS_HINTS",
    "addMark",
    "PRESENCE",
    "ROSTER_SUBSCRIPTIONS",
    "SUBSCRIPTION_KINDS",
    "SUBSCRIPTION_TYPES",
    "StanzaErrorSpec",
    "deliveryErrorFor",
    "fillPresence",
    "markOf",
    "presenceFromXMPP",
    "presenceStanzaParts",
    "presenceToXMPP",
    "stanzaErrorFor",
    "stanzaErrorText",
]


@frozen
class _Show:
    show: str | None
    label: str


#: Presence state to C{<show/>} and the label that names the state in the
#: status text when C{<show/>} alone cannot (DESIGN.md's table). C{None}
#: for states sent as C{unavailable}.
PRESENCE: dict[PresenceState, _Show | None] = {
    PresenceState.ONLINE: _Show(None, ""),
    PresenceState.BUSY: _Show("dnd", ""),
    PresenceState.BE_RIGHT_BACK: _Show("away", "Be right back"),
    PresenceState.AWAY: _Show("xa", ""),
    PresenceState.ON_THE_PHONE: _Show("dnd", "On the phone"),
    PresenceState.OUT_TO_LUNCH: _Show("xa", "Out to lunch"),
    PresenceState.APPEAR_OFFLINE: None,
    PresenceState.OFFLINE: None,
}

# <show/> to the state it means when the status text names no other.
_SHOW_DEFAULT = {None: PresenceState.ONLINE, "chat": PresenceState.ONLINE, "dnd": PresenceState.BUSY, "away": PresenceState.AWAY, "xa": PresenceState.AWAY}


def presenceToXMPP(presence: Presence) -> tuple[bool, str | None, str]:
    """
    @return: C{(available, show, status)}: whether it is an available
        presence, its C{<show/>} (C{None} for none) and its status text (the
        state's label, then the note).
    """
    spec = PRESENCE[presence.state]
    if spec is None:
        return (False, None, "")
    if spec.label and presence.note:
        status = f"{spec.label}: {presence.note}"
    else:
        status = spec.label or presence.note
    return (True, spec.show, status)


def fillPresence(stanza: domish.Element, presence: Presence) -> None:
    """
    Make a C{<presence/>} stanza carry C{presence}: its type (unavailable
    when closed), C{<show/>} and C{<status/>} (with characters XML forbids
    removed).
    """
    available, show, status = presenceToXMPP(presence)
    if not available:
        stanza["type"] = "unavailable"
    if show:
        stanza.addElement("show", content=show)
    if status:
        stanza.addElement("status", content=xmlSafe(status))


#: How many serialised presences L{presenceStanzaParts} remembers: one
#: fan-out (a user's presence to all its contacts' sessions) asks for the
#: same one once per recipient.
PRESENCE_STANZA_CACHE_SIZE = 256


@functools.lru_cache(maxsize=PRESENCE_STANZA_CACHE_SIZE)
def presenceStanzaParts(sender: Address, presence: Presence) -> tuple[str, str]:
    """
    The C{<presence/>} stanza that tells a client of C{sender}'s
    C{presence}, serialised once for all its recipients: the stanza is
    C{head + to + tail}, where C{to} is C{" to='...'"} (the recipient's
    full JID, L{imgateway.adapters.xmpp.stream.xmlAttribute}) or empty.
    The same text as a C{<presence/>} from C{sender} filled by
    L{fillPresence} and serialised by
    L{imgateway.adapters.xmpp.stream.HardenedXmlStream.send}. Results are
    cached (L{PRESENCE_STANZA_CACHE_SIZE} entries; both arguments are
    immutable values).
    """
    available, show, status = presenceToXMPP(presence)
    head = f"<presence from='{xmlAttribute(str(sender))}'"
    tail = "" if available else " type='unavailable'"
    children = ""
    if show:
        children += xmlTextElement("show", show)
    if status:
        children += xmlTextElement("status", status)
    tail += f">{children}</presence>" if children else "/>"
    return head, tail


def presenceFromXMPP(available: bool, show: str | None, status: str) -> Presence:
    """
    The presence an XMPP C{<presence/>} stands for; the inverse of
    L{presenceToXMPP} for every state XMPP can carry.
    """
    if not available:
        return Presence(PresenceState.OFFLINE)
    for state, spec in PRESENCE.items():
        if spec is not None and spec.label and spec.show == show and (status == spec.label or status.startswith(spec.label + ": ")):
            return Presence(state, _note(status[len(spec.label) + 2 :]))
    state = _SHOW_DEFAULT.get(show, PresenceState.ONLINE)
    return Presence(state, _note(status))


_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x85]")


def _note(status: str) -> str:
    # A note is one line of at most 1024 characters without control
    # characters but tab (Presence refuses the rest); a status text from a
    # client may hold anything. Change only what a note may not hold, so
    # that every note comes back as it was sent.
    text = _LINE_BREAK.sub(" ", status)
    text = "".join(c for c in text if c == "\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    return text[:MAX_NOTE_CHARS]


@frozen
class StanzaErrorSpec:
    """
    How one delivery status travels as an XMPP stanza error.

    @ivar private: The error goes out with its condition alone, without the
        core's text, which could name the recipient's state: the statuses
        that must not tell a stranger whether an account exists or is
        online (RFC 6121 section 8.5).
    """

    condition: str
    type: str
    private: bool = False


#: Delivery status to stanza error. An unknown user and one that is
#: offline (or that a stranger may not reach: the core answers strangers
#: C{OFFLINE} for unknown, disabled, offline and blocking users) are both
#: C{service-unavailable} (RFC 6121 8.5.2.1.1 and 8.5.1), never
#: C{item-not-found} nor C{recipient-unavailable}: the error must not tell
#: whether the account exists or is online. A recipient that blocks the
#: sender answers the same (XEP-0191 section 3.4).
ERRORS: dict[DeliveryStatus, StanzaErrorSpec] = {
    DeliveryStatus.NO_SUCH_USER: StanzaErrorSpec("service-unavailable", "cancel", private=True),
    DeliveryStatus.OFFLINE: StanzaErrorSpec("service-unavailable", "cancel", private=True),
    DeliveryStatus.BLOCKED: StanzaErrorSpec("service-unavailable", "cancel", private=True),
    DeliveryStatus.NOT_AUTHORISED: StanzaErrorSpec("not-authorized", "auth"),
    DeliveryStatus.BUSY: StanzaErrorSpec("redirect", "modify"),
    DeliveryStatus.LOOP_DETECTED: StanzaErrorSpec("undefined-condition", "cancel"),
    DeliveryStatus.TOO_LARGE: StanzaErrorSpec("policy-violation", "modify"),
    DeliveryStatus.RATE_LIMITED: StanzaErrorSpec("resource-constraint", "wait"),
    DeliveryStatus.QUOTA_EXCEEDED: StanzaErrorSpec("not-allowed", "cancel"),
    DeliveryStatus.NO_ROUTE: StanzaErrorSpec("remote-server-not-found", "cancel"),
    # A stale directory answer between the servers of this domain: the
    # router delivers again and never lets it out; if one did, it is a
    # failure of ours, and names no home server.
    DeliveryStatus.MOVED: StanzaErrorSpec("internal-server-error", "cancel", private=True),
    DeliveryStatus.SERVER_ERROR: StanzaErrorSpec("internal-server-error", "cancel"),
    DeliveryStatus.SERVICE_UNAVAILABLE: StanzaErrorSpec("service-unavailable", "wait"),
}

# Stanza error conditions from peers, to the status they stand for.
_FROM_CONDITION: dict[str, DeliveryStatus] = {
    **{spec.condition: status for status, spec in ERRORS.items()},
    "service-unavailable": DeliveryStatus.OFFLINE,
    "item-not-found": DeliveryStatus.NO_SUCH_USER,
    "forbidden": DeliveryStatus.BLOCKED,
    "recipient-unavailable": DeliveryStatus.OFFLINE,
    "gone": DeliveryStatus.BUSY,
    "jid-malformed": DeliveryStatus.NO_SUCH_USER,
    "not-acceptable": DeliveryStatus.BLOCKED,
    "not-allowed": DeliveryStatus.BLOCKED,
    "remote-server-timeout": DeliveryStatus.NO_ROUTE,
    "undefined-condition": DeliveryStatus.SERVER_ERROR,
}


def stanzaErrorFor(e: DeliveryError) -> tuple[StanzaErrorSpec, str | None]:
    """
    @return: The stanza error for a failed delivery, and the text to put in
        the error's element content (the alternate contact of a
        C{redirect}), if any.
    """
    spec = ERRORS.get(e.status, ERRORS[DeliveryStatus.SERVER_ERROR])
    alternate = getattr(e, "alternate", None)
    return spec, alternate if spec.condition == "redirect" else None


def stanzaErrorText(e: DeliveryError) -> str | None:
    """
    @return: The text to send with the stanza error for C{e}: the core's
        text, except for private statuses (L{StanzaErrorSpec.private}),
        which go without one.
    """
    spec = ERRORS.get(e.status, ERRORS[DeliveryStatus.SERVER_ERROR])
    return None if spec.private else (e.text or None)


def deliveryErrorFor(condition: str, text: str = "", content: str | None = None) -> DeliveryError:
    """
    The L{DeliveryError} a stanza error from a peer stands for.

    @param content: The condition element's text (a C{redirect}'s URI).
    """
    status = _FROM_CONDITION.get(condition, DeliveryStatus.SERVER_ERROR)
    return statusError(status, text or condition.replace("-", " "), content)


#: Subscription event kinds to XMPP presence types, and back.
SUBSCRIPTION_TYPES: dict[SubscriptionKind, str] = {
    SubscriptionKind.SUBSCRIBE: "subscribe",
    SubscriptionKind.AUTHORISE: "subscribed",
    SubscriptionKind.UNSUBSCRIBE: "unsubscribe",
    SubscriptionKind.REFUSE: "unsubscribed",
}
SUBSCRIPTION_KINDS = {v: k for k, v in SUBSCRIPTION_TYPES.items()}


#: A contact's subscription state to the C{subscription} attribute of its
#: roster item (RFC 6121 section 2.1.2.5).
ROSTER_SUBSCRIPTIONS: dict[Subscription, str] = {
    Subscription.NONE: "none",
    Subscription.TO: "to",
    Subscription.FROM: "from",
    Subscription.BOTH: "both",
}


#: The namespace of imgateway's loop mark on a message stanza:
#: C{<auto xmlns="urn:imgateway:auto" type="auto-reply"/>}.
NS_AUTO = "urn:imgateway:auto"

#: XEP-0334 message processing hints.
NS_HINTS = "urn:xmpp:hints"

#: A message's loop mark to the C{type} of its C{<auto/>} element.
MARKS: dict[MessageMark, str] = {
    MessageMark.AUTO_REPLY: "auto-reply",
    MessageMark.FORWARDED: "forwarded",
    MessageMark.ERROR: "error",
}
_MARK_FROM_TYPE = {v: k for k, v in MARKS.items()}


def addMark(stanza: domish.Element, mark: MessageMark | None) -> None:
    """
    Mark a message stanza made by a server (an auto-reply, a forwarded
    copy): imgateway's C{<auto/>} element, which a peer imgateway reads
    back so that its rules do not answer it, and the XEP-0334 C{no-copy}
    and C{no-store} hints (not for carbons nor archives). Nothing for a
    message a person wrote.
    """
    if mark is None:
        return
    stanza.addElement((NS_AUTO, "auto"))["type"] = MARKS[mark]
    stanza.addElement((NS_HINTS, "no-copy"))
    stanza.addElement((NS_HINTS, "no-store"))


def markOf(stanza: domish.Element) -> MessageMark | None:
    """
    The loop mark of a message stanza that arrived: that of its C{<auto/>}
    element (an unknown type counts as C{auto-reply}: marked all the same),
    or C{None}.
    """
    for child in stanza.elements(NS_AUTO, "auto"):
        return _MARK_FROM_TYPE.get(child.getAttribute("type") or "", MessageMark.AUTO_REPLY)
    return None
