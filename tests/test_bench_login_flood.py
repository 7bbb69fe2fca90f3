# -*- test-case-name: tests.test_bench_login_flood -*-
"""
Tests for C{bench/login_flood.py}'s in-process mode (its other modes spawn
gateways: they are run by hand, see C{bench/README.md}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench import login_flood


class InProcessTests(SynchronousTestCase):
    """
    C{--mode inprocess}: XMPP logins through the c2s face over a memory
    gateway, timed by stage.
    """

    def test_record(self) -> None:
        """
        The record has the CPU per login and per stage, which add up; with
        PLAIN (no C{<response/>} read) and a resource the server makes, too.
        """
        for mech, resource in (("SCRAM-SHA-1", "r"), ("PLAIN", "")):
            record = login_flood.inProcessRun(3, mech, resource, warmup=1, logToDevNull=False)
            self.assertEqual((record["mode"], record["mech"], record["logins"]), ("inprocess", mech, 3))
            stages = record["cpu_us_per_stage"]
            self.assertEqual(list(stages), list(login_flood.XMPP_STAGES))
            self.assertLess(abs(sum(stages.values()) - record["cpu_us_per_login"]), 1.0)
            self.assertGreater(stages["bind"], 0)
            if mech == "PLAIN":
                self.assertEqual(stages["response"], 0)
