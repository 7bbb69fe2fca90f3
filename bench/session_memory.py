"""
Where an idle session's memory and a login's CPU go, in one process without
sockets: a gateway on memory stores (L{imgateway.testing.memoryGateway}),
C{--sessions} accounts with C{--contacts} mutual contacts each, logged in on
the native face and the XMPP c2s face (in-memory transports), each fetching
its contacts and going online, as C{login_flood.py --mode idle} does over
TCP. It prints, per face, the traced Python memory per idle session and the
lines that allocated most of it (C{tracemalloc}), and with C{--profile} the
functions that took the logins' CPU (C{cProfile}). Sockets, the kernel's
buffers and the SQLite store are not in these figures (C{login_flood.py}
measures the real process); the sessions' own objects are.

    .venv/bin/python bench/session_memory.py --sessions 1000 --contacts 20
    .venv/bin/python bench/session_memory.py --face xmpp --profile 25
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import io
import pstats
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from imgateway.adapters.native.framing import FrameParser, Headers, Request, Response, serialise
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory
from imgateway.adapters.xmpp.c2s import C2SConfig, C2SFactory
from imgateway.adapters.xmpp.stream import IDLE_PARSER_SECONDS, StreamLimits
from imgateway.auth.passwords import makeCredentials
from imgateway.auth.sasl import clientMechanism
from imgateway.core.address import Address
from imgateway.core.records import AccountRecord, ContactRecord
from imgateway.home.store import _address as sqliteAddress
from imgateway.testing import XmlStreamPeer, memoryGateway, mutualContacts

PASSWORD = "pw"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    " to='corp.example' version='1.0'>"
)


class NativeWire:
    """
    A native client in memory: requests in, the server's requests answered.
    """

    def __init__(self, factory: NativeServerFactory, peer: IPv4Address) -> None:
        self.transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5300))
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.parser = FrameParser()
        self.seq = 0

    def call(self, method: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> Response:
        self.seq += 1
        self.protocol.dataReceived(serialise(Request(method, "*", Headers.of(("Seq", str(self.seq)), *headers), body)))
        return self.answer()

    def answer(self) -> Response:
        data = self.transport.value()
        self.transport.clear()
        out = None
        for frame in self.parser.feed(data):
            if isinstance(frame, Response) and out is None:
                out = frame
        assert out is not None, data
        return out

    def login(self, user: str, mech: str) -> None:
        m = clientMechanism(mech, user, PASSWORD)
        r = self.call("AUTH", (("Mechanism", mech),), m.start())
        while r.code == 110:
            r = self.call("AUTH", (), m.step(r.body))
        assert r.code == 200, r
        assert self.call("CONTACTS").code == 200
        assert self.call("PUBLISH", (("Presence", "online"),)).code == 200
        self.transport.clear()


def peerOf(i: int) -> IPv4Address:
    """
    A loopback address of its own for connection C{i} (the per-address
    limits stay as shipped).
    """
    return IPv4Address("TCP", f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}", 40000)


def xmppLogin(factory: C2SFactory, user: str, mech: str, peer: IPv4Address) -> XmlStreamPeer:
    c = XmlStreamPeer(factory.buildProtocol(peer), peer)
    c.write(HEADER)
    c.read()
    m = clientMechanism(mech, user, PASSWORD)
    c.write(f"<auth xmlns='{SASL}' mechanism='{mech}'>{base64.b64encode(m.start()).decode() or '='}</auth>")
    while True:
        [reply] = c.read()
        if reply.name != "challenge":
            break
        data = m.step(base64.b64decode(str(reply)))
        c.write(f"<response xmlns='{SASL}'>{base64.b64encode(data).decode() or '='}</response>")
    assert reply.name == "success", reply.toXml()
    c.restart()
    c.write(HEADER)
    c.read()
    c.write("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    c.write("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
    c.write("<presence/>")
    c.transport.clear()
    c._parser = None  # the probe's own parser is not the server's memory
    return c


def rowsAsSQLiteMakesThem(store: Any) -> None:
    """
    Make the memory store answer reads with new L{Address}es made from the
    stored text, as L{imgateway.home.store.SQLiteHomeStore} does, instead of
    the objects it keeps: the addresses that the home server keeps per user
    are then its own memory, as in the real process.
    """
    getContacts, getAuthorisations = store.getContacts, store.getAuthorisations

    def fresh(a: Address) -> Address:
        return sqliteAddress(str(a))

    def contacts(owner: Address) -> Any:
        return getContacts(owner).addCallback(
            lambda rows: [ContactRecord(fresh(c.address), c.displayName) for c in rows]
        )

    def authorisations(user: Address) -> Any:
        return getAuthorisations(user).addCallback(
            lambda rows: [(fresh(t), fresh(w), state) for t, w, state in rows]
        )

    store.getContacts, store.getAuthorisations = contacts, authorisations


def setUp(args: argparse.Namespace) -> tuple[Any, Clock, NativeServerFactory, C2SFactory]:
    clock = Clock()
    gateway = memoryGateway(clock)
    credentials = makeCredentials(PASSWORD, 4096).serialise()
    n = args.sessions
    for i in range(n):
        address = Address.fromParts(f"u{i}", gateway.domain)
        gateway.directory.addAccount(AccountRecord(address, gateway.homeServer.name, "", True, credentials))
    changes: list[Any] = []
    for i in range(n):
        for k in range(1, args.contacts // 2 + 1):
            x = Address.fromParts(f"u{i}", gateway.domain)
            y = Address.fromParts(f"u{(i + k) % n}", gateway.domain)
            changes += mutualContacts(x, y)
    gateway.homeServer.store.apply(changes)
    if not args.shared_rows:
        rowsAsSQLiteMakesThem(gateway.homeServer.store)
    native = NativeServerFactory(gateway, NativeConfig(), clock)
    limits = StreamLimits(idleParserSeconds=0.0 if args.keep_parsers else IDLE_PARSER_SECONDS)
    xmpp = C2SFactory(gateway, C2SConfig(requireTLS=False, limits=limits), None, clock)
    return gateway, clock, native, xmpp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--contacts", type=int, default=20)
    p.add_argument("--face", choices=("native", "xmpp", "mixed"), default="mixed")
    p.add_argument("--mech", default="SCRAM-SHA-1")
    p.add_argument("--top", type=int, default=12, help="allocating lines shown")
    p.add_argument(
        "--by", choices=("lineno", "filename"), default="lineno",
        help="group the allocations by line (default) or by file",
    )
    p.add_argument("--profile", type=int, metavar="N", help="show the N functions with most CPU (cumulative)")
    p.add_argument(
        "--shared-rows", action="store_true",
        help="the memory store's own addresses in the rows read (before: new ones, as SQLite makes them)",
    )
    p.add_argument("--keep-parsers", action="store_true", help="XMPP: no idle-parser drop")
    args = p.parse_args(argv)
    gateway, clock, native, xmpp = setUp(args)
    faces = {"native": ["native"], "xmpp": ["xmpp"], "mixed": ["native", "xmpp"]}[args.face]
    users = [f"u{i}" for i in range(args.sessions)]
    # Warm up: a few logins in and out, so that caches are filled.
    for face in faces:
        for u in users[:5]:
            if face == "native":
                NativeWire(native, peerOf(200000)).login(u, args.mech)
            else:
                xmppLogin(xmpp, u, args.mech, peerOf(200001))
    gateway.homeServer.closeAll("warm-up over")
    clock.advance(1)
    kept: list[Any] = []
    gc.collect()
    tracemalloc.start(4)
    before = tracemalloc.take_snapshot()
    profiler = cProfile.Profile() if args.profile else None
    t0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    for i, u in enumerate(users):
        face = faces[i % len(faces)]
        if face == "native":
            w = NativeWire(native, peerOf(i))
            w.login(u, args.mech)
            kept.append(w)
        else:
            kept.append(xmppLogin(xmpp, u, args.mech, peerOf(i)))
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - t0
    # Two idle periods: the XMPP streams drop their parsers.
    clock.advance(IDLE_PARSER_SECONDS)
    clock.advance(IDLE_PARSER_SECONDS)
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, args.by)
    total = sum(s.size_diff for s in stats)
    n = len(kept)
    print(f"{n} sessions ({args.face}, {args.contacts} contacts each, {args.mech}): "
          f"{total / n / 1024:.2f} KiB traced per session; login CPU {1e6 * cpu / n:,.0f} µs each "
          f"(in memory, tracemalloc{' and cProfile' if profiler else ''} on); "
          f"{len(clock.getDelayedCalls())} delayed calls on the clock in all")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split(str(Path(__file__).resolve().parent.parent) + "/")[-1]
        print(f"  {s.size_diff / n:8.0f} B/session  {s.count_diff / n:5.1f} blocks  {where}{f':{frame.lineno}' if args.by == 'lineno' else ''}")
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
