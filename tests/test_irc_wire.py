# -*- test-case-name: tests.test_irc_wire -*-
"""
Tests for L{imgateway.adapters.irc.wire}: the IRC line parser and
serialiser against the community's shared parser test data (the
C{irc-parser-tests} package), hostile lines, text splitting at its
boundaries, formatting, CTCP ACTION, the payload budget and the line
reader.
"""

from __future__ import annotations

from typing import Any

from parser_tests import data as parserData
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.irc.wire import (
    MAX_LINE_BYTES,
    TRUNCATION_MARK,
    IRCMessage,
    IRCParseError,
    LineReader,
    LineTooLong,
    ctcpAction,
    lineBudget,
    makeAction,
    parseLine,
    serialise,
    splitPrefix,
    splitText,
    stripFormatting,
)


def _atoms(message: IRCMessage) -> dict[str, Any]:
    return {
        "tags": dict(message.tags),
        "source": message.prefix,
        "verb": message.command,
        "params": list(message.params),
    }


def _expected(atoms: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": atoms.get("tags") or {},
        "source": atoms.get("source"),
        "verb": atoms.get("verb"),
        "params": atoms.get("params") or [],
    }


class SharedParserDataTests(SynchronousTestCase):
    """
    The shared IRC parser test data (ircdocs/parser-tests, shipped as the
    C{irc-parser-tests} package) passes.
    """

    def test_msgSplit(self) -> None:
        """
        Every line of C{msg-split} parses into its atoms: tags unescaped,
        source, verb, middle and trailing parameters, runs of spaces.
        """
        cases = parserData.msg_split["tests"]
        self.assertGreater(len(cases), 30)
        for case in cases:
            message = parseLine(case["input"].encode("utf-8"))
            self.assertEqual(_atoms(message), _expected(case["atoms"]), case["input"])

    def test_msgJoin(self) -> None:
        """
        Every message of C{msg-join} serialises into one of the lines the
        data accepts for it.
        """
        cases = parserData.msg_join["tests"]
        self.assertGreater(len(cases), 10)
        for case in cases:
            atoms = _expected(case["atoms"])
            message = IRCMessage(atoms["tags"], atoms["source"], atoms["verb"], tuple(atoms["params"]))
            line = serialise(message).decode("utf-8")
            self.assertIn(line, case["matches"], case.get("desc"))

    def test_msgJoinRoundTrip(self) -> None:
        """
        Every C{msg-join} message parses back from its serialisation as it
        was.
        """
        for case in parserData.msg_join["tests"]:
            atoms = _expected(case["atoms"])
            message = IRCMessage(atoms["tags"], atoms["source"], atoms["verb"], tuple(atoms["params"]))
            self.assertEqual(parseLine(serialise(message)), message, case.get("desc"))

    def test_userhostSplit(self) -> None:
        """
        Every source of C{userhost-split} splits into its nick, user and
        host.
        """
        cases = parserData.userhost_split["tests"]
        self.assertGreater(len(cases), 5)
        for case in cases:
            atoms = case["atoms"]
            expected = (atoms.get("nick", ""), atoms.get("user", ""), atoms.get("host", ""))
            self.assertEqual(splitPrefix(case["source"]), expected, case["source"])


class ParseLineTests(SynchronousTestCase):
    """
    L{parseLine} reads any bytes as a message or refuses them with
    L{IRCParseError}.
    """

    def test_latin1(self) -> None:
        """
        A line that is not UTF-8 is decoded with the fallback charset.
        """
        message = parseLine(b"PRIVMSG bob :caf\xe9")
        self.assertEqual(message.params, ("bob", "caf\xe9"))
        message = parseLine(b"PRIVMSG bob :caf\xe9", fallback="cp1252")
        self.assertEqual(message.params, ("bob", "caf\xe9"))

    def test_badFallback(self) -> None:
        """
        A fallback codec that cannot decode the line, or does not exist,
        gives replacement characters, not an exception.
        """
        self.assertEqual(parseLine(b"PRIVMSG bob :\xff", fallback="ascii").params[1], "\ufffd")
        self.assertEqual(parseLine(b"PRIVMSG bob :\xff", fallback="no-such-codec").params[1], "\ufffd")

    def test_utf8(self) -> None:
        """
        UTF-8 is decoded as such.
        """
        self.assertEqual(parseLine("PRIVMSG bob :\u00e9\U0001f600".encode()).params[1], "\u00e9\U0001f600")

    def test_garbage(self) -> None:
        """
        Empty lines, lines of spaces, a prefix or tags without a command,
        an empty prefix, an invalid command, and CR, LF or NUL inside a
        line raise L{IRCParseError}, a L{ValueError}.
        """
        for line in [
            b"",
            b"   ",
            b":prefix",
            b":prefix ",
            b"@a=b",
            b"@a=b :p",
            b": PRIVMSG x",
            b"PRIV/MSG x",
            b"1234 x",
            b"\x01 x",
            b"PRIVMSG x :a\rQUIT :injected",
            b"PRIVMSG x :a\nQUIT",
            b"PRIVMSG x :a\0b",
        ]:
            self.assertRaises(IRCParseError, parseLine, line)
        self.assertTrue(issubclass(IRCParseError, ValueError))

    def test_everyByte(self) -> None:
        """
        A line made of any byte value parses or raises L{IRCParseError};
        nothing else.
        """
        for b in range(256):
            for line in [bytes([b]), b"PRIVMSG x :" + bytes([b]), b"@" + bytes([b]) + b" PING", bytes([b]) * 3]:
                try:
                    parseLine(line)
                except IRCParseError:
                    pass


class SerialiseTests(SynchronousTestCase):
    """
    L{serialise} never writes a line break, and refuses what would change
    the message's meaning.
    """

    def test_refusesBreaks(self) -> None:
        """
        CR, LF or NUL in the prefix or any parameter is refused.
        """
        for bad in ["a\rb", "a\nb", "a\0b", "x\r\nQUIT :x"]:
            self.assertRaises(ValueError, serialise, IRCMessage({}, None, "PRIVMSG", ("bob", bad)))
            self.assertRaises(ValueError, serialise, IRCMessage({}, None, "PRIVMSG", (bad, "hi")))
            self.assertRaises(ValueError, serialise, IRCMessage({}, bad, "PRIVMSG", ("bob", "hi")))

    def test_tagValuesEscaped(self) -> None:
        """
        CR, LF, semicolons, spaces and backslashes in tag values are
        escaped, and parse back; NUL is refused.
        """
        message = IRCMessage({"k": "a;b c\\d\r\ne"}, None, "TAGMSG", ("bob",))
        line = serialise(message)
        self.assertEqual(line, b"@k=a\\:b\\sc\\\\d\\r\\ne TAGMSG bob")
        self.assertEqual(parseLine(line), message)
        self.assertRaises(ValueError, serialise, IRCMessage({"k": "\0"}, None, "TAGMSG", ()))

    def test_badTagKeys(self) -> None:
        """
        Tag keys that are empty or hold C{=}, C{;}, a space or a line
        break are refused.
        """
        for key in ["", "a=b", "a;b", "a b", "a\nb"]:
            self.assertRaises(ValueError, serialise, IRCMessage({key: "v"}, None, "TAGMSG", ()))

    def test_middleParameters(self) -> None:
        """
        A middle parameter that is empty, holds a space or starts with a
        colon is refused; the last gets a colon exactly when it needs one.
        """
        for bad in ["", "a b", ":a"]:
            self.assertRaises(ValueError, serialise, IRCMessage({}, None, "MODE", (bad, "x")))
        self.assertEqual(serialise(IRCMessage({}, None, "PRIVMSG", ("bob", "hi"))), b"PRIVMSG bob hi")
        self.assertEqual(serialise(IRCMessage({}, None, "PRIVMSG", ("bob", "hi there"))), b"PRIVMSG bob :hi there")
        self.assertEqual(serialise(IRCMessage({}, None, "PRIVMSG", ("bob", ":)"))), b"PRIVMSG bob ::)")
        self.assertEqual(serialise(IRCMessage({}, None, "PRIVMSG", ("bob", ""))), b"PRIVMSG bob :")

    def test_badPrefixOrCommand(self) -> None:
        """
        An empty prefix, one holding a space, and a command that is not
        letters or three digits are refused.
        """
        for prefix in ["", "a b"]:
            self.assertRaises(ValueError, serialise, IRCMessage({}, prefix, "PING", ()))
        for command in ["", "PRIV MSG", "12", "1234", "PRIVMSG\r\n"]:
            self.assertRaises(ValueError, serialise, IRCMessage({}, None, command, ()))

    def test_utf8(self) -> None:
        """
        The line is UTF-8.
        """
        self.assertEqual(serialise(IRCMessage({}, "a", "PRIVMSG", ("b", "\u00e9"))), b":a PRIVMSG b \xc3\xa9")


class SplitTextTests(SynchronousTestCase):
    """
    L{splitText} makes safe payloads of any text, at its boundaries.
    """

    def assertPayloads(self, lines: list[str], budget: int) -> None:
        for line in lines:
            self.assertLessEqual(len(line.encode("utf-8")), budget)
            self.assertTrue(line)
            for c in "\r\n\0":
                self.assertNotIn(c, line)

    def test_short(self) -> None:
        """
        A short text is one payload, not truncated; an empty text none.
        """
        self.assertEqual(splitText("hello", 100, 5), (["hello"], False))
        self.assertEqual(splitText("", 100, 5), ([], False))
        self.assertEqual(splitText("\r\n\n", 100, 5), ([], False))

    def test_exactBudget(self) -> None:
        """
        A line of exactly C{budget} bytes is one payload; one byte more
        makes two.
        """
        self.assertEqual(splitText("a" * 100, 100, 5), (["a" * 100], False))
        self.assertEqual(splitText("a" * 101, 100, 5), (["a" * 100, "a"], False))

    def test_utf8AcrossBudgetAtEveryPosition(self) -> None:
        """
        A multi-byte character (2, 3 and 4 bytes) placed at every position
        around the budget is never cut: each payload is valid UTF-8 within
        the budget, and the payloads joined are the text.
        """
        budget = 40
        for char in ["\u00e9", "\u20ac", "\U0001f600"]:
            for position in range(budget + 8):
                text = "a" * position + char + "b" * (budget + 5)
                lines, truncated = splitText(text, budget, 10)
                self.assertFalse(truncated)
                self.assertPayloads(lines, budget)
                self.assertEqual("".join(lines), text, (char, position))
                for line in lines:
                    line.encode("utf-8").decode("utf-8")

    def test_wordBoundary(self) -> None:
        """
        A cut falls just after a space when one is in the second half of
        the payload; nothing is lost.
        """
        text = "word " * 30
        lines, _ = splitText(text, 32, 10)
        self.assertEqual("".join(lines), text)
        for line in lines[:-1]:
            self.assertTrue(line.endswith(" "), line)

    def test_2000Characters(self) -> None:
        """
        A 2,000-character message is split into payloads within the
        budget that join back to it, in order.
        """
        text = "".join(chr(0x61 + n % 26) + ("" if n % 7 else " ") for n in range(1750))[:2000]
        self.assertEqual(len(text), 2000)
        budget = lineBudget("alice", "bob!bob@example.org")
        lines, truncated = splitText(text, budget, 10)
        self.assertFalse(truncated)
        self.assertPayloads(lines, budget)
        self.assertEqual("".join(lines), text)
        self.assertEqual(len(lines), 5)

    def test_injectionStaysText(self) -> None:
        """
        Embedded C{\\r\\nQUIT :x} becomes a line of text, and neither it
        nor a lone CR or a NUL can reach the wire as a command.
        """
        lines, _ = splitText("hi\r\nQUIT :x", 100, 5)
        self.assertEqual(lines, ["hi", "QUIT :x"])
        lines, _ = splitText("hi\rQUIT :x\0\nJOIN #x", 100, 5)
        self.assertEqual(lines, ["hi", "QUIT :x", "JOIN #x"])
        for line in lines:
            wire = serialise(IRCMessage({}, None, "PRIVMSG", ("bob", line)))
            self.assertEqual(parseLine(wire).params, ("bob", line))

    def test_controlsRemoved(self) -> None:
        """
        C0 and C1 controls other than CTCP, formatting and tab are removed;
        those are kept.
        """
        lines, _ = splitText("a\x00\x05\x07\x1b\x7f\x9fb\x01\x02\x03\x0f\x1d\x1f\tc", 100, 5)
        self.assertEqual(lines, ["ab\x01\x02\x03\x0f\x1d\x1f\tc"])

    def test_lineBreaks(self) -> None:
        """
        Every kind of line break separates payloads; empty lines are
        dropped.
        """
        lines, _ = splitText("a\r\nb\rc\nd\x0be\x0cf\x85g\u2028h\u2029i\n\n", 100, 20)
        self.assertEqual(lines, list("abcdefghi"))

    def test_maxLinesBoundary(self) -> None:
        """
        C{maxLines} payloads are sent whole; one more and the last is cut
        to end with the truncation mark.
        """
        self.assertEqual(splitText("a\nb\nc", 100, 3), (["a", "b", "c"], False))
        lines, truncated = splitText("a\nb\nc\nd", 100, 3)
        self.assertTrue(truncated)
        self.assertEqual(lines, ["a", "b", "c" + TRUNCATION_MARK])

    def test_truncatedWithinBudget(self) -> None:
        """
        The marked last payload stays within the budget.
        """
        lines, truncated = splitText("\u20ac" * 500, 50, 2)
        self.assertTrue(truncated)
        self.assertEqual(len(lines), 2)
        self.assertPayloads(lines, 50)
        self.assertTrue(lines[-1].endswith(TRUNCATION_MARK))

    def test_smallBudget(self) -> None:
        """
        A budget too small for a character and the mark, or no lines at
        all, is refused.
        """
        self.assertRaises(ValueError, splitText, "x", 15, 1)
        self.assertRaises(ValueError, splitText, "x", 100, 0)


class FormattingTests(SynchronousTestCase):
    """
    L{stripFormatting}, L{ctcpAction} and L{makeAction}.
    """

    def test_strip(self) -> None:
        """
        Colours with their digits, hex colours, bold, italics, underline,
        strikethrough, monospace, reverse and reset are removed; a comma
        not followed by a digit stays.
        """
        self.assertEqual(
            stripFormatting("\x02b\x02 \x0304red\x03 \x0312,01x \x03,y \x1di\x1f\x1e\x11\x16\x0f \x04ff0000hex \x035,z"),
            "b red x ,y i hex ,z",
        )

    def test_action(self) -> None:
        """
        A CTCP ACTION gives its text, with or without its closing C{\\x01};
        other text gives C{None}; L{makeAction} is the inverse.
        """
        self.assertEqual(ctcpAction("\x01ACTION waves\x01"), "waves")
        self.assertEqual(ctcpAction("\x01ACTION waves"), "waves")
        self.assertEqual(ctcpAction("\x01ACTION\x01"), "")
        self.assertIsNone(ctcpAction("\x01ACTIONS x\x01"))
        self.assertIsNone(ctcpAction("\x01VERSION\x01"))
        self.assertIsNone(ctcpAction("hello"))
        self.assertEqual(makeAction("waves"), "\x01ACTION waves\x01")
        self.assertEqual(ctcpAction(makeAction("waves hello")), "waves hello")


class LineBudgetTests(SynchronousTestCase):
    """
    L{lineBudget} counts what the server adds.
    """

    def test_fullLine(self) -> None:
        """
        A payload of exactly the budget makes a line of exactly 512 bytes,
        CR LF included, with the prefix the server adds.
        """
        prefix = "bob!~bob@host.example.org"
        budget = lineBudget("#chan\u00e9", prefix)
        payload = "x" * (budget - 1) + " "
        line = serialise(IRCMessage({}, prefix, "PRIVMSG", ("#chan\u00e9", payload))) + b"\r\n"
        self.assertEqual(len(line), MAX_LINE_BYTES)
        self.assertEqual(lineBudget("#chan\u00e9", ":" + prefix + " "), budget)


class LineReaderTests(SynchronousTestCase):
    """
    L{LineReader} cuts bytes into lines, holding a bounded line.
    """

    def test_lines(self) -> None:
        """
        Lines end at LF, with or without CR; bytes split anywhere, even
        inside a UTF-8 character, make the same lines.
        """
        data = "PING a\r\nPRIVMSG b :\u00e9\nX\r\n".encode()
        for cut in range(len(data)):
            reader = LineReader(100)
            lines = reader.feed(data[:cut]) + reader.feed(data[cut:])
            self.assertEqual(lines, [b"PING a", "PRIVMSG b :\u00e9".encode(), b"X"])

    def test_boundary(self) -> None:
        """
        A line of C{maxLength} bytes is accepted, ended or not; one byte
        more raises L{LineTooLong}, ended or not.
        """
        self.assertEqual(LineReader(10).feed(b"a" * 10 + b"\r\n"), [b"a" * 10])
        self.assertEqual(LineReader(10).feed(b"a" * 10 + b"\r"), [])
        self.assertRaises(LineTooLong, LineReader(10).feed, b"a" * 11 + b"\r\n")
        self.assertRaises(LineTooLong, LineReader(10).feed, b"a" * 12)
