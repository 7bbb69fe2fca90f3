# -*- test-case-name: tests.test_native_outstanding -*-
"""
Which of one side's requests still await a response: the server numbers
its requests on a connection with L{OutstandingRequests.next} and checks
each response the client sends with L{OutstandingRequests.answer}
(C{docs/protocol.md} section 1), in memory that does not grow with the
number of requests.
"""

from __future__ import annotations

from imgateway.adapters.native.framing import MAX_SEQ

__all__ = ["OutstandingRequests"]


def _wireSeq(n: int) -> int:
    """
    The sequence number of the C{n}th request (from 1): 1 to L{MAX_SEQ},
    then 1 again.
    """
    return (n - 1) % MAX_SEQ + 1


class OutstandingRequests:
    """
    The requests one side sent on a connection and the responses it got.

    A response answers a request that was sent among the last C{window}
    and has not been answered yet; anything else (a sequence number never
    sent, or sent before those, or one answered already) is refused. So
    the responses accepted never outnumber the requests sent.

    Requests are numbered in the order sent; everything up to C{floor} is
    settled (answered, or older than the window and forgotten), and a bit
    mask holds which of the later ones were answered out of order. A peer
    that answers in order costs nothing; one that leaves a request
    unanswered and answers the later ones costs a bit each, at most
    C{window} bits.

    @ivar window: How many of the latest requests are kept track of.
    @ivar sent: How many requests were sent.
    @ivar floor: How many of them are settled: every request up to it
        (the C{floor}th sent) was answered or forgotten. Never less than
        C{sent - window}. Read-only for others: a writer that counts a
        request itself (L{next}'s usual case: C{sent + 1} within the window
        and not past L{MAX_SEQ}) reads it.
    """

    # No instance dict: one per native connection.
    __slots__ = ("window", "sent", "floor", "_ahead")

    def __init__(self, window: int) -> None:
        """
        @param window: See L{OutstandingRequests.window}; at least 1, and
            less than L{MAX_SEQ} (a sequence number is then never reused
            inside the window).
        """
        if not 1 <= window < MAX_SEQ:
            raise ValueError(f"window must be 1 to {MAX_SEQ - 1}, got {window!r}")
        self.window = window
        self.sent = 0
        self.floor = 0
        self._ahead = 0

    @property
    def unanswered(self) -> int:
        """
        How many of the requests inside the window await a response.
        """
        return self.sent - self.floor - self._ahead.bit_count()

    def next(self) -> int:
        """
        Count one more request sent.

        @return: Its sequence number: 1, 2, ... L{MAX_SEQ}, then 1 again.
        """
        sent = self.sent = self.sent + 1
        if sent - self.floor > self.window:
            # The oldest one is forgotten: a response to it is refused.
            self._settle(sent - self.window - self.floor)
        return sent if sent <= MAX_SEQ else _wireSeq(sent)

    def answer(self, seq: int) -> bool:
        """
        Take a response.

        @param seq: Its sequence number.
        @return: Whether it answers a request inside the window that had
            not been answered yet (which now is).
        """
        floor = self.floor
        if not self._ahead and floor < self.sent and seq == floor % MAX_SEQ + 1:
            # The oldest request awaiting an answer, none answered after it
            # (a peer that answers in order): the floor moves past it.
            self.floor = floor + 1
            return True
        if not 1 <= seq <= MAX_SEQ or self.sent == 0:
            return False
        n = self.sent - (_wireSeq(self.sent) - seq) % MAX_SEQ
        if n <= self.floor:
            return False
        bit = 1 << (n - self.floor - 1)
        if self._ahead & bit:
            return False
        self._ahead |= bit
        self._settle(0)
        return True

    def answerInOrder(self, count: int) -> bool:
        """
        Take responses to the C{count} oldest requests awaiting one, in
        order (the numbers C{floor + 1} to C{floor + count}, as sent), in
        one step: what L{answer} does for each of them, when that takes
        them all.

        @return: Whether they were taken: C{count} requests await an
            answer there, none answered after them, and their numbers do
            not wrap past L{MAX_SEQ}. If not, nothing changed (L{answer}
            decides each).
        """
        floor = self.floor
        if self._ahead or floor + count > self.sent or floor % MAX_SEQ + count > MAX_SEQ:
            return False
        self.floor = floor + count
        return True

    def answerAll(self, seqs: list[int]) -> int:
        """
        Take responses in order, as L{answer} takes each, until one is
        refused: the responses of one read. Those that answer the oldest
        requests awaiting one, in order, are taken in one step
        (L{answerInOrder}).

        @param seqs: Their sequence numbers, in the order received; at
            least one.
        @return: How many were taken: C{len(seqs)}, or the index of the
            first one refused (those after it are not looked at; the
            refused one changed nothing, as L{answer} refusing it).
        """
        count = len(seqs)
        first = seqs[0]
        if (
            first == self.floor % MAX_SEQ + 1
            and (count == 1 or seqs == list(range(first, first + count)))
            and self.answerInOrder(count)
        ):
            return count
        for taken, seq in enumerate(seqs):
            if not self.answer(seq):
                return taken
        return count

    def _settle(self, forget: int) -> None:
        """
        Move the floor past C{forget} more requests, then past every
        answered request right above it.
        """
        ahead = self._ahead >> forget
        floor = self.floor + forget
        # The answered requests right above the floor: the mask's low bits
        # that are set (ahead & ~(ahead + 1) isolates them).
        run = (ahead & ~(ahead + 1)).bit_length()
        self._ahead = ahead >> run
        self.floor = floor + run
