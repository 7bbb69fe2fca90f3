# -*- test-case-name: tests.e2e.test_client_cli -*-
"""
End-to-end tests of the C{imgateway-client} command: the real command
(C{python -m imgateway.client.cli}) as a process, alone and against a real
gateway process on loopback with accounts made by C{imgateway-admin}.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

#: The folder holding the C{imgateway} package.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _freePort() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
    finally:
        s.close()


def _environ() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("IMGATEWAY_PASSWORD", None)
    return env


class _Process(ProcessProtocol):
    """
    A child process whose output is collected, and whose output lines can
    be waited for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()
        self._waiting: list[tuple[str, Deferred[str]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        waiting, self._waiting = self._waiting, []
        for text, d in waiting:
            d.errback(AssertionError(f"{self.name} ended (status {code}) before printing {text!r}\n{self.report()}"))
        self.ended.callback(code)

    def lines(self) -> list[str]:
        return self.out.decode("utf-8", "replace").splitlines()

    def report(self) -> str:
        return f"--- {self.name} stdout:\n{self.out.decode('utf-8', 'replace')}--- {self.name} stderr:\n{self.err.decode('utf-8', 'replace')}"

    def _check(self) -> None:
        lines = self.lines()
        for entry in list(self._waiting):
            text, d = entry
            found = [line for line in lines if text in line]
            if found:
                self._waiting.remove(entry)
                d.callback(found[0])

    def waitFor(self, text: str, clock: Any, timeout: float = 20.0) -> Deferred[str]:
        """
        @return: Fires with the first output line containing C{text}.
        """
        d: Deferred[str] = Deferred()
        entry = (text, d)
        self._waiting.append(entry)
        self._check()

        def timedOut(f: Failure) -> Failure:
            if entry in self._waiting:
                self._waiting.remove(entry)
            if f.check(Exception) and not f.check(AssertionError):
                raise AssertionError(f"{self.name} did not print {text!r} within {timeout}s\n{self.report()}")
            return f

        if not d.called:
            d.addTimeout(timeout, clock)
            d.addErrback(timedOut)
        return d

    def write(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode("utf-8") + b"\n")


class _ProcessTestCase(TestCase):
    """
    Starts real processes, and ends them in cleanups.
    """

    timeout = 120

    def spawn(self, name: str, args: Sequence[str]) -> _Process:
        from twisted.internet import reactor

        process = _Process(name)
        reactor.spawnProcess(process, sys.executable, [sys.executable, *args], env=_environ(), path=REPO)
        self.addCleanup(self._end, process)
        return process

    def _end(self, process: _Process) -> Deferred[Any] | None:
        from twisted.internet import reactor

        if process.ended.called:
            return None
        transport = process.transport
        assert transport is not None
        try:
            transport.signalProcess("TERM")
        except Exception:
            return None

        def kill() -> None:
            if not process.ended.called:
                try:
                    transport.signalProcess("KILL")
                except Exception:
                    pass

        timer = reactor.callLater(10, kill)

        def ended(_: object) -> None:
            if timer.active():
                timer.cancel()

        return process.ended.addBoth(ended)

    def client(self, *args: str, password: str | None = None, stdin: str | None = None) -> Deferred[tuple[bytes, bytes, int]]:
        """
        Run C{imgateway-client ARGS} to its end.
        """
        from twisted.internet import reactor

        env = _environ()
        if password is not None:
            env["IMGATEWAY_PASSWORD"] = password
        if stdin is None:
            d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
                sys.executable, ["-m", "imgateway.client.cli", *args], env=env, path=REPO, reactor=reactor
            )
            return d
        process = _Process("imgateway-client " + " ".join(args))
        reactor.spawnProcess(
            process, sys.executable, [sys.executable, "-m", "imgateway.client.cli", *args], env=env, path=REPO
        )
        self.addCleanup(self._end, process)
        assert process.transport is not None
        process.transport.write(stdin.encode("utf-8"))
        process.transport.closeStdin()
        return process.ended.addCallback(lambda code: (process.out, process.err, code if code is not None else -1))


class CommandLineTests(_ProcessTestCase):
    """
    C{python -m imgateway.client.cli} as a real process, without a gateway.
    """

    def test_usageError(self) -> Deferred[None]:
        """
        A usage error exits with status 2.
        """

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual(code, 2)
            self.assertIn(b"--user is required", err)

        return self.client("send", "bob", "hi").addCallback(check)

    def test_connectionRefused(self) -> Deferred[None]:
        """
        Nothing listening: a one-line error naming the endpoint, status 1.
        """
        server = f"tcp:127.0.0.1:{_freePort()}"

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual((code, err.decode()), (1, f"imgateway-client: cannot connect to {server}: Connection refused\n"))

        return self.client("--server", server, "--user", "alice", "ping", password="pw").addCallback(check)

    def test_chatConnectionRefused(self) -> Deferred[None]:
        """
        The chat client reports a refused connection the same way.
        """
        server = f"tcp:127.0.0.1:{_freePort()}"

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual((code, err.decode()), (1, f"imgateway-client: cannot connect to {server}: Connection refused\n"))

        return self.client("--server", server, "--user", "alice", "--password-stdin", stdin="pw\n/quit\n").addCallback(check)


class EndToEndTests(_ProcessTestCase):
    """
    C{imgateway-client} against a real gateway process (C{python -m twisted
    imgateway}), with accounts made by C{imgateway-admin}.
    """

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self._startGateway())

    async def _startGateway(self) -> None:
        from twisted.internet import reactor

        self.dir = tempfile.mkdtemp(prefix="imgateway-client-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = _freePort()
        self.server = f"tcp:127.0.0.1:{self.port}"
        lines = []
        table = ""
        with open(os.path.join(REPO, "etc", "imgateway.toml")) as f:
            for line in f:
                if line.startswith("["):
                    table = line.strip()
                if line.startswith("data_dir ="):
                    line = f'data_dir = "{os.path.join(self.dir, "data")}"\n'
                elif line.startswith("listen =") and table not in ("[links]", "[status]"):
                    line = f'listen = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                elif line.startswith("scram_iterations ="):
                    line = "scram_iterations = 4096\n"
                lines.append(line)
        self.config = os.path.join(self.dir, "imgateway.toml")
        with open(self.config, "w") as f:
            f.writelines(lines)

        for user in ("alice", "bob", "carol"):
            out, err, code = await self.admin("user", "add", user, "--password-stdin", stdin=f"pw-{user}\n")
            if code != 0:
                self.fail(f"imgateway-admin user add {user} failed with status {code}:\n{out.decode()}{err.decode()}")

        self.gateway = self.spawn("gateway", ["-m", "twisted", "imgateway", "--config", self.config])
        for _ in range(200):
            if self.gateway.ended.called:
                self.fail(f"the gateway exited at start-up\n{self.gateway.report()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                await deferLater(reactor, 0.1)
        self.fail(f"the gateway did not listen on {self.port} within 20s\n{self.gateway.report()}")

    def admin(self, *args: str, stdin: str) -> Deferred[tuple[bytes, bytes, int]]:
        from twisted.internet import reactor

        process = _Process("imgateway-admin " + " ".join(args))
        reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-m", "imgateway.admin.cli", "--config", self.config, *args],
            env=_environ(),
            path=REPO,
        )
        self.addCleanup(self._end, process)
        assert process.transport is not None
        process.transport.write(stdin.encode())
        process.transport.closeStdin()
        return process.ended.addCallback(lambda code: (process.out, process.err, code if code is not None else -1))

    def oneShot(self, user: str, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        return self.client("--server", self.server, "--user", user, *args, password=f"pw-{user}")

    def chat(self, user: str) -> _Process:
        process = self.spawn(
            f"chat {user}",
            ["-m", "imgateway.client.cli", "--server", self.server, "--user", f"{user}@corp.example", "--password-stdin"],
        )
        process.write(f"pw-{user}")
        return process

    def test_chat(self) -> Deferred[None]:
        """
        A chat client receives what one-shot commands send, answers a
        subscription request, publishes presence and a rule that one-shot
        commands see, and exits with status 0 when its input ends.
        """
        return ensureDeferred(self._chat())

    async def _chat(self) -> None:
        from twisted.internet import reactor

        bob = self.chat("bob")
        await bob.waitFor("** logged in as bob@corp.example", reactor)
        await bob.waitFor("** no contacts yet", reactor)

        out, err, code = await self.oneShot("alice", "send", "bob", "hello", "from", "alice")
        self.assertEqual((code, out, err), (0, b"", b""))
        await bob.waitFor("<< alice@corp.example: hello from alice", reactor)

        out, err, code = await self.oneShot("alice", "send", "carol", "hi")
        self.assertEqual((code, err), (1, b"imgateway-client: carol@corp.example is offline (480)\n"))

        # An unknown user answers as an offline one does (no existence leaks).
        out, err, code = await self.oneShot("alice", "send", "nobody", "hi")
        self.assertEqual((code, err), (1, b"imgateway-client: nobody@corp.example is offline (480)\n"))

        out, err, code = await self.oneShot("alice", "add", "bob", "Bob")
        self.assertEqual((code, out), (0, b"bob@corp.example: request pending\n"))
        await bob.waitFor("** alice@corp.example asks to see your presence: /accept alice@corp.example", reactor)

        bob.write("/accept alice")
        await bob.waitFor("-> alice@corp.example may now see your presence", reactor)
        bob.write("/status away at lunch")
        await bob.waitFor("-> you are away (at lunch)", reactor)

        out, err, code = await self.oneShot("alice", "presence")
        self.assertEqual((code, out.decode()), (0, "bob@corp.example\taway\tat lunch\t(subscription to)\n"))

        bob.write("/rule away tel:+15550100")
        await bob.waitFor("-> while away, messages are turned away naming tel:+15550100", reactor)
        out, err, code = await self.oneShot("alice", "send", "bob", "still there?")
        self.assertEqual((code, err), (1, b"imgateway-client: bob@corp.example is busy (486); try tel:+15550100\n"))

        bob.write("/ping")
        await bob.waitFor("-> pong (", reactor)
        assert bob.transport is not None
        bob.transport.closeStdin()
        await bob.waitFor("** disconnected: bye", reactor)
        self.assertEqual(await bob.ended, 0, bob.report())

    def test_wrongPassword(self) -> Deferred[None]:
        """
        A wrong password: a one-line error naming the user, status 1.
        """
        return ensureDeferred(self._wrongPassword())

    async def _wrongPassword(self) -> None:
        out, err, code = await self.client("--server", self.server, "--user", "alice", "ping", password="wrong")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith(b"imgateway-client: cannot log in as alice: "), err)

    def test_serverGoesAway(self) -> Deferred[None]:
        """
        When the gateway stops, the chat client says so and exits with
        status 1.
        """
        return ensureDeferred(self._serverGoesAway())

    async def _serverGoesAway(self) -> None:
        from twisted.internet import reactor

        alice = self.chat("alice")
        await alice.waitFor("** logged in as alice@corp.example", reactor)
        ended = self._end(self.gateway)
        assert ended is not None
        await ended
        await alice.waitFor("** disconnected:", reactor)
        self.assertEqual(await alice.ended, 1, alice.report())
