# -*- test-case-name: tests.test_sqlite_store -*-
"""
A home server's store in an SQLite file (by convention
C{home-<name>.sqlite3} in the data folder): contacts, authorisations,
access lists and presence rules.
"""

from __future__ import annotations

import sqlite3
from typing import cast
from collections.abc import Sequence

from attrs import frozen

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway.core.address import Address
from imgateway.core.errors import ImgatewayError, PendingRequestsFull
from imgateway.core.presence import PresenceState
from imgateway.core.records import (
    AccessList,
    AuthorisationState,
    ContactRecord,
    HomeChange,
    PresenceRule,
    PutContact,
    RemoveContact,
    SetAccess,
    RuleAction,
    RuleNetwork,
    SetAuthorisation,
    UserRecords,
)
from imgateway.interfaces import IHomeStore
from imgateway.sqlite import DEFAULT_BUSY_TIMEOUT, Database, Migrations, openDatabase

__all__ = [
    "MIGRATIONS",
    "SQLiteHomeStore",
    "TableRows",
    "UnknownTable",
    "deleteTableRows",
    "putTableRows",
    "readUserRows",
    "storeSchemaVersion",
    "storeTables",
    "userColumns",
]

#: The home store's schema (see L{imgateway.sqlite}). Addresses are stored
#: normalised, as C{str(address)}.
MIGRATIONS: Migrations = [
    [
        """
        CREATE TABLE contacts (
            owner TEXT NOT NULL,
            contact TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (owner, contact)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE authorisations (
            target TEXT NOT NULL,
            watcher TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'authorised', 'refused')),
            PRIMARY KEY (target, watcher)
        ) WITHOUT ROWID
        """,
        # The primary key finds the rows of a target; this finds those of a
        # watcher, so "target = ? OR watcher = ?" uses two index lookups.
        "CREATE INDEX authorisations_by_watcher ON authorisations (watcher, target)",
        """
        CREATE TABLE access (
            owner TEXT NOT NULL,
            entry TEXT NOT NULL,
            list TEXT NOT NULL CHECK (list IN ('allow', 'block')),
            PRIMARY KEY (owner, entry)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE rules (
            owner TEXT NOT NULL,
            state TEXT NOT NULL,
            alternate TEXT NOT NULL,
            PRIMARY KEY (owner, state)
        ) WITHOUT ROWID
        """,
    ],
    # Version 2: presence rules that act, an ordered list per owner. Each
    # rule of version 1 (a refusal for one state) becomes a refuse rule
    # for that state, in the order PresenceState lists the states.
    [
        """
        CREATE TABLE presence_rules (
            owner TEXT NOT NULL,
            position INTEGER NOT NULL,
            states TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('deliver', 'auto-reply', 'forward', 'refuse')),
            sender TEXT NOT NULL DEFAULT '',
            network TEXT NOT NULL DEFAULT 'any' CHECK (network IN ('any', 'local', 'remote')),
            alternate TEXT NOT NULL DEFAULT '',
            reply_text TEXT NOT NULL DEFAULT '',
            forward_to TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (owner, position)
        ) WITHOUT ROWID
        """,
        """
        INSERT INTO presence_rules (owner, position, states, action, alternate)
        SELECT owner,
               row_number() OVER (
                   PARTITION BY owner
                   ORDER BY CASE state
                       WHEN 'online' THEN 0 WHEN 'busy' THEN 1 WHEN 'be-right-back' THEN 2
                       WHEN 'away' THEN 3 WHEN 'on-the-phone' THEN 4 WHEN 'out-to-lunch' THEN 5
                       WHEN 'appear-offline' THEN 6 WHEN 'offline' THEN 7 ELSE 8 END, state
               ) - 1,
               state, 'refuse', alternate
        FROM rules
        """,
        "DROP TABLE rules",
    ],
]

#: How the schema spells each value in its columns: its own tokens, fixed by
#: the migrations (the CHECK constraints), never a core enum's C{value}, so
#: that the file's format does not change with the core model.
_AUTHORISATION_COLUMN: dict[AuthorisationState, str] = {
    AuthorisationState.PENDING: "pending",
    AuthorisationState.AUTHORISED: "authorised",
    AuthorisationState.REFUSED: "refused",
}
_ACCESS_COLUMN: dict[AccessList, str] = {AccessList.ALLOW: "allow", AccessList.BLOCK: "block"}
_ACTION_COLUMN: dict[RuleAction, str] = {
    RuleAction.DELIVER: "deliver",
    RuleAction.AUTO_REPLY: "auto-reply",
    RuleAction.FORWARD: "forward",
    RuleAction.REFUSE: "refuse",
}
_NETWORK_COLUMN: dict[RuleNetwork, str] = {
    RuleNetwork.ANY: "any",
    RuleNetwork.LOCAL: "local",
    RuleNetwork.REMOTE: "remote",
}
_STATE_COLUMN: dict[PresenceState, str] = {
    PresenceState.ONLINE: "online",
    PresenceState.BUSY: "busy",
    PresenceState.BE_RIGHT_BACK: "be-right-back",
    PresenceState.AWAY: "away",
    PresenceState.ON_THE_PHONE: "on-the-phone",
    PresenceState.OUT_TO_LUNCH: "out-to-lunch",
    PresenceState.APPEAR_OFFLINE: "appear-offline",
    PresenceState.OFFLINE: "offline",
}
_AUTHORISATION_FROM_COLUMN = {token: state for state, token in _AUTHORISATION_COLUMN.items()}
_ACCESS_FROM_COLUMN = {token: entry for entry, token in _ACCESS_COLUMN.items()}
_STATE_FROM_COLUMN = {token: state for state, token in _STATE_COLUMN.items()}
_ACTION_FROM_COLUMN = {token: action for action, token in _ACTION_COLUMN.items()}
_NETWORK_FROM_COLUMN = {token: network for network, token in _NETWORK_COLUMN.items()}


def _address(text: str) -> Address:
    # Stored already normalised; a local part never holds "@".
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


def _addressIn(known: dict[str, Address], text: str) -> Address:
    """
    The address stored as C{text}, made once per read: C{known} keeps those
    made so far by text.
    """
    address = known.get(text)
    if address is None:
        address = known[text] = _address(text)
    return address


def _getContacts(
    cursor: sqlite3.Cursor, owner: Address, known: dict[str, Address] | None = None
) -> list[ContactRecord]:
    """
    @param known: The addresses made by the other reads of this operation,
        by their text (L{_getUserRecords}).
    """
    if known is None:
        known = {}
    rows = cursor.execute(
        "SELECT contact, display_name FROM contacts WHERE owner = ?", (str(owner),)
    ).fetchall()
    return sorted(
        (ContactRecord(_addressIn(known, contact), name) for contact, name in rows),
        key=lambda c: c.address,
    )


def _putContact(cursor: sqlite3.Cursor, owner: Address, contact: ContactRecord) -> None:
    cursor.execute(
        "INSERT INTO contacts (owner, contact, display_name) VALUES (?, ?, ?)"
        " ON CONFLICT (owner, contact) DO UPDATE SET display_name = excluded.display_name",
        (str(owner), str(contact.address), contact.displayName),
    )


def _removeContact(cursor: sqlite3.Cursor, owner: Address, contact: Address) -> None:
    cursor.execute(
        "DELETE FROM contacts WHERE owner = ? AND contact = ?", (str(owner), str(contact))
    )


def _getAuthorisations(
    cursor: sqlite3.Cursor, user: Address, known: dict[str, Address] | None = None
) -> list[tuple[Address, Address, AuthorisationState]]:
    """
    Every row has C{user} on one side, and with mutual contacts each
    contact on both: one L{Address} per distinct address read.

    @param known: As for L{_getContacts}.
    """
    key = str(user)
    if known is None:
        known = {}
    known.setdefault(key, user)
    rows = cursor.execute(
        "SELECT target, watcher, state FROM authorisations WHERE target = ? OR watcher = ?",
        (key, key),
    ).fetchall()
    return sorted(
        (
            (_addressIn(known, target), _addressIn(known, watcher), _AUTHORISATION_FROM_COLUMN[state])
            for target, watcher, state in rows
        ),
        key=lambda row: (row[0], row[1]),
    )


def _getAuthorisation(cursor: sqlite3.Cursor, target: Address, watcher: Address) -> AuthorisationState | None:
    row = cursor.execute(
        "SELECT state FROM authorisations WHERE target = ? AND watcher = ?", (str(target), str(watcher))
    ).fetchone()
    return _AUTHORISATION_FROM_COLUMN[row[0]] if row is not None else None


def _getAccessOf(cursor: sqlite3.Cursor, owner: Address, other: Address) -> AccessList:
    rows = dict(
        cursor.execute(
            "SELECT entry, list FROM access WHERE owner = ? AND entry IN (?, ?)",
            (str(owner), str(other), other.domain),
        ).fetchall()
    )
    found = rows.get(str(other), rows.get(other.domain))
    return _ACCESS_FROM_COLUMN[found] if found is not None else AccessList.NONE


def _countPending(cursor: sqlite3.Cursor, target: Address, limit: int) -> int:
    """
    @return: How many requests await C{target}'s answer, counting no
        further than C{limit} (a walk of C{target}'s rows by primary key).
    """
    row = cursor.execute(
        "SELECT count(*) FROM (SELECT 1 FROM authorisations WHERE target = ? AND state = ? LIMIT ?)",
        (str(target), _AUTHORISATION_COLUMN[AuthorisationState.PENDING], limit),
    ).fetchone()
    return int(row[0])


def _checkPendingLimit(cursor: sqlite3.Cursor, change: SetAuthorisation, limit: int) -> None:
    """
    @raise PendingRequestsFull: If C{change} would make a new pending
        request past C{limit} (see L{SetAuthorisation.pendingLimit}).
    """
    current = _getAuthorisation(cursor, change.target, change.watcher)
    if current is AuthorisationState.PENDING or not change.appliesTo(current):
        return
    if _countPending(cursor, change.target, limit) < limit:
        return
    if _getAccessOf(cursor, change.target, change.watcher) is AccessList.ALLOW:
        return
    raise PendingRequestsFull(f"{change.target} has {limit} pending requests (max_pending_requests)")


def _setAuthorisation(cursor: sqlite3.Cursor, change: SetAuthorisation) -> None:
    if change.pendingLimit is not None and change.state is AuthorisationState.PENDING:
        _checkPendingLimit(cursor, change, change.pendingLimit)
    key = (str(change.target), str(change.watcher))
    condition, condArgs = "", cast(tuple[str, ...], ())
    if change.onlyIf:
        condition = f" AND state IN ({', '.join('?' * len(change.onlyIf))})"
        condArgs = tuple(_AUTHORISATION_COLUMN[s] for s in change.onlyIf)
    if change.state is None:
        cursor.execute("DELETE FROM authorisations WHERE target = ? AND watcher = ?" + condition, key + condArgs)
    elif change.onlyIf:
        cursor.execute(
            "UPDATE authorisations SET state = ? WHERE target = ? AND watcher = ?" + condition,
            (_AUTHORISATION_COLUMN[change.state],) + key + condArgs,
        )
    else:
        cursor.execute(
            "INSERT INTO authorisations (target, watcher, state) VALUES (?, ?, ?)"
            " ON CONFLICT (target, watcher) DO UPDATE SET state = excluded.state",
            key + (_AUTHORISATION_COLUMN[change.state],),
        )


def _getAccess(cursor: sqlite3.Cursor, owner: Address) -> dict[str, AccessList]:
    rows = cursor.execute(
        "SELECT entry, list FROM access WHERE owner = ? ORDER BY entry", (str(owner),)
    ).fetchall()
    return {entry: _ACCESS_FROM_COLUMN[name] for entry, name in rows}


def _setAccess(cursor: sqlite3.Cursor, owner: Address, entry: str, accessList: AccessList) -> None:
    if accessList is AccessList.NONE:
        cursor.execute("DELETE FROM access WHERE owner = ? AND entry = ?", (str(owner), entry))
    else:
        cursor.execute(
            "INSERT INTO access (owner, entry, list) VALUES (?, ?, ?)"
            " ON CONFLICT (owner, entry) DO UPDATE SET list = excluded.list",
            (str(owner), entry, _ACCESS_COLUMN[accessList]),
        )


def _getRules(cursor: sqlite3.Cursor, owner: Address) -> list[PresenceRule]:
    rows = cursor.execute(
        "SELECT states, action, sender, network, alternate, reply_text, forward_to FROM presence_rules"
        " WHERE owner = ? ORDER BY position",
        (str(owner),),
    ).fetchall()
    return [
        PresenceRule(
            frozenset(_STATE_FROM_COLUMN[token] for token in states.split()),
            _ACTION_FROM_COLUMN[action],
            sender=sender,
            network=_NETWORK_FROM_COLUMN[network],
            alternate=alternate,
            text=text,
            forwardTo=_address(forward) if forward else None,
        )
        for states, action, sender, network, alternate, text, forward in rows
    ]


def _setRules(cursor: sqlite3.Cursor, owner: Address, rules: Sequence[PresenceRule]) -> None:
    cursor.execute("DELETE FROM presence_rules WHERE owner = ?", (str(owner),))
    cursor.executemany(
        "INSERT INTO presence_rules"
        " (owner, position, states, action, sender, network, alternate, reply_text, forward_to)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                str(owner),
                position,
                " ".join(_STATE_COLUMN[s] for s in PresenceState if s in rule.states),
                _ACTION_COLUMN[rule.action],
                rule.sender,
                _NETWORK_COLUMN[rule.network],
                rule.alternate,
                rule.text,
                str(rule.forwardTo) if rule.forwardTo is not None else "",
            )
            for position, rule in enumerate(rules)
        ],
    )


def _getUserRecords(cursor: sqlite3.Cursor, user: Address) -> UserRecords:
    """
    The four reads of a login in one operation (one transaction, one
    savepoint, one hop to the database's thread). An address read more than
    once (the user on one side of every authorisation, a mutual contact in
    its contact row and on both sides of two authorisations) is made once:
    20 mutual contacts are 100 addresses read, 21 made. The home server
    keeps its own shared copies (L{imgateway.home._interning}) and frees
    these; fewer of them made at each login leave fewer holes among the
    sessions' long-lived objects.
    """
    known: dict[str, Address] = {}
    return UserRecords(
        _getContacts(cursor, user, known),
        _getAuthorisations(cursor, user, known),
        _getAccess(cursor, user),
        _getRules(cursor, user),
    )


def _apply(cursor: sqlite3.Cursor, changes: list[HomeChange]) -> None:
    for change in changes:
        if isinstance(change, PutContact):
            _putContact(cursor, change.owner, change.contact)
        elif isinstance(change, RemoveContact):
            _removeContact(cursor, change.owner, change.contact)
        elif isinstance(change, SetAuthorisation):
            _setAuthorisation(cursor, change)
        elif isinstance(change, SetAccess):
            _setAccess(cursor, change.owner, change.entry, change.accessList)
        else:
            _setRules(cursor, change.owner, change.rules)


@implementer(IHomeStore)
class SQLiteHomeStore:
    """
    An L{IHomeStore} kept in an SQLite file.

    Orders, as L{imgateway.testing.MemoryHomeStore} keeps them too: contacts
    and authorisation rows sorted as L{Address}es (rows by target, then
    watcher), access-list entries by entry, rules in the order their owner gave.

    @ivar database: The L{Database} underneath.
    """

    def __init__(self, database: Database) -> None:
        """
        Use L{SQLiteHomeStore.open} rather than this.

        @param database: A database opened with L{MIGRATIONS}.
        """
        self.database = database

    @classmethod
    def open(
        cls,
        reactor: IReactorCore,
        path: FilePath[str] | str,
        busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> Deferred[SQLiteHomeStore]:
        """
        Open (creating if need be) a home store file and bring its schema up
        to date.

        @param reactor: The reactor.
        @param path: The file; its folder is created if missing.
        @param busyTimeout: Seconds a write waits for another process's lock.
        @return: A L{Deferred} firing with the store, or failing with
            L{imgateway.sqlite.SchemaTooNew} or
            L{imgateway.core.errors.PersistenceFailed}.
        """
        return openDatabase(reactor, path, MIGRATIONS, busyTimeout).addCallback(cls)

    def getContacts(self, owner: Address) -> Deferred[list[ContactRecord]]:
        """
        See L{IHomeStore.getContacts}.
        """
        return self.database.read(_getContacts, owner)

    def getAuthorisations(
        self, user: Address
    ) -> Deferred[list[tuple[Address, Address, AuthorisationState]]]:
        """
        See L{IHomeStore.getAuthorisations}.
        """
        return self.database.read(_getAuthorisations, user)

    def getUserRecords(self, user: Address) -> Deferred[UserRecords]:
        """
        See L{IHomeStore.getUserRecords}: one L{Database.read}.
        """
        return self.database.read(_getUserRecords, user)

    def getAuthorisation(self, target: Address, watcher: Address) -> Deferred[AuthorisationState | None]:
        """
        See L{IHomeStore.getAuthorisation}.
        """
        return self.database.read(_getAuthorisation, target, watcher)

    def getAccessOf(self, owner: Address, other: Address) -> Deferred[AccessList]:
        """
        See L{IHomeStore.getAccessOf}.
        """
        return self.database.read(_getAccessOf, owner, other)

    def getAccess(self, owner: Address) -> Deferred[dict[str, AccessList]]:
        """
        See L{IHomeStore.getAccess}.
        """
        return self.database.read(_getAccess, owner)

    def getRules(self, owner: Address) -> Deferred[list[PresenceRule]]:
        """
        See L{IHomeStore.getRules}.
        """
        return self.database.read(_getRules, owner)

    def apply(self, changes: Sequence[HomeChange]) -> Deferred[None]:
        """
        See L{IHomeStore.apply}: one L{Database.write}.
        """
        return self.database.write(_apply, list(changes))

    def close(self) -> Deferred[None]:
        """
        See L{IHomeStore.close}.
        """
        return self.database.close()


# -- One user's rows, table by table (imgateway-admin user export, import, purge) ----------
#
# These read every table of the store generically, from the schema itself, so
# that a table a later migration adds is exported and imported too, or, if
# nothing says whose its rows are, refused (UnknownTable) rather than left
# behind: imgateway.admin.transfer decides what goes where.

#: A column value as SQLite hands it back.
Value = str | int | float | bytes | None

#: The column that names the user owning a row (contacts, access lists,
#: rules): the row is wholly that user's.
OWNER_COLUMN = "owner"

#: The columns of a table of pairs (authorisations): a row relates its
#: C{target} (who is watched, and decides) to its C{watcher}.
PAIR_COLUMNS = ("target", "watcher")


class UnknownTable(ImgatewayError):
    """
    A table of the store has no column that says whose its rows are (see
    L{userColumns}): teach L{imgateway.admin.transfer} about it.
    """


@frozen
class TableRows:
    """
    Some rows of one table.

    @ivar columns: The table's columns, in the schema's order.
    @ivar rows: The rows, each a value per column, sorted.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]


def storeTables(cursor: sqlite3.Cursor) -> dict[str, tuple[str, ...]]:
    """
    @return: Every table of the store's schema, by name, with its columns in
        the schema's order.
    """
    names = [
        name
        for (name,) in cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " ORDER BY name"
        ).fetchall()
    ]
    return {name: tuple(row[1] for row in cursor.execute(f"PRAGMA table_info({_quote(name)})").fetchall()) for name in names}


def storeSchemaVersion(cursor: sqlite3.Cursor) -> int:
    """
    @return: The store's schema version (how many of L{MIGRATIONS} it has).
    """
    return int(cursor.execute("PRAGMA user_version").fetchone()[0])


def userColumns(table: str, columns: Sequence[str]) -> tuple[str, ...]:
    """
    The columns of C{table} that name the user a row belongs to:
    L{OWNER_COLUMN}, or L{PAIR_COLUMNS}.

    @raise UnknownTable: If it has neither.
    """
    if OWNER_COLUMN in columns:
        return (OWNER_COLUMN,)
    if all(c in columns for c in PAIR_COLUMNS):
        return PAIR_COLUMNS
    raise UnknownTable(
        f"the home store's table {table!r} ({', '.join(columns)}) has no column {OWNER_COLUMN!r} "
        f"nor {PAIR_COLUMNS[0]!r} and {PAIR_COLUMNS[1]!r}: nothing says whose its rows are"
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def readUserRows(cursor: sqlite3.Cursor, user: Address) -> dict[str, TableRows]:
    """
    Every row of C{user}'s in the store: in each table, the rows whose
    L{userColumns} name C{user}.

    @return: The rows, by table (every table, even those without a row).
    @raise UnknownTable: If a table does not say whose its rows are.
    """
    found: dict[str, TableRows] = {}
    for table, columns in storeTables(cursor).items():
        where = " OR ".join(f"{_quote(c)} = ?" for c in userColumns(table, columns))
        keys = (str(user),) * where.count("?")
        order = ", ".join(_quote(c) for c in columns)
        rows = cursor.execute(
            f"SELECT {order} FROM {_quote(table)} WHERE {where} ORDER BY {order}", keys
        ).fetchall()
        found[table] = TableRows(columns, tuple(tuple(row) for row in rows))
    return found


def deleteTableRows(cursor: sqlite3.Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[Value]]) -> None:
    """
    Delete these rows (each matched on every column) from C{table}.
    """
    where = " AND ".join(f"{_quote(c)} IS ?" for c in columns)
    cursor.executemany(f"DELETE FROM {_quote(table)} WHERE {where}", [tuple(row) for row in rows])


def putTableRows(cursor: sqlite3.Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[Value]]) -> None:
    """
    Write these rows into C{table}, each replacing the row with its primary
    key if there is one.
    """
    names = ", ".join(_quote(c) for c in columns)
    marks = ", ".join("?" * len(columns))
    cursor.executemany(f"INSERT OR REPLACE INTO {_quote(table)} ({names}) VALUES ({marks})", [tuple(row) for row in rows])
