# -*- test-case-name: tests.test_admin -*-
"""
A lab certificate authority for server links (C{imgateway-admin certs}):
C{certs ca DIR} makes its key and certificate, C{certs server DIR NAME}
a server's key and certificate signed by it, for both TLS server and client
use, as a link's two ends need (docs/operations.md, "Certificates for
server links"). Made with L{imgateway.net.authority}.

Files, in C{DIR}: C{ca.key} and C{ca.crt}; C{NAME.key} and C{NAME.crt}.
Keys are written with mode 0600, certificates 0644; an existing file is
never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence

from cryptography import x509

from imgateway.core.errors import ImgatewayError
from imgateway.net.authority import CertificateAuthority, certificatePEM, keyPEM

__all__ = ["CA_CERTIFICATE", "CA_KEY", "CertsRefused", "describe", "makeAuthority", "makeServer"]

#: The authority's files in its folder.
CA_KEY = "ca.key"
CA_CERTIFICATE = "ca.crt"

_DAY = datetime.timedelta(days=1)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*\Z")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


class CertsRefused(ImgatewayError):
    """
    The certificates cannot be made as asked; the message says why.
    """


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int) -> None:
    """
    Write a new file with C{mode}.

    @raise CertsRefused: If it exists, or cannot be written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertsRefused(f"{path} exists: remove it first to make a new one") from None
    except OSError as e:
        raise CertsRefused(f"cannot write {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    # The umask may have taken bits off: set exactly what was asked.
    os.chmod(path, mode)


def _checkFree(*paths: str) -> None:
    """
    @raise CertsRefused: If one of C{paths} exists (checked before any file
        is written, so that a refusal leaves nothing half made).
    """
    for path in paths:
        if os.path.lexists(path):
            raise CertsRefused(f"{path} exists: remove it first to make a new one")


def _checkDays(days: int) -> None:
    if days < 1:
        raise CertsRefused(f"--days must be at least 1, got {days}")


def makeAuthority(folder: str, commonName: str, days: int = 3650, now: datetime.datetime | None = None) -> tuple[str, str]:
    """
    Make a certificate authority: C{ca.key} (mode 0600) and C{ca.crt} in
    C{folder} (made, mode 0700, if missing).

    @param commonName: Its name.
    @param days: How long it is valid (from a day before C{now}).
    @return: The paths of the key and the certificate.
    @raise CertsRefused: If a file exists, or cannot be written.
    """
    _checkDays(days)
    now = now if now is not None else _now()
    keyPath, certificatePath = os.path.join(folder, CA_KEY), os.path.join(folder, CA_CERTIFICATE)
    _checkFree(keyPath, certificatePath)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as e:
        raise CertsRefused(f"cannot make {folder}: {e.strerror}") from None
    authority = CertificateAuthority(now, commonName=commonName, notBefore=now - _DAY, notAfter=now + days * _DAY)
    _write(keyPath, keyPEM(authority.key), 0o600)
    _write(certificatePath, certificatePEM(authority.certificate), 0o644)
    return keyPath, certificatePath


def _loadAuthority(folder: str, now: datetime.datetime) -> CertificateAuthority:
    keyPath, certificatePath = os.path.join(folder, CA_KEY), os.path.join(folder, CA_CERTIFICATE)
    try:
        with open(keyPath, "rb") as f:
            keyData = f.read()
        with open(certificatePath, "rb") as f:
            certificateData = f.read()
    except OSError as e:
        raise CertsRefused(
            f"cannot read {e.filename}: {e.strerror} (make the authority first: imgateway-admin certs ca {folder})"
        ) from None
    try:
        return CertificateAuthority.fromPEM(keyData, certificateData, now)
    except ValueError as e:
        raise CertsRefused(f"{folder}: not a certificate authority made by imgateway-admin certs ca: {e}") from None


def _checkDNSName(name: str) -> str:
    """
    @return: C{name} in lower case.
    @raise CertsRefused: If it is not an ASCII DNS name.
    """
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise CertsRefused(f"--dns {name!r} is not a DNS name (ASCII letters, digits, '-', in labels joined by '.')")
    return ".".join(labels).lower()


def makeServer(
    folder: str,
    name: str,
    dnsNames: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 365,
    now: datetime.datetime | None = None,
) -> tuple[str, str]:
    """
    Issue a server's certificate with the authority in C{folder}: for TLS
    servers and clients (extended key usages C{serverAuth} and
    C{clientAuth}), as both ends of a server link use it. Writes C{NAME.key}
    (mode 0600) and C{NAME.crt} in C{folder}.

    @param name: The server's name: its files' name and its certificate's
        common name.
    @param dnsNames: The DNS names it holds; C{name} alone when neither
        these nor C{ips} are given.
    @param ips: The IP addresses it holds.
    @param days: How long it is valid (from a day before C{now}); never
        past the authority's own expiry.
    @return: The paths of the key and the certificate.
    @raise CertsRefused: If an argument is wrong, the authority cannot be
        read, or a file exists or cannot be written.
    """
    _checkDays(days)
    if not _NAME.match(name) or name == "ca":
        raise CertsRefused(f"{name!r} cannot name a server's files: use letters, digits, '-' and '.' (and not 'ca')")
    dns = [_checkDNSName(n) for n in dnsNames]
    addresses = []
    for ip in ips:
        try:
            addresses.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertsRefused(f"--ip {ip!r} is not an IP address") from None
    if not dns and not addresses:
        dns = [_checkDNSName(name)]
    now = now if now is not None else _now()
    keyPath, certificatePath = os.path.join(folder, f"{name}.key"), os.path.join(folder, f"{name}.crt")
    authority = _loadAuthority(folder, now)
    _checkFree(keyPath, certificatePath)
    caExpires = authority.certificate.not_valid_after_utc
    notAfter = min(now + days * _DAY, caExpires)
    if notAfter <= now:
        raise CertsRefused(f"the authority in {folder} has expired ({caExpires:%Y-%m-%d}): make a new one")
    key, certificate = authority.issue(
        dns, notBefore=now - _DAY, notAfter=notAfter, clientAuth=True, ips=addresses, commonName=name
    )
    _write(keyPath, keyPEM(key), 0o600)
    _write(certificatePath, certificatePEM(certificate), 0o644)
    return keyPath, certificatePath


def describe(path: str) -> str:
    """
    One line saying what the certificate in C{path} is: its names and its
    expiry.
    """
    with open(path, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    subject = certificate.subject.rfc4514_string()
    return f"{subject}{' (' + ', '.join(names) + ')' if names else ''}, valid until {certificate.not_valid_after_utc:%Y-%m-%d}"
