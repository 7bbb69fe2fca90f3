"""
Unit tests for the XMPP c2s face (L{imgateway.adapters.xmpp.c2s}) on a fake
transport and clock, over a memory gateway. Real clients over real TLS are
in C{tests/e2e/test_xmpp_c2s.py}.
"""

from __future__ import annotations

import base64
import datetime
import random
import unicodedata
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from zope.interface.verify import verifyObject

from imgateway.adapters.xmpp.adapter import XMPPAdapter
from imgateway.adapters.xmpp.c2s import (
    NS_ROSTER,
    NS_STREAMS,
    C2SConfig,
    C2SFactory,
    C2SProtocol,
    _messageElement,
    _presenceElement,
    _rosterItem,
)
from imgateway.adapters.xmpp.jid import jidOf
from imgateway.adapters.xmpp.mapping import presenceStanzaParts
from imgateway.adapters.xmpp.stream import IDLE_PARSER_SECONDS, NS_STREAM_LIMITS, LightStanza, StreamLimits, xmlSafe
from imgateway.auth.sasl import clientMechanism
from imgateway.config import ConfigTable
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, DeliveryStatus, UserOffline
from imgateway.core.events import Message, MessageMark
from imgateway.core.presence import Presence, PresenceState
from imgateway.home.server import Session
from imgateway.interfaces import IProtocolAdapter, ISessionClient
from imgateway.malloctrim import MALLOC_TRIM_SECONDS
from imgateway.testing import (
    CertificateAuthority,
    PasswordCheckingDirectory,
    RecordingSessionClient,
    XmlStreamPeer,
    addUser,
    certificatePEM,
    keyPEM,
    memoryGateway,
    writePEM,
)
from tests.test_native_mapping import scrambleCoreValues
from tests.test_router_front import CAROL, EXTERNAL, INTERNAL, FailingProxy, proxiedGateway, routerGateway
from tests.test_net_certificates import DAY, NOW

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
)
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)


class Client(XmlStreamPeer):
    """
    The client end of one c2s connection: write XML, read what the server
    wrote as elements.
    """

    def __init__(self, factory: C2SFactory, peer: IPv4Address = LOOPBACK) -> None:
        super().__init__(factory.buildProtocol(peer), peer, IPv4Address("TCP", "127.0.0.1", 5222))
        self.protocol: C2SProtocol

    def open(self) -> domish.Element:
        """
        Send a stream header; return the features.
        """
        self.restart()
        self.write(HEADER)
        [features] = self.read()
        return features

    def login(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> None:
        self.open()
        mech = clientMechanism(mechanism, user, password)
        self.write(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>"
            f"{base64.b64encode(mech.start()).decode()}</auth>"
        )
        while True:
            [reply] = self.read()
            if reply.name == "challenge":
                data = mech.step(base64.b64decode(str(reply)))
                self.write(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(data).decode() or '='}</response>")
            else:
                break
        assert reply.name == "success", reply.toXml()
        mech.verifyFinal(base64.b64decode(str(reply)) if str(reply) not in ("", "=") else b"")

    def bind(self, user: str, password: str, resource: str = "desk") -> str:
        self.login(user, password)
        features = self.open()
        assert any(e.name == "bind" for e in features.elements()), features.toXml()
        self.write(
            "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        [result] = self.read()
        assert result["type"] == "result", result.toXml()
        return str(next(result.elements()).firstChildElement())


class C2STestsMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        self.alice = addUser(self.gateway, "alice", "alice-pw")
        self.bob = addUser(self.gateway, "bob", "bob-pw")
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)

    def client(self) -> Client:
        return Client(self.factory)

    def bound(self, user: str = "alice", resource: str = "desk") -> Client:
        c = self.client()
        c.bind(user, f"{user}-pw", resource)
        return c


class NegotiationTests(C2STestsMixin, SynchronousTestCase):
    """
    Stream headers, features, SASL and binding.
    """

    def test_interfaces(self) -> None:
        """
        The protocol is an L{ISessionClient}; the plugin an
        L{IProtocolAdapter}.
        """
        verifyObject(ISessionClient, self.client().protocol)
        verifyObject(IProtocolAdapter, XMPPAdapter())

    def test_features(self) -> None:
        """
        Before login the server offers SASL (PLAIN on loopback too); after,
        resource binding.
        """
        features = self.client().open()
        [mechanisms] = [e for e in features.elements() if e.name == "mechanisms"]
        self.assertEqual([str(m) for m in mechanisms.elements()], ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])

    def test_streamLimitsAdvertised(self) -> None:
        """
        XEP-0478: the features before login advertise the pre-login
        stanza cap and the login timeout as idle seconds; after login, the
        larger cap (and no idle timeout: the stream is not closed for
        idleness).
        """
        c = self.client()

        def limits(features: domish.Element) -> dict[str, str]:
            [element] = [e for e in features.elements() if (e.uri, e.name) == (NS_STREAM_LIMITS, "limits")]
            return {child.name: str(child) for child in element.elements()}

        self.assertEqual(limits(c.open()), {"max-bytes": "8192", "idle-seconds": "60"})
        c = self.client()
        c.login("alice", "alice-pw")
        self.assertEqual(limits(c.open()), {"max-bytes": "262144"})

    def test_featuresSerialisedOncePerListener(self) -> None:
        """
        The features are serialised once per listener for each stage (and
        what else they depend on), not per stream: the factory keeps the
        text, and every stream at that stage gets the same bytes; a stream
        from another host (no PLAIN without TLS) gets its own.
        """
        factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)
        first, second = Client(factory), Client(factory)
        sent = []
        for c in (first, second):
            c.restart()
            c.write(HEADER)
            sent.append(c.text())
        self.assertEqual(len(factory.featuresText), 1)
        [text] = factory.featuresText.values()
        self.assertTrue(sent[0].endswith(text), sent[0])
        self.assertTrue(sent[1].endswith(text), sent[1])
        remote = Client(factory, REMOTE).open()
        self.assertEqual(len(factory.featuresText), 2)
        [mechanisms] = [e for e in remote.elements() if e.name == "mechanisms"]
        self.assertEqual([str(m) for m in mechanisms.elements()], ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        third = Client(factory)
        third.login("alice", "alice-pw")
        self.assertIn("bind", [e.name for e in third.open().elements()])
        self.assertEqual(len(factory.featuresText), 3)

    def test_headerAsTwisted(self) -> None:
        """
        The c2s stream's header, serialised in place, is byte for byte
        what Twisted's C{XmlStream.sendHeader} sends for the same stream:
        after a client's header (with the stream's id and version) and
        before one (a stream error's header), with and without a domain.
        """
        from imgateway.adapters.xmpp.jid import parseJID

        states: list[dict[str, Any]] = [
            {"thisEntity": parseJID("corp.example"), "sid": "0a1b2c3d4e5f6071", "version": (1, 0)},
            {"thisEntity": parseJID("corp.example"), "sid": None, "version": (0, 9)},
            {"thisEntity": None, "sid": None, "version": (1, 0)},
        ]
        for state in states:
            written = []
            for send in (C2SProtocol.sendHeader, xmlstream.XmlStream.sendHeader):
                c = self.client()
                c.transport.clear()
                for name, value in state.items():
                    setattr(c.protocol, name, value)
                send(c.protocol)
                self.assertTrue(c.protocol._headerSent)
                written.append(c.transport.value())
            self.assertEqual(written[0], written[1], state)
        c = self.client()
        c.open()
        self.assertTrue(c.root is not None and c.root.getAttribute("version") == "1.0")

    def test_noObserversPerHeader(self) -> None:
        """
        A c2s stream adds no observer at its headers (Twisted's
        C{XmlStream} adds one for stream errors at every header, which
        nothing here would call: every element goes to C{elementReceived}),
        so none piles up over a login's two headers; a client's stream
        error still closes the stream.
        """
        c = self.bound()
        self.assertEqual((c.protocol._eventObservers, c.protocol._xpathObservers), ({}, {}))
        c.write("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
        self.assertTrue(c.transport.disconnecting)

    def test_headerVersion(self) -> None:
        """
        The stream's version is the lower of 1.0 and the client's: a
        header without a version, or with one that does not read as
        C{major.minor}, is a version below 1.0, refused with
        C{<unsupported-version/>}.
        """
        for version in ("", " version='0.9'", " version='1'", " version='x.y'"):
            c = self.client()
            c.write(HEADER.replace(" version='1.0'>", version + ">"))
            self.assertIn("unsupported-version", c.text(), version)
            self.assertTrue(c.transport.disconnecting)
        c = self.client()
        c.write(HEADER.replace(" version='1.0'>", " version='1.5'>"))
        self.assertEqual(c.protocol.version, (1, 0))
        self.assertIn("version='1.0'", c.text())

    def test_oneLogLinePerLogin(self) -> None:
        """
        A login is one line of the c2s face's log, at the bind: who
        authenticated, from where, with which mechanism, and the bound JID
        and session (the home server logs the session's opening and
        closing on its own).
        """
        with capturedLogs() as events:
            c = self.bound()
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("C2SProtocol")]
        self.assertEqual(len(lines), 1, lines)
        [line] = lines
        assert c.protocol.session is not None
        session = c.protocol.session.sessionId
        self.assertEqual(
            line,
            f"alice@corp.example authenticated from {LOOPBACK!r} (SCRAM-SHA-256) and bound"
            f" alice@corp.example/desk as session {session}",
        )

    def test_unboundLogged(self) -> None:
        """
        A client that authenticates and closes its stream before binding a
        resource is logged when the stream closes: that it authenticated,
        from where, with which mechanism.
        """
        c = self.client()
        c.login("alice", "alice-pw", "SCRAM-SHA-1")
        with capturedLogs() as events:
            c.protocol.connectionLost(Failure(ConnectionDone()))
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("C2SProtocol")]
        self.assertEqual(
            lines,
            [f"alice@corp.example authenticated from {LOOPBACK!r} (SCRAM-SHA-1); the stream closed before a resource was bound"],
        )
        # A stream that never authenticated, or was bound, logs no such line.
        for c in (self.client(), self.bound()):
            with capturedLogs() as events:
                c.protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual([e for e in events if "authenticated" in formatEvent(e)], [])

    def test_loginRepliesWireForm(self) -> None:
        """
        The SASL replies and the bind result, serialised without domish,
        are what domish made of them: the SASL namespace on C{<success/>}
        and C{<challenge>}, and a bind result that carries the request's
        C{id} (escaped, whatever it holds) and its C{to} as C{from}.
        """
        c = self.client()
        c.open()
        plain = base64.b64encode(b"\0alice\0alice-pw").decode()
        c.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>")
        self.assertEqual(c.text(), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        c.read()
        c.open()
        c.write(
            "<iq type='set' id='a&amp;b&apos;&lt;' to='corp.example'>"
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>desk</resource></bind></iq>"
        )
        self.assertEqual(
            c.text(),
            "<iq from='corp.example' id='a&amp;b&apos;&lt;' type='result'>"
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@corp.example/desk</jid></bind></iq>",
        )
        [result] = c.read()
        self.assertEqual((result["id"], result["type"]), ("a&b'<", "result"))
        s = self.client()
        s.open()
        mech = clientMechanism("SCRAM-SHA-1", "bob", "bob-pw")
        s.write(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
            f"{base64.b64encode(mech.start()).decode()}</auth>"
        )
        self.assertTrue(s.text().startswith("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"), s.text())
        self.assertTrue(s.text().endswith("</challenge>"), s.text())

    def test_startTLSInjection(self) -> None:
        """
        What a client sends in the same read after C{<starttls/>} is
        dropped, never handled as if it had come over TLS
        (CVE-2011-0411): a plaintext PLAIN C{<auth>} pipelined behind it
        gets no answer and logs no one in; after the handshake the client
        is offered SASL afresh.
        """
        factory = C2SFactory(self.gateway, C2SConfig(), object(), self.clock)
        c = Client(factory, REMOTE)
        features = c.open()
        self.assertEqual([e.name for e in features.elements()], ["limits", "starttls"])
        plain = base64.b64encode(b"\0alice\0alice-pw").decode()
        c.write(
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
        )
        self.assertEqual([e.name for e in c.read()], ["proceed"])
        self.assertIsNotNone(c.transport.tlsOptions)
        self.assertIsNone(c.protocol.address)
        c.transport.completeHandshake()
        features = c.open()
        self.assertIn("mechanisms", [e.name for e in features.elements()])
        self.assertIsNone(c.protocol.address)
        self.assertNotIn("success", c.text())
        self.assertFalse(c.disconnecting)

    def test_bind(self) -> None:
        """
        SCRAM login then binding gives the full JID asked for; the home
        server has the session.
        """
        c = self.client()
        self.assertEqual(c.bind("alice", "alice-pw", "laptop"), "alice@corp.example/laptop")
        [session] = self.gateway.homeServer.sessionsOf(self.alice)
        self.assertEqual(session.label, "laptop")

    def test_resourceConflict(self) -> None:
        """
        The face asks the home server for a session labelled with the
        requested resource, and binds the label the home server gave the
        session (which L{IHomeServer.openSession} makes unique among the
        user's sessions): it never looks at the user's other sessions
        itself.
        """
        home = self.gateway.homeServer
        openSession = home.openSession
        asked: list[str] = []

        def renaming(address: Any, client: Any, label: str = "") -> Any:
            asked.append(label)

            def rename(session: Any) -> Any:
                session.label = label + "-2"
                return session

            return openSession(address, client, label).addCallback(rename)

        self.patch(home, "openSession", renaming)
        self.patch(home, "sessionsOf", lambda address: self.fail("the face looked at the user's sessions"))
        c = self.bound("alice", "desk")
        self.assertEqual(asked, ["desk"])
        jid = c.protocol.fullJID
        assert jid is not None
        self.assertEqual(jid.full(), "alice@corp.example/desk-2")

    def test_resourceGenerated(self) -> None:
        """
        Without a resource asked for, the face names one.
        """
        c = self.client()
        c.login("alice", "alice-pw")
        c.open()
        c.write("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        [result] = c.read()
        self.assertEqual(result["type"], "result")
        jid = c.protocol.fullJID
        assert jid is not None
        self.assertTrue((jid.resource or "").startswith("imgateway-"))

    def test_wrongPassword(self) -> None:
        """
        A wrong password gets a SASL failure; three close the stream.
        """
        c = self.client()
        c.open()
        for _ in range(3):
            mech = clientMechanism("PLAIN", "alice", "nope")
            c.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{base64.b64encode(mech.start()).decode()}</auth>")
        out = c.text()
        self.assertEqual(out.count("<not-authorized/>"), 3)
        self.assertIn("policy-violation", out)
        self.assertTrue(c.transport.disconnecting)

    def test_badHost(self) -> None:
        """
        A stream to another domain is refused with host-unknown.
        """
        c = self.client()
        c.write(HEADER.replace("corp.example", "other.example"))
        self.assertIn("host-unknown", c.text())
        self.assertTrue(c.transport.disconnecting)

    def test_badNamespace(self) -> None:
        """
        A stream in the server namespace on the c2s port is refused.
        """
        c = self.client()
        c.write(HEADER.replace("jabber:client", "jabber:server"))
        self.assertIn("invalid-namespace", c.text())

    def test_stanzaBeforeLogin(self) -> None:
        """
        A message before login closes the stream with not-authorized.
        """
        c = self.client()
        c.open()
        c.write("<message to='bob@corp.example'><body>hi</body></message>")
        self.assertIn("not-authorized", c.text())
        self.assertTrue(c.transport.disconnecting)

    def test_loginTimeout(self) -> None:
        """
        A connection that does not bind in time is closed with
        connection-timeout.
        """
        c = self.client()
        c.open()
        self.clock.advance(C2SConfig().loginTimeout)
        self.assertIn("connection-timeout", c.text())

    def test_closingTagAnswered(self) -> None:
        """
        A client that closes its stream, before or after logging in, gets
        the server's closing tag before the connection closes (RFC 6120
        section 4.4).
        """
        c = self.client()
        c.open()
        c.write("</stream:stream>")
        c.read()
        self.assertTrue(c.closed)
        self.assertTrue(c.disconnecting)
        c = self.bound()
        c.write("</stream:stream>")
        c.read()
        self.assertTrue(c.closed)
        self.assertTrue(c.disconnecting)

    def test_restrictedXML(self) -> None:
        """
        A DTD is refused with restricted-xml before any entity is expanded.
        """
        c = self.client()
        c.write("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]>" + HEADER[21:])
        self.assertIn("restricted-xml", c.text())


class SessionTests(C2STestsMixin, SynchronousTestCase):
    """
    Roster, presence and messages of a bound resource.
    """

    def test_messageToNativeUser(self) -> None:
        """
        A chat message reaches a session of another face.
        """
        c = self.bound()
        bob = RecordingSessionClient()
        session = self.successResultOf(self.gateway.homeServer.openSession(self.bob, bob))
        session.publish(Presence())
        c.write("<message to='bob@corp.example' type='chat' id='m1'><body>hello</body></message>")
        [m] = bob.messages
        self.assertEqual((str(m.sender), m.body, m.messageId), ("alice@corp.example", "hello", "m1"))

    def test_messageErrors(self) -> None:
        """
        Failed deliveries come back as stanza errors from the table: an
        unknown user and an offline one alike as C{service-unavailable},
        with no text (RFC 6121 8.5: no existence leak).
        """
        c = self.bound()
        c.write("<message to='ghost@corp.example' type='chat' id='m1'><body>x</body></message>")
        c.write("<message to='bob@corp.example' type='chat' id='m2'><body>x</body></message>")
        c.write("<message to='@bad' type='chat' id='m3'><body>x</body></message>")
        errors = c.read()
        conditions = [e.firstChildElement().name if False else [x for x in e.elements() if x.name == "error"][0].firstChildElement().name for e in errors]
        self.assertEqual(conditions, ["service-unavailable", "service-unavailable", "jid-malformed"])
        self.assertEqual([e["id"] for e in errors], ["m1", "m2", "m3"])
        unknown, offline = ([x for x in e.elements() if x.name == "error"][0] for e in errors[:2])
        self.assertEqual(unknown.toXml(), offline.toXml())

    def test_messageOutcomeToldLater(self) -> None:
        """
        A home server's session is asked through C{sendMessageThen} (not
        C{sendMessageAtOnce}); an outcome it tells later through the call
        (a recipient on another home server, over a link) is answered as
        the L{Deferred}'s errback answers it: nothing for delivered, the
        stanza error of the table for a refusal, C{internal-server-error}
        (logged) for anything else.
        """
        told: list[tuple[Any, Any]] = []

        def sendMessageThen(session: Session, answer: Any, token: Any, *arguments: Any) -> None:
            told.append((answer, token))
            return None

        def sendMessageAtOnce(session: Session, *arguments: Any) -> None:
            raise AssertionError("asked sendMessageAtOnce")

        self.patch(Session, "sendMessageThen", sendMessageThen)
        self.patch(Session, "sendMessageAtOnce", sendMessageAtOnce)
        c = self.bound()
        for n in range(3):
            c.write(f"<message to='bob@corp.example' type='chat' id='m{n}'><body>x</body></message>")
        self.assertEqual(c.read(), [])
        self.assertEqual(len(told), 3)
        (a0, t0), (a1, t1), (a2, t2) = told
        a0(DeliveryStatus.DELIVERED, t0, "m0")
        self.assertEqual(c.read(), [])
        a1(Failure(UserOffline("bob@corp.example is offline")), t1, "m1")
        a2(Failure(RuntimeError("boom")), t2, "m2")
        errors = c.read()
        self.assertEqual([e["id"] for e in errors], ["m1", "m2"])
        conditions = [[x for x in e.elements() if x.name == "error"][0].firstChildElement().name for e in errors]
        self.assertEqual(conditions, ["service-unavailable", "internal-server-error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_messageFromNativeUser(self) -> None:
        """
        A message to the user arrives as a chat message with the sender's
        bare JID; characters XML forbids are removed.
        """
        c = self.bound()
        c.write("<presence/>")
        c.read()
        session = self.successResultOf(self.gateway.homeServer.openSession(self.bob, RecordingSessionClient()))
        self.successResultOf(session.sendMessage(self.alice, "hi\x02 there"))
        [m] = [e for e in c.read() if e.name == "message"]
        self.assertEqual((m["from"], m["to"], str(next(m.elements()))), ("bob@corp.example", "alice@corp.example/desk", "hi there"))

    def test_markedMessage(self) -> None:
        """
        An auto-reply reaches an XMPP client with imgateway's C{<auto/>}
        element and the XEP-0334 no-copy and no-store hints.
        """
        c = self.bound()
        c.write("<presence/>")
        c.read()
        self.successResultOf(self.gateway.router.deliver(Message(self.bob, self.alice, "later", mark=MessageMark.AUTO_REPLY)))
        [m] = [e for e in c.read() if e.name == "message"]
        [auto] = list(m.elements("urn:imgateway:auto", "auto"))
        self.assertEqual(auto["type"], "auto-reply")
        self.assertEqual(len(list(m.elements("urn:xmpp:hints", "no-copy"))), 1)

    def test_presenceAndRoster(self) -> None:
        """
        Subscribing through presence adds a roster item (pushed), the other
        side's authorisation shows as subscription 'to', and its presence
        (busy) arrives as dnd with its note.
        """
        c = self.bound()
        c.write("<presence><show>away</show><status>gone</status></presence>")
        self.assertEqual(self.gateway.homeServer.presenceOf(self.alice), Presence(PresenceState.AWAY, "gone"))
        c.read()
        bobClient = RecordingSessionClient()
        bob = self.successResultOf(self.gateway.homeServer.openSession(self.bob, bobClient))
        bob.publish(Presence(PresenceState.BUSY, "meeting"))
        c.write("<presence to='bob@corp.example' type='subscribe'/>")
        self.successResultOf(bob.authorise(self.alice, True))
        out = c.read()
        pushes = [e for e in out if e.name == "iq"]
        self.assertEqual(pushes[-1].firstChildElement().firstChildElement()["subscription"], "to")
        presences = [e for e in out if e.name == "presence" and e.getAttribute("type") is None]
        self.assertEqual([(p["from"], str(p.show), str(p.status)) for p in presences], [("bob@corp.example", "dnd", "meeting")])
        c.write("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        [roster] = c.read()
        [item] = roster.firstChildElement().elements()
        self.assertEqual((item["jid"], item["subscription"]), ("bob@corp.example", "to"))

    def test_rosterSetAndRemove(self) -> None:
        """
        A roster set adds a named contact without a request; a remove takes
        it away.
        """
        c = self.bound()
        c.write("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@corp.example' name='Bob'/></query></iq>")
        out = c.read()
        self.assertEqual([e["type"] for e in out if e.name == "iq"], ["set", "result"])
        [session] = self.gateway.homeServer.sessionsOf(self.alice)
        [view] = self.successResultOf(session.contacts())
        self.assertEqual((str(view.address), view.displayName, view.pending), ("bob@corp.example", "Bob", False))
        c.write("<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='bob@corp.example' subscription='remove'/></query></iq>")
        c.read()
        self.assertEqual(self.successResultOf(session.contacts()), [])

    def test_pingDiscoVersion(self) -> None:
        """
        The server answers ping, disco#info and version; other IQs get
        service-unavailable.
        """
        c = self.bound()
        c.write("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        c.write("<iq type='get' id='d' to='corp.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        c.write("<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>")
        c.write("<iq type='get' id='x'><vCard xmlns='vcard-temp'/></iq>")
        c.write("<iq type='get' id='y' to='bob@corp.example/x'><ping xmlns='urn:xmpp:ping'/></iq>")
        out = c.read()
        self.assertEqual([(e["id"], e["type"]) for e in out], [("p", "result"), ("d", "result"), ("v", "result"), ("x", "error"), ("y", "error")])
        self.assertIn("urn:xmpp:ping", out[1].toXml())

    def test_pendingRequestsOnInitialPresence(self) -> None:
        """
        A request that arrived before the client's initial presence is sent
        once the client is available.
        """
        c = self.bound()
        bob = self.successResultOf(self.gateway.homeServer.openSession(self.bob, RecordingSessionClient()))
        self.successResultOf(bob.subscribe(self.alice))
        c.read()
        c.write("<presence/>")
        subs = [e for e in c.read() if e.name == "presence" and e.getAttribute("type") == "subscribe"]
        self.assertEqual([s["from"] for s in subs], ["bob@corp.example"])

    def test_leaseRenewed(self) -> None:
        """
        The face renews the presence lease while the stream lasts.
        """
        c = self.bound()
        c.write("<presence/>")
        self.clock.advance(self.gateway.homeServer.config.presenceLease * 3)
        self.assertEqual(self.gateway.homeServer.presenceOf(self.alice), Presence())
        c.protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leaseRenewedOnTime(self) -> None:
        """
        The face publishes again exactly at 0.8 of the lease granted: not a
        moment before.
        """
        c = self.bound()
        c.write("<presence/>")
        lease = self.gateway.homeServer.config.presenceLease
        session = c.protocol.session
        assert isinstance(session, Session)
        start = self.clock.seconds()
        self.assertEqual(session.leaseEnd(), start + lease)
        self.clock.advance(0.8 * lease - 2**-10)
        self.assertEqual(session.leaseEnd(), start + lease)
        self.clock.advance(2**-10)
        self.assertEqual(session.leaseEnd(), start + 0.8 * lease + lease)

    def test_idleStreamsHoldNoDelayedCall(self) -> None:
        """
        An idle bound stream that sent its presence holds no delayed call
        of its own (its login timer, the renewal of its lease and its
        session's lease are shared ones): the clock holds as many delayed
        calls with four such streams as with one.
        """
        for u in ("carol", "dave"):
            addUser(self.gateway, u, f"{u}-pw")
        idle = 3 * IDLE_PARSER_SECONDS
        streams = [self.bound("alice")]
        streams[0].write("<presence/>")
        self.clock.advance(idle)
        one = len(self.clock.getDelayedCalls())
        for u in ("bob", "carol", "dave"):
            streams.append(self.bound(u))
            streams[-1].write("<presence/>")
        self.clock.advance(idle)
        self.assertEqual(len(self.clock.getDelayedCalls()), one)
        owners = {id(s.protocol) for s in streams} | {id(s.protocol.session) for s in streams}
        for call in self.clock.getDelayedCalls():
            self.assertNotIn(id(getattr(getattr(call, "func", None), "__self__", None)), owners)

    def test_droppedParsersTrimHeap(self) -> None:
        """
        Streams that drop their idle parsers ask for a trim of the C
        library's heap: one, C{malloc_trim_seconds} after the first drop,
        for all the drops until then; a stream that keeps sending keeps
        its parser and asks for none.
        """
        trims: list[float] = []
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False, limits=StreamLimits(idleParserSeconds=2), mallocTrimSeconds=5), None, self.clock)
        self.factory.trimmer._trim = lambda: trims.append(self.clock.seconds())
        talking = self.bound("bob")
        for _ in range(4):
            self.clock.advance(1)
            talking.write("<presence/>")
        self.assertEqual(trims, [])
        a = self.bound("alice")
        start = self.clock.seconds()
        self.clock.advance(2)
        self.clock.advance(2)  # dropped at the second check
        self.assertIsNone(a.protocol.stream)
        self.clock.advance(5 - 2**-10)
        self.assertEqual(trims, [])
        self.clock.advance(2**-10)
        self.assertEqual(trims, [start + 4 + 5])
        self.clock.advance(60)
        self.assertEqual(trims, [start + 4 + 5])
        self.factory.sayGoodbye()

    def test_shutdown(self) -> None:
        """
        When the home server closes all sessions, the stream ends with
        system-shutdown.
        """
        c = self.bound()
        self.gateway.homeServer.closeAll("shutdown")
        self.assertIn("system-shutdown", c.text())
        self.assertEqual(self.gateway.homeServer.users(), [])


class CoreValuesTests(C2STestsMixin, SynchronousTestCase):
    """
    The face writes the wire through the XMPP mapping tables
    (L{imgateway.adapters.xmpp.mapping}), never from the core enums'
    values: what a client reads is the same when those values change.
    """

    def setUp(self) -> None:
        scrambleCoreValues(self)
        super().setUp()

    def rosterItem(self, c: Client) -> domish.Element:
        """
        Ask for the roster; return its one item.
        """
        c.write("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        [roster] = c.read()
        [item] = roster.firstChildElement().elements()
        return item  # type: ignore[no-any-return]

    def test_roster(self) -> None:
        """
        Roster pushes and the roster carry RFC 6121's subscription tokens
        (C{none} with C{ask}, C{to}, C{both}), subscription requests and
        presence their XMPP types and C{<show/>}.
        """
        c = self.bound()
        c.write("<presence/>")
        c.read()
        bobClient = RecordingSessionClient()
        bob = self.successResultOf(self.gateway.homeServer.openSession(self.bob, bobClient))
        bob.publish(Presence(PresenceState.BUSY))
        c.write("<presence to='bob@corp.example' type='subscribe'/>")
        [push] = [e for e in c.read() if e.name == "iq"]
        pushed = push.firstChildElement().firstChildElement()
        self.assertEqual((pushed["subscription"], pushed.getAttribute("ask")), ("none", "subscribe"))
        item = self.rosterItem(c)
        self.assertEqual((item["subscription"], item.getAttribute("ask")), ("none", "subscribe"))
        self.successResultOf(bob.authorise(self.alice, True))
        out = c.read()
        [push] = [e for e in out if e.name == "iq"]
        self.assertEqual(push.firstChildElement().firstChildElement()["subscription"], "to")
        presences = [(p.getAttribute("type"), str(p.show) if p.show else None) for p in out if p.name == "presence"]
        self.assertEqual(presences, [("subscribed", None), (None, "dnd")])
        self.assertEqual(self.rosterItem(c)["subscription"], "to")
        self.successResultOf(bob.subscribe(self.alice))
        [request] = [e for e in c.read() if e.name == "presence"]
        self.assertEqual((request["from"], request["type"]), ("bob@corp.example", "subscribe"))
        c.write("<presence to='bob@corp.example' type='subscribed'/>")
        pushes = [e for e in c.read() if e.name == "iq"]
        self.assertEqual(pushes[-1].firstChildElement().firstChildElement()["subscription"], "both")
        self.assertEqual(self.rosterItem(c)["subscription"], "both")


class RosterWireTests(C2STestsMixin, SynchronousTestCase):
    """
    The roster result, serialised in one piece without domish.
    """

    def test_sameAsDomish(self) -> None:
        """
        The roster result is byte for byte what domish made of
        C{toResponse(iq, "result")} with a query of L{_rosterItem}s: names
        escaped (quotes, markup, characters XML forbids), C{ask} for a
        pending request, an empty query when there are no contacts.
        """
        c = self.bound()
        c.write("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>")
        self.assertEqual(c.text(), "<iq id='r0' type='result'><query xmlns='jabber:iq:roster'/></iq>")
        c.read()
        session = c.protocol.session
        assert session is not None
        self.successResultOf(session.putContact(self.bob, "B'o\"b <&>\x01"))
        self.successResultOf(session.subscribe(Address.fromString("carol@corp.example")))
        c.read()
        c.write("<iq type='get' id='r&apos;1' to='corp.example'><query xmlns='jabber:iq:roster'/></iq>")
        wire = c.text()
        views = self.successResultOf(session.contacts())
        self.assertEqual(len(views), 2)
        request = domish.Element((None, "iq"))
        request["type"], request["id"], request["to"] = "get", "r'1", "corp.example"
        reply = xmlstream.toResponse(request, "result")
        query = reply.addElement((NS_ROSTER, "query"))
        for view in views:
            query.addChild(_rosterItem(view))
        expected = xmlSafe(reply.toXml(prefixes={NS_STREAMS: "stream"}, defaultUri="jabber:client", prefixesInScope=["stream"]))
        self.assertEqual(wire, expected)
        self.assertIn("ask='subscribe'", wire)


class SendQueueTests(C2STestsMixin, SynchronousTestCase):
    """
    A client that does not read is dropped past C{sendQueueBytes}.
    """

    def test_slowReaderDropped(self) -> None:
        """
        Once the transport's buffer is full, stanzas written count (but the
        largest one); past the limit the connection is aborted and the
        session closed.
        """
        self.factory = C2SFactory(
            self.gateway, C2SConfig(requireTLS=False, limits=StreamLimits(sendQueueBytes=3000)), None, self.clock
        )
        c = self.bound()
        c.write("<presence/>")
        guard = c.protocol._sendGuard
        assert guard is not None
        self.assertIs(c.transport.producer, guard)
        bob = self.successResultOf(self.gateway.homeServer.openSession(self.bob, RecordingSessionClient()))
        guard.pauseProducing()
        self.successResultOf(bob.sendMessage(self.alice, "x" * 1000))
        guard.pauseProducing()
        self.successResultOf(bob.sendMessage(self.alice, "x" * 1000))
        self.successResultOf(bob.sendMessage(self.alice, "x" * 1000))
        self.assertFalse(c.transport.disconnecting)
        self.successResultOf(bob.sendMessage(self.alice, "x" * 1000))
        self.assertTrue(c.transport.disconnecting)
        self.assertIsNone(c.transport.producer)

    def test_closeReleasesProducer(self) -> None:
        """
        Closing the stream unregisters the guard, so that TLS transports
        (which wait for their producer) really close.
        """
        c = self.bound()
        self.gateway.homeServer.closeAll("shutdown")
        self.assertTrue(c.transport.disconnecting)
        self.assertIsNone(c.transport.producer)


class ConfigTests(SynchronousTestCase):
    """
    The C{[xmpp]} table.
    """

    def parse(self, table: dict[str, object]) -> object:
        t = ConfigTable(table, "x.toml [xmpp]", ".")
        config = XMPPAdapter().parseConfig(t, MemoryReactor())
        t.finish()
        return config

    def test_tlsRequiredNeedsCertificate(self) -> None:
        """
        By default TLS is required, so a certificate must be configured.
        """
        e = self.assertRaises(ConfigError, self.parse, {})
        self.assertIn("require_tls", str(e))

    def test_withoutTLS(self) -> None:
        """
        With require_tls = false no certificate is needed.
        """
        config = self.parse({"require_tls": False})
        self.assertEqual(config.c2s.listen, C2SConfig().listen)  # type: ignore[attr-defined]

    def test_missingFiles(self) -> None:
        """
        Certificate files that cannot be read are named.
        """
        e = self.assertRaises(ConfigError, self.parse, {"certificate": "/nonexistent.pem", "private_key": "/nonexistent.key"})
        self.assertIn("certificate: cannot read /nonexistent.pem", str(e))

    def test_expiredCertificate(self) -> None:
        """
        An expired certificate stops start-up, naming the key and the
        file, as a key that does not match it does.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        authority = CertificateAuthority(NOW)
        key, old = authority.issue(["corp.example"], notBefore=now - 100 * DAY, notAfter=now - DAY)
        folder = FilePath(self.mktemp())
        path = writePEM(folder.child("old.pem"), keyPEM(key), certificatePEM(old))
        e = self.assertRaises(ConfigError, self.parse, {"certificate": path, "private_key": path})
        self.assertIn(f"x.toml [xmpp]: certificate: {path}: the certificate for corp.example expired on ", str(e))
        key, current = authority.issue(["corp.example"], notBefore=now - DAY, notAfter=now + DAY)
        other, _ = authority.issue()
        certificate = writePEM(folder.child("current.pem"), certificatePEM(current))
        wrong = writePEM(folder.child("wrong.key"), keyPEM(other))
        e = self.assertRaises(ConfigError, self.parse, {"certificate": certificate, "private_key": wrong})
        self.assertEqual(str(e), f"x.toml [xmpp]: private_key: {wrong} does not match the certificate in {certificate}")

    def test_trustRootsChecked(self) -> None:
        """
        An C{s2s_trust_roots} file that holds no certificate stops start-up
        naming the key, rather than failing when federation starts.
        """
        path = writePEM(FilePath(self.mktemp()).child("cas.pem"), b"no certificate here\n")
        e = self.assertRaises(ConfigError, self.parse, {"require_tls": False, "s2s_trust_roots": path})
        self.assertIn(f"x.toml [xmpp]: s2s_trust_roots: {path} holds no PEM certificate", str(e))

    def test_limitsChecked(self) -> None:
        """
        Stanza caps below what XMPP needs are refused.
        """
        self.assertRaises(ConfigError, self.parse, {"require_tls": False, "stanza_bytes": 100})
        self.assertRaises(ConfigError, self.parse, {"require_tls": False, "pre_auth_stanza_bytes": 10})

    def test_idleParserSeconds(self) -> None:
        """
        C{idle_parser_seconds} sets the c2s streams' idle-parser drop
        (L{IDLE_PARSER_SECONDS} by default); it must be greater than 0.
        """
        config = self.parse({"require_tls": False})
        self.assertEqual(config.c2s.limits.idleParserSeconds, IDLE_PARSER_SECONDS)  # type: ignore[attr-defined]
        config = self.parse({"require_tls": False, "idle_parser_seconds": 30})
        self.assertEqual(config.c2s.limits.idleParserSeconds, 30.0)  # type: ignore[attr-defined]
        e = self.assertRaises(ConfigError, self.parse, {"require_tls": False, "idle_parser_seconds": 0})
        self.assertIn("idle_parser_seconds", str(e))

    def test_mallocTrimSeconds(self) -> None:
        """
        C{malloc_trim_seconds} sets the interval of the heap trims after
        idle parsers were dropped (L{MALLOC_TRIM_SECONDS} by default); 0
        switches them off; less is refused.
        """
        config = self.parse({"require_tls": False})
        self.assertEqual(config.c2s.mallocTrimSeconds, MALLOC_TRIM_SECONDS)  # type: ignore[attr-defined]
        config = self.parse({"require_tls": False, "malloc_trim_seconds": 0})
        self.assertEqual(config.c2s.mallocTrimSeconds, 0.0)  # type: ignore[attr-defined]
        e = self.assertRaises(ConfigError, self.parse, {"require_tls": False, "malloc_trim_seconds": -1})
        self.assertIn("malloc_trim_seconds", str(e))

    def test_componentOnly(self) -> None:
        """
        With no c2s listener, no certificate is needed (component links
        only).
        """
        config = self.parse({"listen": []})
        self.assertEqual(config.c2s.listen, ())  # type: ignore[attr-defined]

    def test_shippedKeys(self) -> None:
        """
        Every key the shipped C{etc/imgateway.toml} documents in C{[xmpp]}
        is one the adapter reads, with a valid default.
        """
        import tomllib

        from twisted.python.filepath import FilePath

        path = FilePath(__file__).parent().parent().child("etc").child("imgateway.toml")
        with open(path.path, "rb") as f:
            table = dict(tomllib.load(f)["xmpp"])
        del table["enabled"]
        table["require_tls"] = False
        config = self.parse(table)
        self.assertIsNone(config.federation)  # type: ignore[attr-defined]


class PasswordDirectoryTests(SynchronousTestCase):
    """
    c2s logins when the directory checks passwords itself and keeps no
    SCRAM verifiers (LDAP): PLAIN only.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = PasswordCheckingDirectory()
        self.gateway = memoryGateway(self.clock, directory=self.directory)
        self.directory.addUser(Address.fromParts("alice", "corp.example"), "alice-pw")
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)

    def test_features(self) -> None:
        """
        Only PLAIN is offered.
        """
        features = Client(self.factory).open()
        [mechanisms] = [e for e in features.elements() if e.name == "mechanisms"]
        self.assertEqual([str(m) for m in mechanisms.elements()], ["PLAIN"])

    def test_scramInvalid(self) -> None:
        """
        A SCRAM C{<auth/>} fails with C{<invalid-mechanism/>}, without
        asking the directory; PLAIN logs in.
        """
        c = Client(self.factory)
        c.open()
        start = base64.b64encode(clientMechanism("SCRAM-SHA-256", "alice", "alice-pw").start()).decode()
        c.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{start}</auth>")
        [failure] = c.read()
        self.assertEqual((failure.name, [e.name for e in failure.elements()]), ("failure", ["invalid-mechanism"]))
        self.assertEqual(self.directory.checked, [])
        c = Client(self.factory)
        c.login("alice", "alice-pw", "PLAIN")
        self.assertEqual(self.directory.checked, [(Address.fromParts("alice", "corp.example"), "alice-pw")])


class RouterFaceTests(SynchronousTestCase):
    """
    The c2s face of a router (L{imgateway.router.front}): after SASL
    success, the restarted stream of a user homed on another server is
    answered with its header and a stream error: C{<see-other-host/>}
    naming C{[servers.HOME] xmpp} for a client in an internal network,
    C{<policy-violation/>} for any other.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = routerGateway(self.clock)
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)

    def restarted(self, user: str, peer: IPv4Address) -> tuple[Client, list[domish.Element]]:
        """
        Log C{user} in from C{peer} and restart the stream.

        @return: The client and what the server sent on the new stream.
        """
        c = Client(self.factory, peer)
        c.login(user, f"{user}-pw")
        c.restart()
        c.write(HEADER)
        elements = c.read()
        self.assertIsNotNone(c.root)
        return c, elements

    def test_seeOtherHost(self) -> None:
        """
        carol, homed on hs2, from an internal network: SASL succeeds (the
        SCRAM server-final message verifies), then the restarted stream gets
        C{<see-other-host>hs2.corp.example:5232</see-other-host>} and is
        closed; no session is opened.
        """
        c, elements = self.restarted("carol", INTERNAL)
        self.assertEqual(c.streamError(elements), "see-other-host")
        [condition] = [e for e in elements[0].elements() if e.name == "see-other-host"]
        self.assertEqual(condition.uri, "urn:ietf:params:xml:ns:xmpp-streams")
        self.assertEqual(str(condition), "hs2.corp.example:5232")
        self.assertTrue(c.closed)
        self.assertTrue(c.disconnecting)
        self.assertEqual(self.gateway.homeServer.sessionsOf(CAROL), [])

    def test_external(self) -> None:
        """
        From outside the internal networks: C{<policy-violation/>} with a
        text that says why, and the stream is closed.
        """
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False, allowPlaintextAuth=True), None, self.clock)
        c, elements = self.restarted("carol", EXTERNAL)
        self.assertEqual(c.streamError(elements), "policy-violation")
        self.assertIn("not served here to your network", elements[0].toXml())
        self.assertTrue(c.closed)

    def test_proxied(self) -> None:
        """
        On a router that proxies sessions, carol from outside the internal
        networks binds a resource as on her home server: the session is
        opened through the gateway's C{proxy} (not here) with the resource
        as its label, her presence goes to it, and a message it is told
        reaches her.
        """
        self.gateway, hs2 = proxiedGateway(self.clock)
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False, allowPlaintextAuth=True), None, self.clock)
        c = Client(self.factory, EXTERNAL)
        jid = c.bind("carol", "carol-pw", "laptop")
        self.assertEqual(jid, "carol@corp.example/laptop")
        [session] = hs2.homeServer.sessionsOf(CAROL)
        self.assertEqual(session.label, "laptop")
        self.assertEqual(self.gateway.homeServer.sessionsOf(CAROL), [])
        c.write("<presence><show>away</show></presence>")
        c.read()
        self.assertIs(session.presence.state, PresenceState.AWAY)
        session.client.messageReceived(Message(Address.fromString("alice@corp.example"), CAROL, "hi carol"))
        [message] = [e for e in c.read() if e.name == "message"]
        self.assertEqual(str(message.body), "hi carol")

    def test_proxyUnavailable(self) -> None:
        """
        When the proxied session cannot be opened, binding fails with
        C{service-unavailable}.
        """
        self.gateway, hs2 = proxiedGateway(self.clock)
        self.gateway.proxy = FailingProxy()
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False, allowPlaintextAuth=True), None, self.clock)
        c = Client(self.factory, EXTERNAL)
        c.login("carol", "carol-pw")
        c.open()
        c.write("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        [result] = c.read()
        self.assertEqual(result["type"], "error")
        self.assertIn("service-unavailable", result.toXml())

    def test_homedHere(self) -> None:
        """
        alice, homed on this process, is offered resource binding as on a
        single-host gateway.
        """
        c, elements = self.restarted("alice", INTERNAL)
        [features] = elements
        self.assertIn("bind", [e.name for e in features.elements()])
        self.assertFalse(c.disconnecting)

    def test_notRouter(self) -> None:
        """
        On a home server that is no router, carol (homed on hs2) is sent to
        hs2 with C{<see-other-host/>}, from outside the internal networks
        too, and no session is opened here; alice, homed here, is served.
        """
        self.gateway = routerGateway(self.clock, roles=frozenset({"home"}))
        self.factory = C2SFactory(self.gateway, C2SConfig(requireTLS=False), None, self.clock)
        c, elements = self.restarted("carol", EXTERNAL)
        self.assertEqual(c.streamError(elements), "see-other-host")
        [condition] = [e for e in elements[0].elements() if e.name == "see-other-host"]
        self.assertEqual(str(condition), "hs2.corp.example:5232")
        self.assertEqual(self.gateway.homeServer.sessionsOf(CAROL), [])
        c, elements = self.restarted("alice", EXTERNAL)
        self.assertIn("bind", [e.name for e in elements[0].elements()])

    def test_wrongPasswordNoLeak(self) -> None:
        """
        A wrong password for carol (homed elsewhere) fails SASL exactly as
        one for an account that does not exist: nothing is decided, or sent,
        before authentication.
        """
        answers = []
        for user in ("carol", "nobody"):
            # From 127.0.0.1: internal here, and PLAIN is allowed.
            c = Client(self.factory, LOOPBACK)
            c.open()
            mech = clientMechanism("PLAIN", user, "wrong")
            c.write(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                f"{base64.b64encode(mech.start()).decode()}</auth>"
            )
            answers.append([e.toXml() for e in c.read()])
        self.assertEqual(answers[0], answers[1])
        self.assertIn("not-authorized", answers[0][0])


#: Texts for the serialisation tests: XML's five special characters,
#: non-ASCII, characters XML forbids (removed), and text of nothing else.
AWKWARD_TEXTS = [
    "",
    "hello",
    "&<>\"'",
    "a & b < c > d \" e ' f",
    "&amp; &lt; already escaped",
    "]]> <![CDATA[ x ]]>",
    "zoë 日本語 😀 \u00ad\u200b",
    "tab\tand\r\nnew lines\n",
    "\x00\x01 control \x1f\x7f",
    "\x02",
    "\ufffe\uffff",
    "lone \ud800 surrogate",
    "x" * 5000,
]

#: Senders of several shapes (normalised local parts and IDNA domains).
SENDERS = [
    Address.fromParts("bob", "corp.example"),
    Address.fromParts("Zoë", "corp.example"),
    Address.fromParts("日本語", "bücher.example"),
    Address.fromParts("a+b.c_d-e", "x.y"),
]

#: Resources of the recipient's full JID (C{None}: not bound).
RESOURCES: list[str | None] = ["desk", "r&<>'\"é", "日本 語", "a/b", None]


class SerialisedStanzaTests(C2STestsMixin, SynchronousTestCase):
    """
    Messages and presences to a client are serialised without building a
    L{domish.Element}: each gives the same bytes as the element path
    (C{_messageElement}, C{_presenceElement} sent through
    L{HardenedXmlStream.send}), over many stanzas, with escaping of
    C{&<>"'}, non-ASCII and the characters XML forbids.
    """

    def protocol(self, resource: str | None) -> tuple[C2SProtocol, StringTransport]:
        c = self.bound("alice", "desk")
        c.write("<presence/>")
        c.read()
        p = c.protocol
        p.fullJID = None if resource is None else jidOf(self.alice, resource)
        return p, c.transport

    def sent(self, transport: StringTransport, send: Any, *args: Any) -> bytes:
        transport.clear()
        send(*args)
        data: bytes = transport.value()
        transport.clear()
        return data

    def parsed(self, data: bytes) -> domish.Element:
        elements: list[domish.Element] = []
        stream = domish.elementStream()
        stream.DocumentStartEvent = lambda root: None
        stream.ElementEvent = elements.append
        stream.parse(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" + data)
        [element] = elements
        return element

    def test_messages(self) -> None:
        """
        A message to a client is the same bytes as the element path's, for
        every sender, recipient resource, body and id; it parses back to
        the body with only the forbidden characters removed.
        """
        ids = ["m1", "id&<>'\"", "é日本", "x" * 128]
        count = 0
        for resource in RESOURCES:
            p, transport = self.protocol(resource)
            for sender in SENDERS:
                for body in AWKWARD_TEXTS:
                    for messageId in ids:
                        message = Message(sender, self.alice, body, messageId=messageId)
                        fast = self.sent(transport, p.messageReceived, message)
                        old = self.sent(transport, p.send, _messageElement(message, p.fullJID))
                        self.assertEqual(fast, old)
                        element = self.parsed(fast)
                        self.assertEqual((element["from"], element["id"], str(element.body)), (str(sender), messageId, xmlSafe(body).replace("\r\n", "\n")))
                        self.assertEqual(element.getAttribute("to"), None if p.fullJID is None else p.fullJID.full())
                        count += 1
        self.assertEqual(count, len(RESOURCES) * len(SENDERS) * len(AWKWARD_TEXTS) * len(ids))

    def test_markedMessageUnchanged(self) -> None:
        """
        A marked message (an auto-reply) still takes the element path.
        """
        p, transport = self.protocol("desk")
        message = Message(SENDERS[0], self.alice, "back soon & <later>", mark=MessageMark.AUTO_REPLY)
        self.assertEqual(
            self.sent(transport, p.messageReceived, message), self.sent(transport, p.send, _messageElement(message, p.fullJID))
        )

    def test_presences(self) -> None:
        """
        A presence to a client is the same bytes as the element path's, for
        every state, note, sender and recipient resource.
        """
        notes = [t for t in AWKWARD_TEXTS if len(t) <= 1024 and not any(unicodedata.category(c) in ("Cc", "Cs") and c != "\t" for c in t)]
        notes += ["\ufffe", "in a meeting & <b>'til</b> \"3\"", "\t"]
        self.assertGreater(len(notes), 6)
        count = 0
        for resource in RESOURCES:
            p, transport = self.protocol(resource)
            for sender in SENDERS:
                for state in PresenceState:
                    for note in notes:
                        presence = Presence(state, note)
                        fast = self.sent(transport, p.presenceReceived, sender, presence)
                        old = self.sent(transport, p.send, _presenceElement(sender, presence, p.fullJID))
                        self.assertEqual(fast, old)
                        self.parsed(fast)
                        count += 1
        self.assertEqual(count, len(RESOURCES) * len(SENDERS) * len(PresenceState) * len(notes))

    def test_presenceSerialisedOncePerFanOut(self) -> None:
        """
        A presence that reaches several sessions (one user's change, to all
        its contacts) is serialised once: each session only puts its
        recipient's address in.
        """
        clients = [self.bound("alice", f"r{i}") for i in range(3)]
        for c in clients:
            c.write("<presence/>")
            c.read()
        presenceStanzaParts.cache_clear()
        for c in clients:
            c.protocol.presenceReceived(self.bob, Presence(PresenceState.BUSY, "a note for all"))
        info = presenceStanzaParts.cache_info()
        self.assertEqual((info.misses, info.hits), (1, 2))
        for i, c in enumerate(clients):
            [presence] = c.read()
            self.assertEqual((presence["from"], presence["to"], str(presence.status)), ("bob@corp.example", f"alice@corp.example/r{i}", "a note for all"))


def clientStanzas(seed: int, count: int) -> list[str]:
    """
    C{count} stanzas a client might send once bound, drawn with C{seed}:
    messages and presences of every type, to good, bad, missing and remote
    addresses, with and without ids, bodies of every kind (empty, escaped,
    non-ASCII, CDATA, with C{xml:lang}), extra and nested children.
    """
    rng = random.Random(seed)
    tos = [
        "bob@corp.example", "bob@corp.example/phone", "BOB@Corp.Example", "corp.example", "ghost@corp.example",
        "@bad", "bob@other.example", "alice@corp.example", None, "",
    ]
    ids = [None, "m1", "x" * 200, "a b", "caf\u00e9", "&amp;"]
    bodies = [
        None, "<body>hello</body>", "<body/>", "<body>caf\u00e9 \u2603 \U0001d11e</body>", "<body>a &amp; b &lt;c&gt; &#x263A;</body>",
        "<body><![CDATA[<b>x</b>]]></body>", "<body xml:lang='de'>hallo</body>", "<body>one</body><body>two</body>",
        "<thread>t</thread><body>after a thread</body>", "<body>x</body><active xmlns='http://jabber.org/protocol/chatstates'/>",
        "<body>x<b>nested</b></body>", "<subject>s</subject>", "<body>line\r\nnext</body>", "<body>" + "y" * 3000 + "</body>",
        "<body>  spaced  </body>", "<body>\n</body>", "\n <body>x</body>\n",
    ]
    presenceTypes = [None, None, None, "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error", "bogus"]
    presenceChildren = [
        "", "<show>away</show>", "<show> dnd </show><status>busy &amp; more</status>", "<status>caf\u00e9</status>",
        "<show>chat</show><priority>3</priority>", "<show>bogus</show>", "<status/>", "<status> spaced </status>", "<c xmlns='http://jabber.org/protocol/caps' node='n'/>",
    ]
    stanzas = []
    for _ in range(count):
        attributes = ""
        if rng.random() < 0.75:
            to = rng.choice(tos)
            if to is not None:
                attributes += f" to='{to}'"
        if rng.random() < 0.3:
            attributes += " xml:lang='en'"
        if rng.random() < 0.7:
            kind = rng.choice(["message"] * 3 + ["presence"])
        else:
            kind = "presence" if rng.random() < 0.5 else "message"
        if kind == "message":
            kind_ = rng.choice([None, "chat", "chat", "normal", "headline", "groupchat", "error", "bogus"])
            if kind_ is not None:
                attributes += f" type='{kind_}'"
            messageId = rng.choice(ids)
            if messageId is not None:
                attributes += f" id='{messageId}'"
            body = rng.choice(bodies)
            stanzas.append(f"<message{attributes}>{body or ''}</message>" if body or rng.random() < 0.5 else f"<message{attributes}/>")
        else:
            kind_ = rng.choice(presenceTypes)
            if kind_ is not None:
                attributes += f" type='{kind_}'"
            stanzas.append(f"<presence{attributes}>{rng.choice(presenceChildren)}</presence>")
    return stanzas


class LightStanzaTests(SynchronousTestCase):
    """
    The face handles a client's messages and presences alike whether they
    come as light stanzas (L{C2SProtocol.lightStanzas}) or as domish trees:
    the same core events (messages delivered, presence published,
    subscriptions) and the same bytes back to the client (stanza errors
    quote the stanza they answer).
    """

    def handle(self, light: bool, stanzas: list[str] | list[bytes], oneRead: bool) -> tuple[object, int]:
        """
        Bind alice, with bob online on another face, and send C{stanzas}.

        @return: What the face did, and how many light stanzas it handled.
        """
        clock = Clock()
        gateway = memoryGateway(clock)
        alice = addUser(gateway, "alice", "alice-pw")
        bob = addUser(gateway, "bob", "bob-pw")
        limits = StreamLimits(stanzasPerSecond=1e9, stanzaBurst=10**9, maxQueuedStanzas=10**6)
        factory = C2SFactory(gateway, C2SConfig(requireTLS=False, limits=limits), None, clock)
        c = Client(factory)
        c.protocol.lightStanzas = light
        handled = []
        received = c.protocol.stanzaReceived

        def count(element: Any) -> None:
            handled.append(isinstance(element, LightStanza))
            received(element)

        c.protocol.stanzaReceived = count  # type: ignore[method-assign]
        c.bind("alice", "alice-pw")
        bobClient = RecordingSessionClient()
        session = self.successResultOf(gateway.homeServer.openSession(bob, bobClient))
        session.publish(Presence())
        c.read()
        whole = b"".join(s.encode("utf-8") if isinstance(s, str) else s for s in stanzas)
        given = {part.split("'")[0] for part in whole.decode("utf-8").split(" id='")[1:]}
        if oneRead:
            c.write(whole)
        else:
            for stanza in stanzas:
                c.write(stanza)
        written = c.transport.value()
        messages = [(m.sender, m.recipient, m.body, m.contentType, m.messageId if m.messageId in given else "made") for m in bobClient.messages]
        return (
            written,
            messages,
            bobClient.presences,
            [(e.sender, e.kind) for e in bobClient.subscriptions],
            gateway.homeServer.presenceOf(alice),
            c.protocol._closed,
        ), sum(handled)

    def test_sameEvents(self) -> None:
        """
        Hundreds of generated stanzas, one per read and all in one read,
        give the same events and bytes with light stanzas as without; most
        of them came light.
        """
        for seed in range(6):
            stanzas = clientStanzas(seed, 120)
            for oneRead in (False, True):
                domishResult, none = self.handle(False, stanzas, oneRead)
                lightResult, light = self.handle(True, stanzas, oneRead)
                self.assertEqual(none, 0)
                self.assertGreater(light, len(stanzas) // 2)
                self.assertEqual(domishResult, lightResult, (seed, oneRead))

    def test_bytewise(self) -> None:
        """
        The same stanzas one byte per read give the same events and bytes.
        """
        stanzas = clientStanzas(99, 40)
        data = "".join(stanzas).encode("utf-8")

        def run(light: bool) -> object:
            return self.handle(light, [data[i : i + 1] for i in range(len(data))], False)[0]

        self.assertEqual(run(False), run(True))
