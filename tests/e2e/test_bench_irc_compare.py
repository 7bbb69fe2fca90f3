# -*- test-case-name: tests.e2e.test_bench_irc_compare -*-
"""
Smoke test of C{bench/irc_compare.py}, so that it does not rot: one very
short run spawns the real servers (the gateway with its IRC face, the
gateway bridging to ngIRCd, and ngIRCd, which fails rather than skips
under CI when missing, as the other end-to-end tests' peers do), drives
them with the benchmark's load driver and prints both tables. It asserts
that every figure comes out and nothing is lost, never a time: the figures
come from running the benchmark itself (C{bench/README.md}, section "IRC").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import TestCase

from tests.e2e.harness import requirePeer
from tests.e2e.test_bench_compare import REPO, checkRuns


class QuickRunTests(TestCase):
    """
    C{irc_compare.py --quick} against the gateway's IRC face, its bridge,
    and ngIRCd.
    """

    def test_quick(self) -> None:
        """
        C{--quick} with 3 pairs and 1 s windows gives ngIRCd's figures for
        both loads, the IRC face's next to them and the bridge's (with the
        CPU of the ngIRCd behind it) next to ngIRCd's direct one-way
        figures; every message arrives; the report shows both tables, the
        flood limits raised and the versions.
        """
        requirePeer(self, "ngircd")
        done = subprocess.run(
            [sys.executable, REPO.child("bench").child("irc_compare.py").path, "--json", "--quick", "--pairs", "3",
             "--duration", "1", "--only", "ngircd", "--only", "gateway-irc", "--only", "bridge"],
            capture_output=True, text=True, timeout=180, cwd=REPO.path, env=dict(os.environ),
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-4000:])
        doc: dict[str, Any] = json.loads(done.stdout)
        checkRuns(self, doc)
        self.assertEqual(doc["rows"], ["ngircd", "gateway-irc", "bridge"])
        face = {"msg_rate", "msg_cpu_us", "rate_p50_ms", "rate_p99_ms", "msg_rss_mib"}
        oneway = {"oneway_rate", "oneway_cpu_us", "oneway_p50_ms", "oneway_p99_ms", "oneway_rss_mib"}
        summary = doc["summary"]
        self.assertEqual(set(summary["ngircd"]), face | oneway)
        self.assertEqual(set(summary["gateway-irc"]), face)
        self.assertEqual(set(summary["bridge"]), oneway | {"oneway_peer_cpu_us"})
        for r in doc["runs"]:
            self.assertGreater(r["delivered"], 0, r)
        self.assertIsNotNone(doc["versions"]["ngircd"])
        self.assertIn("ngircd", doc["flood_settings"])
        self.assertIn("| imgateway, IRC face | ", done.stderr)
        self.assertIn("| native → gateway → puppet → ngIRCd → IRC | ", done.stderr)
