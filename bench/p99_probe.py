# -*- test-case-name: tests.test_bench_compare -*-
"""
Where the gateway's tail latency at a fixed rate comes from (issue 11, "p99
latency at a fixed 2,000 msgs/s").

    .venv/bin/python bench/p99_probe.py --face native
    .venv/bin/python bench/p99_probe.py --face xmpp --rate 2000 --duration 10

It runs what C{bench/compare.py --tests rate} runs (a fresh gateway, the
same accounts and flood limits, C{bench/_loaddriver.py}'s connections and
open-loop senders in C{--procs} driver processes) and records more:

 - in the driver: every message's send and receive time, each driver
   process's garbage collections and how late a 1 ms asyncio timer fired
   (the driver's own stalls, which the latency it measures includes);
 - in the gateway (C{bench/_p99site/sitecustomize.py}, loaded through
   C{PYTHONPATH} and switched on by C{$IMGATEWAY_P99_PROBE}): every garbage
   collection (start, length, generation) and how late a 1 ms reactor timer
   fired (the reactor turns that held it up).

With C{--trace}, the gateway runs no timer or watchdog thread; instead
each message is timed through the reactor (when the poll that woke it
returned, when the bytes reached the protocol, when the recipient's copy
was sent, with the polls and C{epoll_ctl} calls per message), and cut
into stages together with the driver's times (L{hopSummary}); and
the slowest 1 % of the window's messages (what p99 reads) are cut into
the gateway's and the driver's parts (L{tailAttribution}: a turn it waited
behind, waking, the turn's CPU and time off CPU, the driver's), with what
the gateway turns on their way held: collections, timed and thread calls
(by name), log events, other threads' CPU. The gateway records every
poll (C{bench/_p99site}), the driver when each of its loop's polls
started and returned. These are times and CPU counters inside the two
processes, so the attribution holds when the machine is busy; the
latencies do not.
C{--reactor NAME} runs the gateway with C{twistd --reactor NAME};
C{--tree DIR} runs another source tree's gateway under the same probe.

Then it prints the percentiles, the pauses of both sides by kind, and for
the messages slower than C{--slow-ms} what their time in flight overlapped:
a collection in the gateway (by generation), a stalled reactor turn without
one, a collection or stall in the driver, or nothing recorded (the machine's
scheduler: other processes on the two cores). With C{--json} the whole
record goes to standard output.

A benchmark, not a test: it asserts no time. Its timers cost the gateway a
little CPU (a thousand reactor wake-ups a second): take the latency figures
themselves from C{compare.py}, and the attribution from here.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _loaddriver as ld
from bench._gateway import interruptOnSigterm
from bench._peers import PASSWORD, PREFIX, Provision, circulant, startGateway
from bench._proc import machineBusyS, nowUs, procCpuS, raiseNofile, shard

SITE = Path(__file__).resolve().parent / "_p99site"

#: The accounts of C{compare.py}'s message runs (its C{MSG_FIRST}) and of
#: its idle sessions (C{IDLE_FIRST}).
MSG_FIRST = 0
IDLE_FIRST = 2000


def info(text: str) -> None:
    print(f"[p99] {text}", file=sys.stderr, flush=True)


# -- the driver processes ------------------------------------------------------------------


class TimedStats(ld.Stats):
    """
    L{ld.Stats} that keeps every message's send and receive time (µs) in
    the window.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sentAt = array.array("q")
        self.recvAt = array.array("q")
        #: For each message, when the poll of the driver's loop that read
        #: it started and returned (L{tracePolls}).
        self.pollStartAt = array.array("q")
        self.pollAt = array.array("q")
        self.poll = [0, 0]

    def record(self, sentUs: int) -> None:
        t = nowUs()
        super().record(sentUs)
        if self.inWindow(t):
            self.sentAt.append(sentUs)
            self.recvAt.append(t)
            self.pollStartAt.append(self.poll[0])
            self.pollAt.append(self.poll[1])


def tracePolls(loop: asyncio.AbstractEventLoop, stats: TimedStats) -> None:
    """
    Keep in C{stats.poll} when the poll of C{loop}'s selector that is being
    handled started and returned (µs): a message read in that turn was
    waiting in the socket since at most the poll's start if the driver was
    busy before it, or woke the driver if it was waiting in it.
    """
    selector: Any = getattr(loop, "_selector")
    select = selector.select

    def traced(timeout: float | None = None) -> Any:
        start = nowUs()
        events = select(timeout)
        stats.poll[0], stats.poll[1] = start, nowUs()
        return events

    selector.select = traced


async def lagTimer(lags: list[tuple[int, int, int, int]], period: float = 0.001) -> None:
    """
    Record how late a C{period} timer fires (only when more than 1 ms), and
    the CPU µs this thread and this process used meanwhile (as the
    gateway's probe does).
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        cpu0, proc0 = time.thread_time_ns(), time.process_time_ns()
        await asyncio.sleep(period)
        late = loop.time() - due
        if late > 0.001:
            lags.append((int(due * 1e6), int(late * 1e6), (time.thread_time_ns() - cpu0) // 1000,
                         (time.process_time_ns() - proc0) // 1000))


async def workerTimed(link: ld.ParentLink, spec: dict[str, Any]) -> dict[str, Any]:
    """
    C{_loaddriver}'s C{msg} worker at a fixed rate, with L{TimedStats}, the
    driver's collections and its timer's lateness.
    """
    gcEvents: list[tuple[int, int, int, int, int]] = []
    started = [0, 0]

    def onGC(phase: str, gcInfo: dict[str, int]) -> None:
        now, cpu = nowUs(), time.thread_time_ns() // 1000
        if phase == "start":
            started[0], started[1] = now, cpu
        else:
            gcEvents.append((started[0], now - started[0], gcInfo["generation"], gcInfo["collected"], cpu - started[1]))

    stats = TimedStats()
    tracePolls(asyncio.get_running_loop(), stats)
    pairs: list[tuple[int, int]] = spec["shard"]
    # Idle sessions first (their contacts online), as a server that has
    # more sessions than the busy ones: what its full collections go through.
    idle = [ld.makeConn(f"{spec['prefix']}{u}", spec, stats) for u in spec["idle"]]
    await ld.loginAll(idle, spec, session=True)
    conns = {u: ld.makeConn(f"{spec['prefix']}{u}", spec, stats) for pr in pairs for u in pr}
    await ld.loginAll(list(conns.values()), spec, session=True)
    byConn: dict[ld.Conn, ld.Sender] = {}
    senders: list[ld.Sender] = []
    for a, b in pairs:
        ca, cb = conns[a], conns[b]
        sa, sb = ld.Sender(ca, cb, spec["window"], 1, stats), ld.Sender(cb, ca, spec["window"], 1, stats)
        senders += [sa, sb]
        byConn[cb], byConn[ca] = sa, sb
    phases = None if spec["send_tick"] else ld.senderPhases([u for pr in pairs for u in pr], MSG_FIRST, spec["senders_total"])

    def onMessage(c: ld.Conn, frm: str, body: str) -> None:
        sender = byConn.get(c)
        if sender is not None:
            sender.delivered(body)

    for c in conns.values():
        c.onMessage = onMessage
    lags: list[tuple[int, int, int, int]] = []
    tasks: list[asyncio.Task[None]] = []

    def start() -> None:
        gc.callbacks.append(onGC)
        tasks.append(asyncio.ensure_future(ld.openLoop(senders, spec["rate"] / spec["senders_total"], 1000, phases,
                                                       spec["send_tick"])))
        tasks.append(asyncio.ensure_future(lagTimer(lags)))

    def stop() -> None:
        for t in tasks:
            t.cancel()
        gc.callbacks.remove(onGC)

    cpu = await ld.window(link, stats, {"clients": len(conns)}, start, stop,
                          lambda: stats.receivedTotal >= stats.sent, spec["drain"])  # fmt: skip
    for c in [*conns.values(), *idle]:
        c.goodbye()
    out = ld.summary(stats, cpu)
    # asyncio's loop.time() is time.monotonic(): the same clock as nowUs().
    out.update(sent_at=stats.sentAt.tobytes(), recv_at=stats.recvAt.tobytes(), gc=gcEvents, lags=lags, pid=os.getpid(),
               poll_start_at=stats.pollStartAt.tobytes(), poll_at=stats.pollAt.tobytes())
    return out


ld.WORKERS["p99"] = workerTimed


# -- what overlapped -----------------------------------------------------------------------


def overlaps(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """
    @param spans: (start µs, length µs), sorted by start.
    @return: Whether one of C{spans} overlaps C{[start, end]}.
    """
    import bisect

    k = bisect.bisect_right(spans, (end, 1 << 62))
    for i in range(k - 1, max(-1, k - 50), -1):
        s, n = spans[i]
        if s + n >= start:
            return True
        if s + 20_000_000 < start:
            break
    return False


def pauseSummary(lengths: Sequence[int]) -> dict[str, Any]:
    if not lengths:
        return {"n": 0}
    s = sorted(lengths)
    return {"n": len(s), "p50_ms": round(s[len(s) // 2] / 1000, 2), "max_ms": round(s[-1] / 1000, 2),
            "total_ms": round(sum(s) / 1000, 1)}  # fmt: skip


def stallKind(late: int, cpu: int, proc: int, period: int = 1000) -> str:
    """
    What a stall of the 1 ms timer was, from the CPU used meanwhile: the
    timer's thread working (C{"busy"}), another thread of the process
    holding the GIL (C{"thread"}), or the process waiting for a core.
    """
    wall = late + period
    if 2 * cpu >= wall:
        return "busy"
    if 2 * (proc - cpu) >= wall:
        return "thread"
    return "waiting"


def stalls(lags: Sequence[Sequence[int]], kind: str) -> list[tuple[int, int]]:
    """
    @return: The stalls over 2 ms of C{kind} (L{stallKind}), as sorted
        (start µs, length µs).
    """
    return sorted((due, late) for due, late, cpu, proc in lags if late > 2000 and stallKind(late, cpu, proc) == kind)


def stackSummary(stacks: Sequence[Sequence[Any]], t0: int, t1: int, top: int = 8) -> list[str]:
    """
    The reactor thread's stacks sampled in long turns inside the window,
    grouped by their innermost frames of the gateway's (or Twisted's) own
    code, most frequent first.
    """
    from collections import Counter

    seen: Counter[str] = Counter()
    for at, _, _, text in stacks:
        if t0 <= at < t1:
            frames = text.split(" < ")
            seen[" < ".join(frames[:4])] += 1
    return [f"{n:4d}  {sig}" for sig, n in seen.most_common(top)]


def attribute(sent: Sequence[int], recv: Sequence[int], server: dict[str, Any], drivers: Sequence[dict[str, Any]],
              t0: int, t1: int, slowUs: int) -> dict[str, Any]:
    """
    Sort the messages slower than C{slowUs} by what their time in flight
    overlapped, first match wins: a collection in the gateway (gen 2, then
    1, then 0), a stall of the reactor beyond 2 ms, a collection or stall in
    a driver, else nothing recorded.
    """
    sgc = {g: sorted((s, n) for s, n, gen, _, _ in server.get("gc", []) if gen == g) for g in (0, 1, 2)}
    slags = server.get("lags", [])
    dlags = [lag for d in drivers for lag in d["lags"]]
    dgc = sorted((s, n) for d in drivers for s, n, _, _, _ in d["gc"] if n > 500)
    causes = [
        ("gateway gen-2 collection", sgc[2]), ("gateway gen-1 collection", sgc[1]),
        ("gateway gen-0 collection", sgc[0]), ("gateway reactor busy > 2 ms (no collection)", stalls(slags, "busy")),
        ("gateway: another thread held the GIL > 2 ms", stalls(slags, "thread")),
        ("driver collection > 0.5 ms", dgc), ("driver loop busy > 2 ms", stalls(dlags, "busy")),
        ("gateway waiting for a core > 2 ms", stalls(slags, "waiting")),
        ("driver waiting for a core > 2 ms", stalls(dlags, "waiting")),
    ]  # fmt: skip
    counts = {name: 0 for name, _ in causes}
    counts["nothing recorded"] = 0
    slow = [(s, r) for s, r in zip(sent, recv) if r - s > slowUs]
    for s, r in slow:
        for name, spans in causes:
            if overlaps(spans, s, r):
                counts[name] += 1
                break
        else:
            counts["nothing recorded"] += 1

    def inWindow(events: Sequence[Any]) -> list[Any]:
        return [e for e in events if t0 <= e[0] < t1]

    sg = inWindow(server.get("gc", []))
    dg = [e for d in drivers for e in inWindow(d["gc"])]

    def stallSummary(lags: Sequence[Sequence[int]]) -> dict[str, Any]:
        inside = inWindow(lags)
        out = {"all": pauseSummary([late for _, late, _, _ in inside if late > 2000])}
        for kind in ("busy", "thread", "waiting"):
            out[kind] = pauseSummary([late for _, late, cpu, proc in inside if late > 2000 and stallKind(late, cpu, proc) == kind])
        return out

    seconds = (t1 - t0) / 1e6
    return {
        "slow_ms": slowUs / 1000,
        "messages": len(sent),
        "slow": len(slow),
        "slow_by_cause": counts,
        "window_s": round(seconds, 2),
        "gateway_gc": {f"gen{g}": pauseSummary([n for _, n, gen, _, _ in sg if gen == g]) for g in (0, 1, 2)},
        "gateway_gc_cpu": {f"gen{g}": pauseSummary([c for _, _, gen, _, c in sg if gen == g]) for g in (0, 1, 2)},
        "gateway_gc_collected": sum(e[3] for e in sg),
        # The whole run (logins included), not only the window.
        "gateway_gc_whole_run": {f"gen{g}": pauseSummary([c for _, _, gen, _, c in server.get("gc", []) if gen == g]) for g in (0, 1, 2)},
        "gateway_stalls_over_2ms": stallSummary(slags),
        "driver_gc": {f"gen{g}": pauseSummary([n for _, n, gen, _, _ in dg if gen == g]) for g in (0, 1, 2)},
        "driver_stalls_over_2ms": stallSummary(dlags),
        "gateway_long_turn_stacks": stackSummary(server.get("stacks", []), t0, t1),
        "gateway_gc_threshold": server.get("threshold"),
        "gateway_gc_frozen": server.get("frozen"),
    }


# -- the run -------------------------------------------------------------------------------


def runProbe(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="imgw-p99-"))
    out = folder / "server-probe.json"
    pairs = [(MSG_FIRST + 2 * i, MSG_FIRST + 2 * i + 1) for i in range(args.pairs)]
    idle = list(range(IDLE_FIRST, IDLE_FIRST + args.idle))
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "IMGATEWAY_P99_PROBE", "IMGATEWAY_P99_GARBAGE", "IMGATEWAY_P99_TRACE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), saved["PYTHONPATH"]) if p)
    os.environ["IMGATEWAY_P99_PROBE"] = str(out)
    if args.garbage:
        os.environ["IMGATEWAY_P99_GARBAGE"] = "1"
    if args.trace:
        os.environ["IMGATEWAY_P99_TRACE"] = "1"
    provision = Provision([*range(MSG_FIRST, MSG_FIRST + 2 * args.pairs), *idle],
                          circulant(IDLE_FIRST, args.idle, args.idle_contacts) if args.idle else [])
    try:
        server = startGateway(args.face, provision, twistdOptions=["--reactor", args.reactor] if args.reactor else [],
                              tree=Path(args.tree).resolve() if args.tree else None)  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    info(f"gateway-{args.face} started (pid {server.pid}, port {server.port})")
    try:
        spec = {
            "test": "p99", "proto": server.proto, "host": "127.0.0.1", "port": server.port, "domain": server.domain,
            "prefix": PREFIX, "password": PASSWORD, "mech": "SCRAM-SHA-1", "timeout": 60.0, "login_concurrency": 50,
            "drain": 3.0, "window": 10, "settle": 1.0, "irc_pass": False, "rate": args.rate, "senders_total": 2 * args.pairs,
            "send_tick": args.send_tick,
        }  # fmt: skip
        shards = [s for s in shard(pairs, args.procs) if s]
        idleShards = shard(idle, len(shards))
        workers = ld.Workers([dict(spec, shard=s, idle=i) for s, i in zip(shards, idleShards)], 600.0)
        try:
            workers.collect("ready")
            time.sleep(1.0)
            ns = argparse.Namespace(server_pid=[server.pid], peer_pid=[], warmup=args.warmup, duration=args.duration)
            edges = measureWindowAt(ns, workers)
            results = workers.collect("result", args.duration + 60)
        finally:
            workers.stop()
    finally:
        server.stop()
    serverDoc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if serverDoc.get("pid") != server.pid:
        info("the gateway's probe file is missing or not the gateway's: no server-side figures")
        serverDoc = {}
    sent: array.array[int] = array.array("q")
    recv: array.array[int] = array.array("q")
    pollStarts: array.array[int] = array.array("q")
    pollEnds: array.array[int] = array.array("q")
    for r in results:
        sent.frombytes(r["sent_at"])
        recv.frombytes(r["recv_at"])
        pollStarts.frombytes(r["poll_start_at"])
        pollEnds.frombytes(r["poll_at"])
    lat = [b - a for a, b in zip(sent, recv)]
    t0, t1 = edges["t0"], edges["t1"]
    dt = edges["window_s"]
    doc: dict[str, Any] = {
        "face": args.face, "rate_target": args.rate, "pairs": args.pairs, "procs": len(results),
        "rate_per_s": round(len(lat) / dt, 1), "lat_ms": {k: round(v / 1000, 2) for k, v in ld.percentiles(lat).items()},
        "server_cpu_pct": round(100 * edges["server_cpu_s"] / dt, 1) if edges["server_cpu_s"] is not None else None,
        "driver_cpu_pct": [round(100 * r["cpu_s"] / dt, 1) for r in results],
    }  # fmt: skip
    if edges["machineBusyS"] is not None and edges["server_cpu_s"] is not None:
        doc["other_cpu_pct"] = round(100 * (edges["machineBusyS"] - edges["server_cpu_s"] - sum(r["cpu_s"] for r in results)) / dt, 1)
    doc.update(attribute(sent, recv, serverDoc, results, t0, t1, int(args.slow_ms * 1000)))
    doc["slowest"] = slowest(sent, recv, serverDoc, results, t0, args.top)
    doc["idle_sessions"] = args.idle
    if args.trace:
        doc["hops"] = hopSummary(sent, recv, serverDoc, t0, t1)
        doc["tail"] = tailAttribution(sent, recv, pollStarts, pollEnds, serverDoc, t0, t1)
        doc["reactor"] = serverDoc.get("reactor")
    garbage = Path(str(out) + ".garbage")
    if garbage.exists():
        doc["gateway_garbage_by_type"] = json.loads(garbage.read_text())
    return doc


def measureWindowAt(args: argparse.Namespace, workers: ld.Workers) -> dict[str, Any]:
    """
    L{ld.measureWindow}, also returning the window's edges (µs).
    """
    tGo = nowUs() + 200_000
    t0 = tGo + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    workers.send(("go", tGo, t0, t1))
    time.sleep(max(0.0, (t0 - nowUs()) / 1e6))
    c0, b0, m0 = procCpuS(args.server_pid[0]), machineBusyS(), time.monotonic()
    time.sleep(max(0.0, (t1 - nowUs()) / 1e6))
    c1, b1, m1 = procCpuS(args.server_pid[0]), machineBusyS(), time.monotonic()
    return {
        "t0": t0, "t1": t1, "window_s": m1 - m0,
        "server_cpu_s": None if c0 is None or c1 is None else c1 - c0,
        "machineBusyS": None if b0 is None or b1 is None else b1 - b0,
    }  # fmt: skip


def slowest(sent: Sequence[int], recv: Sequence[int], server: dict[str, Any], drivers: Sequence[dict[str, Any]],
            t0: int, top: int) -> list[str]:
    """
    The C{top} slowest messages, one line each: when (ms into the window),
    how long, and every pause of either side that overlapped it.
    """
    order = sorted(range(len(sent)), key=lambda i: recv[i] - sent[i], reverse=True)[:top]
    lines = []
    for i in sorted(order, key=lambda i: sent[i]):
        s, r = sent[i], recv[i]
        seen = [f"gw gen{g} {n / 1000:.1f}" for st, n, g, _, _ in server.get("gc", []) if st <= r and st + n >= s]
        seen += [f"gw stall {late / 1000:.1f} ({stallKind(late, cpu, proc)})" for due, late, cpu, proc in server.get("lags", [])
                 if due <= r and due + late >= s and late > 2000]
        for d in drivers:
            seen += [f"drv gen{g} {n / 1000:.1f}" for st, n, g, _, _ in d["gc"] if st <= r and st + n >= s and n > 500]
            seen += [f"drv stall {late / 1000:.1f} ({stallKind(late, cpu, proc)})" for due, late, cpu, proc in d["lags"]
                     if due <= r and due + late >= s and late > 2000]
        more = f" (+{len(seen) - 6})" if len(seen) > 6 else ""
        lines.append(f"t+{(s - t0) / 1000:8.1f} ms  {(r - s) / 1000:6.2f} ms  {', '.join(seen[:6]) or '-'}{more}")
    return lines


#: The stages of a message's way (L{hopSummary}).
STAGES = (
    ("driver send -> gateway poll returns", 0),
    ("poll returns -> its bytes reach the protocol", 1),
    ("protocol -> send to the recipient", 2),
    ("gateway send -> driver receives", 3),
    ("whole way", 4),
    ("gateway CPU, poll -> send", 5),
)


def hopSummary(sent: Sequence[int], recv: Sequence[int], server: dict[str, Any], t0: int, t1: int) -> dict[str, Any]:
    """
    With C{--trace}: each message of the window cut into its stages by the
    gateway's trace (C{bench/_p99site}: when the poll that woke the reactor
    for the sender's bytes returned, when they reached the protocol, when
    the recipient's copy was sent) and the driver's send and receive times
    (the same monotonic clock): each stage's percentiles (µs), those of the
    slowest 1 % of messages, and the polls and C{epoll_ctl} calls per
    message.
    """
    received = dict(zip(sent, recv))
    rows = []
    counts = []
    for sentUs, wake, read, sendUs, cpu, polls, pollCount, ctlCount in server.get("hops", []):
        if t0 <= sentUs < t1 and sentUs in received:
            r = received[sentUs]
            rows.append((wake - sentUs, read - wake, sendUs - read, r - sendUs, r - sentUs, cpu, polls))
            counts.append((pollCount, ctlCount))
    if not rows:
        return {"n": 0}

    def pct(values: Sequence[int]) -> dict[str, int]:
        v = sorted(values)
        return {"p50": v[len(v) // 2], "p90": v[int(len(v) * 0.9)], "p99": v[min(len(v) - 1, int(len(v) * 0.99))]}

    out: dict[str, Any] = {"n": len(rows), "stages_us": {}, "slowest_1pct_median_us": {}}
    slow = sorted(rows, key=lambda row: row[4])[-max(1, len(rows) // 100):]
    for name, i in STAGES:
        out["stages_us"][name] = pct([row[i] for row in rows])
        out["slowest_1pct_median_us"][name] = sorted(row[i] for row in slow)[len(slow) // 2]
    out["polls_between_read_and_send"] = pct([row[6] for row in rows])
    (p0, c0), (p1, c1) = counts[0], counts[-1]
    out["polls_per_message"] = round((p1 - p0) / max(1, len(rows) - 1), 2)
    out["epoll_ctl_per_message"] = round((c1 - c0) / max(1, len(rows) - 1), 2)
    return out


#: The parts of a message's latency (L{tailParts}), in order along its way.
PARTS = (
    "gateway busy in an earlier turn",
    "gateway waking (idle in its poll)",
    "gateway turn, its CPU",
    "gateway turn, off CPU",
    "driver busy when the copy was sent",
    "driver waking (idle in its poll)",
    "driver turn, reads before it",
)


def tailParts(sentUs: int, recvUs: int, pollStart: int, pollEnd: int, hop: Sequence[int],
              gwStart: int) -> tuple[int, ...]:
    """
    Cut one message's latency into L{PARTS} (µs; they add up to it).

    @param pollStart: When the driver's poll that read the copy started.
    @param pollEnd: When it returned.
    @param hop: The gateway's trace of the message: (sent, the gateway's
        poll return, read, send, thread CPU µs from the poll to the send).
    @param gwStart: When the gateway's poll that returned it started.
    """
    _, wake, _, gwSend, cpu = hop[:5]
    gwBusy = max(0, gwStart - sentUs)
    turn = gwSend - wake
    onCpu = min(turn, max(0, cpu))
    drvBusy = max(0, pollStart - gwSend)
    return (gwBusy, wake - sentUs - gwBusy, onCpu, turn - onCpu, drvBusy, pollEnd - gwSend - drvBusy,
            recvUs - pollEnd)


def tailAttribution(sent: Sequence[int], recv: Sequence[int], pollStarts: Sequence[int], pollEnds: Sequence[int],
                    server: dict[str, Any], t0: int, t1: int, share: float = 0.01) -> dict[str, Any]:
    """
    With C{--trace}: the slowest C{share} of the window's messages (the
    tail that p99 reads) cut into L{PARTS} (L{tailParts}), against the
    same for all messages; each tail message put down to its largest part;
    and what the gateway's turns on their way held: collections, timed
    calls (and which), log events, other threads' CPU. A gateway turn that
    held up a tail message is the one it waited behind (its bytes came
    while the gateway was busy) or the one that read and answered it.
    """
    import bisect

    hops = {h[0]: h for h in server.get("hops", [])}
    flat = server.get("polls", [])
    rows = [flat[i:i + 8] for i in range(0, len(flat) - 7, 8)]
    returns = [r[2] for r in rows]
    timed = sorted(tuple(t) for t in server.get("timed", []))
    gcs = sorted((g[0], g[1]) for g in server.get("gc", []))
    msgs = []
    for i, (s, r) in enumerate(zip(sent, recv)):
        hop = hops.get(s)
        if hop is None or not (t0 <= s < t1):
            continue
        k = bisect.bisect_left(returns, hop[1])
        if k >= len(rows) or returns[k] != hop[1]:
            continue
        msgs.append((r - s, i, k, tailParts(s, r, pollStarts[i], pollEnds[i], hop, rows[k][0])))
    if not msgs:
        return {"n": 0}
    msgs.sort()
    tail = msgs[-max(1, int(len(msgs) * share)):]

    def medians(group: Sequence[Any]) -> dict[str, int]:
        return {name: sorted(m[3][j] for m in group)[len(group) // 2] for j, name in enumerate(PARTS)}

    def means(group: Sequence[Any]) -> dict[str, int]:
        return {name: sum(m[3][j] for m in group) // len(group) for j, name in enumerate(PARTS)}

    largest = {name: 0 for name in PARTS}
    held = {"turns with a collection": 0, "turns with timed or thread calls > 100 µs": 0, "turns with log events": 0,
            "turns where other threads used > 100 µs CPU": 0}  # fmt: skip
    callers: dict[str, int] = {}
    seenTurns = set()
    for _, i, k, parts in tail:
        largest[PARTS[max(range(len(parts)), key=lambda j: parts[j])]] += 1
        # The turn it waited behind (if any) and the turn that read it.
        for turn in ([k - 1] if parts[0] > 0 and k > 0 else []) + [k]:
            if turn in seenTurns or turn + 1 >= len(rows):
                continue
            seenTurns.add(turn)
            a, b = rows[turn], rows[turn + 1]
            start, end = a[2], b[0]
            if b[5] > a[5]:
                held["turns with a collection"] += 1
            if b[6] > a[6]:
                held["turns with log events"] += 1
            if (b[4] - a[4]) - (b[1] - a[3]) > 100:
                held["turns where other threads used > 100 µs CPU"] += 1
            j = bisect.bisect_left(timed, (start,))
            while j < len(timed) and timed[j][0] < end:
                held["turns with timed or thread calls > 100 µs"] += 1
                for name in timed[j][3].split(","):
                    callers[name] = callers.get(name, 0) + 1
                j += 1
    perTurn: dict[int, int] = {}
    for m in msgs:
        perTurn[m[2]] = perTurn.get(m[2], 0) + 1
    windowTimed: dict[str, int] = {}
    for t in timed:
        if t0 <= t[0] < t1:
            for name in t[3].split(","):
                windowTimed[name] = windowTimed.get(name, 0) + 1
    turnsWall = [rows[k + 1][0] - rows[k][2] for k in range(len(rows) - 1) if t0 <= rows[k][2] < t1]
    turnsCpu = [rows[k + 1][1] - rows[k][3] for k in range(len(rows) - 1) if t0 <= rows[k][2] < t1]
    inWindow = [e for e in gcs if t0 <= e[0] < t1]
    return {
        "n": len(msgs), "tail_n": len(tail), "tail_from_us": tail[0][0],
        "all_median_us": medians(msgs), "tail_median_us": medians(tail), "tail_mean_us": means(tail),
        "tail_by_largest_part": largest, "tail_turns": len(seenTurns), "tail_turns_held": held,
        "tail_turn_calls": sorted(callers.items(), key=lambda kv: -kv[1])[:10],
        "gateway_turns": {"n": len(turnsWall), "wall_us": pctOf(turnsWall), "cpu_us": pctOf(turnsCpu)},
        "gateway_collections_in_window": len(inWindow),
        "gateway_timed_over_100us_in_window": len([t for t in timed if t0 <= t[0] < t1]),
        "gateway_timed_over_100us_calls": sorted(windowTimed.items(), key=lambda kv: -kv[1])[:10],
        "messages_per_turn": pctOf(list(perTurn.values())),
        "messages_per_turn_of_the_tail": pctOf([perTurn[m[2]] for m in tail]),
        "gateway_threads_cpu_us": threadsCpuIn(server.get("thread_samples", []), t0, t1),
    }  # fmt: skip


def threadsCpuIn(samples: Sequence[Sequence[Any]], t0: int, t1: int) -> dict[str, int]:
    """
    Each gateway thread's CPU µs between the first and the last of its
    samples (C{bench/_p99site}: about one a second) inside C{[t0, t1)}: the
    reactor's, the thread pools' (SQLite), the watchdog's.
    """
    inside = [(at, cpu) for at, cpu in samples if t0 <= at < t1]
    if len(inside) < 2:
        return {}
    first, last = inside[0][1], inside[-1][1]
    return {name: last[name] - first.get(name, 0) for name in last}


def pctOf(values: Sequence[int]) -> dict[str, int]:
    """
    p50, p99 and max of C{values} (zeros if none).
    """
    v = sorted(values)
    if not v:
        return {"p50": 0, "p99": 0, "max": 0}
    return {"p50": v[len(v) // 2], "p99": v[min(len(v) - 1, int(len(v) * 0.99))], "max": v[-1]}


def report(doc: dict[str, Any]) -> str:
    lat = doc["lat_ms"]
    lines = [
        f"gateway-{doc['face']}: {doc['rate_per_s']:,.0f} msgs/s (target {doc['rate_target']:,.0f}), "
        f"p50 {lat.get('p50')} p90 {lat.get('p90')} p99 {lat.get('p99')} max {lat.get('max')} ms; "
        f"CPU gateway {doc['server_cpu_pct']} % drivers {doc['driver_cpu_pct']} % others {doc.get('other_cpu_pct')} %",
        f"messages slower than {doc['slow_ms']:g} ms: {doc['slow']} of {doc['messages']}",
    ]
    for cause, n in doc["slow_by_cause"].items():
        if n:
            lines.append(f"  {n:6d}  {100 * n / max(1, doc['slow']):5.1f} %  {cause}")
    lines.append(f"pauses in the {doc['window_s']} s window (n, p50, max, total ms):")
    for side in ("gateway", "driver"):
        for g, p in doc[f"{side}_gc"].items():
            if p["n"]:
                cpu = doc.get(f"{side}_gc_cpu", {}).get(g)
                extra = f" (CPU p50 {cpu['p50_ms']}, max {cpu['max_ms']})" if cpu else ""
                lines.append(f"  {side} {g} collections: {p['n']}, {p['p50_ms']}, {p['max_ms']}, {p['total_ms']}{extra}")
        for kind, p in doc[f"{side}_stalls_over_2ms"].items():
            if p["n"]:
                lines.append(f"  {side} stalls > 2 ms, {kind}: {p['n']}, {p['p50_ms']}, {p['max_ms']}, {p['total_ms']}")
    lines.append(f"gateway gc threshold {doc['gateway_gc_threshold']}, frozen objects {doc['gateway_gc_frozen']}, "
                 f"collected in the window {doc['gateway_gc_collected']}")
    whole = ", ".join(f"{g} {p['n']} (CPU p50 {p['p50_ms']}, max {p['max_ms']} ms)" for g, p in doc["gateway_gc_whole_run"].items() if p["n"])
    lines.append(f"gateway collections over the whole run, logins included: {whole or 'none'}")
    lines.append("the gateway's long turns (> 4 ms), sampled stacks (innermost first):")
    lines += ["  " + line for line in doc["gateway_long_turn_stacks"]]
    if doc.get("gateway_garbage_by_type"):
        lines.append("the gateway's cyclic garbage by type (whole run):")
        lines += [f"  {n:8d}  {kind}" for kind, n in doc["gateway_garbage_by_type"][:15]]
    hops = doc.get("hops")
    if hops and hops.get("n"):
        lines.append(f"the way of {hops['n']} messages (reactor {doc.get('reactor')}), µs: p50 p90 p99, "
                     f"and the median of the slowest 1 %:")
        for name, _ in STAGES:
            p = hops["stages_us"][name]
            lines.append(f"  {name:45s} {p['p50']:7d} {p['p90']:7d} {p['p99']:7d}   {hops['slowest_1pct_median_us'][name]:7d}")
        p = hops["polls_between_read_and_send"]
        lines.append(f"  polls between read and send: p50 {p['p50']}, p99 {p['p99']}; per message: "
                     f"{hops['polls_per_message']} polls, {hops['epoll_ctl_per_message']} epoll_ctl calls")
    tail = doc.get("tail")
    if tail and tail.get("n"):
        lines.append(f"the slowest 1 % ({tail['tail_n']} of {tail['n']} traced, from {tail['tail_from_us']} µs) cut into "
                     f"parts, µs: median of all, median and mean of the tail, tail messages whose largest part it is:")
        for name in PARTS:
            lines.append(f"  {name:40s} {tail['all_median_us'][name]:7d} {tail['tail_median_us'][name]:7d} "
                         f"{tail['tail_mean_us'][name]:7d} {tail['tail_by_largest_part'][name]:6d}")
        lines.append(f"  the {tail['tail_turns']} gateway turns on their way: "
                     + ", ".join(f"{k} {v}" for k, v in tail["tail_turns_held"].items()))
        lines.append(f"  messages read per gateway turn: all {tail['messages_per_turn']}, the tail's turns "
                     f"{tail['messages_per_turn_of_the_tail']}; timed calls > 100 µs in the window: "
                     + (", ".join(f"{k} {v}" for k, v in tail["gateway_timed_over_100us_calls"]) or "none"))
        if tail["tail_turn_calls"]:
            lines.append("  their timed and thread calls: " + ", ".join(f"{k} {v}" for k, v in tail["tail_turn_calls"]))
        gt = tail["gateway_turns"]
        lines.append(f"  gateway turns in the window: {gt['n']}, wall p50/p99/max {gt['wall_us']} µs, CPU {gt['cpu_us']} µs; "
                     f"collections {tail['gateway_collections_in_window']}, timed calls > 100 µs "
                     f"{tail['gateway_timed_over_100us_in_window']}; each thread's CPU µs in the window {tail['gateway_threads_cpu_us']}")
    lines.append("slowest messages (sent at, latency, what overlapped):")
    lines += ["  " + line for line in doc["slowest"]]
    return "\n".join(lines)


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="where the gateway's tail latency at a fixed rate comes from")
    p.add_argument("--face", choices=["native", "xmpp"], default="native")
    p.add_argument("--rate", type=float, default=2000.0, help="messages/s, all senders together (default 2000)")
    p.add_argument("--pairs", type=int, default=20, help="client pairs, each sending both ways (default 20, as compare.py --quick)")
    p.add_argument("--procs", type=int, default=2, help="driver processes (default 2, as compare.py)")
    p.add_argument("--send-tick", type=float, default=ld.SEND_TICK,
                   help=f"the driver wakes every this many seconds and sends what fell due (default {ld.SEND_TICK:g}, "
                   "as compare.py); 0: each message at its own due time (_loaddriver.openLoop)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--slow-ms", type=float, default=5.0, help="what counts as slow (default 5 ms)")
    p.add_argument("--top", type=int, default=15, help="slowest messages listed (default 15)")
    p.add_argument("--idle", type=int, default=0, help="idle sessions logged in besides the pairs (default 0)")
    p.add_argument("--idle-contacts", type=int, default=20, help="contacts of each idle session, among them (default 20)")
    p.add_argument("--garbage", action="store_true",
                   help="keep what the gateway's collector finds (gc.DEBUG_SAVEALL) and list it by type")
    p.add_argument("--trace", action="store_true",
                   help="time each message's stages in the gateway (poll, protocol, send) instead of its timer "
                        "and watchdog thread")
    p.add_argument("--reactor", default="", help="twistd --reactor NAME for the gateway (default: twistd imgateway's)")
    p.add_argument("--tree", default="", help="the source tree the gateway runs from (default: this one)")
    p.add_argument("--json", action="store_true", help="the whole record on standard output")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    interruptOnSigterm()
    raiseNofile()
    doc = runProbe(args)
    if args.json:
        print(json.dumps(doc), flush=True)
    print(report(doc), file=sys.stderr if args.json else sys.stdout, flush=True)


if __name__ == "__main__":
    main()
