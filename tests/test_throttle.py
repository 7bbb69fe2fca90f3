"""
Tests for L{imgateway.core.throttle}: the login throttle and the
per-source connection limits, on a fake clock, and their C{[limits]}
configuration table.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import parseConfig
from imgateway.core.errors import AuthenticationFailed, ConfigError
from imgateway.core.throttle import (
    ConnectionLimiter,
    LimitsConfig,
    LoginThrottle,
    LoginThrottled,
    REFUSAL_LOG_INTERVAL,
)

ALICE = "alice@corp.example"
BOB = "bob@corp.example"


def peer(host: str, port: int = 40000) -> IPv4Address | IPv6Address:
    """
    A TCP peer address.
    """
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class LoginThrottleTests(SynchronousTestCase):
    """
    Tests for L{LoginThrottle}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.config = LimitsConfig(
            loginFailuresPerAddress=6,
            addressBlockSeconds=100.0,
            loginFailuresPerAccount=3,
            accountBlockSeconds=30.0,
            loginFailureWindow=60.0,
        )
        self.throttle = LoginThrottle(self.config, self.clock)

    def failLogins(self, source: str | None, account: str, times: int = 1) -> None:
        """
        Record C{times} failed logins.
        """
        for _ in range(times):
            self.throttle.check(source, account)
            self.throttle.failed(source, account)

    def test_accountBoundary(self) -> None:
        """
        C{login_failures_per_account - 1} failures of one account from one
        source leave it free; one more blocks that pair, and the refusal is
        L{LoginThrottled} (an L{AuthenticationFailed}) with the time left.
        """
        self.failLogins("192.0.2.7", ALICE, 2)
        self.throttle.check("192.0.2.7", ALICE)
        self.throttle.failed("192.0.2.7", ALICE)
        e = self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)
        self.assertIsInstance(e, AuthenticationFailed)
        self.assertEqual(e.retryAfter, 30)
        self.assertIn("too many failed logins", str(e))

    def test_otherSourceNotLockedOut(self) -> None:
        """
        The real user logging in from another source is not refused, nor
        is another account from the blocked source.
        """
        self.failLogins("192.0.2.7", ALICE, 3)
        self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)
        self.throttle.check("198.51.100.1", ALICE)
        self.throttle.check("192.0.2.7", BOB)

    def test_accountBlockEnds(self) -> None:
        """
        The pair's block lasts C{account_block_seconds}: refused just
        before, allowed at the end.
        """
        self.failLogins("192.0.2.7", ALICE, 3)
        self.clock.advance(29.5)
        e = self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)
        self.assertEqual(e.retryAfter, 1)
        self.clock.advance(0.5)
        self.throttle.check("192.0.2.7", ALICE)

    def test_window(self) -> None:
        """
        Failures older than C{login_failure_window} are forgotten.
        """
        self.failLogins("192.0.2.7", ALICE, 2)
        self.clock.advance(60)
        self.failLogins("192.0.2.7", ALICE, 2)
        self.throttle.check("192.0.2.7", ALICE)

    def test_addressBoundary(self) -> None:
        """
        C{login_failures_per_address} failures from one source, over any
        accounts, block every login from it for C{address_block_seconds};
        other sources are unaffected.
        """
        for i in range(5):
            self.failLogins("192.0.2.7", f"user{i}@corp.example")
        self.throttle.check("192.0.2.7", "someone@corp.example")
        self.failLogins("192.0.2.7", "user5@corp.example")
        e = self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", "someone@corp.example")
        self.assertEqual(e.retryAfter, 100)
        self.throttle.check("198.51.100.1", "someone@corp.example")
        self.clock.advance(100)
        self.throttle.check("192.0.2.7", "someone@corp.example")

    def test_successClearsAccount(self) -> None:
        """
        A successful login forgets that pair's failures, but not the
        source's.
        """
        self.failLogins("192.0.2.7", ALICE, 2)
        self.throttle.succeeded("192.0.2.7", ALICE)
        self.failLogins("192.0.2.7", ALICE, 2)
        self.throttle.check("192.0.2.7", ALICE)
        self.failLogins("192.0.2.7", BOB, 2)
        self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", "carol@corp.example")

    def test_successDoesNotLiftBlock(self) -> None:
        """
        A success reported for a blocked pair (an attempt checked before
        the block began) does not lift the block.
        """
        self.failLogins("192.0.2.7", ALICE, 3)
        self.throttle.succeeded("192.0.2.7", ALICE)
        self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)

    def test_noSource(self) -> None:
        """
        Logins without a source are never throttled.
        """
        for _ in range(50):
            self.failLogins(None, ALICE)
        self.throttle.check(None, ALICE)
        self.assertEqual(self.throttle.tracked, (0, 0))

    def test_logged(self) -> None:
        """
        The start of a block and every refusal are logged with the source
        and the account, naming the limit.
        """
        with capturedLogs() as events:
            self.failLogins("192.0.2.7", ALICE, 3)
            self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)
            self.assertRaises(LoginThrottled, self.throttle.check, "192.0.2.7", ALICE)
        self.assertEqual(len(events), 3)
        for event in events:
            self.assertEqual(event["source"], "192.0.2.7")
            self.assertEqual(event["account"], ALICE)
        self.assertIn("login_failures_per_account", events[0]["log_format"])
        self.assertEqual(events[1]["key"], "login_failures_per_account")

    def test_boundedMemory(self) -> None:
        """
        The tables hold at most C{max_tracked_sources} entries each, and
        forget entries that have expired.
        """
        throttle = LoginThrottle(LimitsConfig(maxTrackedSources=10, loginFailureWindow=60.0), self.clock)
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}", f"u{i}@corp.example")
        self.assertEqual(throttle.tracked, (10, 10))
        self.clock.advance(60)
        throttle.failed("192.0.2.1", ALICE)
        self.assertEqual(throttle.tracked, (1, 1))


class ConnectionLimiterTests(SynchronousTestCase):
    """
    Tests for L{ConnectionLimiter}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = ConnectionLimiter(
            LimitsConfig(maxUnauthenticatedPerAddress=3, connectionsPerSecondPerAddress=2.0, connectionBurstPerAddress=5),
            self.clock,
        )

    def test_unauthenticatedBoundary(self) -> None:
        """
        C{max_unauthenticated_per_address} connections from one source are
        admitted; one more is refused, with a reason; another source is
        admitted meanwhile.
        """
        admitted = [self.limiter.admit(peer("192.0.2.7", 40000 + i), "native") for i in range(3)]
        self.assertTrue(all(a.admitted for a in admitted))
        self.assertEqual(self.limiter.unauthenticated("192.0.2.7"), 3)
        refused = self.limiter.admit(peer("192.0.2.7"), "native")
        self.assertFalse(refused.admitted)
        self.assertEqual(refused.reason, "Too many connections from your address waiting to log in")
        self.assertIsNone(refused.retryAfter)
        self.assertTrue(self.limiter.admit(peer("192.0.2.8"), "native").admitted)

    def test_release(self) -> None:
        """
        Releasing an admission (login, timeout or close) frees its slot;
        releasing twice frees one slot only, and releasing a refusal frees
        nothing.
        """
        admitted = [self.limiter.admit(peer("192.0.2.7"), "native") for i in range(3)]
        refused = self.limiter.admit(peer("192.0.2.7"), "native")
        refused.release()
        admitted[0].release()
        admitted[0].release()
        self.assertEqual(self.limiter.unauthenticated("192.0.2.7"), 2)
        self.assertTrue(self.limiter.admit(peer("192.0.2.7"), "native").admitted)
        self.assertFalse(self.limiter.admit(peer("192.0.2.7"), "native").admitted)
        for a in admitted:
            a.release()
        self.assertEqual(self.limiter.unauthenticated("192.0.2.7"), 1)

    def test_rateBoundary(self) -> None:
        """
        C{connection_burst_per_address} connections at once are admitted
        (each released at once, as after a login), one more is refused with
        the seconds until the next is allowed, and the allowance refills at
        C{connections_per_second_per_address}.
        """
        for _ in range(5):
            a = self.limiter.admit(peer("192.0.2.7"), "native")
            self.assertTrue(a.admitted)
            a.release()
        refused = self.limiter.admit(peer("192.0.2.7"), "native")
        self.assertFalse(refused.admitted)
        self.assertEqual(refused.reason, "Too many connections from your address")
        self.assertEqual(refused.retryAfter, 1)
        self.assertTrue(self.limiter.admit(peer("192.0.2.8"), "native").admitted)
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.admit(peer("192.0.2.7"), "native").admitted)

    def test_ipv6Per64(self) -> None:
        """
        The addresses of one IPv6 /64 share their limits.
        """
        for i in range(3):
            self.assertTrue(self.limiter.admit(peer(f"2001:db8::{i + 1}"), "native").admitted)
        self.assertFalse(self.limiter.admit(peer("2001:db8::ffff"), "native").admitted)
        self.assertTrue(self.limiter.admit(peer("2001:db8:0:1::1"), "native").admitted)

    def test_noSource(self) -> None:
        """
        A peer without a source is always admitted, and holds nothing.
        """
        for _ in range(10):
            a = self.limiter.admit(None, "native")
            self.assertTrue(a.admitted)
            a.release()
        self.assertEqual(self.limiter.tracked, 0)

    def test_boundedMemory(self) -> None:
        """
        The rate table holds at most C{max_tracked_sources} sources and
        forgets a source once its allowance is full again.
        """
        limiter = ConnectionLimiter(
            LimitsConfig(maxTrackedSources=10, connectionsPerSecondPerAddress=2.0, connectionBurstPerAddress=5),
            self.clock,
        )
        for i in range(1000):
            limiter.admit(peer(f"10.0.{i // 256}.{i % 256}"), "native").release()
        self.assertEqual(limiter.tracked, 10)
        self.clock.advance(2.5)
        limiter.admit(peer("192.0.2.1"), "native").release()
        self.assertEqual(limiter.tracked, 1)

    def test_refusalsLoggedSparingly(self) -> None:
        """
        The first refusal from a source is logged at once, naming the face,
        the source and the limit; the next ones within ten seconds are
        counted and summed up in one line later.
        """
        held = [self.limiter.admit(peer("192.0.2.7"), "XMPP c2s") for _ in range(3)]
        with capturedLogs() as events:
            for _ in range(4):
                self.limiter.admit(peer("192.0.2.7"), "XMPP c2s")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["face"], "XMPP c2s")
        self.assertEqual(events[0]["source"], "192.0.2.7")
        self.assertIn("max_unauthenticated_per_address", events[0]["why"])
        self.clock.advance(10)
        with capturedLogs() as events:
            self.limiter.admit(peer("192.0.2.7"), "XMPP c2s")
        self.assertEqual([e.get("n") for e in events], [3, None])
        for a in held:
            a.release()


class RefusalLogTests(SynchronousTestCase):
    """
    Refused connections are logged once per source (per-source limits) or
    per face and limit (L{ConnectionLimiter.refused}) every
    C{REFUSAL_LOG_INTERVAL} seconds, with a count of the others.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = ConnectionLimiter(LimitsConfig(maxUnauthenticatedPerAddress=1), self.clock)

    def test_faceLimit(self) -> None:
        """
        A face's own limit: the first refusal is logged at once with the
        peer's source, the others within the interval are counted in one
        line, whatever their sources, apart from refusals for per-source
        limits.
        """
        with capturedLogs() as events:
            for n in range(4):
                self.limiter.refused(peer(f"192.0.2.{n}"), "s2s", "cap (s2s_max_unauthenticated)")
            self.limiter.admit(peer("2001:db8:1:2::7"), "s2s")
            self.limiter.admit(peer("2001:db8:1:2::8"), "s2s")
            self.limiter.admit(peer("2001:db8:1:2::9"), "s2s")
            self.clock.advance(REFUSAL_LOG_INTERVAL)
            self.limiter.refused(peer("192.0.2.9"), "s2s", "cap (s2s_max_unauthenticated)")
        lines = [formatEvent(e) for e in events]
        self.assertEqual(
            lines,
            [
                "Refusing a s2s connection from IPv4Address(type='TCP', host='192.0.2.0', port=40000)"
                " (source 192.0.2.0): cap (s2s_max_unauthenticated)",
                "Refusing a s2s connection from IPv6Address(type='TCP', host='2001:db8:1:2::8', port=40000, flowInfo=0, scopeID=0)"
                " (source 2001:db8:1:2::/64): 1 connections waiting to log in (max_unauthenticated_per_address)",
                "Refused 3 more s2s connections (cap (s2s_max_unauthenticated))",
                "Refused 1 more connections from 2001:db8:1:2::/64 (per-address limits)",
                "Refusing a s2s connection from IPv4Address(type='TCP', host='192.0.2.9', port=40000)"
                " (source 192.0.2.9): cap (s2s_max_unauthenticated)",
            ],
        )


class LimitsConfigTests(SynchronousTestCase):
    """
    The C{[limits]} table of the configuration.
    """

    def parse(self, limits: dict[str, Any] | None = None) -> LimitsConfig:
        """
        Parse a configuration with C{limits} as its C{[limits]} table.
        """
        data: dict[str, Any] = {"gateway": {"domain": "corp.example"}}
        if limits is not None:
            data["limits"] = limits
        return parseConfig(data, FilePath("/etc/imgateway.toml"), None, {}).limits  # type: ignore[arg-type]

    def test_defaults(self) -> None:
        """
        Without a C{[limits]} table, the defaults apply.
        """
        self.assertEqual(self.parse(), LimitsConfig())
        self.assertEqual(self.parse({}), LimitsConfig())

    def test_keys(self) -> None:
        """
        Every key sets its limit.
        """
        config = self.parse(
            {
                "login_failures_per_address": 1,
                "address_block_seconds": 2,
                "login_failures_per_account": 3,
                "account_block_seconds": 4.5,
                "login_failure_window": 5,
                "max_unauthenticated_per_address": 6,
                "connections_per_second_per_address": 0.5,
                "connection_burst_per_address": 8,
                "max_tracked_sources": 9,
            }
        )
        self.assertEqual(config, LimitsConfig(1, 2.0, 3, 4.5, 5.0, 6, 0.5, 8, 9))

    def test_invalid(self) -> None:
        """
        Zero, negative, misspelt and mistyped keys are refused, naming the
        table and the key.
        """
        for key, value in [
            ("max_unauthenticated_per_address", 0),
            ("connections_per_second_per_address", -1),
            ("login_failures_per_account", "5"),
            ("login_failure_windw", 5),
        ]:
            e = self.assertRaises(ConfigError, self.parse, {key: value})
            self.assertIn(f"[limits]: {key}", str(e))
