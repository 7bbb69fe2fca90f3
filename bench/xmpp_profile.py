# -*- test-case-name: tests.test_bench_xmpp_profile -*-
"""
Where the gateway's XMPP c2s face spends its CPU under C{bench/compare.py}'s
loads: a gateway started as C{compare.py} starts it (L{bench._peers}), but
under cProfile (C{twistd --profiler=cprofile}), driven by the same driver
with the same settings as C{compare.py --quick} (or without C{--quick}, the
full ones), then a breakdown of the profile per delivery.

    .venv/bin/python bench/xmpp_profile.py --tests msg --tests presence
    .venv/bin/python bench/xmpp_profile.py --tests msg --save /tmp/msg.prof   # keep the pstats file

The figures are the profiled process's: cProfile roughly triples the CPU per
delivery, and the profile covers the whole life of the gateway (start-up,
logins, the warm-up), so read the shares, not the microseconds, and compare
two profiles only from the same machine state. C{bench/README.md}, section
"XMPP c2s hot path", keeps the summaries.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python bench/xmpp_profile.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench._peers import startGateway

#: The hook each test's deliveries are counted by (calls to it in the
#: profile), in C{imgateway/adapters/xmpp/c2s.py}.
DELIVERY_HOOK = {"msg": "messageReceived", "presence": "presenceReceived"}

_Key = tuple[str, int, str]
_Stats = dict[_Key, tuple[int, int, float, float, object]]


def _own(stats: _Stats, match: Callable[[_Key], bool]) -> float:
    return sum(v[2] for k, v in stats.items() if match(k))


def _cumulative(stats: _Stats, fileEnd: str, function: str) -> float:
    return sum(v[3] for k, v in stats.items() if k[0].endswith(fileEnd) and k[2] == function)


def breakdown(stats: _Stats, hook: str) -> tuple[float, int, list[tuple[str, float]]]:
    """
    Break a profile down per delivery.

    @param stats: A L{pstats.Stats}' C{stats} dictionary.
    @param hook: The c2s method called once per delivery.
    @return: The busy seconds (all but C{epoll.poll}), the deliveries, and
        (what, seconds) for each part: own times by layer, and cumulative
        times of a few functions; parsing is the stream's C{dataReceived}
        less the handling of what it parsed (C{onElement}, which also
        delivers the message or presence).
    """
    total = sum(v[2] for v in stats.values())
    busy = total - _own(stats, lambda k: k[2] == "<method 'poll' of 'select.epoll' objects>")
    deliveries = sum(v[1] for k, v in stats.items() if k[0].endswith("xmpp/c2s.py") and k[2] == hook)
    parts = [
        ("Deferreds (own)", _own(stats, lambda k: k[0].endswith("internet/defer.py"))),
        ("domish: parse and build (own)", _own(stats, lambda k: k[0].endswith("xish/domish.py"))),
        ("expat (own)", _own(stats, lambda k: "pyexpat.xmlparser" in k[2])),
        ("XMPP adapter (own)", _own(stats, lambda k: "imgateway/adapters/xmpp/" in k[0])),
        ("core, home server, router (own)", _own(stats, lambda k: any(f"imgateway/{d}/" in k[0] for d in ("core", "home", "router")))),
        ("socket send, transport write", _own(stats, lambda k: "'send' of '_socket.socket'" in k[2] or k[0].endswith("internet/abstract.py"))),
        ("address normalisation (cum.)", _cumulative(stats, "core/address.py", "normaliseDomain") + _cumulative(stats, "core/address.py", "_normaliseLocal")),
        (f"c2s {hook} (cum.)", _cumulative(stats, "xmpp/c2s.py", hook)),
        ("router deliver (cum.)", _cumulative(stats, "router/router.py", "deliver")),
        ("router deliverAtOnce (cum.)", _cumulative(stats, "router/router.py", "deliverAtOnce")),
        (
            "parsing clients' stanzas (cum.)",
            _cumulative(stats, "xmpp/stream.py", "dataReceived") - _cumulative(stats, "xmpp/stream.py", "onElement"),
        ),
        ("c2s handling them (cum.)", _cumulative(stats, "xmpp/c2s.py", "_stanza")),
    ]
    return busy, deliveries, parts


def report(path: Path, test: str) -> str:
    """
    @return: The breakdown of the profile at C{path} as text.
    """
    hook = DELIVERY_HOOK[test]
    busy, deliveries, parts = breakdown(pstats.Stats(str(path)).stats, hook)  # type: ignore[attr-defined]
    per = 1e6 / deliveries if deliveries else 0.0
    lines = [f"{test}: {busy:.2f} s busy, {deliveries} deliveries, {busy * per:.0f} µs busy per delivery (profiled)"]
    for what, seconds in parts:
        lines.append(f"  {what:34s} {seconds * per:7.1f} µs {100 * seconds / busy if busy else 0.0:5.1f} %")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench/xmpp_profile.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tests", action="append", default=[], choices=sorted(DELIVERY_HOOK), help="loads to profile (repeatable; default both)")
    p.add_argument("--full", action="store_true", help="compare.py's full settings (default: those of --quick)")
    p.add_argument("--save", type=Path, default=None, help="also keep the pstats file (with one test only)")
    args = p.parse_args(argv)
    tests = args.tests or sorted(DELIVERY_HOOK)
    s = compare.settings(compare.parseArgs([] if args.full else ["--quick"]))
    with tempfile.TemporaryDirectory(prefix="imgw-profile-") as folder:
        for test in tests:
            out = args.save if args.save is not None and len(tests) == 1 else Path(folder) / f"{test}.prof"
            provision, _ = compare.provisions(s, [test])
            server = startGateway("xmpp", provision, twistdOptions=["--profiler=cprofile", "--savestats", f"--profile={out}"])
            try:
                for name, driverTest, extra, procs in compare.plannedRuns(s, [test], None):
                    result = compare.driver(server, s, driverTest, extra, procs, timeout=900)
                    print(f"[profile] {name}: {compare.brief(result)}", file=sys.stderr, flush=True)
            finally:
                server.stop()  # the profile is written when twistd stops
            print(report(out, test), flush=True)


if __name__ == "__main__":
    main()
