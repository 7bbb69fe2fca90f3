# -*- test-case-name: tests.test_net_imports -*-
"""
L{imgateway.net} stands below every face, link and client: it imports no
other part of imgateway, so that any of them (and the router) may use it
without an import cycle. (The package's import graph is
L{tests.test_imports}'.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imports import REPO, importGraph


def _inNet(module: str) -> bool:
    return module == "imgateway.net" or module.startswith("imgateway.net.")


class NetImportTests(SynchronousTestCase):
    """
    What the network package imports.
    """

    def test_nothingAbove(self) -> None:
        """
        Every module of L{imgateway.net} imports, of imgateway, only
        L{imgateway.net} itself (typing-only and function-level imports
        included).
        """
        graph = importGraph(REPO)
        net = sorted(m for m in graph if _inNet(m))
        self.assertIn("imgateway.net.tls", net)
        for module in net:
            self.assertEqual({m for m in graph[module] if not _inNet(m)}, set(), module)
