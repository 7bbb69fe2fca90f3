"""
End-to-end tests of the certificate checks of endpoint strings: the real
C{twistd imgateway} refuses to start on a C{tls:} listener whose folder
cannot serve, before any port opens, with one line naming the file, the
table and the key; the real C{imgateway-client} refuses a C{trustRoots}
that names a file, saying what to do.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

from twisted.internet.endpoints import quoteStringArgument
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests.e2e.harness import GatewayProcess, freePort, makeCertificates, tlsServerEndpoint
from tests.test_net_certificates import DAY, Certificates, certificatePEM, keyPEM, write


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
        key, old = Certificates().issue(["corp.example"], notBefore=now - 90 * DAY, notAfter=now - DAY)
        path = write(folder.child("corp.example.pem"), keyPEM(key), certificatePEM(old))
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
