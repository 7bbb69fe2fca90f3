# -*- test-case-name: tests.e2e.test_sameturn_reactor -*-
"""
End-to-end tests of L{imgateway.net.reactor.SameTurnEPollReactor} with real
sockets: an answer leaves in the poll that read its request; Twisted's own
reactor tests (TCP, TLS, UNIX sockets, processes, threads, timed calls, the
descriptor set) pass on it; and C{twistd imgateway} runs on it unless
C{--reactor} names another.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.test import (
    test_core,
    test_fdset,
    test_newtls,
    test_process,
    test_tcp,
    test_threads,
    test_time,
    test_tls,
    test_unix,
)
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from imgateway.net.reactor import SameTurnEPollReactor
from tests.e2e.harness import GatewayProcess

REACTOR = "imgateway.net.reactor.SameTurnEPollReactor"


class _Echo(Protocol):
    """
    Writes back what it reads, and counts its connections and reads.
    """

    made = 0
    reads = 0

    def connectionMade(self) -> None:
        type(self).made += 1

    def dataReceived(self, data: bytes) -> None:
        type(self).reads += 1
        self.transport.write(data)  # type: ignore[union-attr]


class _LoggingEcho(Protocol):
    """
    Writes back what it reads, logging a line for what it reads and for
    its connection lost.
    """

    def dataReceived(self, data: bytes) -> None:
        log.msg("read")
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        log.msg("lost")


class SameTurnTests(SynchronousTestCase):
    """
    On a real TCP connection, what a protocol writes while it handles what
    it read is sent before the reactor polls again.
    """

    def answerPolls(self, reactor: Any) -> int:
        """
        Send a request to an echo server run by C{reactor}, poll until the
        server has read it, and return how many more polls it takes for the
        answer to reach the client.
        """
        _Echo.made = _Echo.reads = 0
        self.addCleanup(setattr, _Echo, "made", 0)
        self.addCleanup(setattr, _Echo, "reads", 0)
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.setblocking(False)
        for _ in range(100):
            reactor.doIteration(0.05)
            if _Echo.made:
                break
        client.send(b"ping")
        for _ in range(100):
            reactor.doIteration(0.05)
            if _Echo.reads:
                break
        polls = 0
        while polls < 10:
            try:
                self.assertEqual(client.recv(10), b"ping")
                break
            except BlockingIOError:
                reactor.doIteration(0.05)
                polls += 1
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        return polls

    def buildReactor(self, factory: Any) -> Any:
        reactor = factory()
        self.addCleanup(reactor._poller.close)
        return reactor

    def test_answerInTheSamePoll(self) -> None:
        """
        The echo reaches the client with no poll after the one that read the
        request.
        """
        self.assertEqual(self.answerPolls(self.buildReactor(SameTurnEPollReactor)), 0)

    def loggedSystems(self, reactor: Any) -> list[str]:
        """
        Run an echo server on C{reactor} whose protocol logs a line (with
        Twisted's legacy C{log.msg}) for what it reads and when its
        connection is lost; send it a request and close: return the
        C{system} of each line.
        """
        events: list[dict[str, Any]] = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        port = reactor.listenTCP(0, Factory.forProtocol(_LoggingEcho), interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.send(b"ping")
        for _ in range(100):
            if any(event.get("message") == ("read",) for event in events):
                break
            reactor.doIteration(0.05)
        client.close()
        for _ in range(100):
            if any(event.get("message") == ("lost",) for event in events):
                break
            reactor.doIteration(0.05)
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        return [event["system"] for event in events if event.get("message") in (("read",), ("lost",))]

    def test_logContext(self) -> None:
        """
        What a protocol logs while it reads, and when the peer closed, is
        put down to its connection (the transport's C{logPrefix()}), as on
        Twisted's epoll reactor.
        """
        systems = self.loggedSystems(self.buildReactor(SameTurnEPollReactor))
        self.assertEqual(systems, self.loggedSystems(self.buildReactor(EPollReactor)))
        self.assertEqual(systems, ["_LoggingEcho,0,127.0.0.1"] * 2)

    def test_twistedReactorPollsAgain(self) -> None:
        """
        Twisted's epoll reactor sends it one poll later: what the same-turn
        reactor saves.
        """
        self.assertEqual(self.answerPolls(self.buildReactor(EPollReactor)), 1)


#: Twisted's tests that do not run here, and why.
SKIPPED = {
    "test_lostFileDescriptor": "epoll cannot notice a closed descriptor; Twisted skips it for its epoll reactor",
    "test_changeUID": "fails on Twisted's own epoll reactor too on this machine (root, no other user to become)",
}


def _skipped(reason: str) -> Any:
    def test(self: object) -> None:
        raise SkipTest(reason)

    return test


def _ours(builder: type[ReactorBuilder]) -> dict[str, type]:
    """
    Twisted's reactor tests of C{builder}, run on L{SameTurnEPollReactor}.
    """
    def setUp(self: Any) -> None:
        # Twisted's tests warn of their own deprecated calls and, now and
        # then, of sockets they leave to the collector; what is tested
        # here is the reactor, not them (the suite runs with -W error).
        self.addCleanup(self.flushWarnings)
        builder.setUp(self)

    attributes: dict[str, Any] = {"_reactors": [REACTOR], "__module__": __name__, "setUp": setUp}
    attributes.update({name: _skipped(reason) for name, reason in SKIPPED.items() if hasattr(builder, name)})
    ours: Any = type(builder.__name__, (builder,), attributes)
    classes: dict[str, type] = ours.makeTestCaseClasses()
    return classes


for _module in (test_core, test_fdset, test_newtls, test_process, test_tcp, test_threads, test_time, test_tls, test_unix):
    # The builders Twisted runs on its own epoll reactor, on this one.
    for _name, _case in sorted(vars(_module).items()):
        if _name.endswith("_EPollReactorTests") and isinstance(_case, type):
            globals().update(_ours(_case.__bases__[0]))


class ReactorChoiceTests(TestCase):
    """
    C{twistd imgateway} runs on L{SameTurnEPollReactor}; C{--reactor NAME}
    still chooses another.
    """

    async def test_default(self) -> None:
        """
        Without C{--reactor}, the gateway's reactor is the same-turn one.
        """
        gateway = GatewayProcess(self)
        await gateway.start()
        self.assertIn(f"reactor class: {REACTOR}.", gateway.log())
        gateway.assertCleanExit(await gateway.stop())

    async def test_chosen(self) -> None:
        """
        With C{twistd --reactor epoll}, Twisted's epoll reactor runs it.
        """
        gateway = _TwistedReactorGateway(self)
        await gateway.start()
        self.assertIn("reactor class: twisted.internet.epollreactor.EPollReactor.", gateway.log())
        gateway.assertCleanExit(await gateway.stop())


class _TwistedReactorGateway(GatewayProcess):
    """
    A gateway started with C{twistd --reactor epoll}.
    """

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "--reactor", "epoll", *command[1:]]
