# -*- test-case-name: tests.test_admin -*-
"""
Unit tests for L{imgateway.admin.cli}; C{tests.e2e.test_admin} runs the real
command against a configuration and data folder.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from imgateway import __version__
from imgateway.admin.cli import main


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
