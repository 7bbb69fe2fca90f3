"""
Helpers for the benchmarks: a throw-away gateway, and bulk account creation.

L{SpawnedGateway} writes a benchmark configuration (a copy of
C{etc/imgateway.toml} with its data in a temporary folder, the native face on
a free loopback port and the flood limits raised; with C{xmpp=True} also the
XMPP c2s face, without TLS, on a second free port; with C{tls=True} test
certificates, a native C{tls:} listener and STARTTLS on XMPP; with
C{shippedLimits=True} every limit as the template has it), creates the
accounts, runs C{twistd -n imgateway} and stops it again, also on errors and
Control-C.

L{linkedHomeServers} makes several such gateways, home servers of one
domain (C{[servers.NAME]}) sharing one data folder (the single-host lab),
joined by server links over TLS with certificates from a test authority.

Run as a module, it creates accounts in one process (one password hash
shared by all of them: much faster than one C{imgateway-admin user add} per
account, which derives the verifiers each time)::

    python -m bench._gateway create-users --config CFG --prefix bench \\
        --count 100 --password-stdin <<< pw

Existing accounts are left alone (their password is not changed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from twisted.internet.endpoints import quoteStringArgument

__all__ = [
    "GatewayError",
    "IRC_BENCH_SETTINGS",
    "LAB_MAX_QUEUE",
    "REPO",
    "SpawnedGateway",
    "XMPP_BENCH_SETTINGS",
    "benchConfig",
    "createUsers",
    "freePort",
    "linkedHomeServers",
    "makeTestCertificates",
]

#: The root of the repository (where C{imgateway/} and C{etc/} are).
REPO = Path(__file__).resolve().parent.parent


class GatewayError(Exception):
    """
    The gateway could not be prepared, started or reached; the message says
    why (with the tail of its log when it ran).
    """


def freePort(host: str = "127.0.0.1") -> int:
    """
    @return: A TCP port that was free on C{host} a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _setKey(text: str, table: str, key: str, value: str) -> str:
    """
    Set C{key = value} (C{value} already in TOML syntax) in C{[table]} of a
    TOML text, replacing the key's line if the table has one, else adding
    it right after the table's header.

    @raise GatewayError: If there is no such table.
    """
    header = re.search(rf"^\[{re.escape(table)}\][ \t]*$", text, re.M)
    if header is None:
        raise GatewayError(f"no [{table}] table in the configuration template")
    start = header.end()
    following = re.search(r"^\[", text[start:], re.M)
    end = start + following.start() if following else len(text)
    section = text[start:end]
    line = re.compile(rf"^{re.escape(key)}[ \t]*=.*$", re.M)
    if line.search(section):
        section = line.sub(lambda _: f"{key} = {value}", section, count=1)
    else:
        section = f"\n{key} = {value}" + section
    return text[:start] + section + text[end:]


def _tomlString(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def makeTestCertificates(folder: Path, domain: str) -> tuple[Path, Path]:
    """
    Make a test certificate authority and a certificate for C{domain}
    issued by it, as the tests do (L{imgateway.testing.makeCertificates}).

    @return: The authority's certificate (for clients to trust) and the
        folder holding C{<domain>.pem}, the server's key and certificate.
    """
    from imgateway.testing import makeCertificates

    caPath, serverDir = makeCertificates(str(folder), domain)
    return Path(caPath), Path(serverDir)


#: What L{benchConfig} sets in C{[xmpp]} besides C{enabled} and C{listen}
#: (TOML values), for benchmarks to report. No TLS: load drivers log in with
#: SASL PLAIN on loopback, which the c2s face allows without TLS there.
XMPP_BENCH_SETTINGS: dict[str, str] = {
    "require_tls": "false",
    "stanzas_per_second": "1000000",
    "stanza_burst": "1000000",
    "max_unauthenticated": "100000",
    "login_timeout": "600",
}


#: What L{benchConfig} sets in C{[irc]} besides C{enabled} and C{listen}
#: (TOML values): the face's fakelag and per-address limits out of reach
#: (every benchmark client is on 127.0.0.1; PASS is accepted from
#: loopback without TLS).
IRC_BENCH_SETTINGS: dict[str, str] = {
    "commands_per_second": "1000000",
    "command_burst": "1000000",
    "max_connections_per_address": "100000",
    "max_unauthenticated": "100000",
    "registration_timeout": "600",
}


def benchConfig(
    template: str,
    dataDir: Path,
    port: int,
    scramIterations: int = 4096,
    xmppPort: int | None = None,
    *,
    shippedLimits: bool = False,
    tlsPort: int | None = None,
    certificates: Path | None = None,
    ircPort: int | None = None,
    ircNetworks: str = "",
) -> str:
    """
    The configuration of a benchmark gateway, from the text of
    C{etc/imgateway.toml}: its data in C{dataDir}, the native face on
    C{127.0.0.1:port}, cheap password verifiers, and flood limits that no
    benchmark reaches (a benchmark measures routing, not the rate limiter),
    per-source connection limits included (every client is on 127.0.0.1).

    @param xmppPort: If given, the XMPP c2s face listens on
        C{127.0.0.1:xmppPort} with L{XMPP_BENCH_SETTINGS}; else C{[xmpp]} is
        left as the template has it.
    @param shippedLimits: Keep every limit, timeout and the SCRAM iteration
        count as the template has them (the hostile benchmark: attackers
        connect from other loopback addresses than the clients it measures);
        only the listeners and the data folder change, and the XMPP face
        gets no L{XMPP_BENCH_SETTINGS}.
    @param tlsPort: If given (with C{certificates}), the native face also
        listens with TLS on C{127.0.0.1:tlsPort}.
    @param ircPort: If given, the IRC face listens on C{127.0.0.1:ircPort}
        with L{IRC_BENCH_SETTINGS}.
    @param ircNetworks: C{[[irc.network]]} tables (TOML) to append: the
        IRC adapter runs (without a listener unless C{ircPort} is given)
        and bridges to them.
    @param certificates: A folder of PEM files (a key and its certificate
        for the domain, as L{makeTestCertificates} makes): the native
        C{tls:} listener's, and the XMPP face's C{certificate} and
        C{private_key} (so that its STARTTLS works, required unless
        L{XMPP_BENCH_SETTINGS} apply).
    """
    text = template
    # A listen queue longer than the default 50, so that bursts of
    # connections are accepted at once rather than held by the kernel.
    backlog = ":backlog=1024" if shippedLimits else ""
    listen = [f"tcp:{port}:interface=127.0.0.1{backlog}"]
    if tlsPort is not None and certificates is not None:
        listen.append(f"tls:{quoteStringArgument(str(certificates))}:port={tlsPort}:interface=127.0.0.1{backlog}")
    text = _setKey(text, "gateway", "data_dir", _tomlString(str(dataDir)))
    text = _setKey(text, "native", "enabled", "true")
    text = _setKey(text, "native", "listen", "[" + ", ".join(_tomlString(e) for e in listen) + "]")
    if xmppPort is not None:
        text = _setKey(text, "xmpp", "enabled", "true")
        text = _setKey(text, "xmpp", "listen", f'["tcp:{xmppPort}:interface=127.0.0.1{backlog}"]')
        if certificates is not None:
            pems = sorted(certificates.glob("*.pem"))
            if not pems:
                raise GatewayError(f"no *.pem file in {certificates}")
            text = _setKey(text, "xmpp", "certificate", _tomlString(str(pems[0])))
            text = _setKey(text, "xmpp", "private_key", _tomlString(str(pems[0])))
    if ircPort is not None or ircNetworks:
        text = _setKey(text, "irc", "enabled", "true")
        irc = f'"tcp:{ircPort}:interface=127.0.0.1{backlog}"' if ircPort is not None else ""
        text = _setKey(text, "irc", "listen", f"[{irc}]")
    if ircNetworks:
        text = text.rstrip("\n") + "\n\n" + ircNetworks
    if shippedLimits:
        return text
    text = _setKey(text, "auth", "scram_iterations", str(scramIterations))
    text = _setKey(text, "native", "requests_per_second", "1000000")
    text = _setKey(text, "native", "request_burst", "1000000")
    text = _setKey(text, "native", "max_unauthenticated", "100000")
    text = _setKey(text, "native", "login_timeout", "600")
    text = _setKey(text, "native", "idle_timeout", "3600")
    if re.search(r"^\[limits\]", text, re.M):
        # Every benchmark client connects from 127.0.0.1: one source.
        for key in ("max_unauthenticated_per_address", "connections_per_second_per_address", "connection_burst_per_address"):
            text = _setKey(text, "limits", key, "1000000")
    if xmppPort is not None:
        for key, value in XMPP_BENCH_SETTINGS.items():
            text = _setKey(text, "xmpp", key, value)
    if ircPort is not None:
        for key, value in IRC_BENCH_SETTINGS.items():
            text = _setKey(text, "irc", key, value)
    return text


def _domainOf(config: str) -> str | None:
    """
    @return: C{[gateway] domain} of a configuration text, if it names one.
    """
    try:
        domain = tomllib.loads(config).get("gateway", {}).get("domain")
    except (tomllib.TOMLDecodeError, AttributeError):
        return None
    return domain if isinstance(domain, str) else None


def _venvBin(name: str) -> str:
    """
    A script of the virtualenv the benchmark runs in (else the repository's
    C{.venv}), else whatever C{PATH} finds.
    """
    for folder in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise GatewayError(f"cannot find {name} (run the benchmark with the project's .venv/bin/python)")
    return found


def _env(tree: Path = REPO) -> dict[str, str]:
    """
    @param tree: The source tree the child imports imgateway from.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def createUsers(config: str | Path, prefix: str, first: int, count: int, password: str, timeout: float = 600.0) -> str:
    """
    Create the accounts C{<prefix><first>} .. C{<prefix><first + count - 1>}
    in the directory of the gateway configured by C{config}, in a child
    process (Twisted's reactor must not run in the benchmark's processes).

    @return: What the child printed (how many were created).
    @raise GatewayError: If it failed.
    """
    if count <= 0:
        return "no accounts to create"
    cmd = [
        sys.executable,
        "-m",
        "bench._gateway",
        "create-users",
        "--config",
        str(config),
        "--prefix",
        prefix,
        "--first",
        str(first),
        "--count",
        str(count),
        "--password-stdin",
    ]
    try:
        done = subprocess.run(
            cmd,
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(REPO),
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        raise GatewayError(f"creating {count} accounts took more than {timeout:g} s") from None
    if done.returncode != 0:
        raise GatewayError(f"creating accounts failed (status {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout.strip()


class SpawnedGateway:
    """
    A gateway of our own, in a temporary folder, run by C{twistd -n}.

    Use it as a context manager, or call L{start} and (always) L{stop}.

    @ivar folder: The temporary folder (config, data, log).
    @ivar config: The configuration file.
    @ivar port: The native face's port on 127.0.0.1.
    @ivar xmppPort: The XMPP c2s face's port on 127.0.0.1, or C{None} when
        the gateway was made without C{xmpp=True}.
    @ivar tlsPort: The native face's TLS port on 127.0.0.1, or C{None}
        when the gateway was made without C{tls=True}.
    @ivar ircPort: The IRC face's port on 127.0.0.1, or C{None} when the
        gateway was made without C{irc=True}.
    @ivar caPath: With C{tls=True}, the test authority's certificate that
        the gateway's certificate is signed by, for clients to trust.
    @ivar domain: The domain the gateway serves (from the template).
    @ivar log: The gateway's log file.
    @ivar process: The C{twistd} process once started.
    """

    def __init__(
        self,
        template: Path | None = None,
        keep: bool = False,
        startTimeout: float = 60.0,
        xmpp: bool = False,
        tls: bool = False,
        shippedLimits: bool = False,
        *,
        dataDir: Path | None = None,
        twistdOptions: Sequence[str] = (),
        runUnder: Sequence[str] = (),
        irc: bool = False,
        ircNetworks: str = "",
        tree: Path | None = None,
    ) -> None:
        """
        @param template: The configuration to copy (C{etc/imgateway.toml}).
        @param keep: Keep the temporary folder when stopping (to read the log).
        @param startTimeout: Seconds to wait for the port to open.
        @param xmpp: Also run the XMPP c2s face (see L{benchConfig}).
        @param tls: Make test certificates for the domain
            (L{makeTestCertificates}): the native face also listens with
            TLS (L{tlsPort}), and the XMPP face can STARTTLS.
        @param shippedLimits: Keep the template's limits (see L{benchConfig}).
        @param dataDir: The data folder (shared with other gateways of a
            lab); by default C{data} in the temporary folder. It is not
            removed by L{stop}.
        @param twistdOptions: More options of C{twistd} (before the
            C{imgateway} subcommand), e.g. C{--profiler=cprofile}.
        @param runUnder: A command that runs the gateway's Python (this
            virtualenv's, with C{twistd} and its arguments after it), e.g.
            C{valgrind --tool=callgrind}; none by default.
        @param irc: Also run the IRC face (see L{benchConfig}), on
            L{ircPort}.
        @param ircNetworks: C{[[irc.network]]} tables for the IRC bridge
            (see L{benchConfig}).
        @param tree: The source tree C{twistd} runs the gateway from (its
            folder and the first entry of C{PYTHONPATH}): by default this
            one; C{bench/compare.py --compiled} gives a tree built with
            C{IMGATEWAY_COMPILE=1}.
        """
        self.tree = tree if tree is not None else REPO
        self.template = template if template is not None else REPO / "etc" / "imgateway.toml"
        self.keep = keep
        self.startTimeout = startTimeout
        self.folder = Path(tempfile.mkdtemp(prefix="imgw-bench-"))
        self.config = self.folder / "imgateway.toml"
        self.log = self.folder / "gw.log"
        taken: set[int | None] = {None}
        self.port = freePort()
        taken.add(self.port)
        self.xmppPort: int | None = None
        self.tlsPort: int | None = None
        self.ircPort: int | None = None
        self.caPath: Path | None = None
        if irc:
            while self.ircPort in taken:
                self.ircPort = freePort()
            taken.add(self.ircPort)
        if xmpp:
            while self.xmppPort in taken:
                self.xmppPort = freePort()
            taken.add(self.xmppPort)
        if tls:
            while self.tlsPort in taken:
                self.tlsPort = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.twistdOptions = list(twistdOptions)
        self.runUnder = list(runUnder)
        self._stderr = self.folder / "twistd.stderr"
        try:
            templateText = self.template.read_text(encoding="utf-8")
            self.domain = _domainOf(templateText)
            if (xmpp or tls) and self.domain is None:
                raise GatewayError("the configuration template names no [gateway] domain (needed for XMPP and TLS)")
            certificates: Path | None = None
            if tls:
                assert self.domain is not None
                self.caPath, certificates = makeTestCertificates(self.folder / "certs", self.domain)
            text = benchConfig(
                templateText,
                dataDir if dataDir is not None else self.folder / "data",
                self.port,
                xmppPort=self.xmppPort,
                shippedLimits=shippedLimits,
                tlsPort=self.tlsPort,
                certificates=certificates,
                ircPort=self.ircPort,
                ircNetworks=ircNetworks,
            )
            self.config.write_text(text, encoding="utf-8")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    @property
    def pid(self) -> int | None:
        """
        The gateway's process id (C{twistd -n} does not fork), once started.
        """
        return self.process.pid if self.process is not None else None

    def createUsers(self, prefix: str, first: int, count: int, password: str) -> str:
        """
        See L{createUsers}.
        """
        return createUsers(self.config, prefix, first, count, password)

    def start(self) -> None:
        """
        Start the gateway and wait until its port accepts connections.

        @raise GatewayError: If it exits or does not open its port in time
            (with the tail of its log).
        """
        cmd = [
            *([*self.runUnder, _venvBin("python")] if self.runUnder else []),
            _venvBin("twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={self.log}",
            *self.twistdOptions,
            "imgateway",
            "--config",
            str(self.config),
        ]
        with open(self._stderr, "wb") as err:
            # A session of its own: Control-C in the terminal reaches us, and
            # we stop the gateway ourselves.
            self.process = subprocess.Popen(
                cmd,
                cwd=str(self.tree),
                env=_env(self.tree),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startTimeout
        while True:
            status = self.process.poll()
            if status is not None:
                raise GatewayError(f"the gateway exited with status {status} while starting:\n{self.logTail()}")
            if (
                self._probe()
                and (self.xmppPort is None or self._probeXMPP())
                and (self.tlsPort is None or self._accepts(self.tlsPort))
                and (self.ircPort is None or self._accepts(self.ircPort))
            ):
                return
            if self._logSays("CannotListenError") or self._logSays("cannot listen on"):
                raise GatewayError(f"the gateway cannot listen on its ports:\n{self.logTail()}")
            if time.monotonic() > deadline:
                ports = f"127.0.0.1:{self.port}" + (f" and :{self.xmppPort}" if self.xmppPort is not None else "")
                raise GatewayError(f"the gateway did not open {ports} within {self.startTimeout:g} s:\n{self.logTail()}")
            time.sleep(0.1)

    def _probe(self) -> bool:
        """
        @return: Whether an imgateway gateway answers C{OPTIONS} on our port
            (not just whoever may have taken the port).
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.settimeout(2.0)
                s.sendall(b"OPTIONS * IMGW/1.0\r\nSeq: 1\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
        except OSError:
            return False
        return data.startswith(b"IMGW/1.0 200") and b"imgateway/" in data

    @staticmethod
    def _accepts(port: int) -> bool:
        """
        @return: Whether 127.0.0.1:port accepts TCP connections (the native
            C{tls:} listener: nothing is sent).
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _probeXMPP(self) -> bool:
        """
        @return: Whether our XMPP port answers a stream header for our
            domain with stream features.
        """
        assert self.xmppPort is not None
        header = (
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        try:
            with socket.create_connection(("127.0.0.1", self.xmppPort), timeout=1.0) as s:
                s.settimeout(2.0)
                s.sendall(header.encode("utf-8"))
                data = b""
                while b"</stream:features>" not in data and len(data) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                s.sendall(b"</stream:stream>")
        except OSError:
            return False
        return b"<stream:features" in data

    def logErrors(self) -> int:
        """
        @return: How many tracebacks and unhandled errors the gateway has
            logged so far.
        """
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return 0
        return text.count("Traceback (most recent call last)") + text.count("Unhandled Error")

    def waitForLog(self, texts: Sequence[str], timeout: float = 30.0) -> None:
        """
        Wait until the log holds each of C{texts}.

        @raise GatewayError: If it does not in C{timeout} seconds, or the
            gateway exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        for text in texts:
            while not self._logSays(text):
                if self.process is not None and self.process.poll() is not None:
                    raise GatewayError(f"the gateway exited with status {self.process.returncode}:\n{self.logTail()}")
                if time.monotonic() > deadline:
                    raise GatewayError(f"the gateway did not log {text!r} within {timeout:g} s:\n{self.logTail()}")
                time.sleep(0.1)

    def _logSays(self, text: str) -> bool:
        try:
            return text in self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def logTail(self, lines: int = 30) -> str:
        """
        @return: The last lines of the gateway's log and of its standard
            output and error.
        """
        out: list[str] = []
        for path in (self.log, self._stderr):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            tail = text.splitlines()[-lines:]
            if tail:
                out.append(f"--- {path} (last {len(tail)} lines)")
                out.extend(tail)
        return "\n".join(out) or "(no log)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        Stop the gateway (SIGTERM, then SIGKILL after C{timeout} s) and
        remove the temporary folder unless asked to keep it. Safe to call
        more than once, and if it never started.

        @return: Its exit status, if it ran.
        """
        status: int | None = None
        process = self.process
        if process is not None:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)
                    status = process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    status = process.wait(5)
                except KeyboardInterrupt:
                    process.kill()
                    process.wait(5)
                    raise
            else:
                status = process.returncode
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        return status

    def __enter__(self) -> SpawnedGateway:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: C{[links] max_queue} of a lab's servers: as L{benchConfig} raises the
#: flood limits, so that a benchmark measures routing, not the bound. (A
#: request waits in its link's queue until its answer is back: with the
#: shipped 1000, 50 closed-loop senders through a router, whose window a
#: delivery frees before its 200 is back, overflowed it: 503s.)
LAB_MAX_QUEUE = 100000


def _linksEdit(
    name: str,
    roles: Mapping[str, Sequence[str]],
    linkPorts: dict[str, int],
    nativePorts: dict[str, int],
    certs: dict[str, tuple[Path, Path]],
    roots: Path,
    internalNetworks: Sequence[str],
) -> Callable[[str], str]:
    """
    The edit that makes a benchmark configuration that of server C{name}
    of a lab: its C{home_server}, every server's C{[servers.NAME]} table,
    its C{[links]} (listener, certificate, key, trust roots; reconnecting
    within 2 s; C{max_queue} L{LAB_MAX_QUEUE}) and C{[router]
    internal_networks}. Everything else is as L{benchConfig} left it
    (C{request_timeout}, C{max_sessions}... as shipped).
    """

    def edit(text: str) -> str:
        certificate, key = certs[name]
        text = _setKey(text, "gateway", "home_server", _tomlString(name))
        text = _setKey(text, "links", "listen", "[" + _tomlString(f"tcp:{linkPorts[name]}:interface=127.0.0.1") + "]")
        text = _setKey(text, "links", "certificate", _tomlString(str(certificate)))
        text = _setKey(text, "links", "private_key", _tomlString(str(key)))
        text = _setKey(text, "links", "trust_roots", _tomlString(str(roots)))
        text = _setKey(text, "links", "reconnect_max_delay", "2")
        text = _setKey(text, "links", "max_queue", str(LAB_MAX_QUEUE))
        text = _setKey(text, "router", "internal_networks", "[" + ", ".join(_tomlString(n) for n in internalNetworks) + "]")
        tables = [
            f"\n[servers.{n}]\nroles = [{', '.join(_tomlString(r) for r in serverRoles)}]\n"
            f'link = "127.0.0.1:{linkPorts[n]}"\ntls_name = "{n}.links.test"\nnative = "127.0.0.1:{nativePorts[n]}"\n'
            for n, serverRoles in roles.items()
        ]
        return text.rstrip("\n") + "\n" + "".join(tables)

    return edit


def linkedHomeServers(
    names: Sequence[str],
    folder: Path,
    template: Path | None = None,
    keep: bool = False,
    roles: Mapping[str, Sequence[str]] | None = None,
    internalNetworks: Sequence[str] = ("127.0.0.1/32",),
) -> list[SpawnedGateway]:
    """
    Servers of one domain as separate gateways (not started), as the
    single-host lab runs them (docs/operations.md): one shared data folder
    (so one SQLite directory, and C{home-<name>.sqlite3} for each), each
    with its native face and its link listener on free loopback ports,
    joined by server links over TLS with both certificates checked. The
    certificates (C{<name>.links.test}, for server and client use) come
    from a test authority (L{imgateway.testing.CertificateAuthority}). A
    gateway's L{SpawnedGateway.createUsers} makes accounts homed on it.
    A link comes up when the first event crosses it; its sending end then
    logs C{Link to server NAME is up} (L{SpawnedGateway.waitForLog}).

    @param folder: Where the shared data, certificates and authority go
        (the caller removes it).
    @param roles: The C{roles} of some of the servers (C{["router"]}
        for a router); C{["home"]} for the others.
    @param internalNetworks: C{[router] internal_networks}: clients from
        elsewhere are proxied by a router, from these redirected.
    """
    from imgateway.testing import CertificateAuthority, certificatePEM, keyPEM, writePEM

    authority = CertificateAuthority()
    certDir = folder / "links"
    roots = Path(writePEM(str(certDir / "ca.crt"), certificatePEM(authority.certificate)))
    certs: dict[str, tuple[Path, Path]] = {}
    linkPorts: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        key, certificate = authority.issue([f"{name}.links.test"], clientAuth=True)
        certs[name] = (
            Path(writePEM(str(certDir / f"{name}.crt"), certificatePEM(certificate))),
            Path(writePEM(str(certDir / f"{name}.key"), keyPEM(key))),
        )
        port = freePort()
        while port in taken:
            port = freePort()
        taken.add(port)
        linkPorts[name] = port
    gateways: list[SpawnedGateway] = []
    nativePorts: dict[str, int] = {}
    try:
        for name in names:
            gw = SpawnedGateway(template=template, keep=keep, dataDir=folder / "data")
            gateways.append(gw)
            nativePorts[name] = gw.port
        for name, gw in zip(names, gateways):
            allRoles = {n: list((roles or {}).get(n, ["home"])) for n in names}
            edit = _linksEdit(name, allRoles, linkPorts, nativePorts, certs, roots, internalNetworks)
            text = edit(gw.config.read_text(encoding="utf-8"))
            gw.config.write_text(text, encoding="utf-8")
    except BaseException:
        for gw in gateways:
            gw.stop()
        raise
    return gateways


# -- create-users, in a process of its own ------------------------------------------


def _createUsersMain(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._gateway create-users")
    parser.add_argument("--config", required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--password-stdin", action="store_true", required=True)
    args = parser.parse_args(argv)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.exit("no password on standard input")

    from twisted.internet import reactor
    from twisted.internet.task import react
    from twisted.internet.threads import deferToThread

    from imgateway.auth.passwords import makeCredentials
    from imgateway.config import loadConfig
    from imgateway.core.address import Address, validateAccountLocalPart
    from imgateway.core.errors import ImgatewayError
    from imgateway.core.records import AccountRecord
    from imgateway.directory.sqlite import SQLiteDirectory
    from imgateway.plugins import adapterConfigParsers

    theReactor: Any = reactor
    try:
        config = loadConfig(args.config, theReactor, adapterConfigParsers())
        addresses = [Address.fromParts(f"{args.prefix}{i}", config.domain) for i in range(args.first, args.first + args.count)]
        for address in addresses:
            validateAccountLocalPart(address)
    except ImgatewayError as e:
        sys.exit(str(e))

    async def run(r: Any) -> None:
        directory = await SQLiteDirectory.open(r, config.dataDir.child("directory.sqlite3"))
        try:
            existing = {a.address for a in await directory.listAccounts(config.domain)}
            missing = [a for a in addresses if a not in existing]
            created = 0
            if missing:
                credentials = await deferToThread(makeCredentials, password, config.auth.scramIterations)
                text = credentials.serialise()
                for address in missing:
                    await directory.addAccount(AccountRecord(address, config.homeServerName, "", True, text))
                    created += 1
            print(f"created {created} accounts, {len(addresses) - len(missing)} existed already")
        finally:
            await directory.close()

    react(lambda r: run(r), _reactor=theReactor)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "create-users":
        sys.exit("usage: python -m bench._gateway create-users --config CFG --count N [--prefix P] [--first I] --password-stdin")
    _createUsersMain(argv[1:])


if __name__ == "__main__":
    main()


_exitStatus = 130


def _terminated(signum: int, frame: Any) -> NoReturn:
    global _exitStatus
    _exitStatus = 128 + signum
    raise KeyboardInterrupt(f"signal {signum}")


def interruptOnSigterm() -> None:
    """
    Make SIGTERM interrupt a benchmark as Ctrl-C does, so that its
    clean-up (stopping the servers it started) runs.
    """
    signal.signal(signal.SIGTERM, _terminated)


def interruptedStatus() -> int:
    """
    @return: The exit status for an interrupted benchmark: 128 + the signal
        (130 for Ctrl-C).
    """
    return _exitStatus
