"""
Tests for L{imgateway.router.link_codec}: every core event to a link
request and back, every delivery status to a response and back, through
the native wire form (serialised and parsed again).
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import re
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.framing import MAX_SEQ, Frame, FrameParser, FramingError, Headers, Limits, Request, Response, serialise, withSeq
from imgateway.adapters.native.mapping import TargetForm
from imgateway.core.address import Address
from imgateway.core.errors import (
    Blocked,
    DeliveryError,
    DeliveryStatus,
    LoopDetected,
    MovedTo,
    NoSuchUser,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    UserBusy,
    UserOffline,
    statusError,
)
from imgateway.core.events import Message, MessageMark, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind, checkMessageId
from imgateway.core.presence import Presence, PresenceState
from imgateway.router import link_codec
from imgateway.router.link_codec import (
    LinkCodecError,
    LinkRequest,
    decodeRequest,
    decodeResponse,
    encodeRequest,
    encodeResponse,
    hopKey,
    viaEntry,
)

ALICE = Address.fromString("alice@corp.example")
CAROL = Address.fromString("carol@corp.example")
ROMEO = Address.fromString("romeo@partner.example")
#: What a link accepts with the default C{[links]} keys.
LIMITS = Limits(maxStartLineBytes=4096, maxHeaderBytes=16384, maxHeaders=64, maxBodyBytes=65536)


#: L{link_codec._USUAL_MESSAGE_HEAD} as session 12 wrote it (each line with
#: its line end before it, optional lines as optional groups, a value's
#: space runs as a repeat): the reference its cheaper form is held to
#: (L{LinkFrameReaderTests.test_usualHeadAsBefore}).
_FORMER_ASCII_VALUE = r"[!-~]++(?: ++[!-~]++)*+"
FORMER_USUAL_MESSAGE_HEAD = re.compile(
    r"MESSAGE (im:[!-~]+) IMGW/1\.0\r\n"
    r"Seq: ([0-9]{1,10})\r\n"
    rf"From: (im:{_FORMER_ASCII_VALUE})\r\n"
    rf"Message-ID: ({_FORMER_ASCII_VALUE})\r\n"
    r"Timestamp: ([0-9]{1,12}(?:\.[0-9]{1,9})?)"
    rf"(?:\r\nContent-Type: ({_FORMER_ASCII_VALUE}))?"
    rf"(?:\r\nAuto: ({_FORMER_ASCII_VALUE}))?"
    rf"((?:\r\nVia: {_FORMER_ASCII_VALUE})*)"
    r"(?:\r\nMax-Hops: ([0-9]{1,10}))?"
    r"\r\nRouting-Id: ([\x21-\x7e]{1,128})"
    r"(?:\r\nHops: ([0-9]{1,10}))?"
    r"(?:\r\nContent-Length: ([0-9]{1,18}))?"
    r"\r\n\r\n"
)


def wire(frame: Frame) -> Frame:
    """
    C{frame} serialised and parsed again, as the peer sees it.
    """
    frame = attrs.evolve(frame, headers=frame.headers.with_("Seq", "7"))
    (parsed,) = FrameParser().feed(serialise(frame))
    assert isinstance(parsed, (Request, Response)), parsed
    return parsed


def wireRequest(request: Request) -> Request:
    """
    C{request} serialised and parsed again, as the peer sees it.
    """
    parsed = wire(request)
    assert isinstance(parsed, Request), parsed
    return parsed


def events() -> list[object]:
    """
    One of every kind of core event, with every field set.
    """
    out: list[object] = [
        Message(ALICE, CAROL, "hello\r\n\x00 é 😀", contentType="text/html", messageId="m-1", timestamp=1767225600.125, hops=2),
        Message(ROMEO, ALICE, "", timestamp=0.0),
        PresenceProbe(CAROL, ALICE, hops=1),
    ]
    for mark in MessageMark:
        out.append(Message(ALICE, ROMEO, "auto", timestamp=2.0, mark=mark))
    for state in PresenceState:
        out.append(PresenceUpdate(ALICE, CAROL, Presence(state, "in a\tmeeting" if state.isOpen else ""), hops=3))
    for kind in SubscriptionKind:
        out.append(SubscriptionEvent(kind, ROMEO, CAROL, hops=4))
    return out


class EventRoundTripTests(SynchronousTestCase):
    """
    Events survive a trip over the wire unchanged.
    """

    def test_everyEvent(self) -> None:
        """
        Every kind of event (every presence state and subscription kind)
        decodes to an equal event, with its hop count, via, max hops and
        routing id; a message keeps its routing id.
        """
        for event in events():
            request = encodeRequest(event, ["corp.example/hs1", "corp.example/router"], 5, "rid-1")  # type: ignore[arg-type]
            decoded = decodeRequest(wire(request))  # type: ignore[arg-type]
            self.assertEqual(decoded.event, event)
            self.assertEqual(decoded.via, ("corp.example/hs1", "corp.example/router"))
            self.assertEqual(decoded.maxHops, 5)
            self.assertEqual(decoded.routingId, "rid-1")
            if isinstance(event, Message):
                self.assertEqual(decoded.event.routingId, "rid-1")  # type: ignore[union-attr]
                self.assertEqual(decoded.event.body, event.body)  # type: ignore[union-attr]

    def test_defaultsLeftOut(self) -> None:
        """
        C{Hops} is left out when 0, C{Max-Hops} when 8 and a message's
        C{Content-Type} when C{text/plain} (their defaults); the decoder
        reads them absent, or present with their default value (as a sender
        that writes every header sends them), to the same event and hop
        budget. Other values are sent.
        """
        plain = Message(ALICE, CAROL, "hi", messageId="m", timestamp=1.5, routingId="r")
        request = encodeRequest(plain, ["corp.example/hs1"], 8, "r")
        self.assertEqual(
            [name for name, value in request.headers],
            ["From", "Message-ID", "Timestamp", "Via", "Routing-Id"],
        )
        decoded = decodeRequest(wireRequest(request))
        self.assertEqual((decoded.event, decoded.maxHops), (plain, 8))
        explicit = attrs.evolve(
            request, headers=request.headers.with_("Hops", "0").with_("Content-Type", "text/plain").with_("Max-Hops", "8")
        )
        decoded = decodeRequest(wireRequest(explicit))
        self.assertEqual((decoded.event, decoded.maxHops), (plain, 8))
        for maxHops in (1, 7, 9):
            request = encodeRequest(plain, ["corp.example/hs1"], maxHops, "r")
            self.assertEqual(request.headers.get("Max-Hops"), str(maxHops))
            self.assertEqual(decodeRequest(wireRequest(request)).maxHops, maxHops)
        rich = attrs.evolve(plain, contentType="text/html", hops=1)
        request = encodeRequest(rich, ["corp.example/hs1"], 8, "r")
        self.assertEqual((request.headers.get("Hops"), request.headers.get("Content-Type")), ("1", "text/html"))
        self.assertEqual(decodeRequest(wireRequest(request)).event, rich)
        probe = encodeRequest(PresenceProbe(ALICE, CAROL), [], 1, "r")
        self.assertIsNone(probe.headers.get("Hops"))
        self.assertEqual(decodeRequest(wireRequest(probe)).event, PresenceProbe(ALICE, CAROL))

    def test_mark(self) -> None:
        """
        A message's loop mark travels as C{Auto} (absent for a message a
        person wrote); an unknown C{Auto} is refused with 400.
        """
        marked = encodeRequest(Message(ALICE, CAROL, "hi", mark=MessageMark.AUTO_REPLY), [], 1, "r")
        self.assertEqual(marked.headers.get("Auto"), "auto-reply")
        self.assertEqual(decodeRequest(wireRequest(marked)).event.mark, MessageMark.AUTO_REPLY)  # type: ignore[union-attr]
        self.assertIsNone(encodeRequest(Message(ALICE, CAROL, "hi"), [], 1, "r").headers.get("Auto"))
        e = self.assertRaises(LinkCodecError, decodeRequest, attrs.evolve(marked, headers=marked.headers.with_("Auto", "loop")))
        self.assertEqual(e.code, 400)

    def test_methods(self) -> None:
        """
        Messages travel as C{MESSAGE im:}, presence and subscription events
        as C{NOTIFY pres:}, probes as C{PROBE pres:}; the target is the
        recipient and C{From} the sender.
        """
        message = encodeRequest(Message(ALICE, CAROL, "hi"), [], 1, "r")
        self.assertEqual((message.method, message.target, message.headers.get("From")), ("MESSAGE", "im:carol@corp.example", "im:alice@corp.example"))
        probe = encodeRequest(PresenceProbe(ALICE, CAROL), [], 1, "r")
        self.assertEqual((probe.method, probe.target), ("PROBE", "pres:carol@corp.example"))
        notify = encodeRequest(SubscriptionEvent(SubscriptionKind.AUTHORISE, ALICE, CAROL), [], 1, "r")
        self.assertEqual((notify.method, notify.headers.get("Event"), notify.headers.get("Subscription")), ("NOTIFY", "subscription", "authorise"))

    def test_lease(self) -> None:
        """
        A presence update's lease, when the core model has one, travels as
        C{Expires} and comes back.
        """
        event = PresenceUpdate(ALICE, CAROL, Presence(PresenceState.AWAY), lease=90.5)
        request = encodeRequest(event, [], 1, "r")
        self.assertEqual(request.headers.get("Expires"), "90.5")
        self.assertEqual(decodeRequest(wire(request)).event, event)  # type: ignore[arg-type]
        self.assertIsNone(encodeRequest(PresenceUpdate(ALICE, CAROL, Presence()), [], 1, "r").headers.get("Expires"))
        # Nearly over: still positive on the wire (rounded up).
        nearly = encodeRequest(PresenceUpdate(ALICE, CAROL, Presence(), lease=1e-9), [], 1, "r")
        self.assertEqual(nearly.headers.get("Expires"), "0.000001")
        self.assertEqual(encodeRequest(PresenceUpdate(ALICE, CAROL, Presence(), lease=30.0), [], 1, "r").headers.get("Expires"), "30")

    def test_badLease(self) -> None:
        """
        An C{Expires} of 0 (a lease must be positive) is refused with 400.
        """
        request = encodeRequest(PresenceUpdate(ALICE, CAROL, Presence(), lease=5.0), [], 1, "r")
        e = self.assertRaises(LinkCodecError, decodeRequest, attrs.evolve(request, headers=request.headers.with_("Expires", "0")))
        self.assertEqual(e.code, 400)

    def test_hopKey(self) -> None:
        """
        An event's hop key ignores its hop count: a message goes by its
        routing id, other events by their value.
        """
        message = Message(ALICE, CAROL, "hi")
        self.assertEqual(hopKey(message), hopKey(attrs.evolve(message, hops=3)))
        self.assertNotEqual(hopKey(message), hopKey(Message(ALICE, CAROL, "hi")))
        probe = PresenceProbe(ALICE, CAROL)
        self.assertEqual(hopKey(probe), hopKey(attrs.evolve(probe, hops=3)))
        self.assertEqual(viaEntry("corp.example", "hs1"), "corp.example/hs1")


class BadRequestTests(SynchronousTestCase):
    """
    Requests that carry no valid event are refused with a status, never an
    exception of another kind.
    """

    def good(self) -> Request:
        return encodeRequest(Message(ALICE, CAROL, "hi"), [], 3, "r")

    def assertRefused(self, request: Request, code: int = 400) -> None:
        e = self.assertRaises(LinkCodecError, decodeRequest, request)
        self.assertEqual(e.code, code)

    def test_badHeaders(self) -> None:
        """
        Invalid C{Max-Hops}, C{Hops}, missing or invalid C{Routing-Id},
        C{From}, C{Timestamp}, C{Message-ID} are 400; C{Max-Hops: 0} is 482;
        a missing C{Max-Hops} is its default, 8.
        """
        good = self.good()
        for name, value in [
            ("Max-Hops", "x"),
            ("Routing-Id", "a b"),
            ("Hops", "-1"),
            ("From", "pres:alice@corp.example"),
            ("From", "alice@corp.example"),
            ("From", "im:not an address"),
            ("Timestamp", "soon"),
            ("Message-ID", "with space"),
        ]:
            self.assertRefused(attrs.evolve(good, headers=good.headers.with_(name, value)))
        for name in ("Routing-Id", "From", "Timestamp", "Message-ID"):
            self.assertRefused(attrs.evolve(good, headers=good.headers.without(name)))
        self.assertEqual(decodeRequest(attrs.evolve(good, headers=good.headers.without("Max-Hops"))).maxHops, 8)
        self.assertRefused(attrs.evolve(good, headers=good.headers.with_("Max-Hops", "0")), 482)

    def test_badTargetsAndBodies(self) -> None:
        """
        A target of the wrong form, a body that is not UTF-8, an unknown
        event or presence token are 400; an unknown method 405.
        """
        good = self.good()
        self.assertRefused(attrs.evolve(good, target="pres:carol@corp.example"))
        self.assertRefused(attrs.evolve(good, body=b"\xff"))
        self.assertRefused(attrs.evolve(good, method="FOO"), 405)
        notify = encodeRequest(PresenceUpdate(ALICE, CAROL, Presence()), [], 1, "r")
        self.assertRefused(attrs.evolve(notify, headers=notify.headers.with_("Event", "contact")))
        self.assertRefused(attrs.evolve(notify, headers=notify.headers.with_("Presence", "sleepy")))
        self.assertRefused(attrs.evolve(notify, headers=notify.headers.with_("Expires", "soon")))
        self.assertRefused(attrs.evolve(notify, target="im:carol@corp.example"))

    def test_encodeChecks(self) -> None:
        """
        The encoder refuses a hop budget under 1 and an invalid routing id.
        """
        self.assertRaises(ValueError, encodeRequest, Message(ALICE, CAROL, "hi"), [], 0, "r")
        self.assertRaises(ValueError, encodeRequest, Message(ALICE, CAROL, "hi"), [], 1, "")


class StatusRoundTripTests(SynchronousTestCase):
    """
    Delivery statuses survive a trip over the wire as responses.
    """

    def roundTrip(self, result: DeliveryStatus | DeliveryError) -> DeliveryStatus | DeliveryError:
        response = wire(encodeResponse(result))
        assert isinstance(response, Response)
        try:
            return decodeResponse(response)
        except DeliveryError as e:
            return e

    def test_delivered(self) -> None:
        """
        Delivered travels as C{200}.
        """
        self.assertEqual(encodeResponse(DeliveryStatus.DELIVERED).code, 200)
        self.assertIs(self.roundTrip(DeliveryStatus.DELIVERED), DeliveryStatus.DELIVERED)

    def test_everyError(self) -> None:
        """
        Every failed status comes back as the same error class, status and
        text (486 with its alternate, 301 with its new home; 413, 429, 403,
        404, 480, 482, 503 among them).
        """
        for status in DeliveryStatus:
            if status is DeliveryStatus.DELIVERED:
                continue
            error = statusError(status, f"why {status.name}", "tel:+15550100" if status is DeliveryStatus.BUSY else None, home="hs2")
            back = self.roundTrip(error)
            self.assertIs(type(back), type(error))
            assert isinstance(back, DeliveryError)
            self.assertEqual((back.status, back.text), (status, error.text))
            self.assertEqual(getattr(back, "alternate", None), getattr(error, "alternate", None))
            self.assertEqual(getattr(back, "home", None), getattr(error, "home", None))
            self.assertEqual(encodeResponse(error).code, status.value)

    def test_named(self) -> None:
        """
        The statuses issue 8 names map to their native codes and back.
        """
        for error, code in [
            (UserBusy("busy", "im:alice.mobile@corp.example"), 486),
            (TooLarge("big"), 413),
            (RateLimited("slow down"), 429),
            (Blocked("no"), 403),
            (NoSuchUser("who"), 404),
            (UserOffline("alice@corp.example is offline"), 480),
            (LoopDetected("loop"), 482),
            (ServiceUnavailable("later"), 503),
        ]:
            self.assertEqual(encodeResponse(error).code, code)
            back = self.roundTrip(error)
            self.assertIs(type(back), type(error))
        back = self.roundTrip(UserBusy("busy", "im:alice.mobile@corp.example"))
        assert isinstance(back, UserBusy)
        self.assertEqual(back.alternate, "im:alice.mobile@corp.example")

    def test_movedTo(self) -> None:
        """
        A L{MovedTo} travels as C{301} with the new home in C{Home}, and
        comes back with it.
        """
        response = encodeResponse(MovedTo("carol@corp.example moved", "hs3"))
        self.assertEqual((response.code, response.headers.get("Home")), (301, "hs3"))
        back = self.roundTrip(MovedTo("carol@corp.example moved", "hs3"))
        assert isinstance(back, MovedTo)
        self.assertEqual((back.home, back.text), ("hs3", "carol@corp.example moved"))

    def test_unsafeDetail(self) -> None:
        """
        An error's text with line breaks is sent cleaned and cut to
        C{MAX_DETAIL_CHARS}: nothing can be injected into the stream.
        """
        response = encodeResponse(ServerError("a\r\nInjected: yes" + "x" * 1000))
        self.assertEqual(response.headers.getAll("Injected"), [])
        self.assertEqual(len(response.headers.get("Detail") or ""), 256)
        serialise(attrs.evolve(response, headers=response.headers.with_("Seq", "1")))

    def test_unknownCode(self) -> None:
        """
        A code that is no delivery status (400, 405) stands for a server
        error; any 2xx for delivered.
        """
        self.assertIsInstance(self.failureOf(Response(405, "Method Not Allowed", Headers())), ServerError)
        self.assertIs(decodeResponse(Response(202, "Accepted", Headers())), DeliveryStatus.DELIVERED)

    def failureOf(self, response: Response) -> DeliveryError:
        try:
            decodeResponse(response)
        except DeliveryError as e:
            return e
        self.fail("no error")


class MessageFastPathTests(SynchronousTestCase):
    """
    A C{MESSAGE} is read in one pass over its headers
    (C{link_codec._decodeMessage}), with exactly the results and errors of
    the reading by look-ups every method has (C{link_codec._decodeEvent}).
    """

    def outcome(self, decode: Any, request: Request) -> object:
        try:
            return decode(request)
        except LinkCodecError as e:
            return ("error", e.code, e.detail)

    def test_sameAsLookUps(self) -> None:
        """
        Over many variants of a valid C{MESSAGE} (each header missing,
        empty, invalid, repeated, in another case; targets and bodies that
        are wrong), both readings agree; C{decodeRequest} uses the fast one.
        """
        good: list[tuple[str, str]] = [
            ("From", "im:alice@corp.example"),
            ("Message-ID", "m-1"),
            ("Timestamp", "1767225600.125"),
            ("Content-Type", "text/html"),
            ("Auto", "auto-reply"),
            ("Via", "corp.example/hs1"),
            ("Via", "corp.example/router"),
            ("Max-Hops", "5"),
            ("Routing-Id", "r.1"),
            ("Hops", "2"),
        ]
        bad = ["", " ", "0", "-1", "x", "99999999999", "im:", "pres:alice@corp.example", "im:alice@", "1.5", "1e3", "\u2603", "a" * 200]
        variants: list[tuple[str, tuple[tuple[str, str], ...], bytes]] = [("im:carol@corp.example", tuple(good), b"hi")]
        for i, (name, value) in enumerate(good):
            without = good[:i] + good[i + 1 :]
            variants.append(("im:carol@corp.example", tuple(without), b"hi"))
            variants.append(("im:carol@corp.example", tuple(good[:i] + [(name.upper(), value)] + good[i + 1 :]), b"hi"))
            variants.append(("im:carol@corp.example", tuple(good + [(name.lower(), "im:bob@corp.example")]), b"hi"))
            for other in bad:
                variants.append(("im:carol@corp.example", tuple(good[:i] + [(name, other)] + good[i + 1 :]), b"hi"))
        for target in ["pres:carol@corp.example", "im:carol", "im:carol@corp.example", ""]:
            for body in [b"", b"\xff", "\u2603".encode()]:
                variants.append((target, tuple(good), body))
        for target, headers, body in variants:
            request = Request("MESSAGE", target, Headers(headers), body)
            expected = self.outcome(link_codec._decodeEvent, request)
            self.assertEqual(self.outcome(link_codec._decodeMessage, request), expected, (target, headers, body))
            self.assertEqual(self.outcome(decodeRequest, request), expected)
        self.assertGreater(len(variants), 150)


    def test_sameAsLookUpsByName(self) -> None:
        """
        The reading by name (each header once, spelt as C{encodeMessage}
        writes it: one C{Via} or none, as a home server's message has) and
        the reading in one pass (any header repeated, in any case, or
        unknown) agree with the look-ups, over fuzzed header lists, targets
        and C{From} values in either scheme case.
        """
        rng = random.Random(20261205)
        names = ["From", "Message-ID", "Timestamp", "Content-Type", "Auto", "Via", "Max-Hops", "Routing-Id", "Hops", "Seq"]
        values = {
            "From": ["im:alice@corp.example", "IM:alice@corp.example", "iM:alice@corp.example", "pres:alice@corp.example", "im:alice", ""],
            "Message-ID": ["m-1", "", "a" * 200],
            "Timestamp": ["1767225600.125", "1", "x", ""],
            "Content-Type": ["text/html", "", "text/plain"],
            "Auto": ["auto-reply", "nonsense", ""],
            "Via": ["corp.example/hs1", "corp.example/router", ""],
            "Max-Hops": ["5", "0", "x", "8"],
            "Routing-Id": ["r.1", "", " ", "a" * 200],
            "Hops": ["2", "0", "", "-1"],
            "Seq": ["7"],
        }
        targets = ["im:carol@corp.example", "IM:carol@corp.example", "Im:carol@corp.example", "pres:carol@corp.example", "im:carol", ""]
        byName = 0
        for _ in range(3000):
            chosen = [n for n in names if rng.random() < 0.85]
            headers = [(n, rng.choice(values[n])) for n in chosen]
            if rng.random() < 0.3:
                # A repeated header, in the same or another case.
                name = rng.choice(names)
                spelt = rng.choice([name, name.lower(), name.upper()])
                headers.insert(rng.randrange(len(headers) + 1), (spelt, rng.choice(values[name])))
            elif rng.random() < 0.1:
                headers.append(("X-Other", "1"))
            rng.shuffle(headers)
            request = Request("MESSAGE", rng.choice(targets), Headers(tuple(headers)), rng.choice([b"hi", b"", b"\xff"]))
            byName += len({n for n, _ in headers}) == len(headers) and {n for n, _ in headers} <= set(names)
            expected = self.outcome(link_codec._decodeEvent, request)
            self.assertEqual(self.outcome(link_codec._decodeMessage, request), expected, request)
        self.assertGreater(byName, 1000)


class MessageEncodingTests(SynchronousTestCase):
    """
    L{link_codec.encodeMessage} writes a message's link request directly,
    with exactly the bytes and errors of L{serialise} over L{encodeRequest}
    (the general way every event has).
    """

    def outcome(self, encode: Any) -> object:
        try:
            return encode()
        except ValueError as e:
            return ("error", type(e), str(e))

    def test_sameAsGeneral(self) -> None:
        """
        Over fuzzed messages (addresses, message ids, content types and
        bodies with control characters, white space, non-ASCII text and
        lone surrogates; every mark, hop count, C{Via} list, C{Max-Hops}
        and routing id, valid or not), both encodings agree. Given a hop
        count (C{hops}, a router's: no copy of the message) and a C{Seq}
        (C{seq}, written in place), the direct encoding is the general
        way's bytes of the message with that hop count, with that C{Seq}
        put first as L{withSeq} puts it: in the usual shape (one format),
        any other and the general way.
        """
        rng = random.Random(20261205)
        # (U+200E and U+3000: not printable, yet nothing the patterns find.)
        alphabet = ["a", "Z", "0", "-", ".", "/", ":", "@", " ", "\t", "\r", "\n", "\x00", "\x7f", "\x85", "\u2603", "\ud800", "é", "\x1b", "\u200e", "\u3000"]

        def text(low: int = 0, high: int = 12) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))

        def address() -> Address:
            if rng.random() < 0.9:
                return rng.choice([ALICE, CAROL, ROMEO])
            # Not normalised: what no face makes, but the encoding must
            # still say the same as the general one.
            return Address(text(1), text(1))

        def messageId() -> str:
            while True:
                value = text(1, 20) if rng.random() < 0.3 else rng.choice(["m-1", "é-\u2603", "x" * 128])
                try:
                    Message(ALICE, CAROL, "", messageId=value)
                except ValueError:
                    continue
                return value

        cases = inPlace = 0
        for i in range(4000):
            message = Message(
                address(),
                address(),
                rng.choice(["", "hi", "hi ☃", "hi", "\x00\r\n", "\ud800", text(0, 40)]),
                contentType=rng.choice(["text/plain", "text/html", "", " text/x ", text(0, 12)]),
                messageId=messageId(),
                timestamp=rng.choice([0.0, 1767225600.125, rng.random() * 2e9, 1e-7, rng.uniform(1e9, 1e12), 1e12, -1.5]),
                hops=rng.choice([0, 0, 1, 7, 15, 16, 123]),
                routingId="r.1",
                mark=rng.choice([None, None, *MessageMark]),
            )
            via = tuple(rng.choice(["corp.example/hs1", "corp.example/router", "corp.example/hs2", text(0, 10)]) for _ in range(rng.randint(0, 3)))
            maxHops = rng.choice([8, 8, 8, 1, 5, 9, 0, -1])
            routingId = rng.choice(["r.1", "abc-123", "r.1", "abc-123", "", "a b", "x" * 129, "\u2603", text(1, 10)])
            general = self.outcome(lambda: serialise(encodeRequest(message, via, maxHops, routingId)))
            direct = self.outcome(lambda: link_codec.encodeMessage(message, via, maxHops, routingId))
            self.assertEqual(direct, general, (message, via, maxHops, routingId))
            cases += isinstance(general, bytes)
            hops = rng.choice([0, 1, 2, 16, 124])
            seq = rng.choice([None, 1, 42, MAX_SEQ])
            counted = attrs.evolve(message, hops=hops)
            general = self.outcome(lambda: serialise(encodeRequest(counted, via, maxHops, routingId)))
            if seq is not None and isinstance(general, bytes):
                general = withSeq(general, seq)
            direct = self.outcome(lambda: link_codec.encodeMessage(message, via, maxHops, routingId, hops, seq))
            self.assertEqual(direct, general, (message, via, maxHops, routingId, hops, seq))
            inPlace += isinstance(general, bytes) and seq is not None
        # Most were encodable: the comparison is of bytes, not only errors.
        self.assertGreater(cases, 500)
        self.assertGreater(inPlace, 300)

    def test_printableWithoutPatterns(self) -> None:
        """
        A message whose target, sender, id and C{Via} are printable (a
        target without a space) is written without its values searched by
        the patterns; one with a value that is not printable, but holds
        nothing they find (U+200E in a C{Via}), is searched and still
        written directly. Both are the general way's bytes.
        """
        message = Message(ALICE, CAROL, "hi ☃", messageId="m-1-é", timestamp=1767225600.125, routingId="r.1")
        plain, odd = ("corp.example/hs1",), ("corp.example/hs1\u200e",)
        expected = [serialise(encodeRequest(message, via, 8, "r.1")) for via in (plain, odd)]
        searched: list[str] = []

        class Recording:
            def __init__(self, pattern: re.Pattern[str]) -> None:
                self.pattern = pattern

            def search(self, text: str) -> re.Match[str] | None:
                searched.append(text)
                return self.pattern.search(text)

        self.patch(link_codec, "_TARGET_NOT_PLAIN", Recording(link_codec._TARGET_NOT_PLAIN))
        self.patch(link_codec, "_VALUES_NOT_PLAIN", Recording(link_codec._VALUES_NOT_PLAIN))
        self.assertEqual(link_codec.encodeMessage(message, plain, 8, "r.1"), expected[0])
        self.assertEqual(searched, [])
        self.assertEqual(link_codec.encodeMessage(message, odd, 8, "r.1"), expected[1])
        self.assertEqual(searched, [CAROL.imURI(), "\t".join((ALICE.imURI(), "m-1-é", *odd))])

    def test_usualShapeInOneFormat(self) -> None:
        """
        A message in the usual shape (plain text, no mark, one C{Via}, the
        shipped C{Max-Hops}) is written in one format, without
        L{link_codec._messageHead}: the general way's bytes, with and
        without a body and a hop count; a lone surrogate in its body still
        goes the general way (its error); with a C{Seq} and a hop count
        given, the same in one format. Any other shape is written by
        L{link_codec._messageHead}. (In the compiled build the module's own
        calls cannot be patched: there only the bytes are checked.)
        """
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        heads: list[object] = []
        real = link_codec._messageHead

        def recording(*args: Any) -> str:
            heads.append(args)
            return real(*args)

        self.patch(link_codec, "_messageHead", recording)
        via = ("corp.example/hs1",)
        for body in ("", "hi ☃"):
            for hops in (0, 1, 12):
                message = Message(ALICE, CAROL, body, messageId="m-1", timestamp=1767225600.125, hops=hops, routingId="r.1")
                general = serialise(encodeRequest(message, via, 8, "r.1"))
                self.assertEqual(link_codec.encodeMessage(message, via, 8, "r.1"), general)
                # With a Seq (in the one format with a body) and a hop
                # count given.
                for seq in (1, 42, MAX_SEQ):
                    self.assertEqual(link_codec.encodeMessage(message, via, 8, "r.1", hops, seq), withSeq(general, seq))
                    onward = serialise(encodeRequest(attrs.evolve(message, hops=hops + 1), via, 8, "r.1"))
                    self.assertEqual(link_codec.encodeMessage(message, via, 8, "r.1", hops + 1, seq), withSeq(onward, seq))
        if counted:
            self.assertEqual(heads, [])
        surrogate = Message(ALICE, CAROL, "\ud800", messageId="m-1", routingId="r.1")
        self.assertEqual(
            self.outcome(lambda: link_codec.encodeMessage(surrogate, via, 8, "r.1")),
            self.outcome(lambda: serialise(encodeRequest(surrogate, via, 8, "r.1"))),
        )
        others = [
            (Message(ALICE, CAROL, "hi", contentType="text/html", routingId="r.1"), via, 8),
            (Message(ALICE, CAROL, "hi", mark=MessageMark.AUTO_REPLY, routingId="r.1"), via, 8),
            (Message(ALICE, CAROL, "hi", routingId="r.1"), (), 8),
            (Message(ALICE, CAROL, "hi", routingId="r.1"), via + ("corp.example/router",), 8),
            (Message(ALICE, CAROL, "hi", routingId="r.1"), via, 5),
        ]
        for message, vias, maxHops in others:
            self.assertEqual(link_codec.encodeMessage(message, vias, maxHops, "r.1"), serialise(encodeRequest(message, vias, maxHops, "r.1")))
        if counted:
            self.assertEqual(len(heads), len(others))

    def test_routingIdWithoutPattern(self) -> None:
        """
        A valid routing id in a message whose values are printable is
        taken without L{link_codec._ROUTING_ID} (its checks made by
        C{str} methods, over every value at once); an invalid one still
        raises what L{encodeRequest} raises, checked by the pattern. (In
        the compiled build the module's globals cannot be patched: there
        only the bytes and errors are checked.)
        """
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        matched: list[str] = []
        real = link_codec._ROUTING_ID

        class Recording:
            def fullmatch(self, text: str) -> re.Match[str] | None:
                matched.append(text)
                return real.fullmatch(text)

        via = ("corp.example/hs1",)
        message = Message(ALICE, CAROL, "hi", messageId="m-1", timestamp=1767225600.125, routingId="r.1")
        valid = ("r.1", "x" * 128, "!~")
        invalid = ("", "a b", "x" * 129, "\u2603", "r\t1", "r\x7f")
        expected = [serialise(encodeRequest(message, via, 8, routingId)) for routingId in valid]
        errors = []
        for routingId in invalid:
            with self.assertRaises(ValueError) as general:
                encodeRequest(message, via, 8, routingId)
            errors.append(str(general.exception))
        self.patch(link_codec, "_ROUTING_ID", Recording())
        self.assertEqual([link_codec.encodeMessage(message, via, 8, routingId) for routingId in valid], expected)
        if counted:
            self.assertEqual(matched, [])
        for routingId, error in zip(invalid, errors):
            with self.assertRaises(ValueError) as direct:
                link_codec.encodeMessage(message, via, 8, routingId)
            self.assertEqual(str(direct.exception), error)
        if counted:
            self.assertEqual(matched, ["", "a b", "x" * 129, "\u2603", "r\t1", "r\x7f"])

    def test_usualWithoutURIs(self) -> None:
        """
        A message with printable values is written with its addresses'
        parts, without L{Address.imURI}'s strings (one with a value that
        is not printable, U+200E in the sender, still makes them, for the
        patterns): the general
        way's bytes either way. (In the compiled build the calls are not
        counted.)
        """
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        via = ("corp.example/hs1",)
        plain = Message(ALICE, CAROL, "hi", messageId="m-1", timestamp=1767225600.125, hops=1, routingId="r.1")
        oddSender = Address("al\u200eice", "corp.example")
        odd = Message(oddSender, CAROL, "hi", messageId="m-1", timestamp=1767225600.125, hops=1, routingId="r.1")
        expected = [serialise(encodeRequest(message, via, 8, "r.1")) for message in (plain, odd)]
        calls: list[Address] = []
        real = Address.imURI

        def imURI(address: Address) -> str:
            calls.append(address)
            return real(address)

        self.patch(Address, "imURI", imURI)
        self.assertEqual(link_codec.encodeMessage(plain, via, 8, "r.1"), expected[0])
        if counted:
            self.assertEqual(calls, [])
        self.assertEqual(link_codec.encodeMessage(odd, via, 8, "r.1"), expected[1])
        if counted:
            self.assertEqual(calls, [CAROL, oddSender])

    def test_timestampExact(self) -> None:
        """
        L{link_codec.timestampText} writes times from 10**9 to 10**12
        seconds with 7 decimals and any other by C{repr}; either way the
        text is one the decoder takes (at most 12 digits, then at most 9
        decimals) for every time it took before, and C{float} reads back
        exactly the time written: over fuzzed times, the edges of the
        range and each time's neighbouring floats. A message's link
        request carries that text, and the receiver decodes the same
        timestamp.
        """
        rng = random.Random(20261206)
        times = [1e9, math.nextafter(1e9, 0), math.nextafter(1e12, 0), 1e12, 2.0**30, 2.0**31, 1767225600.125, 0.0, 1.5, 1e-7]
        times += [rng.uniform(1e9, 2e9) for _ in range(20000)]
        times += [rng.uniform(1e9, 1e12) for _ in range(5000)]
        times += [rng.uniform(0, 1e9) for _ in range(2000)]
        for t in list(times):
            times += [math.nextafter(t, 0), math.nextafter(t, math.inf)]
        for t in times:
            text = link_codec.timestampText(t)
            if 1e9 <= t < 1e12:
                self.assertEqual(text, "%.7f" % t)
            else:
                self.assertEqual(text, repr(t))
            if link_codec._TIMESTAMP.fullmatch(repr(t)) is not None:
                self.assertIsNotNone(link_codec._TIMESTAMP.fullmatch(text), t)
            self.assertEqual(float(text), t)
        via = ("corp.example/hs1",)
        for t in times[:9] + rng.sample(times, 300):
            if link_codec._TIMESTAMP.fullmatch(repr(t)) is None:
                # 10**12: refused, as before.
                continue
            message = Message(ALICE, CAROL, "hi", messageId="m-1", timestamp=t, hops=1, routingId="r.1")
            data = link_codec.encodeMessage(message, via, 8, "r.1")
            self.assertIn(b"\r\nTimestamp: %s\r\n" % link_codec.timestampText(t).encode(), data)
            [request] = FrameParser().feed(data.replace(b"\r\n", b"\r\nSeq: 1\r\n", 1))
            assert isinstance(request, Request)
            event = decodeRequest(request).event
            assert isinstance(event, Message)
            self.assertEqual(event.timestamp, t)

    def test_linkSendsIt(self) -> None:
        """
        The bytes of a plain message are the general way's, and
        L{decodeRequest} reads the same message from them.
        """
        message = Message(ALICE, CAROL, "hi ☃", contentType="text/html", messageId="m-1", timestamp=1767225600.125, hops=2, routingId="r.1")
        encoded = link_codec.encodeMessage(message, ("corp.example/hs1",), 5, "r.1")
        self.assertEqual(encoded, serialise(encodeRequest(message, ("corp.example/hs1",), 5, "r.1")))
        [request] = FrameParser().feed(encoded.replace(b"\r\n", b"\r\nSeq: 1\r\n", 1))
        assert isinstance(request, Request)
        decoded = decodeRequest(request)
        self.assertEqual(decoded.event, message)
        self.assertEqual((decoded.via, decoded.maxHops, decoded.routingId), (("corp.example/hs1",), 5, "r.1"))


def readOutcome(item: object) -> object:
    """
    What a reader's item says, comparable between L{FrameParser} (a
    C{MESSAGE} decoded by L{decodeRequest}) and L{link_codec.LinkFrameReader}.
    """
    if isinstance(item, tuple):
        seq, decoded = item
        if isinstance(decoded, LinkCodecError):
            return ("message", seq, "error", decoded.code, decoded.detail)
        return ("message", seq, decoded)
    if isinstance(item, Request) and item.method == "MESSAGE":
        try:
            return ("message", item.seq, decodeRequest(item))
        except LinkCodecError as e:
            return ("message", item.seq, "error", e.code, e.detail)
    if isinstance(item, FramingError):
        return ("framing error", item.code, item.detail, item.seq, item.fatal, item.inResponse)
    assert isinstance(item, (Request, Response))
    return (item, item.seq)


class LinkFrameReaderTests(SynchronousTestCase):
    """
    L{link_codec.LinkFrameReader} takes the link C{MESSAGE}s written as
    L{link_codec.encodeMessage} writes them, and other requests with C{Seq}
    first, without the parser, with exactly the results the parser and
    L{decodeRequest} give: the same items, in the same order, in the same
    read, however the stream is cut; everything else is the parser's, with
    its limits and errors.
    """

    def reads(self, chunks: list[bytes], limits: Limits = LIMITS) -> tuple[list[list[Any]], list[list[Any]], int]:
        """
        Read C{chunks} with a reader and with a parser alone.

        @return: What each gives for each chunk, and how many requests the
            reader took without the parser.
        """
        parser = FrameParser(limits)
        reader = link_codec.LinkFrameReader(parser, limits)
        alone = FrameParser(limits)
        got: list[list[Any]] = []
        expected: list[list[Any]] = []
        for chunk in chunks:
            got.append([readOutcome(i) for i in reader.read(chunk)])
            expected.append([readOutcome(i) for i in alone.feed(chunk)])
        return got, expected, reader.taken

    def message(self, rng: random.Random, seq: int) -> bytes:
        """
        A link C{MESSAGE} as a connection sends it, mostly valid; sometimes
        with a value the decoding refuses, white space or a control
        character where the parser strips or refuses it, another spelling or
        order, or broken framing.
        """
        message = Message(
            rng.choice([ALICE, ROMEO, CAROL]),
            rng.choice([CAROL, ALICE, Address.fromString("dé@corp.example")]),
            rng.choice(["hi", "", "hi ☃", "x" * 300, "a\r\n\r\nb"]),
            contentType=rng.choice(["text/plain", "text/plain", "text/html"]),
            messageId=rng.choice(["m-1", "é-☃", "x" * 128]),
            timestamp=rng.choice([1767225600.125, 0.0, 12.5]),
            hops=rng.choice([0, 0, 2]),
            routingId="r.1",
            mark=rng.choice([None, None, *MessageMark]),
        )
        via = tuple(rng.choice(["corp.example/hs1", "corp.example/router"]) for _ in range(rng.choice([0, 1, 1, 2, 3])))
        data = link_codec.encodeMessage(message, via, rng.choice([8, 8, 5, 1]), rng.choice(["r.1", "r-2", f"r{seq}"]))
        data = data.replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)
        if rng.random() < 0.5:
            return data
        edits: list[tuple[bytes, bytes]] = [
            (b"From: im:", rng.choice([b"From: pres:", b"From:  im:", b"From:\tim:", b"FROM: im:", b"From: im:\x01", b"From: \xff"])),
            (b"Message-ID: ", rng.choice([b"Message-ID: \x7f", b"Message-ID:  ", b"Message-Id: "])),
            (b"Timestamp: ", rng.choice([b"Timestamp: x", b"Timestamp: 1e3", b"Timestamp: \t1"])),
            (b"Routing-Id: ", rng.choice([b"Routing-Id: ", b"Routing-Id: a b", b"Routing-Id: \xc2\x85"])),
            (b"\r\nRouting-Id", rng.choice([b"\r\nMax-Hops: 0\r\nRouting-Id", b"\r\nMax-Hops: x\r\nRouting-Id", b"\r\nHops: 1\r\nRouting-Id"])),
            (b"\r\nRouting-Id", rng.choice([b"\r\nAuto: nonsense\r\nRouting-Id", b"\r\nVia: \r\nRouting-Id", b"\r\nX-Other: 1\r\nRouting-Id"])),
            (b"\r\nRouting-Id", rng.choice([b"\r\nSeq: 3\r\nRouting-Id", b"\r\nContent-Length: 2\r\nRouting-Id", b"\nRouting-Id"])),
            (b"MESSAGE im:", rng.choice([b"MESSAGE pres:", b"MESSAGE im:\xc2\xa0", b"NOTIFY im:", b"MESSAGE  im:", b"\r\nMESSAGE im:"])),
            (b" IMGW/1.0", rng.choice([b" IMGW/1.1", b" IMGW/2.0", b" imgw/1.0"])),
            (b"Seq: %d\r\n" % seq, rng.choice([b"Seq: 0%d\r\n" % seq, b"Seq: 9999999999\r\n", b"Seq: 2147483648\r\n", b"Seq:  %d\r\n" % seq, b"Seq: \r\n"])),
            (b"\r\n\r\n", rng.choice([b"\r\nContent-Length: 1\r\n\r\n", b" \r\n\r\n", b"\t\r\n\r\n", b"\r\n\n", b"\r\nContent-Length: 99999999\r\n\r\n"])),
        ]
        old, new = rng.choice(edits)
        return data.replace(old, new, 1)

    def other(self, rng: random.Random, seq: int) -> bytes:
        """
        A frame that is no link message: other requests and responses, as a
        link sends them, keep-alives, broken frames.
        """
        return rng.choice(
            [
                serialise(encodeRequest(PresenceUpdate(ALICE, CAROL, Presence(PresenceState.AWAY, "lunch")), ("corp.example/hs1",), 8, f"n{seq}")).replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1),
                serialise(Request("PING", "*", Headers((("Seq", str(seq)),)))),
                b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % seq,
                serialise(Response(486, "Busy Here", Headers((("Seq", str(seq)), ("Alternate", "tel:1"))), b"{}")),
                b"\r\n",
                b"PING * IMGW/1.0\nSeq: %d\n\n" % seq,
                b"PING * IMGW/1.0\r\n\r\n",
                self.session(rng, seq),
                self.session(rng, seq),
            ]
        )

    def session(self, rng: random.Random, seq: int, plain: bool = False) -> bytes:
        """
        A request of another method with C{Seq} first, as a link connection
        writes it (a proxied session's message), mostly as written; sometimes
        with a header the parser reads otherwise or refuses.
        """
        text = rng.choice([b"", b"hi", "\u2603".encode(), b"\xff\r\n\r\n"])
        # The optional headers as a router writes them (Content-Type before
        # Message-ID, either left out), or in another order.
        optional = rng.choice(
            [
                b"Message-ID: m\xc3\xa9\r\n",
                b"Message-ID: m\xc3\xa9\r\n",
                b"",
                b"Content-Type: text/html\r\n",
                b"Content-Type: text/html\r\nMessage-ID: m-1\tx\r\n",
                b"Message-ID: m-1\r\nContent-Type: text/html\r\n",
            ]
        )
        head = b"SESSION message IMGW/1.0\r\nSeq: %d\r\nSession: s1\r\nTo: carol@corp.example\r\n%s" % (seq, optional)
        if text:
            head += b"Content-Length: %d\r\n" % len(text)
        data = head + b"\r\n" + text
        if plain or rng.random() < 0.5:
            return data
        old, new = rng.choice(
            [
                (b"Session: s1\r\n", rng.choice([b"Session: s1 \r\n", b"Session:s1\r\n", b"Session: \r\n", b"seq: 4\r\n", b"SEQ: %d\r\n" % seq])),
                (b"To: ", rng.choice([b"To: \x00", b"To: \t", b"T o: ", b"To: \xc2\x9f", b"content-length: 1\r\nTo: ", b"X: y\r\nTo: "])),
                (b"SESSION message", rng.choice([b"SESSION  message", b"session message", b"SESSION mess\xc2\xa0age", b"SESSIONSESSIONSESSION message"])),
                (b"Seq: %d\r\n" % seq, rng.choice([b"Seq: 0%d\r\n" % seq, b"Seq: 4294967296\r\n", b"X: 1\r\nSeq: %d\r\n" % seq, b"Seq: %d \r\n" % seq])),
                (b"\r\n\r\n", rng.choice([b"\r\nContent-Length: 0\r\n\r\n", b"\r\nContent-Length: 01\r\n\r\n", b"\r\nContent-Length: 99999999\r\n\r\n", b"\r\nA: b\r\n\r\n"])),
            ]
        )
        return data.replace(old, new, 1)

    def test_sameAsParser(self) -> None:
        """
        Over fuzzed streams of link messages (valid, or not in the writer's
        shape in one place: each header's value refused by the decoding,
        white space the parser strips, control characters it refuses,
        another spelling, order or version, a bad C{Seq}, a body too large,
        a bare LF) mixed with other frames, cut into reads at random or
        between frames, the reader gives what the parser and
        L{decodeRequest} give, read by read; and takes most valid messages
        itself.
        """
        rng = random.Random(20261205)
        fast = 0
        for i in range(500):
            frames = []
            for seq in range(1, rng.randint(2, 14)):
                frames.append(self.message(rng, seq) if rng.random() < 0.75 else self.other(rng, seq))
            if rng.random() < 0.05:
                frames.append(b"NOT A FRAME\r\n\r\n" + self.message(rng, 99))
            stream = b"".join(frames)
            if rng.random() < 0.4:
                cuts = sorted(set(rng.sample(range(1, len(stream)), min(rng.randint(1, 8), len(stream) - 1))))
            else:
                ends = [sum(map(len, frames[:k])) for k in range(1, len(frames))]
                cuts = sorted(set(rng.sample(ends, min(rng.randint(0, 3), len(ends)))))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            got, expected, taken = self.reads(chunks)
            self.assertEqual(got, expected, chunks)
            fast += taken
        self.assertGreater(fast, 600)

    def test_requestsTaken(self) -> None:
        """
        Requests of other methods with C{Seq} first, as links write them
        (with a body or none, non-ASCII values, TABs inside a value), are
        read without the parser into the requests it reads; a C{MESSAGE}
        too when messages are not decoded.
        """
        rng = random.Random(3)
        frames = [self.session(rng, seq, plain=True) for seq in range(1, 9)]
        frames.append(b"NOTIFY pres:alice@corp.example IMGW/1.0\r\nSeq: 9\r\nFrom: pres:carol@corp.example\r\nNote: a\tb \xe2\x98\x83\r\n\r\n")
        message = link_codec.encodeMessage(Message(ALICE, CAROL, "x"), (), 8, "r.1").replace(b"\r\n", b"\r\nSeq: 10\r\n", 1)
        stream = b"".join(frames) + message
        got, expected, taken = self.reads([stream])
        self.assertEqual(got, expected)
        self.assertEqual(taken, 10)
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        items = reader.read(stream, messages=False)
        self.assertEqual([readOutcome(i) for i in items], [readOutcome(i) for i in FrameParser(LIMITS).feed(stream)])
        self.assertIsInstance(items[-1], Request)
        self.assertEqual(reader.taken, 10)

    def test_sessionMessageOnePattern(self) -> None:
        """
        A C{SESSION message} in the shape a router writes it (with and
        without C{Content-Type}, C{Message-ID} and a body) is read with one
        pattern, its header lines not searched again, into the request the
        parser reads; one with its headers in another order is read as any
        request, into the same.
        """
        heads = [
            b"Session: s1\r\nTo: carol@corp.example\r\nMessage-ID: m\xc3\xa9\r\nContent-Length: 2\r\n\r\nhi",
            b"Session: s1\r\nTo: carol@corp.example\r\nContent-Type: text/html\r\n\r\n",
            b"Session: s1\r\nTo: carol@corp.example\r\nContent-Type: a\tb\r\nMessage-ID: m-1\r\nContent-Length: 3\r\n\r\n\xe2\x98\x83",
            b"Session: s1\r\nTo: carol@corp.example\r\n\r\n",
        ]
        plain = b"".join(b"SESSION message IMGW/1.0\r\nSeq: %d\r\n%s" % (seq, head) for seq, head in enumerate(heads, 1))
        other = b"SESSION message IMGW/1.0\r\nSeq: 9\r\nTo: carol@corp.example\r\nSession: s1\r\n\r\n"
        searched: list[str] = []

        class Recording:
            def findall(self, text: str) -> list[Any]:
                searched.append(text)
                return pattern.findall(text)

        pattern = link_codec._HEADER_LINE
        self.patch(link_codec, "_HEADER_LINE", Recording())
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        items = reader.read(plain)
        self.assertEqual([readOutcome(i) for i in items], [readOutcome(i) for i in FrameParser(LIMITS).feed(plain)])
        self.assertEqual((reader.taken, searched), (4, []))
        [item] = reader.read(other)
        self.assertEqual(readOutcome(item), readOutcome(FrameParser(LIMITS).feed(other)[0]))
        self.assertEqual((reader.taken, searched), (5, ["\r\nTo: carol@corp.example\r\nSession: s1"]))

    def test_usualMessageOnePattern(self) -> None:
        """
        A link C{MESSAGE} in the usual shape (printable ASCII values) is read
        with one pattern, L{link_codec._USUAL_MESSAGE_HEAD}, which also
        checks its C{Timestamp}, C{Max-Hops}, C{Routing-Id} and C{Hops}: no
        other pattern looks at it. One with a value out of that shape
        (non-ASCII, a TAB, a C{Timestamp} the decoding refuses) is read by
        L{link_codec._MESSAGE_HEAD} and checked as before. Each gives what
        the parser and L{decodeRequest} give. The usual one is matched in
        the read's Latin-1 text, in place: its head is not found, cut and
        decoded first (L{link_codec.LinkFrameReader._head}). (In the
        compiled build the calls of C{_head} are not counted.)
        """
        used: list[str] = []
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        head = link_codec.LinkFrameReader._head

        def recordingHead(reader: link_codec.LinkFrameReader, data: bytes, pos: int) -> tuple[int, str] | None:
            used.append("_head")
            return head(reader, data, pos)

        if counted:
            self.patch(link_codec.LinkFrameReader, "_head", recordingHead)

        class Recording:
            def __init__(self, name: str, pattern: re.Pattern[str]) -> None:
                self.name = name
                self.pattern = pattern

            def fullmatch(self, text: str) -> re.Match[str] | None:
                used.append(self.name)
                return self.pattern.fullmatch(text)

        for name in ("_MESSAGE_HEAD", "_ROUTING_ID", "_NUMBER", "_TIMESTAMP"):
            self.patch(link_codec, name, Recording(name, getattr(link_codec, name)))

        def frame(seq: int, message: Message, via: tuple[str, ...] = ("corp.example/hs1",), maxHops: int = 8) -> bytes:
            return link_codec.encodeMessage(message, via, maxHops, f"r.{seq}").replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)

        usual = [
            frame(1, Message(ALICE, CAROL, "hi", messageId="m-1", timestamp=1767225600.125)),
            frame(2, Message(ALICE, CAROL, "☃ x", contentType="text/html", hops=3, mark=MessageMark.AUTO_REPLY), ("a/b", "c/d"), 5),
            frame(3, Message(ALICE, CAROL, "", messageId="ab")).replace(b"Message-ID: ab", b"Message-ID: a b"),
            frame(4, Message(ALICE, CAROL, "hi"), maxHops=1).replace(b"Max-Hops: 1", b"Max-Hops: 0"),
        ]
        unusual = [
            frame(5, Message(ALICE, CAROL, "hi", messageId="é-1")),
            frame(6, Message(ALICE, CAROL, "hi", contentType="text/plain;\tq=1")),
            frame(7, Message(ALICE, CAROL, "hi")).replace(b"Timestamp: ", b"Timestamp: 1e"),
            frame(8, Message(ALICE, CAROL, "hi")).replace(b"Routing-Id: r.8", b"Routing-Id: " + b"r" * 129),
        ]
        for frames, patterns in ((usual, []), (unusual, ["_head", "_MESSAGE_HEAD"] * 4 if counted else ["_MESSAGE_HEAD"] * 4)):
            stream = b"".join(frames)
            reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
            del used[:]
            items = reader.read(stream)
            self.assertEqual([u for u in used if u in ("_head", "_MESSAGE_HEAD")], patterns)
            if not patterns:
                self.assertEqual(used, [])
            self.assertEqual(reader.taken, 4)
            self.assertEqual([readOutcome(i) for i in items], [readOutcome(i) for i in FrameParser(LIMITS).feed(stream)])
        # The third and fourth refused on the usual path as the parser's
        # path refuses them (the id checked, Max-Hops 0); the unusual ones
        # as before.
        outcomes: list[Any] = [readOutcome(i) for i in link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS).read(b"".join(usual + unusual))]
        self.assertEqual([o[2] == "error" for o in outcomes], [False, False, True, True, False, False, True, True])
        self.assertEqual(outcomes[2][3:], (400, "message id must be printable, without spaces"))
        self.assertEqual(outcomes[3][3:], (482, "Max-Hops exhausted"))

    def test_possessiveValues(self) -> None:
        """
        The value patterns, written as runs taken whole
        (L{link_codec._PLAIN_VALUE}, L{link_codec._ASCII_VALUE}), take
        exactly the values their backtracking forms took, alone and as the
        value of a header line followed by more, over every string of up to
        four characters from an alphabet of each class's edges and 30,000
        longer random ones; the patterns that use them are built from them.
        """
        backtracking = {
            link_codec._PLAIN_VALUE: r"[^\x00-\x20\x7f-\x9f](?:[^\x00-\x08\x0a-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f])?",
            link_codec._ASCII_VALUE: r"[!-~](?:[ -~]*[!-~])?",
        }
        alphabet = ["a", "~", "!", " ", "\t", "\r", "\n", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "\xa0", "é", "\u2603", ":"]
        rng = random.Random(20261206)
        texts = ["".join(chars) for n in range(5) for chars in itertools.product(alphabet, repeat=n)]
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(5, 40))) for _ in range(30000)]
        for new, old in backtracking.items():
            shapes = [(re.compile(new), re.compile(old)), (re.compile(f"X: ({new})\r\nY: ({new})"), re.compile(f"X: ({old})\r\nY: ({old})"))]
            for text in texts:
                self.assertEqual(bool(shapes[0][0].fullmatch(text)), bool(shapes[0][1].fullmatch(text)), text)
                line = f"X: {text}\r\nY: {text[::-1]}"
                matches = [pattern.fullmatch(line) for pattern in shapes[1]]
                self.assertEqual([m and m.groups() for m in matches][0], [m and m.groups() for m in matches][1], text)
        for pattern in (link_codec._MESSAGE_HEAD, link_codec._SESSION_MESSAGE_HEAD, link_codec._REQUEST_HEAD, link_codec._HEADER_LINE):
            self.assertIn(link_codec._PLAIN_VALUE, pattern.pattern)
        self.assertIn(link_codec._ASCII_VALUE, link_codec._USUAL_MESSAGE_HEAD.pattern)

    def test_usualHeadAsBefore(self) -> None:
        """
        L{link_codec._USUAL_MESSAGE_HEAD}, written for the engine's cheaper
        steps (each line with its line end after it, optional lines as
        alternatives, runs taken whole, a look back for a value's last
        character), takes exactly the heads its former form
        (L{FORMER_USUAL_MESSAGE_HEAD}) took, with the same groups (the
        C{Via} lines' with their line ends after them), within any window:
        over heads with every combination of optional lines, each edited at
        every position (a character of the classes' edges, a control
        character, a space, a TAB, a lone CR or LF, non-ASCII, a digit or a
        dot put in, put in place of the one there, or taken out) and cut
        at every position. Every head it takes, L{link_codec._MESSAGE_HEAD}
        takes with the same values, and those values pass
        L{link_codec._messageRequest}'s patterns.
        """
        alphabet = ["a", "~", "!", " ", "  ", "\t", "\r", "\n", "\r\n", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "é", "\u2603", "0", "9", ".", ":"]
        heads = []
        for contentType, mark, vias, maxHops, hops in itertools.product(
            ["text/plain", "a b"], [None, MessageMark.AUTO_REPLY], [(), ("x",), ("corp.example/hs1", "c d")], [8, 5], [0, 12]
        ):
            message = Message(ALICE, CAROL, "hi", contentType=contentType, messageId="m-1", timestamp=1767225600.125, hops=hops, mark=mark)
            frame = link_codec.encodeMessage(message, vias, maxHops, "r.1").replace(b"\r\n", b"\r\nSeq: 7\r\n", 1)
            heads.append(frame[: frame.index(b"\r\n\r\n") + 4].decode())
        heads.append(heads[0].replace("Message-ID: m-1", "Message-ID: m  1"))
        heads.append(heads[0].replace("Timestamp: 1767225600.125", "Timestamp: 1"))
        heads.append(heads[0].replace("\r\nContent-Length: 2", ""))
        texts = set(heads)
        # Each optional line present and absent among the edited ones.
        for head in heads[::7] + heads[-3:]:
            for i in range(len(head) + 1):
                for c in alphabet:
                    texts.add(head[:i] + c + head[i:])
                    texts.add(head[:i] + c + head[i + 1 :])
                texts.add(head[:i] + head[i + 1 :])
        self.assertGreater(len(texts), 50000)
        new, former = link_codec._USUAL_MESSAGE_HEAD, FORMER_USUAL_MESSAGE_HEAD
        taken = 0
        for text in texts:
            text = "IMGW/1.0 200 OK\r\n\r\n" + text + "PING"
            pos = 19
            for end in (len(text), pos + len(text) // 2):
                a, b = new.match(text, pos, end), former.match(text, pos, end)
                self.assertEqual(bool(a), bool(b), text)
                if a is None or b is None:
                    continue
                groups: list[str | None] = list(a.groups())
                viaLines = groups[7]
                groups[7] = "\r\n" + viaLines[:-2] if viaLines else ""
                self.assertEqual((a.span(), groups), (b.span(), list(b.groups())), text)
                taken += 1
                general = link_codec._MESSAGE_HEAD.fullmatch(text, pos, a.end() - 4)
                assert general is not None, text
                self.assertEqual(list(general.groups()), groups, text)
                timestamp, routingId = groups[4], groups[9]
                assert timestamp is not None and routingId is not None
                self.assertIsNotNone(link_codec._TIMESTAMP.fullmatch(timestamp))
                self.assertIsNotNone(link_codec._ROUTING_ID.fullmatch(routingId))
                for number in (groups[8], groups[10]):
                    self.assertTrue(number is None or link_codec._NUMBER.fullmatch(number))
        self.assertGreater(taken, 1000)
        # Cut at every position: a whole head only.
        text = heads[-3]
        for end in range(len(text) + 1):
            a, b = new.match(text, 0, end), former.match(text, 0, end)
            self.assertEqual(a and a.span(), b and b.span(), end)
        self.assertIn(link_codec._ASCII_VALUE, new.pattern)
        self.assertIn(link_codec._TIMESTAMP_WHOLE, link_codec._TIMESTAMP_TEXT)
        self.assertIn(link_codec._TIMESTAMP_FRACTION, link_codec._TIMESTAMP_TEXT)

    def test_usualMessageIdChecked(self) -> None:
        """
        On the usual path a message id the pattern took (printable ASCII,
        not empty) is checked for its length and spaces without
        L{checkMessageId}; one that fails them (a space, 129 characters)
        is refused by it, with the errors the parser's path gives, and 128
        characters are taken. (In the compiled build the calls are not
        counted.)
        """
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        checked: list[str] = []
        def recording(value: str) -> None:
            checked.append(value)
            checkMessageId(value)

        def frame(seq: int, messageId: bytes) -> bytes:
            data = link_codec.encodeMessage(Message(ALICE, CAROL, "hi", messageId="m", timestamp=1767225600.125), ("corp.example/hs1",), 8, f"r.{seq}")
            return data.replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1).replace(b"Message-ID: m\r\n", b"Message-ID: " + messageId + b"\r\n")

        ids = [b"m-1", b"x" * 128, b"a b", b"x" * 129, b"~"]
        stream = b"".join(frame(seq, messageId) for seq, messageId in enumerate(ids, 1))
        expected = [readOutcome(i) for i in FrameParser(LIMITS).feed(stream)]
        self.patch(link_codec, "checkMessageId", recording)
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        outcomes: list[Any] = [readOutcome(i) for i in reader.read(stream)]
        self.assertEqual(outcomes, expected)
        self.assertEqual(reader.taken, 5)
        self.assertEqual([o[2] == "error" for o in outcomes], [False, False, True, True, False])
        if counted:
            self.assertEqual(checked, ["a b", "x" * 129])

    def test_usualMessageAddresses(self) -> None:
        """
        On the usual path the target and C{From} in the C{im:} form are
        parsed without L{link_codec._address}; any other form goes to it.
        Invalid addresses and forms (each side, both sides, an address
        without a scheme, C{pres:}) are refused with the errors, in the
        order, of the parser's path. (In the compiled build the calls are
        not counted.)
        """
        counted = not (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        calls: list[str] = []
        real = link_codec._address

        def recording(text: str, form: TargetForm, what: str) -> Address:
            calls.append(text)
            return real(text, form, what)

        def frame(seq: int, target: bytes, sender: bytes) -> bytes:
            data = link_codec.encodeMessage(Message(ALICE, CAROL, "hi", messageId="m", timestamp=1767225600.125), ("corp.example/hs1",), 8, f"r.{seq}")
            data = data.replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)
            return data.replace(b"MESSAGE im:carol@corp.example ", b"MESSAGE " + target + b" ").replace(b"From: im:alice@corp.example", b"From: " + sender)

        good, bad = b"im:carol@corp.example", b"im:@corp.example"
        pairs = [
            (good, b"im:alice@corp.example"),
            (bad, b"im:alice@corp.example"),
            (good, b"im:alice@-x-"),
            (bad, b"im:alice@-x-"),
            (b"carol@corp.example", b"im:alice@corp.example"),
            (good, b"pres:alice@corp.example"),
            (b"pres:carol@corp.example", b"im:@x"),
            (good, b"alice@corp.example"),
        ]
        stream = b"".join(frame(seq, target, sender) for seq, (target, sender) in enumerate(pairs, 1))
        expected = [readOutcome(i) for i in FrameParser(LIMITS).feed(stream)]
        self.patch(link_codec, "_address", recording)
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        outcomes: list[Any] = [readOutcome(i) for i in reader.read(stream)]
        self.assertEqual(outcomes, expected)
        self.assertEqual(reader.taken, len(pairs))
        self.assertEqual([o[2] == "error" for o in outcomes], [False] + [True] * 7)
        if counted:
            # Only the heads with a side not in the im: form.
            self.assertEqual(
                calls,
                ["carol@corp.example", "im:carol@corp.example", "pres:alice@corp.example", "pres:carol@corp.example", "im:carol@corp.example", "alice@corp.example"],
            )

    def test_usualMessageLimits(self) -> None:
        """
        A C{Timestamp}, C{Max-Hops}, C{Hops} and C{Routing-Id} at the limit
        of what L{decodeRequest} takes, and one past it: the one at the
        limit is read with L{link_codec._USUAL_MESSAGE_HEAD} alone and
        taken, the one past it is left to L{link_codec._MESSAGE_HEAD} and
        refused, each with what the parser and L{decodeRequest} give. Values
        with leading zeros, which L{decodeRequest} takes, are taken on the
        usual path too.
        """
        base = link_codec.encodeMessage(
            Message(ALICE, CAROL, "hi", messageId="m-1", timestamp=1.5, hops=1), ("corp.example/hs1",), 5, "r.1"
        ).replace(b"\r\n", b"\r\nSeq: 1\r\n", 1)
        self.assertIn(b"\r\nTimestamp: 1.5\r\n", base)
        self.assertIn(b"\r\nMax-Hops: 5\r\n", base)
        self.assertIn(b"\r\nHops: 1\r\n", base)

        def edited(header: bytes, old: bytes, new: bytes) -> bytes:
            line = b"\r\n%s: %s\r\n" % (header, old)
            self.assertIn(line, base)
            return base.replace(line, b"\r\n%s: %s\r\n" % (header, new), 1)

        taken = [
            edited(b"Timestamp", b"1.5", b"9" * 12),
            edited(b"Timestamp", b"1.5", b"1." + b"9" * 9),
            edited(b"Timestamp", b"1.5", b"9" * 12 + b"." + b"9" * 9),
            edited(b"Timestamp", b"1.5", b"00"),
            edited(b"Timestamp", b"1.5", b"000000000001.000000000"),
            edited(b"Max-Hops", b"5", b"9" * 10),
            edited(b"Max-Hops", b"5", b"0000000008"),
            edited(b"Hops", b"1", b"9" * 10),
            edited(b"Hops", b"1", b"00"),
            edited(b"Routing-Id", b"r.1", b"r" * 128),
        ]
        refused = [
            edited(b"Timestamp", b"1.5", b"9" * 13),
            edited(b"Timestamp", b"1.5", b"1." + b"9" * 10),
            edited(b"Timestamp", b"1.5", b"9" * 13 + b".5"),
            edited(b"Max-Hops", b"5", b"9" * 11),
            edited(b"Max-Hops", b"5", b"00000000008"),
            edited(b"Hops", b"1", b"9" * 11),
            edited(b"Hops", b"1", b"00000000001"),
            edited(b"Routing-Id", b"r.1", b"r" * 129),
        ]
        seen: list[str] = []

        class Recording:
            def fullmatch(self, text: str) -> re.Match[str] | None:
                seen.append(text)
                return pattern.fullmatch(text)

        pattern = link_codec._MESSAGE_HEAD
        self.patch(link_codec, "_MESSAGE_HEAD", Recording())
        for frames, general, refusing in ((taken, 0, False), (refused, 1, True)):
            for frame in frames:
                del seen[:]
                reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
                [item] = reader.read(frame)
                [expected] = FrameParser(LIMITS).feed(frame)
                outcome: Any = readOutcome(item)
                self.assertEqual(outcome, readOutcome(expected), frame)
                self.assertEqual((len(seen), outcome[2] == "error"), (general, refusing), frame)

    def test_cutEverywhere(self) -> None:
        """
        A stream of link messages and other frames cut at every byte, in two
        reads or byte by byte: the same items as the parser's, read by read,
        and the messages after a cut one taken without the parser again.
        """
        def message(seq: int, text: str) -> bytes:
            encoded = link_codec.encodeMessage(Message(ALICE, CAROL, text), ("corp.example/hs1",), 8, f"r.{seq}")
            return encoded.replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)

        frames = [message(1, "first ☃"), self.other(random.Random(8), 2), message(3, ""), message(4, "last")]
        stream = b"".join(frames)
        for cut in range(1, len(stream)):
            got, expected, fast = self.reads([stream[:cut], stream[cut:]])
            self.assertEqual(got, expected, cut)
            self.assertGreaterEqual(fast, 1)
        got, expected, fast = self.reads([stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(got, expected)
        # Each head cut by a read: after the first frame, the reader
        # completes each frame through the parser and takes the next whole
        # one again; byte by byte, no message is ever whole in a read.
        self.assertEqual(fast, 0)
        pieces = [stream[:5], stream[5 : len(frames[0]) + 5], stream[len(frames[0]) + 5 :]]
        got, expected, fast = self.reads(pieces)
        self.assertEqual(got, expected)
        self.assertGreaterEqual(fast, 1)

    def limitCase(self, frame: bytes, limits: Limits) -> tuple[bool, list[list[Any]]]:
        """
        @return: Whether the reader took C{frame} itself under C{limits},
            and what both read (which must agree).
        """
        got, expected, fast = self.reads([frame + frame.replace(b"Seq: 1\r\n", b"Seq: 2\r\n")], limits)
        self.assertEqual(got, expected)
        return bool(fast), got

    def test_limits(self) -> None:
        """
        Each limit of the parser at the frame's own size (the request taken
        without the parser) and one under it (left to the parser, which
        refuses it), the other limits generous or all at the frame's size:
        the start line, all header lines, the number of headers, the body;
        for a link message and for another request.
        """
        message = link_codec.encodeMessage(Message(ALICE, CAROL, "four"), ("corp.example/hs1",), 8, "r.1").replace(b"\r\n", b"\r\nSeq: 1\r\n", 1)
        # Every header a link message may have (its header lines counted
        # from the groups of the usual shape's pattern), in that shape and
        # not (a value with a TAB).
        full = link_codec.encodeMessage(
            Message(ALICE, CAROL, "four", contentType="text/html", hops=2, mark=MessageMark.AUTO_REPLY),
            ("corp.example/hs1", "corp.example/router"),
            5,
            "r.1",
        ).replace(b"\r\n", b"\r\nSeq: 1\r\n", 1)
        unusual = full.replace(b"text/html", b"text/html;\tq=1")
        session = b"SESSION message IMGW/1.0\r\nSeq: 1\r\nSession: s1\r\nTo: carol@corp.example\r\nContent-Length: 4\r\n\r\nfour"
        self.assertIsNotNone(link_codec._USUAL_MESSAGE_HEAD.fullmatch(full[: full.index(b"\r\n\r\n") + 4].decode()))
        self.assertIsNone(link_codec._USUAL_MESSAGE_HEAD.fullmatch(unusual[: unusual.index(b"\r\n\r\n") + 4].decode()))
        for frame in (message, full, unusual, session):
            head = frame[: frame.index(b"\r\n\r\n")]
            start = len(head.split(b"\r\n")[0])
            sizes = {"maxStartLineBytes": start, "maxHeaderBytes": len(head) - start, "maxHeaders": head.count(b"\r\n"), "maxBodyBytes": 4}
            exact = Limits(**sizes)
            taken, items = self.limitCase(frame, exact)
            self.assertTrue(taken)
            self.assertEqual(len(items[0]), 2)
            for name, size in sizes.items():
                for base in [exact, LIMITS]:
                    taken, items = self.limitCase(frame, attrs.evolve(base, **{name: size}))
                    self.assertTrue(taken, name)
                    taken, items = self.limitCase(frame, attrs.evolve(base, **{name: size - 1}))
                    self.assertFalse(taken, name)
                    self.assertIsInstance(items[0][0], tuple)
                    self.assertEqual(items[0][0][0], "framing error", name)

    def test_shortHeadLimits(self) -> None:
        """
        The reader looks at the limits of the start line and of all header
        lines only for a head longer than the smaller of the two, and counts
        the header lines of a head in the usual shape only from 8 bytes per
        header line allowed (each is that long at least): at every limit
        around the size of heads as dense in header lines as that shape
        allows (C{Via} lines of one character, one-digit values), the
        reader takes or leaves each as the parser and L{decodeRequest} read
        it.
        """
        for vias in (0, 1, 3, 9):
            message = Message(ALICE, CAROL, "b", messageId="m", timestamp=1.0, hops=1)
            frame = link_codec.encodeMessage(message, ("x",) * vias, 1, "r").replace(b"\r\n", b"\r\nSeq: 1\r\n", 1)
            head = frame[: frame.index(b"\r\n\r\n")]
            self.assertIsNotNone(link_codec._USUAL_MESSAGE_HEAD.fullmatch(head.decode() + "\r\n\r\n"))
            lines = head.count(b"\r\n")
            start = head.index(b"\r\n")
            for delta in range(-2, 3):
                for limits in (
                    # The smaller of the two byte limits at the head's size.
                    Limits(maxStartLineBytes=len(head) + delta, maxHeaderBytes=len(head) + delta + 1, maxHeaders=lines),
                    Limits(maxStartLineBytes=start + delta, maxHeaders=lines + delta),
                    Limits(maxHeaderBytes=len(head) - start + delta, maxHeaders=lines - delta),
                    # Header lines counted from len(head) // 8 allowed.
                    Limits(maxHeaders=len(head) // 8 + delta),
                ):
                    taken, _ = self.limitCase(frame, limits)
                    self.assertEqual(
                        taken,
                        lines <= limits.maxHeaders and start <= limits.maxStartLineBytes and len(head) - start <= limits.maxHeaderBytes,
                        (vias, limits),
                    )

    def test_smallCounts(self) -> None:
        """
        C{Hops} and C{Max-Hops} of the usual path, read from a table for
        small counts as written and by C{int} otherwise (leading zeros,
        larger counts), are what L{decodeRequest} reads.
        """
        texts = [str(n).encode() for n in range(70)] + [b"00", b"01", b"063", b"0000000064", b"4294967295"]
        frames = []
        for seq, text in enumerate(texts, 1):
            data = link_codec.encodeMessage(Message(ALICE, CAROL, "hi", hops=1), (), 5, f"r.{seq}").replace(b"\r\n", b"\r\nSeq: %d\r\n" % seq, 1)
            frames.append(data.replace(b"\r\nHops: 1\r\n", b"\r\nHops: %s\r\n" % text))
            frames.append(data.replace(b"\r\nMax-Hops: 5\r\n", b"\r\nMax-Hops: %s\r\n" % text))
        stream = b"".join(frames)
        got, expected, taken = self.reads([stream])
        self.assertEqual(got, expected)
        self.assertEqual(taken, len(frames))
        values = [o[2].event.hops if i % 2 == 0 else o[2].maxHops if len(o) == 3 else o[3] for i, o in enumerate(got[0])]
        self.assertEqual(values[::2], [int(t) for t in texts])
        self.assertEqual(values[1::2], [int(t) or 482 for t in texts])

    def test_decodingErrors(self) -> None:
        """
        A message in the writer's shape that the decoding refuses is taken
        with the error L{decodeRequest} raises for it (answered by the
        receiver as before).
        """
        frame = link_codec.encodeMessage(Message(ALICE, CAROL, "x"), (), 8, "r.1").replace(b"\r\n", b"\r\nSeq: 5\r\n", 1)
        bad = frame.replace(b"Timestamp: ", b"Timestamp: x")
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        [item] = reader.read(bad)
        assert isinstance(item, tuple)
        seq, error = item
        assert isinstance(error, LinkCodecError)
        self.assertEqual((seq, error.code), (5, 400))
        self.assertIn("Timestamp", error.detail)


class LinkRequestTests(SynchronousTestCase):
    """
    L{LinkRequest}, made for every link message read: a value, made
    without a call of anything else.
    """

    def test_value(self) -> None:
        """
        Two requests of the same fields are equal and hash alike; a
        different field makes them differ; its repr names its fields.
        """
        message = Message(ALICE, CAROL, "hi", routingId="r.1")
        a = LinkRequest(message, ("corp.example/hs1",), 8, "r.1")
        self.assertEqual(a, LinkRequest(message, ("corp.example/hs1",), 8, "r.1"))
        self.assertFalse(a != LinkRequest(message, ("corp.example/hs1",), 8, "r.1"))
        self.assertEqual(hash(a), hash(LinkRequest(message, ("corp.example/hs1",), 8, "r.1")))
        for other in (
            LinkRequest(Message(ALICE, CAROL, "ho", routingId="r.1"), ("corp.example/hs1",), 8, "r.1"),
            LinkRequest(message, (), 8, "r.1"),
            LinkRequest(message, ("corp.example/hs1",), 7, "r.1"),
            LinkRequest(message, ("corp.example/hs1",), 8, "r.2"),
        ):
            self.assertNotEqual(a, other)
        self.assertNotEqual(a, (message, ("corp.example/hs1",), 8, "r.1"))
        self.assertEqual(
            repr(LinkRequest(message, (), 8, "r.1")), f"LinkRequest(event={message!r}, via=(), maxHops=8, routingId='r.1')"
        )

    def test_plainClass(self) -> None:
        """
        It is a plain class, not an attrs one: attrs' frozen constructor sets
        each field through C{object.__setattr__}, which cost 2.5 times what
        plain slots cost (C{bench/README.md}, "link8s10"); and a plain
        instance has no C{__dict__}.
        """
        self.assertFalse(attrs.has(LinkRequest))
        request = LinkRequest(Message(ALICE, CAROL, "hi"), (), 8, "r.1")
        self.assertFalse(hasattr(request, "__dict__"))

    def test_final(self) -> None:
        """
        Its fields, which its hash follows, are not changed once made: each
        is declared C{Final} where it is set, so that mypy refuses an
        assignment, and the compiled build makes them read only (there an
        assignment raises L{AttributeError}).
        """
        message = Message(ALICE, CAROL, "hi", routingId="r.1")
        request = LinkRequest(message, (), 8, "r.1")
        if (link_codec.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            for name, value in (("event", None), ("via", ()), ("maxHops", 7), ("routingId", "r.2")):
                self.assertRaises(AttributeError, setattr, request, name, value)
            self.assertEqual(request, LinkRequest(message, (), 8, "r.1"))
        else:
            source = inspect.getsource(LinkRequest.__init__)
            for name in LinkRequest.__slots__:
                self.assertEqual(len(re.findall(rf"\bself\.{name}: Final\[[^\]=]+\]* = ", source)), 1, name)


class PreCheckedMessageTests(SynchronousTestCase):
    """
    A link C{MESSAGE} is made into a L{Message} without its constructor's
    checks (L{imgateway.core.events.preCheckedMessage}), its fields checked
    by the decoding instead: every field a peer sends is still checked,
    on every decoding path (L{decodeRequest} by header look-ups or by one
    C{dict}, and L{link_codec.LinkFrameReader} without the parser), with
    the same status and text as the constructor's checks gave.
    """

    def frame(self, messageId: bytes, hops: bytes = b"0", spelling: bytes = b"Message-ID") -> bytes:
        """
        A link C{MESSAGE} as a connection sends it (C{Seq} first), with
        C{messageId} as its C{Message-ID} and C{hops} as its C{Hops}.
        """
        data = link_codec.encodeMessage(Message(ALICE, CAROL, "hi", messageId="m-1", hops=1), (), 8, "r.1")
        data = data.replace(b"\r\n", b"\r\nSeq: 7\r\n", 1).replace(b"Message-ID: m-1", spelling + b": " + messageId, 1)
        return data.replace(b"Hops: 1", b"Hops: " + hops, 1)

    def outcomes(self, data: bytes) -> tuple[list[object], int]:
        """
        What each decoding path makes of C{data}: L{decodeRequest} of the
        parsed request, L{link_codec._decodeEvent} of it, and the reader's
        item; and how many messages the reader took without the parser.
        """
        (request,) = FrameParser(LIMITS).feed(data)
        assert isinstance(request, Request)
        results: list[object] = []
        for decode in (decodeRequest, link_codec._decodeEvent):
            try:
                results.append(decode(request).event)
            except LinkCodecError as e:
                results.append((e.code, e.detail))
        reader = link_codec.LinkFrameReader(FrameParser(LIMITS), LIMITS)
        (item,) = reader.read(data)
        outcome = readOutcome(item)
        assert isinstance(outcome, tuple)
        results.append(outcome[2].event if len(outcome) == 3 else (outcome[3], outcome[4]))
        return results, reader.taken

    def test_invalidMessageIdsRefused(self) -> None:
        """
        A C{Message-ID} that L{Message} refuses (longer than 128
        characters, a space, a character that is not printable) is refused
        with 400 and the constructor's text on every path, the reader's
        own included.
        """
        for messageId in [b"a" * 129, b"with space", "bell\u2028".encode("utf-8"), ("é" * 129).encode("utf-8")]:
            results, taken = self.outcomes(self.frame(messageId))
            expected = (400, "message id must be 1 to 128 characters" if len(messageId.decode("utf-8")) > 128 else "message id must be printable, without spaces")
            self.assertEqual(results, [expected] * 3, messageId)
            self.assertEqual(taken, 1)
        for spelling in (b"Message-Id", b"message-id"):
            results, _ = self.outcomes(self.frame(b"with space", spelling=spelling))
            self.assertEqual(results, [(400, "message id must be printable, without spaces")] * 3)

    def test_messageIdBoundary(self) -> None:
        """
        A C{Message-ID} of 128 characters is taken on every path, the same
        message as L{Message} makes of it.
        """
        for messageId in ("a" * 128, "é" * 128, "m-1"):
            results, taken = self.outcomes(self.frame(messageId.encode("utf-8")))
            expected = Message(ALICE, CAROL, "hi", messageId=messageId, hops=0, timestamp=results[0].timestamp, routingId="r.1")  # type: ignore[attr-defined]
            self.assertEqual(results, [expected] * 3)
            for message in results:
                self.assertIs(type(message), Message)
                self.assertEqual(message.routingId, "r.1")  # type: ignore[attr-defined]
            self.assertEqual(taken, 1)

    def test_hopsChecked(self) -> None:
        """
        A C{Hops} that is not a count (negative, not digits) is refused on
        every path; the hops read are the message's.
        """
        for hops in (b"-1", b"x", b"1.5", "\u0661".encode("utf-8")):
            results, _ = self.outcomes(self.frame(b"m-1", hops=hops))
            self.assertEqual(results, [(400, f"invalid Hops {hops.decode('utf-8')!r}")] * 3, hops)
        results, _ = self.outcomes(self.frame(b"m-1", hops=b"5"))
        self.assertEqual([message.hops for message in results], [5, 5, 5])  # type: ignore[attr-defined]
