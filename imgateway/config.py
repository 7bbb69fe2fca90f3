# -*- test-case-name: tests.test_config -*-
"""
The configuration file: TOML, read once at start-up and checked whole before
any port is opened.

Core tables are parsed here (C{[gateway]}, C{[home]}, C{[auth]},
C{[limits]}, C{[directory]}: an LDAP directory's keys by
L{imgateway.directory.ldapconfig}); each
protocol adapter parses its own table with L{ConfigTable}, so every error
names the file, the table and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.python.filepath import FilePath

from imgateway.auth.passwords import DEFAULT_SCRAM_ITERATIONS
from imgateway.core.address import normaliseDomain
from imgateway.core.errors import ConfigError, InvalidAddress
from imgateway.core.throttle import LimitsConfig
from imgateway.manhole.config import ManholeConfig, parseManholeConfig
from imgateway.net.certificates import CertificateProblem
from imgateway.net.endpoints import checkServerEndpoint
from imgateway.sqlite import DEFAULT_CACHE_KIB, Durability

if TYPE_CHECKING:
    from imgateway.directory.ldapconfig import LDAPConfig

__all__ = [
    "CONFIG_ENVIRONMENT",
    "CORE_TABLES",
    "SERVER_ROLES",
    "HostPort",
    "parseHostPort",
    "DEFAULT_CONFIG_PATH",
    "AuthConfig",
    "ConfigTable",
    "DirectoryConfig",
    "GatewayConfig",
    "HomeConfig",
    "LimitsConfig",
    "LinksConfig",
    "LogConfig",
    "ManholeConfig",
    "RouterConfig",
    "ServerConfig",
    "StatusConfig",
    "findConfig",
    "loadConfig",
    "parseConfig",
]

#: The environment variable naming the configuration file when no
#: C{--config} is given.
CONFIG_ENVIRONMENT = "IMGATEWAY_CONFIG"

#: The configuration file read when neither C{--config} nor
#: C{$IMGATEWAY_CONFIG} names one.
DEFAULT_CONFIG_PATH = "/etc/imgateway/imgateway.toml"

T = TypeVar("T")

_MISSING: Any = object()


class ConfigTable:
    """
    Typed, checked access to one TOML table.

    Read each key once with L{get} (or its helpers), then call L{finish}: any
    key that nobody read is an error, so a misspelt key never goes unnoticed.

    @ivar where: How errors name this table (C{"etc/imgateway.toml [native]"}).
    @ivar baseDir: The config file's folder, against which relative paths
        resolve.
    """

    def __init__(self, table: Mapping[str, object], where: str, baseDir: str = ".") -> None:
        self._table = table
        self._read: set[str] = set()
        self.where = where
        self.baseDir = baseDir

    def error(self, key: str, problem: str) -> ConfigError:
        """
        @return: A L{ConfigError} naming this table's C{key}.
        """
        return ConfigError(f"{self.where}: {key}: {problem}")

    def get(self, key: str, kind: type[T], default: T = _MISSING) -> T:
        """
        Read C{key}, which must be of type C{kind} (an C{int} is accepted
        where a C{float} is asked for).

        @raise ConfigError: If it is missing and has no default, or is of
            another type.
        """
        self._read.add(key)
        if key not in self._table:
            if default is _MISSING:
                raise self.error(key, "missing (required)")
            return default
        value = self._table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, key: str, kind: type[T], default: T) -> T:
        """
        Read a number that must be greater than zero.
        """
        value = self.get(key, kind, default)
        if value <= 0:  # type: ignore[operator]
            raise self.error(key, f"must be greater than 0, got {value!r}")
        return value

    def endpoints(self, key: str, reactor: IReactorCore, default: Sequence[str] = ()) -> tuple[str, ...]:
        """
        Read a list of Twisted server endpoint strings, checking that each
        parses and that the certificates and keys it names can serve
        (L{imgateway.net.endpoints.checkServerEndpoint}); nothing is opened.
        """
        value = self.get(key, list, list(default))
        result = []
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected endpoint strings, got {item!r}")
            try:
                checkServerEndpoint(item)
            except CertificateProblem as e:
                raise self.error(key, f"{item!r}: {e}") from None
            try:
                serverFromString(reactor, item)
            except Exception as e:  # serverFromString raises many kinds
                raise self.error(key, f"bad endpoint {item!r}: {e}") from None
            result.append(item)
        return tuple(result)

    def path(self, key: str, default: str | None = None) -> str | None:
        """
        Read the path of a file that must exist and be readable; a relative
        path resolves against L{baseDir}.

        @return: The absolute path, or C{default} when the key is absent.
        """
        value = self.get(key, str, default)
        if value is None:
            return None
        full = os.path.normpath(os.path.join(self.baseDir, os.path.expanduser(value)))
        try:
            with open(full, "rb"):
                pass
        except OSError as e:
            raise self.error(key, f"cannot read {full}: {e.strerror}") from None
        return full

    def keys(self) -> list[str]:
        """
        The table's keys, in file order (for tables whose keys are names,
        such as C{[servers]}).
        """
        return list(self._table)

    def table(self, key: str) -> ConfigTable:
        """
        Read a sub-table (empty when absent).
        """
        value = self.get(key, dict, {})
        return ConfigTable(value, f"{self.where}.{key}", self.baseDir)

    def finish(self) -> None:
        """
        @raise ConfigError: If the table holds a key nobody read.
        """
        unknown = sorted(set(self._table) - self._read)
        if unknown:
            raise self.error(unknown[0], "unknown key")


@frozen
class HomeConfig:
    """
    The C{[home]} table: the home server's limits.
    """

    maxSessionsPerUser: int = 10
    presenceLease: float = 3600.0
    maxPresenceLease: float = 86400.0
    minPresenceLease: float = 30.0
    maxMessageChars: int = 16384
    maxContacts: int = 1000
    maxAccessEntries: int = 1000
    maxRules: int = 5
    maxPendingRequests: int = 1000
    autoReplyPeriod: float = 3600.0
    maxKeptPresences: int = 20000
    drainTimeout: float = 10.0

    def grantLease(self, asked: float | None) -> float:
        """
        @return: The presence lease to grant for one asked for (or the
            default for C{None}), within the configured bounds (a home
            server's, and a router's for the sessions it proxies).
        """
        if asked is None:
            return self.presenceLease
        return min(max(asked, self.minPresenceLease), self.maxPresenceLease)


@frozen
class AuthConfig:
    """
    The C{[auth]} table.
    """

    scramIterations: int = DEFAULT_SCRAM_ITERATIONS
    passwordWorkers: int = 2
    passwordQueue: int = 256


@frozen
class HostPort:
    """
    A C{host:port} pair (an IPv6 host in brackets: C{[::1]:5310}).
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: The roles a server of the domain can have (C{[servers.NAME] roles}).
SERVER_ROLES = frozenset({"home", "router"})


@frozen
class ServerConfig:
    """
    One C{[servers.NAME]} table: a server of this domain, as every process
    of the domain knows it.

    @ivar name: Its name (the table's name; for a home server, the name the
        directory gives as a user's home server).
    @ivar roles: C{"home"}, C{"router"} or both.
    @ivar link: Where its server-link listener is, or C{None} for a server
        that takes no links (a single-host gateway).
    @ivar tlsName: The name its link certificate must carry (default: the
        host of C{link}).
    @ivar native: Where native clients reach it (what a redirect names), or
        C{None}.
    @ivar xmpp: Where XMPP clients reach it (what C{<see-other-host/>}
        names), or C{None}.
    """

    name: str
    roles: frozenset[str]
    link: HostPort | None = None
    tlsName: str | None = None
    native: HostPort | None = None
    xmpp: HostPort | None = None


@frozen
class RouterConfig:
    """
    The C{[router]} table.

    @ivar internalNetworks: Clients from these networks are redirected to
        their home server; others are proxied.
    @ivar directoryCacheSeconds: How long a user's home server, read from the
        directory, is remembered.
    """

    internalNetworks: tuple[IPv4Network | IPv6Network, ...] = ()
    directoryCacheSeconds: float = 30.0


@frozen
class LinksConfig:
    """
    The C{[links]} table: server links (docs/protocol.md section 9).

    @ivar listen: Server endpoint strings of the link listener (plain
        C{tcp:} endpoints: TLS comes from the certificate below).
    @ivar certificate: PEM file of this server's certificate chain, or
        C{None}.
    @ivar privateKey: PEM file of its private key, or C{None}.
    @ivar trustRoots: PEM file of the certificates that may sign the other
        servers' certificates, or C{None}.
    @ivar allowPlaintextLoopback: Whether a link without TLS is allowed,
        only ever between loopback addresses.
    @ivar maxQueue: Requests waiting on one link; past it, senders get
        C{503} at once.
    @ivar requestTimeout: Seconds a request waits for its answer (link
        down included) before its sender gets an error status.
    @ivar duplicateWindow: Seconds a message's routing id is remembered, so
        a duplicate after a reconnect is delivered once.
    @ivar maxHops: The C{Max-Hops} of a request this server originates.
    @ivar reconnectMaxDelay: The longest wait between reconnection attempts.
    @ivar maxIncoming: Incoming link connections at once.
    @ivar maxSessions: Proxied client sessions on one link at once
        (L{imgateway.router.proxy}): a router opens no more over a link to
        a home server, and a home server takes no more on one connection.
    @ivar dnsServers: The DNS servers asked for peer domains' C{_imgw._tcp}
        SRV records and their targets' addresses; empty: the system's
        resolver (C{/etc/hosts}, C{/etc/resolv.conf}).
    @ivar maxStartLineBytes: The longest start line a link takes from its
        peer, in bytes (at least 64).
    @ivar maxHeaderBytes: The header lines of one frame from the peer, in
        bytes.
    @ivar maxHeaders: The header lines of one frame from the peer.
    @ivar maxBodyBytes: The body of one frame from the peer, in bytes.
    @ivar maxRemembered: Answers the duplicate check remembers at most
        (the oldest are forgotten first, even within C{duplicateWindow}).
    @ivar noRouteSeconds: Seconds a peer domain found to have no link route
        (no C{_imgw._tcp} SRV record) is not looked up again.
    """

    listen: tuple[str, ...] = ()
    certificate: str | None = None
    privateKey: str | None = None
    trustRoots: str | None = None
    allowPlaintextLoopback: bool = False
    maxQueue: int = 10000
    requestTimeout: float = 10.0
    duplicateWindow: float = 300.0
    maxHops: int = 8
    reconnectMaxDelay: float = 60.0
    maxIncoming: int = 100
    maxSessions: int = 1000
    dnsServers: tuple[HostPort, ...] = ()
    maxStartLineBytes: int = 4096
    maxHeaderBytes: int = 32768
    maxHeaders: int = 128
    maxBodyBytes: int = 1024 * 1024
    maxRemembered: int = 100000
    noRouteSeconds: float = 60.0


#: The smallest C{[links] max_start_line_bytes}: room for a method, a short
#: address and the protocol version.
MIN_LINK_START_LINE_BYTES = 64

#: C{[gateway] gc_young_objects} by default: ten times Python's own 700 (see
#: L{imgateway.tap.freezeStartupHeap}).
DEFAULT_GC_YOUNG_OBJECTS = 10000

#: The smallest C{[gateway] gc_young_objects}: below Python's own 700 the
#: collector would run almost at every allocation.
MIN_GC_YOUNG_OBJECTS = 100

#: C{[gateway] sqlite_cache_kib} by default: 256, an eighth of SQLite's own
#: page cache size (L{imgateway.sqlite.DEFAULT_CACHE_KIB}).
DEFAULT_SQLITE_CACHE_KIB = DEFAULT_CACHE_KIB

#: The smallest C{[gateway] sqlite_cache_kib}: sixteen pages of 4 KiB.
MIN_SQLITE_CACHE_KIB = 64


@frozen
class DirectoryConfig:
    """
    The C{[directory]} table: where the accounts are.

    @ivar backend: C{"sqlite"} (C{directory.sqlite3} in the data folder)
        or C{"ldap"}.
    @ivar ldap: For C{"ldap"}, the server and how to read it
        (L{imgateway.directory.ldapconfig.LDAPConfig}); else C{None}.
    """

    backend: str = "sqlite"
    ldap: LDAPConfig | None = None


@frozen
class StatusConfig:
    """
    The C{[status]} table: C{/healthz} and C{/metrics} (docs/operations.md,
    "Status, health and metrics").

    @ivar listen: Server endpoint strings of the status listener; empty
        (the default): none.
    @ivar healthTimeout: Seconds a health check may take before it counts
        as down.
    @ivar lagInterval: Seconds between two measures of the reactor's lag.
    """

    listen: tuple[str, ...] = ()
    healthTimeout: float = 5.0
    lagInterval: float = 1.0


#: The formats C{[log] format} may name.
LOG_FORMATS = ("text", "json")


@frozen
class LogConfig:
    """
    The C{[log]} table.

    @ivar format: C{"text"} (twistd's lines) or C{"json"} (one JSON object
        a line, for log collectors), applied by C{twistd imgateway}.
    """

    format: str = "text"


#: The directory backends C{[directory] backend} may name.
_BACKENDS = ("sqlite", "ldap")


@frozen
class GatewayConfig:
    """
    A whole, checked configuration.

    @ivar path: The file it was read from.
    @ivar domain: The domain served.
    @ivar dataDir: Where state is kept (relative paths resolve against the
        config file's folder).
    @ivar homeServerName: This process's name: one of the C{[servers]}
        tables when there are any; for a home server, the name the directory
        records as its users' home.
    @ivar adapters: Adapter name to its parsed config, for every enabled
        adapter, in config-file order.
    @ivar limits: The C{[limits]} table: per-source limits of every face.
    @ivar durability: What an acknowledged change to the stores survives.
    @ivar router: The C{[router]} table.
    @ivar links: The C{[links]} table.
    @ivar servers: The C{[servers.NAME]} tables: the domain's servers, by
        name (empty for a single-host gateway).
    @ivar routes: The C{[routes]} table: peer domain to the address of its
        router's link listener (static routes win over DNS SRV records).
    @ivar directory: The C{[directory]} table.
    @ivar manhole: The C{[manhole]} table
        (L{imgateway.manhole.config.ManholeConfig}).
    @ivar gcYoungObjects: C{[gateway] gc_young_objects}: new objects that
        set off a collection of the garbage collector's youngest generation
        once the process runs (L{imgateway.tap.freezeStartupHeap}).
    @ivar sqliteCacheKiB: C{[gateway] sqlite_cache_kib}: the most memory, in
        KiB, that each SQLite file's connection keeps of the file's pages.
    """

    path: FilePath[str]
    domain: str
    dataDir: FilePath[str]
    homeServerName: str
    home: HomeConfig
    auth: AuthConfig
    adapters: dict[str, object]
    limits: LimitsConfig = LimitsConfig()
    durability: Durability = Durability.PROCESS
    router: RouterConfig = RouterConfig()
    links: LinksConfig = LinksConfig()
    servers: Mapping[str, ServerConfig] = {}
    routes: Mapping[str, HostPort] = {}
    directory: DirectoryConfig = DirectoryConfig()
    manhole: ManholeConfig = ManholeConfig()
    status: StatusConfig = StatusConfig()
    log: LogConfig = LogConfig()
    gcYoungObjects: int = DEFAULT_GC_YOUNG_OBJECTS
    sqliteCacheKiB: int = DEFAULT_SQLITE_CACHE_KIB

    @property
    def roles(self) -> frozenset[str]:
        """
        This process's roles: those of its C{[servers]} table, or
        C{{"home"}} for a single-host gateway (no C{[servers]}).
        """
        if not self.servers:
            return frozenset({"home"})
        return self.servers[self.homeServerName].roles


#: Tables of the core; every other table is a protocol adapter's.
CORE_TABLES = (
    "gateway",
    "home",
    "auth",
    "limits",
    "router",
    "links",
    "servers",
    "routes",
    "directory",
    "manhole",
    "status",
    "log",
)

_HOME = HomeConfig()
_AUTH = AuthConfig()
_LIMITS = LimitsConfig()
_ROUTER = RouterConfig()
_LINKS = LinksConfig()


def _isName(text: str) -> bool:
    """
    Whether C{text} is a simple name: letters, digits, C{-} and C{.}.
    """
    return bool(text) and text.replace("-", "").replace(".", "").isalnum()


def parseHostPort(text: str) -> HostPort:
    """
    Parse C{host:port} (C{[v6]:port} for an IPv6 address).

    @raise ValueError: If it is not one.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address must be in brackets: {text!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return HostPort(host.lower(), int(port))


def _hostPort(table: ConfigTable, key: str) -> HostPort | None:
    text = table.get(key, str, "")
    if not text:
        return None
    try:
        return parseHostPort(text)
    except ValueError as e:
        raise table.error(key, str(e)) from None


def _hostPorts(table: ConfigTable, key: str) -> tuple[HostPort, ...]:
    found = []
    for item in table.get(key, list, []):
        if not isinstance(item, str):
            raise table.error(key, f"expected host:port strings, got {item!r}")
        try:
            found.append(parseHostPort(item))
        except ValueError as e:
            raise table.error(key, str(e)) from None
    return tuple(found)


def _parseRouter(t: ConfigTable) -> RouterConfig:
    networks = []
    for item in t.get("internal_networks", list, []):
        if not isinstance(item, str):
            raise t.error("internal_networks", f"expected CIDR strings, got {item!r}")
        try:
            networks.append(ip_network(item, strict=True))
        except ValueError as e:
            raise t.error("internal_networks", str(e)) from None
    return RouterConfig(
        internalNetworks=tuple(networks),
        directoryCacheSeconds=t.positive("directory_cache_seconds", float, _ROUTER.directoryCacheSeconds),
    )


def _parseLinks(t: ConfigTable, reactor: IReactorCore) -> LinksConfig:
    links = LinksConfig(
        listen=t.endpoints("listen", reactor),
        certificate=t.path("certificate"),
        privateKey=t.path("private_key"),
        trustRoots=t.path("trust_roots"),
        allowPlaintextLoopback=t.get("allow_plaintext_loopback", bool, _LINKS.allowPlaintextLoopback),
        maxQueue=t.positive("max_queue", int, _LINKS.maxQueue),
        requestTimeout=t.positive("request_timeout", float, _LINKS.requestTimeout),
        duplicateWindow=t.positive("duplicate_window", float, _LINKS.duplicateWindow),
        maxHops=t.positive("max_hops", int, _LINKS.maxHops),
        reconnectMaxDelay=t.positive("reconnect_max_delay", float, _LINKS.reconnectMaxDelay),
        maxIncoming=t.positive("max_incoming", int, _LINKS.maxIncoming),
        maxSessions=t.positive("max_sessions", int, _LINKS.maxSessions),
        dnsServers=_hostPorts(t, "dns_servers"),
        maxStartLineBytes=t.positive("max_start_line_bytes", int, _LINKS.maxStartLineBytes),
        maxHeaderBytes=t.positive("max_header_bytes", int, _LINKS.maxHeaderBytes),
        maxHeaders=t.positive("max_headers", int, _LINKS.maxHeaders),
        maxBodyBytes=t.positive("max_body_bytes", int, _LINKS.maxBodyBytes),
        maxRemembered=t.positive("max_remembered", int, _LINKS.maxRemembered),
        noRouteSeconds=t.positive("no_route_seconds", float, _LINKS.noRouteSeconds),
    )
    if (links.certificate is None) != (links.privateKey is None):
        raise t.error("certificate", "certificate and private_key go together")
    if links.maxStartLineBytes < MIN_LINK_START_LINE_BYTES:
        raise t.error("max_start_line_bytes", f"must be at least {MIN_LINK_START_LINE_BYTES}")
    return links


def _parseServers(t: ConfigTable) -> dict[str, ServerConfig]:
    servers = {}
    for name in t.keys():
        if not _isName(name):
            raise t.error(name, "a server's name must be a simple name (letters, digits, '-', '.')")
        s = t.table(name)
        roles = s.get("roles", list, ["home"])
        if not roles or not all(isinstance(r, str) and r in SERVER_ROLES for r in roles):
            raise s.error("roles", f'expected a non-empty list of "home" and "router", got {roles!r}')
        servers[name] = ServerConfig(
            name=name,
            roles=frozenset(roles),
            link=_hostPort(s, "link"),
            tlsName=s.get("tls_name", str, "") or None,
            native=_hostPort(s, "native"),
            xmpp=_hostPort(s, "xmpp"),
        )
        s.finish()
    return servers


def _parseRoutes(t: ConfigTable) -> dict[str, HostPort]:
    routes = {}
    for name in t.keys():
        try:
            domain = normaliseDomain(name)
        except InvalidAddress as e:
            raise t.error(name, str(e)) from None
        routes[domain] = _hostPort(t, name)
    return {d: r for d, r in routes.items() if r is not None}


def parseConfig(
    data: Mapping[str, Any],
    path: FilePath[str],
    reactor: IReactorCore,
    adapterParsers: Mapping[str, Callable[[ConfigTable, IReactorCore], object]],
) -> GatewayConfig:
    """
    Check a configuration read from C{path}.

    @param adapterParsers: Adapter name to its C{parseConfig}; a table with
        another name is an error. Keys an adapter does not read are errors.
    @raise ConfigError: Naming the file and key at fault.
    """
    where = path.path
    top = ConfigTable(data, where, path.dirname())

    gw = top.table("gateway")
    gw.where = f"{where} [gateway]"
    try:
        domain = normaliseDomain(gw.get("domain", str))
    except InvalidAddress as e:
        raise gw.error("domain", str(e)) from None
    dataDirText = gw.get("data_dir", str, "data")
    dataDir = FilePath(os.path.normpath(os.path.join(path.dirname(), os.path.expanduser(dataDirText))))
    homeServerName = gw.get("home_server", str, "hs1")
    if not _isName(homeServerName):
        raise gw.error("home_server", f"must be a simple name (letters, digits, '-', '.'), got {homeServerName!r}")
    durabilityText = gw.get("durability", str, Durability.PROCESS.value)
    try:
        durability = Durability(durabilityText)
    except ValueError:
        choices = " or ".join(f'"{d.value}"' for d in Durability)
        raise gw.error("durability", f"must be {choices}, got {durabilityText!r}") from None
    gcYoungObjects = gw.get("gc_young_objects", int, DEFAULT_GC_YOUNG_OBJECTS)
    if gcYoungObjects < MIN_GC_YOUNG_OBJECTS:
        raise gw.error("gc_young_objects", f"must be at least {MIN_GC_YOUNG_OBJECTS}, got {gcYoungObjects!r}")
    sqliteCacheKiB = gw.get("sqlite_cache_kib", int, DEFAULT_SQLITE_CACHE_KIB)
    if sqliteCacheKiB < MIN_SQLITE_CACHE_KIB:
        raise gw.error("sqlite_cache_kib", f"must be at least {MIN_SQLITE_CACHE_KIB}, got {sqliteCacheKiB!r}")
    gw.finish()

    h = top.table("home")
    h.where = f"{where} [home]"
    home = HomeConfig(
        maxSessionsPerUser=h.positive("max_sessions_per_user", int, _HOME.maxSessionsPerUser),
        presenceLease=h.positive("presence_lease", float, _HOME.presenceLease),
        maxPresenceLease=h.positive("max_presence_lease", float, _HOME.maxPresenceLease),
        minPresenceLease=h.positive("min_presence_lease", float, _HOME.minPresenceLease),
        maxMessageChars=h.positive("max_message_chars", int, _HOME.maxMessageChars),
        maxContacts=h.positive("max_contacts", int, _HOME.maxContacts),
        maxAccessEntries=h.positive("max_access_entries", int, _HOME.maxAccessEntries),
        maxRules=h.positive("max_rules", int, _HOME.maxRules),
        maxPendingRequests=h.positive("max_pending_requests", int, _HOME.maxPendingRequests),
        maxKeptPresences=h.positive("max_kept_presences", int, _HOME.maxKeptPresences),
        drainTimeout=h.positive("drain_timeout", float, _HOME.drainTimeout),
        autoReplyPeriod=h.positive("auto_reply_period", float, _HOME.autoReplyPeriod),
    )
    if not home.minPresenceLease <= home.presenceLease <= home.maxPresenceLease:
        raise h.error("presence_lease", "must lie between min_presence_lease and max_presence_lease")
    h.finish()

    a = top.table("auth")
    a.where = f"{where} [auth]"
    auth = AuthConfig(
        scramIterations=a.positive("scram_iterations", int, _AUTH.scramIterations),
        passwordWorkers=a.positive("password_workers", int, _AUTH.passwordWorkers),
        passwordQueue=a.positive("password_queue", int, _AUTH.passwordQueue),
    )
    if auth.scramIterations < 4096:
        raise a.error("scram_iterations", "must be at least 4096 (RFC 7677)")
    a.finish()

    lt = top.table("limits")
    lt.where = f"{where} [limits]"
    limits = LimitsConfig(
        loginFailuresPerAddress=lt.positive("login_failures_per_address", int, _LIMITS.loginFailuresPerAddress),
        addressBlockSeconds=lt.positive("address_block_seconds", float, _LIMITS.addressBlockSeconds),
        loginFailuresPerAccount=lt.positive("login_failures_per_account", int, _LIMITS.loginFailuresPerAccount),
        accountBlockSeconds=lt.positive("account_block_seconds", float, _LIMITS.accountBlockSeconds),
        loginFailureWindow=lt.positive("login_failure_window", float, _LIMITS.loginFailureWindow),
        maxUnauthenticatedPerAddress=lt.positive(
            "max_unauthenticated_per_address", int, _LIMITS.maxUnauthenticatedPerAddress
        ),
        connectionsPerSecondPerAddress=lt.positive(
            "connections_per_second_per_address", float, _LIMITS.connectionsPerSecondPerAddress
        ),
        connectionBurstPerAddress=lt.positive("connection_burst_per_address", int, _LIMITS.connectionBurstPerAddress),
        maxTrackedSources=lt.positive("max_tracked_sources", int, _LIMITS.maxTrackedSources),
    )
    lt.finish()

    topology = {}
    for name in ("router", "links", "servers", "routes"):
        sub = top.table(name)
        sub.where = f"{where} [{name}]"
        topology[name] = sub
    router = _parseRouter(topology["router"])
    links = _parseLinks(topology["links"], reactor)
    servers = _parseServers(topology["servers"])
    routes = _parseRoutes(topology["routes"])
    for sub in topology.values():
        sub.finish()
    if servers and homeServerName not in servers:
        raise gw.error("home_server", f"{homeServerName!r} is not one of the [servers] tables ({', '.join(servers)})")

    homeServers = [name for name, server in servers.items() if "home" in server.roles] if servers else None
    directory = _parseDirectory(top, path, homeServerName, homeServers)

    mh = top.table("manhole")
    mh.where = f"{where} [manhole]"
    manhole = parseManholeConfig(mh, reactor, domain)
    mh.finish()
    status, logConfig = _parseStatus(top, where, reactor)

    adapters: dict[str, object] = {}
    for name in data:
        if name in CORE_TABLES:
            continue
        if name not in adapterParsers:
            known = ", ".join(sorted(adapterParsers)) or "none installed"
            raise ConfigError(f"{where}: [{name}]: unknown table (protocol adapters: {known})")
        table = top.get(name, dict)
        tableWhere = f"{where} [{name}]"
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{tableWhere}: enabled: expected bool, got {enabled!r}")
        if enabled:
            rest = {k: v for k, v in table.items() if k != "enabled"}
            adapterTable = ConfigTable(rest, tableWhere, path.dirname())
            adapters[name] = adapterParsers[name](adapterTable, reactor)
            adapterTable.finish()
    top.finish()
    return GatewayConfig(
        path,
        domain,
        dataDir,
        homeServerName,
        home,
        auth,
        adapters,
        limits,
        durability,
        router=router,
        links=links,
        servers=servers,
        routes=routes,
        directory=directory,
        manhole=manhole,
        status=status,
        log=logConfig,
        gcYoungObjects=gcYoungObjects,
        sqliteCacheKiB=sqliteCacheKiB,
    )


_STATUS = StatusConfig()


def _parseStatus(top: ConfigTable, where: str, reactor: IReactorCore) -> tuple[StatusConfig, LogConfig]:
    """
    Read the C{[status]} and C{[log]} tables.
    """
    t = top.table("status")
    t.where = f"{where} [status]"
    status = StatusConfig(
        listen=t.endpoints("listen", reactor),
        healthTimeout=t.positive("health_timeout", float, _STATUS.healthTimeout),
        lagInterval=t.positive("lag_interval", float, _STATUS.lagInterval),
    )
    t.finish()
    lt = top.table("log")
    lt.where = f"{where} [log]"
    format = lt.get("format", str, LogConfig().format)
    if format not in LOG_FORMATS:
        raise lt.error("format", f'must be "text" or "json", got {format!r}')
    lt.finish()
    return status, LogConfig(format)


def _parseDirectory(
    top: ConfigTable, path: FilePath[str], homeServerName: str, homeServers: Sequence[str] | None = None
) -> DirectoryConfig:
    """
    Read the C{[directory]} table (the SQLite directory when absent); its
    relative paths resolve against the folder of C{path}.

    @param homeServers: The home servers among C{[servers]} (C{None}
        without C{[servers]} tables).
    """
    d = top.table("directory")
    d.where = f"{path.path} [directory]"
    d.baseDir = path.dirname()
    backend = d.get("backend", str, "sqlite")
    if backend not in _BACKENDS:
        choices = " or ".join(f'"{b}"' for b in _BACKENDS)
        raise d.error("backend", f"must be {choices}, got {backend!r}")
    if backend == "sqlite":
        d.finish()
        return DirectoryConfig()
    try:
        from imgateway.directory.ldapconfig import parseLDAPConfig
    except ImportError as e:
        raise d.error(
            "backend", f'"ldap" needs ldaptor, which is not installed (pip install "imgateway[ldap]"): {e}'
        ) from None
    ldap = parseLDAPConfig(d, homeServerName, homeServers)
    d.finish()
    return DirectoryConfig("ldap", ldap)


def findConfig(
    given: str | None,
    environ: Mapping[str, str] = os.environ,
    default: str = DEFAULT_CONFIG_PATH,
) -> str:
    """
    Which configuration file to read: the one given on the command line
    (C{--config}), else the one C{$IMGATEWAY_CONFIG} names, else
    L{DEFAULT_CONFIG_PATH}. Nothing depends on the current directory except
    a relative path the operator gave.

    @param given: The C{--config} option's value, or C{None}.
    @param environ: The environment.
    @param default: The file read when nothing names one.
    @return: The path to read.
    @raise ConfigError: If the file was not given on the command line and
        does not exist; the message says where it was looked for and how to
        name another.
    """
    if given:
        return given
    fromEnvironment = environ.get(CONFIG_ENVIRONMENT)
    if fromEnvironment:
        if not os.path.exists(fromEnvironment):
            raise ConfigError(f"{fromEnvironment} (from ${CONFIG_ENVIRONMENT}): no such file")
        return fromEnvironment
    if not os.path.exists(default):
        raise ConfigError(
            f"no configuration file: {default} does not exist (give --config FILE or set ${CONFIG_ENVIRONMENT}; "
            "etc/imgateway.toml in the source is an example with every key)"
        )
    return default


def loadConfig(
    path: str,
    reactor: IReactorCore,
    adapterParsers: Mapping[str, Callable[[ConfigTable, IReactorCore], object]],
) -> GatewayConfig:
    """
    Read and check a configuration file.

    @param adapterParsers: As for L{parseConfig}: for the installed adapter
        plugins, L{imgateway.plugins.adapterConfigParsers}. (This module
        knows no adapter: they depend on it, not the reverse.)
    @raise ConfigError: If the file cannot be read, is not TOML, or is wrong.
    """
    fp = FilePath(path)
    try:
        with open(fp.path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parseConfig(data, fp, reactor, adapterParsers)
