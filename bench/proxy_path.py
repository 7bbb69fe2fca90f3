"""
The router's proxied message in this process, without sockets (C{--role
router}, the default): a router assembled as C{multihost.py}'s
router-proxy topology's (C{bench/link_path.py}'s set-up, the router's
configuration), C{--senders} native clients logged in on its face (each on
a L{StringTransport}) whose sessions are proxied (L{RemoteSession}) over
its link to hs1, and its link to hs2 (both on L{StringTransport}s, their
C{HELLO}s done). Each sender's read carries C{--batch} C{MESSAGE}s in the
load driver's form (no C{Message-ID}, no C{Content-Type}).

C{--path routed} (the default) measures what a router does with a message
to another user of the domain (C{docs/protocol.md} section 9.7): each
sender writes to its recipient on hs2; the proxied session checks the
message and hands it to the router's own L{Router}, which sends it over
the link to hs2 as a link C{MESSAGE}; hs2's bare C{200}s come back in one
read, and each client is answered C{200} (what C{link_path.py --role hs1}
measures for hs1, the native face's C{Session} in place of the
L{RemoteSession}). C{--path session}: what it does with a message to the
user's own sessions (each sender writes to itself) and to other domains: a
C{SESSION message} to hs1, whose bare C{200}s come back in one read.

Only the router's side runs in the measured rounds (the home servers'
answers are written here, not made): the client's frame read and checked,
what the router writes to the link, the answers read and the client's
C{200} written. Prints one JSON line: per message, the CPU microseconds
and the Python function calls (C{sys.setprofile}: every Python and builtin
call), in all and in each half (the clients' reads and what they send; the
link's read of the answers and what they write).

C{--role hs1}: the other end of C{--path session}, alice's home server: a
link connection from the router (accepted, its C{HELLO} done) that opened
C{--senders} proxied sessions (L{SessionHost}), read the router's
C{SESSION message}s in one read of C{--batch} from every sender, as the
router writes them; hs1 sends each over its link to hs2 (a
L{StringTransport}) as a link C{MESSAGE}, reads hs2's bare C{200}s for
them in one read and answers the router's requests (bare C{200}s). The two
halves are that read and hs2's answers.

A benchmark, not a test: nothing asserts a time. The call counts (and
callgrind's instruction counts: C{--rounds} N minus C{--rounds} M with
C{--cpu-sets 0}, or C{--callgrind-rounds} as in C{link_path.py}) do not
depend on the machine's load: the figures to compare between two trees.

    .venv/bin/python bench/proxy_path.py --top 40
    .venv/bin/python bench/proxy_path.py --path session
    PYTHONHASHSEED=0 valgrind --tool=callgrind bench/proxy_path.py --rounds 55 --cpu-sets 0
      (less the same with --rounds 5: divide by 50 x senders x batch)
    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        .venv/bin/python bench/proxy_path.py --callgrind-rounds 20
      (those 20 exchanges alone, as link_path.py --role hs1's: divide by 20 x senders x batch)
    valgrind --tool=callgrind bench/proxy_path.py --role hs1 --rounds 105 --cpu-sets 0
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.link_path import _NOW, _TICK, DOMAIN, _face, _server, answerMessages, linkTo
from bench.message_path import _Client
from bench.presence_fanout import _OK, commitOf, counted
from imgateway.adapters.native.server import NativeServerFactory
from imgateway.core.errors import DeliveryStatus
from imgateway.router.proxy import RemoteSession, installProxy

#: A request the router writes to hs1: its operation and C{Seq}.
_SESSION_REQUEST = re.compile(rb"^SESSION ([a-z-]+) IMGW/1\.0\r\nSeq: (\d+)\r\n", re.M)
_JSON_OK = b"IMGW/1.0 200 OK\r\nSeq: %d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


class _ProxiedClient(_Client):
    """
    A native client of the router's face, its session proxied to hs1:
    each call answered once hs1 has answered what the router sent it.
    """

    def __init__(self, factory: NativeServerFactory, user: str, n: int, router: _Router) -> None:
        self._router = router
        super().__init__(factory, user, n)

    def settle(self) -> None:
        self._router.answerHome()


class _Router:
    """
    The router, its C{senders} clients logged in (C{AUTH}, C{PUBLISH}),
    each with a proxied session on hs1, and its links to hs1 and hs2.

    @ivar routed: Whether the messages go to users on hs2 (C{--path
        routed}), or each sender's to itself (C{--path session}).
    """

    def __init__(self, senders: int, path: str = "routed") -> None:
        clock = Clock()
        clock.advance(_NOW)
        self.clock = clock
        self.routed = path == "routed"
        gateway, links = _server("router", senders, clock)
        locator = gateway.router.locator
        assert locator is not None
        # As addLinks installs it: the faces proxy the sessions of users
        # homed elsewhere.
        proxy = gateway.proxy = installProxy(gateway, links, locator)
        assert proxy is not None and proxy.router is gateway.router
        self.gateway = gateway
        self.proxy = proxy
        self.toHS1, self.hs1Link = linkTo(links, "hs1", clock)
        self.toHS2, self.hs2Link = linkTo(links, "hs2", clock)
        self._opened = 0
        face = _face(gateway, clock)
        self.clients = [
            (_ProxiedClient(face, f"s{n}", n, self), f"{'r' if self.routed else 's'}{n}@{DOMAIN}".encode()) for n in range(senders)
        ]
        for client, _ in self.clients:
            assert isinstance(client.protocol.session, RemoteSession), client.protocol.session
        #: Link C{MESSAGE}s hs2 answered.
        self.answered = 0

    def answerHome(self) -> None:
        """
        hs1's answers to the router's C{SESSION} requests written since, in
        one read: a new session for an C{open}, a bare C{200} otherwise.
        """
        written = self.hs1Link.value()
        self.hs1Link.clear()
        answers = []
        for operation, seq in _SESSION_REQUEST.findall(written):
            if operation == b"open":
                self._opened += 1
                body = json.dumps({"session": f"p{self._opened}", "label": "bench"}).encode()
                answers.append(_JSON_OK % (int(seq), len(body), body))
            else:
                answers.append(_OK % int(seq))
        self.toHS1.dataReceived(b"".join(answers))

    def prepare(self, batch: int, n: int) -> list[bytes]:
        """
        @return: Each client's read of C{batch} messages, for round C{n}.
        """
        bodies = [b"message %d of round %d" % (i, n) for i in range(batch)]
        return [client.messages(to, bodies) for client, to in self.clients]

    def send(self, reads: list[bytes]) -> None:
        """
        Each client's read (L{prepare}), sent over the links.
        """
        # The clock moves on by a time with every bit of a real one's (the
        # messages' timestamps), as in link_path.py.
        self.clock.advance(_TICK)
        for (client, _), data in zip(self.clients, reads):
            client.protocol.dataReceived(data)

    def answer(self) -> None:
        """
        The home server's bare C{200}s for every message in flight, in one
        read: hs2's for the link C{MESSAGE}s, or hs1's for the C{SESSION
        message}s; each client answered (its transport cleared, as in
        C{link_path.py}: L{check} finds them answered).
        """
        if self.routed:
            self.answered = answerMessages(self.toHS2, self.hs2Link, self.answered)
        else:
            self.hs1Link.clear()
            self.toHS1.dataReceived(b"".join(_OK % seq for seq in list(self.toHS1._outstanding)))
        for client, _ in self.clients:
            client.transport.clear()

    def exchange(self, reads: list[bytes]) -> None:
        self.send(reads)
        self.answer()

    def check(self, messages: int) -> None:
        """
        Every message sent was answered: no client waits for an answer, no
        link for a home server's; with C{routed}, C{messages} delivered by
        the router to hs2, as its metrics count them.
        """
        assert all(client.protocol._inFlight == 0 for client, _ in self.clients)
        assert not self.toHS1._outstanding and not self.toHS2._outstanding
        if self.routed:
            delivered = self.gateway.metrics._messageCounts[DeliveryStatus.DELIVERED]
            assert self.answered == delivered == messages, (self.answered, delivered, messages)
        else:
            assert self.answered == 0, self.answered
        # A routed message crosses no link but hs2's.
        assert not (self.routed and self.hs1Link.value()), self.hs1Link.value()


#: A C{SESSION message} as the router writes it (the usual shape: the
#: native face gave the message an id), C{Seq} first.
_SESSION_MESSAGE = b"SESSION message IMGW/1.0\r\nSeq: %d\r\nSession: %s\r\nTo: %s\r\nMessage-ID: %s\r\nContent-Length: %d\r\n\r\n%s"


class _HS1:
    """
    alice's home server: C{senders} sessions proxied by a router over a
    link connection it accepted, its link to hs2 on a L{StringTransport}.
    """

    def __init__(self, senders: int) -> None:
        from imgateway.router.link import LinkConnection, LinkPeer

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
        self.toHS2, self.link = linkTo(links, "hs2", clock)
        self.answered = 0
        self.ids = 0
        #: The router's requests answered 200.
        self.routerAnswers = 0

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
        self.clock.advance(_TICK)
        self.fromRouter.dataReceived(read)

    def answer(self) -> None:
        """
        hs2's bare C{200}s for every link message written, in one read; the
        router's requests answered.
        """
        self.answered = answerMessages(self.toHS2, self.link, self.answered)
        self.routerAnswers += self.routerTransport.value().count(b"IMGW/1.0 200 OK\r\nSeq: ")
        self.routerTransport.clear()

    def exchange(self, read: bytes) -> None:
        self.send(read)
        self.answer()

    def check(self, messages: int) -> None:
        assert self.answered == self.routerAnswers == messages, (self.answered, self.routerAnswers, messages)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--role", choices=("router", "hs1"), default="router")
    p.add_argument(
        "--path",
        choices=("routed", "session"),
        default="routed",
        help="the router's messages: to users on hs2, sent by its router (routed), or to oneself, through hs1 (session)",
    )
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--batch", type=int, default=10, help="messages per sender's read")
    p.add_argument("--rounds", type=int, default=500, help="exchanges timed (after 20 of warm-up)")
    p.add_argument("--cpu-sets", type=int, default=5, help="sets of rounds timed (the best is printed); 0: the rounds once, untimed")
    p.add_argument("--top", type=int, default=0, help="also print the N commonest calls per message")
    p.add_argument(
        "--callgrind-rounds",
        type=int,
        default=None,
        help="only the warm-up, then this many exchanges within functools.reduce, untimed (link_path.py's)",
    )
    args = p.parse_args(argv)
    server: Any = _HS1(args.senders) if args.role == "hs1" else _Router(args.senders, args.path)
    per = args.senders * args.batch
    for i in range(20):
        server.exchange(server.prepare(args.batch, i))
    done = 20
    if args.callgrind_rounds is not None:
        # Run within functools.reduce (a C function called nowhere else
        # here): callgrind --toggle-collect=functools_reduce counts these
        # exchanges alone.
        prepared = [server.prepare(args.batch, done + i) for i in range(args.callgrind_rounds)]
        functools.reduce(lambda _, read: server.exchange(read), prepared, None)
        server.check(per * (done + args.callgrind_rounds))
        return
    if not args.cpu_sets:
        for i in range(args.rounds):
            server.exchange(server.prepare(args.batch, done + i))
        server.check(per * (done + args.rounds))
        return
    read = server.prepare(args.batch, done)
    sent = counted(lambda: server.send(read))
    answered = counted(server.answer)
    done += 1
    calls = sent + answered
    best = None
    for _ in range(args.cpu_sets):
        prepared = [server.prepare(args.batch, done + i) for i in range(args.rounds)]
        start = time.process_time()
        for read in prepared:
            server.exchange(read)
        took = time.process_time() - start
        done += args.rounds
        best = took if best is None else min(best, took)
    assert best is not None
    server.check(per * done)
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
    if args.role == "router":
        out["path"] = args.path
    if args.top:
        out["top"] = [(name, round(count / per, 2)) for name, count in calls.most_common(args.top)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
