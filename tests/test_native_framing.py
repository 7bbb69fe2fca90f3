# -*- test-case-name: tests.test_native_framing -*-
"""
Tests for L{imgateway.adapters.native.framing}: the native protocol's frame
parser and serialiser.
"""

from __future__ import annotations

import cProfile
import pstats
import random
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

import imgateway.adapters.native.framing as framingModule

from imgateway.adapters.native.framing import (
    MAX_SEQ,
    Frame,
    FrameParser,
    FramingError,
    Headers,
    Limits,
    Request,
    Response,
    serialise,
)

SMALL = Limits(maxStartLineBytes=40, maxHeaderBytes=100, maxHeaders=4, maxBodyBytes=10)


def request(method: str = "MESSAGE", target: str = "im:bob@corp.example", seq: int = 1, body: bytes = b"", *extra: tuple[str, str]) -> Request:
    """
    A request with a C{Seq} header and C{extra} headers.
    """
    return Request(method, target, Headers.of(("Seq", str(seq)), *extra), body)


def response(code: int = 200, reason: str = "OK", seq: int = 1, body: bytes = b"", *extra: tuple[str, str]) -> Response:
    """
    A response with a C{Seq} header and C{extra} headers.
    """
    return Response(code, reason, Headers.of(("Seq", str(seq)), *extra), body)


def parse(data: bytes, limits: Limits = Limits()) -> list[Frame | FramingError]:
    """
    Parse C{data} fed in one chunk.
    """
    return FrameParser(limits).feed(data)


def parseBytewise(data: bytes, limits: Limits = Limits()) -> list[Frame | FramingError]:
    """
    Parse C{data} fed one byte at a time.
    """
    parser = FrameParser(limits)
    out: list[Frame | FramingError] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    return out


class HeadersTests(SynchronousTestCase):
    """
    Tests for L{Headers}.
    """

    def test_of(self) -> None:
        """
        L{Headers.of} keeps the pairs in order.
        """
        h = Headers.of(("Seq", "1"), ("Via", "a"), ("Via", "b"))
        self.assertEqual(h.items, (("Seq", "1"), ("Via", "a"), ("Via", "b")))
        self.assertEqual(list(h), list(h.items))
        self.assertEqual(len(h), 3)

    def test_fromMapping(self) -> None:
        """
        L{Headers.fromMapping} keeps the mapping's order.
        """
        h = Headers.fromMapping({"Seq": "1", "Presence": "away"})
        self.assertEqual(h, Headers.of(("Seq", "1"), ("Presence", "away")))

    def test_getCaseInsensitive(self) -> None:
        """
        L{Headers.get} finds the first header of that name in any case.
        """
        h = Headers.of(("Content-Type", "text/plain"), ("content-type", "text/html"))
        self.assertEqual(h.get("CONTENT-TYPE"), "text/plain")
        self.assertEqual(h.get("content-type"), "text/plain")

    def test_getDefault(self) -> None:
        """
        L{Headers.get} returns the default for a missing header.
        """
        h = Headers.of(("Seq", "1"))
        self.assertIsNone(h.get("Note"))
        self.assertEqual(h.get("Note", "x"), "x")

    def test_getAll(self) -> None:
        """
        L{Headers.getAll} returns every value of that name in order.
        """
        h = Headers.of(("Via", "a"), ("Seq", "1"), ("VIA", "b"))
        self.assertEqual(h.getAll("via"), ["a", "b"])
        self.assertEqual(h.getAll("Note"), [])

    def test_contains(self) -> None:
        """
        C{in} tests names case-insensitively.
        """
        h = Headers.of(("Seq", "1"))
        self.assertIn("seq", h)
        self.assertIn("SEQ", h)
        self.assertNotIn("Note", h)
        self.assertNotIn(1, h)

    def test_withReplaces(self) -> None:
        """
        L{Headers.with_} replaces the first header of that name in place and
        drops later ones.
        """
        h = Headers.of(("Seq", "1"), ("Note", "a"), ("Via", "x"), ("note", "b"))
        self.assertEqual(
            h.with_("NOTE", "c"),
            Headers.of(("Seq", "1"), ("NOTE", "c"), ("Via", "x")),
        )

    def test_withAdds(self) -> None:
        """
        L{Headers.with_} appends a header that is missing, leaving the
        original unchanged.
        """
        h = Headers.of(("Seq", "1"))
        self.assertEqual(h.with_("Note", "a"), Headers.of(("Seq", "1"), ("Note", "a")))
        self.assertEqual(h, Headers.of(("Seq", "1")))

    def test_without(self) -> None:
        """
        L{Headers.without} drops every header of that name.
        """
        h = Headers.of(("Via", "a"), ("Seq", "1"), ("via", "b"))
        self.assertEqual(h.without("VIA"), Headers.of(("Seq", "1")))

    def test_indexBuiltOnce(self) -> None:
        """
        The index by name is built on the first look-up and kept (a cached
        property, in the compiled build too): a later look-up uses the same
        one.
        """
        h = Headers.of(("Via", "a"), ("Seq", "1"))
        self.assertEqual(h.get("via"), "a")
        index = h._byName
        self.assertEqual(h.getAll("SEQ"), ["1"])
        self.assertIs(h._byName, index)
        self.assertEqual(h, Headers.of(("Via", "a"), ("Seq", "1")))


class FrameTests(SynchronousTestCase):
    """
    Tests for L{Request}, L{Response} and L{FramingError}.
    """

    def test_seq(self) -> None:
        """
        C{seq} reads the C{Seq} header.
        """
        self.assertEqual(request(seq=42).seq, 42)
        self.assertEqual(response(seq=MAX_SEQ).seq, MAX_SEQ)

    def test_seqMissing(self) -> None:
        """
        C{seq} raises L{ValueError} when C{Seq} is missing or invalid.
        """
        self.assertRaises(ValueError, lambda: Request("PING", "*", Headers()).seq)
        self.assertRaises(ValueError, lambda: Response(200, "OK", Headers.of(("Seq", "x"))).seq)
        self.assertRaises(ValueError, lambda: Response(200, "OK", Headers.of(("Seq", str(MAX_SEQ + 1)))).seq)

    def test_seqKept(self) -> None:
        """
        C{seq} is read once and kept (a cached property, in the compiled
        build too), and can be given beforehand, as the parser does.
        """
        frame = request(seq=42)
        self.assertEqual(frame.seq, 42)
        object.__setattr__(frame, "headers", Headers())
        self.assertEqual(frame.seq, 42)
        given = Response(200, "OK", Headers())
        object.__setattr__(given, "seq", 7)
        self.assertEqual(given.seq, 7)
        self.assertEqual(given, Response(200, "OK", Headers()))

    def test_framingError(self) -> None:
        """
        L{FramingError} carries its code, the standard reason phrase, a
        detail, the sequence number and whether it is fatal.
        """
        e = FramingError(413, "too big", seq=3, fatal=False)
        self.assertEqual((e.code, e.reason, e.detail, e.seq, e.fatal, e.inResponse), (413, "Too Large", "too big", 3, False, False))
        self.assertEqual(str(e), "413 Too Large: too big")
        self.assertIn("413", repr(e))
        e = FramingError(400, "bad")
        self.assertEqual((e.reason, e.seq, e.fatal), ("Bad Request", None, True))

    def test_limitsValidated(self) -> None:
        """
        L{Limits} refuses sizes that are not positive (a body limit may be 0).
        """
        self.assertRaises(ValueError, Limits, maxHeaders=0)
        self.assertRaises(ValueError, Limits, maxStartLineBytes=0)
        self.assertRaises(ValueError, Limits, maxHeaderBytes=-1)
        self.assertRaises(ValueError, Limits, maxBodyBytes=-1)
        self.assertEqual(Limits(maxBodyBytes=0).maxBodyBytes, 0)

    def test_defaultLimits(self) -> None:
        """
        The default limits are those of the specification.
        """
        self.assertEqual(Limits(), Limits(2048, 8192, 64, 65536))


class SerialiseTests(SynchronousTestCase):
    """
    Tests for L{serialise}.
    """

    def test_request(self) -> None:
        """
        A request is its start line, headers and a blank line, with CRLF
        line ends.
        """
        self.assertEqual(
            serialise(request("PING", "*", 7)),
            b"PING * IMGW/1.0\r\nSeq: 7\r\n\r\n",
        )

    def test_requestWithBody(self) -> None:
        """
        A body is announced by a C{Content-Length} after the other headers.
        """
        self.assertEqual(
            serialise(request("MESSAGE", "im:bob@corp.example", 2, b"hello", ("Content-Type", "text/plain"))),
            b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: 2\r\nContent-Type: text/plain\r\n" b"Content-Length: 5\r\n\r\nhello",
        )

    def test_response(self) -> None:
        """
        A response is C{IMGW/1.0 code reason}.
        """
        self.assertEqual(
            serialise(response(486, "Busy Here", 3, b"", ("Alternate", "tel:+15550100"))),
            b"IMGW/1.0 486 Busy Here\r\nSeq: 3\r\nAlternate: tel:+15550100\r\n\r\n",
        )

    def test_responseEmptyReason(self) -> None:
        """
        An empty reason phrase leaves the space after the code.
        """
        self.assertEqual(serialise(response(200, "", 1)), b"IMGW/1.0 200 \r\nSeq: 1\r\n\r\n")

    def test_noHeaders(self) -> None:
        """
        A frame may have no headers at all.
        """
        self.assertEqual(serialise(Request("PING", "*", Headers())), b"PING * IMGW/1.0\r\n\r\n")

    def test_contentLengthOverridden(self) -> None:
        """
        A C{Content-Length} given in the headers is ignored: the real one is
        written when there is a body, none when there is not.
        """
        self.assertEqual(
            serialise(request("MESSAGE", "im:b@c", 1, b"abc", ("Content-Length", "99"))),
            b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 1\r\nContent-Length: 3\r\n\r\nabc",
        )
        self.assertEqual(
            serialise(request("PING", "*", 1, b"", ("content-length", "5"))),
            b"PING * IMGW/1.0\r\nSeq: 1\r\n\r\n",
        )

    def test_unicode(self) -> None:
        """
        Targets, reasons and header values are encoded as UTF-8.
        """
        self.assertEqual(
            serialise(request("PUBLISH", "pres:zoë@corp.example", 1, b"", ("Note", "à midi ☕"))),
            "PUBLISH pres:zoë@corp.example IMGW/1.0\r\nSeq: 1\r\nNote: à midi ☕\r\n\r\n".encode(),
        )
        self.assertEqual(serialise(response(200, "Très bien", 1)), "IMGW/1.0 200 Très bien\r\nSeq: 1\r\n\r\n".encode())

    def test_tabInValue(self) -> None:
        """
        A header value may hold a TAB.
        """
        self.assertEqual(
            serialise(request("PUBLISH", "*", 1, b"", ("Note", "a\tb"))),
            b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nNote: a\tb\r\n\r\n",
        )

    def test_badMethod(self) -> None:
        """
        A method that is not 1 to 16 uppercase ASCII letters is refused.
        """
        for method in ["", "message", "MESS AGE", "PING\r\nX", "A" * 17, "MÉSSAGE", "PING\x00"]:
            self.assertRaises(ValueError, serialise, request(method, "*"))
        self.assertEqual(serialise(request("A" * 16, "*")), b"A" * 16 + b" * IMGW/1.0\r\nSeq: 1\r\n\r\n")

    def test_badTarget(self) -> None:
        """
        A target that is empty or holds whitespace or a control character
        is refused.
        """
        for target in ["", "im:a b", "im:a\r\nSeq: 2", "im:a\nb", "im:a\x00", "im:a\tb", "im:a\x7f", "im:a\x85", "im:a\u00a0b"]:
            self.assertRaises(ValueError, serialise, request("MESSAGE", target))

    def test_badReason(self) -> None:
        """
        A reason phrase holding CR, LF, NUL or another control character is
        refused.
        """
        for reason in ["OK\r\nSeq: 9", "OK\n", "OK\r", "O\x00K", "O\x1bK", "O\x7fK"]:
            self.assertRaises(ValueError, serialise, response(200, reason))

    def test_badCode(self) -> None:
        """
        A status code outside 100..699 is refused.
        """
        for code in [0, 99, 700, 1000, -200]:
            self.assertRaises(ValueError, serialise, response(code))
        self.assertRaises(ValueError, serialise, Response(True, "OK", Headers()))
        self.assertEqual(serialise(response(100, "x"))[:13], b"IMGW/1.0 100 ")
        self.assertEqual(serialise(response(699, "x"))[:13], b"IMGW/1.0 699 ")

    def test_badHeaderName(self) -> None:
        """
        A header name other than ASCII letters, digits and C{-} is refused.
        """
        for name in ["", "Na me", "Name:", "Na\r\nme", "Seq\n", "Na\nme", "Nämé", "X_Y", "X\x00"]:
            self.assertRaises(ValueError, serialise, request("PING", "*", 1, b"", (name, "v")))
            self.assertRaises(ValueError, serialise, request("PING", "*", 1, b"", ("Note", "v"), (name, "v")))

    def test_badHeaderValue(self) -> None:
        """
        A header value holding CR, LF, NUL or another control character
        (but TAB) is refused, so nothing can be injected.
        """
        for value in ["a\r\nSeq: 2", "a\nb", "a\rb", "a\x00", "a\x0b", "a\x1f", "a\x7f", "a\x85"]:
            self.assertRaises(ValueError, serialise, request("PING", "*", 1, b"", ("Note", value)))

    def test_unencodable(self) -> None:
        """
        Text that cannot be encoded as UTF-8 (a lone surrogate) is refused.
        """
        self.assertRaises(ValueError, serialise, request("PING", "*", 1, b"", ("Note", "\ud800")))
        self.assertRaises(ValueError, serialise, request("MESSAGE", "im:\ud800"))


class RoundTripTests(SynchronousTestCase):
    """
    Serialising frames and parsing the bytes gives back the same frames.
    """

    frames: list[Frame] = [
        request("PING", "*", 0),
        request("MESSAGE", "im:bob@corp.example", 1, b"hello\r\n\r\nworld\x00\xff", ("Content-Type", "text/plain; charset=utf-8")),
        request("PUBLISH", "*", MAX_SEQ, b"", ("Presence", "away"), ("Note", "déjeuner à 13 h 🍽")),
        request("SUBSCRIBE", "pres:zoë@corp.example", 5, b"", ("Name", "Zoë")),
        request("A" * 16, "x" * 100, 6),
        response(200, "OK", 1, b"{}", ("Content-Type", "application/json")),
        response(110, "Challenge", 2, b"r=abc,s=c2FsdA==,i=4096"),
        response(486, "Busy Here", 3, b"", ("Alternate", "tel:+15550100")),
        response(200, "", 4),
        response(699, "Very  odd\treason", 5),
        request("NOTIFY", "pres:bob@corp.example", 9, b"", ("Event", "presence"), ("Via", "a"), ("Via", "b")),
    ]

    def test_eachFrame(self) -> None:
        """
        Each frame parses back to itself, in one chunk or byte by byte.
        """
        for frame in self.frames:
            data = serialise(frame)
            self.assertEqual(parse(data), [frame])
            self.assertEqual(parseBytewise(data), [frame])

    def test_pipelined(self) -> None:
        """
        Many frames in one chunk are all parsed, in order.
        """
        data = b"".join(serialise(f) for f in self.frames) * 20
        self.assertEqual(parse(data), self.frames * 20)

    def test_chunkSizes(self) -> None:
        """
        However the stream is cut into chunks, the same frames come out.
        """
        data = b"".join(serialise(f) for f in self.frames)
        for size in [1, 2, 3, 5, 7, 13, 64, 1000]:
            parser = FrameParser()
            out: list[Frame | FramingError] = []
            for i in range(0, len(data), size):
                out.extend(parser.feed(data[i : i + size]))
            self.assertEqual(out, self.frames, f"chunk size {size}")
            self.assertEqual(parser.bufferedBytes, 0)

    def test_emptyFeed(self) -> None:
        """
        Feeding no bytes yields nothing.
        """
        parser = FrameParser()
        self.assertEqual(parser.feed(b""), [])
        self.assertFalse(parser.closed)


class WholeHeadTests(SynchronousTestCase):
    """
    A head received whole is parsed in one go, and line by line otherwise;
    both give the same frames and the same errors.
    """

    base = [
        serialise(request("MESSAGE", "im:carol@corp.example", 12, b"hello", ("From", "im:alice@corp.example"), ("Via", "corp.example/hs1"))),
        serialise(request("PING", "*", 1)),
        serialise(response(486, "Busy Here", 3, b"ab", ("Alternate", "im:x@y"))),
        b"IMGW/1.1 200\r\nSeq: 4\r\n\r\n",
        b"\r\n",
    ]
    pieces = [
        b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b"\x00", b"\xc2\x85", b"\xff", b"a", b"Seq: 4\r\n",
        b"Seq: 99999999999\r\n", b"Content-Length: 3\r\n", b"content-length: 99\r\n", b"IMGW/1.0 ", b"SIP/2.0", b"699",
    ]

    def mutants(self, count: int) -> list[bytes]:
        """
        C{count} streams of one to three L{base} frames with up to four
        random insertions, deletions or replacements (a fixed seed).
        """
        rng = random.Random(8)
        out = []
        for _ in range(count):
            data = bytearray(b"".join(rng.choice(self.base) for _ in range(rng.randint(1, 3))))
            for _ in range(rng.randint(0, 4)):
                at = rng.randrange(len(data) + 1)
                how = rng.random()
                if how < 0.4:
                    data[at:at] = rng.choice(self.pieces)
                elif how < 0.8:
                    del data[at : at + rng.randint(1, 4)]
                else:
                    data[at : at + 1] = rng.choice(self.pieces)
            out.append(bytes(data))
        return out

    def test_sameAsLineByLine(self) -> None:
        """
        Each stream fed in one chunk (heads whole) gives what it gives fed
        byte by byte (line by line), with the default limits and with small
        ones. (The detail of a 431 may differ: fed byte by byte, a limit is
        found to be broken before the line that breaks it is complete.)
        """

        def described(items: list[Frame | FramingError]) -> list[object]:
            return [(i.code, i.seq, i.fatal, i.inResponse) if isinstance(i, FramingError) else i for i in items]

        for data in self.mutants(1500):
            for limits in (Limits(), SMALL):
                whole, bytewise = parse(data, limits), parseBytewise(data, limits)
                self.assertEqual(described(whole), described(bytewise), data)
                for frame in whole + bytewise:
                    if not isinstance(frame, FramingError):
                        # The sequence number the parser read, kept.
                        self.assertEqual(frame.seq, int(frame.headers.get("Seq") or ""))

    def test_bodyLater(self) -> None:
        """
        A head received whole whose body comes in later reads gives its
        frame once the body is complete.
        """
        frame = request("MESSAGE", "im:carol@corp.example", 5, b"0123456789", ("From", "im:alice@corp.example"))
        data = serialise(frame)
        parser = FrameParser()
        self.assertEqual(parser.feed(data[:-6]), [])
        self.assertEqual(parser.feed(data[-6:-3]), [])
        self.assertEqual(parser.feed(data[-3:]), [frame])


class PacedTests(SynchronousTestCase):
    """
    L{FrameParser.receive} and L{FrameParser.next}: parsing at the
    reader's pace.
    """

    def test_oneAtATime(self) -> None:
        """
        Received bytes are parsed only as L{FrameParser.next} asks, one
        frame each time, in order; what is not asked for yet stays bytes.
        """
        frames = RoundTripTests.frames
        data = [serialise(f) for f in frames]
        parser = FrameParser()
        parser.receive(b"".join(data))
        self.assertEqual(parser.bufferedBytes, sum(map(len, data)))
        for i, frame in enumerate(frames):
            self.assertEqual(parser.next(), frame)
            self.assertEqual(parser.bufferedBytes, sum(map(len, data[i + 1 :])))
        self.assertIsNone(parser.next())

    def test_receiveWhileHolding(self) -> None:
        """
        Bytes received between two L{FrameParser.next} calls join the end
        of the stream, and a frame cut across them comes out whole.
        """
        a, b = serialise(request("PING", "*", 1)), serialise(request("PING", "*", 2))
        parser = FrameParser()
        parser.receive(a + b[:5])
        self.assertEqual(parser.next(), request("PING", "*", 1))
        self.assertIsNone(parser.next())
        parser.receive(b[5:])
        self.assertEqual(parser.next(), request("PING", "*", 2))
        self.assertIsNone(parser.next())

    def test_nonFatalErrorInTurn(self) -> None:
        """
        A non-fatal error comes out in its place, like a frame.
        """
        parser = FrameParser(SMALL)
        parser.receive(b"PING * IMGW/1.0\r\n\r\n" + serialise(request("PING", "*", 2)))
        error = parser.next()
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.fatal), (400, False))
        self.assertEqual(parser.next(), request("PING", "*", 2))

    def test_fatalOnce(self) -> None:
        """
        A fatal error is returned once, after the frames before it; the
        parser is then closed: it returns nothing more and drops what it
        receives.
        """
        parser = FrameParser()
        parser.receive(serialise(request("PING", "*", 1)) + b"BOGUS\r\n" + serialise(request("PING", "*", 2)))
        self.assertEqual(parser.next(), request("PING", "*", 1))
        error = parser.next()
        assert isinstance(error, FramingError)
        self.assertTrue(error.fatal)
        self.assertTrue(parser.closed)
        self.assertIsNone(parser.next())
        parser.receive(serialise(request("PING", "*", 3)))
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertIsNone(parser.next())

    def test_largeReadCompacted(self) -> None:
        """
        Parsing a large read frame by frame does not keep what was parsed
        beyond a bounded amount.
        """
        frame = serialise(request("PING", "*", 1))
        parser = FrameParser()
        parser.receive(frame * 20000)
        for _ in range(20000):
            self.assertIsNotNone(parser.next())
            self.assertLessEqual(len(parser._buf) - parser.bufferedBytes, 65536 + len(frame))
        self.assertIsNone(parser.next())
        self.assertEqual(len(parser._buf), 0)


class ParseTests(SynchronousTestCase):
    """
    Tests for L{FrameParser} on well-formed input.
    """

    def test_bareLF(self) -> None:
        """
        Lines may end with a bare LF.
        """
        self.assertEqual(
            parse(b"MESSAGE im:b@c IMGW/1.0\nSeq: 1\nContent-Length: 2\n\nhi"),
            [request("MESSAGE", "im:b@c", 1, b"hi")],
        )

    def test_keepAlive(self) -> None:
        """
        Blank lines between frames are ignored, however they arrive.
        """
        ping = serialise(request("PING", "*", 1))
        data = b"\r\n\n\r\n" + ping + b"\r\n\r\n\n" + ping + b"\r\n"
        self.assertEqual(parse(data), [request("PING", "*", 1)] * 2)
        self.assertEqual(parseBytewise(data), [request("PING", "*", 1)] * 2)
        parser = FrameParser()
        self.assertEqual(parser.feed(b"\r\n" * 10000), [])
        self.assertEqual(parser.feed(b"\r"), [])
        self.assertEqual(parser.feed(b"\n"), [])
        self.assertFalse(parser.closed)
        self.assertEqual(parser.bufferedBytes, 0)

    def test_headerWhitespace(self) -> None:
        """
        Whitespace around a header value is dropped; the name keeps its
        case and is found in any case.
        """
        [frame] = parse(b"PUBLISH * IMGW/1.0\r\nseq:1\r\nPRESENCE: \t away \t\r\nNote:\r\nX-Empty:   \r\n\r\n")
        assert isinstance(frame, Request)
        self.assertEqual(frame.headers.items, (("seq", "1"), ("PRESENCE", "away"), ("Note", ""), ("X-Empty", "")))
        self.assertEqual(frame.headers.get("presence"), "away")
        self.assertEqual(frame.seq, 1)

    def test_valueWithColons(self) -> None:
        """
        Only the first colon separates the name from the value.
        """
        [frame] = parse(b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nAlternate: sip:bob@corp.example:5060\r\n\r\n")
        assert isinstance(frame, Request)
        self.assertEqual(frame.headers.get("Alternate"), "sip:bob@corp.example:5060")

    def test_unicodeValue(self) -> None:
        """
        Header values and targets are UTF-8.
        """
        data = "PUBLISH pres:zoë@corp.example IMGW/1.0\r\nSeq: 1\r\nNote: 日本語 ☕\r\n\r\n".encode()
        [frame] = parse(data)
        assert isinstance(frame, Request)
        self.assertEqual(frame.target, "pres:zoë@corp.example")
        self.assertEqual(frame.headers.get("note"), "日本語 ☕")

    def test_contentLengthDropped(self) -> None:
        """
        C{Content-Length} is not kept in the parsed headers; a zero or
        repeated equal one is accepted.
        """
        data = b"MESSAGE im:b@c IMGW/1.0\r\nContent-Length: 3\r\nSeq: 1\r\ncontent-length: 003\r\n\r\nabc"
        self.assertEqual(parse(data), [request("MESSAGE", "im:b@c", 1, b"abc")])
        self.assertEqual(parse(b"PING * IMGW/1.0\r\nSeq: 1\r\nContent-Length: 0\r\n\r\n"), [request("PING", "*", 1)])

    def test_seqBounds(self) -> None:
        """
        Seq may be 0 up to 2**31-1 (leading zeros allowed); repeating it with
        the same value is accepted.
        """
        for seq in [b"0", b"2147483647", b"0000000001"]:
            [frame] = parse(b"PING * IMGW/1.0\r\nSeq: " + seq + b"\r\n\r\n")
            assert isinstance(frame, Request)
            self.assertEqual(frame.seq, int(seq))
        [frame] = parse(b"PING * IMGW/1.0\r\nSeq: 4\r\nSeq: 04\r\n\r\n")
        self.assertIsInstance(frame, Request)

    def test_minorVersions(self) -> None:
        """
        Any IMGW/1.x version is accepted.
        """
        self.assertEqual(parse(b"PING * IMGW/1.1\r\nSeq: 1\r\n\r\n"), [request("PING", "*", 1)])
        self.assertEqual(parse(b"IMGW/1.25 200 OK\r\nSeq: 1\r\n\r\n"), [response(200, "OK", 1)])

    def test_responseReasons(self) -> None:
        """
        A reason phrase may be empty, missing, hold spaces or UTF-8.
        """
        self.assertEqual(parse(b"IMGW/1.0 200\r\nSeq: 1\r\n\r\n"), [response(200, "", 1)])
        self.assertEqual(parse(b"IMGW/1.0 200 \r\nSeq: 1\r\n\r\n"), [response(200, "", 1)])
        self.assertEqual(parse(b"IMGW/1.0 404 Not  Found \r\nSeq: 1\r\n\r\n"), [response(404, "Not  Found ", 1)])
        self.assertEqual(parse("IMGW/1.0 200 Très bien\r\nSeq: 1\r\n\r\n".encode()), [response(200, "Très bien", 1)])

    def test_codeBounds(self) -> None:
        """
        Status codes 100 and 699 are accepted.
        """
        self.assertEqual(parse(b"IMGW/1.0 100 x\r\nSeq: 1\r\n\r\n"), [response(100, "x", 1)])
        self.assertEqual(parse(b"IMGW/1.0 699 x\r\nSeq: 1\r\n\r\n"), [response(699, "x", 1)])

    def test_binaryBody(self) -> None:
        """
        The body is taken by length, whatever bytes it holds.
        """
        body = bytes(range(256))
        data = b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 1\r\nContent-Length: 256\r\n\r\n" + body
        self.assertEqual(parse(data), [request("MESSAGE", "im:b@c", 1, body)])


class ParserTestCase(SynchronousTestCase):
    """
    Assertions about the errors L{FrameParser} gives.
    """

    def assertFatal(self, data: bytes, code: int, limits: Limits = Limits()) -> FramingError:
        """
        Parsing C{data}, in one chunk and byte by byte, gives only a fatal
        error with C{code}, and closes the parser.
        """
        errors: list[FramingError] = []
        for how in ["chunk", "bytes"]:
            parser = FrameParser(limits)
            if how == "chunk":
                out = parser.feed(data)
            else:
                out = []
                for i in range(len(data)):
                    out.extend(parser.feed(data[i : i + 1]))
            self.assertEqual(len(out), 1, (how, data, out))
            [error] = out
            assert isinstance(error, FramingError), (how, data, error)
            self.assertEqual((error.code, error.fatal, error.seq), (code, True, None), (how, data, error))
            self.assertTrue(parser.closed)
            self.assertEqual(parser.feed(serialise(request("PING", "*"))), [])
            errors.append(error)
        self.assertEqual(errors[0].inResponse, errors[1].inResponse)
        return errors[0]

    def assertNonFatal(self, data: bytes, code: int, seq: int | None, limits: Limits = Limits()) -> FramingError:
        """
        Parsing C{data} followed by a valid PING gives a non-fatal error with
        C{code} and C{seq}, then the PING.
        """
        ping = request("PING", "*", 77)
        errors: list[FramingError] = []
        for out in [parse(data + serialise(ping), limits), parseBytewise(data + serialise(ping), limits)]:
            self.assertEqual(len(out), 2, out)
            error = out[0]
            assert isinstance(error, FramingError), out
            self.assertEqual((error.code, error.fatal, error.seq), (code, False, seq))
            self.assertEqual(out[1], ping)
            errors.append(error)
        self.assertEqual(errors[0].inResponse, errors[1].inResponse)
        return errors[0]


class MalformedTests(ParserTestCase):
    """
    Tests for L{FrameParser} on input that breaks the rules: each gives a
    L{FramingError} with the right code and fatality.
    """

    def test_unsupportedVersion(self) -> None:
        """
        A version other than IMGW/1.x is a fatal 505.
        """
        for line in [b"PING * IMGW/2.0", b"GET / HTTP/1.1", b"IMGW/2.0 200 OK", b"SIP/2.0 200 OK", b"PING * IMGW/0.9", b"PING * imgw/1.0"]:
            self.assertFatal(line + b"\r\nSeq: 1\r\n\r\n", 505)

    def test_unparseableStartLine(self) -> None:
        """
        A start line that is neither a request nor a response line is a
        fatal 400.
        """
        for line in [
            b"PING",
            b"PING *",
            b"PING * IMGW/1.0 extra",
            b"PING  * IMGW/1.0",
            b"PING * IMGW/1.0 ",
            b" PING * IMGW/1.0",
            b"ping * IMGW/1.0",
            b"A" * 17 + b" * IMGW/1.0",
            b"P1NG * IMGW/1.0",
            b"PING * IMGW",
            b"   ",
            b"\x00",
            b"IMGW/1.0",
            b"IMGW/1.0 ",
            b"IMGW/1.0 20 OK",
            b"IMGW/1.0 2000 OK",
            b"IMGW/1.0 099 OK",
            b"IMGW/1.0 700 OK",
            b"IMGW/1.0 abc OK",
            b"IMGW/1.0  200 OK",
        ]:
            self.assertFatal(line + b"\r\nSeq: 1\r\n\r\n", 400)

    def test_badTarget(self) -> None:
        """
        A target holding a control character, or that is not UTF-8, is a
        fatal 400.
        """
        for target in [b"im:a\x01b", b"im:a\x7f", b"im:\xff", b"im:\xc3", b"im:a\tb", "im:a\u00a0b".encode(), b"im:a\xc2\x85"]:
            self.assertFatal(b"MESSAGE " + target + b" IMGW/1.0\r\nSeq: 1\r\n\r\n", 400)

    def test_badReason(self) -> None:
        """
        A reason phrase holding a control character, or that is not UTF-8,
        is a fatal 400.
        """
        for reason in [b"O\x00K", b"O\x1bK", b"\xff"]:
            error = self.assertFatal(b"IMGW/1.0 200 " + reason + b"\r\nSeq: 1\r\n\r\n", 400)
            self.assertTrue(error.inResponse)

    def test_bareCR(self) -> None:
        """
        A CR not followed by LF, in any line, is a fatal 400.
        """
        self.assertFatal(b"PING *\r IMGW/1.0\r\nSeq: 1\r\n\r\n", 400)
        self.assertFatal(b"PING * IMGW/1.0\r\r\nSeq: 1\r\n\r\n", 400)
        self.assertFatal(b"PING * IMGW/1.0\r\nSeq: 1\rNote: x\r\n\r\n", 400)
        self.assertFatal(b"PING * IMGW/1.0\r\nSeq: 1\r\n\r\r\n", 400)
        self.assertFatal(b"\r\r\nPING * IMGW/1.0\r\nSeq: 1\r\n\r\n", 400)

    def test_continuationLine(self) -> None:
        """
        A header line starting with a space or TAB (folding) is a fatal 400.
        """
        self.assertFatal(b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nNote: a\r\n b\r\n\r\n", 400)
        self.assertFatal(b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nNote: a\r\n\tb\r\n\r\n", 400)
        self.assertFatal(b"PUBLISH * IMGW/1.0\r\n Seq: 1\r\n\r\n", 400)

    def test_noColon(self) -> None:
        """
        A header line without a colon is a fatal 400.
        """
        self.assertFatal(b"PING * IMGW/1.0\r\nSeq 1\r\n\r\n", 400)

    def test_badHeaderName(self) -> None:
        """
        A header name other than ASCII letters, digits and C{-} is a fatal
        400.
        """
        for line in [b"Seq : 1", b": 1", b"Se_q: 1", b"S\xc3\xa9q: 1", b"X\x00: 1", b"X Y: 1"]:
            self.assertFatal(b"PING * IMGW/1.0\r\n" + line + b"\r\n\r\n", 400)

    def test_badHeaderValue(self) -> None:
        """
        A header value that is not UTF-8 or holds a control character other
        than TAB is a fatal 400.
        """
        for value in [b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x00b", b"a\x1bb", b"a\x7fb", b"a\xc2\x85b"]:
            self.assertFatal(b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nNote: " + value + b"\r\n\r\n", 400)
        [frame] = parse(b"PUBLISH * IMGW/1.0\r\nSeq: 1\r\nNote: a\tb\r\n\r\n")
        assert isinstance(frame, Request)
        self.assertEqual(frame.headers.get("Note"), "a\tb")

    def test_badContentLength(self) -> None:
        """
        A C{Content-Length} that is not 1 to 18 ASCII digits, or repeated
        with different values, is a fatal 400.
        """
        for value in [b"abc", b"-1", b"+1", b"1.0", b"", b"1 2", b"0x10", "\u0661".encode(), b"1" * 19]:
            self.assertFatal(b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 1\r\nContent-Length: " + value + b"\r\n\r\n", 400)
        self.assertFatal(b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400)

    def test_missingSeq(self) -> None:
        """
        A frame without C{Seq} gives a non-fatal 400 without a sequence
        number; its body is dropped and the next frame is parsed.
        """
        self.assertNonFatal(b"PING * IMGW/1.0\r\n\r\n", 400, None)
        self.assertNonFatal(b"MESSAGE im:b@c IMGW/1.0\r\nContent-Length: 4\r\n\r\nPING", 400, None)
        error = self.assertNonFatal(b"IMGW/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 400, None)
        self.assertTrue(error.inResponse)

    def test_invalidSeq(self) -> None:
        """
        A C{Seq} that is not a decimal integer in 0..2**31-1, or repeated
        with different values, gives a non-fatal 400.
        """
        for value in [b"", b"x", b"-1", b"+1", b"1.5", b"2147483648", b"99999999999", b"00000000001", "\u0661".encode(), b"1 2"]:
            error = self.assertNonFatal(b"PING * IMGW/1.0\r\nSeq: " + value + b"\r\n\r\n", 400, None)
            self.assertFalse(error.inResponse)
        self.assertNonFatal(b"PING * IMGW/1.0\r\nSeq: 1\r\nSeq: 2\r\n\r\n", 400, None)

    def test_fatalAfterFrames(self) -> None:
        """
        Frames before a fatal error in the same chunk are returned first;
        nothing after it is parsed, ever.
        """
        ping = serialise(request("PING", "*", 1))
        parser = FrameParser()
        out = parser.feed(ping + ping + b"PING * IMGW/9.0\r\n\r\n" + ping)
        self.assertEqual(out[:2], [request("PING", "*", 1)] * 2)
        self.assertEqual(len(out), 3)
        error = out[2]
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.fatal), (505, True))
        self.assertTrue(parser.closed)
        self.assertEqual(parser.bufferedBytes, 0)
        for _ in range(3):
            self.assertEqual(parser.feed(ping), [])

    def test_nonFatalKeepsOpen(self) -> None:
        """
        Non-fatal errors leave the parser open.
        """
        parser = FrameParser()
        parser.feed(b"PING * IMGW/1.0\r\n\r\n")
        self.assertFalse(parser.closed)


class LimitTests(ParserTestCase):
    """
    Each limit accepts exactly its value and refuses one more, and is
    enforced before more than the limit is buffered.
    """

    def test_startLine(self) -> None:
        """
        A start line of C{maxStartLineBytes} bytes (without its line end)
        is accepted; one more byte is a fatal 431.
        """
        for limits in [SMALL, Limits()]:
            n = limits.maxStartLineBytes
            target = "x" * (n - len("PING  IMGW/1.0"))
            frame = request("PING", target, 1)
            self.assertEqual(len(serialise(frame).split(b"\r\n")[0]), n)
            self.assertEqual(parse(serialise(frame), limits), [frame])
            self.assertEqual(parseBytewise(serialise(frame), limits), [frame])
            self.assertEqual(parse(serialise(frame).replace(b"\r\n", b"\n"), limits), [frame])
            tooLong = serialise(request("PING", target + "x", 1))
            error = self.assertFatal(tooLong, 431, limits)
            self.assertEqual(error.reason, "Header Too Large")

    def test_startLineEarly(self) -> None:
        """
        A start line is refused as soon as more than C{maxStartLineBytes}
        bytes arrive without a line end; a trailing CR is allowed for.
        """
        n = SMALL.maxStartLineBytes
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"P" * n), [])
        self.assertEqual(parser.feed(b"\r"), [])
        self.assertFalse(parser.closed)
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"P" * n), [])
        [error] = parser.feed(b"P")
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.fatal), (431, True))
        parser = FrameParser(SMALL)
        [error] = parser.feed(b"P" * n + b"\r\r")
        assert isinstance(error, FramingError)
        self.assertEqual(error.code, 431)

    def test_startLineAfterKeepAlive(self) -> None:
        """
        Blank lines before a start line do not count towards its limit.
        """
        n = SMALL.maxStartLineBytes
        frame = request("PING", "x" * (n - len("PING  IMGW/1.0")), 1)
        self.assertEqual(parse(b"\r\n" * n + serialise(frame), SMALL), [frame])

    def headerBlock(self, size: int, lineEnd: bytes = b"\r\n") -> bytes:
        """
        A header block of exactly C{size} bytes, each line counted with
        its line end: C{Seq: 1} then one C{X: ...} header.
        """
        seq = b"Seq: 1" + lineEnd
        padding = size - len(seq) - len(b"X: ") - len(lineEnd)
        assert padding >= 0
        return seq + b"X: " + b"y" * padding + lineEnd

    def test_headerBytes(self) -> None:
        """
        Header lines totalling C{maxHeaderBytes} (each with its line end)
        are accepted; one more byte is a fatal 431.
        """
        for limits in [SMALL, Limits()]:
            n = limits.maxHeaderBytes
            for lineEnd in [b"\r\n", b"\n"]:
                data = b"PING * IMGW/1.0" + lineEnd + self.headerBlock(n, lineEnd) + lineEnd
                [frame] = parse(data, limits)
                assert isinstance(frame, Request)
                self.assertEqual(frame.seq, 1)
                [frame] = parseBytewise(data, limits)
                self.assertIsInstance(frame, Request)
                data = b"PING * IMGW/1.0" + lineEnd + self.headerBlock(n + 1, lineEnd) + lineEnd
                self.assertFatal(data, 431, limits)

    def test_headerBytesEarly(self) -> None:
        """
        Header lines are refused as soon as the bytes buffered prove the
        block too long, without waiting for a line end.
        """
        n = SMALL.maxHeaderBytes
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"PING * IMGW/1.0\r\nSeq: 1\r\n"), [])
        # A line of k bytes so far needs at least k + 1 with its line end.
        self.assertEqual(parser.feed(b"X" * (n - 8 - 1)), [])
        self.assertEqual(parser.bufferedBytes, n - 9)
        self.assertFalse(parser.closed)
        [error] = parser.feed(b"X")
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.fatal), (431, True))

    def test_headerBytesFinalCR(self) -> None:
        """
        A lone CR after a full header block may start the final blank line.
        """
        n = SMALL.maxHeaderBytes
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"PING * IMGW/1.0\r\n" + self.headerBlock(n) + b"\r"), [])
        self.assertFalse(parser.closed)
        [frame] = parser.feed(b"\n")
        self.assertIsInstance(frame, Request)

    def test_headerCount(self) -> None:
        """
        C{maxHeaders} header lines are accepted; one more is a fatal 431.
        """
        for limits in [SMALL, Limits()]:
            n = limits.maxHeaders
            headers = b"Seq: 1\r\n" + b"X: y\r\n" * (n - 1)
            [frame] = parse(b"PING * IMGW/1.0\r\n" + headers + b"\r\n", limits)
            assert isinstance(frame, Request)
            self.assertEqual(len(frame.headers), n)
            self.assertFatal(b"PING * IMGW/1.0\r\n" + headers + b"X: y\r\n\r\n", 431, limits)

    def test_headerCountEarly(self) -> None:
        """
        One header too many is refused at its first byte.
        """
        n = SMALL.maxHeaders
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"PING * IMGW/1.0\r\nSeq: 1\r\n" + b"X: y\r\n" * (n - 1) + b"\r"), [])
        self.assertFalse(parser.closed)
        parser = FrameParser(SMALL)
        [error] = parser.feed(b"PING * IMGW/1.0\r\nSeq: 1\r\n" + b"X: y\r\n" * (n - 1) + b"X")
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.fatal), (431, True))

    def test_limitsPerFrame(self) -> None:
        """
        Header limits apply to each frame afresh.
        """
        n = SMALL.maxHeaders
        data = b"PING * IMGW/1.0\r\nSeq: 1\r\n" + b"X: y\r\n" * (n - 1) + b"\r\n"
        self.assertEqual(len(parse(data * 5, SMALL)), 5)

    def test_body(self) -> None:
        """
        A body of C{maxBodyBytes} is accepted.
        """
        for limits in [SMALL, Limits()]:
            frame = request("MESSAGE", "im:b@c", 1, b"z" * limits.maxBodyBytes)
            self.assertEqual(parse(serialise(frame), limits), [frame])

    def test_bodyTooLarge(self) -> None:
        """
        A C{Content-Length} over C{maxBodyBytes} gives a non-fatal 413 with
        the frame's Seq; exactly that many bytes are discarded and the next
        frame is parsed.
        """
        for limits in [SMALL, Limits()]:
            n = limits.maxBodyBytes + 1
            data = b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 5\r\nContent-Length: %d\r\n\r\n" % (n,) + b"x" * n
            error = self.assertNonFatal(data, 413, 5, limits)
            self.assertEqual(error.reason, "Too Large")
            self.assertFalse(error.inResponse)

    def test_bodyTooLargeNoSeq(self) -> None:
        """
        A 413 for a frame without a valid Seq has no sequence number.
        """
        data = b"IMGW/1.0 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11
        error = self.assertNonFatal(data, 413, None, SMALL)
        self.assertTrue(error.inResponse)

    def test_bodyDiscardedUnbuffered(self) -> None:
        """
        The bytes of a body over the limit are dropped as they arrive, not
        buffered; the frames after them are parsed.
        """
        parser = FrameParser(SMALL)
        [error] = parser.feed(b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 5\r\nContent-Length: 1000000\r\n\r\n")
        assert isinstance(error, FramingError)
        self.assertEqual((error.code, error.seq, error.fatal), (413, 5, False))
        for _ in range(99):
            self.assertEqual(parser.feed(b"\x00" * 10000), [])
            self.assertEqual(parser.bufferedBytes, 0)
        ping = serialise(request("PING", "*", 6))
        self.assertEqual(parser.feed(b"\x00" * 9999 + b"\r" + ping), [request("PING", "*", 6)])

    def test_bodyBufferedUpToLimit(self) -> None:
        """
        A body within the limit is buffered until complete.
        """
        parser = FrameParser(SMALL)
        self.assertEqual(parser.feed(b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 5\r\nContent-Length: 10\r\n\r\n12345"), [])
        self.assertEqual(parser.bufferedBytes, 5)
        self.assertEqual(parser.feed(b"67890"), [request("MESSAGE", "im:b@c", 5, b"1234567890")])
        self.assertEqual(parser.bufferedBytes, 0)

    def test_lineBufferBounded(self) -> None:
        """
        A sender that never ends a line cannot make the parser hold more than
        a limit plus a couple of bytes.
        """
        parser = FrameParser(SMALL)
        parser.feed(b"PING * IMGW/1.0\r\nSeq: 1\r\nNote: ")
        held = 0
        while not parser.closed:
            parser.feed(b"a")
            held = max(held, parser.bufferedBytes)
        self.assertLessEqual(held, SMALL.maxHeaderBytes + 2)

    def test_startLineBufferBounded(self) -> None:
        """
        Nor can a start line that never ends.
        """
        parser = FrameParser(SMALL)
        held = 0
        while not parser.closed:
            parser.feed(b"a")
            held = max(held, parser.bufferedBytes)
        self.assertLessEqual(held, SMALL.maxStartLineBytes + 2)


#: Limits between L{SMALL} and the defaults, so that the boundaries are
#: tried at other sizes too.
MEDIUM = Limits(maxStartLineBytes=70, maxHeaderBytes=300, maxHeaders=9, maxBodyBytes=257)


def startLine(size: int) -> bytes:
    """
    A request start line of exactly C{size} bytes (without its line end)
    whose target is made of two-byte characters (and one C{x} if needed):
    the limit counts bytes, not characters.
    """
    room = size - len(b"FROB  IMGW/1.0")
    target = "x" * (room % 2) + "\u00e9" * (room // 2)
    line = f"FROB {target} IMGW/1.0".encode("utf-8")
    assert len(line) == size
    return line


class SplitBoundaryTests(SynchronousTestCase):
    """
    Every limit accepts exactly its value and refuses one byte (or header)
    more, however the stream is cut: each frame is fed in two chunks cut at
    every byte position, behind another frame, with CRLF and with LF line
    ends.
    """

    ping = request("PING", "*", 1)

    def cuts(self, data: bytes, limits: Limits, positions: range | list[int] | None = None) -> list[tuple[int, list[Frame | FramingError]]]:
        """
        Parse L{ping} then C{data} then L{ping} again, fed in two chunks
        cut at each position (every position unless given).
        """
        stream = serialise(self.ping) + data + serialise(self.ping)
        out = []
        for i in positions if positions is not None else range(len(stream) + 1):
            parser = FrameParser(limits)
            out.append((i, parser.feed(stream[:i]) + parser.feed(stream[i:])))
        return out

    def assertAccepted(self, data: bytes, limits: Limits, positions: range | list[int] | None = None) -> Frame:
        """
        C{data} is one frame, accepted wherever the stream is cut.

        @return: The frame.
        """
        frames: set[Frame] = set()
        for i, out in self.cuts(data, limits, positions):
            self.assertEqual(len(out), 3, (i, out))
            self.assertEqual((out[0], out[2]), (self.ping, self.ping), i)
            item = out[1]
            assert isinstance(item, (Request, Response)), (i, out)
            frames.add(item)
        [frame] = frames
        return frame

    def assertRefused(self, data: bytes, limits: Limits, code: int, fatal: bool, positions: range | list[int] | None = None) -> None:
        """
        C{data} is refused with C{code} wherever the stream is cut: a fatal
        error ends the parse; after a non-fatal one the next frame is
        parsed.
        """
        for i, out in self.cuts(data, limits, positions):
            self.assertEqual(out[0], self.ping, i)
            error = out[1]
            assert isinstance(error, FramingError), (i, out)
            self.assertEqual((error.code, error.fatal), (code, fatal), i)
            self.assertEqual(out[2:], [] if fatal else [self.ping], i)

    def test_startLine(self) -> None:
        """
        A start line of C{maxStartLineBytes} bytes is accepted, one of a
        byte more is a fatal 431.
        """
        for limits in (SMALL, MEDIUM, Limits()):
            n = limits.maxStartLineBytes
            for eol in (b"\r\n", b"\n"):
                frame = self.assertAccepted(startLine(n) + eol + b"Seq: 5" + eol + eol, limits)
                assert isinstance(frame, Request)
                self.assertEqual(len(f"{frame.method} {frame.target} IMGW/1.0".encode()), n)
                self.assertRefused(startLine(n + 1) + eol + b"Seq: 5" + eol + eol, limits, 431, True)

    def headerBlock(self, size: int, eol: bytes) -> bytes:
        """
        Header lines of exactly C{size} bytes with their line ends:
        C{Seq: 5} then C{X-Pad} made of two-byte characters (and one C{y}
        if needed).
        """
        seq = b"Seq: 5" + eol
        room = size - len(seq) - len(b"X-Pad: ") - len(eol)
        pad = ("y" * (room % 2) + "\u00e9" * (room // 2)).encode("utf-8")
        block = seq + b"X-Pad: " + pad + eol
        assert len(block) == size
        return block

    def test_headerBytes(self) -> None:
        """
        Header lines of C{maxHeaderBytes} bytes together (line ends
        included) are accepted; a byte more is a fatal 431.
        """
        for limits in (SMALL, MEDIUM, Limits()):
            n = limits.maxHeaderBytes
            for eol in (b"\r\n", b"\n"):
                self.assertAccepted(b"PING * IMGW/1.0" + eol + self.headerBlock(n, eol) + eol, limits)
                self.assertRefused(b"PING * IMGW/1.0" + eol + self.headerBlock(n + 1, eol) + eol, limits, 431, True)

    def test_headerCount(self) -> None:
        """
        C{maxHeaders} header lines are accepted; one more is a fatal 431.
        """
        for limits in (SMALL, MEDIUM, Limits()):
            n = limits.maxHeaders
            for eol in (b"\r\n", b"\n"):
                head = b"PING * IMGW/1.0" + eol + b"Seq: 5" + eol + (b"X: y" + eol) * (n - 1)
                frame = self.assertAccepted(head + eol, limits)
                self.assertEqual(len(frame.headers), n)
                self.assertRefused(head + b"X: y" + eol + eol, limits, 431, True)

    def test_body(self) -> None:
        """
        A body of C{maxBodyBytes} is accepted; one of a byte more is a
        non-fatal 413, its bytes skipped, and the next frame parsed. With
        the default limits the stream is cut at every position of the
        start line, the headers and the first and last 300 bytes of the
        body, and every 61 bytes in between.
        """
        for limits in (SMALL, MEDIUM, Limits()):
            for size, accepted in ((limits.maxBodyBytes, True), (limits.maxBodyBytes + 1, False)):
                body = b"\r\n" * (size // 2) + b"z" * (size % 2)
                data = b"MESSAGE im:b@c IMGW/1.0\r\nSeq: 5\r\nContent-Length: %d\r\n\r\n" % (size,) + body
                positions: list[int] | None = None
                if limits.maxBodyBytes > 1000:
                    total = len(serialise(self.ping)) * 2 + len(data)
                    start = len(serialise(self.ping)) + len(data) - size
                    positions = sorted(
                        set(range(start + 300)) | set(range(start + 300, total - 300, 61)) | set(range(total - 300, total + 1))
                    )
                if accepted:
                    frame = self.assertAccepted(data, limits, positions)
                    self.assertEqual(frame.body, body)
                else:
                    self.assertRefused(data, limits, 413, False, positions)


class AtFrameStartTests(SynchronousTestCase):
    """
    L{FrameParser.atFrameStart}: whether the next bytes start a frame.
    """

    def test_states(self) -> None:
        """
        True when nothing is held or awaited; false within a start line,
        the headers or a body (also one being discarded), and once closed.
        """
        parser = FrameParser(Limits(maxBodyBytes=4))
        self.assertTrue(parser.atFrameStart)
        for part in [b"PING * IM", b"GW/1.0\r\nSeq: 1\r\n", b"Content-Length: 3\r\n\r\n", b"ab"]:
            parser.feed(part)
            self.assertFalse(parser.atFrameStart, part)
        parser.feed(b"c")
        self.assertTrue(parser.atFrameStart)
        # A body over the limit is discarded as it comes: nothing held.
        parser.feed(b"PING * IMGW/1.0\r\nSeq: 2\r\nContent-Length: 10\r\n\r\nabc")
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertFalse(parser.atFrameStart)
        parser.feed(b"defghij")
        self.assertTrue(parser.atFrameStart)
        parser.feed(b"NOT A FRAME\r\n\r\n")
        self.assertTrue(parser.closed)
        self.assertFalse(parser.atFrameStart)


def bare(seq: int) -> bytes:
    """
    A bare C{200 OK} answering C{seq}, as L{serialise} writes it.
    """
    return serialise(response(seq=seq))


def _frameKey(item: Frame | FramingError) -> object:
    """
    What a frame or error is, compared by value.
    """
    if isinstance(item, FramingError):
        return ("error", item.code, item.seq, item.fatal, item.inResponse)
    if isinstance(item, Response):
        return ("response", item.code, item.reason, item.headers.items, item.body, item.seq)
    return ("request", item.method, item.target, item.headers.items, item.body, item.seq)


def _withBareOKs(parser: FrameParser, chunks: list[bytes]) -> list[object]:
    """
    Parse C{chunks} as the native face does: L{FrameParser.nextBareOK}
    first, L{FrameParser.next} when it declines; a bare C{200} taken shows
    as the response the parser would have made of it.
    """
    out: list[object] = []
    for chunk in chunks:
        parser.receive(chunk)
        while True:
            seq = parser.nextBareOK()
            if seq is not None:
                out.append(("response", 200, "OK", (("Seq", str(seq)),), b"", seq))
                continue
            item = parser.next()
            if item is None:
                break
            out.append(_frameKey(item))
    return out


class BareOKTests(SynchronousTestCase):
    """
    L{FrameParser.nextBareOK} and L{FrameParser.takeBareOKs}: the bare C{200 OK}s a peer
    answers most requests with, read without building a frame, exactly as
    the parser reads them (or not at all).
    """

    def test_taken(self) -> None:
        """
        A bare C{200} received whole is taken: its sequence number, and the
        parser goes on with the next frame.
        """
        parser = FrameParser()
        parser.receive(bare(7) + bare(999999999) + serialise(request(seq=3)))
        self.assertEqual(parser.nextBareOK(), 7)
        self.assertEqual(parser.nextBareOK(), 999999999)
        self.assertIsNone(parser.nextBareOK())
        self.assertEqual(_frameKey(parser.next()), _frameKey(request(seq=3)))  # type: ignore[arg-type]
        self.assertEqual(parser.bufferedBytes, 0)

    def test_declined(self) -> None:
        """
        Anything but a whole bare C{200} is left, untouched, to L{next}:
        another code or reason, another header, a body, bare LFs, blank
        lines first, C{Seq} 0, with a leading zero or of 10 digits, a cut
        frame, a request.
        """
        for data in [
            serialise(response(code=202, reason="Accepted")),
            serialise(response(reason="Fine")),
            serialise(response(reason="")),
            serialise(response(seq=5, body=b"x")),
            serialise(response(200, "OK", 5, b"", ("Detail", "x"))),
            b"IMGW/1.0 200 OK\nSeq: 5\n\n",
            b"IMGW/1.1 200 OK\r\nSeq: 5\r\n\r\n",
            b"\r\n" + bare(5),
            b"IMGW/1.0 200 OK\r\nSeq: 0\r\n\r\n",
            b"IMGW/1.0 200 OK\r\nSeq: 05\r\n\r\n",
            b"IMGW/1.0 200 OK\r\nSeq: 1000000000\r\n\r\n",
            b"IMGW/1.0 200 OK\r\nseq: 5\r\n\r\n",
            bare(5)[:-1],
            serialise(request(seq=5)),
        ]:
            parser = FrameParser()
            parser.receive(data)
            self.assertIsNone(parser.nextBareOK(), data)
            self.assertEqual(parser.bufferedBytes, len(data), data)
            self.assertEqual([_frameKey(i) for i in parser.feed(b"")], [_frameKey(i) for i in parse(data)], data)

    def test_sameAsNext(self) -> None:
        """
        Streams of bare C{200}s mixed with other frames (responses that are
        nearly bare, requests, blank lines), cut anywhere: taking bare
        C{200}s first gives exactly the frames and errors L{next} gives.
        """
        rng = random.Random(11)
        frames = [
            lambda s: bare(s),
            lambda s: serialise(response(code=404, reason="Not Found", seq=s)),
            lambda s: serialise(response(seq=s, body=b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\n")),
            lambda s: serialise(request(seq=s, body=b"hi")),
            lambda s: b"\r\n",
            lambda s: b"IMGW/1.0 200 OK\r\nSeq: %d\r\nSeq: %d\r\n\r\n" % (s, s),
            lambda s: b"IMGW/1.0 200 OK\nSeq: %d\n\n" % s,
        ]
        for _ in range(300):
            stream = b"".join(rng.choice(frames)(rng.randint(1, 10**9)) for _ in range(rng.randint(1, 12)))
            cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randint(0, 4), len(stream) - 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            for limits in (Limits(), SMALL):
                self.assertEqual(
                    _withBareOKs(FrameParser(limits), chunks),
                    [_frameKey(i) for i in parse(stream, limits)],
                    (limits, chunks),
                )

    def test_limits(self) -> None:
        """
        Limits too small for the longest bare C{200} (a header line of 16
        bytes, a start line of 15) turn the shortcut off: the parser answers
        as always (C{431}); limits just large enough keep it.
        """
        data = bare(123456789)
        for limits, taken in [
            (Limits(maxHeaderBytes=15), False),
            (Limits(maxStartLineBytes=14), False),
            (Limits(maxHeaderBytes=16, maxStartLineBytes=15), True),
        ]:
            parser = FrameParser(limits)
            parser.receive(data)
            self.assertEqual(parser.nextBareOK(), 123456789 if taken else None, limits)
            if not taken:
                [error] = parser.feed(b"")
                assert isinstance(error, FramingError)
                self.assertEqual(error.code, 431)

    def test_closed(self) -> None:
        """
        A closed parser takes nothing.
        """
        parser = FrameParser()
        parser.feed(b"NOT A FRAME\r\n\r\n")
        parser.receive(bare(1))
        self.assertIsNone(parser.nextBareOK())

    def test_largeReadCompacted(self) -> None:
        """
        Bare C{200}s taken from a large read do not keep the bytes before
        them: the parser holds only what is left.
        """
        parser = FrameParser()
        parser.receive(b"".join(bare(n) for n in range(1, 5001)) + b"PING")
        seqs = []
        while (seq := parser.nextBareOK()) is not None:
            seqs.append(seq)
        self.assertEqual(seqs, list(range(1, 5001)))
        self.assertEqual(parser.bufferedBytes, 4)
        self.assertLess(len(parser._buf), 65536 + 64)

    def test_takeBareOKs(self) -> None:
        """
        L{FrameParser.takeBareOKs} takes a read made only of bare C{200}s,
        at a frame start, with limits that take them; nothing else.
        """
        parser = FrameParser()
        self.assertEqual(parser.takeBareOKs(bare(1) + bare(22) + bare(333)), [1, 22, 333])
        self.assertEqual(parser.bufferedBytes, 0)
        for data in [b"", bare(1) + b"\r\n", bare(1)[:-2], bare(1) + serialise(response(reason="Fine")), b"\r\n" + bare(1)]:
            self.assertIsNone(parser.takeBareOKs(data), data)
        parser.receive(b"PING")
        self.assertIsNone(parser.takeBareOKs(bare(1)))
        self.assertIsNone(FrameParser(Limits(maxHeaderBytes=15)).takeBareOKs(bare(1)))

    def test_bareOKRun(self) -> None:
        """
        L{FrameParser.bareOKRun} recognises a read made only of the bare
        C{200}s numbered from C{first} in order, at most C{most} of them
        (what L{FrameParser.takeBareOKs} takes as those numbers), at a frame
        start, with limits that take every bare C{200}; it takes and stores
        nothing.
        """
        parser = FrameParser()
        run = bare(7) + bare(8) + bare(9)
        self.assertEqual(parser.bareOKRun(bare(7), 7, 1), 1)
        self.assertEqual(parser.bareOKRun(run, 7, 3), 3)
        self.assertEqual(parser.bareOKRun(run, 7, 5), 3)
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertEqual(parser.takeBareOKs(run), [7, 8, 9])
        self.assertEqual(parser.bareOKRun(bare(999999998) + bare(999999999), 999999998, 2), 2)
        for data, first, most in [
            (run, 7, 2),  # more than most
            (run, 8, 3),
            (run, 6, 3),
            (bare(7) + bare(9) + bare(8), 7, 3),
            (bare(7) + bare(7), 7, 2),
            (bare(7), 7, 0),
            (b"", 7, 3),
            (bare(7) + b"\r\n", 7, 3),
            (b"\r\n" + bare(7), 7, 3),
            (bare(7)[:-2], 7, 3),
            (bare(7) + serialise(response(reason="Fine")), 7, 3),
            (serialise(Response(200, "OK", Headers.of(("Seq", "07")))), 7, 1),
            (b"IMGW/1.0 200 OK\r\nSeq: 7\n\r\n", 7, 1),
            (b"IMGW/1.1 200 OK\r\nSeq: 7\r\n\r\n", 7, 1),
            # From 10**9 on, none: the usual parser, and its limits, decide.
            (bare(999999999) + bare(1000000000), 999999999, 2),
            (bare(1000000000), 1000000000, 1),
        ]:
            self.assertEqual(parser.bareOKRun(data, first, most), 0, (data, first, most))
        parser.receive(b"PING")
        self.assertEqual(parser.bareOKRun(bare(1), 1, 1), 0)
        self.assertEqual(FrameParser(Limits(maxHeaderBytes=15)).bareOKRun(bare(1), 1, 1), 0)
        closed = FrameParser()
        closed.feed(b"NOT A FRAME\r\n\r\n")
        self.assertEqual(closed.bareOKRun(bare(1), 1, 1), 0)

    def test_bareOKRunAsTakeBareOKs(self) -> None:
        """
        Over random reads of bare and other C{200}s, whatever
        L{FrameParser.bareOKRun} recognises, L{FrameParser.takeBareOKs}
        takes as the same numbers in order.
        """
        rng = random.Random(3)
        parser = FrameParser()
        for _ in range(3000):
            first = rng.choice([1, 9, 10, 99, 999999990, rng.randint(1, 10**9)])
            count = rng.randint(1, 4)
            seqs = [first + i for i in range(count)]
            if rng.random() < 0.3:
                seqs[rng.randrange(count)] = rng.choice([first, first + 5, 0, 10**9])
            data = b"".join(bare(s) if s else b"\r\n" for s in seqs)
            found = parser.bareOKRun(data, first, rng.randint(1, 5))
            if found:
                self.assertEqual(parser.takeBareOKs(data), list(range(first, first + found)), data)
                self.assertEqual(found, count)


def usualMessage(seq: int, body: bytes, target: bytes = b"im:bob@corp.example", contentType: bytes | None = None, messageID: bytes | None = None) -> bytes:
    """
    A C{MESSAGE} in the usual shape: as the load driver writes it (C{Seq}
    and C{Content-Length}), or as the shipped client does (a
    C{Content-Type}, maybe a C{Message-ID}).
    """
    head = b"MESSAGE %s IMGW/1.0\r\nSeq: %d\r\n" % (target, seq)
    if contentType is not None:
        head += b"Content-Type: %s\r\n" % (contentType,)
    if messageID is not None:
        head += b"Message-ID: %s\r\n" % (messageID,)
    return head + b"Content-Length: %d\r\n\r\n" % (len(body),) + body


def generalParser(limits: Limits) -> FrameParser:
    """
    A parser that reads every frame by the general path (never
    L{FrameParser._usualMessage}).
    """
    parser = FrameParser(limits)
    parser._usualMessages = False
    return parser


def _exactKey(item: Frame | FramingError) -> object:
    """
    L{_frameKey}, with an error's detail and reason too.
    """
    if isinstance(item, FramingError):
        return ("error", item.code, item.reason, item.detail, item.seq, item.fatal, item.inResponse)
    return _frameKey(item)


def _run(parser: FrameParser, chunks: list[bytes]) -> list[object]:
    """
    Parse C{chunks} as the native face does (L{FrameParser.receive}, then
    L{FrameParser.next} until it returns nothing), noting after each chunk
    what the parser holds and whether it is closed.
    """
    out: list[object] = []
    for chunk in chunks:
        parser.receive(chunk)
        while (item := parser.next()) is not None:
            out.append(_exactKey(item))
        out.append(("state", parser.bufferedBytes, parser.closed, parser.atFrameStart))
    return out


class UsualMessageTests(SynchronousTestCase):
    """
    L{FrameParser._usualMessage}: a C{MESSAGE} in the usual shape, received
    whole, read in one step, giving exactly what the general path gives
    for any bytes, cut anywhere, under any limits.
    """

    targets = [b"im:bob@corp.example", b"im:x@y", b"im:" + b"a" * 60 + b"@corp.example", b"pres:bob@corp.example", b"*", b"im:" + b"a" * 4093, b"im:" + b"a" * 4094]
    contentTypes = [None, b"text/plain; charset=utf-8", b"text/plain", b"application/json; charset=utf-8", b"x"]
    messageIDs = [None, b"m-1", b"01HXYZ-abc.def@corp.example", b"a b"]
    # Values the general path strips, refuses or decodes.
    oddValues = [b"", b" ", b"x ", b" x", b"x\t", b"\tx", b"x  y", b"caf\xc3\xa9", b"\xff", b"x\x7fy", b"x\x00", b"y" * 1024, b"y" * 1025]
    pieces = [
        b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"  ", b"\t", b":", b"\x00", b"\x7f", b"\xc2\x85", b"\xc3\xa9", b"\xff",
        b"a", b"0", b"9", b"MESSAGE ", b"IMGW/1.1", b"IMGW/2.0", b"Seq: 4\r\n", b"seq: 5\r\n", b"Seq: 0\r\n",
        b"Seq: 99999999999\r\n", b"Content-Length: 3\r\n", b"content-length: 99\r\n", b"Content-Length: 0\r\n",
        b"Content-Type: text/plain\r\n", b"Message-ID: z\r\n", b"From: im:a@b\r\n", b" folded\r\n",
    ]

    def frames(self, rng: random.Random) -> bytes:
        """
        One usual C{MESSAGE} (or, now and then, another frame or a blank
        line).
        """
        pick = rng.random()
        if pick < 0.05:
            return b"\r\n"
        if pick < 0.1:
            return bare(rng.randint(1, 99))
        if pick < 0.15:
            return serialise(request("PING", "*", rng.randint(1, 99)))
        seq = rng.choice([1, 7, 42, rng.randint(1, 999999999), 999999999, 1000000000, MAX_SEQ])
        size = rng.choice([1, 2, 5, 10, 11, 30, rng.randint(1, 200)])
        body = bytes(rng.randrange(256) for _ in range(size))
        contentType, messageID = rng.choice(self.contentTypes), rng.choice(self.messageIDs)
        if pick < 0.3:
            contentType = rng.choice(self.oddValues)
        elif pick < 0.4:
            messageID = rng.choice(self.oddValues)
        return usualMessage(seq, body, rng.choice(self.targets), contentType, messageID)

    def mutant(self, rng: random.Random) -> bytes:
        """
        One to three frames with up to four random insertions, deletions or
        replacements.
        """
        data = bytearray(b"".join(self.frames(rng) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4])):
            at = rng.randrange(len(data) + 1)
            how = rng.random()
            if how < 0.4:
                data[at:at] = rng.choice(self.pieces)
            elif how < 0.8:
                del data[at : at + rng.randint(1, 4)]
            else:
                data[at : at + 1] = rng.choice(self.pieces)
        return bytes(data)

    def limits(self, rng: random.Random, data: bytes) -> Limits:
        """
        The default limits, small ones, or limits around the sizes of the
        first frame in C{data} (each one byte either side of what it needs).
        """
        pick = rng.random()
        if pick < 0.3:
            return Limits()
        if pick < 0.4:
            return SMALL
        head, _, _ = data.partition(b"\r\n\r\n")
        start, _, headers = head.partition(b"\r\n")
        lines = headers.count(b"\r\n") + 1
        return Limits(
            maxStartLineBytes=max(1, len(start) + rng.randint(-1, 1)),
            maxHeaderBytes=max(1, len(headers) + 2 + rng.randint(-1, 1)),
            maxHeaders=max(1, lines + rng.randint(-1, 1)),
            maxBodyBytes=max(0, rng.choice([0, 1, 5, 10, 11, 30, 200]) + rng.randint(-1, 1)),
        )

    def assertSame(self, chunks: list[bytes], limits: Limits) -> None:
        self.assertEqual(_run(FrameParser(limits), chunks), _run(generalParser(limits), chunks), (chunks, limits))

    def test_sameWhole(self) -> None:
        """
        Thousands of streams of usual C{MESSAGE}s, mutated or not, each fed
        in one chunk, and coalesced in fours, give the same frames, the
        same errors (details and all) and the same parser states as the
        general path, under the default, small and just-fitting limits.
        """
        rng = random.Random(9)
        streams = [self.mutant(rng) for _ in range(4000)]
        for data in streams:
            self.assertSame([data], self.limits(rng, data))
        for i in range(0, len(streams), 4):
            data = b"".join(streams[i : i + 4])
            self.assertSame([data], self.limits(rng, data))

    def test_sameSplit(self) -> None:
        """
        Streams split in two at every byte, and fed byte by byte, give what
        the general path gives fed the same chunks (streams of 600 bytes at
        most: the long targets and values are fed whole above).
        """
        rng = random.Random(91)
        for _ in range(150):
            data = self.mutant(rng)
            while len(data) > 600:
                data = self.mutant(rng)
            limits = self.limits(rng, data)
            for at in range(len(data) + 1):
                self.assertSame([data[:at], data[at:]], limits)
            self.assertSame([data[i : i + 1] for i in range(len(data))], limits)

    def test_usualFrames(self) -> None:
        """
        Each usual shape gives the request the client sent: its headers
        but C{Content-Length}, in order, its body, its sequence number.
        """
        for contentType in self.contentTypes:
            for messageID in self.messageIDs:
                headers = [("Seq", "77")]
                if contentType is not None:
                    headers.append(("Content-Type", contentType.decode()))
                if messageID is not None:
                    headers.append(("Message-ID", messageID.decode()))
                expected = Request("MESSAGE", "im:bob@corp.example", Headers(tuple(headers)), b"hi\r\n\r\n")
                data = usualMessage(77, b"hi\r\n\r\n", contentType=contentType, messageID=messageID)
                self.assertEqual(serialise(expected), data)
                (frame,) = FrameParser().feed(data)
                self.assertEqual(frame, expected)
                self.assertEqual(frame.seq, 77)

    def test_largeStream(self) -> None:
        """
        Past 64 KiB of usual C{MESSAGE}s in one read, the parsed bytes are
        dropped as the general path drops them, and every frame is whole.
        """
        frames = [usualMessage(i, b"%05d" % i * 100) for i in range(1, 301)]
        data = b"".join(frames)
        self.assertGreater(len(data), 2 * 65536)
        parser = FrameParser()
        parser.receive(data)
        seen = []
        while (item := parser.next()) is not None:
            assert isinstance(item, Request)
            seen.append((item.seq, item.body))
            self.assertLess(parser.bufferedBytes, len(data))
        self.assertEqual(seen, [(i, b"%05d" % i * 100) for i in range(1, 301)])
        self.assertEqual(_run(FrameParser(), [data, data[:100]]), _run(generalParser(Limits()), [data, data[:100]]))


def _callsOf(parse: Callable[[], object]) -> dict[str, int]:
    """
    The calls of L{FrameParser}'s methods made by C{parse}, by name.
    """
    profile = cProfile.Profile()
    profile.runcall(parse)
    stats = pstats.Stats(profile)
    calls: dict[str, int] = {}
    for (filename, _, name), (_, count, _, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith("framing.py"):
            calls[name] = calls.get(name, 0) + count
    return calls


class UsualMessageCallTests(SynchronousTestCase):
    """
    The calls a usual C{MESSAGE} costs, counted: none of the general
    path's.
    """

    def setUp(self) -> None:
        if (framingModule.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SkipTest("compiled: the parser's methods make no Python frames to count")

    def test_oneStep(self) -> None:
        """
        Ten usual C{MESSAGE}s in one read (the driver's and the client's
        shapes) are read by one call of C{_usualMessage} each, and nothing
        of the general path.
        """
        data = b"".join(
            usualMessage(i, b"hello %d" % i, contentType=b"text/plain; charset=utf-8" if i % 2 else None) for i in range(1, 11)
        )
        parser = FrameParser()
        parser.receive(data)
        calls = _callsOf(lambda: [parser.next() for _ in range(10)])
        self.assertEqual(calls.get("_usualMessage"), 10)
        self.assertEqual(calls.get("next"), 10)
        for general in ("_wholeFrame", "_step", "_startLine", "_headerLine", "_endHeaders", "_body", "_fastStartLine"):
            self.assertNotIn(general, calls)
        self.assertEqual(parser.bufferedBytes, 0)

    def test_unusualFallsThrough(self) -> None:
        """
        A C{MESSAGE} in another shape (here a header in lower case) is read
        by the general path, after one try of C{_usualMessage}.
        """
        data = usualMessage(5, b"hi").replace(b"Seq:", b"seq:")
        parser = FrameParser()
        parser.receive(data)
        calls = _callsOf(parser.next)
        self.assertEqual((calls.get("_usualMessage"), calls.get("_wholeFrame")), (1, 1))
