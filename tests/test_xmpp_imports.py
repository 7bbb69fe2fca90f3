# -*- test-case-name: tests.test_xmpp_imports -*-
"""
The XMPP adapter's modules import one another without cycles, typing-only
imports included: each can be imported first, and the layers (stream,
s2s authentication, s2s streams, links, federation, adapter) stay apart.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import imgateway.adapters.xmpp

PACKAGE = "imgateway.adapters.xmpp"


def importGraph() -> dict[str, set[str]]:
    """
    @return: Each module of the XMPP adapter, and the modules of the
        adapter it imports (at run time or for typing, at any depth of
        its code).
    """
    folder = os.path.dirname(imgateway.adapters.xmpp.__file__)
    modules = {f"{PACKAGE}.{name[:-3]}" for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for module in modules:
        with open(os.path.join(folder, module.rsplit(".", 1)[1] + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            imported.update(n for n in names if n in modules)
        graph[module] = imported - {module}
    return graph


def findCycle(graph: dict[str, set[str]]) -> list[str] | None:
    """
    @return: One import cycle, as the modules along it, or C{None}.
    """
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


class ImportCycleTests(SynchronousTestCase):
    """
    No import cycles inside the XMPP adapter.
    """

    def test_noCycle(self) -> None:
        """
        The import graph of the adapter's modules, typing-only imports
        included, has no cycle (the adapter, federation and s2s modules
        used to import one another).
        """
        self.assertIsNone(findCycle(importGraph()))

    def test_layers(self) -> None:
        """
        The s2s layers depend one way: authentication on nothing of s2s,
        the streams on authentication, the links on both.
        """
        graph = importGraph()
        s2s = {f"{PACKAGE}.{n}" for n in ("s2s", "s2s_stream", "s2s_auth")}
        self.assertEqual(graph[f"{PACKAGE}.s2s_auth"] & s2s, set())
        self.assertEqual(graph[f"{PACKAGE}.s2s_stream"] & s2s, {f"{PACKAGE}.s2s_auth"})
        self.assertEqual(graph[f"{PACKAGE}.s2s"] & s2s, {f"{PACKAGE}.s2s_auth", f"{PACKAGE}.s2s_stream"})

    def test_findCycle(self) -> None:
        """
        L{findCycle} finds a cycle when there is one.
        """
        self.assertEqual(findCycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(findCycle({"a": {"b"}, "b": set()}))
