# -*- test-case-name: tests.test_manhole_watchdog -*-
"""
The reactor watchdog: logs when the reactor did not run for longer than
C{[manhole] watchdog_seconds}, with the stack of what was running then.

The reactor beats (a L{LoopingCall} marks the time a few times per
threshold); a thread of the watchdog's own looks at the last beat as often,
and when it is older than the threshold it takes the stack of the
reactor's thread (L{sys._current_frames}) while it is still blocked. The
reactor logs it once it runs again, with how long it was held, so nothing
but the capture happens outside the reactor's thread.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import FrameType

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["ReactorWatchdog"]

#: Beats and checks per threshold.
CHECKS_PER_THRESHOLD = 4


class ReactorWatchdog(Service):
    """
    Watches the reactor; see the module docstring.

    @ivar threshold: Seconds without a beat that count as blocked.
    @ivar reports: How many blocks were logged.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        threshold: float,
        monotonic: Callable[[], float] = time.monotonic,
        frames: Callable[[], Mapping[int, FrameType]] = sys._current_frames,
        thread: bool = True,
    ) -> None:
        """
        @param clock: The reactor (its thread is the one watched: the one
            that starts this service).
        @param monotonic: Where time is read, in both threads.
        @param frames: Each thread's current frame.
        @param thread: Whether to start the watching thread (tests call
            L{check} themselves instead).
        """
        self.threshold = threshold
        self.reports = 0
        self._clock = clock
        self._monotonic = monotonic
        self._frames = frames
        self._useThread = thread
        self._lock = threading.Lock()
        self._last = monotonic()
        # (the beat it was blocked after, the stack) once a block is seen.
        self._caught: tuple[float, str] | None = None
        self._threadId: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = LoopingCall(self.beat)
        self._beat.clock = clock

    @property
    def interval(self) -> float:
        """
        Seconds between beats (and between checks).
        """
        return self.threshold / CHECKS_PER_THRESHOLD

    def startService(self) -> None:
        super().startService()
        self._threadId = threading.get_ident()
        self._last = self._monotonic()
        self._beat.start(self.interval, now=False)
        if self._useThread:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._watch, name="imgateway reactor watchdog", daemon=True)
            self._thread.start()

    def stopService(self) -> None:
        super().stopService()
        if self._beat.running:
            self._beat.stop()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.interval * 2)
            self._thread = None

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            self.check()

    def beat(self) -> None:
        """
        The reactor ran: note the time; log the block the watching thread
        caught since the last beat, if any.
        """
        now = self._monotonic()
        with self._lock:
            last, caught = self._last, self._caught
            self._last, self._caught = now, None
        if caught is not None and caught[0] == last:
            self.reports += 1
            self.log.warn(
                "Reactor blocked: it did not run for {seconds:.1f} s (more than [manhole] watchdog_seconds = "
                "{threshold}); it was running:\n{stack}",
                seconds=now - last,
                threshold=self.threshold,
                stack=caught[1],
            )

    def check(self) -> None:
        """
        (In the watching thread.) If the reactor has not beaten for longer
        than the threshold, take the stack of its thread, once per block.
        """
        with self._lock:
            last, caught = self._last, self._caught
        if self._monotonic() - last <= self.threshold + self.interval or (caught is not None and caught[0] == last):
            return
        frame = self._frames().get(self._threadId) if self._threadId is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        with self._lock:
            if self._last == last:
                self._caught = (last, stack.rstrip("\n"))
