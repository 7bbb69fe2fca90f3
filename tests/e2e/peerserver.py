"""
What the real third-party XMPP servers the tests start (L{ProsodyProcess},
L{EjabberdProcess}) have in common: their process, logs, accounts and
clients.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM
from tests.e2e.harness import STOP_TIMEOUT, _deferred, _readText, sleep, stopProcess
from tests.e2e.xmppclient import XMPPAgent, connectAgent

__all__ = ["PeerServerProcess"]


def _processState(pid: int) -> str | None:
    """
    The state letter Linux gives process C{pid} (C{T}: stopped by a
    signal), or C{None} where C{/proc} does not say.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class PeerServerProcess:
    """
    A peer server process of a test. Subclasses set the attributes below,
    write their configuration, and implement C{start}, C{addUser} and
    C{problems}.

    @cvar name: Names the server in messages (C{"prosody"}).
    @ivar testCase: The test it belongs to.
    @ivar domain: The XMPP domain it serves.
    @ivar passwords: Account name to password.
    @ivar c2sPort: Its client port.
    @ivar s2sPort: Its server-to-server port.
    @ivar caPath: The authority its certificate comes from.
    @ivar logPath: Its log file.
    @ivar outputPath: Where its standard output and error go.
    @ivar process: The running process, or C{None}.
    @ivar checkLog: Whether to fail the test on error lines in its log.
    """

    name = "peer"
    testCase: TestCase
    domain: str
    passwords: dict[str, str]
    peers: dict[str, int]
    c2sPort: int
    s2sPort: int
    caPath: str | None
    certificatePath: str
    keyPath: str
    trustPath: str
    logPath: str
    outputPath: str
    process: subprocess.Popen[bytes] | None
    checkLog: bool
    _output: IO[bytes] | None
    _frozen = False

    directory: str

    def _prepareTLS(self, domain: str, certificate: tuple[str, str] | None) -> None:
        """
        Set L{caPath}, C{certificatePath}, C{keyPath} and C{trustPath}: a
        new authority and a certificate for C{domain} (key and chain in
        separate files) when C{certificate} is C{None}, else that
        C{(certificate, key)} pair.
        """
        tlsDir = os.path.join(self.directory, "tls")
        os.makedirs(tlsDir, exist_ok=True)
        if certificate is None:
            authority = CertificateAuthority()
            key, issued = authority.issue([domain])
            self.caPath = writePEM(os.path.join(tlsDir, "ca", "ca.pem"), certificatePEM(authority.certificate))
            self.certificatePath = writePEM(os.path.join(tlsDir, f"{domain}.crt"), certificatePEM(issued))
            self.keyPath = writePEM(os.path.join(tlsDir, f"{domain}.key"), keyPEM(key))
        else:
            self.caPath = None
            self.certificatePath, self.keyPath = (os.path.abspath(p) for p in certificate)
        self.trustPath = os.path.join(tlsDir, "trusted-cas.pem")

    def jid(self, user: str) -> str:
        """
        The bare JID of the account C{user} on L{domain}.
        """
        return f"{user}@{self.domain}"

    def addPeer(self, domain: str, port: int) -> None:
        """
        Route s2s traffic for C{domain} to C{127.0.0.1:port}.
        """
        self.peers[domain] = port

    def addUser(self, user: str, password: str) -> None:
        raise NotImplementedError

    def addUsers(self, passwords: Mapping[str, str]) -> None:
        """
        L{addUser} for each entry.
        """
        for user, password in passwords.items():
            self.addUser(user, password)

    @property
    def running(self) -> bool:
        """
        Whether the process has been started and has not been seen to exit.
        """
        return self.process is not None and self.process.poll() is None

    def _describe(self, what: str) -> str:
        return f"{what}\n--- output ---\n{self.output()}--- log ({self.logPath}) ---\n{self.log()}"

    def _reaped(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        self.process = None
        if self._output is not None:
            self._output.close()
            self._output = None
        return code

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """
        Send the server C{sig} (after L{thaw} if it is frozen) and wait for
        it to exit; kill it if it has not within the harness's
        C{STOP_TIMEOUT}.

        @return: Fires with its exit status.
        """
        self.thaw()
        return stopProcess(self, self.name, sig)

    def freeze(self) -> Deferred[None]:
        """
        Stop the server's process with C{SIGSTOP}, and wait until the
        system has stopped it: it keeps its connections open but reads,
        answers and sends nothing until L{thaw} (what peers send it waits in
        its sockets), as a server that has hung would. L{stop} thaws it.

        @return: Fires once the process is stopped.
        """

        async def run() -> None:
            if self.process is None:
                raise AssertionError(f"{self.name} is not running")
            self.process.send_signal(signal.SIGSTOP)
            self._frozen = True
            deadline = time.monotonic() + STOP_TIMEOUT
            while _processState(self.process.pid) not in ("T", None):
                if time.monotonic() > deadline:
                    raise AssertionError(self._describe(f"{self.name} did not stop on SIGSTOP within {STOP_TIMEOUT} s"))
                await sleep(0.01)

        return _deferred(run())

    def thaw(self) -> None:
        """
        Let a process stopped by L{freeze} go on (C{SIGCONT}).
        """
        if self._frozen and self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self._frozen = False

    def log(self) -> str:
        """
        @return: The server's log so far.
        """
        return _readText(self.logPath)

    def output(self) -> str:
        """
        @return: What the server wrote to standard output and error.
        """
        return _readText(self.outputPath)

    def problems(self) -> list[str]:
        """
        @return: The error lines of the log.
        """
        raise NotImplementedError

    async def _stopForCleanUp(self) -> None:
        if self.process is not None:
            await self.stop()

    async def _cleanUpNow(self) -> None:
        await self._stopForCleanUp()
        if self.checkLog:
            problems = self.problems()
            if problems:
                raise AssertionError(self._describe(f"{self.name} logged errors:\n" + "\n".join(problems)))

    def _cleanUp(self) -> Deferred[None]:
        return _deferred(self._cleanUpNow())

    def agent(
        self,
        user: str,
        password: str | None = None,
        resource: str = "agent",
        tls: str = "starttls",
        **kwargs: Any,
    ) -> Deferred[XMPPAgent]:
        """
        L{connectAgent} for C{user@domain}: a real XMPP client logged in to
        this server's c2s port, trusting L{caPath}; stopped when the test
        ends.

        @param password: The account's password (by default the one it was
            made with).
        @param kwargs: More arguments for L{connectAgent}.
        """
        kwargs.setdefault("caFile", self.caPath)
        return connectAgent(
            self.testCase,
            f"{self.jid(user)}/{resource}",
            password if password is not None else self.passwords[user],
            self.c2sPort,
            tls=tls,
            **kwargs,
        )
