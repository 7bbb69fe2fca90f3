# -*- test-case-name: tests.test_bench_compare -*-
"""
The servers of C{bench/compare.py}, each started afresh on free loopback
ports with its accounts and contact lists written straight into its storage
(no registration over the wire, which would take minutes for 10,000 users
with 20 contacts each):

 - L{startGateway}: the gateway (L{bench._gateway.SpawnedGateway} with both
   faces), accounts by L{bench._gateway.createUsers}, contacts through its
   home store's own API (C{python -m bench._peers gateway-contacts});
 - L{BenchProsody}: Prosody (C{prosody -F}), C{internal_hashed} accounts
   (SCRAM-SHA-1 verifiers) and roster files in its C{internal} storage;
 - L{BenchEjabberd}: ejabberd as C{erl -s ejabberd} (as
   C{tests/e2e/ejabberd.py} runs it: one process, ours), accounts and
   rosters written into Mnesia by an C{-eval} at boot.

Every server stores hashed passwords (SCRAM verifiers, 4,096 PBKDF2
iterations, shared by all the accounts of a run) and has its flood limits
raised out of reach (L{FLOOD_SETTINGS}), so that the benchmark measures
routing, logins and sessions, not rate limiters.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gateway import REPO, SpawnedGateway, freePort

#: SCRAM iterations of every server's stored verifiers (the gateway's
#: benchConfig sets [auth] scram_iterations to this; Prosody's and
#: ejabberd's defaults for new SCRAM-SHA-1 verifiers).
ITERATIONS = 4096
PEER_DOMAIN = "localhost"
PASSWORD = "pw"
PREFIX = "user"

#: What each server's configuration changes from its defaults so that no
#: flood limit is reached (printed by compare.py and copied into its JSON).
FLOOD_SETTINGS: dict[str, list[str]] = {
    "gateway": [
        "[native] requests_per_second = request_burst = 1000000 (shipped: 20, 10)",
        "[xmpp] stanzas_per_second = stanza_burst = 1000000 (shipped: 20, 50), require_tls = false",
        "[native]/[xmpp] max_unauthenticated = 100000, login_timeout = 600; [native] idle_timeout = 3600",
        "[limits] max_unauthenticated_per_address, connections_per_second_per_address, "
        "connection_burst_per_address = 1000000 (all clients are on 127.0.0.1)",
        "[auth] scram_iterations = 4096 (shipped: 10000)",
    ],
    "prosody": [
        "mod_limits not loaded (c2s byte-rate limits), c2s_stanza_size_limit = 1 MiB",
        "no TLS, allow_unencrypted_plain_auth = true; authentication = internal_hashed (4096 iterations)",
    ],
    "ejabberd": [
        "c2s shaper none (Debian's default config: 'normal', 3000 B/s), shaper_rules c2s_shaper none",
        "max_fsm_queue 100000, max_stanza_size 1 MiB; no TLS; auth_password_format scram (4096 iterations)",
    ],
}


class PeerError(Exception):
    """
    A server could not be prepared or started.
    """


def pidAlive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def waitPort(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def scramSha1(password: str, salt: bytes, iterations: int = ITERATIONS) -> tuple[bytes, bytes]:
    """
    @return: The SCRAM-SHA-1 stored key and server key of C{password}.
    """
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
    stored = hashlib.sha1(hmac.digest(salted, b"Client Key", "sha1")).digest()
    server = hmac.digest(salted, b"Server Key", "sha1")
    return stored, server


def contactsOf(pairs: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """
    @return: Each account's contacts (every pair is mutual).
    """
    out: dict[int, list[int]] = {}
    for a, b in pairs:
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return out


def circulant(first: int, count: int, contacts: int) -> list[tuple[int, int]]:
    """
    Mutual pairs that give each of the accounts C{first .. first+count-1}
    exactly C{contacts} contacts among themselves: account i and the
    C{contacts / 2} accounts after it, round the circle.
    """
    half = contacts // 2
    if count <= contacts:
        raise ValueError(f"{count} accounts cannot each have {contacts} contacts among themselves")
    return [(first + i, first + (i + k) % count) for i in range(count) for k in range(1, half + 1)]


class Provision:
    """
    What a server gets before it starts: accounts C{PREFIX<n>} for each n
    of C{accounts}, and mutual contacts (both subscribed to each other) for
    each pair.
    """

    def __init__(self, accounts: Sequence[int], pairs: Sequence[tuple[int, int]]) -> None:
        self.accounts = sorted(set(accounts))
        self.pairs = list(pairs)

    def ranges(self) -> list[tuple[int, int]]:
        """
        @return: The accounts as (first, count) runs.
        """
        out: list[tuple[int, int]] = []
        for n in self.accounts:
            if out and out[-1][0] + out[-1][1] == n:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((n, 1))
        return out


class Server:
    """
    A running server: what the driver needs to reach and read it.
    """

    name = ""
    proto = "xmpp"
    domain = PEER_DOMAIN
    port = 0
    pid: int | None = None

    def stop(self) -> None:
        raise NotImplementedError

    def logErrors(self) -> int:
        return 0


# -- the gateway ---------------------------------------------------------------------------


class GatewayServer(Server):
    """
    A face of a L{SpawnedGateway} (C{proto} C{native}, C{xmpp} or C{irc}).
    """

    def __init__(self, gateway: SpawnedGateway, proto: str) -> None:
        self.gateway = gateway
        self.proto = proto
        self.name = f"gateway-{proto}"
        self.domain = gateway.domain or ""
        ports = {"native": gateway.port, "xmpp": gateway.xmppPort, "irc": gateway.ircPort}
        self.port = ports.get(proto) or 0
        self.pid = gateway.pid

    def stop(self) -> None:
        self.gateway.stop()

    def logErrors(self) -> int:
        return self.gateway.logErrors()


def startGateway(
    proto: str,
    provision: Provision,
    keep: bool = False,
    template: Path | None = None,
    twistdOptions: Sequence[str] = (),
    ircNetworks: str = "",
    tree: Path | None = None,
) -> GatewayServer:
    """
    Start a gateway with C{provision} and return its face C{proto}
    (C{native} and C{xmpp} always run; C{irc} only when asked for).

    @param twistdOptions: More options of C{twistd} (L{SpawnedGateway}).
    @param ircNetworks: C{[[irc.network]]} tables (TOML) for its IRC bridge.
    @param tree: The source tree the gateway runs from (L{SpawnedGateway}).
    """
    gateway = SpawnedGateway(
        template=template,
        keep=keep,
        xmpp=True,
        twistdOptions=twistdOptions,
        irc=proto == "irc",
        ircNetworks=ircNetworks,
        tree=tree,
    )
    try:
        if provision.accounts:
            # One child process for all (the numbers between the runs too:
            # accounts in the directory cost the gateway nothing until used).
            first, last = provision.accounts[0], provision.accounts[-1]
            gateway.createUsers(PREFIX, first, last - first + 1, PASSWORD)
        if provision.pairs:
            pairsFile = gateway.folder / "pairs.json"
            pairsFile.write_text(json.dumps(provision.pairs))
            done = subprocess.run(
                [sys.executable, "-m", "bench._peers", "gateway-contacts", "--config", str(gateway.config),
                 "--pairs", str(pairsFile)],
                capture_output=True, text=True, timeout=900, cwd=str(REPO),
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )  # fmt: skip
            if done.returncode != 0:
                raise PeerError(f"writing the gateway's contacts failed:\n{done.stderr[-3000:]}")
        gateway.start()
    except BaseException:
        gateway.stop()
        raise
    return GatewayServer(gateway, proto)


def _gatewayContactsMain(argv: Sequence[str]) -> None:
    """
    Write mutual contacts (each on the other's list, each authorised to see
    the other) into a gateway's home store, through L{SQLiteHomeStore}'s
    own C{apply}, before the gateway starts.
    """
    parser = argparse.ArgumentParser(prog="python -m bench._peers gateway-contacts")
    parser.add_argument("--config", required=True)
    parser.add_argument("--pairs", required=True, help="a JSON list of [a, b] account numbers")
    parser.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    pairs = json.loads(Path(args.pairs).read_text())

    from twisted.internet import reactor
    from twisted.internet.task import react

    from imgateway.config import loadConfig
    from imgateway.core.address import Address
    from imgateway.home.store import SQLiteHomeStore
    from imgateway.plugins import adapterConfigParsers
    from imgateway.testing import mutualContacts

    theReactor: Any = reactor
    config = loadConfig(args.config, theReactor, adapterConfigParsers())

    def address(n: int) -> Address:
        return Address.fromParts(f"{args.prefix}{n}", config.domain)

    async def run(r: Any) -> None:
        store = await SQLiteHomeStore.open(r, config.dataDir.child(f"home-{config.homeServerName}.sqlite3"))
        try:
            changes: list[Any] = []
            for a, b in pairs:
                x, y = address(a), address(b)
                changes += mutualContacts(x, y)
                if len(changes) >= 20000:
                    await store.apply(changes)
                    changes = []
            if changes:
                await store.apply(changes)
        finally:
            await store.close()
        print(f"{len(pairs)} mutual contacts written")

    react(lambda r: run(r), _reactor=theReactor)


# -- Prosody -------------------------------------------------------------------------------

PROSODY_CONFIG = """\
-- Prosody for bench/compare.py (bench/_peers.py writes this). Loopback only.
run_as_root = true
pidfile = "{folder}/prosody.pid"
data_path = "{folder}/data"
network_backend = "epoll"
log = {{ warn = "{folder}/prosody.log" }}
admins = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; }}
-- Not loaded: mod_limits (c2s byte-rate limits), tls, s2s, offline, mam, carbons, smacks, csi, pep.
modules_disabled = {{ "offline"; "c2s_limits"; "s2s"; "tls"; }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
c2s_stanza_size_limit = 1024*1024
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
VirtualHost "{domain}"
"""


def _luaString(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prosodyHost(domain: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", lambda m: "%%%02x" % ord(m.group()), domain)


def prosodyVersion() -> str | None:
    return debianVersion("prosody")


def debianVersion(package: str) -> str | None:
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


class BenchProsody(Server):
    """
    Prosody in a temporary folder, in the foreground (C{prosody -F}).
    """

    name = "prosody"

    def __init__(self, provision: Provision, keep: bool = False) -> None:
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="imgw-compare-prosody-"))
        self.port = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self._write(provision)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _write(self, provision: Provision) -> None:
        self.config = self.folder / "prosody.cfg.lua"
        self.config.write_text(PROSODY_CONFIG.format(folder=self.folder, port=self.port, domain=self.domain))
        host = self.folder / "data" / _prosodyHost(self.domain)
        (host / "accounts").mkdir(parents=True)
        (host / "roster").mkdir()
        salt = "imgateway-bench-salt"
        stored, server = scramSha1(PASSWORD, salt.encode())
        account = (
            "return {\n"
            f'\t["iteration_count"] = {ITERATIONS};\n'
            f'\t["salt"] = {_luaString(salt)};\n'
            f'\t["stored_key"] = "{stored.hex()}";\n'
            f'\t["server_key"] = "{server.hex()}";\n'
            "};\n"
        )
        for n in provision.accounts:
            (host / "accounts" / f"{PREFIX}{n}.dat").write_text(account)
        for n, contacts in contactsOf(provision.pairs).items():
            items = "".join(
                f'\t[{_luaString(f"{PREFIX}{c}@{self.domain}")}] = {{\n\t\t["subscription"] = "both";\n\t\t["groups"] = {{}};\n\t}};\n'
                for c in contacts
            )
            (host / "roster" / f"{PREFIX}{n}.dat").write_text(
                'return {\n\t[false] = {\n\t\t["version"] = 1;\n\t\t["pending"] = {};\n\t};\n' + items + "};\n"
            )

    def start(self) -> None:
        prosody = shutil.which("prosody")
        if prosody is None:
            raise PeerError("prosody is not installed (Debian: apt-get install prosody)")
        self.output = open(self.folder / "stdout.log", "ab")
        self.process = subprocess.Popen(
            [prosody, "--config", str(self.config), "-F"],
            stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
            cwd=str(self.folder), start_new_session=True,
        )  # fmt: skip
        self.pid = self.process.pid
        if not waitPort(self.port, 30, self.process):
            log = self.tail()
            self.stop()
            raise PeerError(f"Prosody did not listen on {self.port}:\n{log}")

    def tail(self) -> str:
        out = []
        for name in ("stdout.log", "prosody.log"):
            try:
                out.append((self.folder / name).read_text(errors="replace")[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    def logErrors(self) -> int:
        try:
            text = (self.folder / "prosody.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if "\terror\t" in line)

    def stop(self) -> None:
        stopProcess(self.process)
        self.process = None
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


def stopProcess(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """
    SIGTERM our own child, SIGKILL it if it has not exited in C{timeout} s.
    """
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# -- ejabberd ------------------------------------------------------------------------------

EJABBERD_CONFIG = """\
# ejabberd for bench/compare.py (bench/_peers.py writes this), after
# ../shared/peers/conf/ejabberd.yml.in. Loopback only, no TLS.
hosts:
  - "{domain}"
loglevel: warning
log_rotate_count: 0
auth_method: internal
auth_password_format: scram
acme:
  auto: false
sm_db_type: mnesia
default_db: mnesia
cache_size: 100000
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    max_stanza_size: 1048576
    shaper: none
    access: c2s
    starttls: false
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
shaper: {{}}
shaper_rules:
  max_user_sessions: 100
  c2s_shaper: none
  s2s_shaper: none
max_fsm_queue: 100000
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster:
    versioning: false
# Not loaded: mod_offline, mod_mam, mod_carbons, mod_stream_mgmt, mod_pubsub/pep, mod_caps,
# mod_privacy/blocking, mod_vcard, mod_register, mod_http_*, mod_fail2ban, s2s.
"""

#: Run after C{-s ejabberd}: register the first account (ejabberd derives
#: its SCRAM verifier), copy that record to the others (one password for
#: all, as every server here), write each pair's two roster items, then the
#: file C{ready}.
EJABBERD_EVAL = """\
{{ok, T}} = file:consult("{terms}"),
{{_, H}} = lists:keyfind(host, 1, T), {{_, Pfx}} = lists:keyfind(prefix, 1, T),
{{_, Pw}} = lists:keyfind(password, 1, T), {{_, Us}} = lists:keyfind(users, 1, T),
{{_, Ps}} = lists:keyfind(pairs, 1, T),
N = fun(I) -> <<Pfx/binary, (integer_to_binary(I))/binary>> end,
[U0 | Rest] = Us,
ok = ejabberd_auth:try_register(N(U0), H, Pw),
[R] = mnesia:dirty_read(passwd, {{N(U0), H}}),
[mnesia:dirty_write(setelement(2, R, {{N(I), H}})) || I <- Rest],
W = fun(A, B) -> mnesia:dirty_write({{roster, {{N(A), H, {{N(B), H, <<>>}}}}, {{N(A), H}}, {{N(B), H, <<>>}},
                 <<>>, both, none, [], <<>>, []}}) end,
[begin W(A, B), W(B, A) end || {{A, B}} <- Ps],
ok = file:write_file("{ready}", <<"ok">>).
"""


def _erlLibs(ejabberdctl: str) -> str:
    try:
        text = Path(ejabberdctl).read_text(errors="replace")
    except OSError:
        text = ""
    m = re.search(r"^ERL_LIBS='?([^'\n]+)'?$", text, re.M)
    return m.group(1) if m else "/usr/lib/x86_64-linux-gnu"


class BenchEjabberd(Server):
    """
    ejabberd in a temporary folder, as one C{erl -s ejabberd} process
    (no Erlang distribution, no C{epmd}), as C{tests/e2e/ejabberd.py} runs
    it.
    """

    name = "ejabberd"

    def __init__(self, provision: Provision, keep: bool = False) -> None:
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="imgw-compare-ejabberd-"))
        self.port = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = self.folder / "ready"
        self.config = self.folder / "ejabberd.yml"
        self.config.write_text(EJABBERD_CONFIG.format(domain=self.domain, port=self.port))
        terms = self.folder / "provision.eterm"
        pairs = ",".join(f"{{{a},{b}}}" for a, b in provision.pairs)
        terms.write_text(
            f'{{host, <<"{self.domain}">>}}.\n{{prefix, <<"{PREFIX}">>}}.\n{{password, <<"{PASSWORD}">>}}.\n'
            f"{{users, [{','.join(str(n) for n in provision.accounts)}]}}.\n{{pairs, [{pairs}]}}.\n"
        )
        (self.folder / "inetrc").write_text('{resolv_conf, ""}.\n{hosts_file, ""}.\n{lookup, [file]}.\n')
        self.eval = EJABBERD_EVAL.format(terms=terms, ready=self.ready)

    def start(self, timeout: float = 180.0) -> None:
        ejabberdctl = shutil.which("ejabberdctl")
        erl = shutil.which("erl")
        if ejabberdctl is None or erl is None:
            raise PeerError("ejabberd is not installed (Debian: apt-get install ejabberd)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERL_")}
        env.update(
            HOME=str(self.folder),
            ERL_LIBS=_erlLibs(ejabberdctl),
            ERL_INETRC=str(self.folder / "inetrc"),
            ERL_CRASH_DUMP=str(self.folder / "erl_crash.dump"),
            EJABBERD_CONFIG_PATH=str(self.config),
            EJABBERD_LOG_PATH=str(self.folder / "logs" / "ejabberd.log"),
            ERL_MAX_PORTS="100000",
            ERL_MAX_ETS_TABLES="1400",
        )
        (self.folder / "logs").mkdir(exist_ok=True)
        self.output = open(self.folder / "ejabberd.out", "ab")
        self.process = subprocess.Popen(
            [erl, "-noinput", "+K", "true", "+P", "1000000", "-mnesia", "dir", f'"{self.folder / "spool"}"',
             "-s", "ejabberd", "-eval", self.eval],
            stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
            cwd=str(self.folder), env=env, start_new_session=True,
        )  # fmt: skip
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while not (self.ready.exists() and waitPort(self.port, 1, self.process)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.tail()
                self.stop()
                raise PeerError(f"ejabberd did not start (or provision) within {timeout:g} s:\n{log}")
            time.sleep(0.2)

    def tail(self) -> str:
        out = []
        for path in (self.folder / "ejabberd.out", self.folder / "logs" / "ejabberd.log"):
            try:
                out.append(path.read_text(errors="replace")[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    def logErrors(self) -> int:
        try:
            text = (self.folder / "logs" / "ejabberd.log").read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r"\[(error|critical)\]", text))

    def stop(self) -> None:
        helpers: list[int] = []
        if self.process is not None:
            try:
                helpers = [int(p) for p in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
            except (OSError, ValueError):
                pass
        stopProcess(self.process, timeout=30)
        self.process = None
        deadline = time.monotonic() + 5
        while helpers and time.monotonic() < deadline:
            helpers = [p for p in helpers if pidAlive(p)]
            time.sleep(0.05)
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


def startServer(
    kind: str, provision: Provision, keep: bool = False, template: Path | None = None, tree: Path | None = None
) -> Server:
    """
    Start a fresh server for row C{kind} (C{gateway-native},
    C{gateway-xmpp}, C{prosody}, C{ejabberd}) with C{provision}.

    @param tree: For a gateway, the source tree it runs from
        (L{SpawnedGateway}).
    """
    if kind.startswith("gateway-"):
        return startGateway(kind.split("-", 1)[1], provision, keep, template, tree=tree)
    server: BenchProsody | BenchEjabberd = (BenchProsody if kind == "prosody" else BenchEjabberd)(provision, keep)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "gateway-contacts":
        sys.exit("usage: python -m bench._peers gateway-contacts --config CFG --pairs FILE")
    _gatewayContactsMain(argv[1:])


if __name__ == "__main__":
    main()
