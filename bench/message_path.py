"""
The native face's 1:1 message in this process, without sockets: C{--pairs}
senders and recipients logged in on the native face (each on a
L{StringTransport}), both online; each sender's read carries
C{--batch} C{MESSAGE}s in the load driver's form (no C{Message-ID}, no
C{Content-Type}), each recipient answers its read's C{MESSAGE}s with bare
C{200}s in one read, as C{compare.py}'s C{msg} run does over TCP. Prints
one JSON line: per delivered message, the CPU microseconds and the Python
function calls (C{sys.setprofile}: every Python and builtin call,
Twisted's and the transport's included) of the whole exchange (the
sender's read, its C{200}s, the C{MESSAGE}s written and the recipient's
C{200}s read).

A benchmark, not a test: nothing asserts a time. The call counts do not
depend on the machine's load, so they are the figure to compare between
two trees (alternate them; each tree runs from its own folder):

    .venv/bin/python bench/message_path.py
    .venv/bin/python /tmp/old-tree/bench/message_path.py

What the real run adds (system calls, the reactor's dispatch, Twisted's
TCP write path) is in C{compare.py}'s figure (bench/README.md, "msg11",
"msg11c" and "msg9").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.presence_fanout import _OK, commitOf, counted
from imgateway.adapters.native.framing import Headers, Request, serialise
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory, NativeServerProtocol
from imgateway.testing import addUser, memoryGateway

_MESSAGE = b"MESSAGE im:%s IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s"


class _Client:
    """
    One native connection: a protocol on a L{StringTransport}, logged in
    with PLAIN, online.
    """

    def __init__(self, factory: NativeServerFactory, user: str, n: int) -> None:
        # Each from an address of its own (the per-address connection
        # limits stay as shipped).
        peer = IPv4Address("TCP", f"127.0.{n // 250}.{n % 250 + 1}", 40000)
        self.transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5300))
        protocol = factory.buildProtocol(peer)
        assert isinstance(protocol, NativeServerProtocol)
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        self.seq = 0
        self.call("AUTH", [("Mechanism", "PLAIN")], b"\0" + user.encode() + b"\0pw")
        self.call("PUBLISH", [("Presence", "online")])

    def call(self, method: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.seq += 1
        self.transport.clear()
        self.protocol.dataReceived(serialise(Request(method, "*", Headers.of(("Seq", str(self.seq)), *headers), body)))
        self.settle()
        written = self.transport.value()
        self.transport.clear()
        assert b"IMGW/1.0 200 OK\r\nSeq: %d\r\n" % self.seq in written, written

    def settle(self) -> None:
        """
        What the server waits for before it answers a call (L{call}): nothing
        here (a proxied session's home server, C{bench/proxy_path.py}).
        """

    def messages(self, to: bytes, bodies: list[bytes]) -> bytes:
        parts = []
        for body in bodies:
            self.seq += 1
            parts.append(_MESSAGE % (to, self.seq, len(body), body))
        return b"".join(parts)

    def answers(self) -> bytes:
        """
        Bare C{200}s for the server's requests not answered yet, and the
        transport cleared.
        """
        self.transport.clear()
        outstanding = self.protocol._outstanding
        return b"".join(_OK % seq for seq in range(outstanding.floor + 1, outstanding.sent + 1))


def setUp(pairs: int) -> list[tuple[_Client, _Client, bytes]]:
    clock = Clock()
    gateway = memoryGateway(clock)
    for n in range(pairs):
        addUser(gateway, f"s{n}", "pw")
        addUser(gateway, f"r{n}", "pw")
    # The bench's flood limits (compare.py raises them the same way).
    config = NativeConfig(requestsPerSecond=1_000_000, requestBurst=1_000_000)
    factory = NativeServerFactory(gateway, config, clock)
    out = []
    for n in range(pairs):
        sender = _Client(factory, f"s{n}", 2 * n)
        recipient = _Client(factory, f"r{n}", 2 * n + 1)
        out.append((sender, recipient, f"r{n}@{gateway.domain}".encode()))
    return out


def exchange(pairs: list[tuple[_Client, _Client, bytes]], batch: int, n: int) -> None:
    """
    Each sender sends C{batch} messages in one read; each recipient
    answers them in one read.
    """
    bodies = [b"message %d of round %d" % (i, n) for i in range(batch)]
    for sender, recipient, to in pairs:
        sender.protocol.dataReceived(sender.messages(to, bodies))
        sender.transport.clear()
        recipient.protocol.dataReceived(recipient.answers())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--batch", type=int, default=10, help="messages per sender's read")
    p.add_argument("--rounds", type=int, default=500, help="exchanges timed (after 20 of warm-up)")
    p.add_argument("--top", type=int, default=0, help="also print the N commonest calls per message")
    args = p.parse_args(argv)
    pairs = setUp(args.pairs)
    for i in range(20):
        exchange(pairs, args.batch, i)
    per = args.pairs * args.batch
    calls = counted(lambda: exchange(pairs, args.batch, 20))
    # Every message delivered and answered: the recipients' reads took
    # every 200 (nothing outstanding), the senders had 200s.
    for _, recipient, _ in pairs:
        outstanding = recipient.protocol._outstanding
        assert outstanding.floor == outstanding.sent, (outstanding.floor, outstanding.sent)
    # CPU: the best of 5 sets of exchanges.
    best = float("inf")
    each = max(1, args.rounds // 5)
    for s in range(5):
        t0 = time.process_time()
        for i in range(each):
            exchange(pairs, args.batch, 100 + s * each + i)
        best = min(best, (time.process_time() - t0) / each / per * 1e6)
    figures: dict[str, Any] = {
        "bench": "message_path",
        "commit": commitOf(Path(__file__).parent),
        "pairs": args.pairs,
        "batch": args.batch,
        "calls_per_message": round(sum(calls.values()) / per, 2),
        "cpu_us_per_message": round(best, 3),
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures))
    if args.top:
        for name, count in calls.most_common(args.top):
            print(f"{count / per:7.2f} {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
