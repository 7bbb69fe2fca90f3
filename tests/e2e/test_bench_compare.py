# -*- test-case-name: tests.e2e.test_bench_compare -*-
"""
Smoke tests of C{bench/compare.py}, so that it does not rot: very short runs
spawn the real servers (the gateway with both faces; Prosody and ejabberd,
which fail rather than skip under CI when missing, as the other end-to-end
tests' peers do), drive them with the benchmark's load driver and print the
table. They assert that every figure comes out, never a time: the figures
come from running the benchmark itself (C{docs/performance.md}).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e.harness import requirePeer

REPO = FilePath(__file__).parent().parent().parent()

#: Every figure of a row when every test runs (one idle size).
FIGURES = {
    "msg_cpu_us", "msg_rate", "rate_p50_ms", "rate_p99_ms", "presence_cpu_us", "scram_logins_s", "scram_cpu_us",
    "plain_logins_s", "plain_cpu_us", "idle1_kib", "idle1_mib",
}  # fmt: skip


def runCompare(testCase: SynchronousTestCase, *options: str) -> tuple[dict[str, Any], str]:
    """
    Run C{bench/compare.py --json} with C{options}; fail unless it exits 0.

    @return: Its JSON document and its standard error (the table).
    """
    done = subprocess.run(
        [sys.executable, REPO.child("bench").child("compare.py").path, "--json", *options],
        capture_output=True, text=True, timeout=300, cwd=REPO.path, env=dict(os.environ),
    )  # fmt: skip
    testCase.assertEqual(done.returncode, 0, done.stderr[-4000:])
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc, done.stderr


def checkRuns(testCase: SynchronousTestCase, doc: dict[str, Any]) -> None:
    """
    No run failed, lost a delivery, or saw an error, a stall, a lost
    connection or a traceback in the server's log.
    """
    for r in doc["runs"]:
        testCase.assertNotIn("error", r, r)
        for key in ("undelivered", "errors", "stalls", "disconnects", "server_log_errors"):
            testCase.assertFalse(r.get(key), f"{r['row']} {r['run']}: {key} {r.get(key)}")


class GatewayRowsTests(SynchronousTestCase):
    """
    C{compare.py} against the gateway's two faces.
    """

    def test_quickGateway(self) -> None:
        """
        C{--quick --only gateway} with 1 s windows and 100 idle sessions
        gives both faces' rows with every figure, prints them in the
        table, and records the machine, the versions and the flood limits
        it raised.
        """
        doc, stderr = runCompare(self, "--quick", "--only", "gateway", "--duration", "1", "--idle-sizes", "100")
        checkRuns(self, doc)
        self.assertEqual(doc["rows"], ["gateway-native", "gateway-xmpp"])
        for row in doc["rows"]:
            self.assertEqual(set(doc["summary"][row]), FIGURES, row)
        self.assertEqual(doc["ratios"], {})
        self.assertEqual(doc["machine"]["cores"], os.cpu_count())
        self.assertIsNotNone(doc["versions"]["imgateway"])
        self.assertIn("gateway", doc["flood_settings"])
        self.assertIn("| imgateway, native face | ", stderr)
        self.assertIn("| imgateway, XMPP c2s face | ", stderr)


class PeerRowsTests(TestCase):
    """
    C{compare.py} against Prosody and ejabberd: their accounts, passwords
    (SCRAM-SHA-1 verifiers) and contact lists written straight into their
    storage work.
    """

    def test_peersPresenceAndLogins(self) -> None:
        """
        Prosody and ejabberd, started by the benchmark, deliver a
        presence change to all 200 contacts written into their storage and
        log users in with SCRAM-SHA-1 and PLAIN; each gets its ratios to
        the other.
        """
        requirePeer(self, "prosody")
        requirePeer(self, "ejabberdctl", "ejabberd")
        requirePeer(self, "erl", "erlang-base")
        doc, stderr = runCompare(
            self, "--quick", "--only", "prosody", "--only", "ejabberd", "--tests", "presence", "--tests", "login",
            "--duration", "1",
        )  # fmt: skip
        checkRuns(self, doc)
        for row in ("prosody", "ejabberd"):
            self.assertEqual(
                set(doc["summary"][row]), {"presence_cpu_us", "scram_logins_s", "scram_cpu_us", "plain_logins_s", "plain_cpu_us"}
            )
            presence = next(r for r in doc["runs"] if r["row"] == row and r["run"] == "presence")
            self.assertEqual(presence["fanout"], 200)
            self.assertGreater(presence["delivered"], 0)
        self.assertEqual(doc["ratios"]["ejabberd"]["presence_cpu_us"]["ejabberd"], 1.0)
        self.assertIn("| Prosody | ", stderr)
