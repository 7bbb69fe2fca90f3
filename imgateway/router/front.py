# -*- test-case-name: tests.test_router_front,tests.test_xmpp_c2s,tests.test_irc_face,tests.e2e.test_router_faces,tests.e2e.test_irc_router -*-
"""
What a client face does with a client that has just authenticated, in a
domain with several servers (docs/operations.md, "Router faces"): serve it
here (its home server is this process), send it to its home server (a
client of a router from C{[router] internal_networks}, or any client that
reached a home server that is not its own), or, for any other client of a
router, proxy its session to the home server over the server link
(L{imgateway.router.proxy}); L{openFrontSession} opens the session a
decision calls for. A single-host gateway serves everyone. A face that
cannot redirect (IRC: its clients seldom follow a redirect) proxies
instead, from any network, wherever this process can proxy; where it
cannot, the client is answered as unavailable.

The decision is made only after authentication, so that nothing about an
account shows to someone who does not hold its credentials, and it is
logged here, in one place for every face.
"""

from __future__ import annotations

from enum import Enum
from typing import Any
from ipaddress import IPv4Network, IPv6Network

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from imgateway.config import GatewayConfig, HostPort, ServerConfig
from imgateway.core.address import Address
from imgateway.auth.checkers import SASLAuthenticated
from imgateway.interfaces import IGateway, IHomeLocator, ISession, ISessionClient
from imgateway.net.addresses import networkOf
from imgateway.router.locator import homeOfAuthenticated

__all__ = [
    "FACES",
    "NOT_HOMED_HERE_TEXT",
    "SERVE",
    "UNAVAILABLE_TEXT",
    "FrontAction",
    "FrontDecision",
    "decideFront",
    "openFrontSession",
]

log = Logger()

#: What a client that cannot be served here is told (native C{503} reason,
#: XMPP C{<text/>}).
UNAVAILABLE_TEXT = "Your home server is not served here to your network"

#: What a client of a face that cannot redirect is told when it reached a
#: home server that is not its own and this process cannot proxy it.
NOT_HOMED_HERE_TEXT = "Your home server is another server of this domain: connect to the domain's router"

#: The faces, to the C{[servers.NAME]} key naming where that face of a home
#: server is reached, or C{None} for a face that cannot redirect (its
#: clients are proxied, from any network, or refused).
FACES: dict[str, str | None] = {"native": "native", "xmpp": "xmpp", "irc": None}


class FrontAction(Enum):
    """
    What a face does with an authenticated client.
    """

    #: Serve it here, as a single-host gateway does.
    SERVE = "serve"
    #: Send it to its home server (native C{302}, XMPP C{<see-other-host/>}):
    #: a router's client from an internal network, or any client of a home
    #: server that is not the user's.
    REDIRECT = "redirect"
    #: Serve it here through a session on its home server, over the link
    #: (L{imgateway.router.proxy}): a client outside the internal networks.
    PROXY = "proxy"
    #: Tell it it cannot be served here now (native C{503}, XMPP
    #: C{<policy-violation/>}) and close: a home server with no endpoint for
    #: this face, or none this router can reach.
    UNAVAILABLE = "unavailable"


@frozen
class FrontDecision:
    """
    A face's decision about one authenticated client.

    @ivar action: What to do.
    @ivar home: The user's home server, when it is another one.
    @ivar location: Where to redirect the client (L{FrontAction.REDIRECT}).
    @ivar network: The internal network the client is in, if any (a
        router's redirect, or a router's decision for a face that does not
        redirect).
    """

    action: FrontAction
    home: str | None = None
    location: HostPort | None = None
    network: IPv4Network | IPv6Network | None = None


#: Serve here.
SERVE = FrontDecision(FrontAction.SERVE)


def decideFront(
    config: GatewayConfig,
    locator: IHomeLocator | None,
    user: Address,
    peer: object,
    face: str,
    proxying: bool = False,
) -> Deferred[FrontDecision]:
    """
    Decide what the face C{face} does with C{user}, just authenticated from
    C{peer}, and log the decision unless it is to serve the user here.

    A user is served here only if the directory homes it on this process,
    and this process has a home server (L{homeOfAuthenticated}: a
    remembered answer that the user has no home is read again). A process
    without the role C{router} sends a user homed elsewhere (the
    directory's answer, read again) to its home server, whatever the
    client's network.

    @param locator: The gateway's locator (C{None} for a single-host
        gateway, whose users are all served here).
    @param face: A key of L{FACES}; a face that does not redirect (C{irc})
        has its client proxied wherever another face's would be redirected
        or proxied, if this process can proxy to the user's home server,
        and answered as unavailable otherwise.
    @param peer: The client's address (a transport's C{getPeer()}).
    @param proxying: Whether this process can proxy sessions (the
        gateway's C{proxy}); without it, an external client is answered as
        unavailable.
    @return: Fires with the decision; fails as C{locator.homeOf} does.
    """
    if locator is None or not config.servers:
        return succeed(SERVE)

    def decide(home: str | None) -> FrontDecision:
        if home is not None and home == config.homeServerName and "home" in config.roles:
            return SERVE
        if home is None or home == config.homeServerName:
            log.warn(
                "Not serving {user} ({face}, from {peer}): {why}; answered as unavailable",
                user=user,
                face=face,
                peer=peer,
                why=(
                    "the directory names no home server for it (its account was disabled or removed as it logged in)"
                    if home is None
                    else f"the directory names {home} as its home server, and {home} has none (its roles are "
                    f"{', '.join(sorted(config.roles))})"
                ),
            )
            return FrontDecision(FrontAction.UNAVAILABLE, home)
        server = config.servers.get(home)
        key = FACES[face]
        if key is None:
            return proxyInstead(home, server)
        location: HostPort | None = getattr(server, key) if server is not None else None
        if "router" not in config.roles:
            # A home server's own port: serving here would open a session
            # on a store that does not hold the user's data. The client
            # reached this home server's port, so it can reach the others':
            # whatever its network, it is sent there.
            if location is None:
                log.warn(
                    "Not serving {user} ({face}, from {peer}): its home server is {home}, not {name}, and {home} "
                    "has no {key} endpoint in [servers.{home}] to redirect to; answered as unavailable",
                    user=user,
                    face=face,
                    peer=peer,
                    home=home,
                    name=config.homeServerName,
                    key=FACES[face],
                )
                return FrontDecision(FrontAction.UNAVAILABLE, home)
            log.info(
                "Redirecting {user} ({face}, from {peer}) to its home server {home} at {location}: the client "
                "reached {name}, a home server that is not its own",
                user=user,
                face=face,
                peer=peer,
                home=home,
                location=str(location),
                name=config.homeServerName,
            )
            return FrontDecision(FrontAction.REDIRECT, home, location)
        network = networkOf(peer, config.router.internalNetworks)
        if network is None:
            if proxying and server is not None and server.link is not None:
                log.info(
                    "Proxying {user} ({face}, from {peer}) to its home server {home}: the client is in none of "
                    "[router] internal_networks",
                    user=user,
                    face=face,
                    peer=peer,
                    home=home,
                )
                return FrontDecision(FrontAction.PROXY, home)
            log.warn(
                "Not serving {user} ({face}, from {peer}): the client is in none of [router] internal_networks, "
                "and its home server {home} cannot be reached over a link to proxy its session (no [links], or no "
                "link in [servers.{home}]); answered as unavailable",
                user=user,
                face=face,
                peer=peer,
                home=home,
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

    def proxyInstead(home: str, server: ServerConfig | None) -> FrontDecision:
        # A face whose clients would not follow a redirect: proxied from
        # any network where this process can proxy, else refused.
        network = networkOf(peer, config.router.internalNetworks) if "router" in config.roles else None
        if "router" not in config.roles:
            rule = f"the client reached {config.homeServerName}, a home server that is not its own"
        elif network is not None:
            rule = f"internal network {network}"
        else:
            rule = "the client is in none of [router] internal_networks"
        if proxying and server is not None and server.link is not None:
            log.info(
                "Proxying {user} ({face}, from {peer}) to its home server {home}: {rule}, and the {face} face does "
                "not redirect",
                user=user,
                face=face,
                peer=peer,
                home=home,
                rule=rule,
            )
            return FrontDecision(FrontAction.PROXY, home, None, network)
        if "router" in config.roles:
            why = (
                f"its home server {home} cannot be reached over a link to proxy its session (no [links], or no link "
                f"in [servers.{home}])"
            )
        else:
            why = (
                f"{config.homeServerName} proxies sessions only with the role router (its clients connect to a "
                "router of the domain)"
            )
        log.warn(
            "Not serving {user} ({face}, from {peer}): {rule}; the {face} face does not redirect, and {why}; "
            "answered as unavailable",
            user=user,
            face=face,
            peer=peer,
            rule=rule,
            why=why,
        )
        return FrontDecision(FrontAction.UNAVAILABLE, home, None, network)

    # A router acts on the remembered answer (a proxied session's home
    # server answers 301 to an old one); a home server confirms an answer
    # that would send the user away.
    asking = None if "router" in config.roles else config.homeServerName
    return homeOfAuthenticated(locator, user, asking).addCallback(decide)


def openFrontSession(gateway: IGateway, decision: FrontDecision, user: Address, mind: ISessionClient) -> Deferred[ISession]:
    """
    Open the session a decision to serve C{user} here calls for: through
    the gateway's portal (L{FrontAction.SERVE}), or on its home server over
    the link (L{FrontAction.PROXY}, the gateway's C{proxy}).

    @param mind: The face's L{ISessionClient}; its C{sessionLabel}, if any,
        names the session.
    @return: Fires with the session; fails as the portal's login or
        L{imgateway.router.proxy.ProxyHomeServer.openSession} does.
    """
    if decision.action is FrontAction.PROXY:
        label = getattr(mind, "sessionLabel", "")
        opened: Deferred[ISession] = gateway.proxy.openSession(user, mind, label if isinstance(label, str) else "")
        return opened
    d: Deferred[Any] = gateway.portal.login(SASLAuthenticated(user), mind, ISession)

    def avatar(result: tuple[Any, ISession, Any]) -> ISession:
        return result[1]

    return d.addCallback(avatar)
