# -*- test-case-name: tests.test_bench_irc_compare -*-
"""
Tests for C{bench/irc_compare.py} and the IRC side of its driver
(C{bench/_loaddriver.py}) on fixed inputs: the figures taken from the
driver's records (and from the peers' C{irc_load.py}), the medians, the two
tables and the report, the JSON document, the plan of runs, the options, the
bridge's C{[[irc.network]]} table, and the driver's IRC lines. Running the
benchmark itself is C{tests/e2e/test_bench_irc_compare.py}.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import irc_compare
from bench._gateway import IRC_BENCH_SETTINGS, benchConfig
from bench._loaddriver import IrcConn, NativeConn, Stats, makeConn
from bench._peers import Server
from imgateway.adapters.irc.network import parseNetworks
from imgateway.config import ConfigTable
from tests.test_bench_compare import _Transport

SETTINGS = irc_compare.settings(irc_compare.parseArgs(["--quick", "--only", "ngircd"]))


def rowRecords(row: str, rep: int, rate: float, cpu: float, p50: int, p99: int, rssKb: int,
               oneway: tuple[float, float, float | None] | None = None) -> list[dict[str, Any]]:
    """
    The records of one row's runs, as C{irc_compare.oneRow} makes them.
    """
    base = {"row": row, "rep": rep, "server_cpu_pct": 50.0, "driver_cpu_pct": [20.0, 21.0], "other_cpu_pct": 7.0}
    out = []
    if row != "bridge":
        out += [
            dict(base, run="msg", test="msg", rate_per_s=rate, server_cpu_us_per_item=cpu, server_rss_kb=rssKb,
                 lat_us={"p50": 70000, "p99": 90000}, undelivered=0),
            dict(base, run="rate", test="msg", rate_per_s=2000.0, server_cpu_us_per_item=cpu * 2,
                 lat_us={"p50": p50, "p99": p99}, undelivered=0),
        ]  # fmt: skip
    if oneway is not None:
        orate, ocpu, peer = oneway
        extra = {} if peer is None else {"peer_cpu_us_per_item": peer, "peer_cpu_pct": 10.0}
        out += [
            dict(base, run="oneway", test="msg", rate_per_s=orate, server_cpu_us_per_item=ocpu, server_rss_kb=rssKb,
                 lat_us={"p50": 50000, "p99": 80000}, undelivered=0, **extra),
            dict(base, run="oneway_rate", test="msg", rate_per_s=1000.0, lat_us={"p50": p50 * 2, "p99": p99 * 2},
                 undelivered=0),
        ]  # fmt: skip
    return out


def records() -> list[dict[str, Any]]:
    """
    Three reps of ngIRCd, two of the gateway's face (one run failed), one
    of the bridge, none of the peers' driver.
    """
    out: list[dict[str, Any]] = []
    for rep, k in ((1, 1.0), (2, 1.2), (3, 0.8)):
        out += rowRecords("ngircd", rep, 90000 * k, 1.5 * k, 200, 5000, 5632, (70000 * k, 1.6, None))
    out += rowRecords("gateway-irc", 1, 5000, 70, 1000, 8000, 65536)
    out += rowRecords("gateway-irc", 2, 6000, 80, 1400, 9000, 65536)
    out[-1] = {"row": "gateway-irc", "run": "rate", "rep": 2, "error": "the driver took more than 600 s"}
    out += rowRecords("bridge", 1, 0, 0, 900, 6000, 62464, (4500, 100.0, 3.25))
    return out


class FiguresTests(SynchronousTestCase):
    """
    The figures: what each run gives, and medians over reps.
    """

    def test_figuresOfEachRun(self) -> None:
        """
        The saturated run gives msgs/s, server CPU µs per message and RSS
        in MiB; the fixed-rate run p50/p99 in ms; the one-way runs the same
        under their own names, with the CPU of the ircd behind the bridge
        when it was read; a failed run gives none.
        """
        rs = {r["run"]: r for r in rowRecords("bridge", 1, 0, 0, 900, 6000, 62464, (4500, 100.0, 3.25))}
        self.assertEqual(
            irc_compare.figuresOf(rs["oneway"]),
            {"oneway_rate": 4500.0, "oneway_cpu_us": 100.0, "oneway_peer_cpu_us": 3.25, "oneway_rss_mib": 61.0},
        )
        self.assertEqual(irc_compare.figuresOf(rs["oneway_rate"]), {"oneway_p50_ms": 1.8, "oneway_p99_ms": 12.0})
        rs = {r["run"]: r for r in rowRecords("ngircd", 1, 90000, 1.5, 200, 5000, 5632)}
        self.assertEqual(irc_compare.figuresOf(rs["msg"]), {"msg_rate": 90000.0, "msg_cpu_us": 1.5, "msg_rss_mib": 5.5})
        self.assertEqual(irc_compare.figuresOf(rs["rate"]), {"rate_p50_ms": 0.2, "rate_p99_ms": 5.0})
        self.assertEqual(irc_compare.figuresOf({"row": "ngircd", "run": "msg", "error": "x"}), {})

    def test_summaryIsTheMedianOfTheReps(self) -> None:
        """
        Each figure of a row is the median over its reps; a failed run
        counts for nothing; a row that never ran is absent.
        """
        summary = irc_compare.summarise(records())
        self.assertEqual(summary["ngircd"]["msg_rate"], 90000.0)
        self.assertEqual(summary["ngircd"]["oneway_rate"], 70000.0)
        self.assertEqual(summary["gateway-irc"]["msg_cpu_us"], 75.0)
        self.assertEqual(summary["gateway-irc"]["rate_p50_ms"], 1.0)
        self.assertEqual(summary["bridge"]["oneway_peer_cpu_us"], 3.25)
        self.assertNotIn("peers-load", summary)

    def test_peersRecord(self) -> None:
        """
        What the peers' C{irc_load.py} prints is read under the driver's
        names: its CPU per delivery is the server CPU per message; what it
        sent and did not receive is undelivered.
        """
        raw = {"test": "irc_msg", "delivered": 180000, "rate_per_s": 90000.0, "lat_us": {"p50": 300, "p99": 9000},
               "sent_total": 180400, "received_total": 180390, "errors": 0, "driver_cpu_pct": [30.0, 31.0],
               "server_cpu_pct": 13.0, "server_rss_kb": 5600, "server_cpu_us_per_delivery": 1.44,
               "other_cpu_pct": 150.0}  # fmt: skip
        record = dict(irc_compare.peersRecord(raw, "irc_load.py msg"), row="peers-load", run="msg")
        self.assertEqual(irc_compare.figuresOf(record), {"msg_rate": 90000.0, "msg_cpu_us": 1.44, "msg_rss_mib": 5600 / 1024})
        self.assertEqual(record["undelivered"], 10)
        self.assertEqual(record["cmd"], "python irc_load.py msg")


class TableTests(SynchronousTestCase):
    """
    The two Markdown tables and the report around them.
    """

    def setUp(self) -> None:
        self.summary = irc_compare.summarise(records())

    def test_faceTable(self) -> None:
        """
        The table of IRC clients has one line per row that ran, ngIRCd
        first, each with its msgs/s, CPU per message and its multiple of
        ngIRCd's, p50/p99 at the fixed rate, and RSS; a missing figure is a
        dash.
        """
        lines = irc_compare.faceTable(self.summary, SETTINGS).splitlines()
        self.assertEqual(lines[0], "| server | msgs/s saturated | server CPU µs/msg (× ngIRCd) | p50 / p99 ms @ 2,000/s | server RSS MiB |")
        self.assertEqual(lines[1], "|---" * 5 + "|")
        self.assertEqual(lines[2], "| ngIRCd, IRC clients | 90,000 | 1.50 (× 1.0) | 0.20 / 5.00 | 5.50 |")
        self.assertEqual(lines[3], "| imgateway, IRC face | 5,500 | 75.0 (× 50.0) | 1.00 / 8.00 | 64.0 |")
        self.assertEqual(len(lines), 4)

    def test_bridgeTable(self) -> None:
        """
        The one-way table puts ngIRCd directly (its own CPU in the ngIRCd
        column) next to the bridge (the gateway's CPU, and that of the
        ngIRCd behind it).
        """
        lines = irc_compare.bridgeTable(self.summary, SETTINGS).splitlines()
        self.assertIn("p50 / p99 ms @ 1,000/s", lines[0])
        self.assertEqual(lines[2], "| IRC → ngIRCd → IRC (direct) | 70,000 | – | 1.60 | 0.40 / 10.0 | 5.50 |")
        self.assertEqual(lines[3], "| native → gateway → puppet → ngIRCd → IRC | 4,500 | 100 | 3.25 | 1.80 / 12.0 | 61.0 |")

    def test_reportAndJSON(self) -> None:
        """
        The report names the command, the machine, the versions and the
        load, then both tables and how the cores were shared (others' CPU
        included); the document it is made from is JSON.
        """
        doc = {
            "command": "bench/irc_compare.py --quick", "wall_s": 80.4,
            "machine": {"cores": 2, "cpu": "Xeon", "memory_gib": 23.5, "kernel": "6.1", "loadavg": (1.0, 2.0, 3.0)},
            "versions": {"imgateway": "0.1", "commit": "abc", "python": "3.11.7", "twisted": "26.10.0", "ngircd": "26.1"},
            "settings": SETTINGS, "summary": self.summary, "runs": records(),
        }  # fmt: skip
        text = irc_compare.report(doc)
        self.assertTrue(text.startswith("`bench/irc_compare.py --quick` (80 s); reps: medians of 3\n"), text[:200])
        self.assertIn("Machine: 2 cores (Xeon), 23.5 GiB", text)
        self.assertIn("ngIRCd 26.1", text)
        self.assertIn("10 pairs of IRC clients", text)
        self.assertIn("fixed rate 2,000 msgs/s for 2 s, sent on a 2 ms tick;", text)
        self.assertIn("fixed rate 1,000 msgs/s for 2 s;", text)
        self.assertIn("| ngIRCd, IRC clients | 90,000 |", text)
        self.assertIn("| native → gateway → puppet → ngIRCd → IRC | 4,500 |", text)
        self.assertIn("| imgateway, IRC face | rate | 50.0 | 20.0 + 21.0 | 7.00 | – | 1 failed: the driver took more than 600 s |", text)
        self.assertIn("| ngIRCd, IRC clients | msg | 50.0 | 20.0 + 21.0 | 7.00 | – | – |", text)
        self.assertEqual(json.loads(json.dumps(doc))["summary"]["bridge"]["oneway_rate"], 4500.0)


class OptionsTests(SynchronousTestCase):
    """
    The command line, the plan it makes, and the servers' configuration.
    """

    def test_rows(self) -> None:
        """
        Rows keep the tables' order; an unknown row is an error; the row of
        the peers' driver needs the driver.
        """
        args = irc_compare.parseArgs(["--only", "bridge", "--only", "ngircd"])
        self.assertEqual(args.only, ["ngircd", "bridge"])
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, irc_compare.parseArgs, ["--only", "inspircd"])
        self.patch(irc_compare, "peersLoadPath", lambda: None)
        self.assertEqual(irc_compare.parseArgs([]).only, ["ngircd", "gateway-irc", "bridge"])
        self.assertRaises(SystemExit, irc_compare.parseArgs, ["--only", "peers-load"])
        self.assertRaises(SystemExit, irc_compare.parseArgs, ["--peers-load", "/no/such/irc_load.py"])
        self.assertRaises(SystemExit, irc_compare.parseArgs, ["--reps", "0"])

    def test_quickIsSmaller(self) -> None:
        """
        C{--quick} runs 10 pairs and 10 one-way senders for 2 s; the full
        run 50 for 10 s, and the fixed-rate runs for 20 s as C{compare.py}'s
        (2 s with C{--quick}) with its send tick; C{--pairs} and
        C{--duration} set both, C{--rate-duration} and C{--send-tick} the
        fixed-rate runs'.
        """
        full = irc_compare.settings(irc_compare.parseArgs(["--only", "ngircd"]))
        self.assertEqual((full["pairs"], full["senders"], full["duration_s"]), (50, 50, 10.0))
        self.assertEqual((full["rate_duration_s"], full["send_tick_s"]), (20.0, 0.002))
        self.assertEqual((SETTINGS["pairs"], SETTINGS["senders"], SETTINGS["duration_s"], SETTINGS["rate_duration_s"]), (10, 10, 2.0, 2.0))
        mine = irc_compare.settings(irc_compare.parseArgs(["--only", "ngircd", "--pairs", "3", "--duration", "1"]))
        self.assertEqual((mine["pairs"], mine["senders"], mine["duration_s"], mine["rate_duration_s"]), (3, 3, 1.0, 1.0))
        mine = irc_compare.settings(irc_compare.parseArgs(["--only", "ngircd", "--rate-duration", "30", "--send-tick", "0"]))
        self.assertEqual((mine["duration_s"], mine["rate_duration_s"], mine["send_tick_s"]), (10.0, 30.0, 0.0))

    def test_runsOfEachRow(self) -> None:
        """
        ngIRCd runs both loads (pairs, then one way to the C{irc} nicks);
        the gateway's face logs in with C{PASS}; the bridge runs one way
        only; each load saturated, then at a fixed rate over the fixed-rate
        window, with the send tick (not the peers' C{irc_load.py}, which
        times its own sends), the saturated runs over the driver's window.
        """
        s = irc_compare.settings(irc_compare.parseArgs(["--only", "ngircd", "--rate-duration", "20", "--send-tick", "0"]))
        runs = {row: irc_compare.plannedRuns(row, s) for row in irc_compare.ROWS}
        self.assertEqual([r[0] for r in runs["ngircd"]], ["msg", "rate", "oneway", "oneway_rate"])
        self.assertEqual([r[0] for r in runs["gateway-irc"]], ["msg", "rate"])
        self.assertEqual([r[0] for r in runs["bridge"]], ["oneway", "oneway_rate"])
        self.assertIn("--irc-pass", runs["gateway-irc"][0][1])
        self.assertNotIn("--irc-pass", runs["ngircd"][0][1])
        window = ["--duration", "20", "--send-tick", "0"]
        self.assertEqual(runs["ngircd"][1][1][-6:], [*window, "--rate", "2000"])
        self.assertEqual(runs["ngircd"][3][1][-6:], [*window, "--rate", "1000"])
        self.assertEqual(runs["gateway-irc"][1][1][-6:], [*window, "--rate", "2000"])
        self.assertEqual(runs["bridge"][1][1][-6:], [*window, "--rate", "1000"])
        self.assertEqual(runs["peers-load"][1][1][-4:], ["--duration", "20", "--rate", "2000"])
        self.assertNotIn("--send-tick", runs["peers-load"][1][1])
        for row in irc_compare.ROWS:
            for name, extra, _ in runs[row]:
                self.assertEqual("--duration" in extra, name.endswith("rate"), (row, name))
        self.assertIn("--to-proto", runs["bridge"][0][1])

    def test_peersLoadWindow(self) -> None:
        """
        The peers' C{irc_load.py} runs over the fixed-rate window in the
        C{rate} run, over the saturated window otherwise.
        """
        s = irc_compare.settings(irc_compare.parseArgs(["--only", "ngircd", "--rate-duration", "20"]))
        commands: list[list[str]] = []

        def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            commands.append(cmd)
            return subprocess.CompletedProcess(cmd, 0, '{"sent_total": 1, "received_total": 1}\n', "")

        self.patch(subprocess, "run", run)
        server = Server()
        server.port, server.pid = 6667, 1234
        for name, extra, procs in irc_compare.plannedRuns("peers-load", s):
            self.assertNotIn("error", irc_compare.peersLoad(Path("irc_load.py"), server, s, extra, procs, 60))
        durations = [cmd[cmd.index("--duration") + 1] for cmd in commands]
        self.assertEqual(durations, ["10", "20"])
        self.assertEqual([cmd.count("--duration") for cmd in commands], [1, 1])
        self.assertEqual(commands[1][commands[1].index("--rate") + 1], "2000")

    def test_networkTable(self) -> None:
        """
        The bridge's C{[[irc.network]]} table parses, points at the ngIRCd,
        and raises the flood allowance and the puppets out of reach.
        """
        (network,) = parseNetworks(ConfigTable(tomllib.loads(irc_compare.networkConfig(6667, 50))["irc"], "t [irc]"))
        self.assertEqual((network.domain, network.endpoint), (irc_compare.NETWORK_DOMAIN, "tcp:127.0.0.1:6667:timeout=5"))
        self.assertEqual((network.flood.burst, network.flood.rate, network.maxPuppets), (1000000, 1000000.0, 60))

    def test_gatewayConfig(self) -> None:
        """
        L{benchConfig} turns the IRC face on with its limits out of reach,
        or the IRC adapter on without a listener for a bridge only.
        """
        template = (Path(__file__).parent.parent / "etc" / "imgateway.toml").read_text()
        face = tomllib.loads(benchConfig(template, Path("/tmp/x"), 5300, ircPort=6667))["irc"]
        self.assertEqual((face["enabled"], face["listen"]), (True, ["tcp:6667:interface=127.0.0.1"]))
        for key, value in IRC_BENCH_SETTINGS.items():
            self.assertEqual(face[key], int(value), key)
        bridge = tomllib.loads(benchConfig(template, Path("/tmp/x"), 5300, ircNetworks=irc_compare.networkConfig(6667, 5)))
        self.assertEqual((bridge["irc"]["enabled"], bridge["irc"]["listen"]), (True, []))
        self.assertEqual(bridge["irc"]["network"][0]["name"], "bench")
        self.assertEqual(bridge["irc"]["commands_per_second"], 4)


SPEC = {"domain": "bench.irc", "password": "pw", "proto": "irc"}


class IrcDriverTests(SynchronousTestCase):
    """
    The driver's IRC connection, on fixed bytes.
    """

    def test_login(self) -> None:
        """
        With C{irc_pass} it sends C{PASS user:password} before C{NICK} and
        C{USER}, and is registered under the nick the server's C{001}
        names; without, no C{PASS}.
        """

        async def go(spec: dict[str, Any]) -> tuple[bytes, str]:
            c = makeConn("user1", spec, Stats())
            assert isinstance(c, IrcConn)
            t = _Transport()
            c.connection_made(t)
            c.connect = lambda *a, **k: asyncio.sleep(0)  # type: ignore[method-assign]
            login = asyncio.ensure_future(c.login("127.0.0.1", 1, "PLAIN", 5))
            await asyncio.sleep(0)
            c.data_received(b":irc.test 001 user1_ :Welcome\r\n")
            await login
            return b"".join(t.written), c.nick

        self.assertEqual(asyncio.run(go(dict(SPEC, irc_pass=True))),
                         (b"PASS user1:pw\r\nNICK user1\r\nUSER user1 0 * :bench\r\n", "user1_"))
        self.assertEqual(asyncio.run(go(SPEC))[0], b"NICK user1\r\nUSER user1 0 * :bench\r\n")

    def test_refused(self) -> None:
        """
        A refused login (C{464}) fails it.
        """

        async def go() -> None:
            c = IrcConn("user1", dict(SPEC, irc_pass=True), Stats())
            c.connection_made(_Transport())
            c.data_received(b":irc.test 464 * :Password incorrect\r\n")
            await c.registered

        self.assertRaises(Exception, asyncio.run, go())

    def test_lines(self) -> None:
        """
        Every C{PRIVMSG} goes to the message callback with its sender's
        nick and its text, also one split across reads; C{PING} is
        answered; other lines are not messages.
        """
        got: list[tuple[str, str]] = []

        async def go() -> list[bytes]:
            c = IrcConn("user1", SPEC, Stats())
            t = _Transport()
            c.connection_made(t)
            c.onMessage = lambda conn, frm, body: got.append((frm, body))
            data = (b":user0!user0@corp.example PRIVMSG user1 :12 345\r\n:irc.test 353 user1 = &contacts :+user0\r\n"
                    b"PING :irc.test\r\n:user2!u@h PRIVMSG user1 :7 89\n")  # fmt: skip
            c.data_received(data[:30])
            c.data_received(data[30:])
            return t.written

        written = asyncio.run(go())
        self.assertEqual(got, [("user0", "12 345"), ("user2", "7 89")])
        self.assertEqual(written, [b"PONG :irc.test\r\n"])

    def test_writes(self) -> None:
        """
        Messages to an IRC user are C{PRIVMSG} lines to its nick, from IRC
        or from a native user (to the nick's address on the bridged
        network's domain).
        """

        async def go() -> tuple[bytes, bytes]:
            target = IrcConn("irc3", SPEC, Stats())
            irc = IrcConn("user1", SPEC, Stats())
            native = NativeConn("user1", dict(SPEC, domain="corp.example", proto="native"), Stats())
            return irc.messageBytes(target, [b"1 10", b"2 10"]), native.messageBytes(target, [b"1 10"])

        irc, native = asyncio.run(go())
        self.assertEqual(irc, b"PRIVMSG irc3 :1 10\r\nPRIVMSG irc3 :2 10\r\n")
        self.assertTrue(native.startswith(b"MESSAGE im:irc3@bench.irc IMGW/1.0\r\n"), native)
