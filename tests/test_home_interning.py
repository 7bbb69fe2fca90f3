"""
Tests for L{imgateway.home._interning} and its use by the home server: one
L{Address} (and contact record) object per address for all the users whose
rows are cached.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.records import (
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    HomeChange,
    PutContact,
    SetAuthorisation,
)
from imgateway.home._interning import internAddress, internContact
from imgateway.home.server import HomeServer, _UserState
from imgateway.router.router import Router
from imgateway.testing import MemoryDirectory, MemoryHomeStore, RecordingSessionClient

DOMAIN = "corp.example"


def fresh(local: str, domain: str = DOMAIN) -> Address:
    """
    @return: A new L{Address} of new strings, as a store's read makes one.
    """
    return Address("".join(list(local)), "".join(list(domain)))


class InternAddressTests(SynchronousTestCase):
    """
    L{internAddress}.
    """

    def test_equalGivesTheFirst(self) -> None:
        """
        An address equal to one interned before gives that object.
        """
        first = internAddress(fresh("ia-first"))
        second = fresh("ia-first")
        self.assertIsNot(first, second)
        self.assertIs(internAddress(second), first)
        self.assertEqual(internAddress(second), second)

    def test_domainShared(self) -> None:
        """
        Two addresses of one domain interned hold one domain string.
        """
        a = internAddress(fresh("ia-a", "shared.example"))
        b = internAddress(fresh("ia-b", "shared.example"))
        self.assertEqual((a.local, a.domain), ("ia-a", "shared.example"))
        self.assertIs(a.domain, b.domain)

    def test_weak(self) -> None:
        """
        The table does not keep an address alive: once nothing else keeps
        it, the next equal address is interned in its place.
        """
        first = internAddress(fresh("ia-weak"))
        ref = weakref.ref(first)
        del first
        gc.collect()
        self.assertIsNone(ref())
        again = internAddress(fresh("ia-weak"))
        self.assertEqual(again, fresh("ia-weak"))
        self.assertIs(internAddress(fresh("ia-weak")), again)


class InternContactTests(SynchronousTestCase):
    """
    L{internContact}.
    """

    def test_shared(self) -> None:
        """
        Equal contact records give one object, whose address is interned.
        """
        address = internAddress(fresh("ic-bob"))
        first = internContact(ContactRecord(fresh("ic-bob")))
        self.assertIs(first.address, address)
        self.assertIs(internContact(ContactRecord(fresh("ic-bob"))), first)

    def test_names(self) -> None:
        """
        Records of one contact under different names stay apart, and share
        the address object.
        """
        plain = internContact(ContactRecord(fresh("ic-carol")))
        named = internContact(ContactRecord(fresh("ic-carol"), "Carol"))
        self.assertEqual((plain.displayName, named.displayName), ("", "Carol"))
        self.assertIs(plain.address, named.address)


    def test_weak(self) -> None:
        """
        The table keeps neither a record nor its address alive.
        """
        record = internContact(ContactRecord(fresh("ic-weak"), "W"))
        refs = weakref.ref(record), weakref.ref(record.address)
        del record
        gc.collect()
        self.assertEqual([r() for r in refs], [None, None])


class HomeServerInterningTests(SynchronousTestCase):
    """
    The home server's cached rows hold interned addresses: users who share
    a contact share its object, however many the store's rows made.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory()
        self.store = MemoryHomeStore()
        for local in ("hi-alice", "hi-bob", "hi-carol"):
            self.directory.addAccount(AccountRecord(fresh(local), "hs1", local, True, "{}"))
        changes: list[HomeChange] = []
        for me in ("hi-alice", "hi-carol"):
            # New objects in every row, as SQLite's reads give.
            changes += [
                PutContact(fresh(me), ContactRecord(fresh("hi-bob"))),
                SetAuthorisation(fresh(me), fresh("hi-bob"), AuthorisationState.AUTHORISED),
                SetAuthorisation(fresh("hi-bob"), fresh(me), AuthorisationState.AUTHORISED),
            ]
        self.store.apply(changes)
        self.router = Router()
        self.home = HomeServer("hs1", DOMAIN, self.directory, self.store, self.router, self.clock, HomeConfig())
        self.router.addRoute(DOMAIN, self.home, local=True)

    def stateOf(self, local: str) -> _UserState:
        self.successResultOf(self.home.openSession(fresh(local), RecordingSessionClient()))
        return self.home._users[fresh(local)]

    def test_rowsShareAddresses(self) -> None:
        """
        Two users with the same contact hold one L{Address} object and one
        contact record for it, in their contacts and both ways of their
        authorisations.
        """
        alice, carol = self.stateOf("hi-alice"), self.stateOf("hi-carol")
        [(aliceKey, aliceRecord)] = alice.contacts.items()
        [(carolKey, carolRecord)] = carol.contacts.items()
        self.assertIs(aliceKey, carolKey)
        self.assertIs(aliceRecord, carolRecord)
        self.assertIs(aliceRecord.address, aliceKey)
        for state in (alice, carol):
            self.assertIs(list(state.watchers)[0], aliceKey)
            self.assertIs(list(state.watching)[0], aliceKey)

    def test_ownAddressShared(self) -> None:
        """
        A user's own address is the object its contacts' rows hold for it.
        """
        bob = self.stateOf("hi-bob")
        alice = self.stateOf("hi-alice")
        self.assertIs(list(alice.contacts)[0], bob.address)
        self.assertIn(alice.address, bob.watchers)
        self.assertIs([w for w in bob.watchers if w == alice.address][0], alice.address)

    def test_changesInterned(self) -> None:
        """
        A contact added while the user is cached is interned too.
        """
        alice = self.stateOf("hi-alice")
        carol = self.stateOf("hi-carol")
        [session] = self.home.sessionsOf(fresh("hi-alice"))
        self.successResultOf(session.putContact(fresh("hi-carol"), "C"))
        record = alice.contacts[fresh("hi-carol")]
        self.assertEqual(record, ContactRecord(fresh("hi-carol"), "C"))
        self.assertIs(record.address, carol.address)
        self.assertIs([c for c in alice.contacts if c == record.address][0], carol.address)
