# -*- test-case-name: tests.test_compiled -*-
"""
The optional compiled build (C{docs/performance.md}, "The compiled build"):
the modules that C{IMGATEWAY_COMPILE=1 pip install .} compiles with mypyc,
and what their code needs to behave the same compiled and not.

This module itself is never compiled: C{setup.py} reads L{COMPILED_MODULES}
from it without importing the package.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

from attrs import field

__all__ = ["COMPILED_MODULES", "cachedProperty", "defaultField"]

#: The modules the compiled build compiles, as paths from the top of the
#: source tree: the hottest of the native face's path that mypyc compiles
#: without a change of behaviour (C{bench/README.md}, "The compiled build").
#:
#: In a compiled module, C{==} and C{!=} between two values typed as the
#: same attrs class of a compiled module (the frames...) are compiled as
#: C{is} and C{is not}: mypyc takes C{attrs.frozen} classes for classes
#: without C{__eq__}, as it does not see the methods attrs adds. L{Address
#: <imgateway.core.address.Address>} writes its comparisons and hash in
#: its class, so mypyc compiles them and calls them; none of these modules
#: compares values of other such classes. C{home/server.py}, which does
#: (L{Presence<imgateway.core.presence.Presence>}: not compiled, so
#: compared by value), is not compiled: mypyc cannot compile its methods'
#: closures in classes with a class decorator (C{@implementer}), and made
#: native classes its sessions could not be weakly referenced
#: (C{bench/README.md}, "The native face's 1:1 message, second round").
#:
#: C{core/presence.py} and C{router/router.py} compile and pass every unit
#: test compiled, but measured no faster: they are not listed.
#: C{core/events.py} measured no faster either, and no longer compiles:
#: L{preCheckedMessage<imgateway.core.events.preCheckedMessage>} changes
#: an object's class between two of the same layout, which mypyc cannot
#: build. C{adapters/native/server.py} (the native face) measured 8 % less
#: CPU per message compiled than interpreted beside the others compiled
#: (C{bench/README.md}, "The native face's 1:1 message (issue 11, session 7,
#: msg11)").
#: C{core/address.py} compiles, but is not listed since session 10: every
#: method of L{Address<imgateway.core.address.Address>} called from
#: interpreted code (the home server, the XMPP face) costs 150–550
#: instructions more compiled (C{bench/README.md}, "The compiled build
#: against pure Python, again").
COMPILED_MODULES = (
    "imgateway/adapters/native/framing.py",
    "imgateway/adapters/native/mapping.py",
    "imgateway/adapters/native/outstanding.py",
    "imgateway/adapters/native/server.py",
    "imgateway/core/ratelimit.py",
    "imgateway/router/link_codec.py",
)

_T = TypeVar("_T")


def cachedProperty(method: Callable[[Any], _T]) -> cached_property[_T]:
    """
    C{functools.cached_property}, for the methods of the compiled modules.

    mypyc compiles a method decorated with C{@cached_property} as a plain
    C{property}, which computes its value on every look-up and cannot be set
    (U{https://github.com/python/mypy/pull/21611}); called through this
    function, the decorator is applied as written. And attrs, which gives a
    slotted class's cached property a slot of its own, reads the signature
    of its function, which a compiled method has not: that one is called
    through a function of this (not compiled) module.

    @param method: The method computing the value.
    @return: C{cached_property(method)}; for a compiled method, a cached
        property whose function calls it.
    """
    if isinstance(method, types.FunctionType):
        return cached_property(method)

    def compute(instance: Any) -> _T:
        return method(instance)

    compute.__doc__ = method.__doc__
    return cached_property(compute)


def defaultField(**options: Any) -> Any:
    """
    C{attrs.field(**options)}, for a field with a default (C{default} or
    C{factory}) of an attrs class in a compiled module.

    mypyc checks the value given to a class attribute against the
    attribute's type when the class is made (C{note: str = field(default="")}
    fails: a C{str} expected, attrs' definition of the field found), and the
    field is that definition until the attrs decorator reads it. Typed
    C{Any}, this one is not checked; and mypy's attrs plugin, which takes a
    value that is not a C{field()} call for a default, still knows the field
    has one.

    @param options: C{attrs.field}'s keyword arguments, with C{default} or
        C{factory}.
    @return: C{attrs.field(**options)}.
    """
    if "default" not in options and "factory" not in options:
        raise TypeError("defaultField() needs a default or a factory")
    return field(**options)
