# -*- test-case-name: tests.test_imports -*-
"""
The import graph of the C{imgateway} package (and of its twistd plugin file)
has no cycles.

Every import counts: at module level, inside functions (a deferred import
is a cycle put off, not broken) and under C{TYPE_CHECKING} (mypy checks the
modules of a cycle as one). So does the discovery of protocol adapters:
L{imgateway.plugins} imports every module of its folder. The graph is read
from the source with L{ast}, without importing anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

REPO = FilePath(__file__).parent().parent()

#: Packages whose every submodule is imported at run time by Twisted's
#: plugin discovery (L{twisted.plugin.getPlugins}).
PLUGIN_PACKAGES = ("imgateway.plugins",)


def findModules(root: FilePath[str]) -> dict[str, FilePath[str]]:
    """
    @return: The dotted name of every module of C{imgateway} and of
        C{twisted.plugins} under C{root}, and its file.
    """
    modules: dict[str, FilePath[str]] = {}
    for path in root.child("imgateway").walk():
        if path.isfile() and path.basename().endswith(".py"):
            parts = path.segmentsFrom(root)
            parts[-1] = parts[-1][: -len(".py")]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for path in root.child("twisted").child("plugins").globChildren("*.py"):
        modules["twisted.plugins." + path.basename()[: -len(".py")]] = path
    return modules


def importsOf(name: str, source: str, isPackage: bool) -> set[str]:
    """
    @return: Every module name that C{source} (the module C{name}) imports,
        as written or as resolved from a relative import, anywhere in it.
        C{from package import name} yields both C{package} and
        C{package.name} (which may be a module).
    """
    package = name if isPackage else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def importGraph(root: FilePath[str]) -> dict[str, set[str]]:
    """
    @return: Each module of C{imgateway} (and C{twisted.plugins}) under
        C{root}, and the modules among them that it imports.
    """
    modules = findModules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in importsOf(name, path.getContent().decode("utf-8"), path.basename() == "__init__.py"):
            # The longest known module the name starts with ("x.y.Class" is x.y).
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    for package in PLUGIN_PACKAGES:
        graph[package].update(m for m in modules if m.startswith(package + "."))
    return graph


def findCycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """
    Find the strongly connected components of more than one module
    (Tarjan's algorithm, iterative).

    @return: Each cycle as a path that starts and ends with the same module,
        sorted.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        onStack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    onStack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in onStack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        onStack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return sorted(_pathThrough(graph, c) for c in components)


def _pathThrough(graph: Mapping[str, Iterable[str]], component: set[str]) -> list[str]:
    """
    @return: One cycle through the first module of C{component}, for the
        message: C{[a, b, c, a]}.
    """
    first = min(component)
    paths = [[first]]
    seen = {first}
    while paths:
        path = paths.pop(0)
        for successor in sorted(graph[path[-1]]):
            if successor == first:
                return path + [first]
            if successor in component and successor not in seen:
                seen.add(successor)
                paths.append(path + [successor])
    raise AssertionError(f"no cycle through {first}")


class FindCyclesTests(SynchronousTestCase):
    """
    L{findCycles}, the checker itself.
    """

    def test_acyclic(self) -> None:
        """
        A graph without cycles has none, diamonds included.
        """
        self.assertEqual(findCycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}), [])

    def test_cycles(self) -> None:
        """
        Each cycle is found once, as a path.
        """
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
        self.assertEqual(findCycles(graph), [["a", "b", "c", "a"], ["d", "e", "d"]])

    def test_importsOf(self) -> None:
        """
        Imports are found at module level, in functions, under
        C{TYPE_CHECKING}, and relative ones resolved.
        """
        source = (
            "import x.y\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from p.q import Q\n"
            "def f():\n    from . import sibling\n    from ..up import thing\n"
        )
        self.assertEqual(
            importsOf("pkg.sub.mod", source, False),
            {"x.y", "typing", "typing.TYPE_CHECKING", "p.q", "p.q.Q", "pkg.sub", "pkg.sub.sibling", "pkg.up", "pkg.up.thing"},
        )


class ImportGraphTests(SynchronousTestCase):
    """
    The package's own import graph.
    """

    def setUp(self) -> None:
        self.graph = importGraph(REPO)

    def test_graphRead(self) -> None:
        """
        The graph holds the package's modules and the imports between them
        (so that an empty graph cannot pass L{test_noCycles}), including the
        plugin dropins that adapter discovery loads.
        """
        self.assertIn("imgateway.config", self.graph["imgateway.gateway"])
        self.assertIn("imgateway.interfaces", self.graph["imgateway.plugins"])
        self.assertIn("imgateway.plugins.native", self.graph["imgateway.plugins"])
        self.assertIn("twisted.plugins.imgateway_plugin", self.graph)

    def test_noCycles(self) -> None:
        """
        No module imports, directly or not, a module that imports it back.
        """
        cycles = findCycles(self.graph)
        self.assertEqual(cycles, [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles))
