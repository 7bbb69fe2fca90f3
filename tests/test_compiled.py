# -*- test-case-name: tests.test_compiled -*-
"""
Tests for L{imgateway._compiled}: the optional compiled build's module list
and L{cachedProperty}.

C{run-tests.sh} runs the unit tests twice: on the source as it is (pure
Python, the default install) and on a copy built with
C{IMGATEWAY_COMPILE=1}, with C{IMGATEWAY_COMPILED=1} in the environment;
L{CompiledModulesTests} checks that each run loaded what it says.
"""

from __future__ import annotations

import ast
import importlib
import operator
import os
from functools import cached_property
from importlib.machinery import EXTENSION_SUFFIXES

from attrs import field, frozen, validators
from twisted.trial.unittest import SynchronousTestCase

from imgateway._compiled import COMPILED_MODULES, cachedProperty, defaultField


def _moduleName(path: str) -> str:
    """
    @return: The module name of a path in L{COMPILED_MODULES}.
    """
    return path.removesuffix(".py").replace("/", ".")


@frozen
class _Counted:
    """
    A slotted attrs class with a cached property whose function, like a
    method compiled by mypyc, has no signature for L{inspect.signature}.
    """

    calls: list[int] = field(factory=list)

    def _compute(self) -> int:
        self.calls.append(1)
        return 42

    value = cachedProperty(operator.methodcaller("_compute"))


class CachedPropertyTests(SynchronousTestCase):
    """
    Tests for L{cachedProperty}.
    """

    def test_function(self) -> None:
        """
        For a function (the pure-Python build), L{cachedProperty} is
        C{cached_property} of that very function.
        """

        def method(instance: object) -> int:
            return 1

        prop = cachedProperty(method)
        self.assertIsInstance(prop, cached_property)
        self.assertIs(prop.func, method)

    def test_unsignedCallable(self) -> None:
        """
        A callable without a signature (as a compiled method) makes a cached
        property of a slotted attrs class: computed on the first look-up
        only, and settable with C{object.__setattr__} as the frame parser
        does.
        """
        counted = _Counted()
        self.assertEqual((counted.value, counted.value), (42, 42))
        self.assertEqual(counted.calls, [1])
        other = _Counted()
        object.__setattr__(other, "value", 7)
        self.assertEqual(other.value, 7)
        self.assertEqual(other.calls, [])

    def test_notAField(self) -> None:
        """
        The cached property is not one of the class's attrs fields.
        """
        self.assertEqual([a.name for a in _Counted.__attrs_attrs__], ["calls"])


@frozen
class _Defaulted:
    """
    An attrs class whose fields with defaults are made by L{defaultField}.
    """

    number: int = defaultField(default=3, validator=validators.ge(0))
    names: list[str] = defaultField(factory=list, eq=False)


class DefaultFieldTests(SynchronousTestCase):
    """
    Tests for L{defaultField}.
    """

    def test_asField(self) -> None:
        """
        A field made by L{defaultField} has its default (or its factory's
        value), its validator and its other options, as one made by
        C{attrs.field} with the same arguments.
        """
        self.assertEqual((_Defaulted().number, _Defaulted().names), (3, []))
        self.assertIsNot(_Defaulted().names, _Defaulted().names)
        self.assertEqual(_Defaulted(5).number, 5)
        self.assertRaises(ValueError, _Defaulted, -1)
        self.assertEqual(_Defaulted(names=["a"]), _Defaulted(names=["b"]))

    def test_needsADefault(self) -> None:
        """
        Without a default or a factory, L{defaultField} refuses: mypy would
        take the field for one with a default.
        """
        self.assertRaises(TypeError, defaultField, repr=False)


class CompiledModulesTests(SynchronousTestCase):
    """
    Which build of L{COMPILED_MODULES} this run loaded.
    """

    def test_loaded(self) -> None:
        """
        With C{IMGATEWAY_COMPILED=1} (the compiled run of C{run-tests.sh})
        every module of L{COMPILED_MODULES} was loaded from a C extension;
        otherwise (the default install) from its Python source.
        """
        compiled = os.environ.get("IMGATEWAY_COMPILED") == "1"
        for path in COMPILED_MODULES:
            module = importlib.import_module(_moduleName(path))
            filename = module.__file__ or ""
            if compiled:
                self.assertTrue(filename.endswith(tuple(EXTENSION_SUFFIXES)), f"{module.__name__} from {filename}")
            else:
                self.assertTrue(filename.endswith(".py"), f"{module.__name__} from {filename}")

    def test_paths(self) -> None:
        """
        Every entry of L{COMPILED_MODULES} names a module of the source tree
        by its path from the top, as mypyc takes it.
        """
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for path in COMPILED_MODULES:
            self.assertTrue(path.startswith("imgateway/") and path.endswith(".py"), path)
            self.assertTrue(os.path.isfile(os.path.join(top, path)), path)


#: The functions of L{COMPILED_MODULES} allowed an f-string with a format
#: spec or a conversion outside a C{raise} statement (see
#: L{FormattedStringTests}), besides every C{__repr__}: text for an error, written when
#: something went wrong; and the link codec's writers of the unusual shapes
#: (their timestamps written with C{!r}; the usual link MESSAGE, written by
#: C{encodeMessage}, makes its C{repr} apart: C{bench/README.md}, "The
#: compiled build against pure Python, again").
_FORMATTED_ALLOWED = {
    ("imgateway/adapters/native/framing.py", "_endHeaders"),
    ("imgateway/router/link_codec.py", "_seconds"),
    ("imgateway/router/link_codec.py", "encodeRequest"),
    ("imgateway/router/link_codec.py", "_messageHead"),
}


def formattedStrings(source: str) -> list[tuple[int, str]]:
    """
    The f-strings of a module's source that mypyc cannot join in one step:
    those with a replacement field that has a format spec (C{{x:.3f}}) or a
    conversion (C{{x!r}}). Compiled, every part of such an f-string is made
    by a call of C{str.format} (about 2,000 instructions each); in pure
    Python the same f-string is a few bytecodes. Those in a C{raise}
    statement are left out.

    @return: Each one's line and the name of the function it is in
        (C{""} at module level).
    """
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.Raise):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.JoinedStr) and any(
            isinstance(value, ast.FormattedValue) and (value.format_spec is not None or value.conversion != -1)
            for value in node.values
        ):
            found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


class FormattedStringTests(SynchronousTestCase):
    """
    The compiled modules write their hot text with plain f-strings: mypyc
    joins an f-string's parts in one step only when no replacement field
    has a format spec or a conversion (C{translate_fstring} in mypyc's
    C{irbuild/specialize.py}); otherwise each part, plain text included,
    is a call of C{str.format}. The native face's C{MESSAGE} writer had its
    timestamp's C{:.3f} in its f-string: 14,000 more instructions per
    message compiled than with the timestamp formatted apart.
    """

    def test_finder(self) -> None:
        """
        L{formattedStrings} finds the f-strings with a format spec or a
        conversion, outside a C{raise} statement, with their functions.
        """
        source = (
            "x = f'{1:.3f}'\n"
            "def f(t, s):\n"
            "    a = f'plain {t} {s}'\n"
            "    b = f'{t:.3f}'\n"
            "    c = f'{s!r}'\n"
            "    if not t:\n"
            "        raise ValueError(f'bad {t!r}')\n"
            "    return format(t, '.3f')\n"
        )
        self.assertEqual(formattedStrings(source), [(1, ""), (4, "f"), (5, "f")])

    def test_compiledModules(self) -> None:
        """
        No function of L{COMPILED_MODULES} has an f-string with a format
        spec or a conversion outside a C{raise} statement, but in a
        C{__repr__} and in those of L{_FORMATTED_ALLOWED}.
        """
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        found = []
        for path in COMPILED_MODULES:
            with open(os.path.join(top, path), encoding="utf-8") as f:
                source = f.read()
            found += [(path, line, function) for line, function in formattedStrings(source) if function != "__repr__" and (path, function) not in _FORMATTED_ALLOWED]
        self.assertEqual(found, [])
