# -*- test-case-name: tests.test_admin -*-
"""
Unit tests for L{imgateway.admin.cli}; C{tests.e2e.test_admin} runs the real
command against a configuration and data folder.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway import __version__
from imgateway.admin import cli
from imgateway.admin.cli import main
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.sqlite import Durability
from imgateway.testing import MemoryDirectory


class CommandLineTests(SynchronousTestCase):
    """
    L{imgateway.admin.cli.main}'s options that need no configuration.
    """

    def test_version(self) -> None:
        """
        C{--version} prints the program's name and version and exits with
        status 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, main, ["--version"])
        self.assertEqual((e.code, out.getvalue()), (0, f"imgateway-admin {__version__}\n"))


class DurabilityTests(SynchronousTestCase):
    """
    C{imgateway-admin} writes with the configured C{[gateway] durability}.
    """

    def test_configured(self) -> None:
        """
        The directory is opened with the configuration's durability, so an
        account added with C{durability = "power"} survives a power loss
        too.
        """
        opened: list[dict[str, Any]] = []

        def fakeOpen(reactor: object, path: object, **kwargs: Any) -> Deferred[MemoryDirectory]:
            opened.append(kwargs)
            return succeed(MemoryDirectory())

        self.patch(SQLiteDirectory, "open", fakeOpen)
        folder = FilePath(self.mktemp())
        config = GatewayConfig(
            path=folder.child("imgateway.toml"),
            domain="corp.example",
            dataDir=folder.child("data"),
            homeServerName="hs1",
            home=HomeConfig(),
            auth=AuthConfig(),
            adapters={},
            durability=Durability.POWER,
        )
        done: list[object] = []

        async def action(reactor: object, directory: Any) -> None:
            done.append(directory)

        self.successResultOf(Deferred.fromCoroutine(cli._run(object(), config, action)))  # type: ignore[arg-type]
        self.assertEqual([o.get("durability") for o in opened], [Durability.POWER])
        self.assertEqual(len(done), 1)
