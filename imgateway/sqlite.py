# -*- test-case-name: tests.test_sqlite_store -*-
"""
SQLite storage through L{twisted.enterprise.adbapi}: the one place that opens
a database file (one connection, WAL, foreign keys on), migrates its schema,
and turns SQLite's failures into L{PersistenceFailed}.

A store module describes its schema as an ordered list of migrations, each a
list of SQL statements::

    MIGRATIONS = [
        ["CREATE TABLE t (a TEXT PRIMARY KEY)"],             # version 1
        ["ALTER TABLE t ADD COLUMN b TEXT NOT NULL DEFAULT ''"],  # version 2
    ]

and opens its file with L{openDatabase}. Each migration runs in a transaction
of its own; the schema version is kept in C{PRAGMA user_version}. Migrations
are only ever appended: a released one is never edited.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from imgateway.core.errors import ImgatewayError, PersistenceFailed

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "Database",
    "Migrations",
    "SchemaTooNew",
    "openDatabase",
    "openPool",
    "persistenceFailed",
]

P = ParamSpec("P")
T = TypeVar("T")

#: An ordered list of migrations; migration C{n} (counting from 0) takes
#: the schema from version C{n} to version C{n + 1}.
Migrations = Sequence[Sequence[str]]

#: How long (in seconds) a statement waits for another connection's lock,
#: for example while C{imgateway-admin} writes next to a running gateway.
DEFAULT_BUSY_TIMEOUT = 5.0

# Primary SQLite result codes (the low byte of an extended code) whose
# failures are operational rather than bugs, with a readable description.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_REASONS = {
    _SQLITE_PERM: "permission denied",
    _SQLITE_BUSY: "the database is locked by another connection",
    _SQLITE_LOCKED: "the database is locked",
    _SQLITE_READONLY: "the database is read-only",
    _SQLITE_IOERR: "disk I/O error",
    _SQLITE_CORRUPT: "the database file is corrupt",
    _SQLITE_FULL: "the disk is full, or the database reached its size limit",
    _SQLITE_CANTOPEN: "the database file cannot be opened",
    _SQLITE_NOTADB: "the file is not an SQLite database",
}

# For errors raised without a result code.
_MESSAGES = {
    "database or disk is full": _SQLITE_FULL,
    "disk I/O error": _SQLITE_IOERR,
    "database is locked": _SQLITE_BUSY,
    "file is not a database": _SQLITE_NOTADB,
    "database disk image is malformed": _SQLITE_CORRUPT,
    "unable to open database file": _SQLITE_CANTOPEN,
}


class SchemaTooNew(ImgatewayError):
    """
    The database was written by a newer imgateway: its schema version is
    higher than the code knows, so it is left alone.
    """


def _resultCode(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    return _MESSAGES.get(str(error))


def persistenceFailed(path: str, error: sqlite3.Error, write: bool) -> PersistenceFailed | None:
    """
    Say what an SQLite error means for a store, if it means a failure of
    the storage rather than a bug.

    @param path: The database file, named in the message.
    @param error: What SQLite raised.
    @param write: Whether the failed operation was a write. Every
        L{sqlite3.DatabaseError} but a L{sqlite3.ProgrammingError} fails a
        write; a read fails only for the operational reasons (disk full or
        failing, file locked, corrupt or unreadable).
    @return: The error to raise instead, or C{None} to let C{error} through.
    """
    if not isinstance(error, sqlite3.DatabaseError) or isinstance(error, sqlite3.ProgrammingError):
        return None
    code = _resultCode(error)
    reason = _REASONS.get(code) if code is not None else None
    if reason is None and not write:
        return None
    detail = str(error)
    if reason is None:
        reason = detail
    elif detail and detail != reason:
        reason = f"{reason} ({detail})"
    verb = "write to" if write else "read"
    return PersistenceFailed(f"could not {verb} {path}: {reason}")


def _configureConnection(busyTimeout: float) -> Callable[[sqlite3.Connection], None]:
    milliseconds = int(busyTimeout * 1000)

    def configure(connection: sqlite3.Connection) -> None:
        # busy_timeout first: switching to WAL needs a lock.
        connection.execute(f"PRAGMA busy_timeout = {milliseconds:d}").fetchall()
        # Switching a new database to WAL can fail at once with "database is
        # locked" while another process opens it too (SQLite does not always
        # call the busy handler for it): retry within the busy timeout.
        deadline = time.monotonic() + busyTimeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL").fetchall()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        connection.execute("PRAGMA synchronous = NORMAL").fetchall()
        connection.execute("PRAGMA foreign_keys = ON").fetchall()

    return configure


def openPool(
    reactor: IReactorCore,
    path: FilePath[str] | str,
    busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
) -> adbapi.ConnectionPool:
    """
    Make an adbapi connection pool of one connection to an SQLite file,
    creating its folder (mode 0700) if missing.

    The connection is in autocommit mode (C{isolation_level=None}), with
    C{journal_mode=WAL}, C{synchronous=NORMAL}, C{foreign_keys=ON} and a busy
    timeout; transactions are begun explicitly (L{Database} does it). The
    pool's thread starts when C{reactor} runs; call its C{close} when done.

    Prefer L{openDatabase}, which also migrates the schema and maps errors.

    @param reactor: The reactor whose thread pool machinery the pool uses
        (it must also provide L{IReactorFromThreads
        <twisted.internet.interfaces.IReactorFromThreads>}).
    @param path: The database file; C{":memory:"} for a private in-memory
        database.
    @param busyTimeout: Seconds to wait for another connection's lock.
    @raise PersistenceFailed: If the folder cannot be created.
    """
    pathText = path.path if isinstance(path, FilePath) else path
    if pathText != ":memory:":
        parent = os.path.dirname(os.path.abspath(pathText))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            raise PersistenceFailed(f"could not create folder {parent}: {e.strerror}") from None
    pool = adbapi.ConnectionPool(
        "sqlite3",
        pathText,
        timeout=busyTimeout,
        isolation_level=None,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_configureConnection(busyTimeout),
        cp_reactor=reactor,
    )
    return pool


def _migrate(connection: sqlite3.Connection, path: str, migrations: Migrations) -> int:
    target = len(migrations)

    def currentVersion() -> int:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > target:
            raise SchemaTooNew(
                f"{path}: the database has schema version {version}, newer than "
                f"this imgateway knows (version {target}); run a newer imgateway, "
                f"or restore a backup made for this one"
            )
        return int(version)

    version = currentVersion()
    while version < target:
        connection.execute("BEGIN IMMEDIATE")
        # Another process may have migrated while we waited for the lock.
        version = currentVersion()
        if version < target:
            for statement in migrations[version]:
                connection.execute(statement)
            version += 1
            connection.execute(f"PRAGMA user_version = {version:d}")
        connection.execute("COMMIT")
    return version


class Database:
    """
    An open SQLite database: a one-connection adbapi pool that runs
    functions in transactions, in the order they were asked for, and fails
    with L{PersistenceFailed} when the storage fails.

    @ivar path: The database file.
    """

    def __init__(self, pool: adbapi.ConnectionPool, path: str) -> None:
        """
        @param pool: A pool from L{openPool}.
        @param path: The database file, for messages.
        """
        self._pool = pool
        self.path = path
        self._closed = False
        self._pending = 0
        self._closing: list[Deferred[None]] = []

    def _run(self, write: bool, func: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        if self._closed:
            return fail(PersistenceFailed(f"{self.path}: the database is closed"))
        d: Deferred[T] = self._pool.runWithConnection(func)
        self._pending += 1

        def mapError(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, sqlite3.Error):
                mapped = persistenceFailed(self.path, error, write)
                if mapped is not None:
                    raise mapped from error
            return failure

        # The caller's callbacks run before a close that waits for this
        # operation goes on.
        outer: Deferred[T] = Deferred()

        def deliver(result: T | Failure) -> None:
            try:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            finally:
                self._pending -= 1
                if self._pending == 0 and self._closing:
                    self._finishClose()

        d.addErrback(mapError)
        d.addBoth(deliver)
        return outer

    def _transaction(
        self,
        write: bool,
        func: Callable[Concatenate[sqlite3.Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        def inThread(connection: sqlite3.Connection) -> T:
            # A write takes the write lock at once, so that what it reads is
            # still true when it writes. On an exception, adbapi rolls back.
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            cursor = connection.cursor()
            try:
                result = func(cursor, *args, **kwargs)
            finally:
                cursor.close()
            connection.execute("COMMIT")
            return result

        return self._run(write, inThread)

    def read(
        self,
        func: Callable[Concatenate[sqlite3.Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """
        Run C{func(cursor, *args, **kwargs)} in a read transaction, in the
        pool's thread.

        @return: A L{Deferred} firing with C{func}'s result, or failing with
            its exception (L{PersistenceFailed} when the storage failed).
        """
        return self._transaction(False, func, *args, **kwargs)

    def write(
        self,
        func: Callable[Concatenate[sqlite3.Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """
        Run C{func(cursor, *args, **kwargs)} in a write transaction
        (C{BEGIN IMMEDIATE}), in the pool's thread. If C{func} raises, or
        the commit fails, nothing it did is kept.

        @return: A L{Deferred} firing with C{func}'s result, or failing with
            its exception; any L{sqlite3.DatabaseError} (but a
            L{sqlite3.ProgrammingError}) becomes L{PersistenceFailed}.
        """
        return self._transaction(True, func, *args, **kwargs)

    def migrate(self, migrations: Migrations) -> Deferred[int]:
        """
        Bring the schema up to date: apply, each in a transaction of its
        own, the migrations past the database's C{user_version}.

        @return: A L{Deferred} firing with the schema version (the number of
            migrations), or failing with L{SchemaTooNew} if the database's
            version is higher, or L{PersistenceFailed}.
        """
        migrations = [list(m) for m in migrations]
        return self._run(True, lambda connection: _migrate(connection, self.path, migrations))

    def close(self) -> Deferred[None]:
        """
        Close the database once the operations under way are done; later
        operations fail with L{PersistenceFailed}. Idempotent.

        @return: A L{Deferred} that fires when the connection is closed.
        """
        if self._closed and not self._closing:
            return succeed(None)
        self._closed = True
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        if self._pending == 0:
            self._finishClose()
        return d

    def _finishClose(self) -> None:
        waiting, self._closing = self._closing, []
        self._pool.close()
        for d in waiting:
            d.callback(None)


def openDatabase(
    reactor: IReactorCore,
    path: FilePath[str] | str,
    migrations: Migrations,
    busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
) -> Deferred[Database]:
    """
    Open (creating if need be) an SQLite database and migrate its schema.

    @param reactor: As for L{openPool}.
    @param path: The database file; its folder is created if missing.
    @param migrations: The schema, as L{Migrations}.
    @param busyTimeout: As for L{openPool}.
    @return: A L{Deferred} firing with the open L{Database}, or failing
        with L{SchemaTooNew} or L{PersistenceFailed} (the database is then
        closed).
    """
    try:
        pool = openPool(reactor, path, busyTimeout)
    except PersistenceFailed:
        return fail()
    database = Database(pool, path.path if isinstance(path, FilePath) else path)

    def failed(failure: Failure) -> Deferred[Any]:
        return database.close().addCallback(lambda _: failure)

    d = database.migrate(migrations)
    d.addCallbacks(lambda _: database, failed)
    return cast(Deferred[Database], d)


def openDatabaseNow(
    reactor: IReactorCore,
    path: FilePath[str] | str,
    migrations: Migrations,
    busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
) -> Database:
    """
    Like L{openDatabase}, but migrate the schema at once, blocking: for
    start-up, before the reactor runs, so that a database that cannot be
    used stops the gateway before any port is opened.

    @raise SchemaTooNew: If the database is newer than this code.
    @raise PersistenceFailed: If the file cannot be created, opened or
        migrated.
    """
    pathText = path.path if isinstance(path, FilePath) else path
    pool = openPool(reactor, pathText, busyTimeout)
    try:
        connection = sqlite3.connect(pathText, timeout=busyTimeout, isolation_level=None)
        try:
            _configureConnection(busyTimeout)(connection)
            _migrate(connection, pathText, migrations)
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise (persistenceFailed(pathText, e, write=True) or PersistenceFailed(f"{pathText}: {e}")) from None
    return Database(pool, pathText)
