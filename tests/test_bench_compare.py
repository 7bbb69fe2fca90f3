# -*- test-case-name: tests.test_bench_compare -*-
"""
Tests for C{bench/compare.py} and its helpers (C{bench/_loaddriver.py},
C{bench/_peers.py}) on fixed inputs: the figures taken from the driver's
records, the medians, the ratios, the table and report, the JSON document,
the accounts and contacts each server gets, and the driver's parsing and
SCRAM. Running the benchmark itself is C{tests/e2e/test_bench_compare.py}.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import compare
from bench._gateway import GatewayError
from bench._loaddriver import (
    NativeConn,
    ScramClient,
    Stats,
    XmppConn,
    _header,
    parseStamp,
    percentiles,
    pooled,
    sendDue,
    senderPhases,
)
from bench._peers import PeerError, Provision, circulant, contactsOf, scramSha1
from imgateway.auth.sasl import clientMechanism


def traffic(row: str, rep: int, cpu: float, rate: float, p50: int, p99: int, presence: float,
            scram: tuple[float, float], plain: tuple[float, float], idle: tuple[float, int]) -> list[dict[str, Any]]:
    """
    The records of one row's runs, as C{compare.oneServer} makes them.
    """
    base = {"row": row, "rep": rep, "server_cpu_pct": 99.0, "driver_cpu_pct": [10.0, 12.0], "other_cpu_pct": 3.0}
    return [
        dict(base, run="idle1000", test="idle", rss_per_session_kb=idle[0], server_rss_kb=idle[1]),
        dict(base, run="msg", test="msg", server_cpu_us_per_item=cpu, rate_per_s=rate, lat_us={"p50": 90000, "p99": 1},
             undelivered=0),
        dict(base, run="rate", test="msg", server_cpu_us_per_item=150.0, rate_per_s=2000.0,
             lat_us={"p50": p50, "p99": p99}, undelivered=0),
        dict(base, run="presence", test="presence", server_cpu_us_per_item=presence, undelivered=0),
        dict(base, run="login_scram", test="login", logins_per_s=scram[0], server_cpu_us_per_item=scram[1]),
        dict(base, run="login_plain", test="login", logins_per_s=plain[0], server_cpu_us_per_item=plain[1]),
    ]


SETTINGS = compare.settings(compare.parseArgs(["--quick"]))


def records() -> list[dict[str, Any]]:
    """
    Three reps of Prosody and ejabberd, two of the native face (one of its
    runs failed), none of the XMPP face.
    """
    out: list[dict[str, Any]] = []
    for rep, k in ((1, 1.0), (2, 1.2), (3, 0.8)):
        out += traffic("prosody", rep, 60 * k, 10000 * k, 3000, 20000, 40 * k, (500 * k, 1000), (300, 2000), (32, 51200))
        out += traffic("ejabberd", rep, 30 * k, 40000, 1000, 8000, 20, (1000, 500), (100, 7000), (40, 102400))
    out += traffic("gateway-native", 1, 45, 20000, 500, 4000, 30, (1500, 700), (400, 1900), (8, 61440))
    out += traffic("gateway-native", 2, 55, 22000, 700, 6000, 30, (1500, 700), (400, 1900), (8, 61440))
    out[-1] = {"row": "gateway-native", "run": "login_plain", "rep": 2, "error": "the driver took more than 900 s"}
    return out


class FiguresTests(SynchronousTestCase):
    """
    The table's figures: what each run gives, medians over reps, ratios.
    """

    def test_figuresOfEachRun(self) -> None:
        """
        Each run gives its figures: CPU per message and the saturated rate
        (msg), p50/p99 in ms (rate), CPU per presence delivery, logins/s and
        CPU per login per mechanism, KiB per session and process MiB for
        the first and second idle sizes; a failed run gives none.
        """
        rs = {r["run"]: r for r in traffic("prosody", 1, 60, 10000, 3000, 20000, 40, (500, 1000), (300, 2000), (32, 51200))}
        self.assertEqual(compare.figuresOf(rs["msg"], [1000]), {"msg_cpu_us": 60.0, "msg_rate": 10000.0})
        self.assertEqual(compare.figuresOf(rs["rate"], [1000]), {"rate_p50_ms": 3.0, "rate_p99_ms": 20.0})
        self.assertEqual(compare.figuresOf(rs["presence"], [1000]), {"presence_cpu_us": 40.0})
        self.assertEqual(compare.figuresOf(rs["login_scram"], [1000]), {"scram_logins_s": 500.0, "scram_cpu_us": 1000.0})
        self.assertEqual(compare.figuresOf(rs["login_plain"], [1000]), {"plain_logins_s": 300.0, "plain_cpu_us": 2000.0})
        self.assertEqual(compare.figuresOf(rs["idle1000"], [1000, 10000]), {"idle1_kib": 32.0, "idle1_mib": 50.0})
        big = dict(rs["idle1000"], run="idle10000")
        self.assertEqual(compare.figuresOf(big, [1000, 10000]), {"idle2_kib": 32.0, "idle2_mib": 50.0})
        self.assertEqual(compare.figuresOf({"row": "prosody", "run": "msg", "error": "x"}, [1000]), {})

    def test_summaryIsTheMedianOfTheReps(self) -> None:
        """
        Each figure of a row is the median over its reps; a failed run
        counts for nothing, and a row that never ran is absent.
        """
        summary = compare.summarise(records(), [1000])
        self.assertEqual(summary["prosody"]["msg_cpu_us"], 60.0)
        self.assertEqual(summary["prosody"]["scram_logins_s"], 500.0)
        self.assertEqual(summary["gateway-native"]["msg_cpu_us"], 50.0)
        self.assertEqual(summary["gateway-native"]["rate_p99_ms"], 5.0)
        self.assertEqual(summary["gateway-native"]["plain_logins_s"], 400.0)
        self.assertNotIn("gateway-xmpp", summary)

    def test_ratiosToProsodyAndEjabberd(self) -> None:
        """
        Every figure of every row is divided by Prosody's and by
        ejabberd's.
        """
        rts = compare.ratios(compare.summarise(records(), [1000]))
        self.assertEqual(rts["gateway-native"]["msg_cpu_us"], {"prosody": 50 / 60, "ejabberd": 50 / 30})
        self.assertEqual(rts["gateway-native"]["idle1_kib"], {"prosody": 0.25, "ejabberd": 0.2})
        self.assertEqual(rts["prosody"]["presence_cpu_us"], {"prosody": 1.0, "ejabberd": 2.0})
        self.assertEqual(rts["ejabberd"]["msg_rate"], {"prosody": 4.0, "ejabberd": 1.0})

    def test_noRatioWithoutThePeer(self) -> None:
        """
        Without an ejabberd row, the ratios are to Prosody only.
        """
        rts = compare.ratios(compare.summarise([r for r in records() if r["row"] != "ejabberd"], [1000]))
        self.assertEqual(rts["gateway-native"]["msg_cpu_us"], {"prosody": 50 / 60})


class TableTests(SynchronousTestCase):
    """
    The Markdown table and the report around it.
    """

    def setUp(self) -> None:
        self.summary = compare.summarise(records(), [1000])
        self.rts = compare.ratios(self.summary)

    def test_oneLinePerRowWithEveryFigure(self) -> None:
        """
        The figures table has a heading line, a rule, then one line per row
        that ran, in the order native face, XMPP face, Prosody, ejabberd,
        each with its figures.
        """
        text = compare.table(self.summary, self.rts, SETTINGS)
        lines = text.splitlines()
        self.assertIn("1:1 CPU µs/msg", lines[0])
        self.assertIn("p50 / p99 ms @ 2,000/s", lines[0])
        self.assertIn("KiB/session @ 1,000 (process MiB)", lines[0])
        self.assertEqual(lines[1], "|---" * 8 + "|")
        self.assertEqual(
            lines[2],
            "| imgateway, native face | 50.0 | 21,000 | 0.60 / 5.00 | 30.0 | 1,500 (700) | 400 (1,900) | 8.00 (60.0) |",
        )
        self.assertTrue(lines[3].startswith("| Prosody | 60.0 | 10,000 | 3.00 / 20.0 | 40.0 | 500 (1,000) |"), lines[3])
        self.assertTrue(lines[4].startswith("| ejabberd |"), lines[4])
        self.assertNotIn("XMPP c2s face", text)

    def test_ratioTable(self) -> None:
        """
        Under the figures, the same table of ratios: each cell Prosody's
        ratio / ejabberd's.
        """
        text = compare.table(self.summary, self.rts, SETTINGS)
        after = text.split("Ratios:")[1].splitlines()
        native = next(line for line in after if line.startswith("| imgateway, native face"))
        cells = [c.strip() for c in native.split("|")[2:-1]]
        self.assertEqual(cells[0], "0.83 / 1.67")
        self.assertEqual(cells[1], "2.10 / 0.53")
        self.assertEqual(cells[2], "0.20 / 0.60; 0.25 / 0.62")
        self.assertEqual(cells[6], "0.25 / 0.20 (1.20 / 0.60)")

    def test_missingFigure(self) -> None:
        """
        A figure that no run gave shows as a dash.
        """
        summary = {"prosody": {"msg_cpu_us": 60.0}}
        line = compare.table(summary, compare.ratios(summary), SETTINGS).splitlines()[2]
        self.assertEqual(line, "| Prosody | 60.0 | – | – / – | – | – (–) | – (–) | – (–) |")

    def test_cpuTable(self) -> None:
        """
        How the cores were shared: per row and run, the median server,
        driver (per process) and others' CPU, and what went wrong.
        """
        text = compare.cpuTable(records())
        self.assertIn("| Prosody | msg | 99.0 | 10.0 + 12.0 | 3.00 | – | – |", text)
        self.assertIn("| imgateway, native face | login_plain | 99.0 | 10.0 + 12.0 | 3.00 | – | 1 failed: the driver took more than 900 s |", text)

    def test_reportAndJSON(self) -> None:
        """
        The report names the command, the machine, the versions and the
        load, then the tables; the document it is made from is JSON.
        """
        doc = {
            "command": "bench/compare.py --quick", "wall_s": 95.2,
            "machine": {"cores": 2, "cpu": "Xeon", "memory_gib": 23.5, "kernel": "6.1", "loadavg": (1.0, 2.0, 3.0)},
            "versions": {"imgateway": "0.1", "commit": "abc", "python": "3.11.7", "twisted": "26.10.0",
                         "prosody": "0.12.3", "ejabberd": "23.01", "erlang": "25"},
            "settings": SETTINGS, "rows": list(compare.ROWS), "summary": self.summary, "ratios": self.rts,
            "runs": records(),
        }  # fmt: skip
        text = compare.report(doc)
        self.assertTrue(text.startswith("`bench/compare.py --quick` (95 s); reps: medians of 3\n"), text[:200])
        self.assertIn("Machine: 2 cores (Xeon), 23.5 GiB", text)
        self.assertIn("Prosody 0.12.3; ejabberd 23.01 (Erlang 25)", text)
        self.assertIn("presence: 1 user, 200 online contacts", text)
        self.assertIn("the machine has 200 %", text)
        self.assertEqual(json.loads(json.dumps(doc))["summary"]["prosody"]["msg_cpu_us"], 60.0)


class OptionsTests(SynchronousTestCase):
    """
    The command line and the plan it makes.
    """

    def test_onlyGatewayIsBothFaces(self) -> None:
        """
        C{--only gateway} selects both faces; rows keep the table's order;
        an unknown row is an error.
        """
        self.assertEqual(compare.parseArgs(["--only", "prosody", "--only", "gateway"]).only,
                         ["gateway-native", "gateway-xmpp", "prosody"])
        self.assertEqual(compare.parseArgs([]).only, list(compare.ROWS))
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, compare.parseArgs, ["--only", "openfire"])

    def test_idleSizes(self) -> None:
        """
        One or two idle sizes (the table's two memory columns), each above
        the 20 contacts every session has among the others.
        """
        self.assertEqual(compare.parseArgs(["--idle-sizes", "100", "5000"]).idle_sizes, [100, 5000])
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, compare.parseArgs, ["--idle-sizes", "20"])
        self.assertRaises(SystemExit, compare.parseArgs, ["--idle-sizes", "100", "200", "300"])

    def test_quickIsSmaller(self) -> None:
        """
        C{--quick} runs 20 pairs for 2 s and only 1,000 idle sessions; the
        full run 50 pairs for 10 s, 1,000 and 10,000.
        """
        full = compare.settings(compare.parseArgs([]))
        self.assertEqual((full["pairs"], full["duration_s"], full["idle_sizes"]), (50, 10.0, [1000, 10000]))
        self.assertEqual((SETTINGS["pairs"], SETTINGS["duration_s"], SETTINGS["idle_sizes"]), (20, 2.0, [1000]))
        self.assertEqual(SETTINGS["rate"], 2000.0)

    def test_trafficSettingsShared(self) -> None:
        """
        L{compare.trafficSettings} is the message traffic's part of both
        benchmarks' settings: C{--quick} picks the pairs and warm-up it is
        given, C{--pairs} and C{--duration} override.
        """
        from bench import irc_compare

        quick = compare.trafficSettings(compare.parseArgs(["--quick"]), quickPairs=7, quickWarmup=0.25)
        self.assertEqual((quick["pairs"], quick["warmup_s"], quick["duration_s"], quick["rate"]), (7, 0.25, 2.0, 2000.0))
        mine = compare.trafficSettings(compare.parseArgs(["--pairs", "3", "--duration", "1"]), quickPairs=7, quickWarmup=0.25)
        self.assertEqual((mine["pairs"], mine["warmup_s"], mine["duration_s"]), (3, 2.0, 1.0))
        irc = irc_compare.settings(irc_compare.parseArgs(["--quick", "--only", "ngircd"]))
        for key in ("duration_s", "settle_s", "window", "rate", "driver_procs"):
            self.assertEqual(irc[key], SETTINGS[key], key)

    def test_repsAndRows(self) -> None:
        """
        Every other rep runs the rows in reverse order.
        """
        args = compare.parseArgs(["--reps", "3", "--only", "prosody", "--only", "ejabberd"])
        self.assertEqual(
            list(compare.repsAndRows(args)),
            [(1, "prosody"), (1, "ejabberd"), (2, "ejabberd"), (2, "prosody"), (3, "prosody"), (3, "ejabberd")],
        )

    def test_runsOnOneServer(self) -> None:
        """
        A server runs the idle run first (while fresh), then 1:1 messages,
        the fixed rate, presence (one driver process) and both logins.
        """
        runs = compare.firstServerRuns(SETTINGS, compare.TESTS)
        self.assertEqual([r[0] for r in runs], ["idle1000", "msg", "rate", "presence", "login_scram", "login_plain"])
        self.assertEqual([r[3] for r in runs], [2, 2, 2, 1, 2, 2])
        self.assertIn("--rate", runs[2][2])

    def test_rateWindow(self) -> None:
        """
        The fixed-rate run has a window of its own (20 s in the full run, 2 s
        with C{--quick}; C{--rate-duration} sets it, C{--duration} sets both)
        and the driver's send tick (C{--send-tick}, 2 ms by default; 0:
        each message sent when due); the driver is given both, after the common
        C{--duration}, so they win.
        """
        full = compare.settings(compare.parseArgs([]))
        self.assertEqual((full["duration_s"], full["rate_duration_s"], full["send_tick_s"]), (10.0, 20.0, 0.002))
        self.assertEqual(SETTINGS["rate_duration_s"], 2.0)
        both = compare.settings(compare.parseArgs(["--duration", "4"]))
        self.assertEqual((both["duration_s"], both["rate_duration_s"]), (4.0, 4.0))
        mine = compare.settings(compare.parseArgs(["--quick", "--rate-duration", "60", "--send-tick", "0"]))
        self.assertEqual((mine["duration_s"], mine["rate_duration_s"], mine["send_tick_s"]), (2.0, 60.0, 0.0))
        rate = dict((r[0], r[2]) for r in compare.firstServerRuns(mine, ["rate"]))["rate"]
        self.assertEqual(rate[rate.index("--duration") + 1], "60")
        self.assertEqual(rate[rate.index("--send-tick") + 1], "0")
        self.assertIn("fixed rate 2,000 msgs/s for 60 s, each message sent when due", compare.report(compare.document(
            compare.parseArgs(["--quick", "--rate-duration", "60", "--send-tick", "0", "--only", "ejabberd"]), [], 0.0)))
        self.assertIn("fixed rate 2,000 msgs/s for 2 s, sent on a 2 ms tick", compare.report(compare.document(
            compare.parseArgs(["--quick", "--only", "ejabberd"]), [], 0.0)))

    def test_rateSpread(self) -> None:
        """
        With more than one rep, the report lists each rep's p99 at the fixed
        rate per row, besides the table's median; with one rep, nothing.
        """
        runs = [traffic("ejabberd", rep, 100, 1000, 400, p99, 10, (1, 1), (1, 1), (1, 1)) for rep, p99 in ((1, 900), (2, 1300), (3, 1100))]
        records = [r for rs in runs for r in rs]
        self.assertEqual(compare.rateSpread(records), "p99 ms @ fixed rate, each rep: ejabberd 0.90, 1.30, 1.10")
        self.assertEqual(compare.rateSpread(runs[0]), "")

    def test_rateSpreadPaired(self) -> None:
        """
        Each other row's p99 is set against ejabberd's of the same rep: how
        many reps it was at or below it.
        """
        records = []
        for rep, mine, theirs in ((1, 800, 900), (2, 1400, 1300), (3, 1100, 1100)):
            records += traffic("gateway-native", rep, 100, 1000, 400, mine, 10, (1, 1), (1, 1), (1, 1))
            records += traffic("ejabberd", rep, 100, 1000, 400, theirs, 10, (1, 1), (1, 1), (1, 1))
        text = compare.rateSpread(records)
        self.assertTrue(text.endswith("At or below ejabberd's in the same rep: imgateway, native face 2 of 3"), text)

    def test_runsWithoutIdle(self) -> None:
        """
        Without C{idle} in C{--tests}, each chosen traffic run is made once
        on the server (it once ran twice, its figure the median of both).
        """
        runs = compare.firstServerRuns(SETTINGS, ["msg", "presence"])
        self.assertEqual([r[0] for r in runs], ["msg", "presence"])

    def test_accounts(self) -> None:
        """
        The traffic server gets the message pairs, the user who changes
        state with its 200 contacts, the login accounts and the first idle
        size's accounts, each idle session with 20 contacts; each later
        idle size gets a server of its own.
        """
        full = compare.settings(compare.parseArgs([]))
        first, later = compare.provisions(full, compare.TESTS)
        contacts = contactsOf(first.pairs)
        self.assertEqual(len(contacts[compare.PRESENCE_FIRST]), 200)
        self.assertTrue(all(len(contacts[n]) == 20 for n in range(compare.IDLE_FIRST, compare.IDLE_FIRST + 1000)))
        self.assertEqual(first.ranges(), [(0, 100), (500, 201), (1000, 200), (2000, 1000)])
        [second] = later
        self.assertEqual(second.ranges(), [(1000, 200), (2000, 10000)])
        self.assertEqual(len(second.pairs), 10000 * 10)


class CompiledRowsTests(SynchronousTestCase):
    """
    The compiled build's rows (C{--compiled TREE}, C{--build-compiled}).
    """

    def tree(self, modules: list[str], built: list[str]) -> Path:
        """
        A fake source tree whose C{imgateway/_compiled.py} lists
        C{modules}, with a C extension beside each of C{built}.
        """
        top = Path(self.mktemp())
        (top / "imgateway").mkdir(parents=True)
        (top / "imgateway" / "_compiled.py").write_text(f"COMPILED_MODULES = {tuple(modules)!r}\n")
        for path in modules:
            (top / path).parent.mkdir(parents=True, exist_ok=True)
            (top / path).write_text("")
        for path in built:
            (top / (path.removesuffix(".py") + EXTENSION_SUFFIXES[0])).write_text("")
        return top

    def test_twins(self) -> None:
        """
        With C{--compiled}, each chosen gateway row gets its compiled twin
        right after it (a compiled row named in C{--only} is run alone);
        without it, by default, only the pure-Python rows run.
        """
        self.assertEqual(compare.parseArgs(["--compiled", "t", "--only", "gateway-native"]).only,
                         ["gateway-native", "gateway-native-compiled"])
        self.assertEqual(compare.parseArgs(["--build-compiled"]).only,
                         ["gateway-native", "gateway-native-compiled", "gateway-xmpp", "gateway-xmpp-compiled",
                          "prosody", "ejabberd"])
        self.assertEqual(compare.parseArgs(["--compiled", "t", "--only", "gateway-xmpp-compiled"]).only,
                         ["gateway-xmpp-compiled"])
        args = compare.parseArgs(["--compiled", "t", "--only", "gateway", "--only", "prosody"])
        self.assertEqual(args.only, ["gateway-native", "gateway-native-compiled", "gateway-xmpp", "gateway-xmpp-compiled",
                                     "prosody"])
        self.assertEqual(args.compiledTree, Path("t"))
        self.assertEqual(compare.parseArgs([]).only, list(compare.ROWS))
        self.assertIsNone(compare.parseArgs([]).compiledTree)

    def test_compiledRowNeedsATree(self) -> None:
        """
        A compiled row without C{--compiled} or C{--build-compiled} is an
        error, and so are both options at once.
        """
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, compare.parseArgs, ["--only", "gateway-native-compiled"])
        self.assertRaises(SystemExit, compare.parseArgs, ["--compiled", "t", "--build-compiled"])

    def test_treeMustBeBuilt(self) -> None:
        """
        A tree is taken when every module its C{imgateway/_compiled.py}
        lists has a C extension beside it; otherwise (or without that
        file) it is refused, naming what is missing.
        """
        modules = ["imgateway/core/address.py", "imgateway/adapters/native/framing.py"]
        self.assertEqual(compare.compiledModulesOf(self.tree(modules, modules)), modules)
        error = self.assertRaises(GatewayError, compare.compiledModulesOf, self.tree(modules, modules[:1]))
        self.assertIn("no C extension for imgateway/adapters/native/framing.py", str(error))
        self.assertRaises(GatewayError, compare.compiledModulesOf, Path(self.mktemp()))

    def test_compiledRowRunsFromTheTree(self) -> None:
        """
        A compiled row starts its twin's server from the compiled tree; a
        pure-Python row from this tree (no tree given).
        """
        started: list[tuple[str, Path | None]] = []

        def startServer(kind: str, provision: Provision, keep: bool = False, tree: Path | None = None) -> Any:
            started.append((kind, tree))
            raise PeerError("not in a unit test")

        self.patch(compare, "startServer", startServer)
        self.patch(compare, "info", lambda *args: None)
        args = compare.parseArgs(["--compiled", "/built", "--only", "gateway-xmpp"])
        for row in args.only:
            [record] = compare.oneServer(args, SETTINGS, row, 1, Provision([], []), [("msg", "msg", [], 2)])
            self.assertEqual((record["row"], record["run"]), (row, "msg"))
            self.assertIn("server did not start", record["error"])
        self.assertEqual(started, [("gateway-xmpp", None), ("gateway-xmpp", Path("/built"))])

    def test_buildCompiledTree(self) -> None:
        """
        C{--build-compiled} copies the source tree's package, plugin and
        build files (not its caches or extensions) and builds the copy in
        place with C{IMGATEWAY_COMPILE=1}; a failed build is an error with
        its output.
        """
        source = self.tree(["imgateway/core/address.py"], ["imgateway/core/address.py"])
        (source / "imgateway" / "__pycache__").mkdir()
        (source / "setup.py").write_text("")
        calls: list[tuple[list[str], str, str | None]] = []
        status = [0]

        def run(cmd: list[str], cwd: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            calls.append((cmd, cwd, env.get("IMGATEWAY_COMPILE")))
            return subprocess.CompletedProcess(cmd, status[0], "out", "the compiler failed")

        self.patch(subprocess, "run", run)
        dest = Path(self.mktemp())
        compare.buildCompiledTree(dest, source)
        self.assertEqual(calls, [(compare.buildCommand(), str(dest), "1")])
        self.assertEqual(compare.buildCommand()[1:], ["setup.py", "-q", "build_ext", "--inplace"])
        self.assertTrue((dest / "setup.py").exists())
        self.assertTrue((dest / "imgateway" / "core" / "address.py").exists())
        self.assertFalse((dest / "imgateway" / "__pycache__").exists())
        self.assertEqual([p for p in os.listdir(dest / "imgateway" / "core") if p != "address.py"], [])
        status[0] = 1
        error = self.assertRaises(GatewayError, compare.buildCompiledTree, Path(self.mktemp()), source)
        self.assertIn("the compiler failed", str(error))

    def test_compiledRatiosAndReport(self) -> None:
        """
        Each compiled row's figures are also given divided by its twin's,
        in the JSON and as a table of the report, which names the tree and
        its compiled modules; the compiled rows sit after their twins in
        the main table.
        """
        recs = traffic("gateway-native", 1, 100, 20000, 500, 4000, 40, (1500, 700), (400, 1900), (8, 61440))
        recs += traffic("gateway-native-compiled", 1, 88, 22000, 500, 4000, 36, (1500, 700), (400, 1900), (8, 61440))
        recs += traffic("prosody", 1, 60, 10000, 3000, 20000, 40, (500, 1000), (300, 2000), (32, 51200))
        summary = compare.summarise(recs, [1000])
        cratios = compare.compiledRatios(summary)
        self.assertEqual(list(cratios), ["gateway-native-compiled"])
        self.assertAlmostEqual(cratios["gateway-native-compiled"]["msg_cpu_us"], 0.88)
        self.assertAlmostEqual(cratios["gateway-native-compiled"]["presence_cpu_us"], 0.9)
        doc = {
            "command": "bench/compare.py --quick --compiled t", "wall_s": 95.2,
            "machine": {"cores": 2, "cpu": "Xeon", "memory_gib": 23.5, "kernel": "6.1", "loadavg": (1.0, 2.0, 3.0)},
            "versions": {"imgateway": "0.1", "commit": "abc", "python": "3.11.7", "twisted": "26.10.0",
                         "prosody": "0.12.3", "ejabberd": "23.01", "erlang": "25"},
            "settings": SETTINGS, "rows": ["gateway-native", "gateway-native-compiled", "prosody"],
            "compiled": {"tree": "/t", "built": False, "modules": ["imgateway/core/address.py"]},
            "summary": summary, "ratios": compare.ratios(summary), "compiled_ratios": cratios, "runs": recs,
        }  # fmt: skip
        text = compare.report(doc)
        self.assertIn("Compiled rows: the gateway from /t, mypyc-compiled modules: imgateway/core/address.py", text)
        self.assertIn("| imgateway, native face, compiled | 0.88 | 1.10 |", text)
        lines = text.splitlines()
        native = lines.index(next(line for line in lines if line.startswith("| imgateway, native face | 100 |")))
        self.assertTrue(lines[native + 1].startswith("| imgateway, native face, compiled | 88.0 |"), lines[native + 1])
        self.assertEqual(json.loads(json.dumps(doc))["compiled_ratios"], cratios)


class ContactsTests(SynchronousTestCase):
    """
    The contact graph of the idle sessions.
    """

    def test_circulant(self) -> None:
        """
        Each account has exactly C{contacts} contacts, all among the
        accounts, mutual, never itself, each pair once.
        """
        pairs = circulant(100, 25, 20)
        self.assertEqual(len(pairs), len({frozenset(p) for p in pairs}))
        contacts = contactsOf(pairs)
        self.assertEqual(sorted(contacts), list(range(100, 125)))
        for n, cs in contacts.items():
            self.assertEqual(len(set(cs)), 20)
            self.assertNotIn(n, cs)
            self.assertTrue(all(100 <= c < 125 for c in cs))

    def test_tooFew(self) -> None:
        """
        20 contacts need more than 20 accounts.
        """
        self.assertRaises(ValueError, circulant, 0, 20, 20)

    def test_ranges(self) -> None:
        """
        A provision's accounts, deduplicated and sorted, as runs.
        """
        self.assertEqual(Provision([5, 1, 2, 3, 3, 9], []).ranges(), [(1, 3), (5, 1), (9, 1)])


class _Transport(asyncio.Transport):
    """
    What the driver's connections use of an asyncio transport.
    """

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


SPEC = {"domain": "corp.example", "password": "pw", "proto": "native"}


class DriverTests(SynchronousTestCase):
    """
    The load driver's parsing and SASL, on fixed bytes.
    """

    def test_helpers(self) -> None:
        """
        Headers are found in any case, stamps parsed, percentiles taken by
        nearest rank.
        """
        head = b"NOTIFY pres:a@x IMGW/1.0\r\nSeq: 7\r\nEVENT: presence\r\nNote: 3 1234"
        self.assertEqual(_header(head, b"seq"), b"7")
        self.assertEqual(_header(head, b"event"), b"presence")
        self.assertEqual(_header(head, b"note"), b"3 1234")
        self.assertIsNone(_header(head, b"from"))
        self.assertEqual(parseStamp("3 1234"), (3, 1234))
        self.assertIsNone(parseStamp("online"))
        self.assertEqual(
            percentiles(list(range(1000, 0, -1))), {"p50": 500, "p90": 900, "p99": 990, "max": 1000, "mean": 500.5}
        )

    def test_pooled(self) -> None:
        """
        The percentiles of a run are those of every driver process's
        samples together: a process whose messages were all slow makes the
        whole run's p99, which the mean of the processes' p99s would not.
        """
        import array

        fast = array.array("q", [100] * 990).tobytes()
        slow = array.array("q", [5000] * 20).tobytes()
        lat = pooled([{"lat": fast}, {"lat": slow}], "lat")
        self.assertEqual(len(lat), 1010)
        self.assertEqual(percentiles(lat)["p99"], 5000)

    def test_senderPhases(self) -> None:
        """
        The senders of all driver processes together are spread evenly over
        a period: sender C{g} of 4 (counted from C{first}) sends C{g / 4} of
        a period after sender 0, whichever process it is in.
        """
        self.assertEqual(senderPhases([100, 101, 104, 105], first=100, total=8), [0.0, 0.125, 0.5, 0.625])
        self.assertEqual(senderPhases([102, 103, 106, 107], first=100, total=8), [0.25, 0.375, 0.75, 0.875])

    def test_sendDue(self) -> None:
        """
        L{sendDue} sends what each sender is due by the time given (in
        periods), skips what is beyond C{cap} outstanding, and says when
        the next message falls due: the open loop sleeps until then, so each
        message goes out when it is due, not in a burst on a tick.
        """

        class FakeSender:
            def __init__(self, out: int = 0) -> None:
                self.out = out
                self.sent: list[int] = []

            def send(self, k: int) -> None:
                self.sent.append(k)

        senders = [FakeSender(), FakeSender(), FakeSender(out=1)]
        phase = [0.0, 0.5, 0.25]
        done = [0, 0, 0]
        self.assertEqual(sendDue(senders, phase, done, 0.4, cap=1), 0.5)  # type: ignore[arg-type]
        self.assertEqual([s.sent for s in senders], [[], [], []])
        self.assertEqual(sendDue(senders, phase, done, 0.6, cap=1), 0.75)  # type: ignore[arg-type]
        self.assertEqual([s.sent for s in senders], [[], [1], []])
        # The third is due at 0.75 but has its cap outstanding: skipped, not sent later.
        self.assertEqual(sendDue(senders, phase, done, 2.1, cap=1), 2.5)  # type: ignore[arg-type]
        self.assertEqual([s.sent for s in senders], [[1], [1, 1], []])
        self.assertEqual(done, [2, 2, 2])

    def test_nativeFrames(self) -> None:
        """
        The native connection answers every request from the server 200,
        hands a C{MESSAGE}'s sender and body and a presence C{NOTIFY}'s
        target and note to their callbacks, counts error answers, and keeps
        a frame split across reads until it is whole.
        """
        got: list[tuple[str, str, str]] = []

        async def go() -> tuple[NativeConn, _Transport]:
            c = NativeConn("user1", SPEC, Stats())
            t = _Transport()
            c.connection_made(t)
            c.onMessage = lambda conn, frm, body: got.append(("message", frm, body))
            c.onPresence = lambda conn, frm, note: got.append(("presence", frm, note))
            data = (b"MESSAGE im:user1@corp.example IMGW/1.0\r\nSeq: 4\r\nFrom: im:user0@corp.example\r\n"
                    b"Content-Length: 6\r\n\r\n12 345"
                    b"NOTIFY pres:user9@corp.example IMGW/1.0\r\nSeq: 5\r\nEvent: presence\r\nPresence: online\r\n"
                    b"Note: 7 89\r\n\r\nIMGW/1.0 480 Offline\r\nSeq: 99\r\n\r\n")  # fmt: skip
            c.data_received(data[:50])
            c.data_received(data[50:])
            return c, t

        c, t = asyncio.run(go())
        self.assertEqual(got, [("message", "user0@corp.example", "12 345"), ("presence", "user9@corp.example", "7 89")])
        self.assertEqual(b"".join(t.written), b"IMGW/1.0 200 OK\r\nSeq: 4\r\n\r\nIMGW/1.0 200 OK\r\nSeq: 5\r\n\r\n")
        self.assertEqual(c.stats.errors, 1)

    def test_nativeWrites(self) -> None:
        """
        Messages and presence changes are framed as the protocol says, each
        with the next C{Seq}.
        """

        async def go() -> tuple[bytes, bytes]:
            c = NativeConn("user1", SPEC, Stats())
            target = NativeConn("user2", SPEC, Stats())
            return c.messageBytes(target, [b"1 10", b"2 10"]), c.presenceBytes(b"3 10")

        messages, presence = asyncio.run(go())
        self.assertEqual(messages, b"MESSAGE im:user2@corp.example IMGW/1.0\r\nSeq: 1\r\nContent-Length: 4\r\n\r\n1 10"
                                   b"MESSAGE im:user2@corp.example IMGW/1.0\r\nSeq: 2\r\nContent-Length: 4\r\n\r\n2 10")
        self.assertEqual(presence, b"PUBLISH * IMGW/1.0\r\nSeq: 3\r\nPresence: online\r\nNote: 3 10\r\n\r\n")

    def test_xmppStanzas(self) -> None:
        """
        The XMPP connection hands a message's bare sender and body, and an
        available presence's status, to their callbacks, whatever prefix
        the server's stream uses; presence without a status is not a
        delivery.
        """
        got: list[tuple[str, str, str]] = []

        async def go() -> None:
            c = XmppConn("user1", dict(SPEC, proto="xmpp"), Stats())
            c.connection_made(_Transport())
            c.onMessage = lambda conn, frm, body: got.append(("message", frm, body))
            c.onPresence = lambda conn, frm, note: got.append(("presence", frm, note))
            c.data_received(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                            b"<message from='user0@corp.example/r' type='chat'><body>12 345</body></message>"
                            b"<presence from='user9@corp.example/x'/>"
                            b"<presence from='user9@corp.example/x'><status>7 89</status></presence>")  # fmt: skip

        asyncio.run(go())
        self.assertEqual(got, [("message", "user0@corp.example", "12 345"), ("presence", "user9@corp.example", "7 89")])

    def test_scramAsTheProjectsClient(self) -> None:
        """
        The driver's SCRAM-SHA-1 client answers a server-first message
        exactly as the project's own client (L{clientMechanism}) does with
        the same nonce, and checks the server's signature.
        """
        ours = ScramClient("SCRAM-SHA-1", "user1", "pw")
        theirs = clientMechanism("SCRAM-SHA-1", "user1", "pw", nonce=ours.nonce)
        self.assertEqual(ours.start(), theirs.start())
        challenge = f"r={ours.nonce}srv,s={base64.b64encode(b'salt').decode()},i=4096".encode()
        self.assertEqual(ours.step(challenge), theirs.step(challenge))
        ours.verify(b"v=" + base64.b64encode(ours.serverSignature))
        self.assertRaises(Exception, ours.verify, b"v=" + base64.b64encode(b"x" * 20))

    def test_storedKeys(self) -> None:
        """
        The SCRAM-SHA-1 keys written for Prosody are those a SCRAM client
        derives (RFC 5802 test vector: user, pencil).
        """
        stored, server = scramSha1("pencil", base64.b64decode("QSXCR+Q6sek8bf92"), 4096)
        # From RFC 5802 section 5: ServerSignature v=rmF9pqV8S7suAoZWja4dJRkFsKQ= is
        # HMAC(ServerKey, AuthMessage); check ServerKey through it.
        import hmac

        auth = (b"n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                b"s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j")
        self.assertEqual(base64.b64encode(hmac.digest(server, auth, "sha1")), b"rmF9pqV8S7suAoZWja4dJRkFsKQ=")
        self.assertEqual(len(stored), 20)
