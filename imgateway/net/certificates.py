# -*- test-case-name: tests.test_net_certificates -*-
"""
Certificate, private key and trust-root files and folders, read and
checked before any port opens, so that a mistake stops start-up with one
line naming the file instead of failing every handshake later.

Two of the checks mirror how Twisted's endpoint strings read folders, so
that what passes here is what Twisted will serve or trust:

  - L{checkCertificateFolder}: the folder of a C{tls:} server endpoint.
    Twisted reads every file whose name ends in C{.pem}, in the folder and
    its subfolders; in each, every PEM block that is not a certificate is
    read as a private key; a certificate whose public key matches a key is
    served for the DNS names of its C{subjectAltName} (not its common
    name), the other certificates are candidate intermediates. Twisted
    does not look at validity dates, and reads a folder that does not
    exist as an empty one.
  - L{checkTrustRootsFolder}: the C{trustRoots} folder of a C{tls:} client
    endpoint. Twisted reads the first certificate of every C{*.pem} file
    in the folder (not its subfolders) and silently skips what it cannot
    read; given a file, it fails with an obscure C{UnlistableError}.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from cryptography.x509.oid import NameOID
from twisted.python.filepath import FilePath, LinkError

from imgateway.net.tls import TLSFiles

__all__ = [
    "CertificateProblem",
    "checkCertificateFolder",
    "checkTrustRootsFolder",
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


def _now(now: float | None) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.timezone.utc)


def _read(path: FilePath[str]) -> bytes:
    if path.isdir():
        raise CertificateProblem(f"{path.path} is a folder, not a PEM file")
    try:
        return path.getContent()
    except OSError as e:
        raise CertificateProblem(f"cannot read {path.path}: {e.strerror or e}") from None


def _names(certificate: x509.Certificate) -> list[str]:
    """
    The DNS names of C{certificate}'s C{subjectAltName}.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


def _describe(certificate: x509.Certificate) -> str:
    names = _names(certificate)
    if names:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={common[0].value!s}" if common else certificate.subject.rfc4514_string() or "no name"


def _checkDates(path: str, certificate: x509.Certificate, now: datetime.datetime) -> None:
    """
    @raise CertificateProblem: If C{certificate} has expired or is not
        valid yet.
    """
    end = certificate.not_valid_after_utc
    start = certificate.not_valid_before_utc
    if end < now:
        raise CertificateProblem(
            f"{path}: the certificate for {_describe(certificate)} expired on {end:%Y-%m-%d %H:%M} UTC"
        )
    if start > now:
        raise CertificateProblem(
            f"{path}: the certificate for {_describe(certificate)} is not valid before {start:%Y-%m-%d %H:%M} UTC"
        )


def loadCertificates(path: str, now: float | None = None) -> tuple[x509.Certificate, ...]:
    """
    Read a certificate chain, leaf first, and check that the leaf is valid
    now.

    @param path: A PEM file.
    @param now: POSIX time to check validity dates at; the current time
        when C{None}.
    @raise CertificateProblem: If it cannot be read, holds no certificate,
        or the leaf has expired or is not valid yet.
    """
    try:
        chain = tuple(x509.load_pem_x509_certificates(_read(FilePath(path))))
    except ValueError as e:
        if isinstance(e, CertificateProblem):
            raise
        raise CertificateProblem(f"{path} holds no PEM certificate ({e})") from None
    _checkDates(path, chain[0], _now(now))
    return chain


def _loadKey(path: str, blob: bytes) -> Any:
    try:
        return load_pem_private_key(blob, password=None)
    except TypeError:
        raise CertificateProblem(f"{path}: the private key is encrypted (it must be unencrypted PEM)") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateProblem(f"{path} holds no unencrypted PEM private key ({e})") from None


def loadPrivateKey(path: str) -> Any:
    """
    Read an unencrypted private key.

    @param path: A PEM file.
    @return: The key (a C{cryptography} private key).
    @raise CertificateProblem: If it cannot be read or holds no
        unencrypted private key.
    """
    return _loadKey(path, _read(FilePath(path)))


def _publicKeyBytes(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def keyMatches(certificate: x509.Certificate, key: Any) -> bool:
    """
    Whether C{key} is the private key of C{certificate}.
    """
    return _publicKeyBytes(certificate.public_key()) == _publicKeyBytes(key.public_key())


def loadTLSFiles(certificatePath: str, keyPath: str, now: float | None = None) -> TLSFiles:
    """
    Read a certificate chain and its private key, and check that they
    match and that the certificate is valid now.

    @raise CertificateProblem: If either cannot be read, the certificate
        is not valid now, or they do not match.
    """
    chain = loadCertificates(certificatePath, now)
    key = loadPrivateKey(keyPath)
    if not keyMatches(chain[0], key):
        raise CertificateProblem(f"{keyPath} does not match the certificate in {certificatePath}")
    return TLSFiles(certificatePath, keyPath, chain, key)


def loadTrustRootFile(path: str) -> tuple[x509.Certificate, ...]:
    """
    Read the CA certificates of a PEM file (for
    L{imgateway.net.tls.trustRoot}).

    @raise CertificateProblem: If it is a folder, cannot be read or holds
        no certificate.
    """
    if FilePath(path).isdir():
        raise CertificateProblem(f"{path} is a folder: name a PEM file of CA certificates")
    try:
        return tuple(x509.load_pem_x509_certificates(_read(FilePath(path))))
    except ValueError as e:
        if isinstance(e, CertificateProblem):
            raise
        raise CertificateProblem(f"{path} holds no PEM certificate ({e})") from None


def _pemBlocks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """
    Split PEM data into blocks as Twisted's C{tls:} server endpoint does:
    a block starts at each line beginning with C{-----BEGIN} and runs to
    the next; what comes before the first is ignored.

    @return: (the C{BEGIN} line's label, the block) pairs.
    """
    label: bytes | None = None
    lines: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN"):
            if label is not None:
                yield label, b"".join(lines)
            label = line.strip().removeprefix(b"-----BEGIN").strip(b"- ")
            lines = []
        lines.append(line)
    if label is not None:
        yield label, b"".join(lines)


def _pemFiles(folder: FilePath[str], subject: str, name: str, recursive: bool) -> list[FilePath[str]]:
    """
    The PEM files Twisted reads in C{folder}.

    @param subject: What must be a folder, for messages (C{"trustRoots"}).
    @param name: What the folder is called, for messages
        (C{"trustRoots folder"}).
    @param recursive: Whether files in subfolders count.
    """
    if not folder.exists():
        raise CertificateProblem(f"{name} {folder.path} does not exist")
    if not folder.isdir():
        raise CertificateProblem(f"{subject} must be a folder of PEM files; {folder.path} is a file: put it in a folder")
    try:
        if recursive:
            found = [p for p in folder.walk() if p.basename().endswith(".pem") and p.isfile()]
        else:
            found = [p for p in folder.children() if p.basename().split(".")[-1].lower() == "pem" and not p.isdir()]
    except (OSError, LinkError) as e:
        raise CertificateProblem(f"cannot list {name} {folder.path}: {getattr(e, 'strerror', None) or e}") from None
    if not found:
        raise CertificateProblem(f"{name} {folder.path} holds no .pem file (only files named *.pem are read)")
    return sorted(found)


def checkCertificateFolder(path: str | FilePath[str], now: float | None = None) -> None:
    """
    Check the folder of a C{tls:} server endpoint as Twisted will read it
    (see the module's docstring): it exists and is a folder; every C{.pem}
    file in it can be read, and each of its PEM blocks is a certificate or
    an unencrypted private key; every key has its certificate; at least
    one certificate has a key; and each certificate with a key is valid
    now and names at least one DNS name in its C{subjectAltName}.

    @param path: The folder.
    @param now: POSIX time to check validity dates at; the current time
        when C{None}.
    @raise CertificateProblem: Naming the first file at fault.
    """
    folder = path if isinstance(path, FilePath) else FilePath(path)
    when = _now(now)
    certificates: list[tuple[str, x509.Certificate]] = []
    keys: list[tuple[str, Any]] = []
    for pem in _pemFiles(folder, "a tls: endpoint's path", "tls: folder", recursive=True):
        for label, blob in _pemBlocks(_read(pem)):
            if b"CERTIFICATE" in label:
                try:
                    certificates.append((pem.path, x509.load_pem_x509_certificate(blob)))
                except ValueError as e:
                    raise CertificateProblem(f"{pem.path}: a {label.decode('ascii', 'replace')} block that cannot be read ({e})") from None
            elif b"PRIVATE KEY" in label:
                keys.append((pem.path, _loadKey(pem.path, blob)))
            else:
                raise CertificateProblem(
                    f"{pem.path}: a {label.decode('ascii', 'replace')} block: Twisted reads every block that"
                    " is not a certificate as a private key; keep only the key and certificates in the file"
                )
    if not keys:
        raise CertificateProblem(f"tls: folder {folder.path} holds no private key (each served name needs its key and certificate)")
    byPublicKey = {_publicKeyBytes(c.public_key()): (p, c) for p, c in certificates}
    for keyPath, key in keys:
        found = byPublicKey.get(_publicKeyBytes(key.public_key()))
        if found is None:
            raise CertificateProblem(f"{keyPath}: no certificate in {folder.path} matches this private key")
        certificatePath, certificate = found
        _checkDates(certificatePath, certificate, when)
        if not _names(certificate):
            raise CertificateProblem(
                f"{certificatePath}: the certificate for {_describe(certificate)} names no DNS name in its"
                " subjectAltName (a tls: endpoint serves certificates by those names only)"
            )


def checkTrustRootsFolder(path: str | FilePath[str], key: str = "trustRoots") -> None:
    """
    Check the C{trustRoots} folder of a C{tls:} client endpoint (or the
    C{caCertsDir} of an C{ssl:} one) as Twisted will read it (see the
    module's docstring): it exists and is a folder, holds at least one
    C{*.pem} file, and each such file can be read and holds exactly one
    certificate (Twisted would read only the first).

    @param path: The folder.
    @param key: The endpoint string's parameter, for messages.
    @raise CertificateProblem: Naming the first file at fault.
    """
    folder = path if isinstance(path, FilePath) else FilePath(path)
    for pem in _pemFiles(folder, key, f"{key} folder", recursive=False):
        try:
            found = x509.load_pem_x509_certificates(_read(pem))
        except ValueError as e:
            if isinstance(e, CertificateProblem):
                raise
            raise CertificateProblem(f"{key}: {pem.path} holds no PEM certificate ({e})") from None
        if len(found) > 1:
            raise CertificateProblem(
                f"{key}: {pem.path} holds {len(found)} certificates, of which Twisted reads only the"
                " first: put each CA certificate in a file of its own"
            )
