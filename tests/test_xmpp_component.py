# -*- test-case-name: tests.test_xmpp_component -*-
"""
Tests for L{imgateway.adapters.xmpp.component}: XEP-0106 escaping, the
component's JID mapping and configuration, and the XEP-0114 link against
Twisted's own component server authenticator, in memory (a memory reactor
for the connection and the clock, C{iosim} for the bytes).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import component, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from imgateway.adapters.xmpp.component import (
    COMPONENT_LIMITS,
    NS_COMPONENT,
    ComponentConfig,
    ComponentJIDMapper,
    escapeLocalpart,
    makeComponentService,
    parseComponentConfig,
    parseComponents,
    unescapeLocalpart,
)
from imgateway.adapters.xmpp.adapter import XMPPAdapter
from imgateway.adapters.xmpp.jid import InvalidJID
from imgateway.config import ConfigTable, HomeConfig
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, DeliveryStatus, NoRoute
from imgateway.core.events import Message
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import AuthorisationState
from imgateway.testing import RecordingSessionClient, addUser, memoryGateway
from tests.test_xmpp_federation import isLeaseCall

SECRET = "s3cret"
PORT = 5347
ALICE_JID = "alice\\40corp.example@gw.xmpp.example"

#: XEP-0106 section 5 (Examples): unescaped localpart, escaped localpart.
XEP_EXAMPLES = [
    ("space cadet", "space\\20cadet"),
    ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
    ("at&t guy", "at\\26t\\20guy"),
    ("d'artagnan", "d\\27artagnan"),
    ("/.fanboy", "\\2f.fanboy"),
    ("::foo::", "\\3a\\3afoo\\3a\\3a"),
    ("<foo>", "\\3cfoo\\3e"),
    ("user@host", "user\\40host"),
    ("c:\\net", "c\\3a\\net"),
    ("c:\\\\net", "c\\3a\\\\net"),
    ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
    ("c:\\5commas", "c\\3a\\5c5commas"),
]

#: More vectors: XEP-0106 section 4.2's, and strings whose backslashes do or
#: do not start something that reads as an escape sequence.
MORE_VECTORS = [
    ("\\3and\\2is\\5cool", "\\5c3and\\2is\\5c5cool"),
    ("\\5c", "\\5c5c"),
    ("\\2plus\\2is\\4", "\\2plus\\2is\\4"),
    ("foo\\bar", "foo\\bar"),
    ("foo\\41r", "foo\\41r"),
    ("call\\20me", "call\\5c20me"),
    ("alice@corp.example", "alice\\40corp.example"),
    ("trailing\\", "trailing\\"),
    ("tréville@musketeers.lit", "tréville\\40musketeers.lit"),
]


class EscapingTests(SynchronousTestCase):
    """
    L{escapeLocalpart} and L{unescapeLocalpart} (XEP-0106).
    """

    def test_examples(self) -> None:
        """
        The XEP's examples escape and unescape as it says.
        """
        for plain, escaped in XEP_EXAMPLES + MORE_VECTORS:
            self.assertEqual(escapeLocalpart(plain), escaped, plain)
            self.assertEqual(unescapeLocalpart(escaped), plain, escaped)

    def test_roundTrip(self) -> None:
        """
        Unescaping undoes escaping for every combination of the table's
        characters, backslashes and hex digits.
        """
        alphabet = ' "&\'/:<>@\\25cfa0x'
        for a in alphabet:
            for b in alphabet:
                for c in alphabet:
                    text = f"x{a}{b}{c}x"
                    self.assertEqual(unescapeLocalpart(escapeLocalpart(text)), text, text)

    def test_escapedIsNodeprepSafe(self) -> None:
        """
        An escaped localpart holds none of the characters nodeprep forbids,
        so it makes a JID.
        """
        for plain, _ in XEP_EXAMPLES:
            jid = JID(tuple=(escapeLocalpart(plain), "gw.xmpp.example", None))
            self.assertEqual(unescapeLocalpart(str(jid.user)), plain.lower())

    def test_unknownSequencesKept(self) -> None:
        """
        Backslash sequences that are not in the table are left alone when
        unescaping (uppercase hex included).
        """
        self.assertEqual(unescapeLocalpart("a\\41b\\5Cc\\"), "a\\41b\\5Cc\\")

    def test_spaces(self) -> None:
        """
        A localpart may not start or end with a space, nor be empty.
        """
        for text in [" lead", "trail ", ""]:
            self.assertRaises(ValueError, escapeLocalpart, text)


class MapperTests(SynchronousTestCase):
    """
    L{ComponentJIDMapper}.
    """

    def setUp(self) -> None:
        self.mapper = ComponentJIDMapper("gw.xmpp.example", ["corp.example"])
        self.alice = Address.fromString("alice@corp.example")

    def test_local(self) -> None:
        """
        Our users are escaped addresses on the component's domain, and back.
        """
        jid = self.mapper.localJID(self.alice)
        self.assertEqual(jid.full(), ALICE_JID)
        self.assertEqual(self.mapper.localAddress(JID(ALICE_JID + "/res")), self.alice)
        self.assertEqual(self.mapper.localAddress(JID("ALICE\\40Corp.Example@gw.xmpp.example")), self.alice)

    def test_notLocal(self) -> None:
        """
        JIDs that name none of our users are refused: another host, another
        domain, no localpart, no '@', a non-canonical form.
        """
        for text in [
            "alice\\40corp.example@xmpp.example",
            "bob\\40other.example@gw.xmpp.example",
            "gw.xmpp.example",
            "alice@gw.xmpp.example",
            "im\\3aalice\\40corp.example@gw.xmpp.example",
            "a\\40b\\40corp.example@gw.xmpp.example",
        ]:
            self.assertRaises(InvalidJID, self.mapper.localAddress, JID(text))

    def test_remote(self) -> None:
        """
        Remote users are their own JIDs.
        """
        romeo = Address.fromString("romeo@xmpp.example")
        self.assertEqual(self.mapper.remoteJID(romeo).full(), "romeo@xmpp.example")
        self.assertEqual(self.mapper.remoteAddress(JID("romeo@xmpp.example/balcony")), romeo)
        self.assertRaises(InvalidJID, self.mapper.remoteAddress, JID("xmpp.example"))

    def test_tooLong(self) -> None:
        """
        An address too long for a localpart once escaped cannot be mapped.
        """
        long = Address.fromParts("a" * 1020, "corp.example")
        self.assertRaises(InvalidJID, self.mapper.localJID, long)


class ConfigTests(SynchronousTestCase):
    """
    L{parseComponentConfig} and L{parseComponents}.
    """

    GOOD: dict[str, object] = {
        "jid": "gw.xmpp.example",
        "secret": SECRET,
        "endpoint": "tcp:127.0.0.1:5347",
        "domains": ["xmpp.example", "XMPP2.example."],
    }

    def parse(self, **changes: object) -> ComponentConfig:
        table = {**self.GOOD, **changes}
        return parseComponentConfig(ConfigTable({k: v for k, v in table.items() if v is not None}, "x.toml [xmpp] component[0]"), MemoryReactorClock())

    def test_secretNotInRepr(self) -> None:
        """
        The secret stays out of the C{repr} of a component's config, and
        of the whole C{[xmpp]} config holding it.
        """
        config = self.parse()
        self.assertNotIn(SECRET, repr(config))
        self.assertIn("gw.xmpp.example", repr(config))
        xmpp = XMPPAdapter().parseConfig(
            ConfigTable({"listen": [], "require_tls": False, "component": [dict(self.GOOD)]}, "x.toml [xmpp]"),
            MemoryReactorClock(),
        )
        self.assertNotIn(SECRET, repr(xmpp))

    def test_good(self) -> None:
        """
        The required keys, with defaults for the rest.
        """
        config = self.parse()
        self.assertEqual(
            config,
            ComponentConfig("gw.xmpp.example", SECRET, "tcp:127.0.0.1:5347", ("xmpp.example", "xmpp2.example")),
        )
        self.assertEqual((config.statusWait, config.limits.stanzaBytes), (1.0, 512 * 1024))

    def test_optional(self) -> None:
        """
        The optional keys.
        """
        config = self.parse(status_wait=2, stanza_bytes=100000, stanzas_per_second=10, stanza_burst=20,
                            handshake_timeout=5, max_reconnect_delay=30)
        self.assertEqual(
            (config.statusWait, config.limits.stanzaBytes, config.limits.stanzasPerSecond, config.limits.stanzaBurst,
             config.handshakeTimeout, config.maxDelay),
            (2.0, 100000, 10.0, 20, 5.0, 30.0),
        )

    def test_errors(self) -> None:
        """
        Bad values are errors naming the table and the key.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"jid": "gw@xmpp.example"}, "jid"),
            ({"jid": "gw.xmpp.example/r"}, "jid"),
            ({"jid": None}, "jid"),
            ({"secret": ""}, "secret"),
            ({"endpoint": "nonsense:1"}, "endpoint"),
            ({"domains": []}, "domains"),
            ({"domains": ["a..b"]}, "domains"),
            ({"domains": ["x.example", "X.example"]}, "domains"),
            ({"domains": [1]}, "domains"),
            ({"status_wait": 0}, "status_wait"),
            ({"stanza_bytes": 100}, "stanza_bytes"),
            ({"colour": "blue"}, "colour"),
        ]
        for changes, key in cases:
            e = self.assertRaises(ConfigError, self.parse, **changes)
            self.assertIn(f"component[0]: {key}:", str(e))

    def test_trustRootsFile(self) -> None:
        """
        An endpoint whose C{trustRoots} names a file rather than a folder
        is refused, saying what to do.
        """
        ca = FilePath(self.mktemp())
        ca.setContent(b"")
        endpoint = f"tls:xmpp.example:5347:trustRoots={ca.path}"
        e = self.assertRaises(ConfigError, self.parse, endpoint=endpoint)
        self.assertEqual(
            str(e),
            f"x.toml [xmpp] component[0]: endpoint: bad client endpoint {endpoint!r}: trustRoots must be a"
            f" folder of PEM files; {ca.path} is a file: put it in a folder",
        )

    def test_components(self) -> None:
        """
        L{parseComponents} reads an array of tables; JIDs and domains must
        be distinct.
        """
        reactor = MemoryReactorClock()
        other = {**self.GOOD, "jid": "gw2.xmpp.example", "domains": ["other.example"]}
        configs = parseComponents(ConfigTable({"component": [self.GOOD, other]}, "x [xmpp]"), reactor)
        self.assertEqual([c.jid for c in configs], ["gw.xmpp.example", "gw2.xmpp.example"])
        self.assertEqual(parseComponents(ConfigTable({}, "x [xmpp]"), reactor), ())
        for second, key in [({**other, "jid": "gw.xmpp.example"}, "jid"), ({**other, "domains": ["xmpp.example"]}, "domains")]:
            e = self.assertRaises(ConfigError, parseComponents, ConfigTable({"component": [self.GOOD, second]}, "x [xmpp]"), reactor)
            self.assertIn(f"component[1]: {key}:", str(e))
        self.assertRaises(ConfigError, parseComponents, ConfigTable({"component": ["x"]}, "x [xmpp]"), reactor)


class FakeServerStream(xmlstream.XmlStream):
    """
    The server end: Twisted's XEP-0114 listening authenticator, recording
    the stanzas received once the component is authenticated.
    """

    def __init__(self, authenticator: Any) -> None:
        super().__init__(authenticator)
        self.received: list[domish.Element] = []
        self.authenticated = False
        self.ended = False
        self.addObserver(xmlstream.STREAM_AUTHD_EVENT, self._authd)

    def onDocumentEnd(self) -> None:
        self.ended = True
        super().onDocumentEnd()

    def _authd(self, _: object) -> None:
        self.authenticated = True
        self.addObserver("/*", self.received.append)


class SilentServerStream(xmlstream.XmlStream):
    """
    A server that never answers.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


class LinkTests(SynchronousTestCase):
    """
    The component link against a server in memory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.gateway = memoryGateway(self.reactor)
        self.alice = addUser(self.gateway, "alice", "pw")
        self.romeo = Address.fromString("romeo@xmpp.example")
        self.serverFactory = xmlstream.XmlStreamServerFactory(lambda: component.ListenComponentAuthenticator(SECRET))
        self.serverFactory.protocol = FakeServerStream
        self.servers: list[FakeServerStream] = []
        self.serverFactory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self.servers.append)
        TCP4ServerEndpoint(self.reactor, PORT).listen(self.serverFactory)
        self.completer = ConnectionCompleter(self.reactor)
        self.config = ComponentConfig("gw.xmpp.example", SECRET, f"tcp:127.0.0.1:{PORT}", ("xmpp.example",))
        self.service = makeComponentService(
            self.gateway, self.config, TCP4ClientEndpoint(self.reactor, "127.0.0.1", PORT)
        )
        self.service.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            d = self.service.stopService()
            if hasattr(self, "pump"):
                self.pump.flush()
            assert d is not None
            self.successResultOf(d)
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if not isLeaseCall(c)], [])

    def connect(self) -> IOPump:
        pump = self.completer.succeedOnce()
        assert pump is not None
        self.pump = pump
        pump.flush()
        return pump

    def serverSend(self, xml: str) -> None:
        self.servers[-1].send(xml)
        self.pump.flush()

    def test_handshake(self) -> None:
        """
        The component opens a C{jabber:component:accept} stream to its JID,
        and the server accepts its handshake (SHA-1 of the stream id and
        the secret); the link is then up.
        """
        self.assertIsNone(self.service.link.stream)
        self.connect()
        [server] = self.servers
        self.assertTrue(server.authenticated)
        self.assertEqual(server.namespace, NS_COMPONENT)
        self.assertEqual(str(server.thisEntity), "gw.xmpp.example")
        self.assertIsNotNone(self.service.link.stream)
        self.assertEqual(self.service.link.stream.limits, COMPONENT_LIMITS)  # type: ignore[union-attr]
        self.assertTrue(self.service.link.stream.authenticated)  # type: ignore[union-attr]

    def test_secretNotLogged(self) -> None:
        """
        Nothing logged while a component connects, is refused, and
        connects again holds the secret or the handshake's hash of it.
        """
        with capturedLogs() as events:
            self.connect()
            sid = self.servers[0].sid
            self.service.link.stream.transport.loseConnection()  # type: ignore[union-attr]
            self.pump.flush()
            self.serverFactory.authenticatorFactory = lambda: component.ListenComponentAuthenticator("other")
            self.reactor.advance(self.config.maxDelay + 1)
            self.connect()
        digest = hashlib.sha1(f"{sid}{SECRET}".encode()).hexdigest()
        self.assertTrue(events)
        for event in events:
            text = f"{formatEvent(event)} {event!r}"
            self.assertNotIn(SECRET, text)
            self.assertNotIn(digest, text)

    def test_messageLimitFromGateway(self) -> None:
        """
        The route's longest message body is the gateway's
        C{max_message_chars}, read through L{IGateway.config}: the
        component never reaches into the home server.
        """
        gateway = memoryGateway(MemoryReactorClock(), home=HomeConfig(maxMessageChars=100))
        gateway.homeServer = None  # type: ignore[assignment]
        service = makeComponentService(gateway, self.config, TCP4ClientEndpoint(self.reactor, "127.0.0.1", PORT))
        self.assertEqual(service.route.limits.maxBodyChars, 100)

    def test_routes(self) -> None:
        """
        While it runs, the service is the route of its domains; stopping
        it removes them.
        """
        self.assertIs(self.gateway.router.routeFor("xmpp.example"), self.service.route)
        self.connect()
        self.stop()
        self.assertIsNone(self.gateway.router.routeFor("xmpp.example"))

    def test_messagesBothWays(self) -> None:
        """
        A message from our user leaves as the escaped JID; a message from
        the server's user to that JID reaches ours.
        """
        self.connect()
        client = RecordingSessionClient()
        session = self.successResultOf(self.gateway.homeServer.openSession(self.alice, client, "desk"))
        session.publish(Presence(PresenceState.ONLINE))
        d = session.sendMessage(self.romeo, "hello romeo", messageId="m1")
        self.pump.flush()
        [m] = self.servers[0].received
        self.assertEqual((m.uri, m["from"], m["to"], m["id"]), (NS_COMPONENT, ALICE_JID, "romeo@xmpp.example", "m1"))
        self.serverSend(f"<message from='romeo@xmpp.example/b' to='{ALICE_JID}'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
        self.assertEqual(self.successResultOf(d), DeliveryStatus.DELIVERED)
        self.serverSend(f"<message type='chat' id='r1' from='romeo@xmpp.example/b' to='{ALICE_JID}'><body>hi alice</body></message>")
        self.assertEqual([(m.sender, m.body) for m in client.messages], [(self.romeo, "hi alice")])

    def test_disco(self) -> None:
        """
        The component JID answers disco#info as a gateway.
        """
        self.connect()
        self.serverSend("<iq type='get' id='d1' from='romeo@xmpp.example/b' to='gw.xmpp.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        [reply] = self.servers[0].received
        [query] = reply.elements()
        [identity] = [e for e in query.elements() if e.name == "identity"]
        self.assertEqual((reply["type"], identity["category"], identity["type"]), ("result", "gateway", "impp"))
        self.assertIn("corp.example", identity["name"])

    def test_wrongSecret(self) -> None:
        """
        A refused handshake is logged, the link stays down, and the next
        attempt waits longer than the last.
        """
        self.serverFactory.authenticatorFactory = lambda: component.ListenComponentAuthenticator("other")
        self.connect()
        self.assertIsNone(self.service.link.stream)
        self.assertEqual(self.service.link.failures, 1)
        self.failureResultOf(self.service.route.deliver(Message(self.alice, self.romeo, "x")), NoRoute)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(self.config.initialDelay * 1.5 + 1.01)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.connect()
        self.assertEqual(self.service.link.failures, 2)
        self.reactor.advance(self.config.initialDelay * 1.5**2 - 0.01)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(1.02)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_handshakeTimeout(self) -> None:
        """
        A server that does not answer the stream header is dropped after
        C{handshakeTimeout} seconds, and counts as a failure.
        """
        self.serverFactory.protocol = SilentServerStream
        stream = self.connect().client._wrappedProtocol  # (the endpoint wraps it)
        self.assertTrue(stream._sendGuard.registered)
        self.reactor.advance(self.config.handshakeTimeout)
        # The guard lets go before the close (a TLS transport would wait for it).
        self.assertFalse(stream._sendGuard.registered)
        self.pump.flush()
        self.assertEqual(self.service.link.failures, 1)
        self.assertIsNone(self.service.link.stream)

    def test_reconnect(self) -> None:
        """
        When the connection drops, remote contacts are reported offline;
        after reconnecting, they are probed again.
        """
        self.gateway.homeStore.authorisations[(self.romeo, self.alice)] = AuthorisationState.AUTHORISED  # type: ignore[attr-defined]
        self.connect()
        client = RecordingSessionClient()
        self.successResultOf(self.gateway.homeServer.openSession(self.alice, client, "desk"))
        self.pump.flush()
        self.serverSend(f"<presence from='romeo@xmpp.example/b' to='{ALICE_JID}'><show>dnd</show></presence>")
        self.assertEqual(client.presences[-1], (self.romeo, Presence(PresenceState.BUSY)))
        del self.servers[0].received[:]
        self.servers[0].transport.loseConnection()  # type: ignore[union-attr]
        self.pump.flush()
        self.assertIsNone(self.service.link.stream)
        self.assertEqual(client.presences[-1], (self.romeo, Presence(PresenceState.OFFLINE)))
        self.reactor.advance(self.config.initialDelay * 1.5 + 1.01)
        self.connect()
        [probe] = self.servers[1].received
        self.assertEqual((probe["type"], probe["from"], probe["to"]), ("probe", ALICE_JID, "romeo@xmpp.example"))

    def test_stanzaTooBig(self) -> None:
        """
        Stanzas are capped at 512 KiB: a bigger one closes the stream with
        C{policy-violation}.
        """
        self.connect()
        self.serverSend(f"<message from='romeo@xmpp.example/b' to='{ALICE_JID}'><body>{'x' * (400 * 1024)}</body></message>")
        self.assertIsNotNone(self.service.link.stream)
        self.servers[0].send(f"<message from='romeo@xmpp.example/b' to='{ALICE_JID}'><body>{'x' * (600 * 1024)}</body></message>")
        self.pump.flush()
        self.assertIsNone(self.service.link.stream)
        [error] = self.servers[0].received[-1:]
        self.assertEqual(error.name, "error")
        self.assertIn("policy-violation", error.toXml())

    def test_closingTagAnswered(self) -> None:
        """
        When the server closes the component's stream, the component
        answers with its own closing tag (RFC 6120 section 4.4) before the
        connection closes, and the link is down.
        """
        self.connect()
        [server] = self.servers
        server.sendFooter()
        self.pump.flush()
        self.assertTrue(server.ended)
        self.assertIsNone(self.service.link.stream)

    def test_ownDomain(self) -> None:
        """
        A component may not reach the gateway's own domain.
        """
        config = ComponentConfig("gw.xmpp.example", SECRET, "tcp:127.0.0.1:1", ("corp.example",))
        self.assertRaises(ConfigError, makeComponentService, self.gateway, config)
