# -*- test-case-name: tests.e2e.test_operator -*-
"""
End-to-end tests of what an operator runs: the real C{twistd imgateway} and
C{imgateway-admin} processes started from a folder of their own, finding
their configuration without C{--config}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.e2e.harness import GatewayProcess


class _EnvironmentConfiguredGateway(GatewayProcess):
    """
    A gateway started without C{--config}: C{$IMGATEWAY_CONFIG} names its
    configuration.
    """

    def environment(self) -> dict[str, str]:  # type: ignore[override]
        env = GatewayProcess.environment()
        env["IMGATEWAY_CONFIG"] = self.configPath
        return env

    def command(self) -> list[str]:
        command = super().command()
        config = command.index("--config")
        del command[config : config + 2]
        return command


class ConfigurationPathTests(TestCase):
    """
    The configuration file read without C{--config} does not depend on the
    current directory.
    """

    async def test_gatewayFromAnotherFolder(self) -> None:
        """
        C{twistd imgateway} without C{--config}, run in a folder that holds
        a broken C{etc/imgateway.toml}, serves the configuration
        C{$IMGATEWAY_CONFIG} names; C{imgateway-admin} run there finds the
        same one.
        """
        gateway = _EnvironmentConfiguredGateway(self)
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(elsewhere, "etc"))
        with open(os.path.join(elsewhere, "etc", "imgateway.toml"), "w") as f:
            f.write("this is not the configuration\n")
        gateway.cwd = elsewhere
        await gateway.start()
        self.assertIn(f"data in {gateway.dataDir}", gateway.log())

        gateway.addUser("alice", "pw")
        done = subprocess.run(
            [sys.executable, "-m", "imgateway.admin.cli", "user", "list"],
            capture_output=True,
            text=True,
            env=gateway.environment(),
            cwd=elsewhere,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertIn("alice@corp.example", done.stdout)
        gateway.assertCleanExit(await gateway.stop())
