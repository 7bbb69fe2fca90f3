# -*- test-case-name: tests.test_locator,tests.test_router,tests.test_proxy -*-
"""
Which home server of this domain hosts a user, read from the directory and
remembered for a short while; and what to do when a remembered answer has
gone stale (L{homeOfAuthenticated}, L{followMoves}).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Final, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.address import Address
from imgateway.core.errors import MovedTo
from imgateway.core.records import AccountRecord
from imgateway.interfaces import IDirectory, IHomeLocator

__all__ = [
    "DEFAULT_MAX_CACHED",
    "UNKNOWN",
    "DirectoryHomeLocator",
    "followMove",
    "followMoves",
    "homeOfAuthenticated",
    "knownHome",
]

T = TypeVar("T")

log = Logger()

#: How many users' homes are remembered at most.
DEFAULT_MAX_CACHED = 100000


class _Unknown(Enum):
    UNKNOWN = "unknown"


#: What L{knownHome} answers when the locator has nothing remembered.
UNKNOWN: Final = _Unknown.UNKNOWN


@implementer(IHomeLocator)
class DirectoryHomeLocator:
    """
    L{IHomeLocator} over an L{IDirectory}: each answer (an unknown user's
    C{None} too) is remembered for C{lifetime} seconds. Concurrent look-ups
    of one user share one directory read. A disabled account has no home:
    nothing is delivered to it.

    @ivar lifetime: Seconds an answer is remembered.
    @ivar clock: The clock the answers expire by (L{cachedHomesAt}'s
        C{now} is a reading of it).
    """

    def __init__(
        self,
        directory: IDirectory,
        clock: IReactorTime,
        lifetime: float,
        maxCached: int = DEFAULT_MAX_CACHED,
    ) -> None:
        self._directory = directory
        self._clock = self.clock = clock
        self.lifetime = lifetime
        self._maxCached = maxCached
        self._cache: dict[Address, tuple[float, str | None]] = {}
        self._reading: dict[Address, list[Deferred[str | None]]] = {}

    def cachedHomeOf(self, address: Address) -> str | None | _Unknown:
        """
        @return: The answer L{homeOf} would give at once, from what is
            remembered; L{UNKNOWN} when it would ask the directory.
        """
        cached = self._cache.get(address)
        if cached is not None and cached[0] > self._clock.seconds():
            return cached[1]
        return UNKNOWN

    def cachedHomesAt(self, now: float, first: Address, second: Address) -> tuple[str | None | _Unknown, str | None | _Unknown]:
        """
        L{cachedHomeOf} of two users, with a reading of L{clock} the caller
        made already: one call and no clock reading where two of each would
        answer the same (a home server's link: the sender's home for the
        origination rule, the recipient's for the router).

        @param now: L{clock}'s C{seconds()}.
        @return: The answers for C{first} and C{second}.
        """
        cache = self._cache
        one = cache.get(first)
        two = cache.get(second)
        return (
            one[1] if one is not None and one[0] > now else UNKNOWN,
            two[1] if two is not None and two[0] > now else UNKNOWN,
        )

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


def knownHome(locator: IHomeLocator, address: Address) -> str | None | _Unknown:
    """
    The home of C{address} when C{locator} has it remembered (a
    L{DirectoryHomeLocator}'s L{cachedHomeOf<DirectoryHomeLocator.cachedHomeOf>}),
    without a L{Deferred}: what runs for every event asks this first.

    @return: The answer C{locator.homeOf} would fire with at once, or
        L{UNKNOWN} (ask C{locator.homeOf}).
    """
    if type(locator) is DirectoryHomeLocator:
        return locator.cachedHomeOf(address)
    return UNKNOWN


def homeOfAuthenticated(locator: IHomeLocator, address: Address, server: str | None = None) -> Deferred[str | None]:
    """
    Where a user who has just authenticated is homed.

    Its account was there, and enabled, to authenticate against: an answer
    of the locator that it has no home is older than that (remembered from
    before the account was made, or from while it was disabled during a
    move), so it is forgotten and the directory asked again. So is an
    answer that names another server than C{server}, when given: a home
    server about to send a user away (or refuse it) asks the directory
    itself first. The directory is read only when the remembered answer is
    one of those.

    @param server: The name of the home server that asks, if it would act
        on an answer naming another one.
    @return: Fires with the name of its home server, or C{None} when the
        directory has none for it even now (the account was disabled or
        removed as it logged in); fails as C{locator.homeOf} does.
    """

    def checked(home: str | None) -> Deferred[str | None]:
        if home is not None and (server is None or home == server):
            return succeed(home)
        locator.forget(address)
        return locator.homeOf(address)

    return locator.homeOf(address).addCallback(checked)


def followMoves(
    locator: IHomeLocator,
    address: Address,
    attempt: Callable[[str | None], Deferred[T]],
    what: object,
    giveUp: Callable[[], Exception],
) -> Deferred[T]:
    """
    Do C{attempt} at the home server of C{address}, following one move.

    C{attempt} is called with what the locator says is the user's home
    server. When it fails with L{MovedTo} (that server no longer homes the
    user: the locator's answer was old), the answer is forgotten and
    C{attempt} called once more with the directory's new one; a second
    L{MovedTo} (the user moved again meanwhile) is logged as a warning and
    becomes C{giveUp()}.

    @param what: What is being done, for the log (formatted only if it is).
    @return: Fires as C{attempt} does; fails as C{locator.homeOf} does.
    """

    # No closure that calls itself (a reference cycle per call, left to the
    # garbage collector): this runs for every delivery to a user of the
    # domain. A remembered answer is used at once: no Deferred of it, and
    # none chained to it.
    home = knownHome(locator, address)
    if home is UNKNOWN:
        d = locator.homeOf(address).addCallback(attempt)
    else:
        try:
            d = attempt(home)
        except BaseException:
            d = fail()
    return d.addErrback(_moved, locator, address, attempt, what, giveUp, True)


def followMove(
    f: Failure,
    locator: IHomeLocator,
    address: Address,
    attempt: Callable[[str | None], Deferred[T]],
    what: object,
    giveUp: Callable[[], Exception],
) -> Deferred[T]:
    """
    What L{followMoves} does when its first C{attempt} fails with C{f}, for
    a caller that made that attempt itself (with the answer of
    L{knownHome}, its L{Deferred} handled in one errback of its own): on
    L{MovedTo}, forget the user's home and attempt once more, a second
    L{MovedTo} becoming C{giveUp()}; any other failure is returned as it
    is.

    @return: Fires as L{followMoves}' answer would after that failure.
    """
    if not f.check(MovedTo):
        return fail(f)
    return _moved(f, locator, address, attempt, what, giveUp, True)


def _moved(
    f: Failure,
    locator: IHomeLocator,
    address: Address,
    attempt: Callable[[str | None], Deferred[T]],
    what: object,
    giveUp: Callable[[], Exception],
    retry: bool,
) -> Deferred[T]:
    """
    L{followMoves}' answer to a failed C{attempt}: on L{MovedTo}, forget
    the user's home and, if C{retry}, attempt once more.
    """
    f.trap(MovedTo)
    home = f.value.home  # type: ignore[union-attr]
    locator.forget(address)
    if retry:
        log.debug("{address} moved to {home}; trying again: {what}", address=address, home=home, what=what)
        return locator.homeOf(address).addCallback(attempt).addErrback(_moved, locator, address, attempt, what, giveUp, False)
    log.warn("{address} moved again (to {home}) during {what}; giving up", address=address, home=home, what=what)
    return fail(giveUp())
