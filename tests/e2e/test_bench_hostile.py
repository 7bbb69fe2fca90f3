# -*- test-case-name: tests.e2e.test_bench_hostile -*-
"""
A smoke test of the hostile benchmark (C{bench/hostile.py}), so that it does
not rot: a short C{--quick} run spawns its gateway (native TCP and TLS, XMPP
with STARTTLS, shipped limits), runs every attack against it with the
canaries and prints a row for each. It asserts that the run completes and
reports every attack, never a time: figures come from running the
benchmark itself (C{bench/README.md}).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from bench._attacks import ATTACKS

REPO = FilePath(__file__).parent().parent().parent()


class HostileBenchSmokeTests(SynchronousTestCase):
    """
    C{bench/hostile.py} runs from start to end.
    """

    def test_quickRunReportsEveryAttack(self) -> None:
        """
        C{hostile.py --quick --json} with windows of a second or two exits
        0, and its JSON has the calm row and one row per attack, in order,
        each without an error, with both canaries' figures, the server's RSS
        and the attack's outcome; the table on standard error has a line for
        each.
        """
        done = subprocess.run(
            [
                sys.executable, REPO.child("bench").child("hostile.py").path,
                "--quick", "--duration", "2", "--calm", "0.5", "--after", "0.5", "--json",
            ],
            capture_output=True, text=True, timeout=150, cwd=REPO.path, env=dict(os.environ),
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        result = json.loads(done.stdout)
        rows = result["rows"]
        self.assertEqual([r["attack"] for r in rows], ["none (calm)", *ATTACKS])
        for row in rows:
            self.assertNotIn("error", row, row)
            self.assertEqual(set(row["canary"]), {"native", "xmpp"}, row["attack"])
            self.assertIsNotNone(row["rss_mib"]["peak"], row["attack"])
            self.assertTrue(row["outcome"]["summary"], row["attack"])
        for name in ATTACKS:
            self.assertIn(f"| {name} |", done.stderr)
