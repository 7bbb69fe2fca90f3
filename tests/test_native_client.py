# -*- test-case-name: tests.test_native_client -*-
"""
The shipped client (L{imgateway.client.protocol}) against the native face,
connected in memory (L{twisted.test.iosim}): the client reads every answer
the server can send under its quotas (C{docs/protocol.md} section 3.2).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.native.adapter import NativeAdapter
from imgateway.adapters.native.framing import CLIENT_LIMITS, Limits
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory, largestListAnswers
from imgateway.client.protocol import ClientError, ClientObserver, NativeClientProtocol
from imgateway.config import HomeConfig
from imgateway.core.address import MAX_DOMAIN_CHARS, MAX_LOCAL_BYTES, Address
from imgateway.core.events import PresenceUpdate
from imgateway.core.presence import MAX_NOTE_CHARS, Presence, PresenceState
from imgateway.core.records import (
    MAX_ALTERNATE_CHARS,
    MAX_REPLY_CHARS,
    RULE_STATES,
    PresenceRule,
    RuleAction,
    RuleNetwork,
    MAX_DISPLAY_NAME_CHARS,
    AccessList,
    AuthorisationState,
    ContactRecord,
)
from imgateway.gateway import Gateway
from imgateway.testing import MemoryHomeStore, addUser, memoryGateway

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 5300)

#: A character that takes the most room in a JSON body (two \uXXXX escapes).
WIDE = "\N{GRINNING FACE}"

#: The longest domain (RFC 1035: 253 characters, labels of 63 at most).
LONG_DOMAIN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


def longAddress(n: int) -> Address:
    """
    @return: A different address for each C{n}, as long as an address gets
        and taking as much room in a JSON body as one can (a local part of
        two-byte characters, each escaped to six bytes).
    """
    tag = f"{n:04d}"
    local = "\N{LATIN SMALL LETTER E WITH ACUTE}" * ((MAX_LOCAL_BYTES - len(tag)) // 2) + tag
    address = Address.fromParts(local, LONG_DOMAIN)
    assert len(address.domain) == MAX_DOMAIN_CHARS and len(address.local.encode("utf-8")) >= MAX_LOCAL_BYTES - 1
    return address


class PresenceRecorder(ClientObserver):
    """
    Records the presence the client is told.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[Address, Presence]] = []

    def presenceReceived(self, address: Address, presence: Presence) -> None:
        self.seen.append((address, presence))


class ClientAgainstServer:
    """
    The shipped client logged in to the native face of a memory gateway,
    in memory.
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        gateway: Gateway,
        clock: Clock,
        user: str,
        password: str,
        limits: Limits = CLIENT_LIMITS,
    ) -> None:
        self.testCase = testCase
        self.clock = clock
        factory = NativeServerFactory(gateway, NativeConfig(), clock)
        server = factory.buildProtocol(PEER)
        self.client = NativeClientProtocol(clock=clock, limits=limits)
        self.pump: IOPump = connect(
            server,
            FakeTransport(server, True, HOST, PEER),
            self.client,
            FakeTransport(self.client, False, PEER, HOST),
            clock=clock,
        )
        self.result(self.client.login(user, password))

    def result(self, d: Deferred[Any]) -> Any:
        """
        @return: What C{d} fires with once everything moved.
        """
        self.pump.flush()
        return self.testCase.successResultOf(d)

    def failure(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        self.pump.flush()
        return self.testCase.failureResultOf(d, kind).value


class AnswersAtQuotaTests(SynchronousTestCase):
    """
    A user whose lists are at their quotas, with the longest addresses,
    display names and alternates there are, gets every list answer in
    full through the shipped client, and each body is within the bound
    L{largestListAnswers} computes (which the shipped client's limit
    covers, for the default quotas).
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def gateway(self, home: HomeConfig) -> tuple[Gateway, MemoryHomeStore, Address]:
        gateway = memoryGateway(self.clock, home=home)
        alice = addUser(gateway, "alice", "alice-pw")
        store = gateway.homeStore
        assert isinstance(store, MemoryHomeStore)
        return gateway, store, alice

    def bodies(self, c: ClientAgainstServer) -> dict[str, bytes]:
        """
        @return: The body of each list answer, as the server sends it.
        """
        out: dict[str, bytes] = {}
        for method in ("CONTACTS", "ACCESS", "RULE"):
            response = c.result(c.client.request(method))
            self.assertEqual(response.code, 200)
            out[method] = response.body
        return out

    def test_defaultQuotas(self) -> None:
        """
        At the default C{max_contacts} and C{max_pending_requests}, with
        long display names and addresses, and the default
        C{max_access_entries} and C{max_rules}, the shipped client reads
        C{CONTACTS}, C{ACCESS *} and C{RULE *} answers in full.
        """
        home = HomeConfig()
        gateway, store, alice = self.gateway(home)
        name = WIDE * MAX_DISPLAY_NAME_CHARS
        contacts = [longAddress(n) for n in range(home.maxContacts)]
        store.contacts[alice] = {a: ContactRecord(a, name) for a in contacts}
        requests = [longAddress(10000 + n) for n in range(home.maxPendingRequests)]
        store.authorisations.update({(alice, w): AuthorisationState.PENDING for w in requests})
        entries = [longAddress(20000 + n) for n in range(home.maxAccessEntries)]
        store.access[alice] = {str(a): AccessList.BLOCK for a in entries}
        rules = [s for s in PresenceState if s not in (PresenceState.ONLINE, PresenceState.OFFLINE, PresenceState.APPEAR_OFFLINE)]
        alternate = "tel:" + WIDE * (MAX_ALTERNATE_CHARS - 4)
        store.rules[alice] = [PresenceRule.refuse(s, alternate) for s in rules[: home.maxRules]]

        c = ClientAgainstServer(self, gateway, self.clock, "alice", "alice-pw")
        answer = c.result(c.client.contacts())
        self.assertEqual(len(answer["contacts"]), home.maxContacts)
        self.assertEqual({e["name"] for e in answer["contacts"]}, {name})
        self.assertEqual(answer["requests"], sorted(str(a) for a in requests))
        lists = c.result(c.client.accessLists())
        self.assertEqual((len(lists["allow"]), len(lists["block"])), (0, home.maxAccessEntries))
        self.assertEqual(len(c.result(c.client.rules())), home.maxRules)

        bounds = largestListAnswers(home)
        sizes = {method: len(body) for method, body in self.bodies(c).items()}
        self.assertTrue(sizes["CONTACTS"] > NativeConfig().maxSendQueueBytes, sizes)
        for method, size in sizes.items():
            self.assertLessEqual(size, bounds[method], method)
            self.assertLessEqual(bounds[method], CLIENT_LIMITS.maxBodyBytes, method)

    def test_boundIsTight(self) -> None:
        """
        Lists at small quotas filled with the longest entries that take the
        most room (the longest addresses, names, notes and alternates, in
        characters escaped to twelve bytes each) make answers as large as
        the bound, or nearly.
        """
        home = HomeConfig(maxContacts=3, maxPendingRequests=2, maxAccessEntries=3, maxRules=5)
        gateway, store, alice = self.gateway(home)
        contacts = [longAddress(n) for n in range(home.maxContacts)]
        store.contacts[alice] = {a: ContactRecord(a, WIDE * MAX_DISPLAY_NAME_CHARS) for a in contacts}
        for a in contacts:
            store.authorisations[(a, alice)] = AuthorisationState.AUTHORISED
        store.authorisations.update({(alice, longAddress(100 + n)): AuthorisationState.PENDING for n in range(2)})
        store.access[alice] = {str(longAddress(200 + n)): AccessList.ALLOW for n in range(3)}
        store.rules[alice] = [
            PresenceRule(
                RULE_STATES,
                RuleAction.AUTO_REPLY,
                sender=str(longAddress(300 + n)),
                network=RuleNetwork.REMOTE,
                text=WIDE * MAX_REPLY_CHARS,
            )
            for n in range(home.maxRules)
        ]
        c = ClientAgainstServer(self, gateway, self.clock, "alice", "alice-pw")
        note = WIDE * MAX_NOTE_CHARS
        for a in contacts:
            c.result(gateway.router.deliver(PresenceUpdate(a, alice, Presence(PresenceState.BE_RIGHT_BACK, note))))
        bodies = self.bodies(c)
        self.assertEqual({e["note"] for e in json.loads(bodies["CONTACTS"])["contacts"]}, {note})
        bounds = largestListAnswers(home)
        for method, body in bodies.items():
            self.assertLessEqual(len(body), bounds[method], method)
            # (What is left: the scheme of the alternates, shorter tokens
            # than the longest, one byte short of the longest local part.)
            self.assertGreaterEqual(len(body), bounds[method] * 0.98, method)


class DocumentedTests(SynchronousTestCase):
    """
    C{docs/protocol.md} section 3.2 gives the bounds as computed.
    """

    def test_figures(self) -> None:
        """
        The largest answers with the default quotas, the parts they are
        made of and the shipped client's body limit appear in the spec as
        L{largestListAnswers} and L{CLIENT_LIMITS} make them.
        """
        spec = FilePath(__file__).parent().parent().child("docs").child("protocol.md").getContent().decode("utf-8")
        default = largestListAnswers(HomeConfig())
        one = largestListAnswers(HomeConfig(maxContacts=1, maxPendingRequests=1))["CONTACTS"]
        entry = largestListAnswers(HomeConfig(maxContacts=2, maxPendingRequests=1))["CONTACTS"] - one
        request = largestListAnswers(HomeConfig(maxContacts=1, maxPendingRequests=2))["CONTACTS"] - one
        for figure in (*default.values(), entry, request, CLIENT_LIMITS.maxBodyBytes):
            self.assertIn(f"{figure:,}", spec)


class ClientLimitsTests(SynchronousTestCase):
    """
    What the shipped client accepts from the server.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock)
        self.alice = addUser(self.gateway, "alice", "alice-pw")

    def test_longestStartLine(self) -> None:
        """
        The server's longest start line (a C{NOTIFY} about a contact with
        the longest address) is longer than the 1024 bytes the client once
        took; the shipped client reads it.
        """
        contact = longAddress(1)
        store = self.gateway.homeStore
        assert isinstance(store, MemoryHomeStore)
        store.contacts[self.alice] = {contact: ContactRecord(contact)}
        store.authorisations[(contact, self.alice)] = AuthorisationState.AUTHORISED
        c = ClientAgainstServer(self, self.gateway, self.clock, "alice", "alice-pw")
        observer = PresenceRecorder()
        c.client.observer = observer
        presence = Presence(PresenceState.AWAY, WIDE * MAX_NOTE_CHARS)
        c.result(self.gateway.router.deliver(PresenceUpdate(contact, self.alice, presence)))
        line = f"NOTIFY {contact.presURI()} IMGW/1.0".encode("utf-8")
        self.assertGreater(len(line), 1024)
        self.assertEqual(observer.seen, [(contact, presence)])
        self.assertFalse(c.client.whenClosed().called)

    def test_answerTooLarge(self) -> None:
        """
        An answer larger than the client accepts fails its request at once
        with L{ClientError} 413, and the connection goes on.
        """
        store = self.gateway.homeStore
        assert isinstance(store, MemoryHomeStore)
        store.contacts[self.alice] = {longAddress(n): ContactRecord(longAddress(n)) for n in range(10)}
        c = ClientAgainstServer(self, self.gateway, self.clock, "alice", "alice-pw", Limits(maxBodyBytes=1000))
        error = c.failure(c.client.contacts(), ClientError)
        self.assertEqual(error.code, 413)
        self.assertIn("more than 1000", error.reason)
        c.result(c.client.ping())

    def test_requestAsTheConnectionEnds(self) -> None:
        """
        A request made while the connection is being lost (here by the
        observer told of it, as a program that says C{BYE} when it sees the
        connection end does) fails at once and leaves no timer behind.
        """
        c = ClientAgainstServer(self, self.gateway, self.clock, "alice", "alice-pw")
        made: list[Deferred[Any]] = []

        class SaysBye(ClientObserver):
            def disconnected(self, reason: str) -> None:
                made.append(c.client.request("BYE"))

        c.client.observer = SaysBye()
        c.client.transport.loseConnection()  # type: ignore[union-attr]
        c.pump.flush()
        self.assertTrue(c.client.whenClosed().called)
        error = self.failureResultOf(made[0], ClientError).value
        self.assertEqual(error.reason, "not connected")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientLimits(self) -> None:
        """
        The shipped client takes bodies up to 32 MiB, start lines up to
        4 KiB and header lines up to 16 KiB together.
        """
        self.assertEqual(
            CLIENT_LIMITS,
            Limits(maxStartLineBytes=4096, maxHeaderBytes=16384, maxHeaders=64, maxBodyBytes=32 * 1024 * 1024),
        )
        self.assertEqual(NativeClientProtocol().limits, CLIENT_LIMITS)


class StartupWarningTests(SynchronousTestCase):
    """
    The native face warns at start-up when its quotas allow answers
    larger than the shipped client reads.
    """

    def service(self, home: HomeConfig) -> list[str]:
        gateway = memoryGateway(Clock(), home=home)
        with capturedLogs() as events:
            NativeAdapter().makeService(gateway, NativeConfig(listen=()))
        return [formatEvent(e) for e in events]

    def test_defaults(self) -> None:
        """
        With the default quotas, nothing is said.
        """
        self.assertEqual(self.service(HomeConfig()), [])

    def test_raisedQuotas(self) -> None:
        """
        With quotas whose answers may exceed 32 MiB, the face says which
        answer, how large it may be, and which keys.
        """
        contacts, access = self.service(HomeConfig(maxContacts=5000, maxAccessEntries=20000))
        bounds = largestListAnswers(HomeConfig(maxContacts=5000, maxAccessEntries=20000))
        self.assertIn(f"CONTACTS answers may reach {bounds['CONTACTS']} bytes", contacts)
        self.assertIn("(max_contacts, max_pending_requests)", contacts)
        self.assertIn("shipped client reads (33554432 bytes)", contacts)
        self.assertIn(f"ACCESS answers may reach {bounds['ACCESS']} bytes", access)
        self.assertIn("(max_access_entries)", access)


class RequestLimitTests(SynchronousTestCase):
    """
    The server's own limits are unchanged by the client's: the native face
    still refuses a request body over its C{max_body_bytes}.
    """

    def test_serverLimitsUnchanged(self) -> None:
        """
        C{NativeConfig().limits} is the server's default table (64 KiB
        bodies), not the client's.
        """
        self.assertEqual(NativeConfig().limits, Limits())
        self.assertNotEqual(NativeConfig().limits, CLIENT_LIMITS)
