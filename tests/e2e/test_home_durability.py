"""
End-to-end tests of the home server's durability: the real C{twistd
imgateway} process, killed with C{SIGKILL} in the middle of pipelined
requests, keeps every acknowledged change, and keeps each request whole.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import NativeClientProtocol

from tests.e2e.harness import GatewayProcess, sleep

PASSWORD = "durable secret"
TARGETS = [f"t{i}" for i in range(6)]
ALICE = "alice@corp.example"


def address(local: str) -> str:
    return f"{local}@corp.example"


class KillTests(TestCase):
    """
    C{kill -9} at random moments while one client pipelines subscription
    requests.
    """

    async def test_killDuringPipelinedRequests(self) -> None:
        """
        alice pipelines C{SUBSCRIBE} and C{UNSUBSCRIBE} requests for a few
        users (who never answer); the gateway is killed at a random moment,
        several times. After each restart: every target alice's contact
        list holds has her request pending (and the target holds it), no
        target holds a request her list lacks, and the last request she
        sent for a target, if it was acknowledged, is what the state says.
        """
        seed = int(os.environ.get("IMGW_KILL_SEED", random.randrange(1 << 30)))
        rng = random.Random(seed)
        gateway = GatewayProcess(
            self, {"native": {"requests_per_second": 100000, "request_burst": 100000}}
        )
        gateway.addUsers({"alice": PASSWORD, **{t: PASSWORD for t in TARGETS}})
        await gateway.start()
        for round in range(5):
            where = f"seed {seed}, round {round}"
            proto, _ = await gateway.client("alice", PASSWORD, presence=None)
            # For each target: every request sent, and the last acknowledged.
            sent: dict[str, list[str]] = {t: [] for t in TARGETS}
            acked: dict[str, int] = {}
            pending: list[Deferred[Any]] = []
            for n in range(400):
                target = rng.choice(TARGETS)
                kind = rng.choice(["subscribe", "unsubscribe"])
                sent[target].append(kind)
                index = len(sent[target]) - 1
                if kind == "subscribe":
                    d: Deferred[Any] = proto.subscribe(address(target), target.upper())
                else:
                    d = proto.unsubscribe(address(target))

                def ok(_: object, target: str = target, index: int = index) -> None:
                    acked[target] = max(acked.get(target, -1), index)

                pending.append(d.addCallbacks(ok, lambda f: None))
                if n % 40 == 39:
                    await sleep(rng.uniform(0.0, 0.02))
            await sleep(rng.uniform(0.0, 0.1))
            await gateway.stop(signal.SIGKILL)
            await DeferredList(pending)
            await gateway.start()
            contacts = await self._contacts(gateway, "alice")
            listed = {c["address"]: c for c in contacts["contacts"]}
            for target in TARGETS:
                requests = (await self._contacts(gateway, target))["requests"]
                mine = listed.get(address(target))
                self.assertEqual(mine is not None, ALICE in requests, f"{where}: {target} {mine} {requests}")
                if mine is not None:
                    self.assertTrue(mine["pending"], f"{where}: {mine}")
                # The requests from the last acknowledged one on: the state
                # is what one of them left.
                first = acked.get(target)
                if first is not None:
                    possible = {kind == "subscribe" for kind in sent[target][first:]}
                    self.assertIn(mine is not None, possible, f"{where}: {target} lost an acknowledged request")
        self.assertGreater(len(gateway.log()), 0)

    async def test_stopDuringBurst(self) -> None:
        """
        SIGTERM while users ask each other for subscriptions: the gateway
        finishes the work already queued before it closes its stores (its
        log says nothing of a closed database), exits cleanly, and every
        request it acknowledged is there after a restart.
        """
        users = [f"u{i}" for i in range(30)]
        gateway = GatewayProcess(self, {"native": {"requests_per_second": 100000, "request_burst": 100000}})
        gateway.addUsers({u: PASSWORD for u in users})
        await gateway.start()
        protos = [(await gateway.client(u, PASSWORD))[0] for u in users]
        acked: set[tuple[str, str]] = set()
        pending: list[Deferred[Any]] = []
        for me, proto in zip(users, protos):
            for other in users:
                if other != me:

                    def ok(_: object, pair: tuple[str, str] = (me, other)) -> None:
                        acked.add(pair)

                    pending.append(proto.subscribe(address(other)).addCallbacks(ok, lambda f: None))
        await sleep(0.1)
        code = await gateway.stop()
        gateway.assertCleanExit(code)
        await DeferredList(pending)
        self.assertNotIn("the database is closed", gateway.log())
        await gateway.start()
        for me in users:
            listed = {c["address"] for c in (await self._contacts(gateway, me))["contacts"]}
            for other in users:
                if (me, other) in acked:
                    self.assertIn(address(other), listed, f"{me} lost {other}")

    async def _contacts(self, gateway: GatewayProcess, local: str) -> dict[str, Any]:
        proto, _ = await gateway.client(local, PASSWORD, presence=None)
        try:
            return await proto.contacts()
        finally:
            await _bye(proto)


async def _bye(proto: NativeClientProtocol) -> None:
    try:
        await proto.bye()
    except Exception:
        pass
