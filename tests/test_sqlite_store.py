"""
Tests for L{imgateway.sqlite}, the SQLite stores (L{imgateway.directory.sqlite},
L{imgateway.home.store}) and their in-memory doubles (L{imgateway.testing}).

One set of behaviour tests runs against both implementations of each
interface, so that the doubles behave exactly as the real stores.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from imgateway.core.address import Address
from imgateway.core.errors import AccountExists, DeliveryStatus, NoSuchAccount, PendingRequestsFull, PersistenceFailed
from imgateway.core.presence import PresenceState
from imgateway.core.records import (
    ANY_STATE,
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    PresenceRule,
    PutContact,
    RemoveContact,
    SetAccess,
    SetAuthorisation,
    RuleAction,
    RuleNetwork,
    SetRules,
    UserRecords,
)
from imgateway.directory import sqlite as directorySQLite
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.home import store as homeStore
from imgateway.home.store import MIGRATIONS, SQLiteHomeStore
from imgateway.interfaces import IDirectory, IHomeStore
from imgateway.sqlite import (
    Database,
    Durability,
    SchemaTooNew,
    openDatabase,
    openDatabaseNow,
    openPool,
    persistenceFailed,
)
from imgateway.testing import MemoryDirectory, MemoryHomeStore

if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object


def theReactor() -> IReactorCore:
    """
    The global reactor, which trial runs during L{TestCase} tests.
    """
    from twisted.internet import reactor

    return cast(IReactorCore, reactor)


E = TypeVar("E", bound=BaseException)


async def failed(case: TestCase, deferred: Deferred[Any], kind: type[E]) -> E:
    """
    Wait for C{deferred}, which must fail with C{kind}.

    @return: The exception.
    """
    result: object = await case.assertFailure(deferred, kind)
    assert isinstance(result, kind)
    return result


def addr(text: str) -> Address:
    """
    Parse an address.
    """
    return Address.fromString(text)


def account(text: str, displayName: str = "", enabled: bool = True) -> AccountRecord:
    """
    An account record on home server C{hs1}.
    """
    return AccountRecord(addr(text), "hs1", displayName, enabled, f"creds-of-{text}")


ALICE = addr("alice@corp.example")
BOB = addr("bob@corp.example")
CAROL = addr("carol@other.example")
DAVE = addr("dave@corp.example")


class DirectoryTestsMixin(_Base):
    """
    Behaviour of an L{IDirectory}; mixed into a L{TestCase} that defines
    L{makeDirectory}.
    """

    async def makeDirectory(self) -> IDirectory:
        """
        @return: A new, empty directory, closed at cleanup.
        """
        raise NotImplementedError()

    async def test_interface(self) -> None:
        """
        The directory provides L{IDirectory}.
        """
        directory = await self.makeDirectory()
        self.assertTrue(verifyObject(IDirectory, directory))

    async def test_getMissing(self) -> None:
        """
        L{IDirectory.getAccount} gives C{None} for an unknown address.
        """
        directory = await self.makeDirectory()
        self.assertIsNone(await directory.getAccount(ALICE))

    async def test_addAndGet(self) -> None:
        """
        An added account can be read back, equal to what was added.
        """
        directory = await self.makeDirectory()
        record = account("alice@corp.example", "Alice", enabled=False)
        await directory.addAccount(record)
        self.assertEqual(await directory.getAccount(ALICE), record)
        self.assertIsNone(await directory.getAccount(BOB))

    async def test_addExisting(self) -> None:
        """
        Adding an account whose address exists fails with L{AccountExists}
        naming the address, and leaves the existing account as it was.
        """
        directory = await self.makeDirectory()
        first = account("alice@corp.example", "Alice")
        await directory.addAccount(first)
        e = await failed(self, 
            directory.addAccount(account("alice@corp.example", "Impostor")), AccountExists
        )
        self.assertIn("alice@corp.example", str(e))
        self.assertEqual(await directory.getAccount(ALICE), first)

    async def test_notRenormalised(self) -> None:
        """
        Addresses are stored as they are given (they are normalised when
        built) and rebuilt as they were, not normalised again.
        """
        directory = await self.makeDirectory()
        odd = AccountRecord(Address("Élodie", "corp.example"), "hs1", "", True, "c")
        await directory.addAccount(odd)
        self.assertEqual(await directory.getAccount(Address("Élodie", "corp.example")), odd)
        self.assertIsNone(await directory.getAccount(Address("élodie", "corp.example")))
        self.assertEqual(await directory.listAccounts(), [odd])

    async def test_unicode(self) -> None:
        """
        Non-ASCII local parts and display names are kept.
        """
        directory = await self.makeDirectory()
        record = AccountRecord(addr("Zoë@corp.example"), "hs1", "Zoë Ångström", True, "c")
        await directory.addAccount(record)
        self.assertEqual(await directory.getAccount(addr("zoë@corp.example")), record)

    async def test_updateMissing(self) -> None:
        """
        Updating an unknown account fails with L{NoSuchAccount} naming the
        address, whether or not fields are given.
        """
        directory = await self.makeDirectory()
        e = await failed(self, directory.updateAccount(ALICE, enabled=False), NoSuchAccount)
        self.assertIn("alice@corp.example", str(e))
        await failed(self, directory.updateAccount(ALICE), NoSuchAccount)
        self.assertEqual(await directory.listAccounts(), [])

    async def test_updateFields(self) -> None:
        """
        L{IDirectory.updateAccount} changes the fields given, leaves the
        others, and returns the account as it is now.
        """
        directory = await self.makeDirectory()
        await directory.addAccount(account("alice@corp.example", "Alice"))
        await directory.addAccount(account("bob@corp.example", "Bob"))

        updated = await directory.updateAccount(ALICE, enabled=False)
        expected = AccountRecord(ALICE, "hs1", "Alice", False, "creds-of-alice@corp.example")
        self.assertEqual(updated, expected)
        self.assertEqual(await directory.getAccount(ALICE), expected)

        updated = await directory.updateAccount(ALICE, credentials="new", displayName="Alice A.")
        expected = AccountRecord(ALICE, "hs1", "Alice A.", False, "new")
        self.assertEqual(updated, expected)
        self.assertEqual(await directory.getAccount(ALICE), expected)

        updated = await directory.updateAccount(ALICE, enabled=True, displayName="")
        expected = AccountRecord(ALICE, "hs1", "", True, "new")
        self.assertEqual(updated, expected)

        self.assertEqual(await directory.updateAccount(ALICE), expected)
        self.assertEqual(await directory.getAccount(BOB), account("bob@corp.example", "Bob"))

    async def test_listOrder(self) -> None:
        """
        L{IDirectory.listAccounts} lists accounts in the order of
        L{Address} (local part, then domain), not that of their strings.
        """
        directory = await self.makeDirectory()
        texts = ["b@a.example", "a.b@z.example", "a@z.example", "a@y.example", "zoë@a.example", "z@a.example"]
        for text in texts:
            await directory.addAccount(account(text))
        listed = await directory.listAccounts()
        self.assertEqual([r.address for r in listed], sorted(addr(t) for t in texts))
        self.assertEqual(
            [str(r.address) for r in listed],
            ["a@y.example", "a@z.example", "a.b@z.example", "b@a.example", "z@a.example", "zoë@a.example"],
        )

    async def test_listDomain(self) -> None:
        """
        Given a domain, L{IDirectory.listAccounts} lists only its accounts.
        """
        directory = await self.makeDirectory()
        for text in ["carol@other.example", "bob@corp.example", "alice@corp.example"]:
            await directory.addAccount(account(text))
        self.assertEqual(
            [r.address for r in await directory.listAccounts("corp.example")], [ALICE, BOB]
        )
        self.assertEqual([r.address for r in await directory.listAccounts("other.example")], [CAROL])
        self.assertEqual(await directory.listAccounts("nowhere.example"), [])

    async def test_closed(self) -> None:
        """
        L{IDirectory.close} is idempotent; afterwards, reads and writes fail
        with L{PersistenceFailed}.
        """
        directory = await self.makeDirectory()
        await directory.close()
        await directory.close()
        await failed(self, directory.getAccount(ALICE), PersistenceFailed)
        await failed(self, directory.addAccount(account("alice@corp.example")), PersistenceFailed)
        await failed(self, directory.updateAccount(ALICE, enabled=True), PersistenceFailed)
        await failed(self, directory.listAccounts(), PersistenceFailed)


class HomeStoreTestsMixin(_Base):
    """
    Behaviour of an L{IHomeStore}; mixed into a L{TestCase} that defines
    L{makeStore}.
    """

    async def makeStore(self) -> IHomeStore:
        """
        @return: A new, empty store, closed at cleanup.
        """
        raise NotImplementedError()

    async def test_interface(self) -> None:
        """
        The store provides L{IHomeStore}.
        """
        store = await self.makeStore()
        self.assertTrue(verifyObject(IHomeStore, store))

    async def test_empty(self) -> None:
        """
        A new store knows nothing of anyone.
        """
        store = await self.makeStore()
        self.assertEqual(await store.getContacts(ALICE), [])
        self.assertEqual(await store.getAuthorisations(ALICE), [])
        self.assertEqual(await store.getAccess(ALICE), {})
        self.assertEqual(await store.getRules(ALICE), [])

    async def test_contacts(self) -> None:
        """
        Contacts are kept per owner and listed sorted as L{Address}es.
        """
        store = await self.makeStore()
        for contact in [
            ContactRecord(CAROL, "Carol"),
            ContactRecord(addr("a.b@corp.example")),
            ContactRecord(addr("a@corp.example"), "A"),
            ContactRecord(BOB, "Bob"),
        ]:
            await store.apply([PutContact(ALICE, contact)])
        await store.apply([PutContact(BOB, ContactRecord(ALICE, "Alice"))])
        self.assertEqual(
            await store.getContacts(ALICE),
            [
                ContactRecord(addr("a@corp.example"), "A"),
                ContactRecord(addr("a.b@corp.example")),
                ContactRecord(BOB, "Bob"),
                ContactRecord(CAROL, "Carol"),
            ],
        )
        self.assertEqual(await store.getContacts(BOB), [ContactRecord(ALICE, "Alice")])
        self.assertEqual(await store.getContacts(CAROL), [])

    async def test_contactReplaced(self) -> None:
        """
        Putting a contact that is on the list replaces its record.
        """
        store = await self.makeStore()
        await store.apply([PutContact(ALICE, ContactRecord(BOB, "Bob"))])
        await store.apply([PutContact(ALICE, ContactRecord(BOB, "Robert"))])
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(BOB, "Robert")])
        await store.apply([PutContact(ALICE, ContactRecord(BOB))])
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(BOB, "")])

    async def test_removeContact(self) -> None:
        """
        L{RemoveContact} removes one owner's contact; removing a missing one
        does nothing.
        """
        store = await self.makeStore()
        await store.apply([PutContact(ALICE, ContactRecord(BOB, "Bob"))])
        await store.apply([PutContact(ALICE, ContactRecord(CAROL))])
        await store.apply([PutContact(CAROL, ContactRecord(BOB))])
        await store.apply([RemoveContact(ALICE, BOB)])
        await store.apply([RemoveContact(ALICE, BOB), RemoveContact(DAVE, BOB)])
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(CAROL)])
        self.assertEqual(await store.getContacts(CAROL), [ContactRecord(BOB)])

    async def test_authorisations(self) -> None:
        """
        L{IHomeStore.getAuthorisations} gives the rows in which the user is
        target or watcher, sorted by target then watcher; a user watching
        itself appears once.
        """
        store = await self.makeStore()
        await store.apply([SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED)])
        await store.apply([SetAuthorisation(ALICE, CAROL, AuthorisationState.PENDING)])
        await store.apply([SetAuthorisation(ALICE, BOB, AuthorisationState.REFUSED)])
        await store.apply([SetAuthorisation(CAROL, DAVE, AuthorisationState.AUTHORISED)])
        await store.apply([SetAuthorisation(ALICE, ALICE, AuthorisationState.AUTHORISED)])
        self.assertEqual(
            await store.getAuthorisations(ALICE),
            [
                (ALICE, ALICE, AuthorisationState.AUTHORISED),
                (ALICE, BOB, AuthorisationState.REFUSED),
                (ALICE, CAROL, AuthorisationState.PENDING),
                (BOB, ALICE, AuthorisationState.AUTHORISED),
            ],
        )
        self.assertEqual(
            await store.getAuthorisations(DAVE), [(CAROL, DAVE, AuthorisationState.AUTHORISED)]
        )

    async def test_authorisationChangedAndDeleted(self) -> None:
        """
        Setting an authorisation replaces its state; C{None} deletes it
        (and deleting a missing one does nothing).
        """
        store = await self.makeStore()
        await store.apply([SetAuthorisation(ALICE, BOB, AuthorisationState.PENDING)])
        await store.apply([SetAuthorisation(ALICE, BOB, AuthorisationState.AUTHORISED)])
        await store.apply([SetAuthorisation(BOB, ALICE, AuthorisationState.PENDING)])
        self.assertEqual(
            await store.getAuthorisations(BOB),
            [(ALICE, BOB, AuthorisationState.AUTHORISED), (BOB, ALICE, AuthorisationState.PENDING)],
        )
        await store.apply([SetAuthorisation(ALICE, BOB, None)])
        await store.apply([SetAuthorisation(ALICE, CAROL, None)])
        self.assertEqual(await store.getAuthorisations(BOB), [(BOB, ALICE, AuthorisationState.PENDING)])
        self.assertEqual(await store.getAuthorisations(CAROL), [])

    async def test_access(self) -> None:
        """
        Access-list entries (addresses or domains) are kept per owner,
        replaced when set again, removed with L{AccessList.NONE}, and given
        back sorted by entry.
        """
        store = await self.makeStore()
        await store.apply([SetAccess(ALICE, "spam.example", AccessList.BLOCK)])
        await store.apply([SetAccess(ALICE, "bob@corp.example", AccessList.ALLOW)])
        await store.apply([SetAccess(ALICE, "carol@other.example", AccessList.ALLOW)])
        await store.apply([SetAccess(BOB, "spam.example", AccessList.ALLOW)])
        await store.apply([SetAccess(ALICE, "carol@other.example", AccessList.BLOCK)])
        access = await store.getAccess(ALICE)
        self.assertEqual(
            list(access.items()),
            [
                ("bob@corp.example", AccessList.ALLOW),
                ("carol@other.example", AccessList.BLOCK),
                ("spam.example", AccessList.BLOCK),
            ],
        )
        await store.apply([SetAccess(ALICE, "bob@corp.example", AccessList.NONE)])
        await store.apply([SetAccess(ALICE, "nobody.example", AccessList.NONE)])
        self.assertEqual(
            await store.getAccess(ALICE),
            {"carol@other.example": AccessList.BLOCK, "spam.example": AccessList.BLOCK},
        )
        self.assertEqual(await store.getAccess(BOB), {"spam.example": AccessList.ALLOW})

    async def test_rules(self) -> None:
        """
        Presence rules are kept per owner as an ordered list, every field
        of each rule, replaced as a whole by L{SetRules} and removed by an
        empty one.
        """
        store = await self.makeStore()
        forward = PresenceRule(
            [PresenceState.ON_THE_PHONE, PresenceState.BUSY],
            RuleAction.FORWARD,
            sender="alice@corp.example",
            forwardTo=Address("alice", "xmpp.example"),
        )
        reply = PresenceRule(
            [PresenceState.ON_THE_PHONE], RuleAction.AUTO_REPLY, network=RuleNetwork.REMOTE, text="On the phone, é"
        )
        refuse = PresenceRule.refuse(PresenceState.AWAY, "tel:+15550100")
        deliver = PresenceRule([PresenceState.BUSY], RuleAction.DELIVER, sender="corp.example", network=RuleNetwork.LOCAL)
        await store.apply([SetRules(ALICE, (refuse, forward, reply, deliver))])
        await store.apply([SetRules(BOB, (PresenceRule.refuse(PresenceState.BUSY, "later"),))])
        self.assertEqual(await store.getRules(ALICE), [refuse, forward, reply, deliver])
        await store.apply([SetRules(ALICE, (reply, refuse))])
        self.assertEqual(await store.getRules(ALICE), [reply, refuse])
        await store.apply([SetRules(ALICE, ())])
        self.assertEqual(await store.getRules(ALICE), [])
        self.assertEqual(await store.getRules(BOB), [PresenceRule.refuse(PresenceState.BUSY, "later")])

    async def test_rulesMigrated(self) -> None:
        """
        A home store file of schema version 1 (one refusal per state in a
        C{rules} table) opened by this version is migrated to version 2:
        every old rule becomes a refuse rule for its state, in the order of
        L{PresenceState}, each owner's on its own, nothing lost, and the
        rest of the file untouched.
        """
        path = os.path.join(self.mktemp(), "home-hs1.sqlite3")
        os.makedirs(os.path.dirname(path))
        old = sqlite3.connect(path)
        for statement in MIGRATIONS[0]:
            old.execute(statement)
        old.executemany(
            "INSERT INTO rules (owner, state, alternate) VALUES (?, ?, ?)",
            [
                (str(ALICE), "out-to-lunch", "im:alice.mobile@corp.example"),
                (str(ALICE), "busy", "tel:+15550100"),
                (str(ALICE), "on-the-phone", "not a uri, from before alternates were checked"),
                (str(BOB), "away", "mailto:bob@corp.example"),
            ],
        )
        old.execute("INSERT INTO contacts (owner, contact, display_name) VALUES (?, ?, ?)", (str(ALICE), str(BOB), "Bob"))
        old.execute("PRAGMA user_version = 1")
        old.commit()
        old.close()
        store = await SQLiteHomeStore.open(theReactor(), path)
        self.addCleanup(store.close)
        self.assertEqual(
            await store.getRules(ALICE),
            [
                PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100"),
                PresenceRule.refuse(PresenceState.ON_THE_PHONE, "not a uri, from before alternates were checked"),
                PresenceRule.refuse(PresenceState.OUT_TO_LUNCH, "im:alice.mobile@corp.example"),
            ],
        )
        self.assertEqual(await store.getRules(BOB), [PresenceRule.refuse(PresenceState.AWAY, "mailto:bob@corp.example")])
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(BOB, "Bob")])

        def version(cursor: sqlite3.Cursor) -> tuple[int, list[str]]:
            tables = [r[0] for r in cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return cursor.execute("PRAGMA user_version").fetchone()[0], tables

        self.assertEqual(
            await store.database.read(version),
            (2, ["access", "authorisations", "contacts", "presence_rules"]),
        )

    async def test_userRecords(self) -> None:
        """
        L{IHomeStore.getUserRecords} gives, in one read, what the four
        reads of a user's rows give, in their orders; a user of whom
        nothing is kept gets empty records.
        """
        store = await self.makeStore()
        rule = PresenceRule([PresenceState.AWAY], RuleAction.AUTO_REPLY, text="away")
        await store.apply(
            [
                PutContact(ALICE, ContactRecord(CAROL, "Carol")),
                PutContact(ALICE, ContactRecord(BOB, "Bob")),
                PutContact(BOB, ContactRecord(ALICE)),
                SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED),
                SetAuthorisation(ALICE, CAROL, AuthorisationState.PENDING),
                SetAuthorisation(BOB, CAROL, AuthorisationState.AUTHORISED),
                SetAccess(ALICE, "x.example", AccessList.BLOCK),
                SetAccess(ALICE, "a.example", AccessList.ALLOW),
                SetRules(ALICE, (rule,)),
            ]
        )
        records = await store.getUserRecords(ALICE)
        self.assertEqual(records.contacts, await store.getContacts(ALICE))
        self.assertEqual([c.address for c in records.contacts], [BOB, CAROL])
        self.assertEqual(records.authorisations, await store.getAuthorisations(ALICE))
        self.assertEqual(len(records.authorisations), 2)
        self.assertEqual(records.access, await store.getAccess(ALICE))
        self.assertEqual(list(records.access), ["a.example", "x.example"])
        self.assertEqual(records.rules, [rule])
        self.assertEqual(await store.getUserRecords(addr("nobody@corp.example")), UserRecords([], [], {}, []))

    async def test_targetedReads(self) -> None:
        """
        L{IHomeStore.getAuthorisation} reads one row;
        L{IHomeStore.getAccessOf} finds an address's entry, else its
        domain's, else L{AccessList.NONE}.
        """
        store = await self.makeStore()
        await store.apply(
            [
                SetAuthorisation(BOB, ALICE, AuthorisationState.PENDING),
                SetAccess(ALICE, "corp.example", AccessList.BLOCK),
                SetAccess(ALICE, "bob@corp.example", AccessList.ALLOW),
            ]
        )
        self.assertIs(await store.getAuthorisation(BOB, ALICE), AuthorisationState.PENDING)
        self.assertIsNone(await store.getAuthorisation(ALICE, BOB))
        self.assertIs(await store.getAccessOf(ALICE, BOB), AccessList.ALLOW)
        self.assertIs(await store.getAccessOf(ALICE, DAVE), AccessList.BLOCK)
        self.assertIs(await store.getAccessOf(ALICE, CAROL), AccessList.NONE)
        self.assertIs(await store.getAccessOf(BOB, ALICE), AccessList.NONE)

    async def test_applyInOrder(self) -> None:
        """
        L{IHomeStore.apply} makes its changes in order: a later change to
        the same row wins.
        """
        store = await self.makeStore()
        await store.apply(
            [
                PutContact(ALICE, ContactRecord(BOB, "Bob")),
                SetAuthorisation(BOB, ALICE, AuthorisationState.PENDING),
                RemoveContact(ALICE, BOB),
                PutContact(ALICE, ContactRecord(BOB, "Robert")),
                SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED),
                SetAccess(ALICE, "x.example", AccessList.BLOCK),
                SetAccess(ALICE, "x.example", AccessList.NONE),
                SetRules(ALICE, (PresenceRule.refuse(PresenceState.BUSY, "tel:1"),)),
            ]
        )
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(BOB, "Robert")])
        self.assertEqual(await store.getAuthorisations(ALICE), [(BOB, ALICE, AuthorisationState.AUTHORISED)])
        self.assertEqual(await store.getAccess(ALICE), {})
        self.assertEqual(await store.getRules(ALICE), [PresenceRule.refuse(PresenceState.BUSY, "tel:1")])

    async def test_onlyIf(self) -> None:
        """
        A L{SetAuthorisation} with C{onlyIf} changes (or deletes) a row only
        if it is there in one of those states, and creates none.
        """
        store = await self.makeStore()
        pending, authorised = AuthorisationState.PENDING, AuthorisationState.AUTHORISED
        await store.apply([SetAuthorisation(BOB, ALICE, pending), SetAuthorisation(DAVE, ALICE, authorised)])
        await store.apply(
            [
                SetAuthorisation(BOB, ALICE, authorised, onlyIf=ANY_STATE),
                SetAuthorisation(CAROL, ALICE, authorised, onlyIf=ANY_STATE),
                SetAuthorisation(DAVE, ALICE, AuthorisationState.REFUSED, onlyIf=(pending,)),
            ]
        )
        self.assertEqual(
            await store.getAuthorisations(ALICE), [(BOB, ALICE, authorised), (DAVE, ALICE, authorised)]
        )
        await store.apply(
            [
                SetAuthorisation(BOB, ALICE, None, onlyIf=(pending,)),
                SetAuthorisation(DAVE, ALICE, None, onlyIf=(authorised,)),
            ]
        )
        self.assertEqual(await store.getAuthorisations(ALICE), [(BOB, ALICE, authorised)])

    async def test_pendingLimit(self) -> None:
        """
        A L{SetAuthorisation} with C{pendingLimit} makes a new pending
        request only while its target has fewer pending requests than that:
        at the limit the whole L{IHomeStore.apply} fails with
        L{PendingRequestsFull} and changes nothing. Asking again while
        pending, a target's allow list, rows in other states and other
        targets' requests are not held back; a refused row made pending
        again is a new request.
        """
        store = await self.makeStore()
        pending, refused = AuthorisationState.PENDING, AuthorisationState.REFUSED
        others = [addr(f"u{n}@far.example") for n in range(4)]

        def ask(watcher: Address, limit: int | None = 2) -> SetAuthorisation:
            return SetAuthorisation(ALICE, watcher, pending, pendingLimit=limit)

        await store.apply([SetAuthorisation(ALICE, BOB, AuthorisationState.AUTHORISED)])
        await store.apply([SetAuthorisation(ALICE, DAVE, refused)])
        await store.apply([ask(others[0])])
        await store.apply([SetAuthorisation(BOB, others[1], pending), ask(others[1])])
        await failed(
            self, store.apply([PutContact(others[2], ContactRecord(ALICE)), ask(others[2])]), PendingRequestsFull
        )
        await failed(self, store.apply([ask(DAVE)]), PendingRequestsFull)
        self.assertEqual(await store.getContacts(others[2]), [])
        self.assertIsNone(await store.getAuthorisation(ALICE, others[2]))
        self.assertIs(await store.getAuthorisation(ALICE, DAVE), refused)
        # Asked again while pending; another target; the allow list; no limit.
        await store.apply([ask(others[0]), SetAuthorisation(BOB, others[2], pending, pendingLimit=2)])
        await store.apply([SetAccess(ALICE, "far.example", AccessList.ALLOW), ask(others[2])])
        await store.apply([SetAccess(ALICE, "far.example", AccessList.NONE), ask(others[3], None)])
        self.assertEqual(
            [(w, s) for t, w, s in await store.getAuthorisations(ALICE) if t == ALICE],
            [(BOB, AuthorisationState.AUTHORISED), (DAVE, refused)] + [(o, pending) for o in others],
        )
        # Answering a request makes room for one more.
        await failed(self, store.apply([ask(DAVE, 4)]), PendingRequestsFull)
        await store.apply([SetAuthorisation(ALICE, others[3], refused), ask(DAVE, 4)])
        self.assertIs(await store.getAuthorisation(ALICE, DAVE), pending)

    async def test_closed(self) -> None:
        """
        L{IHomeStore.close} is idempotent; afterwards, reads and writes fail
        with L{PersistenceFailed}.
        """
        store = await self.makeStore()
        await store.close()
        await store.close()
        await failed(self, store.getContacts(ALICE), PersistenceFailed)
        await failed(self, store.apply([PutContact(ALICE, ContactRecord(BOB))]), PersistenceFailed)
        await failed(self, store.getAuthorisations(ALICE), PersistenceFailed)
        await failed(self, store.getAccess(ALICE), PersistenceFailed)
        await failed(self, store.getRules(ALICE), PersistenceFailed)


class SQLiteDirectoryTests(DirectoryTestsMixin, TestCase):
    """
    L{SQLiteDirectory} behaves as an L{IDirectory}.
    """

    async def makeDirectory(self) -> IDirectory:
        """
        Open a directory in a new folder.
        """
        directory = await SQLiteDirectory.open(theReactor(), os.path.join(self.mktemp(), "d.sqlite3"))
        self.addCleanup(directory.close)
        return directory


class SQLiteDirectoryDurabilityTests(TestCase):
    """
    L{SQLiteDirectory.open} takes the configured durability.
    """

    async def test_power(self) -> None:
        """
        A directory opened with L{Durability.POWER} syncs every commit
        (C{synchronous=FULL}); by default it is L{Durability.PROCESS}.
        """
        folder = self.mktemp()
        power = await SQLiteDirectory.open(
            theReactor(), os.path.join(folder, "p.sqlite3"), durability=Durability.POWER
        )
        self.addCleanup(power.close)
        default = await SQLiteDirectory.open(theReactor(), os.path.join(folder, "d.sqlite3"))
        self.addCleanup(default.close)
        self.assertEqual(
            (power.database.durability, default.database.durability), (Durability.POWER, Durability.PROCESS)
        )
        synchronous = await power.database.read(lambda c: int(c.execute("PRAGMA synchronous").fetchone()[0]))
        self.assertEqual(synchronous, 2)


class MemoryDirectoryTests(DirectoryTestsMixin, TestCase):
    """
    L{MemoryDirectory} behaves as an L{IDirectory}, as L{SQLiteDirectory}
    does.
    """

    async def makeDirectory(self) -> IDirectory:
        """
        Make a memory directory.
        """
        return MemoryDirectory()

    def test_fired(self) -> None:
        """
        The memory directory's L{Deferred}s have fired when returned.
        """
        directory = MemoryDirectory([account("alice@corp.example")])
        self.assertEqual(self.successResultOf(directory.getAccount(ALICE)), account("alice@corp.example"))
        self.failureResultOf(directory.addAccount(account("alice@corp.example")), AccountExists)

    def test_failWrites(self) -> None:
        """
        With C{failWrites} set, writes fail with L{PersistenceFailed} and
        change nothing; reads still work.
        """
        directory = MemoryDirectory([account("alice@corp.example")])
        directory.failWrites = True
        self.failureResultOf(directory.addAccount(account("bob@corp.example")), PersistenceFailed)
        self.failureResultOf(directory.updateAccount(ALICE, enabled=False), PersistenceFailed)
        self.assertEqual(
            self.successResultOf(directory.listAccounts()), [account("alice@corp.example")]
        )


class SQLiteHomeStoreTests(HomeStoreTestsMixin, TestCase):
    """
    L{SQLiteHomeStore} behaves as an L{IHomeStore}.
    """

    async def makeStore(self) -> IHomeStore:
        """
        Open a store in a new folder.
        """
        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)
        return store

    async def test_userRecordsAddressMadeOnce(self) -> None:
        """
        L{SQLiteHomeStore.getUserRecords} makes one L{Address} per distinct
        address it reads: a mutual contact's in its contact row and on both
        sides of the two authorisations is one object, and the user's own
        side of every authorisation is the address asked about. Separate
        reads of the same rows make their own.
        """
        store = await self.makeStore()
        await store.apply(
            [
                PutContact(ALICE, ContactRecord(BOB)),
                PutContact(ALICE, ContactRecord(CAROL)),
                SetAuthorisation(ALICE, BOB, AuthorisationState.AUTHORISED),
                SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED),
                SetAuthorisation(CAROL, ALICE, AuthorisationState.AUTHORISED),
            ]
        )
        alice = addr(str(ALICE))
        records = await store.getUserRecords(alice)
        bob = records.contacts[0].address
        self.assertEqual(bob, BOB)
        sides = {id(a) for target, watcher, _ in records.authorisations for a in (target, watcher)}
        self.assertEqual(sides, {id(alice), id(bob), id(records.contacts[1].address)})
        self.assertEqual(len(records.authorisations), 3)
        self.assertIsNot((await store.getContacts(alice))[0].address, bob)

    async def test_ownTokens(self) -> None:
        """
        The file spells authorisation states, access lists and presence
        states with the schema's own tokens, whatever the core enums' values
        are: the format does not change with the core model.
        """
        from tests.test_native_mapping import scrambleCoreValues

        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)
        scrambleCoreValues(self)
        await store.apply(
            [
                SetAuthorisation(ALICE, BOB, AuthorisationState.PENDING, pendingLimit=5),
                SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED),
                SetAccess(ALICE, "spam.example", AccessList.BLOCK),
                SetRules(
                    ALICE,
                    (
                        PresenceRule.refuse(PresenceState.ON_THE_PHONE, "tel:+15550100"),
                        PresenceRule(
                            [PresenceState.AWAY, PresenceState.BUSY],
                            RuleAction.AUTO_REPLY,
                            network=RuleNetwork.LOCAL,
                            text="back soon",
                        ),
                    ),
                ),
            ]
        )
        await store.apply([SetAuthorisation(ALICE, BOB, AuthorisationState.REFUSED, onlyIf=(AuthorisationState.PENDING,))])

        def rows(cursor: sqlite3.Cursor) -> list[list[tuple[str, ...]]]:
            return [
                cursor.execute("SELECT target, watcher, state FROM authorisations ORDER BY target").fetchall(),
                cursor.execute("SELECT entry, list FROM access").fetchall(),
                cursor.execute("SELECT states, action, network, alternate FROM presence_rules ORDER BY position").fetchall(),
            ]

        self.assertEqual(
            await store.database.read(rows),
            [
                [(str(ALICE), str(BOB), "refused"), (str(BOB), str(ALICE), "authorised")],
                [("spam.example", "block")],
                [("on-the-phone", "refuse", "any", "tel:+15550100"), ("busy away", "auto-reply", "local", "")],
            ],
        )
        self.assertEqual(await store.getAuthorisation(ALICE, BOB), AuthorisationState.REFUSED)
        self.assertEqual(await store.getAccessOf(ALICE, CAROL), AccessList.NONE)
        self.assertEqual(await store.getAccess(ALICE), {"spam.example": AccessList.BLOCK})
        self.assertEqual((await store.getRules(ALICE))[0], PresenceRule.refuse(PresenceState.ON_THE_PHONE, "tel:+15550100"))
        self.assertEqual((await store.getRules(ALICE))[1].action, RuleAction.AUTO_REPLY)

    async def test_targetedReadsIndexed(self) -> None:
        """
        The targeted reads look rows up by primary key: their cost does not
        grow with the user's lists. Counting a user's pending requests walks
        the rows whose target the user is, by primary key, not the table.
        """
        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)

        def plan(cursor: sqlite3.Cursor, sql: str, args: tuple[str, ...]) -> list[str]:
            return [row[-1] for row in cursor.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()]

        for sql, args in [
            ("SELECT state FROM authorisations WHERE target = ? AND watcher = ?", ("a@x", "b@x")),
            (
                "SELECT count(*) FROM (SELECT 1 FROM authorisations WHERE target = ? AND state = 'pending' LIMIT ?)",
                ("a@x", "5"),
            ),
            ("SELECT entry, list FROM access WHERE owner = ? AND entry IN (?, ?)", ("a@x", "b@x", "x")),
        ]:
            steps = await store.database.read(plan, sql, args)
            # (Counting scans the rows the subquery found, not a table.)
            self.assertFalse([s for s in steps if s.startswith("SCAN") and "subquery" not in s], steps)
            self.assertTrue([s for s in steps if "PRIMARY KEY" in s], steps)

    async def test_authorisationsIndexed(self) -> None:
        """
        Finding a user's authorisation rows, as target or as watcher, uses
        indexes rather than scanning the table.
        """
        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)

        def plan(cursor: sqlite3.Cursor) -> list[str]:
            rows = cursor.execute(
                "EXPLAIN QUERY PLAN SELECT target, watcher, state FROM authorisations"
                " WHERE target = ? OR watcher = ?",
                ("a@x", "a@x"),
            ).fetchall()
            return [row[-1] for row in rows]

        steps = await store.database.read(plan)
        self.assertFalse([s for s in steps if s.startswith("SCAN")], steps)
        self.assertTrue([s for s in steps if "authorisations_by_watcher" in s], steps)
        self.assertTrue([s for s in steps if "PRIMARY KEY" in s], steps)


    async def test_applyAllOrNothing(self) -> None:
        """
        When one change of an L{IHomeStore.apply} fails, none of them is
        kept.
        """
        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)

        def makeAccessFail(cursor: sqlite3.Cursor) -> None:
            # Refuse any write to the access table, as a full disk would.
            cursor.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON access BEGIN SELECT RAISE(FAIL, 'disk full'); END"
            )

        await store.database.write(makeAccessFail)
        await failed(
            self,
            store.apply(
                [
                    PutContact(ALICE, ContactRecord(BOB, "Bob")),
                    SetAuthorisation(BOB, ALICE, AuthorisationState.PENDING),
                    SetAccess(ALICE, "x.example", AccessList.BLOCK),
                ]
            ),
            PersistenceFailed,
        )
        self.assertEqual(await store.getContacts(ALICE), [])
        self.assertEqual(await store.getAuthorisations(ALICE), [])


class MemoryHomeStoreTests(HomeStoreTestsMixin, TestCase):
    """
    L{MemoryHomeStore} behaves as an L{IHomeStore}, as L{SQLiteHomeStore}
    does.
    """

    async def makeStore(self) -> IHomeStore:
        """
        Make a memory store.
        """
        return MemoryHomeStore()

    def test_hold(self) -> None:
        """
        With C{hold} set, operations wait until L{MemoryHomeStore.release}
        runs them, in the order they were asked for (those asked for while
        releasing included); reads are recorded.
        """
        store = MemoryHomeStore()
        store.hold = True
        write = store.apply([PutContact(ALICE, ContactRecord(BOB))])
        read = store.getContacts(ALICE)
        self.assertNoResult(write)
        self.assertNoResult(read)
        self.assertEqual(store.release(1), 1)
        self.assertIsNone(self.successResultOf(write))
        self.assertNoResult(read)
        later = read.addCallback(lambda _: store.getAuthorisation(BOB, ALICE))
        self.assertEqual(store.release(), 2)
        self.assertIsNone(self.successResultOf(later))
        self.assertEqual(store.reads, [("getContacts", ALICE), ("getAuthorisation", BOB, ALICE)])

    def test_failWrites(self) -> None:
        """
        With C{failWrites} set, writes fail with L{PersistenceFailed} and
        change nothing; reads still work.
        """
        store = MemoryHomeStore()
        self.successResultOf(store.apply([PutContact(ALICE, ContactRecord(BOB))]))
        store.failWrites = True
        self.failureResultOf(
            store.apply(
                [
                    PutContact(ALICE, ContactRecord(CAROL)),
                    RemoveContact(ALICE, BOB),
                    SetAuthorisation(ALICE, BOB, AuthorisationState.PENDING),
                    SetAccess(ALICE, "x.example", AccessList.BLOCK),
                    SetRules(ALICE, (PresenceRule.refuse(PresenceState.BUSY, "x"),)),
                ]
            ),
            PersistenceFailed,
        )
        self.assertEqual(self.successResultOf(store.getContacts(ALICE)), [ContactRecord(BOB)])
        self.assertEqual(self.successResultOf(store.getAuthorisations(ALICE)), [])
        self.assertEqual(self.successResultOf(store.getAccess(ALICE)), {})
        self.assertEqual(self.successResultOf(store.getRules(ALICE)), [])


def userVersion(path: str) -> int:
    """
    Read a database file's C{user_version} with a connection of its own.
    """
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def setUserVersion(path: str, version: int) -> None:
    """
    Create a database file (if need be) with the given C{user_version}.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    connection = sqlite3.connect(path)
    try:
        connection.execute(f"PRAGMA user_version = {version:d}")
        connection.commit()
    finally:
        connection.close()


class MigrationTests(TestCase):
    """
    Schema migrations of the stores, by L{imgateway.sqlite}.
    """

    async def test_freshDirectory(self) -> None:
        """
        A new directory file gets the current schema version.
        """
        path = os.path.join(self.mktemp(), "directory.sqlite3")
        directory = await SQLiteDirectory.open(theReactor(), path)
        await directory.close()
        self.assertEqual(userVersion(path), len(directorySQLite.MIGRATIONS))
        self.assertGreater(len(directorySQLite.MIGRATIONS), 0)

    async def test_freshHomeStore(self) -> None:
        """
        A new home store file gets the current schema version.
        """
        path = os.path.join(self.mktemp(), "home-hs1.sqlite3")
        store = await SQLiteHomeStore.open(theReactor(), FilePath(path))
        await store.close()
        self.assertEqual(userVersion(path), len(homeStore.MIGRATIONS))

    async def test_newerRefused(self) -> None:
        """
        A database with a higher schema version than the code knows is
        refused with L{SchemaTooNew}, naming the file and both versions,
        and left as it was.
        """
        for opener in ["directory", "home store"]:
            path = os.path.join(self.mktemp(), "x.sqlite3")
            setUserVersion(path, 99)
            if opener == "directory":
                opening: Deferred[Any] = SQLiteDirectory.open(theReactor(), path)
                known = len(directorySQLite.MIGRATIONS)
            else:
                opening = SQLiteHomeStore.open(theReactor(), path)
                known = len(homeStore.MIGRATIONS)
            e = await failed(self, opening, SchemaTooNew)
            self.assertIn(path, str(e))
            self.assertIn("99", str(e))
            self.assertIn(f"version {known})", str(e))
            self.assertEqual(userVersion(path), 99)

    async def test_directorySurvivesReopen(self) -> None:
        """
        Accounts survive closing and reopening the directory file, and the
        schema is not migrated again.
        """
        path = os.path.join(self.mktemp(), "directory.sqlite3")
        directory = await SQLiteDirectory.open(theReactor(), path)
        await directory.addAccount(account("alice@corp.example", "Alice"))
        await directory.updateAccount(ALICE, enabled=False)
        await directory.close()
        directory = await SQLiteDirectory.open(theReactor(), path)
        self.addCleanup(directory.close)
        self.assertEqual(
            await directory.listAccounts(), [account("alice@corp.example", "Alice", enabled=False)]
        )

    async def test_homeStoreSurvivesReopen(self) -> None:
        """
        Everything a home store keeps survives closing and reopening it.
        """
        path = os.path.join(self.mktemp(), "home-hs1.sqlite3")
        store = await SQLiteHomeStore.open(theReactor(), path)
        await store.apply([PutContact(ALICE, ContactRecord(BOB, "Bob"))])
        await store.apply([SetAuthorisation(BOB, ALICE, AuthorisationState.AUTHORISED)])
        await store.apply([SetAccess(ALICE, "spam.example", AccessList.BLOCK)])
        await store.apply([SetRules(ALICE, (PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100"),))])
        await store.close()
        store = await SQLiteHomeStore.open(theReactor(), path)
        self.addCleanup(store.close)
        self.assertEqual(await store.getContacts(ALICE), [ContactRecord(BOB, "Bob")])
        self.assertEqual(
            await store.getAuthorisations(ALICE), [(BOB, ALICE, AuthorisationState.AUTHORISED)]
        )
        self.assertEqual(await store.getAccess(ALICE), {"spam.example": AccessList.BLOCK})
        self.assertEqual(await store.getRules(ALICE), [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100")])

    async def test_stepByStep(self) -> None:
        """
        Opening a database with more migrations than it has seen applies
        only the new ones, keeping the data.
        """
        path = os.path.join(self.mktemp(), "x.sqlite3")
        v1 = [["CREATE TABLE t (a TEXT PRIMARY KEY)"]]
        database = await openDatabase(theReactor(), path, v1)

        def insert(cursor: sqlite3.Cursor, value: str) -> None:
            cursor.execute("INSERT INTO t (a) VALUES (?)", (value,))

        await database.write(insert, "one")
        await database.close()
        self.assertEqual(userVersion(path), 1)

        v3 = v1 + [
            ["ALTER TABLE t ADD COLUMN b TEXT NOT NULL DEFAULT 'x'"],
            ["CREATE TABLE u (c TEXT)", "INSERT INTO u (c) SELECT a FROM t"],
        ]
        database = await openDatabase(theReactor(), path, v3)
        self.addCleanup(database.close)

        def everything(cursor: sqlite3.Cursor) -> list[tuple[str, ...]]:
            return cursor.execute("SELECT a, b, c FROM t, u").fetchall()

        self.assertEqual(await database.read(everything), [("one", "x", "one")])
        self.assertEqual(userVersion(path), 3)

    async def test_failedMigrationRolledBack(self) -> None:
        """
        A migration that fails leaves nothing of itself: the earlier ones
        stay applied, the version says so, and opening fails with
        L{PersistenceFailed}.
        """
        path = os.path.join(self.mktemp(), "x.sqlite3")
        migrations = [
            ["CREATE TABLE t (a TEXT)"],
            ["CREATE TABLE u (b TEXT)", "INSERT INTO t (nosuchcolumn) VALUES (1)"],
        ]
        e = await failed(self, openDatabase(theReactor(), path, migrations), PersistenceFailed)
        self.assertIn("nosuchcolumn", str(e))
        self.assertEqual(userVersion(path), 1)
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        self.assertEqual(tables, [("t",)])


class DatabaseTests(TestCase):
    """
    Tests for L{imgateway.sqlite.openDatabase} and L{Database}.
    """

    async def openDatabase(self, path: str | None = None, busyTimeout: float = 5.0) -> Database:
        """
        Open a database with one table C{t (a TEXT)}, closed at cleanup.
        """
        if path is None:
            path = os.path.join(self.mktemp(), "x.sqlite3")
        database = await openDatabase(
            theReactor(), path, [["CREATE TABLE t (a TEXT)"]], busyTimeout=busyTimeout
        )
        self.addCleanup(database.close)
        return database

    async def test_pragmas(self) -> None:
        """
        The connection uses WAL, synchronous=NORMAL, foreign keys and a busy
        timeout.
        """
        database = await openDatabase(
            theReactor(), os.path.join(self.mktemp(), "x.sqlite3"), [], busyTimeout=2.5
        )
        self.addCleanup(database.close)

        def pragmas(cursor: sqlite3.Cursor) -> list[object]:
            return [
                cursor.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ["journal_mode", "synchronous", "foreign_keys", "busy_timeout"]
            ]

        self.assertEqual(await database.read(pragmas), ["wal", 1, 1, 2500])

    async def test_folderCreated(self) -> None:
        """
        A missing folder of the database is created, readable by its owner
        only.
        """
        folder = os.path.abspath(self.mktemp())
        await self.openDatabase(os.path.join(folder, "x.sqlite3"))
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode) & 0o077, 0)
        self.assertTrue(os.path.exists(os.path.join(folder, "x.sqlite3")))

    async def test_folderNotCreated(self) -> None:
        """
        If the folder cannot be created, opening fails with
        L{PersistenceFailed} naming it.
        """
        blocker = self.mktemp()
        FilePath(blocker).setContent(b"a file, not a folder")
        e = await failed(self, 
            openDatabase(theReactor(), os.path.join(blocker, "x.sqlite3"), []), PersistenceFailed
        )
        self.assertIn(os.path.abspath(blocker), str(e))

    async def test_notADatabase(self) -> None:
        """
        A file that is not an SQLite database is refused with
        L{PersistenceFailed} saying so.
        """
        path = self.mktemp()
        FilePath(path).setContent(b"this is not an SQLite database, not at all" * 100)
        e = await failed(self, openDatabase(theReactor(), path, []), PersistenceFailed)
        self.assertIn("not an SQLite database", str(e))
        self.assertIn(path, str(e))

    async def test_memory(self) -> None:
        """
        C{":memory:"} opens a private in-memory database.
        """
        database = await self.openDatabase(":memory:")

        def roundTrip(cursor: sqlite3.Cursor) -> list[tuple[str]]:
            cursor.execute("INSERT INTO t (a) VALUES ('x')")
            return cursor.execute("SELECT a FROM t").fetchall()

        self.assertEqual(await database.write(roundTrip), [("x",)])

    async def test_writeRolledBack(self) -> None:
        """
        When the function given to L{Database.write} raises, nothing it
        wrote is kept and its exception comes through.
        """
        database = await self.openDatabase()

        def halfway(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t (a) VALUES ('x')")
            raise AccountExists("no")

        await failed(self, database.write(halfway), AccountExists)
        self.assertEqual(await database.read(lambda c: c.execute("SELECT a FROM t").fetchall()), [])

    async def test_programmingErrorNotMapped(self) -> None:
        """
        A L{sqlite3.ProgrammingError} (a bug, not a storage failure) comes
        through as it is.
        """
        database = await self.openDatabase()

        def wrongArguments(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t (a) VALUES (?)", (1, 2))

        await failed(self, database.write(wrongArguments), sqlite3.ProgrammingError)

    async def test_readErrorsNotMapped(self) -> None:
        """
        A read that fails for a reason other than the storage's (here a
        misspelt column) fails with SQLite's error, not
        L{PersistenceFailed}.
        """
        database = await self.openDatabase()
        await failed(self, 
            database.read(lambda c: c.execute("SELECT nosuch FROM t").fetchall()),
            sqlite3.OperationalError,
        )

    def test_messages(self) -> None:
        """
        L{persistenceFailed} names the file and explains SQLite's message;
        for reads it maps only failures of the storage.
        """
        full = sqlite3.OperationalError("database or disk is full")
        e = persistenceFailed("/d/x.sqlite3", full, True)
        assert e is not None
        self.assertEqual(
            str(e),
            "could not write to /d/x.sqlite3: the disk is full, or the database "
            "reached its size limit (database or disk is full)",
        )
        e = persistenceFailed("/d/x.sqlite3", sqlite3.OperationalError("disk I/O error"), False)
        assert e is not None
        self.assertEqual(str(e), "could not read /d/x.sqlite3: disk I/O error")
        e = persistenceFailed("/d/x.sqlite3", sqlite3.IntegrityError("CHECK constraint failed"), True)
        assert e is not None
        self.assertEqual(str(e), "could not write to /d/x.sqlite3: CHECK constraint failed")
        self.assertIsNone(persistenceFailed("/d/x.sqlite3", sqlite3.IntegrityError("x"), False))
        self.assertIsNone(persistenceFailed("/d/x.sqlite3", sqlite3.ProgrammingError("x"), True))
        self.assertIsNone(persistenceFailed("/d/x.sqlite3", sqlite3.InterfaceError("x"), True))

    async def test_diskFull(self) -> None:
        """
        When the database cannot grow, a write fails with
        L{PersistenceFailed} saying why; it leaves nothing, and what was
        written before is still there.
        """
        path = os.path.join(self.mktemp(), "directory.sqlite3")
        directory = await SQLiteDirectory.open(theReactor(), path)
        self.addCleanup(directory.close)

        def limit(cursor: sqlite3.Cursor) -> None:
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {pages + 4:d}").fetchall()

        await directory.database.read(limit)
        added = []
        for n in range(200):
            record = AccountRecord(addr(f"user{n}@corp.example"), "hs1", "", True, "c" * 2000)
            try:
                await directory.addAccount(record)
            except PersistenceFailed as e:
                self.assertIn(path, str(e))
                self.assertIn("disk is full", str(e))
                break
            added.append(record)
        else:
            self.fail("the database never filled up")
        self.assertTrue(added)
        self.assertEqual(await directory.listAccounts(), sorted(added, key=lambda r: r.address))
        self.assertIsNone(await directory.getAccount(addr(f"user{len(added)}@corp.example")))
        await failed(self, 
            directory.updateAccount(added[0].address, credentials="d" * 20000), PersistenceFailed
        )
        self.assertEqual(await directory.getAccount(added[0].address), added[0])

    async def test_locked(self) -> None:
        """
        While another connection holds the write lock, reads go on (WAL);
        a write waits for the busy timeout, then fails with
        L{PersistenceFailed} saying the database is locked.
        """
        path = os.path.join(self.mktemp(), "x.sqlite3")
        database = await self.openDatabase(path, busyTimeout=0.05)
        other = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (a) VALUES ('uncommitted')")
        self.assertEqual(await database.read(lambda c: c.execute("SELECT a FROM t").fetchall()), [])
        e = await failed(self, 
            database.write(lambda c: c.execute("INSERT INTO t (a) VALUES ('x')").fetchall()),
            PersistenceFailed,
        )
        self.assertIn("locked", str(e))
        other.execute("COMMIT")
        self.assertEqual(
            await database.read(lambda c: c.execute("SELECT a FROM t").fetchall()), [("uncommitted",)]
        )

    async def test_closeWaits(self) -> None:
        """
        L{Database.close} lets the operations under way finish, and fires
        after them; operations asked for after it fail with
        L{PersistenceFailed}.
        """
        database = await self.openDatabase()
        order: list[str] = []
        written = database.write(lambda c: c.execute("INSERT INTO t (a) VALUES ('x')").fetchall())
        written.addCallback(lambda _: order.append("written"))
        closed = database.close()
        closed.addCallback(lambda _: order.append("closed"))
        late = database.read(lambda c: c.execute("SELECT a FROM t").fetchall())
        await failed(self, late, PersistenceFailed)
        await closed
        self.assertEqual(order, ["written", "closed"])
        await database.close()


class HomeServerOnSQLiteTests(TestCase):
    """
    A home server on a real SQLite file: one user's pipelined requests take
    effect in the order sent, each in one transaction.
    """

    async def test_pipelinedUnsubscribeSubscribe(self) -> None:
        """
        C{UNSUBSCRIBE} then C{SUBSCRIBE} of the same contact, sent back to
        back, leave the target holding a request that the sender's contact
        list has, every time, whether the target is online or not.
        """
        from imgateway.home.server import HomeServer
        from imgateway.router.router import Router
        from imgateway.testing import RecordingSessionClient

        store = await SQLiteHomeStore.open(theReactor(), os.path.join(self.mktemp(), "h.sqlite3"))
        self.addCleanup(store.close)
        directory = MemoryDirectory([account("alice@corp.example"), account("dave@corp.example")])
        router = Router()
        home = HomeServer("hs1", "corp.example", directory, store, router, cast(Any, theReactor()))
        router.addRoute("corp.example", home, local=True)
        alice = await home.openSession(ALICE, RecordingSessionClient(), "desk")
        self.addCleanup(alice.close)
        await alice.subscribe(DAVE, "Dave")
        for round in range(20):
            if round == 10:
                dave = await home.openSession(DAVE, RecordingSessionClient(), "desk")
                self.addCleanup(dave.close)
            first = alice.unsubscribe(DAVE)
            second = alice.subscribe(DAVE, "Dave")
            await first
            self.assertIs(await second, AuthorisationState.PENDING)
            self.assertEqual(await store.getContacts(ALICE), [ContactRecord(DAVE, "Dave")], round)
            self.assertEqual(
                await store.getAuthorisations(DAVE), [(DAVE, ALICE, AuthorisationState.PENDING)], round
            )
        self.assertEqual(await dave.pendingRequests(), [ALICE])

    async def test_pendingRequestsLimit(self) -> None:
        """
        C{max_pending_requests} on a real SQLite file: the requests kept
        are there after a restart, those past the limit are not (their
        senders' contacts are), and the limit still holds after it for
        requests from other networks and from this server; answering one
        makes room for one more.
        """
        from imgateway.config import HomeConfig
        from imgateway.core.events import SubscriptionEvent, SubscriptionKind
        from imgateway.home.server import HomeServer
        from imgateway.router.router import Router
        from imgateway.testing import RecordingSessionClient

        path = os.path.join(self.mktemp(), "h.sqlite3")
        directory = MemoryDirectory([account(f"{n}@corp.example") for n in ("alice", "bob", "dave")])
        remotes = [addr(f"r{n}@xmpp.example") for n in range(5)]
        pending = AuthorisationState.PENDING

        async def start() -> tuple[SQLiteHomeStore, HomeServer]:
            store = await SQLiteHomeStore.open(theReactor(), path)
            self.addCleanup(store.close)
            router = Router()
            home = HomeServer(
                "hs1", "corp.example", directory, store, router, cast(Any, theReactor()), HomeConfig(maxPendingRequests=3)
            )
            router.addRoute("corp.example", home, local=True)
            return store, home

        def ask(home: HomeServer, watcher: Address) -> Deferred[Any]:
            return home.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, watcher, ALICE))

        store, home = await start()
        for r in remotes[:4]:
            self.assertEqual(await ask(home, r), DeliveryStatus.DELIVERED)
        dave = await home.openSession(DAVE, RecordingSessionClient(), "desk")
        self.assertIs(await dave.subscribe(ALICE, "Alice"), pending)
        dave.close()
        await home.drain()
        await store.close()

        store, home = await start()
        self.assertEqual(await store.getAuthorisations(ALICE), [(ALICE, r, pending) for r in remotes[:3]])
        self.assertEqual(await store.getContacts(DAVE), [ContactRecord(ALICE, "Alice")])
        alice = await home.openSession(ALICE, RecordingSessionClient(), "desk")
        self.addCleanup(alice.close)
        self.assertEqual(await alice.pendingRequests(), remotes[:3])
        self.assertEqual(await ask(home, remotes[4]), DeliveryStatus.DELIVERED)
        bob = await home.openSession(BOB, RecordingSessionClient(), "desk")
        self.addCleanup(bob.close)
        self.assertIs(await bob.subscribe(ALICE), pending)
        self.assertEqual(await alice.pendingRequests(), remotes[:3])
        self.assertEqual(await store.getAuthorisations(ALICE), [(ALICE, r, pending) for r in remotes[:3]])
        await alice.authorise(remotes[0], False)
        self.assertEqual(await ask(home, remotes[4]), DeliveryStatus.DELIVERED)
        self.assertEqual(await alice.pendingRequests(), [remotes[1], remotes[2], remotes[4]])
        self.assertIs(await store.getAuthorisation(ALICE, remotes[4]), pending)
        await home.drain()


def _rows(path: str) -> list[str]:
    """
    What table C{t} of the database at C{path} holds, committed, as another
    connection sees it.
    """
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT a FROM t ORDER BY rowid")]
    finally:
        connection.close()


def _insert(value: str) -> Callable[[sqlite3.Cursor], str]:
    """
    A write that inserts C{value} into table C{t} and returns it.
    """

    def insert(cursor: sqlite3.Cursor) -> str:
        cursor.execute("INSERT INTO t (a) VALUES (?)", (value,))
        return value

    return insert


class DurabilityTests(TestCase):
    """
    L{Durability} chooses what an acknowledged write survives, through
    SQLite's C{synchronous} setting.
    """

    def synchronous(self, database: Database) -> Deferred[int]:
        """
        @return: The connection's C{PRAGMA synchronous}.
        """
        return database.read(lambda c: int(c.execute("PRAGMA synchronous").fetchone()[0]))

    async def test_default(self) -> None:
        """
        By default a database survives a process kill: C{synchronous=NORMAL}
        (1) with WAL.
        """
        database = await openDatabase(theReactor(), os.path.join(self.mktemp(), "x.sqlite3"), [])
        self.addCleanup(database.close)
        self.assertEqual(await self.synchronous(database), 1)
        self.assertIs(database.durability, Durability.PROCESS)

    async def test_power(self) -> None:
        """
        L{Durability.POWER} syncs every commit to disk: C{synchronous=FULL}
        (2), through L{openDatabase} and L{openDatabaseNow} alike.
        """
        folder = self.mktemp()
        database = await openDatabase(
            theReactor(), os.path.join(folder, "x.sqlite3"), [], durability=Durability.POWER
        )
        self.addCleanup(database.close)
        self.assertEqual(await self.synchronous(database), 2)
        now = openDatabaseNow(theReactor(), os.path.join(folder, "y.sqlite3"), [], durability=Durability.POWER)
        self.addCleanup(now.close)
        self.assertEqual(await self.synchronous(now), 2)
        self.assertIs(now.durability, Durability.POWER)

    def test_names(self) -> None:
        """
        The configuration names of the durability levels are C{"process"}
        and C{"power"}.
        """
        self.assertEqual([d.value for d in Durability], ["process", "power"])


class GroupCommitTests(TestCase):
    """
    L{Database} commits the writes queued while another operation runs in
    one SQLite transaction, each isolated by a savepoint, and answers each
    caller only once that transaction has committed.
    """

    async def openDatabase(self, **kwargs: Any) -> tuple[Database, str]:
        """
        Open a database file with one table C{t (a TEXT)} (and C{child}, whose
        deferred foreign key points at it), closed at cleanup.

        @return: The database and its path.
        """
        path = os.path.join(self.mktemp(), "x.sqlite3")
        database = await openDatabase(
            theReactor(),
            path,
            [[
                "CREATE TABLE t (a TEXT PRIMARY KEY)",
                "CREATE TABLE child (a TEXT REFERENCES t (a) DEFERRABLE INITIALLY DEFERRED)",
            ]],
            **kwargs,
        )
        self.addCleanup(database.close)
        # Opening answers from the migration's group; let it end, so that
        # the test's first operation starts a group of its own.
        await deferLater(cast(IReactorTime, theReactor()), 0, lambda: None)
        return database, path

    def traced(self, database: Database, statements: list[str]) -> Deferred[str]:
        """
        Queue a write that records every statement the connection runs from
        then on into C{statements} (its own C{COMMIT} included).
        """

        def trace(cursor: sqlite3.Cursor) -> str:
            cursor.connection.set_trace_callback(statements.append)
            return "traced"

        return database.write(trace)

    async def test_answersSpreadOverTurns(self) -> None:
        """
        With a clock, a group's callers are answered C{answersPerTurn} in
        each turn of the reactor, in order: a group of 10 with 4 per turn is
        answered 4, then 4, then 2, the later turns scheduled on the clock;
        the next group starts after the last answer.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "x.sqlite3")
        clock = Clock()
        database = Database(openPool(theReactor(), path), path, clock=clock, answersPerTurn=4)
        await database.migrate([["CREATE TABLE t (a TEXT PRIMARY KEY)"]])
        # Let the migration's group end, so that "first" is a group alone.
        await deferLater(cast(IReactorTime, theReactor()), 0, lambda: None)
        first = database.write(_insert("first"))
        answered: list[str] = []
        group = [database.write(_insert(f"v{n}")).addCallback(answered.append) for n in range(10)]
        self.assertEqual(await first, "first")
        while not answered:
            await deferLater(cast(IReactorTime, theReactor()), 0.01, lambda: None)
        self.assertEqual(answered, [f"v{n}" for n in range(4)])
        later = database.write(_insert("later"))
        # Real turns of the reactor pass: the rest waits for the clock, and
        # the next group for the rest.
        await deferLater(cast(IReactorTime, theReactor()), 0.1, lambda: None)
        self.assertEqual(len(answered), 4)
        self.assertFalse(later.called)
        for expected in (8, 10):
            [call] = clock.getDelayedCalls()
            clock.calls.remove(call)  # type: ignore[arg-type]
            call.func(*call.args, **call.kw)  # type: ignore[attr-defined]
            self.assertEqual(len(answered), expected)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(await later, "later")
        self.assertEqual(answered, [f"v{n}" for n in range(10)])
        del group
        await database.close()

    async def test_queuedWritesCommitTogether(self) -> None:
        """
        Writes asked for while another runs are committed together, in one
        transaction (one C{COMMIT}), each in a savepoint of its own; each
        caller gets its result.
        """
        database, path = await self.openDatabase()
        statements: list[str] = []
        first = self.traced(database, statements)
        queued = [database.write(_insert(f"v{n}")) for n in range(5)]
        self.assertEqual(await first, "traced")
        self.assertEqual([await d for d in queued], [f"v{n}" for n in range(5)])
        self.assertEqual([s for s in statements if s.startswith(("BEGIN", "COMMIT"))], ["COMMIT", "BEGIN IMMEDIATE", "COMMIT"])
        self.assertEqual(len([s for s in statements if s.startswith("SAVEPOINT")]), 5)
        self.assertEqual(_rows(path), [f"v{n}" for n in range(5)])

    async def test_answeredAfterCommit(self) -> None:
        """
        A write's caller is answered only once its change is committed:
        another connection sees it from the caller's callback on.
        """
        database, path = await self.openDatabase()
        seen: list[list[str]] = []
        writes = [database.write(_insert(f"v{n}")).addCallback(lambda _: seen.append(_rows(path))) for n in range(4)]
        for d in writes:
            await d
        self.assertEqual(len(seen), 4)
        for n, rows in enumerate(seen):
            self.assertIn(f"v{n}", rows)

    async def test_failureIsolated(self) -> None:
        """
        A write that raises inside a group loses only its own changes and
        fails only its own L{Deferred}; the others of its group are
        committed.
        """
        database, path = await self.openDatabase()

        def halfway(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t (a) VALUES ('lost')")
            raise AccountExists("no")

        statements: list[str] = []
        first = self.traced(database, statements)
        before = database.write(_insert("before"))
        failing = database.write(halfway)
        after = database.write(_insert("after"))
        await first
        self.assertEqual(await before, "before")
        await failed(self, failing, AccountExists)
        self.assertEqual(await after, "after")
        self.assertEqual(statements.count("COMMIT"), 2)
        self.assertEqual(_rows(path), ["before", "after"])

    async def test_orderKept(self) -> None:
        """
        Operations take effect in the order asked for, reads included: a
        read queued after a write sees it, one queued before does not; the
        callers are answered in that order.
        """
        database, path = await self.openDatabase()
        answered: list[object] = []

        def count(cursor: sqlite3.Cursor) -> int:
            return int(cursor.execute("SELECT count(*) FROM t").fetchone()[0])

        operations: list[Deferred[Any]] = [
            database.write(_insert("a")),
            database.read(count),
            database.write(_insert("b")),
            database.read(count),
            database.write(lambda c: c.execute("DELETE FROM t WHERE a = 'a'").rowcount),
            database.read(count),
        ]
        for d in operations:
            d.addCallback(answered.append)
        for d in operations:
            await d
        self.assertEqual(answered, ["a", 1, "b", 2, 1, 1])
        self.assertEqual(_rows(path), ["b"])

    async def test_commitFailureFailsTheGroup(self) -> None:
        """
        When a group's commit fails, every write of the group fails with
        L{PersistenceFailed} and none is kept (nothing is acknowledged that
        was not committed); a write that had failed on its own keeps its
        own exception; the next write works.
        """
        database, path = await self.openDatabase()

        def halfway(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t (a) VALUES ('lost')")
            raise AccountExists("no")

        first = self.traced(database, [])
        grouped: list[Deferred[Any]] = [
            database.write(_insert("one")),
            # A deferred foreign key: checked only when the group commits.
            database.write(lambda c: c.execute("INSERT INTO child (a) VALUES ('nowhere')").rowcount),
            database.write(_insert("two")),
        ]
        own = database.write(halfway)
        await first
        await failed(self, own, AccountExists)
        for d in grouped:
            e = await failed(self, d, PersistenceFailed)
            self.assertIn("FOREIGN KEY", str(e))
        self.assertEqual(_rows(path), [])
        self.assertEqual(await database.write(_insert("three")), "three")
        self.assertEqual(_rows(path), ["three"])

    async def test_abortedGroup(self) -> None:
        """
        When SQLite rolls back the whole transaction of a group (here the
        disk is full), the writes of the group done before fail with
        L{PersistenceFailed} too, since their changes are gone; the writes
        after it run in a new transaction. What is on disk is exactly what
        was acknowledged.
        """
        database, path = await self.openDatabase()

        def limit(cursor: sqlite3.Cursor) -> None:
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {pages + 3:d}").fetchall()

        await database.read(limit)
        await deferLater(cast(IReactorTime, theReactor()), 0, lambda: None)
        first = self.traced(database, [])
        small = database.write(_insert("small"))
        huge = database.write(lambda c: [_insert(f"{n}" + "x" * 3000)(c) for n in range(50)])
        later = database.write(_insert("later"))
        await first
        e = await failed(self, small, PersistenceFailed)
        self.assertIn("disk is full", str(e))
        await failed(self, huge, PersistenceFailed)
        self.assertEqual(await later, "later")
        self.assertEqual(_rows(path), ["later"])

    async def test_maxGroup(self) -> None:
        """
        A group holds at most C{maxGroup} operations; with C{maxGroup=1}
        every write commits alone.
        """
        for maxGroup, commits in [(1, 6), (2, 4), (5, 2)]:
            database, path = await self.openDatabase(maxGroup=maxGroup)
            statements: list[str] = []
            first = self.traced(database, statements)
            queued = [database.write(_insert(f"v{n}")) for n in range(5)]
            await first
            for d in queued:
                await d
            self.assertEqual((maxGroup, statements.count("COMMIT")), (maxGroup, commits))
            self.assertEqual(_rows(path), [f"v{n}" for n in range(5)])

    async def test_closeWaitsForQueued(self) -> None:
        """
        L{Database.close} waits for every operation queued before it, each
        committed and answered; an operation asked for after it fails with
        L{PersistenceFailed}.
        """
        database, path = await self.openDatabase()
        answered: list[str] = []
        queued = [database.write(_insert(f"v{n}")).addCallback(answered.append) for n in range(20)]
        closed = database.close()
        closed.addCallback(lambda _: answered.append("closed"))
        await failed(self, database.write(_insert("late")), PersistenceFailed)
        await closed
        self.assertEqual(answered, [f"v{n}" for n in range(20)] + ["closed"])
        self.assertEqual(_rows(path), [f"v{n}" for n in range(20)])
        for d in queued:
            await d

    async def test_lockedGroupReadsGoOn(self) -> None:
        """
        While another connection holds the write lock past the busy timeout,
        the writes of a group fail with L{PersistenceFailed} saying the
        database is locked, and the reads of the same group still get their
        results, in order.
        """
        database, path = await self.openDatabase(busyTimeout=0.05)
        await database.write(_insert("before"))
        await deferLater(cast(IReactorTime, theReactor()), 0, lambda: None)
        other = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(other.close)
        first = database.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        other.execute("BEGIN IMMEDIATE")
        grouped: list[Deferred[Any]] = [
            database.read(lambda c: [r[0] for r in c.execute("SELECT a FROM t")]),
            database.write(_insert("blocked")),
            database.read(lambda c: [r[0] for r in c.execute("SELECT a FROM t")]),
        ]
        self.assertEqual(await first, 1)
        self.assertEqual(await grouped[0], ["before"])
        e = await failed(self, grouped[1], PersistenceFailed)
        self.assertIn("locked", str(e))
        self.assertEqual(await grouped[2], ["before"])
        other.execute("COMMIT")
        self.assertEqual(await database.write(_insert("after")), "after")
        self.assertEqual(_rows(path), ["before", "after"])
