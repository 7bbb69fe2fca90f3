"""
Write throughput and latency of L{imgateway.sqlite.Database} on a real file:
each durability level (C{process}: C{synchronous=NORMAL}; C{power}:
C{synchronous=FULL}), with commits grouped (the default C{maxGroup}) and
not (C{maxGroup=1}: one transaction per write, as before grouping), for
1, 10 and 100 concurrent writers. Each writer inserts a row, waits for the
acknowledgement, and does it again, for C{--duration} seconds.

Prints one JSON line on standard output (one record per run) and a table on
standard error. This is a benchmark, not a test: nothing asserts a time.

    .venv/bin/python bench/store_commits.py                      # about a minute
    .venv/bin/python bench/store_commits.py --duration 5 --writers 1 --writers 1000
    .venv/bin/python bench/store_commits.py --dir /var/lib/imgateway-bench   # the disk to measure

The figures depend on the disk under C{--dir} (its cache flush cost) far
more than on the CPU; a tmpfs folder makes C{power} as cheap as C{process}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/store_commits.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred, gatherResults

from imgateway.sqlite import DEFAULT_MAX_GROUP, Database, Durability, openDatabase

MIGRATIONS = [["CREATE TABLE t (writer INTEGER NOT NULL, n INTEGER NOT NULL, payload TEXT NOT NULL)"]]

#: About the size of a contact or authorisation row with its index entries.
PAYLOAD = "x" * 100


def _insert(cursor: sqlite3.Cursor, writer: int, n: int) -> None:
    cursor.execute("INSERT INTO t (writer, n, payload) VALUES (?, ?, ?)", (writer, n, PAYLOAD))


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _run(reactor: Any, folder: str, durability: Durability, grouped: bool, writers: int, duration: float) -> dict[str, Any]:
    path = os.path.join(folder, f"{durability.value}-{'grouped' if grouped else 'single'}-{writers}.sqlite3")
    database: Database = await openDatabase(
        reactor, path, MIGRATIONS, durability=durability, maxGroup=DEFAULT_MAX_GROUP if grouped else 1
    )
    commits = [0]

    def count(statement: str) -> None:
        if statement == "COMMIT":
            commits[0] += 1

    def trace(cursor: sqlite3.Cursor) -> None:
        cursor.connection.set_trace_callback(count)

    await database.write(trace)
    commits[0] = 0
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + duration
    cpu = time.process_time()

    async def writer(w: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            await database.write(_insert, w, n)
            latencies.append(time.monotonic() - t0)
            n += 1

    await gatherResults([Deferred.fromCoroutine(writer(w)) for w in range(writers)])
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    await database.write(lambda c: c.connection.set_trace_callback(None))
    await database.close()
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        connection.close()
    latencies.sort()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "durability": durability.value,
        "grouped": grouped,
        "writers": writers,
        "seconds": round(elapsed, 2),
        "writes": len(latencies),
        "rows_on_disk": rows,
        "writes_per_s": round(len(latencies) / elapsed, 1),
        "commits_per_s": round(commits[0] / elapsed, 1),
        "writes_per_commit": round(len(latencies) / commits[0], 1) if commits[0] else None,
        "latency_ms_p50": ms(_percentile(latencies, 0.50)),
        "latency_ms_p99": ms(_percentile(latencies, 0.99)),
        "latency_ms_max": ms(latencies[-1] if latencies else None),
        "cpu_s_per_1k_writes": round(cpu / len(latencies) * 1000, 3) if latencies else None,
    }


def _table(results: list[dict[str, Any]]) -> str:
    header = f"{'durability':<10} {'grouped':<7} {'writers':>7} {'writes/s':>10} {'commits/s':>10} {'per commit':>10} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['durability']:<10} {'yes' if r['grouped'] else 'no':<7} {r['writers']:>7} {r['writes_per_s']:>10} "
            f"{r['commits_per_s']:>10} {r['writes_per_commit'] or '-':>10} {r['latency_ms_p50']:>8} {r['latency_ms_p99']:>8}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (default 3)")
    parser.add_argument("--writers", type=int, action="append", help="concurrent writers (repeatable; default 1, 10, 100)")
    parser.add_argument("--durability", choices=[d.value for d in Durability], action="append", help="repeatable; default both")
    parser.add_argument("--dir", help="folder for the database files (default: a new folder under the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the database files")
    args = parser.parse_args()
    writerCounts = args.writers or [1, 10, 100]
    durabilities = [Durability(d) for d in args.durability] if args.durability else list(Durability)
    folder = tempfile.mkdtemp(prefix="imgw-store-bench-", dir=args.dir)

    from twisted.internet import reactor

    results: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    async def runAll() -> None:
        try:
            for durability in durabilities:
                for grouped in (False, True):
                    for writers in writerCounts:
                        result = await _run(reactor, folder, durability, grouped, writers, args.duration)
                        results.append(result)
                        print(
                            f"{durability.value:<8} grouped={'yes' if grouped else 'no ':<3} writers={writers:<4} "
                            f"{result['writes_per_s']:>9} writes/s {result['commits_per_s']:>8} commits/s "
                            f"p50 {result['latency_ms_p50']} ms p99 {result['latency_ms_p99']} ms",
                            file=sys.stderr,
                        )
        except BaseException as e:
            failure.append(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(runAll()))
    try:
        reactor.run()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if failure:
        print(json.dumps({"error": repr(failure[0])}))
        sys.exit(2)
    print(_table(results), file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "store_commits",
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "folder": folder if args.keep else os.path.dirname(folder),
                "duration_s": args.duration,
                "runs": results,
            }
        )
    )


if __name__ == "__main__":
    main()
