# -*- test-case-name: tests.test_admin,tests.test_testcerts -*-
"""
A small certificate authority, with C{cryptography}: a key and a
self-signed CA certificate, and the certificates it issues for TLS servers
(and clients, with C{clientAuth}). C{imgateway-admin certs} makes a lab's
link certificates with it (L{imgateway.admin.certs}); the tests make theirs
with it too (L{imgateway.testing}).

Keys are ECDSA P-256: quick to make, and accepted by OpenSSL, Twisted,
Prosody and ejabberd.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "PrivateKey",
    "certificatePEM",
    "keyPEM",
    "newKey",
]

#: The kind of private key made here.
PrivateKey = ec.EllipticCurvePrivateKey

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def newKey() -> PrivateKey:
    """
    A new ECDSA P-256 private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


class CertificateAuthority:
    """
    A certificate authority: a key, and its self-signed CA certificate
    (C{pathlen:0}: it signs only end-entity certificates).

    @ivar key: Its private key.
    @ivar certificate: Its CA certificate.
    @ivar now: The time the validity of what it issues is reckoned from.
    """

    key: PrivateKey
    certificate: x509.Certificate
    now: datetime.datetime

    def __init__(
        self,
        now: datetime.datetime | None = None,
        commonName: str | None = None,
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
    ) -> None:
        """
        Make a new authority.

        @param now: The time it is reckoned from; the current time by
            default.
        @param commonName: Its name; C{imgateway CA} and 8 random hex digits
            by default, so that two authorities never share a subject and a
            trust bundle can hold several.
        @param notBefore: When it becomes valid; 30 days before C{now} by
            default.
        @param notAfter: When it expires; a year after C{now} by default.
        """
        self.now = now if now is not None else _now()
        self.key = newKey()
        public = self.key.public_key()
        name = _name(commonName if commonName is not None else f"imgateway CA {os.urandom(4).hex()}")
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore if notBefore is not None else self.now - 30 * _DAY)
            .not_valid_after(notAfter if notAfter is not None else self.now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @classmethod
    def fromPEM(cls, keyData: bytes, certificateData: bytes, now: datetime.datetime | None = None) -> CertificateAuthority:
        """
        An authority made before, read back from its key and certificate.

        @param keyData: Its private key, unencrypted PEM.
        @param certificateData: Its CA certificate, PEM.
        @param now: As for L{__init__}.
        @raise ValueError: If they are not PEM, not an ECDSA key, not
            a CA certificate, or do not belong together.
        """
        key = serialization.load_pem_private_key(keyData, password=None)
        certificate = x509.load_pem_x509_certificate(certificateData)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the key is not an ECDSA key (imgateway-admin certs makes P-256 keys)")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError("the certificate is not a CA certificate")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
            raise ValueError("the key is not the certificate's")
        authority = cls.__new__(cls)
        authority.now = now if now is not None else _now()
        authority.key = key
        authority.certificate = certificate
        return authority

    def issue(
        self,
        names: Sequence[str],
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
        clientAuth: bool = False,
        ips: Sequence[str] = (),
        commonName: str | None = None,
    ) -> tuple[PrivateKey, x509.Certificate]:
        """
        A new key and a certificate for it signed by this authority, for
        TLS servers (extended key usage C{serverAuth}).

        @param names: The DNS names of its subjectAltName.
        @param notBefore: When it becomes valid; a day before L{now} by
            default (later than L{now} for one not yet valid).
        @param notAfter: When it expires; 90 days after L{now} by default
            (earlier than L{now} for an expired one).
        @param clientAuth: Whether it may also serve as a TLS client
            certificate (C{clientAuth} too), as a server link's or an s2s
            certificate must.
        @param ips: The IP addresses of its subjectAltName.
        @param commonName: Its common name (which TLS clients do not look
            at); by default its first name, or C{no-san} without any.
        @raise ValueError: If an entry of C{ips} is not an IP address.
        """
        addresses = [ipaddress.ip_address(ip) for ip in ips]
        key = newKey()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if clientAuth else [])
        if commonName is None:
            commonName = names[0] if names else (str(addresses[0]) if addresses else "no-san")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(commonName))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore if notBefore is not None else self.now - _DAY)
            .not_valid_after(notAfter if notAfter is not None else self.now + 90 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alternatives += [x509.IPAddress(a) for a in addresses]
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def keyPEM(key: PrivateKey, password: bytes | None = None) -> bytes:
    """
    C{key} as PKCS#8 PEM, encrypted with C{password} if given.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password is not None else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def certificatePEM(*certificates: x509.Certificate) -> bytes:
    """
    C{certificates} as PEM, in the order given (a chain: leaf first).
    """
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
