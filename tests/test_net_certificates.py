# -*- test-case-name: tests.test_net_certificates -*-
"""
Tests for L{imgateway.net.certificates}: certificate, key and trust-root
files and folders checked before any port opens, with certificates made
for each test (L{Certificates}).
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.net.certificates import (
    CertificateProblem,
    checkCertificateFolder,
    checkTrustRootsFolder,
    keyMatches,
    loadCertificates,
    loadPrivateKey,
    loadTLSFiles,
    loadTrustRootFile,
)

#: The time the tests check validity dates at (POSIX seconds).
NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def keyPEM(key: Any, password: bytes | None = None) -> bytes:
    """
    C{key} as PKCS#8 PEM, encrypted with C{password} if given.
    """
    encryption: Any = (
        serialization.BestAvailableEncryption(password) if password is not None else serialization.NoEncryption()
    )
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def certificatePEM(*certificates: x509.Certificate) -> bytes:
    """
    C{certificates} as PEM.
    """
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class Certificates:
    """
    Makes a small CA and certificates it signs, valid around L{NOW}
    unless told otherwise.
    """

    def __init__(self, now: datetime.datetime = NOW) -> None:
        """
        @param now: The CA is valid from 30 days before to a year after.
        """
        self.caKey = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgateway test CA")])
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.caKey.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - 30 * DAY)
            .not_valid_after(now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.caKey, hashes.SHA256())
        )

    def issue(
        self,
        names: list[str] | None = None,
        notBefore: datetime.datetime = NOW - DAY,
        notAfter: datetime.datetime = NOW + 90 * DAY,
        key: Any = None,
    ) -> tuple[Any, x509.Certificate]:
        """
        A key (C{key}, or a new one) and a certificate for C{names} (DNS
        names in its subjectAltName; C{["gw.corp.example"]} by default, none
        if empty) signed by the CA.
        """
        names = ["gw.corp.example"] if names is None else names
        key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "no-san")]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        return key, builder.sign(self.caKey, hashes.SHA256())


def write(path: FilePath[str], *parts: bytes) -> str:
    """
    Write C{parts} to C{path} (making its folder).

    @return: Its path.
    """
    if not path.parent().exists():
        path.parent().makedirs()
    path.setContent(b"".join(parts))
    return path.path


class Unreadable(FilePath[str]):
    """
    A L{FilePath} whose files named C{unreadable.pem} cannot be read, as
    if their mode denied it (tests may run as root, who reads anything).
    """

    def clonePath(self, path: Any, alwaysCreate: bool = False) -> Any:
        return Unreadable(path)

    def getContent(self) -> bytes:
        if self.basename() == "unreadable.pem":
            raise PermissionError(13, "Permission denied", self.path)
        return super().getContent()


class FileTests(SynchronousTestCase):
    """
    L{loadCertificates}, L{loadPrivateKey}, L{loadTLSFiles} and
    L{loadTrustRootFile}: the single files of C{[xmpp]}'s C{certificate},
    C{private_key} and C{s2s_trust_roots}.
    """

    def setUp(self) -> None:
        self.certificates = Certificates()
        self.folder = FilePath(self.mktemp())
        self.now = NOW.timestamp()

    def test_valid(self) -> None:
        """
        A chain and its key in one file load, leaf first, and match.
        """
        key, certificate = self.certificates.issue()
        path = write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate, self.certificates.ca))
        files = loadTLSFiles(path, path, now=self.now)
        self.assertEqual(files.chain, (certificate, self.certificates.ca))
        self.assertTrue(keyMatches(certificate, files.key))
        self.assertNotIn("PRIVATE", repr(files))

    def test_expired(self) -> None:
        """
        A certificate past its notAfter is refused, naming the file, the
        certificate's names and the date.
        """
        _, certificate = self.certificates.issue(notBefore=NOW - 100 * DAY, notAfter=NOW - 2 * DAY)
        path = write(self.folder.child("old.pem"), certificatePEM(certificate))
        e = self.assertRaises(CertificateProblem, loadCertificates, path, self.now)
        self.assertEqual(str(e), f"{path}: the certificate for gw.corp.example expired on 2030-05-30 00:00 UTC")
        self.assertEqual(loadCertificates(path, (NOW - 3 * DAY).timestamp()), (certificate,))

    def test_notYetValid(self) -> None:
        """
        A certificate before its notBefore is refused.
        """
        _, certificate = self.certificates.issue(notBefore=NOW + DAY)
        path = write(self.folder.child("early.pem"), certificatePEM(certificate))
        e = self.assertRaises(CertificateProblem, loadCertificates, path, self.now)
        self.assertIn("is not valid before 2030-06-02 00:00 UTC", str(e))

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        _, certificate = self.certificates.issue()
        otherKey, _ = self.certificates.issue()
        cert = write(self.folder.child("gw.crt"), certificatePEM(certificate))
        key = write(self.folder.child("gw.key"), keyPEM(otherKey))
        e = self.assertRaises(CertificateProblem, loadTLSFiles, cert, key, self.now)
        self.assertEqual(str(e), f"{key} does not match the certificate in {cert}")

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused: nobody is there to type its passphrase.
        """
        key, _ = self.certificates.issue()
        path = write(self.folder.child("gw.key"), keyPEM(key, b"secret"))
        e = self.assertRaises(CertificateProblem, loadPrivateKey, path)
        self.assertEqual(str(e), f"{path}: the private key is encrypted (it must be unencrypted PEM)")

    def test_notPEM(self) -> None:
        """
        Files holding no certificate or no key say so.
        """
        path = write(self.folder.child("empty.pem"), b"nothing here\n")
        self.assertIn("holds no PEM certificate", str(self.assertRaises(CertificateProblem, loadCertificates, path)))
        self.assertIn("holds no unencrypted PEM private key", str(self.assertRaises(CertificateProblem, loadPrivateKey, path)))
        self.assertIn("holds no PEM certificate", str(self.assertRaises(CertificateProblem, loadTrustRootFile, path)))

    def test_folderForFile(self) -> None:
        """
        A folder where a file belongs is named as such.
        """
        self.folder.makedirs()
        e = self.assertRaises(CertificateProblem, loadCertificates, self.folder.path)
        self.assertEqual(str(e), f"{self.folder.path} is a folder, not a PEM file")
        e = self.assertRaises(CertificateProblem, loadTrustRootFile, self.folder.path)
        self.assertEqual(str(e), f"{self.folder.path} is a folder: name a PEM file of CA certificates")

    def test_missing(self) -> None:
        """
        A file that does not exist is named, with the system's reason.
        """
        missing = self.folder.child("missing.pem").path
        e = self.assertRaises(CertificateProblem, loadPrivateKey, missing)
        self.assertEqual(str(e), f"cannot read {missing}: No such file or directory")

    def test_trustRootFile(self) -> None:
        """
        Every CA certificate of a trust-root file is read, whatever its
        dates (what a CA's expiry means is OpenSSL's business).
        """
        other = Certificates()
        path = write(self.folder.child("cas.pem"), certificatePEM(self.certificates.ca, other.ca))
        self.assertEqual(loadTrustRootFile(path), (self.certificates.ca, other.ca))


class CertificateFolderTests(SynchronousTestCase):
    """
    L{checkCertificateFolder}: the folder of a C{tls:} server endpoint.
    """

    def setUp(self) -> None:
        self.certificates = Certificates()
        self.folder = FilePath(self.mktemp())
        self.now = NOW.timestamp()

    def check(self, folder: FilePath[str] | None = None) -> str:
        """
        @return: The problem L{checkCertificateFolder} finds.
        """
        folder = folder if folder is not None else self.folder
        return str(self.assertRaises(CertificateProblem, checkCertificateFolder, folder.path, self.now))

    def test_valid(self) -> None:
        """
        A folder with a key and its chain in one file, another name's key
        and certificate in two files of a subfolder, and a lone
        intermediate passes.
        """
        key, certificate = self.certificates.issue()
        write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate, self.certificates.ca))
        key2, certificate2 = self.certificates.issue(["xmpp.corp.example", "corp.example"])
        write(self.folder.child("xmpp").child("key.pem"), keyPEM(key2))
        write(self.folder.child("xmpp").child("cert.pem"), certificatePEM(certificate2))
        write(self.folder.child("chain.pem"), certificatePEM(self.certificates.ca))
        write(self.folder.child("README"), b"not read: only *.pem files are\n")
        checkCertificateFolder(self.folder.path, self.now)

    def test_missingFolder(self) -> None:
        """
        A folder that does not exist is refused (Twisted would serve no
        certificate at all, failing every handshake).
        """
        self.assertEqual(self.check(), f"tls: folder {self.folder.path} does not exist")

    def test_fileForFolder(self) -> None:
        """
        A PEM file given where the folder belongs is refused with what to
        do.
        """
        key, certificate = self.certificates.issue()
        path = write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        self.assertEqual(
            self.check(self.folder.child("gw.pem")),
            f"a tls: endpoint's path must be a folder of PEM files; {path} is a file: put it in a folder",
        )

    def test_empty(self) -> None:
        """
        A folder with no C{.pem} file is refused, saying which names are
        read.
        """
        write(self.folder.child("gw.crt"), b"")
        self.assertEqual(self.check(), f"tls: folder {self.folder.path} holds no .pem file (only files named *.pem are read)")

    def test_noKey(self) -> None:
        """
        Certificates without any private key are refused.
        """
        _, certificate = self.certificates.issue()
        write(self.folder.child("gw.pem"), certificatePEM(certificate))
        self.assertIn("holds no private key", self.check())

    def test_mismatchedKey(self) -> None:
        """
        A private key that no certificate of the folder matches is refused,
        naming its file.
        """
        _, certificate = self.certificates.issue()
        otherKey, _ = self.certificates.issue()
        write(self.folder.child("cert.pem"), certificatePEM(certificate))
        keyPath = write(self.folder.child("key.pem"), keyPEM(otherKey))
        self.assertEqual(self.check(), f"{keyPath}: no certificate in {self.folder.path} matches this private key")

    def test_strayKey(self) -> None:
        """
        One good pair does not hide a second key without its certificate
        (a renewal half done).
        """
        key, certificate = self.certificates.issue()
        write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        otherKey, _ = self.certificates.issue()
        keyPath = write(self.folder.child("new-key.pem"), keyPEM(otherKey))
        self.assertIn(f"{keyPath}: no certificate", self.check())

    def test_expired(self) -> None:
        """
        An expired certificate with its key is refused, even beside a
        valid one for the same name: Twisted does not look at dates and
        might serve either.
        """
        key, certificate = self.certificates.issue()
        write(self.folder.child("new.pem"), keyPEM(key), certificatePEM(certificate))
        oldKey, old = self.certificates.issue(notBefore=NOW - 100 * DAY, notAfter=NOW - 10 * DAY)
        oldPath = write(self.folder.child("old.pem"), keyPEM(oldKey), certificatePEM(old))
        self.assertEqual(self.check(), f"{oldPath}: the certificate for gw.corp.example expired on 2030-05-22 00:00 UTC")

    def test_noDNSName(self) -> None:
        """
        A certificate with no DNS name in its subjectAltName is refused:
        Twisted serves certificates by those names only.
        """
        key, certificate = self.certificates.issue([])
        path = write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        self.assertIn(f"{path}: the certificate for CN=no-san names no DNS name in its subjectAltName", self.check())

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused.
        """
        key, certificate = self.certificates.issue()
        path = write(self.folder.child("gw.pem"), keyPEM(key, b"secret"), certificatePEM(certificate))
        self.assertEqual(self.check(), f"{path}: the private key is encrypted (it must be unencrypted PEM)")

    def test_otherBlock(self) -> None:
        """
        A PEM block that is neither a certificate nor a private key (the
        C{EC PARAMETERS} that C{openssl ecparam -genkey} writes) is
        refused: Twisted would try to read it as a key.
        """
        key, certificate = self.certificates.issue()
        parameters = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        path = write(self.folder.child("gw.pem"), parameters, keyPEM(key), certificatePEM(certificate))
        self.assertIn(f"{path}: a EC PARAMETERS block: Twisted reads every block that is not a certificate", self.check())

    def test_badCertificate(self) -> None:
        """
        A certificate block that cannot be read is named.
        """
        key, _ = self.certificates.issue()
        bad = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        path = write(self.folder.child("gw.pem"), keyPEM(key), bad)
        self.assertIn(f"{path}: a CERTIFICATE block that cannot be read", self.check())

    def test_unreadable(self) -> None:
        """
        A C{.pem} file that cannot be read is named, with the reason.
        """
        key, certificate = self.certificates.issue()
        write(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        write(self.folder.child("unreadable.pem"), b"")
        folder = Unreadable(self.folder.path)
        problem = str(self.assertRaises(CertificateProblem, checkCertificateFolder, folder, self.now))
        self.assertEqual(problem, f"cannot read {self.folder.child('unreadable.pem').path}: Permission denied")


class TrustRootsFolderTests(SynchronousTestCase):
    """
    L{checkTrustRootsFolder}: the C{trustRoots} folder of a C{tls:} client
    endpoint.
    """

    def setUp(self) -> None:
        self.certificates = Certificates()
        self.folder = FilePath(self.mktemp())

    def check(self, path: str | None = None) -> str:
        """
        @return: The problem L{checkTrustRootsFolder} finds.
        """
        return str(self.assertRaises(CertificateProblem, checkTrustRootsFolder, path or self.folder.path))

    def test_valid(self) -> None:
        """
        A folder of C{.pem} files, one CA certificate each, passes; other
        names are not read.
        """
        write(self.folder.child("ca.pem"), certificatePEM(self.certificates.ca))
        write(self.folder.child("other.PEM"), certificatePEM(Certificates().ca))
        write(self.folder.child("notes.txt"), b"not read\n")
        checkTrustRootsFolder(self.folder.path)

    def test_file(self) -> None:
        """
        A PEM file given for the folder gets a clear error (Twisted fails
        with an C{UnlistableError} that names nothing).
        """
        path = write(self.folder.child("ca.pem"), certificatePEM(self.certificates.ca))
        self.assertEqual(self.check(path), f"trustRoots must be a folder of PEM files; {path} is a file: put it in a folder")

    def test_missing(self) -> None:
        """
        A folder that does not exist is named.
        """
        self.assertEqual(self.check(), f"trustRoots folder {self.folder.path} does not exist")

    def test_empty(self) -> None:
        """
        A folder without C{.pem} files (C{.crt} files are not read) is
        refused.
        """
        write(self.folder.child("ca.crt"), certificatePEM(self.certificates.ca))
        self.assertIn("holds no .pem file", self.check())

    def test_notACertificate(self) -> None:
        """
        A C{.pem} file holding no certificate is named (Twisted would skip
        it silently).
        """
        path = write(self.folder.child("ca.pem"), b"junk\n")
        self.assertIn(f"trustRoots: {path} holds no PEM certificate", self.check())

    def test_bundle(self) -> None:
        """
        A file of several CA certificates is refused: Twisted would trust
        only the first.
        """
        path = write(self.folder.child("cas.pem"), certificatePEM(self.certificates.ca, Certificates().ca))
        self.assertEqual(
            self.check(),
            f"trustRoots: {path} holds 2 certificates, of which Twisted reads only the first:"
            " put each CA certificate in a file of its own",
        )

    def test_unreadable(self) -> None:
        """
        A C{.pem} file that cannot be read is named.
        """
        write(self.folder.child("unreadable.pem"), b"")
        problem = str(self.assertRaises(CertificateProblem, checkTrustRootsFolder, Unreadable(self.folder.path)))
        self.assertEqual(problem, f"cannot read {self.folder.child('unreadable.pem').path}: Permission denied")
