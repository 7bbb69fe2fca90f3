# -*- test-case-name: tests.test_examples -*-
"""
The example configurations of C{etc/examples/} (a router and two home
servers on one machine) load as the walk-through of docs/operations.md,
"Many servers on one machine", leaves them: with the certificates its
C{imgateway-admin certs} commands make.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys

from cryptography import x509
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from imgateway.adapters.irc.face import IRCConfig
from imgateway.adapters.native.server import NativeConfig
from imgateway.adapters.xmpp.adapter import XMPPConfig
from imgateway.admin.cli import main
from imgateway.config import loadConfig
from imgateway.plugins import adapterConfigParsers
from tests.test_imports import REPO

EXAMPLES = REPO.child("etc").child("examples")

#: The examples, by the name of the process each configures.
NAMES = ("router", "hs1", "hs2")


def walkThrough() -> list[list[str]]:
    """
    The C{imgateway-admin} command lines of the walk-through in
    docs/operations.md, "Many servers on one machine", in order.
    """
    text = REPO.child("docs").child("operations.md").getContent().decode("utf-8")
    section = text.split("### Many servers on one machine\n", 1)[1].split("\n### ", 1)[0]
    return [shlex.split(line) for line in section.splitlines() if line.startswith("    imgateway-admin ")]


class ExampleTests(SynchronousTestCase):
    """
    C{etc/examples/router.toml}, C{hs1.toml} and C{hs2.toml}.
    """

    def setUp(self) -> None:
        """
        Copy the examples, as the walk-through does, and make the
        certificates its C{imgateway-admin certs} commands make, in the
        copy.
        """
        self.folder = os.path.abspath(self.mktemp())
        shutil.copytree(EXAMPLES.path, self.folder)
        cwd = os.getcwd()
        os.chdir(self.folder)
        self.addCleanup(os.chdir, cwd)
        self.patch(sys, "stdout", io.StringIO())
        commands = [argv for argv in walkThrough() if argv[1] == "certs"]
        self.assertEqual([argv[2] for argv in commands], ["ca", "server", "server", "server", "server"])
        for argv in commands:
            e = self.assertRaises(SystemExit, main, argv[1:])
            self.assertEqual(e.code, 0, argv)
        self.configs = {
            name: loadConfig(os.path.join(self.folder, f"{name}.toml"), MemoryReactor(), adapterConfigParsers())
            for name in NAMES
        }

    def test_processes(self) -> None:
        """
        Each configures the process of its name: a router, and two home
        servers, of one domain, sharing one data folder.
        """
        for name, config in self.configs.items():
            self.assertEqual((config.homeServerName, config.domain), (name, "corp.example"))
            self.assertEqual(config.dataDir.path, os.path.join(self.folder, "data"))
        self.assertEqual(
            {name: config.roles for name, config in self.configs.items()},
            {"router": {"router"}, "hs1": {"home"}, "hs2": {"home"}},
        )
        self.assertEqual([str(n) for n in self.configs["router"].router.internalNetworks], ["127.0.0.1/32"])

    def test_sameServers(self) -> None:
        """
        The three hold the same C{[servers]} tables, on loopback, no two
        listeners on one port.
        """
        servers = self.configs["router"].servers
        for config in self.configs.values():
            self.assertEqual(config.servers, servers)
        addresses = [a for s in servers.values() for a in (s.link, s.native, s.xmpp)]
        self.assertNotIn(None, addresses)
        self.assertEqual({a.host for a in addresses if a is not None}, {"127.0.0.1"})
        self.assertEqual(len(set(addresses)), len(addresses))

    def test_listeners(self) -> None:
        """
        Each process listens where its C{[servers]} table says others find
        it: links, native and XMPP clients.
        """
        for name, config in self.configs.items():
            me = config.servers[name]
            native = config.adapters["native"]
            xmpp = config.adapters["xmpp"]
            assert isinstance(native, NativeConfig) and isinstance(xmpp, XMPPConfig)
            self.assertEqual(
                (config.links.listen, native.listen, xmpp.c2s.listen),
                tuple((f"tcp:{a.port}:interface={a.host}",) for a in (me.link, me.native, me.xmpp) if a is not None),
            )

    def test_certificates(self) -> None:
        """
        Each link certificate names its server's C{tls_name} (the router's
        the domain too), is issued by the authority all three trust, and
        serves both ends of a link; the XMPP certificate names the domain.
        """
        for name, config in self.configs.items():
            links = config.links
            self.assertEqual(
                (links.certificate, links.privateKey, links.trustRoots),
                tuple(os.path.join(self.folder, "lab-ca", f) for f in (f"{name}.crt", f"{name}.key", "ca.crt")),
            )
            assert links.certificate is not None and links.trustRoots is not None
            with open(links.certificate, "rb") as f:
                certificate = x509.load_pem_x509_certificate(f.read())
            with open(links.trustRoots, "rb") as f:
                ca = x509.load_pem_x509_certificate(f.read())
            certificate.verify_directly_issued_by(ca)
            tlsName = config.servers[name].tlsName
            assert tlsName is not None
            verify_certificate_hostname(certificate, tlsName)
            if name == "router":
                verify_certificate_hostname(certificate, "corp.example")
            self.assertEqual(
                len(list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)), 2
            )
            xmpp = config.adapters["xmpp"]
            assert isinstance(xmpp, XMPPConfig) and xmpp.tls is not None
            verify_certificate_hostname(xmpp.tls.chain[0], "corp.example")

    def test_homes(self) -> None:
        """
        The walk-through's users are homed on the examples' home servers.
        """
        adds = [argv for argv in walkThrough() if argv[1:4] == ["--config", "hs1.toml", "user"]]
        self.assertEqual([argv[-1] for argv in adds], ["hs1", "hs2"])
        homes = {n for n, s in self.configs["hs1"].servers.items() if "home" in s.roles}
        self.assertEqual(homes, {"hs1", "hs2"})

    def test_irc(self) -> None:
        """
        The router alone runs the IRC face (on loopback, port 6667) and no
        IRC network yet; the home servers have no IRC face. Its commented
        C{[[irc.network]]} example, uncommented, loads and is bridged by the
        router (docs/irc.md, "Behind the router").
        """
        irc = self.configs["router"].adapters["irc"]
        assert isinstance(irc, IRCConfig)
        self.assertEqual((irc.listen, irc.networks), (("tcp:6667:interface=127.0.0.1",), ()))
        for name in ("hs1", "hs2"):
            self.assertNotIn("irc", self.configs[name].adapters)
        path = os.path.join(self.folder, "router.toml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        example = text.split("For example:\n#\n", 1)[1]
        uncommented = "\n".join(line[2:] for line in example.splitlines() if line.startswith("# "))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n" + uncommented + "\n")
        config = loadConfig(path, MemoryReactor(), adapterConfigParsers())
        bridged = config.adapters["irc"]
        assert isinstance(bridged, IRCConfig)
        self.assertEqual([(n.name, n.domain) for n in bridged.networks], [("libera", "libera.irc")])
