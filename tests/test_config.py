"""
Tests for L{imgateway.config}: the shipped config, defaults, and errors that
name the file, table and key.
"""

from __future__ import annotations

import os
from ipaddress import ip_network

from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import (
    CONFIG_ENVIRONMENT,
    DEFAULT_CONFIG_PATH,
    GatewayConfig,
    HomeConfig,
    HostPort,
    LinksConfig,
    RouterConfig,
    ServerConfig,
    findConfig,
    loadConfig,
)
from imgateway.core.errors import ConfigError
from imgateway.plugins import adapterConfigParsers
from imgateway.sqlite import Durability

REPO = FilePath(__file__).parent().parent()


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig}.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return str(path)

    def load(self, text: str) -> object:
        return loadConfig(self.write(text), MemoryReactor(), adapterConfigParsers())

    def test_shipped(self) -> None:
        """
        C{etc/imgateway.toml} loads; its data dir resolves against the
        file's folder; it enables the native face on loopback.
        """
        config = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertEqual(config.domain, "corp.example")
        self.assertEqual(config.dataDir, REPO.child("data"))
        self.assertEqual(config.home, HomeConfig())
        self.assertEqual(list(config.adapters), ["native"])

    def test_minimal(self) -> None:
        """
        A C{[gateway]} table with a domain is enough; the domain is
        normalised.
        """
        config = self.load('[gateway]\ndomain = "Corp.Example."\n')
        self.assertEqual(config.domain, "corp.example")  # type: ignore[attr-defined]
        self.assertEqual(config.adapters, {})  # type: ignore[attr-defined]

    def test_disabledAdapter(self) -> None:
        """
        An adapter table with C{enabled = false} is checked but not started.
        """
        config = self.load('[gateway]\ndomain = "x.example"\n[native]\nenabled = false\n')
        self.assertEqual(config.adapters, {})  # type: ignore[attr-defined]

    def test_homeQuotas(self) -> None:
        """
        The C{[home]} quotas are read from their keys, C{max_pending_requests}
        included.
        """
        config = self.load('[gateway]\ndomain = "x.example"\n[home]\nmax_pending_requests = 7\nmax_contacts = 9\n')
        self.assertEqual(config.home, HomeConfig(maxPendingRequests=7, maxContacts=9))  # type: ignore[attr-defined]
        self.assertConfigError(
            '[gateway]\ndomain = "x.example"\n[home]\nmax_pending_requests = 0\n',
            "[home]: max_pending_requests: must be greater than 0",
        )

    def test_autoReplyPeriod(self) -> None:
        """
        C{[home] auto_reply_period} (seconds) is read, 3600 by default; it
        must be positive.
        """
        self.assertEqual(self.load('[gateway]\ndomain = "x.example"\n').home.autoReplyPeriod, 3600.0)  # type: ignore[attr-defined]
        config = self.load('[gateway]\ndomain = "x.example"\n[home]\nauto_reply_period = 60\n')
        self.assertEqual(config.home.autoReplyPeriod, 60.0)  # type: ignore[attr-defined]
        self.assertConfigError(
            '[gateway]\ndomain = "x.example"\n[home]\nauto_reply_period = 0\n',
            "[home]: auto_reply_period: must be greater than 0",
        )

    def assertConfigError(self, text: str, message: str) -> None:
        e = self.assertRaises(ConfigError, self.load, text)
        self.assertIn(message, str(e))

    def test_errors(self) -> None:
        """
        Each mistake gives one message naming the file, table and key.
        """
        self.assertConfigError("[gateway]\n", "[gateway]: domain: missing (required)")
        self.assertConfigError('[gateway]\ndomain = "x.example"\ncolour = 1\n', "[gateway]: colour: unknown key")
        self.assertConfigError('[gateway]\ndomain = "bad domain"\n', "[gateway]: domain: invalid domain")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[home]\nmax_sessions_per_user = 0\n', "max_sessions_per_user: must be greater than 0")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[home]\npresence_lease = "long"\n', "presence_lease: expected float")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[auth]\nscram_iterations = 100\n', "at least 4096")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[telepathy]\n', "[telepathy]: unknown table (protocol adapters: irc, native, xmpp)")
        self.assertConfigError('[gateway]\ndomain = "x.example"\n[native]\nlisten = ["tcp:notaport"]\n', "[native]: listen: bad endpoint")
        self.assertConfigError("[gateway\n", "not valid TOML")

    def test_durability(self) -> None:
        """
        C{[gateway] durability} is C{"process"} (the default, also in the
        shipped config) or C{"power"}; anything else is refused, naming the
        key and the choices.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertIs(shipped.durability, Durability.PROCESS)
        config = self.load('[gateway]\ndomain = "x.example"\n')
        self.assertIs(config.durability, Durability.PROCESS)  # type: ignore[attr-defined]
        config = self.load('[gateway]\ndomain = "x.example"\ndurability = "process"\n')
        self.assertIs(config.durability, Durability.PROCESS)  # type: ignore[attr-defined]
        config = self.load('[gateway]\ndomain = "x.example"\ndurability = "power"\n')
        self.assertIs(config.durability, Durability.POWER)  # type: ignore[attr-defined]
        self.assertConfigError(
            '[gateway]\ndomain = "x.example"\ndurability = "disk"\n',
            "[gateway]: durability: must be \"process\" or \"power\", got 'disk'",
        )
        self.assertConfigError('[gateway]\ndomain = "x.example"\ndurability = 2\n', "durability: expected str")

    def test_unreadable(self) -> None:
        """
        A missing file is an error naming it.
        """
        e = self.assertRaises(ConfigError, loadConfig, "/nonexistent/imgw.toml", MemoryReactor(), {})
        self.assertEqual(str(e), "/nonexistent/imgw.toml: cannot read: No such file or directory")


class FindConfigTests(SynchronousTestCase):
    """
    L{findConfig}: which file is read when, never depending on the current
    directory.
    """

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.default = self.folder.child("default.toml")
        self.default.setContent(b"")
        self.other = self.folder.child("other.toml")
        self.other.setContent(b"")

    def test_given(self) -> None:
        """
        The file given on the command line wins, as given (a relative path
        is the operator's, relative to where they are).
        """
        environ = {CONFIG_ENVIRONMENT: self.other.path}
        self.assertEqual(findConfig("etc/imgateway.toml", environ, self.default.path), "etc/imgateway.toml")

    def test_environment(self) -> None:
        """
        Without C{--config}, C{$IMGATEWAY_CONFIG} names the file.
        """
        environ = {CONFIG_ENVIRONMENT: self.other.path}
        self.assertEqual(findConfig(None, environ, self.default.path), self.other.path)

    def test_environmentMissing(self) -> None:
        """
        A file that C{$IMGATEWAY_CONFIG} names and that does not exist is an
        error naming the variable.
        """
        missing = self.folder.child("missing.toml").path
        e = self.assertRaises(ConfigError, findConfig, None, {CONFIG_ENVIRONMENT: missing}, self.default.path)
        self.assertEqual(str(e), f"{missing} (from $IMGATEWAY_CONFIG): no such file")

    def test_default(self) -> None:
        """
        Otherwise the default file is read: C{/etc/imgateway/imgateway.toml},
        whatever the current directory holds.
        """
        self.assertEqual(DEFAULT_CONFIG_PATH, "/etc/imgateway/imgateway.toml")
        self.assertEqual(findConfig(None, {}, self.default.path), self.default.path)
        self.assertEqual(findConfig(None, {CONFIG_ENVIRONMENT: ""}, self.default.path), self.default.path)
        here = FilePath(os.getcwd())
        self.addCleanup(os.chdir, here.path)
        os.chdir(REPO.path)
        self.assertTrue(REPO.child("etc").child("imgateway.toml").exists())
        self.assertEqual(findConfig(None, {}, self.default.path), self.default.path)

    def test_defaultMissing(self) -> None:
        """
        When nothing names a file and the default does not exist, the error
        says where it looked and how to name another.
        """
        missing = self.folder.child("missing.toml").path
        e = self.assertRaises(ConfigError, findConfig, None, {}, missing)
        self.assertIn(f"no configuration file: {missing} does not exist", str(e))
        self.assertIn("--config FILE", str(e))
        self.assertIn("$IMGATEWAY_CONFIG", str(e))


class TopologyConfigTests(SynchronousTestCase):
    """
    The tables of a domain served by many processes: C{[router]},
    C{[links]}, C{[servers.NAME]} and C{[routes]}.
    """

    def load(self, text: str) -> GatewayConfig:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[gateway]\ndomain = "corp.example"\nhome_server = "hs2"\n' + text)
        return loadConfig(path, MemoryReactor(), adapterConfigParsers())

    def assertConfigError(self, text: str, message: str) -> None:
        e = self.assertRaises(ConfigError, self.load, text)
        self.assertIn(message, str(e))

    def test_defaults(self) -> None:
        """
        Without the tables, the process is a single-host gateway: no
        router role, no link listener, no other servers, no static routes.
        """
        config = self.load("")
        self.assertEqual(config.router, RouterConfig())
        self.assertEqual(config.roles, {"home"})
        self.assertEqual(config.links, LinksConfig())
        self.assertEqual(config.servers, {})
        self.assertEqual(config.routes, {})

    def test_servers(self) -> None:
        """
        Each C{[servers.NAME]} table names a server with its roles and
        addresses; an IPv6 host is written in brackets; C{tls_name} defaults
        to nothing (the link's host is checked).
        """
        config = self.load(
            '[servers.hs2]\nlink = "127.0.0.3:5311"\nnative = "[::1]:5300"\n'
            '[servers.router]\nroles = ["router"]\nlink = "Router.Corp.Example:5310"\ntls_name = "corp.example"\n'
        )
        self.assertEqual(
            config.servers["hs2"],
            ServerConfig("hs2", frozenset({"home"}), HostPort("127.0.0.3", 5311), None, HostPort("::1", 5300)),
        )
        router = config.servers["router"]
        self.assertEqual(
            (router.roles, router.link, router.tlsName),
            (frozenset({"router"}), HostPort("router.corp.example", 5310), "corp.example"),
        )
        self.assertEqual(str(HostPort("::1", 5300)), "[::1]:5300")

    def test_serverErrors(self) -> None:
        """
        Bad roles, addresses, unknown keys, and a C{home_server} that is not
        a home among the C{[servers]} are errors naming the key.
        """
        self.assertConfigError('[servers.hs2]\nroles = ["hub"]\n', "[servers].hs2: roles:")
        self.assertConfigError('[servers.hs2]\nroles = []\n', "roles:")
        self.assertConfigError('[servers.hs2]\nlink = "hs2.corp.example"\n', "link: expected host:port")
        self.assertConfigError('[servers.hs2]\nlink = "::1:5310"\n', "link: an IPv6 address must be in brackets")
        self.assertConfigError('[servers.hs2]\nlink = "h:0"\n', "link: expected host:port")
        self.assertConfigError('[servers.hs2]\nport = 1\n', "port: unknown key")
        self.assertConfigError('[servers."h s"]\n', "a server's name must be a simple name")
        self.assertConfigError('[servers.hs1]\n', "home_server: 'hs2' is not one of the [servers] tables (hs1)")

    def test_roles(self) -> None:
        """
        The process's roles are those of its own C{[servers]} table.
        """
        config = self.load('[servers.hs2]\nroles = ["router"]\n[servers.hs1]\n')
        self.assertEqual(config.roles, {"router"})
        self.assertEqual(config.servers["hs1"].roles, {"home"})

    def test_router(self) -> None:
        """
        C{[router]} reads the internal networks (CIDR, IPv4 and
        IPv6) and the directory cache lifetime.
        """
        config = self.load(
            '[router]\ninternal_networks = ["10.0.0.0/8", "fd00::/8"]\ndirectory_cache_seconds = 5\n'
        )
        self.assertEqual(
            config.router, RouterConfig((ip_network("10.0.0.0/8"), ip_network("fd00::/8")), 5.0)
        )
        self.assertConfigError(
            '[router]\ninternal_networks = ["10.0.0.1/8"]\n', "internal_networks: 10.0.0.1/8 has host bits set"
        )
        self.assertConfigError('[router]\ninternal_networks = [10]\n', "internal_networks: expected CIDR strings")
        self.assertConfigError("[router]\ndirectory_cache_seconds = 0\n", "directory_cache_seconds: must be greater than 0")

    def test_linksMaxQueueDefault(self) -> None:
        """
        C{[links] max_queue} is 10000 by default and in the shipped config:
        a request counts until its answer is back, so 1000 overflowed with
        50 closed-loop senders through a router.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertEqual(shipped.links.maxQueue, 10000)
        self.assertEqual(self.load("").links.maxQueue, 10000)

    def test_links(self) -> None:
        """
        C{[links]} reads its listeners (checked as endpoints), files that
        must exist, and its limits; a certificate needs its key.
        """
        cert = os.path.abspath(self.mktemp())
        with open(cert, "w") as f:
            f.write("x")
        config = self.load(
            f'[links]\nlisten = ["tcp:5310:interface=127.0.0.1"]\ncertificate = "{cert}"\nprivate_key = "{cert}"\n'
            "max_queue = 3\nrequest_timeout = 2.5\nallow_plaintext_loopback = true\n"
        )
        self.assertEqual(config.links.listen, ("tcp:5310:interface=127.0.0.1",))
        self.assertEqual((config.links.certificate, config.links.privateKey), (cert, cert))
        self.assertEqual((config.links.maxQueue, config.links.requestTimeout), (3, 2.5))
        self.assertTrue(config.links.allowPlaintextLoopback)
        self.assertConfigError(f'[links]\ncertificate = "{cert}"\n', "certificate and private_key go together")
        self.assertConfigError('[links]\ntrust_roots = "/nonexistent/ca.pem"\n', "trust_roots: cannot read")
        self.assertConfigError('[links]\nlisten = ["nonsense:1"]\n', "listen: bad endpoint")
        self.assertConfigError("[links]\nmax_hops = 0\n", "max_hops: must be greater than 0")

    def test_linksFrameLimits(self) -> None:
        """
        C{[links] max_start_line_bytes} (4096, at least 64),
        C{max_header_bytes} (32768), C{max_headers} (128) and
        C{max_body_bytes} (1 MiB) are what a link takes from its peer, as
        shipped; each is refused below its bound and taken at it.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        for links in (shipped.links, self.load("").links):
            self.assertEqual(
                (links.maxStartLineBytes, links.maxHeaderBytes, links.maxHeaders, links.maxBodyBytes),
                (4096, 32768, 128, 1048576),
            )
        self.assertConfigError("[links]\nmax_start_line_bytes = 63\n", "max_start_line_bytes: must be at least 64")
        self.assertEqual(self.load("[links]\nmax_start_line_bytes = 64\n").links.maxStartLineBytes, 64)
        for key, field in (("max_header_bytes", "maxHeaderBytes"), ("max_headers", "maxHeaders"), ("max_body_bytes", "maxBodyBytes")):
            self.assertConfigError(f"[links]\n{key} = 0\n", f"{key}: must be greater than 0")
            self.assertEqual(getattr(self.load(f"[links]\n{key} = 1\n").links, field), 1)

    def test_linksRememberedAndNoRoute(self) -> None:
        """
        C{[links] max_remembered} (100000 answers of the duplicate check)
        and C{no_route_seconds} (60 s a domain without a link route is not
        looked up again), as shipped; 0 is refused, 1 taken.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        for links in (shipped.links, self.load("").links):
            self.assertEqual((links.maxRemembered, links.noRouteSeconds), (100000, 60.0))
        self.assertConfigError("[links]\nmax_remembered = 0\n", "max_remembered: must be greater than 0")
        self.assertEqual(self.load("[links]\nmax_remembered = 1\n").links.maxRemembered, 1)
        self.assertConfigError("[links]\nno_route_seconds = 0\n", "no_route_seconds: must be greater than 0")
        self.assertEqual(self.load("[links]\nno_route_seconds = 1\n").links.noRouteSeconds, 1.0)

    def assertGatewayMinimum(self, key: str, attribute: str, default: int, minimum: int) -> None:
        """
        C{[gateway] key} is C{default} when absent and as shipped in
        C{etc/imgateway.toml}, C{minimum} is taken and one less refused
        with a message naming the key.

        @param attribute: The loaded configuration's attribute for C{key}.
        """
        shipped = loadConfig(REPO.child("etc").child("imgateway.toml").path, MemoryReactor(), adapterConfigParsers())
        self.assertEqual((getattr(shipped, attribute), getattr(self.load(""), attribute)), (default, default))
        path = self.mktemp()
        below = minimum - 1
        for value, problem in ((below, f"{key}: must be at least {minimum}, got {below}"), (minimum, None)):
            with open(path, "w") as f:
                f.write(f'[gateway]\ndomain = "corp.example"\n{key} = {value}\n')
            if problem is None:
                self.assertEqual(getattr(loadConfig(path, MemoryReactor(), adapterConfigParsers()), attribute), value)
            else:
                e = self.assertRaises(ConfigError, loadConfig, path, MemoryReactor(), adapterConfigParsers())
                self.assertIn(problem, str(e))

    def test_gcYoungObjects(self) -> None:
        """
        C{[gateway] gc_young_objects} is 10000 by default and as shipped; at
        least 100 (99 is refused, 100 taken).
        """
        self.assertGatewayMinimum("gc_young_objects", "gcYoungObjects", 10000, 100)

    def test_sqliteCacheKiB(self) -> None:
        """
        C{[gateway] sqlite_cache_kib} is 256 by default and as shipped (an
        eighth of SQLite's own 2000); at least 64 (63 is refused, 64 taken).
        """
        self.assertGatewayMinimum("sqlite_cache_kib", "sqliteCacheKiB", 256, 64)

    def test_linksDNSServers(self) -> None:
        """
        C{[links] dns_servers} lists the DNS servers asked for C{_imgw._tcp}
        records as C{host:port}; none by default (the system's resolver).
        """
        self.assertEqual(self.load("").links.dnsServers, ())
        config = self.load('[links]\ndns_servers = ["127.0.0.1:5353", "[::1]:53"]\n')
        self.assertEqual(config.links.dnsServers, (HostPort("127.0.0.1", 5353), HostPort("::1", 53)))
        self.assertConfigError('[links]\ndns_servers = ["127.0.0.1"]\n', "dns_servers: expected host:port")
        self.assertConfigError("[links]\ndns_servers = [53]\n", "dns_servers: expected host:port strings")

    def test_routes(self) -> None:
        """
        C{[routes]} maps normalised peer domains to their routers' link
        addresses.
        """
        config = self.load('[routes]\n"Partner.Example" = "router.partner.example:5310"\n')
        self.assertEqual(config.routes, {"partner.example": HostPort("router.partner.example", 5310)})
        self.assertConfigError('[routes]\n"partner.example" = "nowhere"\n', "partner.example: expected host:port")
