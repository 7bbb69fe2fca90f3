# -*- test-case-name: tests.test_net_tls -*-
"""
Tests for L{imgateway.net.tls}.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.tls import ServerTLSOptions
from imgateway.testing import selfSigned


class _FakeTLSFactory:
    wrappedFactory = object()


class _FakeTLSProtocol:
    factory = _FakeTLSFactory()


class ServerTLSOptionsTests(SynchronousTestCase):
    """
    L{ServerTLSOptions}.
    """

    def handshake(self, offered: list[bytes]) -> bytes | None:
        key, cert = selfSigned()
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
