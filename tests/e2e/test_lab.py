# -*- test-case-name: tests.e2e.test_lab -*-
"""
The walk-through of docs/operations.md, "Many servers on one machine", for
real: C{etc/examples/} copied (its ports changed to free ones, so that
other tests may run at once), the lab certificates made with
C{imgateway-admin certs}, users added with their home server, and the
router and two home servers run as three C{twistd imgateway} processes
with TLS server links between them. Users on the two home servers meet and
talk through the router; then one of them is moved to the other home
server with C{imgateway-admin user move}, all three processes running, and
keeps everything; a moved user who connects straight to her old home server
is sent to the new one, and one whose proxied login the router sends to her
old home server (its cached answer) is served by the new one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import TestCase

from imgateway.client.protocol import NativeClientProtocol, connect, goodbye
from imgateway.core.address import Address
from imgateway.core.records import AccessList, AuthorisationState, ContactRecord
from imgateway.home.store import SQLiteHomeStore
from tests.e2e.harness import REPO_ROOT, GatewayProcess, Recorder, freePort, reactor
from tests.test_examples import walkThrough

#: The ports the examples listen on (the router's IRC face on 6667 too).
PORTS = (5300, 5301, 5302, 5222, 5223, 5224, 5310, 5311, 5312, 6667)

#: The ports of each example process: native, XMPP, link.
LISTENERS = {"router": (5300, 5222, 5310), "hs1": (5301, 5223, 5311), "hs2": (5302, 5224, 5312)}

#: The directory cache of the processes here, in seconds (shorter than the
#: default, so that the moved user logs in again sooner).
CACHE_SECONDS = 1.0

PASSWORDS = {"alice": "alice-pw-1", "carol": "carol-pw-1"}

ALICE = Address("alice", "corp.example")
CAROL = Address("carol", "corp.example")


class ExampleProcess(GatewayProcess):
    """
    One of the example processes, run from its own configuration file.
    """

    def __init__(self, testCase: TestCase, base: str, name: str, ports: dict[int, int]) -> None:
        native, xmpp, link = (ports[p] for p in LISTENERS[name])
        super().__init__(testCase, directory=os.path.join(base, f"run-{name}"), port=native, waitPorts=[native, xmpp, link])
        self.configPath = os.path.join(base, f"{name}.toml")
        self.dataDir = os.path.join(base, "data")

    def writeConfig(self) -> None:
        """
        Write nothing: the example's file is the configuration.
        """


class WalkThroughTests(TestCase):
    """
    The one-machine lab of C{etc/examples/}, run as the operations guide
    says.

    @ivar router: The router's process, once started.
    """

    router: GatewayProcess

    def admin(self, *argv: str, stdin: str = "") -> str:
        """
        Run C{imgateway-admin ARGV...} in the lab's folder, which must
        succeed.

        @return: What it printed.
        """
        done = subprocess.run(
            [sys.executable, "-m", "imgateway.admin.cli", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=GatewayProcess.environment(),
            cwd=self.base,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""), done.stdout)
        return done.stdout

    def setUp(self) -> None:
        """
        Copy the examples, give them free ports and a short directory cache,
        and run the walk-through's C{imgateway-admin} commands.
        """
        self.base = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.join(REPO_ROOT, "etc", "examples"), self.base)
        self.ports = {port: freePort() for port in PORTS}
        pattern = re.compile(r":(" + "|".join(str(p) for p in PORTS) + r")\b")
        for name in LISTENERS:
            path = os.path.join(self.base, f"{name}.toml")
            with open(path, encoding="utf-8") as f:
                text = pattern.sub(lambda m: f":{self.ports[int(m.group(1))]}", f.read())
            cache = f"directory_cache_seconds = {CACHE_SECONDS}\n"
            text = text.replace("[router]\n", f"[router]\n{cache}") if "[router]\n" in text else f"{text}\n[router]\n{cache}"
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        for argv in walkThrough():
            if "add" in argv:
                self.admin(*argv[1:], "--password-stdin", stdin=PASSWORDS[argv[argv.index("add") + 1]] + "\n")
            else:
                self.admin(*argv[1:])

    async def login(self, user: str, cleanUp: bool = True) -> tuple[NativeClientProtocol, Recorder]:
        """
        Log C{user} in at the router with the shipped client, which follows
        the router's redirect.

        @param cleanUp: Whether to say goodbye when the test ends.
        """
        seen = Recorder()
        client = await connect(reactor(), self.router.endpoint, user, PASSWORDS[user], seen)
        if cleanUp:
            self.addCleanup(goodbye, client, reactor())
        return client, seen

    async def store(self, name: str) -> SQLiteHomeStore:
        """
        Open the store of the home server C{name} beside it.
        """
        store = await SQLiteHomeStore.open(reactor(), os.path.join(self.base, "data", f"home-{name}.sqlite3"))
        self.addCleanup(store.close)
        return store

    async def test_meetAndMove(self) -> None:
        """
        alice (homed on hs1) and carol (on hs2) connect to the router, are
        redirected to their home servers, watch each other and talk over
        the link between hs1 and hs2. alice logs out and is moved to hs2
        while the three processes run; she logs in through the router
        again, is sent to hs2 this time, and has her contact, her
        authorisations and carol's presence as before; the two talk again,
        and hs1's store no longer holds her rows.
        """
        processes = {name: ExampleProcess(self, self.base, name, self.ports) for name in ("hs1", "hs2", "router")}
        for process in processes.values():
            await process.start()
        router = self.router = processes["router"]
        alice, aliceSees = await self.login("alice", cleanUp=False)
        carol, carolSees = await self.login("carol")
        self.assertEqual(alice.transport.getPeer().port, self.ports[5301])  # type: ignore[union-attr]
        self.assertEqual(carol.transport.getPeer().port, self.ports[5302])  # type: ignore[union-attr]
        self.assertIn(f"to its home server hs1 at 127.0.0.1:{self.ports[5301]}", router.log())

        self.assertFalse(await alice.subscribe(CAROL, name="Carol"))
        await carolSees.waitForSubscription(ALICE, "subscribe")
        await carol.authorise(ALICE)
        await aliceSees.waitForPresence(CAROL, "online")
        self.assertFalse(await carol.subscribe(ALICE, name="Alice"))
        await aliceSees.waitForSubscription(CAROL, "subscribe")
        await alice.authorise(CAROL)
        await carolSees.waitForPresence(ALICE, "online")
        await alice.sendMessage(CAROL, "hello from hs1")
        await carolSees.waitForMessage(ALICE, "hello from hs1")

        await goodbye(alice, reactor())
        await carolSees.waitForPresence(ALICE, "offline")
        out = self.admin("--config", "hs1.toml", "user", "move", "alice", "hs2")
        self.assertEqual(
            out.splitlines()[-1],
            "moved alice@corp.example from hs1 to hs2 (contacts: 1, authorisations: 1, access-list entries: 0,"
            " rules: 0; authorisations kept in hs1's store for its users: 0)",
        )

        alice, aliceSees = await self.login("alice")
        self.assertEqual(alice.transport.getPeer().port, self.ports[5302])  # type: ignore[union-attr]
        await aliceSees.waitForPresence(CAROL, "online")
        await carolSees.waitForPresence(ALICE, "online")
        contacts = await alice.contacts()
        self.assertEqual(
            [(c["address"], c["name"], c["subscription"]) for c in contacts["contacts"]],
            [("carol@corp.example", "Carol", "both")],
        )
        await alice.sendMessage(CAROL, "hello from hs2")
        await carolSees.waitForMessage(ALICE, "hello from hs2")
        await carol.sendMessage(ALICE, "welcome")
        await aliceSees.waitForMessage(CAROL, "welcome")

        hs1, hs2 = await self.store("hs1"), await self.store("hs2")
        self.assertEqual((await hs1.getContacts(ALICE), await hs1.getAuthorisations(ALICE)), ([], []))
        self.assertEqual(await hs2.getContacts(ALICE), [ContactRecord(CAROL, "Carol")])
        self.assertEqual(
            await hs2.getAuthorisations(ALICE),
            [(ALICE, CAROL, AuthorisationState.AUTHORISED), (CAROL, ALICE, AuthorisationState.AUTHORISED)],
        )

    async def test_movedUserAtOldHome(self) -> None:
        """
        alice, homed on hs1, connects straight to hs1 (not through the
        router) and makes a contact and a block-list entry there; she is
        moved to hs2 with C{imgateway-admin user move}. Connecting straight
        to hs1 again, she is redirected (C{302}) to hs2 and served there,
        with her data; what she changes then lands in hs2's store, and
        hs1's store holds nothing of hers: hs1 serves only the users the
        directory homes on it, and logs the redirect.
        """
        processes = {name: ExampleProcess(self, self.base, name, self.ports) for name in ("hs1", "hs2", "router")}
        for process in processes.values():
            await process.start()
        hs1 = processes["hs1"]
        seen = Recorder()
        alice = await connect(reactor(), hs1.endpoint, "alice", PASSWORDS["alice"], seen)
        self.assertEqual(alice.transport.getPeer().port, self.ports[5301])  # type: ignore[union-attr]
        self.assertFalse(await alice.subscribe(CAROL, name="Carol"))
        await alice.setAccess("mallory@corp.example", "block")
        await goodbye(alice, reactor())
        self.admin("--config", "hs1.toml", "user", "move", "alice", "hs2")

        alice = await connect(reactor(), hs1.endpoint, "alice", PASSWORDS["alice"], Recorder())
        self.addCleanup(goodbye, alice, reactor())
        self.assertEqual(alice.transport.getPeer().port, self.ports[5302])  # type: ignore[union-attr]
        self.assertIn(
            f"Redirecting alice@corp.example (native, from IPv4Address(type='TCP', host='127.0.0.1'", hs1.log()
        )
        self.assertIn(f"to its home server hs2 at 127.0.0.1:{self.ports[5302]}: the client reached hs1", hs1.log())
        contacts = await alice.contacts()
        self.assertEqual([(c["address"], c["name"]) for c in contacts["contacts"]], [("carol@corp.example", "Carol")])
        self.assertEqual((await alice.accessLists())["block"], ["mallory@corp.example"])
        await alice.setAccess("trudy@corp.example", "block")

        old, new = await self.store("hs1"), await self.store("hs2")
        self.assertEqual(
            (await old.getContacts(ALICE), await old.getAccess(ALICE), await old.getAuthorisations(ALICE)), ([], {}, [])
        )
        self.assertEqual(await new.getContacts(ALICE), [ContactRecord(CAROL, "Carol")])
        self.assertEqual(
            await new.getAccess(ALICE),
            {"mallory@corp.example": AccessList.BLOCK, "trudy@corp.example": AccessList.BLOCK},
        )

    async def test_movedUserProxied(self) -> None:
        """
        A router that remembers a moved user's old home (its directory
        cache outlives the move's wait) proxies her next login there: hs1
        answers C{301} with her new home, and the router opens her session
        on hs2 at once, with her data.
        """
        path = os.path.join(self.base, "router.toml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(f"directory_cache_seconds = {CACHE_SECONDS}\n", "directory_cache_seconds = 600\n"))
        processes = {name: ExampleProcess(self, self.base, name, self.ports) for name in ("hs1", "hs2", "router")}
        for process in processes.values():
            await process.start()
        router, hs1 = processes["router"], processes["hs1"]
        outside = f"{router.endpoint}:bindAddress=127.0.0.2"
        alice = await connect(reactor(), outside, "alice", PASSWORDS["alice"], Recorder())
        self.assertFalse(await alice.subscribe(CAROL, name="Carol"))
        await goodbye(alice, reactor())
        self.assertIn("Proxied session hs1-", hs1.log())
        self.admin("--config", "hs1.toml", "user", "move", "alice", "hs2")

        alice = await connect(reactor(), outside, "alice", PASSWORDS["alice"], Recorder())
        self.addCleanup(goodbye, alice, reactor())
        self.assertEqual(alice.transport.getPeer().port, self.ports[5300])  # type: ignore[union-attr]
        contacts = await alice.contacts()
        self.assertEqual([(c["address"], c["name"]) for c in contacts["contacts"]], [("carol@corp.example", "Carol")])
        self.assertIn("a session for alice@corp.example not opened (301): the directory homes it on hs2", hs1.log())
        self.assertIn("Proxied session of alice@corp.example not opened on hs1: the directory homes it on hs2 now", router.log())
        self.assertRegex(router.log(), r"Proxied session hs2-\d+ of alice@corp.example opened on hs2")
        await alice.setAccess("trudy@corp.example", "block")
        new = await self.store("hs2")
        self.assertEqual(await new.getAccess(ALICE), {"trudy@corp.example": AccessList.BLOCK})
