# -*- test-case-name: tests.test_native_framing -*-
"""
Framing of the native protocol: a sans-IO parser (L{FrameParser}) and
serialiser (L{serialise}) for its SIP/HTTP-like frames.

A frame is a start line, header lines, a blank line, and a body of
C{Content-Length} bytes. This module knows nothing of what the frames mean;
C{docs/protocol.md} specifies the wire format it implements.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias, cast

from attrs import evolve, field, frozen, validators

from imgateway._compiled import cachedProperty

__all__ = [
    "CLIENT_LIMITS",
    "VERSION",
    "MAX_SEQ",
    "Frame",
    "FrameParser",
    "FramingError",
    "Headers",
    "Limits",
    "Request",
    "Response",
    "serialise",
    "serialiseUnsequenced",
    "withSeq",
]

#: The protocol version this module speaks; any C{IMGW/1.x} is accepted.
VERSION = "IMGW/1.0"

#: The largest sequence number.
MAX_SEQ = 2**31 - 1

# The reason phrases of the codes a FramingError can carry (the table of
# every code is imgateway.adapters.native.mapping.REASONS).
_REASONS: Mapping[int, str] = {
    400: "Bad Request",
    413: "Too Large",
    431: "Header Too Large",
    505: "Version Not Supported",
}

_METHOD = re.compile(r"[A-Z]{1,16}")
_METHOD_BYTES = re.compile(rb"[A-Z]{1,16}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_HEADER_NAME_BYTES = re.compile(rb"[A-Za-z0-9-]+")
# Header names, one a line.
_HEADER_NAMES = re.compile(r"[A-Za-z0-9-]+(?:\n[A-Za-z0-9-]+)*")
# Something shaped like a protocol version (IMGW/1.0, SIP/2.0, HTTP/1.1).
_VERSION_LIKE = re.compile(rb"[A-Za-z][A-Za-z0-9-]*/[0-9]+\.[0-9]+")
_SUPPORTED_VERSION = re.compile(rb"IMGW/1\.[0-9]+")
_CODE = re.compile(rb"[1-6][0-9][0-9]")
_SEQ = re.compile(r"[0-9]{1,10}")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# Control characters (C0, DEL, C1) other than TAB: not allowed in header
# values or reason phrases.
_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Control characters and any whitespace: not allowed in a target.
_TARGET_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\s]")

# A run of blank lines.
_BLANK_LINES = re.compile(rb"(?:\r?\n)+")

# The usual start lines, for a request and for a response.
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([^ ]+) IMGW/1\.[0-9]+")
_STATUS_LINE = re.compile(rb"IMGW/1\.[0-9]+ ([1-6][0-9][0-9])(?: (.*))?", re.DOTALL)
# The first byte of a blank line.
_BLANK_START = frozenset(b"\r\n")
# The end of a head (start line and header lines) with CRLF line ends.
_HEAD_END = b"\r\n\r\n"
# A header line at the start of a line of a block of lines joined by CRLF:
# its name, and its value without the spaces and tabs before it.
_HEADER_PAIR = re.compile(r"^([A-Za-z0-9-]+):[ \t]*([^\r\n]*)", re.MULTILINE)
# What _VALUE_FORBIDDEN refuses, other than CR and LF (in a block, those
# are only found in the CRLFs between lines).
_BLOCK_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_CR = 0x0D
_LF = b"\n"

# A MESSAGE in the usual shape, received whole: as the shipped client
# (imgateway.client) and the load driver (bench/_loaddriver.py) write it:
# an ASCII target, Seq first (without leading zeros, below 10**9), then an
# optional Content-Type and an optional Message-ID (printable ASCII, no
# space or tab at either end), then a Content-Length (1 or more, below
# 10**9, without leading zeros) last. Its groups: the target, the Seq, the
# Content-Type, the Message-ID, the Content-Length; its end, the body's
# start. Anything else (another order or case, other headers, odd
# whitespace, bare LFs, non-ASCII text, a target over 4096 bytes or a value
# over 1024: a frame start is never read far by it) is for the general path.
_MESSAGE_HEAD = re.compile(
    rb"MESSAGE ([!-~]{1,4096}) IMGW/1\.0\r\n"
    rb"Seq: ([1-9][0-9]{0,8})\r\n"
    rb"(?:Content-Type: ([!-~](?:[ -~]{0,1022}[!-~])?)\r\n)?"
    rb"(?:Message-ID: ([!-~](?:[ -~]{0,1022}[!-~])?)\r\n)?"
    rb"Content-Length: ([1-9][0-9]{0,8})\r\n\r\n"
)
# The start line of such a MESSAGE, without its target and line end; the
# bytes of its Seq, Content-Type, Message-ID and Content-Length lines
# without their values.
_MESSAGE_START_BYTES = len(b"MESSAGE  IMGW/1.0")
_MESSAGE_SEQ_BYTES = len(b"Seq: \r\n")
_MESSAGE_TYPE_BYTES = len(b"Content-Type: \r\n")
_MESSAGE_ID_BYTES = len(b"Message-ID: \r\n")
_MESSAGE_LENGTH_BYTES = len(b"Content-Length: \r\n")

# A bare 200: the answer a peer sends to most requests, exactly as
# serialise writes Response(200, "OK", Headers.of(("Seq", n))) for a
# sequence number without leading zeros below 10**9 (below MAX_SEQ). The
# longest one's start line and header line, for the limits.
_BARE_OK = re.compile(rb"IMGW/1\.0 200 OK\r\nSeq: ([1-9][0-9]{0,8})\r\n\r\n")
_BARE_OK_RUN = re.compile(rb"(?:IMGW/1\.0 200 OK\r\nSeq: [1-9][0-9]{0,8}\r\n\r\n)+")
_BARE_OK_SEQ = re.compile(rb"Seq: ([0-9]+)\r")
# A bare 200's bytes, and the sequence numbers it is recognised with (below
# 10**9, as _BARE_OK).
_BARE_OK_BYTES = b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n"
_BARE_OK_SEQS = 10**9
_BARE_OK_START_BYTES = len(b"IMGW/1.0 200 OK")
_BARE_OK_HEADER_BYTES = len(b"Seq: 999999999\r\n")


def _limit(default: int, minimum: int) -> Any:
    """
    A field of L{Limits}: C{default}, and no less than C{minimum}.

    Typed C{Any}: the compiled build (L{imgateway._compiled}) checks the
    value given to a class attribute typed C{int} when the class is made,
    and this one is attrs' definition of the field until C{@frozen} reads it.
    """
    return cast(Any, field)(default=default, validator=validators.ge(minimum))


@frozen
class Limits:
    """
    The sizes a L{FrameParser} accepts; each is the largest value allowed.

    @ivar maxStartLineBytes: The start line, in bytes, without its line end.
    @ivar maxHeaderBytes: All header lines together, in bytes, each with its
        own line end, without the start line and the blank line that ends
        them.
    @ivar maxHeaders: The number of header lines.
    @ivar maxBodyBytes: The body (C{Content-Length}), in bytes.
    """

    maxStartLineBytes: int = _limit(2048, 1)
    maxHeaderBytes: int = _limit(8192, 1)
    maxHeaders: int = _limit(64, 1)
    maxBodyBytes: int = _limit(65536, 0)


#: What the shipped client (L{imgateway.client}) accepts from a server
#: (C{docs/protocol.md} section 3.2). Each limit is the receiver's: these are
#: larger than the server's defaults (L{Limits}, what a server accepts from
#: clients), because the server sends more than it takes. The body limit
#: covers the largest answer a server with the default quotas can send
#: (L{imgateway.adapters.native.server.largestListAnswers}: a C{CONTACTS}
#: answer at C{max_contacts} and C{max_pending_requests}, about 22 MB at most);
#: the start line covers a C{NOTIFY} or C{MESSAGE} naming the longest address
#: (about 1.3 KB); header lines, a presence note of 1024 characters of 4 bytes
#: each with the rest.
CLIENT_LIMITS = Limits(maxStartLineBytes=4096, maxHeaderBytes=16384, maxHeaders=64, maxBodyBytes=32 * 1024 * 1024)


@frozen
class Headers:
    """
    Header fields: ordered C{(name, value)} pairs; names are compared
    case-insensitively and keep the case they were given in.

    Build them with L{Headers.of} (pairs) or L{Headers.fromMapping}.

    @ivar items: The pairs, in order.
    """

    items: tuple[tuple[str, str], ...] = ()

    @cachedProperty
    def _byName(self) -> dict[str, list[str]]:
        """
        The values of each header, by its name in lower case, in order:
        built on the first look-up, so that each look-up after it costs one
        dictionary access (a request's headers are looked up many times).
        """
        index: dict[str, list[str]] = {}
        for n, v in self.items:
            values = index.get(n.lower())
            if values is None:
                index[n.lower()] = [v]
            else:
                values.append(v)
        return index

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        """
        Headers from pairs: C{Headers.of(("Seq", "1"), ("Event", "presence"))}.

        @param pairs: C{(name, value)} pairs, in order; a name may repeat.
        @return: The headers.
        """
        return cls(tuple(pairs))

    @classmethod
    def fromMapping(cls, mapping: Mapping[str, str]) -> Headers:
        """
        Headers from a mapping, in its iteration order:
        C{Headers.fromMapping({"Seq": "1", "Presence": "away"})}.

        @param mapping: Header name to value.
        @return: The headers.
        """
        return cls(tuple(mapping.items()))

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        @param name: A header name, in any case.
        @param default: What to return if there is no such header.
        @return: The value of the first header called C{name}, or C{default}.
        """
        values = self._byName.get(name.lower())
        return default if values is None else values[0]

    def getAll(self, name: str) -> list[str]:
        """
        @param name: A header name, in any case.
        @return: The values of every header called C{name}, in order.
        """
        return list(self._byName.get(name.lower(), ()))

    def __contains__(self, name: object) -> bool:
        """
        @return: Whether there is a header called C{name} (in any case).
        """
        if not isinstance(name, str):
            return False
        return name.lower() in self._byName

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """
        @return: An iterator over the C{(name, value)} pairs.
        """
        return iter(self.items)

    def __len__(self) -> int:
        """
        @return: The number of pairs.
        """
        return len(self.items)

    def with_(self, name: str, value: str) -> Headers:
        """
        @param name: A header name.
        @param value: Its new value.
        @return: Headers where the first header called C{name} (in any case)
            is replaced by C{(name, value)} and any later ones are dropped;
            or, if there is none, with C{(name, value)} appended.
        """
        lower = name.lower()
        result: list[tuple[str, str]] = []
        replaced = False
        for n, v in self.items:
            if n.lower() != lower:
                result.append((n, v))
            elif not replaced:
                result.append((name, value))
                replaced = True
        if not replaced:
            result.append((name, value))
        return Headers(tuple(result))

    def without(self, name: str) -> Headers:
        """
        @param name: A header name, in any case.
        @return: Headers without any header called C{name}.
        """
        lower = name.lower()
        return Headers(tuple((n, v) for n, v in self.items if n.lower() != lower))


def _seqOf(headers: Headers) -> int | None:
    """
    @return: The sequence number in C{headers}, or C{None} if the C{Seq}
        header is missing, invalid, or repeated with different values.
    """
    values = headers.getAll("Seq")
    if not values:
        return None
    seqs = set()
    for value in values:
        if _SEQ.fullmatch(value) is None:
            return None
        seqs.add(int(value))
    if len(seqs) != 1:
        return None
    (seq,) = seqs
    return seq if seq <= MAX_SEQ else None


def _frameSeq(headers: Headers) -> int:
    seq = _seqOf(headers)
    if seq is None:
        raise ValueError(f"no valid Seq header: {headers.getAll('Seq')!r}")
    return seq


@frozen
class Request:
    """
    A request frame: C{METHOD target IMGW/1.0}.

    @ivar method: 1 to 16 uppercase ASCII letters.
    @ivar target: What the request is about (C{im:bob@corp.example},
        C{pres:bob@corp.example}, or C{*}).
    @ivar headers: Its headers. Frames from a L{FrameParser} never hold
        C{Content-Length}: the length of C{body} says it.
    @ivar body: Its body.
    """

    method: str
    target: str
    headers: Headers
    body: bytes = b""

    @cachedProperty
    def seq(self) -> int:
        """
        The sequence number, from the C{Seq} header.

        @raise ValueError: If C{Seq} is missing or invalid (never so for
            frames from a L{FrameParser}).
        """
        return _frameSeq(self.headers)


@frozen
class Response:
    """
    A response frame: C{IMGW/1.0 code reason}.

    @ivar code: The status code, 100 to 699.
    @ivar reason: The reason phrase (may be empty).
    @ivar headers: Its headers. Frames from a L{FrameParser} never hold
        C{Content-Length}: the length of C{body} says it.
    @ivar body: Its body.
    """

    code: int
    reason: str
    headers: Headers
    body: bytes = b""

    @cachedProperty
    def seq(self) -> int:
        """
        The sequence number, from the C{Seq} header: that of the request it
        answers.

        @raise ValueError: If C{Seq} is missing or invalid (never so for
            frames from a L{FrameParser}).
        """
        return _frameSeq(self.headers)


#: A frame of either kind.
Frame: TypeAlias = Request | Response


def serialise(frame: Frame) -> bytes:
    """
    Serialise a frame to its wire form, with CRLF line ends and its text
    encoded as UTF-8.

    Any C{Content-Length} header in C{frame.headers} is ignored; one giving
    the length of the body is added after the other headers when the body
    is not empty.

    @param frame: The frame.
    @return: Its bytes.
    @raise ValueError: If the method is not 1 to 16 uppercase ASCII letters;
        the target is empty or holds whitespace or control characters; the
        code is not in 100..699; the reason phrase or a header value holds
        a control character other than TAB; a header name is not made of
        ASCII letters, digits and C{-}; or any text cannot be encoded as
        UTF-8 (lone surrogates). Nothing can be injected into the stream.
    """
    if isinstance(frame, Request):
        if _METHOD.fullmatch(frame.method) is None:
            raise ValueError(f"invalid method {frame.method!r}")
        if not frame.target or _TARGET_FORBIDDEN.search(frame.target):
            raise ValueError(f"invalid target {frame.target!r}")
        start = f"{frame.method} {frame.target} {VERSION}"
    else:
        code = frame.code
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 699:
            raise ValueError(f"invalid status code {code!r}")
        if _VALUE_FORBIDDEN.search(frame.reason):
            raise ValueError(f"invalid reason phrase {frame.reason!r}")
        start = f"{VERSION} {code} {frame.reason}"
    items = frame.headers.items
    body = bytes(frame.body)
    if items:
        # Every name and value checked at once (the usual case: all good,
        # no Content-Length); on any doubt, one by one (_headerLines). A
        # name holding the separator fails the count.
        names = "\n".join([n for n, _ in items])
        if (
            _HEADER_NAMES.fullmatch(names) is None
            or names.count("\n") != len(items) - 1
            or _VALUE_FORBIDDEN.search("\t".join([v for _, v in items]))
            or "content-length" in names.lower()
        ):
            head = "".join(_headerLines(items))
        else:
            head = "".join([f"{n}: {v}\r\n" for n, v in items])
    else:
        head = ""
    if body:
        return f"{start}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode("utf-8") + body
    return f"{start}\r\n{head}\r\n".encode("utf-8")


def _headerLines(items: tuple[tuple[str, str], ...]) -> Iterator[str]:
    """
    @return: The header lines of C{items}, each with its line end, leaving
        out C{Content-Length}.
    @raise ValueError: At the first invalid name or value.
    """
    for name, value in items:
        if _HEADER_NAME.fullmatch(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if _VALUE_FORBIDDEN.search(value):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        if name.lower() != "content-length":
            yield f"{name}: {value}\r\n"


def serialiseUnsequenced(frame: Frame) -> bytes:
    """
    C{frame} serialised without any C{Seq} header, for L{withSeq}: done
    once, however many connections or requests it is then sent with.

    @raise ValueError: If it cannot be serialised (L{serialise}).
    """
    # A scan, not a look-up: a look-up would build the headers' index, which
    # nothing else needs on the sending side.
    if any(len(name) == 3 and name.lower() == "seq" for name, _ in frame.headers.items):
        frame = evolve(frame, headers=frame.headers.without("Seq"))
    return serialise(frame)


def withSeq(encoded: bytes, seq: int) -> bytes:
    """
    A frame from L{serialiseUnsequenced} with C{Seq: seq} as its first
    header: the bytes L{serialise} makes of the frame with that header
    first (its start line is the text up to the first CRLF, never holding
    one), without serialising it again.
    """
    end = encoded.index(b"\r\n") + 2
    return b"%sSeq: %d\r\n%s" % (encoded[:end], seq, encoded[end:])


class FramingError(Exception):
    """
    The peer sent bytes that break the framing rules.

    A L{FrameParser} returns these in place of frames; the caller answers
    with C{code} (and C{seq} when known), then closes the connection if
    C{fatal}.

    @ivar code: The status code to answer with (400, 413, 431 or 505).
    @ivar reason: The standard reason phrase of C{code}.
    @ivar detail: What exactly was wrong, for people.
    @ivar seq: The sequence number of the offending frame, if known.
    @ivar fatal: Whether the stream can no longer be parsed: the parser is
        closed and the connection must be closed.
    @ivar inResponse: Whether the offending frame is known to be a
        response (which is not itself answered).
    """

    def __init__(
        self,
        code: int,
        detail: str,
        seq: int | None = None,
        fatal: bool = True,
        inResponse: bool = False,
    ) -> None:
        """
        @param code: See L{FramingError.code}.
        @param detail: See L{FramingError.detail}.
        @param seq: See L{FramingError.seq}.
        @param fatal: See L{FramingError.fatal}.
        @param inResponse: See L{FramingError.inResponse}.
        """
        super().__init__(code, detail)
        self.code = code
        self.reason = _REASONS.get(code, "Error")
        self.detail = detail
        self.seq = seq
        self.fatal = fatal
        self.inResponse = inResponse

    def __repr__(self) -> str:
        return (
            f"FramingError(code={self.code}, detail={self.detail!r}, seq={self.seq!r}, "
            f"fatal={self.fatal!r}, inResponse={self.inResponse!r})"
        )

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.detail}"


class _State(enum.Enum):
    START = "start line"
    HEADERS = "headers"
    BODY = "body"
    DISCARD = "discarding a body"


class FrameParser:
    """
    A sans-IO parser of native-protocol frames: give it bytes as they
    arrive with L{feed}, get back frames and framing errors in stream order.

    Or parse at the reader's pace: L{receive} stores bytes without parsing
    them, and each L{next} parses just enough of what was received to
    return one more frame or error. A reader that stops calling L{next}
    (because it must not act on more requests yet) holds the rest as
    unparsed bytes, never as frames.

    Parsing never buffers more than the current line (at most a limit plus
    two bytes) or the current body (at most C{maxBodyBytes}) beyond the
    bytes received and not parsed yet, and searches each byte for a line
    end at most twice (and tries a frame start once against the pattern of
    a usual C{MESSAGE}, which reads a few KB at most), however the stream
    is cut into chunks: a C{MESSAGE} in the usual shape received whole is
    read with one pattern (L{_usualMessage}); a head (start line and headers) received whole,
    with CRLF line ends, is parsed in one go; anything else (a head cut by a read, bare LFs, a
    frame breaking a rule) line by line, which gives every error.

    @ivar closed: Whether a fatal error was met; L{feed} then returns
        nothing, ever.
    """

    closed: bool

    def __init__(self, limits: Limits = Limits()) -> None:
        """
        @param limits: The sizes to accept.
        """
        self.closed = False
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        # How many bytes of the current (incomplete) line, from _pos, have
        # already been searched for a line end.
        self._scanned = 0
        self._state = _State.START
        self._isResponse = False
        self._method = ""
        self._target = ""
        self._code = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._headerBytes = 0
        self._pendingHeaders = Headers()
        self._pendingSeq = 0
        self._remaining = 0
        # Whether to read the usual MESSAGEs in one step (_usualMessage):
        # always. A test hook only: the tests that compare the fast path
        # with the general one turn it off (a compiled parser's methods
        # cannot be patched).
        self._usualMessages = True
        # Whether the limits take every bare 200 (nextBareOK).
        self._bareOK = limits.maxStartLineBytes >= _BARE_OK_START_BYTES and limits.maxHeaderBytes >= _BARE_OK_HEADER_BYTES

    @property
    def bufferedBytes(self) -> int:
        """
        How many bytes of the stream the parser holds: those of an
        incomplete line or body, and those received but not parsed yet
        (see L{next}). Bodies being discarded are never held.
        """
        return len(self._buf) - self._pos

    @property
    def atFrameStart(self) -> bool:
        """
        Whether the next bytes received start a frame: nothing is held or
        awaited (no part of a frame, no body being discarded), and the
        parser is not closed. A caller may then read a chunk it recognises
        whole itself, without feeding it here (the server links' bare
        C{200}s, L{imgateway.router.link}).
        """
        return self._state is _State.START and not self.closed and self._pos >= len(self._buf)

    def feed(self, data: bytes) -> list[Frame | FramingError]:
        """
        Parse more of the stream: L{receive} C{data}, then L{next} until
        nothing more is complete.

        @param data: The bytes that arrived next.
        @return: The frames completed by C{data} (and by bytes received
            before it and not parsed yet), and L{FramingError}s in their
            place for frames that break the rules, in stream order. A fatal
            error is always last; after it the parser is closed.
        """
        self.receive(data)
        out: list[Frame | FramingError] = []
        while (item := self.next()) is not None:
            out.append(item)
        return out

    def receive(self, data: bytes) -> None:
        """
        Store the bytes that arrived next, without parsing them yet: L{next}
        parses them.

        @param data: The bytes.
        """
        if not self.closed:
            self._buf += data

    def next(self) -> Frame | FramingError | None:
        """
        Parse what was received up to the end of the next frame.

        @return: The next frame, or a L{FramingError} in its place; or
            C{None} if no more is complete yet. After a fatal error (which
            it returns once) the parser is closed and this returns C{None}.
        """
        if self.closed:
            return None
        out: list[Frame | FramingError] = []
        try:
            if self._state is _State.START and not self._scanned:
                self._isResponse = False
                if self._usualMessages:
                    message = self._usualMessage()
                    if message is not None:
                        return message
                frame = self._wholeFrame()
                if frame is not None:
                    if self._pos >= 65536:
                        del self._buf[: self._pos]
                        self._pos = 0
                    return frame
            while not out and self._step(out):
                pass
        except FramingError as e:
            self.closed = True
            self._buf = bytearray()
            self._pos = 0
            e.inResponse = e.inResponse or self._isResponse
            return e
        if self._pos and (not out or self._pos >= 65536):
            # Drop what was parsed (amortised: not after every frame of a
            # large read).
            del self._buf[: self._pos]
            self._pos = 0
        return out[0] if out else None

    def takeBareOKs(self, data: bytes) -> list[int] | None:
        """
        Take a read made only of bare C{200 OK}s (as L{nextBareOK} takes
        one), without storing it: the answers a busy peer mostly sends, read
        as a whole. Only at a frame start (L{atFrameStart}), and with limits
        that take every bare C{200}; else, or for anything else in C{data},
        nothing is taken and C{data} is for L{receive}.

        @return: The sequence numbers, in order; or C{None}.
        """
        # atFrameStart, without its call.
        if (
            not self._bareOK
            or self._state is not _State.START
            or self.closed
            or self._pos < len(self._buf)
            or _BARE_OK_RUN.fullmatch(data) is None
        ):
            return None
        return list(map(int, _BARE_OK_SEQ.findall(data)))

    def bareOKRun(self, data: bytes, first: int, most: int) -> int:
        """
        Whether a read is made only of the bare C{200 OK}s numbered
        C{first}, C{first + 1}, ... in order (the answers a peer that
        answers in order sends to the oldest requests awaiting one): what
        L{takeBareOKs} would take as those numbers, recognised by comparing
        C{data} with their bytes, without parsing it. Nothing is taken or
        stored either way.

        @param first: The first number, 1 or more.
        @param most: How many there may be at most.
        @return: How many there are; 0 when C{data} is anything else (or
            more of them), when the parser is not at a frame start, or with
            limits that do not take every bare C{200}.
        """
        if not self._bareOK or self._state is not _State.START or self.closed or self._pos < len(self._buf):
            return 0
        count = data.count(b"IMGW")
        if not 0 < count <= most or first + count > _BARE_OK_SEQS:
            return 0
        if count == 1:
            expected = _BARE_OK_BYTES % first
        else:
            expected = (_BARE_OK_BYTES * count) % tuple(range(first, first + count))
        return count if data == expected else 0

    def nextBareOK(self) -> int | None:
        """
        Take the next frame if it is a bare C{200 OK} (C{Seq} its only
        header, as L{serialise} writes it, the sequence number without
        leading zeros and below 10**9) received whole: the frame L{next}
        would return, C{Response(200, "OK", Headers.of(("Seq", n)))}, read
        without building it. A peer's answers to a server's requests are
        mostly these.

        @return: Its sequence number; or C{None}, nothing taken, when the
            next bytes are anything else (blank lines first, a part of a
            frame, another frame), or not all here yet, or when the limits
            are too small for the longest bare C{200}: L{next} then parses
            them.
        """
        if self._state is not _State.START or self._scanned or not self._bareOK or self.closed:
            return None
        match = _BARE_OK.match(self._buf, self._pos)
        if match is None:
            return None
        seq = int(match.group(1))  # before the buffer changes
        pos = self._pos = match.end()
        if pos >= len(self._buf):
            del self._buf[:]
            self._pos = 0
        elif pos >= 65536:
            del self._buf[:pos]
            self._pos = 0
        return seq

    def _step(self, out: list[Frame | FramingError]) -> bool:
        """
        Make one step of progress in the current state.

        @return: Whether to try another step.
        @raise FramingError: On a fatal error.
        """
        state = self._state
        if state is _State.START:
            return self._startLine()
        if state is _State.HEADERS:
            return self._headerLine(out)
        if state is _State.BODY:
            return self._body(out)
        return self._discard()

    def _line(self) -> tuple[bytes, int] | None:
        """
        Take the next complete line from the buffer.

        @return: The line without its line end (a CR may remain inside)
            and its length with its line end; or C{None} if the line is not
            complete yet.
        """
        buf = self._buf
        pos = self._pos
        idx = buf.find(_LF, pos + self._scanned)
        if idx < 0:
            self._scanned = len(buf) - pos
            return None
        self._scanned = 0
        self._pos = idx + 1
        end = idx
        if end > pos and buf[end - 1] == _CR:
            end -= 1
        return bytes(buf[pos:end]), idx + 1 - pos

    def _startLine(self) -> bool:
        self._isResponse = False
        if not self._scanned:
            # Blank lines between frames (keep-alives), however many, in
            # one step: they are not frames, and a reader's budget of
            # frames would not bound them.
            blanks = _BLANK_LINES.match(self._buf, self._pos)
            if blanks is not None:
                self._pos = blanks.end()
        line = self._line()
        limit = self._limits.maxStartLineBytes
        if line is None:
            pending = len(self._buf) - self._pos
            if pending and self._buf[-1] == _CR:
                pending -= 1
            if pending > limit:
                raise FramingError(431, f"start line longer than {limit} bytes")
            return False
        text, _ = line
        if not text:
            return True  # a blank line between frames: keep-alive
        if len(text) > limit:
            raise FramingError(431, f"start line longer than {limit} bytes")
        _checkNoCR(text)
        self._parseStartLine(text)
        self._headers = []
        self._headerBytes = 0
        self._state = _State.HEADERS
        return True

    def _usualMessage(self) -> Request | None:
        """
        Parse a C{MESSAGE} in the usual shape (L{_MESSAGE_HEAD}) received
        whole, body and all, with one regular expression: the hottest frame
        a logged-in client sends. Only when the limits take it; else, or
        for anything else, nothing is consumed and L{_wholeFrame} or the
        line-by-line parser reads the frame (and finds the same request, or
        the error).

        @return: The request (the one the general path makes of the same
            bytes); or C{None}.
        """
        buf = self._buf
        pos = self._pos
        match = _MESSAGE_HEAD.match(buf, pos)
        if match is None:
            return None
        target, seq, contentType, messageID, length = match.groups()
        size = int(length)
        bodyStart = match.end()
        if bodyStart + size > len(buf):
            return None  # the body is still to come: _wholeFrame waits for it
        limits = self._limits
        headerBytes = _MESSAGE_SEQ_BYTES + len(seq) + _MESSAGE_LENGTH_BYTES + len(length)
        if contentType is None:
            if messageID is None:
                pairs: tuple[tuple[str, str], ...] = (("Seq", seq.decode("ascii")),)
            else:
                headerBytes += _MESSAGE_ID_BYTES + len(messageID)
                pairs = (("Seq", seq.decode("ascii")), ("Message-ID", messageID.decode("ascii")))
        else:
            headerBytes += _MESSAGE_TYPE_BYTES + len(contentType)
            if messageID is None:
                pairs = (("Seq", seq.decode("ascii")), ("Content-Type", contentType.decode("ascii")))
            else:
                headerBytes += _MESSAGE_ID_BYTES + len(messageID)
                pairs = (
                    ("Seq", seq.decode("ascii")),
                    ("Content-Type", contentType.decode("ascii")),
                    ("Message-ID", messageID.decode("ascii")),
                )
        if (
            _MESSAGE_START_BYTES + len(target) > limits.maxStartLineBytes
            or headerBytes > limits.maxHeaderBytes
            or len(pairs) + 1 > limits.maxHeaders
            or size > limits.maxBodyBytes
        ):
            return None
        end = bodyStart + size
        frame = Request("MESSAGE", target.decode("ascii"), Headers(pairs), bytes(buf[bodyStart:end]))
        if end >= 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        # Its sequence number, known already (a cached property).
        object.__setattr__(frame, "seq", int(seq))
        return frame

    def _wholeFrame(self) -> Frame | None:
        """
        Parse a frame whose head (start line and headers) was received
        whole, in one go: when the bytes from here up to the longest head
        the limits allow hold its end (a blank line), and it has CRLF line
        ends only, is within the limits, well-formed, and has one valid
        C{Seq} and at most one valid C{Content-Length} within the limit.
        Else nothing is consumed, and the frame is parsed line by line
        (which finds the same frame, or the error).

        @return: The frame, if its body is here too; else C{None} (its head
            parsed, its body awaited, if it was parsed).
        @raise FramingError: On a fatal error in the start line (the same
            that line-by-line parsing raises).
        """
        buf = self._buf
        pos = self._pos
        if pos < len(buf) and buf[pos] in _BLANK_START:
            blanks = _BLANK_LINES.match(buf, pos)
            if blanks is not None:
                pos = self._pos = blanks.end()
        limits = self._limits
        end = buf.find(_HEAD_END, pos, pos + limits.maxStartLineBytes + limits.maxHeaderBytes + 4)
        if end < 0:
            return None
        head = bytes(buf[pos:end])
        lines = head.count(b"\r\n")
        if head.count(b"\r") != lines or head.count(b"\n") != lines or lines > limits.maxHeaders:
            return None
        cut = head.find(b"\r\n")
        start = head if cut < 0 else head[:cut]
        if not start or len(start) > limits.maxStartLineBytes or len(head) - len(start) > limits.maxHeaderBytes:
            return None
        if cut < 0:
            return None  # no Seq
        try:
            block = head[cut + 2 :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _BLOCK_FORBIDDEN.search(block):
            return None
        pairs: list[tuple[str, str]] = _HEADER_PAIR.findall(block)
        if len(pairs) != lines:
            return None  # a line that is no header line
        if " \r" in block or "\t\r" in block or block[-1] in " \t":
            pairs = [(n, v.rstrip(" \t")) for n, v in pairs]
        seq: str | None = None
        length: str | None = None
        # Where the one Content-Length is among the pairs (a second one
        # sends the frame to the line-by-line parser).
        lengthAt = 0
        at = 0
        for name, value in pairs:
            size = len(name)
            if size == 3 and name.lower() == "seq":
                if seq is not None:
                    return None
                seq = value
            elif size == 14 and name.lower() == "content-length":
                if length is not None:
                    return None
                length = value
                lengthAt = at
            at += 1
        if seq is None or _SEQ.fullmatch(seq) is None or int(seq) > MAX_SEQ:
            return None
        size = 0
        if length is not None:
            if _CONTENT_LENGTH.fullmatch(length) is None:
                return None
            size = int(length)
            if size > limits.maxBodyBytes:
                return None
            del pairs[lengthAt]
        self._fastStartLine(start)
        headers = Headers(tuple(pairs))
        bodyStart = end + 4
        if bodyStart + size > len(buf):
            # The body is still to come.
            self._pos = bodyStart
            self._pendingHeaders = headers
            self._pendingSeq = int(seq)
            self._remaining = size
            self._state = _State.BODY
            return None
        self._pos = bodyStart + size
        body = bytes(buf[bodyStart : bodyStart + size]) if size else b""
        frame: Frame
        if self._isResponse:
            frame = Response(self._code, self._reason, headers, body)
        else:
            frame = Request(self._method, self._target, headers, body)
        # Its sequence number, known already (a cached property).
        object.__setattr__(frame, "seq", int(seq))
        return frame

    def _fastStartLine(self, text: bytes) -> None:
        """
        L{_parseStartLine} with one regular expression for the usual start
        lines (the others go to it).
        """
        match = _REQUEST_LINE.fullmatch(text)
        if match is not None:
            method, target = match.groups()
            try:
                targetText = target.decode("utf-8")
            except UnicodeDecodeError:
                targetText = ""
            if targetText and not _TARGET_FORBIDDEN.search(targetText):
                self._method = method.decode("ascii")
                self._target = targetText
                return
        else:
            match = _STATUS_LINE.fullmatch(text)
            if match is not None:
                code, reason = match.groups()
                try:
                    reasonText = reason.decode("utf-8") if reason else ""
                except UnicodeDecodeError:
                    reasonText = "\x00"
                if not _VALUE_FORBIDDEN.search(reasonText):
                    self._isResponse = True
                    self._code = int(code)
                    self._reason = reasonText
                    return
        self._parseStartLine(text)

    def _parseStartLine(self, text: bytes) -> None:
        first, _, rest = text.partition(b" ")
        if _VERSION_LIKE.fullmatch(first):
            self._isResponse = True
            if not _SUPPORTED_VERSION.fullmatch(first):
                raise FramingError(505, f"unsupported version {_show(first)}")
            code, _, reason = rest.partition(b" ")
            if not _CODE.fullmatch(code):
                raise FramingError(400, f"bad status line {_show(text)}")
            self._code = int(code)
            self._reason = _decode(reason, "reason phrase")
            if _VALUE_FORBIDDEN.search(self._reason):
                raise FramingError(400, "control character in reason phrase")
            return
        parts = text.split(b" ")
        if len(parts) != 3:
            raise FramingError(400, f"bad start line {_show(text)}")
        method, target, version = parts
        if not _VERSION_LIKE.fullmatch(version):
            raise FramingError(400, f"bad start line {_show(text)}")
        if not _SUPPORTED_VERSION.fullmatch(version):
            raise FramingError(505, f"unsupported version {_show(version)}")
        if not _METHOD_BYTES.fullmatch(method):
            raise FramingError(400, f"bad method {_show(method)}")
        targetText = _decode(target, "target")
        if not targetText or _TARGET_FORBIDDEN.search(targetText):
            raise FramingError(400, f"bad target {targetText!r}")
        self._method = method.decode("ascii")
        self._target = targetText

    def _headerLine(self, out: list[Frame | FramingError]) -> bool:
        limits = self._limits
        line = self._line()
        if line is None:
            pending = len(self._buf) - self._pos
            if pending == 0 or (pending == 1 and self._buf[self._pos] == _CR):
                return False  # nothing yet, or maybe the blank line
            # This is a header line of at least pending + 1 bytes.
            if self._headerBytes + pending + 1 > limits.maxHeaderBytes:
                raise FramingError(431, f"headers longer than {limits.maxHeaderBytes} bytes")
            if len(self._headers) >= limits.maxHeaders:
                raise FramingError(431, f"more than {limits.maxHeaders} headers")
            return False
        text, size = line
        if not text:
            self._endHeaders(out)
            return True
        self._headerBytes += size
        if self._headerBytes > limits.maxHeaderBytes:
            raise FramingError(431, f"headers longer than {limits.maxHeaderBytes} bytes")
        if len(self._headers) >= limits.maxHeaders:
            raise FramingError(431, f"more than {limits.maxHeaders} headers")
        _checkNoCR(text)
        if text[0] in b" \t":
            raise FramingError(400, "continuation lines are not allowed")
        name, colon, value = text.partition(b":")
        if not colon:
            raise FramingError(400, f"header line without a colon: {_show(text)}")
        if not _HEADER_NAME_BYTES.fullmatch(name):
            raise FramingError(400, f"bad header name {_show(name)}")
        nameText = name.decode("ascii")
        valueText = _decode(value, f"value of {nameText}").strip(" \t")
        if _VALUE_FORBIDDEN.search(valueText):
            raise FramingError(400, f"control character in the value of {nameText}")
        self._headers.append((nameText, valueText))
        return True

    def _endHeaders(self, out: list[Frame | FramingError]) -> None:
        pairs = self._headers
        self._headers = []
        lengths = [v for n, v in pairs if len(n) == 14 and n.lower() == "content-length"]
        length = 0
        if lengths:
            if any(_CONTENT_LENGTH.fullmatch(v) is None for v in lengths):
                raise FramingError(400, f"bad Content-Length {lengths[0]!r}")
            values = {int(v) for v in lengths}
            if len(values) > 1:
                raise FramingError(400, "conflicting Content-Length headers")
            (length,) = values
            pairs = [(n, v) for n, v in pairs if len(n) != 14 or n.lower() != "content-length"]
        headers = Headers(tuple(pairs))
        seq = _seqOf(headers)
        if length > self._limits.maxBodyBytes:
            out.append(
                FramingError(
                    413,
                    f"body of {length} bytes, more than {self._limits.maxBodyBytes}",
                    seq=seq,
                    fatal=False,
                    inResponse=self._isResponse,
                )
            )
            self._startDiscarding(length)
            return
        if seq is None:
            out.append(
                FramingError(
                    400,
                    f"missing or invalid Seq: {headers.getAll('Seq')!r}",
                    fatal=False,
                    inResponse=self._isResponse,
                )
            )
            self._startDiscarding(length)
            return
        self._pendingHeaders = headers
        self._pendingSeq = seq
        self._remaining = length
        self._state = _State.BODY

    def _startDiscarding(self, length: int) -> None:
        self._remaining = length
        self._state = _State.DISCARD if length else _State.START

    def _body(self, out: list[Frame | FramingError]) -> bool:
        pos = self._pos
        end = pos + self._remaining
        if len(self._buf) < end:
            return False
        body = bytes(self._buf[pos:end])
        self._pos = end
        frame: Frame
        if self._isResponse:
            frame = Response(self._code, self._reason, self._pendingHeaders, body)
        else:
            frame = Request(self._method, self._target, self._pendingHeaders, body)
        object.__setattr__(frame, "seq", self._pendingSeq)
        out.append(frame)
        self._state = _State.START
        return True

    def _discard(self) -> bool:
        available = len(self._buf) - self._pos
        n = min(available, self._remaining)
        self._pos += n
        self._remaining -= n
        if self._remaining:
            return False
        self._state = _State.START
        return True


def _checkNoCR(line: bytes) -> None:
    """
    @raise FramingError: If C{line} holds a CR (bare: line ends are gone).
    """
    if b"\r" in line:
        raise FramingError(400, "bare CR in a line")


def _decode(data: bytes, what: str) -> str:
    """
    @return: C{data} decoded as UTF-8.
    @raise FramingError: If it is not valid UTF-8.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError(400, f"{what} is not valid UTF-8") from None


def _show(data: bytes) -> str:
    """
    @return: C{data} shortened, for error messages.
    """
    return repr(data[:64])
