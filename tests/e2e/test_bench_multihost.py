# -*- test-case-name: tests.e2e.test_bench_multihost -*-
"""
A smoke test of the multi-host benchmark (C{bench/multihost.py}), so that it
does not rot: a short C{--quick} run spawns one gateway, then two home
servers joined by TLS links, then those with a router that proxies alice's
sessions (her clients come from outside its internal network), puts
alice→carol load on each closed-loop and at a fixed rate, and prints a row
for each with the ratios of the CPU per delivery. It asserts that the run completes with nothing lost or duplicated
and that every figure is printed, never a time: figures come from running
the benchmark itself (C{bench/README.md}).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

REPO = FilePath(__file__).parent().parent().parent()


class MultihostBenchSmokeTests(SynchronousTestCase):
    """
    C{bench/multihost.py} runs from start to end.
    """

    def test_quickRunPrintsEveryFigure(self) -> None:
        """
        C{multihost.py --quick --json --duration 1} exits 0 (nothing lost,
        duplicated or unanswered, no traceback in the servers' logs); its JSON
        has a row per topology and mode, each with deliveries, latency
        percentiles, the round trip's, and the servers' CPU per delivery
        (two processes, hs1 and hs2, for the two homes; three with the
        router), and the ratios for each mode; the table on standard error
        shows the rows and ratios.
        """
        done = subprocess.run(
            [sys.executable, REPO.child("bench").child("multihost.py").path, "--quick", "--duration", "1", "--json"],
            capture_output=True, text=True, timeout=150, cwd=REPO.path, env=dict(os.environ),
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        result = json.loads(done.stdout)
        rows = result["rows"]
        self.assertEqual(
            [(r["topology"], r["mode"]) for r in rows],
            [(t, m) for t in ("single", "two-homes", "router-proxy") for m in ("closed", "fixed")],
        )
        for row in rows:
            self.assertGreater(row["delivered"], 0, row)
            self.assertEqual((row["lost"], row["duplicates"], row["unanswered"]), (0, 0, 0), row)
            self.assertEqual({"p50", "p99"} - set(row["lat_us"]), set(), row)
            self.assertEqual({"p50", "p99"} - set(row["ack_lat_us"]), set(), row)
            self.assertIsNotNone(row["server_cpu_us_per_delivery"], row)
        self.assertEqual(set(rows[2]["server_cpu_s_by_process"]), {"hs1", "hs2"})
        self.assertEqual(set(rows[4]["server_cpu_s_by_process"]), {"router", "hs1", "hs2"})
        self.assertEqual(
            set(result["ratios"]), {f"{t}/single {m}" for t in ("two-homes", "router-proxy") for m in ("closed", "fixed")}
        )
        self.assertEqual(result["skipped"], {})
        self.assertIn("| single | closed, window 10 |", done.stderr)
        self.assertIn("| two-homes | fixed 500/s |", done.stderr)
        self.assertIn("| router-proxy | closed, window 10 |", done.stderr)
        self.assertIn("ratio two-homes/single closed: ", done.stderr)
        self.assertIn("ratio router-proxy/single fixed: ", done.stderr)
