"""
Tests for L{imgateway.core.events}, L{imgateway.core.errors},
L{imgateway.core.records} and L{imgateway.core.ratelimit}.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import weakref

import attrs

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgateway.core.address import Address
from imgateway.core.errors import (
    DeliveryStatus,
    LoopDetected,
    MovedTo,
    NoSuchUser,
    QuotaExceeded,
    ServerError,
    UserBusy,
    statusError,
)
from imgateway.core import events
from imgateway.core.events import DEFAULT_MAX_HOPS, Message, MessageMark, PresenceUpdate, forwarded, newMessageId, newRoutingId
from imgateway.core.presence import Presence
from imgateway.core.ratelimit import TokenBucket
from imgateway.core.records import Subscription

A = Address.fromString("alice@corp.example")
B = Address.fromString("bob@corp.example")


class EventTests(SynchronousTestCase):
    """
    Core events.
    """

    def test_presenceLease(self) -> None:
        """
        A presence update holds until changed unless it has a lease; a
        lease is a positive number of seconds, and forwarding keeps it.
        """
        self.assertIsNone(PresenceUpdate(A, B, Presence()).lease)
        update = PresenceUpdate(A, B, Presence(), lease=90.0)
        self.assertEqual(forwarded(update).lease, 90.0)  # type: ignore[union-attr]
        for bad in (0.0, -1.0):
            self.assertRaises(ValueError, PresenceUpdate, A, B, Presence(), lease=bad)

    def test_messageDefaults(self) -> None:
        """
        A message gets a fresh id and no hops; events compare by value.
        """
        m = Message(A, B, "hi")
        self.assertEqual(m.hops, 0)
        self.assertNotEqual(Message(A, B, "hi").messageId, m.messageId)
        self.assertEqual(Message(A, B, "hi", messageId="x", timestamp=1.0), Message(A, B, "hi", messageId="x", timestamp=1.0))

    def test_routingIdMinted(self) -> None:
        """
        Every message gets a routing id of its own, whatever its client id;
        it is not part of the message's value.
        """
        one, two = Message(A, B, "hi", messageId="x", timestamp=1.0), Message(A, B, "hi", messageId="x", timestamp=1.0)
        self.assertNotEqual(one.routingId, two.routingId)
        self.assertEqual(one, two)

    def test_routingIds(self) -> None:
        """
        Routing ids are a per-process random prefix and a counter: all
        different, valid C{Routing-Id} values for a link (1 to 128 visible
        ASCII characters), and a forked child draws a prefix of its own.
        """
        ids = [newRoutingId() for _ in range(1000)] + [Message(A, B, "hi").routingId for _ in range(1000)]
        self.assertEqual(len(set(ids)), len(ids))
        prefix = ids[0][:16]
        for routingId in ids:
            self.assertTrue(routingId.startswith(prefix), routingId)
            self.assertRegex(routingId, r"\A[\x21-\x7e]{1,128}\Z")
        self.patch(events, "_ROUTING_PREFIX", events._ROUTING_PREFIX)
        events._newRoutingPrefix()
        self.assertNotEqual(newRoutingId()[:16], prefix)

    def test_messageIds(self) -> None:
        """
        The ids the server makes for messages that come without one are 32
        hexadecimal digits (128 random bits), all different, and valid
        message ids.
        """
        ids = [newMessageId() for _ in range(1000)] + [Message(A, B, "hi").messageId for _ in range(1000)]
        self.assertEqual(len(set(ids)), len(ids))
        for messageId in ids:
            self.assertRegex(messageId, r"\A[0-9a-f]{32}\Z")

    def test_messageIdsDrawnInBatches(self) -> None:
        """
        L{newMessageId} draws the bits of L{events.MESSAGE_IDS_PER_DRAW} ids
        from C{os.urandom} at once, one draw for that many ids; a forked
        child (the handler C{os.register_at_fork} runs in it) forgets the
        ids its parent drew and gives out none of them.
        """
        draws: list[int] = []

        def urandom(size: int) -> bytes:
            draws.append(size)
            return os.urandom(size)

        self.patch(events, "_messageIds", [])
        self.patch(events, "_urandom", urandom)
        ids = [newMessageId() for _ in range(events.MESSAGE_IDS_PER_DRAW * 2)]
        self.assertEqual(draws, [16 * events.MESSAGE_IDS_PER_DRAW] * 2)
        self.assertEqual(len(set(ids)), len(ids))
        newMessageId()
        drawn = list(events._messageIds)
        self.patch(events, "_ROUTING_PREFIX", events._ROUTING_PREFIX)
        events._newRoutingPrefix()
        child = [newMessageId() for _ in range(events.MESSAGE_IDS_PER_DRAW)]
        self.assertEqual(len(draws), 4)
        self.assertFalse(set(child) & set(drawn))

    def test_messageReprHidesBody(self) -> None:
        """
        A message's C{repr} (which logs show) leaves out its body.
        """
        text = repr(Message(A, B, "the secret plan", messageId="m1"))
        self.assertNotIn("secret", text)
        self.assertIn("m1", text)

    def test_messageIdChecked(self) -> None:
        """
        Message ids are 1 to 128 printable characters without spaces.
        """
        Message(A, B, "hi", messageId="x" * 128)
        for bad in ("", "x" * 129, "a b", "a\nb"):
            self.assertRaises(ValueError, Message, A, B, "hi", messageId=bad)
        self.assertRaises(ValueError, Message, A, B, "hi", hops=-1)

    def test_forwarded(self) -> None:
        """
        Forwarding adds a hop, up to the limit, then raises
        L{LoopDetected}.
        """
        m = Message(A, B, "hi", hops=DEFAULT_MAX_HOPS - 1)
        self.assertEqual(forwarded(m).hops, DEFAULT_MAX_HOPS)
        self.assertRaises(LoopDetected, forwarded, forwarded(m))

    def test_forwardedKeepsEverything(self) -> None:
        """
        A forwarded message is the message with one hop more: every other
        field (the routing id too) is kept.
        """
        m = Message(A, B, "hi", contentType="text/html", messageId="m1", timestamp=1.5, hops=2, routingId="r1", mark=MessageMark.AUTO_REPLY)
        self.assertEqual(attrs.asdict(forwarded(m), recurse=False), attrs.asdict(attrs.evolve(m, hops=3), recurse=False))


    def test_forwardedIsAMessage(self) -> None:
        """
        A forwarded message is a L{Message} like any other: frozen, equal
        to and hashed as the one L{Message} makes of the same fields, with
        the same C{repr} (its body left out).
        """
        m = Message(A, B, "secret", messageId="m1", timestamp=1.5, hops=2, routingId="r1")
        f = forwarded(m)
        expected = Message(A, B, "secret", messageId="m1", timestamp=1.5, hops=3, routingId="r1")
        self.assertIs(type(f), Message)
        self.assertEqual((f, hash(f), repr(f)), (expected, hash(expected), repr(expected)))
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, f, "hops", 0)
        self.assertEqual(m.hops, 2)

    def test_preCheckedMessage(self) -> None:
        """
        L{events.preCheckedMessage} makes the L{Message} that L{Message}
        makes of the same fields, every field kept (the routing id too):
        equal, same hash, C{repr} and type, frozen.
        """
        for mark in (None, *MessageMark):
            fields = (A, B, "hi ☃", "text/html", "m-1", 1.25, 3, "r.1", mark)
            made = events.preCheckedMessage(*fields)
            expected = Message(*fields)
            self.assertIs(type(made), Message)
            self.assertEqual(attrs.astuple(made, recurse=False), fields)
            self.assertEqual((made, hash(made), repr(made)), (expected, hash(expected), repr(expected)))
            self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, made, "body", "x")

    def test_preCheckedMessageIsPlainMessage(self) -> None:
        """
        L{events.preCheckedMessage} fills an L{events._Unfrozen} (a class
        of L{Message}'s layout, whose fields plain stores fill) and makes it
        a L{Message}: none is left once it returns; what it returns is a
        L{Message} in every way a caller sees (its class, no instance
        dictionary, a weak reference, a pickle and a copy that are
        L{Message}s equal to it, frozen to every way of setting or deleting
        a field).
        """
        self.assertEqual(events._Unfrozen.__slots__, ())
        self.assertEqual(events._Unfrozen.__basicsize__, Message.__basicsize__)
        made = events.preCheckedMessage(A, B, "hi", "text/plain", "m-1", 1.25, 1, "r.1", None)
        self.assertIs(made.__class__, Message)
        self.assertFalse(hasattr(made, "__dict__"))
        self.assertIs(weakref.ref(made)(), made)
        for other in (pickle.loads(pickle.dumps(made)), copy.copy(made), attrs.evolve(made)):
            self.assertIs(type(other), Message)
            self.assertEqual((other, other.routingId), (made, "r.1"))
        for name in ("sender", "hops", "mark"):
            self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, made, name, None)
            self.assertRaises(attrs.exceptions.FrozenInstanceError, delattr, made, name)
        self.assertEqual(made.hops, 1)
        gc.collect()
        self.assertEqual([o for o in gc.get_objects() if type(o) is events._Unfrozen], [])

    def test_checkMessageId(self) -> None:
        """
        L{events.checkMessageId} is L{Message}'s check of its id: 1 to 128
        printable characters without spaces, with the same errors.
        """
        events.checkMessageId("x" * 128)
        for bad in ("", "x" * 129, "a b", "a\nb", "\u2028"):
            e = self.assertRaises(ValueError, events.checkMessageId, bad)
            self.assertEqual(str(e), str(self.assertRaises(ValueError, Message, A, B, "hi", messageId=bad)))


class ErrorTests(SynchronousTestCase):
    """
    Delivery errors and statuses.
    """

    def test_statusError(self) -> None:
        """
        L{statusError} builds the error class of each failed status; busy
        keeps its alternate.
        """
        for status in DeliveryStatus:
            if status is DeliveryStatus.DELIVERED:
                continue
            self.assertEqual(statusError(status).status, status)
        busy = statusError(DeliveryStatus.BUSY, "on the phone", "tel:+15550100")
        self.assertIsInstance(busy, UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")  # type: ignore[attr-defined]
        self.assertIsInstance(statusError(DeliveryStatus.NO_SUCH_USER), NoSuchUser)
        self.assertIsInstance(statusError(DeliveryStatus.QUOTA_EXCEEDED), QuotaExceeded)

    def test_movedTo(self) -> None:
        """
        L{MovedTo} is status 301 and carries the recipient's home server;
        L{statusError} builds it with the home it is given.
        """
        moved = statusError(DeliveryStatus.MOVED, "moved", home="hs2")
        assert isinstance(moved, MovedTo)
        self.assertEqual((moved.status.value, moved.home, moved.text), (301, "hs2", "moved"))

    def test_defaultText(self) -> None:
        """
        An error without text says its status in words.
        """
        self.assertEqual(ServerError().text, "server error")

    def test_statusHashedByIdentity(self) -> None:
        """
        A L{DeliveryStatus} hashes by identity, without C{enum.Enum}'s
        C{__hash__} in Python (the metrics count every message in a
        dictionary keyed by status); each is found by its value as before.
        """
        counts = {status: status.value for status in DeliveryStatus}
        for status in DeliveryStatus:
            self.assertEqual(hash(status), object.__hash__(status))
            self.assertEqual(counts[DeliveryStatus(status.value)], status.value)
        self.assertIs(type(DeliveryStatus.DELIVERED).__hash__, object.__hash__)


class SubscriptionTests(SynchronousTestCase):
    """
    L{Subscription.fromFlags}.
    """

    def test_flags(self) -> None:
        """
        The four combinations give none, to, from and both.
        """
        f = Subscription.fromFlags
        self.assertEqual([f(False, False), f(True, False), f(False, True), f(True, True)],
                         [Subscription.NONE, Subscription.TO, Subscription.FROM, Subscription.BOTH])


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket}.
    """

    def test_burstThenRate(self) -> None:
        """
        A full bucket allows C{burst} events, then one per 1/C{rate}
        seconds; L{TokenBucket.retryAfter} says how long to wait.
        """
        clock = Clock()
        bucket = TokenBucket(2.0, 3, clock)
        self.assertEqual([bucket.consume() for _ in range(4)], [True, True, True, False])
        self.assertAlmostEqual(bucket.retryAfter(), 0.5)
        clock.advance(0.5)
        self.assertTrue(bucket.consume())
        self.assertFalse(bucket.consume())
        clock.advance(100)
        self.assertEqual(sum(bucket.consume() for _ in range(10)), 3)

    def test_invalid(self) -> None:
        """
        A rate of zero or a burst below one is refused.
        """
        self.assertRaises(ValueError, TokenBucket, 0, 1, Clock())
        self.assertRaises(ValueError, TokenBucket, 1, 0, Clock())
