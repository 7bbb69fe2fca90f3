# -*- test-case-name: tests.test_net_tls -*-
"""
TLS options for every face and link: server options that survive unknown
ALPN offers, a certificate chain and its key as one value, trust roots
built from C{cryptography} certificates, and connections that record what
is wrong with a peer's certificate instead of failing the handshake (so
that a protocol may fall back to another way of authenticating the peer).

Reading and checking the files is L{imgateway.net.certificates}' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from attrs import frozen
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, platformTrust, trustRootFromCertificates
from zope.interface import implementer

__all__ = ["ServerTLSOptions", "TLSCheck", "TLSCreator", "TLSFiles", "trustRoot", "validFor"]

#: OpenSSL's "unsupported certificate purpose" (X509_V_ERR_INVALID_PURPOSE).
_X509_V_ERR_INVALID_PURPOSE = 26

#: OpenSSL's names of the usual chain verification errors (X509_V_ERR_*).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


class _ALPNSafeContext(SSL.Context):
    """
    An OpenSSL context whose ALPN selection declines politely when nothing
    overlaps. Twisted 26.10's selection callback returns C{b""} then, which
    OpenSSL 3 turns into an C{internal_error} alert that kills the
    handshake: any client offering a protocol we do not list (Prosody on
    s2s STARTTLS, XMPP clients offering C{xmpp-client}) could not connect.
    """

    def set_alpn_select_callback(self, callback: Any) -> None:
        def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
            chosen = callback(connection, offered)
            return chosen if chosen else SSL.NO_OVERLAPPING_PROTOCOLS

        super().set_alpn_select_callback(select)


class ServerTLSOptions(CertificateOptions):
    """
    L{CertificateOptions} for servers whose contexts decline unknown ALPN
    offers instead of aborting the handshake. Pass C{acceptableProtocols}
    with the protocols the face speaks.
    """

    _contextFactory = _ALPNSafeContext


@frozen
class TLSFiles:
    """
    A certificate chain and its private key, read and checked at start-up
    (L{imgateway.net.certificates.loadTLSFiles}).

    @ivar certificatePath: The file the chain was read from.
    @ivar keyPath: The file the key was read from.
    @ivar chain: The certificates, leaf first (C{cryptography} objects).
    @ivar key: The private key (a C{cryptography} object), never in a
        C{repr}.
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


def trustRoot(certificates: Sequence[x509.Certificate] | None) -> Any:
    """
    A trust root for peers' certificates, built from C{cryptography}
    objects (no pyOpenSSL deprecation warnings).

    @param certificates: The trusted CAs (for example from
        L{imgateway.net.certificates.loadTrustRootFile}); C{None} for the
        platform's.
    @return: An L{twisted.internet.interfaces.IOpenSSLTrustRoot}.
    """
    if certificates is None:
        return platformTrust()
    return trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in certificates])


def validFor(certificate: x509.Certificate, domain: str) -> str | None:
    """
    @return: C{None} if C{certificate} has a DNS-ID for C{domain}, else why not.
    """
    try:
        verify_certificate_hostname(certificate, domain)
    except (VerificationError, CertificateError) as e:
        return f"not issued for {domain} ({e})"
    return None


class TLSCheck:
    """
    What one TLS session says about the peer's certificate: OpenSSL's
    chain verification errors (recorded, not fatal), and the certificate.

    @ivar ignorePurpose: Whether a certificate whose extended key usage
        does not allow this use is acceptable (XMPP servers present their
        server certificates as client certificates, whatever their EKU
        says; Prosody ignores the purpose too).
    @ivar errors: (depth, OpenSSL error number) of the first ten problems.
    @ivar done: Whether the handshake completed (set by the protocol).
    """

    def __init__(self, ignorePurpose: bool) -> None:
        self.ignorePurpose = ignorePurpose
        self.errors: list[tuple[int, int]] = []
        self.connection: SSL.Connection | None = None
        self.done = False

    def verify(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        """
        OpenSSL's verify callback: record a problem, go on with the
        handshake.
        """
        if not ok and not (self.ignorePurpose and errno == _X509_V_ERR_INVALID_PURPOSE) and len(self.errors) < 10:
            self.errors.append((depth, errno))
        return True

    def problem(self, domain: str) -> str | None:
        """
        @return: C{None} if the peer's certificate chains to a trusted CA
            and is valid for C{domain}; otherwise what is wrong.
        """
        if not self.done or self.connection is None:
            return "no TLS"
        certificate = self.connection.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            return "no certificate"
        if self.errors:
            depth, errno = self.errors[0]
            text = _VERIFY_ERRORS.get(errno, f"OpenSSL verify error {errno}")
            return f"untrusted certificate: {text} (at depth {depth})"
        return validFor(certificate, domain)


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class TLSCreator:
    """
    TLS connections for one stream: the shared options, and a verify
    callback that records the peer certificate's problems in a L{TLSCheck}
    instead of failing the handshake.
    """

    def __init__(self, options: CertificateOptions, check: TLSCheck, verifyMode: int, serverName: str | None = None) -> None:
        """
        @param verifyMode: OpenSSL's C{SSL.VERIFY_*} flags.
        @param serverName: The name sent with SNI (client side).
        """
        self.options = options
        self.check = check
        self.verifyMode = verifyMode
        self.serverName = serverName

    def _prepare(self, connection: SSL.Connection) -> SSL.Connection:
        connection.set_verify(self.verifyMode, self.check.verify)
        self.check.connection = connection
        return connection

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.serverName is not None:
            try:
                connection.set_tlsext_host_name(self.serverName.encode("idna"))
            except UnicodeError:
                pass
        return self._prepare(connection)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._prepare(self.options.serverConnectionForTLS(tlsProtocol))
