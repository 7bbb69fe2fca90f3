# -*- test-case-name: tests.test_bench_presence_fanout -*-
"""
Tests for C{bench/presence_fanout.py}: it runs, and its figures are the
calls it counted.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from importlib.machinery import EXTENSION_SUFFIXES

from twisted.trial.unittest import SynchronousTestCase

from bench import presence_fanout


class PresenceFanOutBenchTests(SynchronousTestCase):
    """
    C{presence_fanout.py} on a few watchers.
    """

    def test_runs(self) -> None:
        """
        It prints one JSON line with the figures per watcher: calls and
        CPU of the fan-out and of reading a C{200}, and the address
        hashes (C{Address.__hash__}'s calls: none to count where
        C{core/address.py} is compiled).
        """
        self.patch(presence_fanout, "commitOf", lambda folder: "abc1234")
        out = io.StringIO()
        with redirect_stdout(out):
            presence_fanout.main(["--watchers", "3", "--rounds", "5"])
        figures = json.loads(out.getvalue())
        self.assertEqual((figures["bench"], figures["commit"], figures["watchers"]), ("presence_fanout", "abc1234", 3))
        for key in ("fan_out_calls_per_recipient", "read_200_calls_per_recipient", "read_two_200s_calls_per_recipient"):
            self.assertGreater(figures[key], 0, key)
        import imgateway.core.address as addressModule

        if (addressModule.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            # Compiled, Address.__hash__ makes no Python frame to count.
            self.assertEqual(figures["address_hashes_per_recipient"], 0)
        else:
            self.assertGreater(figures["address_hashes_per_recipient"], 0)
        self.assertGreater(figures["fan_out_cpu_us_per_recipient"], 0)
        self.assertGreater(figures["read_200_cpu_us_per_recipient"], 0)

    def test_addressHash(self) -> None:
        """
        The counted names of C{Address.__hash__}, attrs' or written in
        C{core/address.py}, are told from other hashes.
        """
        self.assertTrue(presence_fanout._isAddressHash("__hash__ (<attrs generated methods imgateway.core.address.Address>:23)"))
        self.assertTrue(presence_fanout._isAddressHash("__hash__ (address.py:136)"))
        self.assertFalse(presence_fanout._isAddressHash("__hash__ (<attrs generated methods imgateway.core.presence.Presence>:23)"))
        self.assertFalse(presence_fanout._isAddressHash("hash (builtin)"))
        self.assertFalse(presence_fanout._isAddressHash("__hash__ (enum.py:1230)"))
