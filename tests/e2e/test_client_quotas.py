# -*- test-case-name: tests.e2e.test_client_quotas -*-
"""
End-to-end: a user whose lists are at the default quotas, with long
addresses and display names, reads them all with the real
C{imgateway-client} command from a real gateway process over TCP on
loopback (C{docs/protocol.md} section 3.2): answers of several megabytes,
larger than the server's C{max_send_queue_bytes}.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.presence import PresenceState
from imgateway.core.records import (
    MAX_ALTERNATE_CHARS,
    MAX_DISPLAY_NAME_CHARS,
    AccessList,
    AuthorisationState,
    ContactRecord,
    HomeChange,
    PutContact,
    SetAccess,
    SetAuthorisation,
    PresenceRule,
    SetRules,
)
from imgateway.home.store import SQLiteHomeStore

from tests.e2e.harness import REPO_ROOT, GatewayProcess, reactor

PASSWORD = "quota secret"
ALICE = Address.fromString("alice@corp.example")

#: A character that takes the most room in a JSON body (two \uXXXX escapes).
WIDE = "\N{GRINNING FACE}"

#: A long domain of another network.
FAR = ".".join(["a" * 63, "b" * 63, "c" * 63, "far"])


def longAddress(n: int) -> Address:
    """
    @return: A different long address for each C{n} (a local part of 1022
        bytes of two-byte characters, a domain of 196 characters).
    """
    return Address.fromParts("\N{LATIN SMALL LETTER E WITH ACUTE}" * 509 + f"{n:04d}", FAR)


class FullListsTests(TestCase):
    """
    C{imgateway-client} reads lists at the default quotas.
    """

    timeout = 180

    async def fill(self, path: str) -> dict[str, Any]:
        """
        Put alice's lists, at the default quotas, in the home store file
        before the gateway starts.

        @return: What alice should read.
        """
        home = HomeConfig()
        name = WIDE * MAX_DISPLAY_NAME_CHARS
        contacts = [longAddress(n) for n in range(home.maxContacts)]
        requests = [longAddress(10000 + n) for n in range(home.maxPendingRequests)]
        blocked = [longAddress(20000 + n) for n in range(home.maxAccessEntries)]
        states = [PresenceState.BUSY, PresenceState.BE_RIGHT_BACK, PresenceState.AWAY, PresenceState.ON_THE_PHONE, PresenceState.OUT_TO_LUNCH]
        alternate = "tel:" + WIDE * (MAX_ALTERNATE_CHARS - 4)
        changes: list[HomeChange] = [PutContact(ALICE, ContactRecord(a, name)) for a in contacts]
        changes += [SetAuthorisation(ALICE, w, AuthorisationState.PENDING) for w in requests]
        changes += [SetAccess(ALICE, str(a), AccessList.BLOCK) for a in blocked]
        changes.append(SetRules(ALICE, tuple(PresenceRule.refuse(s, alternate) for s in states[: home.maxRules])))
        store = await SQLiteHomeStore.open(reactor(), path)
        try:
            await store.apply(changes)
        finally:
            await store.close()
        return {
            "contacts": sorted(str(a) for a in contacts),
            "name": name,
            "requests": sorted(str(a) for a in requests),
            "block": sorted(str(a) for a in blocked),
            "rules": len(states[: home.maxRules]),
        }

    async def oneShot(self, gateway: GatewayProcess, *args: str) -> Any:
        """
        Run C{imgateway-client --server ... --user alice ARGS --json} to its
        end.

        @return: What it printed, parsed as JSON.
        """
        env = GatewayProcess.environment()
        env["IMGATEWAY_PASSWORD"] = PASSWORD
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "imgateway.client.cli", "--server", gateway.endpoint, "--user", "alice", *args, "--json"],
            env=env,
            path=REPO_ROOT,
            reactor=reactor(),
        )
        self.assertEqual((code, err.decode("utf-8", "replace")), (0, ""), f"imgateway-client {' '.join(args)}")
        return json.loads(out)

    async def test_fullLists(self) -> None:
        """
        C{presence --json}, C{requests --json}, C{lists --json} and
        C{rules --json} print alice's whole lists: 1000 contacts with
        display names of 256 characters, 1000 pending requests, 1000
        access-list entries and 5 rules, every address about 3 KB in JSON.
        The gateway sends each answer whole (no client is dropped for its
        send queue).
        """
        gateway = GatewayProcess(self)
        gateway.addUser("alice", PASSWORD)
        expected = await self.fill(os.path.join(gateway.dataDir, "home-hs1.sqlite3"))
        await gateway.start()

        presence = await self.oneShot(gateway, "presence")
        self.assertEqual([c["address"] for c in presence["contacts"]], expected["contacts"])
        self.assertEqual({c["name"] for c in presence["contacts"]}, {expected["name"]})
        self.assertEqual(presence["requests"], expected["requests"])
        self.assertEqual(await self.oneShot(gateway, "requests"), expected["requests"])
        self.assertEqual(await self.oneShot(gateway, "lists"), {"allow": [], "block": expected["block"]})
        self.assertEqual(len(await self.oneShot(gateway, "rules")), expected["rules"])
        self.assertNotIn("max_send_queue_bytes", gateway.log())
