"""
Helpers of the end-to-end tests that run a domain on several real
C{twistd imgateway} processes (routers and home servers, C{[servers]} and
server links): the link certificates from a test authority and each
process's C{[links]} table (L{LinkCertificates}), an in-process link
certificate (L{linkTLS}), two linked home servers (L{linkedHomeServers}),
a router with one home server (L{RouterAndHome}), and a router with two
home servers, on an LDAP directory or on a shared one (L{RouterAndTwoHomes}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, quoteStringArgument, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.trial.unittest import TestCase

from imgateway._testcerts import CertificateAuthority, certificatePEM, keyPEM, writePEM
from imgateway.auth.sasl import clientMechanism
from imgateway.client.protocol import NativeClientProtocol
from imgateway.home.store import SQLiteHomeStore
from imgateway.net.tls import TLSFiles
from imgateway.router.link import LinkTLS
from tests.e2e.harness import DOMAIN, GatewayProcess, freePort, makeCertificates, rawConnect, reactor, tlsServerEndpoint
from tests.e2e.slapd import BIND_DN, BIND_PASSWORD, PEOPLE, SlapdServer
from tests.e2e.xmppclient import XMPPAgent

__all__ = [
    "CACHE_SECONDS",
    "OUTSIDE",
    "LinkCertificates",
    "RouterAndHome",
    "RouterAndTwoHomes",
    "linkTLS",
    "linkedHomeServers",
    "peerPort",
]

#: Where clients come from that are not in a router's internal network
#: (C{127.0.0.1/32} in these tests).
OUTSIDE = "127.0.0.2"


def linkTLS(authority: CertificateAuthority, names: Sequence[str], roots: CertificateAuthority | None = None) -> LinkTLS:
    """
    A link certificate for C{names} issued by C{authority}, trusting
    C{roots} (C{authority} by default), for links run in the test's own
    process.
    """
    key, certificate = authority.issue(list(names), clientAuth=True)
    return LinkTLS(TLSFiles("memory.crt", "memory.key", (certificate,), key), ((roots or authority).certificate,))


class LinkCertificates:
    """
    A test certificate authority that signs each server's link certificate,
    and the files of the servers' C{[links]} tables, in C{folder}.

    @ivar authority: The authority.
    @ivar trustRoots: Its certificate's file (every server's
        C{trust_roots}).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.authority = CertificateAuthority()
        self.trustRoots = writePEM(os.path.join(folder, "ca.crt"), certificatePEM(self.authority.certificate))

    def files(self, name: str, names: Sequence[str] | None = None) -> dict[str, object]:
        """
        Issue server C{name}'s link certificate, for C{names}
        (C{NAME.corp.example} by default), and write it and its key.

        @return: The C{certificate} and C{private_key} keys of C{[links]}.
        """
        key, certificate = self.authority.issue(list(names or [f"{name}.{DOMAIN}"]), clientAuth=True)
        return {
            "certificate": writePEM(os.path.join(self.folder, f"{name}.crt"), certificatePEM(certificate)),
            "private_key": writePEM(os.path.join(self.folder, f"{name}.key"), keyPEM(key)),
        }

    def links(
        self,
        name: str,
        listen: int | None = None,
        names: Sequence[str] | None = None,
        requestTimeout: float = 3,
        reconnectMaxDelay: float = 2,
        more: Mapping[str, object] | None = None,
    ) -> dict[str, object]:
        """
        Server C{name}'s C{[links]} table: its certificate (L{files}), the
        authority as trust roots, short time limits, and C{more} keys.

        @param listen: The loopback port it listens for links on, or
            C{None} for a server that only connects.
        """
        table: dict[str, object] = {}
        if listen is not None:
            table["listen"] = [f"tcp:{listen}:interface=127.0.0.1"]
        table.update(self.files(name, names))
        table.update({"trust_roots": self.trustRoots, "request_timeout": requestTimeout, "reconnect_max_delay": reconnectMaxDelay})
        table.update(more or {})
        return table


def linkedHomeServers(
    testCase: TestCase, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[GatewayProcess, GatewayProcess]:
    """
    Two home servers of corp.example, C{hs1} (alice, C{"alice's password"})
    and C{hs2} (carol, C{"carol's password"}), sharing one directory (one
    C{data_dir}, as the single-host lab), linked over TLS; not started.

    @param extra: More tables of each process, by server name.
    """
    folder = os.path.abspath(testCase.mktemp())
    os.makedirs(folder)
    shared = os.path.join(folder, "data")
    certificates = LinkCertificates(folder)
    ports = {"hs1": freePort(), "hs2": freePort()}
    servers = {name: {"roles": ["home"], "link": f"127.0.0.1:{port}", "tls_name": f"{name}.{DOMAIN}"} for name, port in ports.items()}
    processes = []
    for name in ("hs1", "hs2"):
        tables: dict[str, Any] = {
            "gateway": {"home_server": name, "data_dir": shared},
            "servers": servers,
            "links": certificates.links(name, listen=ports[name], requestTimeout=2),
            **(extra or {}).get(name, {}),
        }
        processes.append(GatewayProcess(testCase, tables, directory=os.path.join(folder, name)))
    hs1, hs2 = processes
    hs1.addUser("alice", "alice's password")
    hs2.addUser("carol", "carol's password")
    return hs1, hs2


class RouterAndHome:
    """
    A router (C{router}, roles C{["router"]}) and a home server (C{hs1})
    of one domain, as two processes on one data folder (so one SQLite
    directory); the users of C{passwords} are homed on C{hs1}. The router's
    C{internal_networks} is C{127.0.0.1/32}; both run the native face, and
    with C{xmpp} the c2s face too (STARTTLS, a certificate for the domain
    from a test authority). With C{tls}, each native face also has a
    C{tls:} listener with a certificate for C{localhost}, and hs1's
    C{native} names that one (C{localhost:PORT}). With C{links}, they are
    linked over TLS (both certificates checked): hs1 listens for links,
    the router connects, with C{linkKeys} added to both C{[links]} tables.
    """

    def __init__(
        self,
        testCase: TestCase,
        passwords: Mapping[str, str],
        xmpp: bool = False,
        tls: bool = False,
        links: bool = False,
        linkKeys: Mapping[str, object] | None = None,
    ) -> None:
        root = os.path.abspath(testCase.mktemp())
        os.makedirs(root)
        self.testCase = testCase
        self.passwords = passwords
        shared = os.path.join(root, "data")
        self.routerPort, self.homePort = freePort(), freePort()
        hs1: dict[str, object] = {"roles": ["home"], "native": f"127.0.0.1:{self.homePort}"}
        router: dict[str, object] = {"roles": ["router"], "native": f"127.0.0.1:{self.routerPort}"}
        tables: dict[str, dict[str, Any]] = {
            "gateway": {"data_dir": shared},
            "servers": {"router": router, "hs1": hs1},
            "router": {"internal_networks": ["127.0.0.1/32"]},
        }
        routerWait, homeWait = [self.routerPort], [self.homePort]
        routerOwn: dict[str, Any] = {}
        homeOwn: dict[str, Any] = {}
        if links:
            certificates = LinkCertificates(root)
            self.linkPort = freePort()
            router["tls_name"] = f"router.{DOMAIN}"
            hs1.update({"link": f"127.0.0.1:{self.linkPort}", "tls_name": f"hs1.{DOMAIN}"})
            routerOwn["links"] = certificates.links("router", more=linkKeys)
            homeOwn["links"] = certificates.links("hs1", listen=self.linkPort, more=linkKeys)
            homeWait.append(self.linkPort)
        if tls:
            self.tlsCAPath, tlsDir = makeCertificates(os.path.join(root, "tls"), "localhost")
            self.routerTLSPort, self.homeTLSPort = freePort(), freePort()
            hs1["native"] = f"localhost:{self.homeTLSPort}"
            routerOwn["native"] = {"listen": [f"tcp:{self.routerPort}:interface=127.0.0.1", tlsServerEndpoint(tlsDir, self.routerTLSPort)]}
            homeOwn["native"] = {"listen": [f"tcp:{self.homePort}:interface=127.0.0.1", tlsServerEndpoint(tlsDir, self.homeTLSPort)]}
            routerWait.append(self.routerTLSPort)
            homeWait.append(self.homeTLSPort)
        if xmpp:
            self.caPath, serverDir = makeCertificates(os.path.join(root, "certs"), DOMAIN)
            pem = os.path.join(serverDir, f"{DOMAIN}.pem")
            self.routerXMPPPort, self.homeXMPPPort = freePort(), freePort()
            hs1["xmpp"] = f"127.0.0.1:{self.homeXMPPPort}"
            router["xmpp"] = f"127.0.0.1:{self.routerXMPPPort}"
            keys = {"certificate": pem, "private_key": pem}
            routerOwn["xmpp"] = {"listen": [f"tcp:{self.routerXMPPPort}:interface=127.0.0.1"], **keys}
            homeOwn["xmpp"] = {"listen": [f"tcp:{self.homeXMPPPort}:interface=127.0.0.1"], **keys}
            routerWait.append(self.routerXMPPPort)
            homeWait.append(self.homeXMPPPort)
        self.router = GatewayProcess(
            testCase,
            {**tables, "gateway": {**tables["gateway"], "home_server": "router"}, **routerOwn},
            directory=os.path.join(root, "router"),
            port=self.routerPort,
            waitPorts=routerWait,
        )
        self.home = GatewayProcess(
            testCase,
            {**tables, "gateway": {**tables["gateway"], "home_server": "hs1"}, **homeOwn},
            directory=os.path.join(root, "hs1"),
            port=self.homePort,
            waitPorts=homeWait,
        )
        # Made with hs1's configuration: homed on hs1.
        self.home.addUsers(dict(passwords))

    async def start(self) -> None:
        """
        Start the home server, then the router.
        """
        await self.home.start()
        await self.router.start()

    @property
    def outside(self) -> str:
        """
        The router's native endpoint, from outside its internal network.
        """
        return f"{self.router.endpoint}:bindAddress={OUTSIDE}"

    def agent(self, **kwargs: Any) -> XMPPAgent:
        """
        An XMPP client of carol's at the router's c2s face (STARTTLS).
        """
        options: dict[str, Any] = {"tls": "starttls", "caFile": self.caPath}
        options.update(kwargs)
        return XMPPAgent(self.testCase, f"carol@{DOMAIN}/agent", self.passwords["carol"], self.routerXMPPPort, **options)


#: The processes' C{[router] directory_cache_seconds} (short, so that a
#: changed home attribute counts soon).
CACHE_SECONDS = 1.0

#: The processes of the domain, in the order they start.
NAMES = ("hs1", "hs2", "router")


class RouterAndTwoHomes:
    """
    corp.example served by three processes: C{hs1} and C{hs2} (roles
    C{["home"]}) and C{router} (roles C{["router"]}, internal network
    C{127.0.0.1/32}), linked over TLS with link certificates from a test
    authority (both ends checked). Each runs the native face on the
    loopback TCP port the harness probes. The home servers listen for
    links; the router only connects, or listens too with C{routerLinks}.

    With C{slapd}, the directory is that LDAP server (C{default_home} hs1,
    the router's C{directory_cache_seconds} L{CACHE_SECONDS}) and each
    process keeps its own data folder; without, the three share one data
    folder (one SQLite directory: users made with a home server's
    C{addUsers} are homed there).

    With C{nativeTLS}, each native face also has a TLS listener with a
    certificate for C{localhost} from another test authority, and
    C{[servers.NAME] native} names it (C{localhost:PORT}) instead of the TCP
    port (C{127.0.0.1:PORT}).

    @ivar processes: The three processes, by name (not started).
    @ivar tlsPorts: With C{nativeTLS}, their native TLS ports, by name.
    @ivar caPath: With C{nativeTLS}, the authority of their certificates.
    """

    def __init__(
        self,
        testCase: TestCase,
        slapd: SlapdServer | None = None,
        nativeTLS: bool = False,
        routerLinks: bool = False,
        linkTimeout: float = 3,
        more: Mapping[str, Mapping[str, Any]] | None = None,
        morePorts: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """
        @param linkTimeout: The C{[links] request_timeout} of all three.
        @param more: More tables of each process, by name (one of a name
            used above replaces it).
        @param morePorts: More ports that show a process is up, by name.
        """
        folder = os.path.abspath(testCase.mktemp())
        os.makedirs(folder)
        self.testCase = testCase
        self.slapd = slapd
        certificates = LinkCertificates(folder)
        ports = {name: (freePort(), freePort(), freePort()) for name in NAMES}
        self.tlsPorts = {name: ports[name][1] for name in NAMES} if nativeTLS else {}
        listens = {name: name != "router" or routerLinks for name in NAMES}
        servers: dict[str, dict[str, object]] = {}
        for name in NAMES:
            tcpPort, tlsPort, linkPort = ports[name]
            servers[name] = {
                "roles": ["router"] if name == "router" else ["home"],
                "tls_name": f"{name}.{DOMAIN}",
                "native": f"localhost:{tlsPort}" if nativeTLS else f"127.0.0.1:{tcpPort}",
            }
            if listens[name]:
                servers[name]["link"] = f"127.0.0.1:{linkPort}"
        common: dict[str, Any] = {"servers": servers, "router": {"internal_networks": ["127.0.0.1/32"]}}
        gateway: dict[str, Any] = {}
        if slapd is not None:
            passwordFile = writePEM(os.path.join(folder, "bind-password"), BIND_PASSWORD.encode() + b"\n")
            common["router"]["directory_cache_seconds"] = CACHE_SECONDS
            common["directory"] = {
                "backend": "ldap",
                "url": slapd.tlsURL,
                "ca_file": slapd.caPath,
                "bind_dn": BIND_DN,
                "bind_password_file": passwordFile,
                "base_dn": PEOPLE,
                "home_attribute": "imgatewayHomeServer",
                "default_home": "hs1",
            }
        else:
            gateway["data_dir"] = os.path.join(folder, "data")
        if nativeTLS:
            self.caPath, nativeDir = makeCertificates(os.path.join(folder, "native"), "localhost")
        self.processes: dict[str, GatewayProcess] = {}
        for name in NAMES:
            tcpPort, tlsPort, linkPort = ports[name]
            tables: dict[str, Any] = {
                **common,
                "gateway": {**gateway, "home_server": name},
                "links": certificates.links(name, listen=linkPort if listens[name] else None, requestTimeout=linkTimeout),
            }
            wait = [tcpPort]
            if nativeTLS:
                tables["native"] = {"listen": [f"tcp:{tcpPort}:interface=127.0.0.1", tlsServerEndpoint(nativeDir, tlsPort)]}
                wait.append(tlsPort)
            if listens[name]:
                wait.append(linkPort)
            self.processes[name] = GatewayProcess(
                testCase,
                {**tables, **(more or {}).get(name, {})},
                directory=os.path.join(folder, name),
                port=tcpPort,
                waitPorts=wait + list((morePorts or {}).get(name, ())),
            )

    async def start(self) -> None:
        """
        Start the home servers, then the router.
        """
        for name in NAMES:
            await self.processes[name].start()

    @property
    def router(self) -> GatewayProcess:
        return self.processes["router"]

    def internal(self) -> str:
        """
        The router's native TLS face from 127.0.0.1, as a string the
        shipped client follows redirects from (same TLS choice, same trust
        roots, C{localhost} checked).
        """
        roots = quoteStringArgument(os.path.dirname(self.caPath))
        return f"tls:localhost:{self.tlsPorts['router']}:trustRoots={roots}"

    def external(self, name: str = "router") -> IStreamClientEndpoint:
        """
        A TLS connection to C{name}'s native face from 127.0.0.2 (outside the
        router's internal network), checking its certificate for
        C{localhost}.
        """
        with open(self.caPath, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        tcp = TCP4ClientEndpoint(reactor(), "127.0.0.1", self.tlsPorts[name], bindAddress=(OUTSIDE, 0))
        return wrapClientTLS(ssl.optionsForClientTLS("localhost", authority), tcp)

    async def auth(self, endpoint: str | IStreamClientEndpoint, user: str, password: str) -> tuple[int, str, str | None]:
        """
        One PLAIN C{AUTH} on a raw connection to C{endpoint}.

        @return: The answer's status, reason and C{Error} header.
        """
        raw = await rawConnect(self.testCase, endpoint)
        body = clientMechanism("PLAIN", user, password).start()
        raw.send(f"AUTH * IMGW/1.0\r\nSeq: 1\r\nMechanism: PLAIN\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await raw.waitFor(lambda: raw.responses(), 10, "the answer to AUTH")
        [r] = raw.responses()
        await raw.close()
        return r.code, r.reason, r.headers.get("Error")

    async def store(self, name: str) -> SQLiteHomeStore:
        """
        Open the store of home server C{name} (in its own C{data_dir}).
        """
        process = self.processes[name]
        path = os.path.join(process.tables["gateway"]["data_dir"], f"home-{name}.sqlite3")
        store = await SQLiteHomeStore.open(reactor(), path)
        self.testCase.addCleanup(store.close)
        return store


def peerPort(client: NativeClientProtocol) -> int:
    """
    The port of the server a client is connected to.
    """
    return client.transport.getPeer().port  # type: ignore[union-attr, no-any-return]
