# -*- test-case-name: tests.test_plugins -*-
"""
Plugin package for protocol adapters.

Any module in an C{imgateway/plugins/} folder on C{sys.path} (this one, or a
third-party package's) may define objects providing
L{imgateway.interfaces.IProtocolAdapter}; L{adapterPlugins} finds them with
Twisted's plugin system.
"""

from __future__ import annotations

from twisted.plugin import getPlugins, pluginPackagePaths

from imgateway.interfaces import IProtocolAdapter

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []


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
