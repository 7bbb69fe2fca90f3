"""
alice→carol across two home servers in this process, without sockets or
TLS: each home server's own work per delivery, as C{bench/message_path.py}
measures the single host's. C{--role hs1}: alice's home, C{--pairs}
senders logged in on its native face (each on a L{StringTransport}), each
read carrying C{--batch} C{MESSAGE}s in the load driver's form; it writes
the link C{MESSAGE}s to its link connection to hs2 (a L{StringTransport}),
whose answers come back as one read of bare C{200}s, as a busy link gets
them. C{--role hs2}: carol's home, one link connection from hs1 (the
peer known, its C{HELLO} done) read the link C{MESSAGE}s hs1 writes, in
reads of a batch from every pair, delivering to carol's sessions, which
answer with bare C{200}s in one read each. Each role's process holds only
that role's home server (the other side's bytes are written by the
script, the same for every tree). Prints one JSON line: per delivered
message, the CPU microseconds and the Python calls (C{sys.setprofile}) of
the role's work.

A benchmark, not a test: nothing asserts a time. The call counts (and
callgrind's instruction counts, see C{bench/README.md}, "link8s10") do not
depend on the machine's load:

    .venv/bin/python bench/link_path.py --role hs1
    .venv/bin/python bench/link_path.py --role hs2
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        .venv/bin/python bench/link_path.py --role hs2 --callgrind-rounds 50
      (the instructions of those 50 exchanges alone: divide by 50 x pairs x batch)

What the real run adds (TLS, system calls, the reactor) is in
C{multihost.py}'s figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.filepath import FilePath

from bench.message_path import _Client
from bench.presence_fanout import _OK, commitOf, counted
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.auth.passwords import makeCredentials
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, HostPort, LinksConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.records import AccountRecord
from imgateway.gateway import Gateway, assembleGateway
from imgateway.router import link_codec
from imgateway.router.link import LinkClient, LinkConnection, LinkPeer, makeLinkService
from imgateway.testing import MemoryDirectory, MemoryHomeStore, _inline

DOMAIN = "corp.example"
#: The time of day the home servers' clocks start at, and how far they move
#: on per exchange: message timestamps as a real clock's (17 significant
#: digits), not a test clock's 0.0.
_NOW = 1_765_000_000.0
_TICK = 0.0123456789

#: A link MESSAGE as hs1 writes it (encodeMessage's usual shape, Seq first;
#: one hop: hs1's router counted it as it sent it on).
_LINK_MESSAGE = (
    b"MESSAGE im:%s IMGW/1.0\r\nSeq: %d\r\nFrom: im:%s\r\nMessage-ID: %s\r\nTimestamp: %s\r\n"
    b"Via: corp.example/hs1\r\nRouting-Id: %s\r\nHops: 1\r\nContent-Length: %d\r\n\r\n%s"
)


def _config(name: str) -> GatewayConfig:
    servers = {
        n: ServerConfig(n, frozenset({"home"}), link=HostPort("127.0.0.1", port), tlsName=f"{n}.{DOMAIN}")
        for n, port in (("hs1", 5311), ("hs2", 5312))
    }
    if name == "router":
        # The router of multihost.py's router-proxy topology
        # (bench/proxy_path.py); the home servers' configurations as before.
        servers["router"] = ServerConfig("router", frozenset({"router"}), link=HostPort("127.0.0.1", 5310), tlsName=f"router.{DOMAIN}")
    return GatewayConfig(
        path=FilePath("link_path.toml"),
        domain=DOMAIN,
        dataDir=FilePath("link_path"),
        homeServerName=name,
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        # The bench's link queue (multihost.py's LAB_MAX_QUEUE).
        links=attrs.evolve(LinksConfig(), allowPlaintextLoopback=True, maxQueue=100_000),
        servers=servers,
    )


def _server(name: str, pairs: int, clock: Clock) -> tuple[Gateway, Any]:
    """
    Home server C{name} (or the router, C{"router"}) with its links, the
    accounts of C{pairs} pairs in its directory (senders on hs1,
    recipients on hs2).
    """
    directory = MemoryDirectory()
    credentials = makeCredentials("pw", 4096).serialise()
    for n in range(pairs):
        directory.addAccount(AccountRecord(Address.fromParts(f"s{n}", DOMAIN), "hs1", "", True, credentials))
        directory.addAccount(AccountRecord(Address.fromParts(f"r{n}", DOMAIN), "hs2", "", True, credentials))
    config = _config(name)
    gateway = assembleGateway(config, clock, directory, MemoryHomeStore(), runInThread=_inline, secret=b"s", adapters={})
    locator = gateway.router.locator
    assert locator is not None
    links = makeLinkService(config, MemoryReactorClock(), gateway.router, locator, clock=clock)
    gateway.router.linkRoutes = links.routes
    return gateway, links


def linkTo(links: Any, name: str, clock: Clock) -> tuple[LinkConnection, StringTransport]:
    """
    This process's link to home server C{name}: a connection on a
    L{StringTransport}, its C{HELLO} done, given to the link's client.

    @param links: The process's L{imgateway.router.link.LinkService}.
    @return: The connection and its transport.
    """
    client = links.routes.toServer(name)
    assert isinstance(client, LinkClient)
    peer = LinkPeer(DOMAIN, name, frozenset({"home"}))
    connection = LinkConnection({}, clock, 10.0, peer=peer)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.markReady(peer)
    client._ready(connection)
    return connection, transport


def answerMessages(connection: LinkConnection, transport: StringTransport, answered: int) -> int:
    """
    The peer's bare C{200}s, in one read, for the link C{MESSAGE}s written
    to C{transport} since it was last cleared (then cleared), as a busy
    link gets them; the link carries nothing else (L{linkTo}).

    @param answered: The messages answered on C{connection} before.
    @return: The messages answered on it in all.
    """
    written: bytes = transport.value()
    transport.clear()
    count = written.count(b"\r\nRouting-Id: ")
    connection.dataReceived(b"".join(_OK % seq for seq in range(answered + 1, answered + count + 1)))
    return answered + count


def _face(gateway: Gateway, clock: Clock) -> NativeServerFactory:
    # The bench's flood limits (compare.py raises them the same way).
    return NativeServerFactory(gateway, NativeConfig(requestsPerSecond=1_000_000, requestBurst=1_000_000), clock)


class HS1:
    """
    alice's home: senders on its native face, its link to hs2 on a
    L{StringTransport}.
    """

    def __init__(self, pairs: int) -> None:
        clock = Clock()
        # A time of day as a real clock gives it (Clock starts at 0.0, whose
        # text is cheaper to write than a real timestamp's).
        clock.advance(_NOW)
        self.clock = clock
        gateway, links = _server("hs1", pairs, clock)
        face = _face(gateway, clock)
        self.senders = [(_Client(face, f"s{n}", n), f"r{n}@{DOMAIN}".encode()) for n in range(pairs)]
        self.connection, self.link = linkTo(links, "hs2", clock)
        self.answered = 0

    def prepare(self, batch: int, n: int) -> list[bytes]:
        """
        @return: Each sender's read of C{batch} messages, for round C{n}.
        """
        bodies = [b"message %d of round %d" % (i, n) for i in range(batch)]
        return [sender.messages(to, bodies) for sender, to in self.senders]

    def exchange(self, reads: list[bytes]) -> None:
        """
        Each sender's read (L{prepare}); then hs2's answers to the link
        messages in one read.
        """
        # The clock moves on by a time with every bit of a real one's.
        self.clock.advance(_TICK)
        for (sender, _), data in zip(self.senders, reads):
            sender.protocol.dataReceived(data)
        self.answered = answerMessages(self.connection, self.link, self.answered)
        for sender, _ in self.senders:
            sender.transport.clear()

    def check(self, messages: int) -> None:
        assert self.answered == messages, (self.answered, messages)


class HS2:
    """
    carol's home: recipients on its native face, a link connection from
    hs1 (accepted, its C{HELLO} done).
    """

    def __init__(self, pairs: int) -> None:
        clock = Clock()
        gateway, links = _server("hs2", pairs, clock)
        face = _face(gateway, clock)
        self.recipients = [(_Client(face, f"r{n}", n), f"s{n}@{DOMAIN}".encode(), f"r{n}@{DOMAIN}".encode()) for n in range(pairs)]
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        connection = links.acceptor.buildProtocol(peer)
        assert isinstance(connection, LinkConnection)
        self.link = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5312))
        connection.makeConnection(self.link)
        connection.markReady(LinkPeer(DOMAIN, "hs1", frozenset({"home"})))
        self.connection = connection
        self.seq = 0
        self.routing = 0
        # The senders' homes remembered, as after the first message of
        # each in a real run.
        locator = gateway.router.locator
        assert locator is not None
        for _, sender, _ in self.recipients:
            locator.homeOf(Address.fromString(sender.decode()))

    def prepare(self, batch: int, n: int) -> bytes:
        """
        @return: A read of C{batch} link messages for every pair, for round
            C{n}.
        """
        parts = []
        # The text hs1 writes for a time of day (repr where the tree has no
        # timestampText).
        stamp = getattr(link_codec, "timestampText", repr)(_NOW + n * _TICK).encode()
        for i in range(batch):
            body = b"message %d of round %d" % (i, n)
            for _, sender, to in self.recipients:
                self.seq += 1
                self.routing += 1
                routingId = b"%032x" % self.routing
                parts.append(_LINK_MESSAGE % (to, self.seq, sender, routingId, stamp, routingId, len(body), body))
        return b"".join(parts)

    def exchange(self, read: bytes) -> None:
        """
        One read of link messages (L{prepare}); then each recipient's
        answers in one read.
        """
        self.connection.dataReceived(read)
        self.link.clear()
        for recipient, _, _ in self.recipients:
            recipient.protocol.dataReceived(recipient.answers())

    def check(self, messages: int) -> None:
        for recipient, _, _ in self.recipients:
            outstanding = recipient.protocol._outstanding
            assert outstanding.floor == outstanding.sent, (outstanding.floor, outstanding.sent)
        assert self.seq == messages, (self.seq, messages)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--role", choices=("hs1", "hs2"), required=True)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--batch", type=int, default=10, help="messages per sender's read (hs1), per pair in a link read (hs2)")
    p.add_argument("--rounds", type=int, default=500, help="exchanges timed (after 20 of warm-up)")
    p.add_argument("--top", type=int, default=0, help="also print the N commonest calls per message")
    p.add_argument(
        "--callgrind-rounds",
        type=int,
        default=None,
        help="only the warm-up, then this many exchanges, no timing or counting (run under callgrind, less a run with 0)",
    )
    args = p.parse_args(argv)
    server: Any = HS1(args.pairs) if args.role == "hs1" else HS2(args.pairs)
    per = args.pairs * args.batch
    for i in range(20):
        server.exchange(server.prepare(args.batch, i))
    if args.callgrind_rounds is not None:
        # Run within functools.reduce (a C function called nowhere else
        # here): callgrind --toggle-collect=functools_reduce counts these
        # exchanges alone.
        prepared = [server.prepare(args.batch, 20 + i) for i in range(args.callgrind_rounds)]
        functools.reduce(lambda _, read: server.exchange(read), prepared, None)
        server.check(per * (20 + args.callgrind_rounds))
        return
    first = server.prepare(args.batch, 20)
    calls = counted(lambda: server.exchange(first))
    best = float("inf")
    each = max(1, args.rounds // 5)
    for s in range(5):
        prepared = [server.prepare(args.batch, 100 + s * each + i) for i in range(each)]
        t0 = time.process_time()
        for read in prepared:
            server.exchange(read)
        best = min(best, (time.process_time() - t0) / each / per * 1e6)
    server.check(per * (21 + 5 * each))
    figures: dict[str, Any] = {
        "bench": "link_path",
        "role": args.role,
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
