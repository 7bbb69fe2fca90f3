# -*- test-case-name: tests.test_admin_transfer,tests.e2e.test_ldap_move -*-
"""
Moving an account between home servers on different machines
(C{imgateway-admin user export}, C{user import}, C{user purge}): its rows
leave the old home server's store in a file, enter the new one's, and,
once the directory names the new home, leave the old store.

    old home:  imgateway-admin user export alice --out alice.json
    new home:  imgateway-admin user import alice.json
    directory: the user's home attribute changed to the new home (LDAP)
    old home:  imgateway-admin user purge alice

What moves is every row of the user's in the store, whatever its table
(L{imgateway.home.store.readUserRows} reads them from the schema itself):
rows the user owns (contacts, access lists, rules) wholly; rows of pairs
(authorisations, with the user as target or watcher) as
L{imgateway.admin.move} moves them on one machine: a pair with a user
homed on the new home server already has that server's copy, and where the
two differ the copy of the pair's target wins (the user's own decisions
replace the new server's copy of them; its users' decisions stay); purge
keeps the rows of pairs with the old home server's own users, which they
still need.

The file (L{encodeExport}) is JSON: a format name and version, the user,
the home server and time of the export, the store's schema version, the
rows table by table, and a SHA-256 of the rest, so that a truncated,
edited or foreign file is refused before anything is written. An import is
one transaction, refused for a store of another schema version, and
harmless to repeat; it refuses to overwrite rows of the user's that differ
from the file unless told to replace them. A purge compares the old store's
rows with the last export made there (kept in C{data_dir/exports/}) and
refuses if anything changed since (a session that was still open wrote):
export and import again first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred

from imgateway.core.address import Address
from imgateway.core.errors import ImgatewayError, InvalidAddress, NoSuchAccount
from imgateway.core.records import AccountRecord
from imgateway.home.store import (
    PAIR_COLUMNS,
    TableRows,
    Value,
    deleteTableRows,
    putTableRows,
    readUserRows,
    storeSchemaVersion,
    storeTables,
    userColumns,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "BadExport",
    "ImportSummary",
    "PurgeSummary",
    "TransferRefused",
    "UserExport",
    "decodeExport",
    "encodeExport",
    "exportUser",
    "importUser",
    "purgeUser",
]

T = TypeVar("T")

#: The C{format} of an export file.
EXPORT_FORMAT = "imgateway-user-export"

#: The version of the file format written and read.
EXPORT_VERSION = 1

#: Columns whose values are addresses (stored normalised).
_ADDRESS_COLUMNS = frozenset({"owner", "target", "watcher", "contact"})


class TransferRefused(ImgatewayError):
    """
    An export, import or purge cannot be done as asked; the message says
    why, and nothing was written.
    """


class BadExport(TransferRefused):
    """
    A file is not a whole, unchanged export that this version reads.
    """


class Transactions(Protocol):
    """
    What a transfer needs of a home store's database
    (L{imgateway.sqlite.Database}): functions of a cursor run in a read
    transaction, or a write transaction that keeps nothing if they raise.
    """

    def read(self, func: Callable[[sqlite3.Cursor], T]) -> Deferred[T]:
        """
        Run C{func(cursor)} in a read transaction.
        """

    def write(self, func: Callable[[sqlite3.Cursor], T]) -> Deferred[T]:
        """
        Run C{func(cursor)} in a write transaction.
        """


class AccountDirectory(Protocol):
    """
    What a transfer needs of the directory (SQLite's or LDAP's).
    """

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{imgateway.interfaces.IDirectory.getAccount}.
        """


@frozen
class UserExport:
    """
    A user's rows, as exported from a home server's store.

    @ivar address: The user.
    @ivar home: The home server whose store they come from.
    @ivar exported: When, in UTC (ISO 8601).
    @ivar schema: That store's schema version.
    @ivar tables: The rows, by table, every table of the store named.
    @ivar digest: The file's SHA-256 (hex), or C{""} before it is written.
    """

    address: Address
    home: str
    exported: str
    schema: int
    tables: Mapping[str, TableRows]
    digest: str = ""

    def counts(self) -> dict[str, int]:
        """
        @return: How many rows, by table.
        """
        return {name: len(t.rows) for name, t in sorted(self.tables.items())}


@frozen
class ImportSummary:
    """
    What an import did.

    @ivar written: Rows written (or already there), by table.
    @ivar theirs: Rows of pairs with the store's own users that their copy
        decides, left as they were, by table.
    @ivar removed: Rows of the user's the store held before that the file
        does not have (removed).
    @ivar already: Whether the store held exactly the file's rows already.
    """

    written: Mapping[str, int]
    theirs: int
    removed: int
    already: bool


@frozen
class PurgeSummary:
    """
    What a purge did.

    @ivar removed: Rows removed, by table.
    @ivar kept: Rows of pairs with the store's own users, kept for them.
    """

    removed: Mapping[str, int]
    kept: int


# -- the file ---------------------------------------------------------------------------------


def _encodeValue(value: Value) -> object:
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _decodeValue(value: object) -> Value:
    if value is None or type(value) in (str, int, float):
        return value  # type: ignore[return-value]
    if isinstance(value, dict) and set(value) == {"hex"} and isinstance(value["hex"], str):
        return bytes.fromhex(value["hex"])
    raise ValueError(f"a value of an unknown kind: {json.dumps(value)[:40]}")


def _canonical(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _body(export: UserExport) -> dict[str, object]:
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "address": str(export.address),
        "home": export.home,
        "exported": export.exported,
        "schema": export.schema,
        "tables": {
            name: {"columns": list(t.columns), "rows": [[_encodeValue(v) for v in row] for row in t.rows]}
            for name, t in sorted(export.tables.items())
        },
    }


def encodeExport(export: UserExport) -> tuple[bytes, str]:
    """
    The file of an export: UTF-8 JSON, its C{sha256} the SHA-256 of the
    rest in canonical form (keys sorted, no spaces).

    @return: The file's bytes, and its SHA-256 (hex).
    """
    body = _body(export)
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    body["sha256"] = digest
    return json.dumps(body, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n", digest


def decodeExport(data: bytes, source: str) -> UserExport:
    """
    Read an export file, checking it whole.

    @param source: What to call it in messages (its path).
    @raise BadExport: If it is not a whole export of this format version,
        or was changed since it was written.
    """
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadExport(f"{source} is not a whole export file (truncated, or not one at all): {e}") from None
    if not isinstance(body, dict) or body.get("format") != EXPORT_FORMAT:
        raise BadExport(f"{source} is not an imgateway user export (no \"format\": \"{EXPORT_FORMAT}\")")
    if body.get("version") != EXPORT_VERSION:
        raise BadExport(
            f"{source} is an export of format version {json.dumps(body.get('version'))[:20]}; "
            f"this imgateway reads version {EXPORT_VERSION} only: import it with the version that wrote it"
        )
    digest = body.pop("sha256", None)
    if not isinstance(digest, str) or hashlib.sha256(_canonical(body)).hexdigest() != digest:
        raise BadExport(f"{source} was changed or damaged since it was written (its sha256 does not match)")
    try:
        address = Address.fromString(body["address"])
        if str(address) != body["address"]:
            raise ValueError(f"address {body['address']!r} is not normalised")
        home, exported, schema, tables = body["home"], body["exported"], body["schema"], body["tables"]
        if not isinstance(home, str) or not isinstance(exported, str) or type(schema) is not int:
            raise ValueError("bad home, exported or schema")
        if not isinstance(tables, dict):
            raise ValueError("bad tables")
        rows: dict[str, TableRows] = {}
        for name, table in tables.items():
            columns = table["columns"]
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise ValueError(f"bad columns of table {name!r}")
            decoded = []
            for row in table["rows"]:
                if not isinstance(row, list) or len(row) != len(columns):
                    raise ValueError(f"a row of table {name!r} has not {len(columns)} values")
                decoded.append(tuple(_decodeValue(v) for v in row))
            rows[name] = TableRows(tuple(columns), tuple(decoded))
            _checkOwnership(address, name, rows[name])
    except (KeyError, TypeError, ValueError, InvalidAddress) as e:
        raise BadExport(f"{source} is not a valid export: {e}") from None
    return UserExport(address, home, exported, schema, rows, digest)


def _checkOwnership(address: Address, table: str, rows: TableRows) -> None:
    """
    @raise ValueError: If a row does not name C{address} in its
        L{userColumns}, or an address column holds no normalised address.
    """
    try:
        mine = [rows.columns.index(c) for c in userColumns(table, rows.columns)]
    except ImgatewayError as e:
        raise ValueError(str(e)) from None
    addresses = [i for i, c in enumerate(rows.columns) if c in _ADDRESS_COLUMNS]
    for row in rows.rows:
        if not any(row[i] == str(address) for i in mine):
            raise ValueError(f"a row of table {table!r} is not {address}'s")
        for i in addresses:
            value = row[i]
            try:
                normalised = isinstance(value, str) and str(Address.fromString(value)) == value
            except InvalidAddress:
                normalised = False
            if not normalised:
                raise ValueError(f"table {table!r}, column {rows.columns[i]!r}: not an address: {value!r:.80}")


# -- what goes where --------------------------------------------------------------------------


def _pairOther(user: str, columns: Sequence[str], row: Sequence[Value]) -> tuple[Value, bool]:
    """
    @return: The other user of a pair's row, and whether it is the pair's
        target.
    """
    target, watcher = (row[columns.index(c)] for c in PAIR_COLUMNS)
    return (watcher, False) if target == user else (target, True)


def _homedOn(user: str, columns: Sequence[str], row: Sequence[Value], homes: Mapping[str, str], home: str) -> tuple[bool, bool]:
    """
    @return: Whether C{row} (of C{user}'s) relates C{user} to another user
        homed on C{home}, and whether that user is the pair's target (its
        copy decides).
    """
    if tuple(userColumns("", columns)) != PAIR_COLUMNS:
        return False, False
    other, isTarget = _pairOther(user, columns, row)
    shared = other != user and isinstance(other, str) and homes.get(other) == home
    return shared, shared and isTarget


def _others(user: Address, tables: Iterable[Mapping[str, TableRows]]) -> set[Address]:
    """
    The users of C{user}'s domain that pair rows relate it to.
    """
    found = set()
    for rowsByTable in tables:
        for name, t in rowsByTable.items():
            if tuple(userColumns(name, t.columns)) == PAIR_COLUMNS:
                for row in t.rows:
                    other, _ = _pairOther(str(user), t.columns, row)
                    if isinstance(other, str) and other != str(user):
                        address = Address.fromString(other)
                        if address.domain == user.domain:
                            found.add(address)
    return found


async def _homes(directory: AccountDirectory, others: Iterable[Address]) -> dict[str, str]:
    """
    The home servers of C{others} that have an account, by address.
    """
    homes = {}
    for other in sorted(others):
        account = await directory.getAccount(other)
        if account is not None:
            homes[str(other)] = account.homeServer
    return homes


async def _account(directory: AccountDirectory, address: Address) -> AccountRecord:
    account = await directory.getAccount(address)
    if account is None:
        raise NoSuchAccount(f"no account {address} in the directory")
    return account


# -- export -----------------------------------------------------------------------------------


def _readAll(cursor: sqlite3.Cursor, address: Address) -> tuple[int, dict[str, TableRows]]:
    return storeSchemaVersion(cursor), readUserRows(cursor, address)


async def exportUser(
    directory: AccountDirectory,
    store: Transactions,
    address: Address,
    home: str,
    exported: str,
    force: bool = False,
) -> tuple[UserExport, AccountRecord]:
    """
    Read C{address}'s rows from the store of the home server C{home}.

    @param exported: The time, for the file.
    @param force: Export even if the directory homes C{address} elsewhere.
    @return: The export, and the account as the directory has it.
    @raise NoSuchAccount: If there is no such account.
    @raise TransferRefused: If the directory homes it on another server
        (its rows here are not its current ones), unless C{force}.
    @raise imgateway.home.store.UnknownTable: If a table of the store does
        not say whose its rows are.
    """
    account = await _account(directory, address)
    if account.homeServer != home and not force:
        raise TransferRefused(
            f"the directory homes {address} on {account.homeServer}, not on {home}: its rows in {home}'s store "
            f"are not its current ones (export on {account.homeServer}, or give --force to export these anyway)"
        )
    schema, tables = await store.read(lambda cursor: _readAll(cursor, address))
    return UserExport(address, home, exported, schema, tables), account


# -- import -----------------------------------------------------------------------------------


def _checkSchema(cursor: sqlite3.Cursor, export: UserExport, home: str) -> None:
    """
    @raise TransferRefused: If the store's schema is not the export's.
    """
    schema = storeSchemaVersion(cursor)
    if schema != export.schema:
        raise TransferRefused(
            f"the export is of a store of schema version {export.schema} ({export.home}), {home}'s store is of "
            f"version {schema}: run the same imgateway version on both servers, then export again"
        )
    tables = storeTables(cursor)
    exported = {name: t.columns for name, t in export.tables.items()}
    if tables != exported:
        raise TransferRefused(
            f"the export's tables ({_describeTables(exported)}) are not those of {home}'s store "
            f"({_describeTables(tables)}), of the same schema version {schema}"
        )


def _describeTables(tables: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(columns)}" for name, columns in sorted(tables.items()))


def _importRows(
    cursor: sqlite3.Cursor, export: UserExport, homes: Mapping[str, str], home: str, replace: bool
) -> ImportSummary:
    """
    Write C{export}'s rows into the store of C{home}, in one transaction.
    """
    _checkSchema(cursor, export, home)
    user = str(export.address)
    current = readUserRows(cursor, export.address)
    plan = []
    own = theirs = 0
    for name, t in sorted(export.tables.items()):
        wanted = []
        for row in t.rows:
            if _homedOn(user, t.columns, row, homes, home)[1]:
                theirs += 1
            else:
                wanted.append(row)
        mine = []
        for row in current[name].rows:
            shared, decides = _homedOn(user, t.columns, row, homes, home)
            if not decides:
                mine.append(row)
            if not shared:
                own += 1
        stale = sorted(set(mine) - set(wanted), key=repr)
        new = sorted(set(wanted) - set(mine), key=repr)
        plan.append((name, t.columns, wanted, stale, new))
    already = all(not stale and not new for _, _, _, stale, new in plan)
    if own and not already and not replace:
        raise TransferRefused(
            f"{home}'s store holds {own} rows of {export.address}'s already, not all as in the export "
            f"(from an earlier stay here, or it logged in here since): give --replace to replace them with the export's"
        )
    removed = 0
    for name, columns, _, stale, new in plan:
        deleteTableRows(cursor, name, columns, stale)
        putTableRows(cursor, name, columns, new)
        removed += len(stale)
    return ImportSummary({name: len(wanted) for name, _, wanted, _, _ in plan}, theirs, removed, already)


async def importUser(
    directory: AccountDirectory, store: Transactions, export: UserExport, home: str, replace: bool = False
) -> ImportSummary:
    """
    Write C{export}'s rows into the store of the home server C{home}, in
    one transaction: the user's rows there become the file's (but for
    rows of pairs with users homed on C{home} that their copy decides).

    @param replace: Replace rows of the user's that the store holds and
        that differ from the export (else refuse).
    @raise NoSuchAccount: If the directory has no account for the user.
    @raise TransferRefused: If the store is of another schema, or holds
        other rows of the user's and not C{replace}; nothing is written.
    """
    await _account(directory, export.address)
    current = await store.read(lambda cursor: readUserRows(cursor, export.address))
    homes = await _homes(directory, _others(export.address, [export.tables, current]))
    return await store.write(lambda cursor: _importRows(cursor, export, homes, home, replace))


# -- purge ------------------------------------------------------------------------------------


def _purgeRows(
    cursor: sqlite3.Cursor, address: Address, record: UserExport | None, homes: Mapping[str, str], home: str
) -> PurgeSummary:
    """
    Remove C{address}'s rows from the store of C{home}, but those of pairs
    with users homed there, in one transaction, if they are those of
    C{record}.
    """
    user = str(address)
    current = readUserRows(cursor, address)

    def split(tables: Mapping[str, TableRows]) -> tuple[dict[str, set[tuple[Value, ...]]], int]:
        going: dict[str, set[tuple[Value, ...]]] = {}
        kept = 0
        for name, t in tables.items():
            going[name] = set()
            for row in t.rows:
                if _homedOn(user, t.columns, row, homes, home)[0]:
                    kept += 1
                else:
                    going[name].add(row)
        return going, kept

    going, kept = split(current)
    if not any(going.values()):
        return PurgeSummary({name: 0 for name in sorted(going)}, kept)
    if record is None:
        raise TransferRefused(
            f"{home}'s store holds rows of {address}'s, and no export of them was made here: "
            f"export them (imgateway-admin user export) and import them on its new home first"
        )
    exported, _ = split(record.tables)
    if {n: rows for n, rows in going.items() if rows} != {n: rows for n, rows in exported.items() if rows}:
        raise TransferRefused(
            f"{address}'s rows in {home}'s store changed since the export of {record.exported} (a session still "
            f"open here, or a contact's request, wrote since): export again, import the new file on "
            f"its new home with --replace, then purge"
        )
    for name, rows in sorted(going.items()):
        deleteTableRows(cursor, name, current[name].columns, sorted(rows, key=repr))
    return PurgeSummary({name: len(rows) for name, rows in sorted(going.items())}, kept)


async def purgeUser(
    directory: AccountDirectory, store: Transactions, address: Address, home: str, record: UserExport | None
) -> PurgeSummary:
    """
    Remove C{address}'s rows from the store of the home server C{home}, once
    the directory homes it elsewhere, keeping the rows of pairs with
    C{home}'s own users (they still need them).

    @param record: The last export of C{address} made from this store.
    @raise NoSuchAccount: If the directory has no account C{address}.
    @raise TransferRefused: If the directory still homes C{address} on
        C{home}, or its rows here are not those of C{record}; nothing is
        removed.
    """
    account = await _account(directory, address)
    if account.homeServer == home:
        raise TransferRefused(
            f"the directory still homes {address} on {home}: purge its rows here only once it names its new "
            f"home (and the import there is done)"
        )
    current = await store.read(lambda cursor: readUserRows(cursor, address))
    homes = await _homes(directory, _others(address, [current] + ([record.tables] if record else [])))
    return await store.write(lambda cursor: _purgeRows(cursor, address, record, homes, home))


def describeCounts(counts: Mapping[str, int]) -> str:
    """
    C{"access 2, authorisations 7, ..."}.
    """
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "no tables"

