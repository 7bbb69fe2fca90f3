"""
alice→carol across home servers: in one run, the same native message load
on (a) one gateway (the single-host default: alice and carol on it) and on
(b) two home servers C{hs1} and C{hs2}, separate C{twistd} processes joined
by server links over TLS (alice homed on and connected to hs1, carol on
hs2); prints messages/s, p50/p99 of the delivery latency and of the round
trip (send → 200), and the server CPU per delivery, all server processes
summed, with the ratio (b)/(a) (issue 8's goal: under 2×). Each topology
runs closed-loop (C{--window} messages outstanding per sender) and at a
fixed rate (C{--rate} messages/s in all). Every run checks that nothing
was lost, duplicated or left unanswered (exit status 1 if so), and shows
the messages refused with their statuses. A benchmark, not a test: nothing
asserts a time.

    .venv/bin/python bench/multihost.py                 # 50 pairs, 10 s per row
    .venv/bin/python bench/multihost.py --quick         # under a minute
    .venv/bin/python bench/multihost.py --json          # JSON on stdout, table on stderr
    .venv/bin/python bench/multihost.py --profile DIR   # each server under cProfile: DIR/*.prof
    .venv/bin/python bench/multihost.py --py-spy DIR    # each server sampled by py-spy in the window
    .venv/bin/python bench/multihost.py --counts DIR    # each server's turns, TLS records, TCP sends/reads per delivery
    .venv/bin/python bench/multihost.py --strace DIR    # each server's system calls per delivery (strace -c)
    .venv/bin/python bench/multihost.py --callgrind DIR --mode closed --warmup 10 --duration 20
        # each server's instructions per delivery (valgrind's callgrind)

Every row also gives each server's wake-ups (voluntary context switches)
and user/system CPU per delivery (C{counts_per_delivery_by_process}).

The load is L{bench.native_load}'s (its driver processes, pumps and
measured window): C{--pairs} pairs C{alice<i>} → C{carol<i>}, one way by
default (C{--both-ways}: carol answers too). The gateways are
L{bench._gateway}'s (C{etc/imgateway.toml} with the flood limits raised;
the lab's servers share one data folder, and their links take up to
C{LAB_MAX_QUEUE} requests waiting for their answers, rather than the
shipped C{max_queue} of 1000). The servers' CPU is read from C{/proc/PID/stat} (utime +
stime, every thread) at the edges of the measured window.

(c) adds a router (three processes): alice's clients log in at the router
from 127.0.0.2, outside its internal network, and the router proxies their
sessions to hs1 over its link (C{imgateway/router/proxy.py}), sending their
messages to carol over its own link to hs2; carol's log in at hs2. In a
tree without the router's proxy the run says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/multihost.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import (
    REPO,
    GatewayError,
    SpawnedGateway,
    interruptedStatus,
    interruptOnSigterm,
    linkedHomeServers,
)
from bench._proc import raiseNofile, shard
from bench.native_load import BenchFailed, Workers, measure, selfCheck

PASSWORD = "bench-pw"

#: Where alice's clients come from in (c): outside the router's internal
#: network.
OUTSIDE = "127.0.0.2"

#: What C{--quick} changes (each row a couple of seconds: under a minute in all).
QUICK = {"pairs": 5, "duration": 2.0, "warmup": 0.5, "settle": 0.3, "drain": 3.0, "rate": 500.0}

#: The topologies, in the order they run and are printed.
TOPOLOGIES = ("single", "two-homes", "router-proxy")

#: The modes each topology runs.
MODES = ("closed", "fixed")


def info(text: str) -> None:
    print(f"multihost: {text}", file=sys.stderr, flush=True)


def proxyLanded() -> bool:
    """
    @return: Whether the router's proxied sessions are in this tree.
    """
    return any((REPO / "imgateway" / "router").glob("proxy*.py"))


class Topology:
    """
    Servers to put the load on: where alice's and carol's clients connect,
    and the processes whose CPU is counted.

    @ivar name: One of L{TOPOLOGIES}.
    @ivar aliceAt: Host and port alice's clients log in at.
    @ivar carolAt: Host and port carol's clients log in at.
    @ivar aliceFrom: The address alice's clients connect from (any).
    @ivar gateways: The server processes (their CPU is summed), by name.
    """

    def __init__(
        self,
        name: str,
        aliceAt: tuple[str, int],
        carolAt: tuple[str, int],
        gateways: dict[str, SpawnedGateway],
        aliceFrom: str | None = None,
    ) -> None:
        self.name = name
        self.aliceAt = aliceAt
        self.aliceFrom = aliceFrom
        self.carolAt = carolAt
        self.gateways = gateways

    def pids(self) -> list[int]:
        return [gw.pid for gw in self.gateways.values() if gw.pid is not None]

    def logErrors(self) -> dict[str, int]:
        return {name: gw.logErrors() for name, gw in self.gateways.items()}


def serverTag(topology: str, server: str) -> str:
    """
    @return: What the files of server C{server} of C{topology} are named
        after (C{"two-homes-hs1"}).
    """
    return f"{topology}-{server}"


def instrument(args: argparse.Namespace, gw: SpawnedGateway, topology: str, server: str) -> None:
    """
    Set up server C{gw} (C{server} of C{topology}) as the options ask:
    under cProfile (C{--profile DIR}: C{DIR/<tag>.prof} when it stops,
    L{serverTag}), under callgrind (C{--callgrind DIR}: L{callgrindFile},
    its window's instructions counted by L{Counters}; the dumps of an
    earlier run in C{DIR} removed).
    """
    name = serverTag(topology, server)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        gw.twistdOptions = ["--profiler=cprofile", f"--profile={args.profile.resolve() / name}.prof", "--savestats"]
    if args.callgrind is not None:
        path = callgrindFile(args.callgrind, name)
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        gw.runUnder = [
            "valgrind", "--tool=callgrind", "--quiet",
            f"--callgrind-out-file={path}",
        ]  # fmt: skip
        # Python runs about fifty times slower under callgrind.
        gw.startTimeout = max(gw.startTimeout, CALLGRIND_START_S)


#: Seconds a server under callgrind (C{--callgrind}) has to open its port.
CALLGRIND_START_S = 600.0

#: Seconds C{vgdb} has to have callgrind zero or dump a server's counts.
CALLGRIND_CONTROL_S = 60.0


def callgrindFile(folder: Path, name: str) -> Path:
    """
    @return: Where callgrind writes server C{name}'s counts (C{--callgrind}
        DIR): each window's dump is this path with C{.1}, C{.2}, ... after
        it (L{Counters}), the rest of the run this path itself.
    """
    return folder.resolve() / f"{name}.callgrind"


def callgrindInstructions(dump: str, pid: int) -> int | None:
    """
    @param dump: A callgrind dump (one part: a C{dump} monitor command's).
    @param pid: The process it must be of.
    @return: The instructions it counted (its C{summary:} line), or C{None}
        if it has none or is another process's.
    """
    instructions = None
    for line in dump.splitlines():
        if line.startswith("pid:") and line.split()[1:2] != [str(pid)]:
            return None
        if line.startswith("summary:"):
            instructions = int(line.split()[1])
    return instructions


def perDeliveryInWindow(
    counted: int, delivered: int, seconds: float, zeroed: tuple[float, float], dumped: tuple[float, float]
) -> int | None:
    """
    @param counted: What callgrind counted between the moments it was
        zeroed and dumped.
    @param delivered: The deliveries of the measured window, C{seconds}
        long.
    @param zeroed: When the command that zeroed the counts was given, and
        when it was done; it is taken to have acted in the middle.
    @param dumped: The same for the command that dumped them.
    @return: C{counted} per delivery, the deliveries scaled from the window
        to the time the counts ran, or C{None} if that time is not
        positive.
    """
    ran = (dumped[0] + dumped[1] - zeroed[0] - zeroed[1]) / 2
    if ran <= 0 or delivered <= 0:
        return None
    return round(counted / (delivered * ran / seconds))


def lastDump(path: Path) -> Path | None:
    """
    @return: The newest of callgrind's numbered dumps of C{path}
        (C{path.1}, C{path.2}, ...), or C{None} if there is none.
    """
    numbered = [(int(p.name[len(path.name) + 1 :]), p) for p in path.parent.glob(path.name + ".*") if p.name[len(path.name) + 1 :].isdigit()]
    return max(numbered)[1] if numbered else None


#: How often py-spy samples each server (C{--py-spy}), per second.
SPY_RATE = 250

#: A frame of py-spy's raw output: its function and its file (without the
#: line).
_SPY_FRAME = re.compile(r"(.*) \((.*?)(?::[0-9]+)?\)$")


def pySpy() -> str | None:
    """
    @return: The C{py-spy} command (the virtualenv's, else one on the
        C{PATH}), or C{None}.
    """
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def spyCommand(spy: str, pid: int, seconds: float, output: Path) -> list[str]:
    """
    @return: The command that samples process C{pid} for C{seconds}
        (at least one) into C{output}, in py-spy's raw (folded) format,
        without stopping it.
    """
    return [
        spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(SPY_RATE), "--format", "raw", "--nonblocking", "--output", str(output),
    ]  # fmt: skip


def spyShares(folded: str, top: int = 10) -> dict[str, list[tuple[float, str]]]:
    """
    What a py-spy raw (folded) record says: the share of the samples in
    each file and in each function, by the innermost frame (own time), the
    largest first (py-spy names files from their folder on C{sys.path}).

    @param folded: One stack a line, frames joined by C{;}, then a space and
        its number of samples.
    @return: C{{"files": [(percent, file), ...], "functions": [...]}}, the
        C{top} largest of each.
    """
    files: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        innermost = stack.rsplit(";", 1)[-1]
        match = _SPY_FRAME.match(innermost)
        function, path = match.groups() if match else (innermost, innermost)
        files[path] += samples
        functions[f"{function} ({path})"] += samples
    if not total:
        return {"files": [], "functions": []}
    return {
        "files": [(round(100 * n / total, 1), name) for name, n in files.most_common(top)],
        "functions": [(round(100 * n / total, 1), name) for name, n in functions.most_common(top)],
    }


class Spies:
    """
    py-spy sampling each server of a topology during one measured window
    (C{--py-spy DIR}): started once the warm-up is over, for the window's
    length; each record is C{DIR/<topology>-<mode>-<server>.txt}.
    """

    def __init__(self, spy: str, folder: Path, topology: Topology, mode: str, delay: float, seconds: float) -> None:
        self.outputs = {name: folder / f"{topology.name}-{mode}-{name}.txt" for name in topology.gateways}
        self._commands = [
            spyCommand(spy, gw.pid, seconds, self.outputs[name]) for name, gw in topology.gateways.items() if gw.pid is not None
        ]
        self._processes: list[subprocess.Popen[bytes]] = []
        self._timer = threading.Timer(delay, self._start)
        self._timer.start()

    def _start(self) -> None:
        for command in self._commands:
            self._processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """
        Wait for the records (stop them if the window ended early).

        @return: Each server's record and shares (L{spyShares}), by name.
        """
        self._timer.cancel()
        self._timer.join()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        found: dict[str, Any] = {}
        for name, path in self.outputs.items():
            if path.exists():
                found[name] = {"record": str(path), **spyShares(path.read_text())}
        return found


#: Where C{--counts}' server side lives (L{bench._linksite}: a
#: C{sitecustomize} put on the servers' C{PYTHONPATH}).
COUNTS_SITE = Path(__file__).resolve().parent / "_linksite"

#: A line of C{strace -c}'s summary: % time, seconds, usecs/call, calls,
#: errors (may be empty), syscall.
_STRACE_LINE = re.compile(r"^\s*[0-9.]+\s+[0-9.]+\s+[0-9]+\s+([0-9]+)\s+(?:([0-9]+)\s+)?([a-z_0-9]+)\s*$")


def straceCalls(summary: str) -> dict[str, int]:
    """
    @param summary: What C{strace -c} wrote.
    @return: The calls of each system call, by name (the C{total} line
        left out).
    """
    calls: dict[str, int] = {}
    for line in summary.splitlines():
        match = _STRACE_LINE.match(line)
        if match and match.group(3) != "total":
            calls[match.group(3)] = calls.get(match.group(3), 0) + int(match.group(1))
    return calls


def userSystemS(pid: int) -> tuple[float, float] | None:
    """
    @return: The user and system CPU seconds of every thread of C{pid}
        (C{/proc/PID/stat}'s utime and stime), or C{None} if it is gone.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def contextSwitches(pid: int) -> tuple[int, int] | None:
    """
    @return: The voluntary (the thread slept: for a reactor, each wake-up
        from C{epoll_wait}) and involuntary context switches of every
        thread of C{pid}, or C{None} if it is gone.
    """
    voluntary = involuntary = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


class Counters:
    """
    What each server of a topology did during one measured window, counted
    from outside: its context switches (always), its system calls by kind
    (C{--strace DIR}: C{strace -c -f} attached for the window; it slows the
    servers, so such a run's CPU figures are not to be compared), and its
    reactor turns, TLS records and writes (C{--counts}: L{COUNTS_SITE},
    signalled with C{SIGUSR2} at the window's edges), and the instructions
    it ran (C{--callgrind DIR}: its callgrind counts zeroed when the window
    starts and dumped when it ends). Started when the warm-up ends, stopped
    C{seconds} later, as L{Spies} are.
    """

    def __init__(self, args: argparse.Namespace, topology: Topology, mode: str, delay: float, seconds: float) -> None:
        self._args = args
        self._gateways = {name: gw.pid for name, gw in topology.gateways.items() if gw.pid is not None}
        self._seconds = seconds
        self._switches: dict[str, list[tuple[int, int] | None]] = {name: [] for name in self._gateways}
        self._cpu: dict[str, list[tuple[float, float] | None]] = {name: [] for name in self._gateways}
        self._straces: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._prefix = f"{topology.name}-{mode}"
        self._callgrinds = (
            {name: callgrindFile(args.callgrind, serverTag(topology.name, name)) for name in self._gateways}
            if args.callgrind is not None
            else {}
        )
        self._zeroed: dict[str, tuple[float, float] | None] = {}
        self._dumped: dict[str, tuple[float, float] | None] = {}
        self._timer = threading.Timer(delay, self._start)
        self._timer.start()
        self._ended = threading.Event()

    def _edge(self) -> None:
        for name, pid in self._gateways.items():
            self._switches[name].append(contextSwitches(pid))
            self._cpu[name].append(userSystemS(pid))
            if self._args.counts is not None:
                try:
                    os.kill(pid, signal.SIGUSR2)
                except OSError:
                    pass

    def _callgrind(self, command: str) -> dict[str, tuple[float, float] | None]:
        """
        Give callgrind's monitor command C{command} (C{zero}, C{dump}) to
        each server under callgrind, at once, with C{vgdb} (which, unlike
        C{callgrind_control}, fails when it reaches no such process).

        @return: By server, when the command was given and when it was
            done (C{time.monotonic()}), or C{None} if it failed or took
            more than L{CALLGRIND_CONTROL_S}.
        """
        started = time.monotonic()
        running = {
            name: subprocess.Popen(
                ["vgdb", f"--pid={self._gateways[name]}", command],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for name in self._callgrinds
        }  # fmt: skip
        done: dict[str, tuple[float, float] | None] = {}
        for name, process in running.items():
            try:
                ok = process.wait(max(0.1, started + CALLGRIND_CONTROL_S - time.monotonic())) == 0
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                ok = False
            done[name] = (started, time.monotonic()) if ok else None
        return done

    def _start(self) -> None:
        self._zeroed = self._callgrind("zero")
        if self._args.strace is not None:
            for name, pid in self._gateways.items():
                output = self._args.strace / f"{self._prefix}-{name}.txt"
                command = ["strace", "-c", "-f", "-qq", "-o", str(output), "-p", str(pid)]
                self._straces[name] = (
                    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    output,
                )
        self._edge()
        if not self._ended.wait(self._seconds):
            self._edge()
            self._dumped = self._callgrind("dump")
        for process, _ in self._straces.values():
            process.send_signal(signal.SIGINT)

    def finish(self, delivered: int, timeout: float = 30.0) -> dict[str, Any]:
        """
        Wait for the counts (stop them if the window ended early).

        @return: Per delivery in the window, by server: C{wakeups} (the
            voluntary context switches) and C{preempted} (the
            involuntary), C{user_us} and C{system_us} (its CPU, split as
            the kernel's ticks saw it), C{syscalls} by name (C{--strace}), the site's
            counts (C{--counts}), C{instructions} (C{--callgrind}).
        """
        self._timer.cancel()
        self._ended.set()
        if self._timer.is_alive():
            self._timer.join()
        found: dict[str, Any] = {}
        if not delivered:
            return found
        for name, pid in self._gateways.items():
            row: dict[str, Any] = {}
            edges = self._switches[name]
            if len(edges) == 2 and edges[0] is not None and edges[1] is not None:
                row["wakeups"] = round((edges[1][0] - edges[0][0]) / delivered, 3)
                row["preempted"] = round((edges[1][1] - edges[0][1]) / delivered, 3)
            cpu = self._cpu[name]
            if len(cpu) == 2 and cpu[0] is not None and cpu[1] is not None:
                row["user_us"] = round((cpu[1][0] - cpu[0][0]) / delivered * 1e6, 1)
                row["system_us"] = round((cpu[1][1] - cpu[0][1]) / delivered * 1e6, 1)
            if name in self._straces:
                process, output = self._straces[name]
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if output.exists():
                    calls = straceCalls(output.read_text())
                    row["syscalls"] = {k: round(v / delivered, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
            if self._args.counts is not None:
                row.update(_siteCounts(self._args.counts / f"{pid}.jsonl", delivered))
            if name in self._callgrinds:
                instructions = self._instructions(name, pid, delivered)
                if instructions is not None:
                    row["instructions"] = instructions
            found[name] = row
        return found


    def _instructions(self, name: str, pid: int, delivered: int) -> int | None:
        """
        @return: The instructions server C{name} ran per delivery in the
            window: its dump's, over the deliveries of the window scaled to
            the time between the moments its counts were zeroed and dumped
            (the middle of each command), or C{None} if either failed.
        """
        zeroed, dumped = self._zeroed.get(name), self._dumped.get(name)
        dump = lastDump(self._callgrinds[name])
        if zeroed is None or dumped is None or dump is None:
            return None
        counted = callgrindInstructions(dump.read_text(), pid)
        return None if counted is None else perDeliveryInWindow(counted, delivered, self._seconds, zeroed, dumped)


def _siteCounts(path: Path, delivered: int) -> dict[str, float]:
    """
    @return: The difference of the last two snapshots in C{path}
        (L{COUNTS_SITE}'s), per delivery.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    before, after = json.loads(lines[-2]), json.loads(lines[-1])
    return {k: round((after[k] - before[k]) / delivered, 3) for k in after if k != "t"}


def single(args: argparse.Namespace, stack: list[Callable[[], object]]) -> Topology:
    """
    (a) One gateway, today's default configuration: alice and carol on it.
    """
    gw = SpawnedGateway(template=args.template, keep=args.keep)
    instrument(args, gw, "single", "gateway")
    stack.append(gw.stop)
    info(f"(a) one gateway in {gw.folder}")
    info(gw.createUsers("alice", 0, args.pairs, PASSWORD))
    info(gw.createUsers("carol", 0, args.pairs, PASSWORD))
    gw.start()
    return Topology("single", ("127.0.0.1", gw.port), ("127.0.0.1", gw.port), {"gateway": gw})


def twoHomes(args: argparse.Namespace, stack: list[Callable[[], object]]) -> Topology:
    """
    (b) hs1 (alice) and hs2 (carol), two processes joined by TLS links.
    """
    folder = Path(tempfile.mkdtemp(prefix="imgw-bench-lab-"))
    if not args.keep:
        stack.append(lambda: shutil.rmtree(folder, ignore_errors=True))
    hs1, hs2 = linkedHomeServers(["hs1", "hs2"], folder, template=args.template, keep=args.keep)
    instrument(args, hs1, "two-homes", "hs1")
    instrument(args, hs2, "two-homes", "hs2")
    stack.append(hs1.stop)
    stack.append(hs2.stop)
    info(f"(b) hs1 and hs2 in {hs1.folder} and {hs2.folder}, data and certificates in {folder}")
    info(hs1.createUsers("alice", 0, args.pairs, PASSWORD))
    info(hs2.createUsers("carol", 0, args.pairs, PASSWORD))
    hs1.start()
    hs2.start()
    return Topology("two-homes", ("127.0.0.1", hs1.port), ("127.0.0.1", hs2.port), {"hs1": hs1, "hs2": hs2})


def routerProxy(args: argparse.Namespace, stack: list[Callable[[], object]]) -> Topology:
    """
    (c) As (b), with a router: alice's clients log in at the router from
    C{127.0.0.2}, outside its internal network (C{127.0.0.1/32}), and the
    router proxies their sessions to hs1 over its link, and sends their
    messages to carol over its own link to hs2.
    """
    folder = Path(tempfile.mkdtemp(prefix="imgw-bench-lab-"))
    if not args.keep:
        stack.append(lambda: shutil.rmtree(folder, ignore_errors=True))
    router, hs1, hs2 = linkedHomeServers(
        ["router", "hs1", "hs2"], folder, template=args.template, keep=args.keep, roles={"router": ["router"]}
    )
    gateways = {"router": router, "hs1": hs1, "hs2": hs2}
    for name, gw in gateways.items():
        instrument(args, gw, "router-proxy", name)
        stack.append(gw.stop)
    info(f"(c) router, hs1 and hs2 in {router.folder}, {hs1.folder} and {hs2.folder}, data and certificates in {folder}")
    info(hs1.createUsers("alice", 0, args.pairs, PASSWORD))
    info(hs2.createUsers("carol", 0, args.pairs, PASSWORD))
    hs1.start()
    hs2.start()
    router.start()
    return Topology("router-proxy", ("127.0.0.1", router.port), ("127.0.0.1", hs2.port), gateways, aliceFrom=OUTSIDE)


def runMode(args: argparse.Namespace, topology: Topology, mode: str) -> dict[str, Any]:
    """
    Log the pairs in afresh, run one measured window in C{mode}, log out.
    """
    pairs = [(f"alice{i}", f"carol{i}") for i in range(args.pairs)]
    nProcs = max(1, min(args.procs, args.pairs))
    senders = args.pairs * (2 if args.both_ways else 1)
    rate = args.rate if mode == "fixed" else 0.0
    (host, port), (peerHost, peerPort) = topology.aliceAt, topology.carolAt
    base = {
        "host": host,
        "port": port,
        "peer_host": peerHost,
        "peer_port": peerPort,
        "bind": topology.aliceFrom,
        "password": PASSWORD,
        "mech": "SCRAM-SHA-256",
        "timeout": 30.0,
        "login_concurrency": max(1, 50 // nProcs),
        "parser": "fast",
        "window": args.window,
        "one_way": not args.both_ways,
        "drain": args.drain,
        "rate_per_sender": rate / senders if rate else 0.0,
        "smooth": True,
    }
    window = argparse.Namespace(
        settle=args.settle,
        warmup=args.warmup,
        duration=args.duration,
        drain=args.drain,
        rate=rate,
        window=args.window,
        one_way=not args.both_ways,
        smooth=True,
    )
    workers = Workers([dict(base, pairs=s) for s in shard(pairs, nProcs)], 120.0)
    spies: Spies | None = None
    counters: Counters | None = None
    out: dict[str, Any] = {}
    try:
        readies = workers.collect("ready", 120.0)
        info(f"{topology.name}, {mode}: {sum(r['clients'] for r in readies)} clients logged in")
        if args.py_spy is not None:
            spies = Spies(args.spy, args.py_spy, topology, mode, args.settle + args.warmup, args.duration)
        # measure() starts its window 0.2 s after the settling pause and the warm-up.
        counters = Counters(args, topology, mode, args.settle + 0.2 + args.warmup, args.duration)
        out = measure(window, workers, topology.pids(), senders)
    finally:
        workers.stop()
        sampled = spies.finish() if spies is not None else None
        counted = counters.finish(out.get("delivered") or 0) if counters is not None else None
    out["topology"] = topology.name
    out["mode"] = mode
    out["server_cpu_s_by_process"] = _byProcess(topology, out)
    out["server_cpu_us_per_delivery_by_process"] = perDelivery(out)
    if counted:
        out["counts_per_delivery_by_process"] = counted
        for name, row in counted.items():
            info(f"{topology.name}, {mode}, {name} per delivery: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "syscalls"))
            if "syscalls" in row:
                info(f"{topology.name}, {mode}, {name} system calls per delivery: " + ", ".join(f"{k} {v}" for k, v in row["syscalls"].items()))
    if sampled is not None:
        out["py_spy"] = sampled
        for name, shares in sampled.items():
            info(f"{topology.name}, {mode}, {name} (py-spy, own samples): " + ", ".join(f"{pct:g} % {f}" for pct, f in shares["files"][:6]))
    return out


def _byProcess(topology: Topology, out: dict[str, Any]) -> dict[str, float] | None:
    byPid = out.pop("server_cpu_s_by_pid", None)
    if byPid is None:
        return None
    return {name: byPid[str(gw.pid)] for name, gw in topology.gateways.items() if str(gw.pid) in byPid}


def perDelivery(row: dict[str, Any]) -> dict[str, float] | None:
    """
    @return: Each server's CPU per delivery in µs (C{{"router": 27.5,
        ...}}), from its CPU seconds in the window
        (C{server_cpu_s_by_process}), or C{None} without them or without a
        delivery.
    """
    byProcess = row.get("server_cpu_s_by_process")
    delivered = row.get("delivered")
    if not byProcess or not delivered:
        return None
    return {name: round(seconds / delivered * 1e6, 1) for name, seconds in byProcess.items()}


def problems(row: dict[str, Any]) -> list[str]:
    """
    @return: What went wrong in a row: anything lost (answered 200, never
        delivered), duplicated, unanswered or unexpected, framing errors,
        dropped connections, and tracebacks in the servers' logs.
    """
    found = [
        f"{key} {row[key]}"
        for key in ("lost", "duplicates", "unanswered", "unexpected", "framing_errors", "stalls", "disconnects")
        if row.get(key)
    ]
    logged = {k: v for k, v in (row.get("log_errors") or {}).items() if v}
    if logged:
        found.append(f"tracebacks logged {logged}")
    return found


def refusals(row: dict[str, Any]) -> str | None:
    """
    @return: The statuses other than 200 that messages were answered with
        (C{"938 refused (480: 938)"}), if any. Not a failure of the run:
        the servers answered, and said no. Across a link, a 503 or a 480
        is most often a full link queue (C{[links] max_queue}: 503, which
        the sender's home server answers as 480 so as not to tell a
        stranger that the account exists).
    """
    errors: dict[str, int] = row.get("errors") or {}
    if not errors:
        return None
    return f"{sum(errors.values()):,} refused ({', '.join(f'{k}: {v:,}' for k, v in errors.items())})"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.1f}"


def table(rows: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    """
    The rows, and the ratio (b)/(a) of CPU per delivery for each mode.
    """
    lines = [
        "| topology | mode | deliveries/s | delivery p50 / p99 ms | round trip p50 / p99 ms "
        "| server CPU % | server CPU µs/delivery | by process: CPU s (µs/delivery) | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['topology']} | {r['mode']} | error: {r['error'][:200]} |||||||")
            continue
        mode = f"fixed {r['rate_target']:g}/s" if r["mode"] == "fixed" else f"closed, window {r['window']}"
        lat, ack = r["lat_us"], r["ack_lat_us"]
        byProcess = r.get("server_cpu_s_by_process") or {}
        perProcess = r.get("server_cpu_us_per_delivery_by_process") or {}
        found = problems(r)
        checks = "; ".join(found) if found else f"0 lost, 0 duplicated of {r['delivered']:,}"
        refused = refusals(r)
        if refused:
            checks += f"; {refused}"
        lines.append(
            f"| {r['topology']} | {mode} | {r['rate_per_s']:,.0f} "
            f"| {_ms(lat.get('p50'))} / {_ms(lat.get('p99'))} | {_ms(ack.get('p50'))} / {_ms(ack.get('p99'))} "
            f"| {r['server_cpu_pct']} | {r['server_cpu_us_per_delivery']} "
            f"| {', '.join(f'{k} {v:.2f}' + (f' ({perProcess[k]:g})' if k in perProcess else '') for k, v in byProcess.items()) or '-'} "
            f"| {checks} |"
        )
    lines.append("")
    for name, ratio in ratios(rows).items():
        lines.append(f"ratio {name}: {ratio}")
    for name, ratio in instructionRatios(rows).items():
        lines.append(f"instructions {name}: {ratio}")
    for name, why in skipped.items():
        lines.append(f"{name}: not run: {why}")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> dict[str, str]:
    """
    Server CPU per delivery of each multi-server topology over the single
    host's, mode by mode (C{"2.31x"}), against the goal of 2.
    """
    cost = {(r["topology"], r["mode"]): r.get("server_cpu_us_per_delivery") for r in rows if "error" not in r}
    return _againstSingle(cost, lambda b, a: f"{b:g} / {a:g} µs per delivery")


def instructionRatios(rows: list[dict[str, Any]]) -> dict[str, str]:
    """
    As L{ratios}, of the instructions the servers ran per delivery
    (C{--callgrind}: every server of a row counted), which the machine's
    load does not move.
    """
    total: dict[tuple[str, str], int] = {}
    for r in rows:
        counts = r.get("counts_per_delivery_by_process") or {}
        if counts and all("instructions" in c for c in counts.values()):
            total[(r["topology"], r["mode"])] = sum(c["instructions"] for c in counts.values())
    return _againstSingle(total, lambda b, a: f"{b:,} / {a:,} instructions per delivery")


def _againstSingle(cost: dict[tuple[str, str], Any], figures: Callable[[Any, Any], str]) -> dict[str, str]:
    """
    @param cost: A cost per delivery by topology and mode.
    @param figures: Writes a topology's cost and the single host's.
    @return: Each multi-server topology's cost over the single host's,
        mode by mode, against the goal of 2.
    """
    out: dict[str, str] = {}
    for topology in TOPOLOGIES[1:]:
        for mode in MODES:
            a, b = cost.get(("single", mode)), cost.get((topology, mode))
            if a and b:
                verdict = "under the 2x goal" if b / a < 2 else "over the 2x goal"
                out[f"{topology}/single {mode}"] = f"{b / a:.2f}x ({figures(b, a)}; {verdict})"
    return out


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="multihost.py",
        description="alice→carol on one gateway and across two linked home servers: rate, latency, CPU per delivery.",
    )
    p.add_argument("--quick", action="store_true", help="small and short: under a minute in all")
    p.add_argument("--pairs", type=int, help="alice→carol pairs (default 50; --quick 5)")
    p.add_argument("--duration", type=float, help="measured seconds per row (default 10; --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of traffic before each window (default 2; --quick 0.5)")
    p.add_argument("--settle", type=float, help="pause after logins (default 1)")
    p.add_argument("--drain", type=float, help="seconds to wait for what is in flight (default 5)")
    p.add_argument("--window", type=int, default=10, help="closed loop: messages outstanding per sender (default 10)")
    p.add_argument("--rate", type=float, help="fixed rate: messages/s in all (default 2000; --quick 500)")
    p.add_argument("--procs", type=int, default=1, help="driver processes (default 1)")
    p.add_argument("--both-ways", action="store_true", help="carol<i> sends to alice<i> too (default: alice→carol only)")
    p.add_argument(
        "--only", action="append", choices=TOPOLOGIES, help="run only this topology (repeatable; default all that can run)"
    )
    p.add_argument("--mode", action="append", choices=MODES, help="run only this mode (repeatable; default both)")
    p.add_argument("--template", type=Path, help="the configuration to copy (default etc/imgateway.toml)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each server under cProfile (twistd --profiler=cprofile), writing DIR/<topology>-<server>.prof when it stops "
        "(the figures then include the profiler's cost)",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample each server with py-spy during each measured window (after the warm-up, for --duration), writing "
        "DIR/<topology>-<mode>-<server>.txt (raw, folded stacks) and each server's largest shares into the row "
        "(py_spy); needs py-spy in the virtualenv or on the PATH and the right to trace the servers",
    )
    p.add_argument(
        "--strace",
        type=Path,
        metavar="DIR",
        help="attach strace -c -f to each server for each measured window, writing DIR/<topology>-<mode>-<server>.txt and "
        "each server's system calls per delivery into the row (counts_per_delivery_by_process); strace slows the servers, "
        "so the CPU figures of such a run are not to be compared",
    )
    p.add_argument(
        "--counts",
        type=Path,
        metavar="DIR",
        help="count each server's reactor turns, TLS records and writes, and TCP sends and reads in each measured window "
        "(bench/_linksite on the servers' PYTHONPATH, snapshots in DIR/<pid>.jsonl), per delivery into the row; the counting "
        "costs a little CPU",
    )
    p.add_argument(
        "--callgrind",
        type=Path,
        metavar="DIR",
        help="run each server under valgrind's callgrind (DIR/<topology>-<server>.callgrind*, needs --mode closed) and "
        "count the instructions each ran per delivery in the window (counts_per_delivery_by_process, and their ratio to the "
        "single host's): figures the machine's load does not move; the servers run about fifty times slower, so the run's "
        "rates and CPU figures are not to be compared",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (configurations, data, logs)")
    p.add_argument("--json", action="store_true", help="print one JSON document on standard output (the table goes to standard error)")
    args = p.parse_args(argv)
    defaults = {"pairs": 50, "duration": 10.0, "warmup": 2.0, "settle": 1.0, "drain": 5.0, "rate": 2000.0}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.pairs < 1 or args.window < 1 or args.procs < 1 or args.duration <= 0 or args.rate <= 0:
        p.error("--pairs, --window, --procs must be >= 1; --duration and --rate > 0")
    args.spy = None
    if args.py_spy is not None:
        args.spy = pySpy()
        if args.spy is None:
            p.error("--py-spy needs py-spy (.venv/bin/pip install py-spy)")
        args.py_spy.mkdir(parents=True, exist_ok=True)
    if args.strace is not None:
        if shutil.which("strace") is None:
            p.error("--strace needs strace on the PATH")
        args.strace.mkdir(parents=True, exist_ok=True)
    if args.callgrind is not None:
        missing = [c for c in ("valgrind", "vgdb") if shutil.which(c) is None]
        if missing:
            p.error(f"--callgrind needs {' and '.join(missing)} on the PATH (Debian: apt install valgrind)")
        if args.mode != ["closed"]:
            p.error("--callgrind needs --mode closed: under callgrind a server cannot keep a fixed rate")
        args.callgrind.mkdir(parents=True, exist_ok=True)
    if args.counts is not None:
        args.counts.mkdir(parents=True, exist_ok=True)
        os.environ["IMGATEWAY_LINK_COUNTS"] = str(args.counts.resolve())
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(COUNTS_SITE), os.environ.get("PYTHONPATH")) if p)
    return args


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """
    Each topology in turn: start its servers, run each mode, stop them.

    @return: The rows, and the topologies not run with why.
    """
    selfCheck()
    raiseNofile()
    builders: dict[str, Callable[[argparse.Namespace, list[Callable[[], object]]], Topology]] = {
        "single": single,
        "two-homes": twoHomes,
        "router-proxy": routerProxy,
    }
    wanted = args.only or list(TOPOLOGIES)
    modes = args.mode or list(MODES)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in wanted:
        if name == "router-proxy" and not proxyLanded():
            skipped[name] = "the router's proxied sessions (imgateway/router/proxy*.py) are not in this tree"
            continue
        stack: list[Callable[[], object]] = []
        try:
            topology = builders[name](args, stack)
            for mode in modes:
                try:
                    row = runMode(args, topology, mode)
                except BenchFailed as e:
                    row = {"topology": name, "mode": mode, "error": str(e)}
                    info(f"{name}, {mode} failed: {e}")
                row["log_errors"] = topology.logErrors()
                rows.append(row)
                info(f"{name}, {mode}: {json.dumps(row)}")
            # The messages crossed the links (not some local short cut):
            # hs1's to hs2; the router's, with the sessions on hs1 and the
            # proxied sessions' messages sent to hs2 from the router itself
            # (docs/protocol.md section 9.7).
            if name == "two-homes":
                topology.gateways["hs1"].waitForLog(["Link to server hs2 is up"], timeout=5.0)
            if name == "router-proxy":
                topology.gateways["router"].waitForLog(
                    ["Link to server hs1 is up", "Link to server hs2 is up", "Proxied session "], timeout=5.0
                )
        except GatewayError as e:
            rows.extend({"topology": name, "mode": mode, "error": str(e)} for mode in modes)
            info(f"{name} failed: {e}")
        finally:
            for undo in reversed(stack):
                undo()
    return rows, skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parseArgs(argv)
    interruptOnSigterm()
    started = time.monotonic()
    try:
        rows, skipped = run(args)
    except KeyboardInterrupt:
        info("interrupted; the gateways we started are stopped")
        return interruptedStatus()
    text = table(rows, skipped)
    result = {
        "bench": "multihost",
        "quick": args.quick,
        "pairs": args.pairs,
        "direction": "both" if args.both_ways else "one-way",
        "rows": rows,
        "ratios": ratios(rows),
        "instruction_ratios": instructionRatios(rows),
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(result), flush=True)
        print(text, file=sys.stderr, flush=True)
    else:
        print(text, flush=True)
    if any("error" in r for r in rows):
        return 2
    if any(problems(r) for r in rows):
        info("FAILED: messages lost, duplicated or unanswered, or tracebacks logged (see the checks column)")
        return 1
    if any(refusals(r) for r in rows):
        info("some messages were refused (see the checks column): the figures of those rows are not of a clean run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
