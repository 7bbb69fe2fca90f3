# -*- test-case-name: tests.test_xmpp_imports -*-
"""
The XMPP adapter's s2s layers depend one way: authentication on nothing of
s2s, the streams on authentication, the links on both. (That no module of
the package, this adapter's included, takes part in an import cycle is
L{tests.test_imports}' check; this module reads the same graph.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imports import REPO, importGraph

PACKAGE = "imgateway.adapters.xmpp"


class LayerTests(SynchronousTestCase):
    """
    The layers of the XMPP adapter's s2s modules.
    """

    def test_layers(self) -> None:
        """
        The s2s layers depend one way: authentication on nothing of s2s,
        the streams on authentication, the links on both (typing-only and
        function-level imports included).
        """
        graph = importGraph(REPO)
        s2s = {f"{PACKAGE}.{n}" for n in ("s2s", "s2s_stream", "s2s_auth")}
        self.assertEqual(graph[f"{PACKAGE}.s2s_auth"] & s2s, set())
        self.assertEqual(graph[f"{PACKAGE}.s2s_stream"] & s2s, {f"{PACKAGE}.s2s_auth"})
        self.assertEqual(graph[f"{PACKAGE}.s2s"] & s2s, {f"{PACKAGE}.s2s_auth", f"{PACKAGE}.s2s_stream"})
