# -*- test-case-name: tests.test_manhole,tests.e2e.test_manhole -*-
"""
What C{[manhole]} adds to the gateway's service tree: the reactor watchdog
(unless C{watchdog_seconds} is 0) and the SSH console (when C{listen} is
set).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from imgateway.manhole.namespace import GatewayConsole, makeNamespace
from imgateway.manhole.watchdog import ReactorWatchdog

__all__ = ["addManhole"]


def addManhole(top: MultiService, gateway: Any, reactor: Any) -> GatewayConsole | None:
    """
    Add the watchdog and the SSH console to C{top} (the gateway's service
    tree, searched by the console's C{gateway.links()}).

    @param gateway: The L{imgateway.interfaces.IGateway}; its
        C{config.manhole} says what to add.
    @return: The console's C{gateway} object, or C{None} without a console.
    @raise imgateway.core.errors.ConfigError: If the host key is unusable.
    """
    config = gateway.config.manhole
    if config.watchdogSeconds > 0:
        watchdog = ReactorWatchdog(reactor, config.watchdogSeconds)
        watchdog.setName("watchdog")
        watchdog.setServiceParent(top)
    if not config.listen:
        return None
    from imgateway.manhole.ssh import makeManholeService

    console = GatewayConsole(gateway, config.systemSender, root=top)
    service = makeManholeService(config, gateway.dataDir, lambda: makeNamespace(console), reactor)
    service.setName("manhole")
    service.setServiceParent(top)
    return console
