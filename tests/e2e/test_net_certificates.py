"""
End-to-end tests of the certificate checks of endpoint strings: the real
C{twistd imgateway} refuses to start on a C{tls:} listener whose folder
cannot serve, before any port opens, with one line naming the file, the
table and the key; the real C{imgateway-client} refuses a C{trustRoots}
that names a file, saying what to do. And what the operations guide says
of renewal: Twisted's C{tls:} endpoint does not re-read its folder while
it serves.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

from typing import Any

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.protocol import Factory, Protocol
from service_identity import VerificationError
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from imgateway.net.certificates import checkCertificateFolder
from imgateway.net.endpoints import clientEndpointFromString
from tests.e2e.harness import GatewayProcess, freePort, makeCertificates, rawConnect, reactor, tlsServerEndpoint
from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM
from tests.test_net_certificates import DAY


class ListenerCertificateTests(TestCase):
    """
    C{twistd imgateway} with a C{tls:} listener that cannot serve.
    """

    async def assertRefused(self, gw: GatewayProcess, *fragments: str) -> None:
        """
        Run the gateway: it must exit with status 1 before any of its
        ports accepted a connection, with one line holding C{fragments}
        and no traceback.
        """
        code, opened = await gw.runUntilExit()
        output = gw.output() + gw.log()
        self.assertEqual(code, 1, output)
        self.assertFalse(opened, output)
        lines = [line for line in output.splitlines() if all(f in line for f in fragments)]
        self.assertEqual(len(lines), 1, output)
        self.assertNotIn("Traceback", output)

    async def test_missingFolder(self) -> None:
        """
        A native C{tls:} listener whose folder does not exist (Twisted
        alone would listen and fail every handshake), after a good TCP
        listener: exit status 1, neither port opened, one line naming the
        file, C{[native]}, C{listen} and the folder.
        """
        tcpPort, tlsPort = freePort(), freePort()
        missing = os.path.abspath(os.path.join(self.mktemp(), "certs"))
        gw = GatewayProcess(
            self,
            {"native": {"listen": [f"tcp:{tcpPort}:interface=127.0.0.1", tlsServerEndpoint(missing, tlsPort)]}},
            port=tcpPort,
            waitPorts=[tcpPort, tlsPort],
            checkLog=False,
        )
        await self.assertRefused(gw, gw.configPath, "[native]", "listen", f"tls: folder {missing} does not exist")

    async def test_expiredCertificate(self) -> None:
        """
        An XMPP c2s C{tls:} listener whose folder holds an expired
        certificate is refused the same way, naming the file.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        folder = FilePath(os.path.abspath(self.mktemp())).child("certs")
        key, old = CertificateAuthority(now).issue(["corp.example"], notBefore=now - 90 * DAY, notAfter=now - DAY)
        path = writePEM(folder.child("corp.example.pem"), keyPEM(key), certificatePEM(old))
        nativePort, xmppPort = freePort(), freePort()
        gw = GatewayProcess(
            self,
            {
                "native": {"listen": [f"tcp:{nativePort}:interface=127.0.0.1"]},
                "xmpp": {"enabled": True, "require_tls": False, "listen": [tlsServerEndpoint(folder.path, xmppPort)]},
            },
            port=nativePort,
            waitPorts=[nativePort, xmppPort],
            checkLog=False,
        )
        await self.assertRefused(gw, gw.configPath, "[xmpp]", "listen", f"{path}: the certificate for corp.example expired on")


class ClientTrustRootsTests(TestCase):
    """
    C{imgateway-client --server} with a C{trustRoots} that names a file.
    """

    def test_trustRootsFile(self) -> None:
        """
        The client exits with status 2 and one line saying that
        C{trustRoots} must be a folder and what to do, without trying to
        connect.
        """
        caPath, _ = makeCertificates(os.path.abspath(self.mktemp()))
        server = f"tls:gw.corp.example:{freePort()}:trustRoots={quoteStringArgument(caPath)}"
        environment = GatewayProcess.environment()
        environment["IMGATEWAY_PASSWORD"] = "not used"
        done = subprocess.run(
            [sys.executable, "-m", "imgateway.client.cli", "--server", server, "--user", "alice", "ping"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(done.stdout, "")
        lines = done.stderr.splitlines()
        self.assertEqual(len(lines), 1, done.stderr)
        self.assertIn(f"trustRoots must be a folder of PEM files; {caPath} is a file: put it in a folder", lines[0])


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class FolderRenewalTests(TestCase):
    """
    What a C{tls:} listener serves after its folder changes.
    """

    async def test_notReread(self) -> None:
        """
        With Twisted's C{tls:} endpoint, a certificate renewed in the
        folder, and a certificate for a new name added to it, are not
        served until the listener is made again (the gateway restarted):
        clients keep getting the certificate read at start, whatever name
        they ask for. The operations guide says so; if Twisted starts
        re-reading folders, this test fails and the guide must change.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        authority = CertificateAuthority(now)
        folder = FilePath(os.path.abspath(self.mktemp())).child("certs")
        trust = FilePath(os.path.abspath(self.mktemp())).child("cas")
        writePEM(trust.child("ca.pem"), certificatePEM(authority.certificate))
        key, first = authority.issue(["gw.corp.example"], notBefore=now - DAY, notAfter=now + DAY)
        writePEM(folder.child("gw.pem"), keyPEM(key), certificatePEM(first))
        checkCertificateFolder(folder.path)
        port = await serverFromString(reactor(), tlsServerEndpoint(folder.path, 0)).listen(Factory.forProtocol(_Echo))
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        async def served(name: str) -> int | Failure:
            """
            @return: The serial number of the certificate a client that
                asks for C{name} (and checks it) gets, or why the
                handshake failed.
            """
            endpoint = clientEndpointFromString(
                reactor(),
                f"tls:{name}:{number}:trustRoots={quoteStringArgument(trust.path)}"
                f":endpoint={quoteStringArgument(f'tcp:127.0.0.1:{number}')}",
            )
            raw = await rawConnect(self, endpoint)
            raw.send(b"hello")
            await raw.waitFor(lambda: raw.received or raw.lost is not None, description="the echo or the end")
            if raw.lost is not None:
                return raw.lost
            transport: Any = raw.transport
            serial: int = transport.getPeerCertificate().to_cryptography().serial_number
            await raw.close()
            return serial

        self.assertEqual(await served("gw.corp.example"), first.serial_number)
        key, renewed = authority.issue(["gw.corp.example"], notBefore=now - DAY, notAfter=now + 90 * DAY)
        writePEM(folder.child("gw.pem"), keyPEM(key), certificatePEM(renewed))
        key, other = authority.issue(["chat.corp.example"], notBefore=now - DAY, notAfter=now + 90 * DAY)
        writePEM(folder.child("chat.pem"), keyPEM(key), certificatePEM(other))
        checkCertificateFolder(folder.path)
        self.assertEqual(await served("gw.corp.example"), first.serial_number)
        refused = await served("chat.corp.example")
        assert isinstance(refused, Failure)
        self.assertTrue(refused.check(VerificationError), refused)
        # Twisted's tls: endpoint calls pyOpenSSL APIs that are deprecated;
        # those warnings are Twisted's, not ours.
        for warning in self.flushWarnings():
            self.assertIs(warning["category"], DeprecationWarning)
            self.assertRegex(str(warning["message"]), "pyOpenSSL|X509")
