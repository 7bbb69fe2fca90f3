# -*- test-case-name: tests.test_admin,tests.e2e.test_admin -*-
"""
Moving an account from one home server to another (C{imgateway-admin user
move}): its contacts, authorisations, access lists and presence rules go
from the old home server's store to the new one's, then the directory names
the new home.

What moves, in the home store's terms (L{imgateway.interfaces.IHomeStore}):

  - the rows the user owns: its contacts (C{owner} is the user), its
    access-list entries and its presence rules, all of them;
  - the authorisation rows with the user as C{target} (who may watch the
    user: its own decisions) or as C{watcher} (whom the user watches or
    asked to watch). Such a row relates two users; each home server keeps
    the rows of the pairs its users are in, so a pair whose two users live
    on different home servers has a copy on each. So:
      - a row whose other user is homed on the old home server is copied,
        and also stays there (that user still needs it);
      - a row whose other user is homed on the new home server already has
        that server's copy: the two become one row, and where they differ
        the copy of the pair's C{target} wins (the target's home server
        decides who may watch the target; the watcher's copy only mirrors
        what reached it): the user's row when the user is the target, the
        new home server's row otherwise;
      - any other row (a user of another domain, or homed on a third home
        server, or no account) is copied, and leaves the old store.

Contacts other users keep of the user are theirs, and stay where they are.

The order of the writes keeps the user's data whole, at every moment, in
the store of the home server the directory names, so that a crash at any
point loses nothing, and running the move again finishes it:

  1. the directory records the move and disables the account, in one
     transaction (L{SQLiteDirectory.beginMove
     <imgateway.directory.sqlite.SQLiteDirectory.beginMove>}): no login can
     start until the move is done;
  2. the new store takes the user's data, in one transaction (what it held
     for the user before is replaced, so doing it again is harmless);
  3. the directory names the new home server;
  4. the old store forgets the user's rows, in one transaction;
  5. once the servers can no longer remember the old home (C{settle}
     seconds: C{[router] directory_cache_seconds}), the directory enables
     the account again if it was enabled before, and forgets the move, in
     one transaction.

A move found under way (the directory keeps it) resumes at step 2 if the
directory still names the old home server, else at step 4.

The user must be offline: disabling the account stops new logins, but a
session open on the old home server could still change its data after the
copy. The operator ends such sessions first (the user logs out, or the old
home server restarts); see docs/operations.md, "Moving a user".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import attrs
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from imgateway.core.address import Address
from imgateway.core.errors import ImgatewayError, NoSuchAccount
from imgateway.core.records import (
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    HomeChange,
    MoveRecord,
    PresenceRule,
    PutContact,
    RemoveContact,
    SetAccess,
    SetAuthorisation,
    SetRules,
)
from imgateway.interfaces import IHomeStore

__all__ = ["MoveDirectory", "MoveRefused", "MoveSummary", "moveAccount"]


class MoveRefused(ImgatewayError):
    """
    The move cannot be done (or resumed) as asked; the message says why.
    """


class MoveDirectory(Protocol):
    """
    What a move needs of the directory: accounts, and moves under way (as
    L{imgateway.directory.sqlite.SQLiteDirectory} and
    L{imgateway.testing.MemoryDirectory} keep them).
    """

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{imgateway.interfaces.IDirectory.getAccount}.
        """

    def getMove(self, address: Address) -> Deferred[MoveRecord | None]:
        """
        See L{SQLiteDirectory.getMove<imgateway.directory.sqlite.SQLiteDirectory.getMove>}.
        """

    def beginMove(self, address: Address, target: str) -> Deferred[MoveRecord | None]:
        """
        See L{SQLiteDirectory.beginMove<imgateway.directory.sqlite.SQLiteDirectory.beginMove>}.
        """

    def switchMove(self, address: Address) -> Deferred[None]:
        """
        See L{SQLiteDirectory.switchMove<imgateway.directory.sqlite.SQLiteDirectory.switchMove>}.
        """

    def endMove(self, address: Address) -> Deferred[None]:
        """
        See L{SQLiteDirectory.endMove<imgateway.directory.sqlite.SQLiteDirectory.endMove>}.
        """


@frozen
class MoveSummary:
    """
    What a move did.

    @ivar source: The old home server.
    @ivar target: The new home server.
    @ivar resumed: Whether it finished a move found under way.
    @ivar contacts: Contacts copied.
    @ivar authorisations: Authorisation rows written to the new store.
    @ivar access: Access-list entries copied.
    @ivar rules: Presence rules copied.
    @ivar kept: Authorisation rows left in the old store for its other
        users.
    """

    source: str
    target: str
    resumed: bool
    contacts: int = 0
    authorisations: int = 0
    access: int = 0
    rules: int = 0
    kept: int = 0


_Row = tuple[Address, Address, AuthorisationState]


@frozen
class _UserData:
    """
    A user's rows in one home store.
    """

    contacts: list[ContactRecord]
    authorisations: list[_Row]
    access: dict[str, AccessList]
    rules: list[PresenceRule]


async def _read(store: IHomeStore, address: Address) -> _UserData:
    return _UserData(
        await store.getContacts(address),
        await store.getAuthorisations(address),
        await store.getAccess(address),
        await store.getRules(address),
    )


def _other(address: Address, row: _Row) -> Address:
    """
    The user a row relates C{address} to (C{address} itself for a row of
    the user watching itself).
    """
    target, watcher, _ = row
    return watcher if target == address else target


async def _homes(directory: MoveDirectory, address: Address, rows: Iterable[_Row]) -> dict[Address, str]:
    """
    The home servers of the users of C{address}'s domain that C{rows}
    relate it to (those with an account).
    """
    homes = {}
    for other in sorted({_other(address, row) for row in rows}):
        if other.domain == address.domain:
            record = await directory.getAccount(other)
            if record is not None:
                homes[other] = record.homeServer
    return homes


def _theirs(address: Address, row: _Row, homes: dict[Address, str], home: str) -> bool:
    """
    Whether C{row}, in C{home}'s store, is the copy kept by the target of
    the pair, another user homed on C{home}: it wins over C{address}'s.
    """
    other = _other(address, row)
    return other != address and homes.get(other) == home and row[0] == other


def _copyChanges(
    address: Address, source: _UserData, current: _UserData, homes: dict[Address, str], target: str
) -> tuple[list[HomeChange], int]:
    """
    The changes that make the new store hold C{source}, C{address}'s rows
    in the old store, where it holds C{current}.

    @return: The changes, and how many authorisation rows they write.
    """
    changes: list[HomeChange] = []
    kept = {c.address for c in source.contacts}
    changes += [RemoveContact(address, c.address) for c in current.contacts if c.address not in kept]
    changes += [PutContact(address, c) for c in source.contacts]
    changes += [SetAccess(address, e, AccessList.NONE) for e in current.access if e not in source.access]
    changes += [SetAccess(address, e, entry) for e, entry in source.access.items()]
    if source.rules or current.rules:
        changes.append(SetRules(address, tuple(source.rules)))
    wanted = {(t, w): s for t, w, s in source.authorisations if not _theirs(address, (t, w, s), homes, target)}
    changes += [
        SetAuthorisation(t, w, None)
        for t, w, s in current.authorisations
        if (t, w) not in wanted and not _theirs(address, (t, w, s), homes, target)
    ]
    changes += [SetAuthorisation(t, w, s) for (t, w), s in wanted.items()]
    return changes, len(wanted)


def _removeChanges(
    address: Address, data: _UserData, homes: dict[Address, str], source: str
) -> tuple[list[HomeChange], int]:
    """
    The changes that take C{address}'s rows, C{data}, out of the old
    store, but for the authorisation rows its other users still need.

    @return: The changes, and how many authorisation rows stay.
    """
    changes: list[HomeChange] = [RemoveContact(address, c.address) for c in data.contacts]
    changes += [SetAccess(address, e, AccessList.NONE) for e in data.access]
    if data.rules:
        changes.append(SetRules(address, ()))
    kept = 0
    for row in data.authorisations:
        other = _other(address, row)
        if other != address and homes.get(other) == source:
            kept += 1
        else:
            changes.append(SetAuthorisation(row[0], row[1], None))
    return changes, kept


async def moveAccount(
    directory: MoveDirectory,
    openStore: Callable[[str], Awaitable[IHomeStore]],
    address: Address,
    target: str,
    settle: float = 0.0,
    clock: IReactorTime | None = None,
    notify: Callable[[str], object] = lambda message: None,
) -> MoveSummary | None:
    """
    Move C{address} to the home server C{target}, or finish its move under
    way (see the module's docstring for what moves, and in which order).

    @param openStore: Opens a home server's store, by the server's name (the
        caller closes them).
    @param settle: Seconds the account stays disabled after the directory
        names its new home, when it is to be enabled again: as long as the
        servers may remember the old home (C{[router]
        directory_cache_seconds}), so that none lets the user in there.
    @param clock: Times C{settle}; needed when it is not 0.
    @param notify: Told, in a sentence, when the move waits.
    @return: What was done, or C{None} when C{address} is homed on
        C{target} already (and no move was under way).
    @raise NoSuchAccount: If there is no such account.
    @raise MoveRefused: If a move of C{address} elsewhere is under way.
    @raise imgateway.core.errors.PersistenceFailed: If a store or the
        directory failed; the move is then under way, and doing it again
        finishes it.
    """
    found = await directory.getMove(address)
    move = found if found is not None else await directory.beginMove(address, target)
    if move is None:
        return None
    if move.target != target:
        raise MoveRefused(
            f"a move of {address} from {move.source} to {move.target} is unfinished: "
            f"finish it first (imgateway-admin user move {address} {move.target})"
        )
    account = await directory.getAccount(address)
    if account is None:  # accounts are never deleted; for the type checker
        raise NoSuchAccount(f"no account {address}")
    if account.homeServer not in (move.source, move.target):
        raise MoveRefused(
            f"a move of {address} from {move.source} to {move.target} is unfinished, "
            f"but the directory homes it on {account.homeServer}"
        )
    sourceStore = await openStore(move.source)
    summary = MoveSummary(move.source, move.target, resumed=found is not None)
    if account.homeServer == move.source:
        targetStore = await openStore(move.target)
        data = await _read(sourceStore, address)
        current = await _read(targetStore, address)
        homes = await _homes(directory, address, data.authorisations + current.authorisations)
        changes, written = _copyChanges(address, data, current, homes, move.target)
        await targetStore.apply(changes)
        summary = MoveSummary(
            move.source,
            move.target,
            resumed=found is not None,
            contacts=len(data.contacts),
            authorisations=written,
            access=len(data.access),
            rules=len(data.rules),
        )
        await directory.switchMove(address)
    left = await _read(sourceStore, address)
    homes = await _homes(directory, address, left.authorisations)
    changes, kept = _removeChanges(address, left, homes, move.source)
    if changes:
        await sourceStore.apply(changes)
    if settle > 0 and move.enabled:
        assert clock is not None, "settle needs a clock"
        notify(
            f"{address} is homed on {move.target}; it stays disabled for {settle:g} s more "
            f"(directory_cache_seconds), until no server remembers {move.source} as its home"
        )
        await deferLater(clock, settle, lambda: None)
    await directory.endMove(address)
    return attrs.evolve(summary, kept=kept)
