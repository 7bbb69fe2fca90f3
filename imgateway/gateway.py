# -*- test-case-name: tests.test_gateway,tests.test_plugins,tests.e2e.test_store_durability -*-
"""
The running gateway: one object holding the stores, the home server, the
router and the portal, handed to every protocol adapter (L{IGateway}), and
the service tree that starts and stops them in order.

The tree starts the stores, the home server, then the faces; it stops them
the other way round, each stage only once the one before has finished: the
faces stop accepting and say goodbye, the home server finishes (or answers
with an error) the work it had taken, and only then are the stores closed,
once every write queued for them is committed.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define
from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway import __version__
from imgateway.auth.checkers import Authenticator, makePortal
from imgateway.config import GatewayConfig
from imgateway.core.throttle import ConnectionLimiter, LoginThrottle
from imgateway.home.server import HomeServer, HomeServerService
from imgateway.interfaces import IDirectory, IGateway, IHomeStore, IProtocolAdapter
from imgateway.router.router import Router
from imgateway.secretfile import loadSecret as _loadSecret

__all__ = ["Gateway", "OrderedMultiService", "makeGatewayService"]

log = Logger()


@implementer(IGateway)
@define
class Gateway:
    """
    See L{IGateway}.
    """

    config: GatewayConfig
    domain: str
    reactor: Any
    clock: IReactorTime
    homeServer: HomeServer
    router: Router
    directory: IDirectory
    homeStore: IHomeStore
    portal: Portal
    authenticator: Authenticator
    dataDir: FilePath[str]
    adapters: dict[str, IProtocolAdapter]
    connectionLimiter: ConnectionLimiter
    loginThrottle: LoginThrottle


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
    once C{after}, the home server's L{HomeServer.drain}, has fired).
    """

    def __init__(self, *stores: IDirectory | IHomeStore, after: Callable[[], Deferred[None]]) -> None:
        self._stores = stores
        self._after = after

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self._after().addCallback(lambda _: DeferredList([s.close() for s in self._stores]))


class _Announcer(Service):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def startService(self) -> None:
        super().startService()
        g = self._gateway
        log.info(
            "imgateway {version} serving {domain} (home server {name}, data in {data}); adapters: {adapters}",
            version=__version__,
            domain=g.domain,
            name=g.homeServer.name,
            data=g.dataDir.path,
            adapters=", ".join(g.adapters) or "none",
        )


def assembleGateway(
    config: GatewayConfig,
    reactor: Any,
    directory: IDirectory,
    homeStore: IHomeStore,
    runInThread: Callable[..., Deferred[Any]],
    secret: bytes,
    adapters: dict[str, IProtocolAdapter],
    clock: IReactorTime | None = None,
) -> Gateway:
    """
    Wire a gateway around open stores: the router, the home server for the
    configured domain, the authenticator and the portal.

    @param runInThread: Runs slow password hashing off the reactor thread.
    @param secret: Keys the made-up SCRAM salts of unknown users.
    @param clock: Times leases and timeouts; C{reactor} when C{None}.
    """
    clock = clock if clock is not None else reactor
    router = Router()
    home = HomeServer(config.homeServerName, config.domain, directory, homeStore, router, clock, config.home)
    router.addRoute(config.domain, home, local=True)
    loginThrottle = LoginThrottle(config.limits, clock)
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
    return Gateway(
        config=config,
        domain=config.domain,
        reactor=reactor,
        clock=clock,
        homeServer=home,
        router=router,
        directory=directory,
        homeStore=homeStore,
        portal=makePortal(home, authenticator),
        authenticator=authenticator,
        dataDir=config.dataDir,
        adapters=adapters,
        connectionLimiter=ConnectionLimiter(config.limits, clock),
        loginThrottle=loginThrottle,
    )


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
    directory = SQLiteDirectory(
        openDatabaseNow(
            reactor, dataDir.child("directory.sqlite3"), DIRECTORY_MIGRATIONS, durability=durability
        ),
        reactor,
    )
    homeStore = SQLiteHomeStore(
        openDatabaseNow(
            reactor,
            dataDir.child(f"home-{config.homeServerName}.sqlite3"),
            HOME_MIGRATIONS,
            durability=durability,
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
    home = gateway.homeServer

    # Stopped last to first, each once the one after it has stopped: the
    # faces (all at once), then the home server (which drains: finishes the
    # work it had taken), then the stores.
    top = OrderedMultiService()
    _StoresService(directory, homeStore, after=home.drain).setServiceParent(top)
    HomeServerService(home).setServiceParent(top)
    faces = MultiService()
    faces.setName("faces")
    for name, adapter in enabled.items():
        service = adapter.makeService(gateway, config.adapters[name])
        service.setName(name)
        service.setServiceParent(faces)
    faces.setServiceParent(top)
    _Announcer(gateway).setServiceParent(top)
    return gateway, top
