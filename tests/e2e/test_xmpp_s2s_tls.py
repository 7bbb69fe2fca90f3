# -*- test-case-name: tests.e2e.test_xmpp_s2s_tls -*-
"""
The s2s link layer (L{imgateway.adapters.xmpp.s2s}) over real TLS: two
managers for two domains over loopback TCP with certificates from
L{imgateway.testing.makeCertificates} (SASL EXTERNAL, dialback, XEP-0344,
refused certificates, a peer without STARTTLS). Negotiation, queues and
timers are tested in memory in C{tests/test_xmpp_s2s.py}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from imgateway.adapters.xmpp.s2s import S2SConfig, S2SError, S2SManager
from tests.e2e.harness import _Waiters, failureOf, freePort, reactor
from tests.test_xmpp_s2s import OURS, THEIRS, loadTLS, message


class _Inbox(_Waiters):
    def __init__(self) -> None:
        super().__init__()
        self.stanzas: list[tuple[str, domish.Element]] = []

    def summary(self) -> str:
        return repr([(d, s.toXml()) for d, s in self.stanzas])

    def received(self, domain: str, stanza: domish.Element) -> None:
        self.stanzas.append((domain, stanza))
        self._changed()


class LoopbackTests(TestCase):
    """
    Two managers, for C{corp.example} and C{other.example}, with their own
    CAs, over loopback TCP and real TLS.
    """

    timeout = 30

    def setUp(self) -> None:
        directory = self.mktemp()
        self.caA, self.tlsA = loadTLS(directory, OURS)
        self.caB, self.tlsB = loadTLS(directory, THEIRS)
        self.portA, self.portB = freePort(), freePort()

    def managers(
        self, a: dict[str, Any] | None = None, b: dict[str, Any] | None = None, tlsB: Any = "default"
    ) -> tuple[S2SManager, S2SManager, _Inbox, _Inbox]:
        configA = {"trustRoots": self.caB, **(a or {})}
        configB = {"trustRoots": self.caA, **(b or {})}
        A = S2SManager(
            reactor(),
            OURS,
            self.tlsA,
            S2SConfig(listen=(f"tcp:{self.portA}:interface=127.0.0.1",), routes={THEIRS: f"tcp:127.0.0.1:{self.portB}"}, useDNS=False, **configA),
        )
        B = S2SManager(
            reactor(),
            THEIRS,
            self.tlsB if tlsB == "default" else tlsB,
            S2SConfig(listen=(f"tcp:{self.portB}:interface=127.0.0.1",), routes={OURS: f"tcp:127.0.0.1:{self.portA}"}, useDNS=False, **configB),
        )
        inboxA, inboxB = _Inbox(), _Inbox()
        A.stanzaReceived, B.stanzaReceived = inboxA.received, inboxB.received
        for service in A.services() + B.services():
            service.startService()
            self.addCleanup(service.stopService)
        self.addCleanup(lambda: gatherResults([A.stop(), B.stop()]))
        return A, B, inboxA, inboxB

    async def roundTrip(self, A: S2SManager, B: S2SManager, inboxA: _Inbox, inboxB: _Inbox) -> None:
        await A.send(THEIRS, message(body="to B"))
        domain, stanza = await inboxB.waitFor(lambda: inboxB.stanzas[0] if inboxB.stanzas else None, 10, "A's message")
        self.assertEqual((domain, str(stanza.body)), (OURS, "to B"))
        await B.send(OURS, message(f"juliet@{THEIRS}", f"romeo@{OURS}", "to A"))
        domain, stanza = await inboxA.waitFor(lambda: inboxA.stanzas[0] if inboxA.stanzas else None, 10, "B's message")
        self.assertEqual((domain, str(stanza.body)), (THEIRS, "to A"))

    def methods(self, manager: S2SManager, domain: str) -> list[str]:
        return [s.methods[domain] for s in manager.incoming if domain in s.methods]

    async def test_external(self) -> None:
        """
        Each trusting the other's CA, both links authenticate with SASL
        EXTERNAL, with verified certificates, and messages go both ways.
        """
        A, B, inboxA, inboxB = self.managers()
        await self.roundTrip(A, B, inboxA, inboxB)
        for manager, other in ((A, THEIRS), (B, OURS)):
            stream = manager.links[other].stream
            assert stream is not None
            self.assertEqual((stream.method, stream.certificateProblem, stream.secure), ("SASL EXTERNAL", None, True))
        self.assertEqual(self.methods(B, OURS), ["SASL EXTERNAL"])
        self.assertEqual(self.methods(A, THEIRS), ["SASL EXTERNAL"])

    async def test_dialback(self) -> None:
        """
        With certificates not trusted (verification off), both links
        authenticate with dialback over TLS.
        """
        A, B, inboxA, inboxB = self.managers({"verifyCertificates": False}, {"verifyCertificates": False})
        await self.roundTrip(A, B, inboxA, inboxB)
        stream = A.links[THEIRS].stream
        assert stream is not None
        self.assertEqual((stream.method, stream.secure), ("dialback", True))
        self.assertEqual(self.methods(B, OURS), ["dialback"])

    async def test_certificateAndDialback(self) -> None:
        """
        XEP-0344: a peer that uses dialback although its certificate is
        valid for its domain is accepted at once, without asking its
        authoritative server.
        """
        A, B, inboxA, inboxB = self.managers()
        A.ourCertificateValid = False  # A does not try SASL EXTERNAL
        await A.send(THEIRS, message())
        await inboxB.waitFor(lambda: inboxB.stanzas or None, 10, "A's message")
        self.assertEqual(self.methods(B, OURS), ["dialback (XEP-0344: certificate)"])
        self.assertNotIn(OURS, B.links)

    async def test_untrustedPeerDialback(self) -> None:
        """
        A peer whose certificate we do not trust authenticates with
        dialback when it is allowed; our link to it goes on with dialback
        too, noting the certificate problem.
        """
        directory = self.mktemp()
        otherCA, _ = loadTLS(directory, "unrelated.example")
        A, B, inboxA, inboxB = self.managers({"trustRoots": otherCA}, {"trustRoots": otherCA})
        await self.roundTrip(A, B, inboxA, inboxB)
        stream = A.links[THEIRS].stream
        assert stream is not None
        self.assertEqual(stream.method, "dialback")
        self.assertIn("untrusted certificate", stream.certificateProblem or "")
        self.assertEqual(self.methods(B, OURS), ["dialback"])

    async def test_strictRefusesUntrusted(self) -> None:
        """
        With dialback off, a peer certificate we do not trust fails the
        link and its stanzas, without retrying.
        """
        directory = self.mktemp()
        otherCA, _ = loadTLS(directory, "unrelated.example")
        A, B, inboxA, inboxB = self.managers({"trustRoots": otherCA, "allowDialback": False})
        e = await failureOf(A.send(THEIRS, message()), S2SError)
        self.assertEqual(e.condition, "remote-server-not-found")
        self.assertIn("certificate", e.text)

    async def test_wrongName(self) -> None:
        """
        A certificate from a trusted CA but for another name is not valid
        for the domain: with dialback off the link fails.
        """
        directory = self.mktemp()
        caB, tlsB = loadTLS(directory, THEIRS, name="www.other.example")
        A, B, inboxA, inboxB = self.managers({"trustRoots": caB, "allowDialback": False}, tlsB=tlsB)
        e = await failureOf(A.send(THEIRS, message()), S2SError)
        self.assertIn("not issued for other.example", e.text)

    async def test_noStartTLS(self) -> None:
        """
        A peer without TLS (none configured, not required there) fails our
        link when we require TLS.
        """
        A, B, inboxA, inboxB = self.managers(b={"requireTLS": False, "verifyCertificates": False}, tlsB=None)
        e = await failureOf(A.send(THEIRS, message()), S2SError)
        self.assertIn("does not offer STARTTLS", e.text)

    async def test_stop(self) -> None:
        """
        Stopping closes every stream: the peer sees its links go down.
        """
        A, B, inboxA, inboxB = self.managers()
        lost: list[str] = []
        B.linkLost = lost.append
        await self.roundTrip(A, B, inboxA, inboxB)
        await A.stop()
        await inboxB.waitFor(lambda: lost or None, 5, "B's link to go down")
        self.assertEqual(lost, [OURS])
        self.assertEqual(A.incoming, set())
