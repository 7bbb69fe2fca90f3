# -*- test-case-name: tests.test_net_imports -*-
"""
L{imgateway.net} stands below every face, link and client: it imports no
other part of imgateway, so that any of them (and the router) may use it
without an import cycle.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import imgateway.net


def importedModules(path: str) -> set[str]:
    """
    @return: The modules a source file imports (at run time or for
        typing, at any depth of its code).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    return imported


class NetImportTests(SynchronousTestCase):
    """
    What the network package imports.
    """

    def test_nothingAbove(self) -> None:
        """
        Every module of L{imgateway.net} imports, of imgateway, only
        L{imgateway.net} itself.
        """
        folder = os.path.dirname(imgateway.net.__file__)
        modules = sorted(name for name in os.listdir(folder) if name.endswith(".py"))
        self.assertIn("tls.py", modules)
        for name in modules:
            outside = {
                m for m in importedModules(os.path.join(folder, name)) if m.split(".")[0] == "imgateway" and not m.startswith("imgateway.net")
            }
            self.assertEqual(outside, set(), name)
