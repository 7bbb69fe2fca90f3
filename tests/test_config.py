"""
Tests for L{imgateway.config}: the shipped config, defaults, and errors that
name the file, table and key.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG_PATH, HomeConfig, findConfig, loadConfig
from imgateway.core.errors import ConfigError
from imgateway.plugins import adapterConfigParsers
from imgateway.sqlite import Durability

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

    def test_homeQuotas(self) -> None:
        """
        The C{[home]} quotas are read from their keys, C{max_pending_requests}
        included.
        """
        config = self.load('[gateway]\ndomain = "x.example"\n[home]\nmax_pending_requests = 7\nmax_contacts = 9\n')
        self.assertEqual(config.home, HomeConfig(maxPendingRequests=7, maxContacts=9))  # type: ignore[attr-defined]
        self.assertConfigError(
            '[gateway]\ndomain = "x.example"\n[home]\nmax_pending_requests = 0\n',
            "[home]: max_pending_requests: must be greater than 0",
        )

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

    def test_durability(self) -> None:
        """
        C{[gateway] durability} is C{"process"} (the default, also in the
        shipped config) or C{"power"}; anything else is refused, naming the
        key and the choices.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertIs(shipped.durability, Durability.PROCESS)
        config = self.load('[gateway]\ndomain = "x.example"\n')
        self.assertIs(config.durability, Durability.PROCESS)  # type: ignore[attr-defined]
        config = self.load('[gateway]\ndomain = "x.example"\ndurability = "process"\n')
        self.assertIs(config.durability, Durability.PROCESS)  # type: ignore[attr-defined]
        config = self.load('[gateway]\ndomain = "x.example"\ndurability = "power"\n')
        self.assertIs(config.durability, Durability.POWER)  # type: ignore[attr-defined]
        self.assertConfigError(
            '[gateway]\ndomain = "x.example"\ndurability = "disk"\n',
            "[gateway]: durability: must be \"process\" or \"power\", got 'disk'",
        )
        self.assertConfigError('[gateway]\ndomain = "x.example"\ndurability = 2\n', "durability: expected str")

    def test_unreadable(self) -> None:
        """
        A missing file is an error naming it.
        """
        e = self.assertRaises(ConfigError, loadConfig, "/nonexistent/imgw.toml", MemoryReactor(), {})
        self.assertEqual(str(e), "/nonexistent/imgw.toml: cannot read: No such file or directory")


class FindConfigTests(SynchronousTestCase):
    """
    L{findConfig}: which file is read when, never depending on the current
    directory.
    """

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.default = self.folder.child("default.toml")
        self.default.setContent(b"")
        self.other = self.folder.child("other.toml")
        self.other.setContent(b"")

    def test_given(self) -> None:
        """
        The file given on the command line wins, as given (a relative path
        is the operator's, relative to where they are).
        """
        environ = {CONFIG_ENVIRONMENT: self.other.path}
        self.assertEqual(findConfig("etc/imgateway.toml", environ, self.default.path), "etc/imgateway.toml")

    def test_environment(self) -> None:
        """
        Without C{--config}, C{$IMGATEWAY_CONFIG} names the file.
        """
        environ = {CONFIG_ENVIRONMENT: self.other.path}
        self.assertEqual(findConfig(None, environ, self.default.path), self.other.path)

    def test_environmentMissing(self) -> None:
        """
        A file that C{$IMGATEWAY_CONFIG} names and that does not exist is an
        error naming the variable.
        """
        missing = self.folder.child("missing.toml").path
        e = self.assertRaises(ConfigError, findConfig, None, {CONFIG_ENVIRONMENT: missing}, self.default.path)
        self.assertEqual(str(e), f"{missing} (from $IMGATEWAY_CONFIG): no such file")

    def test_default(self) -> None:
        """
        Otherwise the default file is read: C{/etc/imgateway/imgateway.toml},
        whatever the current directory holds.
        """
        self.assertEqual(DEFAULT_CONFIG_PATH, "/etc/imgateway/imgateway.toml")
        self.assertEqual(findConfig(None, {}, self.default.path), self.default.path)
        self.assertEqual(findConfig(None, {CONFIG_ENVIRONMENT: ""}, self.default.path), self.default.path)
        here = FilePath(os.getcwd())
        self.addCleanup(os.chdir, here.path)
        os.chdir(REPO.path)
        self.assertTrue(REPO.child("etc").child("imgateway.toml").exists())
        self.assertEqual(findConfig(None, {}, self.default.path), self.default.path)

    def test_defaultMissing(self) -> None:
        """
        When nothing names a file and the default does not exist, the error
        says where it looked and how to name another.
        """
        missing = self.folder.child("missing.toml").path
        e = self.assertRaises(ConfigError, findConfig, None, {}, missing)
        self.assertIn(f"no configuration file: {missing} does not exist", str(e))
        self.assertIn("--config FILE", str(e))
        self.assertIn("$IMGATEWAY_CONFIG", str(e))
