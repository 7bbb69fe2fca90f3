# -*- test-case-name: tests.e2e.test_ldap_multihost -*-
"""
The many-servers story of issue 8 with the LDAP directory: a router and two
home servers (C{hs1}, C{hs2}) as three real C{twistd imgateway} processes,
each with a C{data_dir} of its own (as on three machines: nothing is shared
but the directory), all reading one real OpenLDAP C{slapd} that the tests
configure and start on loopback (L{tests.e2e.slapd}, once for the module),
with C{home_attribute} naming each user's home server. The servers are
linked over TLS with both certificates checked; every native face listens
on TLS, and since the directory keeps no SCRAM verifiers, users log in with
PLAIN over TLS, through the router: redirected from the internal network
(127.0.0.1), proxied from outside it (127.0.0.2).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import NativeClientProtocol, goodbye
from imgateway.core.address import Address
from imgateway.core.errors import ServiceUnavailable, UserBusy, UserOffline
from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, Recorder, connectClient, failureOf, reactor, sleep
from tests.e2e.multihost import CACHE_SECONDS, OUTSIDE, RouterAndTwoHomes, peerPort
from tests.e2e.slapd import PEOPLE, LDAPUser, SharedSlapd, SlapdServer

PASSWORDS = {"alice": "alice's LDAP password", "carol": "carol's LDAP password"}
ALICE = Address.fromParts("alice", DOMAIN)
CAROL = Address.fromParts("carol", DOMAIN)

#: alice is homed on hs1, carol on hs2, by their C{imgatewayHomeServer}.
USERS = [
    LDAPUser("alice", PASSWORDS["alice"], ("alice@corp.example",), "Alice", home="hs1"),
    LDAPUser("carol", PASSWORDS["carol"], ("carol@corp.example",), "Carol", home="hs2"),
]

#: The slapd of this module.
SLAPD = SharedSlapd(USERS)

def testSuite() -> Any:
    """
    The module's tests, stopping the shared slapd after the last.
    """
    return SLAPD.suite(__name__)


class MultiHostTests(TestCase):
    """
    The router and two home servers on the module's slapd.
    """

    slapd: SlapdServer

    async def setUp(self) -> None:  # type: ignore[override]
        self.slapd = await SLAPD.require(self)
        self.domain = RouterAndTwoHomes(self, self.slapd, nativeTLS=True)
        await self.domain.start()

    async def meet(self) -> tuple[NativeClientProtocol, Recorder, NativeClientProtocol, Recorder]:
        """
        alice logs in at the router from inside (redirected to hs1), carol
        from outside (proxied to hs2), both with PLAIN over TLS; they
        subscribe to each other and each authorises the other.
        """
        domain = self.domain
        aliceClient, alice = await connectClient(self, domain.internal(), "alice", PASSWORDS["alice"])
        carolClient, carol = await connectClient(self, domain.external(), "carol", PASSWORDS["carol"])
        for client in (aliceClient, carolClient):
            self.assertTrue(ISSLTransport.providedBy(client.transport))
        self.assertEqual(peerPort(aliceClient), domain.tlsPorts["hs1"])
        self.assertEqual(peerPort(carolClient), domain.tlsPorts["router"])
        await aliceClient.subscribe(CAROL, name="Carol")
        await carol.waitForSubscription(ALICE, "subscribe", timeout=10)
        await carolClient.authorise(ALICE, True)
        await carolClient.subscribe(ALICE, name="Alice")
        await alice.waitForSubscription(CAROL, "subscribe", timeout=10)
        await aliceClient.authorise(CAROL, True)
        await alice.waitForPresence(CAROL, PresenceState.ONLINE, timeout=10)
        await carol.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        return aliceClient, alice, carolClient, carol

    async def test_story(self) -> None:
        """
        Through the router, with PLAIN over TLS (the only mechanism the
        router offers: the directory has no SCRAM verifiers), alice (inside)
        is redirected to hs1 and carol (outside) is proxied to hs2, each
        logged with the client's address; they subscribe to each other, see
        each other's presence changes and exchange messages with every
        status: delivered, 486 with carol's alternate, 480 once alice is
        offline. alice's and carol's rows are each in their own home
        server's store, and nowhere else.
        """
        domain = self.domain
        router = domain.router
        probe, _ = await connectClient(self, domain.external(), "carol", PASSWORDS["carol"], presence=None, label="probe")
        self.assertEqual((await probe.options())["Mechanisms"], "PLAIN")
        await goodbye(probe, reactor())

        aliceClient, alice, carolClient, carol = await self.meet()
        log = router.log()
        self.assertIn(f"Redirecting alice@{DOMAIN} (native, from IPv4Address(type='TCP', host='127.0.0.1'", log)
        self.assertIn(f"to its home server hs1 at localhost:{domain.tlsPorts['hs1']}: internal network 127.0.0.1/32", log)
        self.assertIn(f"Proxying carol@{DOMAIN} (native, from IPv4Address(type='TCP', host='{OUTSIDE}'", log)
        self.assertIn("to its home server hs2: the client is in none of [router] internal_networks", log)
        self.assertIn(f"of carol@{DOMAIN} opened for server router", domain.processes["hs2"].log())

        # Presence changes, both ways.
        await aliceClient.publish(PresenceState.BUSY, "meeting")
        await carol.waitForPresence(ALICE, PresenceState.BUSY, "meeting", timeout=10)
        await carolClient.publish(PresenceState.AWAY, "lunch")
        await alice.waitForPresence(CAROL, PresenceState.AWAY, "lunch", timeout=10)

        # Messages, both ways (200).
        await aliceClient.sendMessage(CAROL, "hello carol, from hs1")
        await carol.waitForMessage(ALICE, "hello carol, from hs1", timeout=10)
        await carolClient.sendMessage(ALICE, "hello alice, from outside ✓")
        await alice.waitForMessage(CAROL, "hello alice, from outside ✓", timeout=10)

        # 486 with the alternate, across hs1 -> hs2 and back to the proxy.
        await carolClient.setRule(PresenceState.ON_THE_PHONE, "tel:+15550100")
        await carolClient.publish(PresenceState.ON_THE_PHONE)
        await alice.waitForPresence(CAROL, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(aliceClient.sendMessage(CAROL, "call me"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")
        await aliceClient.setRule(PresenceState.ON_THE_PHONE, "im:alice.mobile@corp.example")
        await aliceClient.publish(PresenceState.ON_THE_PHONE)
        await carol.waitForPresence(ALICE, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(carolClient.sendMessage(ALICE, "call me too"), UserBusy)
        self.assertEqual(busy.alternate, "im:alice.mobile@corp.example")

        # 480 once alice is offline.
        await goodbye(aliceClient, reactor())
        await carol.waitForPresence(ALICE, PresenceState.OFFLINE, timeout=10)
        await failureOf(carolClient.sendMessage(ALICE, "are you there?"), UserOffline)
        self.assertEqual([m.body for m in carol.messages], ["hello carol, from hs1"])

        # Each user's rows are in the store of its own home server only.
        hs1, hs2 = await domain.store("hs1"), await domain.store("hs2")
        self.assertEqual([c.address for c in await hs1.getContacts(ALICE)], [CAROL])
        self.assertEqual([c.address for c in await hs2.getContacts(CAROL)], [ALICE])
        self.assertEqual((await hs1.getContacts(CAROL), await hs2.getContacts(ALICE)), ([], []))

    async def test_wrongPassword(self) -> None:
        """
        At the router, from inside and from outside, a wrong password gets
        exactly the answer an unknown user gets; neither reaches a home
        server.
        """
        domain = self.domain
        for endpoint in (domain.internal(), domain.external()):
            wrong = await domain.auth(endpoint, "carol", "not her password")
            self.assertEqual(wrong, (401, "Authentication failed (not-authorized)", "not-authorized"))
            self.assertEqual(await domain.auth(endpoint, "nobody", "not her password"), wrong)
            self.assertEqual(await domain.auth(endpoint, "nobody@corp.example", PASSWORDS["carol"]), wrong)
        self.assertNotIn("Redirecting", domain.router.log())
        self.assertNotIn("Proxying", domain.router.log())
        for name in ("hs1", "hs2"):
            self.assertNotIn("carol", domain.processes[name].log())

    async def test_homeChanged(self) -> None:
        """
        carol logs out and her home attribute is changed to hs1 in LDAP
        (ldapmodify), the three processes running: once C{[router]
        directory_cache_seconds} have passed, her next login through the
        router is proxied to hs1. Her own data did not move: she has no
        contacts there (they stay in hs2's store, which nothing reads for
        her any more), but hs1 held both rows between her and alice (as
        alice's home server), so the two see each other's presence at once
        and talk, on one home server now; carol adds alice again.
        """
        domain = self.domain
        aliceClient, alice, carolClient, carol = await self.meet()
        await goodbye(carolClient, reactor())
        await alice.waitForPresence(CAROL, PresenceState.OFFLINE, timeout=10)

        carolDN = f"uid=carol,{PEOPLE}"
        self.slapd.replace(carolDN, "imgatewayHomeServer", "hs1")
        self.addCleanup(self.slapd.replace, carolDN, "imgatewayHomeServer", "hs2")
        await sleep(CACHE_SECONDS + 0.5)

        carolClient, carol = await connectClient(self, domain.external(), "carol", PASSWORDS["carol"])
        self.assertIn(f"Proxying carol@{DOMAIN} (native, from IPv4Address(type='TCP', host='{OUTSIDE}'", domain.router.log())
        self.assertIn("to its home server hs1: the client is in none of [router] internal_networks", domain.router.log())
        self.assertIn(f"of carol@{DOMAIN} opened for server router", domain.processes["hs1"].log())
        await alice.waitForPresence(CAROL, PresenceState.ONLINE, timeout=10)
        await carol.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        self.assertEqual((await carolClient.contacts())["contacts"], [])
        self.assertEqual([c["address"] for c in (await aliceClient.contacts())["contacts"]], [str(CAROL)])
        hs2 = await domain.store("hs2")
        self.assertEqual([c.address for c in await hs2.getContacts(CAROL)], [ALICE])

        await aliceClient.sendMessage(CAROL, "you moved?")
        await carol.waitForMessage(ALICE, "you moved?", timeout=10)
        await carolClient.sendMessage(ALICE, "yes, to hs1")
        await alice.waitForMessage(CAROL, "yes, to hs1", timeout=10)
        await carolClient.subscribe(ALICE, name="Alice")
        contacts = (await carolClient.contacts())["contacts"]
        self.assertEqual([(c["address"], c["name"], c["subscription"]) for c in contacts], [(str(ALICE), "Alice", "both")])

    async def test_unknownHome(self) -> None:
        """
        A home attribute naming no configured home server (C{hs9}) leaves
        the user unserved, and logged: a login at the router is answered
        as unavailable, from inside as from outside, and a message to the
        user gets the 480 an unknown user gets.
        """
        domain = self.domain
        aliceClient, alice = await connectClient(self, domain.internal(), "alice", PASSWORDS["alice"])
        carolDN = f"uid=carol,{PEOPLE}"
        self.slapd.replace(carolDN, "imgatewayHomeServer", "hs9")
        self.addCleanup(self.slapd.replace, carolDN, "imgatewayHomeServer", "hs2")
        await sleep(CACHE_SECONDS + 0.5)
        for endpoint in (domain.internal(), domain.external()):
            e = await failureOf(connectClient(self, endpoint, "carol", PASSWORDS["carol"]), ServiceUnavailable)
            self.assertEqual(e.text, "Your home server is not served here to your network")
        await failureOf(aliceClient.sendMessage(CAROL, "where are you?"), UserOffline)
        self.assertIn(f"Not serving carol@{DOMAIN} (native, from", domain.router.log())
        self.assertIn(f"The directory homes carol@{DOMAIN} on hs9, which is not among the [servers] of the config", domain.processes["hs1"].log())
