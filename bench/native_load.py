"""
Message load on the native protocol: N client pairs exchanging messages
through a running gateway for D seconds; prints messages/s, p50/p99 latency
and server RSS per connected session as one JSON line. This is a benchmark,
not a test: nothing asserts a time.

    .venv/bin/python bench/native_load.py --pairs 50 --duration 10      # spawns a gateway
    .venv/bin/python bench/native_load.py --port 5300 --pidfile twistd.pid \\
        --config etc/imgateway.toml --create-users --pairs 50           # a running one

The model is that of the XMPP/IRC load drivers in C{../shared/peers/load} so
that the figures compare: the parent process forks C{--procs} driver
processes (asyncio, raw sockets); each logs in its share of the clients and
reports ready; all start sending at a common time, measure deliveries and
latencies inside C{[t0, t0 + duration)} after a warm-up, stop sending at the
end of that window and drain. The parent samples the server's CPU time and
RSS from C{/proc} at the window's edges and prints one JSON line on standard
output; everything else goes to standard error.

Both members of a pair send to each other (as C{xmpp_load.py msg} does), each
with C{--window} messages outstanding (sent, not yet delivered), or together
at C{--rate} messages/s; C{--one-way} makes only C{a_i} send to C{b_i}. A
message's body is C{"<n> <send time in microseconds>"}; the receiver
measures the latency (driver processes share C{CLOCK_MONOTONIC}, and a pair
lives in one process anyway).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/native_load.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import interruptedStatus, interruptOnSigterm, GatewayError, SpawnedGateway, createUsers
from imgateway import __version__
from imgateway.adapters.native.framing import (
    FrameParser,
    FramingError,
    Headers,
    Request,
    Response,
    serialise,
)
from imgateway.auth.sasl import ClientMechanism, SASLFailure, clientMechanism

from bench._proc import machineBusyS, nowUs, procCpuS, procRssKb, raiseNofile, shard


# Per-message bookkeeping flags (one byte per message number and sender).
_ACKED = 1  # answered 200
_RECEIVED = 2  # delivered to the recipient
_FAILED = 4  # answered with another status

_MAX_HEAD = 1 << 20


def info(text: str) -> None:
    print(f"native_load: {text}", file=sys.stderr, flush=True)


# -- the server process, from /proc --------------------------------------------------------


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def percentiles(samples: Sequence[int]) -> dict[str, float]:
    """
    p50, p90, p99, p99.9, max and mean of C{samples} (nearest rank, as the
    peers' drivers compute them).
    """
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)
    out: dict[str, float] = {}
    for p in (50, 90, 99, 99.9):
        k = min(n - 1, max(0, int(round(p / 100.0 * n + 0.5)) - 1))
        out["p%s" % ("%g" % p).replace(".", "_")] = s[k]
    out["max"] = s[-1]
    out["mean"] = round(sum(s) / n, 1)
    return out


# -- driver side ---------------------------------------------------------------------------


class Stats:
    """
    The counters of one driver process.
    """

    def __init__(self, maxSamples: int = 400000) -> None:
        self.t0: int | None = None
        self.t1 = 0
        self.lat = array.array("q")
        #: Send -> 200 answer (the round trip through the servers), in window.
        self.ackLat = array.array("q")
        self.maxSamples = maxSamples
        self.sampleEvery = 1
        self.ackSampleEvery = 1
        self._k = 0
        self._ackK = 0
        self.delivered = 0  # deliveries inside the window
        self.receivedTotal = 0  # first deliveries, whole run
        self.sent = 0
        self.duplicates = 0
        self.unexpected = 0  # MESSAGEs nobody sent (or not parseable)
        self.errors: dict[int, int] = {}
        self.framingErrors = 0
        self.stalls = 0
        self.disconnects = 0
        self.traffic = False

    def record(self, sentUs: int) -> None:
        t = nowUs()
        self.receivedTotal += 1
        t0 = self.t0
        if t0 is not None and t0 <= t < self.t1:
            self.delivered += 1
            self._k += 1
            if self._k >= self.sampleEvery:
                self._k = 0
                self.lat.append(t - sentUs)
                if len(self.lat) >= self.maxSamples:
                    # Keep every other sample, and sample half as often.
                    self.lat = self.lat[::2]
                    self.sampleEvery *= 2

    def recordAck(self, sentUs: int) -> None:
        t = nowUs()
        t0 = self.t0
        if t0 is not None and t0 <= t < self.t1:
            self._ackK += 1
            if self._ackK >= self.ackSampleEvery:
                self._ackK = 0
                self.ackLat.append(t - sentUs)
                if len(self.ackLat) >= self.maxSamples:
                    self.ackLat = self.ackLat[::2]
                    self.ackSampleEvery *= 2


class LoginError(Exception):
    pass


_MESSAGE = b"MESSAGE %s IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s"
_OK = b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n"


def _headers(head: bytes) -> dict[str, str]:
    """
    The headers of a frame's head (start line and header lines, CRLF
    separated), names lower-cased; the first of a repeated name counts.
    """
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.decode("ascii", "replace").lower()
        if key not in out:
            out[key] = value.decode("utf-8", "replace").strip(" \t")
    return out


class Reply:
    """
    A response, as the login phase needs it.
    """

    __slots__ = ("code", "reason", "headers", "body")

    def __init__(self, code: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.code = code
        self.reason = reason
        self.headers = headers
        self.body = body


class NativeConn(asyncio.Protocol):
    """
    One client connection.

    Frames from the server are read either by L{FrameParser} (C{--parser
    framing}) or by a reader that only does what this driver needs (the
    default, C{fast}): it finds the end of the head, reads C{Seq} and
    C{Content-Length} (names in any case) and the body, and relies on the
    server sending CRLF line ends, as it must. Requests are written with
    L{serialise} during login; messages and answers with a byte template
    that L{selfCheck} compares with L{serialise}'s output at start-up.
    """

    def __init__(self, user: str, stats: Stats, fast: bool) -> None:
        self.user = user
        self.stats = stats
        self._fast = fast
        self.pump: Pump | None = None  # this connection sending
        self.peer: Pump | None = None  # whoever sends to this connection
        self.reset()

    def reset(self) -> None:
        """
        Forget the connection (before a new attempt to log in).
        """
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self._parser = None if self._fast else FrameParser()
        self._buf = b""
        self.seq = 0
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        #: Frame Seq of an outstanding MESSAGE -> its message number.
        self.messages: dict[int, int] = {}
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.byeReason = ""

    # -- transport -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.traffic:
            self.stats.disconnects += 1
        if not self.lost.done():
            self.lost.set_result(None)
        why = f"connection lost{': ' + self.byeReason if self.byeReason else ''}"
        for f in self._waiting.values():
            if not f.done():
                f.set_exception(LoginError(f"{self.user}: {why}"))
        self._waiting.clear()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        if self._parser is not None:
            for item in self._parser.feed(data):
                if isinstance(item, FramingError):
                    self.stats.framingErrors += 1
                    info(f"{self.user}: bad frame from the server: {item}")
                    if item.fatal:
                        self.close()
                        return
                elif isinstance(item, Response):
                    self._response(item.seq, item.code, item.body, None, item)
                else:
                    self._request(item.method.encode("ascii"), item.seq, item.body, out)
            if out and self.transport is not None:
                self.transport.write(b"".join(out))
            return
        buf = self._buf + data if self._buf else data
        pos = 0
        n = len(buf)
        while True:
            while buf.startswith(b"\r\n", pos):
                pos += 2  # keep-alive blank lines
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > _MAX_HEAD:
                    self.stats.framingErrors += 1
                    info(f"{self.user}: no end of frame head in {n - pos} bytes; closing")
                    self.close()
                    return
                break
            head = buf[pos:end].lower()
            i = head.find(b"\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r", i)
                length = int(head[i + 16 : j if j >= 0 else len(head)])
            else:
                length = 0
            start = end + 4
            if start + length > n:
                break
            i = head.find(b"\nseq:")
            j = head.find(b"\r", i)
            seq = int(head[i + 5 : j if j >= 0 else len(head)]) if i >= 0 else 0
            body = buf[start : start + length]
            if head.startswith(b"imgw/"):
                sp = head.find(b" ")
                self._response(seq, int(head[sp + 1 : sp + 4]), body, buf[pos:end], None)
            else:
                self._request(buf[pos : buf.find(b" ", pos, end)], seq, body, out)
            pos = start + length
        self._buf = buf[pos:] if pos < n else b""
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _response(self, seq: int, code: int, body: bytes, head: bytes | None, frame: Response | None) -> None:
        mseq = self.messages.pop(seq, None)
        if mseq is not None:
            pump = self.pump
            assert pump is not None
            pump.answered(mseq, code)
            return
        f = self._waiting.pop(seq, None)
        if f is None or f.done():
            return
        if frame is not None:
            f.set_result(Reply(code, frame.reason, {k.lower(): v for k, v in reversed(frame.headers.items)}, body))
        else:
            assert head is not None
            status = head.split(b"\r\n", 1)[0].split(b" ", 2)
            reason = status[2].decode("utf-8", "replace") if len(status) > 2 else ""
            f.set_result(Reply(code, reason, _headers(head), body))

    def _request(self, method: bytes, seq: int, body: bytes, out: list[bytes]) -> None:
        if seq == 0 and method == b"NOTIFY":
            # A presence NOTIFY sent with Seq 0 (this client logs in with
            # Presence-Answers: none, docs/protocol.md 7.2): not answered.
            return
        if self._fast:
            out.append(_OK % seq)
        else:
            out.append(serialise(Response(200, "OK", Headers.of(("Seq", str(seq))))))
        if method == b"MESSAGE":
            peer = self.peer
            if peer is None:
                self.stats.unexpected += 1
            else:
                peer.delivered(body)
        elif method == b"BYE":
            self.byeReason = "BYE from the server"
            if self.transport is not None:
                self.transport.write(b"".join(out))
                out.clear()
            self.close()

    # -- requests (login phase) ------------------------------------------------------------

    def request(self, method: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> asyncio.Future[Reply]:
        if self.transport is None or self.transport.is_closing():
            raise LoginError(f"{self.user}: not connected")
        self.seq += 1
        f: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[self.seq] = f
        self.transport.write(serialise(Request(method, "*", Headers.of(("Seq", str(self.seq)), *headers), body)))
        return f

    async def login(self, host: str, port: int, password: str, mech: str, timeout: float, bind: str | None = None) -> None:
        """
        Connect (from address C{bind}, if given), authenticate (SASL
        C{mech}) and publish C{online}.

        @raise LoginError: If that fails.
        """
        loop = asyncio.get_running_loop()
        local = (bind, 0) if bind else None
        await asyncio.wait_for(loop.create_connection(lambda: self, host, port, local_addr=local), timeout)
        mechanism: ClientMechanism = clientMechanism(mech, self.user, password)
        auth = [("Mechanism", mech), ("Label", "bench"), ("Presence-Answers", "none")]
        r = await asyncio.wait_for(self.request("AUTH", auth, mechanism.start()), timeout)
        while r.code == 110:
            r = await asyncio.wait_for(self.request("AUTH", (), mechanism.step(r.body)), timeout)
        if r.code != 200:
            raise LoginError(f"{self.user}: AUTH answered {r.code} {r.reason}")
        try:
            mechanism.verifyFinal(r.body)
        except SASLFailure as e:
            raise LoginError(f"{self.user}: the server failed SASL verification: {e}") from None
        self.address = r.headers.get("address", "")
        if not self.address:
            raise LoginError(f"{self.user}: AUTH 200 without an Address header")
        r = await asyncio.wait_for(self.request("PUBLISH", [("Presence", "online")]), timeout)
        if r.code != 200:
            raise LoginError(f"{self.user}: PUBLISH answered {r.code} {r.reason}")


def selfCheck() -> None:
    """
    The byte templates write exactly what L{serialise} writes.
    """
    body = b"12 345"
    expect = serialise(Request("MESSAGE", "im:b@x.example", Headers.of(("Seq", "7")), body))
    got = _MESSAGE % (b"im:b@x.example", 7, len(body), body)
    if got != expect:
        raise AssertionError(f"MESSAGE template {got!r} != serialise {expect!r}")
    expect = serialise(Response(200, "OK", Headers.of(("Seq", "7"))))
    if _OK % 7 != expect:
        raise AssertionError(f"200 template {_OK % 7!r} != serialise {expect!r}")


class Pump:
    """
    One sender: C{conn} sending to C{target}, C{window} messages at most
    outstanding (sent and neither delivered nor refused).
    """

    def __init__(self, conn: NativeConn, target: str, window: int, stats: Stats, closedLoop: bool) -> None:
        self.conn = conn
        self.target = target.encode("utf-8")
        self.targetText = target
        self.window = window
        self.stats = stats
        self.closedLoop = closedLoop
        self.out = 0
        self.seq = 0  # message numbers, from 1
        self.state = bytearray(4096)
        #: Send time (microseconds) of each message number.
        self.sentAt = array.array("q", bytes(8 * 4096))
        self.sending = False
        self.scheduled = False
        self.lastProgress = time.monotonic()
        self.loop = asyncio.get_running_loop()

    def fill(self) -> None:
        self.scheduled = False
        if not self.sending:
            return
        k = self.window - self.out
        if k > 0:
            self.send(k)

    def send(self, k: int) -> None:
        conn = self.conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        t = nowUs()
        messages = conn.messages
        fseq = conn.seq
        mseq = self.seq
        if mseq + k >= len(self.state):
            grow = max(len(self.state), k + 1)
            self.state.extend(bytes(grow))
            self.sentAt.frombytes(bytes(8 * grow))
        parts = []
        sentAt = self.sentAt
        if conn._fast:
            target = self.target
            for _ in range(k):
                fseq += 1
                mseq += 1
                messages[fseq] = mseq
                sentAt[mseq] = t
                body = b"%d %d" % (mseq, t)
                parts.append(_MESSAGE % (target, fseq, len(body), body))
        else:
            for _ in range(k):
                fseq += 1
                mseq += 1
                messages[fseq] = mseq
                sentAt[mseq] = t
                body = b"%d %d" % (mseq, t)
                parts.append(serialise(Request("MESSAGE", self.targetText, Headers.of(("Seq", str(fseq))), body)))
        conn.seq = fseq
        self.seq = mseq
        self.out += k
        self.stats.sent += k
        transport.write(b"".join(parts))

    def _progress(self) -> None:
        self.out -= 1
        self.lastProgress = time.monotonic()
        if self.closedLoop and self.sending and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.fill)

    def answered(self, mseq: int, code: int) -> None:
        if code == 200:
            self.state[mseq] |= _ACKED
            self.stats.recordAck(self.sentAt[mseq])
            return
        st = self.state[mseq]
        self.state[mseq] = st | _FAILED
        errors = self.stats.errors
        errors[code] = errors.get(code, 0) + 1
        if not st & _RECEIVED:
            self._progress()

    def delivered(self, body: bytes) -> None:
        try:
            sp = body.index(b" ")
            mseq = int(body[:sp])
            sentUs = int(body[sp + 1 :])
            st = self.state[mseq] if 0 < mseq <= self.seq else -1
        except (ValueError, IndexError):
            st = -1
        if st < 0:
            self.stats.unexpected += 1
            return
        if st & _RECEIVED:
            self.stats.duplicates += 1
            return
        self.state[mseq] = st | _RECEIVED
        self.stats.record(sentUs)
        if not st & _FAILED:
            self._progress()

    def outcome(self) -> dict[str, int]:
        """
        How the messages sent ended: C{lost} (answered 200, never
        delivered), C{unanswered} (no answer at all).
        """
        s = self.state[1 : self.seq + 1]
        return {
            "lost": s.count(_ACKED),
            "unanswered": s.count(0) + s.count(_RECEIVED),
        }


async def stallGuard(pumps: list[Pump], stats: Stats, limit: float = 3.0) -> None:
    """
    A lost message would freeze a closed-loop sender: give it its window back
    after C{limit} seconds without progress.
    """
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        for p in pumps:
            if p.out > 0 and now - p.lastProgress > limit:
                stats.stalls += 1
                p.out = 0
                p.lastProgress = now
                p.fill()


async def openLoop(pumps: list[Pump], ratePerSender: float, cap: int, smooth: bool) -> None:
    """
    Send at a fixed rate per sender, ticking every 5 ms; a sender never has
    more than C{cap} messages outstanding (it skips what it would be behind).

    As in C{xmpp_load.py}, every sender's next message falls due at the same
    tick, so the messages go out in bursts of one per sender; with
    C{smooth}, the senders' phases are spread evenly over the period.
    """
    start = time.monotonic()
    n = len(pumps)
    phase = [i / n if smooth else 0.0 for i in range(n)]
    done = [int(f) for f in phase]
    while True:
        elapsed = ratePerSender * (time.monotonic() - start)
        for i, p in enumerate(pumps):
            due = int(elapsed + phase[i])
            k = due - done[i]
            if k > 0:
                k = min(k, cap - p.out)
                if k > 0:
                    p.send(k)
                done[i] = due
        await asyncio.sleep(0.005)


class ParentLink:
    """
    The pipe to the parent process, read without blocking the loop.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self.queue.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self.loop.remove_reader(self.conn.fileno())
            self.queue.put_nowait(("quit",))

    async def recv(self) -> tuple[Any, ...]:
        return await self.queue.get()

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.send(msg)


async def loginAll(
    conns: list[NativeConn], spec: dict[str, Any], where: tuple[str, int] | None = None, bind: str | None = None
) -> float:
    """
    Log C{conns} in, C{login_concurrency} at a time, retrying connection
    failures; return the seconds it took.

    @param where: The host and port to connect to; C{spec}'s C{host} and
        C{port} by default.
    @param bind: The local address to connect from (any by default).
    @raise LoginError: If one cannot log in.
    """
    host, port = where if where is not None else (spec["host"], spec["port"])
    sem = asyncio.Semaphore(spec["login_concurrency"])
    t = time.monotonic()

    async def one(c: NativeConn) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    await c.login(host, port, spec["password"], spec["mech"], spec["timeout"], bind)
                    return
                except (OSError, asyncio.TimeoutError, LoginError) as e:
                    c.close()
                    if attempt == 2 or (isinstance(e, LoginError) and "answered" in str(e)):
                        raise LoginError(f"login of {c.user} failed: {e or type(e).__name__}") from None
                    c.reset()
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(one(c) for c in conns))
    return time.monotonic() - t


async def sleepUntil(tUs: int) -> None:
    d = (tUs - nowUs()) / 1e6
    if d > 0:
        await asyncio.sleep(d)


async def workerMain(link: ParentLink, spec: dict[str, Any]) -> None:
    stats = Stats()
    fast = spec["parser"] == "fast"
    pairs: list[tuple[str, str]] = spec["pairs"]
    conns: dict[str, NativeConn] = {}
    for a, b in pairs:
        conns[a] = NativeConn(a, stats, fast)
        conns[b] = NativeConn(b, stats, fast)
    if spec.get("peer_port"):
        # The second member of each pair has a server of its own (bench/multihost.py).
        both = await asyncio.gather(
            loginAll([conns[a] for a, _ in pairs], spec, bind=spec.get("bind")),
            loginAll([conns[b] for _, b in pairs], spec, (spec["peer_host"], spec["peer_port"])),
        )
        loginS = max(both)
    else:
        loginS = await loginAll(list(conns.values()), spec)
    closedLoop = not spec["rate_per_sender"]
    pumps: list[Pump] = []
    for a, b in pairs:
        ca, cb = conns[a], conns[b]
        directions = [(ca, cb)] if spec["one_way"] else [(ca, cb), (cb, ca)]
        for src, dst in directions:
            p = Pump(src, "im:" + dst.address, spec["window"], stats, closedLoop)
            src.pump = p
            dst.peer = p
            pumps.append(p)
    link.send(("ready", {"clients": len(conns), "login_s": loginS}))
    idle: list[NativeConn] = []
    while True:
        msg = await link.recv()
        if msg[0] == "quit":
            break
        if msg[0] == "idle":
            idle = [NativeConn(u, stats, fast) for u in msg[1]]
            t = await loginAll(idle, spec)
            link.send(("idle_ready", {"alive": sum(1 for c in idle if not c.lost.done()), "login_s": t}))
        elif msg[0] == "go":
            link.send(("result", await traffic(msg[1], msg[2], msg[3], pumps, list(conns.values()), stats, spec)))
    for c in list(conns.values()) + idle:
        c.close()
    await asyncio.sleep(0.05)


async def traffic(
    tGo: int, t0: int, t1: int, pumps: list[Pump], conns: list[NativeConn], stats: Stats, spec: dict[str, Any]
) -> dict[str, Any]:
    stats.t0, stats.t1 = t0, t1
    tasks: list[asyncio.Task[None]] = []
    await sleepUntil(tGo)
    stats.traffic = True
    for p in pumps:
        p.sending = True
        p.lastProgress = time.monotonic()
    if spec["rate_per_sender"]:
        cap = max(spec["window"], 1000)
        tasks.append(asyncio.ensure_future(openLoop(pumps, spec["rate_per_sender"], cap, spec["smooth"])))
    else:
        for p in pumps:
            p.fill()
        tasks.append(asyncio.ensure_future(stallGuard(pumps, stats)))
    await sleepUntil(t0)
    cpu0 = time.process_time()
    await sleepUntil(t1)
    cpu1 = time.process_time()
    for p in pumps:
        p.sending = False
    for task in tasks:
        task.cancel()
    deadline = time.monotonic() + spec["drain"]
    while time.monotonic() < deadline:
        if all(p.out <= 0 for p in pumps) and not any(c.messages for c in conns):
            break
        await asyncio.sleep(0.05)
    stats.traffic = False
    lost = unanswered = 0
    for p in pumps:
        o = p.outcome()
        lost += o["lost"]
        unanswered += o["unanswered"]
    return {
        "cpu_s": cpu1 - cpu0,
        "lat": stats.lat.tobytes(),
        "ack_lat": stats.ackLat.tobytes(),
        "delivered": stats.delivered,
        "received_total": stats.receivedTotal,
        "sent": stats.sent,
        "lost": lost,
        "unanswered": unanswered,
        "duplicates": stats.duplicates,
        "unexpected": stats.unexpected,
        "errors": stats.errors,
        "framing_errors": stats.framingErrors,
        "stalls": stats.stalls,
        "disconnects": stats.disconnects,
        "senders": len(pumps),
    }


def workerEntry(conn: Connection, spec: dict[str, Any]) -> None:
    # The parent handles Control-C and ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raiseNofile()

    async def run() -> None:
        link = ParentLink(conn)
        try:
            await workerMain(link, spec)
        finally:
            link.loop.remove_reader(conn.fileno())

    try:
        asyncio.run(run())
    except LoginError as e:
        hint = ""
        if " 401 " in str(e):
            hint = " (do the accounts exist with this --password? --create-users --config CFG creates them)"
        conn.send(("error", f"{e}{hint}"))
    except BaseException as e:
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        conn.close()


# -- parent side ---------------------------------------------------------------------------


class BenchFailed(Exception):
    pass


class Workers:
    """
    The driver processes, and the conversation with them.
    """

    def __init__(self, specs: list[dict[str, Any]], setupTimeout: float) -> None:
        ctx = mp.get_context("fork")
        self.setupTimeout = setupTimeout
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for spec in specs:
            a, b = ctx.Pipe()
            p = ctx.Process(target=workerEntry, args=(b, spec), daemon=True)
            p.start()
            b.close()
            self.procs.append(p)
            self.conns.append(a)

    def send(self, msgs: Sequence[tuple[Any, ...]]) -> None:
        for c, m in zip(self.conns, msgs):
            c.send(m)

    def collect(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        for i, c in enumerate(self.conns):
            try:
                ready = c.poll(max(0.0, deadline - time.monotonic()))
                m = c.recv() if ready else None
            except (EOFError, OSError):
                raise BenchFailed(f"driver process {i} died (exit code {self.procs[i].exitcode})") from None
            if m is None:
                raise BenchFailed(f"driver process {i}: no {kind!r} within {timeout:g} s")
            if m[0] == "error":
                raise BenchFailed(f"driver process {i} failed:\n{m[1]}")
            if m[0] != kind:
                raise BenchFailed(f"driver process {i}: expected {kind!r}, got {m[0]!r}")
            out.append(m[1])
        return out

    def stop(self) -> None:
        for c in self.conns:
            try:
                c.send(("quit",))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()  # our own child, by handle
                p.join(2)
        for c in self.conns:
            c.close()


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="native_load.py",
        description="Message load on imgateway's native protocol; prints one JSON line.",
    )
    where = p.add_argument_group("gateway")
    where.add_argument("--spawn", action="store_true", help="start a gateway of our own (the default without --port)")
    where.add_argument("--port", type=int, help="a running gateway's native port")
    where.add_argument("--host", default="127.0.0.1")
    where.add_argument("--pid", "--server-pid", dest="pid", type=int, help="the running gateway's pid (for CPU and RSS)")
    where.add_argument("--pidfile", help="read the running gateway's pid from this file")
    where.add_argument("--config", help="the running gateway's configuration (for --create-users)")
    where.add_argument("--create-users", action="store_true", help="create the accounts first (needs --config)")
    where.add_argument("--keep", action="store_true", help="spawn: keep the temporary folder (config, data, log)")
    where.add_argument(
        "--template", type=Path, help="spawn: the configuration to copy (default etc/imgateway.toml)"
    )
    load = p.add_argument_group("load")
    load.add_argument("--pairs", type=int, default=50, help="client pairs (default 50)")
    load.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds of traffic before the window (default 2)")
    load.add_argument("--settle", type=float, default=1.0, help="pause after logins (default 1)")
    load.add_argument("--drain", type=float, default=5.0, help="seconds to wait for what is in flight (default 5)")
    load.add_argument("--window", type=int, default=10, help="closed loop: messages outstanding per sender (default 10)")
    load.add_argument("--rate", type=float, default=0.0, help="open loop: total messages/s instead of --window")
    load.add_argument(
        "--smooth",
        action="store_true",
        help="with --rate: spread the senders' sending times (default: all at once each period, as xmpp_load.py)",
    )
    load.add_argument("--one-way", action="store_true", help="only a_i sends to b_i (default: both ways, as xmpp_load.py)")
    load.add_argument("--procs", type=int, default=1, help="driver processes (default 1)")
    load.add_argument("--idle", type=int, default=0, help="extra idle sessions, to measure server RSS per session")
    load.add_argument("--label", default="", help="free text copied into the JSON")
    login = p.add_argument_group("accounts")
    login.add_argument("--prefix", default="bench", help="accounts are PREFIX0, PREFIX1... (default bench)")
    login.add_argument("--password", default="bench-pw")
    login.add_argument(
        "--mech",
        default="SCRAM-SHA-256",
        choices=["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"],
        help="SASL mechanism (default SCRAM-SHA-256: PLAIN makes the server derive a key, PBKDF2, for every login)",
    )
    login.add_argument("--login-concurrency", type=int, default=50)
    login.add_argument("--timeout", type=float, default=30.0, help="seconds for each login step")
    login.add_argument("--setup-timeout", type=float, default=600.0, help="seconds for all logins")
    driver = p.add_argument_group("driver")
    driver.add_argument(
        "--parser",
        default="fast",
        choices=["fast", "framing"],
        help="how the driver reads frames: a minimal reader (default) or imgateway's FrameParser (slower)",
    )
    args = p.parse_args(argv)
    if args.spawn and args.port:
        p.error("--spawn and --port exclude each other")
    args.spawn = args.port is None
    if args.create_users and not args.spawn and not args.config:
        p.error("--create-users needs --config (the running gateway's configuration)")
    if args.pairs < 0 or args.idle < 0 or args.procs < 1 or args.window < 1 or args.duration <= 0:
        p.error("--pairs/--idle must be >= 0, --procs/--window >= 1, --duration > 0")
    if args.pairs == 0 and args.idle == 0:
        p.error("nothing to do: --pairs 0 and no --idle")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    selfCheck()
    raiseNofile()  # also for the gateway we spawn, which inherits it
    gateway: SpawnedGateway | None = None
    workers: Workers | None = None
    nUsers = 2 * args.pairs + args.idle
    try:
        if args.spawn:
            gateway = SpawnedGateway(template=args.template, keep=args.keep)
            info(f"spawning a gateway in {gateway.folder} on port {gateway.port}")
            info(gateway.createUsers(args.prefix, 0, nUsers, args.password))
            gateway.start()
            host, port, pid = "127.0.0.1", gateway.port, gateway.pid
        else:
            host, port = args.host, args.port
            pid = args.pid or (read_pidfile(args.pidfile) if args.pidfile else None)
            if args.pidfile and pid is None:
                raise BenchFailed(f"cannot read a pid from {args.pidfile}")
            if pid is not None and procCpuS(pid) is None:
                raise BenchFailed(f"no process {pid} to sample (--pid/--pidfile)")
            if args.create_users:
                info(createUsers(args.config, args.prefix, 0, nUsers, args.password))
            if pid is None:
                info("no --pid/--pidfile: no server CPU or RSS figures")
        pairNames = [(f"{args.prefix}{2 * i}", f"{args.prefix}{2 * i + 1}") for i in range(args.pairs)]
        idleNames = [f"{args.prefix}{2 * args.pairs + j}" for j in range(args.idle)]
        nProcs = max(1, min(args.procs, args.pairs)) if args.pairs else min(args.procs, max(1, args.idle))
        senders = args.pairs * (1 if args.one_way else 2)
        base = {
            "host": host,
            "port": port,
            "password": args.password,
            "mech": args.mech,
            "timeout": args.timeout,
            "login_concurrency": max(1, args.login_concurrency // nProcs),
            "parser": args.parser,
            "window": args.window,
            "one_way": args.one_way,
            "drain": args.drain,
            "rate_per_sender": args.rate / senders if args.rate and senders else 0.0,
            "smooth": args.smooth,
        }
        specs = [dict(base, pairs=s) for s in shard(pairNames, nProcs)]
        rssStart = procRssKb(pid)
        info(f"logging in {2 * args.pairs} clients ({nProcs} driver process{'es' if nProcs > 1 else ''}, {args.mech})")
        t = time.monotonic()
        workers = Workers(specs, args.setup_timeout)
        readies = workers.collect("ready", args.setup_timeout)
        setupS = time.monotonic() - t
        out: dict[str, Any] = {
            "bench": "native_msg",
            "test": "native_msg",
            "label": args.label,
            "mode": "spawn" if args.spawn else "attach",
            "host": host,
            "port": port,
            "pairs": args.pairs,
            "clients": sum(r["clients"] for r in readies),
            "login_s": round(max(r["login_s"] for r in readies), 2),
            "setup_s": round(setupS, 2),
            "server_rss_base_kb": rssStart,
            "server_rss_after_login_kb": procRssKb(pid),
        }
        if args.idle:
            time.sleep(args.settle)
            before = procRssKb(pid)
            info(f"opening {args.idle} idle sessions")
            workers.send([("idle", s) for s in shard(idleNames, nProcs)])
            idles = workers.collect("idle_ready", args.setup_timeout)
            time.sleep(max(args.settle, 1.0))
            after = procRssKb(pid)
            alive = sum(r["alive"] for r in idles)
            loginS = max(r["login_s"] for r in idles)
            out.update(
                idle_sessions=alive,
                idle_login_s=round(loginS, 2),
                idle_logins_per_s=round(alive / loginS, 1) if loginS else None,
                server_rss_before_idle_kb=before,
                server_rss_after_idle_kb=after,
                rss_per_conn_kb=round((after - before) / alive, 1) if after and before and alive else None,
            )
        else:
            out.update(idle_sessions=0, rss_per_conn_kb=None)
        if args.pairs:
            out.update(measure(args, workers, pid, senders))
        else:
            out["server_rss_kb"] = procRssKb(pid)
        out.update(
            driver_procs=nProcs,
            mech=args.mech,
            parser=args.parser,
            loadavg=loadavg(),
            cores=os.cpu_count(),
            python=platform.python_version(),
            imgateway=__version__,
        )
        workers.stop()
        workers = None
        if gateway is not None:
            status = gateway.stop()
            gateway = None
            info(f"gateway stopped (exit status {status}; -15: it ended on our SIGTERM)")
        return out
    except BenchFailed as e:
        if gateway is not None:
            raise BenchFailed(f"{e}\n{gateway.logTail()}") from None
        raise
    finally:
        if workers is not None:
            workers.stop()
        if gateway is not None:
            gateway.stop()


def measure(args: argparse.Namespace, workers: Workers, pid: int | None | Sequence[int], senders: int) -> dict[str, Any]:
    """
    Run one measured window (C{go}) and gather the drivers' results.

    @param pid: The server process, or several (their CPU times are summed
        into the C{server_cpu_*} figures, and given one by one in
        C{server_cpu_s_by_pid}; RSS is summed).
    """
    pids = [p for p in ([pid] if isinstance(pid, int) or pid is None else list(pid)) if p]
    time.sleep(args.settle)
    info(
        f"{senders} senders, {'%g msg/s in all' % args.rate if args.rate else 'window %d' % args.window}: "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured"
    )
    tGo = nowUs() + 200000
    t0 = tGo + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    workers.send([("go", tGo, t0, t1)] * len(workers.conns))
    samples: dict[str, tuple[float, list[float | None], int | None, float | None]] = {}
    for phase, at in (("start", t0), ("end", t1)):
        time.sleep(max(0.0, (at - nowUs()) / 1e6))
        rss = [procRssKb(p) for p in pids]
        samples[phase] = (
            time.monotonic(),
            [procCpuS(p) for p in pids],
            sum(r for r in rss if r is not None) if pids and None not in rss else None,
            machineBusyS(),
        )
    results = workers.collect("result", args.drain + 60)
    lat = array.array("q")
    ackLat = array.array("q")
    errors: dict[str, int] = {}
    totals = dict.fromkeys(
        ("delivered", "received_total", "sent", "lost", "unanswered", "duplicates", "unexpected",
         "framing_errors", "stalls", "disconnects", "senders"),
        0,
    )
    cpu = []
    for r in results:
        lat.frombytes(r["lat"])
        ackLat.frombytes(r["ack_lat"])
        for k in totals:
            totals[k] += r[k]
        for code, n in r["errors"].items():
            errors[str(code)] = errors.get(str(code), 0) + n
        cpu.append(round(100.0 * r["cpu_s"] / args.duration, 1))
    (ts, cs, _, bs), (te, ce, re_, be) = samples["start"], samples["end"]
    dt = te - ts
    delivered = totals["delivered"]
    out: dict[str, Any] = {
        "senders": totals["senders"],
        "direction": "one-way" if args.one_way else "both",
        "window": None if args.rate else args.window,
        "rate_target": args.rate or None,
        "smooth": args.smooth if args.rate else None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sent": totals["sent"],
        "delivered": delivered,
        "received_total": totals["received_total"],
        "lost": totals["lost"],
        "unanswered": totals["unanswered"],
        "duplicates": totals["duplicates"],
        "unexpected": totals["unexpected"],
        "errors": dict(sorted(errors.items())),
        "framing_errors": totals["framing_errors"],
        "stalls": totals["stalls"],
        "disconnects": totals["disconnects"],
        "rate_per_s": round(delivered / args.duration, 1),
        "lat_us": percentiles(lat),
        "lat_samples": len(lat),
        "ack_lat_us": percentiles(ackLat),
        "server_pid": pids[0] if len(pids) == 1 else (pids or None),
        "server_cpu_pct": None,
        "server_cpu_us_per_delivery": None,
        "server_rss_kb": re_,
        "driver_cpu_pct": cpu,
    }
    if pids and None not in cs and None not in ce and dt > 0:
        spent = [e - s for s, e in zip(cs, ce)]  # type: ignore[operator]
        total = sum(spent)
        out["server_cpu_pct"] = round(100.0 * total / dt, 1)
        if len(pids) > 1:
            out["server_cpu_s_by_pid"] = {str(p): round(x, 3) for p, x in zip(pids, spent)}
        if delivered:
            out["server_cpu_us_per_delivery"] = round(total / delivered * 1e6, 2)
    if bs is not None and be is not None and dt > 0:
        busy = 100.0 * (be - bs) / dt
        out["machine_busy_pct"] = round(busy, 1)
        out["other_cpu_pct"] = round(busy - sum(cpu) - (out["server_cpu_pct"] or 0), 1)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    interruptOnSigterm()
    try:
        out = run(args)
    except KeyboardInterrupt:
        info("interrupted; the gateway we started (if any) is stopped")
        sys.exit(interruptedStatus())
    except (BenchFailed, GatewayError, AssertionError) as e:
        info(f"failed: {e}")
        print(json.dumps({"bench": "native_msg", "label": args.label, "error": str(e)[-4000:]}), flush=True)
        sys.exit(2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
