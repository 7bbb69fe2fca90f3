"""
Unit tests for the health checks and their aggregation
(L{imgateway.status.health}), the listener's own check
(L{imgateway.adapters.base.ListenerService}), and the checks a gateway
registers.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgateway.adapters.base import ListenerService
from imgateway.core.linkinfo import LinkInfo
from imgateway.interfaces import IHealthCheck
from imgateway.status.health import HealthReport, LinkCheck, SQLiteHealth, ValueHealth, checkHealth, findHealthChecks
from tests import test_ldap_directory


@implementer(IHealthCheck)
class FakeCheck:
    """
    A check answering what it is given.
    """

    def __init__(self, subject: str, answer: Any, kind: str = "link") -> None:
        self.kind = kind
        self.subject = subject
        self.answer = answer

    def check(self) -> Any:
        return self.answer


class CheckHealthTests(SynchronousTestCase):
    """
    L{checkHealth} asks every check and reports each.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def reports(self, *checks: IHealthCheck) -> list[HealthReport]:
        return self.successResultOf(checkHealth(checks, self.clock, 5.0))

    def test_none(self) -> None:
        """
        No checks: no reports, at once.
        """
        self.assertEqual(self.reports(), [])

    def test_upAndDown(self) -> None:
        """
        Synchronous and asynchronous answers are reported in the order of
        the checks; a problem text marks a check down.
        """
        reports = self.reports(FakeCheck("a", None), FakeCheck("b", succeed("down: refused")), FakeCheck("c", succeed(None)))
        self.assertEqual(
            reports,
            [HealthReport("link", "a", None), HealthReport("link", "b", "down: refused"), HealthReport("link", "c", None)],
        )
        self.assertEqual([r.up for r in reports], [True, False, True])
        self.assertEqual(reports[1].asJSON(), {"kind": "link", "name": "b", "up": False, "problem": "down: refused"})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingCheck(self) -> None:
        """
        A check that raises or fails counts as down.
        """

        @implementer(IHealthCheck)
        class Raising:
            kind = "store"
            subject = "broken"

            def check(self) -> None:
                raise RuntimeError("boom")

        [raised, failed] = self.reports(Raising(), FakeCheck("f", fail(RuntimeError("lost"))))
        self.assertEqual(raised.problem, "check failed: boom")
        self.assertEqual(failed.problem, "check failed: lost")

    def test_timeout(self) -> None:
        """
        A check still pending after the timeout counts as down; the others
        are reported as they answered.
        """
        d = checkHealth([FakeCheck("slow", Deferred()), FakeCheck("quick", None)], self.clock, 5.0)
        self.assertNoResult(d)
        self.clock.advance(5.0)
        slow, quick = self.successResultOf(d)
        self.assertEqual(slow.problem, "no answer within 5 s")
        self.assertTrue(quick.up)


class ChecksTests(SynchronousTestCase):
    """
    The checks of what the gateway runs.
    """

    def test_interfaces(self) -> None:
        """
        Every check provides L{IHealthCheck}.
        """
        verifyObject(IHealthCheck, ValueHealth("store", "x", lambda: None))
        verifyObject(IHealthCheck, SQLiteHealth("directory", object()))
        verifyObject(IHealthCheck, LinkCheck(LinkInfo("server", "hs2", True)))
        verifyObject(IHealthCheck, ListenerService(MemoryReactor(), "tcp:5300", Factory(), "Native face"))

    def test_listener(self) -> None:
        """
        A listener is up once it listens, and down once stopped; its name
        is the face and the endpoint.
        """
        listener = ListenerService(MemoryReactor(), "tcp:5300:interface=127.0.0.1", Factory(), "Native face")
        self.assertEqual((listener.kind, listener.subject), ("listener", "Native face tcp:5300:interface=127.0.0.1"))
        self.assertEqual(listener.check(), "not listening")
        listener.privilegedStartService()
        listener.startService()
        self.assertIsNone(listener.check())
        listener.stopService()
        self.assertEqual(listener.check(), "not listening")

    def test_link(self) -> None:
        """
        A link's check is named by its kind and name; it is up while the
        link is up or not required, down (with the link's detail) while
        required and not up.
        """
        check = LinkCheck(LinkInfo("server", "hs2", True, "0 waiting"))
        self.assertEqual((check.kind, check.subject), ("link", "server hs2"))
        self.assertIsNone(check.check())
        self.assertIsNone(LinkCheck(LinkInfo("server", "hs2", False, "idle: not used yet", required=False)).check())
        self.assertEqual(LinkCheck(LinkInfo("server", "hs2", False, "1 waiting")).check(), "down: 1 waiting")
        self.assertEqual(LinkCheck(LinkInfo("server", "hs2", False)).check(), "down")

    def test_sqlite(self) -> None:
        """
        A SQLite store is up when a read through its queue answers, down
        when it fails.
        """

        class Database:
            answer: Deferred[Any] = succeed(None)

            def read(self, f: Any) -> Deferred[Any]:
                return self.answer

        database = Database()
        check = SQLiteHealth("directory", database)
        self.assertIsNone(self.successResultOf(check.check()))
        database.answer = fail(OSError("disk I/O error"))
        self.assertEqual(self.successResultOf(check.check()), "unreadable: disk I/O error")

    def test_find(self) -> None:
        """
        L{findHealthChecks} finds the services of a tree that provide
        L{IHealthCheck}, depth first.
        """
        top = MultiService()
        inner = MultiService()
        inner.setServiceParent(top)
        first = ListenerService(MemoryReactor(), "tcp:1", Factory(), "A")
        first.setServiceParent(inner)
        second = ListenerService(MemoryReactor(), "tcp:2", Factory(), "B")
        second.setServiceParent(top)
        self.assertEqual(findHealthChecks(top), [first, second])


class LDAPHealthTests(test_ldap_directory.DirectoryTestsMixin, SynchronousTestCase):
    """
    An LDAP directory is up while one of its connections is
    (L{imgateway.directory.ldap.LDAPDirectory.problem}), on the fake LDAP
    server of C{tests/test_ldap_directory.py}.
    """

    def test_problem(self) -> None:
        """
        Refused: the problem says why; once a connection is up, none.
        """
        self.server.refuse = True
        directory = self.directory(poolSize=1)
        directory.start()
        self.assertIn("unreachable", directory.problem or "")
        self.assertIn("refused by the test", directory.problem or "")
        self.server.refuse = False
        self.clock.advance(1.0)
        self.assertIsNone(directory.problem)
