"""
Tests for L{imgateway.net.reactor}: the epoll reactor that sends what a
turn wrote before it waits again. The descriptors are pipes; real sockets
and Twisted's own reactor tests run against it in
L{tests.e2e.test_sameturn_reactor}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.net.reactor import SameTurnEPollReactor, installDefault


class CountingPoller:
    """
    An epoll object's stand-in that counts the C{epoll_ctl} calls made
    through it and passes everything on.

    @ivar ctl: The calls, as (method, file descriptor).
    @ivar polls: The timeouts of the polls.
    """

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.ctl: list[tuple[str, int]] = []
        self.polls: list[float] = []

    def poll(self, timeout: float, maxevents: int) -> Any:
        self.polls.append(timeout)
        return self._poller.poll(timeout, maxevents)

    def register(self, fd: int, flags: int) -> None:
        self.ctl.append(("register", fd))
        self._poller.register(fd, flags)

    def modify(self, fd: int, flags: int) -> None:
        self.ctl.append(("modify", fd))
        self._poller.modify(fd, flags)

    def unregister(self, fd: int) -> None:
        self.ctl.append(("unregister", fd))
        self._poller.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


class Writer:
    """
    A write descriptor on a pipe's writing end, as a transport would be:
    C{doWrite} writes one byte, and stops writing (C{removeWriter}) after
    C{rounds} calls, then closes if asked to.

    @ivar writes: How often C{doWrite} was called.
    @ivar lost: The reasons given to C{connectionLost}.
    """

    def __init__(self, reactor: Any, fd: int, rounds: int = 1, result: object = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.rounds = rounds
        self.result = result
        self.writes = 0
        self.lost: list[Failure] = []
        self.onWrite: list[Any] = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "Writer"

    def doWrite(self) -> object:
        self.writes += 1
        os.write(self.fd, b"x")
        for call in self.onWrite:
            call()
        if self.writes >= self.rounds:
            self.reactor.removeWriter(self)
            return self.result
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class Reader:
    """
    A read descriptor on a pipe's reading end whose C{doRead} reads what
    is there and calls C{onRead}.
    """

    def __init__(self, fd: int, onRead: Any) -> None:
        self.fd = fd
        self.onRead = onRead

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> None:
        os.read(self.fd, 1024)
        self.onRead()

    def connectionLost(self, reason: Failure) -> None:
        pass


class SameTurnEPollReactorTests(SynchronousTestCase):
    """
    L{SameTurnEPollReactor} lets a writer write at the end of the turn that
    asked, without watching it with epoll, and watches only a writer that
    has data left.
    """

    def setUp(self) -> None:
        self.reactor = SameTurnEPollReactor()
        self.addCleanup(self._closeReactor)
        self.poller = CountingPoller(self.reactor._poller)
        self.reactor._poller = self.poller

    def _closeReactor(self) -> None:
        reactor = self.reactor
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        self.poller._poller.close()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        return r, w

    def test_interface(self) -> None:
        """
        It is an L{IReactorFDSet}, as Twisted's epoll reactor.
        """
        self.assertTrue(verifyObject(IReactorFDSet, self.reactor))
        self.assertIsInstance(self.reactor, EPollReactor)

    def test_writtenInTheSameTurn(self) -> None:
        """
        A writer that asks to write while a poll's events are handled writes
        when they have been, within the same C{doPoll}: Twisted's epoll
        reactor would watch it and let it write after the next poll.
        """
        readEnd, writeEnd = self.pipe()
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        reader = Reader(readEnd, lambda: self.reactor.addWriter(writer))
        self.reactor.addReader(reader)
        os.write(writeEnd, b"request")
        self.reactor.doPoll(0)
        self.assertEqual(writer.writes, 1)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_noEpollCallsForAWriterThatFinishes(self) -> None:
        """
        A writer that empties its buffer in its C{doWrite} at the end of the
        turn is never registered with epoll: no C{epoll_ctl} call for it.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        self.reactor.addWriter(writer)
        self.assertEqual(self.reactor.getWriters(), [writer])
        self.reactor.flushWriters()
        self.assertEqual((writer.writes, self.poller.ctl), (1, []))

    def test_timedCallsWritesSent(self) -> None:
        """
        What the timed calls write is written before the reactor's next poll,
        and that poll does not wait (what the writers did may have made calls
        due or stopped the reactor).
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        self.reactor.callLater(0, self.reactor.addWriter, writer)
        self.reactor.runUntilCurrent()
        self.assertEqual(writer.writes, 0)
        self.reactor.doPoll(30)
        self.assertEqual(writer.writes, 1)
        self.assertEqual(self.poller.polls, [0])

    def test_waitsWhenNothingWritten(self) -> None:
        """
        A poll with no writer kept waits as long as the reactor asks.
        """
        self.reactor.doPoll(0.001)
        self.assertEqual(self.poller.polls, [0.001])

    def test_dataLeftWatched(self) -> None:
        """
        A writer that has not finished after its C{doWrite} (its peer does
        not read fast enough) is watched by epoll as Twisted's reactor
        watches it, and stops being watched when it finishes.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out, rounds=2)
        self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(writer.writes, 1)
        self.assertEqual(self.poller.ctl, [("register", out)])
        self.assertEqual(self.reactor.getWriters(), [writer])
        self.reactor.doPoll(0)
        self.assertEqual(writer.writes, 2)
        self.assertEqual(self.poller.ctl, [("register", out), ("unregister", out)])
        self.assertEqual(self.reactor.getWriters(), [])

    def test_watchedWriterNotKept(self) -> None:
        """
        A writer epoll already watches is not kept for the end of the turn
        when it writes again: it writes when its socket has room.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out, rounds=3)
        self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(writer.writes, 1)

    def test_removedBeforeTheEnd(self) -> None:
        """
        A writer that stops writing before the end of the turn is not
        called.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        self.reactor.addWriter(writer)
        self.reactor.removeWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual((writer.writes, self.reactor.getWriters(), self.poller.ctl), (0, [], []))

    def test_onceForManyWrites(self) -> None:
        """
        A writer asking several times in a turn writes once (a transport
        sends all the turn wrote to it at once).
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        for _ in range(3):
            self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(writer.writes, 1)

    def test_inOrder(self) -> None:
        """
        Writers write in the order they asked.
        """
        order: list[int] = []
        writers = []
        for i in range(3):
            _, out = self.pipe()
            writer = Writer(self.reactor, out)
            writer.onWrite.append(lambda i=i: order.append(i))
            writers.append(writer)
        for writer in (writers[2], writers[0], writers[1]):
            self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(order, [2, 0, 1])

    def test_writersAddedMeanwhile(self) -> None:
        """
        A writer that asks while another writes at the end of the turn
        writes in the same turn.
        """
        _, out1 = self.pipe()
        _, out2 = self.pipe()
        second = Writer(self.reactor, out2)
        first = Writer(self.reactor, out1)
        first.onWrite.append(lambda: self.reactor.addWriter(second))
        self.reactor.addWriter(first)
        self.reactor.flushWriters()
        self.assertEqual((first.writes, second.writes), (1, 1))

    def test_failureDisconnects(self) -> None:
        """
        A writer whose C{doWrite} returns a failure (the connection is done
        or lost) is disconnected, as after a poll.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out, result=ConnectionLost())
        self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(len(writer.lost), 1)
        writer.lost[0].trap(ConnectionLost)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_exceptionDisconnects(self) -> None:
        """
        A writer whose C{doWrite} raises is disconnected and the exception
        logged, as after a poll.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)

        def fail() -> None:
            raise ZeroDivisionError()

        writer.onWrite.append(fail)
        self.reactor.addWriter(writer)
        self.reactor.flushWriters()
        self.assertEqual(len(writer.lost), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_removeAll(self) -> None:
        """
        L{SameTurnEPollReactor.removeAll} removes the writers kept for the
        end of the turn too, and returns them.
        """
        _, out = self.pipe()
        writer = Writer(self.reactor, out)
        self.reactor.addWriter(writer)
        self.assertIn(writer, self.reactor.removeAll())
        self.reactor.flushWriters()
        self.assertEqual((writer.writes, self.reactor.getWriters()), (0, []))


class InstallDefaultTests(SynchronousTestCase):
    """
    L{installDefault} installs the reactor unless one is installed.
    """

    def test_installed(self) -> None:
        """
        With no reactor installed, it installs one.
        """
        installed: list[bool] = []
        self.assertTrue(installDefault({}, lambda: installed.append(True)))
        self.assertEqual(installed, [True])

    def test_chosenBefore(self) -> None:
        """
        With a reactor installed (C{twistd --reactor NAME}), it does nothing.
        """
        installed: list[bool] = []
        self.assertFalse(installDefault({"twisted.internet.reactor": object()}, lambda: installed.append(True)))
        self.assertEqual(installed, [])
