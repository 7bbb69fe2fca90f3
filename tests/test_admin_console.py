"""
Tests for C{imgateway-admin console} (L{imgateway.admin.cli}): the ssh
command line that reaches the manhole, and what is refused before ssh runs.
(It logs in to a real gateway in L{tests.e2e.test_manhole}.)
"""

from __future__ import annotations

import io
import os
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.admin.cli import MANHOLE_HOST_ALIAS, _Refused, consoleCommand, main, manholeKnownHosts
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, ManholeConfig
from imgateway.manhole.config import HOST_KEY_FILE


def _config(folder: FilePath[str], **manhole: object) -> GatewayConfig:
    return GatewayConfig(
        path=folder.child("imgateway.toml"),
        domain="corp.example",
        dataDir=folder.child("data"),
        homeServerName="hs1",
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        manhole=ManholeConfig(**manhole),  # type: ignore[arg-type]
    )


class ConsoleCommandTests(SynchronousTestCase):
    """
    L{consoleCommand} and L{manholeKnownHosts}.
    """

    def setUp(self) -> None:
        self.folder = FilePath(os.path.abspath(self.mktemp()))
        self.folder.child("data").makedirs()

    def test_script(self) -> None:
        """
        A script goes without a terminal, in batch mode (no prompt), to the
        first TCP endpoint's interface and port, as the configured user,
        checking the host key against the given C{known_hosts} only.
        """
        config = _config(self.folder, listen=("unix:/run/m.sock", "tcp:2222:interface=127.0.0.2"), user="ops")
        self.assertEqual(
            consoleCommand(config, "/tmp/kh", script=True, identity="/k/id"),
            [
                "ssh", "-p", "2222", "-l", "ops",
                "-o", "UserKnownHostsFile=/tmp/kh", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"HostKeyAlias={MANHOLE_HOST_ALIAS}", "-o", "StrictHostKeyChecking=yes",
                "-o", "PreferredAuthentications=publickey",
                "-i", "/k/id", "-o", "IdentitiesOnly=yes",
                "-T", "-o", "BatchMode=yes",
                "127.0.0.2",
            ],
        )

    def test_interactive(self) -> None:
        """
        The console gets a terminal; an endpoint on every interface is
        reached on loopback; C{--connect} wins.
        """
        config = _config(self.folder, listen=("tcp:2222",))
        command = consoleCommand(config, "/tmp/kh", script=False)
        self.assertEqual(command[-2:], ["-t", "127.0.0.1"])
        self.assertEqual(command[1:3], ["-p", "2222"])
        command = consoleCommand(config, "/tmp/kh", script=False, connect="[::1]:2200", ssh="/usr/bin/ssh")
        self.assertEqual((command[0], command[1:3], command[-1]), ("/usr/bin/ssh", ["-p", "2200"], "::1"))

    def test_noConsole(self) -> None:
        """
        Without C{[manhole] listen}, or without a TCP endpoint, there is
        nothing to reach.
        """
        error = self.assertRaises(_Refused, consoleCommand, _config(self.folder), "/tmp/kh", True)
        self.assertIn("[manhole] listen is not set", str(error))
        error = self.assertRaises(_Refused, consoleCommand, _config(self.folder, listen=("unix:/m",)), "/tmp/kh", True)
        self.assertIn("give --connect HOST:PORT", str(error))

    def test_knownHosts(self) -> None:
        """
        The host key comes from the C{.pub} the gateway keeps in its data
        folder; without one, the console is refused with the reason.
        """
        config = _config(self.folder, listen=("tcp:2222",))
        self.assertIn("start the gateway with [manhole] listen set first", str(self.assertRaises(_Refused, manholeKnownHosts, config)))
        config.dataDir.child(HOST_KEY_FILE + ".pub").setContent(b"ssh-ed25519 AAAA\n")
        self.assertEqual(manholeKnownHosts(config), f"{MANHOLE_HOST_ALIAS} ssh-ed25519 AAAA\n")

    def test_refusedByMain(self) -> None:
        """
        C{imgateway-admin console} on a gateway without a console exits
        with status 1 and says why.
        """
        path = self.folder.child("imgateway.toml")
        path.setContent(f'[gateway]\ndomain = "corp.example"\ndata_dir = "{self.folder.child("data").path}"\n'.encode())
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdin", io.StringIO(""))
        exit = self.assertRaises(SystemExit, main, ["--config", path.path, "console", "--script", "-"])
        self.assertEqual(exit.code, 1)
        self.assertIn("imgateway-admin: cannot read the manhole's host key", stderr.getvalue())
