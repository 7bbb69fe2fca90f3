"""
End-to-end tests of the XMPP c2s face: a real slixmpp client (in its own
process) logs in to the real C{twistd imgateway} over STARTTLS with a
verified certificate, and talks with a native-protocol user.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, GatewayProcess, RawConnection, freePort, makeCertificates, rawConnect, sleep
from tests.e2e.xmppclient import AgentError, XMPPAgent, connectAgent

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


class XMPPGateway:
    """
    A gateway with the native face and an XMPP c2s face that requires TLS
    with a certificate for C{corp.example} from a test authority.
    """

    def __init__(self, testCase: TestCase, **xmpp: object) -> None:
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.caPath, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        self.xmppPort = freePort()
        table: dict[str, object] = {
            "listen": [f"tcp:{self.xmppPort}:interface=127.0.0.1"],
            "certificate": pem,
            "private_key": pem,
        }
        table.update(xmpp)
        self.gw = GatewayProcess(testCase, {"xmpp": table}, directory=os.path.join(directory, "gw"))
        self.gw.waitPorts.append(self.xmppPort)
        self.gw.addUsers(PASSWORDS)
        self.testCase = testCase

    def agent(self, user: str, password: str | None = None, **kwargs: Any) -> Deferred[XMPPAgent]:
        options: dict[str, Any] = {"tls": "starttls", "caFile": self.caPath}
        options.update(kwargs)
        return connectAgent(
            self.testCase,
            f"{user}@{DOMAIN}/agent",
            password if password is not None else PASSWORDS[user],
            self.xmppPort,
            **options,
        )


class C2SEndToEndTests(TestCase):
    """
    slixmpp against the gateway's c2s face.
    """

    async def test_xmppAndNativeUsers(self) -> None:
        """
        An XMPP user (bob) and a native user (alice) add each other, see
        each other's presence through the mapping table (busy is dnd with
        the note), exchange messages, and bob's roster is the contact list
        alice's requests built.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        alice, aliceSees = await x.gw.client("alice", PASSWORDS["alice"])
        bob = await x.agent("bob")

        await alice.subscribe("bob@corp.example", "Bob")
        await bob.waitForSubscribe("alice@corp.example")
        bob.approve("alice@corp.example")
        bob.subscribe("alice@corp.example")
        await aliceSees.waitForSubscription("bob@corp.example", "subscribe")
        await alice.authorise("bob@corp.example")

        bob.setPresence(show="dnd", status="in a meeting")
        await aliceSees.waitForPresence("bob@corp.example", PresenceState.BUSY, "in a meeting")
        await alice.publish(PresenceState.OUT_TO_LUNCH, "back at 2")
        await bob.waitForPresence("alice@corp.example", show="xa", status="Out to lunch: back at 2")

        await alice.sendMessage("bob@corp.example", "hello bob")
        await bob.waitForMessage("alice@corp.example", "hello bob")
        bob.message("alice@corp.example", "hello alice")
        await aliceSees.waitForMessage("bob@corp.example", "hello alice")

        roster = await bob.request({"cmd": "roster"})
        items = {i["jid"]: i for i in roster["items"]}
        self.assertEqual(items["alice@corp.example"]["subscription"], "both")

    async def test_errorsComeBack(self) -> None:
        """
        Delivery failures reach the XMPP sender as stanza errors: an
        unknown user and an offline one alike as C{service-unavailable}
        (RFC 6121 8.5: no existence leak).
        """
        x = XMPPGateway(self)
        await x.gw.start()
        bob = await x.agent("bob")
        bob.message("ghost@corp.example", "anyone?")
        bob.message("alice@corp.example", "are you there?")
        ghost = await bob.waitForEvent("message", sender="ghost@corp.example", type="error")
        offline = await bob.waitForEvent("message", sender="alice@corp.example", type="error")
        self.assertIn("service-unavailable", str(ghost["error"]))
        self.assertIn("service-unavailable", str(offline["error"]))

    async def test_tlsRequired(self) -> None:
        """
        A client that will not use TLS cannot log in; a wrong password is
        refused.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        with self.assertRaises(AgentError):
            await x.agent("bob", tls="plain")
        with self.assertRaises(AgentError):
            await x.agent("bob", password="wrong")

    async def test_garbageWhileOthersTalk(self) -> None:
        """
        A connection sending an XML bomb to the c2s port is closed while an
        XMPP user and a native user keep exchanging messages.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        alice, aliceSees = await x.gw.client("alice", PASSWORDS["alice"])
        bob = await x.agent("bob")
        raw = await rawConnect(self, f"tcp:127.0.0.1:{x.xmppPort}")
        bomb = "<!DOCTYPE lolz [<!ENTITY lol 'lol'>" + "".join(
            f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>" for i in range(1, 9)
        ) + "]>"
        raw.send(
            (
                "<?xml version='1.0'?>" + bomb + "<stream:stream xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
            ).encode()
        )
        await raw.waitForClose(5)
        self.assertIn(b"restricted-xml", raw.received)
        await alice.publish(PresenceState.ONLINE)
        for i in range(10):
            bob.message("alice@corp.example", f"m{i}")
        await aliceSees.waitForMessages("bob@corp.example", 10)


SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
C2S_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='corp.example' version='1.0'>"
).encode()


def clientTLS(caPath: str) -> Any:
    """
    Client TLS options that trust the test authority and check the name
    C{corp.example}.
    """
    with open(caPath, "rb") as f:
        authority = x509.load_pem_x509_certificate(f.read())
    return optionsForClientTLS(DOMAIN, trustRoot=trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(authority))]))


class C2SHostileTLSTests(TestCase):
    """
    Raw XMPP over a real socket and a real TLS handshake: what a hostile
    client does around STARTTLS and the stanza cap.
    """

    async def startTLS(self, x: XMPPGateway, pipelined: bytes = b"") -> RawConnection:
        """
        Open a c2s stream, send C{<starttls/>} (and C{pipelined} in the
        same write), do the TLS handshake and open the stream again.

        @return: The connection, with C{mark} set to where the bytes
            received over TLS start.
        """
        raw = await rawConnect(self, f"tcp:127.0.0.1:{x.xmppPort}")
        raw.send(C2S_HEADER)
        await raw.waitFor(lambda: b"</stream:features>" in raw.received, 10, "the features")
        raw.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + pipelined)
        await raw.waitFor(lambda: b"<proceed" in raw.received, 10, "<proceed/>")
        raw.mark = len(raw.received)  # type: ignore[attr-defined]
        assert raw.transport is not None
        raw.transport.startTLS(clientTLS(x.caPath))  # type: ignore[attr-defined]
        raw.send(C2S_HEADER)
        await raw.waitFor(lambda: raw.received.count(b"</stream:features>") >= 2, 10, "the features over TLS")
        return raw

    async def test_startTLSInjection(self) -> None:
        """
        A plaintext PLAIN C{<auth>} written in the same segment as
        C{<starttls/>} is dropped: after a real TLS handshake the client is
        offered SASL afresh, and no answer to the injected C{<auth>} (no
        success, no failure) ever comes, nor does the account log in.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        plain = base64.b64encode(b"\0bob\0" + PASSWORDS["bob"].encode())
        raw = await self.startTLS(x, b"<auth xmlns='" + SASL.encode() + b"' mechanism='PLAIN'>" + plain + b"</auth>")
        overTLS = raw.received[raw.mark :]  # type: ignore[attr-defined]
        self.assertIn(b"<mechanism>PLAIN</mechanism>", overTLS)
        await sleep(0.5)
        self.assertNotIn(b"success", raw.received)
        self.assertNotIn(b"failure", raw.received)
        self.assertIsNone(raw.lost)
        self.assertNotIn("bob@corp.example authenticated", x.gw.log())

    async def test_stanzaCapThroughTLSRecords(self) -> None:
        """
        The pre-login stanza cap (1024 bytes here) counts bytes, whatever
        the TLS records they come in: a 1024-byte stanza is accepted and a
        1025-byte one refused with C{policy-violation}, in one record or
        cut into two at every boundary near its end. The cap is advertised
        with XEP-0478 over TLS.
        """
        x = XMPPGateway(self, pre_auth_stanza_bytes=1024)
        await x.gw.start()
        first = f"<auth xmlns='{SASL}' mechanism='X-NONE'/>".encode()
        prefix = f"<auth xmlns='{SASL}' mechanism='X-NONE' pad='".encode()
        for size in (1024, 1025):
            stanza = prefix + b"a" * (size - len(prefix) - 3) + b"'/>"
            self.assertEqual(len(stanza), size)
            for cut in (None, 1, size - 4, size - 3, size - 2, size - 1):
                raw = await self.startTLS(x)
                overTLS = raw.received[raw.mark :]  # type: ignore[attr-defined]
                self.assertIn(b"<max-bytes>1024</max-bytes>", overTLS)
                raw.send(first)
                await raw.waitFor(lambda: raw.received.count(b"invalid-mechanism") == 1, 10, "the first failure")
                for piece in [stanza] if cut is None else [stanza[:cut], stanza[cut:]]:
                    raw.send(piece)  # one TLS record each
                    await sleep(0.02)
                if size == 1024:
                    await raw.waitFor(lambda: raw.received.count(b"invalid-mechanism") == 2, 10, f"the answer (cut at {cut})")
                    self.assertNotIn(b"policy-violation", raw.received)
                else:
                    await raw.waitForClose(10)
                    self.assertIn(b"policy-violation", raw.received, f"cut at {cut}")
                    self.assertEqual(raw.received.count(b"invalid-mechanism"), 1)
                await raw.close()

    async def test_closesOverTLS(self) -> None:
        """
        A c2s stream over TLS that is closed really ends (the stream's send
        queue guard, a producer registered on the TLS transport, lets go
        first), whoever closes it: the server on a stream error
        (C{restricted-xml}, for a comment), the client closing its stream
        (answered with the server's closing tag, RFC 6120 section 4.4), or
        the client's stream error.
        """
        x = XMPPGateway(self)
        await x.gw.start()
        for data, sent in [
            (b"<!-- a comment -->", b"restricted-xml"),
            (b"</stream:stream>", b"</stream:stream>"),
            (b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>", b""),
        ]:
            raw = await self.startTLS(x)
            raw.send(data)
            await raw.waitForClose(5)
            self.assertIn(sent, raw.received[raw.mark :])  # type: ignore[attr-defined]
        self.assertTrue(x.gw.running)
