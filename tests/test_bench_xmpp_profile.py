# -*- test-case-name: tests.test_bench_xmpp_profile -*-
"""
Tests for C{bench/xmpp_profile.py}'s breakdown of a profile, on a made-up
profile (the script itself runs a gateway: see C{bench/README.md}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.xmpp_profile import breakdown

STATS: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = {
    ("~", 0, "<method 'poll' of 'select.epoll' objects>"): (10, 10, 4.0, 4.0, {}),
    ("/x/imgateway/adapters/xmpp/c2s.py", 800, "messageReceived"): (100, 100, 0.25, 1.0, {}),
    ("/x/twisted/internet/defer.py", 997, "_runCallbacks"): (500, 400, 2.0, 3.0, {}),
    ("/x/imgateway/home/server.py", 393, "_sendMessage"): (100, 100, 1.0, 4.0, {}),
    ("/x/imgateway/core/address.py", 50, "normaliseDomain"): (100, 100, 0.5, 0.75, {}),
    ("/x/imgateway/router/router.py", 146, "deliver"): (100, 100, 0.25, 5.0, {}),
    ("/x/imgateway/adapters/xmpp/stream.py", 433, "dataReceived"): (20, 20, 0.0, 3.5, {}),
    ("/x/imgateway/adapters/xmpp/stream.py", 477, "onElement"): (100, 100, 0.0, 2.75, {}),
    ("/x/imgateway/adapters/xmpp/c2s.py", 512, "_stanza"): (100, 100, 0.0, 2.5, {}),
}


class BreakdownTests(SynchronousTestCase):
    """
    L{breakdown} counts deliveries by the c2s hook and splits the busy time
    (everything but C{epoll.poll}) by layer.
    """

    def test_breakdown(self) -> None:
        """
        Own times add up by file, cumulative times are the functions'.
        """
        busy, deliveries, parts = breakdown(STATS, "messageReceived")
        self.assertEqual((busy, deliveries), (4.0, 100))
        got = dict(parts)
        self.assertEqual(got["Deferreds (own)"], 2.0)
        self.assertEqual(got["XMPP adapter (own)"], 0.25)
        self.assertEqual(got["core, home server, router (own)"], 1.75)
        self.assertEqual(got["address normalisation (cum.)"], 0.75)
        self.assertEqual(got["c2s messageReceived (cum.)"], 1.0)
        self.assertEqual(got["router deliver (cum.)"], 5.0)
        self.assertEqual(got["parsing clients' stanzas (cum.)"], 0.75)
        self.assertEqual(got["c2s handling them (cum.)"], 2.5)
