# -*- test-case-name: tests.test_bench_compare -*-
"""
The load driver of C{bench/compare.py} and C{bench/irc_compare.py}: one
driver for every server they compare, speaking XMPP c2s (to the gateway's
XMPP face, Prosody and ejabberd), the native protocol (to the gateway's
native face) and IRC (to the gateway's IRC face, with C{--irc-pass}, and to
ngIRCd), with one way of measuring for all of them. It prints one JSON line
and nothing else on standard output.

    python -m bench._loaddriver msg --proto xmpp --port 5222 --domain localhost --server-pid 123
    python -m bench._loaddriver presence --proto native --port 5300 --domain corp.example ...
    python -m bench._loaddriver login --mech SCRAM-SHA-1 ...
    python -m bench._loaddriver idle --users 1000 ...

The model is that of C{../shared/peers/load} and C{bench/native_load.py}:
the parent forks C{--procs} driver processes (asyncio, raw sockets); each
logs in its share of the clients and says it is ready; all start at a common
time, measure inside C{[t0, t0 + duration)} after a warm-up, stop at the end
of that window and drain. The parent reads the server's CPU time (all its
threads) and RSS from C{/proc} at the window's edges; the workers report
their own CPU time in the window.

Tests:
 - C{msg}: C{--pairs} pairs send each other chat messages (body
   C{"<n> <send time, µs>"}), each sender with C{--window} outstanding
   (closed loop) or all together at C{--rate} messages/s (open loop, the
   senders' phases spread evenly over the period).
 - C{presence}: one user (C{--center}) with C{--contacts} online contacts
   changes its presence (XMPP C{<status>}, native C{PUBLISH} C{Note}), with
   C{--window} changes outstanding (a change is done once every contact has
   it).
 - C{login}: C{--concurrency} loops each log in (connect, SASL C{--mech},
   XMPP stream restart and resource binding) and disconnect, round robin
   over C{--users} accounts, from rotating 127.0.1.x source addresses.
 - C{idle}: C{--users} sessions log in (SCRAM-SHA-1), fetch their contact
   list, go online and stay; the server's RSS before and after.

With C{--to-proto} the C{msg} test is one way: the C{--pairs} senders
(C{--prefix}, this server) each write to a receiver of another protocol or
server (C{--to-prefix}, C{--to-port}, C{--to-domain}): native users to IRC
users on an ircd through the gateway's bridge, whose CPU C{--peer-pid}
reads apart.

Counting a delivery, timing it and reading the server are the same code for
every protocol; only the connection classes differ.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import re
import secrets
import sys
import time
import traceback
import xml.parsers.expat
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from bench._proc import machineBusyS, nowUs, procCpuS, procRssKb, raiseNofile, shard

STREAM_NS = "http://etherx.jabber.org/streams"


# -- /proc ---------------------------------------------------------------------------------


def percentiles(samples: Sequence[int]) -> dict[str, float]:
    """
    p50, p90, p99, max and mean (nearest rank, as the peers' drivers).
    """
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)
    out: dict[str, float] = {}
    for p in (50, 90, 99):
        k = min(n - 1, max(0, int(round(p / 100.0 * n + 0.5)) - 1))
        out[f"p{p}"] = s[k]
    out["max"] = s[-1]
    out["mean"] = round(sum(s) / n, 1)
    return out


# -- counting ------------------------------------------------------------------------------


class Stats:
    """
    The counters of one driver process, the same for every test and
    protocol.
    """

    def __init__(self, maxSamples: int = 200000) -> None:
        self.t0: int | None = None
        self.t1 = 0
        self.lat = array.array("q")
        self.maxSamples = maxSamples
        self.sampleEvery = 1
        self._k = 0
        self.delivered = 0  # inside the window
        self.receivedTotal = 0
        self.sent = 0
        self.errors = 0
        self.stalls = 0
        self.disconnects = 0
        self.sending = False
        self.logins = 0  # login test: completed inside the window
        self.loginsTotal = 0
        self.loginLat = array.array("q")

    def inWindow(self, t: int) -> bool:
        return self.t0 is not None and self.t0 <= t < self.t1

    def record(self, sentUs: int) -> None:
        t = nowUs()
        self.receivedTotal += 1
        if self.inWindow(t):
            self.delivered += 1
            self._k += 1
            if self._k >= self.sampleEvery:
                self._k = 0
                self.lat.append(t - sentUs)
                if len(self.lat) >= self.maxSamples:
                    self.lat = self.lat[::2]
                    self.sampleEvery *= 2


def parseStamp(text: bytes | str) -> tuple[int, int] | None:
    """
    @return: The message number and send time of a body C{"<n> <µs>"}.
    """
    try:
        if isinstance(text, str):
            n, _, t = text.partition(" ")
            return int(n), int(t)
        nb, _, tb = text.partition(b" ")
        return int(nb), int(tb)
    except ValueError:
        return None


# -- SASL (client side, with the salted password cached) -----------------------------------

_SALTED: dict[tuple[str, str, bytes, int], bytes] = {}


class LoginError(Exception):
    pass


class ScramClient:
    """
    SCRAM (RFC 5802) without channel binding. The salted password is kept
    per (hash, password, salt, iterations): the accounts of a run share a
    password and, on every server here, a salt, so the driver derives it
    once, not once per login (it would be the bottleneck of the login test).
    """

    def __init__(self, mech: str, user: str, password: str) -> None:
        self.hash = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[mech]
        self.user = user
        self.password = password
        self.nonce = secrets.token_urlsafe(18)
        self.first = f"n={user},r={self.nonce}"
        self.serverSignature = b""

    def start(self) -> bytes:
        return ("n,," + self.first).encode()

    def step(self, challenge: bytes) -> bytes:
        text = challenge.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        if not attrs["r"].startswith(self.nonce):
            raise LoginError("SCRAM: bad server nonce")
        key = (self.hash, self.password, salt, iterations)
        salted = _SALTED.get(key)
        if salted is None:
            salted = _SALTED[key] = hashlib.pbkdf2_hmac(self.hash, self.password.encode(), salt, iterations)
        clientKey = hmac.digest(salted, b"Client Key", self.hash)
        storedKey = hashlib.new(self.hash, clientKey).digest()
        serverKey = hmac.digest(salted, b"Server Key", self.hash)
        without = f"c=biws,r={attrs['r']}"
        authMessage = f"{self.first},{text},{without}".encode()
        proof = bytes(a ^ b for a, b in zip(clientKey, hmac.digest(storedKey, authMessage, self.hash)))
        self.serverSignature = hmac.digest(serverKey, authMessage, self.hash)
        return f"{without},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, final: bytes) -> None:
        if final and not final.startswith(b"v="):
            raise LoginError(f"SCRAM: unexpected final {final[:40]!r}")
        if final and base64.b64decode(final[2:]) != self.serverSignature:
            raise LoginError("SCRAM: wrong server signature")


class PlainClient:
    def __init__(self, mech: str, user: str, password: str) -> None:
        self.token = f"\0{user}\0{password}".encode()

    def start(self) -> bytes:
        return self.token

    def step(self, challenge: bytes) -> bytes:
        raise LoginError("PLAIN: unexpected challenge")

    def verify(self, final: bytes) -> None:
        pass


def saslClient(mech: str, user: str, password: str) -> ScramClient | PlainClient:
    return PlainClient(mech, user, password) if mech == "PLAIN" else ScramClient(mech, user, password)


# -- the connections -----------------------------------------------------------------------

#: Called with (the receiving connection, the sender's bare address, the body).
OnItem = Callable[["Conn", str, str], None]


class Conn(asyncio.Protocol):
    """
    What the tests need of a client connection, whatever its protocol.
    """

    proto = ""

    def __init__(self, user: str, spec: dict[str, Any], stats: Stats) -> None:
        self.user = user
        self.domain: str = spec["domain"]
        self.password: str = spec["password"]
        self.bare = f"{user}@{self.domain}"
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.onMessage: OnItem | None = None
        self.onPresence: OnItem | None = None
        self.leaving = False  # we close it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.sending and not self.leaving:
            self.stats.disconnects += 1
        if not self.closed.done():
            self.closed.set_result(None)
        self.failWaiting(LoginError(f"{self.user}: connection lost ({exc})"))

    def failWaiting(self, e: Exception) -> None:
        pass

    async def connect(self, host: str, port: int, timeout: float, bind: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(lambda: self, host, port, local_addr=(bind, 0) if bind else None), timeout
        )

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.leaving = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # Implemented per protocol:
    async def login(self, host: str, port: int, mech: str, timeout: float, bind: str | None = None) -> None:
        raise NotImplementedError

    async def startSession(self, timeout: float) -> None:
        """
        Fetch the contact list and go online.
        """
        raise NotImplementedError

    def messageBytes(self, target: "Conn", bodies: Sequence[bytes]) -> bytes:
        raise NotImplementedError

    def presenceBytes(self, note: bytes) -> bytes:
        raise NotImplementedError

    def goodbye(self) -> None:
        self.close()


class XmppStanza:
    __slots__ = ("name", "attrs", "kids", "text")

    def __init__(self, name: str, attrs: dict[str, str]) -> None:
        self.name = name
        self.attrs = attrs
        self.text = ""  # the stanza's own text (SASL elements)
        self.kids: list[list[Any]] = []  # [name, attrs, text, [grandchild names and texts]]

    def kid(self, name: str) -> list[Any] | None:
        for k in self.kids:
            if k[0] == name:
                return k
        return None


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def xesc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


class XmppConn(Conn):
    """
    An XMPP c2s client (no TLS: every server here allows SASL on loopback
    without it).
    """

    proto = "xmpp"

    def __init__(self, user: str, spec: dict[str, Any], stats: Stats) -> None:
        super().__init__(user, spec, stats)
        self.jid = self.bare + "/r"
        self._waiters: dict[str, asyncio.Future[XmppStanza]] = {}
        self._iq: dict[str, asyncio.Future[XmppStanza]] = {}
        self._iqn = 0
        self._features: asyncio.Future[XmppStanza] | None = None
        self._newParser()

    def _newParser(self) -> None:
        p = xml.parsers.expat.ParserCreate()
        p.buffer_text = True
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._cdata
        self.parser = p
        self._depth = 0
        self._cur: XmppStanza | None = None
        self._kid: list[Any] | None = None
        self._gk: list[Any] | None = None
        self._tbuf: list[str] | None = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.Parse(data, False)
        except xml.parsers.expat.ExpatError as e:
            self.stats.errors += 1
            print(f"{self.jid}: XML error {e}", file=sys.stderr)
            self.close()

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        d = self._depth = self._depth + 1
        if d == 2:
            self._cur = XmppStanza(_local(name), attrs)
        elif d == 3:
            assert self._cur is not None
            self._kid = [_local(name), attrs, None, []]
            self._cur.kids.append(self._kid)
            self._tbuf = []
        elif d == 4:
            assert self._kid is not None
            self._gk = [_local(name), attrs, None]
            self._kid[3].append(self._gk)
            self._tbuf = []

    def _cdata(self, data: str) -> None:
        if self._depth >= 3 and self._tbuf is not None:
            self._tbuf.append(data)
        elif self._depth == 2 and self._cur is not None:
            self._cur.text += data

    def _end(self, name: str) -> None:
        d = self._depth
        self._depth = d - 1
        if d == 3:
            if self._tbuf and self._kid is not None:
                self._kid[2] = "".join(self._tbuf)
            self._tbuf = None
        elif d == 4:
            if self._tbuf and self._gk is not None:
                self._gk[2] = "".join(self._tbuf)
            self._tbuf = []
        elif d == 2:
            st, self._cur = self._cur, None
            if st is not None:
                self._dispatch(st)
        elif d == 1:
            self.close()

    def _dispatch(self, st: XmppStanza) -> None:
        n = st.name
        if n == "message":
            if self.onMessage is not None:
                body = st.kid("body")
                if body is not None and body[2]:
                    self.onMessage(self, st.attrs.get("from", "").partition("/")[0], body[2])
            return
        if n == "presence":
            t = st.attrs.get("type")
            if t == "subscribe":
                self.write(f"<presence to='{xesc(st.attrs['from'])}' type='subscribed'/>".encode())
            elif t is None and self.onPresence is not None:
                status = st.kid("status")
                if status is not None and status[2]:
                    self.onPresence(self, st.attrs.get("from", "").partition("/")[0], status[2])
            return
        if n == "iq":
            t = st.attrs.get("type")
            if t in ("result", "error"):
                f = self._iq.pop(st.attrs.get("id", ""), None)
                if f is not None and not f.done():
                    f.set_result(st)
            elif t in ("get", "set"):
                ns = st.kids[0][1].get("xmlns") if st.kids else None
                iid = xesc(st.attrs.get("id", ""))
                if ns in ("urn:xmpp:ping", "jabber:iq:roster"):
                    self.write(f"<iq type='result' id='{iid}'/>".encode())
                else:
                    self.write(
                        f"<iq type='error' id='{iid}'><error type='cancel'><service-unavailable "
                        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>".encode()
                    )
            return
        if n == "features":
            if self._features is not None and not self._features.done():
                self._features.set_result(st)
            return
        if n == "error":
            print(f"{self.jid}: stream error {st.kids!r}", file=sys.stderr)
        f = self._waiters.pop(n, None)
        if f is not None and not f.done():
            f.set_result(st)

    def failWaiting(self, e: Exception) -> None:
        for f in [*self._waiters.values(), *self._iq.values(), self._features]:
            if f is not None and not f.done():
                f.set_exception(e)
        self._waiters.clear()
        self._iq.clear()

    def _expect(self, *names: str) -> asyncio.Future[XmppStanza]:
        f: asyncio.Future[XmppStanza] = asyncio.get_running_loop().create_future()
        for n in names:
            self._waiters[n] = f
        return f

    async def iq(self, typ: str, payload: str, timeout: float) -> XmppStanza:
        self._iqn += 1
        iid = f"q{self._iqn}"
        f: asyncio.Future[XmppStanza] = asyncio.get_running_loop().create_future()
        self._iq[iid] = f
        self.write(f"<iq type='{typ}' id='{iid}'>{payload}</iq>".encode())
        return await asyncio.wait_for(f, timeout)

    async def _open(self, timeout: float) -> XmppStanza:
        self._newParser()
        self._features = asyncio.get_running_loop().create_future()
        self.write(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
            f"xmlns:stream='{STREAM_NS}' version='1.0'>".encode()
        )
        return await asyncio.wait_for(self._features, timeout)

    async def login(self, host: str, port: int, mech: str, timeout: float, bind: str | None = None) -> None:
        await self.connect(host, port, timeout, bind)
        await self._open(timeout)
        sasl = saslClient(mech, self.user, self.password)
        ns = "urn:ietf:params:xml:ns:xmpp-sasl"
        f = self._expect("success", "failure", "challenge")
        self.write(f"<auth xmlns='{ns}' mechanism='{mech}'>{base64.b64encode(sasl.start()).decode()}</auth>".encode())
        r = await asyncio.wait_for(f, timeout)
        while r.name == "challenge":
            answer = sasl.step(base64.b64decode(self._text(r)))
            f = self._expect("success", "failure", "challenge")
            self.write(f"<response xmlns='{ns}'>{base64.b64encode(answer).decode()}</response>".encode())
            r = await asyncio.wait_for(f, timeout)
            if r.name == "challenge" and isinstance(sasl, ScramClient) and sasl.serverSignature:
                # The server-final message as a challenge (RFC 6120 6.4.6 allows either).
                sasl.verify(base64.b64decode(self._text(r)))
                f = self._expect("success", "failure")
                self.write(f"<response xmlns='{ns}'/>".encode())
                r = await asyncio.wait_for(f, timeout)
                break
        if r.name != "success":
            raise LoginError(f"{self.user}: SASL {mech} failed: {r.kids!r}")
        final = self._text(r)
        if final and final != "=":
            sasl.verify(base64.b64decode(final))
        feats = await self._open(timeout)
        r = await self.iq(
            "set", "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind>", timeout
        )
        if r.attrs.get("type") != "result":
            raise LoginError(f"{self.user}: bind failed")
        b = r.kid("bind")
        if b and b[3] and b[3][0][2]:
            self.jid = b[3][0][2]
        sess = feats.kid("session")
        if sess is not None and not any(g[0] == "optional" for g in sess[3]):
            await self.iq("set", "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>", timeout)

    @staticmethod
    def _text(st: XmppStanza) -> str:
        return st.text.strip()

    async def startSession(self, timeout: float) -> None:
        await self.iq("get", "<query xmlns='jabber:iq:roster'/>", timeout)
        self.write(b"<presence/>")

    def messageBytes(self, target: Conn, bodies: Sequence[bytes]) -> bytes:
        pre = f"<message type='chat' to='{target.bare}'><body>".encode()
        return b"".join(pre + b + b"</body></message>" for b in bodies)

    def presenceBytes(self, note: bytes) -> bytes:
        return b"<presence><status>" + note + b"</status></presence>"

    def goodbye(self) -> None:
        self.write(b"</stream:stream>")
        self.close()


class NativeReply:
    __slots__ = ("code", "head", "body")

    def __init__(self, code: int, head: bytes, body: bytes) -> None:
        self.code = code
        self.head = head
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        return _header(self.head, name)


def _header(head: bytes, name: bytes) -> bytes | None:
    """
    The value of header C{name} (lower case) in a frame's head, if any.
    """
    lower = head.lower()
    i = lower.find(b"\n" + name + b":")
    if i < 0:
        return None
    j = head.find(b"\r", i + 1)
    return head[i + 2 + len(name) : j if j >= 0 else len(head)].strip(b" \t")


_NATIVE_MESSAGE = b"MESSAGE im:%s IMGW/1.0\r\nSeq: %d\r\nContent-Length: %d\r\n\r\n%s"
_NATIVE_OK = b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n"


class NativeConn(Conn):
    """
    A native-protocol client (C{docs/protocol.md}): a frame reader that does
    only what the driver needs (the end of the head, C{Seq},
    C{Content-Length}, the body), requests written from byte templates.
    """

    proto = "native"

    def __init__(self, user: str, spec: dict[str, Any], stats: Stats) -> None:
        super().__init__(user, spec, stats)
        self._buf = b""
        self.seq = 0
        self._waiting: dict[int, asyncio.Future[NativeReply]] = {}
        #: Presence-Answers: none at AUTH (docs/protocol.md 7.2): presence
        #: NOTIFYs then come with Seq 0, and are not answered.
        self.quiet: bool = spec.get("presence_answers", "none") == "none"

    def failWaiting(self, e: Exception) -> None:
        for f in self._waiting.values():
            if not f.done():
                f.set_exception(e)
        self._waiting.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        while True:
            while buf.startswith(b"\r\n", pos):
                pos += 2
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            cl = _header(head, b"content-length")
            length = int(cl) if cl else 0
            start = end + 4
            if start + length > n:
                break
            seqText = _header(head, b"seq")
            seq = int(seqText) if seqText else 0
            body = buf[start : start + length]
            pos = start + length
            if head.startswith(b"IMGW/"):
                code = int(head[9:12])
                f = self._waiting.pop(seq, None)
                if f is not None:
                    if not f.done():
                        f.set_result(NativeReply(code, head, body))
                elif code >= 300:
                    self.stats.errors += 1
                continue
            if seq or not head.startswith(b"NOTIFY "):
                # A NOTIFY with Seq 0 (a presence one, Presence-Answers:
                # none) is not answered.
                out.append(_NATIVE_OK % seq)
            if head.startswith(b"MESSAGE "):
                if self.onMessage is not None:
                    frm = _header(head, b"from") or b""
                    self.onMessage(self, frm.decode().partition(":")[2], body.decode())
            elif head.startswith(b"NOTIFY "):
                if self.onPresence is not None and _header(head, b"event") == b"presence":
                    note = _header(head, b"note")
                    if note:
                        target = head[7 : head.find(b" ", 7)].decode()
                        self.onPresence(self, target.partition(":")[2], note.decode())
            elif head.startswith(b"BYE "):
                self.close()
        self._buf = buf[pos:] if pos < n else b""
        if out:
            self.write(b"".join(out))

    def request(self, method: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> asyncio.Future[NativeReply]:
        self.seq += 1
        f: asyncio.Future[NativeReply] = asyncio.get_running_loop().create_future()
        self._waiting[self.seq] = f
        lines = [f"{method} * IMGW/1.0", f"Seq: {self.seq}", *(f"{k}: {v}" for k, v in headers)]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return f

    async def login(self, host: str, port: int, mech: str, timeout: float, bind: str | None = None) -> None:
        await self.connect(host, port, timeout, bind)
        sasl = saslClient(mech, self.user, self.password)
        headers = [("Mechanism", mech), ("Label", "bench")]
        if self.quiet:
            headers.append(("Presence-Answers", "none"))
        r = await asyncio.wait_for(self.request("AUTH", headers, sasl.start()), timeout)
        while r.code == 110:
            r = await asyncio.wait_for(self.request("AUTH", (), sasl.step(r.body)), timeout)
        if r.code != 200:
            raise LoginError(f"{self.user}: AUTH answered {r.code}")
        sasl.verify(r.body)

    async def startSession(self, timeout: float) -> None:
        r = await asyncio.wait_for(self.request("CONTACTS"), timeout)
        if r.code != 200:
            raise LoginError(f"{self.user}: CONTACTS answered {r.code}")
        r = await asyncio.wait_for(self.request("PUBLISH", [("Presence", "online")]), timeout)
        if r.code != 200:
            raise LoginError(f"{self.user}: PUBLISH answered {r.code}")

    def messageBytes(self, target: Conn, bodies: Sequence[bytes]) -> bytes:
        to = target.bare.encode()
        parts = []
        for b in bodies:
            self.seq += 1
            parts.append(_NATIVE_MESSAGE % (to, self.seq, len(b), b))
        return b"".join(parts)

    def presenceBytes(self, note: bytes) -> bytes:
        self.seq += 1
        return b"PUBLISH * IMGW/1.0\r\nSeq: %d\r\nPresence: online\r\nNote: %s\r\n\r\n" % (self.seq, note)

    def goodbye(self) -> None:
        self.close()


#: ":nick!user@host PRIVMSG target :text" (the driver needs the nick and the text).
_IRC_PRIVMSG = re.compile(rb"^:([^!\s]+)\S* PRIVMSG \S+ :(.*?)\r?$")


class IrcConn(Conn):
    """
    An IRC client (RFC 1459 lines, as C{../shared/peers/load/irc_load.py}
    speaks it): registers with C{NICK}/C{USER}, after C{PASS user:password}
    when C{spec["irc_pass"]} (the gateway's IRC face logs users in so; a
    plain ircd such as ngIRCd wants none), answers C{PING}, and takes every
    C{PRIVMSG} for a message. Its address (what a native sender writes to)
    is C{nick@domain}: on a bridged network, the network's domain.
    """

    proto = "irc"

    def __init__(self, user: str, spec: dict[str, Any], stats: Stats) -> None:
        super().__init__(user, spec, stats)
        self.nick = user
        self.sendPass: bool = spec.get("irc_pass", False)
        self._buf = b""
        self.registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def failWaiting(self, e: Exception) -> None:
        if not self.registered.done():
            self.registered.set_exception(e)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            m = _IRC_PRIVMSG.match(line)
            if m is not None:
                if self.onMessage is not None:
                    self.onMessage(self, m.group(1).decode(), m.group(2).decode("utf-8", "replace"))
                continue
            line = line.rstrip(b"\r")
            if line.startswith(b"PING"):
                self.write(b"PONG" + line[4:] + b"\r\n")
                continue
            parts = line.split(b" ", 3)
            if len(parts) < 2:
                continue
            command = parts[1]
            if command == b"001":
                if len(parts) > 2:
                    self.nick = parts[2].decode()
                if not self.registered.done():
                    self.registered.set_result(None)
            elif command in (b"464", b"433", b"432", b"436") and not self.registered.done():
                self.registered.set_exception(LoginError(f"{self.user}: {line[:200]!r}"))
            elif parts[0] == b"ERROR":
                if not self.registered.done():
                    self.registered.set_exception(LoginError(f"{self.user}: {line[:200]!r}"))
                elif self.stats.sending:
                    self.stats.errors += 1

    async def login(self, host: str, port: int, mech: str, timeout: float, bind: str | None = None) -> None:
        await self.connect(host, port, timeout, bind)
        ident = "".join(c for c in self.user if c.isalnum())[:10] or "bench"
        first = f"PASS {self.user}:{self.password}\r\n" if self.sendPass else ""
        self.write(f"{first}NICK {self.user}\r\nUSER {ident} 0 * :bench\r\n".encode())
        await asyncio.wait_for(asyncio.shield(self.registered), timeout)

    async def startSession(self, timeout: float) -> None:
        pass  # no contact list to fetch; registered is online

    def messageBytes(self, target: Conn, bodies: Sequence[bytes]) -> bytes:
        pre = b"PRIVMSG " + getattr(target, "nick", target.user).encode() + b" :"
        return b"".join(pre + b + b"\r\n" for b in bodies)

    def presenceBytes(self, note: bytes) -> bytes:
        return b"AWAY :" + note + b"\r\n"

    def goodbye(self) -> None:
        self.write(b"QUIT :bye\r\n")
        self.close()


CONNS: dict[str, type[Conn]] = {"xmpp": XmppConn, "native": NativeConn, "irc": IrcConn}


def makeConn(user: str, spec: dict[str, Any], stats: Stats) -> Conn:
    return CONNS[spec["proto"]](user, spec, stats)


async def loginAll(conns: Sequence[Conn], spec: dict[str, Any], session: bool) -> float:
    """
    Log C{conns} in (C{spec["mech"]}), C{login_concurrency} at a time, and
    with C{session} fetch the contact list and go online.

    @return: The seconds it took.
    """
    sem = asyncio.Semaphore(spec["login_concurrency"])
    t = time.monotonic()

    async def one(c: Conn) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    await c.login(spec["host"], spec["port"], spec["mech"], spec["timeout"])
                    break
                except (OSError, asyncio.TimeoutError, LoginError) as e:
                    c.close()
                    if attempt == 2:
                        raise LoginError(f"login of {c.user} failed: {e!r}") from None
                    c.__init__(c.user, spec, c.stats)  # type: ignore[misc]
                    await asyncio.sleep(0.5)
            if session:
                await c.startSession(spec["timeout"])

    await asyncio.gather(*(one(c) for c in conns))
    return time.monotonic() - t


# -- senders -------------------------------------------------------------------------------


class Sender:
    """
    One sender (of messages to C{target}, or of presence changes when
    C{target} is C{None}), closed loop (C{window} items outstanding, an item
    counting C{fanout} deliveries) or open loop (L{openLoop}).
    """

    def __init__(self, conn: Conn, target: Conn | None, window: int, fanout: int, stats: Stats) -> None:
        self.conn = conn
        self.target = target
        self.window = window
        self.fanout = fanout
        self.stats = stats
        self.out = 0
        self.seq = 0
        self.scheduled = False
        self.closedLoop = True
        self.lastProgress = time.monotonic()
        self.loop = asyncio.get_running_loop()

    def fill(self) -> None:
        self.scheduled = False
        if not self.stats.sending:
            return
        k = self.window - (self.out + self.fanout - 1) // self.fanout
        if k > 0:
            self.send(k)

    def send(self, k: int) -> None:
        t = nowUs()
        s = self.seq
        notes = []
        for _ in range(k):
            s += 1
            notes.append(b"%d %d" % (s, t))
        self.seq = s
        self.out += k * self.fanout
        self.stats.sent += k
        if self.target is not None:
            self.conn.write(self.conn.messageBytes(self.target, notes))
        else:
            self.conn.write(b"".join(self.conn.presenceBytes(n) for n in notes))

    def delivered(self, text: str) -> None:
        stamp = parseStamp(text)
        if stamp is None:
            return
        self.stats.record(stamp[1])
        self.out -= 1
        self.lastProgress = time.monotonic()
        if self.closedLoop and self.stats.sending and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.fill)


async def stallGuard(senders: Sequence[Sender], stats: Stats, limit: float = 3.0) -> None:
    """
    A lost item would freeze a closed-loop sender: give it its window back
    after C{limit} seconds without progress (counted in C{stalls}).
    """
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        for s in senders:
            if s.out > 0 and now - s.lastProgress > limit:
                stats.stalls += 1
                s.out = 0
                s.lastProgress = now
                s.fill()


#: How often the open loop wakes to send what fell due, by default (seconds):
#: the fixed-rate figures of every table so far were measured so. 0 sends
#: each message at its own due time (L{openLoop}).
SEND_TICK = 0.002


async def openLoop(senders: Sequence[Sender], ratePerSender: float, cap: int, phases: Sequence[float] | None = None,
                   tick: float = 0.0) -> None:
    """
    Send at a fixed rate per sender, each message at its own due time, the
    senders' phases spread evenly over the period (no bursts of one message
    per sender); a sender never has more than C{cap} outstanding.

    With C{tick} (seconds), the loop wakes every C{tick} instead and sends
    what fell due meanwhile (L{SEND_TICK}, the benchmarks' default: at
    2,000 msgs/s and a 2 ms tick, about four messages go out together every
    2 ms, two from each driver process, and a server reads them in one
    burst).

    @param phases: Each sender's phase, a fraction of its period: by
        default C{i / len(senders)}. Given by the caller, the phases of the
        senders of all driver processes together (L{senderPhases}), so that
        the processes do not send at the same moments either.
    """
    start = time.monotonic()
    n = len(senders)
    phase = list(phases) if phases is not None else [i / n for i in range(n)]
    done = [int(f) for f in phase]
    for s in senders:
        s.closedLoop = False
    while True:
        nextDue = sendDue(senders, phase, done, ratePerSender * (time.monotonic() - start), cap)
        if tick:
            await asyncio.sleep(tick)
        else:
            await asyncio.sleep(max(0.0, start + nextDue / ratePerSender - time.monotonic()))


def sendDue(senders: Sequence[Sender], phase: Sequence[float], done: list[int], elapsed: float, cap: int) -> float:
    """
    One step of L{openLoop}: each sender sends what fell due by C{elapsed}
    (periods since the start), at most C{cap} outstanding (what it is
    behind beyond that is skipped).

    @param done: How many of its messages each sender is past (updated).
    @return: When (periods since the start) the next message falls due.
    """
    nextDue = elapsed + 1.0
    for i, s in enumerate(senders):
        due = int(elapsed + phase[i])
        k = due - done[i]
        if k > 0:
            k = min(k, cap - s.out)
            if k > 0:
                s.send(k)
            done[i] = due
        nextDue = min(nextDue, due + 1 - phase[i])
    return nextDue


def senderPhases(numbers: Sequence[int], first: int, total: int) -> list[float]:
    """
    The phases (L{openLoop}) of senders numbered in all the driver
    processes together: sender C{g} of C{total} sends C{g / total} of a
    period after sender 0, so that the messages of all processes go out
    evenly spaced.

    @param numbers: The senders' numbers, counted from C{first}.
    """
    return [((g - first) % total) / total for g in numbers]


# -- worker processes ----------------------------------------------------------------------


class ParentLink:
    """
    The pipe to the parent, read without blocking the loop.
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


async def sleepUntil(tUs: int) -> None:
    d = (tUs - nowUs()) / 1e6
    if d > 0:
        await asyncio.sleep(d)


async def window(link: ParentLink, stats: Stats, ready: dict[str, Any], start: Callable[[], None],
                 stop: Callable[[], None], drained: Callable[[], bool], drainS: float) -> float:
    """
    The measured phase: say ready, wait for the parent's times, run the
    traffic from C{t_go}, measure in C{[t0, t1)}, drain.

    @return: This process's CPU seconds inside the window.
    """
    link.send(("ready", ready))
    msg = await link.recv()
    if msg[0] != "go":
        raise SystemExit(0)
    _, tGo, t0, t1 = msg
    stats.t0, stats.t1 = t0, t1
    await sleepUntil(tGo)
    stats.sending = True
    start()
    await sleepUntil(t0)
    cpu0 = time.process_time()
    await sleepUntil(t1)
    cpu1 = time.process_time()
    stats.sending = False
    stop()
    end = time.monotonic() + drainS
    while time.monotonic() < end and not drained():
        await asyncio.sleep(0.05)
    return cpu1 - cpu0


def names(spec: dict[str, Any], numbers: Sequence[int]) -> list[str]:
    return [f"{spec['prefix']}{i}" for i in numbers]


async def workerMsg(link: ParentLink, spec: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    pairs: list[tuple[int, int]] = spec["shard"]
    to: dict[str, Any] | None = spec.get("to")
    if to is None:
        conns = {u: makeConn(f"{spec['prefix']}{u}", spec, stats) for pr in pairs for u in pr}
        await loginAll(list(conns.values()), spec, session=True)
        ends = [(conns[a], conns[b]) for a, b in pairs]
    else:
        # One way: the first of each pair (on this server) sends to the
        # second, a client of C{to} (another server, or another face).
        toSpec = dict(spec, **to)
        receivers = [makeConn(f"{toSpec['prefix']}{b}", toSpec, stats) for _, b in pairs]
        await loginAll(receivers, toSpec, session=True)
        sending = [makeConn(f"{spec['prefix']}{a}", spec, stats) for a, _ in pairs]
        await loginAll(sending, spec, session=True)
        ends = list(zip(sending, receivers))
        conns = {i: c for i, c in enumerate(sending + receivers)}
    senders: list[Sender] = []
    byConn: dict[Conn, Sender] = {}
    numbers: list[int] = []  # each sender's number among all processes' (senderPhases)
    for (a, _), (ca, cb) in zip(pairs, ends):
        sa = Sender(ca, cb, spec["window"], 1, stats)
        senders.append(sa)
        byConn[cb] = sa  # cb receives what sa sends
        if to is None:
            sb = Sender(cb, ca, spec["window"], 1, stats)
            senders.append(sb)
            byConn[ca] = sb
            numbers += [a, a + 1]
        else:
            numbers.append(a)

    def onMessage(c: Conn, frm: str, body: str) -> None:
        sender = byConn.get(c)
        if sender is not None:
            sender.delivered(body)

    for c in conns.values():
        c.onMessage = onMessage
    tasks: list[asyncio.Task[None]] = []

    def start() -> None:
        if spec["rate"]:
            # On a tick, each process's own phases (as before session 10).
            phases = None if spec["send_tick"] else senderPhases(numbers, spec["first"], spec["senders_total"])
            tasks.append(asyncio.ensure_future(openLoop(senders, spec["rate"] / spec["senders_total"], 1000, phases,
                                                        spec["send_tick"])))
        else:
            for s in senders:
                s.fill()
            tasks.append(asyncio.ensure_future(stallGuard(senders, stats)))

    def stop() -> None:
        for t in tasks:
            t.cancel()

    cpu = await window(link, stats, {"clients": len(conns)}, start, stop,
                       lambda: stats.receivedTotal >= stats.sent, spec["drain"])
    for c in conns.values():
        c.goodbye()
    return summary(stats, cpu)


async def workerPresence(link: ParentLink, spec: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    center = makeConn(f"{spec['prefix']}{spec['center']}", spec, stats)
    contacts = [makeConn(u, spec, stats) for u in names(spec, spec["contact_numbers"])]
    await loginAll(contacts, spec, session=True)
    await loginAll([center], spec, session=True)
    fan = len(contacts)
    sender = Sender(center, None, spec["window"], fan, stats)

    def onPresence(c: Conn, frm: str, note: str) -> None:
        if frm == center.bare:
            sender.delivered(note)

    for c in contacts:
        c.onPresence = onPresence
    await asyncio.sleep(spec["settle"])  # the login presences settle
    tasks: list[asyncio.Task[None]] = []

    def start() -> None:
        sender.fill()
        tasks.append(asyncio.ensure_future(stallGuard([sender], stats)))

    def stop() -> None:
        for t in tasks:
            t.cancel()

    cpu = await window(link, stats, {"clients": fan + 1}, start, stop,
                       lambda: stats.receivedTotal >= stats.sent * fan, spec["drain"])
    for c in [center, *contacts]:
        c.goodbye()
    out = summary(stats, cpu)
    out["fanout"] = fan
    return out


async def workerLogin(link: ParentLink, spec: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    users: list[str] = names(spec, spec["shard"])
    nextUser = [0]
    sources = [f"127.0.1.{i}" for i in range(1, 65)]
    tasks: list[asyncio.Task[None]] = []

    async def loop(k: int) -> None:
        while stats.sending:
            u = users[nextUser[0] % len(users)]
            nextUser[0] += 1
            c = makeConn(u, spec, stats)
            t = nowUs()
            try:
                await c.login(spec["host"], spec["port"], spec["mech"], spec["timeout"], sources[(k + nextUser[0]) % 64])
            except (OSError, asyncio.TimeoutError, LoginError) as e:
                stats.errors += 1
                if stats.errors <= 3:
                    print(f"login {u}: {e!r}", file=sys.stderr)
                c.close()
                await asyncio.sleep(0.1)
                continue
            done = nowUs()
            stats.loginsTotal += 1
            if stats.inWindow(done):
                stats.logins += 1
                stats.loginLat.append(done - t)
            c.goodbye()

    def start() -> None:
        for k in range(spec["concurrency"]):
            tasks.append(asyncio.ensure_future(loop(k)))

    def stop() -> None:
        pass

    cpu = await window(link, stats, {"clients": 0}, start, stop, lambda: all(t.done() for t in tasks), spec["drain"])
    for t in tasks:
        t.cancel()
    out = summary(stats, cpu)
    out["logins"] = stats.logins
    out["login_lat"] = stats.loginLat.tobytes()
    return out


async def workerIdle(link: ParentLink, spec: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    if spec["warm_users"]:
        warm = [makeConn(u, spec, stats) for u in names(spec, spec["warm_users"])]
        await loginAll(warm, spec, session=False)
        for c in warm:
            c.goodbye()
        await asyncio.sleep(spec["settle"])
    conns = [makeConn(u, spec, stats) for u in names(spec, spec["shard"])]
    link.send(("ready", {"clients": 0}))
    msg = await link.recv()
    if msg[0] != "go":
        raise SystemExit(0)
    cpu0 = time.process_time()
    loginS = await loginAll(conns, spec, session=True)
    cpu = time.process_time() - cpu0
    link.send(("ready", {"login_s": loginS, "cpu_s": cpu}))
    msg = await link.recv()
    alive = sum(1 for c in conns if not c.closed.done())
    for c in conns:
        c.goodbye()
    out = summary(stats, cpu)
    out.update(alive=alive, login_s=loginS)
    return out


def summary(stats: Stats, cpu: float) -> dict[str, Any]:
    return {
        "lat": stats.lat.tobytes(),
        "delivered": stats.delivered,
        "received_total": stats.receivedTotal,
        "sent": stats.sent,
        "errors": stats.errors,
        "stalls": stats.stalls,
        "disconnects": stats.disconnects,
        "cpu_s": cpu,
    }


WORKERS = {"msg": workerMsg, "presence": workerPresence, "login": workerLogin, "idle": workerIdle}


def workerEntry(conn: Connection, spec: dict[str, Any]) -> None:
    raiseNofile()

    async def run() -> None:
        link = ParentLink(conn)
        result = await WORKERS[spec["test"]](link, spec)
        link.send(("result", result))

    try:
        asyncio.run(run())
    except BaseException as e:
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"))
        except OSError:
            pass
    finally:
        conn.close()


# -- the parent ----------------------------------------------------------------------------


class DriverFailed(Exception):
    pass


class Workers:
    def __init__(self, specs: list[dict[str, Any]], timeout: float) -> None:
        ctx = mp.get_context("fork")
        self.timeout = timeout
        self.procs = []
        self.pipes = []
        for spec in specs:
            a, b = ctx.Pipe()
            p = ctx.Process(target=workerEntry, args=(b, spec), daemon=True)
            p.start()
            b.close()
            self.procs.append(p)
            self.pipes.append(a)

    def collect(self, kind: str, timeout: float | None = None) -> list[dict[str, Any]]:
        out = []
        for c in self.pipes:
            if not c.poll(timeout or self.timeout):
                raise DriverFailed(f"a driver process did not report {kind!r} in time")
            m = c.recv()
            if m[0] == "error":
                raise DriverFailed(f"a driver process failed:\n{m[1]}")
            if m[0] != kind:
                raise DriverFailed(f"expected {kind!r} from a driver process, got {m[0]!r}")
            out.append(m[1])
        return out

    def send(self, msg: tuple[Any, ...]) -> None:
        for c in self.pipes:
            c.send(msg)

    def stop(self) -> None:
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()  # our own child, by its handle
                p.join(5)


def pidsCpu(pids: Sequence[int]) -> float | None:
    total = 0.0
    for pid in pids:
        v = procCpuS(pid)
        if v is None:
            return None
        total += v
    return total


def measureWindow(args: argparse.Namespace, workers: Workers) -> dict[str, Any]:
    """
    Give the workers their times and read the server at the window's edges.
    """
    pids = args.server_pid
    tGo = nowUs() + 200_000
    t0 = tGo + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    workers.send(("go", tGo, t0, t1))
    time.sleep(max(0.0, (t0 - nowUs()) / 1e6))
    peers = args.peer_pid
    c0, p0, b0, m0 = pidsCpu(pids), pidsCpu(peers), machineBusyS(), time.monotonic()
    time.sleep(max(0.0, (t1 - nowUs()) / 1e6))
    c1, p1, b1, m1 = pidsCpu(pids), pidsCpu(peers), machineBusyS(), time.monotonic()
    rss = sum(procRssKb(p) or 0 for p in pids)
    dt = m1 - m0
    return {
        "server_cpu_s": None if c0 is None or c1 is None else c1 - c0,
        "peer_cpu_s": None if not peers or p0 is None or p1 is None else p1 - p0,
        "peer_rss_kb": sum(procRssKb(p) or 0 for p in peers) or None,
        "machineBusyS": None if b0 is None or b1 is None else b1 - b0,
        "window_s": dt,
        "server_rss_kb": rss or None,
    }


def finish(args: argparse.Namespace, edges: dict[str, Any], results: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """
    The figures common to every test: server and driver CPU, what the rest
    of the machine used, CPU per counted item.
    """
    dt = edges["window_s"]
    driverCpu = [r["cpu_s"] for r in results]
    out: dict[str, Any] = {
        "driver_procs": len(results),
        "driver_cpu_pct": [round(100 * c / dt, 1) for c in driverCpu],
        "server_cpu_pct": None,
        "errors": sum(r["errors"] for r in results),
        "stalls": sum(r["stalls"] for r in results),
        "disconnects": sum(r["disconnects"] for r in results),
        "server_rss_kb": edges["server_rss_kb"],
    }
    if edges["server_cpu_s"] is not None:
        out["server_cpu_pct"] = round(100 * edges["server_cpu_s"] / dt, 1)
        out["server_cpu_us_per_item"] = round(edges["server_cpu_s"] / count * 1e6, 2) if count else None
        if edges["machineBusyS"] is not None:
            peer = edges.get("peer_cpu_s") or 0.0
            out["other_cpu_pct"] = round(100 * (edges["machineBusyS"] - edges["server_cpu_s"] - peer - sum(driverCpu)) / dt, 1)
    if edges.get("peer_cpu_s") is not None:
        # The other server a message crosses (the IRC network behind the gateway's bridge).
        out["peer_cpu_pct"] = round(100 * edges["peer_cpu_s"] / dt, 1)
        out["peer_cpu_us_per_item"] = round(edges["peer_cpu_s"] / count * 1e6, 2) if count else None
        out["peer_rss_kb"] = edges.get("peer_rss_kb")
    out["driver_cpu_us_per_item"] = round(sum(driverCpu) / count * 1e6, 2) if count else None
    return out


def baseSpec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "test": args.test,
        "proto": args.proto,
        "host": args.host,
        "port": args.port,
        "domain": args.domain,
        "prefix": args.prefix,
        "password": args.password,
        "mech": args.mech,
        "timeout": args.timeout,
        "login_concurrency": args.login_concurrency,
        "drain": args.drain,
        "window": args.window,
        "settle": args.settle,
        "irc_pass": args.irc_pass,
        "presence_answers": args.presence_answers,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = baseSpec(args)
    result: dict[str, Any] = {"test": args.test, "proto": args.proto, "label": args.label, "duration_s": args.duration}
    if args.test == "msg":
        if args.to_proto is None:
            pairs = [(args.first + 2 * i, args.first + 2 * i + 1) for i in range(args.pairs)]
            senders = 2 * args.pairs
        else:
            pairs = [(args.first + i, args.to_first + i) for i in range(args.pairs)]
            senders = args.pairs
            to = {"proto": args.to_proto, "port": args.to_port or args.port, "domain": args.to_domain or args.domain,
                  "prefix": args.to_prefix, "irc_pass": False}
            spec = dict(spec, to=to)
            result.update(one_way_to=to)
        shards = [s for s in shard(pairs, args.procs) if s]
        specs = [dict(spec, shard=s, rate=args.rate, senders_total=senders, first=args.first, send_tick=args.send_tick)
                 for s in shards]
        result.update(pairs=args.pairs, window=None if args.rate else args.window, rate_target=args.rate or None,
                      send_tick_s=args.send_tick if args.rate else None)
    elif args.test == "presence":
        specs = [dict(spec, center=args.first, contact_numbers=list(range(args.first + 1, args.first + 1 + args.users)))]
        result.update(contacts=args.users, window=args.window)
    elif args.test == "login":
        accounts = list(range(args.first, args.first + args.users))
        shards = [s for s in shard(accounts, args.procs) if s]
        specs = [dict(spec, shard=s, concurrency=max(1, args.concurrency // len(shards))) for s in shards]
        result.update(mech=args.mech, concurrency=args.concurrency, accounts=args.users)
    else:
        shards = [s for s in shard(list(range(args.first, args.first + args.users)), args.procs) if s]
        warm = list(range(args.warm_first, args.warm_first + args.warm_users)) if args.warm_users else []
        specs = [dict(spec, shard=s, warm_users=warm if i == 0 else []) for i, s in enumerate(shards)]
        result.update(users=args.users, mech=args.mech, warm_users=args.warm_users)
    t = time.monotonic()
    workers = Workers(specs, args.setup_timeout)
    try:
        readies = workers.collect("ready")
        result["setup_s"] = round(time.monotonic() - t, 2)
        if args.test == "idle":
            return runIdle(args, workers, result)
        if args.settle:
            time.sleep(args.settle)
        edges = measureWindow(args, workers)
        results = workers.collect("result", args.duration + args.drain + args.setup_timeout)
    finally:
        workers.stop()
    result["clients"] = sum(r.get("clients", 0) for r in readies)
    if args.test == "login":
        count = sum(r["logins"] for r in results)
        result.update(logins=count, logins_per_s=round(count / edges["window_s"], 1),
                      login_lat_us=percentiles(pooled(results, "login_lat")))
    else:
        count = sum(r["delivered"] for r in results)
        lat = pooled(results, "lat")
        sent = sum(r["sent"] for r in results)
        fan = results[0].get("fanout", 1)
        result.update(
            delivered=count,
            rate_per_s=round(count / edges["window_s"], 1),
            lat_us=percentiles(lat),
            sent_total=sent,
            received_total=sum(r["received_total"] for r in results),
            undelivered=sent * fan - sum(r["received_total"] for r in results),
            fanout=fan,
        )
    result.update(finish(args, edges, results, count))
    return result


def pooled(results: Sequence[dict[str, Any]], key: str) -> array.array[int]:
    """
    Every driver process's samples of C{key} in one array: the percentiles
    are taken over all of them together, never averaged over the processes
    (a p99 of each process's 1 % would not be the whole run's). A process
    keeps every sample up to C{Stats.maxSamples} (200,000: 200 s at the
    fixed rate's 1,000 messages per second and process), then every other
    one; the fixed-rate runs stay below that.
    """
    out: array.array[int] = array.array("q")
    for r in results:
        out.frombytes(r[key])
    return out


def _askMemoryProbe() -> None:
    """
    With C{$IMGATEWAY_MEM_READINGS} set, have the gateway's probe
    (C{bench/_memreadings}) note its memory as the RSS just read: write
    C{PREFIX.ask} and wait (30 s at most) until the probe has removed it.
    """
    prefix = os.environ.get("IMGATEWAY_MEM_READINGS")
    if not prefix:
        return
    ask = f"{prefix}.ask"
    open(ask, "w").close()
    deadline = time.monotonic() + 30
    while os.path.exists(ask) and time.monotonic() < deadline:
        time.sleep(0.05)


def runIdle(args: argparse.Namespace, workers: Workers, result: dict[str, Any]) -> dict[str, Any]:
    pids = args.server_pid
    time.sleep(args.settle)
    base = sum(procRssKb(p) or 0 for p in pids)
    _askMemoryProbe()
    c0, b0, m0 = pidsCpu(pids), machineBusyS(), time.monotonic()
    workers.send(("go",))
    logged = workers.collect("ready", args.setup_timeout + 600)
    loginS = max(r["login_s"] for r in logged)
    c1, b1, m1 = pidsCpu(pids), machineBusyS(), time.monotonic()
    time.sleep(args.settle)
    after = sum(procRssKb(p) or 0 for p in pids)
    _askMemoryProbe()
    workers.send(("stop",))
    results = workers.collect("result", 120)
    alive = sum(r["alive"] for r in results)
    dt = m1 - m0
    driverCpu = sum(r["cpu_s"] for r in logged)
    serverCpu = c1 - c0 if c0 is not None and c1 is not None else None
    busy = b1 - b0 if b0 is not None and b1 is not None else None
    result.update(
        alive=alive,
        server_rss_base_kb=base,
        server_rss_kb=after,
        rss_per_session_kb=round((after - base) / max(1, alive), 2) if base and after else None,
        login_s=round(loginS, 2),
        logins_per_s=round(args.users / loginS, 1) if loginS else None,
        server_cpu_us_per_login=round(serverCpu / args.users * 1e6, 1) if serverCpu is not None else None,
        driver_cpu_pct=[round(100 * r["cpu_s"] / dt, 1) for r in logged],
        server_cpu_pct=round(100 * serverCpu / dt, 1) if serverCpu is not None else None,
        other_cpu_pct=round(100 * (busy - serverCpu - driverCpu) / dt, 1)
        if busy is not None and serverCpu is not None else None,
        errors=sum(r["errors"] for r in results) + args.users - alive,
        driver_procs=len(results),
    )
    return result


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench._loaddriver", description="the benchmarks' load driver (XMPP, native, IRC)")
    p.add_argument("test", choices=sorted(WORKERS))
    p.add_argument("--proto", choices=sorted(CONNS), required=True)
    p.add_argument("--irc-pass", action="store_true", help="irc: log in with PASS user:password (the gateway's IRC face)")
    p.add_argument("--presence-answers", choices=["none", "all"], default="none",
                   help="native: the AUTH's Presence-Answers (docs/protocol.md 7.2); none (the default, as the shipped "
                   "client) asks for presence NOTIFYs that are not answered")
    p.add_argument("--to-proto", choices=sorted(CONNS), default=None,
                   help="msg: one way, each sender to a client of this protocol (--to-port, --to-domain, --to-prefix)")
    p.add_argument("--to-port", type=int, default=None)
    p.add_argument("--to-domain", default=None, help="the receivers' domain (a bridged IRC network's)")
    p.add_argument("--to-prefix", default="irc")
    p.add_argument("--to-first", type=int, default=0)
    p.add_argument("--peer-pid", type=int, action="append", default=[],
                   help="another server a message crosses: its CPU is read apart (peer_cpu_us_per_item)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--prefix", default="user")
    p.add_argument("--password", default="pw")
    p.add_argument("--server-pid", type=int, action="append", default=[], help="server process(es) to read from /proc")
    p.add_argument("--first", type=int, default=0, help="first account number (presence: the user who changes state)")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--users", type=int, default=200, help="presence: contacts; login: accounts; idle: sessions")
    p.add_argument("--window", type=int, default=10, help="closed loop: outstanding messages per sender (presence: changes)")
    p.add_argument("--rate", type=float, default=0.0, help="msg: open loop at this total rate (messages/s)")
    p.add_argument("--send-tick", type=float, default=SEND_TICK,
                   help=f"msg --rate: wake every this many seconds and send what fell due (default {SEND_TICK:g}); "
                   "0: each message at its own due time, the senders of all processes evenly spaced")
    p.add_argument("--concurrency", type=int, default=20, help="login: loops at once (all processes)")
    p.add_argument("--mech", default="SCRAM-SHA-1", choices=["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
    p.add_argument("--warm-first", type=int, default=0)
    p.add_argument("--warm-users", type=int, default=0, help="idle: log these in and out before the baseline")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--drain", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=60.0, help="per login step")
    p.add_argument("--login-concurrency", type=int, default=50)
    p.add_argument("--setup-timeout", type=float, default=300.0)
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    if args.test == "presence":
        args.procs = 1  # closed-loop credit needs every receiver in one process
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    raiseNofile()
    try:
        result = run(args)
    except DriverFailed as e:
        result = {"test": args.test, "proto": args.proto, "label": args.label, "error": str(e)[-4000:]}
    print(json.dumps(result), flush=True)
    sys.exit(2 if "error" in result else 0)


if __name__ == "__main__":
    main()
