"""
The presence fan-out in this process, without sockets: one user whose
watchers are all logged in on the native face (each on a
L{StringTransport}) changes its note, and every watcher answers its
C{NOTIFY} with a bare C{200}, as C{compare.py}'s presence run does over
TCP. Prints one JSON line: per recipient, the CPU microseconds and the
Python function calls (C{sys.setprofile}: every Python and builtin call,
Twisted's and the transport's included) of the fan-out (the C{PUBLISH}
read, its answer and every C{NOTIFY} written) and of reading one C{200};
and the calls of a read of two C{200}s (C{compare.py}'s clients, with two
changes outstanding, mostly answer two C{NOTIFY}s per read).

A benchmark, not a test: nothing asserts a time. The call counts do not
depend on the machine's load, so they are the figure to compare between
two trees (alternate them; each tree runs from its own folder):

    .venv/bin/python bench/presence_fanout.py
    .venv/bin/python /tmp/old-tree/bench/presence_fanout.py

What the real run adds (system calls, the reactor's dispatch, Twisted's
TCP write path) is in C{compare.py}'s figure (bench/README.md,
"presence11" and "presence11c").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from imgateway.adapters.native.framing import Headers, Request, serialise
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory, NativeServerProtocol
from imgateway.testing import addUser, memoryGateway, mutualContacts

_OK = b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n"


class _Client:
    """
    One native connection: a protocol on a L{StringTransport}, logged in
    with PLAIN.
    """

    def __init__(self, factory: NativeServerFactory, clock: Clock, user: str, n: int) -> None:
        self.clock = clock
        # Each from an address of its own (the per-address connection
        # limits stay as shipped).
        peer = IPv4Address("TCP", f"127.0.{n // 250}.{n % 250 + 1}", 40000)
        self.transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5300))
        protocol = factory.buildProtocol(peer)
        assert isinstance(protocol, NativeServerProtocol)
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        self.seq = 0
        token = b"\0" + user.encode() + b"\0pw"
        self.call("AUTH", [("Mechanism", "PLAIN")], token)
        self.call("PUBLISH", [("Presence", "online")])

    def send(self, method: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.seq += 1
        self.protocol.dataReceived(serialise(Request(method, "*", Headers.of(("Seq", str(self.seq)), *headers), body)))

    def call(self, method: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.transport.clear()
        self.send(method, headers, body)
        written = self.transport.value()
        self.transport.clear()
        assert b"IMGW/1.0 200 OK\r\nSeq: %d\r\n" % self.seq in written, written
        self.answerAll()

    def answerAll(self) -> None:
        """
        Answer the server's requests (its C{NOTIFY}s) not answered yet, in
        order, each with a bare C{200}, in one read.
        """
        outstanding = self.protocol._outstanding
        self.protocol.dataReceived(b"".join(_OK % seq for seq in range(outstanding.floor + 1, outstanding.sent + 1)))
        if self.protocol._turnCall is not None:
            # More than frames_per_turn: the rest in the next turns.
            while self.protocol._turnCall is not None:
                self.clock.advance(0)


def setUp(watchers: int) -> tuple[_Client, list[_Client]]:
    clock = Clock()
    gateway = memoryGateway(clock)
    centerAddress = addUser(gateway, "center", "pw")
    others = [addUser(gateway, f"w{n}", "pw") for n in range(watchers)]
    changes: list[Any] = []
    for w in others:
        changes += mutualContacts(centerAddress, w)
    gateway.homeServer.store.apply(changes)
    # The bench's flood limits (compare.py raises them the same way).
    config = NativeConfig(requestsPerSecond=1_000_000, requestBurst=1_000_000)
    factory = NativeServerFactory(gateway, config, clock)
    clients = [_Client(factory, clock, f"w{n}", n) for n in range(watchers)]
    center = _Client(factory, clock, "center", watchers)
    for c in clients:
        c.answerAll()
        c.transport.clear()
    return center, clients


def change(center: _Client, n: int) -> None:
    center.send("PUBLISH", [("Presence", "online"), ("Note", f"{n} {n * 7919}")])


def answers(clients: list[_Client]) -> list[tuple[Any, bytes]]:
    """
    @return: Each client's read that answers the server's last C{NOTIFY}
        (a bare C{200}), and the method that takes it; the clients'
        transports are cleared.
    """
    reads = []
    for c in clients:
        c.transport.clear()
        reads.append((c.protocol.dataReceived, _OK % c.protocol._outstanding.sent))
    return reads


def pairedAnswers(clients: list[_Client]) -> list[tuple[Any, bytes]]:
    """
    @return: Each client's read that answers the server's last two
        C{NOTIFY}s (two bare C{200}s, the usual read of C{compare.py}'s
        clients, which have two changes outstanding), and the method that
        takes it; the clients' transports are cleared.
    """
    reads = []
    for c in clients:
        c.transport.clear()
        sent = c.protocol._outstanding.sent
        reads.append((c.protocol.dataReceived, _OK % (sent - 1) + _OK % sent))
    return reads


def read(reads: list[tuple[Any, bytes]]) -> None:
    for dataReceived, data in reads:
        dataReceived(data)


def counted(work: Any) -> Counter[str]:
    """
    @return: The calls C{work()} made, by function.
    """
    calls: Counter[str] = Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            calls[f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})"] += 1
        elif event == "c_call":
            calls[f"{getattr(arg, '__qualname__', arg)} (builtin)"] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def _isAddressHash(name: str) -> bool:
    """
    @return: Whether C{name}, a function of L{counted}, is C{Address.__hash__}
        (attrs' generated one, or one written in C{core/address.py}).
    """
    return name.startswith("__hash__ (") and ("imgateway.core.address.Address" in name or "(address.py:" in name)


def commitOf(folder: Path) -> str:
    """
    @return: The short commit of the git checkout holding C{folder}, or
        C{""}.
    """
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=folder, timeout=10
        ).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--watchers", type=int, default=200)
    p.add_argument("--rounds", type=int, default=500, help="changes timed (after 20 of warm-up)")
    p.add_argument("--top", type=int, default=0, help="also print the N commonest calls per recipient")
    args = p.parse_args(argv)
    center, clients = setUp(args.watchers)
    n = args.watchers
    for i in range(20):
        change(center, i)
        read(answers(clients))
    fanOut = counted(lambda: change(center, 20))
    reads = answers(clients)
    reading = counted(lambda: read(reads))
    change(center, 21)
    change(center, 22)
    pairs = pairedAnswers(clients)
    readingPairs = counted(lambda: read(pairs))
    # CPU: the best of 5 sets of changes.
    bestFan, bestRead = float("inf"), float("inf")
    each = max(1, args.rounds // 5)
    for s in range(5):
        fan = taken = 0.0
        for i in range(each):
            t0 = time.process_time()
            change(center, 100 + s * each + i)
            t1 = time.process_time()
            reads = answers(clients)
            center.transport.clear()
            t2 = time.process_time()
            read(reads)
            taken += time.process_time() - t2
            fan += t1 - t0
        bestFan = min(bestFan, fan / each / n * 1e6)
        bestRead = min(bestRead, taken / each / n * 1e6)
    figures: dict[str, Any] = {
        "bench": "presence_fanout",
        "commit": commitOf(Path(__file__).parent),
        "watchers": n,
        "fan_out_calls_per_recipient": round(sum(fanOut.values()) / n, 2),
        "read_200_calls_per_recipient": round(sum(reading.values()) / n, 2),
        "read_two_200s_calls_per_recipient": round(sum(readingPairs.values()) / n, 2),
        "fan_out_cpu_us_per_recipient": round(bestFan, 3),
        "read_200_cpu_us_per_recipient": round(bestRead, 3),
        "address_hashes_per_recipient": round(sum(v for k, v in fanOut.items() if _isAddressHash(k)) / n, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures))
    if args.top:
        for name, count in (fanOut + reading).most_common(args.top):
            print(f"{count / n:7.2f} {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
