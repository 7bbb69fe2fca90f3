"""
Tests of the Prosody and XMPP-client harness itself (L{tests.e2e.prosody},
L{tests.e2e.xmppclient}): a private Prosody on loopback, real slixmpp
clients that log in, subscribe, see presence and exchange messages, an
XEP-0114 component, and two Prosodys federating with certificates and no
DNS. The XMPP face's tests follow the same pattern against the gateway.
"""

from __future__ import annotations

import hashlib
import os
import re

from typing import cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e.harness import _endpoint, _Waiters, failureOf, makeCertificates, requirePeer
from tests.e2e.prosody import COMPONENT_SECRET, ProsodyProcess, luaString
from tests.e2e.xmppclient import AgentError, XMPPAgent, jidMatches

PASSWORDS = {"alice": "alice's pw", "bob": "bob \"quoted\" pw"}


class RequirePeerTests(TestCase):
    """
    L{requirePeer}: a missing peer skips, or fails under CI.
    """

    def setUp(self) -> None:
        self.ci = os.environ.pop("CI", None)
        self.addCleanup(self._restore)

    def _restore(self) -> None:
        if self.ci is not None:
            os.environ["CI"] = self.ci
        else:
            os.environ.pop("CI", None)

    def test_found(self) -> None:
        """
        The path of an installed program is returned.
        """
        self.assertTrue(os.path.isabs(requirePeer(self, "sh")))

    def test_missingSkips(self) -> None:
        """
        Without C{CI}, a missing peer skips the test.
        """
        e = self.assertRaises(SkipTest, requirePeer, self, "no-such-peer-imgw", "imgw-peer")
        self.assertIn("imgw-peer", str(e))

    def test_missingFailsUnderCI(self) -> None:
        """
        With C{CI} set, a missing peer fails the test.
        """
        os.environ["CI"] = "true"
        e = self.assertRaises(self.failureException, requirePeer, self, "no-such-peer-imgw")
        self.assertIn("CI is set", str(e))


class ConfigTests(TestCase):
    """
    The rendered configuration (no Prosody process).
    """

    def test_luaString(self) -> None:
        """
        Quotes, backslashes and control characters are escaped.
        """
        self.assertEqual(luaString('a"b\\c\nd\x01'), '"a\\"b\\\\c\\nd\\001"')

    def test_render(self) -> None:
        """
        Ports, static routes, components, trust and the s2s policy are in
        the configuration; DNS can only go to 127.0.0.1.
        """
        prosody = ProsodyProcess(
            self, peers={"corp.example": 5999}, s2sSecureAuth=True, dialback=False, s2sSecureDomains=["corp.example"]
        )
        prosody.writeConfig()
        with open(prosody.configPath) as f:
            config = f.read()
        self.assertIn(f"c2s_ports = {{ {prosody.c2sPort} }}", config)
        self.assertIn('["corp.example"] = { "127.0.0.1", 5999 };', config)
        self.assertIn('Component "gw.xmpp.example"', config)
        self.assertIn(f"component_secret = {luaString(COMPONENT_SECRET)}", config)
        self.assertIn("s2s_secure_auth = true", config)
        self.assertIn('s2s_secure_domains = { "corp.example"; }', config)
        self.assertNotIn('"dialback"', config)
        self.assertIn(f"cafile = {luaString(prosody.trustPath)}", config)
        self.assertIsNone(re.search(r"@[A-Z0-9_]+@", config))
        with open(prosody.resolvConfPath) as f:
            self.assertEqual(f.read().split("\n")[0], "nameserver 127.0.0.1")


class ProsodyHarnessTests(TestCase):
    """
    Prosody and slixmpp agents, the way the XMPP face's tests use them.
    """

    async def test_presenceAndMessages(self) -> None:
        """
        Two clients of one Prosody subscribe to each other, see each
        other's presence (show and status) and exchange messages both ways.
        """
        prosody = ProsodyProcess(self, users=PASSWORDS)
        await prosody.start()
        alice, bob = await gatherResults([prosody.agent("alice"), prosody.agent("bob")])
        assert isinstance(alice, XMPPAgent) and isinstance(bob, XMPPAgent)
        ALICE, BOB = prosody.jid("alice"), prosody.jid("bob")
        self.assertTrue(jidMatches(alice.boundJid, ALICE))
        self.assertTrue(alice.find("session_start")[0]["encrypted"])

        alice.subscribe(BOB)
        await bob.waitForSubscribe(ALICE)
        bob.approve(ALICE)
        bob.subscribe(ALICE)
        await alice.waitForSubscribe(BOB)
        alice.approve(BOB)
        await alice.waitForPresence(BOB)
        await bob.waitForPresence(ALICE)

        alice.setPresence("dnd", "in a meeting")
        bob.setPresence("away", "lunch")
        await bob.waitForPresence(ALICE, "dnd", "in a meeting")
        await alice.waitForPresence(BOB, "away", "lunch")

        alice.message(BOB, "hello bob ✓")
        message = await bob.waitForMessage(ALICE, "hello bob ✓")
        self.assertEqual(message["type"], "chat")
        bob.message(ALICE, "hi alice")
        await alice.waitForMessage(BOB, "hi alice")

        roster = await alice.request({"cmd": "roster"})
        self.assertEqual([(i["jid"], i["subscription"]) for i in roster["items"]], [(BOB, "both")])
        pong = await alice.request({"cmd": "ping", "jid": prosody.domain})
        self.assertEqual(pong["event"], "pong")

        await bob.stop()
        await alice.waitForPresence(BOB, type="unavailable")

    async def test_badPassword(self) -> None:
        """
        A wrong password is reported as a login failure.
        """
        prosody = ProsodyProcess(self, users=PASSWORDS)
        await prosody.start()
        e = await failureOf(prosody.agent("alice", password="wrong"), AgentError)
        assert e.event is not None
        self.assertEqual((e.event["event"], e.event.get("condition")), ("failed_auth", "not-authorized"))

    async def test_tlsModes(self) -> None:
        """
        An agent can log in without TLS when told to, and refuses a server
        whose certificate its CA did not sign.
        """
        prosody = ProsodyProcess(self, users=PASSWORDS)
        await prosody.start()
        plain = await prosody.agent("alice", tls="plain", resource="plain")
        self.assertFalse(plain.find("session_start")[0]["encrypted"])
        otherCA, _ = makeCertificates(self.mktemp(), prosody.domain)
        e = await failureOf(prosody.agent("alice", caFile=otherCA, resource="untrusting"), AgentError)
        assert e.event is not None
        self.assertEqual(e.event["event"], "tls_failed")
        self.assertIn("CERTIFICATE_VERIFY_FAILED", e.event["reason"])

    async def test_unroutedDomain(self) -> None:
        """
        A message to a domain without a static route bounces at once with
        C{remote-server-not-found}: nothing is looked up in DNS.
        """
        prosody = ProsodyProcess(self, users=PASSWORDS)
        await prosody.start()
        alice = await prosody.agent("alice")
        alice.message("bob@nowhere.example", "anyone there?")
        bounce = await alice.waitForEvent("message", sender="bob@nowhere.example", type="error")
        self.assertEqual(bounce["error"]["condition"], "remote-server-not-found")

    async def test_component(self) -> None:
        """
        An XEP-0114 component authenticates with the secret on the
        component port and receives the messages clients send to its
        domain.
        """
        prosody = ProsodyProcess(self, users=PASSWORDS)
        await prosody.start()
        component = await _Component.connect(self, prosody.componentPort, f"gw.{prosody.domain}", COMPONENT_SECRET)
        alice = await prosody.agent("alice")
        alice.message(f"someone@gw.{prosody.domain}", "to the component")
        await component.waitFor(lambda: "to the component" in component.received)
        self.assertIn(f"from='{prosody.jid('alice')}/agent'", component.received.replace('"', "'"))

    async def test_federation(self) -> None:
        """
        Two Prosodys federate over s2s on loopback with static routes (no
        DNS), STARTTLS required and certificates verified both ways (each
        trusts the other's CA; dialback is off, so only SASL EXTERNAL can
        authenticate a stream).
        """
        a = ProsodyProcess(self, "xmpp.example", users={"alice": "a"}, s2sRequireEncryption=True,
                           s2sSecureAuth=True, dialback=False)
        b = ProsodyProcess(self, "other.example", users={"carol": "c"}, s2sRequireEncryption=True,
                           s2sSecureAuth=True, dialback=False)
        a.addPeer(b.domain, b.s2sPort)
        b.addPeer(a.domain, a.s2sPort)
        assert a.caPath is not None and b.caPath is not None
        a.trust.append(b.caPath)
        b.trust.append(a.caPath)
        await gatherResults([a.start(), b.start()])
        alice, carol = await gatherResults([a.agent("alice"), b.agent("carol")])
        assert isinstance(alice, XMPPAgent) and isinstance(carol, XMPPAgent)
        alice.message(b.jid("carol"), "across the federation")
        await carol.waitForMessage(a.jid("alice"), "across the federation", timeout=10)
        carol.message(a.jid("alice"), "and back")
        await alice.waitForMessage(b.jid("carol"), "and back", timeout=10)
        self.assertIn("Accepting SASL EXTERNAL identity from xmpp.example", b.log())
        self.assertIn("Accepting SASL EXTERNAL identity from other.example", a.log())


class _Component(_Waiters, Protocol):
    """
    A minimal XEP-0114 component: handshake, then record what arrives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received = ""
        self.lost: Deferred[None] = Deferred()

    @classmethod
    async def connect(cls, testCase: TestCase, port: int, domain: str, secret: str) -> _Component:
        proto = cast(_Component, await _endpoint(f"tcp:127.0.0.1:{port}").connect(Factory.forProtocol(cls)))
        testCase.addCleanup(proto.close)
        proto.send(
            "<stream:stream xmlns='jabber:component:accept' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        )
        streamId = re.compile(r"\bid=['\"]([^'\"]+)")
        match = await proto.waitFor(lambda: streamId.search(proto.received), description="the stream header")
        digest = hashlib.sha1((match.group(1) + secret).encode()).hexdigest()
        proto.send(f"<handshake>{digest}</handshake>")
        await proto.waitFor(lambda: re.search(r"<handshake\s*(/>|></handshake>)", proto.received), description="handshake")
        return proto

    def summary(self) -> str:
        return repr(self.received[-2000:])

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8"))

    def dataReceived(self, data: bytes) -> None:
        self.received += data.decode("utf-8", "replace")
        self._changed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost.callback(None)

    def close(self) -> Deferred[None]:
        self.cancelWaits()
        if not self.lost.called and self.transport is not None:
            self.transport.loseConnection()
        return self.lost
