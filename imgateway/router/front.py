# -*- test-case-name: tests.test_router_front,tests.test_xmpp_c2s,tests.e2e.test_router_faces -*-
"""
What a router's client face does with a client that has just authenticated
(docs/operations.md, "Router faces"): serve it here (its home server is this
process, or this process is no router), send it to its home server (a
client from C{[router] internal_networks}), or, for any other client of a
user homed elsewhere, answer that it cannot be served here: proxying such
sessions over the server links is a later slice.

The decision is made only after authentication, so that nothing about an
account shows to someone who does not hold its credentials, and it is
logged here, in one place for every face.
"""

from __future__ import annotations

from enum import Enum
from ipaddress import IPv4Network, IPv6Network

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from imgateway.config import GatewayConfig, HostPort
from imgateway.core.address import Address
from imgateway.interfaces import IHomeLocator
from imgateway.net.addresses import networkOf

__all__ = ["FACES", "UNAVAILABLE_TEXT", "FrontAction", "FrontDecision", "decideFront"]

log = Logger()

#: What a client that cannot be served here is told (native C{503} reason,
#: XMPP C{<text/>}).
UNAVAILABLE_TEXT = "Your home server is not served here to your network"

#: The faces that redirect, to the C{[servers.NAME]} key naming where that
#: face of a home server is reached.
FACES = {"native": "native", "xmpp": "xmpp"}


class FrontAction(Enum):
    """
    What a face does with an authenticated client.
    """

    #: Serve it here, as a single-host gateway does.
    SERVE = "serve"
    #: Send it to its home server (native C{302}, XMPP C{<see-other-host/>}).
    REDIRECT = "redirect"
    #: Tell it it cannot be served here now (native C{503}, XMPP
    #: C{<policy-violation/>}) and close: a client outside the internal
    #: networks (to be proxied, a later slice), or a home server with no
    #: endpoint for this face.
    UNAVAILABLE = "unavailable"


@frozen
class FrontDecision:
    """
    A face's decision about one authenticated client.

    @ivar action: What to do.
    @ivar home: The user's home server, when it is another one.
    @ivar location: Where to redirect the client (L{FrontAction.REDIRECT}).
    @ivar network: The internal network the client is in, if any.
    """

    action: FrontAction
    home: str | None = None
    location: HostPort | None = None
    network: IPv4Network | IPv6Network | None = None


#: Serve here.
SERVE = FrontDecision(FrontAction.SERVE)


def decideFront(
    config: GatewayConfig, locator: IHomeLocator | None, user: Address, peer: object, face: str
) -> Deferred[FrontDecision]:
    """
    Decide what the face C{face} does with C{user}, just authenticated from
    C{peer}, and log the decision unless it is to serve the user here.

    @param locator: The gateway's locator (C{None} for a single-host
        gateway).
    @param face: A key of L{FACES}.
    @param peer: The client's address (a transport's C{getPeer()}).
    @return: Fires with the decision; fails as C{locator.homeOf} does.
    """
    if "router" not in config.roles or locator is None:
        return succeed(SERVE)

    def decide(home: str | None) -> FrontDecision:
        if home is None or home == config.homeServerName:
            # Ours (or, just after it was made, not known yet: the account
            # was there to authenticate against, so it is served as today),
            # when this process has a home server to serve it.
            if "home" in config.roles:
                return SERVE
            log.warn(
                "Not serving {user} ({face}, from {peer}): the directory names {home} as its home server, and "
                "{name} has none (its roles are {roles}); answered as unavailable",
                user=user,
                face=face,
                peer=peer,
                home="no server" if home is None else home,
                name=config.homeServerName,
                roles=", ".join(sorted(config.roles)),
            )
            return FrontDecision(FrontAction.UNAVAILABLE, home)
        network = networkOf(peer, config.router.internalNetworks)
        server = config.servers.get(home)
        location: HostPort | None = getattr(server, FACES[face]) if server is not None else None
        if network is None:
            log.info(
                "Not serving {user} ({face}, from {peer}): its home server {home} is not {name}, and the client is "
                "in none of [router] internal_networks, so its session would be proxied, which this version does "
                "not do; answered as unavailable",
                user=user,
                face=face,
                peer=peer,
                home=home,
                name=config.homeServerName,
            )
            return FrontDecision(FrontAction.UNAVAILABLE, home, None, None)
        if location is None:
            log.warn(
                "Not serving {user} ({face}, from {peer}, internal network {network}): its home server {home} has "
                "no {key} endpoint in [servers.{home}] to redirect to; answered as unavailable",
                user=user,
                face=face,
                peer=peer,
                network=str(network),
                home=home,
                key=FACES[face],
            )
            return FrontDecision(FrontAction.UNAVAILABLE, home, None, network)
        log.info(
            "Redirecting {user} ({face}, from {peer}) to its home server {home} at {location}: internal network "
            "{network}",
            user=user,
            face=face,
            peer=peer,
            home=home,
            location=str(location),
            network=str(network),
        )
        return FrontDecision(FrontAction.REDIRECT, home, location, network)

    return locator.homeOf(user).addCallback(decide)
