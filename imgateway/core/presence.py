# -*- test-case-name: tests.test_presence -*-
"""
Presence: an open/closed basic status plus one state from the Exchange set,
and a free-text note (PIDF + RPID, RFC 3863 / RFC 4480).

A session publishes a L{Presence}; the home server holds it as a lease and
aggregates a user's sessions with L{aggregate}.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable

from attrs import frozen

from imgateway._compiled import defaultField

__all__ = [
    "MAX_NOTE_CHARS",
    "OFFLINE",
    "Presence",
    "PresenceState",
    "aggregate",
]

#: Longest presence note, in characters.
MAX_NOTE_CHARS = 1024


class PresenceState(enum.Enum):
    """
    The presence states of Exchange 2000 Instant Messaging, plus C{offline}.

    The value is the state's name on the native protocol and in the config.
    """

    ONLINE = "online"
    BUSY = "busy"
    BE_RIGHT_BACK = "be-right-back"
    AWAY = "away"
    ON_THE_PHONE = "on-the-phone"
    OUT_TO_LUNCH = "out-to-lunch"
    APPEAR_OFFLINE = "appear-offline"
    OFFLINE = "offline"

    @property
    def isOpen(self) -> bool:
        """
        Whether watchers see the user as reachable (PIDF basic C{open}).
        C{appear-offline} is closed to watchers.
        """
        return self not in (PresenceState.APPEAR_OFFLINE, PresenceState.OFFLINE)

    @property
    def label(self) -> str:
        """
        A human label: C{"be right back"}.
        """
        return self.value.replace("-", " ")


# How available each state makes a user, best first; the aggregate of several
# sessions is the most available of them (see aggregate()).
_AVAILABILITY = [
    PresenceState.ONLINE,
    PresenceState.BE_RIGHT_BACK,
    PresenceState.OUT_TO_LUNCH,
    PresenceState.AWAY,
    PresenceState.ON_THE_PHONE,
    PresenceState.BUSY,
    PresenceState.OFFLINE,
]
_RANK = {state: rank for rank, state in enumerate(_AVAILABILITY)}


def _checkNote(instance: object, attribute: object, value: str) -> None:
    if len(value) > MAX_NOTE_CHARS:
        raise ValueError(f"presence note longer than {MAX_NOTE_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") and c != "\t" for c in value):
        raise ValueError("presence note may not contain line breaks or control characters")


@frozen
class Presence:
    """
    One presence value, as published by a session or seen by a watcher.

    @ivar state: The L{PresenceState}.
    @ivar note: Free text ("in a meeting until 3"); empty when none.
    """

    state: PresenceState = PresenceState.ONLINE
    note: str = defaultField(default="", validator=_checkNote)

    @property
    def isOpen(self) -> bool:
        """
        PIDF basic status: C{True} for open.
        """
        return self.state.isOpen

    def toWatchers(self) -> Presence:
        """
        What watchers see of this presence: C{appear-offline} shows as
        C{offline} with no note.
        """
        if self.state is PresenceState.APPEAR_OFFLINE:
            return OFFLINE
        return self

    def __str__(self) -> str:
        return f"{self.state.value} ({self.note})" if self.note else self.state.value


#: The presence of a user with no session.
OFFLINE = Presence(PresenceState.OFFLINE)


def aggregate(presences: Iterable[Presence]) -> Presence:
    """
    A user's presence from those of its sessions.

    C{appear-offline} on any session wins (the user asked to hide); otherwise
    the most available state wins (online, then be-right-back, out-to-lunch,
    away, on-the-phone, busy), and its note goes with it. No session at all,
    or only offline ones, is L{OFFLINE}.
    """
    best: Presence | None = None
    for p in presences:
        if p.state is PresenceState.APPEAR_OFFLINE:
            return p
        if best is None or _RANK[p.state] < _RANK[best.state]:
            best = p
    return best if best is not None else OFFLINE
