"""
End-to-end tests of the s2s link layer (L{imgateway.adapters.xmpp.s2s})
against a real Prosody on loopback: static routes both ways (no DNS), TLS
required both ways, and either certificates verified both ways (SASL
EXTERNAL only: Prosody's C{s2s_secure_auth}, dialback off) or dialback
only (neither side trusts the other's CA).

A real XMPP client (slixmpp) logged in to Prosody sends a message to a user
of our domain, which reaches L{S2SManager.stanzaReceived}; our manager
sends one back, which the client receives.
"""

from __future__ import annotations

import os

from twisted.application.service import IService
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from imgateway.adapters.xmpp.s2s import NS_DIALBACK_FEATURES, NS_SERVER, S2SConfig, S2SManager
from imgateway.net.certificates import loadTLSFiles
from imgateway.net.tls import TLSFiles
from tests.e2e.harness import _Waiters, freePort, makeCertificates, reactor
from tests.e2e.prosody import ProsodyProcess

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: Our domain.
DOMAIN = "corp.example"

#: How long one federated hop may take here, in seconds.
TIMEOUT = 15.0


def loadTLS(directory: str, domain: str) -> tuple[str, TLSFiles]:
    """
    A CA and a certificate for C{domain} signed by it (L{makeCertificates}),
    loaded as the XMPP adapter loads its own.

    @return: The CA's PEM file, and the certificate and key.
    """
    caPath, serverDir = makeCertificates(directory, domain)
    pem = os.path.join(serverDir, f"{domain}.pem")
    return caPath, loadTLSFiles(pem, pem)


class _Inbox(_Waiters):
    """
    What our manager's C{stanzaReceived} was given.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stanzas: list[tuple[str, domish.Element]] = []

    def summary(self) -> str:
        return repr([(domain, stanza.toXml()[:300]) for domain, stanza in self.stanzas])

    def received(self, domain: str, stanza: domish.Element) -> None:
        self.stanzas.append((domain, stanza))
        self._changed()

    def message(self, sender: str, body: str) -> tuple[str, domish.Element] | None:
        for domain, stanza in self.stanzas:
            bodies = [str(b) for b in stanza.elements(NS_SERVER, "body")]
            if stanza.name == "message" and (stanza.getAttribute("from") or "").startswith(sender) and body in bodies:
                return domain, stanza
        return None


class ProsodyFederationTests(TestCase):
    """
    Our s2s manager federates with Prosody.
    """

    timeout = 120

    async def _federate(self, secure: bool) -> tuple[ProsodyProcess, S2SManager]:
        ourCA, tls = loadTLS(self.mktemp(), DOMAIN)
        port = freePort()
        prosody = ProsodyProcess(
            self,
            users={"user": "user's pw"},
            peers={DOMAIN: port},
            trust=[ourCA] if secure else [],
            s2sRequireEncryption=True,
            s2sSecureAuth=secure,
            dialback=not secure,
            logLevel="debug",
        )
        config = S2SConfig(
            listen=(f"tcp:{port}:interface=127.0.0.1",),
            routes={prosody.domain: f"tcp:127.0.0.1:{prosody.s2sPort}"},
            useDNS=False,
            requireTLS=True,
            verifyCertificates=secure,
            allowDialback=not secure,
            trustRoots=prosody.caPath,
        )
        manager = S2SManager(reactor(), DOMAIN, tls, config)
        inbox = _Inbox()
        manager.stanzaReceived = inbox.received
        self.inbox = inbox
        services: list[IService] = manager.services()
        for service in services:
            service.startService()
            self.addCleanup(service.stopService)
        self.addCleanup(manager.stop)
        await prosody.start()
        return prosody, manager

    async def _exchange(self, prosody: ProsodyProcess, manager: S2SManager) -> None:
        agent = await prosody.agent("user")
        agent.message(f"test@{DOMAIN}", "hello over s2s")
        domain, stanza = await self.inbox.waitFor(
            lambda: self.inbox.message(prosody.jid("user"), "hello over s2s"), TIMEOUT, "the message from Prosody"
        )
        self.assertEqual(domain, prosody.domain)
        self.assertEqual(stanza.getAttribute("to"), f"test@{DOMAIN}")
        self.assertTrue((stanza.getAttribute("from") or "").startswith(f"{prosody.jid('user')}/"))

        reply = domish.Element((NS_SERVER, "message"))
        reply["from"] = f"test@{DOMAIN}"
        reply["to"] = prosody.jid("user")
        reply["type"] = "chat"
        reply.addElement("body", content="hello back")
        await manager.send(prosody.domain, reply)
        await agent.waitForMessage(f"test@{DOMAIN}", "hello back", timeout=TIMEOUT)

    def _features(self, manager: S2SManager, domain: str) -> list[list[str]]:
        link = manager.links[domain]
        assert link.stream is not None
        return link.stream.featureNames

    async def test_certificates(self) -> None:
        """
        With each side trusting the other's CA, Prosody requiring secure
        authentication and dialback off both ways, both streams
        authenticate with SASL EXTERNAL (XEP-0178) and a message goes each
        way.
        """
        prosody, manager = await self._federate(secure=True)
        await self._exchange(prosody, manager)
        link = manager.links[prosody.domain]
        assert link.stream is not None
        self.assertEqual(link.stream.method, "SASL EXTERNAL")
        self.assertIsNone(link.stream.certificateProblem)
        [incoming] = [s for s in manager.incoming if prosody.domain in s.domains]
        self.assertEqual(incoming.methods[prosody.domain], "SASL EXTERNAL")
        self.assertIn(f"Accepting SASL EXTERNAL identity from {DOMAIN}", prosody.log())
        # Prosody (s2s_secure_auth): STARTTLS (required) first, then only
        # SASL EXTERNAL, for it trusts our certificate.
        features = self._features(manager, prosody.domain)
        self.assertEqual(features[0], [f"{NS_TLS} starttls"])
        self.assertEqual(features[1], [f"{NS_SASL} mechanisms"])

    async def test_dialback(self) -> None:
        """
        With no certificate trusted either way (verification off on our
        side, Prosody not trusting our CA), both streams authenticate with
        dialback (XEP-0220): each side verifies the other's key with its
        authoritative server, and a message goes each way.
        """
        prosody, manager = await self._federate(secure=False)
        await self._exchange(prosody, manager)
        link = manager.links[prosody.domain]
        assert link.stream is not None
        self.assertEqual(link.stream.method, "dialback")
        [incoming] = [s for s in manager.incoming if prosody.domain in s.domains]
        self.assertEqual(incoming.methods[prosody.domain], "dialback")
        # Prosody checked our key with us, as the authoritative server, and
        # offered dialback before and after STARTTLS, and no SASL (it does
        # not trust our certificate).
        self.assertIn("verified dialback key... it is valid", prosody.log())
        features = self._features(manager, prosody.domain)
        self.assertEqual(sorted(features[0]), [f"{NS_TLS} starttls", f"{NS_DIALBACK_FEATURES} dialback"])
        self.assertEqual(features[1], [f"{NS_DIALBACK_FEATURES} dialback"])
