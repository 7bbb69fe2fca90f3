# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
Server-to-server authentication (RFC 6120, XEP-0178, XEP-0220, XEP-0185,
XEP-0344), apart from the streams that carry it: how a peer's certificate
is checked (OpenSSL's chain verification recorded rather than fatal, then
L{service_identity} against the remote I{domain}), the TLS connections
that record it, SASL EXTERNAL's authorisation identity, and dialback keys
from a secret that never shows in a C{repr} or a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, platformTrust, trustRootFromCertificates
from zope.interface import implementer

from imgateway.adapters.xmpp.jid import InvalidJID, parseJID

__all__ = [
    "ALPN_PROTOCOLS",
    "DialbackKeys",
    "MAX_KEY_CHARS",
    "NS_DIALBACK",
    "NS_DIALBACK_FEATURES",
    "NS_SASL",
    "TLSCheck",
    "TLSCreator",
    "dialbackKey",
    "externalAuthzidProblem",
    "trustRoot",
    "validFor",
]

NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURES = "urn:xmpp:features:dialback"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: Longest dialback key we accept.
MAX_KEY_CHARS = 1024

#: OpenSSL's "unsupported certificate purpose": XMPP servers present their
#: server certificates as client certificates, whatever their EKU says
#: (Prosody ignores the purpose too).
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


def dialbackKey(secret: bytes, receiving: str, originating: str, streamID: str) -> str:
    """
    A dialback key (XEP-0185):
    C{HMAC-SHA256(hex(SHA256(secret)), receiving + ' ' + originating + ' ' + streamID)},
    in hex.
    """
    keyed = hashlib.sha256(secret).hexdigest().encode("ascii")
    return hmac.new(keyed, f"{receiving} {originating} {streamID}".encode(), hashlib.sha256).hexdigest()


def validFor(certificate: x509.Certificate, domain: str) -> str | None:
    """
    @return: C{None} if C{certificate} has a DNS-ID for C{domain}, else why not.
    """
    try:
        verify_certificate_hostname(certificate, domain)
    except (VerificationError, CertificateError) as e:
        return f"not issued for {domain} ({e})"
    return None


def trustRoot(path: str | None) -> Any:
    """
    The trust root for peers' certificates: the CAs of a PEM file, or the
    platform's. Built from C{cryptography} objects (no pyOpenSSL
    deprecation warnings).
    """
    if path is None:
        return platformTrust()
    with open(path, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
    return trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in certificates])


class TLSCheck:
    """
    What one TLS session says about the peer's certificate: OpenSSL's
    chain verification errors (recorded, not fatal), and the certificate.
    """

    def __init__(self, ignorePurpose: bool) -> None:
        self.ignorePurpose = ignorePurpose
        self.errors: list[tuple[int, int]] = []
        self.connection: SSL.Connection | None = None
        self.done = False

    def verify(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
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


#: What we answer a TLS client's ALPN with (XEP-0368).
ALPN_PROTOCOLS = [b"xmpp-server"]


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class TLSCreator:
    """
    TLS connections for one stream: the shared options, and a verify
    callback that records the peer certificate's problems in a L{TLSCheck}
    instead of failing the handshake.
    """

    def __init__(self, options: CertificateOptions, check: TLSCheck, verifyMode: int, serverName: str | None = None) -> None:
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


@attrs.frozen
class DialbackKeys:
    """
    Our dialback keys (XEP-0185), from a secret that stays out of every
    C{repr} and log.

    @ivar secret: Keys every dialback key; the same in every process that
        serves the domain, and across restarts (C{s2s_dialback_secret_file}).
    @ivar domain: Our domain (the originating domain of our keys).
    """

    secret: bytes = attrs.field(repr=False)
    domain: str

    def key(self, receiving: str, streamID: str) -> str:
        """
        @return: Our key for stream C{streamID} from C{receiving} to us.
        """
        return dialbackKey(self.secret, receiving, self.domain, streamID)

    def valid(self, receiving: str, streamID: str, key: str) -> bool:
        """
        @return: Whether C{key} is ours for that stream (in constant time).
        """
        return hmac.compare_digest(self.key(receiving, streamID).encode("ascii"), key.encode("utf-8", "replace"))


def externalAuthzidProblem(text: str, identity: str) -> str | None:
    """
    Check the authorisation identity of a SASL EXTERNAL C{<auth/>} (XEP-0178):
    none (empty or C{=}), or C{identity}, the domain the certificate proves.

    @param text: The C{<auth/>} element's text.
    @return: C{None} if it is acceptable, else the SASL failure condition.
    """
    text = text.strip()
    if text in ("", "="):
        return None
    try:
        authzid = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "incorrect-encoding"
    if not authzid:
        return None
    try:
        jid = parseJID(authzid)
    except InvalidJID:
        return "invalid-authzid"
    if jid.user is not None or jid.resource is not None or jid.host != identity:
        return "invalid-authzid"
    return None
