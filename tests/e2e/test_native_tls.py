"""
End-to-end tests of the native face over TLS: the real C{twistd imgateway}
process listening on a plain TCP and a C{tls:} endpoint at once, with a
certificate authority and server certificate made for the test, and
clients on loopback that verify the server's certificate (and resolve no
name).
"""

from __future__ import annotations

import os

from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import ClientError

from tests.test_native_framing import startLine

from tests.e2e.harness import (
    TLS_HOSTNAME,
    GatewayProcess,
    connectClient,
    failureOf,
    freePort,
    makeCertificates,
    openConnection,
    rawConnect,
    sleep,
    tlsClientEndpoint,
    tlsServerEndpoint,
)

ALICE = "alice@corp.example"
BOB = "bob@corp.example"

PASSWORDS = {"alice": "alice over tls", "bob": "bob over tcp"}


class TLSTests(TestCase):
    """
    The native face on a C{tls:} endpoint beside a C{tcp:} one.
    """

    async def _gateway(self, **native: object) -> tuple[GatewayProcess, str, int]:
        """
        Start a gateway with a TCP and a TLS listener and two users.

        @param native: More keys of the C{[native]} table.
        @return: The gateway, the path of its CA's certificate and the TLS
            port.
        """
        certificates = os.path.abspath(self.mktemp())
        caPath, serverDir = makeCertificates(certificates)
        tcpPort, tlsPort = freePort(), freePort()
        gw = GatewayProcess(
            self,
            {"native": {"listen": [f"tcp:{tcpPort}:interface=127.0.0.1", tlsServerEndpoint(serverDir, tlsPort)], **native}},
            port=tcpPort,
            waitPorts=[tcpPort, tlsPort],
        )
        gw.addUsers(PASSWORDS)
        await gw.start()
        return gw, caPath, tlsPort

    async def test_tlsClientTalksToTCPClient(self) -> None:
        """
        alice connects over TLS, verifying the server's certificate for
        C{gw.corp.example} against the test CA, logs in and exchanges
        messages with bob, connected over plain TCP. Over TLS the server
        offers C{PLAIN}, and a C{PLAIN} login succeeds.
        """
        gw, caPath, tlsPort = await self._gateway()
        endpoint = tlsClientEndpoint(tlsPort, caPath)
        alice, aliceSees = await connectClient(self, endpoint, "alice", PASSWORDS["alice"], label="tls")
        self.assertTrue(ISSLTransport.providedBy(alice.transport))
        certificate = alice.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [TLS_HOSTNAME])
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])

        await alice.sendMessage(BOB, "sent over TLS")
        got = await bobSees.waitForMessage(ALICE, "sent over TLS")
        self.assertEqual(got.sender, alice.address)
        await bob.sendMessage(ALICE, "read over TLS ✓")
        await aliceSees.waitForMessage(BOB, "read over TLS ✓")

        mechanisms = (await alice.options())["Mechanisms"]
        self.assertIn("PLAIN", [m.strip() for m in mechanisms.split(",")])
        plain = await openConnection(self, endpoint)
        self.assertEqual(str(await plain.login("alice", PASSWORDS["alice"], mechanism="PLAIN")), ALICE)
        await plain.ping()

    async def test_serverCloses(self) -> None:
        """
        A TLS connection that the server closes really ends (the face's
        send queue guard, a producer registered on the TLS transport, lets
        go first): after C{BYE} is answered, and after C{login_timeout}.
        """
        gw, caPath, tlsPort = await self._gateway(login_timeout=1)
        raw = await rawConnect(self, tlsClientEndpoint(tlsPort, caPath))
        raw.send(b"BYE * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitForClose()
        self.assertEqual(raw.codes(), [200])

        raw = await rawConnect(self, tlsClientEndpoint(tlsPort, caPath))
        raw.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitFor(lambda: raw.codes() == [200], 5, "the answer to OPTIONS")
        await raw.waitForClose(6)
        self.assertIn(b"login-timeout", raw.received)
        self.assertTrue(gw.running)

    async def test_untrustedCertificate(self) -> None:
        """
        A client that trusts another CA cannot connect: the TLS handshake
        fails with a certificate verification error, and logging in fails.
        So does a client that expects another name, and a client speaking
        plain text to the TLS port is dropped. The server goes on serving
        TLS and TCP clients.
        """
        gw, caPath, tlsPort = await self._gateway()
        bob, bobSees = await gw.client("bob", PASSWORDS["bob"])
        otherCA, _ = makeCertificates(os.path.abspath(self.mktemp()))

        # Trusts another CA.
        raw = await rawConnect(self, tlsClientEndpoint(tlsPort, otherCA))
        raw.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitForClose()
        self._assertVerifyFailed(raw.lost)
        self.assertEqual(raw.received, b"")
        error = await failureOf(
            connectClient(self, tlsClientEndpoint(tlsPort, otherCA), "alice", PASSWORDS["alice"]), ClientError
        )
        self.assertEqual(error.code, 0)
        self.assertIn("certificate verify failed", error.reason)

        # Trusts the right CA but expects another name.
        raw = await rawConnect(self, tlsClientEndpoint(tlsPort, caPath, hostname="other.corp.example"))
        raw.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitForClose()
        assert raw.lost is not None
        self.assertTrue(raw.lost.check(VerificationError), raw.lost)
        self.assertEqual(raw.received, b"")

        # Speaks plain text to the TLS port.
        raw = await rawConnect(self, f"tcp:127.0.0.1:{tlsPort}")
        raw.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
        await raw.waitForClose()
        self.assertNotIn(b"IMGW/1.0", raw.received)

        # The server still serves both.
        alice, _ = await connectClient(self, tlsClientEndpoint(tlsPort, caPath), "alice", PASSWORDS["alice"])
        await alice.sendMessage(BOB, "still here")
        await bobSees.waitForMessage(ALICE, "still here")
        await bob.ping()
        self.assertTrue(gw.running)

    async def test_limitsAtTheirBoundaries(self) -> None:
        """
        Over a real TLS listener with small limits, each limit accepts
        exactly its value and refuses one more, whether the frame arrives
        in one TLS record or in one record per byte: a start line of
        C{max_start_line_bytes} bytes (of two-byte characters) is answered
        (405: the method is unknown), one byte more gets 431 and the
        connection closes; the same for C{max_header_bytes} (200, then
        431) and C{max_headers}; a body of C{max_body_bytes} is answered
        (401: not logged in), one byte more gets 413 and the connection
        goes on. And 300 PINGs in one record, with C{request_burst = 20}
        and C{requests_per_second = 200}, are answered in order as reading
        pauses and resumes under TLS.
        """
        certificates = os.path.abspath(self.mktemp())
        caPath, serverDir = makeCertificates(certificates)
        tcpPort, tlsPort = freePort(), freePort()
        limits = {"max_start_line_bytes": 100, "max_header_bytes": 300, "max_headers": 6, "max_body_bytes": 700}
        rate = {"requests_per_second": 200, "request_burst": 20}
        gw = GatewayProcess(
            self,
            {"native": {"listen": [f"tcp:{tcpPort}:interface=127.0.0.1", tlsServerEndpoint(serverDir, tlsPort)], **limits, **rate}},
            port=tcpPort,
            waitPorts=[tcpPort, tlsPort],
        )
        await gw.start()

        def headers(size: int) -> bytes:
            # Header lines of exactly size bytes, CRLFs included.
            seq = b"Seq: 2\r\n"
            room = size - len(seq) - len(b"X-Pad: \r\n")
            block = seq + b"X-Pad: " + (b"y" * (room % 2) + "\u00e9".encode() * (room // 2)) + b"\r\n"
            assert len(block) == size
            return block

        def message(size: int) -> bytes:
            body = b"\r\n" * (size // 2) + b"z" * (size % 2)
            return b"MESSAGE im:bob@corp.example IMGW/1.0\r\nSeq: 2\r\nContent-Length: %d\r\n\r\n" % size + body

        n = limits
        cases = [
            (startLine(n["max_start_line_bytes"]) + b"\r\nSeq: 2\r\n\r\n", 405),
            (startLine(n["max_start_line_bytes"] + 1) + b"\r\nSeq: 2\r\n\r\n", 431),
            (b"PING * IMGW/1.0\r\n" + headers(n["max_header_bytes"]) + b"\r\n", 200),
            (b"PING * IMGW/1.0\r\n" + headers(n["max_header_bytes"] + 1) + b"\r\n", 431),
            (b"PING * IMGW/1.0\r\nSeq: 2\r\n" + b"X: y\r\n" * (n["max_headers"] - 1) + b"\r\n", 200),
            (b"PING * IMGW/1.0\r\nSeq: 2\r\n" + b"X: y\r\n" * n["max_headers"] + b"\r\n", 431),
            (message(n["max_body_bytes"]), 401),
            (message(n["max_body_bytes"] + 1), 413),
        ]
        for data, code in cases:
            for perByte in (False, True):
                conn = await rawConnect(self, tlsClientEndpoint(tlsPort, caPath))
                conn.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
                await conn.waitFor(conn.codes, description="OPTIONS answered")
                if perByte:
                    # Twisted's TLS joins the writes of one reactor turn
                    # into one record: a turn per byte makes a record per
                    # byte, which the server reads one at a time.
                    for i in range(len(data)):
                        conn.send(data[i : i + 1])
                        await sleep(0)
                else:
                    conn.send(data)
                conn.send(b"PING * IMGW/1.0\r\nSeq: 3\r\n\r\n")
                what = f"{code} case, {'a record per byte' if perByte else 'one record'}"
                if code == 431:
                    await conn.waitForClose()
                    self.assertEqual([(r.seq, r.code) for r in conn.responses()], [(1, 200), (0, 431)], what)
                else:
                    await conn.waitFor(lambda: len(conn.codes()) == 3, description=what)
                    self.assertEqual([(r.seq, r.code) for r in conn.responses()], [(1, 200), (2, code), (3, 200)], what)
                    self.assertIsNone(conn.lost, what)
                await conn.close()

        flood = await rawConnect(self, tlsClientEndpoint(tlsPort, caPath))
        flood.send(b"".join(b"PING * IMGW/1.0\r\nSeq: %d\r\n\r\n" % i for i in range(1, 301)))
        await flood.waitFor(lambda: len(flood.codes()) == 300, timeout=15, description="300 PINGs answered")
        self.assertEqual([(r.seq, r.code) for r in flood.responses()], [(i, 200) for i in range(1, 301)])
        self.assertIsNone(flood.lost)
        self.assertTrue(gw.running)

    def _assertVerifyFailed(self, reason: Failure | None) -> None:
        """
        Check that a connection ended because the server's certificate did
        not verify.
        """
        assert reason is not None
        self.assertTrue(reason.check(SSL.Error), reason)
        self.assertIn("certificate verify failed", str(reason.value))
