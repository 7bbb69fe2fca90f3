# -*- test-case-name: tests.test_bench_irc_compare -*-
"""
The gateway's IRC side next to a real ircd, in one run (issue 9): one
table of messages through the gateway's IRC face next to the same load run
directly against ngIRCd, and one of native users writing to IRC users on
ngIRCd through their puppets (C{[[irc.network]]}) next to the same IRC
users writing to each other on ngIRCd directly.

    .venv/bin/python bench/irc_compare.py                  # everything, 1 rep: about 5 minutes (fixed-rate runs of 20 s)
    .venv/bin/python bench/irc_compare.py --quick          # under 2 minutes
    .venv/bin/python bench/irc_compare.py --reps 3 --json > irc.json
    .venv/bin/python bench/irc_compare.py --only bridge --only ngircd

Every server is started afresh for each row and rep, on loopback, by this
command: the gateway (C{twistd -n imgateway}, L{bench._gateway}: its IRC
face enabled with its fakelag and per-address limits raised, or its
bridge with a C{[[irc.network]]} to our ngIRCd, flood allowance raised),
and ngIRCd (L{tests.e2e.ircd.IRCdProcess}, the end-to-end tests' ngIRCd,
with its penalties off: L{tests.e2e.ircd.NGIRCD_NO_FLOOD_CONTROL}).

The load is that of C{../shared/peers/load/irc_load.py msg} (pairs of
IRC clients, each with 10 messages outstanding, body C{"<n> <send time,
µs>"}), driven by the project's load driver (C{bench/_loaddriver.py},
C{--proto irc}) because C{irc_load.py} registers with C{NICK} and
C{USER} only, while the gateway's face wants C{PASS user:password}, and
it has no native client for the bridge's senders. When the peers' driver
is there, the row C{peers-load} runs it unchanged against ngIRCd, as a
check that both drivers measure ngIRCd alike. See C{bench/README.md},
section "IRC", for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/irc_compare.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench._gateway import IRC_BENCH_SETTINGS, REPO, GatewayError
from bench._loaddriver import SEND_TICK
from bench._peers import PASSWORD, PREFIX, PeerError, Provision, Server, debianVersion, startGateway

ROWS = ("ngircd", "peers-load", "gateway-irc", "bridge")
ROW_NAMES = {
    "ngircd": "ngIRCd, IRC clients",
    "peers-load": "ngIRCd, peers' irc_load.py",
    "gateway-irc": "imgateway, IRC face",
    "bridge": "imgateway bridge: native → puppet → ngIRCd",
}
#: The rows of each table.
FACE_ROWS = ("ngircd", "peers-load", "gateway-irc")
BRIDGE_ROWS = ("ngircd", "bridge")

def peersLoadPath() -> Path | None:
    """
    @return: The peers' IRC driver (C{../shared/peers/load/irc_load.py},
        from the main checkout or a worktree beside it), used unchanged for
        the row C{peers-load}, if it is there.
    """
    for up in (REPO.parent, REPO.parent.parent):
        candidate = up / "shared" / "peers" / "load" / "irc_load.py"
        if candidate.exists():
            return candidate
    return None

#: The domain that stands for our ngIRCd inside the bridging gateway, and
#: the nicks of the IRC users that the native users write to.
NETWORK_DOMAIN = "bench.irc"
IRC_PREFIX = "irc"

#: What each server's configuration changes from its defaults so that no
#: flood limit is reached (printed, and copied into the JSON).
FLOOD_SETTINGS: dict[str, list[str]] = {
    "gateway IRC face": [f"[irc] {k} = {v}" for k, v in IRC_BENCH_SETTINGS.items()]
    + ["[native]/[limits] as compare.py (bench/_gateway.py benchConfig)"],
    "gateway bridge": [
        "[[irc.network]] flood_burst = 1000000, flood_rate = 1000000 (shipped: 5, 1)",
        "max_puppets = senders + 10 (shipped: 50), max_lines_per_second = 1000000 (shipped: 200), "
        "max_queued_lines = 100000 (shipped: 1000); status_wait 1 s as shipped",
    ],
    "ngircd": ["[Limits] MaxPenaltyTime = 0 (no fake lag), IdleTimeout = 0, MaxConnectionsIP = 0"],
}

#: The figures of a row (the keys of the JSON's C{summary}): key, heading.
METRICS: list[tuple[str, str]] = [
    ("msg_rate", "1:1 msgs/s saturated"),
    ("msg_cpu_us", "server CPU µs/msg"),
    ("rate_p50_ms", "p50 ms @ fixed rate"),
    ("rate_p99_ms", "p99 ms @ fixed rate"),
    ("msg_rss_mib", "server RSS MiB"),
    ("oneway_rate", "one-way msgs/s saturated"),
    ("oneway_cpu_us", "server (gateway) CPU µs/msg, one way"),
    ("oneway_peer_cpu_us", "ngIRCd CPU µs/msg behind the bridge"),
    ("oneway_p50_ms", "one-way p50 ms @ fixed rate"),
    ("oneway_p99_ms", "one-way p99 ms @ fixed rate"),
    ("oneway_rss_mib", "server (gateway) RSS MiB, one way"),
]


def info(text: str) -> None:
    compare.info(text, "irc_compare")


# -- settings ------------------------------------------------------------------------------


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """
    The sizes and times of the runs, from the options (C{--quick} picks
    smaller ones).
    """
    s = compare.trafficSettings(args, quickPairs=10, quickWarmup=1.0)
    s["senders"] = s["pairs"]
    s["oneway_rate"] = 1000.0
    return s


def networkConfig(port: int, senders: int) -> str:
    """
    The C{[[irc.network]]} table of the bridging gateway: our ngIRCd on
    C{port}, its flood allowance out of reach.
    """
    return (
        "[[irc.network]]\n"
        'name = "bench"\n'
        f'domain = "{NETWORK_DOMAIN}"\n'
        f'endpoint = "tcp:127.0.0.1:{port}:timeout=5"\n'
        "flood_burst = 1000000\n"
        "flood_rate = 1000000.0\n"
        f"max_puppets = {senders + 10}\n"
        "max_lines_per_second = 1000000\n"
        "max_queued_lines = 100000\n"
    )


# -- the servers ---------------------------------------------------------------------------


class NgircdServer(Server):
    """
    A fresh ngIRCd (the end-to-end tests' L{tests.e2e.ircd.IRCdProcess}),
    its penalties off.
    """

    name = "ngircd"
    proto = "irc"
    domain = NETWORK_DOMAIN

    def __init__(self) -> None:
        from tests.e2e.ircd import IRCdProcess

        self.ircd = IRCdProcess("ngircd", floodControl=False)
        try:
            self.ircd.startNow()
        except AssertionError as e:
            self.ircd.destroy()
            raise PeerError(str(e)) from None
        assert self.ircd.process is not None
        self.port = self.ircd.port
        self.pid = self.ircd.process.pid

    def stop(self) -> None:
        self.ircd.destroy()


class BridgeServer(Server):
    """
    A gateway (its native face) bridging to a fresh ngIRCd.
    """

    name = "bridge"
    proto = "native"

    def __init__(self, senders: int, keep: bool) -> None:
        self.ngircd = NgircdServer()
        try:
            self.gateway = startGateway("native", Provision(range(senders), []), keep=keep,
                                        ircNetworks=networkConfig(self.ngircd.port, senders))
        except BaseException:
            self.ngircd.stop()
            raise
        self.domain = self.gateway.domain
        self.port = self.gateway.port
        self.pid = self.gateway.pid

    def stop(self) -> None:
        try:
            self.gateway.stop()
        finally:
            self.ngircd.stop()

    def logErrors(self) -> int:
        return self.gateway.logErrors()


def startRow(row: str, s: dict[str, Any], keep: bool) -> Server:
    if row in ("ngircd", "peers-load"):
        return NgircdServer()
    if row == "gateway-irc":
        pairs = s["pairs"]
        return startGateway("irc", Provision(range(2 * pairs), [(2 * i, 2 * i + 1) for i in range(pairs)]), keep=keep)
    return BridgeServer(s["senders"], keep)


# -- running -------------------------------------------------------------------------------


def plannedRuns(row: str, s: dict[str, Any]) -> list[tuple[str, list[str], int]]:
    """
    @return: (run name, driver arguments, driver processes) of the runs of
        a row, in order.
    """
    procs = s["driver_procs"]
    pairs = ["--pairs", str(s["pairs"]), "--window", str(s["window"])]
    oneway = ["--pairs", str(s["senders"]), "--window", str(s["window"]), "--to-proto", "irc",
              "--to-prefix", IRC_PREFIX, "--to-domain", NETWORK_DOMAIN]  # fmt: skip
    # The fixed-rate runs measure over their own window, and this driver's
    # senders wake as compare.py's do (the peers' irc_load.py times its own).
    window = ["--duration", f"{s['rate_duration_s']:g}"]
    if row != "peers-load":
        window += ["--send-tick", f"{s['send_tick_s']:g}"]
    runs: list[tuple[str, list[str], int]] = []
    if row in ("ngircd", "gateway-irc", "peers-load"):
        face = ["--irc-pass"] if row == "gateway-irc" else []
        runs += [("msg", [*pairs, *face], procs), ("rate", [*pairs, *face, *window, "--rate", f"{s['rate']:g}"], procs)]
    if row in ("ngircd", "bridge"):
        runs += [("oneway", oneway, procs), ("oneway_rate", [*oneway, *window, "--rate", f"{s['oneway_rate']:g}"], procs)]
    return runs


def peersLoad(path: Path, server: Server, s: dict[str, Any], extra: Sequence[str], procs: int, timeout: float) -> dict[str, Any]:
    """
    Run the peers' C{irc_load.py msg} (at C{path}) unchanged against ngIRCd.

    @return: Its figures under this driver's names, or C{{"error": ...}}.
    """
    args = list(extra)
    rate = args[args.index("--rate") + 1] if "--rate" in args else None
    duration = args[args.index("--duration") + 1] if "--duration" in args else f"{s['duration_s']:g}"
    cmd = [
        sys.executable, str(path), "msg", "--port", str(server.port), "--pairs", str(s["pairs"]),
        "--window", str(s["window"]), "--duration", duration, "--warmup", f"{s['warmup_s']:g}",
        "--settle", f"{s['settle_s']:g}", "--procs", str(procs), "--server-pid", str(server.pid), "--prefix", "p",
        "--label", "peers-load", *(["--rate", rate] if rate else []),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"irc_load.py took more than {timeout:g} s"}
    try:
        raw: dict[str, Any] = json.loads((done.stdout.strip().splitlines() or ["{}"])[-1])
    except ValueError:
        return {"error": f"unreadable irc_load.py output: {done.stdout[-500:]!r} {done.stderr[-1000:]!r}"}
    if "error" in raw or done.returncode != 0:
        return {"error": str(raw.get("error") or done.stderr[-1500:])}
    return peersRecord(raw, " ".join(cmd[1:]))


def peersRecord(raw: dict[str, Any], cmd: str) -> dict[str, Any]:
    """
    @return: What C{irc_load.py} printed, under the names of
        C{bench/_loaddriver.py}.
    """
    sent, received = raw.get("sent_total"), raw.get("received_total")
    return {
        "test": "msg",
        "delivered": raw.get("delivered"),
        "rate_per_s": raw.get("rate_per_s"),
        "lat_us": raw.get("lat_us") or {},
        "server_cpu_pct": raw.get("server_cpu_pct"),
        "server_cpu_us_per_item": raw.get("server_cpu_us_per_delivery"),
        "server_rss_kb": raw.get("server_rss_kb"),
        "driver_cpu_pct": raw.get("driver_cpu_pct"),
        "other_cpu_pct": raw.get("other_cpu_pct"),
        "errors": raw.get("errors"),
        "undelivered": sent - received if isinstance(sent, int) and isinstance(received, int) else None,
        "cmd": "python " + cmd,
    }


def oneRow(args: argparse.Namespace, s: dict[str, Any], row: str, rep: int) -> list[dict[str, Any]]:
    """
    Start fresh servers for C{row}, run its runs, stop them.

    @return: One record per run.
    """
    runs = plannedRuns(row, s)
    t = time.monotonic()
    try:
        server = startRow(row, s, args.keep)
    except (PeerError, GatewayError, OSError) as e:
        info(f"  {row}: could not start: {e}")
        return [{"row": row, "run": name, "rep": rep, "error": f"server did not start: {str(e)[-1500:]}"} for name, _, _ in runs]
    info(f"  {row}: started (pid {server.pid}, port {server.port}) in {time.monotonic() - t:.1f} s")
    out: list[dict[str, Any]] = []
    timeout = 300 + 30 * max(s["duration_s"], s["rate_duration_s"])
    try:
        for name, extra, procs in runs:
            busy = compare.preBusy(args)
            errors0 = server.logErrors()
            t = time.monotonic()
            if row == "peers-load":
                result = peersLoad(args.peers_load, server, s, extra, procs, timeout)
            else:
                more = list(extra)
                if "--to-proto" in more:
                    ngircd = server.ngircd if isinstance(server, BridgeServer) else server
                    more += ["--to-port", str(ngircd.port)]
                    if isinstance(server, BridgeServer):
                        more += ["--peer-pid", str(ngircd.pid)]
                result = compare.driver(server, s, "msg", more, procs, timeout)
            record = {"row": row, "run": name, "rep": rep, "pre_busy_pct": busy,
                      "wall_s": round(time.monotonic() - t, 1), "server_log_errors": server.logErrors() - errors0}
            record.update(result)
            out.append(record)
            info(f"  {row} {name} rep {rep}: {compare.brief(record)}")
    finally:
        server.stop()
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    s = settings(args)
    records: list[dict[str, Any]] = []
    for rep, row in compare.repsAndRows(args):
        info(f"rep {rep}: {ROW_NAMES[row]}")
        records += oneRow(args, s, row, rep)
    return records


# -- the tables ----------------------------------------------------------------------------


def figuresOf(record: dict[str, Any]) -> dict[str, float]:
    """
    @return: The table's figures that one run gives.
    """
    if "error" in record:
        return {}
    run = record["run"]
    lat = record.get("lat_us") or {}
    rss = record.get("server_rss_kb")
    mib = rss / 1024 if isinstance(rss, (int, float)) else None
    out: dict[str, Any] = {}
    if run == "msg":
        out = {"msg_rate": record.get("rate_per_s"), "msg_cpu_us": record.get("server_cpu_us_per_item"), "msg_rss_mib": mib}
    elif run == "rate":
        out = {"rate_p50_ms": _ms(lat.get("p50")), "rate_p99_ms": _ms(lat.get("p99"))}
    elif run == "oneway":
        out = {"oneway_rate": record.get("rate_per_s"), "oneway_cpu_us": record.get("server_cpu_us_per_item"),
               "oneway_peer_cpu_us": record.get("peer_cpu_us_per_item"), "oneway_rss_mib": mib}
    elif run == "oneway_rate":
        out = {"oneway_p50_ms": _ms(lat.get("p50")), "oneway_p99_ms": _ms(lat.get("p99"))}
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


_ms = compare._ms


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """
    @return: For each row, the median over the reps of each figure.
    """
    return compare.medianFigures(records, figuresOf)


def faceTable(summary: dict[str, dict[str, float]], s: dict[str, Any]) -> str:
    """
    @return: IRC clients 1:1 through each server, as Markdown, with each
        row's CPU per message as a multiple of ngIRCd's.
    """
    heads = ["server", "msgs/s saturated", "server CPU µs/msg (× ngIRCd)", f"p50 / p99 ms @ {s['rate']:,.0f}/s", "server RSS MiB"]
    ref = summary.get("ngircd", {}).get("msg_cpu_us")
    out = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for row in FACE_ROWS:
        f = summary.get(row)
        if f is None:
            continue
        cpu = f.get("msg_cpu_us")
        times = f" (× {cpu / ref:.1f})" if cpu is not None and ref else ""
        out.append(f"| {ROW_NAMES[row]} | {compare._num(f.get('msg_rate'))} | {compare._num(cpu)}{times} | "
                   f"{compare._num(f.get('rate_p50_ms'))} / {compare._num(f.get('rate_p99_ms'))} | {compare._num(f.get('msg_rss_mib'))} |")
    return "\n".join(out)


def bridgeTable(summary: dict[str, dict[str, float]], s: dict[str, Any]) -> str:
    """
    @return: One-way messages to IRC users on ngIRCd, directly and through
        the bridge's puppets, as Markdown.
    """
    heads = ["path", "msgs/s saturated", "gateway CPU µs/msg", "ngIRCd CPU µs/msg",
             f"p50 / p99 ms @ {s['oneway_rate']:,.0f}/s", "gateway (or ngIRCd) RSS MiB"]  # fmt: skip
    names = {"ngircd": "IRC → ngIRCd → IRC (direct)", "bridge": "native → gateway → puppet → ngIRCd → IRC"}
    out = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for row in BRIDGE_ROWS:
        f = summary.get(row)
        if f is None or "oneway_rate" not in f and "oneway_p50_ms" not in f:
            continue
        if row == "ngircd":
            gateway, ircd = None, f.get("oneway_cpu_us")
        else:
            gateway, ircd = f.get("oneway_cpu_us"), f.get("oneway_peer_cpu_us")
        out.append(f"| {names[row]} | {compare._num(f.get('oneway_rate'))} | {compare._num(gateway)} | {compare._num(ircd)} | "
                   f"{compare._num(f.get('oneway_p50_ms'))} / {compare._num(f.get('oneway_p99_ms'))} | "
                   f"{compare._num(f.get('oneway_rss_mib'))} |")
    return "\n".join(out)


def versions() -> dict[str, Any]:
    v = compare.versions()
    for peer in ("prosody", "ejabberd", "erlang"):
        v.pop(peer, None)
    v["ngircd"] = debianVersion("ngircd")
    return v


def document(args: argparse.Namespace, records: list[dict[str, Any]], started: float) -> dict[str, Any]:
    return compare.documentOf("irc_compare", args, started, versions(), settings(args), FLOOD_SETTINGS, ROWS,
                              dict(METRICS), summarise(records), records)  # fmt: skip


def report(doc: dict[str, Any]) -> str:
    """
    @return: The whole report as Markdown: the machine and versions, the
        two tables, how the cores were shared.
    """
    s, m, v = doc["settings"], doc["machine"], doc["versions"]
    head = [
        *compare.reportHead(doc, f"ngIRCd {v['ngircd']}"),
        f"Load: {s['pairs']} pairs of IRC clients, {s['window']} messages outstanding per sender, windows of "
        f"{s['duration_s']:g} s after {s['warmup_s']:g} s; fixed rate {s['rate']:,.0f} msgs/s for "
        f"{s['rate_duration_s']:g} s, {compare.rateSending(s)}; one way: {s['senders']} senders, fixed rate "
        f"{s['oneway_rate']:,.0f} msgs/s for {s['rate_duration_s']:g} s; {s['driver_procs']} driver processes",
    ]
    summary = doc["summary"]
    return "\n".join([
        *head, "", "IRC clients, 1:1 both ways (the load of irc_load.py msg):", "", faceTable(summary, s), "",
        "One way to IRC users on ngIRCd: directly, and from native users through their puppets:", "",
        bridgeTable(summary, s), "",
        f"How the cores were shared (medians; % of one core, the machine has {m['cores'] * 100} %; the bridge's "
        "ngIRCd is not in others' CPU but apart, peer_cpu_pct in the JSON):", "",
        compare.cpuTable(doc["runs"], ROW_NAMES),
    ])  # fmt: skip


# -- main ----------------------------------------------------------------------------------


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The gateway's IRC face and IRC bridge next to ngIRCd, one load driver, one table.")
    p.add_argument("--quick", action="store_true", help="smaller and shorter (under 2 minutes): 10 pairs, 2 s windows")
    p.add_argument("--reps", type=int, default=1, help="repetitions, each on fresh servers; the tables show medians (default 1)")
    p.add_argument("--only", action="append", default=[], metavar="ROW",
                   help=f"rows to run: {', '.join(ROWS)} (repeatable; default all, peers-load when irc_load.py is found)")
    p.add_argument("--peers-load", type=Path, default=None,
                   help="the peers' irc_load.py (default: ../shared/peers/load/irc_load.py beside the checkout, if there)")
    p.add_argument("--json", action="store_true", help="print the JSON document on standard output (the tables go to standard error)")
    p.add_argument("--pairs", type=int, default=None, help="pairs of IRC clients, and one-way senders (default 50; --quick 10)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds of each saturated run (default 10; --quick 2)")
    p.add_argument("--rate-duration", type=float, default=None,
                   help="measured seconds of each fixed-rate run (default 20; --quick 2; --duration sets both)")
    p.add_argument("--send-tick", type=float, default=SEND_TICK,
                   help=f"fixed-rate runs: the driver wakes every this many seconds and sends what fell due (default "
                   f"{SEND_TICK:g}); 0: each message at its own due time (not the peers-load row: irc_load.py times its own)")
    p.add_argument("--driver-procs", type=int, default=2, help="driver processes (default 2)")
    p.add_argument("--quiet-pct", type=float, default=0.0, help="before each run wait until the machine is below this busy %% "
                   "of one core (default 0: do not wait, only record others' CPU)")
    p.add_argument("--max-wait", type=float, default=60.0, help="longest such wait, in seconds")
    p.add_argument("--keep", action="store_true", help="keep the gateways' temporary folders (logs)")
    args = p.parse_args(argv)
    for row in args.only:
        if row not in ROWS:
            p.error(f"unknown row {row!r} (choose from {', '.join(ROWS)})")
    if args.peers_load is None:
        args.peers_load = peersLoadPath()
    elif not args.peers_load.exists():
        p.error(f"no such file: {args.peers_load}")
    if not args.only:
        args.only = [r for r in ROWS if r != "peers-load" or args.peers_load is not None]
    args.only = [r for r in ROWS if r in args.only]
    if "peers-load" in args.only and args.peers_load is None:
        p.error("the row peers-load needs the peers' irc_load.py (--peers-load)")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.pairs is not None and args.pairs < 1:
        p.error("--pairs must be at least 1")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    compare.runBench("irc_compare", parseArgs(argv), FLOOD_SETTINGS, run, document, report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
