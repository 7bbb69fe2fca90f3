# -*- test-case-name: tests.test_events -*-
"""
A token bucket, the one rate limiter every face uses.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

__all__ = ["TokenBucket"]


class TokenBucket:
    """
    Allows C{rate} events per second on average, and bursts of up to
    C{burst} events.

    @ivar rate: Tokens added per second.
    @ivar burst: The most tokens the bucket holds.
    """

    # No instance dict: one per connection (and per source, per account).
    __slots__ = ("rate", "burst", "_clock", "_tokens", "_last")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def consume(self, tokens: float = 1.0) -> bool:
        """
        Take C{tokens} if the bucket holds that many.

        @return: Whether they were taken (the event is allowed).
        """
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def retryAfter(self, tokens: float = 1.0) -> float:
        """
        @return: Seconds until C{tokens} will be available.
        """
        self._refill()
        return max(0.0, (tokens - self._tokens) / self.rate)
