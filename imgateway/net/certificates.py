# -*- test-case-name: tests.test_net_certificates -*-
"""
Certificate, private key and trust-root files, read and checked before any
port opens, so that a mistake stops start-up with one line naming the file
instead of failing every handshake later.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from imgateway.net.tls import TLSFiles

__all__ = [
    "CertificateProblem",
    "keyMatches",
    "loadCertificates",
    "loadPrivateKey",
    "loadTLSFiles",
    "loadTrustRootFile",
]


class CertificateProblem(ValueError):
    """
    A certificate, key or trust-root file or folder that cannot serve; the
    message names the file and says what is wrong.
    """


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateProblem(f"cannot read {path}: {e.strerror}") from None


def loadCertificates(path: str) -> tuple[x509.Certificate, ...]:
    """
    Read a certificate chain, leaf first.

    @param path: A PEM file.
    @raise CertificateProblem: If it cannot be read or holds no certificate.
    """
    try:
        return tuple(x509.load_pem_x509_certificates(_read(path)))
    except ValueError as e:
        raise CertificateProblem(f"{path} holds no PEM certificate ({e})") from None


def loadPrivateKey(path: str) -> Any:
    """
    Read an unencrypted private key.

    @param path: A PEM file.
    @return: The key (a C{cryptography} private key).
    @raise CertificateProblem: If it cannot be read or holds no
        unencrypted private key.
    """
    try:
        return load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as e:
        raise CertificateProblem(f"{path} holds no unencrypted PEM private key ({e})") from None


def _publicKeyBytes(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def keyMatches(certificate: x509.Certificate, key: Any) -> bool:
    """
    Whether C{key} is the private key of C{certificate}.
    """
    return _publicKeyBytes(certificate.public_key()) == _publicKeyBytes(key.public_key())


def loadTLSFiles(certificatePath: str, keyPath: str) -> TLSFiles:
    """
    Read a certificate chain and its private key, and check that they
    match.

    @raise CertificateProblem: If either cannot be read or they do not
        match.
    """
    chain = loadCertificates(certificatePath)
    key = loadPrivateKey(keyPath)
    if not keyMatches(chain[0], key):
        raise CertificateProblem(f"{keyPath} does not match the certificate in {certificatePath}")
    return TLSFiles(certificatePath, keyPath, chain, key)


def loadTrustRootFile(path: str) -> tuple[x509.Certificate, ...]:
    """
    Read the CA certificates of a PEM file (for
    L{imgateway.net.tls.trustRoot}).

    @raise CertificateProblem: If it cannot be read or holds no certificate.
    """
    return loadCertificates(path)
