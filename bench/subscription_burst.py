"""
A subscription burst on the native protocol: N users each ask to see every
other user's presence at once (N * (N - 1) requests, as a roster import
does), and authorise each request as it arrives. Prints one JSON line: the
time until every user's contact list says C{both} for every other user, the
requests answered with an error (and retried), and the server's CPU time and
RSS before, at the end, and after every client has gone. This is a
benchmark, not a test: nothing asserts a time.

    .venv/bin/python bench/subscription_burst.py                 # 50 users, spawns a gateway
    .venv/bin/python bench/subscription_burst.py --users 20 --keep

The gateway is started as L{bench._gateway.SpawnedGateway} does (its flood
limits raised, so that the figures measure the home server and its store,
not the rate limiter). The clients are L{imgateway.client.protocol}
connections in this process, on Twisted's reactor.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    # Run as a script (python bench/subscription_burst.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from bench._gateway import REPO, GatewayError, SpawnedGateway, _setKey, interruptedStatus, interruptOnSigterm
from bench._proc import procCpuS, procRssKb
from imgateway import __version__
from imgateway.core.address import Address

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

PASSWORD = "bench-pw"


def info(text: str) -> None:
    print(f"subscription_burst: {text}", file=sys.stderr, flush=True)


def sample(pid: int | None) -> dict[str, Any]:
    """
    The server's CPU time (s) and RSS (MiB) now.
    """
    rss = procRssKb(pid)
    return {"cpu_s": procCpuS(pid), "rss_mib": round(rss / 1024, 1) if rss is not None else None}


@attrs.frozen
class Target:
    """
    The gateway a burst is fired at.

    @ivar port: Its native face's port on 127.0.0.1.
    @ivar domain: The domain it serves.
    @ivar pid: Its process (for CPU and RSS), if known.
    @ivar process: The process itself, if this benchmark spawned it (for
        C{--stop-early}).
    """

    port: int
    domain: str | None
    pid: int | None
    process: Any = None

    @classmethod
    def of(cls, gateway: SpawnedGateway) -> Target:
        return cls(gateway.port, gateway.domain, gateway.pid, gateway.process)


def run(
    reactor: Any,
    args: argparse.Namespace,
    gateway: Target,
    beforeFiring: Callable[[], Deferred[Any]] | None = None,
    onFired: Callable[[], None] | None = None,
    onDone: Callable[[], None] | None = None,
) -> Deferred[Any]:
    """
    Log the users in, fire the burst, wait until done; runs inside the
    reactor (see L{main}).

    @param beforeFiring: Called once every user is logged in; the burst
        fires when its result does (the hostile benchmark opens its
        measuring window then).
    @param onFired: Called as the burst fires.
    @param onDone: Called when every user's list is complete (or the
        burst timed out), before the users log out.
    """
    from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
    from twisted.internet.task import deferLater

    from imgateway.client.protocol import ClientObserver, NativeClientProtocol, connect

    n = args.users
    m = n - args.offline
    wanted = m * (m - 1)
    requests = m * (n - 1)
    domain = gateway.domain or "corp.example"
    names = [f"{args.prefix}{i}" for i in range(n)]
    addresses = [Address.fromParts(name, domain) for name in names]
    # Users log in from these loopback addresses in turn (each is a source
    # of its own for the gateway's per-source limits).
    sources: list[str] = getattr(args, "sources", None) or ["127.0.0.1"]

    def endpoint(i: int) -> str:
        return f"tcp:127.0.0.1:{gateway.port}:bindAddress={sources[i % len(sources)]}"
    result: dict[str, Any] = {
        "bench": "subscription_burst",
        "version": __version__,
        "users": n,
        "offline_users": args.offline,
        "requests": requests,
        "mutual_wanted": wanted,
    }
    errors: dict[str, int] = {}
    retries = [0]
    done: Deferred[None] = Deferred()
    # Per user: contact address -> subscription, as the contact NOTIFYs say.
    seen: list[dict[str, str]] = [{} for _ in range(n)]
    complete = [0]
    answered = [0]
    protocols: list[NativeClientProtocol] = []

    def failed(kind: str, f: Any) -> None:
        text = getattr(f.value, "code", None) or type(f.value).__name__
        key = f"{kind}:{text}"
        errors[key] = errors.get(key, 0) + 1

    def withRetries(kind: str, call: Any, attempt: int = 0) -> Deferred[Any]:
        d: Deferred[Any] = call()

        def again(f: Any) -> Any:
            failed(kind, f)
            if attempt >= args.max_retries or done.called or args.stop_early is not None:
                return None
            retries[0] += 1
            return deferLater(reactor, min(0.1 * 2**attempt, 5.0), withRetries, kind, call, attempt + 1)

        return d.addErrback(again)

    class Observer(ClientObserver):
        def __init__(self, index: int) -> None:
            self.index = index

        def subscriptionReceived(self, address: Address, kind: str) -> None:
            if kind == "subscribe":
                proto = protocols[self.index]
                withRetries("AUTHORISE", lambda: proto.authorise(address, True))

        def contactUpdated(self, contact: dict[str, Any]) -> None:
            mine = seen[self.index]
            before = mine.get(contact["address"]) == "both"
            mine[contact["address"]] = contact["subscription"]
            after = contact["subscription"] == "both"
            if after and not before:
                complete[0] += 1
            elif before and not after:
                complete[0] -= 1
            check()

    def check() -> None:
        if complete[0] == wanted and answered[0] == requests and not done.called:
            done.callback(None)

    def subscribed(_: Any) -> None:
        answered[0] += 1
        check()

    info(f"logging in {m} of {n} users")
    logins = [
        connect(reactor, endpoint(i), name, PASSWORD, Observer(i), label="burst") for i, name in enumerate(names[:m])
    ]
    d: Deferred[Any] = gatherResults(logins, consumeErrors=True)

    def loggedIn(protos: list[NativeClientProtocol]) -> Deferred[Any]:
        protocols.extend(protos)
        for proto in protocols:
            proto.requestTimeout = args.timeout
        if beforeFiring is not None:
            return beforeFiring().addCallback(lambda _: fire())
        return fire()

    def fire() -> Deferred[Any]:
        result["before"] = sample(gateway.pid)
        info(f"firing {requests} SUBSCRIBE requests")
        if onFired is not None:
            onFired()
        start = time.monotonic()
        for i, proto in enumerate(protocols):
            for j, other in enumerate(addresses):
                if i != j:
                    withRetries("SUBSCRIBE", lambda p=proto, o=other: p.subscribe(o)).addCallback(subscribed)
        if args.stop_early is not None:
            return deferLater(reactor, args.stop_early, stopGateway)
        def giveUp() -> None:
            if not done.called:
                done.errback(TimeoutError())

        timeout = reactor.callLater(args.timeout, giveUp)

        def finished(outcome: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            result["done"] = complete[0] == wanted and answered[0] == requests
            result["both"] = complete[0]
            result["answered"] = answered[0]
            result["seconds"] = round(time.monotonic() - start, 2)
            result["end"] = sample(gateway.pid)
            result["errors"] = errors
            result["retries"] = retries[0]
            if onDone is not None:
                onDone()
            return verify()

        return done.addBoth(finished)

    def stopGateway() -> Any:
        info(f"stopping the gateway (SIGTERM) with {answered[0]} of {requests} requests answered")
        process = gateway.process
        assert process is not None
        result["answered_before_stop"] = answered[0]
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()

        def poll() -> Any:
            if process.poll() is None and time.monotonic() - started < 30:
                return deferLater(reactor, 0.05, poll)
            result["stop_seconds"] = round(time.monotonic() - started, 2)
            result["answered"] = answered[0]
            result["errors"] = errors
            result["done"] = True
            return result

        return poll()

    def verify() -> Deferred[Any]:
        # What the server says, not what the NOTIFYs said (not with
        # --list-size: the answers are longer than the client reads).
        if args.list_size:
            return succeed(None)
        for proto in protocols:
            proto.requestTimeout = 30.0
        def counted(lists: list[Any]) -> None:
            burst = {str(a) for a in addresses}
            result["verified_both"] = sum(
                1
                for ok, body in lists
                if ok
                for c in body["contacts"]
                if c["subscription"] == "both" and c["address"] in burst
            )
            result["verify_failures"] = sum(1 for ok, _ in lists if not ok)

        return DeferredList([p.contacts() for p in protocols], consumeErrors=True).addCallback(counted)

    def leave(_: Any) -> Deferred[Any]:
        info("logging out")
        return DeferredList([p.bye() for p in protocols], consumeErrors=True)

    def settled(_: Any) -> Deferred[Any]:
        return deferLater(reactor, args.settle, lambda: None)

    def after(_: Any) -> dict[str, Any]:
        result["after"] = sample(gateway.pid)
        return result

    d.addCallback(loggedIn)
    if args.stop_early is not None:
        return d
    return d.addCallback(leave).addCallback(settled).addCallback(after)


def fillLists(path: Path, prefix: str, users: int, size: int, domain: str) -> None:
    """
    Give each user C{size} contacts on another domain, each authorised both
    ways, and C{size} access-list entries: long lists, as years of use
    leave them, for the home server to (not) read per event.
    """
    connection = sqlite3.connect(path)
    try:
        with connection:
            for i in range(users):
                me = f"{prefix}{i}@{domain}"
                others = [f"filler{k}@far{k % 97}.example" for k in range(size)]
                connection.executemany(
                    "INSERT OR IGNORE INTO contacts (owner, contact, display_name) VALUES (?, ?, '')",
                    [(me, o) for o in others],
                )
                connection.executemany(
                    "INSERT OR IGNORE INTO authorisations (target, watcher, state) VALUES (?, ?, 'authorised')",
                    [(me, o) for o in others] + [(o, me) for o in others],
                )
                connection.executemany(
                    "INSERT OR IGNORE INTO access (owner, entry, list) VALUES (?, ?, 'allow')",
                    [(me, f"friend{k}@far{k % 97}.example") for k in range(size)],
                )
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=50, help="users, each subscribing to all others (50)")
    parser.add_argument("--prefix", default="burst", help="account name prefix")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up (600)")
    parser.add_argument("--max-retries", type=int, default=20, help="retries of one failed request (20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the clients left (5)")
    parser.add_argument("--template", type=Path, default=None, help="configuration to copy (etc/imgateway.toml)")
    parser.add_argument("--keep", action="store_true", help="keep the gateway's folder (its log)")
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="keep the native face's request rate limits of the template (refusals are retried)",
    )
    parser.add_argument(
        "--stop-early",
        type=float,
        default=None,
        metavar="SECONDS",
        help="send the gateway SIGTERM this long after firing, and count what its log says as it stops",
    )
    parser.add_argument(
        "--list-size",
        type=int,
        default=0,
        metavar="N",
        help="first give each user N more contacts (authorised both ways) and N access entries",
    )
    parser.add_argument(
        "--offline", type=int, default=0, help="of the users, how many stay logged out (their requests stay pending)"
    )
    args = parser.parse_args(argv)
    interruptOnSigterm()

    from twisted.internet import reactor

    outcome: dict[str, Any] = {}
    try:
        # Kept until its log has been read after it stopped.
        gateway = SpawnedGateway(args.template, keep=True)
        if args.rate_limits:
            template = (args.template or REPO / "etc" / "imgateway.toml").read_text(encoding="utf-8")
            text = gateway.config.read_text(encoding="utf-8")
            for key in ("requests_per_second", "request_burst"):
                value = re.search(rf"^{key}\s*=\s*(\S+)", template, re.M)
                if value is not None:
                    text = _setKey(text, "native", key, value.group(1))
            gateway.config.write_text(text, encoding="utf-8")
        if args.list_size:
            # Room for the long lists within the quotas.
            text = gateway.config.read_text(encoding="utf-8")
            for key in ("max_contacts", "max_access_entries"):
                text = _setKey(text, "home", key, str(args.list_size + args.users + 10))
            gateway.config.write_text(text, encoding="utf-8")
        with gateway:
            gateway.createUsers(args.prefix, 0, args.users, PASSWORD)
            if args.list_size:
                info(f"giving each user {args.list_size} more contacts, watchers and access entries")
                gateway.stop()
                fillLists(gateway.folder / "data" / "home-hs1.sqlite3", args.prefix, args.users, args.list_size,
                          gateway.domain or "corp.example")
                gateway.start()
            info(f"gateway pid {gateway.pid} on port {gateway.port}, folder {gateway.folder}")

            def go() -> None:
                d = run(reactor, args, Target.of(gateway))
                d.addCallback(outcome.update)
                d.addErrback(lambda f: outcome.update(error=f.getErrorMessage() or repr(f.value)))
                d.addBoth(lambda _: reactor.stop())

            reactor.callWhenRunning(go)
            reactor.run()
        status = gateway.stop()
        log = gateway.log.read_text(encoding="utf-8", errors="replace") if gateway.log.exists() else ""
        outcome["exit_status"] = status
        outcome["log_errors"] = log.count("Traceback (most recent call last)") + log.count("Unhandled Error")
        outcome["log_database_closed"] = log.count("the database is closed")
        if not args.keep:
            shutil.rmtree(gateway.folder, ignore_errors=True)
    except GatewayError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    except KeyboardInterrupt:
        return interruptedStatus()
    print(json.dumps(outcome))
    return 0 if outcome.get("done") else 1


if __name__ == "__main__":
    sys.exit(main())
