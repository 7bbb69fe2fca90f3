"""
The router's proxied message in this process, without sockets (C{--role
router}, the default): C{--senders}
native clients logged in on a router's face (each on a
L{StringTransport}) whose sessions are proxied (L{RemoteSession}) over a
link to hs1; each sender's read carries C{--batch} C{MESSAGE}s in the load
driver's form (no C{Message-ID}, no C{Content-Type}), and the link brings
hs1's bare C{200}s for them in one read, as in C{multihost.py}'s
router-proxy topology. Only the router's side runs in the measured rounds
(hs1's answers are written here, not made): the client's frame read and
checked, the C{SESSION message} written to the link, its answer read and
the client's C{200} written. Prints one JSON line: per message, the CPU
microseconds and the Python function calls (C{sys.setprofile}: every
Python and builtin call), in all and in each half (the client's read and
what it sends; the link's read of the answers and what they write).

C{--role hs1}: the other end, alice's home server: a link connection from
the router (accepted, its C{HELLO} done) that opened C{--senders}
proxied sessions (L{SessionHost}), read the router's C{SESSION message}s
in one read of C{--batch} from every sender, as the router writes them;
hs1 sends each over its link to hs2 (a L{StringTransport}) as a link
C{MESSAGE}, reads hs2's bare C{200}s for them in one read and answers the
router's requests (bare C{200}s). The two halves are that read and hs2's
answers.

A benchmark, not a test: nothing asserts a time. The call counts (and
callgrind's instruction counts, C{--rounds} N minus C{--rounds} M) do not
depend on the machine's load: the figures to compare between two trees.

    .venv/bin/python bench/proxy_path.py
    valgrind --tool=callgrind bench/proxy_path.py --rounds 105 --cpu-sets 0
    valgrind --tool=callgrind bench/proxy_path.py --role hs1 --rounds 105 --cpu-sets 0
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

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.presence_fanout import commitOf, counted
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory, NativeServerProtocol
from imgateway.router.proxy import RemoteSession
from imgateway.testing import addUser, memoryGateway

_MESSAGE = b"MESSAGE im:%s IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s"
_LINK_OK = b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n"


class _Router:
    """
    The router's face and C{senders} clients on it, each with a proxied
    session on hs1 (opened over the tests' in-memory link), then the link
    connection put on a L{StringTransport} of its own.
    """

    def __init__(self, senders: int) -> None:
        from tests.test_proxy import ProxyTestCase

        case = ProxyTestCase("run")
        case.maxSessions = senders + 1
        case.setUp()
        self.case = case
        gateway = memoryGateway(case.clock)
        config = NativeConfig(requestsPerSecond=1_000_000, requestBurst=1_000_000)
        factory = NativeServerFactory(gateway, config, case.clock)
        self.clients: list[tuple[NativeServerProtocol, StringTransport, list[int]]] = []
        for n in range(senders):
            addUser(gateway, f"s{n}", "pw")
            peer = IPv4Address("TCP", f"127.0.{n // 250}.{n % 250 + 2}", 40000)
            transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5300))
            protocol = factory.buildProtocol(peer)
            assert isinstance(protocol, NativeServerProtocol)
            protocol.makeConnection(transport)
            protocol.dataReceived(b"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: PLAIN\r\nContent-Length: %d\r\n\r\n\0s%d\0pw" % (len(b"\0s%d\0pw" % n), n))
            assert b"200 OK" in transport.value(), transport.value()
            transport.clear()
            assert protocol.session is not None
            protocol.session.close("replaced")
            session, _, _ = case.open()
            protocol.session = session
            self.clients.append((protocol, transport, [1]))
        self.link = case.link
        # As the bench's lab: room for every message of a round in flight.
        case.link._config = attrs.evolve(case.link._config, maxQueue=100_000)
        connection = case.link.connection
        assert connection is not None
        self.connection = connection
        self.linkTransport = StringTransport()
        connection.transport = self.linkTransport

    def close(self) -> None:
        """
        Undo what the link harness set up (its links stopped, its log
        observer removed).
        """
        cleanups = self.case._cleanups
        while cleanups:
            function, args, kwargs = cleanups.pop()
            function(*args, **kwargs)

    def exchange(self, batch: int, n: int) -> None:
        self.send(batch, n)
        self.answer(batch)

    def send(self, batch: int, n: int) -> None:
        """
        Each client's read of C{batch} C{MESSAGE}s, sent over the link.
        """
        bodies = [b"message %d of round %d" % (i, n) for i in range(batch)]
        to = b"carol@corp.example"
        for protocol, transport, seq in self.clients:
            parts = []
            for body in bodies:
                seq[0] += 1
                parts.append(_MESSAGE % (to, seq[0], len(body), body))
            protocol.dataReceived(b"".join(parts))
        self.linkTransport.clear()

    def answer(self, batch: int) -> None:
        """
        hs1's bare C{200}s for every message in flight, in one read; each
        client answered C{200}.
        """
        outstanding = self.connection._outstanding
        self.connection.dataReceived(b"".join(_LINK_OK % s for s in list(outstanding)))
        for protocol, transport, seq in self.clients:
            assert transport.value().count(b"IMGW/1.0 200 OK") == batch, transport.value()
            transport.clear()


#: A C{SESSION message} as the router writes it (the usual shape: the
#: native face gave the message an id), C{Seq} first.
_SESSION_MESSAGE = b"SESSION message IMGW/1.0\r\nSeq: %d\r\nSession: %s\r\nTo: %s\r\nMessage-ID: %s\r\nContent-Length: %d\r\n\r\n%s"


class _HS1:
    """
    alice's home server: C{senders} sessions proxied by a router over a
    link connection it accepted, its link to hs2 on a L{StringTransport}.
    """

    def __init__(self, senders: int) -> None:
        from bench.link_path import _NOW, _TICK, _server
        from imgateway.router.link import LinkClient, LinkConnection, LinkPeer
        from imgateway.router.proxy import installProxy

        self._tick = _TICK
        clock = Clock()
        clock.advance(_NOW)
        self.clock = clock
        gateway, links = _server("hs1", senders, clock)
        locator = gateway.router.locator
        assert locator is not None
        installProxy(gateway, links, locator)
        # The router's connection, accepted, its HELLO done.
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        fromRouter = links.acceptor.buildProtocol(peer)
        assert isinstance(fromRouter, LinkConnection)
        self.routerTransport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5311))
        fromRouter.makeConnection(self.routerTransport)
        fromRouter.markReady(LinkPeer(gateway.config.domain, "router", frozenset({"router"})))
        self.fromRouter = fromRouter
        self.seq = 0
        self.sessions: list[tuple[bytes, bytes]] = []
        for n in range(senders):
            self.seq += 1
            body = json.dumps({"address": f"s{n}@{gateway.config.domain}", "label": "bench"}).encode()
            fromRouter.dataReceived(b"SESSION open IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s" % (self.seq, len(body), body))
            clock.advance(0)
            written = self.routerTransport.value()
            assert b"IMGW/1.0 200 OK\r\nSeq: %d\r\n" % self.seq in written, written
            answer = json.loads(written[written.index(b"\r\n\r\n") + 4 :])
            self.routerTransport.clear()
            self.sessions.append((answer["session"].encode(), f"r{n}@{gateway.config.domain}".encode()))
        # hs1's link to hs2.
        client = links.routes.toServer("hs2")
        assert isinstance(client, LinkClient)
        hs2 = LinkPeer(gateway.config.domain, "hs2", frozenset({"home"}))
        connection = LinkConnection({}, clock, 10.0, peer=hs2)
        self.link = StringTransport()
        connection.makeConnection(self.link)
        connection.markReady(hs2)
        client._ready(connection)
        self.toHS2 = connection
        self.answered = 0
        self.ids = 0
        #: The router's requests answered 200.
        self.routerAnswers = 0

    def close(self) -> None:
        pass

    def prepare(self, batch: int, n: int) -> bytes:
        """
        @return: The router's read of C{batch} C{SESSION message}s from
            every sender, for round C{n}.
        """
        parts = []
        for i in range(batch):
            body = b"message %d of round %d" % (i, n)
            for session, to in self.sessions:
                self.seq += 1
                self.ids += 1
                parts.append(_SESSION_MESSAGE % (self.seq, session, to, b"%032x" % self.ids, len(body), body))
        return b"".join(parts)

    def send(self, read: bytes) -> None:
        """
        The router's read; the link messages hs1 writes to hs2.
        """
        self.clock.advance(self._tick)
        self.fromRouter.dataReceived(read)

    def answer(self) -> None:
        """
        hs2's bare C{200}s for every link message written, in one read; the
        router's requests answered.
        """
        written = self.link.value()
        self.link.clear()
        count = written.count(b"\r\nRouting-Id: ")
        answers = b"".join(_LINK_OK % seq for seq in range(self.answered + 1, self.answered + count + 1))
        self.answered += count
        self.toHS2.dataReceived(answers)
        self.routerAnswers += self.routerTransport.value().count(b"IMGW/1.0 200 OK\r\nSeq: ")
        self.routerTransport.clear()

    def exchange(self, batch: int, n: int) -> None:
        self.send(self.prepare(batch, n))
        self.answer()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--role", choices=("router", "hs1"), default="router")
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--batch", type=int, default=10, help="messages per sender's read")
    p.add_argument("--rounds", type=int, default=500, help="exchanges timed (after 20 of warm-up)")
    p.add_argument("--cpu-sets", type=int, default=5, help="sets of rounds timed (the best is printed); 0: the rounds once, untimed")
    p.add_argument("--top", type=int, default=0, help="also print the N commonest calls per message")
    args = p.parse_args(argv)
    router: Any
    if args.role == "hs1":
        router = _HS1(args.senders)
    else:
        router = _Router(args.senders)
        assert all(isinstance(c[0].session, RemoteSession) for c in router.clients)
    for i in range(20):
        router.exchange(args.batch, i)
    per = args.senders * args.batch
    if not args.cpu_sets:
        for i in range(args.rounds):
            router.exchange(args.batch, i)
        router.close()
        return
    if args.role == "hs1":
        read = router.prepare(args.batch, 20)
        sent = counted(lambda: router.send(read))
        answered = counted(router.answer)
    else:
        sent = counted(lambda: router.send(args.batch, 20))
        answered = counted(lambda: router.answer(args.batch))
    calls = sent + answered
    best = None
    for _ in range(args.cpu_sets):
        start = time.process_time()
        for i in range(args.rounds):
            router.exchange(args.batch, i)
        took = time.process_time() - start
        best = took if best is None else min(best, took)
    assert best is not None
    router.close()
    out: dict[str, Any] = {
        "bench": "proxy_path",
        "role": args.role,
        "commit": commitOf(Path(__file__).resolve().parent.parent),
        "senders": args.senders,
        "batch": args.batch,
        "calls_per_message": round(sum(calls.values()) / per, 2),
        "send_calls_per_message": round(sum(sent.values()) / per, 2),
        "answer_calls_per_message": round(sum(answered.values()) / per, 2),
        "cpu_us_per_message": round(best / (args.rounds * per) * 1e6, 2),
    }
    if args.top:
        out["top"] = [(name, round(count / per, 2)) for name, count in calls.most_common(args.top)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
