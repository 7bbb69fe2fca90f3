# -*- test-case-name: tests.test_xmpp_stream -*-
"""
Tests for L{imgateway.adapters.xmpp.stream}: the hardened XMPP XML stream.

Hostile inputs are sized so that an unhardened Twisted stream would block
for many seconds on them (C{../shared/RELIABILITY-NOTES.md} section 0,
finding 1): a regression shows up as a suite that suddenly takes minutes,
never as a timed assertion. Figures, hardened against plain, come from
C{bench/xmpp_parser_probe.py}.
"""

from __future__ import annotations

import gc
import itertools
import random
import weakref

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT

from imgateway.adapters.xmpp.stream import (
    NS_XMPP_ERRORS,
    HardenedXmlStream,
    IDLE_PARSER_SECONDS,
    LightStanza,
    RestrictedXML,
    StreamLimits,
    TEXT_BUFFER_CHARS,
    xmlAttribute,
    xmlSafe,
    xmlText,
)

DECLARATION = b"<?xml version='1.0'?>"

#: A client's stream header, without the XML declaration.
OPEN = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='corp.example' version='1.0'>"
)

#: A client's stream header, as slixmpp and most clients send it.
HEADER = DECLARATION + OPEN

#: A first stanza: what follows it is counted from its end.
FIRST = b"<presence id='first'/>"

MiB = 1024 * 1024

#: What Twisted's TCP transport hands to C{dataReceived} at most.
READ = 65536


def billionLaughs(levels: int, fanout: int = 10) -> bytes:
    """
    A stream whose DTD nests C{levels} entities, each C{fanout} times the
    one before, with a stanza that uses the outermost one. Six levels of
    ten (649 bytes) block an unhardened domish parser for about 283 s.
    """
    entities = "<!ENTITY l0 'lol'>" + "".join(
        f"<!ENTITY l{i} '{f'&l{i - 1};' * fanout}'>" for i in range(1, levels + 1)
    )
    dtd = f"<!DOCTYPE stream:stream [{entities}]>".encode()
    return DECLARATION + dtd + OPEN + f"<message><body>&l{levels};</body></message>".encode()


def emptyStanza(size: int) -> bytes:
    """
    An empty-element stanza, C{<presence id='xx...'/>}, of exactly C{size}
    bytes.
    """
    shell = b"<presence id=''/>"
    return b"<presence id='" + b"x" * (size - len(shell)) + b"'/>"


def messageUpToClosingTag(size: int) -> bytes:
    """
    A C{<message/>} whose bytes before its closing C{</message>} number
    exactly C{size}.
    """
    head, tail = b"<message><body>", b"</body>"
    return head + b"x" * (size - len(head) - len(tail)) + tail + b"</message>"


def stanzaWithElements(count: int, nested: bool = False) -> bytes:
    """
    A C{<message/>} of C{count} elements in all, the message itself
    included: C{count - 1} children, or a chain C{count - 1} deep.
    """
    if nested:
        return b"<message>" + b"<x>" * (count - 1) + b"</x>" * (count - 1) + b"</message>"
    return b"<message>" + b"<x/>" * (count - 1) + b"</message>"


def chunks(data: bytes, size: int) -> list[bytes]:
    """
    C{data} cut in pieces of C{size} bytes, as a transport would deliver it.
    """
    return [data[i : i + size] for i in range(0, len(data), size)]


class HeaderAuthenticator(xmlstream.ListenAuthenticator):
    """
    Answers the peer's stream header with ours, and does nothing else.

    It does not call L{xmlstream.ListenAuthenticator.streamStarted}, which
    interns the untrusted C{to} attribute forever.
    """

    def streamStarted(self, rootElement: domish.Element) -> None:
        xmlstream.Authenticator.streamStarted(self, rootElement)
        xs = self.xmlstream
        assert xs is not None
        xs.namespace = rootElement.defaultUri
        xs.sid = "s1"
        xs.sendHeader()


class Output:
    """
    What a stream wrote, parsed back with expat.

    @ivar root: The stream header, if one was written.
    @ivar elements: The top-level elements written.
    @ivar closed: Whether the stream was closed with C{</stream:stream>}.
    """

    def __init__(self, data: bytes) -> None:
        es = domish.elementStream()
        self.root: domish.Element | None = None
        self.elements: list[domish.Element] = []
        self.closed = False

        def start(root: domish.Element) -> None:
            self.root = root

        def end() -> None:
            self.closed = True

        es.DocumentStartEvent = start
        es.ElementEvent = self.elements.append
        es.DocumentEndEvent = end
        es.parse(data)

    def streamError(self) -> tuple[str | None, list[tuple[str, str]], str | None]:
        """
        @return: The stream error's condition, the qualified names of its
            application conditions, and its text; all C{None} (and no
            conditions) if no stream error was written.
        """
        for element in self.elements:
            if (element.uri, element.name) == (xmlstream.NS_STREAMS, "error"):
                condition = text = None
                apps = []
                for child in element.elements():
                    if child.uri == error.NS_XMPP_STREAMS:
                        if child.name == "text":
                            text = str(child)
                        else:
                            condition = child.name
                    else:
                        apps.append((child.uri, child.name))
                return condition, apps, text
        return None, [], None


class StreamTestCase(SynchronousTestCase):
    """
    Connects a L{HardenedXmlStream} to a L{StringTransport} and a L{Clock}.

    @cvar streamClass: The stream class tested (the C{Light*} variants at
        the end of this module run the same tests with light stanzas).
    """

    streamClass: type[HardenedXmlStream] = HardenedXmlStream

    def connect(self, limits: StreamLimits = StreamLimits(), authenticated: bool = False) -> tuple[HardenedXmlStream, StringTransport, list[domish.Element]]:
        """
        @return: The stream, its transport, and the list every top-level
            element it dispatches is appended to.
        """
        clock = self.clock = Clock()
        xs = self.streamClass(HeaderAuthenticator(), limits, clock)
        received: list[domish.Element] = []
        xs.addObserver("/*", received.append)
        self.streamErrors: list[Failure] = []
        xs.addObserver(STREAM_ERROR_EVENT, self.streamErrors.append)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        xs.makeConnection(transport)
        if authenticated:
            xs.setAuthenticated()
        # Nothing may be left scheduled once the test is over.
        self.addCleanup(lambda: self.assertEqual(clock.getDelayedCalls(), []))
        return xs, transport, received

    def feed(self, xs: HardenedXmlStream, *pieces: bytes) -> None:
        """
        Deliver C{pieces} one C{dataReceived} call each.
        """
        for piece in pieces:
            xs.dataReceived(piece)

    def assertStreamError(self, transport: StringTransport, condition: str, tooBig: bool = False) -> Output:
        """
        The stream wrote a stream error with C{condition} (and
        C{<stanza-too-big/>} if C{tooBig}), closed the stream and is
        dropping the connection.
        """
        out = Output(transport.value())
        got, apps, text = out.streamError()
        self.assertEqual(got, condition)
        self.assertEqual(apps, [(NS_XMPP_ERRORS, "stanza-too-big")] if tooBig else [])
        self.assertTrue(text)
        self.assertTrue(out.closed)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.streamErrors), 1)
        reported = self.streamErrors[0].value
        assert isinstance(reported, error.StreamError)
        self.assertEqual(reported.condition, condition)
        return out

    def assertOpen(self, transport: StringTransport) -> None:
        """
        The stream is still up: no stream error, not disconnecting.
        """
        self.assertEqual(Output(transport.value()).streamError()[0], None)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.streamErrors, [])


class HeaderTests(StreamTestCase):
    """
    The plain path: a client's header is answered and stanzas dispatched.
    """

    def test_headerAnswered(self) -> None:
        """
        A client's stream header is answered with ours, and its stanzas
        are dispatched to the observers.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, b"<message to='bob@corp.example'><body>hi</body></message>")
        out = Output(transport.value())
        assert out.root is not None
        self.assertEqual((out.root.uri, out.root.name), (xmlstream.NS_STREAMS, "stream"))
        self.assertEqual(out.root.defaultUri, "jabber:client")
        self.assertEqual([str(e.body) for e in received], ["hi"])
        self.assertOpen(transport)

    def test_utf8DeclarationAccepted(self) -> None:
        """
        An explicit UTF-8 encoding declaration, in any usual spelling, is
        accepted.
        """
        for encoding in (b"UTF-8", b"utf-8", b"utf8"):
            xs, transport, received = self.connect()
            self.feed(xs, b"<?xml version='1.0' encoding='" + encoding + b"'?>" + OPEN + b"<presence/>")
            self.assertEqual(len(received), 1, encoding)
            self.assertOpen(transport)

    def test_noDeclarationAccepted(self) -> None:
        """
        The XML declaration is optional.
        """
        xs, transport, received = self.connect()
        self.feed(xs, OPEN, b"<presence/>")
        self.assertEqual(len(received), 1)
        self.assertOpen(transport)

    def test_stanzaFreedWithoutCollector(self) -> None:
        """
        A handled stanza and its nested children are freed as soon as the
        last reference to them goes: the parser leaves no child-to-parent
        link behind that would make a reference cycle, kept until the
        cyclic garbage collector's next pass.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        enabled = gc.isenabled()
        gc.disable()
        try:
            self.feed(xs, b"<message to='bob@corp.example'><body>hi</body><x xmlns='urn:x'><y>z</y></x></message>")
            [stanza] = received
            self.assertEqual(str(stanza.body), "hi")
            refs = [weakref.ref(stanza), weakref.ref(stanza.body), weakref.ref(stanza.x), weakref.ref(stanza.x.y)]
            del stanza
            received.clear()
            self.assertEqual([r() for r in refs], [None] * 4)
        finally:
            if enabled:
                gc.enable()
        self.assertOpen(transport)

    def test_ownElementStream(self) -> None:
        """
        The stream parses with an element stream of its own, which sets up
        its parser itself: none of domish's handlers is replaced or wrapped
        from outside, on the first parser or after a restart.
        """
        xs, transport, received = self.connect()
        for _ in range(2):
            es = xs.stream
            assert es is not None
            self.assertIsInstance(es, domish.ExpatElementStream)
            self.assertEqual(es.parser.EndElementHandler, es._onEndElement)
            self.assertEqual(es.parser.StartElementHandler, es._onStartElement)
            xs.reset()

    def test_failureStopsParsing(self) -> None:
        """
        Once the stream has failed, further data is ignored: nothing more
        is dispatched or written.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, b"<<<")
        written = transport.value()
        self.feed(xs, b"<presence/>", b"<<<")
        self.assertEqual(transport.value(), written)
        self.assertEqual(received, [])
        self.assertStreamError(transport, "not-well-formed")

    def test_closingTagAnswered(self) -> None:
        """
        A peer that closes its stream gets our closing tag before the
        connection closes (RFC 6120 section 4.4).
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, b"<presence/>")
        self.assertFalse(Output(transport.value()).closed)
        self.feed(xs, b"</stream:stream>")
        out = Output(transport.value())
        self.assertTrue(out.closed)
        self.assertEqual(out.streamError()[0], None)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value().count(b"</stream:stream>"), 1)

    def test_closingTagOnce(self) -> None:
        """
        A stream that already sent its closing tag (with a stream error,
        or by closing itself) does not send a second one when the peer's
        closing tag comes.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        xs.sendStreamError(error.StreamError("conflict"))
        self.feed(xs, b"</stream:stream>")
        self.assertEqual(transport.value().count(b"</stream:stream>"), 1)
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        xs.sendFooter()
        self.feed(xs, b"</stream:stream>")
        self.assertEqual(transport.value().count(b"</stream:stream>"), 1)

    def test_closingTagWithoutHeader(self) -> None:
        """
        A closing tag is only sent for a stream we opened: a stream whose
        header was not sent only closes the connection.
        """
        xs = HardenedXmlStream(xmlstream.Authenticator(), StreamLimits(), Clock())
        transport = StringTransport()
        xs.makeConnection(transport)
        xs.dataReceived(OPEN + b"</stream:stream>")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)


class RestrictedXMLTests(StreamTestCase):
    """
    What RFC 6120 section 11.1 forbids closes the stream with
    C{<restricted-xml/>}.
    """

    def assertRestricted(self, *pieces: bytes) -> list[domish.Element]:
        xs, transport, received = self.connect()
        self.feed(xs, *pieces)
        self.assertStreamError(transport, "restricted-xml")
        return received

    def test_billionLaughs(self) -> None:
        """
        A DTD with six levels of nested entities (about 283 s of CPU for an
        unhardened parser) is refused before a single entity is expanded.
        """
        self.assertEqual(self.assertRestricted(billionLaughs(6)), [])

    def test_billionLaughsDeep(self) -> None:
        """
        Nine levels (10^9 expansions) are refused the same way.
        """
        self.assertEqual(self.assertRestricted(billionLaughs(9)), [])

    def test_billionLaughsBytewise(self) -> None:
        """
        The DTD is refused when it arrives one byte at a time, too.
        """
        self.assertEqual(self.assertRestricted(*chunks(billionLaughs(6), 1)), [])

    def test_internalEntity(self) -> None:
        """
        A DTD declaring a single internal entity is refused, so the entity
        never reaches a stanza.
        """
        dtd = b"<!DOCTYPE stream:stream [<!ENTITY name 'expanded'>]>"
        received = self.assertRestricted(DECLARATION + dtd + OPEN, b"<message><body>&name;</body></message>")
        self.assertEqual(received, [])

    def test_externalEntity(self) -> None:
        """
        A DTD declaring an external entity (XXE) is refused.
        """
        dtd = b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM 'file:///etc/hostname'>]>"
        self.assertRestricted(DECLARATION + dtd + OPEN + b"<message><body>&xxe;</body></message>")

    def test_bareDoctype(self) -> None:
        """
        Even a DOCTYPE with no internal subset is refused.
        """
        self.assertRestricted(DECLARATION + b"<!DOCTYPE stream:stream>" + OPEN)

    def test_entityDeclarationHandler(self) -> None:
        """
        The parser refuses entity declarations on their own as well, in
        case a DTD ever gets past the DOCTYPE check.
        """
        xs, transport, received = self.connect()
        assert xs.stream is not None
        handler = xs.stream.parser.EntityDeclHandler
        self.assertRaises(RestrictedXML, handler, "name", 0, "value", None, None, None, None)

    def test_commentBetweenStanzas(self) -> None:
        """
        A comment between two stanzas closes the stream: the stanza before
        it is dispatched, the one after it is not.
        """
        received = self.assertRestricted(HEADER, b"<presence id='1'/><!-- hello --><presence id='2'/>")
        self.assertEqual([e["id"] for e in received], ["1"])

    def test_commentBeforeHeader(self) -> None:
        """
        A comment before the stream header closes the stream.
        """
        self.assertRestricted(DECLARATION + b"<!-- hello -->" + OPEN)

    def test_commentInStanza(self) -> None:
        """
        A comment inside a stanza closes the stream, and the stanza is not
        dispatched.
        """
        received = self.assertRestricted(HEADER, b"<message><body>a<!-- b -->c</body></message>")
        self.assertEqual(received, [])

    def test_processingInstruction(self) -> None:
        """
        A processing instruction between stanzas closes the stream.
        """
        self.assertRestricted(HEADER, b"<?xml-stylesheet href='a.xsl'?>")

    def test_processingInstructionBeforeHeader(self) -> None:
        """
        A processing instruction before the stream header closes the
        stream.
        """
        self.assertRestricted(DECLARATION + b"<?evil?>" + OPEN)

    def test_xml11(self) -> None:
        """
        An XML 1.1 declaration closes the stream.
        """
        self.assertRestricted(b"<?xml version='1.1'?>" + OPEN)

    def test_latin1(self) -> None:
        """
        Any encoding but UTF-8 closes the stream.
        """
        self.assertRestricted(b"<?xml version='1.0' encoding='ISO-8859-1'?>" + OPEN)

    def test_utf16Declared(self) -> None:
        """
        Declaring UTF-16 closes the stream too.
        """
        self.assertRestricted(b"<?xml version='1.0' encoding='UTF-16'?>" + OPEN)

    def test_errorBeforeHeaderStillAHeader(self) -> None:
        """
        When the error comes before the peer's stream header, ours is still
        sent first, so the peer can parse the error (RFC 6120 4.9.1.1).
        """
        xs, transport, received = self.connect()
        self.feed(xs, b"<?xml version='1.1'?>" + OPEN)
        out = self.assertStreamError(transport, "restricted-xml")
        assert out.root is not None
        self.assertEqual((out.root.uri, out.root.name), (xmlstream.NS_STREAMS, "stream"))


class NotWellFormedTests(StreamTestCase):
    """
    Input that is not XML closes the stream with C{<not-well-formed/>}.
    """

    def assertNotWellFormed(self, *pieces: bytes) -> None:
        xs, transport, received = self.connect()
        self.feed(xs, *pieces)
        self.assertStreamError(transport, "not-well-formed")
        self.assertEqual(received, [])

    def test_garbage(self) -> None:
        """
        Angle-bracket garbage after the header.
        """
        self.assertNotWellFormed(HEADER, b"<<<>>>")

    def test_garbageInsteadOfHeader(self) -> None:
        """
        An HTTP request instead of a stream header.
        """
        self.assertNotWellFormed(b"GET / HTTP/1.1\r\nHost: corp.example\r\n\r\n")

    def test_nul(self) -> None:
        """
        A NUL byte in a stanza.
        """
        self.assertNotWellFormed(HEADER, b"<message><body>a\x00b</body></message>")

    def test_controlCharacter(self) -> None:
        """
        A C0 control character (an IRC colour code) in a stanza.
        """
        self.assertNotWellFormed(HEADER, b"<message><body>\x03" b"4red</body></message>")

    def test_invalidUTF8(self) -> None:
        """
        Bytes that are not UTF-8.
        """
        self.assertNotWellFormed(HEADER, b"<message><body>\xff\xfe</body></message>")

    def test_undefinedEntity(self) -> None:
        """
        An entity reference other than the five predefined ones.
        """
        self.assertNotWellFormed(HEADER, b"<message><body>&nbsp;</body></message>")

    def test_unboundPrefix(self) -> None:
        """
        An element with an undeclared prefix.
        """
        self.assertNotWellFormed(HEADER, b"<foo:message/>")

    def test_doctypeAfterHeader(self) -> None:
        """
        A DOCTYPE after the stream header is not XML at all, so expat
        reports it as not well-formed rather than as a DTD.
        """
        self.assertNotWellFormed(HEADER, b"<!DOCTYPE x [<!ENTITY a 'b'>]>")

    def test_declarationAfterHeader(self) -> None:
        """
        An XML declaration after the stream header (a second document
        glued on) is not well-formed either.
        """
        self.assertNotWellFormed(HEADER, b"<?xml version='1.0'?>")

    def test_mismatchedTag(self) -> None:
        """
        A closing tag that does not match.
        """
        self.assertNotWellFormed(HEADER, b"<message></presence>")


class StanzaSizeTests(StreamTestCase):
    """
    Stanzas are capped in bytes: 8 KiB before authentication and 256 KiB
    after, by default.

    How bytes are counted (L{StreamLimits}): the bytes received since the
    previous stanza ended, so with the whitespace before the stanza, and
    with the XML declaration and stream header for the first stanza of a
    stream. A stanza ends at the first byte of its closing tag, or after
    an empty-element tag such as C{<presence/>}; so a closing tag counts
    toward the next stanza. The count does not depend on how the bytes are
    cut into reads: a complete stanza is checked when it ends, and what is
    still open after each read.

    Most tests send C{<presence/>} first, so that the stanza under test is
    counted from its own first byte.
    """

    def test_firstStanzaIncludesHeader(self) -> None:
        """
        The first stanza of a stream is counted with the XML declaration
        and stream header before it: they and an 8192-byte stanza together
        are accepted, one byte more is refused.
        """
        size = 8192 - len(HEADER)
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, emptyStanza(size))
        self.assertEqual(len(received), 1)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, emptyStanza(size + 1))
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(received, [])

    def test_preAuthBoundaryOneRead(self) -> None:
        """
        Before authentication an 8192-byte stanza arriving in one read is
        accepted; 8193 bytes are refused with C{<policy-violation/>} and
        C{<stanza-too-big/>}.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER + FIRST, emptyStanza(8192))
        self.assertEqual(len(received), 2)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER + FIRST, emptyStanza(8193))
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(len(received), 1)

    def test_preAuthBoundaryInPieces(self) -> None:
        """
        The boundary is the same when the stanza arrives in pieces of any
        size, or in one read with what came before it.
        """
        for pieceSize in (8193, 1000, 7, 1):
            xs, transport, received = self.connect()
            self.feed(xs, *chunks(HEADER + FIRST + emptyStanza(8192), pieceSize))
            self.assertEqual(len(received), 2, pieceSize)
            self.assertOpen(transport)

            xs, transport, received = self.connect()
            self.feed(xs, *chunks(HEADER + FIRST + emptyStanza(8193), pieceSize))
            self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_whitespaceCounts(self) -> None:
        """
        Whitespace between two stanzas counts toward the second.
        """
        stanza = b"<presence/>"
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST, b" " * (8192 - len(stanza)), stanza)
        self.assertEqual(len(received), 2)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST + b" " * (8193 - len(stanza)) + stanza)
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(len(received), 1)

    def test_closingTag(self) -> None:
        """
        A stanza with content is counted up to its closing tag (8192 bytes
        accepted, 8193 refused), and the closing tag counts toward the next
        stanza.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST, messageUpToClosingTag(8192))
        self.assertEqual(len(received), 2)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST, messageUpToClosingTag(8193))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

        closing = len(b"</message>")
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST, messageUpToClosingTag(100), emptyStanza(8192 - closing))
        self.assertEqual(len(received), 3)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST, messageUpToClosingTag(100), emptyStanza(8193 - closing))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_largeStanzaInOneRead(self) -> None:
        """
        A 60 KiB stanza that arrives whole in one read is refused before
        authentication. (Twisted's own cap, C{maxStanzaSize}, is checked
        only between reads, after being reset at the end of every stanza,
        so it let such a stanza through.)
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, b"<message><body>" + b"x" * 60000 + b"</body></message>")
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(received, [])

    def test_countResetsPerStanza(self) -> None:
        """
        Each stanza is counted on its own: many stanzas at the cap, together
        far over it, are all accepted, in one read or in pieces.
        """
        stanzas = emptyStanza(8192) * 20
        for pieces in ([stanzas], chunks(stanzas, READ), chunks(stanzas, 1000)):
            xs, transport, received = self.connect()
            self.feed(xs, HEADER + FIRST, *pieces)
            self.assertEqual(len(received), 21)
            self.assertOpen(transport)

    def test_openBytesCapped(self) -> None:
        """
        Bytes that are not yet a complete stanza are capped after every
        read: a header and whitespace of 8192 bytes in all are accepted,
        8193 are refused.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER + b" " * (8192 - len(HEADER)))
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER + b" " * (8193 - len(HEADER)))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_openStanzaCapped(self) -> None:
        """
        A stanza that never ends is refused at the first read that takes
        it past the cap.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER + FIRST, b"<message><body>")
        for i in range(8):
            self.feed(xs, b"x" * 1000)
        self.assertOpen(transport)
        self.feed(xs, b"x" * 1000)
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_oversizedHeader(self) -> None:
        """
        A stream header padded with attributes beyond the cap is refused,
        however it is cut.
        """
        header = OPEN[:-1] + b" pad='" + b"x" * 9000 + b"'>"
        for pieces in ([header], chunks(header, 1000)):
            xs, transport, received = self.connect()
            self.feed(xs, *pieces)
            self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_postAuthBoundary(self) -> None:
        """
        After authentication the cap is C{stanzaBytes}: 256 KiB by default.
        """
        xs, transport, received = self.connect(authenticated=True)
        self.feed(xs, HEADER + FIRST, *chunks(emptyStanza(262144), READ))
        self.assertEqual(len(received), 2)
        self.assertOpen(transport)

        xs, transport, received = self.connect(authenticated=True)
        self.feed(xs, HEADER + FIRST, *chunks(emptyStanza(262145), READ))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_authenticatedMidStream(self) -> None:
        """
        L{HardenedXmlStream.setAuthenticated} raises the cap for the
        stanzas that follow on the same stream.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST)
        xs.setAuthenticated()
        self.feed(xs, emptyStanza(100000))
        self.assertEqual(len(received), 2)
        self.assertOpen(transport)

    def test_authenticatedSurvivesRestart(self) -> None:
        """
        After a stream restart (SASL success, STARTTLS), the new parser
        keeps the authenticated caps.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        xs.setAuthenticated()
        xs.reset()
        self.feed(xs, HEADER, emptyStanza(100000))
        self.assertEqual(len(received), 1)
        self.assertOpen(transport)

    def test_restartResetsCount(self) -> None:
        """
        A stream restart starts the byte count afresh: what came before it
        does not count toward the new header.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER + b" " * (8000 - len(HEADER)))
        xs.reset()
        self.feed(xs, HEADER + b" " * (8000 - len(HEADER)), b"<presence/>")
        self.assertEqual(len(received), 1)
        self.assertOpen(transport)

    def test_resetMidRead(self) -> None:
        """
        A stream restart from an observer in the middle of a read (as on
        STARTTLS or SASL success) starts a fresh count: what the old parser
        goes on parsing from that read neither trips the new stream's cap
        nor moves its count, and is not handled (the C{<presence/>} after
        C{<starttls/>} is dropped: STARTTLS injection).
        """
        for size, accepted in ((8192, True), (8193, False)):
            xs, transport, received = self.connect()
            xs.addOnetimeObserver("/starttls", lambda _: xs.reset())
            self.feed(xs, HEADER + FIRST + emptyStanza(8000) + b"<starttls/><presence/>")
            self.assertOpen(transport)
            transport.clear()  # What follows is a new XML document.
            self.feed(xs, HEADER + emptyStanza(size - len(HEADER)))
            if accepted:
                self.assertOpen(transport)
                self.assertEqual([e.name for e in received], ["presence", "presence", "starttls", "presence"])
            else:
                self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_newlinesLinear(self) -> None:
        """
        A message body of 1 MiB of newlines (23.8 s of CPU for an
        unhardened parser, which appends text once per line) is accepted
        and dispatched whole when the caps allow it.
        """
        limits = StreamLimits(stanzaBytes=2 * MiB)
        xs, transport, received = self.connect(limits, authenticated=True)
        stanza = b"<message><body>" + b"\n" * MiB + b"</body></message>"
        self.feed(xs, HEADER, *chunks(stanza, READ))
        self.assertEqual(len(received), 1)
        body = str(received[0].body)
        self.assertEqual(len(body), MiB)
        self.assertEqual(body.strip("\n"), "")
        self.assertOpen(transport)

    def test_entitiesLinear(self) -> None:
        """
        1.2 MB of text full of predefined entities (C{a&amp;} 200000 times,
        quadratic in an unhardened parser) is accepted and decoded.
        """
        limits = StreamLimits(stanzaBytes=2 * MiB)
        xs, transport, received = self.connect(limits, authenticated=True)
        stanza = b"<message><body>" + b"a&amp;" * 200000 + b"</body></message>"
        self.feed(xs, HEADER, *chunks(stanza, READ))
        self.assertEqual(len(received), 1)
        self.assertEqual(str(received[0].body), "a&" * 200000)
        self.assertOpen(transport)

    def test_newlinesOverDefaultCap(self) -> None:
        """
        With the default caps the same 1 MiB body is refused with
        C{<policy-violation/>} and C{<stanza-too-big/>}, and not dispatched.
        """
        xs, transport, received = self.connect(authenticated=True)
        stanza = b"<message><body>" + b"\n" * MiB + b"</body></message>"
        self.feed(xs, HEADER, *chunks(stanza, READ))
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(received, [])

    def test_newlinesPreAuth(self) -> None:
        """
        Before authentication the 1 MiB body is refused at once: at the
        first read past 8 KiB.
        """
        xs, transport, received = self.connect()
        stanza = b"<message><body>" + b"\n" * MiB + b"</body></message>"
        self.feed(xs, HEADER, *chunks(stanza, READ))
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(received, [])


class ElementCountTests(StreamTestCase):
    """
    Stanzas are capped in elements: 32 before authentication and 1000
    after, by default. The stanza's own element counts; the stream header
    does not; attributes do not.
    """

    def test_preAuthBoundary(self) -> None:
        """
        A stanza of 32 elements (itself and 31 children) is accepted before
        authentication; 33 are refused with C{<policy-violation/>}.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, stanzaWithElements(32))
        self.assertEqual(len(received), 1)
        self.assertEqual(len(list(received[0].elements())), 31)
        self.assertOpen(transport)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, stanzaWithElements(33))
        self.assertStreamError(transport, "policy-violation", tooBig=True)
        self.assertEqual(received, [])

    def test_preAuthBoundaryNested(self) -> None:
        """
        The same count applies to a chain of nested elements.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, stanzaWithElements(32, nested=True))
        self.assertEqual(len(received), 1)

        xs, transport, received = self.connect()
        self.feed(xs, HEADER, stanzaWithElements(33, nested=True))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_countResetsPerStanza(self) -> None:
        """
        Each stanza is counted on its own.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, stanzaWithElements(32) * 10)
        self.assertEqual(len(received), 10)
        self.assertOpen(transport)

    def test_postAuthBoundary(self) -> None:
        """
        After authentication the cap is C{elements}: 1000 by default.
        """
        xs, transport, received = self.connect(authenticated=True)
        self.feed(xs, HEADER, stanzaWithElements(1000))
        self.assertEqual(len(received), 1)

        xs, transport, received = self.connect(authenticated=True)
        self.feed(xs, HEADER, stanzaWithElements(1001))
        self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_attributesNotElements(self) -> None:
        """
        Attributes do not count as elements (the byte cap bounds them).
        """
        attributes = b"".join(b" a%d='1'" % i for i in range(500))
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, b"<presence" + attributes + b"/>")
        self.assertEqual(len(received), 1)
        self.assertEqual(len(received[0].attributes), 500)


class RateLimitTests(StreamTestCase):
    """
    Parsed stanzas, not reads, are rate-limited: what comes faster than the
    allowance waits in a bounded queue and is handled at the configured
    rate, with reading paused meanwhile.
    """

    limits = StreamLimits(stanzasPerSecond=1, stanzaBurst=2)

    def test_burstThenPause(self) -> None:
        """
        With a burst of 2 and 1 stanza/s, the third stanza in a row waits
        (and pauses the transport) until a second has passed; then it is
        handled and reading resumes.
        """
        xs, transport, received = self.connect(self.limits)
        self.feed(xs, HEADER, b"<presence/>", b"<presence/>")
        self.assertEqual(transport.producerState, "producing")
        self.feed(xs, b"<presence/>")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual((len(received), xs.queuedStanzas), (2, 1))
        self.clock.advance(0.99)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(received), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(received), 3)
        self.assertEqual(transport.producerState, "producing")
        self.assertOpen(transport)

    def test_steadyRateNeverPauses(self) -> None:
        """
        A peer within its rate is never paused.
        """
        xs, transport, received = self.connect(self.limits)
        self.feed(xs, HEADER)
        for i in range(20):
            self.feed(xs, b"<presence/>")
            self.assertEqual(transport.producerState, "producing")
            self.clock.advance(1)
        self.assertEqual(len(received), 20)

    def test_thousandInOneRead(self) -> None:
        """
        A thousand stanzas in one read, at the default 20 stanzas/s with a
        burst of 50: the first 50 are handled at once, then one every 0.05
        s, in order; reading stays paused until the last one is handled.
        """
        xs, transport, received = self.connect()
        handled: list[tuple[float, str]] = []
        xs.addObserver("/presence", lambda e: handled.append((self.clock.seconds(), e["id"])))
        self.feed(xs, HEADER, b"".join(b"<presence id='%d'/>" % i for i in range(1000)))
        self.assertEqual(len(handled), 50)
        self.assertEqual(xs.queuedStanzas, 950)
        self.assertEqual(transport.producerState, "paused")
        self.clock.pump([0.05] * 949)
        self.assertEqual(transport.producerState, "paused")
        self.clock.pump([0.05])
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([i for _, i in handled], [str(i) for i in range(1000)])
        for (when, _), expected in zip(handled, [0.0] * 50 + [0.05 * k for k in range(1, 951)]):
            self.assertAlmostEqual(when, expected, places=6)
        self.assertOpen(transport)

    def test_queueBound(self) -> None:
        """
        With room for 5 waiting stanzas: 2 (the burst) and 5 more in one
        read are accepted, and handled at the rate; 2 and 6 more close the
        stream with C{<policy-violation/>}, and none of the queued ones is
        handled after that.
        """
        limits = StreamLimits(stanzasPerSecond=1, stanzaBurst=2, maxQueuedStanzas=5)
        xs, transport, received = self.connect(limits)
        self.feed(xs, HEADER, b"<presence/>" * 7)
        self.assertEqual((len(received), xs.queuedStanzas), (2, 5))
        self.clock.pump([1] * 5)
        self.assertEqual(len(received), 7)
        self.assertOpen(transport)

        xs, transport, received = self.connect(limits)
        self.feed(xs, HEADER, b"<presence/>" * 8)
        self.assertStreamError(transport, "policy-violation")
        self.assertEqual((len(received), xs.queuedStanzas), (2, 0))
        self.clock.advance(10)
        self.assertEqual(len(received), 2)

    def test_noQueueWhileNothingWaits(self) -> None:
        """
        A stream holds no queue (an empty C{deque} takes a block of 0.6 KiB)
        while no stanza waits for the rate limit: not before the first
        waits, and not once the queue is drained.
        """
        xs, transport, received = self.connect(StreamLimits(stanzasPerSecond=1, stanzaBurst=2))
        self.feed(xs, HEADER, b"<presence/>" * 2)
        self.assertIsNone(xs._queue)
        self.feed(xs, b"<presence/>" * 2)
        self.assertEqual(xs.queuedStanzas, 2)
        self.clock.pump([1] * 2)
        self.assertEqual((len(received), xs.queuedStanzas), (4, 0))
        self.assertIsNone(xs._queue)
        self.assertOpen(transport)

    def test_restartDropsQueue(self) -> None:
        """
        Stanzas waiting behind one that restarts the stream (STARTTLS)
        came before the restart: they are dropped, not handled on the new
        stream.
        """
        xs, transport, received = self.connect(StreamLimits(stanzasPerSecond=1, stanzaBurst=1))
        xs.addOnetimeObserver("/starttls", lambda _: xs.reset())
        self.feed(xs, HEADER, b"<presence/><starttls/><message/>")
        self.assertEqual([e.name for e in received], ["presence"])
        self.clock.advance(1)
        self.assertEqual([e.name for e in received], ["presence", "starttls"])
        self.assertEqual(xs.queuedStanzas, 0)
        self.clock.advance(10)
        self.assertEqual([e.name for e in received], ["presence", "starttls"])

    def test_connectionLostWhilePaused(self) -> None:
        """
        Losing the connection while stanzas wait drops them and cancels
        the pending call.
        """
        xs, transport, received = self.connect(self.limits)
        self.feed(xs, HEADER, b"<presence/>" * 3)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        xs.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(xs.queuedStanzas, 0)


class SendTests(StreamTestCase):
    """
    Characters XML 1.0 forbids never reach the wire.
    """

    ILLEGAL = "\x00\x01\x02\x03\x08\x0b\x0c\x0e\x1f\ud800\udfff\ufffe\uffff"
    LEGAL = "\t\n \x7f\x85\xe9\ud7ff\ue000\ufffd\U00010000\U0001f600\U0010ffff"

    def test_xmlSafe(self) -> None:
        """
        L{xmlSafe} removes every character XML 1.0 forbids and keeps every
        other one, including those at the edges of the allowed ranges.
        """
        self.assertEqual(xmlSafe("a" + self.ILLEGAL + "b"), "ab")
        self.assertEqual(xmlSafe(self.LEGAL), self.LEGAL)
        everything = "".join(map(chr, range(0x110000)))
        expected = "\t\n\r" + "".join(
            map(chr, [*range(0x20, 0xD800), *range(0xE000, 0xFFFE), *range(0x10000, 0x110000)])
        )
        self.assertEqual(xmlSafe(everything), expected)

    def test_sendElement(self) -> None:
        """
        An element whose text and attribute hold IRC formatting codes, NUL,
        U+FFFF and a lone surrogate is sent as XML that expat parses back,
        with those characters gone and the rest kept.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        transport.clear()
        m = domish.Element((None, "message"))
        m["to"] = "bob@corp.example"
        m["title"] = "\x01ACTION waves\x01 " + self.ILLEGAL
        m.addElement("body", content="\x02bold\x02 \x03" "4red\x03 \x00\uffff\ud800 é 😀 tab\t" + self.ILLEGAL)
        xs.send(m)
        data = transport.value()
        text = data.decode("utf-8")
        for c in self.ILLEGAL:
            self.assertNotIn(c, text)
        # Parse it back inside a dummy root, as the peer's parser would.
        out = Output(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" + data)
        self.assertEqual(len(out.elements), 1)
        back = out.elements[0]
        self.assertEqual(back["title"], "ACTION waves ")
        self.assertEqual(str(back.body), "bold 4red  é 😀 tab\t")

    def test_sendString(self) -> None:
        """
        Raw strings are cleaned the same way.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER)
        transport.clear()
        xs.send("<message><body>\x02hi\x02\ud800</body></message>")
        self.assertEqual(transport.value(), b"<message><body>hi</body></message>")


class EscapingTests(SynchronousTestCase):
    """
    L{xmlText} and L{xmlAttribute} make of any text what domish's
    serialiser makes of it after L{xmlSafe}, whether the text needs
    escaping or not (their shortcut for text that needs none).
    """

    def samples(self) -> list[str]:
        """
        Every character that is escaped or removed, alone and among others,
        letters and digits of several scripts, and the empty string.
        """
        special = list(SendTests.ILLEGAL + "&<>'\"") + ["]]>", "\r\n"]
        plain = ["", "a", "f09f507f1d8b469c8874e1cfef393e5a", "caf\u00e9", "\u0661\u0662", "\u4e2d\u6587", "x y", "\t", SendTests.LEGAL]
        out = list(plain)
        for p in plain:
            for c in special:
                out += [c, p + c, c + p, p + c + p]
        return out

    def test_text(self) -> None:
        """
        L{xmlText} is domish's escaping of element text after L{xmlSafe}.
        """
        for text in self.samples():
            self.assertEqual(xmlText(text), domish.escapeToXml(xmlSafe(text)), repr(text))

    def test_attribute(self) -> None:
        """
        L{xmlAttribute} is domish's escaping of an attribute value after
        L{xmlSafe}.
        """
        for text in self.samples():
            self.assertEqual(xmlAttribute(text), domish.escapeToXml(xmlSafe(text), isattrib=1), repr(text))


class TextBufferTests(StreamTestCase):
    """
    expat gathers character data in a buffer of L{TEXT_BUFFER_CHARS}
    characters, smaller than pyexpat's default, since every open stream
    keeps it.
    """

    def test_bufferSize(self) -> None:
        """
        The parser of a stream buffers text in L{TEXT_BUFFER_CHARS}
        characters, fewer than pyexpat's 8,192; so does the parser that a
        stream restart makes.
        """
        self.assertLess(TEXT_BUFFER_CHARS, 8192)
        xs, transport, received = self.connect()
        assert xs.stream is not None
        self.assertTrue(xs.stream.parser.buffer_text)
        self.assertEqual(xs.stream.parser.buffer_size, TEXT_BUFFER_CHARS)
        xs.reset()
        assert xs.stream is not None
        self.assertEqual(xs.stream.parser.buffer_size, TEXT_BUFFER_CHARS)

    def test_refusingHandlersShared(self) -> None:
        """
        The handlers that refuse DTDs, entity declarations, comments and
        processing instructions are made once, not once per stream: two
        streams' parsers hold the same ones.
        """
        first, _, _ = self.connect()
        second, _, _ = self.connect()
        assert first.stream is not None and second.stream is not None
        a, b = first.stream.parser, second.stream.parser
        for name in ("StartDoctypeDeclHandler", "EntityDeclHandler", "CommentHandler", "ProcessingInstructionHandler"):
            self.assertIsNotNone(getattr(a, name), name)
            self.assertIs(getattr(a, name), getattr(b, name), name)

    def test_longTextWhole(self) -> None:
        """
        Text longer than the buffer, in one read or in many, reaches the
        stanza whole.
        """
        body = "x&amp;y" * (3 * TEXT_BUFFER_CHARS)
        stanza = f"<message><body>{body}</body></message>".encode()
        for pieces in ([stanza], [stanza[i : i + 1000] for i in range(0, len(stanza), 1000)]):
            xs, transport, received = self.connect(authenticated=True)
            self.feed(xs, HEADER + FIRST, *pieces)
            self.assertOpen(transport)
            self.assertEqual(len(received), 2)
            self.assertEqual(str(received[1].body), "x&y" * (3 * TEXT_BUFFER_CHARS))


#: Limits with the idle-parser drop of the c2s face.
IDLE = StreamLimits(idleParserSeconds=IDLE_PARSER_SECONDS)

#: A stream header that declares a prefix of its own, and stanzas that use
#: it, other namespaces, text, entities, nesting and an empty element.
PREFIXED_OPEN = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='corp.example' version='1.0'>"
)
VARIED = (
    b"<message to='a@corp.example' id='m1'><body>one &amp; two</body>"
    b"<x xmlns='urn:example:x'><y a='1'/></x></message>\n "
    b"<db:result to='corp.example'>key</db:result>"
    b"<presence/>\t<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>"
)


class IdleParserTests(StreamTestCase):
    """
    A stream that received nothing for L{StreamLimits.idleParserSeconds}
    (checked every so many seconds: dropped after one to two periods) and
    has nothing open drops its parser; its next bytes get a new one, fed
    the peer's stream header first, and parse as they would have. Every cap
    holds across the drop.
    """

    def idle(self, xs: HardenedXmlStream) -> None:
        """
        Let two periods pass without a byte.
        """
        self.clock.advance(IDLE_PARSER_SECONDS)
        self.clock.advance(IDLE_PARSER_SECONDS)

    def close(self, xs: HardenedXmlStream) -> None:
        """
        Lose the connection (nothing may stay scheduled).
        """
        xs.connectionLost(Failure(ConnectionError()))

    def test_dropped(self) -> None:
        """
        After two quiet periods the parser is gone and nothing is left
        scheduled; the next stanza is handled as usual, by a new parser
        with the same text buffer and refusing handlers.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        assert xs.stream is not None
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.idle(xs)
        self.assertIsNone(xs.stream)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.feed(xs, b"<message to='a@corp.example'><body>hi</body></message>")
        self.assertEqual([e.name for e in received], ["presence", "message"])
        self.assertEqual(received[1].uri, "jabber:client")
        self.assertEqual(str(received[1].body), "hi")
        assert xs.stream is not None
        self.assertEqual(xs.stream.parser.buffer_size, TEXT_BUFFER_CHARS)
        self.assertIsNotNone(xs.stream.parser.CommentHandler)
        self.assertOpen(transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.close(xs)

    def test_droppedFreedWithoutCollector(self) -> None:
        """
        A dropped parser (the element stream and its expat parser) is freed
        at the drop, without the cyclic garbage collector: nothing is left
        in a reference cycle waiting for its next full collection.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        enabled = gc.isenabled()
        gc.disable()
        try:
            es = xs.stream
            assert es is not None
            # (expat's parser holds the element stream's bound methods,
            # the element stream holds the parser.)
            ref = weakref.ref(es)
            del es
            self.idle(xs)
            self.assertIsNone(xs.stream)
            self.assertIsNone(ref())
        finally:
            if enabled:
                gc.enable()
        self.feed(xs, b"<message to='a@corp.example'><body>hi</body></message>")
        self.assertEqual([e.name for e in received], ["presence", "message"])
        self.assertOpen(transport)
        self.close(xs)

    def test_keptByDefault(self) -> None:
        """
        With the default L{StreamLimits} (C{idleParserSeconds} 0: s2s and
        component streams, tests) the parser is kept and nothing is
        scheduled.
        """
        xs, transport, received = self.connect()
        self.feed(xs, HEADER, FIRST)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertIsNotNone(xs.stream)

    def test_activeKept(self) -> None:
        """
        A stream that receives bytes within every period keeps its parser.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        parser = xs.stream
        for _ in range(10):
            self.clock.advance(IDLE_PARSER_SECONDS * 0.9)
            self.feed(xs, b" ")
        self.assertIs(xs.stream, parser)
        self.close(xs)

    def test_beforeHeaderKept(self) -> None:
        """
        Nothing is dropped before the peer's stream header is complete.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER[:30])
        self.clock.advance(100 * IDLE_PARSER_SECONDS)
        self.assertIsNotNone(xs.stream)
        self.feed(xs, HEADER[30:], FIRST)
        self.assertEqual(len(received), 1)
        self.close(xs)

    def test_openStanzaKept(self) -> None:
        """
        A stanza begun (a start tag not yet complete, an element open, a
        closing tag begun) keeps the parser for as long as it stays open;
        once it ends and the stream is quiet, the parser goes.
        """
        stanza = b"<message to='a@corp.example'><body>hi</body></message>"
        for cut in (3, 20, 30, 40, len(stanza) - 3):
            xs, transport, received = self.connect(IDLE)
            self.feed(xs, HEADER, FIRST, stanza[:cut])
            self.clock.advance(100 * IDLE_PARSER_SECONDS)
            self.assertIsNotNone(xs.stream, cut)
            self.feed(xs, stanza[cut:])
            self.assertEqual(len(received), 2, cut)
            self.idle(xs)
            self.assertIsNone(xs.stream, cut)
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_splitAtEveryPosition(self) -> None:
        """
        Stanzas cut in two at every byte position, with two quiet periods
        between the halves, arrive as they do without the pause: the same
        elements, namespaces (the header's own prefix too), text and
        attributes. The parser is dropped at every cut that falls between
        two stanzas.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, PREFIXED_OPEN, VARIED)
        expected = [e.toXml() for e in received]
        self.assertEqual(len(expected), 4)
        self.close(xs)
        drops = 0
        for cut in range(len(VARIED) + 1):
            xs, transport, received = self.connect(IDLE)
            self.feed(xs, PREFIXED_OPEN, FIRST, VARIED[:cut])
            self.idle(xs)
            drops += xs.stream is None
            self.feed(xs, VARIED[cut:])
            self.assertEqual([e.toXml() for e in received[1:]], expected, cut)
            self.assertOpen(transport)
            self.close(xs)
        # Between stanzas (and after each closing tag, before whitespace).
        self.assertGreaterEqual(drops, 8)

    def test_splitAfterRestart(self) -> None:
        """
        After a stream restart the new header is the one repeated: a drop
        then a stanza parse in the restarted stream's namespaces.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        xs.reset()
        self.feed(xs, PREFIXED_OPEN, b"<presence/>")
        self.idle(xs)
        self.assertIsNone(xs.stream)
        self.feed(xs, b"<db:result to='corp.example'>k</db:result>")
        self.assertEqual((received[-1].uri, received[-1].name), ("jabber:server:dialback", "result"))
        self.assertOpen(transport)
        self.close(xs)

    def boundary(self, authenticated: bool, prefix: bytes, cap: int) -> None:
        """
        After C{prefix} and a drop, a stanza of C{cap} bytes counted as
        without the drop is accepted and one byte more is refused.
        """
        for size, accepted in ((cap, True), (cap + 1, False)):
            xs, transport, received = self.connect(IDLE, authenticated=authenticated)
            self.feed(xs, HEADER, FIRST, prefix)
            self.idle(xs)
            self.assertIsNone(xs.stream)
            self.feed(xs, *chunks(emptyStanza(size), 1000))
            if accepted:
                self.assertOpen(transport)
                self.assertEqual(received[-1].getAttribute("id"), "x" * (size - len(b"<presence id=''/>")))
                self.close(xs)
            else:
                self.assertStreamError(transport, "policy-violation", tooBig=True)
                self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_byteCapsAfterDrop(self) -> None:
        """
        The byte caps hold exactly after a drop (8192 bytes before
        authentication, 262144 after): what came after the last stanza
        before the drop (its closing tag, whitespace) still counts toward
        the next one.
        """
        closing = b"<message><body>x</body></message>"
        self.boundary(False, b"", 8192)
        self.boundary(False, b"  ", 8192 - 2)
        self.boundary(False, closing, 8192 - len(b"</message>"))
        self.boundary(False, closing + b"\n", 8192 - len(b"</message>\n"))
        self.boundary(True, b"", 262144)
        self.boundary(True, closing, 262144 - len(b"</message>"))

    def test_elementCapsAfterDrop(self) -> None:
        """
        The element caps hold after a drop: 32 before authentication and
        1000 after, the 33rd and 1001st refused.
        """
        for authenticated, cap in ((False, 32), (True, 1000)):
            for count, accepted in ((cap, True), (cap + 1, False)):
                xs, transport, received = self.connect(IDLE, authenticated=authenticated)
                self.feed(xs, HEADER, FIRST)
                self.idle(xs)
                self.assertIsNone(xs.stream)
                self.feed(xs, stanzaWithElements(count))
                if accepted:
                    self.assertOpen(transport)
                    self.assertEqual(len(received), 2)
                    self.close(xs)
                else:
                    self.assertStreamError(transport, "policy-violation", tooBig=True)

    def test_authenticatedAfterDrop(self) -> None:
        """
        A stream authenticated while its parser was dropped gets the larger
        caps in the new parser.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        self.idle(xs)
        self.assertIsNone(xs.stream)
        xs.setAuthenticated()
        self.feed(xs, stanzaWithElements(1000))
        self.assertOpen(transport)
        self.assertEqual(len(received), 2)
        self.close(xs)

    def test_restrictedAfterDrop(self) -> None:
        """
        Comments and processing instructions are still refused with
        C{<restricted-xml/>} after a drop, and a DTD (too late after the
        header) with C{<not-well-formed/>}, as without a drop.
        """
        for bad, condition in ((b"<!-- c -->", "restricted-xml"), (b"<?pi x?>", "restricted-xml"),
                               (b"<!DOCTYPE x>", "not-well-formed")):  # fmt: skip
            xs, transport, received = self.connect(IDLE)
            self.feed(xs, HEADER, FIRST)
            self.idle(xs)
            self.assertIsNone(xs.stream)
            self.feed(xs, bad)
            self.assertStreamError(transport, condition)
            self.streamErrors.clear()

    def test_notWellFormedAfterDrop(self) -> None:
        """
        A closing tag that closes nothing, after a drop, is
        C{<not-well-formed/>} as before it.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        self.idle(xs)
        self.feed(xs, b"</message>")
        self.assertStreamError(transport, "not-well-formed")

    def test_closingTagAfterDrop(self) -> None:
        """
        The peer's closing tag after a drop ends the stream as usual: ours
        is sent, and the connection closes.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, FIRST)
        self.idle(xs)
        self.feed(xs, b"</stream:stream>")
        out = Output(transport.value())
        self.assertTrue(out.closed)
        self.assertTrue(transport.disconnecting)
        self.close(xs)

    def test_failedStreamCancelsCheck(self) -> None:
        """
        A stream that fails leaves no idle check scheduled.
        """
        xs, transport, received = self.connect(IDLE)
        self.feed(xs, HEADER, b"<!-- c -->")
        self.assertStreamError(transport, "restricted-xml")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LightStream(HardenedXmlStream):
    """
    A stream that asks for light stanzas and counts those it gets; they go
    on to the observers as domish trees (L{HardenedXmlStream.stanzaReceived}).

    @ivar light: How many L{LightStanza}s arrived.
    """

    lightStanzas = True
    light = 0

    def stanzaReceived(self, element: domish.Element | LightStanza) -> None:
        if isinstance(element, LightStanza):
            self.light += 1
        super().stanzaReceived(element)


class LightHeaderTests(HeaderTests):
    """
    L{HeaderTests} with light stanzas.
    """

    streamClass = LightStream


class LightRestrictedXMLTests(RestrictedXMLTests):
    """
    L{RestrictedXMLTests} with light stanzas.
    """

    streamClass = LightStream


class LightNotWellFormedTests(NotWellFormedTests):
    """
    L{NotWellFormedTests} with light stanzas.
    """

    streamClass = LightStream


class LightStanzaSizeTests(StanzaSizeTests):
    """
    L{StanzaSizeTests} with light stanzas: the byte caps count the same.
    """

    streamClass = LightStream


class LightElementCountTests(ElementCountTests):
    """
    L{ElementCountTests} with light stanzas: elements count the same.
    """

    streamClass = LightStream


class LightRateLimitTests(RateLimitTests):
    """
    L{RateLimitTests} with light stanzas in the queue.
    """

    streamClass = LightStream


class LightTextBufferTests(TextBufferTests):
    """
    L{TextBufferTests} with light stanzas.
    """

    streamClass = LightStream


class LightIdleParserTests(IdleParserTests):
    """
    L{IdleParserTests} with light stanzas: an open light stanza keeps the
    parser as an open domish one does.
    """

    streamClass = LightStream


def shape(node: domish.Element | str) -> object:
    """
    Everything domish records of a parsed element, recursively: namespace,
    name, default namespace, attributes, prefixes, content in order (text
    pieces as they are), and whether each child knows its parent.
    """
    if isinstance(node, str):
        return node
    return (
        node.uri,
        node.name,
        node.defaultUri,
        dict(node.attributes),
        dict(node.localPrefixes),
        [shape(c) for c in node.children],
        [(c.parent is node, c.parent is None) for c in node.children if not isinstance(c, str)],
    )


#: Stanzas for the differential tests: the common shapes (built light) and
#: everything that must turn them domish, or refuse them, on the way.
LIGHT = [
    b"<message to='bob@corp.example/desk' type='chat' id='m1'><body>hello</body></message>",
    b"<message to='bob@corp.example' type='chat'><body>caf\xc3\xa9 \xe2\x98\x83 \xf0\x9d\x84\x9e</body></message>",
    b"<message to='b@c' id='e'><body>a &amp; b &lt;c&gt; &#x263A;&#65;&quot;&apos;</body></message>",
    b"<message to='b@c'><body><![CDATA[<b>not</b> & markup]]> after</body></message>",
    b"<message to='b@c'><body>line\r\nnext\rthird\n</body></message>",
    b"<message to='b@c'>\n  <body>x</body>\n  <thread>t1</thread>\n</message>",
    b"<message to='b@c'><body/></message>",
    b"<message to='b@c'><body></body><body>second</body></message>",
    b"<message to='b@c'><subject>s</subject><body a='1' b=\"2\">x</body></message>",
    b"<message to='b@c' type='chat'/>",
    b"<message>text at the top<body>x</body>more</message>",
    b"<presence/>",
    b"<presence type='unavailable'/>",
    b"<presence><show>away</show><status>out &amp; about</status><priority>5</priority></presence>",
    b"<presence to='bob@corp.example' type='subscribe'/>",
    b"<message xmlns='jabber:client' to='b@c'><body>explicit default</body></message>",
    b"<message to='b@c'><body>" + b"long text " * 700 + b"</body></message>",
]
TURNING = [
    b"<message xml:lang='en' to='b@c'><body>x</body></message>",
    b"<message to='b@c'><body xml:lang='de'>x</body></message>",
    b"<message to='b@c'><body>x</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    b"<message to='b@c'><x xmlns='jabber:x:oob'><url>http://x/</url></x><body>y</body></message>",
    b"<message to='b@c'><body>x<b>bold</b>y</body></message>",
    b"<message to='b@c'><html><body>deep</body></html></message>",
    b"<message to='b@c'><body xmlns='jabber:client'>explicit on child</body></message>",
    b"<message xmlns='jabber:server' to='b@c'><body>other</body></message>",
    b"<c:message xmlns:c='jabber:client' to='b@c'><c:body>prefixed</c:body></c:message>",
    b"<message to='b@c'><body xmlns=''>no namespace</body></message>",
    b"<message xmlns:z='urn:z' z:a='1' to='b@c'><body>x</body></message>",
    b"<message to='b@c'><body xmlns:z='urn:z' z:a='1'>x</body></message>",
    b"<message to='b@c'><db:result>k</db:result><body>x</body></message>",
    b"<db:result to='corp.example'>key</db:result>",
    b"<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    b"<message to='b@c'><body>x</body><thread/><thread/><thread/></message>",
]
HOSTILE = [
    b"<message to='b@c'><body>x<!-- comment --></body></message>",
    b"<message to='b@c'><body>x<?pi data?></body></message>",
    b"<message to='b@c'><body>&undefined;</body></message>",
    b"<message to='b@c'><body>x</bdy></message>",
    b"<message to='b@c'><body>&#0;</body></message>",
    b"<message to='b@c'><body>\xff\xfe</body></message>",
    b"<message to='b@c'><u:body>unbound</u:body></message>",
    b"<message to='b@c' to='twice'><body>x</body></message>",
    b"<message to='b@c'><body>x</body></message><!DOCTYPE x>",
    b"<message to='b@c'><body>x</body></message></stream:stream>",
    b"<message to='b@c'><body>" + b"y" * 900 + b"</body></message>",
]

def randomStanza(rng: random.Random, depth: int) -> str:
    """
    A random element for L{LightDifferentialTests.test_generated}: mostly
    the shapes a client sends, sometimes anything XML (or not quite XML)
    allows.
    """
    names = ["message", "presence", "iq"] if depth == 0 else ["body", "show", "status", "thread", "x", "subject", "message"]
    name = rng.choice(names)
    declarations = ""
    roll = rng.random()
    if roll < 0.08:
        declarations = f" xmlns='{rng.choice(['jabber:client', 'urn:x', ''])}'"
    elif roll < 0.13:
        name = "p:" + name
        declarations = f" xmlns:p='{rng.choice(['jabber:client', 'urn:p'])}'"
    elif roll < 0.15:
        name = "u:" + name  # unbound: not well-formed
    attributes = ""
    for key in rng.sample(["to", "type", "id", "xml:lang", "q:a", "from"], rng.randint(0, 3)):
        if key == "q:a":
            attributes += " xmlns:q='urn:q' q:a='1'"
        else:
            value = rng.choice(["bob@corp.example", "chat", "x&amp;y", "caf\u00e9", ""])
            attributes += f" {key}='{value}'"
    if rng.random() < 0.03:
        attributes += " to='twice' to='again'"
    content = ""
    for _ in range(rng.randint(0, 3)):
        if depth < 3 and rng.random() < 0.4:
            content += randomStanza(rng, depth + 1)
        else:
            content += rng.choice(
                ["hi", " ", "\n", "&amp;", "&lt;b&gt;", "&#x263A;", "&#65;", "<![CDATA[x<y]]>", "caf\u00e9 \u2603", "x" * 50]
                if rng.random() < 0.97
                else ["&#0;", "]]>", "<", "\x01", "&bogus;", "<!--c-->", "<?pi x?>"]
            )
    if not content and rng.random() < 0.5:
        return f"<{name}{declarations}{attributes}/>"
    return f"<{name}{declarations}{attributes}>{content}</{name}>"


#: Small caps, so that the hostile inputs hit them within a few stanzas.
SMALL = StreamLimits(stanzaBytes=1000, elements=4, stanzasPerSecond=1000.0, stanzaBurst=1000, maxQueuedStanzas=1000)


class LightDifferentialTests(StreamTestCase):
    """
    A stream with light stanzas and one without, given the same bytes cut
    the same way, hand on the same elements (as domish trees: everything
    domish records of them) and write the same bytes (header, stream
    errors), whatever the input: common stanzas, stanzas that turn domish
    half-way, hostile ones, in one read, cut at every byte, byte by byte,
    and coalesced into floods.
    """

    def both(self, pieces: list[bytes], limits: StreamLimits = SMALL) -> int:
        """
        Feed C{pieces} to both streams and compare what they did.

        @return: How many light stanzas the light stream handled.
        """
        results = []
        light = 0
        for streamClass in (HardenedXmlStream, LightStream):
            self.streamClass = streamClass
            xs, transport, received = self.connect(limits, authenticated=True)
            for piece in pieces:
                xs.dataReceived(piece)
            errors = [(getattr(f.value, "condition", None), getattr(f.value, "text", None)) for f in self.streamErrors]
            results.append(([shape(e) for e in received], transport.value(), errors, transport.disconnecting, xs.queuedStanzas))
            if isinstance(xs, LightStream):
                light = xs.light
            xs.connectionLost(Failure(ConnectionError()))
        self.assertEqual(results[0], results[1], repr(pieces)[:500])
        return light

    def test_wholeStanzas(self) -> None:
        """
        Each stanza alone after the header, in one read: the same elements;
        the common ones came light, those that turn domish or are refused
        did not.
        """
        for stanza in LIGHT:
            self.assertEqual(self.both([HEADER + stanza], StreamLimits()), 1, repr(stanza))
        for stanza in TURNING:
            self.assertEqual(self.both([HEADER + stanza]), 0, repr(stanza))
        for stanza in HOSTILE:
            self.both([HEADER + stanza])

    def test_splitAtEveryByte(self) -> None:
        """
        Each stanza, after a first one, cut in two at every byte position:
        the same whatever the cut.
        """
        for stanza in LIGHT[:-1] + TURNING + HOSTILE:
            data = FIRST + stanza + b"<presence/>"
            for cut in range(len(data) + 1):
                self.both([HEADER, data[:cut], data[cut:]])

    def test_byteByByte(self) -> None:
        """
        All the stanzas one byte per read, the header included.
        """
        data = HEADER + b"".join(LIGHT[:-1] + TURNING)
        self.assertEqual(self.both(chunks(data, 1), StreamLimits(elements=1000, stanzasPerSecond=1000.0, stanzaBurst=1000)), len(LIGHT) - 1)

    def test_prefixedHeader(self) -> None:
        """
        Under a header that declares a prefix of its own, a stanza that
        uses it, and one of another default namespace, turn domish alike.
        """
        stanzas = [
            b"<message to='b@c'><db:result>k</db:result></message>",
            b"<db:message to='b@c'><body>x</body></db:message>",
        ]
        for stanza in stanzas:
            for cut in range(len(stanza) + 1):
                self.both([PREFIXED_OPEN, stanza[:cut], stanza[cut:]])
        other = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
        self.assertEqual(self.both([other + LIGHT[0]]), 0)

    def test_floods(self) -> None:
        """
        Hundreds of stanzas of every kind in one read (past the rate limit,
        so most wait in the queue), and past the queue's bound, alike.
        """
        mixed = b"".join(itertools.islice(itertools.cycle(LIGHT[:-1] + TURNING), 600))
        self.both([HEADER + mixed], StreamLimits(stanzasPerSecond=10.0, stanzaBurst=20, maxQueuedStanzas=1000))
        self.both([HEADER + mixed], StreamLimits(stanzasPerSecond=10.0, stanzaBurst=20, maxQueuedStanzas=100))
        self.both([HEADER, mixed[:7000], mixed[7000:]], StreamLimits(stanzasPerSecond=10.0, stanzaBurst=20, maxQueuedStanzas=1000))

    def test_elementCapBoundary(self) -> None:
        """
        With a cap of N elements, a light stanza of N elements is handled
        and one of N + 1 refused, counted as domish counts them, whether
        the one too many is a plain child or one that turns it domish.
        """
        for cap in (1, 2, 3):
            limits = StreamLimits(elements=cap)
            fits = b"<message to='b@c'>" + b"<body>x</body>" * (cap - 1) + b"</message>"
            self.assertEqual(self.both([HEADER + fits], limits), 1)
            for extra in (b"<body>x</body>", b"<x xmlns='urn:x'/>"):
                over = fits.replace(b"</message>", extra + b"</message>")
                self.both([HEADER + over], limits)
                self.both(chunks(HEADER + over, 7), limits)

    def test_byteCapBoundary(self) -> None:
        """
        Light stanzas are held to the byte cap as domish ones: the cap is
        accepted, one byte more refused, in one read or in pieces.
        """
        for cap in (200, 1000):
            limits = StreamLimits(stanzaBytes=cap)
            for size in (cap, cap + 1):
                stanza = messageUpToClosingTag(size)
                self.both([HEADER + FIRST + stanza], limits)
                self.both([HEADER, FIRST, *chunks(stanza, 13)], limits)

    def test_generated(self) -> None:
        """
        Random stanzas (random names, namespaces declared or prefixed or
        unbound, attributes plain, namespaced, duplicated or C{xml:lang},
        text with entities, character references, CDATA, comments, processing
        instructions and non-ASCII, children nested up to three deep), cut at
        random places, give the same on both streams; many of them came
        light.
        """
        light = 0
        for seed in range(200):
            rng = random.Random(seed)
            data = b"".join(randomStanza(rng, 0).encode("utf-8") for _ in range(8))
            cuts = sorted(rng.sample(range(len(data) + 1), min(6, len(data) + 1)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            light += self.both([HEADER, *pieces], StreamLimits(elements=12, stanzasPerSecond=1000.0, stanzaBurst=1000))
        self.assertGreater(light, 150)

    def test_lightElement(self) -> None:
        """
        L{LightStanza.element} is made once, and its text and attributes
        are those C{childText} and C{getAttribute} give.
        """
        self.streamClass = LightStream
        xs, transport, received = self.connect(StreamLimits())
        got: list[domish.Element | LightStanza] = []
        xs.stanzaReceived = got.append  # type: ignore[method-assign, assignment]
        self.feed(xs, HEADER, b"<message to='b@c'><body>a</body><body>b</body><thread/></message>")
        [stanza] = got
        assert isinstance(stanza, LightStanza)
        self.assertIs(stanza.element(), stanza.element())
        self.assertEqual(stanza.childText("body"), "a")
        self.assertEqual(stanza.childText("thread"), "")
        self.assertIsNone(stanza.childText("subject"))
        self.assertEqual(stanza.getAttribute("to"), "b@c")
        self.assertIsNone(stanza.getAttribute("from"))
