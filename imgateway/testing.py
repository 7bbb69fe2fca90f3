# -*- test-case-name: tests.test_sqlite_store -*-
"""
Test doubles for imgateway and its protocol adapters, as public API (as
C{treq.testing} is for treq): in-memory stores that behave exactly as the
SQLite ones do, but answer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.events import Message, SubscriptionEvent
from imgateway.core.errors import AccountExists, NoSuchAccount, PersistenceFailed
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import (
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    ContactView,
    PresenceRule,
)
from imgateway.home.store import ruleOrder
from imgateway.interfaces import IDirectory, IHomeStore, ISessionClient

if TYPE_CHECKING:
    from imgateway.gateway import Gateway

__all__ = ["MemoryDirectory", "MemoryHomeStore", "RecordingSessionClient", "addUser", "memoryGateway"]

T = TypeVar("T")


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


@implementer(IHomeStore)
class MemoryHomeStore(_MemoryStore):
    """
    An in-memory L{IHomeStore} with the semantics (and orders) of
    L{imgateway.home.store.SQLiteHomeStore}; every L{Deferred} it returns
    has already fired.

    Tests may read and change its attributes.

    @ivar contacts: Owner to (contact address to record).
    @ivar authorisations: C{(target, watcher)} to state.
    @ivar access: Owner to (entry to list); never holds L{AccessList.NONE}.
    @ivar rules: Owner to (state to alternate).
    """

    _name = "memory home store"

    def __init__(self) -> None:
        super().__init__()
        self.contacts: dict[Address, dict[Address, ContactRecord]] = {}
        self.authorisations: dict[tuple[Address, Address], AuthorisationState] = {}
        self.access: dict[Address, dict[str, AccessList]] = {}
        self.rules: dict[Address, dict[PresenceState, str]] = {}

    def getContacts(self, owner: Address) -> Deferred[list[ContactRecord]]:
        """
        See L{IHomeStore.getContacts}.
        """
        mine = self.contacts.get(owner, {})
        return self._read([mine[address] for address in sorted(mine)])

    def putContact(self, owner: Address, contact: ContactRecord) -> Deferred[None]:
        """
        See L{IHomeStore.putContact}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        self.contacts.setdefault(owner, {})[contact.address] = contact
        return succeed(None)

    def removeContact(self, owner: Address, contact: Address) -> Deferred[bool]:
        """
        See L{IHomeStore.removeContact}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        mine = self.contacts.get(owner, {})
        found = mine.pop(contact, None) is not None
        if not mine:
            self.contacts.pop(owner, None)
        return succeed(found)

    def getAuthorisations(
        self, user: Address
    ) -> Deferred[list[tuple[Address, Address, AuthorisationState]]]:
        """
        See L{IHomeStore.getAuthorisations}. Rows are sorted by target, then
        watcher.
        """
        return self._read(
            [
                (target, watcher, state)
                for (target, watcher), state in sorted(self.authorisations.items(), key=lambda i: i[0])
                if user in (target, watcher)
            ]
        )

    def setAuthorisation(
        self, target: Address, watcher: Address, state: AuthorisationState | None
    ) -> Deferred[None]:
        """
        See L{IHomeStore.setAuthorisation}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if state is None:
            self.authorisations.pop((target, watcher), None)
        else:
            self.authorisations[target, watcher] = state
        return succeed(None)

    def getAccess(self, owner: Address) -> Deferred[dict[str, AccessList]]:
        """
        See L{IHomeStore.getAccess}. Entries come sorted.
        """
        mine = self.access.get(owner, {})
        return self._read({entry: mine[entry] for entry in sorted(mine)})

    def setAccess(self, owner: Address, entry: str, accessList: AccessList) -> Deferred[None]:
        """
        See L{IHomeStore.setAccess}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if accessList is AccessList.NONE:
            mine = self.access.get(owner, {})
            mine.pop(entry, None)
            if not mine:
                self.access.pop(owner, None)
        else:
            self.access.setdefault(owner, {})[entry] = accessList
        return succeed(None)

    def getRules(self, owner: Address) -> Deferred[list[PresenceRule]]:
        """
        See L{IHomeStore.getRules}. Rules come in
        L{imgateway.home.store.ruleOrder}.
        """
        mine = self.rules.get(owner, {})
        return self._read(
            sorted((PresenceRule(state, alternate) for state, alternate in mine.items()), key=ruleOrder)
        )

    def setRule(self, owner: Address, state: PresenceState, alternate: str | None) -> Deferred[None]:
        """
        See L{IHomeStore.setRule}.
        """
        refused = self._refuseWrite()
        if refused is not None:
            return fail(refused)
        if alternate is None:
            mine = self.rules.get(owner, {})
            mine.pop(state, None)
            if not mine:
                self.rules.pop(owner, None)
        else:
            self.rules.setdefault(owner, {})[state] = alternate
        return succeed(None)


# --- more test doubles below ---


@implementer(ISessionClient)
class RecordingSessionClient:
    """
    An L{ISessionClient} that records everything the home server tells it,
    for tests of home servers, routers and faces.

    @ivar messages: Messages received, in order.
    @ivar presences: C{(sender, presence)} pairs received, in order.
    @ivar subscriptions: Subscription events received.
    @ivar contacts: Contact views pushed (L{ISessionClient.contactUpdated}).
    @ivar removed: Contacts removed.
    @ivar closed: Reasons given by L{ISessionClient.sessionClosed}.
    """

    def __init__(self, sessionLabel: str = "") -> None:
        self.sessionLabel = sessionLabel
        self.messages: list[Message] = []
        self.presences: list[tuple[Address, Presence]] = []
        self.subscriptions: list[SubscriptionEvent] = []
        self.contacts: list[ContactView] = []
        self.removed: list[Address] = []
        self.closed: list[str] = []

    def messageReceived(self, message: Message) -> None:
        self.messages.append(message)

    def presenceReceived(self, sender: Address, presence: Presence) -> None:
        self.presences.append((sender, presence))

    def subscriptionReceived(self, event: SubscriptionEvent) -> None:
        self.subscriptions.append(event)

    def contactUpdated(self, contact: ContactView) -> None:
        self.contacts.append(contact)

    def contactRemoved(self, contact: Address) -> None:
        self.removed.append(contact)

    def sessionClosed(self, reason: str) -> None:
        self.closed.append(reason)


def memoryGateway(
    clock: IReactorTime,
    domain: str = "corp.example",
    home: HomeConfig | None = None,
    adapters: dict[str, object] | None = None,
) -> Gateway:
    """
    A whole gateway on memory stores, for unit tests of protocol adapters:
    a home server, a router, an authenticator (hashing in the calling
    thread) and a portal, all timed by C{clock}. Add users with
    L{addUser}.

    @param clock: Times leases and timeouts (a L{twisted.internet.task.Clock}).
    @param adapters: The adapter configs to record in the gateway's config.
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
        MemoryDirectory(),
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
