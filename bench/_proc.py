"""
What the benchmarks read of processes and the machine (from C{/proc}) and
the small helpers every load driver shares: one home, so that the native
driver (L{bench.native_load}) and the shared driver (L{bench._loaddriver})
measure the same way.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def nowUs() -> int:
    return time.monotonic_ns() // 1000


def raiseNofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 200000 if hard == resource.RLIM_INFINITY else min(hard, 200000)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def _statCpuS(path: str) -> float | None:
    """
    @return: utime + stime from the C{stat} file at C{path}, in seconds;
        C{None} if it cannot be read.
    """
    try:
        with open(path) as f:
            s = f.read()
        fields = s[s.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def procCpuS(pid: int | None) -> float | None:
    """
    @return: utime + stime of all the threads of C{pid}, in seconds.
    """
    if not pid:
        return None
    return _statCpuS(f"/proc/{pid}/stat")


def mainThreadCpuS(pid: int | None) -> float | None:
    """
    @return: utime + stime of the main thread of C{pid} alone (a Twisted
        server's reactor thread), in seconds; the rest of L{procCpuS} is
        its other threads' (a thread pool's).
    """
    if not pid:
        return None
    return _statCpuS(f"/proc/{pid}/task/{pid}/stat")


def procRssKb(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def machineBusyS() -> float | None:
    """
    Busy CPU seconds of all cores together since boot.
    """
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / CLK_TCK
    except (OSError, ValueError):
        return None


def shard(seq: Sequence[Any], n: int) -> list[list[Any]]:
    return [list(seq[k::n]) for k in range(n)]
