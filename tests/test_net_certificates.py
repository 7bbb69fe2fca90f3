# -*- test-case-name: tests.test_net_certificates -*-
"""
Tests for L{imgateway.net.certificates}: certificate, key and trust-root
files and folders checked before any port opens, with certificates made
for each test (L{imgateway.testing.CertificateAuthority}).
"""

from __future__ import annotations

import datetime
from typing import Any

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
from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM

#: The time the tests check validity dates at (POSIX seconds).
NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


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
        self.authority = CertificateAuthority(NOW)
        self.folder = FilePath(self.mktemp())
        self.now = NOW.timestamp()

    def test_valid(self) -> None:
        """
        A chain and its key in one file load, leaf first, and match.
        """
        key, certificate = self.authority.issue()
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate, self.authority.certificate))
        files = loadTLSFiles(path, path, now=self.now)
        self.assertEqual(files.chain, (certificate, self.authority.certificate))
        self.assertTrue(keyMatches(certificate, files.key))
        self.assertNotIn("PRIVATE", repr(files))

    def test_expired(self) -> None:
        """
        A certificate past its notAfter is refused, naming the file, the
        certificate's names and the date.
        """
        _, certificate = self.authority.issue(notBefore=NOW - 100 * DAY, notAfter=NOW - 2 * DAY)
        path = writePEM(self.folder.child("old.pem"), certificatePEM(certificate))
        e = self.assertRaises(CertificateProblem, loadCertificates, path, self.now)
        self.assertEqual(str(e), f"{path}: the certificate for gw.corp.example expired on 2030-05-30 00:00 UTC")
        self.assertEqual(loadCertificates(path, (NOW - 3 * DAY).timestamp()), (certificate,))

    def test_notYetValid(self) -> None:
        """
        A certificate before its notBefore is refused.
        """
        _, certificate = self.authority.issue(notBefore=NOW + DAY)
        path = writePEM(self.folder.child("early.pem"), certificatePEM(certificate))
        e = self.assertRaises(CertificateProblem, loadCertificates, path, self.now)
        self.assertIn("is not valid before 2030-06-02 00:00 UTC", str(e))

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        _, certificate = self.authority.issue()
        otherKey, _ = self.authority.issue()
        cert = writePEM(self.folder.child("gw.crt"), certificatePEM(certificate))
        key = writePEM(self.folder.child("gw.key"), keyPEM(otherKey))
        e = self.assertRaises(CertificateProblem, loadTLSFiles, cert, key, self.now)
        self.assertEqual(str(e), f"{key} does not match the certificate in {cert}")

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused: nobody is there to type its passphrase.
        """
        key, _ = self.authority.issue()
        path = writePEM(self.folder.child("gw.key"), keyPEM(key, b"secret"))
        e = self.assertRaises(CertificateProblem, loadPrivateKey, path)
        self.assertEqual(str(e), f"{path}: the private key is encrypted (it must be unencrypted PEM)")

    def test_notPEM(self) -> None:
        """
        Files holding no certificate or no key say so.
        """
        path = writePEM(self.folder.child("empty.pem"), b"nothing here\n")
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
        other = CertificateAuthority(NOW)
        path = writePEM(self.folder.child("cas.pem"), certificatePEM(self.authority.certificate, other.certificate))
        self.assertEqual(loadTrustRootFile(path), (self.authority.certificate, other.certificate))


class CertificateFolderTests(SynchronousTestCase):
    """
    L{checkCertificateFolder}: the folder of a C{tls:} server endpoint.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority(NOW)
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
        key, certificate = self.authority.issue()
        writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate, self.authority.certificate))
        key2, certificate2 = self.authority.issue(["xmpp.corp.example", "corp.example"])
        writePEM(self.folder.child("xmpp").child("key.pem"), keyPEM(key2))
        writePEM(self.folder.child("xmpp").child("cert.pem"), certificatePEM(certificate2))
        writePEM(self.folder.child("chain.pem"), certificatePEM(self.authority.certificate))
        writePEM(self.folder.child("README"), b"not read: only *.pem files are\n")
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
        key, certificate = self.authority.issue()
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        self.assertEqual(
            self.check(self.folder.child("gw.pem")),
            f"a tls: endpoint's path must be a folder of PEM files; {path} is a file: put it in a folder",
        )

    def test_empty(self) -> None:
        """
        A folder with no C{.pem} file is refused, saying which names are
        read.
        """
        writePEM(self.folder.child("gw.crt"), b"")
        self.assertEqual(self.check(), f"tls: folder {self.folder.path} holds no .pem file (only files named *.pem are read)")

    def test_noKey(self) -> None:
        """
        Certificates without any private key are refused.
        """
        _, certificate = self.authority.issue()
        writePEM(self.folder.child("gw.pem"), certificatePEM(certificate))
        self.assertIn("holds no private key", self.check())

    def test_mismatchedKey(self) -> None:
        """
        A private key that no certificate of the folder matches is refused,
        naming its file.
        """
        _, certificate = self.authority.issue()
        otherKey, _ = self.authority.issue()
        writePEM(self.folder.child("cert.pem"), certificatePEM(certificate))
        keyPath = writePEM(self.folder.child("key.pem"), keyPEM(otherKey))
        self.assertEqual(self.check(), f"{keyPath}: no certificate in {self.folder.path} matches this private key")

    def test_strayKey(self) -> None:
        """
        One good pair does not hide a second key without its certificate
        (a renewal half done).
        """
        key, certificate = self.authority.issue()
        writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        otherKey, _ = self.authority.issue()
        keyPath = writePEM(self.folder.child("new-key.pem"), keyPEM(otherKey))
        self.assertIn(f"{keyPath}: no certificate", self.check())

    def test_expired(self) -> None:
        """
        An expired certificate with its key is refused, even beside a
        valid one for the same name: Twisted does not look at dates and
        might serve either.
        """
        key, certificate = self.authority.issue()
        writePEM(self.folder.child("new.pem"), keyPEM(key), certificatePEM(certificate))
        oldKey, old = self.authority.issue(notBefore=NOW - 100 * DAY, notAfter=NOW - 10 * DAY)
        oldPath = writePEM(self.folder.child("old.pem"), keyPEM(oldKey), certificatePEM(old))
        self.assertEqual(self.check(), f"{oldPath}: the certificate for gw.corp.example expired on 2030-05-22 00:00 UTC")

    def test_noDNSName(self) -> None:
        """
        A certificate with no DNS name in its subjectAltName is refused:
        Twisted serves certificates by those names only.
        """
        key, certificate = self.authority.issue([])
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        self.assertIn(f"{path}: the certificate for CN=no-san names no DNS name in its subjectAltName", self.check())

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused.
        """
        key, certificate = self.authority.issue()
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key, b"secret"), certificatePEM(certificate))
        self.assertEqual(self.check(), f"{path}: the private key is encrypted (it must be unencrypted PEM)")

    def test_otherBlock(self) -> None:
        """
        A PEM block that is neither a certificate nor a private key (the
        C{EC PARAMETERS} that C{openssl ecparam -genkey} writes) is
        refused: Twisted would try to read it as a key.
        """
        key, certificate = self.authority.issue()
        parameters = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        path = writePEM(self.folder.child("gw.pem"), parameters, keyPEM(key), certificatePEM(certificate))
        self.assertIn(f"{path}: a EC PARAMETERS block: Twisted reads every block that is not a certificate", self.check())

    def test_badCertificate(self) -> None:
        """
        A certificate block that cannot be read is named.
        """
        key, _ = self.authority.issue()
        bad = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        path = writePEM(self.folder.child("gw.pem"), keyPEM(key), bad)
        self.assertIn(f"{path}: a CERTIFICATE block that cannot be read", self.check())

    def test_unreadable(self) -> None:
        """
        A C{.pem} file that cannot be read is named, with the reason.
        """
        key, certificate = self.authority.issue()
        writePEM(self.folder.child("gw.pem"), keyPEM(key), certificatePEM(certificate))
        writePEM(self.folder.child("unreadable.pem"), b"")
        folder = Unreadable(self.folder.path)
        problem = str(self.assertRaises(CertificateProblem, checkCertificateFolder, folder, self.now))
        self.assertEqual(problem, f"cannot read {self.folder.child('unreadable.pem').path}: Permission denied")


class TrustRootsFolderTests(SynchronousTestCase):
    """
    L{checkTrustRootsFolder}: the C{trustRoots} folder of a C{tls:} client
    endpoint.
    """

    def setUp(self) -> None:
        self.authority = CertificateAuthority(NOW)
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
        writePEM(self.folder.child("ca.pem"), certificatePEM(self.authority.certificate))
        writePEM(self.folder.child("other.PEM"), certificatePEM(CertificateAuthority(NOW).certificate))
        writePEM(self.folder.child("notes.txt"), b"not read\n")
        checkTrustRootsFolder(self.folder.path)

    def test_file(self) -> None:
        """
        A PEM file given for the folder gets a clear error (Twisted fails
        with an C{UnlistableError} that names nothing).
        """
        path = writePEM(self.folder.child("ca.pem"), certificatePEM(self.authority.certificate))
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
        writePEM(self.folder.child("ca.crt"), certificatePEM(self.authority.certificate))
        self.assertIn("holds no .pem file", self.check())

    def test_notACertificate(self) -> None:
        """
        A C{.pem} file holding no certificate is named (Twisted would skip
        it silently).
        """
        path = writePEM(self.folder.child("ca.pem"), b"junk\n")
        self.assertIn(f"trustRoots: {path} holds no PEM certificate", self.check())

    def test_bundle(self) -> None:
        """
        A file of several CA certificates is refused: Twisted would trust
        only the first.
        """
        path = writePEM(self.folder.child("cas.pem"), certificatePEM(self.authority.certificate, CertificateAuthority(NOW).certificate))
        self.assertEqual(
            self.check(),
            f"trustRoots: {path} holds 2 certificates, of which Twisted reads only the first:"
            " put each CA certificate in a file of its own",
        )

    def test_unreadable(self) -> None:
        """
        A C{.pem} file that cannot be read is named.
        """
        writePEM(self.folder.child("unreadable.pem"), b"")
        problem = str(self.assertRaises(CertificateProblem, checkTrustRootsFolder, Unreadable(self.folder.path)))
        self.assertEqual(problem, f"cannot read {self.folder.child('unreadable.pem').path}: Permission denied")
