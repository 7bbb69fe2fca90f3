# -*- test-case-name: tests.e2e -*-
"""
Helpers shared by the end-to-end tests of every protocol face: a real
C{twistd imgateway} process on a temporary configuration (L{GatewayProcess}),
accounts made with the real C{imgateway-admin}, TLS certificates
(L{makeCertificates}, from L{imgateway.testing}), native-protocol clients
that record what they receive (L{connectClient}, L{Recorder}) and raw
connections for sending anything at all (L{rawConnect}).

Every wait here is a L{Deferred} that lets the reactor run, so the tests
run under L{twisted.trial.unittest.TestCase} with the real reactor, and
every helper that opens something registers its cleanup with the test.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
from collections import deque
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import IO, Any, TypeVar, cast
from typing import Protocol as TypingProtocol

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from imgateway.adapters.native.framing import FrameParser, FramingError, Limits, Request, Response
from imgateway.client.protocol import ClientObserver, NativeClientProtocol, connect
from imgateway.core.address import Address
from imgateway.core.presence import Presence, PresenceState
from imgateway.testing import TEST_HOSTNAME, makeCertificates

__all__ = [
    "DOMAIN",
    "REPO_ROOT",
    "TLS_HOSTNAME",
    "GatewayProcess",
    "RawConnection",
    "ReceivedMessage",
    "Recorder",
    "WaitTimedOut",
    "connectClient",
    "failureOf",
    "freePort",
    "makeCertificates",
    "openConnection",
    "rawConnect",
    "reactor",
    "requirePeer",
    "sleep",
    "tlsClientEndpoint",
    "tlsServerEndpoint",
    "tomlDumps",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: The folder holding the C{imgateway} package (and C{twisted/plugins}).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The domain every test gateway serves.
DOMAIN = "corp.example"

#: The name the test server certificate is issued for (L{makeCertificates}).
TLS_HOSTNAME = TEST_HOSTNAME

#: How long a test gateway may take to start listening, in seconds.
START_TIMEOUT = 20.0

#: How long a test gateway may take to stop after SIGTERM, in seconds.
STOP_TIMEOUT = 10.0

#: How often process and port states are polled, in seconds.
_POLL = 0.05

#: Lines of a gateway log that mean something went wrong unexpectedly.
_PROBLEM_MARKERS = ("Unhandled", "Traceback")


def reactor() -> Any:
    """
    The global reactor, which trial runs during L{TestCase} tests.
    """
    from twisted.internet import reactor as theReactor

    return theReactor


def sleep(seconds: float) -> Deferred[None]:
    """
    @return: Fires after C{seconds}, the reactor running meanwhile.
    """
    return deferLater(reactor(), seconds, lambda: None)


async def failureOf(d: Deferred[Any], kind: type[E]) -> E:
    """
    Wait for C{d}, which must fail with C{kind} (any other failure is
    raised as it is).

    @return: The exception.
    @raise AssertionError: If C{d} succeeds.
    """
    try:
        result = await d
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}, got the result {result!r}")


def _deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


#: Ports L{freePort} handed out lately: the kernel may pick a port again as
#: soon as it is released, and two listeners of one test must not share one.
_recentPorts: deque[int] = deque(maxlen=512)


def _ephemeralStart() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Where L{freePort} picks: below the kernel's ephemeral range, so that an
#: outgoing connection of any process on the machine (which takes its local
#: port from that range) cannot take a port between its pick and the
#: listener's bind.
_PORTS = range(20000, max(20001, min(_ephemeralStart(), 32768)))


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now, below the
    kernel's ephemeral port range (L{_PORTS}), and that this process has not
    been given lately. Nothing stops another process from binding it before
    the caller does, but outgoing connections never take it.
    """
    while True:
        port = random.choice(_PORTS)
        if port in _recentPorts:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _recentPorts.append(port)
        return port


def requirePeer(testCase: TestCase, command: str, package: str | None = None) -> str:
    """
    Find the program of a real third-party peer (a server such as Prosody
    or ngircd) that a test needs.

    A missing peer skips the test, except when the environment variable
    C{CI} is set (to anything but the empty string): then the test fails,
    so that CI cannot pass by skipping what it was meant to run.

    @param command: The program's name, looked up on C{PATH}.
    @param package: The Debian package that provides it, for the message
        (C{command} when C{None}).
    @return: The program's path.
    @raise SkipTest: If it is missing and C{CI} is not set.
    @raise testCase.failureException: If it is missing and C{CI} is set.
    """
    path = shutil.which(command)
    if path is not None:
        return path
    why = f"{command} is not installed (install the Debian package {package or command}; run-tests.sh does as root)"
    if os.environ.get("CI"):
        testCase.fail(f"{why}; CI is set, so a test that needs this peer fails instead of skipping")
    raise SkipTest(why)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether a TCP connection to C{host:port} is accepted now (loopback:
    the answer is immediate).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        return s.connect_ex((host, port)) == 0
    finally:
        s.close()


# -- TOML --------------------------------------------------------------------

def _tomlKey(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _tomlString(key)


def _tomlString(text: str) -> str:
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _tomlValue(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _tomlString(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    if isinstance(value, Mapping):
        # An inline table (in an array of tables: [[irc.network]]).
        return "{" + ", ".join(f"{_tomlKey(k)} = {_tomlValue(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def tomlDumps(tables: Mapping[str, Mapping[str, object]]) -> str:
    """
    Write a TOML document of tables (the standard library reads TOML but
    does not write it).

    @param tables: Table name to its keys; values are strings, integers,
        floats, booleans or lists of those; a mapping value is a sub-table.
    @return: The document.
    """
    lines: list[str] = []

    def table(path: list[str], keys: Mapping[str, object]) -> None:
        lines.append("[" + ".".join(_tomlKey(p) for p in path) + "]")
        subTables = []
        for key, value in keys.items():
            if isinstance(value, Mapping):
                subTables.append((key, value))
            else:
                lines.append(f"{_tomlKey(key)} = {_tomlValue(value)}")
        lines.append("")
        for key, value in subTables:
            table([*path, key], value)

    for name, keys in tables.items():
        table([name], keys)
    return "\n".join(lines)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """
    C{base} updated by C{override}, sub-tables merged key by key.
    """
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(dict(result[key]), value)
        else:
            result[key] = value
    return result


# -- the gateway process -----------------------------------------------------


class GatewayProcess:
    """
    A real C{twistd -n imgateway} process on a configuration and data folder
    of its own, inside a test's temporary folder.

    The configuration serves L{DOMAIN} with the native face on a free
    loopback port (L{port}), and uses the cheapest SCRAM iteration count
    allowed so that tests log in quickly; C{tables} overrides or adds any
    key. The process is stopped (and, unless C{checkLog} is false, its log
    checked for tracebacks) when the test ends.

    @ivar directory: The folder of the configuration, data, log and output.
    @ivar configPath: The configuration file.
    @ivar dataDir: The gateway's C{data_dir}.
    @ivar logPath: Where twistd logs.
    @ivar outputPath: Where the process's standard output and error go
        (start-up errors are reported there).
    @ivar port: The native face's plain TCP port.
    @ivar waitPorts: The ports L{start} waits for.
    @ivar tables: The configuration, as written by L{writeConfig}.
    @ivar checkLog: Whether to fail the test if the log has tracebacks.
    @ivar nativeHandshake: Whether L{start} ends with an exchange on the
        native face's TCP port (turn it off for a gateway without one).
    @ivar process: The running process, or C{None}.
    @ivar cwd: The folder the process runs in (the repository's).
    @ivar lastRunLog: What the last process to exit logged.
    """

    def __init__(
        self,
        testCase: TestCase,
        tables: Mapping[str, Mapping[str, object]] | None = None,
        directory: str | None = None,
        port: int | None = None,
        waitPorts: Sequence[int] | None = None,
        checkLog: bool = True,
        nativeHandshake: bool = True,
    ) -> None:
        """
        Write the configuration; start nothing yet.

        @param testCase: The test; cleanups are registered with it.
        @param tables: Keys to override or add, table by table.
        @param directory: The folder to use (created if needed); a new
            folder from C{testCase.mktemp()} when C{None}.
        @param port: The native TCP port, when the caller chose it.
        @param waitPorts: The ports that show the gateway is up; C{[port]}
            when C{None}.
        @param nativeHandshake: See L{nativeHandshake}.
        """
        self.testCase = testCase
        self.directory = os.path.abspath(directory if directory is not None else testCase.mktemp())
        os.makedirs(self.directory, exist_ok=True)
        self.configPath = os.path.join(self.directory, "imgateway.toml")
        self.dataDir = os.path.join(self.directory, "data")
        self.logPath = os.path.join(self.directory, "gateway.log")
        self.outputPath = os.path.join(self.directory, "gateway.out")
        self.port = port if port is not None else freePort()
        self.waitPorts = list(waitPorts) if waitPorts is not None else [self.port]
        self.checkLog = checkLog
        self.nativeHandshake = nativeHandshake
        self.process: subprocess.Popen[bytes] | None = None
        self.cwd = REPO_ROOT
        self.lastRunLog = ""
        self._output: IO[bytes] | None = None
        self._logStart = 0
        base: dict[str, Any] = {
            "gateway": {"domain": DOMAIN, "data_dir": self.dataDir},
            "auth": {"scram_iterations": 4096},
            "native": {"listen": [f"tcp:{self.port}:interface=127.0.0.1"]},
        }
        self.tables: dict[str, Any] = _merge(base, tables or {})
        self.writeConfig()
        testCase.addCleanup(self._cleanUp)

    @property
    def endpoint(self) -> str:
        """
        The client endpoint string of the native face's TCP port.
        """
        return f"tcp:127.0.0.1:{self.port}"

    def writeConfig(self) -> None:
        """
        (Re)write the configuration file from L{tables}.
        """
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(tomlDumps(self.tables))

    @staticmethod
    def environment() -> dict[str, str]:
        """
        The environment of the processes run here: this one's, with the
        repository first on C{PYTHONPATH} (for C{imgateway} and its twistd
        plugin in C{twisted/plugins}).
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        return env

    # -- imgateway-admin ----------------------------------------------------------

    def admin(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """
        Run C{imgateway-admin --config <this config> ARGS} and wait for it
        (briefly blocking the reactor: it takes a fraction of a second).

        @return: The finished process, whatever its exit status.
        """
        return subprocess.run(
            [sys.executable, "-m", "imgateway.admin.cli", "--config", self.configPath, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.environment(),
            cwd=REPO_ROOT,
            timeout=60,
        )

    def addUser(self, local: str, password: str, name: str = "") -> None:
        """
        Create an account with C{imgateway-admin user add}.

        @raise AssertionError: If the command fails.
        """
        args = ["user", "add", local, "--password-stdin"]
        if name:
            args += ["--name", name]
        done = self.admin(*args, input=password + "\n")
        if done.returncode != 0:
            raise AssertionError(
                f"imgateway-admin user add {local} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )

    def addUsers(self, passwords: Mapping[str, str]) -> None:
        """
        Create several accounts, running C{imgateway-admin} for each at
        once.

        @param passwords: Local part to password.
        @raise AssertionError: If a command fails.
        """
        running = []
        for local, password in passwords.items():
            p = subprocess.Popen(
                [sys.executable, "-m", "imgateway.admin.cli", "--config", self.configPath,
                 "user", "add", local, "--password-stdin"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=REPO_ROOT,
            )
            running.append((local, p, password))
        failures = []
        for local, p, password in running:
            out, _ = p.communicate((password + "\n").encode("utf-8"), timeout=60)
            if p.returncode != 0:
                failures.append(f"imgateway-admin user add {local} exited {p.returncode}:\n{out.decode()}")
        if failures:
            raise AssertionError("\n".join(failures))

    # -- the process ----------------------------------------------------------------

    def command(self) -> list[str]:
        """
        The command line that runs this gateway in the foreground.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [
            twistd, "-n", "--pidfile=", f"--logfile={self.logPath}",
            "imgateway", "--config", self.configPath,
        ]

    def _spawn(self, command: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
        if self.process is not None:
            raise AssertionError("the gateway is already running")
        self._output = open(self.outputPath, "ab")
        self._logStart = len(self.log())
        self.process = subprocess.Popen(
            list(command) if command is not None else self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.cwd,
            preexec_fn=defaultInterruptSignals,
        )
        return self.process

    def _reaped(self) -> int:
        """
        Forget the exited process.

        @return: Its exit status.
        """
        assert self.process is not None
        code = self.process.wait()
        self.process = None
        self.lastRunLog = self.log()[self._logStart :]
        if self._output is not None:
            self._output.close()
            self._output = None
        return code

    def _describe(self, what: str) -> str:
        return f"{what}\n--- output ---\n{self.output()}--- log ---\n{self.log()}"

    def start(self) -> Deferred[None]:
        """
        Start the gateway and wait until each of L{waitPorts} accepts TCP
        connections, then (if L{nativeHandshake}) until the native face
        answers C{OPTIONS} and closes after C{BYE}: the process is then
        serving, not merely listening (the kernel accepts connections before
        the reactor runs), and has seen the end of the probe connections
        (which count as connections waiting to log in until it has).

        @return: Fires once it is up; fails (with the output and log) if the
            process exits first or is not up within L{START_TIMEOUT}.
        """

        async def run() -> None:
            process = self._spawn()
            deadline = time.monotonic() + START_TIMEOUT
            waiting = list(self.waitPorts)
            while True:
                code = process.poll()
                if code is not None:
                    self._reaped()
                    raise AssertionError(self._describe(f"the gateway exited with status {code} while starting"))
                waiting = [p for p in waiting if not _accepts(p)]
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(
                        self._describe(f"the gateway did not listen on {waiting} within {START_TIMEOUT} s")
                    )
                await sleep(_POLL)
            if self.nativeHandshake and not await _nativeHandshake(self.port, max(1.0, deadline - time.monotonic())):
                await self.stop()
                raise AssertionError(self._describe(f"the native face on port {self.port} did not answer OPTIONS"))

        return _deferred(run())

    def runUntilExit(self, command: Sequence[str] | None = None, timeout: float = START_TIMEOUT) -> Deferred[tuple[int, bool]]:
        """
        Run the gateway (or C{command}) expecting it to exit on its own, as
        it does when it cannot start, watching L{waitPorts} meanwhile.

        @return: Fires with the exit status and whether any of
            L{waitPorts} ever accepted a connection; fails if the process
            still runs after C{timeout} seconds (it is then killed).
        """

        async def run() -> tuple[int, bool]:
            process = self._spawn(command)
            deadline = time.monotonic() + timeout
            opened = False
            while process.poll() is None:
                opened = opened or any(_accepts(p) for p in self.waitPorts)
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(self._describe(f"the gateway still runs after {timeout} s"))
                await sleep(_POLL / 2)
            opened = opened or any(_accepts(p) for p in self.waitPorts)
            return self._reaped(), opened

        return _deferred(run())

    @property
    def running(self) -> bool:
        """
        Whether the process has been started and has not been seen to exit.
        """
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """
        Send the gateway C{sig} and wait for it to exit; kill it if it has
        not within L{STOP_TIMEOUT}.

        @return: Fires with its exit status (negative: the signal that
            ended it).
        """

        return stopProcess(self, "the gateway", sig)

    def assertCleanExit(self, code: int, sig: int = signal.SIGTERM) -> None:
        """
        Check that a run stopped by C{sig} shut down cleanly: twistd stops
        the services, logs C{Server Shut Down.}, then ends itself with the
        same signal (exit status C{-sig}) so that its parent sees why it
        ended; status 0 is accepted too.

        @param code: The exit status L{stop} (or L{restart}) returned.
        @raise AssertionError: If it did not.
        """
        lines = self.lastRunLog.rstrip().splitlines()
        if code not in (0, -sig) or not lines or "Server Shut Down." not in lines[-1]:
            raise AssertionError(self._describe(f"the gateway did not shut down cleanly (exit status {code})"))

    def restart(self) -> Deferred[int]:
        """
        Stop the gateway (SIGTERM) and start it again.

        @return: Fires with the exit status of the stopped process, once the
            new one is up.
        """

        async def run() -> int:
            code = await self.stop()
            await self.start()
            return code

        return _deferred(run())

    def log(self) -> str:
        """
        @return: The gateway's log so far (of every run), the files
            twistd's log rotated away (C{gateway.log.N}, past 1,000,000
            bytes: the oldest has the highest N) included, so that an
            offset into it (L{lastRunLog}) stays right across a rotation.
        """
        return readRotatedLog(self.logPath)

    def output(self) -> str:
        """
        @return: What the gateway processes wrote to standard output and
            error.
        """
        return _readText(self.outputPath)

    def problems(self) -> list[str]:
        """
        @return: The log lines that show an unexpected error (an
            C{Unhandled} error or a traceback).
        """
        return [line for line in self.log().splitlines() if any(m in line for m in _PROBLEM_MARKERS)]

    async def _cleanUpNow(self) -> None:
        if self.process is not None:
            await self.stop()
        if self.checkLog:
            problems = self.problems()
            if problems:
                raise AssertionError(self._describe("the gateway logged unexpected errors:\n" + "\n".join(problems)))

    def _cleanUp(self) -> Deferred[None]:
        return _deferred(self._cleanUpNow())

    # -- clients ------------------------------------------------------------------

    def client(
        self,
        user: str,
        password: str,
        label: str = "",
        presence: PresenceState | str | None = PresenceState.ONLINE,
        note: str = "",
        recorder: Recorder | None = None,
    ) -> Deferred[tuple[NativeClientProtocol, Recorder]]:
        """
        L{connectClient} to this gateway's TCP port.
        """
        return connectClient(self.testCase, self.endpoint, user, password, label, presence, note, recorder)

    def connection(self, recorder: Recorder | None = None) -> Deferred[NativeClientProtocol]:
        """
        L{openConnection} to this gateway's TCP port.
        """
        return openConnection(self.testCase, self.endpoint, recorder)

    def raw(self) -> Deferred[RawConnection]:
        """
        L{rawConnect} to this gateway's TCP port.
        """
        return rawConnect(self.testCase, self.endpoint)


async def _nativeHandshake(port: int, timeout: float) -> bool:
    """
    Send C{OPTIONS} and C{BYE} to the native face on C{port}.

    @return: Whether C{OPTIONS} was answered C{200} and the connection then
        closed, within C{timeout} seconds.
    """
    connecting: Deferred[Any] = _endpoint(f"tcp:127.0.0.1:{port}").connect(Factory.forProtocol(RawConnection))
    conn: RawConnection = await connecting
    conn.send(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\nBYE * IMGW/1.0\r\nSeq: 2\r\n\r\n")
    try:
        await conn.waitForClose(timeout)
    except WaitTimedOut:
        await conn.close()
        return False
    return [r.code for r in conn.responses() if r.seq == 1] == [200]


class _Stoppable(TypingProtocol):
    process: subprocess.Popen[bytes] | None

    def _reaped(self) -> int: ...

    def _describe(self, what: str) -> str: ...


def defaultInterruptSignals() -> None:
    """
    In a child before it runs its program: SIGINT and SIGQUIT as a terminal
    gives them (their default actions), whatever this process was started
    with.

    A shell without job control starts its background commands with both
    ignored (POSIX, "Asynchronous Lists"), and an ignored signal stays
    ignored across C{exec}: a test suite started so (C{(cmd &)} in a
    script) would start gateways that no SIGINT can stop, since twistd, as
    Python, leaves an ignored SIGINT ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def stopProcess(owner: _Stoppable, name: str, sig: int = signal.SIGTERM) -> Deferred[int]:
    """
    Send C{owner.process} a signal and wait (without blocking the reactor)
    until it exits; kill it after L{STOP_TIMEOUT} seconds.

    @param name: Names the process in errors (C{"the gateway"}).
    @return: Fires with its exit status (C{owner._reaped()}).
    """

    async def run() -> int:
        process = owner.process
        if process is None:
            raise AssertionError(f"{name} is not running")
        if process.poll() is None:
            process.send_signal(sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                owner._reaped()
                raise AssertionError(owner._describe(f"{name} did not stop within {STOP_TIMEOUT} s"))
            await sleep(_POLL)
        return owner._reaped()

    return _deferred(run())


def readRotatedLog(path: str) -> str:
    """
    The text a L{twisted.python.logfile.LogFile} at C{path} has written,
    oldest first: its rotated files (C{path.N}, renamed up by one at each
    rotation) from the highest N, then C{path}.
    """
    folder, name = os.path.split(path)
    rotated = []
    for entry in os.listdir(folder or "."):
        suffix = entry[len(name) + 1 :]
        if entry.startswith(name + ".") and suffix.isdigit():
            rotated.append(int(suffix))
    return "".join(_readText(f"{path}.{n}") for n in sorted(rotated, reverse=True)) + _readText(path)


def _readText(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# -- waiting for things to arrive ----------------------------------------------------


class WaitTimedOut(AssertionError):
    """
    What a test waited for did not happen in time.
    """


class _Waiters:
    """
    Deferreds that fire when a condition over recorded state holds; the
    condition is checked whenever something is recorded.
    """

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], Any], Deferred[Any], IDelayedCall]] = []

    def waitFor(self, predicate: Callable[[], T | None], timeout: float = 5.0, description: str = "") -> Deferred[T]:
        """
        Wait until C{predicate()} returns something true.

        @param predicate: Called now and after each recorded event; what
            it returns must not be a L{Failure}.
        @param description: What is awaited, for the failure message.
        @return: Fires with what C{predicate} returned; fails with
            L{WaitTimedOut} after C{timeout} seconds.
        """
        value = predicate()
        if value:
            return succeed(value)
        d: Deferred[T] = Deferred()

        def timedOut() -> None:
            for i, (_, waiter, _timer) in enumerate(self._waiters):
                if waiter is d:
                    del self._waiters[i]
                    break
            d.errback(
                WaitTimedOut(
                    f"timed out after {timeout} s waiting for {description or predicate!r}; "
                    f"recorded: {self.summary()}"
                )
            )

        timer = reactor().callLater(timeout, timedOut)
        self._waiters.append((predicate, d, timer))
        return d

    def summary(self) -> str:
        """
        @return: What has been recorded, for failure messages.
        """
        return ""

    def _changed(self) -> None:
        for entry in list(self._waiters):
            predicate, d, timer = entry
            if entry not in self._waiters:
                continue
            value = predicate()
            if value:
                self._waiters.remove(entry)
                timer.cancel()
                d.callback(value)

    def cancelWaits(self) -> None:
        """
        Give up every wait still pending (at the end of a test).
        """
        waiters, self._waiters = self._waiters, []
        for _, d, timer in waiters:
            timer.cancel()
            d.errback(WaitTimedOut("the test ended first"))
            d.addErrback(lambda f: None)


# -- native clients ---------------------------------------------------------------------


@frozen
class ReceivedMessage:
    """
    A message a L{Recorder} received.
    """

    sender: Address
    body: str
    messageId: str
    contentType: str
    timestamp: float


class Recorder(_Waiters, ClientObserver):
    """
    A L{ClientObserver} that records everything the server sends, in order,
    and lets a test wait for what it expects (L{waitFor} and friends).

    @ivar messages: L{ReceivedMessage}s.
    @ivar presences: C{(address, presence)} pairs.
    @ivar subscriptions: C{(address, kind)} pairs.
    @ivar contacts: Contact entries, as the server sent them.
    @ivar removed: Addresses of contacts removed.
    @ivar disconnects: The reasons the connection ended with (at most
        one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[ReceivedMessage] = []
        self.presences: list[tuple[Address, Presence]] = []
        self.subscriptions: list[tuple[Address, str]] = []
        self.contacts: list[dict[str, Any]] = []
        self.removed: list[Address] = []
        self.disconnects: list[str] = []

    def summary(self) -> str:
        return (
            f"messages={[(str(m.sender), m.body[:40]) for m in self.messages]}, "
            f"presences={[(str(a), str(p.state.value), p.note) for a, p in self.presences]}, "
            f"subscriptions={[(str(a), k) for a, k in self.subscriptions]}, "
            f"disconnects={self.disconnects}"
        )

    # ClientObserver

    def messageReceived(self, sender: Address, body: str, messageId: str, contentType: str, timestamp: float) -> None:
        self.messages.append(ReceivedMessage(sender, body, messageId, contentType, timestamp))
        self._changed()

    def presenceReceived(self, address: Address, presence: Presence) -> None:
        self.presences.append((address, presence))
        self._changed()

    def subscriptionReceived(self, address: Address, kind: str) -> None:
        self.subscriptions.append((address, kind))
        self._changed()

    def contactUpdated(self, contact: dict[str, Any]) -> None:
        self.contacts.append(contact)
        self._changed()

    def contactRemoved(self, address: Address) -> None:
        self.removed.append(address)
        self._changed()

    def disconnected(self, reason: str) -> None:
        self.disconnects.append(reason)
        self._changed()

    # queries

    def presenceOf(self, address: Address | str) -> Presence | None:
        """
        @return: The latest presence received for C{address}, if any.
        """
        wanted = _address(address)
        for a, p in reversed(self.presences):
            if a == wanted:
                return p
        return None

    def messagesFrom(self, sender: Address | str) -> list[ReceivedMessage]:
        """
        @return: The messages received from C{sender}, in order.
        """
        wanted = _address(sender)
        return [m for m in self.messages if m.sender == wanted]

    def waitForPresence(
        self, address: Address | str, state: PresenceState | str, note: str | None = None, timeout: float = 5.0
    ) -> Deferred[Presence]:
        """
        Wait until the latest presence received for C{address} is C{state}
        (with C{note}, unless C{None}).
        """
        wanted = PresenceState(state)

        def matches() -> Presence | None:
            p = self.presenceOf(address)
            if p is not None and p.state is wanted and (note is None or p.note == note):
                return p
            return None

        return self.waitFor(matches, timeout, f"presence {wanted.value} {note or ''} of {address}")

    def waitForMessage(self, sender: Address | str, body: str, timeout: float = 5.0) -> Deferred[ReceivedMessage]:
        """
        Wait for a message from C{sender} with C{body}.
        """
        wanted = _address(sender)

        def matches() -> ReceivedMessage | None:
            for m in self.messages:
                if m.sender == wanted and m.body == body:
                    return m
            return None

        return self.waitFor(matches, timeout, f"message {body[:40]!r} from {sender}")

    def waitForMessages(self, sender: Address | str, count: int, timeout: float = 5.0) -> Deferred[list[ReceivedMessage]]:
        """
        Wait until C{count} messages from C{sender} have arrived.
        """
        return self.waitFor(
            lambda: (lambda ms: ms if len(ms) >= count else None)(self.messagesFrom(sender)),
            timeout,
            f"{count} messages from {sender}",
        )

    def waitForSubscription(self, address: Address | str, kind: str, timeout: float = 5.0) -> Deferred[tuple[Address, str]]:
        """
        Wait for a subscription event of C{kind} from C{address}.
        """
        wanted = (_address(address), kind)
        return self.waitFor(
            lambda: wanted if wanted in self.subscriptions else None, timeout, f"subscription {kind} from {address}"
        )


def _address(address: Address | str) -> Address:
    return address if isinstance(address, Address) else Address.fromString(address)


class _ClientFactory(Factory):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def buildProtocol(self, addr: Any) -> NativeClientProtocol:
        p = NativeClientProtocol(self.recorder, reactor())
        p.factory = self
        return p


def _closeClient(proto: NativeClientProtocol, recorder: Recorder) -> Deferred[None]:
    """
    Say BYE (or drop the connection if the server does not answer) and wait
    until the connection is gone.
    """

    async def run() -> None:
        recorder.cancelWaits()
        if proto.transport is None:
            return
        closed = proto.whenClosed()
        if not closed.called:
            proto.bye()
            timer = reactor().callLater(5.0, cast(ITCPTransport, proto.transport).abortConnection)
            await closed
            if timer.active():
                timer.cancel()

    return _deferred(run())


def _endpoint(endpoint: str | IStreamClientEndpoint) -> IStreamClientEndpoint:
    return clientFromString(reactor(), endpoint) if isinstance(endpoint, str) else endpoint


def openConnection(
    testCase: TestCase, endpoint: str | IStreamClientEndpoint, recorder: Recorder | None = None
) -> Deferred[NativeClientProtocol]:
    """
    Connect a native client without logging in; it is closed when the test
    ends. Its observer (a L{Recorder}) is C{proto.observer}.
    """
    recorder = recorder if recorder is not None else Recorder()

    def connected(proto: NativeClientProtocol) -> NativeClientProtocol:
        testCase.addCleanup(_closeClient, proto, recorder)
        return proto

    d: Deferred[Any] = _endpoint(endpoint).connect(_ClientFactory(recorder))
    return d.addCallback(connected)


def connectClient(
    testCase: TestCase,
    endpoint: str | IStreamClientEndpoint,
    user: str,
    password: str,
    label: str = "",
    presence: PresenceState | str | None = PresenceState.ONLINE,
    note: str = "",
    recorder: Recorder | None = None,
) -> Deferred[tuple[NativeClientProtocol, Recorder]]:
    """
    Connect, log in and publish C{presence} with the shipped client
    (L{imgateway.client.protocol.connect}; given as a string, C{endpoint}
    is redirected as the shipped client is); the connection is closed when
    the test ends.

    @return: Fires with the logged-in protocol and its L{Recorder}.
    """
    rec = recorder if recorder is not None else Recorder()

    def connected(proto: NativeClientProtocol) -> tuple[NativeClientProtocol, Recorder]:
        testCase.addCleanup(_closeClient, proto, rec)
        return proto, rec

    # A string goes to connect() as it is, so that the client follows a
    # router's redirect (with the same TLS choice), as the shipped client does.
    d = connect(reactor(), endpoint, user, password, rec, label, presence, note)
    return d.addCallback(connected)


# -- raw connections --------------------------------------------------------------------


class RawConnection(_Waiters, Protocol):
    """
    A connection that sends whatever it is told to and records what comes
    back: the raw bytes, and the frames they parse into.

    @ivar received: Every byte received.
    @ivar frames: The frames (and L{FramingError}s) parsed from them.
    @ivar lost: Why the connection ended, once it has.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received = b""
        self.frames: list[Request | Response | FramingError] = []
        self.lost: Failure | None = None
        self._parser = FrameParser(Limits(maxStartLineBytes=65536, maxHeaderBytes=65536, maxHeaders=1024, maxBodyBytes=2**24))
        self._lost: Deferred[None] = Deferred()

    def summary(self) -> str:
        return f"responses={self.codes()}, closed={self.lost is not None}, received={self.received[:300]!r}"

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.frames.extend(self._parser.feed(data))
        self._changed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = reason
        self._lost.callback(None)
        self._changed()

    def send(self, data: bytes) -> None:
        """
        Send raw bytes.
        """
        assert self.transport is not None
        self.transport.write(data)

    def responses(self) -> list[Response]:
        """
        @return: The responses received.
        """
        return [f for f in self.frames if isinstance(f, Response)]

    def codes(self) -> list[int]:
        """
        @return: The status codes of the responses received.
        """
        return [r.code for r in self.responses()]

    def whenLost(self) -> Deferred[None]:
        """
        @return: Fires once the connection has ended (L{lost} says why).
        """
        if self.lost is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lost.addCallback(lambda _: d.callback(None))
        return d

    def waitForClose(self, timeout: float = 5.0) -> Deferred[None]:
        """
        Wait until the server closes the connection (L{lost} then says
        why).

        @return: Fails with L{WaitTimedOut} if it is still open after
            C{timeout} seconds.
        """
        return self.waitFor(lambda: self.lost is not None, timeout, "the connection to close").addCallback(
            lambda _: None
        )

    def close(self) -> Deferred[None]:
        """
        Drop the connection and wait until it is gone.
        """
        self.cancelWaits()
        if self.lost is None and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()
        return self.whenLost()


def rawConnect(testCase: TestCase, endpoint: str | IStreamClientEndpoint) -> Deferred[RawConnection]:
    """
    Open a L{RawConnection}; it is dropped when the test ends.
    """

    def connected(proto: RawConnection) -> RawConnection:
        testCase.addCleanup(proto.close)
        return proto

    d: Deferred[Any] = _endpoint(endpoint).connect(Factory.forProtocol(RawConnection))
    return d.addCallback(connected)


# -- TLS --------------------------------------------------------------------------------


def tlsServerEndpoint(pemDirectory: str, port: int) -> str:
    """
    The server endpoint string of a TLS listener on C{127.0.0.1:port} with
    the key and certificate in C{pemDirectory}.
    """
    return f"tls:{quoteStringArgument(pemDirectory)}:port={port}:interface=127.0.0.1"


def tlsClientEndpoint(port: int, caPath: str, hostname: str = TLS_HOSTNAME) -> str:
    """
    The client endpoint string of a TLS connection to C{127.0.0.1:port}
    that verifies the server's certificate for C{hostname} against the CA
    certificate at C{caPath} (and only it), resolving no name.
    """
    return (
        f"tls:{hostname}:{port}"
        f":trustRoots={quoteStringArgument(os.path.dirname(caPath))}"
        f":endpoint={quoteStringArgument(f'tcp:127.0.0.1:{port}')}"
    )

