"""
The XMPP message benchmark of C{../shared/peers/load} against the gateway's
XMPP c2s face and against Prosody, in one run, so that the two compare:
deliveries/s, latency percentiles, server CPU time per delivery and RSS per
idle session.

Superseded by C{bench/compare.py} (ejabberd and the native face too, one
driver inside the repository, hashed passwords on every server); kept for
the history of the figures in C{bench/README.md}.

    .venv/bin/python bench/xmpp_compare.py --pairs 50 --duration 10 --idle-users 1000
    .venv/bin/python bench/xmpp_compare.py --reps 3 --out /tmp/xmpp-compare.jsonl
    .venv/bin/python bench/xmpp_compare.py --skip-prosody --rate 0     # the gateway alone

It starts both servers on free loopback ports:

 - a gateway (L{bench._gateway.SpawnedGateway} with C{xmpp=True}): the XMPP
   c2s face without TLS (the driver logs in with SASL PLAIN, which the face
   allows on loopback) and with the stanza limiter raised out of reach
   (C{stanzas_per_second} and C{stanza_burst} 1,000,000), as the peers'
   configuration leaves Prosody's C{mod_limits} out; accounts
   C{user0 ...} with password C{pw}, as Prosody has them;
 - Prosody, with C{../shared/peers/start-prosody.sh} (the configuration the
   baseline in C{../shared/peers/README.md} was measured with), its run
   folder in a temporary folder of ours.

Then it runs the same C{xmpp_load.py} commands (one driver process) against
each, interleaved: C{idle} first, on fresh servers, then C{msg} closed loop,
C{msg --rate R}, and C{presence} when asked. Each run prints one JSON line on
standard output: the driver's line plus C{server}, C{run}, C{rep} and what
was set up. A side-by-side table of medians goes to standard error at the
end, and both servers are stopped (also on errors, Control-C and SIGTERM).

Before each C{idle} run, C{--idle-warmup} accounts log in and out again on
both servers (see C{bench/README.md}): the gateway used to check a PLAIN
password with scrypt (16 MiB) in its thread pool, and glibc kept those
buffers in each thread's arena, which is not memory per session. It now
checks PLAIN against the SCRAM-SHA-256 verifier (PBKDF2, a few KiB); the
warm-up is kept so that runs compare with the older figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/xmpp_compare.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import interruptedStatus, interruptOnSigterm, REPO, XMPP_BENCH_SETTINGS, GatewayError, SpawnedGateway, freePort
from imgateway import __version__

#: Accounts both servers have at least (Prosody's default in start-prosody.sh).
MIN_ACCOUNTS = 2000
PREFIX = "user"
PASSWORD = "pw"
PROSODY_DOMAIN = "localhost"
#: xmpp_load.py's default first user of the presence test.
PRESENCE_OFFSET = 1900


class CompareFailed(Exception):
    """
    The comparison could not run (a server would not start, ...).
    """


def info(text: str) -> None:
    print(f"[xmpp_compare] {text}", file=sys.stderr, flush=True)


# -- the machine ------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machineBusyS() -> float | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


def busyPct(sampleS: float = 2.0) -> float:
    """
    @return: Busy CPU of the whole machine over C{sampleS}, in % of one core.
    """
    b0, t0 = machineBusyS(), time.monotonic()
    time.sleep(sampleS)
    b1, t1 = machineBusyS(), time.monotonic()
    if b0 is None or b1 is None:
        return 0.0
    return 100.0 * (b1 - b0) / (t1 - t0)


def waitQuiet(quietPct: float, maxWait: float) -> tuple[float, float]:
    """
    Wait (up to C{maxWait} s) until the machine is quiet, as
    C{../shared/peers/load/bench_all.py} does.

    @return: The last busy figure (% of one core) and the seconds waited.
    """
    t = time.monotonic()
    while True:
        b = busyPct()
        if b < quietPct or time.monotonic() - t > maxWait:
            return b, time.monotonic() - t


def raiseNofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 200000
    want = min(want, 200000)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def pidAlive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- Prosody ----------------------------------------------------------------------------


def prosodyVersion() -> str | None:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


class PeersProsody:
    """
    Prosody started by C{../shared/peers/start-prosody.sh}, with its run
    folder (C{PEERS_RUN}) in a temporary folder and its ports free ones.
    """

    def __init__(self, peersDir: Path, accounts: int, keep: bool = False) -> None:
        self.peersDir = peersDir
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="imgw-xmppcmp-peers-"))
        ports: list[int] = []
        while len(ports) < 4:
            port = freePort()
            if port not in ports:
                ports.append(port)
        self.port, tlsPort, s2sPort, compPort = ports
        self.domain = PROSODY_DOMAIN
        self.env = dict(os.environ)
        self.env.update(
            PEERS_RUN=str(self.folder),
            NUSERS=str(accounts),
            DOMAIN=self.domain,
            PROSODY_C2S_PORT=str(self.port),
            PROSODY_C2S_TLS_PORT=str(tlsPort),
            PROSODY_S2S_PORT=str(s2sPort),
            PROSODY_COMP_PORT=str(compPort),
        )
        self.pidfile = self.folder / "prosody" / "prosody.pid"
        self.pid: int | None = None

    def start(self) -> str:
        """
        @return: What the start script printed.
        @raise CompareFailed: If Prosody did not start.
        """
        try:
            done = subprocess.run(
                ["bash", str(self.peersDir / "start-prosody.sh")],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=str(self.folder),
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            self._adoptPid()
            raise CompareFailed("start-prosody.sh took more than 120 s") from None
        self._adoptPid()
        if done.returncode != 0 or not pidAlive(self.pid):
            raise CompareFailed(
                f"start-prosody.sh failed (status {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout.strip()

    def _adoptPid(self) -> None:
        try:
            self.pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass

    def logErrors(self) -> int:
        try:
            text = (self.folder / "prosody" / "prosody.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if "\terror\t" in line)

    def stop(self) -> None:
        """
        Stop Prosody (C{stop-prosody.sh}, then our own SIGTERM/SIGKILL of
        the pid it recorded) and remove the folder unless asked to keep it.
        """
        if self.pid is not None and pidAlive(self.pid):
            try:
                subprocess.run(
                    ["bash", str(self.peersDir / "stop-prosody.sh")],
                    env=self.env,
                    capture_output=True,
                    timeout=30,
                    start_new_session=True,
                )
            except (OSError, subprocess.TimeoutExpired):
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not pidAlive(self.pid):
                    break
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                for _ in range(100):
                    if not pidAlive(self.pid):
                        break
                    time.sleep(0.1)
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


# -- the runs ---------------------------------------------------------------------------


class Server:
    """
    One server under test, as the driver sees it.
    """

    def __init__(self, name: str, port: int, pid: int, domain: str, config: dict[str, Any], logErrors: Any) -> None:
        self.name = name
        self.port = port
        self.pid = pid
        self.domain = domain
        self.config = config
        self.logErrors = logErrors


def plannedRuns(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """
    @return: (name, driver arguments) of each run, in order: the same
        commands as C{../shared/peers/load/bench_all.py} for the same sizes.
    """
    d = f"{args.duration:g}"
    runs: list[tuple[str, list[str]]] = []
    if args.idle_users:
        runs.append(
            (
                f"idle{args.idle_users}",
                ["idle", "--users", str(args.idle_users), "--duration", "5", "--settle", "3", "--login-concurrency", "100"],
            )
        )
    if args.pairs:
        runs.append((f"msg{args.pairs}", ["msg", "--pairs", str(args.pairs), "--duration", d]))
        if args.rate:
            runs.append(
                (
                    f"msg{args.pairs}_rate{args.rate:g}",
                    ["msg", "--pairs", str(args.pairs), "--duration", d, "--rate", f"{args.rate:g}"],
                )
            )
    if args.presence_users:
        runs.append((f"presence{args.presence_users}", ["presence", "--users", str(args.presence_users), "--duration", d]))
    return runs


def runDriver(args: argparse.Namespace, server: Server, driverArgs: list[str], timeout: float) -> tuple[dict[str, Any], list[str]]:
    """
    Run C{xmpp_load.py} once against C{server}.

    @return: Its JSON line (or C{{"error": ...}}) and the command.
    """
    cmd = [
        sys.executable,
        str(args.peers_dir / "load" / "xmpp_load.py"),
        *driverArgs,
        "--port",
        str(server.port),
        "--server-pid",
        str(server.pid),
        "--domain",
        server.domain,
        "--prefix",
        PREFIX,
        "--password",
        PASSWORD,
        "--procs",
        "1",
        "--warmup",
        f"{args.warmup:g}",
        "--label",
        server.name,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"the driver took more than {timeout:g} s"}, cmd
    lines = done.stdout.strip().splitlines() or ["{}"]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        result = {"error": "unparseable driver output", "stdout": done.stdout[-2000:]}
    if done.returncode != 0 and "error" not in result:
        result["error"] = f"driver exit status {done.returncode}"
    if done.stderr.strip():
        result["stderr_tail"] = done.stderr.strip()[-500:]
    return result, cmd


def warmLogins(args: argparse.Namespace, server: Server) -> None:
    """
    Log C{--idle-warmup} accounts in together and out again, so that the
    idle run's RSS baseline already holds what logging in costs once per
    thread rather than per session.
    """
    n = args.idle_warmup
    result, _ = runDriver(
        args,
        server,
        ["idle", "--users", str(n), "--user-offset", str(args.idle_users), "--duration", "1", "--settle", "0", "--login-concurrency", str(n)],
        timeout=600,
    )
    if "error" in result:
        raise CompareFailed(f"warm-up logins on {server.name} failed: {result['error']}")
    info(
        f"  warm-up: {n} logins on {server.name}, RSS {kib(result.get('server_rss_base_kb'))} -> "
        f"{kib(result.get('server_rss_kb_at_end'))} MiB"
    )
    time.sleep(1.0)


def kib(value: Any) -> str:
    return f"{value / 1024:.1f}" if isinstance(value, (int, float)) else "-"


def undelivered(result: dict[str, Any]) -> int | None:
    """
    @return: Deliveries still missing after the driver's drain (sent ×
        fan-out − received), for message and presence runs.
    """
    if result.get("test") not in ("xmpp_msg", "xmpp_presence") or "sent_total" not in result:
        return None
    fan = result.get("fanout") or 1
    return int(result["sent_total"] * fan - result.get("received_total", 0))


def oneRun(args: argparse.Namespace, server: Server, name: str, driverArgs: list[str], rep: int, out: Any) -> dict[str, Any]:
    if name.startswith("idle") and args.idle_warmup:
        warmLogins(args, server)
    pre, waited = waitQuiet(args.quiet_pct, args.max_wait)
    errors0 = server.logErrors()
    t = time.monotonic()
    result, cmd = runDriver(args, server, driverArgs, timeout=max(900.0, 3 * args.duration + 600))
    wall = time.monotonic() - t
    line: dict[str, Any] = {"bench": "xmpp_compare", "server": server.name, "run": name, "rep": rep}
    line.update(result)
    line.update(
        {
            "undelivered": undelivered(result),
            "server_log_errors": server.logErrors() - errors0,
            "pre_busy_pct": round(pre, 1),
            "quiet_wait_s": round(waited, 1),
            "wall_s": round(wall, 1),
            "idle_warmup_logins": args.idle_warmup if name.startswith("idle") else None,
            "server_config": server.config,
            "cmd": " ".join(["python3", os.path.relpath(cmd[1], REPO), *cmd[2:]]),
        }
    )
    print(json.dumps(line), flush=True)
    if out is not None:
        # The format of bench_all.py, for ../shared/peers/load/summarize.py.
        record = {
            "server": server.name,
            "test": name,
            "rep": rep,
            "cmd": line["cmd"],
            "pre_busy_pct": line["pre_busy_pct"],
            "quiet_wait_s": line["quiet_wait_s"],
            "wall_s": line["wall_s"],
            "result": result,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()
    info(f"  {server.name} {name} rep {rep}: {brief(line)}")
    return line


def brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {str(r['error'])[:300]}"
    parts = []
    if r.get("rate_per_s") is not None:
        lat = r.get("lat_us") or {}
        parts.append(f"{r['rate_per_s']:,.0f}/s")
        parts.append(f"{r.get('server_cpu_us_per_delivery')} µs/delivery")
        parts.append(f"p50 {lat.get('p50', 0) / 1000:.1f} p99 {lat.get('p99', 0) / 1000:.1f} ms")
        parts.append(f"undelivered {r.get('undelivered')} errors {r.get('errors')}")
    if r.get("rss_per_conn_kb") is not None:
        parts.append(f"{r['rss_per_conn_kb']} KiB/session ({r.get('alive')} alive, {r.get('logins_per_s')} logins/s)")
    parts.append(f"server CPU {r.get('server_cpu_pct')} % driver {r.get('driver_cpu_pct')} % other {r.get('other_cpu_pct')} %")
    return ", ".join(parts)


# -- the table --------------------------------------------------------------------------


def _median(values: list[Any]) -> float | None:
    xs = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, nd: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def table(lines: list[dict[str, Any]]) -> str:
    """
    @return: Medians per server and run, side by side, as Markdown.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failed: dict[tuple[str, str], int] = {}
    for r in lines:
        key = (r["run"], r["server"])
        if "error" in r:
            failed[key] = failed.get(key, 0) + 1
        else:
            groups.setdefault(key, []).append(r)
    traffic: list[str] = []
    idle: list[str] = []
    for (run, server), rs in groups.items():
        if run.startswith("idle"):
            continue
        rates = [r.get("rate_per_s") or 0 for r in rs]
        p50 = _median([(r.get("lat_us") or {}).get("p50") for r in rs])
        p99 = _median([(r.get("lat_us") or {}).get("p99") for r in rs])
        traffic.append(
            f"| {run} | {server} | {len(rs)} | {_fmt(_median(rates))} ({_fmt(min(rates))}–{_fmt(max(rates))}) "
            f"| {_fmt(_median([r.get('server_cpu_us_per_delivery') for r in rs]), 1)} "
            f"| {_fmt(p50 / 1000 if p50 is not None else None, 1)} / {_fmt(p99 / 1000 if p99 is not None else None, 1)} "
            f"| {_fmt(_median([r.get('server_cpu_pct') for r in rs]))} "
            f"| {_fmt(_median([max(r.get('driver_cpu_pct') or [0]) for r in rs]))} "
            f"| {_fmt(_median([r.get('other_cpu_pct') for r in rs]))} "
            f"| {sum(r.get('undelivered') or 0 for r in rs)} | {sum(r.get('errors') or 0 for r in rs)} |"
        )
    for (run, server), rs in groups.items():
        if not run.startswith("idle"):
            continue
        per: list[float] = [float(r["rss_per_conn_kb"]) for r in rs if r.get("rss_per_conn_kb") is not None]
        before = _median([r.get("server_rss_base_kb") for r in rs])
        after = _median([r.get("server_rss_kb_at_end") for r in rs])
        idle.append(
            f"| {run} | {server} | {len(rs)} | {_fmt(_median([r.get('alive') for r in rs]))} "
            f"| {_fmt(before / 1024 if before else None, 1)} → {_fmt(after / 1024 if after else None, 1)} "
            f"| {_fmt(_median(per), 1)} ({_fmt(min(per) if per else None, 1)}–{_fmt(max(per) if per else None, 1)}) "
            f"| {_fmt(_median([r.get('logins_per_s') for r in rs]))} | {_fmt(_median([r.get('other_cpu_pct') for r in rs]))} |"
        )
    out: list[str] = []
    if traffic:
        out += [
            "| run | server | n | deliveries/s (min–max) | server CPU µs/delivery | p50 / p99 ms | server CPU % "
            "| driver CPU % | other CPU % | undelivered | stalls+errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *traffic,
        ]
    if idle:
        out += [
            *([""] if out else []),
            "| run | server | n | sessions alive | RSS before → after MiB | RSS per session KiB (min–max) | logins/s | other CPU % |",
            "|---|---|---|---|---|---|---|---|",
            *idle,
        ]
    ratios = []
    for (run, server), rs in groups.items():
        if server != "imgateway" or run.startswith("idle") or (run, "prosody") not in groups:
            continue
        ours = _median([r.get("server_cpu_us_per_delivery") for r in rs])
        theirs = _median([r.get("server_cpu_us_per_delivery") for r in groups[(run, "prosody")]])
        if ours and theirs:
            ratios.append(f"{run}: imgateway spends {ours / theirs:.1f}× Prosody's CPU per delivery")
    if ratios:
        out += ["", *ratios]
    if failed:
        out += ["", "Failed runs: " + ", ".join(f"{s}/{r}: {n}" for (r, s), n in failed.items())]
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The ../shared/peers XMPP benchmark against the gateway's XMPP c2s face and Prosody, in one run."
    )
    p.add_argument("--pairs", type=int, default=50, help="msg runs: client pairs (default 50; 0: no msg runs)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of the msg/presence runs (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="traffic before the measured window (default 2)")
    p.add_argument("--rate", type=float, default=2000.0, help="also a fixed-rate msg run at this total rate (default 2000; 0: none)")
    p.add_argument("--idle-users", type=int, default=1000, help="idle run: sessions (default 1000; 0: no idle run)")
    p.add_argument(
        "--idle-warmup",
        type=int,
        default=50,
        help="accounts that log in and out on each server before an idle run (default 50; 0: none)",
    )
    p.add_argument("--presence-users", type=int, default=0, help="also a presence fan-out run with this many users (default 0: none)")
    p.add_argument("--reps", type=int, default=1, help="repetitions, each on freshly started servers (default 1)")
    p.add_argument("--skip-prosody", action="store_true", help="the gateway only")
    p.add_argument(
        "--peers-dir",
        type=Path,
        default=REPO.parent / "shared" / "peers",
        help="the shared peers folder (default ../shared/peers from the repository)",
    )
    p.add_argument("--template", type=Path, default=None, help="gateway configuration to copy (default etc/imgateway.toml)")
    p.add_argument("--out", type=Path, default=None, help="also append bench_all.py-style records here (for summarize.py)")
    p.add_argument("--quiet-pct", type=float, default=25.0, help="wait before each run until the machine is below this busy %% (default 25)")
    p.add_argument("--max-wait", type=float, default=90.0, help="longest wait for a quiet machine, in seconds (default 90)")
    p.add_argument("--keep", action="store_true", help="keep the servers' temporary folders (logs)")
    args = p.parse_args(argv)
    if min(args.pairs, args.idle_users, args.idle_warmup, args.presence_users) < 0 or args.reps < 1 or args.duration <= 0:
        p.error("sizes must be >= 0, --reps >= 1, --duration > 0")
    if not (args.pairs or args.idle_users or args.presence_users):
        p.error("nothing to run")
    args.peers_dir = args.peers_dir.resolve()
    return args


def accountsNeeded(args: argparse.Namespace) -> int:
    need: int = max(MIN_ACCOUNTS, 2 * args.pairs, args.idle_users + args.idle_warmup)
    if args.presence_users:
        need = max(need, PRESENCE_OFFSET + args.presence_users)
    return need


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    driver = args.peers_dir / "load" / "xmpp_load.py"
    script = args.peers_dir / "start-prosody.sh"
    if not driver.is_file() or (not args.skip_prosody and not script.is_file()):
        info(f"no shared peers at {args.peers_dir} (need load/xmpp_load.py and start-prosody.sh); see --peers-dir")
        sys.exit(2)
    if not args.skip_prosody and shutil.which("prosody") is None:
        info("prosody is not installed (Debian: apt-get install prosody); use --skip-prosody for the gateway alone")
        sys.exit(2)
    raiseNofile()
    accounts = accountsNeeded(args)
    runs = plannedRuns(args)
    prosodyV = None if args.skip_prosody else prosodyVersion()
    info(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, imgateway {__version__}"
        + (f", Prosody {prosodyV}" if prosodyV else "")
    )
    info(
        "imgateway [xmpp] for this benchmark: "
        + ", ".join(f"{k} = {v}" for k, v in XMPP_BENCH_SETTINGS.items())
        + " (etc/imgateway.toml has stanzas_per_second = 20, stanza_burst = 50: raised out of reach, as the peers' "
        "Prosody configuration leaves mod_limits out); SASL PLAIN on loopback"
    )
    info(f"runs: {', '.join(n for n, _ in runs)} × {args.reps} rep(s); {accounts} accounts {PREFIX}0.. / {PASSWORD} on each server")
    lines: list[dict[str, Any]] = []
    out = open(args.out, "a") if args.out else None
    try:
        for rep in range(1, args.reps + 1):
            gateway: SpawnedGateway | None = None
            prosody: PeersProsody | None = None
            try:
                gateway = SpawnedGateway(template=args.template, keep=args.keep, xmpp=True)
                info(f"rep {rep}: gateway in {gateway.folder}, XMPP c2s on 127.0.0.1:{gateway.xmppPort}")
                info("  " + gateway.createUsers(PREFIX, 0, accounts, PASSWORD))
                gateway.start()
                assert gateway.pid is not None and gateway.xmppPort is not None
                servers = [
                    Server(
                        "imgateway",
                        gateway.xmppPort,
                        gateway.pid,
                        gateway.domain or "",
                        {
                            "software": f"imgateway {__version__}",
                            "xmpp": dict(XMPP_BENCH_SETTINGS),
                            "login": "SASL PLAIN (PBKDF2 against the SCRAM-SHA-256 verifier per login, in the reactor's thread pool)",
                        },
                        gateway.logErrors,
                    )
                ]
                if not args.skip_prosody:
                    prosody = PeersProsody(args.peers_dir, accounts, keep=args.keep)
                    info("  " + prosody.start())
                    assert prosody.pid is not None
                    servers.append(
                        Server(
                            "prosody",
                            prosody.port,
                            prosody.pid,
                            prosody.domain,
                            {
                                "software": f"Prosody {prosodyV}",
                                "config": "../shared/peers/conf/prosody.cfg.lua.in (mod_limits not loaded)",
                                "login": "SASL PLAIN, internal_plain",
                            },
                            prosody.logErrors,
                        )
                    )
                if rep % 2 == 0:
                    servers.reverse()  # alternate who goes first
                for name, driverArgs in runs:
                    for server in servers:
                        lines.append(oneRun(args, server, name, driverArgs, rep, out))
            finally:
                if gateway is not None:
                    errors = gateway.logErrors()
                    if errors:
                        info(f"  the gateway logged {errors} errors; its log: {gateway.log}" + ("" if args.keep else " (removed; use --keep)"))
                    gateway.stop()
                if prosody is not None:
                    prosody.stop()
    finally:
        if out is not None:
            out.close()
    return lines




def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    interruptOnSigterm()
    try:
        lines = run(args)
    except KeyboardInterrupt:
        info("interrupted; the servers we started are stopped")
        sys.exit(interruptedStatus())
    except (CompareFailed, GatewayError, OSError) as e:
        info(f"failed: {e}")
        print(json.dumps({"bench": "xmpp_compare", "error": str(e)[-4000:]}), flush=True)
        sys.exit(2)
    print("\n" + table(lines), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
