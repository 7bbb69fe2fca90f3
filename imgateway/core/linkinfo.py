# -*- test-case-name: tests.test_manhole -*-
"""
The state of a link, as the operator's console shows it (C{gateway.links()}
of the manhole): a value each service that keeps links up gives for each of
them (L{LinkInfoSource}), so that the console finds them all without
knowing the services' insides.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from attrs import frozen

__all__ = ["LinkInfo", "LinkInfoSource"]


@frozen
class LinkInfo:
    """
    The state of one link (to another server, a peer domain, an XMPP
    server or component host, an IRC network).

    @ivar name: Which link, for operators (C{"link to server hs2"}).
    @ivar up: Whether it is connected (and ready) now.
    @ivar detail: More in a few words (C{"3 waiting"}), or C{""}.
    """

    name: str
    up: bool
    detail: str = ""

    def __repr__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"<link {self.name} {'up' if self.up else 'down'}{detail}>"


@runtime_checkable
class LinkInfoSource(Protocol):
    """
    A service (of the gateway's service tree) that keeps links up and says
    how they are.
    """

    def linkInfo(self) -> list[LinkInfo]:
        """
        @return: The state of each of its links now (cheap: no I/O).
        """
