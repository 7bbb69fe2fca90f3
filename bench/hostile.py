"""
The hostile benchmark (issue 7's proof): what each attack on the gateway
costs everyone else. A canary pair of users exchanges round trips at a
steady rate (on the native face, and a second pair on XMPP c2s with
STARTTLS) while the attacks run one after the other against one gateway
with the shipped limits; for each it prints the canary's round-trip
p50/p99 calm and during the attack, the server's RSS before, at its peak
and after, its CPU time, and what the attack achieved. This is a
benchmark, not a test: nothing asserts a time.

    .venv/bin/python bench/hostile.py                      # every attack, 30 s each (about 6 minutes)
    .venv/bin/python bench/hostile.py --quick              # every attack, shorter and smaller (under 2 minutes)
    .venv/bin/python bench/hostile.py --only password-flood --only roster-flood --json
    .venv/bin/python bench/hostile.py --only roster-flood --set home.max_contacts=2100

The gateway (L{bench._gateway.SpawnedGateway}) runs the native face on TCP
and on a C{tls:} listener and the XMPP c2s face with STARTTLS, with test
certificates, and every limit of C{etc/imgateway.toml} as shipped
(C{--set} changes one). The canary connects from 127.0.0.1; each attack
connects from loopback addresses of its own (Linux routes all of 127/8 to
loopback), so the per-source limits apply to the attackers and not to the
canary. Each attack runs in a process of its own (L{bench._attacks}), so
that its CPU does not delay the canary's clock; but they all share the
machine's cores with the gateway.

The attacks (L{bench._attacks}), in this order:

  - C{xmpp-pipelined}: XMPP clients each write 1,000 message stanzas in one
    TCP write, again whenever the socket takes more;
  - C{native-pipelined}: the same with native C{MESSAGE} requests;
  - C{native-responses}: connections that never log in write responses
    (C{IMGW/1.0 200 OK}) in bulk: responses take no token of the rate limit
    (but a response before login closes the connection);
  - C{native-blank-lines}: connections that never log in write blank
    lines (keep-alives, not frames) as fast as the socket takes them;
  - C{stalled-handshakes}: hundreds of connections (native C{tls:} listener
    and XMPP STARTTLS) that never finish their TLS handshake;
  - C{password-flood}: wrong PLAIN passwords as fast as the answers come,
    over many connections from one address; C{password-spread}: the same
    from 50 addresses;
  - C{roster-flood}: one user (10 sessions) adds 2,000 contacts as fast as
    the server takes them, removes them, and again;
  - C{subscription-burst}: 50 users ask for all 2,450 mutual subscriptions
    at once (L{bench.subscription_burst}).

For each attack: its process sets up (logs in, connects) and says ready;
the canary is measured for C{--calm} seconds ("calm"); the attack runs for
C{--duration} seconds, or until its work is done (the subscription burst)
("during"); its process leaves; the canary is measured for C{--after}
seconds more ("after"), and the RSS read at the end of that is "after".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import subscription_burst
from bench._attacks import ATTACKS, Canary, NativeCanary, XMPPCanary
from bench._gateway import REPO, GatewayError, SpawnedGateway, _env, _setKey, interruptedStatus, interruptOnSigterm
from bench._proc import machineBusyS, procCpuS, procRssKb, raiseNofile
from bench.native_load import loadavg
from imgateway import __version__

PASSWORD = "hostile-pw"

#: The targets of issue 7 and RELIABILITY-NOTES (c): the canary's p99 under
#: any attack, and the RSS growth under a password flood.
CANARY_P99_MS = 100.0
PASSWORD_RSS_MIB = 20.0

#: Accounts C{hu<n>}: what each index is for.
CANARY_NATIVE = ("hu0", "hu1")
CANARY_XMPP = ("hu2", "hu3")
SINK_XMPP, SINK_NATIVE, ROSTER_USER = "hu4", "hu5", "hu6"
XMPP_ATTACKERS, NATIVE_FLOODERS = 10, 40

#: Each attack's source addresses (the canary is on 127.0.0.1).
SOURCES: dict[str, Any] = {
    "xmpp-pipelined": ["127.0.0.2"],
    "stalled-handshakes": lambda n: [f"127.0.3.{i}" for i in range(1, n + 1)],
    "password-flood": ["127.0.0.4"],
    "native-pipelined": ["127.0.0.5"],
    "native-responses": ["127.0.0.8"],
    "native-blank-lines": ["127.0.0.9"],
    "roster-flood": ["127.0.0.6"],
    "subscription-burst": [f"127.0.7.{i}" for i in range(1, 5)],
    "password-spread": lambda n: [f"127.0.4.{i}" for i in range(1, n + 1)],
}

#: The sizes of a full run and of C{--quick}.
FULL: dict[str, Any] = {
    "calm": 5.0,
    "duration": 30.0,
    "after": 5.0,
    "baseline": 10.0,
    "xmpp_connections": 8,
    "stanzas": 1000,
    "flooders": 4,
    "batch": 1000,
    "response_connections": 4,
    "stall_connections": 400,
    "stall_sources": 16,
    "stall_pause": 1.0,
    "password_workers": 50,
    "spread_sources": 50,
    "roster_contacts": 2000,
    "roster_sessions": 10,
    "burst_users": 50,
}
QUICK: dict[str, Any] = {
    **FULL,
    "calm": 2.0,
    "duration": 8.0,
    "after": 2.0,
    "baseline": 4.0,
    "xmpp_connections": 4,
    "stall_connections": 120,
    "stall_sources": 4,
    "password_workers": 20,
    "spread_sources": 10,
    "roster_contacts": 600,
    "roster_sessions": 5,
    "burst_users": 20,
}


def info(text: str) -> None:
    print(f"hostile: {text}", file=sys.stderr, flush=True)


def mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib is not None else None


class Sampler:
    """
    The server's RSS every 0.2 s, for its peak.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = procRssKb(pid) or 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, procRssKb(self.pid) or 0)
            await asyncio.sleep(0.2)

    def stop(self) -> int:
        self._task.cancel()
        self.peak = max(self.peak, procRssKb(self.pid) or 0)
        return self.peak


class Hostile:
    """
    One run: the gateway, the canaries, the attacks in turn, the rows.
    """

    def __init__(self, args: argparse.Namespace, gw: SpawnedGateway) -> None:
        self.args = args
        self.gw = gw
        self.size: dict[str, Any] = args.size
        self.domain = gw.domain or "corp.example"
        self.canaries: list[Canary] = []
        self.rows: list[dict[str, Any]] = []

    def spec(self, name: str) -> dict[str, Any]:
        """
        What the attack's process is told.
        """
        gw, s = self.gw, self.size
        spec: dict[str, Any] = {
            "port": gw.port,
            "tlsPort": gw.tlsPort,
            "xmppPort": gw.xmppPort,
            "domain": self.domain,
            "caPath": str(gw.caPath),
            "password": PASSWORD,
            "pid": gw.pid,
            "duration": s["duration"],
        }
        sources = SOURCES[name]
        if name == "xmpp-pipelined":
            spec.update(
                source=sources[0],
                sink=SINK_XMPP,
                attackers=[f"hu{XMPP_ATTACKERS + i}" for i in range(s["xmpp_connections"])],
                stanzas=s["stanzas"],
            )
        elif name == "native-pipelined":
            spec.update(source=sources[0], sink=SINK_NATIVE, attackers=[f"hu{NATIVE_FLOODERS + i}" for i in range(s["flooders"])], batch=s["batch"])
        elif name == "native-responses":
            spec.update(source=sources[0], connections=s["response_connections"], batch=s["batch"])
        elif name == "native-blank-lines":
            spec.update(source=sources[0], connections=s["response_connections"], kib=64)
        elif name == "stalled-handshakes":
            spec.update(sources=sources(s["stall_sources"]), connections=s["stall_connections"], pause=s["stall_pause"])
        elif name in ("password-flood", "password-spread"):
            spec.update(
                sources=sources if name == "password-flood" else sources(s["spread_sources"]),
                workers=s["password_workers"],
                attempts=3,
                users=[*CANARY_NATIVE, *CANARY_XMPP, "nobody0", "nobody1", "nobody2", "nobody3"],
            )
        elif name == "roster-flood":
            spec.update(
                source=sources[0],
                user=ROSTER_USER,
                sessions=s["roster_sessions"],
                targets=[f"rost{i}" for i in range(s["roster_contacts"])],
            )
        elif name == "subscription-burst":
            spec.update(sources=sources, users=s["burst_users"], prefix="burst", password=subscription_burst.PASSWORD)
        return spec

    def sourcesOf(self, spec: dict[str, Any]) -> str:
        sources = spec.get("sources") or [spec.get("source")]
        return sources[0] if len(sources) == 1 else f"{sources[0]} … {sources[-1]} ({len(sources)})"

    async def window(self, seconds: float) -> tuple[float, float]:
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        return t0, time.monotonic()

    async def baseline(self) -> None:
        """
        The first row: the canary with no attack at all.
        """
        pid = self.gw.pid
        info(f"calm: the canary alone for {self.size['baseline']:g} s")
        rss0, cpu0, busy0 = procRssKb(pid), procCpuS(pid), machineBusyS()
        sampler = Sampler(pid)
        t0, t1 = await self.window(self.size["baseline"])
        peak = sampler.stop()
        cpu1, busy1 = procCpuS(pid), machineBusyS()
        self.rows.append(
            {
                "attack": "none (calm)",
                "windows": {"calm": [t0, t1], "during": [t0, t1], "after": [t0, t1]},
                "during_s": round(t1 - t0, 1),
                "rss_mib": {"before": mib(rss0), "peak": mib(peak), "after": mib(procRssKb(pid))},
                "server_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
                "machine_busy_pct": round(100 * (busy1 - busy0) / (t1 - t0)) if busy0 is not None and busy1 is not None else None,
                "outcome": {"summary": f"canaries only ({self.args.canary_rate:g} round trips/s each)"},
            }
        )

    async def attack(self, name: str) -> None:
        """
        One row: set the attack up, measure calm, attack, measure after.
        """
        gw, s, pid = self.gw, self.size, self.gw.pid
        spec = self.spec(name)
        row: dict[str, Any] = {"attack": name, "sources": self.sourcesOf(spec)}
        self.rows.append(row)
        logErrors0 = gw.logErrors()
        info(f"{name}: setting up")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._attacks", name, json.dumps(spec),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO), env=_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if line.strip() != b"ready":
                raise RuntimeError(f"the attack's process did not get ready: {line!r}")
            info(f"{name}: calm for {s['calm']:g} s")
            tc = await self.window(s["calm"])
            rss0, cpu0, busy0 = procRssKb(pid), procCpuS(pid), machineBusyS()
            sampler = Sampler(pid)
            tg = time.monotonic()
            info(f"{name}: attacking for {s['duration']:g} s")
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), s["duration"] + 300)
            td = time.monotonic()
            cpu1, busy1 = procCpuS(pid), machineBusyS()
            if line.strip() != b"done":
                raise RuntimeError(f"the attack's process failed: {line!r}")
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            row["outcome"] = json.loads(line)
            await asyncio.wait_for(proc.wait(), 60)
            cpuA0 = procCpuS(pid)
            info(f"{name}: after, {s['after']:g} s")
            ta = await self.window(s["after"])
            cpuA1 = procCpuS(pid)
            peak = sampler.stop()
            row.update(
                windows={"calm": list(tc), "during": [tg, td], "after": list(ta)},
                during_s=round(td - tg, 1),
                rss_mib={"before": mib(rss0), "peak": mib(peak), "after": mib(procRssKb(pid))},
                server_cpu_s=round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
                server_cpu_after_s=round(cpuA1 - cpuA0, 2) if cpuA0 is not None and cpuA1 is not None else None,
                machine_busy_pct=round(100 * (busy1 - busy0) / (td - tg)) if busy0 is not None and busy1 is not None else None,
            )
        except (RuntimeError, asyncio.TimeoutError, json.JSONDecodeError) as e:
            row["error"] = str(e) or type(e).__name__
            info(f"{name}: {row['error']}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            row["gateway_log_errors"] = gw.logErrors() - logErrors0
            if gw.process is not None and gw.process.poll() is not None:
                row["error"] = f"the gateway exited with status {gw.process.returncode}"

    async def run(self) -> None:
        gw, rate = self.gw, self.args.canary_rate
        assert gw.xmppPort is not None
        info("logging the canaries in")
        self.canaries.append(await NativeCanary.open(rate, gw.port, CANARY_NATIVE, PASSWORD, self.domain))
        if not self.args.no_xmpp_canary:
            self.canaries.append(await XMPPCanary.open(rate, gw.xmppPort, CANARY_XMPP, PASSWORD, self.domain, str(gw.caPath)))
        for c in self.canaries:
            c.start()
        await asyncio.sleep(1.0)
        await self.baseline()
        for name in self.args.attacks:
            await self.attack(name)
            if gw.process is not None and gw.process.poll() is not None:
                break
        # The last round trips come back, or count as lost.
        await asyncio.sleep(max(2.0, min(5.0, self.size["duration"])))
        for c in self.canaries:
            c.stop()
        for row in self.rows:
            windows = row.pop("windows", None)
            if windows is None:
                continue
            row["canary"] = {c.name: {k: c.stats(*w) for k, w in windows.items()} for c in self.canaries}
            row["canary_errors"] = {c.name: dict(c.errors) for c in self.canaries if c.errors}
            row["targets"] = targets(row)


def targets(row: dict[str, Any]) -> dict[str, Any]:
    """
    Whether a row meets issue 7's targets: each canary's p99 during the
    attack under L{CANARY_P99_MS} with nothing lost; for the password
    floods, RSS growth (peak - before) under L{PASSWORD_RSS_MIB}.
    """
    out: dict[str, Any] = {}
    for name, windows in row.get("canary", {}).items():
        during = windows["during"]
        p99 = during["p99_ms"]
        out[f"{name}_canary_p99_ok"] = p99 is not None and p99 < CANARY_P99_MS and during["lost"] == 0
    rss = row.get("rss_mib", {})
    if row["attack"].startswith("password") and rss.get("peak") is not None and rss.get("before") is not None:
        growth = round(rss["peak"] - rss["before"], 1)
        out["rss_growth_mib"] = growth
        out["rss_growth_ok"] = growth < PASSWORD_RSS_MIB
    return out


def targetsMissed(row: dict[str, Any]) -> list[str]:
    """
    What a row's L{targets} say it missed, in words.
    """
    out = []
    checks = row.get("targets", {})
    for name, windows in row.get("canary", {}).items():
        if not checks.get(f"{name}_canary_p99_ok", True):
            during = windows["during"]
            out.append(f"{name} canary p99 {during['p99_ms']} ms (target < {CANARY_P99_MS:g}), {during['lost']} lost")
    if not checks.get("rss_growth_ok", True):
        out.append(f"RSS grew {checks['rss_growth_mib']} MiB (target < {PASSWORD_RSS_MIB:g})")
    return out


def _pp(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("p50_ms") is None:
        return "–"
    text = f"{stats['p50_ms']:.1f} / {stats['p99_ms']:.1f}"
    return text + (f" ({stats['lost']} lost)" if stats.get("lost") else "")


def table(rows: list[dict[str, Any]]) -> str:
    """
    The rows as a Markdown table, and a line per target missed.
    """
    names = sorted({n for r in rows for n in r.get("canary", {})}, key=lambda n: n != "native")
    head = ["attack", *(f"{n} canary p50 / p99 ms: calm → during" for n in names), "RSS MiB: before → peak → after", "server CPU s (% of a core)", "outcome"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missed: list[str] = []
    for r in rows:
        cells = [r["attack"]]
        for n in names:
            w = r.get("canary", {}).get(n, {})
            cells.append(f"{_pp(w.get('calm'))} → {_pp(w.get('during'))}" if r["attack"] != "none (calm)" else _pp(w.get("during")))
        rss = r.get("rss_mib")
        cells.append(f"{rss['before']} → {rss['peak']} → {rss['after']}" if rss else "–")
        cpu = r.get("server_cpu_s")
        cells.append(f"{cpu:.1f} ({100 * cpu / r['during_s']:.0f} %)" if cpu is not None and r.get("during_s") else "–")
        outcome = r.get("outcome", {}).get("summary", "")
        if r.get("error"):
            outcome = f"**error: {r['error']}** " + outcome
        if r.get("gateway_log_errors"):
            outcome += f"; {r['gateway_log_errors']} tracebacks in the gateway's log"
        cells.append(outcome)
        lines.append("| " + " | ".join(cells) + " |")
        missed.extend(f"- {r['attack']}: {what}" for what in targetsMissed(r))
    if missed:
        lines += ["", "Targets missed:", *missed]
    else:
        lines += ["", f"Every target met: canary p99 < {CANARY_P99_MS:g} ms, nothing lost; password floods' RSS growth < {PASSWORD_RSS_MIB:g} MiB."]
    return "\n".join(lines)


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="shorter and smaller: every attack in under 2 minutes in all")
    p.add_argument("--duration", type=float, help="seconds of each attack (30; --quick 8)")
    p.add_argument("--calm", type=float, help="seconds of canary before each attack (5; --quick 2)")
    p.add_argument("--after", type=float, help="seconds of canary after each attack (5; --quick 2)")
    p.add_argument(
        "--only", action="append", choices=list(ATTACKS), metavar="ATTACK",
        help=f"run this attack (repeat for several; default all: {', '.join(ATTACKS)})",
    )
    p.add_argument("--canary-rate", type=float, default=10.0, help="canary round trips per second, each pair (10)")
    p.add_argument("--no-xmpp-canary", action="store_true", help="only the native canary")
    p.add_argument(
        "--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
        help="change one key of the gateway's configuration (VALUE in TOML), e.g. home.max_contacts=2100",
    )
    p.add_argument("--template", type=Path, default=None, help="configuration to copy (etc/imgateway.toml)")
    p.add_argument("--json", action="store_true", help="print one JSON document on standard output (the table goes to standard error)")
    p.add_argument("--keep", action="store_true", help="keep the gateway's folder (config, log)")
    args = p.parse_args(argv)
    args.size = dict(QUICK if args.quick else FULL)
    for key in ("duration", "calm", "after"):
        if getattr(args, key) is not None:
            args.size[key] = getattr(args, key)
    if args.quick and args.duration is not None:
        args.size["baseline"] = min(args.size["baseline"], args.duration)
    args.attacks = [a for a in ATTACKS if a in args.only] if args.only else list(ATTACKS)
    return args


def configure(gw: SpawnedGateway, settings: list[str]) -> None:
    """
    Apply C{--set TABLE.KEY=VALUE} to the gateway's configuration.
    """
    text = gw.config.read_text(encoding="utf-8")
    for setting in settings:
        name, sep, value = setting.partition("=")
        table, dot, key = name.rpartition(".")
        if not (sep and dot and table and key):
            raise GatewayError(f"--set {setting}: expected TABLE.KEY=VALUE")
        text = _setKey(text, table, key, value)
    gw.config.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parseArgs(argv)
    interruptOnSigterm()
    raiseNofile()
    s = args.size
    result: dict[str, Any] = {
        "bench": "hostile",
        "imgateway": __version__,
        "cores": os.cpu_count(),
        "quick": args.quick,
        "settings": {k: s[k] for k in sorted(s)},
        "set": args.set,
        "canary_rate": args.canary_rate,
    }
    status = 0
    gw = SpawnedGateway(args.template, keep=args.keep, xmpp=True, tls=True, shippedLimits=True)
    try:
        configure(gw, args.set)
        users = max(NATIVE_FLOODERS + s["flooders"], XMPP_ATTACKERS + s["xmpp_connections"])
        info(f"creating accounts in {gw.folder}")
        gw.createUsers("hu", 0, users, PASSWORD)
        if "roster-flood" in args.attacks:
            gw.createUsers("rost", 0, s["roster_contacts"], PASSWORD)
        if "subscription-burst" in args.attacks:
            gw.createUsers("burst", 0, s["burst_users"], subscription_burst.PASSWORD)
        gw.start()
        info(f"gateway pid {gw.pid}: native {gw.port} (TLS {gw.tlsPort}), XMPP {gw.xmppPort}")
        result["loadavg_before"] = loadavg()
        run = Hostile(args, gw)
        try:
            asyncio.run(run.run())
        finally:
            result["rows"] = run.rows
            result["loadavg_after"] = loadavg()
    except GatewayError as e:
        result["error"] = str(e)
        status = 2
    except KeyboardInterrupt:
        return interruptedStatus()
    finally:
        gw.stop()
        if args.keep:
            result["folder"] = str(gw.folder)
    text = table(result.get("rows", []))
    if args.json:
        print(json.dumps(result), flush=True)
        print(text, file=sys.stderr, flush=True)
    else:
        print(text, flush=True)
    if "error" in result:
        info(result["error"])
    if any("error" in r for r in result.get("rows", [])):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
