# -*- test-case-name: tests.test_bench_compare -*-
"""
One side-by-side benchmark of the gateway (native face and XMPP c2s face)
against Prosody and ejabberd, all driven by the same load driver
(C{bench/_loaddriver.py}) and measured the same way; one table with a row
per server and face, each figure also as a ratio to Prosody's and to
ejabberd's (issue 11).

    .venv/bin/python bench/compare.py                  # everything, 1 rep: about 10 minutes
    .venv/bin/python bench/compare.py --reps 3 --json > compare.json
    .venv/bin/python bench/compare.py --quick          # 2-3 minutes, for checking a change
    .venv/bin/python bench/compare.py --quick --only gateway-native --tests msg
    .venv/bin/python bench/compare.py --quick --only gateway --build-compiled   # and the compiled build's rows

Each server runs alone, one after the other on the same cores, started
afresh (C{bench/_peers.py}): for each row and rep, a server for the
1,000-session idle run followed by the traffic runs (1:1 messages closed
loop, at a fixed 2,000/s, presence fan-out, SCRAM-SHA-1 and PLAIN logins),
then a fresh one for the 10,000-session idle run. See C{bench/README.md},
section "compare.py", for what each figure is and how it is measured, and
C{docs/performance.md} for the latest table.

With C{--compiled TREE} (a copy of the source tree built in place with
C{IMGATEWAY_COMPILE=1}, as C{run-tests.sh} makes in C{build/compiled/}) or
C{--build-compiled} (such a copy made in a temporary folder first), each
gateway row gets a twin that runs the gateway from that tree: the compiled
build (C{docs/performance.md}, "The compiled build") next to the default
pure-Python one, alternated like every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/compare.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import REPO, GatewayError, interruptedStatus, interruptOnSigterm
from bench._loaddriver import SEND_TICK
from bench._proc import machineBusyS, raiseNofile
from bench._peers import (
    FLOOD_SETTINGS,
    ITERATIONS,
    PASSWORD,
    PREFIX,
    PeerError,
    Provision,
    Server,
    circulant,
    debianVersion,
    startServer,
)

ROWS = ("gateway-native", "gateway-xmpp", "prosody", "ejabberd")
#: The compiled build's rows (C{--compiled}, C{--build-compiled}), each
#: with the row it is the twin of.
COMPILED_ROWS = {"gateway-native-compiled": "gateway-native", "gateway-xmpp-compiled": "gateway-xmpp"}
#: Every row, in the order of the table: each compiled row after its twin.
ALL_ROWS = ("gateway-native", "gateway-native-compiled", "gateway-xmpp", "gateway-xmpp-compiled", "prosody", "ejabberd")
ROW_NAMES = {
    "gateway-native": "imgateway, native face",
    "gateway-native-compiled": "imgateway, native face, compiled",
    "gateway-xmpp": "imgateway, XMPP c2s face",
    "gateway-xmpp-compiled": "imgateway, XMPP c2s face, compiled",
    "prosody": "Prosody",
    "ejabberd": "ejabberd",
}
TESTS = ("idle", "msg", "rate", "presence", "login")

#: Account numbers (C{user<n>}, password C{pw}) on every server.
MSG_FIRST = 0  # msg pairs: 0 .. 2P-1
PRESENCE_FIRST = 500  # the user who changes state, then its contacts
LOGIN_FIRST = 1000  # the login test's accounts; the idle warm-up uses the first ones
IDLE_FIRST = 2000  # idle sessions

#: The figures of a row (the keys of the JSON's C{summary}): key, what it
#: is, whether more is better.
METRICS: list[tuple[str, str, bool]] = [
    ("msg_cpu_us", "1:1 CPU µs/msg", False),
    ("msg_rate", "1:1 msgs/s saturated", True),
    ("rate_p50_ms", "p50 ms @ fixed rate", False),
    ("rate_p99_ms", "p99 ms @ fixed rate", False),
    ("presence_cpu_us", "presence CPU µs/delivery", False),
    ("scram_logins_s", "SCRAM-SHA-1 logins/s", True),
    ("scram_cpu_us", "SCRAM-SHA-1 CPU µs/login", False),
    ("plain_logins_s", "PLAIN logins/s", True),
    ("plain_cpu_us", "PLAIN CPU µs/login", False),
    ("idle1_kib", "KiB/session (1st idle size)", False),
    ("idle1_mib", "process MiB (1st idle size)", False),
    ("idle2_kib", "KiB/session (2nd idle size)", False),
    ("idle2_mib", "process MiB (2nd idle size)", False),
]


def info(text: str, bench: str = "compare") -> None:
    """
    A line of progress on standard error, prefixed with C{bench}'s name.
    """
    print(f"[{bench}] {text}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """
    The sizes and times of the runs, from the options (C{--quick} picks
    smaller ones).
    """
    quick = args.quick
    s = trafficSettings(args, quickPairs=20, quickWarmup=0.5)
    s.update({
        "presence_contacts": 200,
        "presence_window": 2,
        "presence_answers": args.presence_answers,
        "login_accounts": 200,
        "login_concurrency": 20,
        "idle_sizes": [1000] if quick else [1000, 10000],
        "idle_contacts": 20,
        "idle_warmup_logins": 50,
        # Past the XMPP face's idle parser drop (2-4 s after a session's
        # last byte) and the heap trim after it (10 s later): the idle
        # state a server stays in, not the last logins' leftovers.
        "idle_settle_s": 1.0 if quick else 15.0,
        "scram_iterations": ITERATIONS,
    })  # fmt: skip
    if args.idle_sizes is not None:
        s["idle_sizes"] = args.idle_sizes
    return s


def trafficSettings(args: argparse.Namespace, quickPairs: int, quickWarmup: float) -> dict[str, Any]:
    """
    The settings of message traffic that C{compare.py} and
    C{irc_compare.py} share: pairs (50, or C{quickPairs} with C{--quick}),
    the windows (10 s after 2 s, or 2 s after C{quickWarmup}), the settle
    time, the closed-loop window, the fixed rate (2,000 msgs/s) with its
    own window (20 s, or 2 s with C{--quick}: the rate's p99 is read from
    the slowest 1 % of its messages, 400 of them in 20 s) and how its
    senders are timed, and the driver processes; C{--pairs},
    C{--duration}, C{--rate-duration} and C{--send-tick} override theirs.
    """
    quick = args.quick
    s: dict[str, Any] = {
        "pairs": quickPairs if quick else 50,
        "duration_s": 2.0 if quick else 10.0,
        "warmup_s": quickWarmup if quick else 2.0,
        "settle_s": 0.3 if quick else 1.0,
        "window": 10,
        "rate": 2000.0,
        "rate_duration_s": 2.0 if quick else 20.0,
        "send_tick_s": getattr(args, "send_tick", SEND_TICK),
        "driver_procs": args.driver_procs,
    }
    if args.pairs is not None:
        s["pairs"] = args.pairs
    if args.duration is not None:
        s["duration_s"] = s["rate_duration_s"] = args.duration
    if getattr(args, "rate_duration", None) is not None:
        s["rate_duration_s"] = args.rate_duration
    return s


def provisions(s: dict[str, Any], tests: Sequence[str]) -> tuple[Provision, list[Provision]]:
    """
    @return: What the traffic server gets (with the first idle size), and
        what each later idle server gets.
    """
    login = list(range(LOGIN_FIRST, LOGIN_FIRST + max(s["login_accounts"], s["idle_warmup_logins"])))
    accounts = list(range(MSG_FIRST, MSG_FIRST + 2 * s["pairs"])) + login
    center = PRESENCE_FIRST
    contacts = list(range(center + 1, center + 1 + s["presence_contacts"]))
    pairs: list[tuple[int, int]] = []
    if "presence" in tests:
        accounts += [center, *contacts]
        pairs += [(center, c) for c in contacts]
    sizes = s["idle_sizes"] if "idle" in tests else []
    if sizes:
        accounts += list(range(IDLE_FIRST, IDLE_FIRST + sizes[0]))
        pairs += circulant(IDLE_FIRST, sizes[0], s["idle_contacts"])
    later = [
        Provision(login + list(range(IDLE_FIRST, IDLE_FIRST + n)), circulant(IDLE_FIRST, n, s["idle_contacts"]))
        for n in sizes[1:]
    ]
    return Provision(accounts, pairs), later


# -- running -------------------------------------------------------------------------------


def driver(server: Server, s: dict[str, Any], test: str, extra: Sequence[str], procs: int, timeout: float) -> dict[str, Any]:
    """
    Run C{bench/_loaddriver.py} once against C{server}.

    @return: Its JSON line, or C{{"error": ...}}.
    """
    cmd = [
        sys.executable, "-m", "bench._loaddriver", test,
        "--proto", server.proto, "--port", str(server.port), "--domain", server.domain,
        "--prefix", PREFIX, "--password", PASSWORD, "--server-pid", str(server.pid),
        "--duration", f"{s['duration_s']:g}", "--warmup", f"{s['warmup_s']:g}", "--settle", f"{s['settle_s']:g}",
        "--procs", str(procs), "--label", server.name, *extra,
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    except subprocess.TimeoutExpired:
        return {"error": f"the driver took more than {timeout:g} s"}
    lines = done.stdout.strip().splitlines() or ["{}"]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        result = {"error": f"unreadable driver output: {done.stdout[-500:]!r}"}
    if done.returncode != 0 and "error" not in result:
        result["error"] = f"driver exit status {done.returncode}: {done.stderr[-1500:]}"
    if done.stderr.strip():
        result["driver_stderr"] = done.stderr.strip()[-600:]
    result["cmd"] = "python -m bench._loaddriver " + " ".join(cmd[4:])
    return result


def plannedRuns(s: dict[str, Any], tests: Sequence[str], idleSize: int | None) -> list[tuple[str, str, list[str], int]]:
    """
    @return: (run name, driver test, driver arguments, driver processes) of
        the runs on one server, in order: the idle run first, while the
        server is fresh.
    """
    procs = s["driver_procs"]
    runs: list[tuple[str, str, list[str], int]] = []
    if idleSize:
        runs.append((f"idle{idleSize}", "idle", [
            "--first", str(IDLE_FIRST), "--users", str(idleSize), "--mech", "SCRAM-SHA-1",
            "--warm-first", str(LOGIN_FIRST), "--warm-users", str(s["idle_warmup_logins"]),
            "--login-concurrency", "50", "--settle", f"{s['idle_settle_s']:g}",
        ], procs))  # fmt: skip
        return runs
    pairs = ["--first", str(MSG_FIRST), "--pairs", str(s["pairs"]), "--window", str(s["window"])]
    if "msg" in tests:
        runs.append(("msg", "msg", pairs, procs))
    if "rate" in tests:
        runs.append(("rate", "msg", [*pairs, "--rate", f"{s['rate']:g}", "--duration", f"{s['rate_duration_s']:g}",
                                     "--send-tick", f"{s['send_tick_s']:g}"], procs))
    if "presence" in tests:
        runs.append(("presence", "presence", [
            "--first", str(PRESENCE_FIRST), "--users", str(s["presence_contacts"]), "--window", str(s["presence_window"]),
            "--presence-answers", s.get("presence_answers", "none"),
        ], 1))  # fmt: skip
    if "login" in tests:
        for mech, name in (("SCRAM-SHA-1", "login_scram"), ("PLAIN", "login_plain")):
            runs.append((name, "login", [
                "--first", str(LOGIN_FIRST), "--users", str(s["login_accounts"]), "--mech", mech,
                "--concurrency", str(s["login_concurrency"]),
            ], procs))  # fmt: skip
    return runs


def firstServerRuns(s: dict[str, Any], tests: Sequence[str]) -> list[tuple[str, str, list[str], int]]:
    """
    @return: The runs on the first server started for a row: the first idle
        size's run (if C{tests} has C{idle}), then the traffic runs, each
        once.
    """
    sizes = s["idle_sizes"] if "idle" in tests else []
    return (plannedRuns(s, tests, sizes[0]) if sizes else []) + plannedRuns(s, tests, None)


def oneServer(args: argparse.Namespace, s: dict[str, Any], row: str, rep: int, provision: Provision,
              runs: list[tuple[str, str, list[str], int]]) -> list[dict[str, Any]]:
    """
    Start a fresh server for C{row}, run C{runs} against it, stop it.

    @return: One record per run.
    """
    out: list[dict[str, Any]] = []
    t = time.monotonic()
    try:
        tree = args.compiledTree if row in COMPILED_ROWS else None
        server = startServer(COMPILED_ROWS.get(row, row), provision, keep=args.keep, tree=tree)
    except (PeerError, GatewayError, OSError) as e:
        info(f"  {row}: could not start: {e}")
        return [{"row": row, "run": name, "rep": rep, "error": f"server did not start: {str(e)[-1500:]}"}
                for name, _, _, _ in runs]
    info(f"  {row}: started (pid {server.pid}, port {server.port}, {len(provision.accounts)} accounts, "
         f"{len(provision.pairs)} mutual contacts) in {time.monotonic() - t:.1f} s")
    try:
        for name, test, extra, procs in runs:
            busy = preBusy(args)
            errors0 = server.logErrors()
            t = time.monotonic()
            result = driver(server, s, test, extra, procs, timeout=900 + 30 * max(s["duration_s"], s["rate_duration_s"]))
            record = {"row": row, "run": name, "rep": rep, "pre_busy_pct": busy,
                      "wall_s": round(time.monotonic() - t, 1), "server_log_errors": server.logErrors() - errors0}
            record.update(result)
            out.append(record)
            info(f"  {row} {name} rep {rep}: {brief(record)}")
    finally:
        server.stop()
    return out


def preBusy(args: argparse.Namespace) -> float | None:
    """
    With C{--quiet-pct}: wait up to C{--max-wait} s for the machine's busy
    CPU over a second to fall under it, and return the last figure (% of
    one core). Without: C{None} at once (each run records the CPU that
    others used during its own window anyway: C{other_cpu_pct}).
    """
    if not args.quiet_pct:
        return None
    t = time.monotonic()
    while True:
        b0, m0 = machineBusyS(), time.monotonic()
        time.sleep(1.0)
        b1, m1 = machineBusyS(), time.monotonic()
        if b0 is None or b1 is None:
            return None
        busy = round(100 * (b1 - b0) / (m1 - m0), 1)
        if busy < args.quiet_pct or time.monotonic() - t > args.max_wait:
            return busy


def brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + str(r["error"])[:400]
    parts = []
    if r.get("test") == "idle":
        parts.append(f"{r.get('alive')} sessions, {r.get('rss_per_session_kb')} KiB/session, "
                     f"RSS {kib(r.get('server_rss_base_kb'))} -> {kib(r.get('server_rss_kb'))} MiB, "
                     f"{r.get('logins_per_s')} logins/s")
    elif r.get("test") == "login":
        parts.append(f"{r.get('logins_per_s')} logins/s, {r.get('server_cpu_us_per_item')} µs/login")
    else:
        lat = r.get("lat_us") or {}
        parts.append(f"{r.get('rate_per_s')}/s, {r.get('server_cpu_us_per_item')} µs/delivery, "
                     f"p50 {lat.get('p50', 0) / 1000:.1f} p99 {lat.get('p99', 0) / 1000:.1f} ms, "
                     f"undelivered {r.get('undelivered')}")
    parts.append(f"CPU server {r.get('server_cpu_pct')} % drivers {r.get('driver_cpu_pct')} % others {r.get('other_cpu_pct')} %")
    problems = {k: r.get(k) for k in ("errors", "stalls", "disconnects", "server_log_errors") if r.get(k)}
    if problems:
        parts.append(f"PROBLEMS {problems}")
    return "; ".join(parts)


def kib(v: Any) -> str:
    return f"{v / 1024:.1f}" if isinstance(v, (int, float)) else "-"


# -- the compiled build ---------------------------------------------------------------------

#: What a tree of the compiled build needs of the source tree.
TREE_PARTS = ("imgateway", "twisted", "etc", "setup.py", "setup.cfg", "pyproject.toml", "README.md")


def compiledModulesOf(tree: Path) -> list[str]:
    """
    The modules of a tree's compiled build, checked to be built.

    @param tree: A source tree (its C{imgateway/_compiled.py} names the
        modules, as paths from the top).
    @return: Those paths.
    @raise GatewayError: If the tree has no such list, or a module of it
        has no C extension beside its source (the tree was not built with
        C{IMGATEWAY_COMPILE=1 python setup.py build_ext --inplace}).
    """
    listing = tree / "imgateway" / "_compiled.py"
    try:
        modules = list(runpy.run_path(str(listing))["COMPILED_MODULES"])
    except (OSError, KeyError, SyntaxError) as e:
        raise GatewayError(f"{tree} is not a source tree of imgateway with a compiled build ({listing}: {e})") from None
    missing = [
        path for path in modules
        if not any((tree / (path.removesuffix(".py") + suffix)).exists() for suffix in EXTENSION_SUFFIXES)
    ]  # fmt: skip
    if missing:
        raise GatewayError(
            f"{tree} is not built: no C extension for {', '.join(missing)} (build it in place with"
            " IMGATEWAY_COMPILE=1 .venv/bin/python setup.py build_ext --inplace, or use --build-compiled)"
        )
    return modules


def buildCommand() -> list[str]:
    """
    @return: The command that builds the compiled modules of a copy of the
        tree in place (in that copy's folder, with C{IMGATEWAY_COMPILE=1}).
    """
    return [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]


def buildCompiledTree(dest: Path, source: Path = REPO, timeout: float = 1800.0) -> None:
    """
    Copy what the gateway needs of C{source} to C{dest} and build its
    compiled modules in place there, as C{run-tests.sh} does.

    @raise GatewayError: If the build fails (with the tail of its output).
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "dropin.cache", "_trial_temp*")
    for part in TREE_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part, ignore=ignore)
        elif (source / part).exists():
            shutil.copy2(source / part, dest / part)
    try:
        done = subprocess.run(buildCommand(), cwd=str(dest), capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, IMGATEWAY_COMPILE="1"))
    except subprocess.TimeoutExpired:
        raise GatewayError(f"building the compiled tree took more than {timeout:g} s") from None
    if done.returncode != 0:
        raise GatewayError(f"building the compiled tree failed:\n{(done.stdout + done.stderr)[-3000:]}")


@contextmanager
def compiledTree(args: argparse.Namespace) -> Iterator[None]:
    """
    Set C{args.compiledTree} and C{args.compiledModules} for the run: the
    tree of C{--compiled}, or one built in a temporary folder for
    C{--build-compiled} (removed afterwards, unless C{--keep}); C{None} and
    an empty list without either.
    """
    args.compiledModules = []
    if args.build_compiled:
        folder = Path(tempfile.mkdtemp(prefix="imgw-compiled-"))
        try:
            t = time.monotonic()
            info(f"building the compiled tree in {folder}")
            buildCompiledTree(folder)
            info(f"built in {time.monotonic() - t:.0f} s")
            args.compiledTree = folder
            args.compiledModules = compiledModulesOf(folder)
            yield
        finally:
            if args.keep:
                info(f"kept the compiled tree: {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return
    args.compiledTree = args.compiled
    if args.compiled is not None:
        args.compiledModules = compiledModulesOf(args.compiled)
    yield


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    s = settings(args)
    tests = args.tests or list(TESTS)
    traffic, later = provisions(s, tests)
    records: list[dict[str, Any]] = []
    for rep, row in repsAndRows(args):
        info(f"rep {rep}: {ROW_NAMES[row]}")
        sizes = s["idle_sizes"] if "idle" in tests else []
        records += oneServer(args, s, row, rep, traffic, firstServerRuns(s, tests))
        for size, provision in zip(sizes[1:], later):
            records += oneServer(args, s, row, rep, provision, plannedRuns(s, tests, size))
    return records


def repsAndRows(args: argparse.Namespace) -> Iterator[tuple[int, str]]:
    """
    Each rep (C{--reps}) and row (C{--only}) to run, in order: the rows in
    their order, reversed every other rep (who goes first changes).
    """
    for rep in range(1, args.reps + 1):
        rows = list(args.only)
        if rep % 2 == 0:
            rows.reverse()
        for row in rows:
            yield rep, row


# -- the table -----------------------------------------------------------------------------


def figuresOf(record: dict[str, Any], idleSizes: Sequence[int]) -> dict[str, float]:
    """
    @return: The table's figures that one run gives.
    """
    if "error" in record:
        return {}
    run = record["run"]
    out: dict[str, float | None] = {}
    if run == "msg":
        out = {"msg_cpu_us": record.get("server_cpu_us_per_item"), "msg_rate": record.get("rate_per_s")}
    elif run == "rate":
        lat = record.get("lat_us") or {}
        out = {"rate_p50_ms": _ms(lat.get("p50")), "rate_p99_ms": _ms(lat.get("p99"))}
    elif run == "presence":
        out = {"presence_cpu_us": record.get("server_cpu_us_per_item")}
    elif run in ("login_scram", "login_plain"):
        mech = run.split("_")[1]
        out = {f"{mech}_logins_s": record.get("logins_per_s"), f"{mech}_cpu_us": record.get("server_cpu_us_per_item")}
    elif run.startswith("idle"):
        size = int(run[4:])
        which = "idle1" if idleSizes and size == idleSizes[0] else "idle2"
        rss = record.get("server_rss_kb")
        out = {f"{which}_kib": record.get("rss_per_session_kb"),
               f"{which}_mib": rss / 1024 if isinstance(rss, (int, float)) else None}
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def _ms(us: Any) -> float | None:
    return us / 1000 if isinstance(us, (int, float)) else None


def medianFigures(
    records: Sequence[dict[str, Any]], figures: Callable[[dict[str, Any]], dict[str, float]]
) -> dict[str, dict[str, float]]:
    """
    @param figures: The figures one run's record gives.
    @return: For each row, the median over the reps of each figure.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for key, v in figures(r).items():
            values.setdefault(r["row"], {}).setdefault(key, []).append(v)
    return {row: {k: statistics.median(vs) for k, vs in figs.items()} for row, figs in values.items()}


def summarise(records: Sequence[dict[str, Any]], idleSizes: Sequence[int]) -> dict[str, dict[str, float]]:
    """
    @return: For each row, the median over the reps of each figure.
    """
    return medianFigures(records, lambda r: figuresOf(r, idleSizes))


def compiledRatios(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """
    @return: For each compiled row, each figure divided by its twin's (the
        same face in pure Python), where both have it.
    """
    out: dict[str, dict[str, float]] = {}
    for row, twin in COMPILED_ROWS.items():
        for key, v in summary.get(row, {}).items():
            ref = summary.get(twin, {}).get(key)
            if ref:
                out.setdefault(row, {})[key] = v / ref
    return out


def compiledTable(cratios: dict[str, dict[str, float]]) -> str:
    """
    @return: L{compiledRatios} as Markdown (an empty string without them).
    """
    if not cratios:
        return ""
    out = ["Compiled ÷ pure Python (each compiled row's figure divided by its twin's):", "",
           "| server / face | " + " | ".join(heading for _, heading, _ in METRICS) + " |",
           "|---" * (len(METRICS) + 1) + "|"]
    for row in ALL_ROWS:
        if row in cratios:
            out.append(f"| {ROW_NAMES[row]} | " + " | ".join(_ratio(cratios[row].get(key)) for key, _, _ in METRICS) + " |")
    return "\n".join(out)


def ratios(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """
    @return: For each row and figure, the figure divided by Prosody's and
        by ejabberd's (C{{"prosody": x, "ejabberd": y}}, where they have
        it).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row, figs in summary.items():
        for key, v in figs.items():
            for peer in ("prosody", "ejabberd"):
                ref = summary.get(peer, {}).get(key)
                if ref:
                    out.setdefault(row, {}).setdefault(key, {})[peer] = v / ref
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(summary: dict[str, dict[str, float]], rts: dict[str, dict[str, dict[str, float]]], s: dict[str, Any],
          rows: Sequence[str] = ALL_ROWS) -> str:
    """
    @return: The figures as Markdown, then their ratios to Prosody's and
        ejabberd's.
    """
    sizes = s["idle_sizes"]
    heads = [
        "1:1 CPU µs/msg", "1:1 msgs/s saturated", f"p50 / p99 ms @ {s['rate']:,.0f}/s", "presence CPU µs/delivery",
        "SCRAM-SHA-1 logins/s (CPU µs/login)", "PLAIN logins/s (CPU µs/login)",
    ] + [f"KiB/session @ {n:,} (process MiB)" for n in sizes]  # fmt: skip

    def cells(f: dict[str, float], fmt: Any) -> list[str]:
        c = [
            fmt(f.get("msg_cpu_us")), fmt(f.get("msg_rate")),
            f"{fmt(f.get('rate_p50_ms'))} / {fmt(f.get('rate_p99_ms'))}", fmt(f.get("presence_cpu_us")),
            f"{fmt(f.get('scram_logins_s'))} ({fmt(f.get('scram_cpu_us'))})",
            f"{fmt(f.get('plain_logins_s'))} ({fmt(f.get('plain_cpu_us'))})",
        ]  # fmt: skip
        for i, _ in enumerate(sizes[:2]):
            c.append(f"{fmt(f.get(f'idle{i + 1}_kib'))} ({fmt(f.get(f'idle{i + 1}_mib'))})")
        return c

    present = [r for r in rows if r in summary]
    out = ["| server / face | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for row in present:
        out.append(f"| {ROW_NAMES[row]} | " + " | ".join(cells(summary[row], _num)) + " |")
    if any(rts.get(r) for r in present):
        out += ["", "Ratios: each figure divided by Prosody's / by ejabberd's (lower is better except msgs/s and logins/s):", "",
                "| server / face | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for row in present:
            out.append(f"| {ROW_NAMES[row]} | " + " | ".join(_ratioCells(rts.get(row, {}), sizes)) + " |")
    return "\n".join(out)


def _ratio(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2g}" if v < 0.1 else f"{v:.2f}"


def _ratioCells(r: dict[str, dict[str, float]], sizes: Sequence[int]) -> list[str]:
    def one(key: str) -> str:
        v = r.get(key)
        return "–" if not v else f"{_ratio(v.get('prosody'))} / {_ratio(v.get('ejabberd'))}"

    c = [
        one("msg_cpu_us"), one("msg_rate"), f"{one('rate_p50_ms')}; {one('rate_p99_ms')}", one("presence_cpu_us"),
        f"{one('scram_logins_s')} ({one('scram_cpu_us')})", f"{one('plain_logins_s')} ({one('plain_cpu_us')})",
    ]  # fmt: skip
    for i, _ in enumerate(sizes[:2]):
        c.append(f"{one(f'idle{i + 1}_kib')} ({one(f'idle{i + 1}_mib')})")
    return c


def cpuTable(records: Sequence[dict[str, Any]], names: dict[str, str] = ROW_NAMES) -> str:
    """
    @param names: What each row is called (C{bench/irc_compare.py} has rows
        of its own).
    @return: How the cores were shared in each run (medians over the reps),
        and what went wrong, as Markdown.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["row"], r["run"]), []).append(r)
    out = ["| server / face | run | server CPU % | driver CPU % (per process) | others' CPU % | driver CPU µs/item | problems |",
           "|---|---|---|---|---|---|---|"]
    for (row, run), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        problems = []
        failed = len(rs) - len(ok)
        if failed:
            problems.append(f"{failed} failed: {str(next(r for r in rs if 'error' in r)['error'])[:120]}")
        for key in ("undelivered", "errors", "stalls", "disconnects", "server_log_errors"):
            total = sum(r.get(key) or 0 for r in ok)
            if total:
                problems.append(f"{key} {total}")
        med = lambda key: _median([r.get(key) for r in ok])  # noqa: E731
        drivers = [r.get("driver_cpu_pct") or [] for r in ok]
        driverText = " + ".join(_num(_median([d[i] for d in drivers if len(d) > i])) for i in range(max((len(d) for d in drivers), default=0)))
        out.append(f"| {names.get(row, row)} | {run} | {_num(med('server_cpu_pct'))} | {driverText or '–'} "
                   f"| {_num(med('other_cpu_pct'))} | {_num(_median([r.get('driver_cpu_us_per_item') for r in ok]))} "
                   f"| {'; '.join(problems) or '–'} |")
    return "\n".join(out)


def _median(values: Sequence[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(xs) if xs else None


# -- the machine and versions --------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": mem, "kernel": platform.release(),
            "loadavg": os.getloadavg()}


def versions() -> dict[str, Any]:
    from twisted import __version__ as twisted

    from imgateway import __version__ as imgateway

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO),
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {"imgateway": imgateway, "commit": commit, "python": platform.python_version(), "twisted": twisted,
            "prosody": debianVersion("prosody"), "ejabberd": debianVersion("ejabberd"),
            "erlang": debianVersion("erlang-base")}


def document(args: argparse.Namespace, records: list[dict[str, Any]], started: float) -> dict[str, Any]:
    s = settings(args)
    summary = summarise(records, s["idle_sizes"])
    doc = documentOf("compare", args, started, versions(), s, FLOOD_SETTINGS, ALL_ROWS,
                     {key: heading for key, heading, _ in METRICS}, summary, records)  # fmt: skip
    doc["ratios"] = ratios(summary)
    doc["compiled"] = ({"tree": str(args.compiledTree), "built": bool(args.build_compiled),
                        "modules": list(args.compiledModules)} if args.compiledTree is not None else None)
    doc["compiled_ratios"] = compiledRatios(summary)
    return doc


def documentOf(bench: str, args: argparse.Namespace, started: float, versions: dict[str, Any], settings: dict[str, Any],
               flood: dict[str, list[str]], rows: Sequence[str], figures: dict[str, str], summary: dict[str, dict[str, float]],
               records: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """
    The JSON document of C{bench/<bench>.py}: the command, its wall time,
    the machine, the versions, the settings and flood settings, the rows
    run (in C{rows}' order), the figures' headings, the medians and every
    run's record.
    """
    return {
        "bench": bench,
        "command": " ".join([f"bench/{bench}.py", *args.argv]),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "versions": versions,
        "settings": settings,
        "flood_settings": flood,
        "rows": [r for r in rows if r in args.only],
        "figures": figures,
        "summary": summary,
        "runs": records,
    }


def reportHead(doc: dict[str, Any], peers: str) -> list[str]:
    """
    The first lines of a report: the command, its wall time and the reps;
    the machine; the versions (the gateway's, then C{peers}).
    """
    m, v = doc["machine"], doc["versions"]
    reps = max((r.get("rep", 1) for r in doc["runs"]), default=1)
    return [
        f"`{doc['command']}` ({doc['wall_s']:.0f} s); reps: medians of {reps}",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, load average before "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}",
        f"Versions: imgateway {v['imgateway']} ({v['commit']}), Python {v['python']}, Twisted {v['twisted']}; {peers}",
    ]


def rateSending(s: dict[str, Any]) -> str:
    """
    @return: How the fixed-rate run's driver timed its messages.
    """
    tick = s.get("send_tick_s")
    return f"sent on a {1000 * tick:g} ms tick" if tick else "each message sent when due"


def rateSpread(records: Sequence[dict[str, Any]], names: dict[str, str] = ROW_NAMES) -> str:
    """
    @return: Each row's p99 at the fixed rate in every rep, in the reps'
        order (the table gives their median), or C{""} with one rep.
    """
    reps: dict[str, list[float]] = {}
    byRep: dict[tuple[str, int], float] = {}
    for r in records:
        p99 = (r.get("lat_us") or {}).get("p99") if r.get("run") == "rate" and "error" not in r else None
        if isinstance(p99, (int, float)):
            reps.setdefault(r["row"], []).append(p99 / 1000)
            byRep[r["row"], r.get("rep", 1)] = p99 / 1000
    if not any(len(v) > 1 for v in reps.values()):
        return ""
    text = "p99 ms @ fixed rate, each rep: " + "; ".join(
        f"{names.get(row, row)} {', '.join(f'{v:.2f}' for v in vs)}" for row, vs in reps.items())
    # Each row against ejabberd's p99 of the same rep (run next to it).
    paired = []
    for row in reps:
        if row == "ejabberd":
            continue
        both = [(v, byRep[("ejabberd", rep)]) for (r, rep), v in byRep.items() if r == row and ("ejabberd", rep) in byRep]
        if both:
            paired.append(f"{names.get(row, row)} {sum(a <= b for a, b in both)} of {len(both)}")
    return text + (f". At or below ejabberd's in the same rep: {', '.join(paired)}" if paired else "")


def report(doc: dict[str, Any]) -> str:
    """
    @return: The whole report as Markdown: the machine and versions, the
        figures, their ratios, how the cores were shared.
    """
    s, m, v = doc["settings"], doc["machine"], doc["versions"]
    compiled = doc.get("compiled")
    head = [
        *reportHead(doc, f"Prosody {v['prosody']}; ejabberd {v['ejabberd']} (Erlang {v['erlang']})"),
        f"Load: {s['pairs']} pairs, windows of {s['duration_s']:g} s after {s['warmup_s']:g} s; fixed rate "
        f"{s['rate']:,.0f} msgs/s for {s.get('rate_duration_s', s['duration_s']):g} s, {rateSending(s)}; presence: 1 user, {s['presence_contacts']} online contacts; logins: "
        f"{s['login_concurrency']} at once over {s['login_accounts']} accounts; idle: "
        f"{', '.join(f'{n:,}' for n in s['idle_sizes'])} sessions, {s['idle_contacts']} contacts each; "
        f"{s['driver_procs']} driver processes (presence: 1)",
    ]
    if compiled:
        head.append(f"Compiled rows: the gateway from {compiled['tree']}{' (built for this run)' if compiled['built'] else ''}, "
                    f"mypyc-compiled modules: {', '.join(compiled['modules']) or 'none'}")
    extra = compiledTable(doc.get("compiled_ratios") or {})
    spread = rateSpread(doc["runs"])
    return "\n".join([*head, "", table(doc["summary"], doc["ratios"], s, doc["rows"]), *(["", spread] if spread else []),
                      *(["", extra] if extra else []), "",
                      "How the cores were shared (medians; % of one core, the machine has "
                      f"{m['cores'] * 100} %):", "", cpuTable(doc["runs"])])


# -- main ----------------------------------------------------------------------------------


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The gateway (native and XMPP faces) against Prosody and ejabberd, "
                                "one load driver for all, one table.")
    p.add_argument("--quick", action="store_true", help="smaller and shorter (2-3 minutes on 2 shared cores): 20 pairs, 2 s windows, "
                   "1,000 idle sessions only")
    p.add_argument("--reps", type=int, default=1, help="repetitions, each on fresh servers; the table shows medians (default 1)")
    p.add_argument("--only", action="append", default=[], metavar="ROW",
                   help="rows to run: gateway-native, gateway-xmpp, gateway (both), prosody, ejabberd, and with --compiled or "
                   "--build-compiled gateway-native-compiled, gateway-xmpp-compiled (repeatable; default all)")
    compiled = p.add_mutually_exclusive_group()
    compiled.add_argument("--compiled", type=Path, default=None, metavar="TREE",
                          help="also run each gateway row from TREE, a copy of the source tree built in place with "
                          "IMGATEWAY_COMPILE=1 (e.g. build/compiled after ./run-tests.sh): the compiled build's rows")
    compiled.add_argument("--build-compiled", action="store_true",
                          help="as --compiled, with a copy of this tree built in a temporary folder first (a few minutes)")
    p.add_argument("--tests", action="append", default=[], choices=TESTS, help="tests to run (repeatable; default all)")
    p.add_argument("--json", action="store_true", help="print the JSON document on standard output (the table goes to standard error)")
    p.add_argument("--pairs", type=int, default=None, help="1:1 message pairs (default 50; --quick 20)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds of each traffic run (default 10; --quick 2)")
    p.add_argument("--rate-duration", type=float, default=None,
                   help="measured seconds of the fixed-rate run (default 20; --quick 2; --duration sets both)")
    p.add_argument("--send-tick", type=float, default=SEND_TICK,
                   help=f"fixed-rate run: the driver wakes every this many seconds and sends what fell due (default "
                   f"{SEND_TICK:g}, as every table so far); 0: each message at its own due time, evenly spaced")
    p.add_argument("--idle-sizes", type=int, nargs="+", default=None, help="sessions of the idle runs, one or two sizes (default 1000 10000; --quick 1000)")
    p.add_argument("--driver-procs", type=int, default=2, help="driver processes for msg, login and idle runs (default 2)")
    p.add_argument("--presence-answers", choices=["none", "all"], default="none",
                   help="the native clients' Presence-Answers at AUTH (docs/protocol.md 7.2): none (default, as the "
                   "shipped client: presence NOTIFYs not answered) or all (each answered with a 200, as before session 9)")
    p.add_argument("--quiet-pct", type=float, default=0.0, help="before each run wait until the machine is below this busy %% "
                   "of one core (default 0: do not wait, only record it)")
    p.add_argument("--max-wait", type=float, default=60.0, help="longest such wait, in seconds")
    p.add_argument("--keep", action="store_true", help="keep the servers' temporary folders (logs)")
    args = p.parse_args(argv)
    only: list[str] = []
    withCompiled = args.compiled is not None or args.build_compiled
    for row in args.only or ROWS:
        for r in (["gateway-native", "gateway-xmpp"] if row == "gateway" else [row]):
            if r not in ALL_ROWS:
                p.error(f"unknown row {r!r} (choose from gateway, {', '.join(ALL_ROWS)})")
            if r in COMPILED_ROWS and not withCompiled:
                p.error(f"row {r} needs --compiled TREE or --build-compiled")
            if r not in only:
                only.append(r)
    if withCompiled and not any(r in COMPILED_ROWS for r in only):
        # Each gateway row with its compiled twin.
        only += [compiledRow for compiledRow, twin in COMPILED_ROWS.items() if twin in only]
    args.only = [r for r in ALL_ROWS if r in only]
    # What compiledTree() sets for the run (a tree built for it, and what it compiled).
    args.compiledTree = args.compiled
    args.compiledModules = []
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.idle_sizes and (min(args.idle_sizes) <= 20 or len(args.idle_sizes) > 2):
        p.error("--idle-sizes: one or two sizes, each more than 20 (each session has 20 contacts among them)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    try:
        with compiledTree(args):
            runBench("compare", args, FLOOD_SETTINGS, run, document, report)
    except GatewayError as e:
        info(f"the compiled tree: {e}")
        sys.exit(2)


def runBench(
    bench: str,
    args: argparse.Namespace,
    flood: dict[str, list[str]],
    run: Callable[[argparse.Namespace], list[dict[str, Any]]],
    document: Callable[[argparse.Namespace, list[dict[str, Any]], float], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> None:
    """
    The main of C{bench/<bench>.py}: say the flood limits raised, C{run},
    print the C{report} (and with C{--json} the C{document} on standard
    output, the report on standard error), exit 2 if a run failed; on
    Control-C or SIGTERM, the servers started are stopped.
    """
    interruptOnSigterm()
    raiseNofile()  # the servers inherit it: 10,000 sessions
    started = time.monotonic()
    info("flood limits raised: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in flood.items()), bench)
    try:
        records = run(args)
    except KeyboardInterrupt:
        info("interrupted; the servers we started are stopped", bench)
        sys.exit(interruptedStatus())
    doc = document(args, records, started)
    text = report(doc)
    if args.json:
        print(json.dumps(doc), flush=True)
        print(text, file=sys.stderr, flush=True)
    else:
        print(text, flush=True)
    failed = [r for r in records if "error" in r]
    if failed:
        info(f"{len(failed)} run(s) failed: " + ", ".join(f"{r['row']}/{r['run']}" for r in failed), bench)
        sys.exit(2)


if __name__ == "__main__":
    main()
