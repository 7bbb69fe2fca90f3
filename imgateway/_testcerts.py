# -*- test-case-name: tests.test_testcerts -*-
"""
Certificates made for tests (re-exported by L{imgateway.testing}): a key and
a self-signed certificate for a name, a small certificate authority and the
certificates it issues (for TLS servers, and clients with C{clientAuth}),
with any validity dates (expired, not yet valid), and PEM files and the
folders that C{tls:} endpoints and peer servers read.

Keys are ECDSA P-256: quick to make, and accepted by OpenSSL, Twisted,
Prosody and ejabberd. Nothing here needs or installs a reactor.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import CertificateOptions
from twisted.python.filepath import FilePath

from imgateway.net import authority as _authority
from imgateway.net.authority import PrivateKey, certificatePEM, keyPEM, newKey as _newKey

__all__ = [
    "TEST_HOSTNAME",
    "CertificateAuthority",
    "PrivateKey",
    "certificatePEM",
    "keyPEM",
    "makeCertificates",
    "selfSigned",
    "selfSignedOptions",
    "writePEM",
]

#: The name L{makeCertificates} issues a server certificate for by default.
TEST_HOSTNAME = "gw.corp.example"

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def selfSigned(
    name: str = "corp.example",
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """
    A new key and a self-signed certificate for C{name} (its common name
    and its one subjectAltName DNS name).

    @param notBefore: When it becomes valid; a day ago by default.
    @param notAfter: When it expires; in a day by default.
    """
    key = _newKey()
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore if notBefore is not None else now - _DAY)
        .not_valid_after(notAfter if notAfter is not None else now + _DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def selfSignedOptions(name: str = "corp.example") -> CertificateOptions:
    """
    Server TLS options with a new self-signed certificate for C{name}
    (L{selfSigned}), for a L{twisted.protocols.tls.TLSMemoryBIOFactory}.
    """
    key, certificate = selfSigned(name)
    # pyOpenSSL takes cryptography's objects; Twisted's stubs predate it.
    return CertificateOptions(privateKey=key, certificate=certificate)  # type: ignore[arg-type]


class CertificateAuthority(_authority.CertificateAuthority):
    """
    A small certificate authority for tests (L{imgateway.net.authority}),
    with a name of its own (two authorities never share a subject, so trust
    bundles can hold several), valid from 30 days before L{now} to a year
    after, and which issues certificates for L{TEST_HOSTNAME} unless told
    otherwise.
    """

    def __init__(self, now: datetime.datetime | None = None) -> None:
        """
        @param now: The authority is valid from 30 days before it to a year
            after; the current time by default.
        """
        super().__init__(now, commonName=f"imgateway test CA {os.urandom(4).hex()}")

    def issue(
        self,
        names: Sequence[str] = (TEST_HOSTNAME,),
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
        clientAuth: bool = False,
        ips: Sequence[str] = (),
        commonName: str | None = None,
    ) -> tuple[PrivateKey, x509.Certificate]:
        """
        See L{imgateway.net.authority.CertificateAuthority.issue}; the
        names are L{TEST_HOSTNAME} by default.
        """
        return super().issue(names, notBefore, notAfter, clientAuth, ips, commonName)


def writePEM(path: str | FilePath[str], *parts: bytes) -> str:
    """
    Write C{parts} (PEM blocks, or anything else a test wants there) to the
    file C{path}, readable by its owner only, making its folders.

    @return: Its path.
    """
    text = path.path if isinstance(path, FilePath) else path
    os.makedirs(os.path.dirname(os.path.abspath(text)), exist_ok=True)
    fd = os.open(text, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(parts))
    return text


def makeCertificates(directory: str, hostname: str = TEST_HOSTNAME, clientAuth: bool = False) -> tuple[str, str]:
    """
    Make a certificate authority and a server certificate for C{hostname}
    issued by it (L{CertificateAuthority.issue}), and write them in two
    folders of C{directory}: C{ca/} holds C{ca.pem}, the authority's
    certificate (a folder of trust roots, as the C{trustRoots=} of a
    C{tls:} client endpoint wants); C{server/} holds C{<hostname>.pem}, the
    server's private key and certificate in one file (a folder of PEM
    files, as the C{tls:} server endpoint wants).

    @param clientAuth: Whether the server certificate may also serve as a
        TLS client certificate (see L{CertificateAuthority.issue}).
    @return: The path of C{ca.pem} and the server's folder.
    """
    authority = CertificateAuthority()
    key, certificate = authority.issue([hostname], clientAuth=clientAuth)
    caPath = writePEM(os.path.join(directory, "ca", "ca.pem"), certificatePEM(authority.certificate))
    serverPath = writePEM(os.path.join(directory, "server", f"{hostname}.pem"), keyPEM(key), certificatePEM(certificate))
    return caPath, os.path.dirname(serverPath)
