# -*- test-case-name: tests.e2e.test_manhole -*-
"""
End-to-end tests of the SSH manhole: a real C{twistd imgateway} with
C{[manhole]} set, OpenSSH's C{ssh} logging in with a key (and a throwaway
C{known_hosts} holding the host key the gateway made), native clients that
see what the console's helpers do, and C{imgateway-admin console
--script}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import goodbye
from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, REPO_ROOT, GatewayProcess, freePort, reactor, requirePeer, sleep

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SYSTEM = f"imgateway@{DOMAIN}"


class ManholeTests(TestCase):
    """
    The manhole of a real gateway, through OpenSSH.
    """

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.ssh = requirePeer(self, "ssh", "openssh-client")
        keygen = requirePeer(self, "ssh-keygen", "openssh-client")
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.key = os.path.join(self.folder, "operator")
        self.strangerKey = os.path.join(self.folder, "stranger")
        for path in (self.key, self.strangerKey):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", path], check=True)
        with open(os.path.join(self.folder, "authorized_keys"), "w") as f:
            f.write("# the operators\n")
            with open(self.key + ".pub") as pub:
                f.write(pub.read())
        self.manholePort = freePort()
        native = freePort()
        self.gateway = GatewayProcess(
            self,
            {
                "native": {"listen": [f"tcp:{native}:interface=127.0.0.1"]},
                "manhole": {
                    "listen": [f"tcp:{self.manholePort}:interface=127.0.0.1"],
                    "authorized_keys": os.path.join(self.folder, "authorized_keys"),
                },
            },
            directory=os.path.join(self.folder, "gateway"),
            port=native,
            waitPorts=[native, self.manholePort],
        )
        self.gateway.addUsers({"alice": "alice-pw", "bob": "bob-pw"})
        await self.gateway.start()
        self.knownHosts = os.path.join(self.folder, "known_hosts")
        with open(os.path.join(self.gateway.dataDir, "manhole_host_key.pub")) as f:
            hostKey = f.read().strip()
        with open(self.knownHosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.manholePort} {hostKey}\n")

    def sshCommand(self, *options: str, key: str | None = None, user: str = "admin") -> list[str]:
        """
        An ssh command line to the manhole: no configuration file, only the
        throwaway C{known_hosts}, no agent, the given key.
        """
        command = [
            self.ssh, "-F", "/dev/null", "-p", str(self.manholePort), "-l", user,
            "-o", f"UserKnownHostsFile={self.knownHosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
        ]
        if key is not None:
            command += ["-i", key, "-o", "IdentitiesOnly=yes"]
        return command + list(options) + ["127.0.0.1"]

    def runCommand(self, command: Sequence[str], input: bytes = b"") -> Deferred[subprocess.CompletedProcess[bytes]]:
        """
        Run C{command} in a thread (the reactor, and the test's native
        clients, go on meanwhile).
        """
        env = dict(GatewayProcess.environment(), HOME=self.folder)
        return deferToThread(
            subprocess.run, list(command), input=input, capture_output=True, timeout=60, env=env, cwd=REPO_ROOT
        )

    def script(self, source: str) -> Deferred[subprocess.CompletedProcess[bytes]]:
        """
        Send C{source} to the manhole on a session without a terminal
        (C{ssh ... < script.py}).
        """
        return self.runCommand(self.sshCommand("-T", "-o", "BatchMode=yes", key=self.key), source.encode())

    async def test_helpersChangeState(self) -> None:
        """
        A script sent on ssh's input sets alice's presence, which bob (who
        watches her) sees; sends a message as alice and one from the
        system, which bob's native client receives; gets its output back
        and exit status 0. A rule added for bob auto-replies to alice's
        native client. alice, offline, is given a presence the console
        holds.
        """
        aliceClient, aliceSees = await self.gateway.client("alice", "alice-pw")
        bobClient, bobSees = await self.gateway.client("bob", "bob-pw")
        await bobClient.subscribe(ALICE)
        await aliceClient.authorise(BOB, True)
        await bobSees.waitForPresence(ALICE, PresenceState.ONLINE)

        done = await self.script(
            "print(await gateway.setPresence('alice', 'on-the-phone', 'in a call'))\n"
            "print(await gateway.sendMessage('alice', 'bob', 'hello from the console'))\n"
            "print(await gateway.notify('bob', 'maintenance at 5'))\n"
            "print(sorted(gateway.online()))\n"
        )
        self.assertEqual(
            (done.returncode, done.stdout.decode(), done.stderr.decode()),
            (
                0,
                "alice@corp.example set to on-the-phone (in a call) on 1 session(s)\n200 delivered\n200 delivered\n"
                "['alice@corp.example', 'bob@corp.example']\n",
                "",
            ),
        )
        await bobSees.waitForPresence(ALICE, PresenceState.ON_THE_PHONE, "in a call")
        await bobSees.waitForMessage(ALICE, "hello from the console")
        await bobSees.waitForMessage(SYSTEM, "maintenance at 5")

        # A rule set from the manhole acts on a native client's message.
        done = await self.script(
            "print(await gateway.setPresence('bob', 'busy'))\n"
            "print(await gateway.addRule('bob', 'busy from alice reply In a meeting until 4'))\n"
        )
        self.assertEqual(
            (done.returncode, done.stdout.decode()),
            (0, "bob@corp.example set to busy on 1 session(s)\n1. while busy from alice@corp.example: reply 'In a meeting until 4'\n"),
        )
        await aliceClient.sendMessage(BOB, "quick question")
        await bobSees.waitForMessage(ALICE, "quick question")
        await aliceSees.waitForMessage(BOB, "In a meeting until 4")

        await goodbye(aliceClient, reactor())
        await bobSees.waitForPresence(ALICE, PresenceState.OFFLINE)
        done = await self.script("print(await gateway.setPresence('alice', 'away', 'back at 3'))\n")
        self.assertEqual(done.stdout.decode(), "alice@corp.example set to away (back at 3) on 1 session(s)\n")
        await bobSees.waitForPresence(ALICE, PresenceState.AWAY, "back at 3")
        done = await self.script("print(gateway.sessions('alice'))\nprint(await gateway.setPresence('alice', 'offline'))\n")
        self.assertIn("'console' away (back at 3)>]", done.stdout.decode())
        await bobSees.waitForPresence(ALICE, PresenceState.OFFLINE)

    async def test_interactiveConsole(self) -> None:
        """
        With a terminal, ssh gets the interactive console: tab completes a
        helper's name and its result is shown; C{kick} ends bob's session,
        whose client is told.
        """
        _, bobSees = await self.gateway.client("bob", "bob-pw", label="laptop")
        typed = b"gateway.onl\t\rgateway.kick(gateway.sessions('bob')[0].sessionId, 'bye')\r"
        done = await self.runCommand(self.sshCommand("-tt", "-o", "BatchMode=yes", key=self.key), typed + b"\x04")
        output = done.stdout.decode("utf-8", "replace")
        self.assertIn("['bob@corp.example']", output)
        self.assertIn("'closed hs1-", output)
        await bobSees.waitFor(lambda: bobSees.disconnects or None, description="bob's session closed")

    async def test_refused(self) -> None:
        """
        Passwords are never asked for; an unknown key, or the right key for
        another user, is refused; and nothing of these is a shell.
        """
        for command in (
            self.sshCommand("-T", "-o", "BatchMode=yes", "-o", "PreferredAuthentications=password,keyboard-interactive"),
            self.sshCommand("-T", "-o", "BatchMode=yes", key=self.strangerKey),
            self.sshCommand("-T", "-o", "BatchMode=yes", key=self.key, user="root"),
        ):
            done = await self.runCommand(command, b"print('in')\n")
            self.assertEqual(done.returncode, 255, done.stderr)
            self.assertIn(b"Permission denied (publickey)", done.stderr)
            self.assertNotIn(b"in", done.stdout)

    async def test_adminConsoleScript(self) -> None:
        """
        C{imgateway-admin console --script} runs a file in the console and
        exits with its status: 0 with its output; 1 with the traceback when
        it raised, the gateway going on; what it gave C{sys.exit}. The host
        key is kept across a restart.
        """
        _, bobSees = await self.gateway.client("bob", "bob-pw")
        scripts = {
            "notify.py": "print(await gateway.broadcast('the gateway restarts at 5'))\n",
            "broken.py": "print('before')\nraise RuntimeError('broken script')\n",
            "exits.py": "import sys\nsys.exit(4)\n",
        }
        for name, source in scripts.items():
            with open(os.path.join(self.folder, name), "w") as f:
                f.write(source)

        def admin(name: str) -> Deferred[subprocess.CompletedProcess[bytes]]:
            return self.runCommand(
                [sys.executable, "-m", "imgateway.admin.cli", "--config", self.gateway.configPath, "console",
                 "--script", os.path.join(self.folder, name), "--identity", self.key]
            )

        done = await admin("notify.py")
        self.assertEqual((done.returncode, done.stdout), (0, b"{'bob@corp.example': '200 delivered'}\n"), done.stderr)
        await bobSees.waitForMessage(SYSTEM, "the gateway restarts at 5")

        done = await admin("broken.py")
        self.assertEqual((done.returncode, done.stdout), (1, b"before\n"))
        self.assertIn(b'File "<script>", line 2, in <module>\nRuntimeError: broken script\n', done.stderr)

        done = await admin("exits.py")
        self.assertEqual(done.returncode, 4)

        await self.gateway.restart()
        done = await admin("notify.py")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.gateway.log().count("Made the manhole's SSH host key"), 1)

    async def test_watchdog(self) -> None:
        """
        A console command that holds the reactor for longer than
        C{watchdog_seconds} (1 s) is logged, with the script's frame.
        """
        done = await self.script("import time\ndef nap():\n    time.sleep(1.6)\nnap()\nprint('awake')\n")
        self.assertEqual(done.stdout, b"awake\n")
        for _ in range(50):
            if "Reactor blocked" in self.gateway.log():
                break
            await sleep(0.1)
        log = self.gateway.log()
        self.assertIn("Reactor blocked: it did not run for", log)
        self.assertIn('File "<script>", line 3, in nap', log)
