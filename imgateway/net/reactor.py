# -*- test-case-name: tests.test_net_reactor,tests.e2e.test_sameturn_reactor -*-
"""
The gateway's reactor: Twisted's epoll reactor that sends what a turn
wrote before it waits again.

A Twisted transport does not send when it is written to: C{write} keeps
the data and asks the reactor to watch the socket for writing
(C{addWriter}: an C{epoll_ctl}); the reactor's next C{epoll_wait} reports
the socket writable, the transport sends, and, its buffer empty, asks the
reactor to stop watching (C{removeWriter}: another C{epoll_ctl}). So an
answer or a delivery leaves one reactor iteration after the read that made
it, behind everything else that iteration runs, and costs two system calls
and a poll besides the C{send}.

L{SameTurnEPollReactor} keeps a writer that asks to be watched in a list
instead, and at the end of the turn (after the events of a poll have been
handled, and after the timed and thread calls have run) calls each one's
C{doWrite} as the poll would have: a socket with room sends at once, and
the reactor is asked to stop watching it before it ever watched it. Only a
writer that still has data left (its peer does not read fast enough) is
watched by C{epoll}, as before. Everything the handlers of one poll wrote to
one connection still goes out in one C{send} (the transport's buffer
gathers it; what the timed and thread calls wrote before the poll is sent
before it), and a transport that is closed when its buffer is empty closes
then, as it would have after the poll. Nothing of a transport is changed: the same
C{doWrite} is called, only sooner.

Each event (a descriptor a poll reported ready, or a writer at the end of
the turn) is handled as Twisted's reactor handles it, by the reactor's
C{_doReadOrWrite}, in the log context Twisted's C{log.callWithLogger}
gives it: what a legacy C{log.msg} or C{log.err} says while it is handled
has the selectable's C{logPrefix()} for its C{system}, and an exception
that escapes is logged with that C{system} too. Only the way there is
shorter: the context is pushed onto the thread's context stack directly
instead of through C{callWithLogger}, C{callWithContext} and the context
tracker's methods (seven Python calls per event fewer).

C{twistd imgateway} installs it unless C{twistd --reactor NAME} chose
another (C{--reactor epoll} is Twisted's own: L{installDefault}).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.context import ThreadedContextTracker
from twisted.python.log import ILogContext

__all__ = ["SameTurnEPollReactor", "install", "installDefault"]

_ABSENT = object()


class SameTurnEPollReactor(EPollReactor):
    """
    Twisted's epoll reactor, writing at the end of the turn: see the
    module's docstring.

    @ivar _pendingWriters: The writers that asked to be watched during
        this turn and have not been given their chance to write yet, in the
        order they asked (a C{dict} used as an ordered set).
    """

    def __init__(self) -> None:
        self._pendingWriters: dict[Any, None] = {}
        super().__init__()

    def addWriter(self, writer: Any) -> None:
        """
        Keep C{writer} for the end of the turn, unless C{epoll} watches it
        already.
        """
        if writer.fileno() in self._writes or self._continuousPolling.isWriting(writer):
            return
        self._pendingWriters[writer] = None

    def removeWriter(self, writer: Any) -> None:
        """
        Forget C{writer}, kept for the end of the turn or watched.
        """
        if self._pendingWriters.pop(writer, _ABSENT) is _ABSENT:
            super().removeWriter(writer)

    def getWriters(self) -> list[Any]:
        """
        The writers watched and those kept for the end of the turn.
        """
        return [*super().getWriters(), *self._pendingWriters]

    def removeAll(self) -> list[Any]:
        """
        Remove every reader and writer, those kept for the end of the turn
        included.
        """
        pending = list(self._pendingWriters)
        removed: list[Any] = self._removeAll(
            [self._selectables[fd] for fd in self._reads],
            [*(self._selectables[fd] for fd in self._writes), *pending],
        )
        return [*removed, *self._continuousPolling.removeAll()]

    def flushWriters(self) -> None:
        """
        Let every writer kept for the end of the turn write now, as a poll
        reporting its socket writable would (C{doWrite}; a writer that
        fails or finishes closing is disconnected as the poll would). A
        writer that still has data left afterwards is watched by C{epoll}.
        Writers added meanwhile (a write made by a C{doWrite}) are served
        in the same call.
        """
        pending = self._pendingWriters
        doReadOrWrite = self._doReadOrWrite
        pollOut = self._POLL_OUT
        logContext = _logContext()
        while pending:
            writer = next(iter(pending))
            fd = writer.fileno()
            if logContext is None:
                log.callWithLogger(writer, doReadOrWrite, writer, fd, pollOut)
            else:
                self._handleEvent(logContext, writer, fd, pollOut)
            if writer in pending:
                # Not done (its peer is not reading, or it never stops
                # writing): watched for writing as Twisted's reactor would.
                del pending[writer]
                if writer.fileno() != -1:
                    super().addWriter(writer)

    def _handleEvent(
        self,
        logContext: tuple[list[dict[Any, Any]], dict[str, Any]],
        selectable: Any,
        fd: int,
        event: int,
    ) -> None:
        """
        C{log.callWithLogger(selectable, self._doReadOrWrite, selectable,
        fd, event)} written out: the log context (from L{_logContext}) with
        the selectable's C{logPrefix()} for its C{system} pushed onto the
        thread's context stack for the duration of C{_doReadOrWrite}, an
        exception that escapes logged with that C{system}, a failing
        C{logPrefix} named as Twisted names it, C{KeyboardInterrupt} let
        through. One event of a poll (L{doPoll}) or one writer at the end of
        the turn (L{flushWriters}).
        """
        stack, outer = logContext
        try:
            system = selectable.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            system = "(buggy logPrefix method)"
            log.err(system=system)
        try:
            current = outer.copy()
            current["system"] = system
            stack.append({ILogContext: current})
            try:
                self._doReadOrWrite(selectable, fd, event)
            finally:
                stack.pop()
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=system)

    def doPoll(self, timeout: float | None) -> None:
        """
        Send what the timed and thread calls just run wrote, poll and handle
        the events, then send what they wrote.

        When the calls' writers have written, the poll does not wait: what
        their C{doWrite} did (a failed connection's callbacks) may have made
        calls due or stopped the reactor, which the reactor's loop sees only
        before its next poll.

        The poll and its events are C{EPollReactor.doPoll}'s: each event,
        in the poll's order, of a descriptor still registered (an earlier
        event may have removed it) is handled by C{_doReadOrWrite} in the
        log context C{log.callWithLogger} would give it.
        """
        if self._pendingWriters:
            self.flushWriters()
            timeout = 0
        if timeout is None:
            timeout = -1
        selectables = self._selectables
        try:
            events = self._poller.poll(timeout, len(selectables))
        except OSError as e:
            if e.errno != errno.EINTR:
                raise
            events = []
        if events:
            doReadOrWrite = self._doReadOrWrite
            handleEvent = self._handleEvent
            logContext = _logContext()
            for fd, event in events:
                try:
                    selectable = selectables[fd]
                except KeyError:
                    continue
                if logContext is None:
                    log.callWithLogger(selectable, doReadOrWrite, selectable, fd, event)
                else:
                    handleEvent(logContext, selectable, fd, event)
        if self._pendingWriters:
            self.flushWriters()

    doIteration = doPoll


def _logContext() -> tuple[list[dict[Any, Any]], dict[str, Any]] | None:
    """
    Where L{SameTurnEPollReactor} puts the log context of an event it
    handles: the stack of contexts of this thread's context tracker, where
    C{context.call} pushes a context for the duration of a call, and the log
    context (C{context.get(ILogContext)}) at its top, which
    C{log.callWithLogger} copies and gives the selectable's C{system}.

    @return: The stack and the log context, or L{None} if the tracker is
        not Twisted's (one installed by C{context.installContextTracker}) or
        has no log context: then the events are handled through
        C{log.callWithLogger}.
    """
    tracker = context.theContextTracker
    if type(tracker) is not ThreadedContextTracker:
        return None
    stack: list[dict[Any, Any]] = tracker.currentContext().contexts
    for pushed in reversed(stack):
        if ILogContext in pushed:
            outer: dict[str, Any] = pushed[ILogContext]
            return stack, outer
    return None


def install() -> SameTurnEPollReactor:
    """
    Install L{SameTurnEPollReactor} as the reactor.
    """
    from twisted.internet.main import installReactor

    reactor = SameTurnEPollReactor()
    installReactor(reactor)
    return reactor


def installDefault(modules: Any = sys.modules, installer: Callable[[], object] = install) -> bool:
    """
    Install L{SameTurnEPollReactor} if no reactor is installed yet:
    C{twistd --reactor NAME} installs the reactor it names while reading
    its own options, before the subcommand's.

    @param modules: Where installed modules are looked up (L{sys.modules}).
    @param installer: What installs it (L{install}).
    @return: Whether it was installed.
    """
    if "twisted.internet.reactor" in modules:
        return False
    installer()
    return True
