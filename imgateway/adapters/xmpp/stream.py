# -*- test-case-name: tests.test_xmpp_stream -*-
"""
A hardened XMPP XML stream: Twisted's L{XmlStream} with the limits that keep
one hostile peer from stalling the reactor (C{../shared/TWISTED-NOTES.md}
section 1.6).

- No DTD, comment or processing instruction, and only XML 1.0 in UTF-8: the
  stream is closed with C{<restricted-xml/>} (RFC 6120 section 11.1). A DTD
  is refused before expat expands a single entity.
- expat buffers character data (C{buffer_text}), so text arrives in large
  chunks rather than one per line or entity, which makes domish's
  text accumulation linear in practice. The buffer is
  L{TEXT_BUFFER_CHARS} characters, not pyexpat's 8,192: every stream
  keeps one for as long as it is open, idle or not.
- Each stanza is capped in bytes and elements: small before authentication
  (8 KiB, 32 elements, as ejabberd), larger after (256 KiB, as Prosody).
  Past a cap the stream is closed with C{<policy-violation/>} and
  C{<stanza-too-big xmlns='urn:xmpp:errors'/>}. Bytes are counted from
  expat's positions, so the cap does not depend on how the peer's bytes
  are cut into reads (Twisted's own C{maxStanzaSize} is only checked
  between reads and lets a stanza that arrives in one read through).
- Parsed stanzas, not reads, are rate-limited by a token bucket: what
  arrives faster than the allowance waits in a bounded queue and is
  handled at the configured rate, while reading from the peer is paused
  (as Prosody's mod_limits); so a thousand stanzas in one TCP write are
  handled at the rate, not at once. Past C{maxQueuedStanzas} waiting
  stanzas the stream is closed with C{<policy-violation/>}.
- A stream restart (STARTTLS, SASL success) discards whatever the peer sent
  after the element that caused it in the same read, and whatever still
  waits in the queue: nothing sent before the restart is handled as if it
  had come after it (the CVE-2011-0411 class of STARTTLS injection).
- The caps are advertised with XEP-0478 stream limits
  (L{HardenedXmlStream.limitsFeature}).
- Characters that XML 1.0 forbids (C0 controls, lone surrogates, U+FFFE,
  U+FFFF) never reach the wire: they are removed from everything sent.
- A peer's closing tag is answered with ours before the connection closes
  (RFC 6120 section 4.4); the closing tag is sent once at most.
- An idle stream keeps no parser (about 13 KiB of expat and domish state
  each): once no byte has come for L{StreamLimits.idleParserSeconds} (one
  to two such periods) and nothing is open between two stanzas, the
  parser is dropped; the next bytes get a new one, first given the peer's
  own stream header (its namespace declarations only), so they parse as
  they would have. Every cap above holds across the drop.
- A stream may ask for light stanzas (L{HardenedXmlStream.lightStanzas}):
  the commonest stanzas (a C{<message>} or C{<presence>} of the default
  namespace whose children hold only text) are then built as
  L{LightStanza}s, not domish trees, and handed on with the same checks and
  at the same points; anything else in such a stanza (a namespace
  declaration, a namespaced attribute, a grandchild, another name) turns
  it into the domish tree domish would have built, and parsing goes on
  the domish way. L{LightStanza.element} builds that tree on demand.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python import failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT

from imgateway.adapters.base import SendQueueGuard
from imgateway.core.ratelimit import TokenBucket

__all__ = [
    "NS_STREAM_LIMITS",
    "NS_XMPP_ERRORS",
    "HardenedXmlStream",
    "IDLE_PARSER_SECONDS",
    "LightStanza",
    "RestrictedXML",
    "StreamLimits",
    "TEXT_BUFFER_CHARS",
    "xmlAttribute",
    "xmlSafe",
    "xmlText",
    "xmlTextElement",
]

#: Application-specific stream error conditions (XEP-0205, RFC 6120 4.9.4).
NS_XMPP_ERRORS = "urn:xmpp:errors"

#: XEP-0478 stream limits, advertised in stream features.
NS_STREAM_LIMITS = "urn:xmpp:stream-limits:0"

# A token, less a rounding error: the bucket refills by float arithmetic,
# and a queued stanza must not wait a second turn for 1e-16 of a token.
_TOKEN = 1.0 - 1e-9

# Characters not allowed in XML 1.0 documents (section 2.2).
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xmlSafe(text: str) -> str:
    """
    Remove the characters XML 1.0 does not allow (IRC colour codes, NUL,
    ...), so that a peer's parser never chokes on what we send.
    """
    return _ILLEGAL.sub("", text)


class RestrictedXML(Exception):
    """
    The peer sent XML that XMPP forbids (a DTD, a comment, a processing
    instruction, another encoding or version).
    """


class _StanzaTooBig(Exception):
    """
    More bytes than the stanza cap, in a stanza or between two stanzas.
    """


@frozen
class StreamLimits:
    """
    Caps applied to one XML stream.

    @ivar preAuthStanzaBytes: Largest stanza before the peer is
        authenticated, in bytes as received since the previous stanza
        ended, so including the whitespace before it (and the XML
        declaration and stream header, for the first stanza of a stream).
        A stanza ends at the first byte of its closing tag, or after the
        last byte of an empty-element tag such as C{<presence/>}: a closing
        tag counts toward the next stanza. The count is exact whatever the
        reads: a stanza is refused at its end, and bytes still open are
        checked after every read.
    @ivar preAuthElements: Most elements in one stanza before authentication.
    @ivar stanzaBytes: Largest stanza once authenticated, counted the same
        way.
    @ivar elements: Most elements in one stanza once authenticated.
    @ivar stanzasPerSecond: Sustained stanza rate allowed.
    @ivar stanzaBurst: Stanzas allowed in a burst.
    @ivar maxQueuedStanzas: Stanzas parsed but not yet handled (waiting for
        the rate limit) at most; one more closes the stream with
        C{<policy-violation/>}. Reading is paused while any wait, so only
        stanzas that arrive together (in one read) fill the queue.
    @ivar sendQueueBytes: What may be queued for a peer that does not read,
        beyond the socket's own buffer; past it the connection is dropped
        (L{imgateway.adapters.base.SendQueueGuard}).
    @ivar idleParserSeconds: A stream that received no byte for this long
        (checked every so many seconds) and has nothing open between two
        stanzas drops its parser until its next bytes (see the module
        docstring); C{0} keeps every parser. The c2s face's configuration
        sets it (C{idle_parser_seconds}, L{IDLE_PARSER_SECONDS} by
        default).
    """

    preAuthStanzaBytes: int = 8192
    preAuthElements: int = 32
    stanzaBytes: int = 262144
    elements: int = 1000
    stanzasPerSecond: float = 20.0
    stanzaBurst: int = 50
    maxQueuedStanzas: int = 1000
    sendQueueBytes: int = 1048576
    idleParserSeconds: float = 0.0


def _refuse(what: str) -> Any:
    def handler(*args: object) -> None:
        raise RestrictedXML(f"{what} not allowed (RFC 6120 section 11.1)")

    return handler


# The handlers every parser gets: made once, not once per stream (an idle
# stream kept its own four closures).
_REFUSE_DTD = _refuse("DTD")
_REFUSE_ENTITY = _refuse("entity declaration")
_REFUSE_COMMENT = _refuse("comment")
_REFUSE_PI = _refuse("processing instruction")


def _checkDeclaration(version: str | None, encoding: str | None, standalone: int) -> None:
    if version not in (None, "1.0"):
        raise RestrictedXML(f"XML version {version} not allowed; use 1.0")
    if encoding is not None and encoding.upper().replace("_", "-") not in ("UTF-8", "UTF8"):
        raise RestrictedXML(f"encoding {encoding} not allowed; use UTF-8")


#: Characters of text that expat gathers before handing them on (pyexpat's
#: C{buffer_size}; its default, 8,192, is kept by every idle stream).
TEXT_BUFFER_CHARS = 2048

#: Seconds without a byte after which a c2s stream drops its parser (the
#: default of C{[xmpp] idle_parser_seconds}): a new parser costs about 15
#: microseconds, an idle one about 13 KiB.
IDLE_PARSER_SECONDS = 2.0

#: What may follow the end of the last stanza for the parser to be dropped:
#: that stanza's closing tag (a complete token, already handled) and
#: whitespace between stanzas (which domish ignores). Anything else (a
#: stanza or a tag begun) keeps the parser.
_QUIET_TAIL = re.compile(rb"\A(?:</[^<>]*>)?[ \t\r\n]*\Z")

#: The bytes last received that a stream keeps, to find that tail: a
#: closing tag with a longer name keeps its parser, nothing worse.
_MAX_TAIL = 64


#: The namespace of light stanzas and of their children (the c2s default).
_LIGHT_URI = "jabber:client"

#: expat's names (namespace, a space, local name) of the top-level elements
#: that may be built light, and their local names.
_LIGHT_TOP = {f"{_LIGHT_URI} message": "message", f"{_LIGHT_URI} presence": "presence"}

_LIGHT_PREFIX = _LIGHT_URI + " "
_LIGHT_PREFIX_LENGTH = len(_LIGHT_PREFIX)


class _LightChild:
    """
    A child of a L{LightStanza}: an element of the stanza's namespace with
    only text in it.

    @ivar name: Its local name.
    @ivar attributes: Its attributes (none namespaced), as expat gave them.
    @ivar chunks: Its text, in the pieces expat gave it.
    """

    __slots__ = ("name", "attributes", "chunks")

    def __init__(self, name: str, attributes: dict[str, str]) -> None:
        self.name = name
        self.attributes = attributes
        self.chunks: list[str] = []


class LightStanza:
    """
    A stanza parsed without a domish tree, for the hot path (see the module
    docstring): a top-level element of C{jabber:client} that declares no
    namespace and has no namespaced attribute, whose children are elements
    of the same namespace, equally plain, holding only text.

    @ivar uri: Its namespace, C{jabber:client}.
    @ivar name: Its local name (C{message} or C{presence}).
    @ivar defaultUri: The default namespace in scope, as domish records it.
    @ivar attributes: Its attributes, as domish's C{Element.attributes}.
    @ivar children: Its content in order: text in the pieces expat gave it
        and L{_LightChild}ren.
    """

    __slots__ = ("name", "defaultUri", "attributes", "children", "_element")

    uri = _LIGHT_URI

    def __init__(self, name: str, defaultUri: str, attributes: dict[str, str]) -> None:
        self.name = name
        self.defaultUri = defaultUri
        self.attributes = attributes
        self.children: list[str | _LightChild] = []
        self._element: domish.Element | None = None

    def getAttribute(self, name: str, default: str | None = None) -> str | None:
        """
        An attribute's value, as domish's C{Element.getAttribute}.
        """
        return self.attributes.get(name, default)

    def childText(self, name: str) -> str | None:
        """
        The text of the first child called C{name}: what C{str()} gives of
        domish's element for it (C{""} when it holds none), or C{None}
        without such a child.
        """
        for child in self.children:
            if child.__class__ is _LightChild and child.name == name:
                chunks = child.chunks
                return chunks[0] if len(chunks) == 1 else "".join(chunks)
        return None

    def element(self) -> domish.Element:
        """
        The stanza as the domish tree domish's parser would have built from
        the same events (made once).
        """
        if self._element is None:
            self._element = self._build(False)[0]
        return self._element

    def _build(self, childOpen: bool) -> tuple[domish.Element, domish.Element | None]:
        """
        Build the domish tree, as domish's parser does it, event by event:
        a child that has ended no longer links to its parent (as domish's
        in L{_ElementStream._onEndElement}).

        @param childOpen: Whether the last child is still open (when the
            parser turns domish mid-stanza): it keeps its parent, to climb
            back up to when it ends.
        @return: The stanza's element, and that of its last child if that
            child is still open.
        """
        uri, defaultUri = _LIGHT_URI, self.defaultUri
        top = domish.Element((uri, self.name), defaultUri, self.attributes, {})
        last: domish.Element | None = None
        for item in self.children:
            if isinstance(item, str):
                top.addContent(item)
                continue
            last = domish.Element((uri, item.name), defaultUri, item.attributes, {})
            top.children.append(last)
            for chunk in item.chunks:
                last.addContent(chunk)
        if not childOpen or last is None:
            return top, None
        last.parent = top
        return top, last


def _tooManyElements() -> domish.ParserError:
    return domish.ParserError("Maximum element count exceeded")


class _ElementStream(domish.ExpatElementStream):
    """
    domish's expat element stream as an XMPP stream wants it: no DTD,
    comment or processing instruction, only XML 1.0 in UTF-8 (each raises
    L{RestrictedXML}); character data buffered by expat; the end of each
    stanza reported with its byte position, for the stanza cap; and, when
    L{light}, the commonest stanzas built as L{LightStanza}s.

    @ivar stanzaEnding: Called with expat's byte position when a stanza
        ends (the first byte of its closing tag, or after the last byte of
        an empty-element tag), before the stanza is handed on.
    @ivar lightEnded: Called, instead of C{stanzaEnding} and then
        C{ElementEvent}, with this parser, a light stanza that ends and
        that byte position.
    @ivar light: Whether to build light stanzas.
    """

    # Stanza bytes are counted by HardenedXmlStream (see its _checkSize):
    # domish's own count is only checked between reads, after being reset
    # at every stanza end, so it never sees a stanza that arrives in one
    # read.
    maxStanzaSize = sys.maxsize

    light = False

    def __init__(self) -> None:
        super().__init__()
        self.stanzaEnding: Callable[[int], None] = lambda position: None
        self.lightEnded: Callable[[_ElementStream, LightStanza, int], None] = lambda es, stanza, position: None
        # The light stanza being parsed, and its child still open.
        self._lightStanza: LightStanza | None = None
        self._lightChild: _LightChild | None = None
        parser = self.parser
        # The size first: setting it once the buffer exists reallocates it.
        parser.buffer_size = TEXT_BUFFER_CHARS
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = _REFUSE_DTD
        parser.EntityDeclHandler = _REFUSE_ENTITY
        parser.CommentHandler = _REFUSE_COMMENT
        parser.ProcessingInstructionHandler = _REFUSE_PI
        parser.XmlDeclHandler = _checkDeclaration

    def discard(self) -> None:
        """
        Let this parser go, now that it parses no more (an idle drop): its
        attributes are cleared, so that it is freed as soon as the last
        reference to it goes. Left as it is, it is in reference cycles
        (expat's handlers are its own bound methods, and the stream's
        handlers close over it), which only a full collection of the cyclic
        garbage collector frees; with thousands of sessions those come
        seldom, and when they come depends on how much the process
        allocated, so that expat's buffers and domish's state (about 13 KiB
        a parser) stayed, or not, for minutes.
        """
        self.__dict__.clear()

    @property
    def stanzaOpen(self) -> bool:
        """
        Whether a stanza has begun and not ended.
        """
        return self.currElem is not None or self._lightStanza is not None

    def _onStartElement(self, name: str, attrs: dict[str, str]) -> None:
        stanza = self._lightStanza
        if stanza is None:
            if self.light and self.currElem is None and self.documentStarted and not self.localPrefixes and name in _LIGHT_TOP:
                for key in attrs:
                    if " " in key:
                        break
                else:
                    # As domish counts, before anything else of the stanza.
                    self.elementCount += 1
                    if self.elementCount > self.maxElementCount:
                        raise _tooManyElements()
                    self._lightStanza = LightStanza(_LIGHT_TOP[name], self.defaultNsStack[-1], attrs)
                    return
            super()._onStartElement(name, attrs)
            return
        if self._lightChild is None and name.startswith(_LIGHT_PREFIX):
            local = name[_LIGHT_PREFIX_LENGTH:]
            if " " not in local:
                for key in attrs:
                    if " " in key:
                        break
                else:
                    self.elementCount += 1
                    if self.elementCount > self.maxElementCount:
                        raise _tooManyElements()
                    child = _LightChild(local, attrs)
                    stanza.children.append(child)
                    self._lightChild = child
                    return
        self._turnDomish()
        super()._onStartElement(name, attrs)

    def _turnDomish(self) -> None:
        """
        The light stanza being parsed turns out not to be one: build the
        domish tree of what was parsed of it, and go on the domish way.
        """
        stanza = self._lightStanza
        assert stanza is not None
        top, last = stanza._build(self._lightChild is not None)
        self.currElem = last if last is not None else top
        self._lightStanza = self._lightChild = None

    def _onCdata(self, data: str) -> None:
        stanza = self._lightStanza
        if stanza is None:
            super()._onCdata(data)
        elif self._lightChild is not None:
            self._lightChild.chunks.append(data)
        else:
            stanza.children.append(data)

    def _onStartNamespace(self, prefix: str | None, uri: str) -> None:
        if self._lightStanza is not None:
            self._turnDomish()
        super()._onStartNamespace(prefix, uri)

    def _onEndElement(self, name: str) -> None:
        stanza = self._lightStanza
        if stanza is not None:
            if self._lightChild is not None:
                self._lightChild = None
                return
            # As domish ends a stanza (stanzaEnding, then ElementEvent).
            self.lightEnded(self, stanza, self.parser.CurrentByteIndex)
            self._lightStanza = None
            self.elementCount = 0
            self.stanzaSize = 0
            return
        ended = self.currElem
        if ended is not None and ended.parent is None:
            self.stanzaEnding(self.parser.CurrentByteIndex)
        super()._onEndElement(name)
        if ended is not None:
            # The parser needed the link to climb back up; nothing else
            # reads it. Kept, each child of a stanza and the stanza would
            # make a reference cycle: every stanza would stay in memory
            # until the cyclic collector's next pass, and those passes
            # (milliseconds each, under load) were the XMPP face's longest
            # pauses. Without it a stanza is freed as soon as it is handled.
            ended.parent = None


class HardenedXmlStream(xmlstream.XmlStream):
    """
    An XMPP L{XmlStream} with the hardening described in the module
    docstring.

    @ivar limits: The L{StreamLimits} in force.
    @ivar clock: Times the rate limit's pauses.
    @ivar authenticated: Whether the peer is authenticated (and so gets the
        larger stanza caps); set it with L{setAuthenticated}.
    """

    log = Logger()

    #: Whether the commonest stanzas come to L{stanzaReceived} as
    #: L{LightStanza}s (see the module docstring) rather than domish trees.
    lightStanzas = False

    def __init__(self, authenticator: Any, limits: StreamLimits, clock: IReactorTime) -> None:
        super().__init__(authenticator)
        self.limits = limits
        self.clock = clock
        self.authenticated = False
        self._bucket = TokenBucket(limits.stanzasPerSecond, limits.stanzaBurst, clock)
        # Stanzas parsed but waiting for the rate limit (None while none
        # does: an empty deque holds a block of 0.6 KiB), and the call
        # that handles the next of them.
        self._queue: deque[domish.Element | LightStanza] | None = None
        self._paused: IDelayedCall | None = None
        self._sendGuard: SendQueueGuard | None = None
        self._failed = False
        self._footerSent = False
        # Bytes given to the current parser, and the parser's byte position
        # where the last stanza ended (see StreamLimits).
        self._received = 0
        self._mark = 0
        # The idle-parser drop: the peer's stream header (its root element,
        # while a parser lives; the opening tag to give the next parser,
        # while none does), the last _MAX_TAIL bytes received (once the
        # parser is dropped: those after the last stanza's end), and the
        # check that drops the parser.
        self._root: domish.Element | None = None
        self._resumeHeader: bytes | None = None
        self._recent = b""
        self._idleCheck: IDelayedCall | None = None
        self._checkedAt = -1

    def _callLater(self, *args: Any, **kwargs: Any) -> IDelayedCall:
        return self.clock.callLater(*args, **kwargs)

    def _initializeStream(self) -> None:
        # As XmlStream._initializeStream, with our element stream.
        self._newParser(self._documentStart)
        self._received = 0
        self._mark = 0
        self._root = None
        self._resumeHeader = None
        self._recent = b""
        # What the previous parser parsed and was not handled yet came
        # before the restart: it is dropped, never handled as if it had
        # come after it.
        self._queue = None

    def _documentStart(self, rootElement: domish.Element) -> None:
        # The peer's header is kept (while the parser lives) for the parser
        # that may replace this one after an idle drop.
        self._root = rootElement
        self.onDocumentStart(rootElement)
        self._scheduleIdleCheck()

    def _newParser(self, documentStart: Callable[[domish.Element], None]) -> _ElementStream:
        """
        Make the current parser, its events going to C{documentStart} and
        to this stream's handlers, with the caps in force.
        """
        es = _ElementStream()
        es.light = self.lightStanzas
        self.stream = es

        def current(handler: Callable[..., None]) -> Callable[..., None]:
            # Only the current parser's events count: one replaced by
            # reset() in the middle of a read goes on parsing the rest of
            # that read, which must be discarded.
            def guarded(*args: Any) -> None:
                if self.stream is es:
                    handler(*args)

            return guarded

        es.DocumentStartEvent = current(documentStart)
        es.ElementEvent = current(self.onElement)
        es.DocumentEndEvent = current(self.onDocumentEnd)
        es.stanzaEnding = current(self._stanzaEnding)
        es.lightEnded = self._lightEnded
        self._applyLimits()
        return es

    def _scheduleIdleCheck(self) -> None:
        seconds = self.limits.idleParserSeconds
        if seconds > 0 and self._idleCheck is None and self.transport is not None:
            self._checkedAt = -1
            self._idleCheck = self.clock.callLater(seconds, self._checkIdle)

    def _stopIdleCheck(self) -> None:
        if self._idleCheck is not None:
            self._idleCheck.cancel()
            self._idleCheck = None

    def _checkIdle(self) -> None:
        """
        Drop the parser if no byte came since the last check and nothing is
        open; else check again later.
        """
        self._idleCheck = None
        if self._failed or self._footerSent or self.transport is None or self.stream is None:
            return
        if self._received != self._checkedAt or not self._dropParser():
            received = self._received
            self._scheduleIdleCheck()
            self._checkedAt = received
        else:
            self.parserDropped()

    def parserDropped(self) -> None:
        """
        The idle parser was dropped (its memory freed): a hook for the
        stream's owner (the c2s face asks for a trim of the C library's
        heap: L{imgateway.malloctrim}).
        """

    def _dropParser(self) -> bool:
        """
        Drop the parser, if nothing of the peer's is open in it: the stream
        has started, no stanza has begun since the last one ended, and only
        that stanza's closing tag and whitespace came after it.

        @return: Whether it was dropped.
        """
        es = self.stream
        root = self._root
        after = self._received - self._mark
        if es is None or root is None or es.stanzaOpen or self._queue or after > len(self._recent):
            return False
        tail = self._recent[len(self._recent) - after :]
        if _QUIET_TAIL.match(tail) is None:
            return False
        self._recent = tail
        # Only the namespace declarations of the peer's header matter to
        # what follows; its attributes are not repeated.
        header = domish.Element((root.uri, root.name), defaultUri=root.defaultUri, localPrefixes=root.localPrefixes)
        self._resumeHeader = header.toXml(closeElement=0).encode("utf-8")
        self._root = None
        self.stream = None
        es.discard()
        return True

    def _resumeParser(self) -> None:
        """
        Give a stream whose idle parser was dropped a new one, first fed the
        peer's stream header: what comes next parses as it would have in the
        old parser, and is counted toward the caps from where the last
        stanza ended.
        """
        header = self._resumeHeader
        assert header is not None
        self._resumeHeader = None
        es = self._newParser(self._resumedStart)
        es.parse(header)
        # The tail after the last stanza (its closing tag, whitespace)
        # counts toward the next stanza, as in the dropped parser.
        self._received = len(header)
        self._mark = len(header) - len(self._recent)
        self._scheduleIdleCheck()

    def _resumedStart(self, rootElement: domish.Element) -> None:
        # The header given to a new parser after an idle drop: the stream
        # started long ago; only kept for the next drop.
        self._root = rootElement

    def _lightEnded(self, es: _ElementStream, stanza: LightStanza, position: int) -> None:
        """
        A light stanza ends at C{position} in C{es}: if C{es} is the current
        parser, as L{_stanzaEnding} then L{onElement} (one call for the
        commonest stanzas, instead of three).
        """
        if self.stream is es:
            self._checkSize(position)
            self._mark = position
            self.onElement(stanza)

    def _stanzaEnding(self, position: int) -> None:
        """
        A stanza ends at C{position}: check its size, and count the next
        one from there.
        """
        self._checkSize(position)
        self._mark = position

    def _applyLimits(self) -> None:
        es = self.stream
        if es is None:
            return
        l = self.limits
        es.maxElementCount = l.elements if self.authenticated else l.preAuthElements

    def setAuthenticated(self) -> None:
        """
        The peer is authenticated: apply the larger stanza caps.
        """
        self.authenticated = True
        self._applyLimits()

    def _checkSize(self, position: int) -> None:
        """
        Refuse more bytes than the stanza cap between the end of the last
        stanza and C{position} (byte positions in what the current parser
        was given).
        """
        l = self.limits
        cap = l.stanzaBytes if self.authenticated else l.preAuthStanzaBytes
        if position - self._mark > cap:
            raise _StanzaTooBig(f"Maximum stanza size exceeded ({cap} bytes)")

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            if self.rawDataInFn:
                self.rawDataInFn(data)
            if self.stream is None and self._resumeHeader is not None:
                self._resumeParser()
            assert self.stream is not None
            self._received += len(data)
            parsing = self.stream
            parsing.parse(data)
            # What is still open (a stanza, the header, whitespace) may
            # not exceed the cap either (unless the stream restarted: the
            # new parser has not seen a byte yet).
            if not self._failed and self.stream is parsing:
                self._checkSize(self._received)
                # The last bytes received, for the idle-parser drop.
                recent = self._recent + data if len(data) < _MAX_TAIL else data
                self._recent = recent[-_MAX_TAIL:]
        except RestrictedXML as e:
            self._streamFailed("restricted-xml", str(e))
        except _StanzaTooBig as e:
            self._streamFailed("policy-violation", str(e), tooBig=True)
        except domish.ParserError as e:
            text = str(e)
            if text.startswith("Maximum"):
                self._streamFailed("policy-violation", text, tooBig=True)
            else:
                self._streamFailed("not-well-formed", text)

    def _streamFailed(self, condition: str, text: str, tooBig: bool = False) -> None:
        if self._failed:
            return
        self._failed = True
        self._stopQueue()
        self._stopIdleCheck()
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info("Closing XML stream from {peer}: {condition} ({text})", peer=peer, condition=condition, text=text)
        appCondition = domish.Element((NS_XMPP_ERRORS, "stanza-too-big")) if tooBig else None
        streamError = error.StreamError(condition, text=text[:200], appCondition=appCondition)
        self.dispatch(failure.Failure(streamError), STREAM_ERROR_EVENT)
        self.sendStreamError(streamError)

    def onElement(self, element: domish.Element | LightStanza) -> None:
        """
        A top-level element was parsed: handle it now if the rate limit
        allows and nothing waits before it, else queue it (and pause
        reading) or, past L{StreamLimits.maxQueuedStanzas}, close the
        stream with C{<policy-violation/>}.
        """
        if self._failed:
            return
        if not self._queue and self._bucket.consume(_TOKEN):
            self.stanzaReceived(element)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.limits.maxQueuedStanzas:
            self._streamFailed(
                "policy-violation",
                f"more than {self.limits.maxQueuedStanzas} stanzas waiting: "
                f"at most {self.limits.stanzasPerSecond:g} stanzas per second are handled",
            )
            return
        queue.append(element)
        self._pauseReading()

    def stanzaReceived(self, element: domish.Element | LightStanza) -> None:
        """
        A top-level element (stanza or nonza) arrived, within the rate
        limit: a L{LightStanza} only if L{lightStanzas}. Hands it to
        L{elementReceived} as a domish tree; a stream that asks for light
        stanzas handles them here instead.
        """
        self.elementReceived(element.element() if isinstance(element, LightStanza) else element)

    def elementReceived(self, element: domish.Element) -> None:
        """
        A top-level element (stanza or nonza) arrived, within the rate
        limit. Dispatches it to the stream's observers; subclasses may
        handle it directly instead.
        """
        xmlstream.XmlStream.onElement(self, element)

    @property
    def queuedStanzas(self) -> int:
        """
        How many parsed stanzas wait for the rate limit.
        """
        return len(self._queue) if self._queue is not None else 0

    def _pauseReading(self) -> None:
        if self._paused is not None:
            return
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._paused = self.clock.callLater(self._bucket.retryAfter(1.0), self._drain)

    def _drain(self) -> None:
        """
        Handle what waits, as far as the rate limit allows; resume reading
        once nothing waits.
        """
        self._paused = None
        while self._queue and not self._failed and self._bucket.consume(_TOKEN):
            self.stanzaReceived(self._queue.popleft())
        if self._failed or self.transport is None:
            return
        if self._queue:
            self._pauseReading()
        else:
            self._queue = None
            if self._paused is None:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _stopQueue(self) -> None:
        self._queue = None
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        self._paused = None

    def limitsFeature(self, idleSeconds: float | None = None) -> domish.Element:
        """
        The XEP-0478 stream limits to put in our stream features: the
        stanza cap in force now (before or after authentication), and how
        long the stream may stay idle, if it is closed when idle.
        """
        limits = domish.Element((NS_STREAM_LIMITS, "limits"))
        cap = self.limits.stanzaBytes if self.authenticated else self.limits.preAuthStanzaBytes
        limits.addElement("max-bytes", content=str(cap))
        if idleSeconds is not None:
            limits.addElement("idle-seconds", content=str(int(idleSeconds)))
        return limits

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.transport is not None:
            self._sendGuard = SendQueueGuard(self.transport, self.limits.sendQueueBytes, self._sendQueueFull)

    def _sendQueueFull(self) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.warn(
            "Dropping XML stream to {peer}: it does not read, and more than {limit} bytes are queued for it",
            peer=peer,
            limit=self.limits.sendQueueBytes,
        )
        self._releaseSendGuard()
        self._failed = True
        self._stopQueue()
        self._stopIdleCheck()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def closeConnection(self) -> None:
        """
        Close the connection once what was written has been sent. Every
        close of the stream goes through here, or through one of Twisted's
        own closers overridden below (L{onDocumentEnd}, L{onStreamError},
        L{sendStreamError}): the send queue guard lets go of the transport
        first, as a TLS transport does not close while a producer is
        registered.
        """
        self._releaseSendGuard()
        if self.transport is not None:
            self.transport.loseConnection()

    def _releaseSendGuard(self) -> None:
        if self._sendGuard is not None:
            self._sendGuard.release()

    def sendFooter(self) -> None:
        """
        Send our closing tag, unless it was sent already.
        """
        if not self._footerSent:
            self._footerSent = True
            super().sendFooter()

    def onDocumentEnd(self) -> None:
        """
        The peer closed its stream: close ours (if we opened it) before
        closing the connection (RFC 6120 section 4.4).
        """
        self._releaseSendGuard()
        if self._headerSent:
            self.sendFooter()
        super().onDocumentEnd()

    def onStreamError(self, errelem: domish.Element) -> None:
        self._releaseSendGuard()
        super().onStreamError(errelem)

    def sendStreamError(self, streamError: error.StreamError) -> None:
        self._releaseSendGuard()
        super().sendStreamError(streamError)

    def connectionLost(self, reason: failure.Failure = failure.Failure(ConnectionError())) -> None:
        self._stopIdleCheck()
        self._stopQueue()
        super().connectionLost(reason)

    def send(self, obj: Any) -> None:
        if domish.IElement.providedBy(obj):
            obj = obj.toXml(
                prefixes=self.prefixes,
                defaultUri=self.namespace,
                prefixesInScope=list(self.prefixes.values()),
            )
        if isinstance(obj, str):
            obj = xmlSafe(obj)
        super().send(obj)
        if self._sendGuard is not None:
            self._sendGuard.wrote(len(obj))

    def sendSerialised(self, text: str) -> None:
        """
        Send a stanza already serialised by the caller: the cheap path of
        the hot stanzas (a message or presence delivered to a client), with
        no L{domish.Element} built.

        @param text: A complete stanza, XML-safe and escaped as L{send}
            would have made it (built with L{xmlText} and L{xmlAttribute}).
        """
        data = text.encode("utf-8")
        if self.rawDataOutFn:
            self.rawDataOutFn(data)
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if self._sendGuard is not None:
            self._sendGuard.wrote(len(data))


# What xmlText and xmlAttribute change: text without any of these is
# returned as it is (one search, rather than a substitution and five
# replacements, for the commonest text).
_TEXT_SPECIAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff&<>]")
_ATTRIBUTE_SPECIAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff&<>'\"]")


def xmlText(text: str) -> str:
    """
    C{text} as the content of an element: what L{HardenedXmlStream.send}
    makes of a string child of a L{domish.Element} (the characters XML
    forbids removed, C{&}, C{<} and C{>} escaped).
    """
    if _TEXT_SPECIAL.search(text) is None:
        return text
    return xmlSafe(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def xmlAttribute(value: str) -> str:
    """
    C{value} as an attribute value between single quotes: what
    L{HardenedXmlStream.send} makes of an attribute of a
    L{domish.Element} (also C{'} and C{"} escaped).
    """
    # Letters and digits (a generated message id) need nothing.
    if value.isalnum() or _ATTRIBUTE_SPECIAL.search(value) is None:
        return value
    return xmlSafe(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;").replace('"', "&quot;")


def xmlTextElement(name: str, text: str) -> str:
    """
    An element of no namespace of its own (its parent's) holding C{text}:
    what L{HardenedXmlStream.send} makes of a child added with
    C{addElement(name, content=xmlSafe(text))}, C{<name/>} when nothing
    is left of the text.
    """
    content = xmlText(text)
    return f"<{name}>{content}</{name}>" if content else f"<{name}/>"
