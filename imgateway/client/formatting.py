# -*- test-case-name: tests.test_client_cli -*-
"""
How C{imgateway-client} shows what the server says: messages, presence,
subscription events, contact lists, and why a request failed. Text from the
network is made safe to print on a terminal first (L{sanitise}).

Presence states are shown by their native tokens (what the user types, see
L{imgateway.client.parsing}) and failed deliveries with their status codes,
both from the native face's tables (L{imgateway.adapters.native.mapping});
what is said about them comes from display tables here. No core enum's
value is shown or parsed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from twisted.internet.error import ConnectError
from twisted.python.failure import Failure

from imgateway.adapters.native.mapping import (
    PRESENCE,
    codeForDelivery,
    presenceFromToken,
    subscriptionFromToken,
    subscriptionKindFromToken,
)
from imgateway.auth.sasl import SASLFailure
from imgateway.client.protocol import ClientError
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, DeliveryStatus, InvalidAddress, NotAuthorised, ServiceUnavailable, UserBusy
from imgateway.core.events import SubscriptionKind
from imgateway.core.presence import OFFLINE, Presence
from imgateway.core.records import Subscription

__all__ = [
    "PROGRAM",
    "contactPresence",
    "describeConnectFailure",
    "describeFailure",
    "errorLine",
    "errorOf",
    "formatContact",
    "formatContactRow",
    "formatMessage",
    "formatPresence",
    "formatSubscription",
    "formatWho",
    "presenceText",
    "sanitise",
]

#: The program's name, as it prefixes errors.
PROGRAM = "imgateway-client"


def errorLine(message: str) -> str:
    """
    A line for standard error: C{imgateway-client: MESSAGE}.
    """
    return f"{PROGRAM}: {message}\n"



# Bidirectional-text controls, which could make a line read as something else.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def sanitise(text: str, keepTabs: bool = False) -> str:
    """
    Make text from the network safe to print on a terminal: control
    characters (escape sequences, carriage returns, line breaks) and
    bidirectional overrides are shown escaped (C{\\x1b}, C{\\u202e}).

    @param keepTabs: Keep tab characters as they are.
    """
    out = []
    for c in text:
        if c == "\t" and keepTabs:
            out.append(c)
        elif c in _BIDI or unicodedata.category(c) in ("Cc", "Cs"):
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def formatMessage(sender: Address | str, body: str) -> str:
    """
    An incoming message: C{<< alice@corp.example: hello}. Each further
    line of a multi-line message is printed indented under the first.
    """
    prefix = f"<< {sanitise(str(sender))}: "
    lines = body.replace("\r\n", "\n").split("\n")
    indent = " " * len(prefix)
    return "\n".join([prefix + sanitise(lines[0])] + [indent + sanitise(line) for line in lines[1:]])


def presenceText(presence: Presence) -> str:
    """
    A presence as shown: C{away (at lunch)}, or C{online} without a note.
    """
    state = PRESENCE[presence.state]
    if presence.note:
        return f"{state} ({sanitise(presence.note)})"
    return state


def formatPresence(address: Address | str, presence: Presence) -> str:
    """
    A contact's presence changed: C{** bob@corp.example is now away (at lunch)}.
    """
    return f"** {sanitise(str(address))} is now {presenceText(presence)}"


#: How each subscription event reads.
_SUBSCRIPTION_TEXT: Mapping[SubscriptionKind, str] = {
    SubscriptionKind.SUBSCRIBE: "{who} asks to see your presence: /accept {who} or /deny {who}",
    SubscriptionKind.AUTHORISE: "{who} authorised you",
    SubscriptionKind.REFUSE: "{who} refused",
    SubscriptionKind.UNSUBSCRIBE: "{who} stopped watching your presence",
}


def formatSubscription(address: Address | str, kind: SubscriptionKind | str) -> str:
    """
    A subscription event: C{** carol@corp.example asks to see your
    presence: /accept carol@corp.example or /deny carol@corp.example},
    C{** bob@corp.example authorised you}, C{** bob@corp.example refused}.

    @param kind: The event, or its token from the server.
    """
    who = sanitise(str(address))
    if isinstance(kind, str):
        token = kind
        try:
            kind = subscriptionKindFromToken(token)
        except ValueError:
            return f"** {who}: subscription event {sanitise(token)}"
    return "** " + _SUBSCRIPTION_TEXT[kind].format(who=who)


def contactPresence(contact: Mapping[str, Any]) -> Presence:
    """
    The presence of one contact of the server's C{CONTACTS} answer
    (L{OFFLINE} when it names no known state).
    """
    try:
        return Presence(presenceFromToken(str(contact.get("presence", ""))), str(contact.get("note") or ""))
    except ValueError:
        return OFFLINE


def _subscription(contact: Mapping[str, Any]) -> Subscription:
    try:
        return subscriptionFromToken(str(contact.get("subscription", "")))
    except ValueError:
        return Subscription.NONE


def _subscriptionText(contact: Mapping[str, Any]) -> str:
    text = f"subscription {contact.get('subscription', 'none')}"
    if contact.get("pending"):
        text += ", pending"
    return sanitise(text)


def formatContactRow(contact: Mapping[str, Any]) -> str:
    """
    One line of C{imgateway-client presence}, tab-separated for scripts:
    C{bob@corp.example<TAB>away<TAB>at lunch<TAB>(subscription both)}.
    Tabs in the note become spaces.
    """
    note = sanitise(str(contact.get("note") or "").replace("\t", " "))
    return "\t".join(
        [
            sanitise(str(contact.get("address", "?"))),
            sanitise(str(contact.get("presence", "offline"))),
            note,
            f"({_subscriptionText(contact)})",
        ]
    )


def formatContact(contact: Mapping[str, Any]) -> str:
    """
    One contact as C{/who} shows it:
    C{bob@corp.example (Bob): away (at lunch) [subscription both]}. The
    presence of a contact one does not watch (subscription C{none} or
    C{from}) is not known, and is shown as such.
    """
    who = sanitise(str(contact.get("address", "?")))
    name = str(contact.get("name") or "")
    if name:
        who += f" ({sanitise(name)})"
    if _subscription(contact) in (Subscription.TO, Subscription.BOTH):
        seen = presenceText(contactPresence(contact))
    elif contact.get("pending"):
        seen = "awaiting authorisation"
    else:
        seen = "presence not shared"
    return f"{who}: {seen} [{_subscriptionText(contact)}]"


def formatWho(data: Mapping[str, Any]) -> list[str]:
    """
    The lines of C{/who}: the contacts, then the pending requests.

    @param data: The server's C{CONTACTS} answer.
    """
    contacts = list(data.get("contacts") or [])
    lines = []
    if contacts:
        lines.append(f"** {len(contacts)} contact{'s' if len(contacts) != 1 else ''}:")
        lines.extend("**   " + formatContact(c) for c in contacts)
    else:
        lines.append("** no contacts yet (/add ADDRESS)")
    for request in data.get("requests") or []:
        lines.append(formatSubscription(str(request), SubscriptionKind.SUBSCRIBE))
    return lines


#: How a failed delivery reads, by status: a template (C{{target}} is the
#: recipient) and whether the server's text adds to it.
_DELIVERY_TEXT: dict[DeliveryStatus, tuple[str, bool]] = {
    DeliveryStatus.NOT_AUTHORISED: ("{target}: not authorised", True),
    DeliveryStatus.BLOCKED: ("{target} blocks you", False),
    DeliveryStatus.NO_SUCH_USER: ("{target} does not exist", False),
    DeliveryStatus.TOO_LARGE: ("{target}: too large", True),
    DeliveryStatus.RATE_LIMITED: ("{target}: too many requests, slow down", False),
    DeliveryStatus.OFFLINE: ("{target} is offline", False),
    DeliveryStatus.LOOP_DETECTED: ("{target}: loop detected", False),
    DeliveryStatus.BUSY: ("{target} is busy", False),
    DeliveryStatus.SERVER_ERROR: ("{target}: server error", True),
    DeliveryStatus.NO_ROUTE: ("{target}: no route to its domain", True),
}


def describeFailure(error: BaseException, target: str | None = None) -> str:
    """
    Describe why a request failed, for a person: C{bob@corp.example is
    offline (480)}, C{bob@corp.example is busy (486); try tel:+15550100}.

    @param target: What the request was about (an address, an entry), if
        anything.
    """
    subject = sanitise(target) if target else "the server"
    if isinstance(error, DeliveryError):
        status = error.status
        template, withText = _DELIVERY_TEXT.get(status, ("{target}: failed", True))
        text = template.format(target=subject) + f" ({codeForDelivery(error)})"
        if withText and error.text:
            text += f": {sanitise(error.text)}"
        if isinstance(error, UserBusy) and error.alternate:
            text += f"; try {sanitise(error.alternate)}"
        return text
    if isinstance(error, ClientError):
        if error.code == 0:
            return sanitise(error.reason)
        prefix = f"{subject}: " if target else ""
        return f"{prefix}{sanitise(error.reason)} ({error.code})"
    if isinstance(error, InvalidAddress):
        return f"invalid address: {error}"
    if isinstance(error, ValueError):
        return str(error)
    if type(error).__name__ in ("TimeoutError", "CancelledError"):
        return "no answer from the server"
    return sanitise(str(error)) or type(error).__name__


def describeConnectFailure(error: BaseException, server: str, user: str) -> str:
    """
    Describe why connecting or logging in failed:
    C{cannot connect to tcp:127.0.0.1:5300: Connection refused}, or
    C{cannot log in as alice: Authentication failed (not-authorized)}.
    """
    if isinstance(error, ConnectError):
        why = error.args[0] if error.args and isinstance(error.args[0], str) and error.args[0] else error.MESSAGE
        return f"cannot connect to {server}: {why}"
    if isinstance(error, OSError):
        return f"cannot connect to {server}: {error}"
    login = f"cannot log in as {sanitise(user)}"
    if isinstance(error, NotAuthorised):
        return f"{login}: {sanitise(error.text)}"
    if isinstance(error, ClientError):
        if error.code == 426:
            return f"{login}: the server requires an encrypted connection (use --server tls:HOST:PORT)"
        if error.code == 0:
            return f"{login}: {sanitise(error.reason)}"
        return f"{login}: {sanitise(error.reason)} ({error.code})"
    if isinstance(error, SASLFailure):
        return f"{login}: the server could not prove it knows the password ({error})"
    if isinstance(error, ServiceUnavailable):
        # A router that cannot serve the user from where the client is, or
        # a server shutting down.
        return f"{login}: {sanitise(error.text)} (503)"
    return f"{login}: {describeFailure(error)}"


def errorOf(f: Failure) -> BaseException:
    """
    The exception a L{Failure} holds, for L{describeFailure}.
    """
    return f.value if f.value is not None else Exception(f.getErrorMessage())
