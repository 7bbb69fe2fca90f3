# -*- test-case-name: tests.e2e.test_irc_network -*-
"""
Real IRC servers for the end-to-end tests of the IRC bridge: a private
ngIRCd or InspIRCd 3 (with its C{monitor} module) on a free loopback port
(L{IRCdProcess}), one per test module (L{SharedIRCd}), and a raw-socket
IRC user that records what it receives (L{IRCUser}).

The configurations are written here (ideas from C{peers/start-ngircd.sh}
and C{start-inspircd.sh}): loopback only, no DNS or ident lookups, every
file in the test's folder. Flood control is the server's own, enforced:
ngIRCd's built-in penalties, and InspIRCd's C{commandrate}/C{threshold}
with fake lag off, so that a client past the allowance is disconnected
with C{Excess Flood} (see L{INSPIRCD_COMMAND_RATE}). Only the per-address
connection limits are raised (every client here comes from 127.0.0.1) and
the longest nick (30, for C{alice[corp]}).

A missing server skips the test, or fails it when C{CI} is set
(L{requirePeer}); C{run-tests.sh} installs the Debian packages C{ngircd}
and C{inspircd} as root, keeping their system services from starting.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.trial.runner import TestLoader
from twisted.trial.unittest import TestCase, TestSuite

from imgateway.adapters.irc.wire import IRCMessage, parseLine
from tests.e2e.harness import _accepts, _deferred, _readText, _Waiters, freePort, reactor, requirePeer, sleep

__all__ = [
    "INSPIRCD_COMMAND_RATE",
    "INSPIRCD_THRESHOLD",
    "NGIRCD_NO_FLOOD_CONTROL",
    "IRCUser",
    "IRCdProcess",
    "SharedIRCd",
    "connectUser",
]

#: InspIRCd's allowance for the tests' clients: C{commandrate} in
#: millicommands per second, and C{threshold}, the penalty (in commands)
#: past which a client is disconnected for C{Excess Flood} (fake lag off).
#: InspIRCd takes C{commandrate} off a client's penalty once a second, so
#: a client may write no more than C{threshold} commands between two
#: ticks. InspIRCd's own defaults are 1000 (1 line/s) and 10; 20 lines/s
#: and 20 keep the 200-message test short while the allowance is still
#: enforced.
INSPIRCD_COMMAND_RATE = 20000
INSPIRCD_THRESHOLD = 20

#: What C{IRCdProcess("ngircd", floodControl=False)} adds to ngIRCd's
#: C{[Limits]} (as C{../shared/peers/conf/ngircd.conf.in}): no penalty
#: time (fake lag) for any command, no idle timeout.
NGIRCD_NO_FLOOD_CONTROL = ("MaxPenaltyTime = 0", "IdleTimeout = 0")

#: How long a server may take to listen, in seconds.
START_TIMEOUT = 20.0

_NGIRCD_CONF = """\
[Global]
    Name = ngircd.test
    Info = imgateway test ngircd
    Listen = 127.0.0.1
    Ports = {port}
    PidFile = {dir}/ngircd.pid
    MotdPhrase = test
    ServerUID = {uid}
    ServerGID = {gid}
[Limits]
    MaxConnectionsIP = 0
    MaxNickLength = 30
    PingTimeout = 120
    PongTimeout = 20
{limits}[Options]
    DNS = no
    Ident = no
    PAM = no
    SyslogFacility = local5
[Operator]
    Name = oper
    Password = oper
"""

_INSPIRCD_CONF = """\
<server name="inspircd.test" description="imgateway test inspircd" network="TestInsp">
<admin name="test" nick="test" email="test@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
<module name="cap">
<module name="ircv3">
<module name="ircv3_capnotify">
<module name="monitor">
<monitor maxentries="30">
<power diepass="" restartpass="">
<connect name="main" allow="*" timeout="20" pingfreq="120"
         commandrate="{rate}" threshold="{threshold}" fakelag="no"
         localmax="1000" globalmax="1000" maxconnwarn="no"
         resolvehostnames="no" useident="no" limit="5000">
<class name="Shutdown" commands="DIE RESTART REHASH KLINE GLINE">
<type name="NetAdmin" classes="Shutdown" host="netadmin.test">
<oper name="oper" password="oper" host="*@*" type="NetAdmin">
<files motd="{dir}/motd.txt">
<dns server="127.0.0.1" timeout="1">
<pid file="{dir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{dir}/inspircd.log">
<options prefixquit="Quit: " syntaxhints="no" announcets="yes" hostintopic="yes" pingwarning="15" splitwhois="no" exemptchanops="">
<performance netbuffersize="10240" somaxconn="128" softlimit="5000" clonesonconnect="no" quietbursts="yes">
<security hideserver="" userstats="Pu" customversion="" flatlinks="no" hidesplits="no" hideulines="no" hidebans="no" maxtargets="20" runasroot="yes">
<limits maxnick="30" maxchan="64" maxmodes="20" maxident="11" maxquit="255" maxtopic="307" maxkick="255" maxreal="128" maxgecos="128" maxaway="200">
"""


class IRCdProcess:
    """
    A private IRC server of a test: L{kind} is C{"ngircd"} or
    C{"inspircd"}.

    @ivar port: Its client port on 127.0.0.1 (kept across L{restart}s).
    @ivar directory: Its configuration, log and pid files.
    """

    def __init__(self, kind: str, directory: str | None = None, floodControl: bool = True) -> None:
        """
        @param floodControl: Keep the server's own flood control (the
            tests); C{False} turns it off for the benchmarks
            (L{NGIRCD_NO_FLOOD_CONTROL}; ngIRCd only), which measure
            routing, not penalties.
        """
        if kind not in ("ngircd", "inspircd"):
            raise ValueError(kind)
        if not floodControl and kind != "ngircd":
            raise ValueError("flood control can be turned off for ngircd only")
        self.floodControl = floodControl
        self.kind = kind
        self.directory = directory or tempfile.mkdtemp(prefix=f"imgw-{kind}-")
        self._ownDirectory = directory is None
        os.makedirs(self.directory, exist_ok=True)
        self.port = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self.outputPath = os.path.join(self.directory, "output.log")

    @property
    def serverName(self) -> str:
        return f"{self.kind}.test"

    @property
    def endpoint(self) -> str:
        """
        The client endpoint string of its port.
        """
        return f"tcp:127.0.0.1:{self.port}:timeout=5"

    def writeConfig(self) -> str:
        if self.kind == "ngircd":
            path = os.path.join(self.directory, "ngircd.conf")
            limits = "" if self.floodControl else "".join(f"    {line}\n" for line in NGIRCD_NO_FLOOD_CONTROL)
            text = _NGIRCD_CONF.format(port=self.port, dir=self.directory, uid=os.getuid(), gid=os.getgid(), limits=limits)
        else:
            path = os.path.join(self.directory, "inspircd.conf")
            with open(os.path.join(self.directory, "motd.txt"), "w") as f:
                f.write("test\n")
            text = _INSPIRCD_CONF.format(
                port=self.port, dir=self.directory, rate=INSPIRCD_COMMAND_RATE, threshold=INSPIRCD_THRESHOLD
            )
        with open(path, "w") as f:
            f.write(text)
        return path

    def command(self, config: str) -> list[str]:
        if self.kind == "ngircd":
            return [shutil.which("ngircd") or "ngircd", "--nodaemon", "--config", config]
        return [shutil.which("inspircd") or "inspircd", "--nofork", "--runasroot", f"--config={config}"]

    def startNow(self) -> None:
        """
        Start it and wait (blocking: loopback, a second or so) until it
        listens.
        """
        if self.running:
            return
        config = self.writeConfig()
        self._output = open(self.outputPath, "ab")
        self.process = subprocess.Popen(
            self.command(config),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            preexec_fn=os.setsid,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.killNow()
                raise AssertionError(f"{self.kind} did not start on port {self.port}:\n{self.output()}")
            time.sleep(0.05)

    def start(self) -> Deferred[None]:
        """
        L{startNow}, as a Deferred.
        """

        async def run() -> None:
            self.startNow()

        return _deferred(run())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def killNow(self, sig: int = signal.SIGKILL) -> None:
        """
        Send the server C{sig} and reap it.
        """
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def restart(self) -> Deferred[None]:
        """
        Kill the server (SIGKILL: its users drop at once) and start it
        again on the same port.
        """

        async def run() -> None:
            self.killNow()
            await sleep(0.2)
            self.startNow()

        return _deferred(run())

    def destroy(self) -> None:
        """
        Stop the server and remove its folder if it made it.
        """
        self.killNow(signal.SIGTERM if self.kind == "ngircd" else signal.SIGKILL)
        if self._ownDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def output(self) -> str:
        text = _readText(self.outputPath)
        if self.kind == "inspircd":
            text += _readText(os.path.join(self.directory, "inspircd.log"))
        return text


def requireIRCd(testCase: TestCase, kind: str) -> None:
    """
    Skip the test (fail it under CI) if the server C{kind} is not installed.
    """
    requirePeer(testCase, kind, kind)


class SharedIRCd:
    """
    One L{IRCdProcess} shared by the tests of a module (give the module
    C{def testSuite(): return SHARED.suite(__name__)}); started on first
    use, destroyed after the module's tests (or at exit).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.server: IRCdProcess | None = None
        self._registered = False

    def get(self, testCase: TestCase) -> Deferred[IRCdProcess]:
        """
        The running server (started if needed).
        """

        async def run() -> IRCdProcess:
            requireIRCd(testCase, self.kind)
            if self.server is None:
                self.server = IRCdProcess(self.kind)
                if not self._registered:
                    atexit.register(self.destroy)
                    self._registered = True
            if not self.server.running:
                self.server.startNow()
            return self.server

        return _deferred(run())

    def destroy(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.destroy()

    def suite(self, moduleName: str, *others: SharedIRCd) -> TestSuite:
        """
        The tests of a module, as one suite that ends by destroying this
        server and C{others}.
        """
        loader = TestLoader()
        module = sys.modules[moduleName]
        suite = _SuiteThenDestroy(self, *others)
        for testClass in loader.findTestClasses(module):
            suite.addTest(loader.loadClass(testClass))
        return suite


class _SuiteThenDestroy(TestSuite):
    def __init__(self, *shared: SharedIRCd) -> None:
        super().__init__()
        self._shared = shared

    def run(self, result: Any, debug: bool = False) -> Any:
        try:
            return super().run(result, debug)
        finally:
            for shared in self._shared:
                shared.destroy()


# -- an IRC user ------------------------------------------------------------------------


class IRCUser(_Waiters, LineOnlyReceiver):
    """
    A raw IRC client: registers as L{wantedNick}, answers C{PING}, and
    records every message it receives (L{received}) and whether the
    connection is gone (L{closed}).
    """

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, nick: str) -> None:
        _Waiters.__init__(self)
        self.wantedNick = nick
        self.nick = nick
        self.received: list[IRCMessage] = []
        self.raw: list[bytes] = []
        self.closed: str | None = None
        self.registered = False

    def summary(self) -> str:
        return "\n".join(repr(line) for line in self.raw[-30:])

    def connectionMade(self) -> None:
        self.sendLine(f"NICK {self.nick}".encode())
        ident = "".join(c for c in self.nick if c.isalnum())[:9] or "user"
        self.sendLine(f"USER {ident} 0 * :test user {self.nick}".encode())

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        self.raw.append(line)
        try:
            message = parseLine(line)
        except ValueError:
            return
        if message.command == "PING":
            self.sendLine(b"PONG :" + (message.params[0].encode() if message.params else b"x"))
        elif message.command == "001":
            self.registered = True
            self.nick = message.params[0]
        elif message.command == "433" and not self.registered:
            self.nick += "_"
            self.sendLine(f"NICK {self.nick}".encode())
        self.received.append(message)
        self._changed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = str(reason.value)
        self._changed()

    def send(self, line: str | bytes) -> None:
        """
        Write one raw line (CR LF added).
        """
        self.sendLine(line.encode("utf-8") if isinstance(line, str) else line)

    def privmsg(self, target: str, text: str) -> None:
        self.send(f"PRIVMSG {target} :{text}")

    def close(self) -> None:
        if self.transport is not None and self.closed is None:
            self.transport.loseConnection()

    def messages(self, command: str, prefixNick: str | None = None) -> list[IRCMessage]:
        return [
            m
            for m in self.received
            if m.command == command and (prefixNick is None or (m.prefix or "").partition("!")[0].lower() == prefixNick.lower())
        ]

    def waitForMessages(self, command: str, count: int, prefixNick: str | None = None, timeout: float = 10.0) -> Deferred[list[IRCMessage]]:
        """
        Wait until C{count} messages of C{command} (from C{prefixNick}) arrived.
        """
        return self.waitFor(
            lambda: (lambda found: found if len(found) >= count else None)(self.messages(command, prefixNick)),
            timeout,
            f"{count} {command} from {prefixNick}",
        )

    def waitForLine(self, predicate: Callable[[IRCMessage], bool], timeout: float = 10.0, since: int = 0, description: str = "") -> Deferred[IRCMessage]:
        def found() -> IRCMessage | None:
            for m in self.received[since:]:
                if predicate(m):
                    return m
            return None

        return self.waitFor(found, timeout, description or "a line")


def connectUser(testCase: TestCase, server: IRCdProcess, nick: str) -> Deferred[IRCUser]:
    """
    Connect an L{IRCUser} to C{server} and wait until it is registered;
    it is closed when the test ends.
    """

    async def run() -> IRCUser:
        user = IRCUser(nick)
        await connectProtocol(TCP4ClientEndpoint(reactor(), "127.0.0.1", server.port), user)
        testCase.addCleanup(user.cancelWaits)
        testCase.addCleanup(user.close)
        await user.waitFor(lambda: user.registered, 10.0, f"{nick} registered")
        return user

    return _deferred(run())
