# -*- test-case-name: tests.test_irc_network -*-
"""
The IRC protocol adapter: the C{[irc]} config table and its services.

(A minimal stand-in written by the bridge's helper, in the shape agreed in
ISSUE9.md, until the face's adapter lands: it reads the C{[[irc.network]]}
tables only.)
"""

from __future__ import annotations

from attrs import frozen
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.plugin import IPlugin
from zope.interface import implementer

from imgateway.adapters.irc.network import IRCNetworkConfig, makeNetworkServices, parseNetworks
from imgateway.config import ConfigTable
from imgateway.interfaces import IGateway, IProtocolAdapter

__all__ = ["IRCAdapter", "IRCConfig"]


@frozen
class IRCConfig:
    """
    The parsed C{[irc]} table.
    """

    networks: tuple[IRCNetworkConfig, ...] = ()


@implementer(IPlugin, IProtocolAdapter)
class IRCAdapter:
    """
    IRC: a bridge to IRC networks.
    """

    name = "irc"
    description = "IRC: bridge to IRC networks (puppets)"

    def parseConfig(self, table: ConfigTable, reactor: IReactorCore) -> IRCConfig:
        config = IRCConfig(networks=parseNetworks(table, reactor))
        table.finish()
        return config

    def makeService(self, gateway: IGateway, config: object) -> IService:
        assert isinstance(config, IRCConfig)
        top = MultiService()
        if config.networks:
            makeNetworkServices(gateway, config.networks).setServiceParent(top)
        return top
