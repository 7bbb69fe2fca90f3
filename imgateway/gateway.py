# -*- test-case-name: tests.test_gateway,tests.test_plugins,tests.e2e.test_store_durability -*-
"""
The running gateway: one object holding the stores, the home server, the
router and the portal, handed to every protocol adapter (L{IGateway}), and
the service tree that starts and stops them in order.

What a process runs comes from its roles (C{config.roles}): a home server
(with its store) only when C{"home"} is among them; a router-only process
has neither, and routes every event it is given (L{Router}). When the
domain has many servers (C{[servers]} tables), the router and the home
server find users' homes through a L{DirectoryHomeLocator}; the routes over
server links (L{ILinkRoutes}) plug into C{router.linkRoutes}.

The tree starts the stores, the home server, then the faces; it stops them
the other way round, each stage only once the one before has finished: the
faces stop accepting and say goodbye, the home server finishes (or answers
with an error) the work it had taken, and only then are the stores closed,
once every write queued for them is committed.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import Factory, define
from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway import __version__
from imgateway.auth.checkers import Authenticator, PasswordChecker, SASLAuthenticatedChecker, makePortal
from imgateway.config import GatewayConfig
from imgateway.core.errors import ImgatewayError, ServiceUnavailable
from imgateway.core.throttle import ConnectionLimiter, LoginThrottle
from imgateway.home.server import HomeServer, HomeServerService
from imgateway.interfaces import (
    IDirectory,
    IGateway,
    IHealthCheck,
    IHomeLocator,
    IHomeStore,
    ILinkRoutes,
    IProtocolAdapter,
)
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.router.router import Router
from imgateway.secretfile import loadSecret as _loadSecret
from imgateway.status.metrics import GatewayMetrics

__all__ = ["Gateway", "NoHomeServer", "OrderedMultiService", "addLinks", "makeGatewayService"]

log = Logger()


class NoHomeServer(ImgatewayError, AttributeError):
    """
    This process has no home server (its roles do not include C{"home"}):
    what asked for it must route instead. An L{AttributeError}, so that
    C{getattr(gateway, "homeServer", None)} is C{None} for such a process.
    """


@implementer(IGateway)
@define
class Gateway:
    """
    See L{IGateway}.

    @ivar homeServer: This process's home server; reading it in a process
        without one raises L{NoHomeServer}.
    @ivar homeStore: Its store; reading it in a process without a home
        server raises L{NoHomeServer}.
    @ivar locator: Where the domain's users are homed, or C{None} for a
        single-host gateway (every user is homed here).
    @ivar proxy: A router's L{imgateway.router.proxy.ProxyHomeServer}
        (set with its links, L{addLinks}), or C{None}.
    @ivar metrics: What the gateway counts (C{/metrics} of C{[status]}).
    @ivar healthChecks: What C{/healthz} of C{[status]} asks.
    """

    config: GatewayConfig
    domain: str
    reactor: Any
    clock: IReactorTime
    _homeServer: HomeServer | None
    router: Router
    directory: IDirectory
    _homeStore: IHomeStore | None
    portal: Portal
    authenticator: Authenticator
    dataDir: FilePath[str]
    adapters: dict[str, IProtocolAdapter]
    connectionLimiter: ConnectionLimiter
    loginThrottle: LoginThrottle
    locator: IHomeLocator | None = None
    proxy: Any = None
    metrics: GatewayMetrics = Factory(GatewayMetrics)
    healthChecks: list[IHealthCheck] = Factory(list)

    @property
    def homeServer(self) -> HomeServer:
        if self._homeServer is None:
            raise self._noHome()
        return self._homeServer

    @homeServer.setter
    def homeServer(self, homeServer: HomeServer) -> None:
        self._homeServer = homeServer

    @property
    def homeStore(self) -> IHomeStore:
        if self._homeStore is None:
            raise self._noHome()
        return self._homeStore

    def _noHome(self) -> NoHomeServer:
        name = self.config.homeServerName
        return NoHomeServer(
            f"{name} has no home server: its roles are {', '.join(sorted(self.config.roles))}"
            f" (see its [servers.{name}] table)"
        )


class OrderedMultiService(MultiService):
    """
    A L{MultiService} that stops its children one after another, in the
    reverse of the order they were added (and started) in: each child is
    told to stop only once the one added after it has finished stopping
    (the L{Deferred} its C{stopService} returned has fired). Twisted's
    L{MultiService} tells them all at once.

    A child whose stop fails is logged, and the next one is stopped all the
    same.
    """

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in turn, last added first.

        @return: Fires once the first child added has stopped.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stopInTurn(list(reversed(list(self)))))

    async def _stopInTurn(self, services: list[IService]) -> None:
        for service in services:
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                log.failure("Stopping {service} failed; stopping the rest", service=service)


class _StoresService(Service):
    """
    Closes the stores when the gateway stops (after everything using them:
    once C{after}, the home server's L{HomeServer.drain}, has fired); calls
    C{starting} (if given) when the gateway starts (an LDAP directory
    connects then).
    """

    def __init__(
        self,
        *stores: IDirectory | IHomeStore | None,
        after: Callable[[], Deferred[None]],
        starting: Callable[[], None] | None = None,
    ) -> None:
        self._stores = stores
        self._after = after
        self._starting = starting

    def startService(self) -> None:
        super().startService()
        if self._starting is not None:
            self._starting()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self._after().addCallback(
            lambda _: DeferredList([s.close() for s in self._stores if s is not None])
        )


class _Announcer(Service):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def startService(self) -> None:
        super().startService()
        g = self._gateway
        log.info(
            "imgateway {version} serving {domain} ({name}: {roles}, data in {data}); adapters: {adapters}",
            version=__version__,
            domain=g.domain,
            name=g.config.homeServerName,
            roles=" and ".join(sorted(g.config.roles)),
            data=g.dataDir.path,
            adapters=", ".join(g.adapters) or "none",
        )


@implementer(IRealm)
class _RouterRealm:
    """
    The realm of a process without a home server: it opens no sessions
    (the router's faces will redirect or proxy their clients).
    """

    def requestAvatar(self, avatarId: object, mind: object, *interfaces: object) -> Deferred[Any]:
        return fail(ServiceUnavailable("this server is a router: it has no sessions of its own"))


def assembleGateway(
    config: GatewayConfig,
    reactor: Any,
    directory: IDirectory,
    homeStore: IHomeStore | None,
    runInThread: Callable[..., Deferred[Any]],
    secret: bytes,
    adapters: dict[str, IProtocolAdapter],
    clock: IReactorTime | None = None,
    linkRoutes: ILinkRoutes | None = None,
) -> Gateway:
    """
    Wire a gateway around open stores: the router, the home server for the
    configured domain (when this process has the C{"home"} role), the
    authenticator and the portal.

    @param homeStore: The home server's store; C{None} for a process
        without the C{"home"} role.
    @param runInThread: Runs slow password hashing off the reactor thread.
    @param secret: Keys the made-up SCRAM salts of unknown users.
    @param clock: Times leases and timeouts; C{reactor} when C{None}.
    @param linkRoutes: The routes over server links, or C{None} (the
        other servers of the domain are then unreachable).
    @raise ValueError: If a home server has no store.
    """
    clock = clock if clock is not None else reactor
    # Where users are homed matters only when the domain has other servers.
    locator = (
        DirectoryHomeLocator(directory, clock, config.router.directoryCacheSeconds) if config.servers else None
    )
    # A process that is no router sends other domains' events through the
    # routers of its domain, which hold the routes, certificates and
    # federation that reach them.
    domainRouters = (
        [s.name for s in config.servers.values() if "router" in s.roles and s.link is not None]
        if "router" not in config.roles
        else []
    )
    router = Router(
        domain=config.domain,
        serverName=config.homeServerName,
        locator=locator,
        linkRoutes=linkRoutes,
        domainRouters=domainRouters,
    )
    home = None
    if "home" in config.roles:
        if homeStore is None:
            raise ValueError("a home server needs a home store")
        home = HomeServer(
            config.homeServerName, config.domain, directory, homeStore, router, clock, config.home, locator
        )
        router.addRoute(config.domain, home, local=True)
    metrics = GatewayMetrics()
    if home is not None:
        home.metrics = metrics
    loginThrottle = LoginThrottle(config.limits, clock)
    loginThrottle.countLimit = metrics.limitHit
    authenticator = Authenticator(
        directory,
        config.domain,
        runInThread,
        secret=secret,
        fakeIterations=config.auth.scramIterations,
        maxConcurrent=config.auth.passwordWorkers,
        maxQueued=config.auth.passwordQueue,
        throttle=loginThrottle,
    )
    authenticator.metrics = metrics
    return Gateway(
        config=config,
        domain=config.domain,
        reactor=reactor,
        clock=clock,
        homeServer=home,
        router=router,
        directory=directory,
        homeStore=homeStore if home is not None else None,
        portal=(
            makePortal(home, authenticator)
            if home is not None
            else Portal(
                _RouterRealm(), [PasswordChecker(authenticator), SASLAuthenticatedChecker(authenticator)]
            )
        ),
        authenticator=authenticator,
        dataDir=config.dataDir,
        adapters=adapters,
        connectionLimiter=_counting(ConnectionLimiter(config.limits, clock), metrics),
        loginThrottle=loginThrottle,
        locator=locator,
        metrics=metrics,
    )


def _counting(limiter: ConnectionLimiter, metrics: GatewayMetrics) -> ConnectionLimiter:
    limiter.countLimit = metrics.limitHit
    return limiter


def makeGatewayService(
    config: GatewayConfig,
    reactor: Any,
    adapters: dict[str, IProtocolAdapter] | None = None,
) -> tuple[Gateway, IService]:
    """
    Build the gateway described by C{config}.

    @param reactor: The reactor (an L{IReactorCore}, L{IReactorTime} and
        L{IReactorThreads}).
    @param adapters: Adapter name to adapter; the installed plugins when
        C{None}. Every adapter named in C{config.adapters} must be here.
    @return: The gateway and its service (not started).
    """
    from imgateway.directory.sqlite import MIGRATIONS as DIRECTORY_MIGRATIONS, SQLiteDirectory
    from imgateway.home.store import MIGRATIONS as HOME_MIGRATIONS, SQLiteHomeStore
    from imgateway.sqlite import openDatabaseNow

    if adapters is None:
        from imgateway.plugins import adapterPlugins

        adapters = {a.name: a for a in adapterPlugins()}

    dataDir = config.dataDir
    if not dataDir.exists():
        dataDir.makedirs()
        dataDir.chmod(0o700)
    durability = config.durability
    directory: IDirectory
    starting: Callable[[], None] | None = None
    ldapConfig = config.directory.ldap
    if ldapConfig is not None:
        from imgateway.directory.ldap import LDAPDirectory

        ldapDirectory = LDAPDirectory(reactor, ldapConfig)
        directory, starting = ldapDirectory, ldapDirectory.start
    else:
        directory = SQLiteDirectory(
            openDatabaseNow(
                reactor,
                dataDir.child("directory.sqlite3"),
                DIRECTORY_MIGRATIONS,
                durability=durability,
                cacheKiB=config.sqliteCacheKiB,
            ),
            reactor,
        )
    homeStore = None
    if "home" in config.roles:
        homeStore = SQLiteHomeStore(
            openDatabaseNow(
                reactor,
                dataDir.child(f"home-{config.homeServerName}.sqlite3"),
                HOME_MIGRATIONS,
                durability=durability,
                cacheKiB=config.sqliteCacheKiB,
            )
        )

    gateway = assembleGateway(
        config,
        reactor,
        directory,
        homeStore,
        runInThread=lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
        secret=_loadSecret(dataDir.child("auth-secret")),
        adapters={name: adapters[name] for name in config.adapters},
    )
    enabled = gateway.adapters
    home = gateway._homeServer

    # Stopped last to first, each once the one after it has stopped: the
    # faces (all at once), then the home server (which drains: finishes the
    # work it had taken), then the stores.
    top = OrderedMultiService()
    _StoresService(
        directory, homeStore, after=home.drain if home is not None else lambda: succeed(None), starting=starting
    ).setServiceParent(top)
    if home is not None:
        HomeServerService(home).setServiceParent(top)
    addLinks(top, gateway, reactor)
    faces = MultiService()
    faces.setName("faces")
    for name, adapter in enabled.items():
        service = adapter.makeService(gateway, config.adapters[name])
        service.setName(name)
        service.setServiceParent(faces)
    faces.setServiceParent(top)
    addStatus(top, gateway, reactor)
    _Announcer(gateway).setServiceParent(top)
    # [manhole]: the reactor watchdog and the SSH console (stopped first).
    from imgateway.manhole.service import addManhole

    addManhole(top, gateway, reactor)
    return gateway, top


def addStatus(top: MultiService, gateway: Gateway, reactor: Any) -> None:
    """
    The health checks of what C{top} runs (its services that provide
    L{IHealthCheck}: listeners), of its links (its services that say how
    their links are, L{imgateway.core.linkinfo.LinkInfoSource}: also shown
    in C{/metrics}) and of the stores (SQLite: a read through the queue;
    LDAP: a connection up), and, when
    C{[status] listen} names endpoints, the status listener
    (L{imgateway.status.web}) and the reactor lag probe, under C{top}
    (stopped first).
    """
    from imgateway.core.linkinfo import findLinkSources, linkInfos
    from imgateway.status.health import SQLiteHealth, ValueHealth, findHealthChecks, linkChecks

    checks = gateway.healthChecks
    checks.extend(findHealthChecks(top))
    # Every link, of whatever kind, as its service says it is: in /healthz
    # and in imgateway_link_up alike.
    linkSources = findLinkSources(top)
    gateway.metrics.addLinkSource(lambda: linkInfos(linkSources))
    directory: Any = gateway.directory
    if hasattr(directory, "database"):
        checks.append(SQLiteHealth("directory", directory.database))
    elif hasattr(directory, "problem"):
        checks.append(ValueHealth("store", f"directory {directory.config.url}", lambda: directory.problem))
    homeStore: Any = gateway._homeStore
    if hasattr(homeStore, "database"):
        checks.append(SQLiteHealth(f"home store {gateway.config.homeServerName}", homeStore.database))
    status = gateway.config.status
    if not status.listen:
        return
    from imgateway.status.web import makeStatusService

    service = makeStatusService(
        reactor,
        status.listen,
        gateway.metrics,
        lambda: list(checks) + linkChecks(linkSources),
        gateway.clock,
        status.healthTimeout,
        status.lagInterval,
    )
    service.setName("status")
    service.setServiceParent(top)


def addLinks(top: MultiService, gateway: Gateway, reactor: Any, resolver: Any = None) -> Any:
    """
    Server links (C{docs/protocol.md} section 9), for a process with other
    C{[servers]} that take links, C{[routes]} or C{[links] listen}: the link
    listeners, and the links to the other servers and peer domains, under
    C{top} (stopped before the home server, after the faces).

    @param resolver: Resolves C{_imgw._tcp} SRV records; when C{None},
        one asking C{[links] dns_servers}
        (L{imgateway.net.srv.serversResolver}), or the system's
        (L{imgateway.net.srv.systemResolver}) if none are configured.
    @return: The L{imgateway.router.link.LinkService} (its routes become the
        router's C{linkRoutes}), or C{None} for a single-host gateway.
    @raise ConfigError: If the link certificate files are unusable, or
        links are configured without one (and without
        C{allow_plaintext_loopback}).
    """
    config = gateway.config
    peers = [s for s in config.servers.values() if s.link is not None and s.name != config.homeServerName]
    if not peers and not config.routes and not config.links.listen:
        return None
    from imgateway.net.srv import serversResolver, systemResolver
    from imgateway.router.link import makeLinkService

    if resolver is None:
        servers = [(s.host, s.port) for s in config.links.dnsServers]
        resolver = (lambda: serversResolver(reactor, servers)) if servers else (lambda: systemResolver(reactor))

    locator = gateway.locator
    if locator is None:
        locator = DirectoryHomeLocator(gateway.directory, gateway.clock, config.router.directoryCacheSeconds)
    links = makeLinkService(
        config,
        reactor,
        gateway.router,
        locator,
        resolver=resolver,
        clock=gateway.clock,
    )
    links.service.setName("links")
    links.service.setServiceParent(top)
    _watchLinks(gateway, links)
    gateway.router.linkRoutes = links.routes
    from imgateway.router.proxy import installProxy

    gateway.proxy = installProxy(gateway, links, locator)
    return links


def _watchLinks(gateway: Gateway, links: Any) -> None:
    """
    Count the links' refusals in C{gateway.metrics}. (Their states reach
    C{/healthz} and C{/metrics} through their C{linkInfo}: L{addStatus}.)
    """
    links.routes.metrics = links.receiver.metrics = links.acceptor.metrics = gateway.metrics
