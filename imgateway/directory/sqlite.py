# -*- test-case-name: tests.test_sqlite_store -*-
"""
The directory in an SQLite file (by convention C{directory.sqlite3} in the
data folder), shared by the gateway and C{imgateway-admin}.
"""

from __future__ import annotations

import sqlite3

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway.core.address import Address
from imgateway.core.errors import AccountExists, ImgatewayError, NoSuchAccount
from imgateway.core.records import AccountRecord, MoveRecord
from imgateway.interfaces import IDirectory
from imgateway.sqlite import DEFAULT_BUSY_TIMEOUT, Database, Durability, Migrations, openDatabase

__all__ = ["MIGRATIONS", "NoMoveUnderWay", "SQLiteDirectory"]

#: The directory's schema (see L{imgateway.sqlite}). Addresses are stored
#: normalised, as C{str(address)}, with their two parts alongside.
MIGRATIONS: Migrations = [
    [
        """
        CREATE TABLE accounts (
            address TEXT PRIMARY KEY,
            local TEXT NOT NULL,
            domain TEXT NOT NULL,
            home_server TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            enabled INTEGER NOT NULL DEFAULT 1,
            credentials TEXT NOT NULL,
            created REAL NOT NULL
        )
        """,
        "CREATE INDEX accounts_by_domain ON accounts (domain, local)",
    ],
    # Version 2: passwords in the clear (SASL PLAIN) are checked against the
    # SCRAM verifiers; the scrypt hash kept beside them goes. The verifiers
    # stay as they are, so no password has to be set again.
    [
        """
        UPDATE accounts SET credentials = json_remove(credentials, '$.scrypt')
        WHERE json_valid(credentials) AND json_type(credentials, '$.scrypt') IS NOT NULL
        """,
    ],
    # Version 3: moves of accounts between home servers under way
    # (imgateway-admin user move), each kept from the moment its account is
    # disabled for the move until the move is done; "enabled" is what the
    # account was before.
    [
        """
        CREATE TABLE moves (
            address TEXT PRIMARY KEY REFERENCES accounts (address),
            source TEXT NOT NULL,
            target TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            started REAL NOT NULL
        )
        """,
    ],
]

_COLUMNS = "local, domain, home_server, display_name, enabled, credentials"

_Row = tuple[str, str, str, str, int, str]


def _record(row: _Row) -> AccountRecord:
    local, domain, homeServer, displayName, enabled, credentials = row
    # Stored already normalised: do not normalise again.
    return AccountRecord(Address(local, domain), homeServer, displayName, bool(enabled), credentials)


def _get(cursor: sqlite3.Cursor, address: Address) -> AccountRecord | None:
    row = cursor.execute(
        f"SELECT {_COLUMNS} FROM accounts WHERE address = ?", (str(address),)
    ).fetchone()
    return None if row is None else _record(row)


def _add(cursor: sqlite3.Cursor, record: AccountRecord, created: float) -> None:
    if _get(cursor, record.address) is not None:
        raise AccountExists(f"account {record.address} exists")
    cursor.execute(
        "INSERT INTO accounts (address, local, domain, home_server, display_name,"
        " enabled, credentials, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            str(record.address),
            record.address.local,
            record.address.domain,
            record.homeServer,
            record.displayName,
            int(record.enabled),
            record.credentials,
            created,
        ),
    )


def _update(
    cursor: sqlite3.Cursor,
    address: Address,
    credentials: str | None,
    enabled: bool | None,
    displayName: str | None,
) -> AccountRecord:
    changes: list[tuple[str, object]] = []
    if credentials is not None:
        changes.append(("credentials", credentials))
    if enabled is not None:
        changes.append(("enabled", int(enabled)))
    if displayName is not None:
        changes.append(("display_name", displayName))
    if changes:
        cursor.execute(
            "UPDATE accounts SET "
            + ", ".join(f"{column} = ?" for column, _ in changes)
            + " WHERE address = ?",
            [value for _, value in changes] + [str(address)],
        )
    record = _get(cursor, address)
    if record is None:
        raise NoSuchAccount(f"no account {address}")
    return record


def _list(cursor: sqlite3.Cursor, domain: str | None) -> list[AccountRecord]:
    # "ORDER BY local, domain" sorts as Address does: SQLite's BINARY
    # collation compares UTF-8 bytes, which sort as Python compares str.
    if domain is None:
        rows = cursor.execute(f"SELECT {_COLUMNS} FROM accounts ORDER BY local, domain")
    else:
        rows = cursor.execute(
            f"SELECT {_COLUMNS} FROM accounts WHERE domain = ? ORDER BY local, domain", (domain,)
        )
    return [_record(row) for row in rows.fetchall()]


class NoMoveUnderWay(ImgatewayError):
    """
    A step of a move between home servers was asked for an account with no
    move under way (another command finished it meanwhile).
    """


def _move(row: tuple[str, str, str, int]) -> MoveRecord:
    address, source, target, enabled = row
    local, _, domain = address.rpartition("@")
    return MoveRecord(Address(local, domain), source, target, bool(enabled))


_MOVE_COLUMNS = "address, source, target, enabled"


def _getMove(cursor: sqlite3.Cursor, address: Address) -> MoveRecord | None:
    row = cursor.execute(f"SELECT {_MOVE_COLUMNS} FROM moves WHERE address = ?", (str(address),)).fetchone()
    return None if row is None else _move(row)


def _listMoves(cursor: sqlite3.Cursor) -> list[MoveRecord]:
    rows = cursor.execute(f"SELECT {_MOVE_COLUMNS} FROM moves").fetchall()
    return sorted((_move(row) for row in rows), key=lambda m: m.address)


def _beginMove(cursor: sqlite3.Cursor, address: Address, target: str, started: float) -> MoveRecord | None:
    move = _getMove(cursor, address)
    if move is not None:
        return move
    account = _get(cursor, address)
    if account is None:
        raise NoSuchAccount(f"no account {address}")
    if account.homeServer == target:
        return None
    cursor.execute(
        "INSERT INTO moves (address, source, target, enabled, started) VALUES (?, ?, ?, ?, ?)",
        (str(address), account.homeServer, target, int(account.enabled), started),
    )
    cursor.execute("UPDATE accounts SET enabled = 0 WHERE address = ?", (str(address),))
    return MoveRecord(address, account.homeServer, target, account.enabled)


def _switchMove(cursor: sqlite3.Cursor, address: Address) -> None:
    move = _getMove(cursor, address)
    if move is None:
        raise NoMoveUnderWay(f"no move of {address} under way")
    cursor.execute("UPDATE accounts SET home_server = ? WHERE address = ?", (move.target, str(address)))


def _endMove(cursor: sqlite3.Cursor, address: Address) -> None:
    move = _getMove(cursor, address)
    if move is None:
        raise NoMoveUnderWay(f"no move of {address} under way")
    cursor.execute("UPDATE accounts SET enabled = ? WHERE address = ?", (int(move.enabled), str(address)))
    cursor.execute("DELETE FROM moves WHERE address = ?", (str(address),))


@implementer(IDirectory)
class SQLiteDirectory:
    """
    An L{IDirectory} kept in an SQLite file.

    Other processes (C{imgateway-admin}) may write the same file while the
    gateway runs; nothing is cached here.

    @ivar database: The L{Database} underneath.
    """

    def __init__(self, database: Database, clock: IReactorTime) -> None:
        """
        Use L{SQLiteDirectory.open} rather than this.

        @param database: A database opened with L{MIGRATIONS}.
        @param clock: Tells the time of an account's creation.
        """
        self.database = database
        self._clock = clock

    @classmethod
    def open(
        cls,
        reactor: IReactorCore,
        path: FilePath[str] | str,
        busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
        durability: Durability = Durability.PROCESS,
    ) -> Deferred[SQLiteDirectory]:
        """
        Open (creating if need be) a directory file and bring its schema up
        to date.

        @param reactor: The reactor (it must also provide L{IReactorTime}).
        @param path: The file; its folder is created if missing.
        @param busyTimeout: Seconds a write waits for another process's lock.
        @param durability: What an acknowledged write survives (the
            configuration's C{[gateway] durability}).
        @return: A L{Deferred} firing with the directory, or failing with
            L{imgateway.sqlite.SchemaTooNew} or
            L{imgateway.core.errors.PersistenceFailed}.
        """
        clock = IReactorTime(reactor)
        d = openDatabase(reactor, path, MIGRATIONS, busyTimeout, durability)
        return d.addCallback(lambda database: cls(database, clock))

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{IDirectory.getAccount}.
        """
        return self.database.read(_get, address)

    def addAccount(self, record: AccountRecord) -> Deferred[None]:
        """
        See L{IDirectory.addAccount}.
        """
        return self.database.write(_add, record, self._clock.seconds())

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
        return self.database.write(_update, address, credentials, enabled, displayName)

    def listAccounts(self, domain: str | None = None) -> Deferred[list[AccountRecord]]:
        """
        See L{IDirectory.listAccounts}. The order is that of L{Address}
        (local part, then domain).
        """
        return self.database.read(_list, domain)

    # -- moves between home servers (imgateway.admin.move) -----------------

    def getMove(self, address: Address) -> Deferred[MoveRecord | None]:
        """
        @return: The move of C{address} under way, or C{None}.
        """
        return self.database.read(_getMove, address)

    def listMoves(self) -> Deferred[list[MoveRecord]]:
        """
        @return: Every move under way, in the order of their addresses.
        """
        return self.database.read(_listMoves)

    def beginMove(self, address: Address, target: str) -> Deferred[MoveRecord | None]:
        """
        Begin moving C{address} to the home server C{target}, in one
        transaction: record the move (with the account's home server as its
        source, and whether it is enabled) and disable the account, so that
        nobody logs in as it until L{endMove}. If a move of C{address} is
        under way already, change nothing.

        @return: The move under way (which may go elsewhere than
            C{target}), or C{None} when C{address} has no move under way and
            is homed on C{target} already.
        @raise NoSuchAccount: (asynchronously) If there is no such account.
        """
        return self.database.write(_beginMove, address, target, self._clock.seconds())

    def switchMove(self, address: Address) -> Deferred[None]:
        """
        Make the target of C{address}'s move its home server. Idempotent.

        @raise NoMoveUnderWay: (asynchronously) If no move of C{address} is
            under way.
        """
        return self.database.write(_switchMove, address)

    def endMove(self, address: Address) -> Deferred[None]:
        """
        Finish C{address}'s move, in one transaction: enable the account
        again if it was enabled before the move, and forget the move.

        @raise NoMoveUnderWay: (asynchronously) If no move of C{address} is
            under way.
        """
        return self.database.write(_endMove, address)

    def close(self) -> Deferred[None]:
        """
        See L{IDirectory.close}.
        """
        return self.database.close()
