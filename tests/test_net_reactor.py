"""
Tests for L{imgateway.net.reactor}: the epoll reactor that sends what a
turn wrote before it waits again. The descriptors are pipes; real sockets
and Twisted's own reactor tests run against it in
L{tests.e2e.test_sameturn_reactor}.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionFdescWentAway, ConnectionLost
from twisted.internet.interfaces import IReactorFDSet
from twisted.python import context, log
from twisted.python.context import ContextTracker
from twisted.python.failure import Failure
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.net import reactor as reactorModule
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


class Selectable:
    """
    A descriptor on a pipe's end, read or written, whose handlers do what
    a test asks: log a line, fail, return a reason to disconnect, stop
    another selectable.

    @ivar calls: What was called on it, in order: C{("doRead",
        system)}, C{("doWrite", system)} or C{("connectionLost", reason's
        type)}, where C{system} is the log context's C{system} the handler
        ran in.
    """

    def __init__(self, reactor: Any, fd: int, name: str, calls: list[tuple[str, str, object]]) -> None:
        self.reactor = reactor
        self.fd = fd
        self.name = name
        self.calls = calls
        self.prefix: Callable[[], str] = lambda: name
        self.onRead: Callable[[], object] = lambda: None
        self.onWrite: Callable[[], object] = lambda: None
        self.onLost: Callable[[], object] = lambda: None

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return self.prefix()

    def _handle(self, method: str, then: Callable[[], object]) -> object:
        self.calls.append((self.name, method, context.get(ILogContext)["system"]))
        log.msg(f"{self.name} {method}", handler=method)
        return then()

    def doRead(self) -> object:
        try:
            os.read(self.fd, 1024)
        except BlockingIOError:
            pass
        return self._handle("doRead", self.onRead)

    def doWrite(self) -> object:
        self.reactor.removeWriter(self)
        return self._handle("doWrite", self.onWrite)

    def connectionLost(self, reason: Failure) -> None:
        self.calls.append((self.name, "connectionLost", reason.type))
        self.onLost()


def _seen(event: dict[str, Any]) -> dict[str, Any]:
    """
    What a legacy log observer saw of an event, without its times and
    with a failure's type for the failure.
    """
    seen = {key: value for key, value in event.items() if key not in ("time", "log_time", "log_legacy", "log_failure", "log_text")}
    if "failure" in seen:
        seen["failure"] = seen["failure"].type
    return seen


def _raise(exception: BaseException) -> Callable[[], Any]:
    def raising() -> Any:
        raise exception

    return raising


class SameEventsTests(SynchronousTestCase):
    """
    L{SameTurnEPollReactor} handles a poll's events, and the writers at the
    end of the turn, as Twisted's epoll reactor handles the poll's: the
    same calls on the selectables, in the same order, in the same log
    context (C{system} = the selectable's C{logPrefix()}), with the same
    log events for what fails. Each test runs one scenario on both
    reactors, compares, and checks what Twisted's does.
    """

    def runScenario(self, reactorType: type[EPollReactor], scenario: Callable[[Any, Callable[[str, str], Selectable]], None]) -> tuple[list[tuple[str, str, object]], list[dict[str, Any]]]:
        """
        Run C{scenario(reactor, make)} on a new reactor of C{reactorType},
        where C{make(name, "r" or "w")} makes a L{Selectable} on a pipe's
        reading end (with a byte to read) or writing end; then poll once.

        @return: The calls on the selectables, and the legacy log events.
        """
        reactor = reactorType()
        self.addCleanup(reactor._poller.close)
        calls: list[tuple[str, str, object]] = []
        events: list[dict[str, Any]] = []

        def make(name: str, end: str) -> Selectable:
            readEnd, writeEnd = os.pipe()
            self.addCleanup(os.close, readEnd)
            self.addCleanup(os.close, writeEnd)
            os.set_blocking(readEnd, False)
            if end == "r":
                os.write(writeEnd, b"x")
                return Selectable(reactor, readEnd, name, calls)
            return Selectable(reactor, writeEnd, name, calls)

        scenario(reactor, make)
        log.addObserver(events.append)
        try:
            reactor.doPoll(0)
        finally:
            log.removeObserver(events.append)
        return calls, [_seen(event) for event in events]

    def same(self, scenario: Callable[[Any, Callable[[str, str], Selectable]], None]) -> tuple[list[tuple[str, str, object]], list[dict[str, Any]]]:
        """
        Run C{scenario} on Twisted's epoll reactor and on the same-turn one,
        check that both did and logged the same, and return what
        Twisted's did.

        The writers write before the poll's events are handled on the
        same-turn reactor (at the end of the turn the scenario ran in),
        with them on Twisted's: so the calls and events are compared in the
        order each selectable had them, and the readers' in the poll's
        order.
        """
        twisted = self.runScenario(EPollReactor, scenario)
        ours = self.runScenario(SameTurnEPollReactor, scenario)

        def bySelectable(seen: tuple[list[tuple[str, str, object]], list[dict[str, Any]]]) -> tuple[list[tuple[str, str, object]], list[dict[str, Any]]]:
            calls, events = seen
            writers = {name for name, method, _ in calls if method == "doWrite"}
            return sorted(calls, key=lambda call: call[0] in writers), sorted(events, key=lambda event: event["system"] in writers)

        self.assertEqual(bySelectable(ours), bySelectable(twisted))
        return twisted

    def test_readInItsLogContext(self) -> None:
        """
        A read is handled with its selectable's C{logPrefix()} for the log
        context's C{system}, and what its handler logs has it.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reactor.addReader(make("Reader,1,127.0.0.1", "r"))

        calls, events = self.same(scenario)
        self.assertEqual(calls, [("Reader,1,127.0.0.1", "doRead", "Reader,1,127.0.0.1")])
        self.assertEqual([(e["system"], e["message"], e["handler"]) for e in events], [("Reader,1,127.0.0.1", ("Reader,1,127.0.0.1 doRead",), "doRead")])

    def test_writeInItsLogContext(self) -> None:
        """
        A writer's C{doWrite} (after the poll on Twisted's reactor, at the
        end of the turn on the same-turn one) runs in its log context too.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reactor.addWriter(make("Writer", "w"))

        calls, events = self.same(scenario)
        self.assertEqual(calls, [("Writer", "doWrite", "Writer")])
        self.assertEqual([e["system"] for e in events], ["Writer"])

    def test_outerContextKept(self) -> None:
        """
        The log context of a handler is the one the poll was called in,
        with the selectable's C{system}: C{log.callWithLogger} copies it.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reactor.addReader(make("Reader", "r"))
            reactor.addWriter(make("Writer", "w"))
            doPoll = reactor.doPoll
            outer = {ILogContext: {"system": "outer", "request": "kept"}}
            reactor.doPoll = lambda timeout: context.call(outer, doPoll, timeout)

        calls, events = self.same(scenario)
        self.assertEqual(sorted((e["system"], e["request"]) for e in events), [("Reader", "kept"), ("Writer", "kept")])

    def test_exceptionDisconnects(self) -> None:
        """
        A handler that raises is disconnected (C{connectionLost} with the
        exception), and the exception is logged in its log context.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reader = make("Reader", "r")
            reader.onRead = _raise(ZeroDivisionError())
            reactor.addReader(reader)
            writer = make("Writer", "w")
            writer.onWrite = _raise(ZeroDivisionError())
            reactor.addWriter(writer)

        calls, events = self.same(scenario)
        self.assertEqual(
            sorted(calls, key=str),
            sorted(
                [
                    ("Reader", "doRead", "Reader"),
                    ("Reader", "connectionLost", ZeroDivisionError),
                    ("Writer", "doWrite", "Writer"),
                    ("Writer", "connectionLost", ZeroDivisionError),
                ],
                key=str,
            ),
        )
        errors = [(e["system"], e["failure"]) for e in events if e["isError"]]
        self.assertEqual(sorted(errors), [("Reader", ZeroDivisionError), ("Writer", ZeroDivisionError)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 4)

    def test_reasonReturnedDisconnects(self) -> None:
        """
        A handler that returns a reason is disconnected with it: a reader's
        C{ConnectionDone}, a writer's C{ConnectionLost}.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reader = make("Reader", "r")
            reader.onRead = ConnectionDone
            reactor.addReader(reader)
            writer = make("Writer", "w")
            writer.onWrite = ConnectionLost
            reactor.addWriter(writer)

        calls, events = self.same(scenario)
        self.assertIn(("Reader", "connectionLost", ConnectionDone), calls)
        self.assertIn(("Writer", "connectionLost", ConnectionLost), calls)
        self.assertEqual([e for e in events if e["isError"]], [])

    def test_buggyLogPrefix(self) -> None:
        """
        A selectable whose C{logPrefix} raises is still handled, with
        C{"(buggy logPrefix method)"} for its C{system}, and the exception
        is logged with it.
        """
        def reading(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reader = make("Reader", "r")
            reader.prefix = _raise(ZeroDivisionError())
            reactor.addReader(reader)

        def writing(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            writer = make("Writer", "w")
            writer.prefix = _raise(ZeroDivisionError())
            reactor.addWriter(writer)

        for scenario, name, method in ((reading, "Reader", "doRead"), (writing, "Writer", "doWrite")):
            calls, events = self.same(scenario)
            self.assertEqual(calls, [(name, method, "(buggy logPrefix method)")])
            self.assertEqual([(e["system"], e["isError"]) for e in events], [("(buggy logPrefix method)", 1), ("(buggy logPrefix method)", 0)])
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_disconnectingFails(self) -> None:
        """
        An exception from disconnecting a selectable (its C{connectionLost}
        raises) is logged with its C{system}, and the next events are still
        handled.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            for name in ("first", "second"):
                reader = make(name, "r")
                reader.onRead = ConnectionDone
                reader.onLost = _raise(ZeroDivisionError())
                reactor.addReader(reader)

        calls, events = self.same(scenario)
        self.assertEqual(sorted((name, method) for name, method, _ in calls), [("first", "connectionLost"), ("first", "doRead"), ("second", "connectionLost"), ("second", "doRead")])
        self.assertEqual(sorted(e["system"] for e in events if e["isError"]), ["first", "second"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 4)

    def test_keyboardInterrupt(self) -> None:
        """
        A C{KeyboardInterrupt} from disconnecting a selectable ends the
        poll's handling: it is not logged but raised, and the log context
        is left as it was.
        """
        for reactorType in (EPollReactor, SameTurnEPollReactor):
            stack = list(context.theContextTracker.currentContext().contexts)

            def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
                reader = make("Reader", "r")
                reader.onRead = ConnectionDone
                reader.onLost = _raise(KeyboardInterrupt())
                reactor.addReader(reader)

            self.assertRaises(KeyboardInterrupt, self.runScenario, reactorType, scenario)
            self.assertEqual(context.theContextTracker.currentContext().contexts, stack)

    def test_hangUp(self) -> None:
        """
        A reader whose peer hung up (C{EPOLLHUP}, nothing left to read) is
        disconnected cleanly in its log context, without a read.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            readEnd, writeEnd = os.pipe()
            self.addCleanup(os.close, readEnd)
            os.close(writeEnd)
            reader = Selectable(reactor, readEnd, "Reader", [])
            reactor.addReader(reader)
            make("Other", "r").calls.append(("Reader", "hung up", None))
            reader.calls = make("Other", "r").calls
            reader.onLost = lambda: log.msg("lost")

        calls, events = self.same(scenario)
        self.assertEqual(calls, [("Reader", "hung up", None), ("Reader", "connectionLost", ConnectionDone)])
        self.assertEqual([(e["system"], e["message"]) for e in events], [("Reader", ("lost",))])

    def test_removedByAnEarlierEvent(self) -> None:
        """
        A selectable an earlier event of the same poll removed is not
        handled; the events are handled in the poll's order.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            readers = [make(name, "r") for name in ("first", "second", "third")]
            for reader in readers:
                reactor.addReader(reader)

            def removeTheOthers(me: Selectable) -> None:
                for reader in readers:
                    if reader is not me:
                        reactor.removeReader(reader)

            for reader in readers:
                reader.onRead = partial(removeTheOthers, reader)

        calls, events = self.same(scenario)
        self.assertEqual(calls, [("first", "doRead", "first")])

    def test_noDescriptor(self) -> None:
        """
        A selectable whose C{fileno()} is -1 when its event is handled is
        disconnected, not read.
        """
        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            other = make("Other", "r")
            reader = make("Reader", "r")
            other.onRead = lambda: setattr(reader, "fd", -1)
            reactor.addReader(other)
            reactor.addReader(reader)

        calls, events = self.same(scenario)
        self.assertEqual(calls, [("Other", "doRead", "Other"), ("Reader", "connectionLost", ConnectionFdescWentAway)])


    def test_otherTracker(self) -> None:
        """
        With another context tracker installed, events are still handled in
        their log context (through C{log.callWithLogger}).
        """
        self.addCleanup(context.installContextTracker, context.theContextTracker)
        context.installContextTracker(ContextTracker())
        self.assertIsNone(reactorModule._logContext())

        def scenario(reactor: Any, make: Callable[[str, str], Selectable]) -> None:
            reactor.addReader(make("Reader", "r"))
            reactor.addWriter(make("Writer", "w"))

        calls, events = self.same(scenario)
        self.assertEqual(sorted(calls), [("Reader", "doRead", "Reader"), ("Writer", "doWrite", "Writer")])
        self.assertEqual(sorted(e["system"] for e in events), ["Reader", "Writer"])


class LogContextTests(SynchronousTestCase):
    """
    What L{SameTurnEPollReactor} relies on of Twisted's context tracker to
    give a handler its log context without C{log.callWithLogger}, and what
    it does when that is not there.
    """

    def test_stackIsWhereContextsGo(self) -> None:
        """
        L{reactorModule._logContext} finds the list that C{context.call}
        pushes its context onto for the call, and the log context that
        C{context.get(ILogContext)} returns.
        """
        inner = {ILogContext: {"system": "inner"}}

        def within() -> None:
            found = reactorModule._logContext()
            assert found is not None
            stack, outer = found
            self.assertIs(stack[-1], inner)
            self.assertIs(outer, context.get(ILogContext))

        context.call(inner, within)
        found = reactorModule._logContext()
        assert found is not None
        self.assertIs(found[1], context.get(ILogContext))

    def test_interruptedPoll(self) -> None:
        """
        A poll interrupted by a signal (C{EINTR}) handles no event, and the
        writers kept are still served.
        """
        reactor = SameTurnEPollReactor()
        self.addCleanup(reactor._poller.close)
        poller = reactor._poller

        class Interrupted:
            def poll(self, timeout: float, maxevents: int) -> Any:
                raise OSError(errno.EINTR, "interrupted")

        reactor._poller = Interrupted()
        self.addCleanup(setattr, reactor, "_poller", poller)
        _, out = os.pipe()
        self.addCleanup(os.close, out)
        calls: list[tuple[str, str, object]] = []
        writer = Selectable(reactor, out, "Writer", calls)
        reactor.callLater(0, reactor.addWriter, writer)
        reactor.runUntilCurrent()
        reactor.doPoll(1)
        self.assertEqual(calls, [("Writer", "doWrite", "Writer")])


class CallsPerEventTests(SynchronousTestCase):
    """
    The Python calls L{SameTurnEPollReactor} makes from a poll to a
    selectable's handler: counted, since they are paid for every read and
    every write.
    """

    def callsBefore(self, handler: str, run: Callable[[], None]) -> list[str]:
        """
        The names of the Python functions called by C{run()} before the
        first call of a function named C{handler}.
        """
        names: list[str] = []
        seen: list[list[str]] = []

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if event == "call" and not seen:
                name = frame.f_code.co_name
                if name == handler:
                    seen.append(list(names))
                names.append(name)

        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(None)
        self.assertEqual(len(seen), 1)
        return seen[0]

    def test_read(self) -> None:
        """
        From a poll's start to C{doRead}: the log context's look-up (once
        per poll), then the reactor's C{_handleEvent}, the selectable's
        C{logPrefix}, the reactor's C{_doReadOrWrite} and the selectable's
        C{fileno}. Twisted's reactor calls C{log.callWithLogger},
        C{log.callWithContext} and the context tracker's methods instead of
        C{_handleEvent} (seven calls more per event: eleven against four).
        """
        reactor = SameTurnEPollReactor()
        self.addCleanup(reactor._poller.close)
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        reactor.addReader(Reader(readEnd, lambda: None))
        os.write(writeEnd, b"x")
        context.get(ILogContext)
        self.assertEqual(
            self.callsBefore("doRead", partial(reactor.doPoll, 0)),
            ["doPoll", "_logContext", "currentContext", "_handleEvent", "logPrefix", "_doReadOrWrite", "fileno"],
        )

    def test_write(self) -> None:
        """
        From the end of the turn to C{doWrite}: the same calls.
        """
        reactor = SameTurnEPollReactor()
        self.addCleanup(reactor._poller.close)
        _, out = os.pipe()
        self.addCleanup(os.close, out)
        reactor.addWriter(Writer(reactor, out))
        context.get(ILogContext)
        self.assertEqual(
            self.callsBefore("doWrite", reactor.flushWriters),
            ["flushWriters", "_logContext", "currentContext", "fileno", "_handleEvent", "logPrefix", "_doReadOrWrite", "fileno"],
        )


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
