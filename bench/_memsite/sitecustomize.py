"""
Where a real gateway's idle sessions' memory goes (C{bench/README.md},
"Idle sessions' memory, third round"): loaded by Python at start-up
(C{sitecustomize}) when this folder is on C{PYTHONPATH}, and active only in
C{twistd} when C{$IMGATEWAY_MEM_PROBE} names a file prefix. Every 0.5 s a
thread asks the reactor (in its own thread) how many native connections
are open; once the count has held for 1 s, it writes C{PREFIX.K.json}: the
count, the RSS, the largest mappings' RSS (C{/proc/self/smaps}), SQLite's
C{sqlite3_memory_used()}, the live objects by type (count and
C{sys.getsizeof}, the collector's objects and their untracked referents)
and the attributes of one logged-in connection, its transport, session and
user state. Compare two of them (the warm-up's and the run's) to see what
the sessions between them added. It slows the gateway while it counts.

    PYTHONPATH=bench/_memsite IMGATEWAY_MEM_PROBE=/tmp/mem \\
        .venv/bin/python bench/compare.py --quick --only gateway-native --tests idle --idle-sizes 1000
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
from typing import Any

_OUT = os.environ.get("IMGATEWAY_MEM_PROBE") or ""


def _rssKiB() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def _mappings() -> dict[str, int]:
    """
    @return: The eight mappings with the most RSS (KiB), by name.
    """
    sizes: dict[str, int] = {}
    name = "[anon]"
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts and parts[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(parts[1])
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:8])


def _sqliteUsed() -> int | None:
    try:
        import _sqlite3

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
        used.restype = ctypes.c_int64
        return int(used())
    except (ImportError, OSError, AttributeError):
        return None


def _byType() -> dict[str, list[int]]:
    objects = gc.get_objects()
    seen = {id(o) for o in objects}
    untracked = []
    for o in objects:
        for r in gc.get_referents(o):
            if id(r) not in seen and not gc.is_tracked(r):
                seen.add(id(r))
                untracked.append(r)
    counts: dict[str, list[int]] = {}
    for o in objects + untracked:
        entry = counts.setdefault(repr(type(o)), [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(o)
    return counts


def _describe(obj: object) -> dict[str, str]:
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        names += [slots] if isinstance(slots, str) else [n for n in slots if n not in ("__dict__", "__weakref__")]
    out = {}
    for n in names:
        value = getattr(obj, n, None)
        size = len(value) if isinstance(value, (dict, set, frozenset, list, tuple, str, bytes)) else "-"
        out[n] = f"{type(value).__name__}, {sys.getsizeof(value)} B, len {size}"
    return out


def _connections() -> list[Any]:
    return [o for o in gc.get_objects() if type(o).__name__ == "NativeServerProtocol" and getattr(o, "connected", False)]


class _Probe:
    def __init__(self) -> None:
        self.last = -1
        self.held = 0
        self.written = 0

    def check(self) -> None:
        connections = _connections()
        n = len(connections)
        self.held = self.held + 1 if n == self.last else 0
        self.last = n
        if self.held != 2:
            return
        self.written += 1
        gc.collect()
        record: dict[str, Any] = {
            "connections": n, "time": time.time(), "rss_kib": _rssKiB(), "mappings_kib": _mappings(),
            "sqlite_memory_used": _sqliteUsed(), "by_type": _byType(),
        }  # fmt: skip
        logged = [c for c in connections if getattr(c, "session", None) is not None]
        if logged:
            c = logged[len(logged) // 2]
            session = c.session
            record["one"] = {
                "protocol": _describe(c), "transport": _describe(c.transport), "session": _describe(session),
                "user": _describe(getattr(session, "_user", None)),
            }  # fmt: skip
        with open(f"{_OUT}.{self.written}.json", "w") as f:
            json.dump(record, f)

    def run(self) -> None:
        while True:
            time.sleep(0.5)
            reactor = sys.modules.get("twisted.internet.reactor")
            if reactor is not None and getattr(reactor, "running", False):
                reactor.callFromThread(self.check)


if _OUT and "twistd" in " ".join(sys.argv):
    threading.Thread(target=_Probe().run, daemon=True, name="memory probe").start()
