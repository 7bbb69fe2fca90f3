# -*- test-case-name: tests.test_events -*-
"""
The core events that flow between sessions, home servers, the router and
protocol adapters: L{Message}, L{PresenceUpdate}, L{PresenceProbe} and
L{SubscriptionEvent}.

Every event has a C{sender}, a C{recipient} and a hop count, so the router can
deliver any of them by the recipient's domain alone and stop loops.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from typing import Any, Union

from attrs import evolve, field, frozen, validators

from imgateway._compiled import defaultField
from imgateway.core.address import Address
from imgateway.core.errors import LoopDetected
from imgateway.core.presence import Presence

__all__ = [
    "DEFAULT_MAX_HOPS",
    "Event",
    "Message",
    "MessageMark",
    "PresenceProbe",
    "PresenceUpdate",
    "SubscriptionEvent",
    "SubscriptionKind",
    "checkMessageId",
    "forwarded",
    "newMessageId",
    "newRoutingId",
    "preCheckedMessage",
]

#: Hops an event may take before it is treated as looping.
DEFAULT_MAX_HOPS = 16

#: Longest message id, in characters.
MAX_MESSAGE_ID_CHARS = 128


#: How many message ids L{newMessageId} draws from C{os.urandom} at once.
MESSAGE_IDS_PER_DRAW = 64

#: Message ids drawn and not given out yet (emptied in a forked child).
_messageIds: list[str] = []

#: Where L{newMessageId} draws its bits.
_urandom = os.urandom


def newMessageId() -> str:
    """
    @return: A fresh, globally unique message id: 128 random bits from
        C{os.urandom} as 32 hexadecimal digits (the form of a
        C{uuid.uuid4().hex}, made at a fraction of its cost: one is made
        for every message a client sends without an id of its own). The
        bits of L{MESSAGE_IDS_PER_DRAW} ids are drawn at once, so that not
        every message costs a system call; a forked child never gives out
        those its parent drew.
    """
    if not _messageIds:
        digits = _urandom(16 * MESSAGE_IDS_PER_DRAW).hex()
        _messageIds.extend([digits[start : start + 32] for start in range(0, 32 * MESSAGE_IDS_PER_DRAW, 32)])
    return _messageIds.pop()


#: This process's routing ids: a random prefix (64 bits, drawn once per
#: process, and again in a forked child) and a counter.
_ROUTING_PREFIX = os.urandom(8).hex()
_routingCounter = itertools.count(1)


def _newRoutingPrefix() -> None:
    """
    Draw a new routing id prefix (in a forked child: never the parent's),
    and forget the message ids the parent drew.
    """
    global _ROUTING_PREFIX
    _ROUTING_PREFIX = os.urandom(8).hex()
    _messageIds.clear()


os.register_at_fork(after_in_child=_newRoutingPrefix)


def newRoutingId() -> str:
    """
    @return: A fresh routing id (L{Message.routingId}): unique among the
        ids of this process by its counter, and among those of other
        processes by its random prefix (what duplicate and loop detection
        need), and much cheaper to make than a L{uuid.uuid4}.
    """
    return f"{_ROUTING_PREFIX}{next(_routingCounter):x}"


def _checkMessageId(instance: object, attribute: object, value: str) -> None:
    if not value or len(value) > MAX_MESSAGE_ID_CHARS:
        raise ValueError(f"message id must be 1 to {MAX_MESSAGE_ID_CHARS} characters")
    if not value.isprintable() or " " in value:
        raise ValueError("message id must be printable, without spaces")


class MessageMark(enum.Enum):
    """
    What marks a message that a server made rather than a person wrote:
    no presence rule acts on it (auto-replies and forwards never answer
    it), so two users' rules cannot loop. Faces and links carry it (the
    native C{Auto} header, an XMPP C{<auto xmlns="urn:imgateway:auto"/>}
    element with the XEP-0334 no-copy and no-store hints).

    @cvar AUTO_REPLY: A presence rule's automatic reply.
    @cvar FORWARDED: A copy a presence rule forwarded to another address.
    @cvar ERROR: An error report in message form.
    """

    AUTO_REPLY = "auto-reply"
    FORWARDED = "forwarded"
    ERROR = "error"


@frozen
class Message:
    """
    An instant message (CPIM-like, RFC 3862).

    @ivar sender: Who sends it.
    @ivar recipient: Who it is for.
    @ivar body: The text of the message (left out of the C{repr}, which
        logs show).
    @ivar contentType: The MIME type of C{body}.
    @ivar messageId: The id the sender's client gave it (or one the server
        made up when it gave none), echoed where the protocols show ids.
        Clients choose it, so nothing relies on it being unique.
    @ivar timestamp: POSIX time at which the sender's server accepted it.
    @ivar hops: How many servers it has passed through.
    @ivar routingId: The id the server mints for the message when it makes
        it, never taken from the wire: what loop and duplicate detection go
        by (L{imgateway.router.router.Router}). It is not part of the
        message's value (two messages that say the same thing compare
        equal).
    @ivar mark: L{MessageMark} of a message a server made (an auto-reply,
        a forwarded copy, an error), or C{None} for one a person wrote.
    """

    sender: Address
    recipient: Address
    body: str = field(repr=False)
    contentType: str = "text/plain"
    messageId: str = defaultField(factory=newMessageId, validator=_checkMessageId)
    timestamp: float = defaultField(factory=time.time)
    hops: int = defaultField(default=0, validator=validators.ge(0))
    routingId: str = defaultField(factory=newRoutingId, eq=False)
    mark: MessageMark | None = None


def _checkLease(instance: object, attribute: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError("a presence lease must be a positive number of seconds")


@frozen
class PresenceUpdate:
    """
    The presence of C{sender}, as its watcher C{recipient} should see it.

    @ivar lease: Seconds this presence holds unless renewed (by another
        update), or C{None} for a presence that holds until it changes. A
        home server sends its users' presence to watchers on the other
        servers of its domain with the lease left, and renews it; the
        watcher's home shows the sender offline once it runs out (the
        sender's server died). Server links carry it as C{Expires}.
    """

    sender: Address
    recipient: Address
    presence: Presence
    hops: int = defaultField(default=0, validator=validators.ge(0))
    lease: float | None = defaultField(default=None, validator=_checkLease)


@frozen
class PresenceProbe:
    """
    C{sender} (a watcher) asks for the current presence of C{recipient}.
    The answer, if the watcher is authorised, is a L{PresenceUpdate}.
    """

    sender: Address
    recipient: Address
    hops: int = defaultField(default=0, validator=validators.ge(0))


class SubscriptionKind(enum.Enum):
    """
    The four subscription events (the same four as XMPP's).

    Direction: C{SUBSCRIBE} and C{UNSUBSCRIBE} go from the watcher to the
    watched user; C{AUTHORISE} and C{REFUSE} go from the watched user to the
    watcher (C{REFUSE} also revokes an earlier authorisation).
    """

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    AUTHORISE = "authorise"
    REFUSE = "refuse"


@frozen
class SubscriptionEvent:
    """
    A subscription request or answer; see L{SubscriptionKind}.
    """

    kind: SubscriptionKind
    sender: Address
    recipient: Address
    hops: int = defaultField(default=0, validator=validators.ge(0))


#: Any core event.
Event = Union[Message, PresenceUpdate, PresenceProbe, SubscriptionEvent]


class _Unfrozen(Message):
    """
    A L{Message} whose slots plain assignments fill: L{preCheckedMessage}
    makes one, fills it and makes it a L{Message} (C{__class__}), so that
    no instance of this class is left once it returns. Its layout is
    L{Message}'s (it adds no slot), which is what lets an object change
    between the two classes; its C{__setattr__} and C{__delattr__} are
    C{object}'s, so that the interpreter stores each field straight in its
    slot (both: a class that overrides either of the two sets its stores
    through the generic path). Nine such stores and the change of class
    cost about a third of nine calls of the slots' descriptors' C{__set__}
    (C{bench/README.md}, "recv12").
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_newObject = object.__new__


def checkMessageId(value: str) -> None:
    """
    The check of L{Message.messageId}, for code that makes a message by
    L{preCheckedMessage} from an id it was given.

    @raise ValueError: If C{value} is not a valid message id: 1 to
        L{MAX_MESSAGE_ID_CHARS} printable characters without spaces.
    """
    _checkMessageId(None, None, value)


def preCheckedMessage(
    sender: Address,
    recipient: Address,
    body: str,
    contentType: str,
    messageId: str,
    timestamp: float,
    hops: int,
    routingId: str,
    mark: MessageMark | None,
) -> Message:
    """
    The L{Message} of these fields, made without the checks of its
    constructor: for code whose inputs were checked already, and only
    there. The caller must have checked C{messageId} (L{checkMessageId})
    and that C{hops} is an C{int} of at least 0 (the link codec reads it
    with a pattern of digits); everything else is as L{Message} takes it.
    Anything read from a client or a peer otherwise goes through
    L{Message}. Made as an L{_Unfrozen} whose class is then changed: about
    a sixth of the cost of C{Message(...)}.
    """
    message: Any = _newObject(_Unfrozen)
    message.sender = sender
    message.recipient = recipient
    message.body = body
    message.contentType = contentType
    message.messageId = messageId
    message.timestamp = timestamp
    message.hops = hops
    message.routingId = routingId
    message.mark = mark
    message.__class__ = Message
    made: Message = message
    return made


def forwarded(event: Event, maxHops: int = DEFAULT_MAX_HOPS) -> Event:
    """
    The event as the next hop sees it: its hop count plus one.

    @raise LoopDetected: If that would exceed C{maxHops}.
    """
    if event.hops >= maxHops:
        raise LoopDetected(f"more than {maxHops} hops")
    if type(event) is Message:
        # A copy with one more hop, its fields taken from a message that
        # was checked when it was made (a hop count of one more than a
        # valid one is valid): this runs for every message sent on to
        # another server.
        return preCheckedMessage(
            event.sender,
            event.recipient,
            event.body,
            event.contentType,
            event.messageId,
            event.timestamp,
            event.hops + 1,
            event.routingId,
            event.mark,
        )
    return evolve(event, hops=event.hops + 1)
