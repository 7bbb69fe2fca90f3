# -*- test-case-name: tests.test_deadlines -*-
"""
Timers for many connections or sessions on a few L{IDelayedCall}s: one per
distinct delay in use, instead of one per timer. An idle session's login,
idle and lease timers then cost an entry in an ordered dict each (about
100 bytes) instead of a L{DelayedCall<twisted.internet.base.DelayedCall>}
(about 480 bytes with its bound methods and keyword dict), and a timer
restarted at every read (an idle timeout) costs no heap operation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines"]

K = TypeVar("K", bound=Hashable)


class _Queue(Generic[K]):
    """
    The timers of one delay, in the order they fire: a timer (re)started
    goes to the end, since its deadline, now plus the one delay, is the
    latest. One L{IDelayedCall} waits for the first deadline.
    """

    __slots__ = ("delay", "entries", "call", "running")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.entries: OrderedDict[K, float] = OrderedDict()
        self.call: IDelayedCall | None = None
        # Whether its timers that ran out are being ended (the call is
        # made again afterwards).
        self.running = False


class Deadlines(Generic[K]):
    """
    Timers by key: L{start} (or restart) a key's timer with a delay, L{stop}
    it; C{expired(key)} is called once a key's timer runs out, exactly
    C{delay} seconds after it was last started (as a
    L{callLater<IReactorTime.callLater>} of its own would be, on the same
    clock). Each key has at most one timer here.

    An exception that C{expired} raises is logged, as the reactor logs one
    from a call of its own, and the other timers run out as usual.

    The timers of each delay are kept in the order they run out, behind one
    L{IDelayedCall} for the first of them; a timer stopped or restarted
    leaves that call alone, which then finds nothing due, or the next due,
    when it runs. (If the clock steps back, a timer started after the step
    waits behind those started before it: it may run out late.)
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, expired: Callable[[K], object]) -> None:
        """
        @param expired: Called with a key whose timer ran out (the timer is
            gone by then: it may start it again).
        """
        self._clock = clock
        self._expired = expired
        self._queues: dict[float, _Queue[K]] = {}
        self._queueOf: dict[K, _Queue[K]] = {}

    def __len__(self) -> int:
        """
        @return: How many timers run.
        """
        return len(self._queueOf)

    def __contains__(self, key: object) -> bool:
        """
        @return: Whether C{key}'s timer runs.
        """
        return key in self._queueOf

    def start(self, key: K, delay: float) -> None:
        """
        Start C{key}'s timer: C{expired(key)} in C{delay} seconds, unless it
        is started again or stopped before. A timer of C{key} that ran is
        replaced.
        """
        queue = self._queueOf.get(key)
        if queue is None or queue.delay != delay:
            if queue is not None:
                self._remove(key, queue)
            queue = self._queues.get(delay)
            if queue is None:
                queue = self._queues[delay] = _Queue(delay)
            self._queueOf[key] = queue
        entries = queue.entries
        entries[key] = self._clock.seconds() + delay
        entries.move_to_end(key)
        if queue.call is None and not queue.running:
            queue.call = self._clock.callLater(delay, self._runOut, queue)

    def restart(self, key: K) -> None:
        """
        Start C{key}'s running timer again with its delay; nothing if it
        does not run. (What a read does to an idle timer: cheaper than
        L{start}.)
        """
        queue = self._queueOf.get(key)
        if queue is not None:
            entries = queue.entries
            entries[key] = self._clock.seconds() + queue.delay
            entries.move_to_end(key)

    def stop(self, key: K) -> None:
        """
        Stop C{key}'s timer, if it runs.
        """
        queue = self._queueOf.get(key)
        if queue is not None:
            self._remove(key, queue)

    def when(self, key: K) -> float | None:
        """
        @return: When C{key}'s timer runs out (the clock's seconds), or
            C{None} if it does not run.
        """
        queue = self._queueOf.get(key)
        return None if queue is None else queue.entries[key]

    def _remove(self, key: K, queue: _Queue[K]) -> None:
        del self._queueOf[key]
        del queue.entries[key]
        if not queue.entries:
            self._drop(queue)

    def _drop(self, queue: _Queue[K]) -> None:
        """
        Forget an empty queue and its call.
        """
        if queue.call is not None and queue.call.active():
            queue.call.cancel()
        queue.call = None
        if self._queues.get(queue.delay) is queue:
            del self._queues[queue.delay]

    def _runOut(self, queue: _Queue[K]) -> None:
        """
        The call of C{queue} ran: end every timer due (in order), then wait
        for the next one.
        """
        queue.call = None
        entries = queue.entries
        now = self._clock.seconds()
        queue.running = True
        try:
            while entries:
                key, when = next(iter(entries.items()))
                if when > now:
                    break
                del entries[key]
                del self._queueOf[key]
                try:
                    self._expired(key)
                except Exception:
                    # As the reactor does with a call that fails: logged,
                    # and the other timers still run out.
                    self.log.failure("Timer of {key!r} failed", key=key)
        finally:
            queue.running = False
        if self._queues.get(queue.delay) is not queue:
            return  # emptied and dropped by a stop in an expired callback
        if not entries:
            self._drop(queue)
        else:
            first = next(iter(entries.values()))
            queue.call = self._clock.callLater(max(0.0, first - now), self._runOut, queue)
