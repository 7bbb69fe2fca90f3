# -*- test-case-name: tests.test_status_linkinfo -*-
"""
The state of a link: a value each service that keeps links up gives for
each of them (L{LinkInfoSource}), so that what reports on links finds them
all without knowing the services' insides. The operator's console
(C{gateway.links()} of the manhole), C{/healthz} and the
C{imgateway_link_up} gauge of C{[status]} all read them (L{findLinkSources},
L{linkInfos}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from attrs import frozen

__all__ = ["LinkInfo", "LinkInfoSource", "findLinkSources", "linkInfos"]


@frozen
class LinkInfo:
    """
    The state of one link (to another server, a peer domain, an XMPP
    server or component host, an IRC network).

    @ivar kind: What sort of link (C{"server"}, C{"domain"},
        C{"server-incoming"}, C{"xmpp-component"}, C{"xmpp-s2s"},
        C{"xmpp-s2s-incoming"}, C{"irc-watcher"}, C{"irc-puppet"}): the
        C{kind} label of C{imgateway_link_up}.
    @ivar name: Which one of its kind (C{"hs2"}, C{"partner.example"},
        C{"libera alice@corp.example"}): the C{link} label.
    @ivar up: Whether it is connected (and ready) now.
    @ivar detail: More in a few words (C{"3 waiting"}), or C{""}.
    @ivar required: Whether it should be up now: a required link that is
        not up is down for C{/healthz}. C{False} for a link that is idle
        (not used yet, nobody needs it) or whose state says nothing of this
        gateway's health (incoming connections; a link found through DNS,
        which anyone can make the gateway try).
    @ivar connects: How many times it came up since the process started
        (C{imgateway_link_connects_total}), or C{None} where not counted.
    """

    kind: str
    name: str
    up: bool
    detail: str = ""
    required: bool = True
    connects: int | None = None

    @property
    def problem(self) -> str | None:
        """
        C{None} when healthy (up, or down but not required), else why not,
        in a few words: what C{/healthz} says of it.
        """
        if self.up or not self.required:
            return None
        return f"down: {self.detail}" if self.detail else "down"

    def __repr__(self) -> str:
        state = "up" if self.up else "down" if self.required else "idle"
        detail = f" ({self.detail})" if self.detail else ""
        return f"<link {self.kind} {self.name} {state}{detail}>"


@runtime_checkable
class LinkInfoSource(Protocol):
    """
    A service (of the gateway's service tree) that keeps links up and says
    how they are. It speaks for the services under it: L{findLinkSources}
    does not look below it.
    """

    def linkInfo(self) -> list[LinkInfo]:
        """
        @return: The state of each of its links now (cheap: no I/O).
        """


def findLinkSources(service: Any) -> list[LinkInfoSource]:
    """
    @param service: A service (of the gateway's tree), or a collection of
        services.
    @return: The L{LinkInfoSource}s under (and including) C{service}, depth
        first, without looking under one found.
    """
    if isinstance(service, LinkInfoSource):
        return [service]
    try:
        children = list(service)
    except TypeError:
        return []
    return [source for child in children for source in findLinkSources(child)]


def linkInfos(sources: Iterable[LinkInfoSource]) -> list[LinkInfo]:
    """
    @return: The links of every source now, in order.
    """
    return [info for source in sources for info in source.linkInfo()]
