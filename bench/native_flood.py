"""
A hostile run on the native face: K flooders each pipeline MESSAGE frames in
large writes (C{--batch} frames per write, as fast as the server takes
them) while a canary pair exchanges one message at a time. Prints one JSON
line: the canary's round-trip p50/p99/max before and during the flood, the
messages the flood got delivered per second, the 429 answers it got, and
the server's CPU time and RSS. This is a benchmark, not a test: nothing
asserts a time.

    .venv/bin/python bench/native_flood.py --flooders 4 --duration 20

The gateway is spawned as by C{bench/native_load.py} (L{bench._gateway}),
but with the configured request rate (C{requests_per_second},
C{request_burst}: C{--rate}, C{--burst}; the template's defaults unless
given) rather than the raised limits other benchmarks use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import tomllib
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import SpawnedGateway, _setKey  # noqa: E402
from imgateway.adapters.native.framing import FrameParser, Request, Response  # noqa: E402

PASSWORD = "bench-pw"


def frame(method: str, target: str, seq: int, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} IMGW/1.0", f"Seq: {seq}", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Client:
    """
    A raw native connection: answers the server's requests with 200, and
    keeps the responses to its own.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = FrameParser()
        self.waiting: dict[int, asyncio.Future[Response]] = {}
        self.codes: dict[int, int] = {}
        self.delivered = 0
        self.seq = 0
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def login(cls, port: int, user: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        c = cls(reader, writer)
        r = await c.call("AUTH", "*", [("Mechanism", "PLAIN")], b"\0" + user.encode() + b"\0" + PASSWORD.encode())
        assert r.code == 200, r
        r = await c.call("PUBLISH", "*", [("Presence", "online")])
        assert r.code == 200, r
        return c

    async def _read(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            answers = []
            for item in self.parser.feed(data):
                if isinstance(item, Request):
                    if item.method == "MESSAGE":
                        self.delivered += 1
                    answers.append(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % item.seq)
                elif isinstance(item, Response):
                    self.codes[item.code] = self.codes.get(item.code, 0) + 1
                    f = self.waiting.pop(item.seq, None)
                    if f is not None and not f.done():
                        f.set_result(item)
            if answers:
                self.writer.write(b"".join(answers))

    def call(self, method: str, target: str, headers: list[tuple[str, str]] = [], body: bytes = b"") -> asyncio.Future[Response]:  # noqa: B006
        self.seq += 1
        f: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = f
        self.writer.write(frame(method, target, self.seq, headers, body))
        return f


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rssMiB(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 2),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


async def canary(sender: Client, to: str, until: float, interval: float) -> list[float]:
    rtts = []
    while time.monotonic() < until:
        t = time.monotonic()
        r = await sender.call("MESSAGE", f"im:{to}", [], b"canary")
        rtts.append(time.monotonic() - t)
        assert r.code == 200, r
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))
    return rtts


async def flood(c: Client, to: str, batch: int, until: float) -> int:
    """
    Write C{batch} MESSAGE frames at a time whenever the socket takes
    them, until C{until}; then drop the connection (what the server has not
    read by then is never handled).

    @return: The frames written.
    """
    sent = 0
    try:
        while time.monotonic() < until:
            c.writer.write(b"".join(frame("MESSAGE", f"im:{to}", c.seq + i + 1, [], b"flood") for i in range(batch)))
            c.seq += batch
            sent += batch
            await asyncio.wait_for(c.writer.drain(), max(0.001, until - time.monotonic()))
    except asyncio.TimeoutError:
        pass
    c.writer.transport.abort()
    return sent


async def run(args: argparse.Namespace, gw: SpawnedGateway, domain: str) -> dict[str, object]:
    users = [f"bench{i}@{domain}" for i in range(3 + args.flooders)]
    a, b, sink = [await Client.login(gw.port, u) for u in users[:3]]
    flooders = [await Client.login(gw.port, u) for u in users[3:]]
    pid = gw.pid
    assert pid is not None
    calm = await canary(a, users[1], time.monotonic() + args.calm, args.interval)
    cpu0, rss0, t0 = cpuSeconds(pid), rssMiB(pid), time.monotonic()
    until = t0 + args.duration
    tasks = [asyncio.ensure_future(flood(f, users[2], args.batch, until)) for f in flooders]
    during = await canary(a, users[1], until, args.interval)
    sent = sum(await asyncio.gather(*tasks))
    elapsed = time.monotonic() - t0
    cpu1, rss1 = cpuSeconds(pid), rssMiB(pid)
    codes: dict[int, int] = {}
    for f in flooders:
        for code, n in f.codes.items():
            codes[code] = codes.get(code, 0) + n
    return {
        "flooders": args.flooders,
        "batch": args.batch,
        "rate": args.rate,
        "burst": args.burst,
        "duration_s": round(elapsed, 1),
        "canary_calm": percentiles(calm),
        "canary_flood": percentiles(during),
        "canary_samples": len(during),
        "flood_frames_written": sent,
        "flood_answers": codes,
        "flood_delivered_per_s": round(sink.delivered / elapsed, 1),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "rss_mib_before": round(rss0, 1),
        "rss_mib_after": round(rss1, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flooders", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000, help="MESSAGE frames per write")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--calm", type=float, default=3.0, help="seconds of canary alone first")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between canary messages")
    p.add_argument("--rate", type=float, default=None, help="requests_per_second (default: the template's)")
    p.add_argument("--burst", type=int, default=None, help="request_burst (default: the template's)")
    p.add_argument("--keep", action="store_true", help="keep the gateway's folder (config, log)")
    args = p.parse_args()
    gw = SpawnedGateway(keep=args.keep)
    try:
        native = tomllib.loads(gw.template.read_text(encoding="utf-8")).get("native", {})
        args.rate = args.rate if args.rate is not None else native.get("requests_per_second", 20)
        args.burst = args.burst if args.burst is not None else native.get("request_burst", 50)
        text = gw.config.read_text(encoding="utf-8")
        text = _setKey(text, "native", "requests_per_second", str(args.rate))
        text = _setKey(text, "native", "request_burst", str(args.burst))
        gw.config.write_text(text, encoding="utf-8")
        gw.createUsers("bench", 0, 3 + args.flooders, PASSWORD)
        with gw:
            result = asyncio.run(run(args, gw, gw.domain or "corp.example"))
        if args.keep:
            result["folder"] = str(gw.folder)
    finally:
        gw.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
