# -*- test-case-name: tests.test_malloctrim -*-
"""
Give memory freed in bulk back to the system, where the C library can:
glibc keeps the memory that is freed between long-lived objects in the
process (a login burst's XML parsers, dropped once their streams are idle,
about 6 KiB per XMPP session at 1,000 sessions), and only
C{malloc_trim(0)} returns its free pages. Elsewhere (musl, macOS) nothing
is done.

A trim takes the reactor thread for a while (on this project's benchmark
machine: 13 ms after 1,000 parsers were dropped, 60 ms after 10,000, under
1 ms when there is little to return), hence at most one per interval.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["MALLOC_TRIM_SECONDS", "MallocTrimmer", "glibcMallocTrim"]

#: The default of C{[xmpp] malloc_trim_seconds}: seconds from the first
#: idle parser dropped to the trim, so at least between two trims.
MALLOC_TRIM_SECONDS = 10.0


def glibcMallocTrim() -> Callable[[], object] | None:
    """
    @return: glibc's C{malloc_trim(0)} as a function, or C{None} if the
        process does not run on glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MallocTrimmer:
    """
    Trims the C library's heap (L{glibcMallocTrim}) once much was freed:
    L{freed} asks for a trim, which runs C{interval} seconds later; the
    other requests until then are part of it. So trims run at most once
    per C{interval}, only after something asked, and a sweep that frees
    many objects over a few seconds gets one trim after it.

    @ivar trims: How many trims ran.
    """

    def __init__(self, clock: IReactorTime, interval: float, trim: Callable[[], object] | None = None) -> None:
        """
        @param interval: Seconds from a request to its trim, and so at
            least between two trims; C{0} never trims.
        @param trim: What trims (L{glibcMallocTrim}'s by default; with
            neither, requests are ignored).
        """
        self._clock = clock
        self.interval = interval
        self._trim = trim if trim is not None else glibcMallocTrim()
        self._call: IDelayedCall | None = None
        self.trims = 0

    @property
    def available(self) -> bool:
        """
        Whether requests lead to trims.
        """
        return self._trim is not None and self.interval > 0

    def freed(self) -> None:
        """
        Much was freed (an XML parser, say): trim in C{interval} seconds,
        unless a trim is due already.
        """
        if self._call is None and self.available:
            self._call = self._clock.callLater(self.interval, self._run)

    def _run(self) -> None:
        self._call = None
        assert self._trim is not None
        self.trims += 1
        self._trim()

    def stop(self) -> None:
        """
        Cancel a trim that is due.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
