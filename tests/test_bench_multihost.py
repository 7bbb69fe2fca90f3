# -*- test-case-name: tests.test_bench_multihost -*-
"""
Tests for C{bench/multihost.py}'s sampling of the servers with py-spy
(C{--py-spy}), on fixed inputs; running the benchmark itself is
C{tests/e2e/test_bench_multihost.py}.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import multihost

#: A py-spy raw record: two stacks of the reactor, one of a thread.
FOLDED = """\
<module> (twistd:8);ReactorBase.run (twisted/internet/base.py:686);EPollReactor.doPoll (twisted/internet/epollreactor.py:227) 30
<module> (twistd:8);LinkConnection._received (imgateway/router/link.py:526);LinkFrameReader.read (imgateway/router/link_codec.py:674) 50
<module> (twistd:8);LinkConnection._received (imgateway/router/link.py:529) 10
Thread._bootstrap (threading.py:995);Condition.wait (threading.py:331) 10
not a line
"""


class SpyTests(SynchronousTestCase):
    """
    C{--py-spy DIR} samples each server during the measured window and
    reads the shares of its own samples by file and by function.
    """

    def test_shares(self) -> None:
        """
        The shares are of the innermost frames, by file and by function
        (lines merged), the largest first; lines that are no stack are
        left out.
        """
        shares = multihost.spyShares(FOLDED)
        self.assertEqual(
            shares["files"],
            [(50.0, "imgateway/router/link_codec.py"), (30.0, "twisted/internet/epollreactor.py"), (10.0, "imgateway/router/link.py"), (10.0, "threading.py")],
        )
        self.assertEqual(shares["functions"][0], (50.0, "LinkFrameReader.read (imgateway/router/link_codec.py)"))
        self.assertEqual(multihost.spyShares(""), {"files": [], "functions": []})
        self.assertEqual(len(multihost.spyShares(FOLDED, top=2)["files"]), 2)

    def test_command(self) -> None:
        """
        Each server is sampled for the window's length in whole seconds (at
        least one), in the raw format, without stopping it.
        """
        command = multihost.spyCommand("py-spy", 42, 9.6, Path("/tmp/x.txt"))
        self.assertEqual(
            command,
            ["py-spy", "record", "--pid", "42", "--duration", "10", "--rate", str(multihost.SPY_RATE), "--format", "raw", "--nonblocking", "--output", "/tmp/x.txt"],
        )
        self.assertEqual(multihost.spyCommand("py-spy", 42, 0.2, Path("x"))[5], "1")

    def test_option(self) -> None:
        """
        C{--py-spy DIR} makes the folder and finds py-spy (or, where there
        is none, refuses to run); without it, nothing is sampled.
        """
        self.assertIsNone(multihost.parseArgs(["--quick"]).py_spy)
        folder = Path(self.mktemp())
        if multihost.pySpy() is None:
            self.assertRaises(SystemExit, multihost.parseArgs, ["--quick", "--py-spy", str(folder)])
            return
        args = multihost.parseArgs(["--quick", "--py-spy", str(folder)])
        self.assertTrue(folder.is_dir())
        self.assertEqual((args.py_spy, args.spy), (folder, multihost.pySpy()))


class PerProcessTests(SynchronousTestCase):
    """
    Each server's CPU per delivery, in the JSON and in the table.
    """

    ROW = {
        "topology": "router-proxy",
        "mode": "closed",
        "window": 10,
        "rate_per_s": 1000.0,
        "lat_us": {"p50": 1000, "p99": 2000},
        "ack_lat_us": {"p50": 1500, "p99": 2500},
        "server_cpu_pct": 90.0,
        "server_cpu_us_per_delivery": 90.0,
        "delivered": 20000,
        "server_cpu_s_by_process": {"router": 0.55, "hs1": 0.62, "hs2": 0.63},
    }

    def test_perDelivery(self) -> None:
        """
        Each process's CPU seconds over the deliveries, in µs; C{None}
        without the seconds or without a delivery.
        """
        self.assertEqual(multihost.perDelivery(self.ROW), {"router": 27.5, "hs1": 31.0, "hs2": 31.5})
        self.assertIsNone(multihost.perDelivery(dict(self.ROW, delivered=0)))
        self.assertIsNone(multihost.perDelivery(dict(self.ROW, server_cpu_s_by_process=None)))

    def test_table(self) -> None:
        """
        The table gives each process's CPU seconds and, in brackets, its µs
        per delivery.
        """
        row = dict(self.ROW, server_cpu_us_per_delivery_by_process=multihost.perDelivery(self.ROW))
        text = multihost.table([row], {})
        self.assertIn("| by process: CPU s (µs/delivery) |", text)
        self.assertIn("| router 0.55 (27.5), hs1 0.62 (31), hs2 0.63 (31.5) |", text)


#: What C{strace -c -f} writes when it is interrupted.
STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 73.40    0.471033        9612        49        27 futex
 16.12    0.103461          15      6860           sendto
  9.80    0.062916           9      6738           recvfrom
  0.61    0.003900          10       368           epoll_wait
  0.05    0.000349         349         1         1 restart_syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.641711          45     14016        28 total
"""


class CountsTests(SynchronousTestCase):
    """
    What each server did per delivery in the window: C{strace -c}'s
    summary read (C{--strace}), the snapshots of C{bench/_linksite}
    (C{--counts}), the context switches and CPU of a process.
    """

    def test_straceCalls(self) -> None:
        """
        The calls of each system call, by name, with or without errors; the
        total left out.
        """
        self.assertEqual(
            multihost.straceCalls(STRACE),
            {"futex": 49, "sendto": 6860, "recvfrom": 6738, "epoll_wait": 368, "restart_syscall": 1},
        )
        self.assertEqual(multihost.straceCalls(""), {})

    def test_siteCounts(self) -> None:
        """
        The difference of the last two snapshots, per delivery.
        """
        path = Path(self.mktemp())
        path.write_text(
            '{"t": 1.0, "iterations": 5, "tcp_sends": 1}\n'
            '{"t": 2.0, "iterations": 10, "tcp_sends": 100}\n'
            '{"t": 7.0, "iterations": 60, "tcp_sends": 300}\n'
        )
        self.assertEqual(multihost._siteCounts(path, 100), {"iterations": 0.5, "tcp_sends": 2.0})
        self.assertEqual(multihost._siteCounts(Path(self.mktemp()), 100), {})

    def test_thisProcess(self) -> None:
        """
        A live process has context switches and CPU; a process that is gone
        has none.
        """
        import os

        switches = multihost.contextSwitches(os.getpid())
        cpu = multihost.userSystemS(os.getpid())
        assert switches is not None and cpu is not None
        self.assertGreaterEqual(min(switches), 0)
        self.assertGreater(sum(cpu), 0)
        self.assertIsNone(multihost.contextSwitches(2**22 + 1))
        self.assertIsNone(multihost.userSystemS(2**22 + 1))


#: The head of a callgrind dump, as its C{dump} monitor command (C{vgdb}) has one
#: written.
DUMP = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 17903
cmd:  /x/.venv/bin/python /x/.venv/bin/twistd -n imgateway
part: 1

events: Ir
summary: 8508761357

fn=(1) main
totals: 8581878287
"""


class CallgrindTests(SynchronousTestCase):
    """
    C{--callgrind DIR} runs each server under valgrind's callgrind, zeroes
    its counts when the measured window starts and dumps them when it
    ends, and reads the instructions per delivery and their ratio to the
    single host's from the dumps.
    """

    def test_instructions(self) -> None:
        """
        A dump's instructions are its C{summary:} line's (not the
        C{totals:} line, which counts more than the part); a text without
        one has none.
        """
        self.assertEqual(multihost.callgrindInstructions(DUMP, 17903), 8508761357)
        self.assertIsNone(multihost.callgrindInstructions(DUMP, 17904))
        self.assertIsNone(multihost.callgrindInstructions("events: Ir\n", 17903))

    def test_perDeliveryInWindow(self) -> None:
        """
        The instructions over the deliveries of the window, scaled to the
        time between the middles of the zeroing and dumping commands;
        none when that time or the deliveries are not positive.
        """
        self.assertEqual(multihost.perDeliveryInWindow(1_000_000, 100, 10.0, (0.0, 0.2), (10.0, 10.2)), 10_000)
        self.assertEqual(multihost.perDeliveryInWindow(1_100_000, 100, 10.0, (0.0, 0.2), (11.0, 11.2)), 10_000)
        self.assertIsNone(multihost.perDeliveryInWindow(1_000, 100, 10.0, (5.0, 5.2), (5.0, 5.2)))
        self.assertIsNone(multihost.perDeliveryInWindow(1_000, 0, 10.0, (0.0, 0.2), (10.1, 10.3)))

    def test_lastDump(self) -> None:
        """
        The newest dump of a server is the one with the largest number
        after its file's name (C{.10} after C{.9}); the file the run ends
        with, and files of other servers, are not dumps of it.
        """
        folder = Path(self.mktemp())
        folder.mkdir()
        path = multihost.callgrindFile(folder, "two-homes-hs1")
        self.assertEqual(path, folder.resolve() / "two-homes-hs1.callgrind")
        self.assertIsNone(multihost.lastDump(path))
        for name in ("two-homes-hs1.callgrind", "two-homes-hs1.callgrind.9", "two-homes-hs1.callgrind.10", "two-homes-hs1.callgrind.x", "two-homes-hs10.callgrind.11"):
            (folder / name).write_text(DUMP)
        self.assertEqual(multihost.lastDump(path), path.parent / "two-homes-hs1.callgrind.10")

    def test_serverTag(self) -> None:
        """
        A server's files are named after its topology and its name, as
        L{multihost.Counters} finds them.
        """
        self.assertEqual(multihost.serverTag("router-proxy", "hs1"), "router-proxy-hs1")

    def test_instrument(self) -> None:
        """
        Under C{--callgrind}, a server runs under valgrind's callgrind,
        writing to its own file (an earlier run's removed), and is given
        time to start; without it, it runs as it is.
        """
        folder = Path(self.mktemp())

        class Gateway:
            twistdOptions: list[str] = []
            runUnder: list[str] = []
            startTimeout = 60.0

        plain = Gateway()
        multihost.instrument(multihost.parseArgs(["--quick"]), plain, "single", "gateway")  # type: ignore[arg-type]
        self.assertEqual((plain.runUnder, plain.twistdOptions, plain.startTimeout), ([], [], 60.0))
        args = multihost.parseArgs(["--quick"])
        args.callgrind = folder
        folder.mkdir()
        for old in ("two-homes-hs2.callgrind", "two-homes-hs2.callgrind.1", "two-homes-hs1.callgrind.1"):
            (folder / old).write_text(DUMP)
        traced = Gateway()
        multihost.instrument(args, traced, "two-homes", "hs2")  # type: ignore[arg-type]
        # An earlier run's dumps of this server are gone, not another's.
        self.assertEqual(sorted(p.name for p in folder.iterdir()), ["two-homes-hs1.callgrind.1"])
        self.assertEqual(
            traced.runUnder,
            ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={folder.resolve() / 'two-homes-hs2.callgrind'}"],
        )
        self.assertEqual(traced.startTimeout, multihost.CALLGRIND_START_S)

    def test_option(self) -> None:
        """
        C{--callgrind} measures the closed loop alone (a server under
        callgrind cannot keep a fixed rate), and needs valgrind.
        """
        self.assertIsNone(multihost.parseArgs(["--quick"]).callgrind)
        folder = Path(self.mktemp())
        self.assertRaises(SystemExit, multihost.parseArgs, ["--quick", "--callgrind", str(folder)])
        self.assertRaises(SystemExit, multihost.parseArgs, ["--quick", "--callgrind", str(folder), "--mode", "closed", "--mode", "fixed"])
        if shutil.which("valgrind") is None or shutil.which("vgdb") is None:
            self.assertRaises(SystemExit, multihost.parseArgs, ["--quick", "--callgrind", str(folder), "--mode", "closed"])
            return
        args = multihost.parseArgs(["--quick", "--callgrind", str(folder), "--mode", "closed"])
        self.assertEqual(args.callgrind, folder)
        self.assertTrue(folder.is_dir())

    def test_ratios(self) -> None:
        """
        The instructions of every server of a row, summed, over the single
        host's, mode by mode; a row with a server not counted has no ratio.
        """
        rows = [
            {"topology": "single", "mode": "closed", "counts_per_delivery_by_process": {"gateway": {"wakeups": 0.1, "instructions": 128972}}},
            {"topology": "two-homes", "mode": "closed", "counts_per_delivery_by_process": {"hs1": {"instructions": 131448}, "hs2": {"instructions": 120489}}},
            {"topology": "router-proxy", "mode": "closed", "counts_per_delivery_by_process": {"router": {"wakeups": 0.1}, "hs1": {"instructions": 1}}},
        ]
        self.assertEqual(
            multihost.instructionRatios(rows),
            {"two-homes/single closed": "1.95x (251,937 / 128,972 instructions per delivery; under the 2x goal)"},
        )
        self.assertEqual(multihost.instructionRatios(rows[1:]), {})
