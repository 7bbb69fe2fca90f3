"""
Tests for L{imgateway.core.presence}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.core.presence import MAX_NOTE_CHARS, OFFLINE, Presence, PresenceState, aggregate

S = PresenceState


class PresenceTests(SynchronousTestCase):
    """
    Presence values.
    """

    def test_openClosed(self) -> None:
        """
        Every state but offline and appear-offline is open (PIDF basic).
        """
        closed = {s for s in S if not Presence(s).isOpen}
        self.assertEqual(closed, {S.OFFLINE, S.APPEAR_OFFLINE})

    def test_toWatchers(self) -> None:
        """
        Watchers see appear-offline as offline without the note; other
        states as they are.
        """
        self.assertEqual(Presence(S.APPEAR_OFFLINE, "hiding").toWatchers(), OFFLINE)
        self.assertEqual(Presence(S.AWAY, "lunch").toWatchers(), Presence(S.AWAY, "lunch"))

    def test_noteLimits(self) -> None:
        """
        A note of L{MAX_NOTE_CHARS} characters is accepted, one more is
        refused; line breaks and control characters are refused, a TAB is
        allowed.
        """
        Presence(S.AWAY, "x" * MAX_NOTE_CHARS)
        self.assertRaises(ValueError, Presence, S.AWAY, "x" * (MAX_NOTE_CHARS + 1))
        for bad in ("a\nb", "a\rb", "a\x00b", "a\x1bb"):
            self.assertRaises(ValueError, Presence, S.AWAY, bad)
        Presence(S.AWAY, "a\tb")

    def test_valuesAreStateNames(self) -> None:
        """
        The states' values are their names on the native protocol and in
        DESIGN.md's table.
        """
        self.assertEqual(
            [s.value for s in S],
            ["online", "busy", "be-right-back", "away", "on-the-phone", "out-to-lunch", "appear-offline", "offline"],
        )


class AggregateTests(SynchronousTestCase):
    """
    L{aggregate}: a user's presence from its sessions'.
    """

    def test_empty(self) -> None:
        """
        No sessions (or only offline ones) is offline.
        """
        self.assertEqual(aggregate([]), OFFLINE)
        self.assertEqual(aggregate([OFFLINE, OFFLINE]), OFFLINE)

    def test_mostAvailableWins(self) -> None:
        """
        The most available state wins, with its note.
        """
        order = [S.ONLINE, S.BE_RIGHT_BACK, S.OUT_TO_LUNCH, S.AWAY, S.ON_THE_PHONE, S.BUSY, S.OFFLINE]
        for i, better in enumerate(order):
            for worse in order[i:]:
                got = aggregate([Presence(worse, "w"), Presence(better, "b")])
                self.assertEqual(got.state, better, (better, worse))

    def test_appearOfflineWins(self) -> None:
        """
        Appear-offline on any session hides the user, whatever the others
        say.
        """
        self.assertEqual(aggregate([Presence(), Presence(S.APPEAR_OFFLINE)]).state, S.APPEAR_OFFLINE)
