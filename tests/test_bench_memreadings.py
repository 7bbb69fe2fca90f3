# -*- test-case-name: tests.test_bench_memreadings -*-
"""
Tests for the idle run's hand-over to C{bench/_memreadings}: the load
driver asks the gateway's probe to note its memory right after each RSS
reading, and waits for it (C{bench/README.md}, "Idle sessions' memory,
fourth round").
"""

from __future__ import annotations

import os
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from bench import _loaddriver


class AskMemoryProbeTests(SynchronousTestCase):
    """
    L{_loaddriver._askMemoryProbe} writes C{PREFIX.ask} and returns once the
    probe has removed it; without C{$IMGATEWAY_MEM_READINGS} it does nothing.
    """

    def setUp(self) -> None:
        self.prefix = os.path.abspath(self.mktemp())
        saved = os.environ.pop("IMGATEWAY_MEM_READINGS", None)
        self.addCleanup(self.restore, saved)

    def restore(self, saved: str | None) -> None:
        os.environ.pop("IMGATEWAY_MEM_READINGS", None)
        if saved is not None:
            os.environ["IMGATEWAY_MEM_READINGS"] = saved

    def test_withoutProbe(self) -> None:
        """
        Without the variable no file is written.
        """
        _loaddriver._askMemoryProbe()
        self.assertFalse(os.path.exists(f"{self.prefix}.ask"))

    def test_waitsForProbe(self) -> None:
        """
        With the variable, the file is there until the probe takes it, and
        the call returns after that.
        """
        os.environ["IMGATEWAY_MEM_READINGS"] = self.prefix
        seen = threading.Event()

        def probe() -> None:
            while not os.path.exists(f"{self.prefix}.ask"):
                time.sleep(0.001)
            seen.set()
            os.unlink(f"{self.prefix}.ask")

        t = threading.Thread(target=probe)
        t.start()
        _loaddriver._askMemoryProbe()
        t.join()
        self.assertTrue(seen.is_set())
        self.assertFalse(os.path.exists(f"{self.prefix}.ask"))
