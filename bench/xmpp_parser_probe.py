"""
CPU cost of hostile XMPP input: the hardened XML stream
(L{imgateway.adapters.xmpp.stream.HardenedXmlStream}) against Twisted's
plain L{twisted.words.protocols.jabber.xmlstream.XmlStream}. Prints one
JSON line on standard output; progress goes to standard error. This is a
benchmark, not a test: nothing asserts a time.

    .venv/bin/python bench/xmpp_parser_probe.py                # about a minute
    .venv/bin/python bench/xmpp_parser_probe.py --slow         # adds the cases that take minutes unhardened
    .venv/bin/python bench/xmpp_parser_probe.py --case laughs5 --case newlines1m

Each case runs in a forked child (so a stalled parser can be killed after
C{--limit} seconds) on a L{StringTransport}, and reports the CPU time of
feeding it (C{time.process_time}) and what became of the input: accepted
(the stanza was dispatched), or the stream error / parser error that ended
the stream. The hardened stream runs after authentication with caps large
enough for each case's stanza unless the case says otherwise, so that the
figure is the parser's cost, not an early refusal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import pyexpat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/xmpp_parser_probe.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_ERROR_EVENT

from imgateway.adapters.xmpp.stream import HardenedXmlStream, StreamLimits

DECLARATION = b"<?xml version='1.0'?>"
OPEN = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='corp.example' version='1.0'>"
)
HEADER = DECLARATION + OPEN
KiB = 1024
MiB = 1024 * KiB

#: Large enough caps for every case, so the hardened figure is the cost of
#: parsing the input, not of refusing it early.
ROOMY = StreamLimits(stanzaBytes=64 * MiB, elements=1_000_000)


def billionLaughs(levels: int, fanout: int = 10) -> bytes:
    """
    A stream with C{levels} nested entities of C{fanout} each, used once.
    """
    entities = "<!ENTITY l0 'lol'>" + "".join(
        f"<!ENTITY l{i} '{f'&l{i - 1};' * fanout}'>" for i in range(1, levels + 1)
    )
    dtd = f"<!DOCTYPE stream:stream [{entities}]>".encode()
    return DECLARATION + dtd + OPEN + f"<message><body>&l{levels};</body></message>".encode()


def body(text: bytes) -> bytes:
    """
    A stream header and one message with C{text} as its body.
    """
    return HEADER + b"<message><body>" + text + b"</body></message>"


class Case:
    """
    One hostile input.

    @ivar data: The bytes, from the first byte of the stream.
    @ivar read: How many bytes each C{dataReceived} call gets.
    @ivar limits: The hardened stream's caps.
    @ivar authenticated: Whether the hardened stream is past authentication.
    @ivar slow: Whether the plain stream takes minutes (run with C{--slow}).
    @ivar note: What the case shows.
    """

    def __init__(self, data: Callable[[], bytes], read: int, note: str, limits: StreamLimits = ROOMY, authenticated: bool = True, slow: bool = False) -> None:
        self.data = data
        self.read = read
        self.note = note
        self.limits = limits
        self.authenticated = authenticated
        self.slow = slow


CASES: dict[str, Case] = {
    "newlines256k": Case(lambda: body(b"\n" * 256 * KiB), 64 * KiB, "body of 256 KiB of newlines"),
    "newlines1m": Case(lambda: body(b"\n" * MiB), 64 * KiB, "body of 1 MiB of newlines", slow=True),
    "newlines2m": Case(lambda: body(b"\n" * 2 * MiB), 64 * KiB, "body of 2 MiB of newlines", slow=True),
    "amp200k": Case(lambda: body(b"a&amp;" * 200_000), 64 * KiB, "1.2 MB of 'a&amp;'"),
    "text8m_1k": Case(lambda: body(b"A" * 8 * MiB), KiB, "8 MiB of text in 1 KiB reads"),
    "text256k_16b": Case(lambda: body(b"A" * 256 * KiB), 16, "256 KiB of text in 16-byte reads (the default post-auth cap)"),
    "laughs5": Case(lambda: billionLaughs(5), 64 * KiB, "billion laughs, 5 levels (10^5 expansions)"),
    "laughs6": Case(lambda: billionLaughs(6), 64 * KiB, "billion laughs, 6 levels", slow=True),
    "laughs9": Case(lambda: billionLaughs(9), 64 * KiB, "billion laughs, 9 levels", slow=True),
    "preauth60k": Case(
        lambda: body(b"x" * 60_000), 64 * KiB, "60 KB stanza in one read before authentication (default caps)",
        limits=StreamLimits(), authenticated=False,
    ),
    "elements200k": Case(
        lambda: HEADER + b"<message>" + b"<x/>" * 200_000 + b"</message>", 64 * KiB,
        "200k child elements, default post-auth caps", limits=StreamLimits(),
    ),
}


class _Authenticator(xmlstream.ListenAuthenticator):
    def streamStarted(self, rootElement: domish.Element) -> None:
        xmlstream.Authenticator.streamStarted(self, rootElement)
        assert self.xmlstream is not None
        self.xmlstream.namespace = rootElement.defaultUri
        self.xmlstream.sendHeader()


def _run(variant: str, name: str) -> dict[str, Any]:
    case = CASES[name]
    data = case.data()
    xs: Any
    if variant == "hardened":
        xs = HardenedXmlStream(_Authenticator(), case.limits, Clock())
    else:
        xs = xmlstream.XmlStream(_Authenticator())
    stanzas: list[domish.Element] = []
    errors: list[Failure] = []
    xs.addObserver("/message", stanzas.append)
    xs.addObserver(STREAM_ERROR_EVENT, errors.append)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    xs.makeConnection(transport)
    if variant == "hardened" and case.authenticated:
        xs.setAuthenticated()
    start = time.process_time()
    for i in range(0, len(data), case.read):
        if transport.disconnecting:
            break
        xs.dataReceived(data[i : i + case.read])
    cpu = time.process_time() - start
    if errors:
        e = errors[0].value
        outcome = f"stream error {e.condition}" if isinstance(e, error.StreamError) else f"{type(e).__name__}: {e}"
    elif stanzas:
        outcome = f"accepted ({len(str(stanzas[0].body or ''))} chars of body)"
    else:
        outcome = "nothing dispatched"
    return {"cpu_s": round(cpu, 3), "outcome": outcome[:120]}


def _child(conn: Any, variant: str, name: str) -> None:
    conn.send(_run(variant, name))


def measure(variant: str, name: str, limit: float) -> dict[str, Any]:
    """
    Run one case in a child process, killed after C{limit} seconds.
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, variant, name))
    process.start()
    if parent.poll(limit):
        result: dict[str, Any] = parent.recv()
    else:
        process.kill()
        result = {"cpu_s": None, "outcome": f"still parsing after {limit:g} s (killed)"}
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--slow", action="store_true", help="run the plain stream on the cases that take it minutes")
    parser.add_argument("--limit", type=float, default=60.0, help="kill a case after this many seconds (default 60)")
    options = parser.parse_args()
    names = options.case or list(CASES)
    results = []
    for name in names:
        case = CASES[name]
        row: dict[str, Any] = {"case": name, "note": case.note, "bytes": len(case.data()), "read": case.read}
        for variant in ("hardened", "plain"):
            if variant == "plain" and case.slow and not options.slow and not options.case:
                row[variant] = {"cpu_s": None, "outcome": "skipped (takes minutes; --slow)"}
                continue
            print(f"{name} {variant} ...", file=sys.stderr, flush=True)
            row[variant] = measure(variant, name, options.limit)
            print(f"  {row[variant]}", file=sys.stderr, flush=True)
        results.append(row)
    print(json.dumps({
        "bench": "xmpp_parser_probe",
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "expat": pyexpat.EXPAT_VERSION,
        "results": results,
    }))


if __name__ == "__main__":
    main()
