"""
Tests for L{imgateway.config}: the shipped config, defaults, and errors that
name the file, table and key.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import HomeConfig, loadConfig
from imgateway.core.errors import ConfigError
from imgateway.plugins import adapterConfigParsers

REPO = FilePath(__file__).parent().parent()


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig}.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return str(path)

    def load(self, text: str) -> object:
        return loadConfig(self.write(text), MemoryReactor(), adapterConfigParsers())

    def test_shipped(self) -> None:
        """
        C{etc/imgateway.toml} loads; its data dir resolves against the
        file's folder; it enables the native face on loopback.
        """
        config = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertEqual(config.domain, "corp.example")
        self.assertEqual(config.dataDir, REPO.child("data"))
        self.assertEqual(config.home, HomeConfig())
        self.assertEqual(list(config.adapters), ["native"])

    def test_minimal(self) -> None:
        """
        A C{[gateway]} table with a domain is enough; the domain is
        normalised.
        """
        config = self.load('[gateway]\ndomain = "Corp.Example."\n')
        self.assertEqual(config.domain, "corp.example")  # type: ignore[attr-defined]
        self.assertEqual(config.adapters, {})  # type: ignore[attr-defined]

    def test_disabledAdapter(self) -> None:
        """
        An adapter table with C{enabled = false} is checked but not started.
        """
        config = self.load('[gateway]\ndomain = "x.example"\n[native]\nenabled = false\n')
        self.assertEqual(config.adapters, {})  # type: ignore[attr-defined]

    def assertConfigError(self, text: str, message: str) -> None:
        e = self.assertRaises(ConfigError, self.load, text)
        self.assertIn(message, str(e))

    def test_errors(self) -> None:
        """
        Each mistake gives one message naming the file, table and key.
        """
        self.assertConfigError("[gateway]\n", "[gateway]: domain: missing (required)")
        self.assertConfigError('[gateway]\ndomain = "x.example"\ncolour = 1\n', "[gateway]: colour: unknown key")
        self.assertConfigError('[gateway]\ndomain = "bad domain"\n', "[gateway]: domain: invalid domain")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[home]\nmax_sessions_per_user = 0\n', "max_sessions_per_user: must be greater than 0")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[home]\npresence_lease = "long"\n', "presence_lease: expected float")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[auth]\nscram_iterations = 100\n', "at least 4096")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[telepathy]\n', "[telepathy]: unknown table (protocol adapters: native, xmpp)")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[native]\nlisten = ["tcp:notaport"]\n', "[native]: listen: bad endpoint")
        self.assertConfigError("[gateway\n", "not valid TOML")

    def test_unreadable(self) -> None:
        """
        A missing file is an error naming it.
        """
        e = self.assertRaises(ConfigError, loadConfig, "/nonexistent/imgw.toml", MemoryReactor(), {})
        self.assertEqual(str(e), "/nonexistent/imgw.toml: cannot read: No such file or directory")
