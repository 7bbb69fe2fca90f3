# -*- test-case-name: tests.test_testcerts -*-
"""
Tests for the certificates that L{imgateway.testing} makes for tests
(L{imgateway._testcerts}): what they hold, and that the gateway's own
checks (L{imgateway.net.certificates}) and OpenSSL take them.
"""

from __future__ import annotations

import datetime
import os
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.certificates import (
    CertificateProblem,
    checkCertificateFolder,
    checkTrustRootsFolder,
    keyMatches,
    loadPrivateKey,
    loadTLSFiles,
    loadTrustRootFile,
)
from imgateway.testing import (
    TEST_HOSTNAME,
    CertificateAuthority,
    certificatePEM,
    keyPEM,
    makeCertificates,
    selfSigned,
    selfSignedOptions,
    writePEM,
)
from tests.test_imports import REPO, importsOf

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def commonName(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def dnsNames(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.DNSName)


def keyUsages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


class SelfSignedTests(SynchronousTestCase):
    """
    L{selfSigned} and L{selfSignedOptions}.
    """

    def test_forName(self) -> None:
        """
        The certificate names C{name} (common name and subjectAltName), is
        its own issuer, is signed by its key, and is valid from a day ago
        to a day from now unless told otherwise.
        """
        key, certificate = selfSigned("chat.corp.example")
        self.assertEqual(commonName(certificate), "chat.corp.example")
        self.assertEqual(dnsNames(certificate), ["chat.corp.example"])
        self.assertEqual(certificate.issuer, certificate.subject)
        certificate.verify_directly_issued_by(certificate)
        self.assertTrue(keyMatches(certificate, key))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertTrue(certificate.not_valid_before_utc < now < certificate.not_valid_after_utc)
        self.assertLess(certificate.not_valid_after_utc - certificate.not_valid_before_utc, 3 * DAY)

    def test_dates(self) -> None:
        """
        Given dates are the certificate's.
        """
        _, certificate = selfSigned(notBefore=NOW - 9 * DAY, notAfter=NOW - DAY)
        self.assertEqual((certificate.not_valid_before_utc, certificate.not_valid_after_utc), (NOW - 9 * DAY, NOW - DAY))
        self.assertEqual(commonName(certificate), "corp.example")

    def test_options(self) -> None:
        """
        L{selfSignedOptions} makes a usable OpenSSL context holding a
        certificate for the name.
        """
        context = selfSignedOptions("gw.corp.example").getContext()
        certificate = SSL.Connection(context, None).get_certificate()
        assert certificate is not None
        self.assertEqual(commonName(certificate.to_cryptography()), "gw.corp.example")


class CertificateAuthorityTests(SynchronousTestCase):
    """
    L{CertificateAuthority}.
    """

    def test_authority(self) -> None:
        """
        The authority's certificate is a CA certificate, valid from 30
        days before C{now} to a year after; two authorities have different
        names.
        """
        authority = CertificateAuthority(NOW)
        ca = authority.certificate
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertTrue(ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
        ca.verify_directly_issued_by(ca)
        self.assertEqual((ca.not_valid_before_utc, ca.not_valid_after_utc), (NOW - 30 * DAY, NOW + 365 * DAY))
        self.assertNotEqual(CertificateAuthority(NOW).certificate.subject, ca.subject)

    def test_issue(self) -> None:
        """
        An issued certificate is signed by the authority, names its names
        (the first as common name), is for TLS servers only, is not a CA,
        and is valid from a day before C{now} to 90 days after.
        """
        authority = CertificateAuthority(NOW)
        key, certificate = authority.issue(["xmpp.corp.example", "corp.example"])
        certificate.verify_directly_issued_by(authority.certificate)
        self.assertTrue(keyMatches(certificate, key))
        self.assertEqual(commonName(certificate), "xmpp.corp.example")
        self.assertEqual(dnsNames(certificate), ["xmpp.corp.example", "corp.example"])
        self.assertEqual(keyUsages(certificate), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertFalse(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(
            (certificate.not_valid_before_utc, certificate.not_valid_after_utc), (NOW - DAY, NOW + 90 * DAY)
        )
        self.assertEqual(dnsNames(authority.issue()[1]), [TEST_HOSTNAME])

    def test_clientAuth(self) -> None:
        """
        With C{clientAuth}, the certificate is for TLS clients too.
        """
        _, certificate = CertificateAuthority().issue(["corp.example"], clientAuth=True)
        self.assertEqual(keyUsages(certificate), [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_noNames(self) -> None:
        """
        Without names, the certificate has no subjectAltName and its common
        name is C{no-san}.
        """
        _, certificate = CertificateAuthority().issue([])
        self.assertEqual((commonName(certificate), dnsNames(certificate)), ("no-san", []))

    def test_expiredAndNotYetValid(self) -> None:
        """
        Given dates are the certificate's, before or after the authority's
        C{now}.
        """
        authority = CertificateAuthority(NOW)
        _, expired = authority.issue(notBefore=NOW - 100 * DAY, notAfter=NOW - 2 * DAY)
        self.assertEqual((expired.not_valid_before_utc, expired.not_valid_after_utc), (NOW - 100 * DAY, NOW - 2 * DAY))
        _, early = authority.issue(notBefore=NOW + DAY)
        self.assertEqual((early.not_valid_before_utc, early.not_valid_after_utc), (NOW + DAY, NOW + 90 * DAY))


class PEMTests(SynchronousTestCase):
    """
    L{keyPEM}, L{certificatePEM}, L{writePEM} and L{makeCertificates}.
    """

    def test_roundTrip(self) -> None:
        """
        A key and its chain written with L{writePEM} load back with the
        gateway's own loaders; the file is its owner's only, and its
        folders are made.
        """
        authority = CertificateAuthority(NOW)
        key, certificate = authority.issue()
        folder = FilePath(self.mktemp()).child("deep")
        path = writePEM(folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate, authority.certificate))
        self.assertEqual(path, folder.child("gw.pem").path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        files = loadTLSFiles(path, path, now=NOW.timestamp())
        self.assertEqual(files.chain, (certificate, authority.certificate))
        self.assertTrue(keyMatches(certificate, files.key))

    def test_encryptedKey(self) -> None:
        """
        With a password, the key is written encrypted (and the gateway
        refuses it).
        """
        key, _ = selfSigned()
        path = writePEM(os.path.join(self.mktemp(), "key.pem"), keyPEM(key, b"secret"))
        with open(path, "rb") as f:
            self.assertIn(b"ENCRYPTED PRIVATE KEY", f.read())
        self.assertRaises(CertificateProblem, loadPrivateKey, path)

    def test_makeCertificates(self) -> None:
        """
        L{makeCertificates} writes a trust-root folder and a C{tls:} server
        folder that the gateway's checks accept, the server's certificate
        issued by the trusted authority for the name.
        """
        caPath, serverDir = makeCertificates(self.mktemp(), "chat.corp.example", clientAuth=True)
        self.assertEqual(os.path.basename(caPath), "ca.pem")
        checkTrustRootsFolder(os.path.dirname(caPath))
        checkCertificateFolder(serverDir)
        pem = os.path.join(serverDir, "chat.corp.example.pem")
        files = loadTLSFiles(pem, pem)
        (ca,) = loadTrustRootFile(caPath)
        files.chain[0].verify_directly_issued_by(ca)
        self.assertEqual(dnsNames(files.chain[0]), ["chat.corp.example"])
        self.assertIn(ExtendedKeyUsageOID.CLIENT_AUTH, keyUsages(files.chain[0]))


class ImportTests(SynchronousTestCase):
    """
    The certificate helpers can be imported where no reactor may be.
    """

    def test_noReactor(self) -> None:
        """
        L{imgateway._testcerts} imports neither the global reactor nor any
        other module of C{imgateway} but L{imgateway.net.authority} (the
        certificate authority it shares with C{imgateway-admin certs}),
        which imports neither either.
        """
        source = REPO.child("imgateway").child("_testcerts.py").getContent().decode("utf-8")
        imported = importsOf("imgateway._testcerts", source, False)
        self.assertNotIn("twisted.internet.reactor", imported)
        shared = {"imgateway.net", "imgateway.net.authority"}
        self.assertEqual(
            sorted(m for m in imported if m.startswith("imgateway") and m not in shared),
            [
                "imgateway.net.authority.PrivateKey",
                "imgateway.net.authority.certificatePEM",
                "imgateway.net.authority.keyPEM",
                "imgateway.net.authority.newKey",
            ],
        )
        authority = REPO.child("imgateway").child("net").child("authority.py").getContent().decode("utf-8")
        imported = importsOf("imgateway.net.authority", authority, False)
        self.assertEqual([m for m in imported if m.startswith(("imgateway", "twisted.internet"))], [])
