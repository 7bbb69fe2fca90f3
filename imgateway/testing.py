# -*- test-case-name: tests.test_sqlite_store,tests.test_testcerts -*-
"""
Test doubles for imgateway and its protocol adapters, as public API (as
C{treq.testing} is for treq): in-memory stores that behave exactly as the
SQLite ones do, but answer at once; and keys, certificates and PEM files
for testing TLS (see "Certificates" below).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.events import Event, Message, SubscriptionEvent
from imgateway.core.errors import (
    AccountExists,
    DeliveryStatus,
    DirectoryUnavailable,
    NoSuchAccount,
    PendingRequestsFull,
    PersistenceFailed,
    ServiceUnavailable,
)
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import (
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    ContactView,
    HomeChange,
    MoveRecord,
    PresenceRule,
    PutContact,
    RemoveContact,
    SetAccess,
    SetAuthorisation,
    UserRecords,
)
from imgateway.directory.sqlite import NoMoveUnderWay
from imgateway.interfaces import IDirectory, IHomeStore, ILinkRoutes, IPasswordDirectory, IRoute, ISessionClient

if TYPE_CHECKING:
    from imgateway.gateway import Gateway

__all__ = [
    "MemoryDirectory",
    "MemoryHomeStore",
    "MemoryLinkRoutes",
    "PasswordCheckingDirectory",
    "RecordingSessionClient",
    "addUser",
    "memoryGateway",
]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class _MemoryStore:
    """
    What the in-memory stores share: closing, and failing writes on demand.

    @ivar failWrites: Set it to make every write fail with
        L{PersistenceFailed}, changing nothing (as a full disk would).
    @ivar closed: Whether L{close} was called; every operation then fails
        with L{PersistenceFailed}, as on a closed SQLite store.
    """

    _name = "memory store"

    def __init__(self) -> None:
        self.failWrites = False
        self.closed = False

    def _read(self, result: T) -> Deferred[T]:
        if self.closed:
            return fail(PersistenceFailed(f"{self._name}: the database is closed"))
        return succeed(result)

    def _refuseWrite(self) -> PersistenceFailed | None:
        """
        @return: Why writes may not happen now, or C{None} if they may.
        """
        if self.closed:
            return PersistenceFailed(f"{self._name}: the database is closed")
        if self.failWrites:
            return PersistenceFailed(f"could not write to {self._name}: failWrites is set")
        return None

    def close(self) -> Deferred[None]:
        """
        Release the storage (nothing to release). Idempotent.
        """
        self.closed = True
        return succeed(None)


@implementer(IDirectory)
class MemoryDirectory(_MemoryStore):
    """
    An in-memory L{IDirectory} with the semantics of
    L{imgateway.directory.sqlite.SQLiteDirectory}; every L{Deferred} it
    returns has already fired.

    @ivar accounts: Address to account record; tests may read and change it.
    @ivar moves: Address to the move between home servers under way.
    """

    _name = "memory directory"

    def __init__(self, accounts: list[AccountRecord] | None = None) -> None:
        """
        @param accounts: Accounts to start with.
        """
        super().__init__()
        self.accounts: dict[Address, AccountRecord] = {}
        for record in accounts or []:
            self.accounts[record.address] = record
        self.moves: dict[Address, MoveRecord] = {}

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{IDirectory.getAccount}.
        """
        return self._read(self.accounts.get(address))

    def addAccount(self, record: AccountRecord) -> Deferred[None]:
        """
        See L{IDirectory.addAccount}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if record.address in self.accounts:
            return fail(AccountExists(f"account {record.address} exists"))
        self.accounts[record.address] = record
        return succeed(None)

    def updateAccount(
        self,
        address: Address,
        credentials: str | None = None,
        enabled: bool | None = None,
        displayName: str | None = None,
    ) -> Deferred[AccountRecord]:
        """
        See L{IDirectory.updateAccount}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        record = self.accounts.get(address)
        if record is None:
            return fail(NoSuchAccount(f"no account {address}"))
        if credentials is not None:
            record = attrs.evolve(record, credentials=credentials)
        if enabled is not None:
            record = attrs.evolve(record, enabled=enabled)
        if displayName is not None:
            record = attrs.evolve(record, displayName=displayName)
        self.accounts[address] = record
        return succeed(record)

    def listAccounts(self, domain: str | None = None) -> Deferred[list[AccountRecord]]:
        """
        See L{IDirectory.listAccounts}. The order is that of L{Address}.
        """
        return self._read(
            [
                self.accounts[address]
                for address in sorted(self.accounts)
                if domain is None or address.domain == domain
            ]
        )

    # The moves between home servers of SQLiteDirectory (imgateway.admin.move).

    def getMove(self, address: Address) -> Deferred[MoveRecord | None]:
        """
        See L{SQLiteDirectory.getMove<imgateway.directory.sqlite.SQLiteDirectory.getMove>}.
        """
        return self._read(self.moves.get(address))

    def listMoves(self) -> Deferred[list[MoveRecord]]:
        """
        See L{SQLiteDirectory.listMoves<imgateway.directory.sqlite.SQLiteDirectory.listMoves>}.
        """
        return self._read([self.moves[address] for address in sorted(self.moves)])

    def beginMove(self, address: Address, target: str) -> Deferred[MoveRecord | None]:
        """
        See L{SQLiteDirectory.beginMove<imgateway.directory.sqlite.SQLiteDirectory.beginMove>}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if address in self.moves:
            return succeed(self.moves[address])
        record = self.accounts.get(address)
        if record is None:
            return fail(NoSuchAccount(f"no account {address}"))
        if record.homeServer == target:
            return succeed(None)
        move = MoveRecord(address, record.homeServer, target, record.enabled)
        self.moves[address] = move
        self.accounts[address] = attrs.evolve(record, enabled=False)
        return succeed(move)

    def switchMove(self, address: Address) -> Deferred[None]:
        """
        See L{SQLiteDirectory.switchMove<imgateway.directory.sqlite.SQLiteDirectory.switchMove>}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if address not in self.moves:
            return fail(NoMoveUnderWay(f"no move of {address} under way"))
        self.accounts[address] = attrs.evolve(self.accounts[address], homeServer=self.moves[address].target)
        return succeed(None)

    def endMove(self, address: Address) -> Deferred[None]:
        """
        See L{SQLiteDirectory.endMove<imgateway.directory.sqlite.SQLiteDirectory.endMove>}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        move = self.moves.pop(address, None)
        if move is None:
            return fail(NoMoveUnderWay(f"no move of {address} under way"))
        self.accounts[address] = attrs.evolve(self.accounts[address], enabled=move.enabled)
        return succeed(None)


@implementer(IPasswordDirectory)
class PasswordCheckingDirectory(MemoryDirectory):
    """
    A L{MemoryDirectory} that checks passwords itself, as the LDAP
    directory does with a bind (L{IPasswordDirectory}): accounts have no
    verifiers (empty C{credentials}) unless a test gives some.

    @ivar passwords: Address to password; tests may read and change it.
    @ivar checked: The C{(address, password)} of every check, in order.
    @ivar scramAvailable: See L{IPasswordDirectory.scramAvailable}
        (C{False} unless a test says otherwise).
    @ivar unavailable: Set it to make every operation fail with
        L{DirectoryUnavailable}, as when the LDAP server is down.
    @ivar hold: Set it to keep the L{Deferred}s of password checks
        unfired (in L{held}) until the test fires them.
    """

    _name = "password-checking directory"

    def __init__(self, accounts: list[AccountRecord] | None = None) -> None:
        super().__init__(accounts)
        self.passwords: dict[Address, str] = {}
        self.checked: list[tuple[Address, str]] = []
        self.scramAvailable = False
        self.unavailable = False
        self.hold = False
        self.held: list[Deferred[AccountRecord | None]] = []

    def addUser(self, address: Address, password: str, enabled: bool = True, homeServer: str = "hs1") -> AccountRecord:
        """
        Add an account (without verifiers) and its password.

        @return: The account.
        """
        record = AccountRecord(address, homeServer, "", enabled, "")
        self.accounts[address] = record
        self.passwords[address] = password
        return record

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{IDirectory.getAccount}.
        """
        if self.unavailable:
            return fail(DirectoryUnavailable(f"{self._name} is unavailable"))
        return super().getAccount(address)

    def checkPassword(self, address: Address, password: str) -> Deferred[AccountRecord | None]:
        """
        See L{IPasswordDirectory.checkPassword}.
        """
        self.checked.append((address, password))
        if self.unavailable:
            return fail(DirectoryUnavailable(f"{self._name} is unavailable"))
        record = self.accounts.get(address)
        right = record is not None and password and self.passwords.get(address) == password
        result = record if right else None
        if self.hold:
            d: Deferred[AccountRecord | None] = Deferred()
            d.addCallback(lambda _: result)
            self.held.append(d)
            return d
        return self._read(result)


@implementer(IHomeStore)
class MemoryHomeStore(_MemoryStore):
    """
    An in-memory L{IHomeStore} with the semantics (and orders) of
    L{imgateway.home.store.SQLiteHomeStore}; every L{Deferred} it returns
    has already fired, unless the test holds them (L{hold}).

    Tests may read and change its attributes.

    @ivar contacts: Owner to (contact address to record).
    @ivar authorisations: C{(target, watcher)} to state.
    @ivar access: Owner to (entry to list); never holds L{AccessList.NONE}.
    @ivar rules: Owner to its presence rules, in order (never empty).
    @ivar hold: When true, every operation waits in L{held} until the test
        calls L{release} (as operations wait for SQLite's thread): a test
        can see what happens while writes are under way.
    @ivar held: The operations waiting, in order.
    @ivar reads: Every read, as C{(method name, arguments...)}: a test can
        check what an operation cost.
    """

    _name = "memory home store"

    def __init__(self) -> None:
        super().__init__()
        self.contacts: dict[Address, dict[Address, ContactRecord]] = {}
        self.authorisations: dict[tuple[Address, Address], AuthorisationState] = {}
        self.access: dict[Address, dict[str, AccessList]] = {}
        self.rules: dict[Address, list[PresenceRule]] = {}
        self.hold = False
        self.held: deque[tuple[Callable[[], Deferred[Any]], Deferred[Any]]] = deque()
        self.reads: list[tuple[object, ...]] = []
        self._releasing = False

    def _later(self, operation: Callable[..., Deferred[T]], *args: Any) -> Deferred[T] | None:
        """
        @return: When operations are held, a L{Deferred} for C{operation}
            run later by L{release}; else C{None}.
        """
        if not self.hold or self._releasing:
            return None
        d: Deferred[T] = Deferred()
        self.held.append((lambda: operation(*args), d))
        return d

    def release(self, count: int | None = None) -> int:
        """
        Run held operations in the order they were asked for, firing their
        L{Deferred}s: C{count} of them, or (with C{None}) until none is
        left, including those asked for meanwhile.

        @return: How many were run.
        """
        done = 0
        while self.held and (count is None or done < count):
            operation, d = self.held.popleft()
            self._releasing = True
            try:
                result = operation()
            finally:
                self._releasing = False
            result.chainDeferred(d)
            done += 1
        return done

    def getContacts(self, owner: Address) -> Deferred[list[ContactRecord]]:
        """
        See L{IHomeStore.getContacts}.
        """
        later = self._later(self.getContacts, owner)
        if later is not None:
            return later
        self.reads.append(("getContacts", owner))
        mine = self.contacts.get(owner, {})
        return self._read([mine[address] for address in sorted(mine)])

    def getAuthorisations(
        self, user: Address
    ) -> Deferred[list[tuple[Address, Address, AuthorisationState]]]:
        """
        See L{IHomeStore.getAuthorisations}. Rows are sorted by target, then
        watcher.
        """
        later = self._later(self.getAuthorisations, user)
        if later is not None:
            return later
        self.reads.append(("getAuthorisations", user))
        return self._read(
            sorted(
                [
                    (target, watcher, state)
                    for (target, watcher), state in self.authorisations.items()
                    if user in (target, watcher)
                ],
                key=lambda row: (row[0], row[1]),
            )
        )

    def getUserRecords(self, user: Address) -> Deferred[UserRecords]:
        """
        See L{IHomeStore.getUserRecords}: one read (recorded as
        C{("getUserRecords", user)}).
        """
        later = self._later(self.getUserRecords, user)
        if later is not None:
            return later
        self.reads.append(("getUserRecords", user))
        contacts = self.contacts.get(user, {})
        access = self.access.get(user, {})
        return self._read(
            UserRecords(
                [contacts[address] for address in sorted(contacts)],
                sorted(
                    [
                        (target, watcher, state)
                        for (target, watcher), state in self.authorisations.items()
                        if user in (target, watcher)
                    ],
                    key=lambda row: (row[0], row[1]),
                ),
                {entry: access[entry] for entry in sorted(access)},
                list(self.rules.get(user, [])),
            )
        )

    def getAuthorisation(self, target: Address, watcher: Address) -> Deferred[AuthorisationState | None]:
        """
        See L{IHomeStore.getAuthorisation}.
        """
        later = self._later(self.getAuthorisation, target, watcher)
        if later is not None:
            return later
        self.reads.append(("getAuthorisation", target, watcher))
        return self._read(self.authorisations.get((target, watcher)))

    def getAccessOf(self, owner: Address, other: Address) -> Deferred[AccessList]:
        """
        See L{IHomeStore.getAccessOf}.
        """
        later = self._later(self.getAccessOf, owner, other)
        if later is not None:
            return later
        self.reads.append(("getAccessOf", owner, other))
        mine = self.access.get(owner, {})
        return self._read(mine.get(str(other), mine.get(other.domain, AccessList.NONE)))

    def getAccess(self, owner: Address) -> Deferred[dict[str, AccessList]]:
        """
        See L{IHomeStore.getAccess}. Entries come sorted.
        """
        later = self._later(self.getAccess, owner)
        if later is not None:
            return later
        self.reads.append(("getAccess", owner))
        mine = self.access.get(owner, {})
        return self._read({entry: mine[entry] for entry in sorted(mine)})

    def getRules(self, owner: Address) -> Deferred[list[PresenceRule]]:
        """
        See L{IHomeStore.getRules}. Rules come in their owner's order.
        """
        later = self._later(self.getRules, owner)
        if later is not None:
            return later
        self.reads.append(("getRules", owner))
        return self._read(list(self.rules.get(owner, [])))

    def apply(self, changes: Sequence[HomeChange]) -> Deferred[None]:
        """
        See L{IHomeStore.apply}: all the changes, or (when writes fail)
        none.
        """
        later = self._later(self.apply, changes)
        if later is not None:
            return later
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        saved = self._tables() if any(_limited(c) for c in changes) else None
        try:
            self._apply(changes)
        except PendingRequestsFull as e:
            # Put every table back as it was (in place: tests may hold them).
            assert saved is not None
            contacts, authorisations, access, rules = saved
            _refill(self.contacts, contacts)
            _refill(self.authorisations, authorisations)
            _refill(self.access, access)
            _refill(self.rules, rules)
            return fail(e)
        return succeed(None)

    def _tables(
        self,
    ) -> tuple[
        dict[Address, dict[Address, ContactRecord]],
        dict[tuple[Address, Address], AuthorisationState],
        dict[Address, dict[str, AccessList]],
        dict[Address, list[PresenceRule]],
    ]:
        """
        @return: Copies of the tables, to put back if a write fails.
        """
        return (
            {k: dict(v) for k, v in self.contacts.items()},
            dict(self.authorisations),
            {k: dict(v) for k, v in self.access.items()},
            {k: list(v) for k, v in self.rules.items()},
        )

    def _checkPendingLimit(self, change: SetAuthorisation, limit: int) -> None:
        """
        @raise PendingRequestsFull: As L{SetAuthorisation.pendingLimit} says.
        """
        current = self.authorisations.get((change.target, change.watcher))
        if current is AuthorisationState.PENDING or not change.appliesTo(current):
            return
        pending = sum(
            1 for (t, _), s in self.authorisations.items() if t == change.target and s is AuthorisationState.PENDING
        )
        if pending < limit:
            return
        mine = self.access.get(change.target, {})
        if mine.get(str(change.watcher), mine.get(change.watcher.domain)) is AccessList.ALLOW:
            return
        raise PendingRequestsFull(f"{change.target} has {limit} pending requests (max_pending_requests)")

    def _apply(self, changes: Sequence[HomeChange]) -> None:
        for change in changes:
            if isinstance(change, PutContact):
                self.contacts.setdefault(change.owner, {})[change.contact.address] = change.contact
            elif isinstance(change, RemoveContact):
                self._discard(self.contacts, change.owner, change.contact)
            elif isinstance(change, SetAuthorisation):
                key = (change.target, change.watcher)
                if change.pendingLimit is not None and change.state is AuthorisationState.PENDING:
                    self._checkPendingLimit(change, change.pendingLimit)
                if not change.appliesTo(self.authorisations.get(key)):
                    pass
                elif change.state is None:
                    self.authorisations.pop(key, None)
                else:
                    self.authorisations[key] = change.state
            elif isinstance(change, SetAccess):
                if change.accessList is AccessList.NONE:
                    self._discard(self.access, change.owner, change.entry)
                else:
                    self.access.setdefault(change.owner, {})[change.entry] = change.accessList
            elif change.rules:
                self.rules[change.owner] = list(change.rules)
            else:
                self.rules.pop(change.owner, None)

    @staticmethod
    def _discard(table: dict[Address, dict[K, V]], owner: Address, key: K) -> None:
        mine = table.get(owner)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del table[owner]


def _refill(table: dict[K, V], content: dict[K, V]) -> None:
    table.clear()
    table.update(content)


def _limited(change: HomeChange) -> bool:
    return isinstance(change, SetAuthorisation) and change.pendingLimit is not None


# --- more test doubles below ---


@implementer(ISessionClient)
class RecordingSessionClient:
    """
    An L{ISessionClient} that records everything the home server tells it,
    for tests of home servers, routers and faces.

    Deliveries answer with an already fired L{Deferred}, as a client in the
    gateway's process does; tests can make them fail (L{failWith}) or wait
    (L{hold}).

    @ivar messages: Messages received, in order.
    @ivar presences: C{(sender, presence)} pairs received, in order.
    @ivar subscriptions: Subscription events received.
    @ivar contacts: Contact views pushed (L{ISessionClient.contactUpdated}).
    @ivar removed: Contacts removed.
    @ivar closed: Reasons given by L{ISessionClient.sessionClosed}.
    @ivar failWith: When set, every delivery is recorded and then fails
        with this exception (as a session in another process that could not
        take it would).
    @ivar hold: When true, every delivery is recorded and answered with a
        L{Deferred} appended to L{held}, for the test to fire.
    @ivar held: The L{Deferred}s of held deliveries, in order.
    """

    def __init__(self, sessionLabel: str = "") -> None:
        self.sessionLabel = sessionLabel
        self.messages: list[Message] = []
        self.presences: list[tuple[Address, Presence]] = []
        self.subscriptions: list[SubscriptionEvent] = []
        self.contacts: list[ContactView] = []
        self.removed: list[Address] = []
        self.closed: list[str] = []
        self.failWith: Exception | None = None
        self.hold = False
        self.held: list[Deferred[None]] = []

    def _answer(self) -> Deferred[None]:
        if self.failWith is not None:
            return fail(self.failWith)
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held.append(d)
            return d
        return succeed(None)

    def messageReceived(self, message: Message) -> Deferred[None]:
        self.messages.append(message)
        return self._answer()

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        self.presences.append((sender, presence))
        return self._answer()

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        self.subscriptions.append(event)
        return self._answer()

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        self.contacts.append(contact)
        return self._answer()

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        self.removed.append(contact)
        return self._answer()

    def sessionClosed(self, reason: str) -> None:
        self.closed.append(reason)


@implementer(ILinkRoutes)
class MemoryLinkRoutes:
    """
    An L{ILinkRoutes} without links, for tests of routing and of many home
    servers in one process: the other servers of the domain and the peer
    domains' routers are routes it is given (another test's L{HomeServer}
    or router, a recording route), to which it hands events as a link
    would, at once.

    @ivar servers: Server name to its route; tests may change it.
    @ivar domains: Peer domain to its route; tests may change it.
    @ivar down: Names of servers and domains whose link is down: events
        for them fail with L{ServiceUnavailable}, as a link that gives up
        after C{request_timeout} answers.
    @ivar sent: Every event handed to a route, as C{(name, event)}.
    """

    def __init__(self, servers: dict[str, IRoute] | None = None, domains: dict[str, IRoute] | None = None) -> None:
        self.servers: dict[str, IRoute] = dict(servers or {})
        self.domains: dict[str, IRoute] = dict(domains or {})
        self.down: set[str] = set()
        self.sent: list[tuple[str, Event]] = []

    def toServer(self, name: str) -> IRoute:
        """
        See L{ILinkRoutes.toServer}.
        """
        return _MemoryLink(self, name, self.servers[name])

    def toDomain(self, domain: str) -> Deferred[IRoute | None]:
        """
        See L{ILinkRoutes.toDomain}.
        """
        route = self.domains.get(domain)
        return succeed(None if route is None else _MemoryLink(self, domain, route))


@implementer(IRoute)
class _MemoryLink:
    def __init__(self, links: MemoryLinkRoutes, name: str, route: IRoute) -> None:
        self._links = links
        self._name = name
        self._route = route

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        if self._name in self._links.down:
            return fail(ServiceUnavailable(f"link to {self._name} is down"))
        self._links.sent.append((self._name, event))
        return self._route.deliver(event)


def memoryGateway(
    clock: IReactorTime,
    domain: str = "corp.example",
    home: HomeConfig | None = None,
    adapters: dict[str, object] | None = None,
    directory: IDirectory | None = None,
) -> Gateway:
    """
    A whole gateway on memory stores, for unit tests of protocol adapters:
    a home server, a router, an authenticator (hashing in the calling
    thread) and a portal, all timed by C{clock}. Add users with
    L{addUser}.

    @param clock: Times leases and timeouts (a L{twisted.internet.task.Clock}).
    @param adapters: The adapter configs to record in the gateway's config.
    @param directory: The directory; a new L{MemoryDirectory} when
        C{None} (a L{PasswordCheckingDirectory} stands for LDAP).
    """
    from imgateway.config import AuthConfig, GatewayConfig
    from imgateway.gateway import assembleGateway

    homeConfig = home if home is not None else HomeConfig()
    config = GatewayConfig(
        path=FilePath("memory.toml"),
        domain=domain,
        dataDir=FilePath("memory"),
        homeServerName="hs1",
        home=homeConfig,
        auth=AuthConfig(scramIterations=4096),
        adapters=dict(adapters or {}),
    )
    return assembleGateway(
        config,
        clock,
        directory if directory is not None else MemoryDirectory(),
        MemoryHomeStore(),
        runInThread=_inline,
        secret=b"test secret",
        adapters={},
    )


def _inline(f: Callable[..., T], *args: object) -> Deferred[T]:
    try:
        return succeed(f(*args))
    except BaseException:
        return fail()


def addUser(gateway: Gateway, local: str, password: str, enabled: bool = True) -> Address:
    """
    Create an account on a L{memoryGateway} (SCRAM verifiers with the
    minimum iteration count, to keep tests fast).

    @return: The account's address.
    """
    from imgateway.auth.passwords import makeCredentials

    address = Address.fromParts(local, gateway.domain)
    credentials = makeCredentials(password, 4096).serialise()
    record = AccountRecord(address, gateway.homeServer.name, "", enabled, credentials)
    gateway.directory.addAccount(record)
    return address


def mutualContacts(a: Address, b: Address) -> list[HomeChange]:
    """
    The home-store changes that make C{a} and C{b} each other's contacts,
    each authorised to see the other's presence (what an accepted
    subscription both ways leaves), for a store to L{apply
    <IHomeStore.apply>} at once: benchmarks and tests set up thousands of
    such pairs without the subscription exchange.
    """
    return [
        PutContact(a, ContactRecord(b)),
        PutContact(b, ContactRecord(a)),
        SetAuthorisation(a, b, AuthorisationState.AUTHORISED),
        SetAuthorisation(b, a, AuthorisationState.AUTHORISED),
    ]


# --- XML stream test double (XMPP adapter) ---
# In its own section, with its own imports, to keep merges easy.

from typing import Any  # noqa: E402

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.interfaces import IAddress, IHandshakeListener, IProtocol, ISSLTransport, ITLSTransport  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.words.xish import domish  # noqa: E402
from zope.interface import alsoProvides  # noqa: E402

__all__ += ["TLSStringTransport", "XmlStreamPeer"]


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that can start TLS, in memory: L{startTLS} records
    the options and L{completeHandshake} plays a successful handshake. No
    cryptography happens: bytes written and received stay readable, so a
    test can check what a protocol does before and after the handshake.

    @ivar tlsOptions: What L{startTLS} was given, or C{None}.
    @ivar bytesBeforeTLS: What had been written when TLS was started.
    """

    def __init__(self, hostAddress: IAddress | None = None, peerAddress: IAddress | None = None) -> None:
        super().__init__(hostAddress, peerAddress)
        self.tlsOptions: object | None = None
        self.bytesBeforeTLS: bytes | None = None
        self._protocol: IProtocol | None = None

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:
        """
        Record that TLS starts (L{ITLSTransport.startTLS}).
        """
        if self.tlsOptions is not None:
            raise RuntimeError("TLS was already started on this transport")
        self.tlsOptions = contextFactory
        self.bytesBeforeTLS = self.value()

    # ITCPTransport's options (ITLSTransport extends it): recorded, no effect.

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcpNoDelay = enabled

    def getTcpNoDelay(self) -> bool:
        return bool(getattr(self, "tcpNoDelay", False))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.tcpKeepAlive = enabled

    def getTcpKeepAlive(self) -> bool:
        return bool(getattr(self, "tcpKeepAlive", False))

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def completeHandshake(self) -> None:
        """
        The TLS handshake succeeds: the transport provides
        L{ISSLTransport}, and a protocol that is an L{IHandshakeListener}
        hears of it.
        """
        if self.tlsOptions is None:
            raise RuntimeError("TLS was not started")
        alsoProvides(self, ISSLTransport)
        if self._protocol is not None and IHandshakeListener.providedBy(self._protocol):
            self._protocol.handshakeCompleted()


class XmlStreamPeer:
    """
    The far end of an XML stream under test, in memory (after wokkel's
    C{XmlStreamStub}): it connects an XML stream protocol (a c2s, s2s or
    component stream) to a L{TLSStringTransport}, hands it bytes one read
    at a time, and parses what the protocol writes back into elements.

    @ivar protocol: The protocol under test.
    @ivar transport: Its L{TLSStringTransport}.
    @ivar root: The header of the stream the protocol wrote, once read.
    @ivar closed: Whether the protocol closed its stream
        (C{</stream:stream>}).
    """

    def __init__(
        self,
        protocol: IProtocol,
        peer: IAddress = IPv4Address("TCP", "127.0.0.1", 40000),
        host: IAddress = IPv4Address("TCP", "127.0.0.1", 5222),
    ) -> None:
        # Typed loosely: tests reach into the protocol under test.
        self.protocol: Any = protocol
        self.transport = TLSStringTransport(hostAddress=host, peerAddress=peer)
        self.transport._protocol = protocol
        self.restart()
        protocol.makeConnection(self.transport)

    def restart(self) -> None:
        """
        Read what the protocol writes from now on as a new XML document
        (after STARTTLS or SASL success, the protocol opens a new stream).
        """
        self._parser = domish.elementStream()
        self.root: domish.Element | None = None
        self.closed = False
        self._elements: list[domish.Element] = []
        self._parser.DocumentStartEvent = self._started
        self._parser.ElementEvent = self._elements.append
        self._parser.DocumentEndEvent = self._ended

    def _started(self, root: domish.Element) -> None:
        self.root = root

    def _ended(self) -> None:
        self.closed = True

    def write(self, data: str | bytes) -> None:
        """
        Hand C{data} to the protocol as one read.
        """
        self.protocol.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)

    def read(self) -> list[domish.Element]:
        """
        @return: The top-level elements the protocol wrote since the last
            call (the stream header goes to L{root}).
        """
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.parse(data)
        out, self._elements[:] = list(self._elements), []
        return out

    def text(self) -> str:
        """
        @return: What the protocol wrote and L{read} has not consumed yet.
        """
        data: bytes = self.transport.value()
        return data.decode("utf-8")

    @staticmethod
    def streamError(elements: list[domish.Element]) -> str | None:
        """
        @return: The condition of the stream error among C{elements}, if
            any.
        """
        for element in elements:
            if (element.uri, element.name) == ("http://etherx.jabber.org/streams", "error"):
                for child in element.elements():
                    if child.uri == "urn:ietf:params:xml:ns:xmpp-streams" and child.name != "text":
                        return str(child.name)
        return None

    @property
    def disconnecting(self) -> bool:
        """
        Whether the protocol is dropping the connection.
        """
        return bool(self.transport.disconnecting)


# --- Certificates ---
# Keys, self-signed and CA-issued certificates, PEM files and tls: folders
# for tests; they live in imgateway._testcerts, which needs no reactor.

from imgateway._testcerts import (  # noqa: E402
    TEST_HOSTNAME,
    CertificateAuthority,
    PrivateKey,
    certificatePEM,
    keyPEM,
    makeCertificates,
    selfSigned,
    selfSignedOptions,
    writePEM,
)

__all__ += [
    "TEST_HOSTNAME",
    "CertificateAuthority",
    "PrivateKey",
    "certificatePEM",
    "keyPEM",
    "makeCertificates",
    "selfSigned",
    "selfSignedOptions",
    "writePEM",
]
