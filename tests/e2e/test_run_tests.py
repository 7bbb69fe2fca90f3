# -*- test-case-name: tests.e2e.test_run_tests -*-
"""
End-to-end tests of C{run-tests.sh}, the README's test command: what it
says before installing, C{--no-install}, and that a whole run goes on to the
compiled build.

Each test runs the real script with bash in a folder of its own holding a
one-test C{tests} package, a C{setup.cfg} that asks for one package nobody
has, and a C{PATH} of chosen tools only: no peer server, a C{python3} that
logs its calls (and never makes a virtualenv), and an C{apt-get} that logs.
Nothing is installed anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = FilePath(__file__).parent().parent().parent()

#: The requirement added to the copy of setup.cfg, which no index has.
MISSING = "not-a-real-imgateway-test-package>=1"

#: Tools the script (and the fake python3) use, linked into the test's PATH.
TOOLS = ["bash", "basename", "cat", "chmod", "cp", "cut", "dirname", "grep", "head", "ln", "mkdir", "mktemp", "rm", "sed", "tail", "tee"]

_ONE_TEST = b'''
from twisted.trial.unittest import SynchronousTestCase


class OneTest(SynchronousTestCase):
    def test_one(self) -> None:
        """
        Passes.
        """
'''

#: C{python3}: logs its arguments; C{-m venv} makes a fake .venv (unless
#: there is one) whose pip only says it was called, and whose python, mypy
#: and towncrier are the real ones of the virtualenv running these tests.
_PYTHON3 = '''#!/bin/sh
echo "python3 $*" >> "$LOGS/python3.log"
if [ "$1 $2" = "-m venv" ]; then
  # Never touch a .venv the test borrowed.
  [ -e .venv ] && { echo "FAKE venv refused: .venv exists"; exit 1; }
  echo "FAKE venv"
  mkdir -p .venv/bin
  printf '#!/bin/sh\\necho "FAKE pip $*"\\n' > .venv/bin/pip && chmod 755 .venv/bin/pip
  for tool in python mypy towncrier; do ln -sf "$VENV/bin/$tool" ".venv/bin/$tool"; done
  exit 0
fi
exec "$REAL_PYTHON3" "$@"
'''

_APT_GET = '''#!/bin/sh
echo "apt-get $*" >> "$LOGS/apt-get.log"
echo "FAKE apt-get"
'''


class RunTestsScriptTests(SynchronousTestCase):
    """
    C{run-tests.sh} says what it installs before installing it, and can be
    told to install nothing.
    """

    def setUp(self) -> None:
        if sys.prefix == sys.base_prefix:
            raise SkipTest("these tests borrow the virtualenv they run in")
        self.venv = sys.prefix
        # The interpreter behind the virtualenv (python3 on PATH may be a
        # wrapper, such as pyenv's, that needs more of PATH).
        realPython3 = os.path.join(sys.base_prefix, "bin", "python3")
        if not os.access(realPython3, os.X_OK):
            raise SkipTest(f"no {realPython3}")
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.logs = self.folder.child("logs")
        self.logs.makedirs()
        self.work = self.folder.child("checkout")
        self.work.makedirs()
        REPO.child("run-tests.sh").copyTo(self.work.child("run-tests.sh"))
        setup = REPO.child("setup.cfg").getContent().decode("utf-8")
        self.assertIn("\ntest =\n", setup)
        self.work.child("setup.cfg").setContent(setup.replace("\ntest =\n", f"\ntest =\n    {MISSING}\n").encode("utf-8"))
        tests = self.work.child("tests")
        tests.makedirs()
        tests.child("__init__.py").setContent(b"")
        tests.child("test_one.py").setContent(_ONE_TEST)
        self.work.child("newsfragments").makedirs()

        self.bin = self.folder.child("bin")
        self.bin.makedirs()
        for tool in TOOLS:
            found = shutil.which(tool)
            if found is None:
                raise SkipTest(f"no {tool} on PATH")
            os.symlink(found, self.bin.child(tool).path)
        for name, text in (("python3", _PYTHON3), ("apt-get", _APT_GET)):
            self.bin.child(name).setContent(text.encode("ascii"))
            self.bin.child(name).chmod(0o755)
        self.environ = {
            "PATH": self.bin.path,
            "LOGS": self.logs.path,
            "VENV": self.venv,
            "REAL_PYTHON3": realPython3,
            "HOME": self.folder.path,
            "LANG": "C.UTF-8",
            # Not the compiled build's run (test_compiledBuild): this checkout
            # has nothing to compile.
            "IMGATEWAY_NO_COMPILED": "1",
        }

    def useRealId(self, uid: int) -> None:
        """
        Make C{id -u} answer C{uid}.
        """
        self.bin.child("id").setContent(f"#!/bin/sh\necho {uid}\n".encode("ascii"))
        self.bin.child("id").chmod(0o755)

    def runScript(self, *args: str, **environ: str) -> str:
        """
        Run C{bash run-tests.sh ARGS} in the test's checkout.

        @return: What it printed (standard output and error).
        """
        done = subprocess.run(
            [self.bin.child("bash").path, "run-tests.sh", *args],
            cwd=self.work.path,
            env={**self.environ, **environ},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        return done.stdout

    def log(self, name: str) -> str:
        path = self.logs.child(name)
        return path.getContent().decode("utf-8") if path.exists() else ""

    def borrowVenv(self) -> None:
        """
        Give the checkout a .venv: the virtualenv running these tests.
        """
        os.symlink(self.venv, self.work.child(".venv").path)

    def test_noInstall(self) -> None:
        """
        With C{--no-install}, even as root with apt-get at hand, nothing is
        installed (no virtualenv made, apt-get not run); what is missing is
        said, and the tests run with what is there.
        """
        self.useRealId(0)
        self.borrowVenv()
        out = self.runScript("--no-install")
        self.assertIn("== installing nothing (--no-install): using .venv/ as it is\n", out)
        self.assertIn(f"missing Python packages in .venv/: {MISSING} (install them: .venv/bin/pip install -e '.[test]')", out)
        self.assertIn("note: peer servers not installed (prosody ejabberd slapd ldap-utils ngircd inspircd)", out)
        self.assertNotIn("-m venv", self.log("python3.log"))
        self.assertEqual(self.log("apt-get.log"), "")
        self.assertTrue(out.endswith("1 passed, 0 failed, 0 skipped\n"), out)

    def test_noInstallEnvironment(self) -> None:
        """
        C{IMGATEWAY_NO_INSTALL=1} is the same as C{--no-install}.
        """
        self.useRealId(0)
        self.borrowVenv()
        out = self.runScript(IMGATEWAY_NO_INSTALL="1")
        self.assertIn("== installing nothing (--no-install)", out)
        self.assertNotIn("-m venv", self.log("python3.log"))
        self.assertEqual(self.log("apt-get.log"), "")

    def test_noInstallWithoutVenv(self) -> None:
        """
        With C{--no-install} and no .venv, the script says how to make one
        and stops, creating nothing.
        """
        out = self.runScript("--no-install")
        self.assertIn("missing: .venv/ (create it: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'", out)
        self.assertFalse(self.work.child(".venv").exists())
        self.assertNotIn("-m venv", self.log("python3.log"))

    def test_announcesInstall(self) -> None:
        """
        Without C{--no-install}, the script names every package it is about
        to install with pip before making the virtualenv; without root it
        names the Debian packages to install and installs none.
        """
        self.useRealId(1000)
        out = self.runScript()
        announce = out.index(
            "== installing into .venv/ with pip (skip with --no-install): imgateway (editable) and Twisted[tls,conch]>="
        )
        self.assertIn(MISSING, out[announce:].splitlines()[0])
        self.assertLess(announce, out.index("FAKE venv"))
        self.assertLess(out.index("FAKE venv"), out.index("FAKE pip install"))
        self.assertIn("Install them as root: apt-get install prosody ejabberd slapd ldap-utils ngircd inspircd lua-unbound", out)
        self.assertEqual(self.log("apt-get.log"), "")

    def test_warnings(self) -> None:
        """
        Warnings are errors, but for the deprecation of C{spwd} that
        Twisted's conch plugin sets off on a fresh .venv.
        """
        self.useRealId(0)
        self.borrowVenv()
        tests = self.work.child("tests")
        for name, warning in (
            ("test_spwd", "'spwd' is deprecated and slated for removal in Python 3.13"),
            ("test_other", "'other' is deprecated"),
        ):
            tests.child(f"{name}.py").setContent(
                f"import warnings\nwarnings.warn({warning!r}, DeprecationWarning)\n".encode("utf-8") + _ONE_TEST
            )
        out = self.runScript("--no-install")
        self.assertIn("tests.test_other", out)
        self.assertTrue(out.endswith("2 passed, 1 failed, 0 skipped\n"), out)

    def test_compiledBuild(self) -> None:
        """
        A whole run then runs the unit tests on the compiled build (mypyc),
        and counts its failure in the last line: this checkout has nothing
        to build it from (nor C{tar}), so it fails, and says so.
        """
        self.useRealId(0)
        self.borrowVenv()
        out = self.runScript("--no-install", IMGATEWAY_NO_COMPILED="")
        self.assertIn("== compiled build (mypyc): the unit tests on a copy built with IMGATEWAY_COMPILE=1 in build/compiled/", out)
        self.assertIn("the compiled build failed (it needs mypy, a C compiler and the Python headers)", out)
        self.assertTrue(out.endswith("1 passed, 1 failed, 0 skipped\n"), out)

    def test_compiledBuildOnlyOnWholeRun(self) -> None:
        """
        A run of chosen tests does not run the compiled build's.
        """
        self.useRealId(0)
        self.borrowVenv()
        out = self.runScript("--no-install", "tests.test_one", IMGATEWAY_NO_COMPILED="")
        self.assertNotIn("compiled build", out)
        self.assertTrue(out.endswith("1 passed, 0 failed, 0 skipped\n"), out)
