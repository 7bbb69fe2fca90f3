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

Commits are grouped: the operations asked for while another group runs are
run together, in order, in one SQLite transaction (each in a savepoint of its
own), and each caller is answered once that transaction has committed. How
much a commit survives is a L{Durability}.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from imgateway.core.errors import ImgatewayError, PersistenceFailed

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_CACHE_KIB",
    "DEFAULT_MAX_GROUP",
    "DEFAULT_ANSWERS_PER_TURN",
    "Database",
    "Durability",
    "Migrations",
    "SchemaTooNew",
    "openDatabase",
    "openDatabaseNow",
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

#: The most memory, in KiB, a connection keeps of its file's pages (SQLite's
#: page cache, C{PRAGMA cache_size} as a negative number). It fills up as
#: rows are read (at logins: the users' rows) and stays full; pages not in
#: it are read again from the operating system's file cache, a system call
#: each. An eighth of SQLite's own default (2000): the home server keeps
#: each logged-in user's rows in its own memory, so the cache serves only
#: logins and writes, and at 2000 it held 2.4 MiB (two files) once a
#: thousand users had logged in, for about three C{pread}s per login saved
#: (C{bench/README.md}, "Idle sessions' memory, fourth round").
#: C{[gateway] sqlite_cache_kib}.
DEFAULT_CACHE_KIB = 256

#: The most operations L{Database} runs in one transaction (one commit).
#: Larger groups save little more, and make the first caller of a group
#: wait for all the others.
DEFAULT_MAX_GROUP = 256

#: The most callers of a group L{Database} answers in one turn of the
#: reactor; the others are answered in the next turns. The callers' callbacks
#: do the work the results start (a home server's notifications, the next
#: request of a user's lane), so a group of hundreds answered at once would
#: hold the reactor, and every other connection, for a long time.
DEFAULT_ANSWERS_PER_TURN = 16


class Durability(enum.Enum):
    """
    What a change survives once it is acknowledged (its transaction has
    committed). Both keep the database file intact: what they differ in is
    whether the last commits may be lost.

    @cvar PROCESS: Survives the gateway process ending in any way, C{kill
        -9} included, but not an operating system crash or a power loss,
        which may lose the commits of the last moments (the write-ahead log
        is synced to disk only at checkpoints). SQLite's C{synchronous=NORMAL}
        with WAL; the default.
    @cvar POWER: Also survives an operating system crash or a power loss:
        every commit waits for the disk to confirm it (an C{fsync} of the
        write-ahead log). SQLite's C{synchronous=FULL}; costs a disk sync per
        commit, which grouped commits share.
    """

    PROCESS = "process"
    POWER = "power"


_SYNCHRONOUS = {Durability.PROCESS: "NORMAL", Durability.POWER: "FULL"}

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


def _configureConnection(
    busyTimeout: float, durability: Durability = Durability.PROCESS, cacheKiB: int = DEFAULT_CACHE_KIB
) -> Callable[[sqlite3.Connection], None]:
    milliseconds = int(busyTimeout * 1000)
    synchronous = _SYNCHRONOUS[durability]
    if cacheKiB < 1:
        raise ValueError(f"cacheKiB must be at least 1, got {cacheKiB!r}")

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
        connection.execute(f"PRAGMA synchronous = {synchronous}").fetchall()
        connection.execute("PRAGMA foreign_keys = ON").fetchall()
        # A negative size is in KiB (a positive one would be in pages).
        connection.execute(f"PRAGMA cache_size = {-cacheKiB:d}").fetchall()

    return configure


def openPool(
    reactor: IReactorCore,
    path: FilePath[str] | str,
    busyTimeout: float = DEFAULT_BUSY_TIMEOUT,
    durability: Durability = Durability.PROCESS,
    cacheKiB: int = DEFAULT_CACHE_KIB,
) -> adbapi.ConnectionPool:
    """
    Make an adbapi connection pool of one connection to an SQLite file,
    creating its folder (mode 0700) if missing.

    The connection is in autocommit mode (C{isolation_level=None}), with
    C{journal_mode=WAL}, C{synchronous} as C{durability} asks
    (C{NORMAL} or C{FULL}), C{foreign_keys=ON} and a busy timeout;
    transactions are begun explicitly (L{Database} does it). The pool's
    thread starts when C{reactor} runs; call its C{close} when done.

    Prefer L{openDatabase}, which also migrates the schema and maps errors.

    @param reactor: The reactor whose thread pool machinery the pool uses
        (it must also provide L{IReactorFromThreads
        <twisted.internet.interfaces.IReactorFromThreads>}).
    @param path: The database file; C{":memory:"} for a private in-memory
        database.
    @param busyTimeout: Seconds to wait for another connection's lock.
    @param durability: What an acknowledged commit survives.
    @param cacheKiB: The most memory, in KiB, the connection keeps of the
        file's pages (L{DEFAULT_CACHE_KIB}).
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
        cp_openfun=_configureConnection(busyTimeout, durability, cacheKiB),
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


class _Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    # Runs with the connection itself, outside any group (a migration).
    ALONE = "alone"


class _Operation:
    """
    An operation waiting in L{Database}'s queue.
    """

    __slots__ = ("kind", "func", "deferred")

    def __init__(self, kind: _Kind, func: Callable[[Any], Any]) -> None:
        self.kind = kind
        self.func = func
        self.deferred: Deferred[Any] = Deferred()


# What became of one operation of a group: (True, its result) or (False, a
# Failure).
_Outcome = tuple[bool, Any]


def _rollbackAll(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _undoOperation(connection: sqlite3.Connection) -> bool:
    """
    Undo what the operation of the current savepoint did.

    @return: Whether the transaction goes on; C{False} when SQLite had
        rolled back the whole transaction already (as it may for a full
        disk or an I/O error), or the savepoint could not be rolled back
        (the transaction is then rolled back).
    """
    if not connection.in_transaction:
        return False
    try:
        connection.execute("ROLLBACK TO operation")
        connection.execute("RELEASE operation")
    except sqlite3.Error:
        _rollbackAll(connection)
        return False
    return True


class Database:
    """
    An open SQLite database: a one-connection adbapi pool that runs
    functions in transactions, in the order they were asked for, and fails
    with L{PersistenceFailed} when the storage fails.

    Commits are grouped. The operations asked for while a group runs wait in
    a queue; when it is done, those waiting (up to C{maxGroup}) run, in
    order, as the next group: one transaction (C{BEGIN IMMEDIATE} if one of
    them writes), each operation inside a savepoint of its own, then one
    C{COMMIT}. An operation that raises rolls back to its savepoint: it
    loses only its own changes and fails only its own L{Deferred}. Every
    caller is answered after the group's commit, so a change is never
    acknowledged before it is committed; if the commit fails, or SQLite
    rolls back the whole transaction (a full disk, an I/O error), the
    operations whose changes were lost fail with L{PersistenceFailed}.
    A read sees the changes of every write asked for before it.

    @ivar path: The database file.
    @ivar durability: What an acknowledged change survives.
    @ivar maxGroup: The most operations run in one transaction.
    @ivar answersPerTurn: With a C{clock}, the most callers of a group
        answered in one turn of the reactor (the others in the next turns,
        in order, before the next group starts).
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        path: str,
        durability: Durability = Durability.PROCESS,
        maxGroup: int = DEFAULT_MAX_GROUP,
        clock: IReactorTime | None = None,
        answersPerTurn: int = DEFAULT_ANSWERS_PER_TURN,
    ) -> None:
        """
        @param pool: A pool from L{openPool}.
        @param path: The database file, for messages.
        @param durability: What the pool was opened with.
        @param maxGroup: The most operations run in one transaction (C{1}:
            every operation commits alone).
        @param clock: Schedules the answers of a group past the first
            C{answersPerTurn}; without it, a group's callers are all
            answered at once.
        @param answersPerTurn: See L{Database.answersPerTurn}.
        """
        if maxGroup < 1:
            raise ValueError(f"maxGroup must be at least 1, got {maxGroup!r}")
        if answersPerTurn < 1:
            raise ValueError(f"answersPerTurn must be at least 1, got {answersPerTurn!r}")
        self._pool = pool
        self.path = path
        self.durability = durability
        self.maxGroup = maxGroup
        self.answersPerTurn = answersPerTurn
        self._clock = clock
        self._closed = False
        self._running = False
        self._queue: deque[_Operation] = deque()
        self._closing: list[Deferred[None]] = []

    def _failure(self, error: BaseException, write: bool) -> Failure:
        """
        The failure to hand a caller for C{error}: L{PersistenceFailed} when
        it is a failure of the storage.
        """
        if isinstance(error, sqlite3.Error):
            mapped = persistenceFailed(self.path, error, write)
            if mapped is not None:
                mapped.__cause__ = error
                return Failure(mapped)
        return Failure(error)

    def _enqueue(self, kind: _Kind, func: Callable[[Any], T]) -> Deferred[T]:
        if self._closed:
            return fail(PersistenceFailed(f"{self.path}: the database is closed"))
        operation = _Operation(kind, func)
        self._queue.append(operation)
        if not self._running:
            self._dispatch()
        return cast(Deferred[T], operation.deferred)

    def _dispatch(self) -> None:
        """
        Run the next group of queued operations in the pool's thread.
        """
        group = [self._queue.popleft()]
        d: Deferred[Any]
        if group[0].kind is _Kind.ALONE:
            d = self._pool.runWithConnection(group[0].func)
        else:
            while self._queue and len(group) < self.maxGroup and self._queue[0].kind is not _Kind.ALONE:
                group.append(self._queue.popleft())
            d = self._pool.runWithConnection(
                self._runGroup, [(operation.kind is _Kind.WRITE, operation.func) for operation in group]
            )
        self._running = True
        d.addBoth(self._ran, group)

    def _runGroup(
        self, connection: sqlite3.Connection, group: list[tuple[bool, Callable[[sqlite3.Cursor], Any]]]
    ) -> list[_Outcome]:
        """
        Run a group of operations in one transaction, in the pool's thread.

        @param group: Each operation's function, and whether it writes.
        @return: Each operation's outcome.
        """
        outcomes: list[_Outcome] = [(False, None)] * len(group)
        # The operations already failed, not to run.
        settled: set[int] = set()
        i = 0
        while i < len(group):
            # A write takes the write lock at once, so that what the group
            # reads is still true when it writes.
            writes = [j for j in range(i, len(group)) if group[j][0] and j not in settled]
            try:
                connection.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            except sqlite3.Error as e:
                if not writes:
                    for j in range(i, len(group)):
                        outcomes[j] = (False, self._failure(e, write=False))
                    break
                # No write lock (another process holds it past the busy
                # timeout): the writes fail, the reads go on.
                for j in writes:
                    outcomes[j] = (False, self._failure(e, write=True))
                    settled.add(j)
                continue
            # What ran before the transaction's first write saw only what
            # was committed already, and stays true whatever happens next.
            firstWrite: int | None = None
            aborted = False
            while i < len(group) and not aborted:
                if i in settled:
                    i += 1
                    continue
                write, func = group[i]
                if write and firstWrite is None:
                    firstWrite = i
                cursor = connection.cursor()
                try:
                    connection.execute("SAVEPOINT operation")
                    outcomes[i] = (True, func(cursor))
                    connection.execute("RELEASE operation")
                except Exception as e:
                    outcomes[i] = (False, self._failure(e, write) if isinstance(e, sqlite3.Error) else Failure())
                    if not _undoOperation(connection):
                        # The whole transaction is gone: so are the changes
                        # of the operations before this one.
                        self._lost(outcomes, firstWrite, i, e)
                        aborted = True
                finally:
                    cursor.close()
                i += 1
            if aborted:
                continue
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as e:
                _rollbackAll(connection)
                self._lost(outcomes, firstWrite, i, e)
        return outcomes

    def _lost(self, outcomes: list[_Outcome], firstWrite: int | None, end: int, error: Exception) -> None:
        """
        Fail, with C{error}, the operations of a transaction that SQLite did
        not keep: those that succeeded from its first write (what ran before
        it saw only committed data) up to C{end}. Those that failed keep
        their own failure.
        """
        if firstWrite is None:
            return
        for j in range(firstWrite, end):
            if outcomes[j][0]:
                outcomes[j] = (False, self._failure(error, write=True))

    def _ran(self, result: list[_Outcome] | Any | Failure, group: list[_Operation]) -> None:
        """
        Answer the callers of a group that ran, in order (L{answersPerTurn}
        in each turn of the reactor), then run the next group (or finish
        closing).
        """
        outcomes: list[_Outcome]
        if isinstance(result, Failure):
            error = result.value
            failure = self._failure(error, write=True) if isinstance(error, sqlite3.Error) else result
            outcomes = [(False, failure)] * len(group)
        elif group[0].kind is _Kind.ALONE:
            outcomes = [(True, result)]
        else:
            outcomes = result
        self._answer(list(zip(group, outcomes)), 0)

    def _answer(self, answers: list[tuple[_Operation, _Outcome]], start: int) -> None:
        """
        Answer the callers C{answers[start:]}: those of this turn, and
        schedule the rest for the next turn; after the last, run the next
        group (or finish closing).
        """
        end = len(answers) if self._clock is None else start + self.answersPerTurn
        try:
            for operation, (succeeded, value) in answers[start:end]:
                if succeeded:
                    operation.deferred.callback(value)
                else:
                    operation.deferred.errback(value)
        finally:
            if end < len(answers):
                assert self._clock is not None
                self._clock.callLater(0, self._answer, answers, end)
            else:
                # The callers' callbacks have run (and may have queued more)
                # before the next group starts, or a close goes on.
                self._running = False
                if self._queue:
                    self._dispatch()
                elif self._closing:
                    self._finishClose()

    def read(
        self,
        func: Callable[Concatenate[sqlite3.Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """
        Run C{func(cursor, *args, **kwargs)} in a transaction, in the pool's
        thread, after every operation asked for before.

        @return: A L{Deferred} firing with C{func}'s result, or failing with
            its exception (L{PersistenceFailed} when the storage failed).
        """
        return self._enqueue(_Kind.READ, lambda cursor: func(cursor, *args, **kwargs))

    def write(
        self,
        func: Callable[Concatenate[sqlite3.Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """
        Run C{func(cursor, *args, **kwargs)} in a write transaction
        (C{BEGIN IMMEDIATE}, perhaps shared with other operations: see
        L{Database}), in the pool's thread, after every operation asked for
        before. If C{func} raises, or the commit fails, nothing it did is
        kept.

        @return: A L{Deferred} firing with C{func}'s result once its changes
            are committed, or failing with its exception; any
            L{sqlite3.DatabaseError} (but a L{sqlite3.ProgrammingError})
            becomes L{PersistenceFailed}.
        """
        return self._enqueue(_Kind.WRITE, lambda cursor: func(cursor, *args, **kwargs))

    def migrate(self, migrations: Migrations) -> Deferred[int]:
        """
        Bring the schema up to date: apply, each in a transaction of its
        own, the migrations past the database's C{user_version}.

        @return: A L{Deferred} firing with the schema version (the number of
            migrations), or failing with L{SchemaTooNew} if the database's
            version is higher, or L{PersistenceFailed}.
        """
        migrations = [list(m) for m in migrations]
        return self._enqueue(_Kind.ALONE, lambda connection: _migrate(connection, self.path, migrations))

    def close(self) -> Deferred[None]:
        """
        Close the database once every operation asked for before is done
        (committed and answered); later operations fail with
        L{PersistenceFailed}. Idempotent.

        @return: A L{Deferred} that fires when the connection is closed.
        """
        if self._closed and not self._closing:
            return succeed(None)
        self._closed = True
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        if not self._running and not self._queue:
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
    durability: Durability = Durability.PROCESS,
    maxGroup: int = DEFAULT_MAX_GROUP,
    cacheKiB: int = DEFAULT_CACHE_KIB,
) -> Deferred[Database]:
    """
    Open (creating if need be) an SQLite database and migrate its schema.

    @param reactor: As for L{openPool}.
    @param path: The database file; its folder is created if missing.
    @param migrations: The schema, as L{Migrations}.
    @param busyTimeout: As for L{openPool}.
    @param durability: As for L{openPool}.
    @param maxGroup: As for L{Database}.
    @param cacheKiB: As for L{openPool}.
    @return: A L{Deferred} firing with the open L{Database}, or failing
        with L{SchemaTooNew} or L{PersistenceFailed} (the database is then
        closed).
    """
    try:
        pool = openPool(reactor, path, busyTimeout, durability, cacheKiB)
    except PersistenceFailed:
        return fail()
    clock = cast(IReactorTime, reactor) if IReactorTime.providedBy(reactor) else None
    database = Database(pool, path.path if isinstance(path, FilePath) else path, durability, maxGroup, clock)

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
    durability: Durability = Durability.PROCESS,
    maxGroup: int = DEFAULT_MAX_GROUP,
    cacheKiB: int = DEFAULT_CACHE_KIB,
) -> Database:
    """
    Like L{openDatabase}, but migrate the schema at once, blocking: for
    start-up, before the reactor runs, so that a database that cannot be
    used stops the gateway before any port is opened.

    @param cacheKiB: As for L{openPool}.
    @raise SchemaTooNew: If the database is newer than this code.
    @raise PersistenceFailed: If the file cannot be created, opened or
        migrated.
    """
    pathText = path.path if isinstance(path, FilePath) else path
    pool = openPool(reactor, pathText, busyTimeout, durability, cacheKiB)
    try:
        connection = sqlite3.connect(pathText, timeout=busyTimeout, isolation_level=None)
        try:
            _configureConnection(busyTimeout, durability)(connection)
            _migrate(connection, pathText, migrations)
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise (persistenceFailed(pathText, e, write=True) or PersistenceFailed(f"{pathText}: {e}")) from None
    clock = cast(IReactorTime, reactor) if IReactorTime.providedBy(reactor) else None
    return Database(pool, pathText, durability, maxGroup, clock)
