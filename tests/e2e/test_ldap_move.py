# -*- test-case-name: tests.e2e.test_ldap_move -*-
"""
Moving a user between home servers on different machines, with the real
commands: a router and two home servers (C{hs1}, C{hs2}) as real C{twistd
imgateway} processes, each with a C{data_dir} of its own, on a real slapd
(the lab of L{tests.e2e.test_ldap_multihost}). alice is exported from hs1
(C{imgateway-admin user export}), imported on hs2 (C{user import}), her
home attribute is changed in slapd (ldapmodify), and hs1 forgets her
(C{user purge}); she then logs in through the router at hs2 with her
contacts, lists, rules and pending requests, and her contacts on hs1 and
hs2 see her presence.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from imgateway.client.protocol import goodbye
from imgateway.core.address import Address
from imgateway.core.presence import PresenceState
from imgateway.core.errors import UserBusy
from tests.e2e.harness import DOMAIN, connectClient, failureOf, reactor, sleep
from tests.e2e.slapd import PEOPLE, LDAPUser, SharedSlapd, SlapdServer
from tests.e2e.multihost import CACHE_SECONDS, RouterAndTwoHomes, peerPort

PASSWORDS = {name: f"{name}'s LDAP password" for name in ("alice", "bob", "carol", "dan")}
ALICE, BOB, CAROL, DAN = (Address.fromParts(n, DOMAIN) for n in ("alice", "bob", "carol", "dan"))

#: alice, bob and dan on hs1, carol on hs2.
USERS = [
    LDAPUser(name, PASSWORDS[name], (f"{name}@{DOMAIN}",), name.title(), home=home)
    for name, home in (("alice", "hs1"), ("bob", "hs1"), ("carol", "hs2"), ("dan", "hs1"))
]

#: The slapd of this module.
SLAPD = SharedSlapd(USERS)

ALICE_DN = f"uid=alice,{PEOPLE}"


def testSuite() -> Any:
    """
    The module's tests, stopping the shared slapd after the last.
    """
    return SLAPD.suite(__name__)


class MoveBetweenHostsTests(TestCase):
    """
    C{user export}, C{user import}, the home attribute, C{user purge}.
    """

    slapd: SlapdServer

    async def setUp(self) -> None:  # type: ignore[override]
        self.slapd = await SLAPD.require(self)
        self.domain = RouterAndTwoHomes(self, self.slapd, nativeTLS=True)
        await self.domain.start()

    def admin(self, server: str, *args: str, status: int = 0) -> str:
        """
        Run C{imgateway-admin --config <server's config> ARGS}, which must
        exit with C{status}.

        @return: What it printed (standard output, or standard error when it
            failed).
        """
        done = self.domain.processes[server].admin(*args)
        self.assertEqual(done.returncode, status, f"{args}: {done.stdout}{done.stderr}")
        return done.stdout if status == 0 else done.stderr

    async def test_move(self) -> None:
        """
        alice (hs1) has bob (hs1) and carol (hs2) as contacts, both ways,
        a rule, allow and block entries, and dan's pending request; offline,
        she is exported from hs1 and imported on hs2 (a truncated copy of the
        file is refused first, writing nothing); purge on hs1 is refused
        until her home attribute names hs2; then it removes her rows but
        those bob and dan need. At her next login through the router she is
        sent to hs2 and has everything; bob, on hs1, and carol see her
        presence, and her rule answers bob's message.
        """
        domain = self.domain
        inside = domain.internal()
        alice, aliceRec = await connectClient(self, inside, "alice", PASSWORDS["alice"])
        bob, bobRec = await connectClient(self, inside, "bob", PASSWORDS["bob"])
        carol, carolRec = await connectClient(self, inside, "carol", PASSWORDS["carol"])
        dan, _ = await connectClient(self, inside, "dan", PASSWORDS["dan"])
        self.assertEqual(peerPort(alice), domain.tlsPorts["hs1"])
        for friend, friendRec, name in ((bob, bobRec, "Bob"), (carol, carolRec, "Carol")):
            friendAddress = Address.fromParts(name.lower(), DOMAIN)
            await alice.subscribe(friendAddress, name=f"{name} L.")
            await friendRec.waitForSubscription(ALICE, "subscribe", timeout=10)
            await friend.authorise(ALICE, True)
            await friend.subscribe(ALICE, name="Alice")
            await aliceRec.waitForSubscription(friendAddress, "subscribe", timeout=10)
            await alice.authorise(friendAddress, True)
            await aliceRec.waitForPresence(friendAddress, PresenceState.ONLINE, timeout=10)
            await friendRec.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        await dan.subscribe(ALICE, name="Alice")
        await aliceRec.waitForSubscription(DAN, "subscribe", timeout=10)
        await alice.setRule(PresenceState.ON_THE_PHONE, "tel:+15550100")
        await alice.setAccess("spam.example", "block")
        await alice.setAccess(str(CAROL), "allow")
        before = await alice.contacts()
        await goodbye(alice, reactor())
        await bobRec.waitForPresence(ALICE, PresenceState.OFFLINE, timeout=10)
        await goodbye(dan, reactor())

        # Export on hs1; a damaged copy is refused by hs2, which writes nothing.
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "alice.json")
        printed = self.admin("hs1", "user", "export", "alice", "--out", path)
        self.assertIn(f"exported alice@{DOMAIN} from hs1's store to {path}", printed)
        with open(path, "rb") as f:
            data = f.read()
        damaged = os.path.join(folder, "damaged.json")
        with open(damaged, "wb") as f:
            f.write(data[: len(data) * 2 // 3])
        refused = self.admin("hs2", "user", "import", damaged, status=1)
        self.assertIn("is not a whole export file (truncated, or not one at all)", refused)
        hs2 = await domain.store("hs2")
        self.assertEqual(await hs2.getContacts(ALICE), [])

        # Import on hs2; purge on hs1 waits for the directory.
        printed = self.admin("hs2", "user", "import", path)
        self.assertIn(f"imported alice@{DOMAIN} into hs2's store from {path}", printed)
        self.assertIn(f"then, on hs1: imgateway-admin user purge alice@{DOMAIN}", printed)
        self.assertIn("the directory still homes", self.admin("hs1", "user", "purge", "alice", status=1))
        self.slapd.replace(ALICE_DN, "imgatewayHomeServer", "hs2")
        self.addCleanup(self.slapd.replace, ALICE_DN, "imgatewayHomeServer", "hs1")
        await sleep(CACHE_SECONDS + 0.5)
        self.assertIn(f"purged alice@{DOMAIN} from hs1's store", self.admin("hs1", "user", "purge", "alice"))
        hs1 = await domain.store("hs1")
        self.assertEqual((await hs1.getContacts(ALICE), await hs1.getRules(ALICE), await hs1.getAccess(ALICE)), ([], [], {}))
        self.assertEqual(
            sorted({t if w == ALICE else w for t, w, _ in await hs1.getAuthorisations(ALICE)}), [BOB, DAN]
        )

        # alice logs in through the router: hs2 serves her, with everything.
        alice, aliceRec = await connectClient(self, inside, "alice", PASSWORDS["alice"])
        self.assertEqual(peerPort(alice), domain.tlsPorts["hs2"])
        after = await alice.contacts()
        self.assertEqual(
            [(c["address"], c["name"], c["subscription"], c["pending"]) for c in after["contacts"]],
            [(c["address"], c["name"], c["subscription"], c["pending"]) for c in before["contacts"]],
        )
        self.assertEqual(
            [(c["address"], c["name"], c["subscription"]) for c in after["contacts"]],
            [(str(BOB), "Bob L.", "both"), (str(CAROL), "Carol L.", "both")],
        )
        self.assertEqual(after["requests"], before["requests"])
        self.assertEqual(after["requests"], [str(DAN)])
        self.assertEqual(
            await alice.rules(),
            [{"states": ["on-the-phone"], "action": "refuse", "presence": "on-the-phone", "alternate": "tel:+15550100"}],
        )
        self.assertEqual(await alice.accessLists(), {"allow": [str(CAROL)], "block": ["spam.example"]})

        # Her contacts, on hs1 and on hs2, see her; she sees them.
        await bobRec.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        await carolRec.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        await aliceRec.waitForPresence(BOB, PresenceState.ONLINE, timeout=10)
        await aliceRec.waitForPresence(CAROL, PresenceState.ONLINE, timeout=10)
        await alice.publish(PresenceState.ON_THE_PHONE)
        await bobRec.waitForPresence(ALICE, PresenceState.ON_THE_PHONE, timeout=10)
        busy = await failureOf(bob.sendMessage(ALICE, "call me"), UserBusy)
        self.assertEqual(busy.alternate, "tel:+15550100")
        await alice.publish(PresenceState.ONLINE)
        await bobRec.waitForPresence(ALICE, PresenceState.ONLINE, timeout=10)
        await bob.sendMessage(ALICE, "welcome to hs2")
        await aliceRec.waitForMessage(BOB, "welcome to hs2", timeout=10)
        await alice.sendMessage(BOB, "thanks")
        await bobRec.waitForMessage(ALICE, "thanks", timeout=10)
