"""
Tests for the twistd plugin and the adapter plugin package.
"""

from __future__ import annotations

import gc
import io
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.irc.adapter import IRCAdapter
from imgateway.adapters.native.adapter import NativeAdapter
from imgateway.adapters.xmpp.adapter import XMPPAdapter
from imgateway import __version__
from imgateway.plugins import adapterConfigParsers, adapterPlugins
from imgateway.config import DEFAULT_GC_YOUNG_OBJECTS
from imgateway.tap import Options, freezeStartupHeap

REPO = FilePath(__file__).parent().parent()


class PluginTests(SynchronousTestCase):
    """
    Discovery of C{twistd imgateway} and of protocol adapters.
    """

    def test_serviceMaker(self) -> None:
        """
        twistd finds the C{imgateway} service maker, which points at
        L{imgateway.tap}.
        """
        import twisted.plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("imgateway", makers)
        self.assertEqual(makers["imgateway"].module, "imgateway.tap")  # type: ignore[attr-defined]

    def test_noReactorInstalled(self) -> None:
        """
        Importing the plugin file (as twistd does before choosing a reactor),
        the adapter dropins or the options' module installs no reactor.
        """
        code = (
            "import sys, twisted.plugins.imgateway_plugin, imgateway.plugins.native, imgateway.plugins.xmpp, "
            "imgateway.plugins.irc, "
            "imgateway.tap; "
            "print('twisted.internet.reactor' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO.path, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "False")

    def test_adapters(self) -> None:
        """
        The IRC, native and XMPP adapters are found through the
        C{imgateway.plugins} package, sorted by name.
        """
        self.assertEqual([type(a) for a in adapterPlugins()], [IRCAdapter, NativeAdapter, XMPPAdapter])

    def test_adapterConfigParsers(self) -> None:
        """
        L{adapterConfigParsers} gives each installed adapter's
        C{parseConfig} by its name, for L{imgateway.config.loadConfig}.
        """
        parsers = adapterConfigParsers()
        self.assertEqual(sorted(parsers), ["irc", "native", "xmpp"])
        self.assertEqual(parsers["native"].__func__, NativeAdapter.parseConfig)  # type: ignore[attr-defined]

    def test_twistdHelp(self) -> None:
        """
        C{twistd --help} lists C{imgateway}, and C{twistd imgateway --help}
        documents C{--config}.
        """
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        out = subprocess.run(twistd + ["--help"], cwd=REPO.path, capture_output=True, text=True)
        self.assertIn("imgateway", out.stdout)
        out = subprocess.run(twistd + ["imgateway", "--help"], cwd=REPO.path, capture_output=True, text=True)
        self.assertIn("--config", out.stdout)


class TapOptionsTests(SynchronousTestCase):
    """
    L{imgateway.tap.Options}: the options of C{twistd imgateway}.
    """

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.config = self.folder.child("gateway.toml")
        self.config.setContent(b'[gateway]\ndomain = "corp.example"\n')

    def options(self, environ: dict[str, str], default: str | None = None) -> Options:
        options = Options()
        options.environ = environ
        options.defaultConfig = default if default is not None else self.folder.child("absent.toml").path
        return options

    def test_config(self) -> None:
        """
        C{--config FILE} reads that file.
        """
        options = self.options({})
        options.parseOptions(["--config", self.config.path])
        self.assertEqual(options["gatewayConfig"].path, self.config)

    def test_configFromEnvironment(self) -> None:
        """
        Without C{--config}, C{$IMGATEWAY_CONFIG} names the file, wherever
        twistd runs.
        """
        options = self.options({"IMGATEWAY_CONFIG": self.config.path})
        options.parseOptions([])
        self.assertEqual(options["gatewayConfig"].path, self.config)

    def test_configDefault(self) -> None:
        """
        Otherwise the default file is read; when it does not exist, the
        usage error says how to name one.
        """
        options = self.options({}, default=self.config.path)
        options.parseOptions([])
        self.assertEqual(options["gatewayConfig"].path, self.config)
        e = self.assertRaises(UsageError, self.options({}).parseOptions, [])
        self.assertIn("no configuration file", str(e))
        self.assertIn("$IMGATEWAY_CONFIG", str(e))

    def test_helpNamesDefault(self) -> None:
        """
        C{--help} says which file is read without C{--config}.
        """
        text = str(Options())
        self.assertIn("$IMGATEWAY_CONFIG", text)
        self.assertIn("/etc/imgateway/imgateway.toml", text)

    def test_version(self) -> None:
        """
        C{twistd imgateway --version} prints imgateway's version (and
        Twisted's) and exits with status 0, reading no configuration.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, self.options({}).parseOptions, ["--version"])
        self.assertEqual(e.code, 0)
        from twisted import __version__ as twistedVersion

        self.assertEqual(out.getvalue(), f"imgateway {__version__} (Twisted {twistedVersion})\n")


class FreezeStartupHeapTests(SynchronousTestCase):
    """
    L{imgateway.tap.freezeStartupHeap}: what start-up made is put out of
    the garbage collector's way once the reactor runs.
    """

    def test_collectsThenFreezes(self) -> None:
        """
        It collects what start-up left as garbage, then freezes the rest
        (the objects alive now are in the permanent generation), and
        collects the youngest generation every C{[gateway] gc_young_objects}
        objects (L{DEFAULT_GC_YOUNG_OBJECTS} by default).
        """
        calls: list[str] = []

        class Collector:
            def collect(self) -> int:
                calls.append("collect")
                return 0

            def freeze(self) -> None:
                calls.append("freeze")

            def get_threshold(self) -> tuple[int, int, int]:
                return (700, 10, 20)

            def set_threshold(self, *threshold: int) -> None:
                calls.append(f"threshold {threshold}")

        freezeStartupHeap(Collector())
        self.assertEqual(calls, ["collect", "freeze", f"threshold {(DEFAULT_GC_YOUNG_OBJECTS, 10, 20)}"])
        del calls[:]
        freezeStartupHeap(Collector(), youngObjects=2500)
        self.assertEqual(calls, ["collect", "freeze", f"threshold {(2500, 10, 20)}"])
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        before = gc.get_freeze_count()
        freezeStartupHeap()
        self.assertGreater(gc.get_freeze_count(), before)
        self.assertEqual(gc.get_threshold()[0], DEFAULT_GC_YOUNG_OBJECTS)
