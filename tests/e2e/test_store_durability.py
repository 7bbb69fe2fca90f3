"""
End-to-end tests of what the gateway's stores keep: a real C{twistd
imgateway} process, real SQLite files, native clients making acknowledged
changes, and the process ended by C{kill -9} at random moments or stopped
with SIGTERM in the middle of a flood of work. Every change the gateway
acknowledged must be there when it comes back, and the files must pass
C{PRAGMA integrity_check}.
"""

from __future__ import annotations

import glob
import itertools
import os
import random
import signal
import sqlite3
import time

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import ClientError, NativeClientProtocol
from imgateway.core.address import Address
from imgateway.core.presence import PresenceState

from .harness import DOMAIN, GatewayProcess, Recorder, sleep

#: Iterations of the kill -9 test (each: start, write, kill, check). Raise it
#: for a longer soak: C{IMGATEWAY_KILL_ITERATIONS=100}.
KILL_ITERATIONS = int(os.environ.get("IMGATEWAY_KILL_ITERATIONS", "3"))

#: How long a SIGTERM'd gateway may take to exit, in seconds (the target in
#: RELIABILITY-NOTES: under 5 s).
STOP_WITHIN = 5.0

#: The presence states that take rules.
RULE_STATES = [
    PresenceState.BUSY,
    PresenceState.BE_RIGHT_BACK,
    PresenceState.AWAY,
    PresenceState.ON_THE_PHONE,
    PresenceState.OUT_TO_LUNCH,
]

#: No flood limiter in the way of the writers.
UNLIMITED = {"native": {"requests_per_second": 1_000_000, "request_burst": 1_000_000}}


def integrityProblems(dataDir: str) -> dict[str, list[str]]:
    """
    Run C{PRAGMA integrity_check} on every database in C{dataDir}.

    @return: File name to what the check said, for the files that are not
        C{ok}.
    """
    problems = {}
    paths = sorted(glob.glob(os.path.join(dataDir, "*.sqlite3")))
    assert paths, f"no database in {dataDir}"
    for path in paths:
        connection = sqlite3.connect(path)
        try:
            said = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
        if said != ["ok"]:
            problems[os.path.basename(path)] = said
    return problems


class KillTests(TestCase):
    """
    C{kill -9} at a random moment loses no acknowledged change.
    """

    async def test_killLosesNothing(self) -> None:
        """
        Four users each run a writer per busy or away state at once, every
        writer setting its state's presence rule to a new alternate contact
        as fast as the gateway acknowledges; the gateway is killed with
        SIGKILL at a random moment, several times over. After each kill the
        files pass C{integrity_check}; after each restart every rule holds
        the last value the gateway acknowledged, or the value of the one
        request that was in flight when it died (which may or may not have
        happened).
        """
        seed = random.SystemRandom().randrange(2**32)
        rng = random.Random(seed)
        users = {f"k{n}": f"pw-k{n}" for n in range(4)}
        states = [s.value for s in RULE_STATES]
        gw = GatewayProcess(self, UNLIMITED)
        gw.addUsers(users)
        acked: dict[tuple[str, str], str] = {}
        written = itertools.count()
        totalAcked = 0
        for iteration in range(KILL_ITERATIONS):
            await gw.start()
            clients = {user: (await gw.client(user, password))[0] for user, password in users.items()}
            inFlight: dict[tuple[str, str], str] = {}
            counts = [0]

            async def writer(user: str, state: str) -> None:
                while True:
                    value = f"tel:+1555{next(written):07d}"
                    inFlight[user, state] = value
                    try:
                        await clients[user].setRule(state, value)
                    except ClientError:
                        return
                    acked[user, state] = value
                    del inFlight[user, state]
                    counts[0] += 1

            done = gatherResults([Deferred.fromCoroutine(writer(u, s)) for u in users for s in states])
            delay = rng.uniform(0.2, 1.5)
            await sleep(delay)
            code = await gw.stop(signal.SIGKILL)
            await done
            why = f"(seed {seed}, iteration {iteration}, killed after {delay:.2f} s, {counts[0]} acknowledged)"
            self.assertEqual(code, -signal.SIGKILL, why)
            self.assertEqual(integrityProblems(gw.dataDir), {}, why)
            self.assertGreater(counts[0], 0, why)
            totalAcked += counts[0]

            await gw.start()
            wrong = []
            for user, password in users.items():
                client, _ = await gw.client(user, password)
                stored = {r["presence"]: r["alternate"] for r in await client.rules()}
                for state in states:
                    # None: no rule (nothing acknowledged yet).
                    possible = {acked.get((user, state))}
                    if (user, state) in inFlight:
                        possible.add(inFlight[user, state])
                    if stored.get(state) not in possible:
                        wrong.append((user, state, stored.get(state), possible))
                    if state in stored:
                        # What is stored is now what was acknowledged.
                        acked[user, state] = stored[state]
                await client.bye()
            self.assertEqual(wrong, [], why)
            gw.assertCleanExit(await gw.stop())
        self.assertGreater(totalAcked, 0)


class _Authoriser(Recorder):
    """
    A client's observer that allows every subscription request as soon as
    it arrives (more work for the gateway: the answer is not checked).

    @ivar client: The client to answer with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.client: NativeClientProtocol | None = None

    def subscriptionReceived(self, address: Address, kind: str) -> None:
        super().subscriptionReceived(address, kind)
        if kind == "subscribe" and self.client is not None:
            self.client.authorise(address).addErrback(lambda _: None)


class StopTests(TestCase):
    """
    SIGTERM in the middle of work: the gateway stops accepting, finishes
    what it had taken, closes its stores last, and exits quickly.
    """

    async def test_stopDuringSubscriptions(self) -> None:
        """
        Sixteen users each keep subscribing to and unsubscribing from every
        other user, one request at a time per pair (240 at once), and each
        allows every subscription request as it arrives: each request writes
        contacts and authorisations and tells the other user. The gateway
        gets SIGTERM at a random moment of this. It exits cleanly within
        L{STOP_WITHIN} seconds; its log has no C{database is closed} failure
        (nor any traceback); the files pass C{integrity_check}; after a
        restart each user's contacts hold exactly the users whose last
        acknowledged request was a SUBSCRIBE (a request left unanswered by
        the stop may or may not have happened).
        """
        seed = random.SystemRandom().randrange(2**32)
        users = {f"s{n}": f"pw-s{n}" for n in range(16)}
        gw = GatewayProcess(self, UNLIMITED)
        gw.addUsers(users)
        await gw.start()
        clients: dict[str, NativeClientProtocol] = {}
        for user, password in users.items():
            observer = _Authoriser()
            clients[user], _ = await gw.client(user, password, recorder=observer)
            observer.client = clients[user]
        acked: dict[tuple[str, str], bool] = {}
        inFlight: set[tuple[str, str]] = set()
        answered = [0]

        async def lane(user: str, other: str) -> None:
            pair = (user, other)
            while True:
                subscribe = not acked.get(pair, False)
                inFlight.add(pair)
                try:
                    if subscribe:
                        await clients[user].subscribe(f"{other}@{DOMAIN}")
                    else:
                        await clients[user].unsubscribe(f"{other}@{DOMAIN}")
                except ClientError:
                    return
                inFlight.discard(pair)
                acked[pair] = subscribe
                answered[0] += 1

        done = gatherResults([Deferred.fromCoroutine(lane(u, o)) for u in users for o in users if o != u])
        delay = random.Random(seed).uniform(0.3, 1.0)
        await sleep(delay)
        started = time.monotonic()
        code = await gw.stop()
        took = time.monotonic() - started
        await done
        why = f"(seed {seed}: SIGTERM after {delay:.2f} s and {answered[0]} answers, {len(inFlight)} in flight)"
        gw.assertCleanExit(code)
        self.assertGreater(answered[0], 0, why)
        self.assertLess(took, STOP_WITHIN, why)
        closedFailures = [line for line in gw.lastRunLog.splitlines() if "database is closed" in line]
        self.assertEqual(closedFailures[:3], [], f"{len(closedFailures)} 'database is closed' lines {why}")
        self.assertEqual(integrityProblems(gw.dataDir), {}, why)

        await gw.start()
        wrong: list[tuple[str, str, str]] = []
        for user, password in users.items():
            client, _ = await gw.client(user, password)
            contacts = {c["address"] for c in (await client.contacts())["contacts"]}
            for other in users:
                pair = (user, other)
                if other == user or pair in inFlight:
                    continue
                if acked.get(pair, False) != (f"{other}@{DOMAIN}" in contacts):
                    wrong.append((user, other, f"last acknowledged: {'SUBSCRIBE' if acked.get(pair) else 'UNSUBSCRIBE'}"))
            await client.bye()
        self.assertEqual(wrong, [], why)
