# -*- test-case-name: tests.test_plugins -*-
"""
Plugin package for protocol adapters.

Any module in an C{imgateway/plugins/} folder on C{sys.path} (this one, or a
third-party package's) may define objects providing
L{imgateway.interfaces.IProtocolAdapter}; L{adapterPlugins} finds them with
Twisted's plugin system.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.plugin import getPlugins, pluginPackagePaths

from imgateway.interfaces import IProtocolAdapter

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorCore

    from imgateway.config import ConfigTable

__path__.extend(pluginPackagePaths(__name__))
__all__ = ["adapterConfigParsers", "adapterPlugins"]


def adapterPlugins() -> list[IProtocolAdapter]:
    """
    @return: Every installed protocol adapter, sorted by name.

    @raise ValueError: If two adapters share a name.
    """
    import imgateway.plugins

    found: dict[str, IProtocolAdapter] = {}
    for adapter in getPlugins(IProtocolAdapter, imgateway.plugins):
        if adapter.name in found:
            raise ValueError(f"two protocol adapters are named {adapter.name!r}")
        found[adapter.name] = adapter
    return [found[name] for name in sorted(found)]


def adapterConfigParsers() -> dict[str, Callable[[ConfigTable, IReactorCore], object]]:
    """
    @return: The C{parseConfig} of every installed protocol adapter, by
        name: the C{adapterParsers} of L{imgateway.config.loadConfig}.
    """
    return {adapter.name: adapter.parseConfig for adapter in adapterPlugins()}
