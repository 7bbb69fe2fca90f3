# -*- test-case-name: tests.test_locator -*-
"""
Which home server of this domain hosts a user, read from the directory and
remembered for a short while.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.address import Address
from imgateway.core.records import AccountRecord
from imgateway.interfaces import IDirectory, IHomeLocator

__all__ = ["DEFAULT_MAX_CACHED", "DirectoryHomeLocator"]

#: How many users' homes are remembered at most.
DEFAULT_MAX_CACHED = 100000


@implementer(IHomeLocator)
class DirectoryHomeLocator:
    """
    L{IHomeLocator} over an L{IDirectory}: each answer (an unknown user's
    C{None} too) is remembered for C{lifetime} seconds. Concurrent look-ups
    of one user share one directory read. A disabled account has no home:
    nothing is delivered to it.

    @ivar lifetime: Seconds an answer is remembered.
    """

    def __init__(
        self,
        directory: IDirectory,
        clock: IReactorTime,
        lifetime: float,
        maxCached: int = DEFAULT_MAX_CACHED,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self.lifetime = lifetime
        self._maxCached = maxCached
        self._cache: dict[Address, tuple[float, str | None]] = {}
        self._reading: dict[Address, list[Deferred[str | None]]] = {}

    def homeOf(self, address: Address) -> Deferred[str | None]:
        cached = self._cache.get(address)
        if cached is not None:
            if cached[0] > self._clock.seconds():
                return succeed(cached[1])
            del self._cache[address]
        waiting = self._reading.get(address)
        result: Deferred[str | None] = Deferred()
        if waiting is not None:
            waiting.append(result)
            return result
        self._reading[address] = [result]
        generation = self._reading[address]

        def read(record: AccountRecord | None) -> None:
            home = record.homeServer if record is not None and record.enabled else None
            if self._reading.get(address) is generation:
                del self._reading[address]
                if len(self._cache) >= self._maxCached:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[address] = (self._clock.seconds() + self.lifetime, home)
            for d in generation:
                d.callback(home)

        def failed(f: Failure) -> None:
            if self._reading.get(address) is generation:
                del self._reading[address]
            for d in generation:
                d.errback(f)

        self._directory.getAccount(address).addCallbacks(read, failed)
        return result

    def forget(self, address: Address) -> None:
        self._cache.pop(address, None)
        # A read under way may carry the old answer: let it answer its
        # callers, but not fill the cache.
        self._reading.pop(address, None)
