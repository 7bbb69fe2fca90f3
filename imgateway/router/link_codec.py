# -*- test-case-name: tests.test_link_codec -*-
"""
The server-link codec (C{docs/protocol.md} section 9): every core event to
a native-protocol request and back, and every delivery status to a
response and back, losslessly.

It reuses the native face's framing (L{imgateway.adapters.native.framing})
and tables (L{imgateway.adapters.native.mapping}: status codes, presence and
subscription tokens); it knows nothing of connections, sequence numbers
(the connection adds C{Seq}, or gives L{encodeMessage} the one to write)
or routing.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Final

import attrs

from imgateway.adapters.native.framing import MAX_SEQ, VERSION, Frame, FrameParser, FramingError, Headers, Limits, Request, Response, serialise, withSeq
from imgateway.adapters.native.mapping import (
    MESSAGE_MARKS,
    PRESENCE,
    REASONS,
    SUBSCRIPTION_KINDS,
    TargetForm,
    codeForDelivery,
    deliveryErrorFor,
    markFromToken,
    presenceFromToken,
    subscriptionKindFromToken,
    targetForm,
)
from imgateway.core.address import Address, parseAddress
from imgateway.core.errors import DeliveryError, DeliveryStatus, InvalidAddress, MovedTo, UserBusy, statusError
from imgateway.core.events import (
    MAX_MESSAGE_ID_CHARS,
    Event,
    Message,
    MessageMark,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    checkMessageId,
    newRoutingId,
    preCheckedMessage,
)
from imgateway.core.presence import Presence

__all__ = [
    "DEFAULT_MAX_HOPS",
    "DELIVERED",
    "EVENT_METHODS",
    "LinkCodecError",
    "LinkFrameReader",
    "LinkRequest",
    "ReadItem",
    "MAX_DETAIL_CHARS",
    "checkHopHeaders",
    "decodeRequest",
    "decodeResponse",
    "encodeMessage",
    "encodeRequest",
    "encodeResponse",
    "hopKey",
    "newRoutingId",
    "timestampText",
    "viaEntry",
]

#: The target forms, looked up once: a member looked up on its class
#: (C{TargetForm.IM}) goes through C{EnumType.__getattr__}'s hook on every
#: look-up, about 800 instructions each (Python 3.11, callgrind).
_IM: Final = TargetForm.IM
_PRES: Final = TargetForm.PRES

#: The methods that carry core events.
EVENT_METHODS = frozenset({"MESSAGE", "NOTIFY", "PROBE"})

#: Longest C{Detail} sent with an error status, in characters.
MAX_DETAIL_CHARS = 256

#: A C{Routing-Id}: 1 to 128 visible ASCII characters.
_ROUTING_ID_TEXT = r"[\x21-\x7e]{1,128}"
#: A C{Max-Hops} or C{Hops}: 1 to 10 digits.
_NUMBER_TEXT = r"[0-9]{1,10}"
#: A C{Timestamp}: 1 to 12 digits, then a fraction of 1 to 9 digits or none.
_TIMESTAMP_WHOLE = r"[0-9]{1,12}"
_TIMESTAMP_FRACTION = r"\.[0-9]{1,9}"
_TIMESTAMP_TEXT = rf"{_TIMESTAMP_WHOLE}(?:{_TIMESTAMP_FRACTION})?"
# Each pattern's text is written once: _USUAL_MESSAGE_HEAD checks these
# values with the same texts, so its checks cannot drift from these.
_ROUTING_ID = re.compile(_ROUTING_ID_TEXT)
_NUMBER = re.compile(_NUMBER_TEXT)
_TIMESTAMP = re.compile(_TIMESTAMP_TEXT)
_LEASE = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")

#: A message's C{Content-Type} when the header is absent (or empty).
DEFAULT_CONTENT_TYPE = "text/plain"

#: The response that reports a delivery (one object, so that a
#: connection can keep its bytes).
DELIVERED = Response(200, REASONS[200], Headers())

#: A request's C{Max-Hops} when the header is absent: what an originating
#: server sends with the shipped C{[links] max_hops}.
DEFAULT_MAX_HOPS = 8


class LinkCodecError(ValueError):
    """
    A request on a link is not a valid event request; it is answered
    C{code} (400, or 482 for an exhausted hop budget).

    @ivar code: The status code to answer with.
    @ivar detail: What was wrong, for the log and the C{Detail} header.
    """

    def __init__(self, detail: str, code: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def viaEntry(domain: str, name: str) -> str:
    """
    @return: The C{Via} value naming server C{name} of C{domain}:
        C{corp.example/hs1} (unambiguous: neither part holds a C{/}).
    """
    return f"{domain}/{name}"


def hopKey(event: Event) -> object:
    """
    @return: What identifies C{event} from one hop to the next: a message's
        routing id; for other events, the event itself with its hop count
        left out (routers count hops as they forward).
    """
    if isinstance(event, Message):
        return event.routingId
    return attrs.evolve(event, hops=0)


class LinkRequest:
    """
    An event request as received on a link: a value, compared by value,
    never changed once made. A plain class rather than an attrs one: one
    is made for every link message read, and attrs' frozen constructor
    (an attribute set through C{object.__setattr__} per field) cost 2.5
    times what this one does. Its fields (which its hash follows) are
    declared C{Final} where they are set: mypy refuses an assignment to
    one, and the compiled build makes them read only; this costs nothing
    at run time (the same bytecode as plain assignments).

    @ivar event: The event.
    @ivar via: The servers it has passed through, first first
        (L{viaEntry} values).
    @ivar maxHops: Its C{Max-Hops}: how many links it may still cross,
        this one included.
    @ivar routingId: Its C{Routing-Id}.
    """

    __slots__ = ("event", "via", "maxHops", "routingId")

    def __init__(self, event: Event, via: tuple[str, ...], maxHops: int, routingId: str) -> None:
        self.event: Final[Event] = event
        self.via: Final[tuple[str, ...]] = via
        self.maxHops: Final[int] = maxHops
        self.routingId: Final[str] = routingId

    def _fields(self) -> tuple[Event, tuple[str, ...], int, str]:
        return (self.event, self.via, self.maxHops, self.routingId)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinkRequest):
            return NotImplemented
        return self._fields() == other._fields()

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, LinkRequest):
            return NotImplemented
        return self._fields() != other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"LinkRequest(event={self.event!r}, via={self.via!r}, maxHops={self.maxHops!r}, routingId={self.routingId!r})"


def _clean(text: str, limit: int | None = None) -> str:
    """
    Text safe for a header value: control characters other than TAB (and
    lone surrogates) become spaces; cut to C{limit} characters.
    """
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cs") and c != "\t" else c for c in text)
    return cleaned if limit is None else cleaned[:limit]


def _seconds(value: float) -> str:
    """
    @return: A positive number of seconds as text, rounded up to the
        microsecond (so a lease that is nearly over stays positive).
    """
    micro = math.ceil(value * 1_000_000)
    whole, fraction = divmod(micro, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".") if fraction else str(whole)


def timestampText(timestamp: float) -> str:
    """
    @return: A message's C{Timestamp} as the wire carries it: text that
        C{float()} reads back as exactly C{timestamp}. From 10**9 to 10**12
        seconds (every time since 2001), 7 decimals: at least 17
        significant digits, which name one binary64 float each, and cheaper
        to write than C{repr}'s shortest text (C{"%.7f"} is about two
        thirds of C{repr}'s instructions, callgrind); anything else (a test
        clock's small times, a time out of the C{Timestamp} pattern) by
        C{repr}, as before.
    """
    if 1e9 <= timestamp < 1e12:
        return "%.7f" % timestamp
    return repr(timestamp)


def encodeRequest(event: Event, via: Sequence[str], maxHops: int, routingId: str) -> Request:
    """
    The request that carries C{event} over a link; the connection adds its
    C{Seq}.

    @param via: The servers the event has passed through, this one last.
    @param maxHops: How many links it may still cross, the next one
        included (at least 1).
    @param routingId: Its C{Routing-Id}: a message's own routing id; for
        other events one the sender mints (L{newRoutingId}) and keeps
        for every resend.
    @raise ValueError: If C{maxHops} is under 1 or C{routingId} is invalid.
    """
    if maxHops < 1:
        raise ValueError(f"Max-Hops must be at least 1, got {maxHops}")
    if _ROUTING_ID.fullmatch(routingId) is None:
        raise ValueError(f"invalid routing id {routingId!r}")
    common: list[tuple[str, str]] = [("Via", v) for v in via]
    # Headers at their default are left out (docs/protocol.md §9.3): each
    # header line costs both sides framing work on every delivery.
    if maxHops != DEFAULT_MAX_HOPS:
        common.append(("Max-Hops", str(maxHops)))
    common.append(("Routing-Id", routingId))
    if event.hops:
        common.append(("Hops", str(event.hops)))
    if isinstance(event, Message):
        headers = [
            ("From", event.sender.imURI()),
            ("Message-ID", event.messageId),
            ("Timestamp", timestampText(event.timestamp)),
        ]
        if event.contentType != DEFAULT_CONTENT_TYPE:
            headers.append(("Content-Type", _clean(event.contentType)))
        if event.mark is not None:
            headers.append(("Auto", MESSAGE_MARKS[event.mark]))
        return Request("MESSAGE", event.recipient.imURI(), Headers(tuple(headers + common)), event.body.encode("utf-8"))
    if isinstance(event, PresenceUpdate):
        headers = [("From", event.sender.presURI()), ("Event", "presence"), ("Presence", PRESENCE[event.presence.state])]
        if event.presence.note:
            headers.append(("Note", event.presence.note))
        if event.lease is not None:
            headers.append(("Expires", _seconds(event.lease)))
        return Request("NOTIFY", event.recipient.presURI(), Headers(tuple(headers + common)))
    if isinstance(event, SubscriptionEvent):
        headers = [
            ("From", event.sender.presURI()),
            ("Event", "subscription"),
            ("Subscription", SUBSCRIPTION_KINDS[event.kind]),
        ]
        return Request("NOTIFY", event.recipient.presURI(), Headers(tuple(headers + common)))
    if isinstance(event, PresenceProbe):
        return Request("PROBE", event.recipient.presURI(), Headers((("From", event.sender.presURI()), *common)))
    raise TypeError(f"not a core event: {event!r}")


#: What the direct encoding of a message (L{encodeMessage}) leaves to the
#: general one: anything a header value or a target could not carry as it
#: is (control characters, white space in the target). Stricter than the
#: framing's own checks, so that a message it encodes is one
#: L{serialise} takes as it is.
_VALUES_NOT_PLAIN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_TARGET_NOT_PLAIN = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
#: The C{Hops} line of L{encodeMessage}'s usual shape for the hop counts
#: under L{_USUAL_HOPS} (none for 0): made once, not per message.
_USUAL_HOPS = 16
_HOPS_LINES = ("", *(f"Hops: {hops}\r\n" for hops in range(1, _USUAL_HOPS)))


def encodeMessage(
    message: Message, via: Sequence[str], maxHops: int, routingId: str, hops: int | None = None, seq: int | None = None
) -> bytes:
    """
    The bytes of the request that carries C{message} over a link, without
    C{Seq} (L{imgateway.router.link.withSeq} adds it): exactly what
    L{serialise} makes of L{encodeRequest}'s request, written directly
    (no L{Headers}, no L{Request}, one check of every value at once). A
    message with a value that needs more care goes the general way.

    @param hops: The hop count it goes with, if not its own (a router
        sending a message on counts the hop without a copy of the
        message: what L{encodeRequest} writes for L{forwarded}'s copy).
    @param seq: If given, C{Seq: seq} is written as the first header, in
        place: the bytes L{withSeq<imgateway.router.link.withSeq>} makes
        of those written without it (the link's first transmission,
        without a second copy of the frame).
    @raise ValueError: As L{encodeRequest} and L{serialise} raise.
    """
    if hops is None:
        hops = message.hops
    if maxHops < 1:
        raise ValueError(f"Max-Hops must be at least 1, got {maxHops}")
    # The addresses' parts, written here as Address.imURI writes them
    # ("im:" local "@" domain) without a call and a string each.
    recipient = message.recipient
    toLocal = recipient.local
    toDomain = recipient.domain
    fromAddress = message.sender
    fromLocal = fromAddress.local
    fromDomain = fromAddress.domain
    messageId = message.messageId
    usual = len(via) == 1
    vias = via[0] if usual else "".join(via)
    # Printable text (and a target without a space), what nearly every
    # message has, holds nothing the patterns look for (str.isprintable is
    # stricter than both): one call in C over every value (the URIs' own
    # "im:" and "@" are printable), the routing id with them. A routing id
    # that is printable, ASCII, without a space and of 1 to 128 characters
    # is exactly one _ROUTING_ID takes ([\x21-\x7e]{1,128}), so the pattern
    # is not run for it. Anything else is looked at by the patterns, the
    # routing id's first (its error before any other, as encodeRequest
    # raises it).
    if not (
        f"{toLocal}{toDomain}{fromLocal}{fromDomain}{messageId}{vias}{routingId}".isprintable()
        and " " not in toLocal
        and " " not in toDomain
        and " " not in routingId
        and 0 < len(routingId) <= 128
        and routingId.isascii()
    ):
        if _ROUTING_ID.fullmatch(routingId) is None:
            raise ValueError(f"invalid routing id {routingId!r}")
        if (
            _TARGET_NOT_PLAIN.search(recipient.imURI()) is not None
            or _VALUES_NOT_PLAIN.search("\t".join((fromAddress.imURI(), messageId, *via))) is not None
        ):
            return _general(message, via, maxHops, routingId, hops, seq)
    try:
        body = message.body.encode("utf-8")
        if message.contentType == DEFAULT_CONTENT_TYPE and message.mark is None and usual and maxHops == DEFAULT_MAX_HOPS:
            # The usual shape (one server passed, the shipped hop budget):
            # the same lines, in one format.
            # timestampText's text, written out here: a call costs more
            # than the test (the tests hold this to encodeRequest's).
            # Formatted apart from the f-string: compiled, a field with a
            # conversion makes each of its parts with str.format
            # (tests.test_compiled.FormattedStringTests).
            timestamp = message.timestamp
            stamp = "%.7f" % timestamp if 1e9 <= timestamp < 1e12 else repr(timestamp)
            hopsLine = _HOPS_LINES[hops] if 0 <= hops < _USUAL_HOPS else f"Hops: {hops}\r\n" if hops else ""
            if seq is not None and body:
                # The link's usual request (sent at once, with a body):
                # its Seq line (withSeq's, first) and Content-Length in the
                # one format, not made apart.
                head = (
                    f"MESSAGE im:{toLocal}@{toDomain} {VERSION}\r\nSeq: {seq}\r\nFrom: im:{fromLocal}@{fromDomain}\r\nMessage-ID: {messageId}\r\n"
                    f"Timestamp: {stamp}\r\nVia: {vias}\r\nRouting-Id: {routingId}\r\n{hopsLine}Content-Length: {len(body)}\r\n\r\n"
                )
            else:
                end = f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
                seqLine = "" if seq is None else f"Seq: {seq}\r\n"
                head = (
                    f"MESSAGE im:{toLocal}@{toDomain} {VERSION}\r\n{seqLine}From: im:{fromLocal}@{fromDomain}\r\nMessage-ID: {messageId}\r\n"
                    f"Timestamp: {stamp}\r\nVia: {vias}\r\nRouting-Id: {routingId}\r\n{hopsLine}{end}"
                )
        else:
            end = f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
            head = _messageHead(message, recipient.imURI(), fromAddress.imURI(), via, maxHops, routingId, hops, seq) + end
        return head.encode("utf-8") + body
    except UnicodeEncodeError:
        # Lone surrogates: the general way says where.
        return _general(message, via, maxHops, routingId, hops, seq)


def _general(message: Message, via: Sequence[str], maxHops: int, routingId: str, hops: int, seq: int | None) -> bytes:
    """
    L{encodeMessage}'s bytes the general way: L{serialise} of
    L{encodeRequest}'s request (for a message whose C{hops} it does not
    carry, a copy that does), with C{Seq} put first if given.
    """
    if hops != message.hops:
        message = attrs.evolve(message, hops=hops)
    encoded = serialise(encodeRequest(message, via, maxHops, routingId))
    return encoded if seq is None else withSeq(encoded, seq)


def _messageHead(
    message: Message, target: str, sender: str, via: Sequence[str], maxHops: int, routingId: str, hops: int, seq: int | None
) -> str:
    """
    The head of L{encodeMessage}'s request (without its C{Content-Length}
    and blank line), its header lines in any shape, with C{hops} for its
    C{Hops} and C{Seq} first if given.
    """
    timestamp = timestampText(message.timestamp)
    seqLine = "" if seq is None else f"Seq: {seq}\r\n"
    parts = [f"MESSAGE {target} {VERSION}\r\n{seqLine}From: {sender}\r\nMessage-ID: {message.messageId}\r\nTimestamp: {timestamp}\r\n"]
    contentType = message.contentType
    if contentType != DEFAULT_CONTENT_TYPE:
        parts.append(f"Content-Type: {_clean(contentType)}\r\n")
    if message.mark is not None:
        parts.append(f"Auto: {MESSAGE_MARKS[message.mark]}\r\n")
    for entry in via:
        parts.append(f"Via: {entry}\r\n")
    if maxHops != DEFAULT_MAX_HOPS:
        parts.append(f"Max-Hops: {maxHops}\r\n")
    parts.append(f"Routing-Id: {routingId}\r\n")
    if hops:
        parts.append(f"Hops: {hops}\r\n")
    return "".join(parts)


def _mark(request: Request) -> MessageMark | None:
    """
    A message's loop mark (C{Auto}), or C{None} when absent.
    """
    token = request.headers.get("Auto")
    if token is None:
        return None
    try:
        return markFromToken(token)
    except ValueError:
        raise LinkCodecError(f"unknown Auto {token[:32]!r}") from None


def _required(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise LinkCodecError(f"{request.method} needs a {name} header")
    return value


def _address(text: str, form: TargetForm, what: str) -> Address:
    # "im:" is what targetForm tells first: the form of every message's
    # addresses.
    if not (form is _IM and text.startswith("im:")) and targetForm(text) is not form:
        raise LinkCodecError(f"{what} must be {form.value}, got {text[:64]!r}")
    try:
        return Address.fromString(text)
    except InvalidAddress as e:
        raise LinkCodecError(f"{what}: {e}") from None


def checkHopHeaders(request: Request) -> tuple[tuple[str, ...], int, str]:
    """
    Read the hop headers every link request carries.

    @return: Its C{Via} values, C{Max-Hops} (L{DEFAULT_MAX_HOPS} when
        absent) and C{Routing-Id}.
    @raise LinkCodecError: If C{Max-Hops} is invalid or C{Routing-Id}
        missing or invalid (400), or C{Max-Hops} is 0 (482: no link may be
        crossed).
    """
    maxHops = request.headers.get("Max-Hops")
    if maxHops is None:
        return tuple(request.headers.getAll("Via")), DEFAULT_MAX_HOPS, _routingIdOf(request)
    if _NUMBER.fullmatch(maxHops) is None:
        raise LinkCodecError(f"invalid Max-Hops {maxHops[:32]!r}")
    if int(maxHops) < 1:
        raise LinkCodecError("Max-Hops exhausted", code=482)
    return tuple(request.headers.getAll("Via")), int(maxHops), _routingIdOf(request)


def _routingIdOf(request: Request) -> str:
    routingId = _required(request, "Routing-Id")
    if _ROUTING_ID.fullmatch(routingId) is None:
        raise LinkCodecError(f"invalid Routing-Id {routingId[:32]!r}")
    return routingId


def decodeRequest(request: Request) -> LinkRequest:
    """
    The event a link request carries.

    @raise LinkCodecError: If it is not a valid event request: unknown
        method or event, a target or C{From} of the wrong form, a missing or
        invalid header, a body that is not UTF-8.
    """
    if request.method == "MESSAGE":
        return _decodeMessage(request)
    return _decodeEvent(request)


def _decodeEvent(request: Request) -> LinkRequest:
    """
    L{decodeRequest} by header look-ups, for every method (L{_decodeMessage}
    is the same for a C{MESSAGE}, faster: the tests hold one to the other).
    """
    via, maxHops, routingId = checkHopHeaders(request)
    hopsText = request.headers.get("Hops", "0") or "0"
    if _NUMBER.fullmatch(hopsText) is None:
        raise LinkCodecError(f"invalid Hops {hopsText[:32]!r}")
    hops = int(hopsText)
    method = request.method
    event: Event
    try:
        if method == "MESSAGE":
            recipient = _address(request.target, _IM, "the target")
            sender = _address(_required(request, "From"), _IM, "From")
            timestamp = _required(request, "Timestamp")
            if _TIMESTAMP.fullmatch(timestamp) is None:
                raise LinkCodecError(f"invalid Timestamp {timestamp[:32]!r}")
            try:
                body = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise LinkCodecError("a message body must be UTF-8") from None
            event = Message(
                sender,
                recipient,
                body,
                contentType=request.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE,
                messageId=_required(request, "Message-ID"),
                timestamp=float(timestamp),
                hops=hops,
                routingId=routingId,
                mark=_mark(request),
            )
        elif method == "PROBE":
            event = PresenceProbe(
                _address(_required(request, "From"), _PRES, "From"),
                _address(request.target, _PRES, "the target"),
                hops=hops,
            )
        elif method == "NOTIFY":
            event = _decodeNotify(request, hops)
        else:
            raise LinkCodecError(f"{method} carries no event", code=405)
    except LinkCodecError:
        raise
    except ValueError as e:
        raise LinkCodecError(str(e)) from None
    return LinkRequest(event, via, maxHops, routingId)


#: The headers of a C{MESSAGE} as L{encodeMessage} writes them, by name:
#: their name in lower case (any other spelling is lowered).
_MESSAGE_HEADER_KEYS = {
    name: name.lower()
    for name in ("From", "Message-ID", "Timestamp", "Content-Type", "Auto", "Via", "Max-Hops", "Routing-Id", "Hops", "Seq")
}


def _decodeMessage(request: Request) -> LinkRequest:
    """
    L{decodeRequest} for a C{MESSAGE}, the request of every message across
    a link: its headers taken by name from one C{dict} of them when each
    comes once, spelt as L{encodeMessage} writes it (else read in one pass
    over them, the first of each name in any case), with no index of the
    headers and no look-up per header; the same checks, in the same order,
    and the same errors.
    """
    items = request.headers.items
    exact = dict(items)
    if len(exact) == len(items) and exact.keys() <= _MESSAGE_HEADER_KEYS.keys():
        # Each header once, spelt as encodeMessage writes it (the usual
        # case): read by name, no pass over them.
        first = exact
        via = [exact["Via"]] if "Via" in exact else []
        maxHopsText = exact.get("Max-Hops")
        routingId = exact.get("Routing-Id")
        hopsText = exact.get("Hops") or "0"
    else:
        first = {}
        via = []
        for name, value in items:
            key = _MESSAGE_HEADER_KEYS.get(name) or name.lower()
            if key == "via":
                via.append(value)
            elif key not in first:
                first[key] = value
        maxHopsText = first.get("max-hops")
        routingId = first.get("routing-id")
        hopsText = first.get("hops") or "0"
        # The names below as encodeMessage writes them.
        first = {name: first[key] for name, key in _MESSAGE_HEADER_KEYS.items() if key in first}
    return _messageRequest(
        request.target,
        request.body,
        first.get("From"),
        first.get("Message-ID"),
        first.get("Timestamp"),
        first.get("Content-Type"),
        first.get("Auto"),
        via,
        maxHopsText,
        routingId,
        hopsText,
    )


def _messageRequest(
    target: str,
    bodyBytes: bytes,
    fromText: str | None,
    messageId: str | None,
    timestamp: str | None,
    contentType: str | None,
    token: str | None,
    via: Sequence[str],
    maxHopsText: str | None,
    routingId: str | None,
    hopsText: str,
) -> LinkRequest:
    """
    The checks and the event of a link C{MESSAGE}, from its target, body and
    header values (C{None}: the header is absent; C{hopsText} C{"0"} when
    absent or empty): for L{_decodeMessage} and L{LinkFrameReader}, so that
    both give the same results and errors.
    """
    if maxHopsText is None:
        maxHops = DEFAULT_MAX_HOPS
    else:
        if _NUMBER.fullmatch(maxHopsText) is None:
            raise LinkCodecError(f"invalid Max-Hops {maxHopsText[:32]!r}")
        maxHops = int(maxHopsText)
        if maxHops < 1:
            raise LinkCodecError("Max-Hops exhausted", code=482)
    if routingId is None:
        raise LinkCodecError("MESSAGE needs a Routing-Id header")
    if _ROUTING_ID.fullmatch(routingId) is None:
        raise LinkCodecError(f"invalid Routing-Id {routingId[:32]!r}")
    if _NUMBER.fullmatch(hopsText) is None:
        raise LinkCodecError(f"invalid Hops {hopsText[:32]!r}")
    try:
        recipient = _address(target, _IM, "the target")
        if fromText is None:
            raise LinkCodecError("MESSAGE needs a From header")
        sender = _address(fromText, _IM, "From")
        if timestamp is None:
            raise LinkCodecError("MESSAGE needs a Timestamp header")
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise LinkCodecError(f"invalid Timestamp {timestamp[:32]!r}")
        try:
            body = bodyBytes.decode("utf-8")
        except UnicodeDecodeError:
            raise LinkCodecError("a message body must be UTF-8") from None
        if messageId is None:
            raise LinkCodecError("MESSAGE needs a Message-ID header")
        if token is None:
            mark = None
        else:
            try:
                mark = markFromToken(token)
            except ValueError:
                raise LinkCodecError(f"unknown Auto {token[:32]!r}") from None
        # Message's own checks, where its constructor made them: of its
        # fields, only the id is not checked above (Hops, Timestamp: their
        # patterns), so the message is made without checking them again.
        # (_usualMessageRequest ends as this does: change both together.)
        checkMessageId(messageId)
        event = preCheckedMessage(
            sender,
            recipient,
            body,
            contentType or DEFAULT_CONTENT_TYPE,
            messageId,
            float(timestamp),
            int(hopsText),
            routingId,
            mark,
        )
    except LinkCodecError:
        raise
    except ValueError as e:
        raise LinkCodecError(str(e)) from None
    return LinkRequest(event, tuple(via), maxHops, routingId)


def _usualMessageRequest(
    target: str,
    bodyBytes: bytes,
    fromText: str,
    messageId: str,
    timestamp: str,
    contentType: str | None,
    token: str | None,
    via: tuple[str, ...],
    maxHops: int,
    routingId: str,
    hops: int,
) -> LinkRequest:
    """
    L{_messageRequest} for a head in L{_USUAL_MESSAGE_HEAD}'s shape, whose
    pattern checked its C{Max-Hops}, C{Routing-Id}, C{Hops} and
    C{Timestamp} as L{_messageRequest}'s patterns do and found each header
    it needs: the other checks, in the same order, with the same errors.
    """
    if maxHops < 1:
        raise LinkCodecError("Max-Hops exhausted", code=482)
    try:
        # _address's work for the im: form (which the pattern required of
        # both), written out: the same parse, the same errors, in the same
        # order.
        try:
            recipient = parseAddress(target)
        except InvalidAddress as e:
            raise LinkCodecError(f"the target: {e}") from None
        try:
            sender = parseAddress(fromText)
        except InvalidAddress as e:
            raise LinkCodecError(f"From: {e}") from None
        # From here on the same as _messageRequest's end (its Message-ID
        # check aside), written out again on purpose: one helper that both
        # call cost this path a call, about 550-600 instructions more per
        # message read (callgrind, bench/link_path.py --role hs2
        # --callgrind-rounds 20: 574.2-574.3 million before, 576.4-576.7
        # after, 4,000 messages). Change both together.
        try:
            body = bodyBytes.decode("utf-8")
        except UnicodeDecodeError:
            raise LinkCodecError("a message body must be UTF-8") from None
        if token is None:
            mark = None
        else:
            try:
                mark = markFromToken(token)
            except ValueError:
                raise LinkCodecError(f"unknown Auto {token[:32]!r}") from None
        # Message's check of the id (checkMessageId), but for what the
        # pattern checked already: a value of printable ASCII (_ASCII_VALUE)
        # is printable and not empty; its length and spaces are looked at
        # here, and only an id that fails goes to checkMessageId (its
        # error): two calls fewer per message.
        if len(messageId) > MAX_MESSAGE_ID_CHARS or " " in messageId:
            checkMessageId(messageId)
        event = preCheckedMessage(
            sender, recipient, body, contentType or DEFAULT_CONTENT_TYPE, messageId, float(timestamp), hops, routingId, mark
        )
    except LinkCodecError:
        raise
    except ValueError as e:
        raise LinkCodecError(str(e)) from None
    return LinkRequest(event, via, maxHops, routingId)


def _decodeNotify(request: Request, hops: int) -> Event:
    recipient = _address(request.target, _PRES, "the target")
    sender = _address(_required(request, "From"), _PRES, "From")
    kind = _required(request, "Event")
    if kind == "presence":
        presence = Presence(presenceFromToken(_required(request, "Presence")), request.headers.get("Note") or "")
        expires = request.headers.get("Expires")
        if expires is not None and _LEASE.fullmatch(expires) is None:
            raise LinkCodecError(f"invalid Expires {expires[:32]!r}")
        return PresenceUpdate(sender, recipient, presence, hops=hops, lease=None if expires is None else float(expires))
    if kind == "subscription":
        return SubscriptionEvent(subscriptionKindFromToken(_required(request, "Subscription")), sender, recipient, hops=hops)
    raise LinkCodecError(f"unknown Event {kind[:32]!r}")


def encodeResponse(result: DeliveryStatus | DeliveryError) -> Response:
    """
    The response that reports a delivery's outcome; the connection adds
    its C{Seq}.

    @param result: L{DeliveryStatus.DELIVERED}, or the error it failed with
        (a L{UserBusy}'s alternate travels as C{Alternate}, a L{MovedTo}'s
        new home as C{Home}).
    """
    if isinstance(result, DeliveryStatus):
        if result is not DeliveryStatus.DELIVERED:
            raise ValueError(f"a failed status travels as its error, not {result!r}")
        return DELIVERED
    code = codeForDelivery(result)
    headers: list[tuple[str, str]] = [("Detail", _clean(result.text, MAX_DETAIL_CHARS))]
    if isinstance(result, UserBusy) and result.alternate is not None:
        headers.append(("Alternate", _clean(result.alternate)))
    if isinstance(result, MovedTo) and result.home:
        headers.append(("Home", _clean(result.home)))
    return Response(code, REASONS.get(code, "Error"), Headers(tuple(headers)))


def decodeResponse(response: Response) -> DeliveryStatus:
    """
    The outcome a link response reports.

    @return: L{DeliveryStatus.DELIVERED} for any 2xx.
    @raise DeliveryError: The failure it reports (a L{MovedTo} with the
        C{Home} header's server); a code that is no delivery status stands
        for a server error.
    """
    if 200 <= response.code < 300:
        return DeliveryStatus.DELIVERED
    detail = response.headers.get("Detail") or response.reason
    if response.code == codeForDelivery(MovedTo()):
        raise statusError(DeliveryStatus.MOVED, detail, home=response.headers.get("Home") or "")
    raise deliveryErrorFor(response.code, detail, response.headers.get("Alternate"))


#: A header value as the parser reads it, unchanged: no control character
#: but TAB, neither its first nor its last character a space or TAB (the
#: parser strips those), not empty.
#: Written as runs of visible characters between runs of spaces and TABs,
#: each taken whole (possessive: no run is given back, as none need be: the
#: character after a value, CR, is in neither class), not as any run of
#: characters whose last is then found by backtracking: the same values,
#: read with less of the engine's work (callgrind: about 1,800 fewer
#: instructions per link C{MESSAGE} head, 12 % of its pattern; see
#: C{bench/README.md}, "wire8").
_PLAIN_VALUE = r"[^\x00-\x20\x7f-\x9f]++(?:[ \t]++[^\x00-\x20\x7f-\x9f]++)*+"
#: The head of a link C{MESSAGE} exactly as L{encodeMessage} writes it with
#: the C{Seq} a connection puts first (L{imgateway.adapters.native.framing.withSeq}),
#: decoded, without the blank line that ends it: its target, C{Seq}, the
#: value of each header, the C{Via} lines, C{Content-Length}. Each value is
#: one character or more, none a control character other than TAB (which
#: the parser refuses), neither the first nor the last a space or TAB
#: (which it strips): any other value does not match, and the frame is the
#: parser's.
_MESSAGE_HEAD = re.compile(
    r"MESSAGE ([^\x00-\x20\x7f-\x9f\s]+) IMGW/1\.0\r\n"
    r"Seq: ([0-9]{1,10})\r\n"
    rf"From: ({_PLAIN_VALUE})\r\n"
    rf"Message-ID: ({_PLAIN_VALUE})\r\n"
    rf"Timestamp: ({_PLAIN_VALUE})"
    rf"(?:\r\nContent-Type: ({_PLAIN_VALUE}))?"
    rf"(?:\r\nAuto: ({_PLAIN_VALUE}))?"
    rf"((?:\r\nVia: {_PLAIN_VALUE})*)"
    rf"(?:\r\nMax-Hops: ({_PLAIN_VALUE}))?"
    rf"\r\nRouting-Id: ({_PLAIN_VALUE})"
    rf"(?:\r\nHops: ({_PLAIN_VALUE}))?"
    r"(?:\r\nContent-Length: ([0-9]{1,18}))?"
)
#: A value of L{_USUAL_MESSAGE_HEAD}: printable ASCII, neither its first
#: nor its last character a space (no TAB): a narrower L{_PLAIN_VALUE}.
#: Its first character, then the rest taken whole (possessive: nothing is
#: given back, as nothing need be: the character after a value, CR, is not
#: in the class), then a look back that its last is no space: the values
#: of C{[!-~](?:[ -~]*[!-~])?}, with a single-character look back in place
#: of the possessive repeat of space runs (C{[!-~]++(?: ++[!-~]++)*+}),
#: whose own repeat the engine entered for every value (see
#: C{bench/README.md}, "head13").
_ASCII_VALUE = r"[!-~][ -~]*+(?<! )"
#: A C{Timestamp} of L{_USUAL_MESSAGE_HEAD}: L{_TIMESTAMP_TEXT}'s digits
#: and fraction, each run taken whole, the fraction an alternative, not an
#: optional group (which the engine enters as a repeat).
_USUAL_TIMESTAMP = rf"{_TIMESTAMP_WHOLE}+(?:{_TIMESTAMP_FRACTION}+|)"
#: L{_MESSAGE_HEAD} for the head nearly every link C{MESSAGE} has: its
#: target and values printable ASCII (L{_ASCII_VALUE}), its target and
#: C{From} in the C{im:} form (which L{_address} requires), its C{Timestamp},
#: C{Max-Hops}, C{Routing-Id} and C{Hops} in their own patterns, built
#: from the texts L{_messageRequest}'s checks are compiled from
#: (L{_TIMESTAMP_TEXT}'s parts, L{_NUMBER_TEXT}, L{_ROUTING_ID_TEXT}),
#: so that the two cannot differ; with the blank line that ends it. A
#: head it takes, L{_MESSAGE_HEAD} takes with the same groups but the
#: C{Via} lines' (each of its classes is within the other's, and a value
#: holds no line end in either, so each line is the same header in both),
#: and its values pass those checks; any other head is left to
#: L{_MESSAGE_HEAD}. The C{Via} lines' group holds each line with its line
#: end after it (C{"Via: a\r\nVia: b\r\n"}), not before it as
#: L{_MESSAGE_HEAD}'s (C{"\r\nVia: a\r\nVia: b"}).
#:
#: Written for the regular expression engine's cheaper steps (the same
#: heads, the same values; C{bench/README.md}, "head13"): each line with
#: its line end after it, so that each optional line is an alternative
#: whose first character (its name's) is tested before the engine enters
#: it, not an optional group (a repeat, with its marks saved); each run of
#: a value or a number taken whole (possessive). Its classes are ranges of
#: ASCII, which the engine tests for less than the negated classes of
#: L{_PLAIN_VALUE} (half the time per head: 1.1 against 2.1 µs by timeit;
#: C{bench/README.md}, "The home servers' CPU per delivery across a link,
#: fifth round").
_USUAL_MESSAGE_HEAD = re.compile(
    r"MESSAGE (im:[!-~]++) IMGW/1\.0\r\n"
    r"Seq: ([0-9]{1,10}+)\r\n"
    rf"From: (im:{_ASCII_VALUE})\r\n"
    rf"Message-ID: ({_ASCII_VALUE})\r\n"
    rf"Timestamp: ({_USUAL_TIMESTAMP})\r\n"
    rf"(?:Content-Type: ({_ASCII_VALUE})\r\n|)"
    rf"(?:Auto: ({_ASCII_VALUE})\r\n|)"
    rf"((?:Via: {_ASCII_VALUE}\r\n)*+)"
    rf"(?:Max-Hops: ({_NUMBER_TEXT}+)\r\n|)"
    rf"Routing-Id: ({_ROUTING_ID_TEXT}+)\r\n"
    rf"(?:Hops: ({_NUMBER_TEXT}+)\r\n|)"
    r"(?:Content-Length: ([0-9]{1,18}+)\r\n|)"
    r"\r\n"
)
#: The head of any request as a link connection writes it: its start line
#: (C{IMGW/1.0}), C{Seq} first, header lines with values as the parser reads
#: them, a C{Content-Length} last if any; its method, target, C{Seq}, the
#: other header lines (L{_HEADER_LINE}), C{Content-Length}.
_REQUEST_HEAD = re.compile(
    r"([A-Z]{1,16}) ([^\x00-\x20\x7f-\x9f\s]+) IMGW/1\.0\r\n"
    r"Seq: ([0-9]{1,10})"
    rf"((?:\r\n[A-Za-z0-9-]+: {_PLAIN_VALUE})*?)"
    r"(?:\r\nContent-Length: ([0-9]{1,18}))?"
)
#: The head of a proxied session's C{SESSION message} exactly as
#: L{imgateway.router.proxy.encodeSessionMessage} writes it with the C{Seq}
#: a connection puts first, decoded, without the blank line that ends it:
#: C{Seq}, C{Session}, C{To}, C{Content-Type} and C{Message-ID} (C{None}
#: when absent), C{Content-Length}. A head in this shape is also in
#: L{_REQUEST_HEAD}'s, with these header lines.
_SESSION_MESSAGE_HEAD = re.compile(
    r"SESSION message IMGW/1\.0\r\n"
    r"Seq: ([0-9]{1,10})\r\n"
    rf"Session: ({_PLAIN_VALUE})\r\n"
    rf"To: ({_PLAIN_VALUE})"
    rf"(?:\r\nContent-Type: ({_PLAIN_VALUE}))?"
    rf"(?:\r\nMessage-ID: ({_PLAIN_VALUE}))?"
    r"(?:\r\nContent-Length: ([0-9]{1,18}))?"
)
_SESSION_MESSAGE_START = b"SESSION message "
#: One header line of L{_REQUEST_HEAD}'s: its name and value.
_HEADER_LINE = re.compile(rf"\r\n([A-Za-z0-9-]+): ({_PLAIN_VALUE})")
#: The last header line of a head, if it is a C{Content-Length} (as
#: L{serialise} writes it): where a frame that is not a link message ends.
_LAST_CONTENT_LENGTH = re.compile(rb"\r\nContent-Length: ([0-9]{1,18})\Z")
_MESSAGE_START = b"MESSAGE "
#: The counts a C{Hops} or C{Max-Hops} usually says, by their text as
#: written (no leading zeros): what C{int} makes of each.
_COUNTS: Final = {str(n): n for n in range(64)}
_HEAD_END = b"\r\n\r\n"

#: What L{LinkFrameReader.read} returns, in stream order: a frame or a
#: framing error from the parser, or a link C{MESSAGE} read without it: its
#: C{Seq} and what L{decodeRequest} makes of it (the request, or the error
#: it raises).
ReadItem = Frame | FramingError | tuple[int, LinkRequest | LinkCodecError]


class LinkFrameReader:
    """
    Reads what a link peer sends: the frames L{FrameParser.feed} gives, but
    the requests written as links write them are taken without the parser:
    a C{MESSAGE} in L{encodeMessage}'s shape decoded at once, with the
    result L{decodeRequest} gives for the frame the parser reads; any other
    request with C{Seq} its first header (as a connection writes it) read
    into the L{Request} the parser makes of it.

    Such a request is taken only where the parser holds nothing
    (L{FrameParser.atFrameStart}), whole (head and body in the read), within
    the limits and with nothing the parser would strip or refuse; every
    other byte goes to the parser, in stream order, in the same read: so
    the frames, framing errors (fatal or not) and limits are the parser's
    own, met at the same point. After a frame the parser takes, or the part
    of one cut by the end of a read, the parser is given that frame alone
    where its end can be seen (its head, and a C{Content-Length} last), so
    that the next one can be taken again.

    @ivar taken: How many requests were read without the parser.
    """

    def __init__(self, parser: FrameParser, limits: Limits) -> None:
        """
        @param parser: The connection's parser (which the reader feeds).
        @param limits: Its limits.
        """
        self._parser = parser
        self._limits = limits
        # The longest head the parser looks for whole (its _wholeFrame).
        self._window = limits.maxStartLineBytes + limits.maxHeaderBytes + 4
        # A head of at most this many bytes is within the limits of the
        # start line and of all header lines (L{_message}).
        self._shortHead = min(limits.maxStartLineBytes, limits.maxHeaderBytes)
        # A head in the usual shape shorter than this has at most
        # maxHeaders header lines (L{_message}).
        self._countFrom = 8 * (limits.maxHeaders + 1)
        # The frame the parser holds part of: its bytes so far while its
        # head is not whole (at most a window of them), or how many bytes
        # it still needs (-1: not known; the parser is left the rest).
        self._held = b""
        self._need = -1
        self.taken = 0

    def read(self, data: bytes, messages: bool = True) -> list[ReadItem]:
        """
        Read the bytes that arrived next.

        @param messages: Whether to decode C{MESSAGE}s (else they are read
            as any request).
        @return: What they complete, in stream order.
        """
        parser = self._parser
        out: list[ReadItem] = []
        size = len(data)
        pos = 0
        if parser.atFrameStart:
            if self._need >= 0 or self._held:
                self._forget()
        else:
            pos = self._rest(data)
            out.extend(parser.feed(data[:pos] if pos < size else data))
            if pos >= size:
                return out
            if not parser.atFrameStart:
                # Not where that frame ended: the parser takes the rest.
                self._forget()
                out.extend(parser.feed(data[pos:]))
                return out
        # The read as Latin-1 text (a character per byte), made at its
        # first MESSAGE: where the usual messages' heads are read.
        text: str | None = None
        while pos < size:
            # (A slice compared, not startswith: its arguments' parsing
            # costs more than the slice.)
            if messages and data[pos : pos + 8] == _MESSAGE_START:
                if text is None:
                    text = data.decode("latin-1")
                message = self._message(data, text, pos)
                if message is not None:
                    pos, seq, decoded = message
                    out.append((seq, decoded))
                    self.taken += 1
                    continue
            request = self._request(data, pos)
            if request is not None:
                pos, frame = request
                out.append(frame)
                self.taken += 1
                continue
            # Anything else: the parser, one frame (where its end can be
            # seen), or the rest.
            end = self._frameEnd(data, pos)
            if end < 0 or end > size:
                self._hold(data, pos, end)
                out.extend(parser.feed(data[pos:]))
                return out
            out.extend(parser.feed(data[pos:end]))
            pos = end
            if not parser.atFrameStart:
                self._forget()
                out.extend(parser.feed(data[pos:]))
                return out
        return out

    def _matched(self, data: bytes, pos: int, shape: re.Pattern[str]) -> tuple[int, re.Match[str]] | None:
        """
        The head of the frame at C{pos}, if it is whole in C{data}, valid
        UTF-8, within the limits of the start line, of all header lines and
        of their number, and all of it in C{shape}.

        @return: Where it ends (its blank line), and the match; or C{None}.
        """
        head = self._head(data, pos)
        if head is None:
            return None
        end, text = head
        if text.count("\r\n") > self._limits.maxHeaders:
            return None
        match = shape.fullmatch(text)
        return None if match is None else (end, match)

    def _head(self, data: bytes, pos: int) -> tuple[int, str] | None:
        """
        The head of the frame at C{pos}, if it is whole in C{data}, valid
        UTF-8 and within the limits of the start line and of all header
        lines (not of their number: L{_matched} counts them).

        @return: Where it ends (its blank line), and its text; or C{None}.
        """
        end = data.find(_HEAD_END, pos, pos + self._window)
        if end < 0:
            return None
        head = data[pos:end]
        limits = self._limits
        startBytes = head.find(b"\r\n")
        if startBytes < 0 or startBytes > limits.maxStartLineBytes or len(head) - startBytes > limits.maxHeaderBytes:
            return None
        try:
            return end, head.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _bodyEnd(self, data: bytes, end: int, length: str | None) -> int:
        """
        @return: Where the body after the head ending at C{end} ends, for
            C{Content-Length} C{length}; or -1 when it is over the limit or
            not whole in C{data}.
        """
        bodyEnd = end + 4
        if length is not None:
            bodySize = int(length)
            if bodySize > self._limits.maxBodyBytes:
                return -1
            bodyEnd += bodySize
            if bodyEnd > len(data):
                return -1
        return bodyEnd

    def _message(self, data: bytes, text: str, pos: int) -> tuple[int, int, LinkRequest | LinkCodecError] | None:
        """
        The link C{MESSAGE} at C{pos}, if it is in L{encodeMessage}'s shape,
        whole and within the limits: in the usual one
        (L{_USUAL_MESSAGE_HEAD}), without checking again what its pattern
        checked; else as L{_unusualMessage} reads it.

        @param text: C{data} decoded as Latin-1: the usual pattern is
            matched there, in place, with no head found, cut and decoded
            first. A head it takes is ASCII (so its text is its UTF-8
            decoding) and ends at its first blank line (no value holds a
            line end), where the parser's ends.
        @return: Where it ends, its C{Seq}, its decoding; or C{None}.
        """
        # (Matched within the window: the longest head the parser looks
        # for whole; a longer one is _unusualMessage's, as _head finds no
        # blank line there.)
        match = _USUAL_MESSAGE_HEAD.match(text, pos, pos + self._window)
        if match is None:
            return self._unusualMessage(data, pos)
        bodyStart = match.end()
        (target, seqText, fromText, messageId, timestamp, contentType, token, vias, maxHopsText, routingId, hopsText, length) = match.groups()
        headSize = bodyStart - 4 - pos
        if headSize > self._shortHead:
            # Only a head longer than min(maxStartLineBytes,
            # maxHeaderBytes) can be over either: its start line is
            # "MESSAGE <target> IMGW/1.0".
            limits = self._limits
            startBytes = len(target) + 17
            if startBytes > limits.maxStartLineBytes or headSize - startBytes > limits.maxHeaderBytes:
                return None
        if headSize >= self._countFrom:
            # Its header lines, counted from the groups: the five it always
            # has, those it may have, its Via lines (no value holds a line
            # end). Only for a head long enough to have more than
            # maxHeaders: each header line of this shape is 8 characters
            # or more (its line end, a name of 3 or more, ": ", a value).
            # (The optional ones added as booleans: a loop over them cost
            # about 500 instructions more.)
            headers = (
                5
                + vias.count("\r\n")
                + (contentType is not None)
                + (token is not None)
                + (maxHopsText is not None)
                + (hopsText is not None)
                + (length is not None)
            )
            if headers > self._limits.maxHeaders:
                return None
        seq = int(seqText)
        if seq > MAX_SEQ:
            return None
        # self._bodyEnd's work, written out (a call less per message).
        bodyEnd = bodyStart
        if length is not None:
            bodySize = int(length)
            if bodySize > self._limits.maxBodyBytes:
                return None
            bodyEnd += bodySize
            if bodyEnd > len(data):
                return None
        # Small counts (the usual) from a table: a look-up costs about a
        # tenth of int()'s call.
        if hopsText is None:
            hops = 0
        else:
            hops = _COUNTS.get(hopsText, -1)
            if hops < 0:
                hops = int(hopsText)
        if maxHopsText is None:
            maxHops = DEFAULT_MAX_HOPS
        else:
            maxHops = _COUNTS.get(maxHopsText, -1)
            if maxHops < 0:
                maxHops = int(maxHopsText)
        if vias:
            # One Via (the usual): its value, without a split (no value
            # holds a CR). The group's lines end with their line ends
            # ("Via: a\r\nVia: b\r\n").
            via = vias[5:-2]
            vs: tuple[str, ...] = (via,) if "\r" not in via else tuple(via.split("\r\nVia: "))
        else:
            vs = ()
        decoded: LinkRequest | LinkCodecError
        try:
            decoded = _usualMessageRequest(
                target, data[bodyStart:bodyEnd], fromText, messageId, timestamp, contentType, token, vs, maxHops, routingId, hops
            )
        except LinkCodecError as e:
            decoded = e
        return bodyEnd, seq, decoded

    def _unusualMessage(self, data: bytes, pos: int) -> tuple[int, int, LinkRequest | LinkCodecError] | None:
        """
        L{_message} for a head not in the usual shape: as L{_MESSAGE_HEAD}
        takes it, checked by L{_messageRequest}.

        @return: As L{_message}.
        """
        matched = self._matched(data, pos, _MESSAGE_HEAD)
        if matched is None:
            return None
        end, match = matched
        (target, seqText, fromText, messageId, timestamp, contentType, token, vias, maxHopsText, routingId, hopsText, length) = match.groups()
        seq = int(seqText)
        bodyEnd = self._bodyEnd(data, end, length)
        if seq > MAX_SEQ or bodyEnd < 0:
            return None
        decoded: LinkRequest | LinkCodecError
        try:
            decoded = _messageRequest(
                target,
                data[end + 4 : bodyEnd],
                fromText,
                messageId,
                timestamp,
                contentType,
                token,
                vias[7:].split("\r\nVia: ") if vias else (),
                maxHopsText,
                routingId,
                hopsText or "0",
            )
        except LinkCodecError as e:
            decoded = e
        return bodyEnd, seq, decoded

    def _request(self, data: bytes, pos: int) -> tuple[int, Request] | None:
        """
        The request at C{pos}, if it is in the shape links write
        (L{_REQUEST_HEAD}), whole and within the limits.

        @return: Where it ends, and the request the parser makes of it; or
            C{None}.
        """
        if data.startswith(_SESSION_MESSAGE_START, pos):
            session = self._sessionMessage(data, pos)
            if session is not None:
                return session
        matched = self._matched(data, pos, _REQUEST_HEAD)
        if matched is None:
            return None
        end, match = matched
        method, target, seqText, lines, length = match.groups()
        seq = int(seqText)
        bodyEnd = self._bodyEnd(data, end, length)
        if seq > MAX_SEQ or bodyEnd < 0:
            return None
        pairs: list[tuple[str, str]] = [("Seq", seqText)]
        if lines:
            lowered = lines.lower()
            if "\r\nseq:" in lowered or "\r\ncontent-length:" in lowered:
                # A second Seq, a Content-Length not last: the parser's.
                return None
            pairs += _HEADER_LINE.findall(lines)
        request = Request(method, target, Headers(tuple(pairs)), data[end + 4 : bodyEnd])
        # Its sequence number, known already (a cached property), as the
        # parser sets it.
        object.__setattr__(request, "seq", seq)
        return bodyEnd, request

    def _sessionMessage(self, data: bytes, pos: int) -> tuple[int, Request] | None:
        """
        L{_request} for a C{SESSION message} in the shape a router writes
        it (L{_SESSION_MESSAGE_HEAD}, the request of every proxied message):
        its header lines taken from one match, none searched again.

        @return: As L{_request}; C{None} for another shape (which
            L{_request} then reads as any request).
        """
        matched = self._matched(data, pos, _SESSION_MESSAGE_HEAD)
        if matched is None:
            return None
        end, match = matched
        seqText, sessionId, to, contentType, messageId, length = match.groups()
        seq = int(seqText)
        bodyEnd = self._bodyEnd(data, end, length)
        if seq > MAX_SEQ or bodyEnd < 0:
            return None
        pairs = [("Seq", seqText), ("Session", sessionId), ("To", to)]
        if contentType is not None:
            pairs.append(("Content-Type", contentType))
        if messageId is not None:
            pairs.append(("Message-ID", messageId))
        request = Request("SESSION", "message", Headers(tuple(pairs)), data[end + 4 : bodyEnd])
        object.__setattr__(request, "seq", seq)
        return bodyEnd, request

    def _frameEnd(self, data: bytes, pos: int) -> int:
        """
        @return: Where the frame at C{pos} ends, as far as its head says
            (C{Content-Length} its last header, or none): maybe beyond
            C{data}; or -1 when its head is not whole in C{data} (or not in
            CRLF form).
        """
        end = data.find(_HEAD_END, pos, pos + self._window)
        if end < 0:
            return -1
        length = _LAST_CONTENT_LENGTH.search(data, pos, end)
        return end + 4 + (int(length.group(1)) if length is not None else 0)

    def _hold(self, data: bytes, pos: int, end: int) -> None:
        """
        The parser is given the frame at C{pos}, cut by the end of C{data}:
        remember what is known of where it ends.
        """
        if end > 0:
            self._held = b""
            self._need = end - len(data)
        elif len(data) - pos < self._window:
            self._held = data[pos:]
            self._need = -1
        else:
            self._forget()

    def _forget(self) -> None:
        self._held = b""
        self._need = -1

    def _rest(self, data: bytes) -> int:
        """
        @return: How many bytes of C{data} complete the frame the parser
            holds part of, as far as is known (else all of them); the
            rest of what is known of it is remembered.
        """
        size = len(data)
        need = self._need
        if need < 0:
            held = self._held
            if not held:
                return size
            combined = held + data[: self._window]
            end = self._frameEnd(combined, 0)
            if end < 0:
                if len(combined) < self._window and len(combined) == len(held) + size:
                    self._held = combined
                else:
                    self._forget()
                return size
            need = end - len(held)
            self._held = b""
        if need <= 0:
            self._forget()
            return size
        if need > size:
            self._need = need - size
            return size
        self._need = -1
        return need
