# -*- test-case-name: tests.test_throttle -*-
"""
Limits per source address, shared by every face of the gateway: a built-in
fail2ban for password guessing (L{LoginThrottle}), and a cap on the
connections one address may hold open before logging in and on how fast it
may open them (L{ConnectionLimiter}).

A source is an IPv4 address, or the /64 network of an IPv6 address (one
host commonly holds a whole /64); see L{imgateway.net.addresses.sourceOf}. Every table here is
capped in size and forgets what has expired, so an attacker with many
addresses costs bounded memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imgateway.core.errors import AuthenticationFailed
from imgateway.core.ratelimit import TokenBucket
from imgateway.net.addresses import sourceOf

__all__ = [
    "Admission",
    "ConnectionLimiter",
    "LimitsConfig",
    "LoginThrottle",
    "LoginThrottled",
]

log = Logger()

#: Seconds between two log lines about refused connections from one source
#: (the refusals in between are counted in the next line).
REFUSAL_LOG_INTERVAL = 10.0


@frozen
class LimitsConfig:
    """
    The C{[limits]} table; see C{etc/imgateway.toml} for each key.

    @ivar loginFailuresPerAddress: Failed logins from one source, whatever
        the account, within C{loginFailureWindow}, that block that source.
    @ivar addressBlockSeconds: How long such a block lasts.
    @ivar loginFailuresPerAccount: Failed logins from one source for one
        account within C{loginFailureWindow} that block that pair.
    @ivar accountBlockSeconds: How long such a block lasts.
    @ivar loginFailureWindow: Seconds a failed login counts for.
    @ivar maxUnauthenticatedPerAddress: Connections from one source that
        have not logged in yet, on all faces together.
    @ivar connectionsPerSecondPerAddress: New connections per second from
        one source (a token bucket, all faces together)...
    @ivar connectionBurstPerAddress: ...with bursts of up to this many.
    @ivar maxTrackedSources: Entries each table holds at most (the least
        recently used go first).
    """

    loginFailuresPerAddress: int = 20
    addressBlockSeconds: float = 3600.0
    loginFailuresPerAccount: int = 5
    accountBlockSeconds: float = 300.0
    loginFailureWindow: float = 600.0
    maxUnauthenticatedPerAddress: int = 32
    connectionsPerSecondPerAddress: float = 10.0
    connectionBurstPerAddress: int = 100
    maxTrackedSources: int = 100000


def _retryAfter(seconds: float) -> int:
    """
    Seconds to announce to a client: a whole number, at least 1.
    """
    return max(1, math.ceil(seconds))


class LoginThrottled(AuthenticationFailed):
    """
    A login was refused without checking its credentials: its source (or
    that source for that account) failed too often lately.

    @ivar retryAfter: Seconds until the block ends (a whole number, at
        least 1).
    """

    def __init__(self, retryAfter: float) -> None:
        self.retryAfter = _retryAfter(retryAfter)
        super().__init__(f"too many failed logins; try again in {self.retryAfter} s")


@define
class _Failures:
    count: int
    windowStart: float
    blockedUntil: float = 0.0


class _FailureTable:
    """
    Failures per key within a window, and the blocks they caused, in an
    LRU table of at most C{maxEntries} keys.
    """

    def __init__(self, limit: int, window: float, block: float, maxEntries: int, clock: IReactorTime) -> None:
        self.limit = limit
        self.window = window
        self.block = block
        self.maxEntries = maxEntries
        self._clock = clock
        self._entries: OrderedDict[object, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expired(self, entry: _Failures, now: float) -> bool:
        return now >= entry.blockedUntil and now - entry.windowStart >= self.window

    def _prune(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if not self._expired(entry, now):
                break
            del entries[key]

    def blockedFor(self, key: object) -> float:
        """
        @return: Seconds until C{key}'s block ends; 0 if it is not blocked.
        """
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.blockedUntil - self._clock.seconds())

    def failed(self, key: object) -> bool:
        """
        Count a failure of C{key}.

        @return: Whether it made C{key} blocked.
        """
        now = self._clock.seconds()
        self._prune(now)
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.windowStart >= self.window:
            entry = _Failures(0, now, entry.blockedUntil if entry is not None else 0.0)
        entry.count += 1
        blocked = entry.count >= self.limit
        if blocked:
            entry.blockedUntil = now + self.block
            entry.count = 0
            entry.windowStart = now
        self._entries[key] = entry
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)
        return blocked

    def clear(self, key: object) -> None:
        """
        Forget C{key}'s failures, unless it is blocked.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.blockedUntil <= self._clock.seconds():
            del self._entries[key]


def _uncounted(limit: str) -> None:
    pass


class LoginThrottle:
    """
    Refuses logins, without checking them, from sources that failed too
    often: past C{loginFailuresPerAddress} failures within
    C{loginFailureWindow} seconds, every login from that source is refused
    for C{addressBlockSeconds}; past C{loginFailuresPerAccount} failures of
    one account from one source, logins to that account from that source
    are refused for C{accountBlockSeconds}. The same user logging in from
    another source is never affected.

    Unknown accounts count as known ones do, so a refusal never tells
    whether an account exists. Every refusal is logged with the source and
    the account, and counted by L{countLimit}.

    @ivar countLimit: Called with the limit's key at each refusal (the
        gateway's L{imgateway.interfaces.IMetrics.limitHit}).
    """

    def __init__(self, config: LimitsConfig, clock: IReactorTime) -> None:
        """
        @param config: The limits.
        @param clock: Tells the time.
        """
        self.config = config
        self._clock = clock
        self.countLimit: Callable[[str], None] = _uncounted
        self._sources = _FailureTable(
            config.loginFailuresPerAddress,
            config.loginFailureWindow,
            config.addressBlockSeconds,
            config.maxTrackedSources,
            clock,
        )
        self._accounts = _FailureTable(
            config.loginFailuresPerAccount,
            config.loginFailureWindow,
            config.accountBlockSeconds,
            config.maxTrackedSources,
            clock,
        )

    def check(self, source: str | None, account: str) -> None:
        """
        Refuse a login attempt that is blocked (and log the refusal).

        @param source: The client's L{sourceOf}, or C{None} (never
            throttled).
        @param account: The account the client names (a normalised
            address).
        @raise LoginThrottled: If the source, or the source for this
            account, is blocked.
        """
        if source is None:
            return
        wait = self._sources.blockedFor(source)
        key = "login_failures_per_address"
        if not wait:
            wait = self._accounts.blockedFor((source, account))
            key = "login_failures_per_account"
        if wait:
            self.countLimit(key)
            refusal = LoginThrottled(wait)
            log.warn(
                "Refused a login from {source} as {account} without checking it: too many failed"
                " logins ({key}); blocked for {seconds} s more",
                source=source,
                account=account,
                key=key,
                seconds=refusal.retryAfter,
            )
            raise refusal

    def failed(self, source: str | None, account: str) -> None:
        """
        Count a failed login (wrong password or unknown account).
        """
        if source is None:
            return
        if self._sources.failed(source):
            log.warn(
                "Blocking logins from {source} for {seconds} s: {n} failed logins within {window} s"
                " (login_failures_per_address)",
                source=source,
                seconds=self.config.addressBlockSeconds,
                n=self.config.loginFailuresPerAddress,
                window=self.config.loginFailureWindow,
            )
        if self._accounts.failed((source, account)):
            log.warn(
                "Blocking logins from {source} as {account} for {seconds} s: {n} failed logins within"
                " {window} s (login_failures_per_account)",
                source=source,
                account=account,
                seconds=self.config.accountBlockSeconds,
                n=self.config.loginFailuresPerAccount,
                window=self.config.loginFailureWindow,
            )

    def succeeded(self, source: str | None, account: str) -> None:
        """
        A login succeeded: forget that pair's failures (those of the source
        still count).
        """
        if source is not None:
            self._accounts.clear((source, account))

    @property
    def tracked(self) -> tuple[int, int]:
        """
        How many sources and (source, account) pairs are remembered.
        """
        return len(self._sources), len(self._accounts)


@define
class Admission:
    """
    The outcome of L{ConnectionLimiter.admit} for one connection.

    @ivar admitted: Whether the connection may stay. If it is not, the face
        closes it at once.
    @ivar reason: Why it was refused, for the client (no secrets).
    @ivar retryAfter: When refused for its rate, seconds until the source
        may connect again.
    @ivar source: The connection's source.
    """

    admitted: bool
    reason: str = ""
    retryAfter: int | None = None
    source: str | None = None
    _limiter: ConnectionLimiter | None = None

    def release(self) -> None:
        """
        The connection logged in, timed out or closed: it no longer holds
        one of its source's unauthenticated slots. Idempotent.
        """
        limiter, self._limiter = self._limiter, None
        if limiter is not None and self.source is not None:
            limiter._release(self.source)


class ConnectionLimiter:
    """
    Caps, per source and across every face, the connections not yet logged
    in (C{maxUnauthenticatedPerAddress}) and the rate of new connections
    (C{connectionsPerSecondPerAddress}, C{connectionBurstPerAddress}).

    A face calls L{admit} as a connection opens, closes it at once if it is
    not admitted, and calls L{Admission.release} once it has logged in, has
    timed out, or has closed.

    @ivar countLimit: Called with the limit's key (the end of a refusal's
        C{why}, in brackets) at each refusal (the gateway's
        L{imgateway.interfaces.IMetrics.limitHit}).
    """

    def __init__(self, config: LimitsConfig, clock: IReactorTime) -> None:
        self.config = config
        self._clock = clock
        self.countLimit: Callable[[str], None] = _uncounted
        self._unauthenticated: dict[str, int] = {}
        self._buckets: OrderedDict[str, tuple[TokenBucket, float]] = OrderedDict()
        self._refusals: OrderedDict[str | tuple[str, str], tuple[float, int]] = OrderedDict()
        # A bucket untouched this long is full again: as good as new.
        self._refill = config.connectionBurstPerAddress / config.connectionsPerSecondPerAddress

    def unauthenticated(self, source: str) -> int:
        """
        @return: The connections from C{source} that are admitted and not
            yet released.
        """
        return self._unauthenticated.get(source, 0)

    @property
    def tracked(self) -> int:
        """
        How many sources have a rate bucket.
        """
        return len(self._buckets)

    def admit(self, peer: object, face: str) -> Admission:
        """
        Decide whether a new connection may stay.

        @param peer: The transport's C{getPeer()}.
        @param face: Names the face in logs (C{"native"}, C{"XMPP c2s"}).
        @return: The L{Admission}; when admitted, it holds one of the
            source's unauthenticated slots until released.
        """
        source = sourceOf(peer)
        if source is None:
            return Admission(True)
        c = self.config
        now = self._clock.seconds()
        buckets = self._buckets
        while buckets:
            key, (_, last) = next(iter(buckets.items()))
            if now - last < self._refill:
                break
            del buckets[key]
        bucket, _ = buckets.pop(source, (None, 0.0))
        if bucket is None:
            bucket = TokenBucket(c.connectionsPerSecondPerAddress, c.connectionBurstPerAddress, self._clock)
        buckets[source] = (bucket, now)
        while len(buckets) > c.maxTrackedSources:
            buckets.popitem(last=False)
        if not bucket.consume():
            wait = _retryAfter(bucket.retryAfter())
            self._refused(source, source, peer, face, f"more than {c.connectionsPerSecondPerAddress:g} connections/s (connections_per_second_per_address)")
            return Admission(False, "Too many connections from your address", wait, source)
        count = self._unauthenticated.get(source, 0)
        if count >= c.maxUnauthenticatedPerAddress:
            self._refused(source, source, peer, face, f"{count} connections waiting to log in (max_unauthenticated_per_address)")
            return Admission(False, "Too many connections from your address waiting to log in", None, source)
        self._unauthenticated[source] = count + 1
        return Admission(True, source=source, limiter=self)

    def _release(self, source: str) -> None:
        count = self._unauthenticated.get(source, 0) - 1
        if count > 0:
            self._unauthenticated[source] = count
        else:
            self._unauthenticated.pop(source, None)

    def refused(self, peer: object, face: str, why: str) -> None:
        """
        Log a connection that a face refused for a limit of its own, over
        every source (its C{max_unauthenticated}, say), as refusals for the
        per-source limits are logged: the first at once, then at most one
        line per face and limit every L{REFUSAL_LOG_INTERVAL} seconds,
        counting the others. A flood of refusals is a few lines.

        @param peer: The transport's C{getPeer()}.
        @param face: Names the face (C{"s2s"}).
        @param why: The limit, named by its configuration key.
        """
        self._refused((face, why), sourceOf(peer), peer, face, why)

    def _refused(self, key: str | tuple[str, str], source: str | None, peer: object, face: str, why: str) -> None:
        """
        Log a refusal: the first under C{key} (a source, or a face's own
        limit) at once, then at most one line every
        L{REFUSAL_LOG_INTERVAL} seconds, counting the others.
        """
        self.countLimit(why[why.rfind("(") + 1 : -1])
        now = self._clock.seconds()
        refusals = self._refusals
        while refusals:
            oldest, (since, quiet) = next(iter(refusals.items()))
            if now - since < REFUSAL_LOG_INTERVAL and len(refusals) <= self.config.maxTrackedSources:
                break
            del refusals[oldest]
            self._logQuiet(oldest, quiet)
        entry = refusals.get(key)
        if entry is not None:
            refusals[key] = (entry[0], entry[1] + 1)
            return
        refusals[key] = (now, 0)
        log.warn(
            "Refusing a {face} connection from {peer} (source {source}): {why}",
            face=face,
            peer=peer,
            source=source,
            why=why,
        )

    def _logQuiet(self, key: str | tuple[str, str], quiet: int) -> None:
        if not quiet:
            return
        if isinstance(key, tuple):
            log.warn("Refused {n} more {face} connections ({why})", n=quiet, face=key[0], why=key[1])
        else:
            log.warn("Refused {n} more connections from {source} (per-address limits)", n=quiet, source=key)
