# -*- test-case-name: tests.test_net_gather -*-
"""
Writes to many connections gathered while one read is handled.

One read can make many frames for a few other connections: a link's read of
a hundred bare C{200}s answers messages of twenty clients, each answered
with a C{200} of its own; a client's read of ten C{MESSAGE}s writes ten
C{200}s to it and ten C{MESSAGE}s to its peer. Each C{transport.write} costs
the same handful of Python calls in Twisted, however small the frame, and
the socket sends once per turn anyway. So while a reader handles a read
(L{WriteGather.begin} ... L{WriteGather.end}), a connection that takes part
(the native face, L{imgateway.adapters.native.server}; a server link's
connection, L{imgateway.router.link.LinkConnection}) writes its first
frame as it comes and keeps the frames after it, in order, writing them in
one C{transport.write} when the read is done (L{GatheredWriter}). A
connection written to once in a read (most at a low rate, where a read
carries one request) pays nothing more than a comparison.

Nothing waits past the read that made it: the frames reach the transport
before the reader returns, in the same reactor turn, so they leave in the
same C{send} as before. Every frame of one connection still goes out in
the order it was written, since a connection that keeps frames keeps every
later one too until it writes them.

The reactor runs one read at a time, so one gather serves the process
(L{GATHER}); a read handled within another's (a test pumping two
connections) gathers the other connections' writes with the outer one's
(a link connection's own read writes its own frames when it ends, after
those it kept).

Each participant tests the gather in place, in every method that writes a
frame (a call there would cost every frame one more): the native face's
C{_send} and C{presenceReceived}, and a link connection's
C{send}, C{sendNumbered} and C{_write}. A change to what L{WriteGather}
holds (C{active}, C{epoch}, C{held}) is a change to each of them.
"""

from __future__ import annotations

from typing import Protocol, final

from twisted.logger import Logger

__all__ = ["GATHER", "GatheredWriter", "WriteGather"]

_log = Logger()


class GatheredWriter(Protocol):
    """
    A connection whose writes a L{WriteGather} may keep: it writes what it
    kept when told to.
    """

    def flushGathered(self) -> None:
        """
        Write the frames kept while the read was handled, in one
        C{transport.write}, and keep no more.
        """


@final
class WriteGather:
    """
    The reads being gathered for, and the connections holding frames.

    @ivar active: Whether a read is being handled (between L{begin} and
        L{end}).
    @ivar epoch: Which read: one more at each L{begin}. A connection that
        wrote in this read remembers it, and keeps what it writes after.
    @ivar held: The connections holding frames, in the order they began
        to: L{end} tells each to write them.
    """

    __slots__ = ("active", "epoch", "held")

    def __init__(self) -> None:
        self.active = False
        self.epoch = 0
        self.held: list[GatheredWriter] = []

    def begin(self) -> bool:
        """
        Gather the writes of the read about to be handled, unless a read
        is being gathered for already (this one is within it).

        @return: Whether this call began it: if so, the caller calls L{end}
            once the read is handled, whatever happens.
        """
        if self.active:
            return False
        self.active = True
        self.epoch += 1
        return True

    def end(self) -> None:
        """
        The read is handled: each connection holding frames writes them,
        in the order they began to. One that fails to is logged, and the
        others still write theirs.
        """
        self.active = False
        held = self.held
        if not held:
            return
        self.held = []
        for writer in held:
            try:
                writer.flushGathered()
            except Exception:
                _log.failure("Writing the frames kept for {writer!r} while a read was handled", writer=writer)


#: The process's gather: the reactor handles one read at a time.
GATHER = WriteGather()
