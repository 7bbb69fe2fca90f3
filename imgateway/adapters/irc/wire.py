# -*- test-case-name: tests.test_irc_wire -*-
"""
IRC lines: parsing (with IRCv3 message tags) and serialising one line,
splitting and sanitising text into IRC payloads, mIRC formatting and CTCP
ACTION, and the byte budget of a C{PRIVMSG}. Shared by the IRC face and the
bridge to IRC networks; it knows nothing of either, nor of the reactor
(C{twisted.words.protocols.irc} is not imported: it installs a reactor at
import, and its server helpers let CR and LF through).

Lines here are always without their terminating CR LF: L{parseLine} takes
one and L{serialise} returns one; the caller adds C{b"\\r\\n"} when it
writes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from attrs import field, frozen

__all__ = [
    "IRCMessage",
    "IRCParseError",
    "LineReader",
    "LineTooLong",
    "MAX_LINE_BYTES",
    "MAX_CLIENT_TAG_BYTES",
    "TRUNCATION_MARK",
    "ctcpAction",
    "lineBudget",
    "makeAction",
    "parseLine",
    "serialise",
    "splitPrefix",
    "splitText",
    "stripFormatting",
]

#: The longest IRC line, CR LF included, without its tags (RFC 1459 2.3).
MAX_LINE_BYTES = 512

#: The longest tag section a client may send, its C{@} and the space after
#: it included (IRCv3 message-tags: 4094 bytes of tags plus 2).
MAX_CLIENT_TAG_BYTES = 4096

#: What ends the last line of a text that L{splitText} had to cut.
TRUNCATION_MARK = " [...]"


class IRCParseError(ValueError):
    """
    A line that is not an IRC message: empty, without a command, or holding
    CR, LF or NUL.
    """


class LineTooLong(ValueError):
    """
    A line longer than L{LineReader} accepts.
    """


def _tagsConverter(tags: Mapping[str, str]) -> Mapping[str, str]:
    return dict(tags)


def _paramsConverter(params: Iterable[str]) -> tuple[str, ...]:
    return tuple(params)


@frozen
class IRCMessage:
    """
    One IRC message.

    @ivar tags: IRCv3 message tags, unescaped; a tag without a value maps to
        C{""}.
    @ivar prefix: The source (C{nick!user@host} or a server name) without
        its colon, or C{None}.
    @ivar command: The command (C{PRIVMSG}) or numeric (C{001}), as it came
        (L{parseLine} does not change its case).
    @ivar params: The parameters, the trailing one last, without its colon.
    """

    tags: Mapping[str, str] = field(factory=dict, converter=_tagsConverter)
    prefix: str | None = None
    command: str = ""
    params: tuple[str, ...] = field(default=(), converter=_paramsConverter)


_TAG_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_COMMAND = re.compile(r"[A-Za-z]+|[0-9]{3}\Z")


def _unescapeTag(value: str) -> str:
    if "\\" not in value:
        return value
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 1
            if i < len(value):
                # An unknown escape stands for the character itself; a
                # backslash at the end stands for nothing (message-tags).
                out.append(_TAG_UNESCAPE.get(value[i], value[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _decode(line: bytes, fallback: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return line.decode(fallback)
    except (UnicodeDecodeError, LookupError):
        return line.decode("utf-8", "replace")


def parseLine(line: bytes, fallback: str = "latin-1") -> IRCMessage:
    """
    Parse one IRC line (without its CR LF).

    Parameters are separated by one or more spaces (RFC 1459); a parameter
    starting with C{:} takes the rest of the line. The line is decoded as
    UTF-8, and as C{fallback} if it is not valid UTF-8 (as C{UTF-8} with
    replacement characters if that fails too), so no byte sequence makes it
    raise anything but L{IRCParseError}.

    @param line: The line's bytes.
    @param fallback: The codec for lines that are not UTF-8.
    @return: The message.
    @raise IRCParseError: If the line is empty or only spaces, holds CR, LF
        or NUL, or has no valid command (letters, or three digits).
    """
    if b"\r" in line or b"\n" in line or b"\0" in line:
        raise IRCParseError("CR, LF or NUL inside an IRC line")
    text = _decode(line, fallback)
    tags: dict[str, str] = {}
    rest = text.lstrip(" ")
    if rest.startswith("@"):
        tagText, _, rest = rest[1:].partition(" ")
        for item in tagText.split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = _unescapeTag(value)
        rest = rest.lstrip(" ")
    prefix: str | None = None
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
        if not prefix:
            raise IRCParseError("empty prefix")
        rest = rest.lstrip(" ")
    command, _, rest = rest.partition(" ")
    if not command:
        raise IRCParseError("no command")
    if not _COMMAND.fullmatch(command):
        raise IRCParseError(f"invalid command {command[:20]!r}")
    params: list[str] = []
    while True:
        rest = rest.lstrip(" ")
        if not rest:
            break
        if rest.startswith(":"):
            params.append(rest[1:])
            break
        param, _, rest = rest.partition(" ")
        params.append(param)
    return IRCMessage(tags, prefix, command, tuple(params))


def _refuseBreaks(part: str, what: str) -> None:
    if "\r" in part or "\n" in part or "\0" in part:
        raise ValueError(f"CR, LF or NUL in the {what} of an IRC message")


def serialise(message: IRCMessage) -> bytes:
    """
    Write one IRC message as a line, in UTF-8, without CR LF.

    Tag values are escaped (message-tags); the last parameter gets a colon
    only when it needs one (empty, holding a space, or starting with C{:}).

    @raise ValueError: If any part holds CR, LF or NUL (tag values but NUL
        excepted: they are escaped), a tag key is empty or holds C{=}, C{;}
        or a space, the prefix is empty or holds a space, the command is not
        letters or three digits, or a parameter but the last is empty,
        holds a space or starts with C{:}.
    """
    parts: list[str] = []
    if message.tags:
        items = []
        for key, value in message.tags.items():
            _refuseBreaks(key, "tag key")
            if not key or any(c in key for c in "=; "):
                raise ValueError(f"invalid tag key {key!r}")
            if "\0" in value:
                raise ValueError("NUL in a tag value")
            if value:
                items.append(key + "=" + "".join(_TAG_ESCAPE.get(c, c) for c in value))
            else:
                items.append(key)
        parts.append("@" + ";".join(items))
    if message.prefix is not None:
        _refuseBreaks(message.prefix, "prefix")
        if not message.prefix or " " in message.prefix:
            raise ValueError(f"invalid prefix {message.prefix!r}")
        parts.append(":" + message.prefix)
    if not _COMMAND.fullmatch(message.command):
        raise ValueError(f"invalid command {message.command!r}")
    parts.append(message.command)
    params = message.params
    for i, param in enumerate(params):
        _refuseBreaks(param, "parameters")
        if i < len(params) - 1:
            if not param or " " in param or param.startswith(":"):
                raise ValueError(f"invalid middle parameter {param!r}")
            parts.append(param)
        elif not param or " " in param or param.startswith(":"):
            parts.append(":" + param)
        else:
            parts.append(param)
    return " ".join(parts).encode("utf-8")


def splitPrefix(prefix: str) -> tuple[str, str, str]:
    """
    Split a message source C{nick!user@host} into its parts; a part that is
    missing is C{""} (C{nick@host} has no user; a server name comes back
    as the nick, with neither).

    @return: C{(nick, user, host)}.
    """
    rest, _, host = prefix.partition("@")
    nick, _, user = rest.partition("!")
    return (nick, user, host)


# Formatting codes (modern.ircdocs.horse/formatting): bold, italics,
# underline, strikethrough, monospace, reverse, reset; colour with up to two
# digits of foreground and, after a comma, of background; hex colour.
_FORMATTING = re.compile(
    r"\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?"
    r"|\x04(?:[0-9A-Fa-f]{6}(?:,[0-9A-Fa-f]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)

#: The C0 controls that a text may carry to IRC: CTCP's C{\x01}, the
#: formatting codes above and tab. Every other control character goes.
_KEPT_CONTROLS = frozenset("\x01\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f\t")

_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")


def stripFormatting(text: str) -> str:
    """
    Remove mIRC formatting: colours (C{\\x03} with its digits, C{\\x04}
    with its hex digits), bold, italics, underline, strikethrough,
    monospace, reverse and reset.
    """
    return _FORMATTING.sub("", text)


def _clean(line: str) -> str:
    return "".join(
        c
        for c in line
        if c in _KEPT_CONTROLS or unicodedata.category(c) not in ("Cc", "Cs")
    )


def _cut(line: str, budget: int) -> tuple[str, str]:
    """
    Split C{line} into a head of at most C{budget} UTF-8 bytes, ending after
    a space when one falls in the head's second half, and the rest.
    """
    size = 0
    end = 0
    for end, c in enumerate(line):
        size += len(c.encode("utf-8"))
        if size > budget:
            break
    else:
        return line, ""
    space = line.rfind(" ", 0, end)
    if space >= end // 2:
        end = space + 1
    return line[:end], line[end:]


def splitText(text: str, budget: int, maxLines: int) -> tuple[list[str], bool]:
    """
    Make IRC payloads of a text: one per line of the text, each at most
    C{budget} bytes of UTF-8, cut on character boundaries, preferably just
    after a space; a cut keeps every character, so that the payloads joined
    give back each line.

    Line breaks (CR LF, CR, LF, VT, FF, NEL, U+2028, U+2029) separate lines;
    empty lines are dropped; other control characters are removed, but
    CTCP's C{\\x01}, the formatting codes and tab, which the caller handles.
    So no CR, LF or NUL is ever in a payload.

    @param text: The text.
    @param budget: The most bytes of one payload (see L{lineBudget}); at
        least 16.
    @param maxLines: The most payloads; at least 1.
    @return: C{(payloads, truncated)}: when the text needed more than
        C{maxLines} payloads, the first C{maxLines}, the last one cut to end
        with L{TRUNCATION_MARK}, and C{True}.
    @raise ValueError: If C{budget} or C{maxLines} is too small.
    """
    if budget < 16:
        raise ValueError(f"an IRC payload budget of {budget} bytes is too small")
    if maxLines < 1:
        raise ValueError("maxLines must be at least 1")
    out: list[str] = []
    for line in _LINE_BREAK.split(text):
        rest = _clean(line)
        while rest:
            if len(out) == maxLines:
                markBytes = len(TRUNCATION_MARK.encode("utf-8"))
                head, _ = _cut(out[-1], budget - markBytes)
                out[-1] = head + TRUNCATION_MARK
                return out, True
            head, rest = _cut(rest, budget)
            out.append(head)
    return out, False


_ACTION = "\x01ACTION"


def ctcpAction(text: str) -> str | None:
    """
    @return: The text of a CTCP ACTION (C{"\\x01ACTION waves\\x01"} is
        C{"waves"}; the closing C{\\x01} may be missing), or C{None} if
        C{text} is not one.
    """
    if not text.startswith(_ACTION):
        return None
    rest = text[len(_ACTION) :]
    if rest and rest[0] not in " \x01":
        return None
    if rest.endswith("\x01"):
        rest = rest[:-1]
    return rest[1:] if rest.startswith(" ") else rest


def makeAction(text: str) -> str:
    """
    @return: The CTCP ACTION (C{/me}) that says C{text}.
    """
    return f"{_ACTION} {text}\x01"


def lineBudget(target: str, prefix: str) -> int:
    """
    The bytes left for the payload of C{PRIVMSG target :payload} once the
    server has added C{:prefix } in front, within L{MAX_LINE_BYTES} (CR LF
    included).

    @param target: The nick or channel the message goes to.
    @param prefix: The source the receiving server will put in front:
        C{nick!user@host} (a leading colon and surrounding spaces are
        ignored). Give the longest the network may use (its real host, or
        the longest its ISUPPORT allows) when unsure.
    """
    prefix = prefix.strip(" ").lstrip(":")
    overhead = f":{prefix} PRIVMSG {target} :\r\n"
    return MAX_LINE_BYTES - len(overhead.encode("utf-8"))


class LineReader:
    """
    Cuts a byte stream into IRC lines (without CR LF; a line ends at LF,
    and a CR before it is dropped), holding at most C{maxLength} bytes of a
    line that has not ended yet.

    @ivar maxLength: The longest line, without its CR LF.
    """

    def __init__(self, maxLength: int) -> None:
        self.maxLength = maxLength
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        Take bytes from the wire.

        @return: The lines they complete.
        @raise LineTooLong: If a line (ended or not) is longer than
            C{maxLength}; the reader is then of no further use.
        """
        self._buffer += data
        lines = self._buffer.split(b"\n")
        self._buffer = lines.pop()
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.maxLength:
                raise LineTooLong(f"IRC line longer than {self.maxLength} bytes")
            out.append(line)
        # A line still coming may hold its CR already.
        if len(self._buffer) > self.maxLength + 1:
            raise LineTooLong(f"IRC line longer than {self.maxLength} bytes")
        return out
