"""
End-to-end tests of C{Presence-Answers: none} (C{docs/protocol.md} sections
7.2 and 7.9): the real C{twistd imgateway} process, raw bytes and the
shipped client over real TCP on loopback.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from imgateway.adapters.native.framing import Request
from imgateway.core.presence import PresenceState

from tests.e2e.harness import GatewayProcess, RawConnection

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
CAROL = "carol@corp.example"


def _login(user: str, quiet: bool) -> bytes:
    plain = b"\0" + user.encode() + b"\0" + PASSWORDS[user].encode()
    header = b"Presence-Answers: none\r\n" if quiet else b""
    return b"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: PLAIN\r\n%sContent-Length: %d\r\n\r\n%s" % (header, len(plain), plain)


def _requests(conn: RawConnection, method: str, event: str | None = None) -> list[Request]:
    return [f for f in conn.frames if isinstance(f, Request) and f.method == method and (event is None or f.headers.get("Event") == event)]


def _notes(conn: RawConnection) -> list[str]:
    return [f.headers.get("Note") or "" for f in _requests(conn, "NOTIFY", "presence") if f.target == "pres:" + CAROL]


class PresenceAnswersTests(TestCase):
    async def test_optedInAndNot(self) -> None:
        """
        alice and bob watch carol. alice logs in with C{Presence-Answers:
        none}: the C{200} says so, carol's presence comes with C{Seq: 0}
        and alice answers nothing; the server counted none of them (the
        C{MESSAGE} after them is its request 1, and alice's answer to it is
        taken). bob, who did not opt in, gets numbered presence
        C{NOTIFY}s and answers them, as before. carol (the shipped client,
        opted in by default) sees alice's presence and stays connected.
        A C{200} alice sends to no request (C{Seq: 0}) is a response to
        no request: C{400} with C{Seq: 0}, connection closed.
        """
        gw = GatewayProcess(self)
        gw.addUsers(PASSWORDS)
        await gw.start()
        carol, carolSees = await gw.client("carol", PASSWORDS["carol"])
        self.assertEqual(carol.presenceAnswers, "none")
        for user in ("alice", "bob"):
            c, sees = await gw.client(user, PASSWORDS[user])
            address = f"{user}@corp.example"
            if not await c.subscribe(CAROL):
                await carolSees.waitForSubscription(address, "subscribe")
                await carol.authorise(address)
            if not await carol.subscribe(address):
                await sees.waitForSubscription(CAROL, "subscribe")
                await c.authorise(CAROL)
            await c.bye()

        alice, bob = await gw.raw(), await gw.raw()
        for conn, user, quiet in [(alice, "alice", True), (bob, "bob", False)]:
            conn.send(_login(user, quiet))
            conn.send(b"PUBLISH * IMGW/1.0\r\nSeq: 2\r\nPresence: online\r\n\r\n")
            await conn.waitFor(lambda conn=conn: len(conn.codes()) == 2, description=f"{user}'s AUTH and PUBLISH answered")  # type: ignore[misc]
            self.assertEqual(conn.codes(), [200, 200])
        self.assertEqual(alice.responses()[0].headers.get("Presence-Answers"), "none")
        self.assertIsNone(bob.responses()[0].headers.get("Presence-Answers"))
        await carolSees.waitForPresence("alice@corp.example", PresenceState.ONLINE)

        answered = 0
        for n in range(1, 6):
            await carol.publish(PresenceState.AWAY, f"n{n}")
            await alice.waitFor(lambda n=n: f"n{n}" in _notes(alice), description=f"alice told n{n}")  # type: ignore[misc]
            await bob.waitFor(lambda n=n: f"n{n}" in _notes(bob), description=f"bob told n{n}")  # type: ignore[misc]
            seqs = [f.seq for f in _requests(bob, "NOTIFY", "presence")]
            bob.send(b"".join(b"IMGW/1.0 200 OK\r\nSeq: %d\r\n\r\n" % s for s in seqs[answered:]))
            answered = len(seqs)
        self.assertEqual({f.seq for f in _requests(alice, "NOTIFY", "presence")}, {0})
        bobSeqs = [f.seq for f in _requests(bob, "NOTIFY")]
        self.assertEqual(bobSeqs, list(range(1, len(bobSeqs) + 1)))
        self.assertGreaterEqual(len(bobSeqs), 5)

        # The server's next request to alice is its first counted one.
        await carol.sendMessage("alice@corp.example", "after the presence")
        message = await alice.waitFor(lambda: next(iter(_requests(alice, "MESSAGE")), None), description="carol's message")
        self.assertEqual(message.seq, 1)
        alice.send(b"IMGW/1.0 200 OK\r\nSeq: 1\r\n\r\nPING * IMGW/1.0\r\nSeq: 3\r\n\r\n")
        await alice.waitFor(lambda: len(alice.codes()) == 3, description="alice's PING answered")
        self.assertEqual((alice.codes()[-1], alice.responses()[-1].seq), (200, 3))
        bob.send(b"PING * IMGW/1.0\r\nSeq: 3\r\n\r\n")
        await bob.waitFor(lambda: len(bob.codes()) == 3, description="bob's PING answered")
        self.assertEqual(bob.codes()[-1], 200)
        await carol.ping()

        # A stray answer from alice: a response to no request.
        alice.send(b"IMGW/1.0 200 OK\r\nSeq: 0\r\n\r\n")
        await alice.waitForClose()
        self.assertEqual((alice.codes()[-1], alice.responses()[-1].seq), (400, 0))
        self.assertIn("response to no request", alice.responses()[-1].reason)
        self.assertTrue(gw.running)
        self.assertEqual(gw.problems(), [])
