"""
Tests for L{imgateway.gateway}: the order in which the gateway's services
stop, and how its stores are opened.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, cast

from attrs import evolve
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from imgateway.config import DEFAULT_SQLITE_CACHE_KIB, AuthConfig, GatewayConfig, HomeConfig, RouterConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import PersistenceFailed, ServiceUnavailable, UserOffline
from imgateway.core.events import Message
from imgateway.core.records import AccountRecord
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.gateway import Gateway, NoHomeServer, OrderedMultiService, assembleGateway, makeGatewayService
from imgateway.home.store import SQLiteHomeStore
from imgateway.interfaces import IGateway, IProtocolAdapter, ISession
from imgateway.router.locator import DirectoryHomeLocator
from imgateway.sqlite import Durability
from imgateway.testing import MemoryDirectory, MemoryHomeStore, MemoryLinkRoutes, RecordingSessionClient
from tests.test_router import GHOST, REMOTE as ROMEO, RecordingRoute

ALICE = Address.fromString("alice@corp.example")


class _Recorder(Service):
    """
    A service that records when it is told to stop, and stops when its test
    says so.

    @ivar stopping: The L{Deferred} its C{stopService} returned, or C{None}.
    """

    def __init__(self, name: str, told: list[str], hold: bool = False, error: bool = False) -> None:
        self.setName(name)
        self._told = told
        self._hold = hold
        self._error = error
        self.stopping: Deferred[None] | None = None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._told.append(str(self.name))
        if self._error:
            return fail(RuntimeError(f"{self.name} could not stop"))
        if self._hold:
            self.stopping = Deferred()
            return self.stopping
        return None


class OrderedMultiServiceTests(SynchronousTestCase):
    """
    L{OrderedMultiService} stops its children one at a time, last added
    first.
    """

    def test_stopsInTurn(self) -> None:
        """
        Each child is told to stop only once the one added after it has
        finished stopping; the service's own stop fires after the first
        child's.
        """
        told: list[str] = []
        top = OrderedMultiService()
        first = _Recorder("first", told, hold=True)
        first.setServiceParent(top)
        _Recorder("second", told).setServiceParent(top)
        last = _Recorder("last", told, hold=True)
        last.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual(told, ["last"])
        self.assertNoResult(stopped)
        assert last.stopping is not None
        last.stopping.callback(None)
        self.assertEqual(told, ["last", "second", "first"])
        self.assertNoResult(stopped)
        assert first.stopping is not None
        first.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(top.running)

    def test_failedStopLogged(self) -> None:
        """
        A child whose stop fails is logged, and the children before it are
        stopped all the same.
        """
        told: list[str] = []
        top = OrderedMultiService()
        _Recorder("first", told).setServiceParent(top)
        _Recorder("broken", told, error=True).setServiceParent(top)
        top.startService()
        self.successResultOf(top.stopService())
        self.assertEqual(told, ["broken", "first"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


@implementer(IProtocolAdapter)
class _HeldAdapter:
    """
    A protocol adapter whose service stops only when its test says so.
    """

    name = "held"
    description = "a face that takes its time to stop"

    def __init__(self) -> None:
        self.told: list[str] = []
        self.service = _Recorder("held", self.told, hold=True)

    def parseConfig(self, table: object, reactor: object) -> object:
        return None

    def makeService(self, gateway: IGateway, config: object) -> Service:
        return self.service


class GatewayServiceTests(TestCase):
    """
    The service of L{makeGatewayService}, on real SQLite files.
    """

    def makeGateway(
        self, durability: Durability = Durability.PROCESS, sqliteCacheKiB: int = DEFAULT_SQLITE_CACHE_KIB
    ) -> tuple[Gateway, MultiService, _HeldAdapter]:
        """
        Build a gateway serving C{corp.example} in a new folder, with the
        C{held} face.
        """
        folder = FilePath(os.path.abspath(self.mktemp()))
        config = GatewayConfig(
            path=folder.child("imgateway.toml"),
            domain="corp.example",
            dataDir=folder.child("data"),
            homeServerName="hs1",
            home=HomeConfig(),
            auth=AuthConfig(scramIterations=4096),
            adapters={"held": None},
            durability=durability,
            sqliteCacheKiB=sqliteCacheKiB,
        )
        from twisted.internet import reactor

        adapter = _HeldAdapter()
        gateway, service = makeGatewayService(config, reactor, {"held": adapter})
        return gateway, cast(MultiService, service), adapter

    async def test_durability(self) -> None:
        """
        Both stores are opened with the configured L{Durability}.
        """
        for durability in Durability:
            gateway, service, adapter = self.makeGateway(durability)
            directory = cast(SQLiteDirectory, gateway.directory)
            homeStore = cast(SQLiteHomeStore, gateway.homeStore)
            self.assertEqual(
                (directory.database.durability, homeStore.database.durability), (durability, durability)
            )
            await directory.close()
            await homeStore.close()

    async def test_sqliteCacheKiB(self) -> None:
        """
        Both stores' connections keep at most C{[gateway] sqlite_cache_kib}
        KiB of their files' pages (SQLite's C{cache_size}, negative: in
        KiB); 256 KiB by default.
        """
        self.assertEqual(DEFAULT_SQLITE_CACHE_KIB, 256)
        for kib in (DEFAULT_SQLITE_CACHE_KIB, 2000):
            gateway, service, adapter = self.makeGateway(sqliteCacheKiB=kib)
            directory = cast(SQLiteDirectory, gateway.directory)
            homeStore = cast(SQLiteHomeStore, gateway.homeStore)
            sizes = [
                await database.read(lambda cursor: cursor.execute("PRAGMA cache_size").fetchone()[0])
                for database in (directory.database, homeStore.database)
            ]
            self.assertEqual(sizes, [-kib, -kib])
            await directory.close()
            await homeStore.close()

    async def test_stopOrder(self) -> None:
        """
        On stop the faces go first; the home server ends its sessions only
        once they have stopped; the stores close only after that, and take
        writes until then.
        """
        gateway, service, adapter = self.makeGateway()
        databases = [
            cast(SQLiteDirectory, gateway.directory).database,
            cast(SQLiteHomeStore, gateway.homeStore).database,
        ]
        service.startService()
        client = RecordingSessionClient()
        await gateway.homeServer.openSession(ALICE, client)
        stopped: Deferred[Any] = service.stopService()
        self.assertEqual(adapter.told, ["held"])
        self.assertEqual(client.closed, [])
        for database in databases:
            await database.write(_touch)
        self.assertFalse(stopped.called)

        assert adapter.service.stopping is not None
        adapter.service.stopping.callback(None)
        self.assertEqual(client.closed, ["shutdown"])
        await stopped
        for database in databases:
            with self.assertRaises(PersistenceFailed):
                await database.write(_touch)


class RouterOnlyServiceTests(TestCase):
    """
    The service of a router-only process, on a real SQLite directory.
    """

    async def test_startsAndStops(self) -> None:
        """
        A router-only process opens the directory and no home store (no
        C{home-NAME.sqlite3} file), starts, routes, and stops, closing the
        directory.
        """
        from twisted.internet import reactor

        folder = FilePath(os.path.abspath(self.mktemp()))
        config = evolve(
            _topology("router", router=ROUTER, hs1=HOME),
            path=folder.child("imgateway.toml"),
            dataDir=folder.child("data"),
        )
        gateway, service = makeGatewayService(config, reactor, {})
        service.startService()
        with self.assertRaises(UserOffline):  # no such account yet
            await gateway.router.deliver(Message(ROMEO, ALICE, "hi"))
        await service.stopService()
        self.assertEqual(sorted(folder.child("data").listdir()), ["auth-secret", "directory.sqlite3"])
        with self.assertRaises(PersistenceFailed):
            await gateway.directory.getAccount(ALICE)


def _touch(cursor: sqlite3.Cursor) -> None:
    """
    A write that changes nothing in the file (a table of the connection's
    own).
    """
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS touched (x INTEGER)")
    cursor.execute("INSERT INTO temp.touched (x) VALUES (1)")


def _topology(name: str, **servers: frozenset[str]) -> GatewayConfig:
    """
    A configuration of C{corp.example} for the process C{name}, among the
    given servers and their roles.
    """
    return GatewayConfig(
        path=FilePath("memory.toml"),
        domain="corp.example",
        dataDir=FilePath("memory"),
        homeServerName=name,
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        router=RouterConfig(directoryCacheSeconds=12.0),
        servers={n: ServerConfig(n, roles) for n, roles in servers.items()},
    )


def _inline(f: Any, *args: object) -> Deferred[Any]:
    return succeed(f(*args))


HOME, ROUTER, BOTH = frozenset({"home"}), frozenset({"router"}), frozenset({"home", "router"})
CAROL = Address.fromString("carol@corp.example")


class RolesTests(SynchronousTestCase):
    """
    A process is assembled from its roles: a home server only with the
    C{"home"} role; the locator and the link routes wired in the router.
    """

    def assemble(self, config: GatewayConfig, homeStore: MemoryHomeStore | None = None) -> Gateway:
        self.directory = MemoryDirectory(
            [AccountRecord(ALICE, "hs1", "", True, "{}"), AccountRecord(CAROL, "hs2", "", True, "{}")]
        )
        return assembleGateway(
            config, Clock(), self.directory, homeStore, runInThread=_inline, secret=b"s", adapters={}
        )

    def test_routerOnly(self) -> None:
        """
        A router-only process has no home server nor home store: asking
        for them says so clearly; it opens no sessions; it routes every
        user to its home over the links (until there are links, a message
        gets the uniform 480, as for an unknown user), and answers for
        unknown users as a home server does.
        """
        gateway = self.assemble(_topology("router", router=ROUTER, hs1=HOME, hs2=HOME))
        with self.assertRaises(NoHomeServer) as raised:
            gateway.homeServer
        self.assertIn("router has no home server: its roles are router", str(raised.exception))
        self.assertIsNone(getattr(gateway, "homeServer", None))
        self.assertRaises(NoHomeServer, lambda: gateway.homeStore)
        self.failureResultOf(
            gateway.portal.realm.requestAvatar(b"alice@corp.example", RecordingSessionClient(), ISession),
            ServiceUnavailable,
        )
        router = gateway.router
        self.failureResultOf(router.deliver(Message(ROMEO, ALICE, "hi")), UserOffline)
        self.failureResultOf(router.deliver(Message(ROMEO, GHOST, "hi")), UserOffline)
        hs1, hs2 = RecordingRoute(), RecordingRoute()
        router.linkRoutes = MemoryLinkRoutes(servers={"hs1": hs1, "hs2": hs2})
        self.successResultOf(router.deliver(Message(ROMEO, ALICE, "hi")))
        self.successResultOf(router.deliver(Message(ROMEO, CAROL, "hi")))
        self.assertEqual(([e.recipient for e in hs1.events], [e.recipient for e in hs2.events]), ([ALICE], [CAROL]))

    def test_homeAmongServers(self) -> None:
        """
        A home server of a domain with many servers shares a directory
        locator, timed by C{directory_cache_seconds}, with its router.
        """
        gateway = self.assemble(_topology("hs1", hs1=BOTH, hs2=HOME), MemoryHomeStore())
        locator = gateway.locator
        assert isinstance(locator, DirectoryHomeLocator)
        self.assertEqual(locator.lifetime, 12.0)
        self.assertIs(gateway.homeServer.locator, locator)
        self.assertIs(gateway.router.locator, locator)
        self.assertIsNone(gateway.router.linkRoutes)
        self.failureResultOf(gateway.router.deliver(Message(ALICE, CAROL, "hi")), UserOffline)

    def test_singleHost(self) -> None:
        """
        A single-host gateway (no C{[servers]}) has a home server and no
        locator: every user of the domain is homed here, as before.
        """
        gateway = self.assemble(_topology("hs1"), MemoryHomeStore())
        self.assertIsNone(gateway.locator)
        self.assertIsNone(gateway.homeServer.locator)
        self.assertIsNone(gateway.router.locator)
        self.failureResultOf(gateway.router.deliver(Message(ROMEO, CAROL, "hi")), UserOffline)
