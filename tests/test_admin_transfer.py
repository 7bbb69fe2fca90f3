# -*- test-case-name: tests.test_admin_transfer -*-
"""
Unit tests for L{imgateway.admin.transfer} (C{imgateway-admin user export},
C{user import}, C{user purge}) and the export helpers of
L{imgateway.home.store}, on home stores in memory (SQLite's C{:memory:},
with the real schema); C{tests.e2e.test_ldap_move} moves a user between two
real home servers on an LDAP directory.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.admin import cli
from imgateway.admin.transfer import (
    EXPORT_VERSION,
    BadExport,
    ImportSummary,
    PurgeSummary,
    TransferRefused,
    UserExport,
    decodeExport,
    encodeExport,
    exportUser,
    importUser,
    purgeUser,
)
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import NoSuchAccount
from imgateway.core.records import AccountRecord
from imgateway.home.store import MIGRATIONS, TableRows, UnknownTable, readUserRows, storeTables
from imgateway.testing import MemoryDirectory

T = TypeVar("T")

ALICE = Address("alice", "corp.example")
BOB = Address("bob", "corp.example")
CAROL = Address("carol", "corp.example")
DAVE = Address("dave", "xmpp.example")
ERIN = Address("erin", "corp.example")
FRANK = Address("frank", "corp.example")

NOW = "2026-12-05T03:00:00Z"


class MemoryStore:
    """
    A home store's database in memory, with the real schema, that runs
    transactions at once (as L{imgateway.sqlite.Database} does in its
    thread): a function that raises leaves nothing written.
    """

    def __init__(self, extra: list[str] = ()) -> None:  # type: ignore[assignment]
        self.connection = sqlite3.connect(":memory:", isolation_level=None)
        for statement in [s for migration in MIGRATIONS for s in migration] + list(extra):
            self.connection.execute(statement)
        self.connection.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        self.closed = False

    def _run(self, func: Callable[[sqlite3.Cursor], T]) -> Deferred[T]:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = func(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            return fail()
        cursor.execute("COMMIT")
        return succeed(result)

    read = write = _run

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def execute(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, args).fetchall()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """
        Every row of every table.
        """
        return {
            name: sorted(self.execute(f"SELECT * FROM {name}"))
            for name in storeTables(self.connection.cursor())
        }


def _account(address: Address, home: str, enabled: bool = True) -> AccountRecord:
    return AccountRecord(address, home, "", enabled, "{}")


#: One row of alice's per table of the home store's schema, by table: a
#: table the schema gains must be added here (L{test_everyTable} fails
#: until it is), so that export and import are seen to carry it.
ONE_ROW_PER_TABLE: dict[str, tuple[object, ...]] = {
    "contacts": ("alice@corp.example", "bob@corp.example", "Bob"),
    "authorisations": ("alice@corp.example", "bob@corp.example", "authorised"),
    "access": ("alice@corp.example", "spam.example", "block"),
    "presence_rules": ("alice@corp.example", 0, "busy", "refuse", "", "any", "tel:+15550100", "", ""),
}


def _rule(owner: str, position: int, state: str, alternate: str) -> tuple[object, ...]:
    """
    A row of C{presence_rules}: a refusal for one state.
    """
    return (owner, position, state, "refuse", "", "any", alternate, "", "")


def _insert(store: MemoryStore, table: str, *rows: tuple[object, ...]) -> None:
    for row in rows:
        store.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", *row)


def _scenario() -> tuple[MemoryDirectory, MemoryStore, MemoryStore]:
    """
    As in C{tests.test_admin.MoveTests}: alice, on hs1, has contacts,
    access lists, rules, and authorisation rows with bob (on hs1,
    staying), carol (on hs2, where alice goes: each store has its copy of
    their rows, which disagree), dave (of another domain), erin (on hs3)
    and frank (no account). bob and carol have rows of their own.
    """
    directory = MemoryDirectory([_account(ALICE, "hs1"), _account(BOB, "hs1"), _account(CAROL, "hs2"), _account(ERIN, "hs3")])
    hs1, hs2 = MemoryStore(), MemoryStore()
    a = "alice@corp.example"
    _insert(
        hs1,
        "authorisations",
        (a, "bob@corp.example", "authorised"),
        ("bob@corp.example", a, "pending"),
        (a, "carol@corp.example", "authorised"),  # alice authorised carol...
        ("carol@corp.example", a, "pending"),  # ...and still thinks carol has not answered
        (a, "dave@xmpp.example", "refused"),
        ("dave@xmpp.example", a, "authorised"),
        ("erin@corp.example", a, "authorised"),
        (a, "frank@corp.example", "pending"),
        ("bob@corp.example", "carol@corp.example", "authorised"),  # not alice's
    )
    _insert(hs1, "contacts", *[(a, f"{n}", n.split("@")[0].title()) for n in ("bob@corp.example", "carol@corp.example", "dave@xmpp.example", "erin@corp.example")])
    _insert(hs1, "contacts", ("bob@corp.example", a, "Al"))
    _insert(hs1, "access", (a, "spam.example", "block"), (a, "bob@corp.example", "allow"), ("bob@corp.example", a, "allow"))
    _insert(
        hs1,
        "presence_rules",
        _rule(a, 0, "busy", "tel:+15550100"),
        _rule(a, 1, "away", "mailto:alice@corp.example"),
        _rule("bob@corp.example", 0, "busy", "tel:+15550101"),
    )
    _insert(
        hs2,
        "authorisations",
        (a, "carol@corp.example", "pending"),  # carol's copy: alice's answer did not reach it
        ("carol@corp.example", a, "authorised"),  # carol's decision
        ("carol@corp.example", "erin@corp.example", "authorised"),
    )
    _insert(hs2, "contacts", ("carol@corp.example", a, "Alice"))
    return directory, hs1, hs2


class TransferTests(SynchronousTestCase):
    """
    L{exportUser}, L{importUser} and L{purgeUser} move a user's rows as
    C{user move} does on one machine.
    """

    def setUp(self) -> None:
        self.directory, self.hs1, self.hs2 = _scenario()

    def export(self, store: MemoryStore | None = None, home: str = "hs1", force: bool = False) -> UserExport:
        """
        Export alice from C{store} (hs1's), through the file's bytes.
        """
        result, _ = self.successResultOf(
            Deferred.fromCoroutine(exportUser(self.directory, store or self.hs1, ALICE, home, NOW, force))
        )
        data, _ = encodeExport(result)
        return decodeExport(data, "alice.json")

    def importInto(self, export: UserExport, store: MemoryStore | None = None, home: str = "hs2", replace: bool = False) -> ImportSummary:
        return self.successResultOf(
            Deferred.fromCoroutine(importUser(self.directory, store or self.hs2, export, home, replace))
        )

    def purge(self, record: UserExport | None, store: MemoryStore | None = None, home: str = "hs1") -> PurgeSummary:
        return self.successResultOf(Deferred.fromCoroutine(purgeUser(self.directory, store or self.hs1, ALICE, home, record)))

    def refused(self, d: Any, kind: type[Exception] = TransferRefused) -> str:
        """
        The message of the failure of C{d}, a coroutine that must fail with
        C{kind}.
        """
        failure = self.failureResultOf(Deferred.fromCoroutine(d), kind)
        return str(failure.value)

    def switch(self) -> None:
        """
        The directory names hs2 as alice's home (the operator's LDAP change).
        """
        self.directory.accounts[ALICE] = _account(ALICE, "hs2")

    def test_move(self) -> None:
        """
        Export on hs1, import on hs2, the directory's switch, purge on hs1:
        the stores end as C{user move} leaves them on one machine. alice's
        contacts, access lists and rules move; authorisation rows are
        copied, stay on hs1 for its users (bob), and merge with hs2's copy
        (carol's) where the pair's target decides.
        """
        a = "alice@corp.example"
        export = self.export()
        self.assertEqual(export.counts(), {"access": 2, "authorisations": 8, "contacts": 4, "presence_rules": 2})
        summary = self.importInto(export)
        self.assertEqual(summary, ImportSummary({"access": 2, "authorisations": 7, "contacts": 4, "presence_rules": 2}, 1, 1, False))
        self.switch()
        self.assertEqual(self.purge(export), PurgeSummary({"access": 2, "authorisations": 6, "contacts": 4, "presence_rules": 2}, 2))
        self.assertEqual(
            self.hs2.dump(),
            {
                "access": [(a, "bob@corp.example", "allow"), (a, "spam.example", "block")],
                "authorisations": sorted(
                    [
                        (a, "bob@corp.example", "authorised"),
                        ("bob@corp.example", a, "pending"),
                        (a, "carol@corp.example", "authorised"),  # alice's decision wins...
                        ("carol@corp.example", a, "authorised"),  # ...and so does carol's
                        (a, "dave@xmpp.example", "refused"),
                        ("dave@xmpp.example", a, "authorised"),
                        ("erin@corp.example", a, "authorised"),
                        (a, "frank@corp.example", "pending"),
                        ("carol@corp.example", "erin@corp.example", "authorised"),
                    ]
                ),
                "contacts": sorted(
                    [(a, n, n.split("@")[0].title()) for n in ("bob@corp.example", "carol@corp.example", "dave@xmpp.example", "erin@corp.example")]
                    + [("carol@corp.example", a, "Alice")]
                ),
                "presence_rules": [_rule(a, 0, "busy", "tel:+15550100"), _rule(a, 1, "away", "mailto:alice@corp.example")],
            },
        )
        self.assertEqual(
            self.hs1.dump(),
            {
                "access": [("bob@corp.example", a, "allow")],
                "authorisations": sorted(
                    [
                        (a, "bob@corp.example", "authorised"),
                        ("bob@corp.example", a, "pending"),
                        ("bob@corp.example", "carol@corp.example", "authorised"),
                    ]
                ),
                "contacts": [("bob@corp.example", a, "Al")],
                "presence_rules": [_rule("bob@corp.example", 0, "busy", "tel:+15550101")],
            },
        )

    def test_everyTable(self) -> None:
        """
        Every table of the home store's schema is exported and imported: a
        row of alice's in each (L{ONE_ROW_PER_TABLE}, which must name every
        table) comes out of one store and into another unchanged.
        """
        source, target = MemoryStore(), MemoryStore()
        tables = storeTables(source.connection.cursor())
        self.assertEqual(sorted(tables), sorted(ONE_ROW_PER_TABLE), "a table of the schema is not in ONE_ROW_PER_TABLE")
        for name, row in ONE_ROW_PER_TABLE.items():
            _insert(source, name, row)
        export = self.export(source)
        self.assertEqual(export.counts(), {name: 1 for name in tables})
        self.directory.accounts[BOB] = _account(BOB, "hs3")
        self.importInto(export, target)
        self.assertEqual(target.dump(), source.dump())
        self.assertEqual(readUserRows(target.connection.cursor(), ALICE), readUserRows(source.connection.cursor(), ALICE))

    def test_unknownTable(self) -> None:
        """
        A table that says nothing of whose its rows are (no C{owner}, nor
        C{target} and C{watcher}) stops the export: its rows would be left
        behind.
        """
        store = MemoryStore(["CREATE TABLE notes (author TEXT, body TEXT)"])
        message = self.refused(exportUser(self.directory, store, ALICE, "hs1", NOW), UnknownTable)
        self.assertEqual(
            message,
            "the home store's table 'notes' (author, body) has no column 'owner' nor 'target' and 'watcher':"
            " nothing says whose its rows are",
        )

    def test_newOwnerTable(self) -> None:
        """
        A table a later schema adds with an C{owner} column is carried
        without being named anywhere.
        """
        extra = ["CREATE TABLE rule_actions (owner TEXT, state TEXT, action TEXT, weight REAL, data BLOB, n INTEGER)"]
        source, target = MemoryStore(extra), MemoryStore(extra)
        _insert(source, "rule_actions", ("alice@corp.example", "busy", "forward", 0.5, b"\x00\xff", 3))
        _insert(source, "rule_actions", ("bob@corp.example", "busy", "forward", None, None, None))
        self.importInto(self.export(source), target)
        self.assertEqual(
            target.execute("SELECT * FROM rule_actions"), [("alice@corp.example", "busy", "forward", 0.5, b"\x00\xff", 3)]
        )

    def test_exportElsewhere(self) -> None:
        """
        The export is refused when the directory homes the user on another
        server than the store's (its rows there are stale), unless forced;
        and for no account.
        """
        self.assertEqual(
            self.refused(exportUser(self.directory, self.hs2, ALICE, "hs2", NOW)),
            "the directory homes alice@corp.example on hs1, not on hs2: its rows in hs2's store are not its current"
            " ones (export on hs1, or give --force to export these anyway)",
        )
        self.assertEqual(self.export(self.hs2, "hs2", force=True).counts()["authorisations"], 2)
        self.refused(exportUser(self.directory, self.hs1, FRANK, "hs1", NOW), NoSuchAccount)

    def test_importAgain(self) -> None:
        """
        Importing the same file again changes nothing and says so.
        """
        export = self.export()
        self.importInto(export)
        before = self.hs2.dump()
        summary = self.importInto(export)
        self.assertTrue(summary.already)
        self.assertEqual(summary.removed, 0)
        self.assertEqual(self.hs2.dump(), before)

    def test_importOverOwnRows(self) -> None:
        """
        A store that holds other rows of the user's (an earlier stay) is not
        overwritten unless told to replace them; then they are, in one
        transaction. Copies of pairs with the store's users (carol's) do
        not count as the user's rows.
        """
        a = "alice@corp.example"
        _insert(self.hs2, "contacts", (a, "zed@corp.example", "Zed"))
        _insert(self.hs2, "presence_rules", _rule(a, 0, "busy", "tel:old"))
        before = self.hs2.dump()
        export = self.export()
        self.assertEqual(
            self.refused(importUser(self.directory, self.hs2, export, "hs2")),
            "hs2's store holds 2 rows of alice@corp.example's already, not all as in the export (from an earlier stay"
            " here, or it logged in here since): give --replace to replace them with the export's",
        )
        self.assertEqual(self.hs2.dump(), before)
        summary = self.importInto(export, replace=True)
        self.assertEqual(summary.removed, 3)  # zed, the old rule, carol's stale copy of alice's decision
        self.assertNotIn((a, "zed@corp.example", "Zed"), self.hs2.dump()["contacts"])
        self.assertIn(_rule(a, 0, "busy", "tel:+15550100"), self.hs2.dump()["presence_rules"])

    def test_importOneTransaction(self) -> None:
        """
        A row the store refuses (a value its constraints forbid) leaves
        nothing of the import written.
        """
        export = self.export()
        rows = export.tables["authorisations"]
        bad = TableRows(rows.columns, rows.rows + (("alice@corp.example", "zoe@corp.example", "maybe"),))
        tables = dict(export.tables, authorisations=bad)
        data, _ = encodeExport(UserExport(ALICE, "hs1", NOW, export.schema, tables))
        before = self.hs2.dump()
        self.refused(importUser(self.directory, self.hs2, decodeExport(data, "x"), "hs2"), sqlite3.IntegrityError)
        self.assertEqual(self.hs2.dump(), before)

    def test_importOtherSchema(self) -> None:
        """
        A file from a store of another schema version, or with other tables,
        is refused, and nothing is written.
        """
        export = self.export()
        data, _ = encodeExport(UserExport(ALICE, "hs1", NOW, export.schema + 1, export.tables))
        before = self.hs2.dump()
        self.assertEqual(
            self.refused(importUser(self.directory, self.hs2, decodeExport(data, "x"), "hs2")),
            f"the export is of a store of schema version {export.schema + 1} (hs1), hs2's store is of version"
            f" {export.schema}: run the same imgateway version on both servers, then export again",
        )
        tables = {n: t for n, t in export.tables.items() if n != "presence_rules"}
        data, _ = encodeExport(UserExport(ALICE, "hs1", NOW, export.schema, tables))
        self.assertIn("the export's tables (access: owner, entry, list; authorisations:", self.refused(
            importUser(self.directory, self.hs2, decodeExport(data, "x"), "hs2")
        ))
        self.assertEqual(self.hs2.dump(), before)

    def test_importNoAccount(self) -> None:
        """
        A file of a user the directory does not know is refused.
        """
        export = self.export()
        del self.directory.accounts[ALICE]
        self.refused(importUser(self.directory, self.hs2, export, "hs2"), NoSuchAccount)

    def test_purgeWhileHomed(self) -> None:
        """
        Purge is refused while the directory still names the store's server
        as the user's home, and removes nothing.
        """
        export = self.export()
        before = self.hs1.dump()
        self.assertEqual(
            self.refused(purgeUser(self.directory, self.hs1, ALICE, "hs1", export)),
            "the directory still homes alice@corp.example on hs1: purge its rows here only once it names its new"
            " home (and the import there is done)",
        )
        self.assertEqual(self.hs1.dump(), before)

    def test_purgeChanged(self) -> None:
        """
        Purge is refused, removing nothing, if the user's rows changed since
        the export (a session still open wrote), or if no export was made;
        a new export then lets it purge.
        """
        export = self.export()
        _insert(self.hs1, "contacts", ("alice@corp.example", "zed@corp.example", "Zed"))
        self.switch()
        before = self.hs1.dump()
        self.assertEqual(
            self.refused(purgeUser(self.directory, self.hs1, ALICE, "hs1", export)),
            f"alice@corp.example's rows in hs1's store changed since the export of {NOW} (a session still open"
            " here, or a contact's request, wrote since): export again, import the new file on its new home with"
            " --replace, then purge",
        )
        self.assertIn(
            "and no export of them was made here", self.refused(purgeUser(self.directory, self.hs1, ALICE, "hs1", None))
        )
        self.assertEqual(self.hs1.dump(), before)
        again = self.export(force=True)
        self.assertEqual(self.purge(again).removed["contacts"], 5)

    def test_purgeAgain(self) -> None:
        """
        Purging again finds nothing to remove, and keeps the rows bob needs.
        """
        export = self.export()
        self.switch()
        self.purge(export)
        self.assertEqual(self.purge(export), PurgeSummary({"access": 0, "authorisations": 0, "contacts": 0, "presence_rules": 0}, 2))
        self.assertEqual(self.purge(None).kept, 2)


class ExportFileTests(SynchronousTestCase):
    """
    L{encodeExport} and L{decodeExport}: a whole, unchanged file of this
    format version, or a clear refusal.
    """

    def setUp(self) -> None:
        directory, hs1, _ = _scenario()
        result, _ = self.successResultOf(Deferred.fromCoroutine(exportUser(directory, hs1, ALICE, "hs1", NOW)))
        self.export = result
        self.data, self.digest = encodeExport(result)

    def reencode(self, change: Callable[[dict[str, Any]], None]) -> bytes:
        """
        The file, changed by C{change}, with its checksum made right again.
        """
        import hashlib

        body = json.loads(self.data)
        del body["sha256"]
        change(body)
        body["sha256"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        return json.dumps(body).encode()

    def bad(self, data: bytes) -> str:
        return str(self.assertRaises(BadExport, decodeExport, data, "alice.json"))

    def test_roundTrip(self) -> None:
        """
        A file reads back as the export it was written from, with its
        digest.
        """
        back = decodeExport(self.data, "alice.json")
        self.assertEqual((back.address, back.home, back.exported, back.schema), (ALICE, "hs1", NOW, len(MIGRATIONS)))
        self.assertEqual(dict(back.tables), dict(self.export.tables))
        self.assertEqual(back.digest, self.digest)
        body = json.loads(self.data)
        self.assertEqual((body["format"], body["version"]), ("imgateway-user-export", EXPORT_VERSION))

    def test_truncated(self) -> None:
        """
        A truncated file is refused.
        """
        for end in (0, 1, len(self.data) // 2, len(self.data) - 3):
            self.assertIn("alice.json is not a whole export file (truncated, or not one at all)", self.bad(self.data[:end]))

    def test_edited(self) -> None:
        """
        A file changed after it was written (a row edited, added or
        removed), even as valid JSON, is refused.
        """
        text = self.data.decode()
        for edited in (
            text.replace('"Bob"', '"Robert"'),
            text.replace('"tel:+15550100"', '"tel:+15550199"'),
            text.replace('"hs1"', '"hs9"'),
        ):
            self.assertNotEqual(edited, text)
            self.assertEqual(
                self.bad(edited.encode()), "alice.json was changed or damaged since it was written (its sha256 does not match)"
            )
        body = json.loads(self.data)
        del body["sha256"]
        self.assertIn("its sha256 does not match", self.bad(json.dumps(body).encode()))

    def test_foreignVersion(self) -> None:
        """
        A file of another format version, or not an export at all, is
        refused, whatever its checksum.
        """

        def version(body: dict[str, Any]) -> None:
            body["version"] = 2

        self.assertEqual(
            self.bad(self.reencode(version)),
            "alice.json is an export of format version 2; this imgateway reads version 1 only:"
            " import it with the version that wrote it",
        )
        self.assertEqual(
            self.bad(b'{"name": "something else"}'),
            'alice.json is not an imgateway user export (no "format": "imgateway-user-export")',
        )
        self.assertIn("not a whole export file", self.bad(b"\xff\xfe"))

    def test_otherUsersRows(self) -> None:
        """
        A file (even with a right checksum) with a row that is not its
        user's, or an address column that holds no address, or a row of
        the wrong length, is refused.
        """

        def other(body: dict[str, Any]) -> None:
            body["tables"]["contacts"]["rows"].append(["bob@corp.example", "carol@corp.example", "Carol"])

        def notAddress(body: dict[str, Any]) -> None:
            body["tables"]["contacts"]["rows"].append(["alice@corp.example", "Not An@Address@", "?"])

        def short(body: dict[str, Any]) -> None:
            body["tables"]["presence_rules"]["rows"].append(["alice@corp.example", "busy"])

        def value(body: dict[str, Any]) -> None:
            body["tables"]["presence_rules"]["rows"].append(["alice@corp.example", 5, "busy", "refuse", "", "any", "", "", True])

        self.assertEqual(
            self.bad(self.reencode(other)), "alice.json is not a valid export: a row of table 'contacts' is not alice@corp.example's"
        )
        self.assertIn("table 'contacts', column 'contact': not an address", self.bad(self.reencode(notAddress)))
        self.assertIn("a row of table 'presence_rules' has not 9 values", self.bad(self.reencode(short)))
        self.assertIn("a value of an unknown kind: true", self.bad(self.reencode(value)))


def _config(folder: FilePath[str], home: str = "hs1") -> GatewayConfig:
    return GatewayConfig(
        path=folder.child("imgateway.toml"),
        domain="corp.example",
        dataDir=folder.child("data"),
        homeServerName=home,
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        servers={
            "router": ServerConfig("router", frozenset({"router"})),
            "hs1": ServerConfig("hs1", frozenset({"home"})),
            "hs2": ServerConfig("hs2", frozenset({"home"})),
        },
    )


class CommandTests(SynchronousTestCase):
    """
    C{imgateway-admin user export}, C{import} and C{purge}: the files, and
    what they print.
    """

    def setUp(self) -> None:
        self.directory, hs1, hs2 = _scenario()
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.stores = {"hs1": hs1, "hs2": hs2}

        async def openStore(reactor: object, config: GatewayConfig, home: str, create: bool) -> MemoryStore:
            return self.stores[home]

        self.patch(cli, "_openStore", openStore)

    def command(self, home: str, *argv: str) -> str:
        """
        Run C{imgateway-admin user ARGV} with the configuration of C{home}.

        @return: What it printed.
        @raise Exception: As the command does.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        config = _config(self.folder.child(home), home)
        action = cli._readingAction(cli._parser().parse_args(["user", *argv]), config)
        d: Deferred[None] = Deferred.fromCoroutine(action(object(), self.directory))  # type: ignore[arg-type]
        failures: list[Failure] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()
        return out.getvalue()

    def test_commands(self) -> None:
        """
        C{export} writes the file (mode 0600) and a copy for C{purge} in
        C{data_dir/exports/}; C{import} writes it into the store and says
        what is next; C{purge} is refused until the directory names the new
        home, then removes what it exported.
        """
        out = os.path.join(self.folder.path, "alice.json")
        printed = self.command("hs1", "export", "alice", "--out", out)
        with open(out, "rb") as f:
            data = f.read()
        export = decodeExport(data, out)
        self.assertEqual(
            printed,
            f"exported alice@corp.example from hs1's store to {out} (access 2, authorisations 8, contacts 4, presence_rules 2;"
            f" sha256 {export.digest[:16]})\n"
            "note: alice@corp.example is enabled in the directory: until the directory names its new home, a session"
            " of its on hs1 could change these rows (user purge will then refuse: export and import again)\n",
        )
        record = self.folder.child("hs1").child("data").child("exports").child("alice@corp.example.json")
        self.assertEqual(record.getContent(), data)
        for path in (out, record.path):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(record.parent().path).st_mode), 0o700)

        self.assertEqual(
            self.command("hs2", "import", out),
            f"imported alice@corp.example into hs2's store from {out} (exported from hs1 at {export.exported}, sha256"
            f" {export.digest[:16]}: access 2, authorisations 7, contacts 4, presence_rules 2; left as hs2 keeps them, decided by"
            " its users: 1; removed: 1)\n"
            "next: make the directory name hs2 as the home server of alice@corp.example (LDAP: its home attribute),"
            " then, on hs1: imgateway-admin user purge alice@corp.example\n",
        )
        self.assertIn("is in hs2's store as in", self.command("hs2", "import", out))
        e = self.assertRaises(TransferRefused, self.command, "hs1", "purge", "alice")
        self.assertIn("the directory still homes alice@corp.example on hs1", str(e))
        self.directory.accounts[ALICE] = _account(ALICE, "hs2")
        self.assertEqual(
            self.command("hs1", "purge", "alice"),
            "purged alice@corp.example from hs1's store (access 2, authorisations 6, contacts 4, presence_rules 2;"
            " kept for its users: 2)\n",
        )
        self.assertEqual(
            self.command("hs1", "purge", "alice"),
            "hs1's store holds no rows of alice@corp.example's to purge (kept for its users: 2)\n",
        )

    def test_badFile(self) -> None:
        """
        C{import} of a damaged file, or of a file that is not there, is
        refused with the reason.
        """
        out = os.path.join(self.folder.path, "alice.json")
        self.command("hs1", "export", "alice", "--out", out)
        with open(out, "rb") as f:
            data = f.read()
        with open(out, "wb") as f:
            f.write(data[: len(data) // 2])
        e = self.assertRaises(BadExport, self.command, "hs2", "import", out)
        self.assertIn("is not a whole export file", str(e))
        missing = os.path.join(self.folder.path, "nothing.json")
        e2 = self.assertRaises(cli._Refused, self.command, "hs2", "import", missing)
        self.assertEqual(str(e2), f"cannot read {missing}: No such file or directory")

    def test_notAHome(self) -> None:
        """
        The commands work on the store of the configuration's own home
        server: a router's configuration is refused.
        """
        e = self.assertRaises(cli._Refused, self.command, "router", "purge", "alice")
        self.assertIn("router ([gateway] home_server of", str(e))
