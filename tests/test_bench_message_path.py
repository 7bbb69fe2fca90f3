# -*- test-case-name: tests.test_bench_message_path -*-
"""
Tests for C{bench/message_path.py}: it runs, and its figures are the calls
it counted.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from bench import message_path


class MessagePathBenchTests(SynchronousTestCase):
    """
    C{message_path.py} on a few pairs.
    """

    def test_runs(self) -> None:
        """
        It prints one JSON line with the figures per message: calls and
        CPU.
        """
        self.patch(message_path, "commitOf", lambda folder: "abc1234")
        out = io.StringIO()
        with redirect_stdout(out):
            message_path.main(["--pairs", "2", "--batch", "3", "--rounds", "5"])
        figures = json.loads(out.getvalue())
        self.assertEqual(
            (figures["bench"], figures["commit"], figures["pairs"], figures["batch"]), ("message_path", "abc1234", 2, 3)
        )
        self.assertGreater(figures["calls_per_message"], 0)
        self.assertGreater(figures["cpu_us_per_message"], 0)
