# -*- test-case-name: tests.test_net_tls -*-
"""
Tests for L{imgateway.net.tls}.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.tls import ServerTLSOptions


def _selfSigned() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


class _FakeTLSFactory:
    wrappedFactory = object()


class _FakeTLSProtocol:
    factory = _FakeTLSFactory()


class ServerTLSOptionsTests(SynchronousTestCase):
    """
    L{ServerTLSOptions}.
    """

    def handshake(self, offered: list[bytes]) -> bytes | None:
        key, cert = _selfSigned()
        options = ServerTLSOptions(privateKey=key, certificate=cert, acceptableProtocols=[b"xmpp-client"])  # type: ignore[arg-type]
        server = SSL.Connection(options.getContext(), None)
        # Twisted's ALPN callback finds the factory through the connection's
        # app data, as a TLSMemoryBIOProtocol would hold it.
        server.set_app_data(_FakeTLSProtocol())
        server.set_accept_state()
        clientContext = SSL.Context(SSL.TLS_METHOD)
        clientContext.set_alpn_protos(offered)
        client = SSL.Connection(clientContext, None)
        client.set_connect_state()
        for _ in range(10):
            for a, b in ((client, server), (server, client)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    data = b""
                if data:
                    b.bio_write(data)
        self.assertEqual(client.get_state_string(), b"SSL negotiation finished successfully")
        protocol = client.get_alpn_proto_negotiated()
        return protocol or None

    def test_knownProtocol(self) -> None:
        """
        A protocol the face speaks is selected.
        """
        self.assertEqual(self.handshake([b"h2", b"xmpp-client"]), b"xmpp-client")

    def test_unknownProtocol(self) -> None:
        """
        A client offering only protocols the face does not speak still
        completes the handshake, with no protocol selected (Twisted's own
        options abort it with an internal_error alert).
        """
        self.assertIsNone(self.handshake([b"xmpp-server-unknown"]))
