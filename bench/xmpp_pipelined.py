"""
The "pipelined stanzas" run of the hostile benchmark (issue 7): while one
XMPP client writes 1,000 message stanzas in a single TCP write, a canary
pair of other XMPP clients keeps exchanging messages, and we print the
canary's round-trip percentiles, how fast the flood was handled, and the
gateway's RSS before and after.

    .venv/bin/python bench/xmpp_pipelined.py
    .venv/bin/python bench/xmpp_pipelined.py --flood 1000 --duration 10
    .venv/bin/python bench/xmpp_pipelined.py --stanzas-per-second 1000000   # no rate limit

It starts a gateway of its own (L{bench._gateway.SpawnedGateway} with the
XMPP c2s face, no TLS: the clients log in with SASL PLAIN, allowed on
loopback) with the shipped stanza limits (C{stanzas_per_second = 20},
C{stanza_burst = 50}, C{stanza_queue = 1000}) unless told otherwise, and
four accounts: the canary pair, the flooder and the flood's recipient. One
JSON line goes to standard output; progress to standard error. A benchmark,
not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import SpawnedGateway, _setKey, interruptOnSigterm

PASSWORD = "pipelined-pw"


def info(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rssKiB(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Client:
    """
    A minimal XMPP client on asyncio streams: PLAIN login, bind, initial
    presence; then raw writes, and a reader that counts what arrives.
    """

    def __init__(self, domain: str, user: str) -> None:
        self.domain = domain
        self.user = user
        self.buffer = b""
        self.arrived: dict[str, float] = {}
        self.messages = 0
        self.firstAt: float | None = None
        self.lastAt: float | None = None
        self._changed = asyncio.Event()

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        header = (
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
            f" to='{self.domain}' version='1.0'>"
        ).encode()
        self.writer.write(header)
        await self._until(b"</stream:features>")
        plain = base64.b64encode(f"\0{self.user}\0{PASSWORD}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>".encode())
        await self._until(b"<success")
        self.buffer = b""
        self.writer.write(header)
        await self._until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>")
        await self._until(b"</iq>")
        self.writer.write(b"<presence/>")
        self.buffer = b""
        self._task = asyncio.ensure_future(self._read())

    async def _until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            data = await asyncio.wait_for(self.reader.read(65536), 30)
            if not data:
                raise RuntimeError(f"{self.user}: connection closed: {self.buffer[-300:]!r}")
            self.buffer += data

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            now = time.monotonic()
            self.buffer += data
            for stanzaId in re.findall(rb"<message[^>]* id='([^']+)'", self.buffer):
                self.arrived.setdefault(stanzaId.decode(), now)
            count = len(re.findall(rb"<body>", self.buffer))
            if count:
                self.messages += count
                self.firstAt = self.firstAt or now
                self.lastAt = now
            self.buffer = self.buffer[self.buffer.rfind(b">") + 1 :]
            self._changed.set()

    async def waitFor(self, stanzaId: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while stanzaId not in self.arrived:
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return None
        return self.arrived[stanzaId]

    def message(self, to: str, stanzaId: str, body: str = "x") -> bytes:
        return f"<message to='{to}@{self.domain}' type='chat' id='{stanzaId}'><body>{body}</body></message>".encode()


async def scenario(args: argparse.Namespace, gw: SpawnedGateway) -> dict[str, Any]:
    domain = gw.domain
    assert domain is not None and gw.xmppPort is not None
    a, b, flooder, sink = (Client(domain, f"pipe{i}") for i in range(4))
    for c in (a, b, flooder, sink):
        await c.connect(gw.xmppPort)
    rssBefore = rssKiB(gw.pid)

    async def echo() -> None:
        # b answers each canary message at once.
        seen: set[str] = set()
        while True:
            await b._changed.wait()
            b._changed.clear()
            for stanzaId in list(b.arrived):
                if stanzaId.startswith("c") and stanzaId not in seen:
                    seen.add(stanzaId)
                    b.writer.write(b.message("pipe0", "r" + stanzaId[1:]))

    echoTask = asyncio.ensure_future(echo())
    rtts: list[float] = []
    floodAt: float | None = None
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.duration:
        if floodAt is None and time.monotonic() - start >= 1.0:
            flooder.writer.write(b"".join(flooder.message("pipe3", f"f{n}") for n in range(args.flood)))
            floodAt = time.monotonic()
            info(f"flood: {args.flood} stanzas written in one write")
        sent = time.monotonic()
        a.writer.write(a.message("pipe1", f"c{i}"))
        got = await a.waitFor(f"r{i}", 5.0)
        if got is not None:
            rtts.append((got - sent) * 1000)
        i += 1
        await asyncio.sleep(args.interval)
    echoTask.cancel()
    # Let the flood finish (or not), within a bound.
    deadline = time.monotonic() + args.drain
    while sink.messages < args.flood and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    rssAfter = rssKiB(gw.pid)
    for c in (a, b, flooder, sink):
        c.writer.close()
    rtts.sort()
    handled = sink.messages
    span = (sink.lastAt - floodAt) if sink.lastAt is not None and floodAt is not None else None
    return {
        "bench": "xmpp_pipelined",
        "flood": args.flood,
        "stanzas_per_second": args.stanzas_per_second,
        "stanza_burst": args.stanza_burst,
        "canary_round_trips": len(rtts),
        "canary_lost": i - len(rtts),
        "canary_rtt_p50_ms": round(statistics.median(rtts), 2) if rtts else None,
        "canary_rtt_p99_ms": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 2) if rtts else None,
        "canary_rtt_max_ms": round(rtts[-1], 2) if rtts else None,
        "flood_delivered": handled,
        "flood_span_s": round(span, 2) if span is not None else None,
        "flood_rate_per_s": round((handled - args.stanza_burst) / span, 1) if span and handled > args.stanza_burst else None,
        "rss_before_kib": rssBefore,
        "rss_after_kib": rssAfter,
    }


def parseArgs(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--flood", type=int, default=1000, help="stanzas in the one write (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of canary traffic (default 10)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between canary round trips (default 0.1: within the canary's own rate limit)")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the flood to be handled (default 60)")
    p.add_argument("--stanzas-per-second", type=float, default=20.0)
    p.add_argument("--stanza-burst", type=int, default=50)
    p.add_argument("--stanza-queue", type=int, default=1000)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parseArgs(argv)
    interruptOnSigterm()
    gw = SpawnedGateway(xmpp=True)
    try:
        text = gw.config.read_text(encoding="utf-8")
        text = _setKey(text, "xmpp", "stanzas_per_second", repr(args.stanzas_per_second))
        text = _setKey(text, "xmpp", "stanza_burst", str(args.stanza_burst))
        text = _setKey(text, "xmpp", "stanza_queue", str(args.stanza_queue))
        gw.config.write_text(text, encoding="utf-8")
        gw.createUsers("pipe", 0, 4, PASSWORD)
        gw.start()
        info(f"gateway up (pid {gw.pid}), XMPP on {gw.xmppPort}")
        result = asyncio.run(scenario(args, gw))
    finally:
        gw.stop()
    print(json.dumps(result), flush=True)
    info(
        f"canary p50 {result['canary_rtt_p50_ms']} ms, p99 {result['canary_rtt_p99_ms']} ms over "
        f"{result['canary_round_trips']} round trips; flood: {result['flood_delivered']}/{args.flood} delivered "
        f"in {result['flood_span_s']} s; RSS {result['rss_before_kib']} -> {result['rss_after_kib']} KiB"
    )


if __name__ == "__main__":
    main()
