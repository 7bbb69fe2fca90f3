# -*- test-case-name: tests.e2e.test_prosody_harness -*-
"""
A private, real Prosody for an end-to-end test (L{ProsodyProcess}): its
configuration, accounts, certificates, data and log all live in the test's
temporary folder; it listens on free loopback ports only, and never asks
the machine's DNS for anything (static s2s routes to 127.0.0.1, and a
resolver that can only ask 127.0.0.1).

The configuration is rendered from C{peers/prosody.cfg.lua.in} beside this
file, which also holds the C{mod_s2s_static_routes} plugin; the tests
depend on nothing outside the project but the C{prosody} Debian package
(L{requirePeer}: a missing Prosody skips the test, or fails it under CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.e2e.harness import _accepts, _deferred, _readText, freePort, requirePeer, sleep
from tests.e2e.peerserver import PeerServerProcess

__all__ = [
    "COMPONENT_SECRET",
    "PEERS_DIR",
    "XMPP_DOMAIN",
    "ProsodyProcess",
    "luaString",
    "requireProsody",
]

#: The folder of the configuration template and Prosody plugins.
PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")

#: The domain a test Prosody serves unless told otherwise.
XMPP_DOMAIN = "xmpp.example"

#: The XEP-0114 secret of the components a test Prosody accepts.
COMPONENT_SECRET = "component secret"

#: How long Prosody may take to listen, in seconds.
START_TIMEOUT = 30.0

#: How long Prosody may take to stop after SIGTERM, in seconds.
STOP_TIMEOUT = 10.0

_POLL = 0.05

#: Log levels Prosody knows, lowest first.
_LEVELS = ("debug", "info", "warn", "error")


def requireProsody(testCase: TestCase) -> str:
    """
    L{requirePeer} for C{prosody}.

    @return: The path of the C{prosody} program.
    """
    return requirePeer(testCase, "prosody")


def luaString(text: str) -> str:
    """
    C{text} as a Lua string literal.
    """
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _luaBool(value: bool) -> str:
    return "true" if value else "false"


def _luaList(items: Iterable[str]) -> str:
    return " ".join(f"{luaString(i)};" for i in items)


def _storeName(name: str) -> str:
    """
    A name as Prosody's file storage encodes it in paths (every byte that
    is not a letter or digit as C{%xx}).
    """
    return re.sub(rb"[^A-Za-z0-9]", lambda m: b"%%%02x" % m.group()[0], name.encode("utf-8")).decode("ascii")


class ProsodyProcess(PeerServerProcess):
    """
    A real C{prosody -F} on a configuration of its own inside a test's
    temporary folder, stopped when the test ends.

    It serves the VirtualHost L{domain} with accounts (L{addUser}), one
    XEP-0114 component per entry of L{components}, c2s (plain, STARTTLS
    offered), s2s and component listeners on free 127.0.0.1 ports, and
    reaches each s2s peer of L{peers} at C{127.0.0.1:<port>} without DNS.

    TLS: unless C{certificate} is given, a test CA and a certificate for
    L{domain} signed by it are made (L{caPath} is that CA: clients and
    peers that should trust Prosody trust it). Prosody trusts, for peers'
    certificates, its own CA and every CA file in C{trust} (L{trustPath},
    its C{ssl.cafile}).

    s2s policy, as Prosody 0.12 applies it:
      - C{s2sRequireEncryption}: STARTTLS must be done on every s2s stream
        (Prosody's own default is true; ours is false).
      - C{s2sSecureAuth}: the peer must present a certificate that chains to
        a trusted CA I{and} is valid for its domain (SAN dNSName or
        XmppAddr/SRVName); dialback is then never accepted. With it false
        (the default), a valid certificate is still used (SASL EXTERNAL is
        offered / tried) and dialback is the fallback.
      - C{s2sSecureDomains} / C{s2sInsecureDomains}: the same rule for
        some domains only / exemptions from it.
      - C{dialback}: load C{mod_dialback} (XEP-0220); without it, only
        certificate (SASL EXTERNAL) authentication is possible.

    @ivar directory: The folder of everything this Prosody uses.
    @ivar configPath: Its configuration file (rewritten by L{start}).
    @ivar logPath: Its log, at C{logLevel} and above.
    @ivar outputPath: Its standard output and error.
    @ivar dataPath: Its C{data_path} (accounts, rosters...).
    @ivar c2sPort: The client port (plain, STARTTLS offered).
    @ivar s2sPort: The server-to-server port.
    @ivar componentPort: The XEP-0114 component port.
    @ivar caPath: The CA that signed Prosody's certificate (C{None} if the
        test gave the certificate).
    @ivar certificatePath: Prosody's certificate (chain).
    @ivar keyPath: Its private key.
    @ivar trustPath: The CA bundle Prosody trusts.
    @ivar passwords: The accounts made so far: local part to password.
    @ivar process: The running process, or C{None}.
    """

    name = "prosody"

    def __init__(
        self,
        testCase: TestCase,
        domain: str = XMPP_DOMAIN,
        users: Mapping[str, str] | None = None,
        peers: Mapping[str, int] | None = None,
        components: Mapping[str, str] | None = None,
        trust: Sequence[str] = (),
        certificate: tuple[str, str] | None = None,
        s2sRequireEncryption: bool = False,
        s2sSecureAuth: bool = False,
        s2sSecureDomains: Sequence[str] = (),
        s2sInsecureDomains: Sequence[str] = (),
        dialback: bool = True,
        staticRoutesOnly: bool = True,
        c2sRequireEncryption: bool = False,
        allowUnencryptedPlainAuth: bool = True,
        extraModules: Sequence[str] = (),
        disabledModules: Sequence[str] = (),
        extraConfig: str = "",
        logLevel: str = "info",
        directory: str | None = None,
        checkLog: bool = True,
    ) -> None:
        """
        Prepare the folder, certificates and accounts; start nothing yet.

        Raises L{SkipTest} (or fails the test under CI) if Prosody is not
        installed.

        @param testCase: The test; the cleanup that stops Prosody is
            registered with it.
        @param domain: The VirtualHost.
        @param users: Accounts to make: local part to password.
        @param peers: s2s static routes: remote domain to its s2s port on
            127.0.0.1 (L{addPeer} adds more before L{start}).
        @param components: XEP-0114 components: domain to secret; by
            default C{gw.<domain>} with L{COMPONENT_SECRET}.
        @param trust: Paths of PEM files of CAs to trust besides Prosody's
            own.
        @param certificate: The certificate (chain) and key files to serve,
            instead of making a CA and a certificate.
        @param staticRoutesOnly: Whether a domain without a route in
            C{peers} is unreachable at once (stanzas to it bounce with
            C{remote-server-not-found}); otherwise Prosody looks it up in
            its DNS jail, which answers nothing, and stanzas to it wait for
            a long time.
        @param extraModules: More modules to load (e.g. C{"offline"} is
            disabled, C{"mam"}, C{"carbons"} are not loaded by default).
        @param disabledModules: Modules not to load.
        @param extraConfig: Lua appended to the global section.
        @param logLevel: The lowest level logged (C{debug} shows every
            stanza; C{info} is enough to see connections and s2s
            authentication).
        @param checkLog: Whether to fail the test if Prosody logged at
            C{error} level (see L{problems}).
        """
        if logLevel not in _LEVELS:
            raise ValueError(f"logLevel must be one of {_LEVELS}")
        self.program = requireProsody(testCase)
        self.testCase = testCase
        self.domain = domain
        self.directory = os.path.abspath(directory if directory is not None else testCase.mktemp())
        os.makedirs(self.directory, exist_ok=True)
        self.configPath = os.path.join(self.directory, "prosody.cfg.lua")
        self.logPath = os.path.join(self.directory, "prosody.log")
        self.outputPath = os.path.join(self.directory, "prosody.out")
        self.dataPath = os.path.join(self.directory, "data")
        self.pidPath = os.path.join(self.directory, "prosody.pid")
        os.makedirs(self.dataPath, exist_ok=True)
        self.c2sPort = freePort()
        self.s2sPort = freePort()
        self.componentPort = freePort()
        self.peers: dict[str, int] = dict(peers or {})
        self.components: dict[str, str] = (
            dict(components) if components is not None else {f"gw.{domain}": COMPONENT_SECRET}
        )
        self.s2sRequireEncryption = s2sRequireEncryption
        self.s2sSecureAuth = s2sSecureAuth
        self.s2sSecureDomains = list(s2sSecureDomains)
        self.s2sInsecureDomains = list(s2sInsecureDomains)
        self.dialback = dialback
        self.staticRoutesOnly = staticRoutesOnly
        self.c2sRequireEncryption = c2sRequireEncryption
        self.allowUnencryptedPlainAuth = allowUnencryptedPlainAuth
        self.extraModules = list(extraModules)
        self.disabledModules = list(disabledModules)
        self.extraConfig = extraConfig
        self.logLevel = logLevel
        self.checkLog = checkLog
        self.trust = list(trust)
        self.passwords: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

        self._prepareTLS(domain, certificate)

        dnsDir = os.path.join(self.directory, "dns")
        os.makedirs(dnsDir, exist_ok=True)
        self.resolvConfPath = os.path.join(dnsDir, "resolv.conf")
        self.hostsPath = os.path.join(dnsDir, "hosts")

        for user, password in (users or {}).items():
            self.addUser(user, password)
        testCase.addCleanup(self._cleanUp)

    # -- configuration --------------------------------------------------------------

    def addUser(self, user: str, password: str) -> None:
        """
        Make the account C{user@domain} (or change its password) by writing
        its C{internal_plain} file, as C{prosodyctl register} would; works
        while Prosody runs too (it reads the file at each login).
        """
        accounts = os.path.join(self.dataPath, _storeName(self.domain), "accounts")
        os.makedirs(accounts, exist_ok=True)
        path = os.path.join(accounts, f"{_storeName(user.lower())}.dat")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"return {{\n\t[\"password\"] = {luaString(password)};\n}};\n")
        self.passwords[user] = password

    def _names(self) -> list[str]:
        return [self.domain, *self.components, *self.peers]

    def renderConfig(self) -> str:
        """
        @return: The configuration text for the current settings.
        """
        with open(os.path.join(PEERS_DIR, "prosody.cfg.lua.in"), encoding="utf-8") as f:
            template = f.read()
        ssl = [f"certificate = {luaString(self.certificatePath)}", f"key = {luaString(self.keyPath)}"]
        if os.path.getsize(self.trustPath) > 0:
            ssl.append(f"cafile = {luaString(self.trustPath)}")
        modules = list(self.extraModules)
        if self.dialback:
            modules.insert(0, "dialback")
        routes = " ".join(
            f"[{luaString(domain)}] = {{ \"127.0.0.1\", {port} }};" for domain, port in sorted(self.peers.items())
        )
        components = "\n".join(
            f"Component {luaString(name)}\n  component_secret = {luaString(secret)}\n"
            for name, secret in self.components.items()
        )
        values = {
            "PIDFILE": luaString(self.pidPath),
            "DATA_PATH": luaString(self.dataPath),
            "PLUGIN_PATH": luaString(PEERS_DIR),
            "LOG_LEVEL": self.logLevel,
            "LOG_PATH": luaString(self.logPath),
            "EXTRA_MODULES": _luaList(modules),
            "DISABLED_MODULES": _luaList(self.disabledModules),
            "C2S_REQUIRE_ENCRYPTION": _luaBool(self.c2sRequireEncryption),
            "ALLOW_UNENCRYPTED_PLAIN_AUTH": _luaBool(self.allowUnencryptedPlainAuth),
            "S2S_REQUIRE_ENCRYPTION": _luaBool(self.s2sRequireEncryption),
            "S2S_SECURE_AUTH": _luaBool(self.s2sSecureAuth),
            "S2S_SECURE_DOMAINS": _luaList(self.s2sSecureDomains),
            "S2S_INSECURE_DOMAINS": _luaList(self.s2sInsecureDomains),
            "C2S_PORT": str(self.c2sPort),
            "S2S_PORT": str(self.s2sPort),
            "COMPONENT_PORT": str(self.componentPort),
            "SSL": "; ".join(ssl),
            "CERTIFICATES": luaString(os.path.dirname(self.trustPath)),
            "RESOLV_CONF": luaString(self.resolvConfPath),
            "HOSTS_TXT": luaString(self.hostsPath),
            "S2S_ROUTES": routes,
            "S2S_ROUTES_ONLY": _luaBool(self.staticRoutesOnly),
            "EXTRA_CONFIG": self.extraConfig,
            "DOMAIN": luaString(self.domain),
            "COMPONENTS": components,
        }

        def sub(m: re.Match[str]) -> str:
            return values[m.group(1)]

        return re.sub(r"@([A-Z0-9_]+)@", sub, template)

    def writeConfig(self) -> None:
        """
        Write the configuration, the trusted-CA bundle and the DNS jail's
        files for the current settings.
        """
        with open(self.trustPath, "w") as f:
            for path in ([self.caPath] if self.caPath else []) + self.trust:
                text = _readText(path)
                f.write(text if text.endswith("\n") else text + "\n")
        with open(self.resolvConfPath, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        with open(self.hostsPath, "w") as f:
            f.write("127.0.0.1 localhost " + " ".join(self._names()) + "\n")
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(self.renderConfig())

    # -- the process ----------------------------------------------------------------

    def command(self) -> list[str]:
        """
        The command line that runs this Prosody in the foreground.
        """
        return [self.program, "--config", self.configPath, "-F"]

    def start(self) -> Deferred[None]:
        """
        Write the configuration and start Prosody; wait until its c2s, s2s
        and component ports accept connections.

        @return: Fires once it is up; fails (with its output and log) if it
            exits first or is not up within L{START_TIMEOUT}.
        """

        async def run() -> None:
            if self.process is not None:
                raise AssertionError("prosody is already running")
            self.writeConfig()
            self._output = open(self.outputPath, "ab")
            self.process = process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
            deadline = time.monotonic() + START_TIMEOUT
            waiting = [self.c2sPort, self.s2sPort, self.componentPort]
            while True:
                code = process.poll()
                if code is not None:
                    self._reaped()
                    raise AssertionError(self._describe(f"prosody exited with status {code} while starting"))
                waiting = [p for p in waiting if not _accepts(p)]
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(self._describe(f"prosody did not listen on {waiting} within {START_TIMEOUT} s"))
                await sleep(_POLL)

        return _deferred(run())

    def problems(self) -> list[str]:
        """
        @return: The log lines at level C{error} (Prosody's tab-separated
            format: time, source, level, message).
        """
        return [line for line in self.log().splitlines() if "\terror\t" in line]
