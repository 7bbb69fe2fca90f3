# -*- test-case-name: tests.test_irc_face,tests.e2e.test_irc_router -*-
"""
The IRC protocol adapter: the C{[irc]} config table, the IRC face's
listeners (L{imgateway.adapters.irc.face}) and, when C{[[irc.network]]}
tables are configured, the bridge to IRC networks
(L{imgateway.adapters.irc.network}, which parses them and makes the
bridge's services).
"""

from __future__ import annotations

import codecs
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.plugin import IPlugin
from zope.interface import implementer

from imgateway.adapters.base import ListenerService
from imgateway.adapters.irc.face import IRCConfig, IRCFaceFactory
from imgateway.adapters.irc.network import makeNetworkServices, parseNetworks
from imgateway.config import ConfigTable
from imgateway.core.errors import ConfigError
from imgateway.interfaces import IGateway, IProtocolAdapter

__all__ = ["IRCAdapter"]


class _IRCService(MultiService):
    def __init__(self, factory: IRCFaceFactory) -> None:
        super().__init__()
        self.factory = factory

    def stopService(self) -> Any:
        # Tell every client before the listeners go.
        self.factory.sayGoodbye("Server shutting down")
        return super().stopService()


@implementer(IPlugin, IProtocolAdapter)
class IRCAdapter:
    """
    IRC: a face for IRC clients (C{docs/irc.md}) and a bridge to IRC
    networks.
    """

    name = "irc"
    description = "IRC: a face for IRC clients (docs/irc.md), and a bridge to IRC networks"

    def parseConfig(self, table: ConfigTable, reactor: IReactorCore) -> IRCConfig:
        t = table
        d = IRCConfig()
        config = IRCConfig(
            listen=t.endpoints("listen", reactor, d.listen),
            maxLineBytes=t.positive("max_line_bytes", int, d.maxLineBytes),
            maxTagBytes=t.positive("max_tag_bytes", int, d.maxTagBytes),
            registrationTimeout=t.positive("registration_timeout", float, d.registrationTimeout),
            maxRegistrationCommands=t.positive("max_registration_commands", int, d.maxRegistrationCommands),
            commandsPerSecond=t.positive("commands_per_second", float, d.commandsPerSecond),
            commandBurst=t.positive("command_burst", int, d.commandBurst),
            maxConnectionsPerAddress=t.positive("max_connections_per_address", int, d.maxConnectionsPerAddress),
            maxUnauthenticated=t.positive("max_unauthenticated", int, d.maxUnauthenticated),
            preAuthBytes=t.positive("pre_auth_bytes", int, d.preAuthBytes),
            maxAuthAttempts=t.positive("max_auth_attempts", int, d.maxAuthAttempts),
            allowPlaintextAuth=t.get("allow_plaintext_auth", bool, d.allowPlaintextAuth),
            pingInterval=t.positive("ping_interval", float, d.pingInterval),
            pingTimeout=t.positive("ping_timeout", float, d.pingTimeout),
            maxSendQueueBytes=t.positive("max_send_queue_bytes", int, d.maxSendQueueBytes),
            maxMessageLines=t.positive("max_message_lines", int, d.maxMessageLines),
            maxMonitorTargets=t.positive("max_monitor_targets", int, d.maxMonitorTargets),
            fallbackCharset=t.get("fallback_charset", str, d.fallbackCharset),
            networks=parseNetworks(t, reactor),
        )
        if config.maxLineBytes < 512:
            raise t.error("max_line_bytes", "must be at least 512 (RFC 1459)")
        if config.maxTagBytes < 512:
            raise t.error("max_tag_bytes", "must be at least 512")
        try:
            codecs.lookup(config.fallbackCharset)
        except LookupError:
            raise t.error("fallback_charset", f"unknown charset {config.fallbackCharset!r}") from None
        return config

    def makeService(self, gateway: IGateway, config: object) -> IService:
        """
        The face's listeners and, with C{[[irc.network]]} tables, the
        bridge.

        @raise ConfigError: If C{[[irc.network]]} tables are configured on a
            process that is no router, in a domain with other servers (its
            routers bridge IRC networks for the users of every home server:
            C{docs/irc.md}, "Behind the router").
        """
        assert isinstance(config, IRCConfig)
        gatewayConfig = gateway.config
        others = [name for name in gatewayConfig.servers if name != gatewayConfig.homeServerName]
        if config.networks and others and "router" not in gatewayConfig.roles:
            raise ConfigError(
                f"{gatewayConfig.path.path}: [[irc.network]] {config.networks[0].name}: in a domain with several "
                f"servers, IRC networks are bridged by its routers, for the users of every home server; "
                f"{gatewayConfig.homeServerName} has the roles {', '.join(sorted(gatewayConfig.roles))}: move the "
                "[[irc.network]] tables to the routers' configurations (docs/irc.md, \"Behind the router\")"
            )
        factory = IRCFaceFactory(gateway, config)
        top = _IRCService(factory)
        for description in config.listen:
            ListenerService(gateway.reactor, description, factory, "IRC face").setServiceParent(top)
        if config.networks:
            makeNetworkServices(gateway, config.networks).setServiceParent(top)
        return top
