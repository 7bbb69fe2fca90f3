# -*- test-case-name: tests.test_status_health -*-
"""
Health checks (L{IHealthCheck}) of what the gateway itself runs, and
L{checkHealth}, which asks them all for C{/healthz} of C{[status]}.

A listener is up while it listens; the SQLite stores while they answer a
read through their queue; an LDAP directory while one of its connections
is up. Links of every kind (server links and routes, XMPP component and
federation, IRC networks) are checked through what their services say of
them (L{imgateway.core.linkinfo.LinkInfoSource}, L{linkChecks}): a link is
down when it is required and not up, as its service decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.core.linkinfo import LinkInfo, LinkInfoSource, linkInfos
from imgateway.interfaces import IHealthCheck

__all__ = ["HealthReport", "LinkCheck", "SQLiteHealth", "ValueHealth", "checkHealth", "findHealthChecks", "linkChecks"]


@frozen
class HealthReport:
    """
    What one check answered.

    @ivar kind: Its L{IHealthCheck.kind}.
    @ivar name: Its L{IHealthCheck.subject}.
    @ivar problem: C{None} when up, else why not.
    """

    kind: str
    name: str
    problem: str | None

    @property
    def up(self) -> bool:
        return self.problem is None

    def asJSON(self) -> dict[str, object]:
        """
        @return: The report as C{/healthz} gives it.
        """
        entry: dict[str, object] = {"kind": self.kind, "name": self.name, "up": self.up}
        if self.problem is not None:
            entry["problem"] = self.problem
        return entry


def checkHealth(checks: Sequence[IHealthCheck], clock: IReactorTime, timeout: float) -> Deferred[list[HealthReport]]:
    """
    Ask every check at once.

    @param timeout: Seconds a check may take; one still pending then, or
        one that fails, counts as down.
    @return: Fires with one report per check, in the order given.
    """
    if not checks:
        return succeed([])
    problems: dict[int, str | None] = {}
    done: Deferred[list[HealthReport]] = Deferred()

    def settle(index: int, problem: str | None) -> None:
        if index in problems:
            return
        problems[index] = problem
        if len(problems) == len(checks):
            if timer.active():
                timer.cancel()
            done.callback([HealthReport(str(c.kind), str(c.subject), problems[i]) for i, c in enumerate(checks)])

    def timedOut() -> None:
        for index in range(len(checks)):
            settle(index, f"no answer within {timeout:g} s")

    timer = clock.callLater(timeout, timedOut)
    for index, check in enumerate(checks):

        def answered(problem: object, index: int = index) -> None:
            settle(index, None if problem is None else str(problem))

        def failed(f: Failure, index: int = index) -> None:
            settle(index, f"check failed: {f.getErrorMessage()}")

        maybeDeferred(check.check).addCallbacks(answered, failed)
    return done


@implementer(IHealthCheck)
class ValueHealth:
    """
    A check whose answer a function gives at once.

    @ivar problem: Returns C{None} when up, else why not.
    """

    def __init__(self, kind: str, name: str, problem: Callable[[], str | None]) -> None:
        self.kind = kind
        self.subject = name
        self.problem = problem

    def check(self) -> str | None:
        return self.problem()


@implementer(IHealthCheck)
class SQLiteHealth:
    """
    A SQLite store (L{imgateway.sqlite.Database}) answers a read through
    its queue, behind the work already asked of it.
    """

    kind = "store"

    def __init__(self, name: str, database: Any) -> None:
        """
        @param database: An L{imgateway.sqlite.Database}.
        """
        self.subject = name
        self._database = database

    def check(self) -> Deferred[str | None]:
        def read(cursor: Any) -> None:
            cursor.execute("SELECT 1").fetchone()

        d: Deferred[Any] = self._database.read(read)
        return d.addCallbacks(lambda _: None, lambda f: f"unreadable: {f.getErrorMessage()}")


@implementer(IHealthCheck)
class LinkCheck:
    """
    The health check of one link as its service says it is now
    (L{imgateway.core.linkinfo.LinkInfo}): of kind C{"link"}, named by the
    link's kind and name (C{"server hs2"}); down when the link is required
    and not up (L{LinkInfo.problem}).
    """

    kind = "link"

    def __init__(self, info: LinkInfo) -> None:
        self.info = info
        self.subject = f"{info.kind} {info.name}"

    def check(self) -> str | None:
        return self.info.problem


def linkChecks(sources: Sequence[LinkInfoSource]) -> list[IHealthCheck]:
    """
    @param sources: The services that keep links up
        (L{imgateway.core.linkinfo.findLinkSources} of the gateway's tree).
    @return: A check of each of their links now.
    """
    return [LinkCheck(info) for info in linkInfos(sources)]


def findHealthChecks(service: Any) -> list[IHealthCheck]:
    """
    @return: The services of the tree under (and including) C{service}
        that provide L{IHealthCheck}, depth first.
    """
    found = [service] if IHealthCheck.providedBy(service) else []
    try:
        children = list(service)
    except TypeError:
        children = []
    for child in children:
        found.extend(findHealthChecks(child))
    return found
