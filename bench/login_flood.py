"""
Login floods on the native protocol: C{--workers} connections log in as fast
as they can for C{--duration} seconds against a gateway this benchmark
spawns, and it prints one JSON line with the logins per second and the
server's RSS and CPU before, during and after. This is a benchmark, not a
test: nothing asserts a time.

    .venv/bin/python bench/login_flood.py --mode wrong                    # wrong PLAIN passwords
    .venv/bin/python bench/login_flood.py --mode wrong --throttle         # same, [limits] as shipped
    .venv/bin/python bench/login_flood.py --mode login --mech PLAIN       # right passwords
    .venv/bin/python bench/login_flood.py --mode login --mech SCRAM-SHA-256
    .venv/bin/python bench/login_flood.py --mode login --mech SCRAM-SHA-1 --face xmpp
    .venv/bin/python bench/login_flood.py --mode login --mech PLAIN --profile /tmp/login.prof
    .venv/bin/python bench/login_flood.py --mode idle --face mixed --mech SCRAM-SHA-1 --sessions 10000 --contacts 20
    .venv/bin/python bench/login_flood.py --mode inprocess --mech SCRAM-SHA-1 --logins 3000

C{--mode wrong} is the attack: every attempt is C{AUTH} PLAIN with a wrong
password for one of C{--users} accounts (or unknown ones with
C{--unknown}), up to C{max_auth_attempts} per connection, then a new
connection. Unless C{--throttle}, the gateway's C{[limits]} are raised so
that every attempt is checked (the worst case for its memory and CPU); with
it, the shipped limits apply and most attempts are refused unchecked.
C{--mode inprocess} spawns nothing: it times the XMPP c2s face's own CPU per
login and per stage of a login (C{--logins}, binding C{--resource}) over a
memory gateway and a fake transport, in this process, without the sockets,
threads and SQLite of a real gateway.
C{--mode idle} logs C{--sessions} in (C{--face mixed}: even accounts on the
native face, odd ones on XMPP), each with C{--contacts} mutual contacts
among them, fetching its contacts and going online, keeps them connected and
reports the time it took, the CPU per login and the RSS (peak, and per
session). C{--mode login} logs in with the right password and says C{BYE} (with
C{--face xmpp}: SASL on the XMPP c2s face without TLS, resource binding,
then the end of the stream). The figure to compare is C{server_cpu_us_per_login},
the gateway's CPU (user + system) over the run divided by the logins: it
holds when other jobs share the cores, where logins per second do not. The
driver caches SCRAM's C{SaltedPassword} per salt and iteration count, as RFC
5802 lets a client do, so that its own PBKDF2 does not limit the rate.

The gateway gets the shipped C{[auth] scram_iterations} (10000) unless
C{--scram-iterations} says otherwise, so that a check costs what it costs
in production. Old trees without C{[limits]} or C{[auth] password_*} keys
are run as they are (to measure the figures before a change).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import REPO, SpawnedGateway, _setKey
from bench._peers import circulant
from bench._proc import mainThreadCpuS, procCpuS, procRssKb, raiseNofile
from imgateway import __version__
from imgateway.adapters.native.framing import FrameParser, Headers, Request, Response, serialise
from imgateway.auth import sasl
from imgateway.auth.passwords import saltedPassword
from imgateway.auth.sasl import clientMechanism

PASSWORD = "bench-pw"

#: [limits] keys set so that no attempt is refused unchecked.
NO_LIMITS = {
    "login_failures_per_address": "1000000000",
    "login_failures_per_account": "1000000000",
    "max_unauthenticated_per_address": "1000000",
    "connections_per_second_per_address": "1000000",
    "connection_burst_per_address": "1000000",
}


def perLogin(cpu0: float | None, cpu1: float | None, n: int) -> float | None:
    """
    @return: The CPU from C{cpu0} to C{cpu1} in µs per login, if known.
    """
    return round(1e6 * (cpu1 - cpu0) / n, 1) if n and cpu0 is not None and cpu1 is not None else None


def info(text: str) -> None:
    print(f"login_flood: {text}", file=sys.stderr, flush=True)


class Conn(asyncio.Protocol):
    """
    One native connection: send requests, await their responses.
    """

    def __init__(self) -> None:
        self.parser = FrameParser()
        self.seq = 0
        self.waiting: dict[int, asyncio.Future[Response]] = {}
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.refusal: Response | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answers = []
        for frame in self.parser.feed(data):
            if isinstance(frame, Response):
                if frame.seq == 0:
                    # Refused at once (503: a per-source or global limit).
                    self.refusal = frame
                f = self.waiting.pop(frame.seq, None)
                if f is not None and not f.done():
                    f.set_result(frame)
            elif isinstance(frame, Request) and frame.method != "BYE":
                # The server's requests (a contact's presence, ...) are
                # answered as a client answers them.
                seq = frame.headers.get("Seq") or "0"
                answers.append(serialise(Response(200, "OK", Headers.of(("Seq", seq)))))
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))

    def connection_lost(self, exc: Exception | None) -> None:
        for f in self.waiting.values():
            if not f.done():
                f.set_exception(ConnectionError("closed"))
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, method: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> asyncio.Future[Response]:
        assert self.transport is not None
        self.seq += 1
        f: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = f
        self.transport.write(serialise(Request(method, "*", Headers.of(("Seq", str(self.seq)), *headers), body)))
        return f


async def connect(port: int, source: str = "127.0.0.1") -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, "127.0.0.1", port, local_addr=(source, 0))
    return conn


def outcomeOf(r: Response) -> str:
    """
    How an C{AUTH} was answered, for the outcome counts: the status and
    C{Error}, and C{Retry-After} when the login throttle refused it
    (without, a C{temporary-auth-failure} means the password checks were
    all busy).
    """
    text = f"{r.code} {r.headers.get('Error') or ''}".strip()
    return text + " Retry-After" if r.headers.get("Retry-After") is not None else text


async def wrongWorker(
    port: int, users: list[str], attempts: int, stop: float, outcomes: Counter[str], source: str = "127.0.0.1"
) -> None:
    """
    Send wrong PLAIN passwords from C{source} until C{stop}, C{attempts}
    per connection. A connection refused at once counts as C{503 at
    connect}, one closed otherwise before its answer as C{closed}.
    """
    n = 0
    while time.monotonic() < stop:
        try:
            conn = await connect(port, source)
        except OSError:
            outcomes["connect-failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            for _ in range(attempts):
                user = users[n % len(users)]
                n += 1
                r = await asyncio.wait_for(
                    conn.request("AUTH", (("Mechanism", "PLAIN"),), f"\0{user}\0wrong-{n}".encode()), 30
                )
                outcomes[outcomeOf(r)] += 1
                if time.monotonic() >= stop:
                    break
        except (ConnectionError, asyncio.TimeoutError):
            outcomes["503 at connect" if conn.refusal is not None else "closed"] += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()


async def loginWorker(port: int, users: list[str], mech: str, stop: float, outcomes: Counter[str], offset: int) -> None:
    """
    Log in with the right password and say BYE, until C{stop}.
    """
    n = offset
    while time.monotonic() < stop:
        user = users[n % len(users)]
        n += 1
        try:
            conn = await connect(port)
        except OSError:
            outcomes["connect-failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            m = clientMechanism(mech, user, PASSWORD)
            r = await asyncio.wait_for(conn.request("AUTH", (("Mechanism", mech),), m.start()), 30)
            while r.code == 110:
                r = await asyncio.wait_for(conn.request("AUTH", (), m.step(r.body)), 30)
            outcomes[f"{r.code} {r.headers.get('Error') or ''}".strip()] += 1
            if r.code == 200:
                conn.request("BYE")
                await asyncio.wait_for(conn.closed, 30)
        except (ConnectionError, asyncio.TimeoutError):
            outcomes["closed"] += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()


_SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
_STREAM_OPEN = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client'"
    " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
_SASL_REPLY = re.compile(rb"<(challenge|success|failure)[^>]*?(?:/>|>(.*?)</\1>)", re.S)


class XMPPConn(asyncio.Protocol):
    """
    One XMPP c2s connection, read as bytes: enough of XMPP to log in.
    """

    def __init__(self) -> None:
        self.buf = b""
        #: Once idle, what arrives (contacts' presences) is not kept.
        self.idle = False
        self.event = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:
            return
        self.buf += data
        self.event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.event.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8"))

    async def until(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        """
        Wait for C{pattern} in what was received, and consume it and what
        came before.
        """
        while True:
            m = pattern.search(self.buf)
            if m is not None:
                self.buf = self.buf[m.end() :]
                return m
            if self.closed.done():
                raise ConnectionError("closed")
            self.event.clear()
            await self.event.wait()


_FEATURES_END = re.compile(rb"</stream:features>")
_BIND_RESULT = re.compile(rb"<iq[^>]*type=.result.[^>]*>.*?</iq>|<iq[^>]*type=.result.[^>]*/>", re.S)
_ROSTER_RESULT = re.compile(rb"<iq[^>]*id=.r1.[^>]*(?:/>|>.*?</iq>)", re.S)


async def xmppLogin(port: int, domain: str, user: str, mech: str, keep: list[XMPPConn] | None = None) -> str:
    """
    Log in on the XMPP face: SASL, restart, bind, end of stream.

    @param keep: If given, the stream is not ended: the roster is fetched,
        initial presence is sent and the connection is appended to
        C{keep}, idle.
    @return: The outcome: C{"200"} when bound, else what failed.
    """
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(XMPPConn, "127.0.0.1", port)
    try:
        conn.send(_STREAM_OPEN.format(domain=domain))
        await conn.until(_FEATURES_END)
        m = clientMechanism(mech, user, PASSWORD)
        first = base64.b64encode(m.start()).decode("ascii") or "="
        conn.send(f"<auth xmlns='{_SASL_NS}' mechanism='{mech}'>{first}</auth>")
        while True:
            r = await conn.until(_SASL_REPLY)
            kind = r.group(1)
            if kind == b"failure":
                return "sasl failure"
            data = base64.b64decode(r.group(2) or b"")
            if kind == b"success":
                if mech != "PLAIN":
                    m.step(data)
                break
            reply = base64.b64encode(m.step(data)).decode("ascii") or "="
            conn.send(f"<response xmlns='{_SASL_NS}'>{reply}</response>")
        conn.send(_STREAM_OPEN.format(domain=domain))
        await conn.until(_FEATURES_END)
        conn.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        await conn.until(_BIND_RESULT)
        if keep is not None:
            conn.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
            await conn.until(_ROSTER_RESULT)
            conn.send("<presence/>")
            conn.idle = True
            conn.buf = b""
            keep.append(conn)
            return "200"
        conn.send("</stream:stream>")
        await asyncio.wait_for(conn.closed, 30)
        return "200"
    finally:
        if conn.transport is not None and (keep is None or conn not in keep):
            conn.transport.close()


async def nativeLogin(port: int, user: str, mech: str, keep: list[Any] | None) -> str:
    """
    Log in on the native face; say C{BYE}, or (with C{keep}) fetch the
    contacts, announce presence and keep the connection idle in C{keep}.
    """
    conn = await connect(port)
    try:
        m = clientMechanism(mech, user, PASSWORD)
        r = await conn.request("AUTH", (("Mechanism", mech),), m.start())
        while r.code == 110:
            r = await conn.request("AUTH", (), m.step(r.body))
        outcome = f"{r.code} {r.headers.get('Error') or ''}".strip()
        if r.code != 200:
            return outcome
        if keep is not None:
            await conn.request("CONTACTS")
            await conn.request("PUBLISH", (("Presence", "online"),))
            keep.append(conn)
            return outcome
        conn.request("BYE")
        await asyncio.wait_for(conn.closed, 30)
        return outcome
    finally:
        if conn.transport is not None and (keep is None or conn not in keep):
            conn.transport.close()


async def idleRun(args: argparse.Namespace, gw: SpawnedGateway) -> dict[str, Any]:
    """
    Log C{--sessions} sessions in (after C{--warmup} logins in and out)
    and keep them idle: the gateway's RSS per idle session.
    """
    sem = asyncio.Semaphore(args.workers)
    outcomes: Counter[str] = Counter()
    kept: list[Any] = []

    async def login(user: str, keep: list[Any] | None) -> str:
        face = args.face
        if face == "mixed":
            # Even accounts on the native face, odd ones on XMPP.
            face = "native" if int(user[len("bench") :]) % 2 == 0 else "xmpp"
        if face == "native":
            return await nativeLogin(gw.port, user, args.mech, keep)
        assert gw.xmppPort is not None and gw.domain is not None
        return await xmppLogin(gw.xmppPort, gw.domain, user, args.mech, keep)

    async def one(user: str, keep: list[Any] | None) -> None:
        async with sem:
            try:
                outcomes[await asyncio.wait_for(login(user, keep), 60)] += 1
            except (OSError, asyncio.TimeoutError) as e:
                outcomes[type(e).__name__] += 1

    await asyncio.gather(*(one(f"bench{i}", None) for i in range(args.warmup)))
    await asyncio.sleep(2.0)
    rssBase = procRssKb(gw.pid)
    cpu0 = procCpuS(gw.pid)
    reactor0 = mainThreadCpuS(gw.pid)
    start = time.monotonic()
    peak = rssBase or 0
    logins = asyncio.gather(*(one(f"bench{i}", kept) for i in range(args.sessions)))
    while not logins.done():
        peak = max(peak, procRssKb(gw.pid) or 0)
        await asyncio.wait([logins], timeout=0.5)
    await logins
    elapsed = time.monotonic() - start
    cpu1 = procCpuS(gw.pid)
    reactor1 = mainThreadCpuS(gw.pid)
    await asyncio.sleep(args.settle)
    rss = procRssKb(gw.pid)
    peak = max(peak, rss or 0)
    for conn in kept:
        if conn.transport is not None:
            conn.transport.close()
    n = len(kept)
    return {
        "bench": "login_flood",
        "mode": "idle",
        "face": args.face,
        "mech": args.mech,
        "sessions": n,
        "contacts": args.contacts,
        "idle_parser_seconds": args.idle_parser_seconds,
        "scram_iterations": args.scram_iterations,
        "warmup_logins": args.warmup,
        "outcomes": dict(outcomes),
        "login_s": round(elapsed, 2),
        "logins_per_s": round(n / elapsed, 1) if elapsed else None,
        "server_cpu_us_per_login": perLogin(cpu0, cpu1, n),
        "reactor_thread_cpu_us_per_login": perLogin(reactor0, reactor1, n),
        "server_rss_base_kb": rssBase,
        "server_rss_kb": rss,
        "server_rss_mib": round((rss or 0) / 1024, 1),
        "server_rss_peak_mib": round(peak / 1024, 1),
        "rss_per_session_kib": round(((rss or 0) - (rssBase or 0)) / n, 1) if n else None,
        "gateway_log_errors": gw.logErrors(),
        "imgateway": __version__,
        "cores": os.cpu_count(),
    }


async def xmppLoginWorker(
    port: int, domain: str, users: list[str], mech: str, stop: float, outcomes: Counter[str], offset: int
) -> None:
    """
    Log in on the XMPP face with the right password and end the stream,
    until C{stop}.
    """
    n = offset
    while time.monotonic() < stop:
        user = users[n % len(users)]
        n += 1
        try:
            outcomes[await asyncio.wait_for(xmppLogin(port, domain, user, mech), 30)] += 1
        except OSError:
            outcomes["connect-failed"] += 1
            await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.TimeoutError):
            outcomes["closed"] += 1


def cacheClientKeys() -> None:
    """
    Let this driver's SCRAM client cache C{SaltedPassword} per password,
    salt and iteration count (RFC 5802 section 5.1 allows it), so that the
    driver's own PBKDF2 does not limit the rate of logins.
    """
    # The name that the client mechanism calls, in this driver only.
    setattr(sasl, "saltedPassword", functools.lru_cache(maxsize=65536)(saltedPassword))


async def run(args: argparse.Namespace, gw: SpawnedGateway) -> dict[str, Any]:
    pid = gw.pid
    users = [f"bench{i}" for i in range(args.users)]
    if args.unknown:
        users = [f"nobody{i}" for i in range(args.users)]
    await asyncio.sleep(1.0)
    rssBase = procRssKb(pid)
    cpu0 = procCpuS(pid)
    reactor0 = mainThreadCpuS(pid)
    outcomes: Counter[str] = Counter()
    start = time.monotonic()
    stop = start + args.duration
    if args.mode == "wrong":
        tasks = [asyncio.create_task(wrongWorker(gw.port, users, args.attempts, stop, outcomes)) for _ in range(args.workers)]
    elif args.face == "xmpp":
        assert gw.xmppPort is not None and gw.domain is not None
        tasks = [
            asyncio.create_task(xmppLoginWorker(gw.xmppPort, gw.domain, users, args.mech, stop, outcomes, i))
            for i in range(args.workers)
        ]
    else:
        tasks = [
            asyncio.create_task(loginWorker(gw.port, users, args.mech, stop, outcomes, i)) for i in range(args.workers)
        ]
    peak = rssBase or 0
    while not all(t.done() for t in tasks):
        peak = max(peak, procRssKb(pid) or 0)
        await asyncio.sleep(0.25)
    elapsed = time.monotonic() - start
    cpu1 = procCpuS(pid)
    reactor1 = mainThreadCpuS(pid)
    rssEnd = procRssKb(pid)
    await asyncio.sleep(2.0)
    rssAfter = procRssKb(pid)
    total = sum(v for k, v in outcomes.items() if k[:1].isdigit())
    ok = outcomes.get("200", 0)
    return {
        "bench": "login_flood",
        "mode": args.mode,
        "face": args.face,
        "mech": "PLAIN" if args.mode == "wrong" else args.mech,
        "throttle": args.throttle,
        "unknown_users": args.unknown,
        "workers": args.workers,
        "users": args.users,
        "scram_iterations": args.scram_iterations,
        "duration_s": round(elapsed, 2),
        "answered": total,
        "answered_per_s": round(total / elapsed, 1),
        "logins_per_s": round(ok / elapsed, 1),
        "outcomes": dict(outcomes),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1) if cpu0 is not None and cpu1 is not None else None,
        "server_cpu_s": round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None,
        "server_cpu_us_per_login": perLogin(cpu0, cpu1, ok),
        "reactor_thread_cpu_us_per_login": perLogin(reactor0, reactor1, ok),
        "server_cpu_us_per_answer": (
            round(1e6 * (cpu1 - cpu0) / total, 1) if total and cpu0 is not None and cpu1 is not None else None
        ),
        "server_rss_base_kb": rssBase,
        "server_rss_peak_kb": peak,
        "server_rss_end_kb": rssEnd,
        "server_rss_after_kb": rssAfter,
        "server_rss_growth_mib": round((peak - (rssBase or 0)) / 1024, 1),
        "gateway_log_errors": gw.logErrors(),
        "imgateway": __version__,
        "cores": os.cpu_count(),
    }


#: The stages of an XMPP login, in the order L{inProcessRun} times them.
XMPP_STAGES = ("connect", "header", "auth", "response", "restart", "bind", "end", "lost")


def inProcessRun(logins: int, mech: str, resource: str, warmup: int = 200, logToDevNull: bool = True) -> dict[str, Any]:
    """
    The XMPP c2s face's own CPU per login, without sockets, threads or
    SQLite: C{logins} logins, one after the other, through the face over
    a memory gateway (L{imgateway.testing.memoryGateway}) and a
    C{StringTransport}, each login's stages timed with this thread's CPU
    clock (the client's work is not counted). Log lines go to
    C{/dev/null} through the text observer C{twistd} gets from the gateway
    (L{imgateway.status.logs.textLogObserver}; Twisted's in older trees),
    as C{twistd}'s would go to its file.

    @param resource: The resource bound (C{""}: the server makes one).
    @param logToDevNull: Whether to start Twisted's global logging, to
        C{/dev/null} (not in tests: trial logs).
    @return: The JSON record: CPU µs per login, and per stage.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from imgateway.adapters.xmpp.c2s import C2SConfig, C2SFactory
    from imgateway.testing import addUser, memoryGateway

    if logToDevNull:
        try:
            # The observer twistd gets from the gateway (older trees: Twisted's).
            from imgateway.status.logs import textLogObserver as observer
        except ImportError:
            observer = textFileLogObserver
        globalLogBeginner.beginLoggingTo(
            [observer(open(os.devnull, "w", encoding="utf-8"))], discardBuffer=True, redirectStandardIO=False
        )
    clock = Clock()
    gateway = memoryGateway(clock)
    users = 20
    for i in range(users):
        addUser(gateway, f"bench{i}", PASSWORD)
    factory = C2SFactory(gateway, C2SConfig(requireTLS=False), None, clock)
    header = _STREAM_OPEN.format(domain=gateway.domain).encode()
    host = IPv4Address("TCP", "127.0.0.1", 5222)
    bind = f"<resource>{resource}</resource>" if resource else ""
    stages = [0.0] * len(XMPP_STAGES)

    def login(i: int) -> None:
        # A source of its own per login: the per-source limits stay out.
        peer = IPv4Address("TCP", f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000)
        t = StringTransport(hostAddress=host, peerAddress=peer)
        protocol = factory.buildProtocol(peer)
        step = 0

        def server(f: Any, *args: Any) -> bytes:
            nonlocal step
            t0 = time.thread_time()
            f(*args)
            stages[step] += time.thread_time() - t0
            step += 1
            out: bytes = t.value()
            t.clear()
            return out

        server(protocol.makeConnection, t)
        server(protocol.dataReceived, header)
        m = clientMechanism(mech, f"bench{i % users}", PASSWORD)
        first = base64.b64encode(m.start()).decode("ascii") or "="
        reply = server(protocol.dataReceived, f"<auth xmlns='{_SASL_NS}' mechanism='{mech}'>{first}</auth>".encode())
        r = _SASL_REPLY.search(reply)
        if mech != "PLAIN":
            assert r is not None and r.group(1) == b"challenge", reply
            answer = base64.b64encode(m.step(base64.b64decode(r.group(2) or b""))).decode("ascii")
            reply = server(protocol.dataReceived, f"<response xmlns='{_SASL_NS}'>{answer}</response>".encode())
        else:
            step += 1
        assert b"<success" in reply, reply
        server(protocol.dataReceived, header)
        reply = server(protocol.dataReceived, f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{bind}</bind></iq>".encode())
        assert b"type='result'" in reply, reply
        server(protocol.dataReceived, b"</stream:stream>")
        server(protocol.connectionLost, None)

    for i in range(warmup):
        login(i)
    stages[:] = [0.0] * len(XMPP_STAGES)
    for i in range(logins):
        login(warmup + i)
    return {
        "bench": "login_flood",
        "mode": "inprocess",
        "face": "xmpp",
        "mech": mech,
        "resource": resource,
        "logins": logins,
        "cpu_us_per_login": round(sum(stages) / logins * 1e6, 1),
        "cpu_us_per_stage": {name: round(v / logins * 1e6, 1) for name, v in zip(XMPP_STAGES, stages)},
        "imgateway": __version__,
    }


def writeContacts(gw: SpawnedGateway, sessions: int, contacts: int) -> None:
    """
    Give each of the accounts C{bench0 .. bench<sessions-1>} C{contacts}
    mutual contacts among themselves (as C{compare.py}'s idle runs), in the
    gateway's store before it starts.
    """
    info(f"writing {contacts} contacts for each of {sessions} accounts")
    pairsFile = gw.folder / "pairs.json"
    pairsFile.write_text(json.dumps(circulant(0, sessions, contacts)))
    done = subprocess.run(
        [sys.executable, "-m", "bench._peers", "gateway-contacts", "--config", str(gw.config),
         "--pairs", str(pairsFile), "--prefix", "bench"],
        capture_output=True, text=True, timeout=900, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"writing the contacts failed:\n{done.stderr[-3000:]}")


def configure(gw: SpawnedGateway, args: argparse.Namespace) -> None:
    """
    Adjust the spawned gateway's configuration for the flood.
    """
    text = gw.config.read_text(encoding="utf-8")
    text = _setKey(text, "auth", "scram_iterations", str(args.scram_iterations))
    text = _setKey(text, "native", "max_auth_attempts", str(args.attempts + 1))
    text = _setKey(text, "native", "allow_plaintext_auth", "true")
    if args.idle_parser_seconds is not None:
        text = _setKey(text, "xmpp", "idle_parser_seconds", repr(args.idle_parser_seconds))
    if "[limits]" in text and not args.throttle:
        for key, value in NO_LIMITS.items():
            text = _setKey(text, "limits", key, value)
    gw.config.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("wrong", "login", "idle", "inprocess"), default="wrong")
    p.add_argument("--mech", default="PLAIN", help="for --mode login: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-1")
    p.add_argument("--workers", type=int, default=50, help="connections at once")
    p.add_argument("--users", type=int, default=20, help="accounts attempted")
    p.add_argument("--unknown", action="store_true", help="attempt accounts that do not exist")
    p.add_argument("--attempts", type=int, default=2, help="wrong attempts per connection")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--scram-iterations", type=int, default=10000)
    p.add_argument("--throttle", action="store_true", help="keep the shipped [limits] (else raised)")
    p.add_argument(
        "--face", choices=("native", "xmpp", "mixed"), default="native", help="mixed (--mode idle): half on each face"
    )
    p.add_argument("--contacts", type=int, default=0, help="for --mode idle: mutual contacts of each session")
    p.add_argument(
        "--idle-parser-seconds", type=float, help="[xmpp] idle_parser_seconds (e.g. 1e9: no drop, to compare)"
    )
    p.add_argument("--sessions", type=int, default=1000, help="for --mode idle: idle sessions")
    p.add_argument("--warmup", type=int, default=50, help="for --mode idle: logins in and out first")
    p.add_argument("--settle", type=float, default=3.0, help="for --mode idle: seconds before measuring")
    p.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    p.add_argument("--keep", action="store_true", help="keep the gateway's folder")
    p.add_argument("--logins", type=int, default=3000, help="for --mode inprocess: logins timed")
    p.add_argument("--resource", default="r", help="for --mode inprocess: the resource bound ('': the server makes one)")
    args = p.parse_args(argv)
    if args.mode == "inprocess":
        cacheClientKeys()
        print(json.dumps(inProcessRun(args.logins, args.mech, args.resource)), flush=True)
        return 0
    if args.face == "xmpp" and args.mode == "wrong":
        p.error("--face xmpp needs --mode login or idle")
    if args.face == "mixed" and args.mode != "idle":
        p.error("--face mixed needs --mode idle")
    if args.contacts and (args.mode != "idle" or args.contacts >= args.sessions or args.contacts % 2):
        p.error("--contacts: an even number below --sessions, with --mode idle")
    if args.mode == "idle":
        args.users = max(args.users, args.sessions, args.warmup)
    raiseNofile()
    cacheClientKeys()
    options = ["--profiler=cprofile", "--savestats", f"--profile={args.profile}"] if args.profile else []
    gw = SpawnedGateway(keep=args.keep, xmpp=args.face != "native", twistdOptions=options)
    try:
        configure(gw, args)
        info(f"creating {args.users} accounts")
        gw.createUsers("bench", 0, args.users, PASSWORD)
        if args.contacts:
            writeContacts(gw, args.sessions, args.contacts)
        gw.start()
        info(f"gateway pid {gw.pid}, port {gw.port}; {args.mode} for {args.duration:g} s with {args.workers} workers")
        result = asyncio.run(idleRun(args, gw) if args.mode == "idle" else run(args, gw))
    finally:
        gw.stop()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
