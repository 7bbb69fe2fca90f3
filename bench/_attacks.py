"""
The attacks of the hostile benchmark (C{bench/hostile.py}), the clients they
are made of, and the canary that measures what they cost everyone else.

The clients are raw asyncio connections, each bound to a loopback source
address of its own choosing (Linux routes all of 127/8 to loopback, and the
gateway's per-source limits see each address as another source):

  - L{NativeClient}: the native protocol (plain TCP, or TLS), answers the
    server's requests with C{200}, keeps the responses to its own;
  - L{XMPPClient}: XMPP c2s with STARTTLS and SASL PLAIN, then raw writes;
  - L{Canary}, L{NativeCanary}, L{XMPPCanary}: a pair of users exchanging
    round trips at a steady rate, every round trip timed.

Each attack is a class with C{setup} (log in, connect: not measured),
C{attack} (until a deadline, or until its work is done) and C{finish} (its
outcome, a JSON-able dictionary with a one-line C{summary}). Run as a
module, one attack runs in a process of its own, so that its CPU does not
delay the canary's clock::

    python -m bench._attacks NAME SPEC_JSON

It prints C{ready} once set up, waits for a line on standard input, attacks
for C{spec["duration"]} seconds at most, prints C{done}, then one JSON line
(the outcome) and exits. L{ATTACKS} names them; the subscription burst runs
on Twisted's reactor (L{bench.subscription_burst}), the others on asyncio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import raiseNofile
from bench.native_load import percentiles as _percentiles
from imgateway.adapters.native.framing import FrameParser, Request, Response

__all__ = [
    "ATTACKS",
    "Canary",
    "NativeCanary",
    "NativeClient",
    "XMPPCanary",
    "XMPPClient",
    "flood",
    "frame",
    "windowStats",
]

#: The first bytes of a TLS ClientHello: a record header announcing 512
#: bytes and the start of the handshake message; the rest never comes.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"

#: Canary round trips slower than this (ms) are listed with their times.
SLOW_MS = 50.0


def info(text: str) -> None:
    print(f"hostile: {text}", file=sys.stderr, flush=True)


def streamHeader(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        f" to='{domain}' version='1.0'>"
    ).encode()


# -- the native protocol -------------------------------------------------------------------


def frame(method: str, target: str, seq: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """
    One native request, as bytes.
    """
    lines = [f"{method} {target} IMGW/1.0", f"Seq: {seq}", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class LoginFailed(Exception):
    """
    A client could not log in; the message says what the server answered.
    """


class NativeClient:
    """
    A raw native connection: answers the server's requests with 200 (and
    counts the C{MESSAGE}s among them, handing each to L{onMessage}), and
    keeps the responses to its own requests.

    @ivar codes: How many responses of each status code it received.
    @ivar unsolicited: Responses with C{Seq: 0} (a connection refused at
        once: C{503}).
    @ivar delivered: C{MESSAGE}s received.
    @ivar closed: Set when the server closed the connection.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = FrameParser()
        self.waiting: dict[int, asyncio.Future[Response]] = {}
        self.codes: Counter[int] = Counter()
        self.unsolicited: list[Response] = []
        self.delivered = 0
        self.seq = 0
        self.onMessage: Callable[[Request], None] | None = None
        self.closed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None, hostname: str | None = None) -> NativeClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, limit=2**20, local_addr=(source, 0), ssl=tls, server_hostname=hostname if tls else None
        )
        return cls(reader, writer)

    @classmethod
    async def loggedIn(cls, port: int, user: str, password: str, source: str = "127.0.0.1", presence: bool = True) -> NativeClient:
        """
        A connection from C{source}, logged in as C{user} with PLAIN
        (allowed from loopback) and, if C{presence}, online.

        @raise LoginFailed: If the server refuses.
        """
        c = await cls.open(port, source)
        r = await asyncio.wait_for(c.call("AUTH", "*", [("Mechanism", "PLAIN")], b"\0" + user.encode() + b"\0" + password.encode()), 60)
        if r.code != 200:
            c.close()
            raise LoginFailed(f"{user} from {source}: {r.code} {r.reason} {r.headers.get('Error') or ''}")
        if presence:
            r = await asyncio.wait_for(c.call("PUBLISH", "*", [("Presence", "online")]), 60)
            if r.code != 200:
                c.close()
                raise LoginFailed(f"{user}: PUBLISH answered {r.code}")
        return c

    async def _read(self) -> None:
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    return
                if not data:
                    return
                answers = []
                for item in self.parser.feed(data):
                    if isinstance(item, Request):
                        if item.method == "MESSAGE":
                            self.delivered += 1
                            if self.onMessage is not None:
                                self.onMessage(item)
                        answers.append(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % item.seq)
                    elif isinstance(item, Response):
                        self.codes[item.code] += 1
                        if item.seq == 0:
                            self.unsolicited.append(item)
                        f = self.waiting.pop(item.seq, None)
                        if f is not None and not f.done():
                            f.set_result(item)
                if answers and not self.writer.is_closing():
                    self.writer.write(b"".join(answers))
        except Exception as e:  # a framing error: the connection is useless now
            info(f"native client: {e!r}")
        finally:
            self.closed.set()
            for f in self.waiting.values():
                if not f.done():
                    f.set_exception(ConnectionError("closed"))
            self.waiting.clear()

    def call(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> asyncio.Future[Response]:
        """
        Send one request.

        @return: Its response (fails with L{ConnectionError} if the
            connection closes first).
        """
        self.seq += 1
        f: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            f.set_exception(ConnectionError("closed"))
            return f
        self.waiting[self.seq] = f
        self.writer.write(frame(method, target, self.seq, headers, body))
        return f

    def pipeline(self, requests: Sequence[tuple[str, str]], headers: Sequence[tuple[str, str]] = ()) -> list[asyncio.Future[Response]]:
        """
        Send C{(method, target)} requests in one write.

        @return: Their responses, in order.
        """
        loop = asyncio.get_running_loop()
        futures = []
        chunks = []
        for method, target in requests:
            self.seq += 1
            f: asyncio.Future[Response] = loop.create_future()
            self.waiting[self.seq] = f
            futures.append(f)
            chunks.append(frame(method, target, self.seq, headers))
        self.writer.write(b"".join(chunks))
        return futures

    def close(self) -> None:
        self.writer.transport.abort()


async def flood(c: NativeClient, to: str, batch: int, until: float) -> int:
    """
    Write C{batch} MESSAGE frames at a time whenever the socket takes
    them, until C{until}; then drop the connection (what the server has not
    read by then is never handled).

    @return: The frames written.
    """
    sent = 0
    try:
        while time.monotonic() < until and not c.closed.is_set():
            c.writer.write(b"".join(frame("MESSAGE", f"im:{to}", c.seq + i + 1, [], b"flood") for i in range(batch)))
            c.seq += batch
            sent += batch
            await asyncio.wait_for(c.writer.drain(), max(0.001, until - time.monotonic()))
    except (asyncio.TimeoutError, ConnectionError):
        pass
    c.close()
    return sent


# -- XMPP ---------------------------------------------------------------------------------


class XMPPClient:
    """
    A minimal XMPP client on asyncio streams: STARTTLS (when given an
    authority to trust), SASL PLAIN, bind, initial presence; then raw
    writes, and a reader that notes the C{id} of every message that
    arrives, counts bodies and stream errors, and hands each id to
    L{onMessage}.

    @ivar streamErrors: The stream error conditions the server sent.
    @ivar closed: Set when the server closed the stream or connection.
    """

    def __init__(self, domain: str, user: str, password: str) -> None:
        self.domain = domain
        self.user = user
        self.password = password
        self.buffer = b""
        self.arrived: dict[str, float] = {}
        self.messages = 0
        self.firstAt: float | None = None
        self.lastAt: float | None = None
        self.streamErrors: Counter[str] = Counter()
        self.onMessage: Callable[[str, float], None] | None = None
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()

    async def connect(self, port: int, source: str = "127.0.0.1", caPath: str | None = None, resource: str = "bench") -> None:
        """
        Connect from C{source}, log in and send initial presence.

        @param caPath: The authority to trust for STARTTLS; without it, no
            TLS (the server must allow that).
        @raise LoginFailed: If the server refuses.
        """
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22, local_addr=(source, 0))
        header = streamHeader(self.domain)
        self.writer.write(header)
        await self._until(b"</stream:features>")
        if caPath is not None:
            self.buffer = b""
            self.writer.write(STARTTLS)
            await self._until(b"<proceed")
            context = ssl.create_default_context(cafile=caPath)
            await self.writer.start_tls(context, server_hostname=self.domain)
            self.buffer = b""
            self.writer.write(header)
            await self._until(b"</stream:features>")
        plain = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.buffer = b""
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>".encode())
        await self._until(b"<success", b"<failure")
        if b"<success" not in self.buffer:
            raise LoginFailed(f"{self.user} from {source}: {self.buffer[-300:]!r}")
        self.buffer = b""
        self.writer.write(header)
        await self._until(b"</stream:features>")
        self.writer.write(
            f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>".encode()
        )
        await self._until(b"</iq>")
        self.writer.write(b"<presence/>")
        self.buffer = b""
        self._task = asyncio.ensure_future(self._read())

    async def _until(self, *markers: bytes) -> None:
        while not any(m in self.buffer for m in markers):
            data = await asyncio.wait_for(self.reader.read(65536), 60)
            if not data:
                raise LoginFailed(f"{self.user}: connection closed: {self.buffer[-300:]!r}")
            self.buffer += data

    async def _read(self) -> None:
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    return
                if not data:
                    return
                now = time.monotonic()
                self.buffer += data
                for stanzaId in re.findall(rb"<message[^>]* id=['\"]([^'\"]+)['\"]", self.buffer):
                    key = stanzaId.decode()
                    if key not in self.arrived:
                        self.arrived[key] = now
                        if self.onMessage is not None:
                            self.onMessage(key, now)
                for condition in re.findall(rb"<stream:error><([a-z-]+)", self.buffer):
                    self.streamErrors[condition.decode()] += 1
                count = self.buffer.count(b"<body>")
                if count:
                    self.messages += count
                    self.firstAt = self.firstAt or now
                    self.lastAt = now
                self.buffer = self.buffer[self.buffer.rfind(b">") + 1 :]
                self._changed.set()
        finally:
            self.closed.set()

    def message(self, to: str, stanzaId: str, body: str = "x") -> bytes:
        return f"<message to='{to}@{self.domain}' type='chat' id='{stanzaId}'><body>{body}</body></message>".encode()

    def close(self) -> None:
        self.writer.transport.abort()


# -- the canary ------------------------------------------------------------------------------


def windowStats(samples: dict[int, tuple[float, float | None]], t0: float, t1: float) -> dict[str, Any]:
    """
    Round trips of the canary messages sent in C{[t0, t1)}.

    @param samples: Message number to (send time, round trip in s or
        C{None} if it never came back).
    @return: C{n}, C{lost} (no round trip), and C{p50_ms}, C{p90_ms},
        C{p99_ms}, C{max_ms} (nearest rank); C{slow}: when each round trip
        over L{SLOW_MS} was sent (seconds after C{t0}) and how long it took
        (ms), the first 20.
    """
    rtts = [int(rtt * 1e6) for sent, rtt in samples.values() if t0 <= sent < t1 and rtt is not None]
    n = sum(1 for sent, _ in samples.values() if t0 <= sent < t1)
    p = _percentiles(rtts)
    out: dict[str, Any] = {"n": n, "lost": n - len(rtts)}
    for key in ("p50", "p90", "p99", "max"):
        out[f"{key}_ms"] = round(p[key] / 1000, 2) if key in p else None
    slow = sorted((sent, rtt) for sent, rtt in samples.values() if t0 <= sent < t1 and rtt is not None and rtt * 1000 > SLOW_MS)
    out["slow"] = [[round(sent - t0, 2), round(rtt * 1000, 1)] for sent, rtt in slow[:20]]
    return out


class Canary:
    """
    Two users exchanging round trips at a steady rate, open loop: every
    C{1 / rate} seconds the first sends a message numbered C{n}; the second
    answers each with a message of its own; the round trip is the time from
    sending the first to receiving the answer. A stall of the server shows
    as late round trips, not as fewer of them.

    @ivar samples: Message number to (send time, round trip or C{None}).
    @ivar errors: Failures to send (by kind).
    """

    name = "canary"

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.samples: dict[int, tuple[float, float | None]] = {}
        self.errors: Counter[str] = Counter()
        self._task: asyncio.Future[None] | None = None

    def answered(self, n: int, now: float) -> None:
        sample = self.samples.get(n)
        if sample is not None and sample[1] is None:
            self.samples[n] = (sample[0], now - sample[0])

    def send(self, n: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        interval = 1.0 / self.rate
        start = time.monotonic()
        n = 0
        while True:
            n += 1
            self.samples[n] = (time.monotonic(), None)
            try:
                self.send(n)
            except Exception as e:
                self.errors[type(e).__name__] += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def stats(self, t0: float, t1: float) -> dict[str, Any]:
        return windowStats(self.samples, t0, t1)


class NativeCanary(Canary):
    """
    The canary on the native face: C{MESSAGE} there, C{MESSAGE} back.
    """

    name = "native"

    def __init__(self, rate: float, a: NativeClient, b: NativeClient, aAddress: str, bAddress: str) -> None:
        super().__init__(rate)
        self.a, self.b = a, b
        self.aAddress, self.bAddress = aAddress, bAddress
        a.onMessage = self._atA
        b.onMessage = self._atB

    @classmethod
    async def open(cls, rate: float, port: int, users: tuple[str, str], password: str, domain: str) -> NativeCanary:
        a = await NativeClient.loggedIn(port, users[0], password)
        b = await NativeClient.loggedIn(port, users[1], password)
        return cls(rate, a, b, f"{users[0]}@{domain}", f"{users[1]}@{domain}")

    def _checked(self, f: asyncio.Future[Response]) -> None:
        if f.cancelled():
            return
        if f.exception() is not None:
            self.errors["closed"] += 1
        elif f.result().code != 200:
            self.errors[str(f.result().code)] += 1

    def send(self, n: int) -> None:
        self.a.call("MESSAGE", f"im:{self.bAddress}", [], b"c%d" % n).add_done_callback(self._checked)

    def _atB(self, request: Request) -> None:
        if request.body.startswith(b"c"):
            self.b.call("MESSAGE", f"im:{self.aAddress}", [], b"r" + request.body[1:]).add_done_callback(self._checked)

    def _atA(self, request: Request) -> None:
        if request.body.startswith(b"r"):
            try:
                self.answered(int(request.body[1:]), time.monotonic())
            except ValueError:
                pass


class XMPPCanary(Canary):
    """
    The canary on the XMPP c2s face (STARTTLS): a message there, a
    message back.
    """

    name = "xmpp"

    def __init__(self, rate: float, a: XMPPClient, b: XMPPClient) -> None:
        super().__init__(rate)
        self.a, self.b = a, b
        a.onMessage = self._atA
        b.onMessage = self._atB

    @classmethod
    async def open(cls, rate: float, port: int, users: tuple[str, str], password: str, domain: str, caPath: str) -> XMPPCanary:
        a, b = XMPPClient(domain, users[0], password), XMPPClient(domain, users[1], password)
        await a.connect(port, caPath=caPath, resource="canary")
        await b.connect(port, caPath=caPath, resource="canary")
        return cls(rate, a, b)

    def send(self, n: int) -> None:
        if self.a.closed.is_set():
            raise ConnectionError("closed")
        self.a.writer.write(self.a.message(self.b.user, f"c{n}"))

    def _atB(self, stanzaId: str, now: float) -> None:
        if stanzaId.startswith("c") and not self.b.closed.is_set():
            self.b.writer.write(self.b.message(self.a.user, "r" + stanzaId[1:]))

    def _atA(self, stanzaId: str, now: float) -> None:
        if stanzaId.startswith("r"):
            try:
                self.answered(int(stanzaId[1:]), now)
            except ValueError:
                pass


# -- the attacks -----------------------------------------------------------------------------


class Attack:
    """
    One attack, in a process of its own (see the module's docstring).

    @ivar spec: What the orchestrator passed: the gateway's C{port},
        C{tlsPort}, C{xmppPort}, C{domain}, C{caPath}, C{password}, the
        C{duration}, and the attack's own parameters.
    """

    #: The table's name of the attack.
    name = ""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.domain: str = spec["domain"]
        self.password: str = spec["password"]
        self.startedAt = 0.0
        self.endedAt = 0.0

    async def setup(self) -> None:
        """
        Connect and log in: done before the attack's window opens.
        """

    async def attack(self, until: float) -> None:
        """
        Attack until C{until} (or until done, for an attack whose work
        ends: the roster flood ends its round first).
        """

    async def finish(self) -> dict[str, Any]:
        """
        Tear down; the outcome, with a C{summary} for the table.
        """
        return {}

    @property
    def elapsed(self) -> float:
        return max(1e-9, self.endedAt - self.startedAt)


def _users(spec: dict[str, Any], key: str) -> list[str]:
    users: list[str] = spec[key]
    return users


class XMPPPipelined(Attack):
    """
    (a) Pipelined stanzas: C{connections} XMPP clients (STARTTLS, logged in)
    from C{source} each write C{stanzas} messages in one TCP write to a
    native sink user, and again whenever their socket takes more, until
    the deadline; a client whose stream the server closes (policy-violation
    past C{stanza_queue}) logs in again.
    """

    name = "xmpp-pipelined"

    async def setup(self) -> None:
        s = self.spec
        self.sink = await NativeClient.loggedIn(s["port"], s["sink"], self.password, s["source"])
        self.clients = [XMPPClient(self.domain, u, self.password) for u in _users(s, "attackers")]
        await asyncio.gather(*(c.connect(s["xmppPort"], s["source"], s["caPath"], "flood") for c in self.clients))
        self.written = 0
        self.reconnects = 0
        self.streamErrors: Counter[str] = Counter()

    async def _one(self, c: XMPPClient, until: float) -> None:
        s = self.spec
        n = 0
        while time.monotonic() < until:
            if c.closed.is_set():
                self.streamErrors.update(c.streamErrors)
                c.close()
                c = XMPPClient(self.domain, c.user, self.password)
                try:
                    await asyncio.wait_for(c.connect(s["xmppPort"], s["source"], s["caPath"], "flood"), max(0.01, until - time.monotonic()))
                except (LoginFailed, OSError, asyncio.TimeoutError):
                    await asyncio.sleep(0.5)
                    continue
                self.reconnects += 1
            c.writer.write(b"".join(c.message(s["sink"], f"f{n + i}") for i in range(s["stanzas"])))
            n += s["stanzas"]
            self.written += s["stanzas"]
            try:
                await asyncio.wait_for(c.writer.drain(), max(0.001, until - time.monotonic()))
            except (asyncio.TimeoutError, ConnectionError):
                pass
        self.streamErrors.update(c.streamErrors)
        c.close()

    async def attack(self, until: float) -> None:
        self.delivered0 = self.sink.delivered
        await asyncio.gather(*(self._one(c, until) for c in self.clients))

    async def finish(self) -> dict[str, Any]:
        delivered = self.sink.delivered - self.delivered0
        self.sink.close()
        rate = delivered / self.elapsed
        return {
            "connections": len(self.clients),
            "stanzas_per_write": self.spec["stanzas"],
            "stanzas_written": self.written,
            "delivered": delivered,
            "delivered_per_s": round(rate, 1),
            "reconnects": self.reconnects,
            "stream_errors": dict(self.streamErrors),
            "summary": f"{len(self.clients)} conns × {self.spec['stanzas']}/write: {self.written:,} written, "
            f"{delivered:,} handled ({rate:.0f}/s)"
            + (f", {sum(self.streamErrors.values())} stream errors" if self.streamErrors else ""),
        }


class NativePipelined(Attack):
    """
    (b) Pipelined native requests: C{flooders} logged-in users from
    C{source} each write C{batch} C{MESSAGE}s at a time to a sink user,
    whenever their socket takes them, until the deadline.
    """

    name = "native-pipelined"

    async def setup(self) -> None:
        s = self.spec
        self.sink = await NativeClient.loggedIn(s["port"], s["sink"], self.password, s["source"])
        self.flooders = [await NativeClient.loggedIn(s["port"], u, self.password, s["source"]) for u in _users(s, "attackers")]
        for f in self.flooders:
            f.codes.clear()  # the logins' answers

    async def attack(self, until: float) -> None:
        self.delivered0 = self.sink.delivered
        to = f"{self.spec['sink']}@{self.domain}"
        self.written = sum(await asyncio.gather(*(flood(f, to, self.spec["batch"], until) for f in self.flooders)))

    async def finish(self) -> dict[str, Any]:
        delivered = self.sink.delivered - self.delivered0
        self.sink.close()
        codes: Counter[int] = Counter()
        for f in self.flooders:
            codes.update(f.codes)
        rate = delivered / self.elapsed
        return {
            "flooders": len(self.flooders),
            "batch": self.spec["batch"],
            "frames_written": self.written,
            "answers": {str(k): v for k, v in codes.items() if v},
            "delivered": delivered,
            "delivered_per_s": round(rate, 1),
            "summary": f"{len(self.flooders)} conns × {self.spec['batch']}/write: {self.written:,} written, "
            f"{delivered:,} handled ({rate:.0f}/s), " + ", ".join(f"{v:,}×{k}" for k, v in sorted(codes.items()) if v),
        }


class _UnauthenticatedWriter(Attack):
    """
    C{connections} native connections from C{source} that never log in and
    write L{block} whenever their socket takes it, until the deadline; a
    connection the server closes is opened again at once.

    @ivar written: Units written (L{unitsPerBlock} per block).
    @ivar opened: Connections opened.
    @ivar codes: The status codes the server sent them.
    """

    #: Whether to wait, after the last write, for what the server answers
    #: before it closes.
    waitForClose = False

    def block(self) -> bytes:
        """
        What each write sends.
        """
        raise NotImplementedError()

    def unitsPerBlock(self, block: bytes) -> int:
        """
        How much one write of C{block} adds to L{written}.
        """
        return len(block)

    async def setup(self) -> None:
        self.written = 0
        self.opened = 0
        self.codes: Counter[int] = Counter()

    async def _one(self, until: float) -> None:
        s = self.spec
        block = self.block()
        units = self.unitsPerBlock(block)
        while time.monotonic() < until:
            try:
                c = await NativeClient.open(s["port"], s["source"])
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.opened += 1
            try:
                while time.monotonic() < until and not c.closed.is_set():
                    c.writer.write(block)
                    self.written += units
                    await asyncio.wait_for(c.writer.drain(), max(0.001, until - time.monotonic()))
                if self.waitForClose:
                    await asyncio.wait_for(c.closed.wait(), max(0.001, min(1.0, until - time.monotonic())))
            except (asyncio.TimeoutError, ConnectionError):
                pass
            self.codes.update(c.codes)
            c.close()

    async def attack(self, until: float) -> None:
        await asyncio.gather(*(self._one(until) for _ in range(self.spec["connections"])))


class NativeResponses(_UnauthenticatedWriter):
    """
    (b2) Pipelined responses: the connections write C{batch} responses
    (C{IMGW/1.0 200 OK}, to requests the server never sent) at a time.
    Responses take no token of the request rate (docs/protocol.md section
    4); since issue 7 the first one closes the connection (C{400}, a
    response before login), and what remains is the cost of the
    connections themselves (the per-source connection rate refuses most of
    them, C{503}).
    """

    name = "native-responses"
    waitForClose = True

    def block(self) -> bytes:
        return b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % (i + 1) for i in range(self.spec["batch"]))

    def unitsPerBlock(self, block: bytes) -> int:
        return int(self.spec["batch"])

    async def finish(self) -> dict[str, Any]:
        n = self.spec["connections"]
        rate = self.written / self.elapsed
        closed, refused = self.codes.get(400, 0), self.codes.get(503, 0)
        return {
            "connections": n,
            "batch": self.spec["batch"],
            "responses_written": self.written,
            "responses_per_s": round(rate),
            "connections_opened": self.opened,
            "answers": {str(k): v for k, v in sorted(self.codes.items())},
            "summary": f"{n} loops (not logged in) × {self.spec['batch']}/write: {self.opened:,} connections, "
            f"{closed:,} closed with 400 at their first response, {refused:,} refused at connect (503)"
            + (f", {self.written:,} responses written" if not (closed or refused) else ""),
        }


class NativeBlankLines(_UnauthenticatedWriter):
    """
    (b3) Blank lines: the connections write blank lines (CRLF, C{kib} KiB
    at a time). Blank lines between frames are keep-alives
    (docs/protocol.md section 3.1): they are not frames, take no token and
    keep the connection from being idle; since issue 7 C{pre_auth_bytes}
    closes a connection that sends too many before logging in.
    """

    name = "native-blank-lines"

    def block(self) -> bytes:
        return b"\r\n" * (512 * int(self.spec["kib"]))

    async def finish(self) -> dict[str, Any]:
        n = self.spec["connections"]
        rate = self.written / self.elapsed / 2**20
        return {
            "connections": n,
            "bytes_written": self.written,
            "mib_per_s": round(rate, 1),
            "connections_opened": self.opened,
            "answers": {str(k): v for k, v in sorted(self.codes.items())},
            "summary": f"{n} conns (not logged in): {self.written / 2**20:,.0f} MiB of blank lines written ({rate:,.0f} MiB/s), "
            f"{self.opened} connections",
        }


class _Stall:
    """
    One connection that starts TLS and never finishes it: on the native
    C{tls:} listener it sends the first bytes of a ClientHello; on XMPP it
    opens a stream, asks for STARTTLS, and after C{<proceed/>} does the
    same.
    """

    def __init__(self, port: int, source: str, xmpp: bool, domain: str) -> None:
        self.port, self.source, self.xmpp, self.domain = port, source, xmpp, domain
        self.openedAt: float | None = None
        self.closedAt: float | None = None
        self.proceeded = False

    async def run(self, until: float) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, local_addr=(self.source, 0)), max(0.01, until - time.monotonic())
            )
        except (OSError, asyncio.TimeoutError):
            self.openedAt = self.closedAt = time.monotonic()
            return
        self.openedAt = time.monotonic()
        try:
            writer.write(streamHeader(self.domain) if self.xmpp else PARTIAL_CLIENT_HELLO)
            received = b""
            while time.monotonic() < until:
                data = await asyncio.wait_for(reader.read(4096), max(0.01, until - time.monotonic()))
                if not data:
                    self.closedAt = time.monotonic()
                    return
                received += data
                if self.xmpp and not self.proceeded:
                    if b"<proceed" in received:
                        self.proceeded = True
                        writer.write(PARTIAL_CLIENT_HELLO)
                    elif b"</stream:features>" in received:
                        writer.write(STARTTLS)
                        received = b""
        except (ConnectionError, asyncio.TimeoutError):
            if time.monotonic() < until:
                self.closedAt = time.monotonic()
        finally:
            writer.transport.abort()


class StalledHandshakes(Attack):
    """
    (c) Stalled TLS handshakes: C{connections} connections, half to the
    native face's C{tls:} listener and half to the XMPP face (STARTTLS),
    from the C{sources} addresses in turn, that never finish their TLS
    handshake; each one the server closes is opened again after C{pause}
    seconds, until the deadline.
    """

    name = "stalled-handshakes"

    async def setup(self) -> None:
        s = self.spec
        self.slots = [(s["xmppPort"] if i % 2 else s["tlsPort"], s["sources"][i % len(s["sources"])], bool(i % 2)) for i in range(s["connections"])]
        self.done: list[_Stall] = []
        self.live: set[_Stall] = set()
        self.peakOpen = 0

    async def _slot(self, port: int, source: str, xmpp: bool, until: float) -> None:
        while time.monotonic() < until:
            stall = _Stall(port, source, xmpp, self.domain)
            self.live.add(stall)
            await stall.run(until)
            self.live.discard(stall)
            self.done.append(stall)
            if time.monotonic() < until:
                await asyncio.sleep(self.spec["pause"])

    async def _watch(self, until: float) -> None:
        while time.monotonic() < until:
            self.peakOpen = max(self.peakOpen, sum(1 for s in self.live if s.openedAt is not None and s.closedAt is None))
            await asyncio.sleep(0.2)

    async def attack(self, until: float) -> None:
        tasks = []
        watch = asyncio.ensure_future(self._watch(until))
        for i, (port, source, xmpp) in enumerate(self.slots):
            tasks.append(asyncio.ensure_future(self._slot(port, source, xmpp, until)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        await watch

    async def finish(self) -> dict[str, Any]:
        refused = [s for s in self.done if s.closedAt is not None and s.openedAt is not None and s.closedAt - s.openedAt < 1.0]
        timedOut = [s for s in self.done if s.closedAt is not None and s.openedAt is not None and s.closedAt - s.openedAt >= 1.0]
        heldToEnd = [s for s in self.done if s.closedAt is None]
        lifetimes = sorted(s.closedAt - s.openedAt for s in timedOut if s.closedAt is not None and s.openedAt is not None)
        return {
            "slots": len(self.slots),
            "sources": len(self.spec["sources"]),
            "opened": len(self.done),
            "peak_open": self.peakOpen,
            "closed_within_1s": len(refused),
            "closed_later": len(timedOut),
            "closed_later_after_s": [round(lifetimes[0], 1), round(lifetimes[-1], 1)] if lifetimes else None,
            "open_at_end": len(heldToEnd),
            "xmpp_proceeded": sum(1 for s in self.done if s.proceeded),
            "summary": f"{len(self.done):,} stalled from {len(self.spec['sources'])} addresses: {self.peakOpen} held at once, "
            f"{len(refused):,} refused/closed < 1 s, {len(timedOut):,} closed later"
            + (f" ({lifetimes[0]:.0f}–{lifetimes[-1]:.0f} s)" if lifetimes else ""),
        }


class PasswordFlood(Attack):
    """
    (d) A password flood: C{workers} connections at once from the
    C{sources} addresses (in turn), each trying wrong PLAIN passwords for
    C{users} (C{max_auth_attempts} per connection, then a new one) as fast
    as the answers come, until the deadline (L{bench.login_flood.wrongWorker}).
    """

    name = "password-flood"

    async def setup(self) -> None:
        self.outcomes: Counter[str] = Counter()

    async def attack(self, until: float) -> None:
        from bench.login_flood import wrongWorker

        s = self.spec
        sources = s["sources"]
        await asyncio.gather(
            *(wrongWorker(s["port"], s["users"], s["attempts"], until, self.outcomes, sources[i % len(sources)]) for i in range(s["workers"]))
        )

    async def finish(self) -> dict[str, Any]:
        o = self.outcomes
        checked = o.get("401 not-authorized", 0)
        throttled = sum(v for k, v in o.items() if "temporary-auth-failure" in k and "Retry-After" in k)
        busy = sum(v for k, v in o.items() if "temporary-auth-failure" in k and "Retry-After" not in k)
        atConnect = o.get("503 at connect", 0)
        return {
            "workers": self.spec["workers"],
            "sources": len(self.spec["sources"]),
            "outcomes": dict(o),
            "checked": checked,
            "refused_throttled": throttled,
            "refused_busy": busy,
            "refused_at_connect": atConnect,
            "summary": f"{self.spec['workers']} workers from {len(self.spec['sources'])} address(es): {checked:,} checked, "
            f"{throttled:,} refused by the throttle, {busy:,} busy, {atConnect:,} connections refused",
        }


class RosterFlood(Attack):
    """
    (e) A roster flood: one user, logged in C{sessions} times from
    C{source}, adds C{contacts} contacts (existing accounts) as fast as the
    server takes them: each session writes its share of C{SUBSCRIBE}s in one
    write. Once all are answered, the user removes them again
    (C{UNSUBSCRIBE}, pipelined likewise) and starts over, until the
    deadline.
    """

    name = "roster-flood"

    async def setup(self) -> None:
        s = self.spec
        self.sessions = [await NativeClient.loggedIn(s["port"], s["user"], self.password, s["source"]) for _ in range(s["sessions"])]
        self.cycles: list[dict[str, Any]] = []

    async def _round(self, method: str, targets: list[str]) -> Counter[str]:
        n = len(self.sessions)
        futures: list[asyncio.Future[Response]] = []
        for i, c in enumerate(self.sessions):
            futures.extend(c.pipeline([(method, f"pres:{t}@{self.domain}") for t in targets[i::n]]))
        codes: Counter[str] = Counter()
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            codes["closed" if isinstance(outcome, BaseException) else str(outcome.code)] += 1
        return codes

    async def attack(self, until: float) -> None:
        targets: list[str] = self.spec["targets"]
        while time.monotonic() < until:
            start = time.monotonic()
            codes = await self._round("SUBSCRIBE", targets)
            added = codes.get("202", 0) + codes.get("200", 0)
            cycle = {"subscribe_s": round(time.monotonic() - start, 2), "subscribe": dict(codes)}
            self.cycles.append(cycle)
            if time.monotonic() >= until or self.spec.get("once"):
                break
            start = time.monotonic()
            cycle["unsubscribe"] = dict(await self._round("UNSUBSCRIBE", targets[:added] if added < len(targets) else targets))
            cycle["unsubscribe_s"] = round(time.monotonic() - start, 2)

    async def finish(self) -> dict[str, Any]:
        for c in self.sessions:
            c.close()
        first = self.cycles[0] if self.cycles else {"subscribe": {}, "subscribe_s": None}
        codes = first["subscribe"]
        added = codes.get("202", 0) + codes.get("200", 0)
        quota = codes.get("454", 0)
        return {
            "sessions": len(self.sessions),
            "contacts": len(self.spec["targets"]),
            "cycles": self.cycles,
            "summary": f"{len(self.spec['targets']):,} SUBSCRIBEs over {len(self.sessions)} sessions in {first['subscribe_s']} s: "
            f"{added:,} added" + (f", {quota:,} over quota (454)" if quota else "")
            + (f", {len(self.cycles)} add/remove cycles" if len(self.cycles) > 1 else ""),
        }


#: The attacks by name, in the order the hostile benchmark runs them (the
#: subscription burst, on Twisted, last; see L{_burstMain}).
ATTACKS: dict[str, type[Attack] | None] = {
    XMPPPipelined.name: XMPPPipelined,
    NativePipelined.name: NativePipelined,
    NativeResponses.name: NativeResponses,
    NativeBlankLines.name: NativeBlankLines,
    StalledHandshakes.name: StalledHandshakes,
    PasswordFlood.name: PasswordFlood,
    "password-spread": PasswordFlood,
    RosterFlood.name: RosterFlood,
    "subscription-burst": None,
}


# -- one attack in a process of its own ---------------------------------------------------------


async def _readLine() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _asyncioMain(cls: type[Attack], spec: dict[str, Any]) -> dict[str, Any]:
    attack = cls(spec)
    await attack.setup()
    print("ready", flush=True)
    await _readLine()
    attack.startedAt = time.monotonic()
    await attack.attack(attack.startedAt + spec["duration"])
    attack.endedAt = time.monotonic()
    print("done", flush=True)
    result = await attack.finish()
    result["attack_s"] = round(attack.elapsed, 2)
    return result


def _burstMain(spec: dict[str, Any]) -> dict[str, Any]:
    """
    (f) The subscription burst of L{bench.subscription_burst}, on Twisted's
    reactor, against the hostile benchmark's gateway: its users log in
    (from C{sources} in turn) before the window opens, and fire on C{go}.
    """
    import argparse

    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from bench import subscription_burst

    args = argparse.Namespace(
        users=spec["users"],
        prefix=spec["prefix"],
        offline=0,
        timeout=spec["duration"],
        max_retries=20,
        stop_early=None,
        list_size=0,
        settle=0.0,
        sources=spec["sources"],
    )
    target = subscription_burst.Target(port=spec["port"], domain=spec["domain"], pid=spec.get("pid"))
    outcome: dict[str, Any] = {}

    def ready() -> Any:
        print("ready", flush=True)
        return deferToThread(sys.stdin.readline)

    def fired() -> None:
        outcome["_started"] = time.monotonic()

    def finished() -> None:
        print("done", flush=True)
        outcome["_ended"] = time.monotonic()

    def go() -> None:
        d = subscription_burst.run(reactor, args, target, beforeFiring=ready, onFired=fired, onDone=finished)
        d.addCallback(outcome.update)
        d.addErrback(lambda f: outcome.update(error=f.getErrorMessage() or repr(f.value)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if "_ended" not in outcome:
        print("done", flush=True)
    started, ended = outcome.pop("_started", None), outcome.pop("_ended", None)
    if started is not None and ended is not None:
        outcome["attack_s"] = round(ended - started, 2)
    wanted = outcome.get("mutual_wanted", 0)
    both = outcome.get("both", 0)
    retries = outcome.get("retries", 0)
    outcome["summary"] = (
        f"{spec['users']} users, {outcome.get('requests', 0):,} SUBSCRIBEs: "
        + (f"all {both:,} mutual in {outcome.get('seconds')} s" if outcome.get("done") else f"{both:,} of {wanted:,} mutual, not done")
        + (f", {retries} retries" if retries else "")
        + (f" ({outcome['error']})" if "error" in outcome else "")
    )
    return outcome


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ATTACKS:
        sys.exit(f"usage: python -m bench._attacks {{{','.join(ATTACKS)}}} SPEC_JSON")
    name, spec = argv[0], json.loads(argv[1])
    raiseNofile()
    cls = ATTACKS[name]
    if cls is None:
        result = _burstMain(spec)
    else:
        result = asyncio.run(_asyncioMain(cls, spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
