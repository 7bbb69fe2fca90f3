# -*- test-case-name: tests.e2e.test_irc_router -*-
"""
End-to-end tests of IRC behind the router (issue 9, item 5): a router and
two home servers (C{hs1}: alice; C{hs2}: carol) as three real C{twistd
imgateway} processes on one data folder (one SQLite directory), linked
over TLS with both certificates checked (a test certificate authority),
on loopback; the router's C{internal_networks} is C{127.0.0.1/32}.

  - A real IRC client library (jaraco's C{irc}, as in
    L{tests.e2e.test_irc_face}) logs in as carol at the router's IRC face
    from 127.0.0.1 (internal: a native client would be redirected) and
    from 127.0.0.2 (external): both are proxied to hs2, never redirected;
    carol sees alice (a native user on hs1) in C{&contacts} and they talk.
    The IRC face of hs1, a home server that is no router, refuses carol
    with a clear C{ERROR}.
  - The router bridges a real ngIRCd (L{tests.e2e.ircd}, one per module)
    as C{testnet.irc}: alice on hs1 and carol on hs2, neither of which runs
    the bridge, see frank's presence and talk with him.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from imgateway.core.presence import PresenceState
from imgateway.router.front import NOT_HOMED_HERE_TEXT
from tests.e2e.harness import DOMAIN, connectClient, freePort
from tests.e2e.multihost import OUTSIDE, RouterAndTwoHomes
from tests.e2e.ircd import IRCdProcess, SharedIRCd, connectUser
from tests.e2e.test_irc_face import IRCUser
from tests.e2e.test_irc_network import nickFree

NGIRCD = SharedIRCd("ngircd")

PASSWORDS = {"alice": "alice-pw-1", "carol": "carol-pw-3"}

#: The bridged network's domain.
NET = "testnet.irc"


def testSuite() -> Any:
    """
    The module's tests, stopping the shared ngIRCd after the last.
    """
    return NGIRCD.suite(__name__)


class IRCDomain(RouterAndTwoHomes):
    """
    L{RouterAndTwoHomes} on one shared directory, every server listening
    for links, hs1 homing alice and hs2 carol; the router and hs1 run the
    IRC face. With C{ircd}, the router bridges it as L{NET}.

    @ivar ircPorts: The IRC face ports, by name.
    """

    def __init__(self, testCase: TestCase, ircd: IRCdProcess | None = None) -> None:
        self.ircPorts = {"router": freePort(), "hs1": freePort()}
        more: dict[str, dict[str, Any]] = {
            name: {"irc": {"listen": [f"tcp:{port}:interface=127.0.0.1"]}} for name, port in self.ircPorts.items()
        }
        if ircd is not None:
            more["router"]["irc"]["network"] = [
                {
                    "name": "testnet",
                    "domain": NET,
                    "endpoint": ircd.endpoint,
                    "nick_template": "{user}[corp]",
                    "presence_interval": 1.0,
                    "max_reconnect_delay": 2.0,
                }
            ]
        super().__init__(
            testCase,
            routerLinks=True,
            linkTimeout=5,
            more=more,
            morePorts={name: [port] for name, port in self.ircPorts.items()},
        )
        # Each made with its home server's configuration: homed there.
        self.processes["hs1"].addUsers({"alice": PASSWORDS["alice"]})
        self.processes["hs2"].addUsers({"carol": PASSWORDS["carol"]})

    async def ircUser(self, user: str, server: str = "router", bindAddress: str | None = None) -> IRCUser:
        """
        An IRC client logging in as C{user} (C{PASS}) at C{server}'s IRC
        face, from C{bindAddress}; not waited for.
        """
        client = IRCUser(self.testCase)
        client.connect(self.ircPorts[server], user, f"{user}:{PASSWORDS[user]}", bindAddress=bindAddress)
        return client


class IRCClientBehindRouterTests(TestCase):
    """
    IRC clients at the router's IRC face, and at a home server's.
    """

    async def test_proxiedFromInsideAndOutside(self) -> None:
        """
        carol logs in at the router's IRC face from 127.0.0.1, an internal
        network: she is proxied to hs2 (the router logs the decision with
        her address and the rule), not redirected. She adds alice (a native
        user logged in at hs1), sees her voiced in C{&contacts} and away,
        and they exchange messages. From 127.0.0.2, outside the internal
        networks, she is proxied as well, finds alice voiced in
        C{&contacts}, and they talk. At hs1's own IRC face, carol is told
        to connect to the router, and hs1 logs why.
        """
        domain = IRCDomain(self)
        await domain.start()
        hs1, hs2 = domain.processes["hs1"], domain.processes["hs2"]
        alice, aliceSees = await connectClient(self, hs1.endpoint, "alice", PASSWORDS["alice"])

        carol = await domain.ircUser("carol")
        await carol.waitForLine("001")
        await carol.waitForLine("366", "carol", "&contacts")
        self.assertIn(
            f"Proxying carol@{DOMAIN} (irc, from IPv4Address(type='TCP', host='127.0.0.1'", domain.router.log()
        )
        self.assertIn(
            "to its home server hs2: internal network 127.0.0.1/32, and the irc face does not redirect",
            domain.router.log(),
        )
        self.assertIn(f"of carol@{DOMAIN} opened for server router", hs2.log())
        self.assertNotIn("Redirecting carol", domain.router.log())
        carol.connection.cap("REQ", "away-notify")
        await carol.waitForLine("CAP", "carol", "ACK")

        carol.say(f"add alice@{DOMAIN} Alice")
        await carol.waitForLine("JOIN", "&contacts", prefix=f"alice!alice@{DOMAIN}")
        await aliceSees.waitForSubscription(f"carol@{DOMAIN}", "subscribe", timeout=10)
        await alice.authorise(f"carol@{DOMAIN}")
        await carol.waitForLine("MODE", "&contacts", "+v", "alice")
        await alice.subscribe(f"carol@{DOMAIN}")
        await carol.waitForLine(
            "NOTICE", "&contacts", f"alice@{DOMAIN} asks to watch your presence: say 'accept alice@{DOMAIN}' to allow it"
        )
        carol.say(f"accept alice@{DOMAIN}")
        await aliceSees.waitForPresence(f"carol@{DOMAIN}", PresenceState.ONLINE, timeout=10)
        await alice.publish(PresenceState.BUSY, "in a meeting")
        await carol.waitForLine("AWAY", "Busy: in a meeting", prefix=f"alice!alice@{DOMAIN}")
        await alice.publish(PresenceState.ONLINE)
        carol.connection.privmsg("alice", "hello alice, from IRC through the router")
        await aliceSees.waitForMessage(f"carol@{DOMAIN}", "hello alice, from IRC through the router", timeout=10)
        await alice.sendMessage(f"carol@{DOMAIN}", "hello carol, from hs1")
        await carol.waitForPrivmsg("alice", "hello carol, from hs1")
        carol.close()

        outside = await domain.ircUser("carol", bindAddress=OUTSIDE)
        await outside.waitForLine("001")
        names = await outside.waitForLine("353")
        self.assertIn("+alice", names.params[-1].split())
        self.assertIn(
            f"Proxying carol@{DOMAIN} (irc, from IPv4Address(type='TCP', host='{OUTSIDE}'", domain.router.log()
        )
        self.assertIn("to its home server hs2: the client is in none of [router] internal_networks", domain.router.log())
        outside.connection.privmsg("alice", "from outside")
        await aliceSees.waitForMessage(f"carol@{DOMAIN}", "from outside", timeout=10)
        await alice.sendMessage(f"carol@{DOMAIN}", "seen from outside")
        await outside.waitForPrivmsg("alice", "seen from outside")

        atHome = await domain.ircUser("carol", server="hs1")
        await atHome.waitForLine("ERROR", f"Closing link: {NOT_HOMED_HERE_TEXT}")
        await atHome.waitFor(lambda: atHome.disconnected, 10, "disconnect")
        self.assertFalse(any(m.command == "001" for m in atHome.lines))
        self.assertIn(f"Not serving carol@{DOMAIN} (irc, from IPv4Address(type='TCP', host='127.0.0.1'", hs1.log())
        self.assertIn("hs1 proxies sessions only with the role router", hs1.log())


class IRCNetworkFromEveryHomeTests(TestCase):
    """
    The router bridges an IRC network for the users of every home server.
    """

    async def test_bothHomes(self) -> None:
        """
        With C{[[irc.network]]} on the router, alice (a native user on hs1)
        adds frank@testnet.irc on the real ngIRCd, sees him online and away,
        and they exchange messages (frank sees her puppet C{alice[corp]});
        carol (on hs2, through the router's IRC face from outside, proxied)
        writes to him too, as C{carol[corp]}, and gets his answer. Neither
        home server bridges the network: their events for it go to the
        router over the links.
        """
        server = await NGIRCD.get(self)
        await nickFree(self, server)
        await nickFree(self, server, "carol[corp]")
        frank = await connectUser(self, server, "frank")
        domain = IRCDomain(self, server)
        await domain.start()
        alice, aliceSees = await connectClient(self, domain.processes["hs1"].endpoint, "alice", PASSWORDS["alice"])
        carol = await domain.ircUser("carol", bindAddress=OUTSIDE)
        await carol.waitForLine("366", "carol", "&contacts")

        await alice.subscribe(f"frank@{NET}", "Frank")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=15)
        frank.send("AWAY :gone to lunch")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.AWAY, "gone to lunch", timeout=15)
        frank.send("AWAY")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=15)

        await alice.sendMessage(f"frank@{NET}", "hello frank, from hs1")
        await frank.waitForLine(lambda m: m.command == "PRIVMSG" and m.params == ("frank", "hello frank, from hs1"))
        carol.connection.privmsg("frank|testnet^irc", "hello frank, from hs2")
        await frank.waitForLine(lambda m: m.command == "PRIVMSG" and m.params == ("frank", "hello frank, from hs2"))
        senders = {(m.prefix or "").partition("!")[0]: m.params[1] for m in frank.messages("PRIVMSG")}
        self.assertEqual(senders, {"alice[corp]": "hello frank, from hs1", "carol[corp]": "hello frank, from hs2"})
        frank.privmsg("alice[corp]", "hi alice")
        frank.privmsg("carol[corp]", "hi carol")
        await aliceSees.waitForMessage(f"frank@{NET}", "hi alice", timeout=10)
        await carol.waitForPrivmsg("frank|testnet^irc", "hi carol")
        for name in ("hs1", "hs2"):
            self.assertNotIn("IRC testnet", domain.processes[name].log())

    async def test_homeServerRefusesNetwork(self) -> None:
        """
        A home server that is no router does not start with an
        C{[[irc.network]]} table: it exits at once with one line saying
        that the routers bridge IRC networks.
        """
        domain = IRCDomain(self)
        hs1 = domain.processes["hs1"]
        hs1.tables["irc"]["network"] = [{"name": "testnet", "domain": NET, "endpoint": "tcp:127.0.0.1:1"}]
        hs1.writeConfig()
        code, opened = await hs1.runUntilExit()
        self.assertEqual((code, opened), (1, False))
        self.assertIn(
            "imgateway: cannot start: " + hs1.configPath + ": [[irc.network]] testnet: in a domain with several servers, "
            "IRC networks are bridged by its routers",
            hs1.output(),
        )
