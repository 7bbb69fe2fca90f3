# -*- test-case-name: tests.test_status_metrics -*-
"""
L{NO_METRICS}: the L{IMetrics} that counts nothing, the default of the
objects that count (the home server, the login throttle, the links) until
the gateway gives them its own. It imports nothing of Prometheus.
"""

from __future__ import annotations

from zope.interface import implementer

from imgateway.interfaces import IMetrics, ISession

__all__ = ["NO_METRICS", "NoMetrics"]


@implementer(IMetrics)
class NoMetrics:
    """
    An L{IMetrics} that counts nothing.
    """

    def loggedIn(self, face: str, mechanism: str, session: ISession) -> None:
        pass

    def loginFailed(self, face: str, mechanism: str, condition: str) -> None:
        pass

    def messageOutcome(self, result: object) -> object:
        return result

    def presencePublished(self) -> None:
        pass

    def limitHit(self, limit: str) -> None:
        pass


#: The L{NoMetrics} every counting object starts with.
NO_METRICS = NoMetrics()
