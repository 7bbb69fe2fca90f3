"""
What the idle run's two RSS readings hold (C{bench/README.md}, "Idle
sessions' memory, fourth round"): loaded by Python at start-up
(C{sitecustomize}) when this folder is on C{PYTHONPATH}, and active only in
C{twistd} when C{$IMGATEWAY_MEM_READINGS} names a file prefix. The load
driver (C{bench/_loaddriver.py}, idle run), given the same variable, writes
C{PREFIX.ask} right after each of its two readings of the server's RSS (the
baseline, and the sessions logged in) and waits until this probe has removed
it. At each, the probe notes, in the reactor's thread: the RSS (anonymous
and file-backed), how long the RSS had not changed (it samples it every
0.1 s), glibc's C{mallinfo2()} (heap in use, free), SQLite's
C{sqlite3_memory_used()}, pymalloc's arenas, blocks in use and free blocks
by size class (C{sys._debugmallocstats()}); at the second, also the
collector's counts, the cyclic garbage a full collection finds (by type:
how many objects, their own sizes), and what C{gc.collect()} and then
C{malloc_trim(0)} would give back. It writes
C{PREFIX.json}: both records and their differences.

    PYTHONPATH=bench/_memreadings IMGATEWAY_MEM_READINGS=/tmp/idle \\
        .venv/bin/python bench/compare.py --quick --only gateway-native --tests idle --idle-sizes 1000
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

_PREFIX = os.environ.get("IMGATEWAY_MEM_READINGS") or ""


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _pymalloc() -> dict[str, Any]:
    """
    @return: pymalloc's arenas, bytes in use and free in its pools, and the
        free bytes by size class, from C{sys._debugmallocstats()} (which
        writes to the C{stderr} file descriptor).
    """
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()
    out: dict[str, Any] = {"free_by_class": {}}
    for line in text.splitlines():
        m = re.match(r"\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", line)
        if m:
            out["free_by_class"][int(m.group(1))] = int(m.group(1)) * int(m.group(2))
        for key, name in (("# arenas allocated current", "arenas"), ("# bytes in allocated blocks", "used"),
                          ("# bytes in available blocks", "free")):  # fmt: skip
            if line.startswith(key):
                out[name] = int(line.split("=")[-1].replace(",", "").strip())
    return out


def _garbage() -> dict[str, Any]:
    """
    @return: The cyclic garbage a full collection finds, by type: how many
        objects and their own sizes (C{sys.getsizeof}), the 30 types that
        hold the most; collected afterwards as it would have been.
    """
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    byType: dict[str, list[int]] = {}
    for o in gc.garbage:
        entry = byType.setdefault(type(o).__qualname__, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(o)
    total = [sum(e[0] for e in byType.values()), sum(e[1] for e in byType.values())]
    del gc.garbage[:]
    top = sorted(byType.items(), key=lambda kv: -kv[1][1])[:30]
    return {"total": total, "by_type": dict(top)}


class _Probe:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        self.mallinfo = libc.mallinfo2
        self.mallinfo.restype = _MallInfo2
        self.trim = libc.malloc_trim
        self.trim.argtypes = [ctypes.c_size_t]
        self.sqliteUsed: Any = None
        try:
            import _sqlite3

            self.sqliteUsed = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
            self.sqliteUsed.restype = ctypes.c_int64
        except (ImportError, OSError, AttributeError):
            pass
        self.rss = 0
        self.rssSince = time.monotonic()
        self.records: list[dict[str, Any]] = []

    def record(self) -> dict[str, Any]:
        m = self.mallinfo()
        return {
            **_status(), "rss_stable_s": round(time.monotonic() - self.rssSince, 2),
            "malloc_used": m.uordblks, "malloc_free": m.fordblks, "malloc_mmapped": m.hblkhd,
            "sqlite_used": self.sqliteUsed() if self.sqliteUsed else None, "pymalloc": _pymalloc(),
        }  # fmt: skip

    def reading(self) -> None:
        r = self.record()
        self.records.append(r)
        if len(self.records) == 2:
            r["gc_stats"] = gc.get_stats()
            r["gc_count"] = gc.get_count()
            r["gc_garbage"] = _garbage()
            r["gc_collected"] = gc.collect()
            r["rss_after_gc"] = _status()["VmRSS"]
            self.trim(0)
            r["rss_after_trim"] = _status()["VmRSS"]
            self.write()

    def write(self) -> None:
        base, end = self.records
        delta = {k: end[k] - base[k] for k in ("VmRSS", "RssAnon", "RssFile", "malloc_used", "malloc_free")}
        if base["sqlite_used"] is not None:
            delta["sqlite_used"] = end["sqlite_used"] - base["sqlite_used"]
        for k in ("arenas", "used", "free"):
            delta[f"pymalloc_{k}"] = end["pymalloc"][k] - base["pymalloc"][k]
        classes = set(base["pymalloc"]["free_by_class"]) | set(end["pymalloc"]["free_by_class"])
        delta["pymalloc_free_by_class"] = {
            c: end["pymalloc"]["free_by_class"].get(c, 0) - base["pymalloc"]["free_by_class"].get(c, 0) for c in sorted(classes)
        }
        with open(f"{_PREFIX}.json", "w") as f:
            json.dump({"base": base, "end": end, "delta": delta}, f)

    def run(self) -> None:
        ask = f"{_PREFIX}.ask"
        while True:
            time.sleep(0.1)
            rss = _status()["VmRSS"]
            if rss != self.rss:
                self.rss, self.rssSince = rss, time.monotonic()
            reactor = sys.modules.get("twisted.internet.reactor")
            if os.path.exists(ask) and reactor is not None and getattr(reactor, "running", False):
                done = threading.Event()

                def inReactor() -> None:
                    try:
                        self.reading()
                    finally:
                        done.set()

                reactor.callFromThread(inReactor)
                done.wait(30)
                os.unlink(ask)


if _PREFIX and "twistd" in " ".join(sys.argv):
    threading.Thread(target=_Probe().run, daemon=True, name="memory readings probe").start()
