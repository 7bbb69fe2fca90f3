"""
End-to-end test of C{max_send_queue_bytes}: a client that logs in and then
never reads is dropped once too much is queued for it, and its sender is
told it went offline; the gateway keeps serving.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

from imgateway.adapters.native.framing import Headers, Request, serialise
from imgateway.auth.sasl import clientMechanism
from imgateway.core.errors import DeliveryError, UserOffline
from imgateway.core.presence import PresenceState
from tests.e2e.harness import GatewayProcess, sleep

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


def frame(seq: int, method: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    return serialise(Request(method, "*", Headers.of(("Seq", str(seq)), *headers), body))


class SlowReaderTests(TestCase):
    """
    A client that stops reading.
    """

    async def test_slowReaderDropped(self) -> None:
        """
        bob logs in over a raw socket with a small receive buffer and stops
        reading; alice sends him messages until the gateway drops him (it
        logs why), after which alice gets 480 and keeps being served.
        """
        gw = GatewayProcess(self, {"native": {"max_send_queue_bytes": 65536, "requests_per_second": 10000, "request_burst": 10000}})
        gw.addUsers(PASSWORDS)
        await gw.start()

        bob = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bob.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        bob.connect(("127.0.0.1", gw.port))
        self.addCleanup(bob.close)
        plain = clientMechanism("PLAIN", "bob", PASSWORDS["bob"])
        bob.setblocking(False)

        async def answered(count: int) -> bytes:
            received = b""
            for _ in range(200):
                try:
                    received += bob.recv(65536)
                except BlockingIOError:
                    pass
                if received.count(b"IMGW/1.0 200") >= count:
                    return received
                await sleep(0.05)
            self.fail(f"no answer: {received!r}")

        # Log bob in, make him present, then stop reading.
        bob.sendall(frame(1, "AUTH", [("Mechanism", "PLAIN")], plain.start()))
        await answered(1)
        bob.sendall(frame(2, "PUBLISH", [("Presence", "online")]))
        await answered(1)

        alice, _ = await gw.client("alice", PASSWORDS["alice"], presence=PresenceState.ONLINE)
        body = "x" * 8000
        delivered = 0
        for i in range(2000):
            try:
                await alice.sendMessage("bob@corp.example", body)
            except UserOffline:
                break
            except DeliveryError as e:  # pragma: no cover - reported by the assertion below
                self.fail(f"unexpected delivery error {e!r}")
            delivered += 1
            if i % 50 == 0:
                await sleep(0.01)
        else:
            self.fail("the gateway never dropped the client that does not read")
        self.assertLess(delivered * len(body), 8 * 1024 * 1024)
        self.assertIn("max_send_queue_bytes", gw.log())
        await alice.ping()
        self.assertTrue(gw.running)
