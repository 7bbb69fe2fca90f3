"""
A private, real ejabberd for an end-to-end test (L{EjabberdProcess}): its
configuration, accounts (Mnesia), certificates, log and crash dump all live
in the test's temporary folder; it listens on free loopback ports only, and
never asks the machine's DNS for anything.

How ejabberd is kept off the machine's DNS without root: ejabberd 23.01
finds an s2s peer with an SRV query (C{_xmpp-server._tcp.<domain>}, made by
Erlang's own resolver, C{inet_res}) and then C{getaddrinfo()} of the SRV
target (or, when the SRV query fails, of the domain itself). The Erlang
resolver's settings come from the C{ERL_INETRC} file we write: no
C{resolv.conf}, one nameserver, a L{StaticSRVServer} on a free UDP port of
127.0.0.1 inside the test process. It answers every _xmpp-server SRV query, with the
target C{127.0.0.1} (numeric: C{getaddrinfo} resolves it without asking
anyone) and the port of the domain's static route, or port 0 (connection
refused at once: stanzas bounce with C{remote-server-not-found}) for a
domain without one. So a lookup never falls back to C{getaddrinfo} of a
name.

ejabberd runs as C{erl ... -s ejabberd} directly, not through
C{ejabberdctl} (which, as root, C{su}s to the C{ejabberd} user and forks):
one process, ours to signal, running as the current user, without Erlang
distribution (no node name, so no C{epmd} and no distribution port).
Accounts are registered at boot by an C{-eval} after C{-s ejabberd}.

The configuration is rendered from C{peers/ejabberd.yml.in} beside this
file; the tests depend on nothing outside the project but the C{ejabberd}
Debian package (L{requirePeer}: a missing ejabberd skips the test, or fails
it under CI).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns
from twisted.trial.unittest import TestCase

from tests.e2e.harness import (
    _accepts,
    _deferred,
    _readText,
    freePort,
    reactor,
    requirePeer,
    sleep,
    stopProcess,
)
from tests.e2e.prosody import PEERS_DIR, XMPP_DOMAIN
from tests.e2e.peerserver import PeerServerProcess

__all__ = [
    "EjabberdProcess",
    "StaticSRVServer",
    "requireEjabberd",
]

#: How long ejabberd may take to listen and register its accounts, in seconds.
START_TIMEOUT = 30.0

_POLL = 0.05

#: Log levels ejabberd knows, lowest first.
_LEVELS = ("debug", "info", "notice", "warning", "error", "critical")

#: Where Debian's ejabberd keeps its Erlang applications (ejabberdctl's ERL_LIBS).
_DEFAULT_ERL_LIBS = "/usr/lib/x86_64-linux-gnu"


def requireEjabberd(testCase: TestCase) -> str:
    """
    L{requirePeer} for ejabberd (its C{ejabberdctl}).

    @return: The path of C{ejabberdctl}.
    """
    return requirePeer(testCase, "ejabberdctl", "ejabberd")


def _yamlString(text: str) -> str:
    """
    C{text} as a YAML double-quoted scalar (a JSON string is one).
    """
    return json.dumps(text)


def _erlangString(text: str) -> str:
    """
    C{text} as an Erlang binary literal of its UTF-8 bytes.
    """
    return "<<" + ",".join(str(b) for b in text.encode("utf-8")) + ">>" if text else "<<>>"


def _erlLibs(ejabberdctl: str) -> str:
    """
    The C{ERL_LIBS} that C{ejabberdctl} gives ejabberd (where its Erlang
    applications are).
    """
    m = re.search(r"^ERL_LIBS='?([^'\n]+)'?$", _readText(ejabberdctl), re.M)
    return m.group(1) if m else _DEFAULT_ERL_LIBS


class _SRVProtocol(DatagramProtocol):
    """
    Answers C{_xmpp-server._tcp.<domain>} SRV queries from static routes
    (target C{127.0.0.1}; port 0 for a domain without a route); every other
    query is answered NXDOMAIN. The response echoes the query's id, question
    and RD flag (Erlang's resolver drops a response that does not).
    """

    noisy = False

    def __init__(self, routes: Mapping[str, int], queries: list[tuple[str, int]]) -> None:
        self.routes = routes
        self.queries = queries

    def answer(self, query: dns.Query) -> list[dns.RRHeader] | None:
        name = query.name.name.decode("ascii", "replace").lower().rstrip(".")
        self.queries.append((name, query.type))
        prefix = "_xmpp-server._tcp."
        if query.type != dns.SRV or query.cls != dns.IN or not name.startswith(prefix):
            return None
        port = self.routes.get(name[len(prefix):], 0)
        record = dns.Record_SRV(0, 0, port, b"127.0.0.1", ttl=0)
        return [dns.RRHeader(name=query.name.name, type=dns.SRV, cls=dns.IN, ttl=0, payload=record, auth=True)]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        request = dns.Message()
        try:
            request.fromStr(datagram)
        except Exception:
            return
        if request.answer:
            return
        response = dns.Message(
            id=request.id, answer=True, opCode=request.opCode, auth=True, recDes=request.recDes, recAv=False
        )
        response.queries = request.queries[:]
        answers = self.answer(request.queries[0]) if len(request.queries) == 1 else None
        if answers is None:
            response.rCode = dns.ENAME
        else:
            response.answers = answers
        assert self.transport is not None
        self.transport.write(response.toStr(), addr)


class StaticSRVServer:
    """
    A DNS server on a free UDP port of 127.0.0.1, in the test's reactor,
    that points every s2s domain at 127.0.0.1: the port of its route in
    C{routes} (read at each query), or port 0 (refused) for any other.

    @ivar port: Its UDP port, once L{start}ed.
    @ivar queries: Every query received: (name, type).
    """

    def __init__(self, routes: Mapping[str, int]) -> None:
        self.queries: list[tuple[str, int]] = []
        self.protocol = _SRVProtocol(routes, self.queries)
        self.port = 0
        self._listening: Any = None

    def start(self) -> None:
        self._listening = reactor().listenUDP(0, self.protocol, interface="127.0.0.1")
        self.port = self._listening.getHost().port

    def stop(self) -> Deferred[None]:
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        return _deferred(_stopListening(listening))


async def _stopListening(listening: Any) -> None:
    await maybeDeferred(listening.stopListening)


def _children(pid: int) -> list[int]:
    """
    The pids of the children of process C{pid} (Linux C{/proc}; none
    elsewhere).
    """
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children.extend(int(c) for c in _readText(f"/proc/{pid}/task/{task}/children").split())
    except OSError:
        pass
    return children


class EjabberdProcess(PeerServerProcess):
    """
    A real ejabberd (C{erl -s ejabberd}) on a configuration of its own
    inside a test's temporary folder, stopped when the test ends.

    It serves the host L{domain} with accounts (L{addUser}, registered at
    start), c2s (plain, STARTTLS offered) and s2s listeners on free
    127.0.0.1 ports, and reaches each s2s peer of L{peers} at
    C{127.0.0.1:<port>} through a L{StaticSRVServer} (see the module's
    docstring): no DNS.

    TLS: unless C{certificate} is given, a test CA and a certificate for
    L{domain} signed by it are made (L{caPath}). ejabberd trusts, for peers'
    certificates, its own CA and every CA file in C{trust} (L{trustPath},
    its C{ca_file} and C{s2s_cafile}), never the system's.

    s2s policy, as ejabberd 23.01 applies it:
      - C{s2sRequireEncryption}: C{s2s_use_starttls: required} (STARTTLS on
        every s2s stream), otherwise C{optional}.
      - C{dialback}: load C{mod_s2s_dialback} (XEP-0220). Without it, a
        peer can only authenticate with a certificate that chains to
        L{trustPath} and is valid for its domain (SASL EXTERNAL), and
        ejabberd verifies the certificate of every peer it connects to.
        With it, ejabberd still offers/tries SASL EXTERNAL when the
        certificate is valid, and falls back to dialback otherwise (it
        then does not insist on the peer's certificate when connecting).

    @ivar directory: The folder of everything this ejabberd uses.
    @ivar configPath: Its configuration file (rewritten by L{start}).
    @ivar logPath: Its log, at C{logLevel} and above (C{error.log} beside
        it holds the errors only).
    @ivar outputPath: Its standard output and error.
    @ivar spoolPath: Its Mnesia database (accounts, rosters...).
    @ivar c2sPort: The client port (plain, STARTTLS offered).
    @ivar s2sPort: The server-to-server port.
    @ivar caPath: The CA that signed ejabberd's certificate (C{None} if the
        test gave the certificate).
    @ivar certificatePath: ejabberd's certificate (chain).
    @ivar keyPath: Its private key.
    @ivar trustPath: The CA bundle ejabberd trusts.
    @ivar passwords: The accounts: local part to password.
    @ivar dns: The L{StaticSRVServer} ejabberd asks, while it runs.
    @ivar process: The running process, or C{None}.
    """

    name = "ejabberd"

    def __init__(
        self,
        testCase: TestCase,
        domain: str = XMPP_DOMAIN,
        users: Mapping[str, str] | None = None,
        peers: Mapping[str, int] | None = None,
        trust: Sequence[str] = (),
        certificate: tuple[str, str] | None = None,
        s2sRequireEncryption: bool = False,
        dialback: bool = True,
        c2sRequireEncryption: bool = False,
        extraModules: Mapping[str, Mapping[str, Any]] | None = None,
        extraConfig: str = "",
        logLevel: str = "info",
        directory: str | None = None,
        checkLog: bool = True,
    ) -> None:
        """
        Prepare the folder, certificates and accounts; start nothing yet.

        Raises L{SkipTest} (or fails the test under CI) if ejabberd is not
        installed.

        @param testCase: The test; the cleanup that stops ejabberd is
            registered with it.
        @param domain: The host ejabberd serves.
        @param users: Accounts to make: local part to password.
        @param peers: s2s static routes: remote domain to its s2s port on
            127.0.0.1 (L{addPeer} adds more, taking effect at once).
        @param trust: Paths of PEM files of CAs to trust besides ejabberd's
            own.
        @param certificate: The certificate (chain) and key files to serve,
            instead of making a CA and a certificate.
        @param extraModules: More modules to load: name to options (e.g.
            C{{"mod_offline": {}}}).
        @param extraConfig: YAML appended to the configuration (top level).
        @param logLevel: The lowest level logged (C{info} shows s2s
            connections and their authentication; C{debug} every stanza).
        @param checkLog: Whether to fail the test if ejabberd logged at
            C{error} level or above (see L{problems}).
        """
        if logLevel not in _LEVELS:
            raise ValueError(f"logLevel must be one of {_LEVELS}")
        self.ejabberdctl = requireEjabberd(testCase)
        self.erl = requirePeer(testCase, "erl", "erlang-base")
        self.testCase = testCase
        self.domain = domain
        self.directory = os.path.abspath(directory if directory is not None else testCase.mktemp())
        os.makedirs(self.directory, exist_ok=True)
        self.configPath = os.path.join(self.directory, "ejabberd.yml")
        self.logPath = os.path.join(self.directory, "logs", "ejabberd.log")
        self.errorLogPath = os.path.join(self.directory, "logs", "error.log")
        self.outputPath = os.path.join(self.directory, "ejabberd.out")
        self.spoolPath = os.path.join(self.directory, "spool")
        self.inetrcPath = os.path.join(self.directory, "inetrc")
        self.usersPath = os.path.join(self.directory, "users.eterm")
        self.readyPath = os.path.join(self.directory, "ready")
        os.makedirs(self.spoolPath, exist_ok=True)
        os.makedirs(os.path.dirname(self.logPath), exist_ok=True)
        self.c2sPort = freePort()
        self.s2sPort = freePort()
        self.peers: dict[str, int] = dict(peers or {})
        self.s2sRequireEncryption = s2sRequireEncryption
        self.dialback = dialback
        self.c2sRequireEncryption = c2sRequireEncryption
        self.extraModules = dict(extraModules or {})
        self.extraConfig = extraConfig
        self.logLevel = logLevel
        self.checkLog = checkLog
        self.trust = list(trust)
        self.passwords: dict[str, str] = {}
        self.dns = StaticSRVServer(self.peers)
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

        self._prepareTLS(domain, certificate)

        for user, password in (users or {}).items():
            self.addUser(user, password)
        testCase.addCleanup(self._cleanUp)

    # -- configuration --------------------------------------------------------------

    def addUser(self, user: str, password: str) -> None:
        """
        Make the account C{user@domain} at the next L{start} (ejabberd
        registers the accounts it was given as it boots).
        """
        if self.process is not None:
            raise AssertionError("ejabberd registers accounts as it starts: add them before start()")
        self.passwords[user] = password

    def renderConfig(self) -> str:
        """
        @return: The configuration text for the current settings.
        """
        with open(os.path.join(PEERS_DIR, "ejabberd.yml.in"), encoding="utf-8") as f:
            template = f.read()
        modules = dict(self.extraModules)
        if self.dialback:
            modules.setdefault("mod_s2s_dialback", {})
        values = {
            "DOMAIN": _yamlString(self.domain),
            "LOG_LEVEL": self.logLevel,
            "CERTIFICATE": _yamlString(self.certificatePath),
            "KEY": _yamlString(self.keyPath),
            "TRUST": _yamlString(self.trustPath),
            "S2S_USE_STARTTLS": "required" if self.s2sRequireEncryption else "optional",
            "C2S_PORT": str(self.c2sPort),
            "S2S_PORT": str(self.s2sPort),
            "C2S_REQUIRE_ENCRYPTION": "true" if self.c2sRequireEncryption else "false",
            "MODULES": "\n".join(f"  {name}: {json.dumps(options)}" for name, options in modules.items()),
            "EXTRA_CONFIG": self.extraConfig,
        }

        def sub(m: re.Match[str]) -> str:
            return values[m.group(1)]

        return re.sub(r"@([A-Z0-9_]+)@", sub, template)

    def writeConfig(self) -> None:
        """
        Write the configuration, the trusted-CA bundle, the Erlang
        resolver's settings and the accounts for the current settings.
        """
        with open(self.trustPath, "w") as f:
            for path in ([self.caPath] if self.caPath else []) + self.trust:
                text = _readText(path)
                f.write(text if text.endswith("\n") else text + "\n")
        with open(self.inetrcPath, "w") as f:
            # No resolv.conf, no hosts file, one nameserver: ours.
            f.write('{resolv_conf, ""}.\n{hosts_file, ""}.\n')
            f.write(f"{{nameserver, {{127,0,0,1}}, {self.dns.port}}}.\n")
            f.write("{lookup, [file, dns]}.\n{timeout, 1000}.\n{retry, 1}.\n")
        with open(self.usersPath, "w", encoding="utf-8") as f:
            for user, password in self.passwords.items():
                f.write(f"{{{_erlangString(user)}, {_erlangString(self.domain)}, {_erlangString(password)}}}.\n")
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(self.renderConfig())

    # -- the process ----------------------------------------------------------------

    def command(self) -> list[str]:
        """
        The command line that runs this ejabberd in the foreground (what
        C{ejabberdctl foreground} runs, without distribution), registering
        the accounts once it is up and then writing the file C{ready}.
        """
        register = (
            f'{{ok, Users}} = file:consult("{self.usersPath}"), '
            "[ok = ejabberd_auth:try_register(U, S, P) || {U, S, P} <- Users], "
            f'ok = file:write_file("{self.readyPath}", <<"ok">>).'
        )
        return [
            self.erl,
            "-noinput",
            "+K", "true",
            "+P", "250000",
            "-mnesia", "dir", f'"{self.spoolPath}"',
            "-s", "ejabberd",
            "-eval", register,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """
        The environment ejabberd runs in.
        """
        env = dict(os.environ)
        for name in ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_EPMD_PORT", "ERL_EPMD_ADDRESS"):
            env.pop(name, None)
        env.update(
            HOME=self.directory,
            ERL_LIBS=_erlLibs(self.ejabberdctl),
            ERL_INETRC=self.inetrcPath,
            ERL_CRASH_DUMP=os.path.join(self.directory, "erl_crash.dump"),
            EJABBERD_CONFIG_PATH=self.configPath,
            EJABBERD_LOG_PATH=self.logPath,
            ERL_MAX_PORTS="32000",
            ERL_MAX_ETS_TABLES="1400",
        )
        return env

    def start(self) -> Deferred[None]:
        """
        Start the DNS server, write the configuration and start ejabberd;
        wait until its c2s and s2s ports accept connections and its
        accounts are registered.

        @return: Fires once it is up; fails (with its output and log) if it
            exits first or is not up within L{START_TIMEOUT}.
        """

        async def run() -> None:
            if self.process is not None:
                raise AssertionError("ejabberd is already running")
            if self.dns.port == 0:
                self.dns.start()
            if os.path.exists(self.readyPath):
                os.remove(self.readyPath)
            self.writeConfig()
            self._output = open(self.outputPath, "ab")
            self.process = process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self.environment(),
            )
            deadline = time.monotonic() + START_TIMEOUT
            waiting = [self.c2sPort, self.s2sPort]
            while True:
                code = process.poll()
                if code is not None:
                    self._reaped()
                    raise AssertionError(self._describe(f"ejabberd exited with status {code} while starting"))
                waiting = [p for p in waiting if not _accepts(p)]
                if not waiting and os.path.exists(self.readyPath):
                    return
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(
                        self._describe(f"ejabberd was not up (ports {waiting} not listening?) within {START_TIMEOUT} s")
                    )
                await sleep(_POLL)

        return _deferred(run())

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """
        Send ejabberd C{sig} (the Erlang VM stops cleanly on SIGTERM; after
        L{thaw} if it is frozen) and wait for it to exit; kill it if it has
        not within the harness's C{STOP_TIMEOUT}.

        @return: Fires with its exit status.
        """
        self.thaw()
        return _deferred(self._stop(sig))

    async def _stop(self, sig: int) -> int:
        # The VM's helper (erl_child_setup, the parent of its port
        # programs) outlives it for a moment: wait for it too, so that no
        # process of ours is left when the test ends.
        helpers = _children(self.process.pid) if self.process is not None else []
        code = await stopProcess(self, "ejabberd", sig)
        deadline = time.monotonic() + 5.0
        while helpers and time.monotonic() < deadline:
            helpers = [pid for pid in helpers if os.path.exists(f"/proc/{pid}")]
            if helpers:
                await sleep(_POLL)
        return code

    def problems(self) -> list[str]:
        """
        @return: The log lines at level C{error} or above.
        """
        return [line for line in self.log().splitlines() if re.search(r"\[(error|critical|alert|emergency)\]", line)]

    async def _stopForCleanUp(self) -> None:
        try:
            await super()._stopForCleanUp()
        finally:
            await self.dns.stop()
