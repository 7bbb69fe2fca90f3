# -*- test-case-name: tests.test_xmpp_c2s -*-
"""
The domain's certificate chain and key, as the XMPP faces and links use
them (c2s STARTTLS, s2s both ways).
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import frozen
from twisted.internet.ssl import CertificateOptions

from imgateway.adapters.base import ServerTLSOptions

__all__ = ["TLSFiles"]


@frozen
class TLSFiles:
    """
    A certificate chain and its private key, read and checked at start-up.
    """

    certificatePath: str
    keyPath: str
    chain: tuple[Any, ...]
    key: Any = attrs.field(repr=False)

    def options(self, alpn: list[bytes] | None = None) -> CertificateOptions:
        """
        @param alpn: The ALPN protocols to select when a client offers them
            (others are declined without failing the handshake).
        @return: Server TLS options for this certificate.
        """
        return ServerTLSOptions(
            privateKey=self.key,
            certificate=self.chain[0],
            extraCertChain=list(self.chain[1:]),
            acceptableProtocols=alpn,
        )
