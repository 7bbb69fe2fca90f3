"""
End-to-end tests of the bridge to IRC networks: a real C{twistd imgateway}
with an C{[[irc.network]]} table, real ngIRCd and InspIRCd servers on
loopback (L{tests.e2e.ircd}), a raw-socket IRC user (frank), native users
and a slixmpp XMPP user.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from twisted.trial.unittest import TestCase

from imgateway.core.errors import DeliveryError
from imgateway.core.presence import PresenceState
from tests.e2e.harness import DOMAIN, GatewayProcess, freePort, makeCertificates, sleep
from tests.e2e.ircd import IRCdProcess, IRCUser, SharedIRCd, connectUser, requireIRCd
from tests.e2e.xmppclient import connectAgent

NGIRCD = SharedIRCd("ngircd")
INSPIRCD = SharedIRCd("inspircd")

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}

#: The bridged network's domain.
NET = "testnet.irc"


def testSuite() -> Any:
    return NGIRCD.suite(__name__, INSPIRCD)


def bridgedGateway(testCase: TestCase, server: IRCdProcess, xmpp: bool = False, **network: object) -> GatewayProcess:
    """
    A gateway bridging C{server} as L{NET}, with quick presence polling and
    reconnection for tests; C{network} overrides keys of its table.
    """
    table: dict[str, object] = {
        "name": "testnet",
        "domain": NET,
        "endpoint": server.endpoint,
        "nick_template": "{user}[corp]",
        "presence_interval": 1.0,
        "max_reconnect_delay": 2.0,
        "flood_burst": 5,
        "flood_rate": 8.0,
    }
    table.update(network)
    tables: dict[str, Any] = {"irc": {"listen": [], "network": [table]}}
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    if xmpp:
        caPath, serverDir = makeCertificates(directory, DOMAIN)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        xmppPort = freePort()
        tables["xmpp"] = {"listen": [f"tcp:{xmppPort}:interface=127.0.0.1"], "certificate": pem, "private_key": pem}
    gw = GatewayProcess(testCase, tables, directory=os.path.join(directory, "gw"))
    if xmpp:
        gw.waitPorts.append(xmppPort)
        gw.xmppPort = xmppPort  # type: ignore[attr-defined]
        gw.caPath = caPath  # type: ignore[attr-defined]
    gw.addUsers(PASSWORDS)
    return gw


_probes = itertools.count()


async def nickFree(testCase: TestCase, server: IRCdProcess, nick: str = "alice[corp]", timeout: float = 20.0) -> None:
    """
    Wait until nobody on C{server} holds C{nick}: the tests share one
    server, and a previous test's puppet leaves it when that test's gateway
    stops, which the server may notice a moment later.
    """
    probe = await connectUser(testCase, server, f"probe{next(_probes)}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            since = len(probe.received)
            probe.send(f"ISON {nick}")
            reply = await probe.waitForLine(lambda m: m.command == "303", since=since, description="ISON reply")
            if nick.lower() not in reply.params[-1].lower().split():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{nick} still taken on the IRC server after {timeout} s")
            await sleep(0.5)
    finally:
        probe.close()


def privmsgs(user: IRCUser, sender: str) -> list[str]:
    return [m.params[1] for m in user.messages("PRIVMSG", sender)]


class _BothWays:
    """
    Tests run against each server (L{shared}).
    """

    shared: SharedIRCd

    async def test_messagesBothWays(self: Any) -> None:
        """
        alice writes to frank@NET: frank sees her puppet C{alice[corp]};
        frank answers (formatting and an action) and alice gets it from
        frank@NET.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        await alice.sendMessage(f"frank@{NET}", "hello frank")
        await frank.waitForLine(lambda m: m.command == "PRIVMSG" and m.params == ("frank", "hello frank"))
        self.assertEqual((frank.messages("PRIVMSG")[0].prefix or "").partition("!")[0], "alice[corp]")
        await alice.sendMessage(f"frank@{NET}", "/me waves")
        await frank.waitForLine(lambda m: m.command == "PRIVMSG" and m.params[1] == "\x01ACTION waves\x01")
        frank.privmsg("alice[corp]", "hi \x02alice\x02")
        frank.privmsg("alice[corp]", "\x01ACTION smiles\x01")
        await aliceSees.waitForMessage(f"frank@{NET}", "hi alice", timeout=10)
        await aliceSees.waitForMessage(f"frank@{NET}", "/me smiles", timeout=10)

    async def test_longMessageAndInjection(self: Any) -> None:
        """
        A 2,000-character message arrives whole and in order, in lines
        that fit the network's limit; C{\\r\\nQUIT :x} arrives as text (the
        puppet stays connected); an unknown nick is an error for the
        sender.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        words = " ".join(f"w{i:04d}é" for i in range(300))[:2000]
        self.assertEqual(len(words), 2000)
        await alice.sendMessage(f"frank@{NET}", words)
        # Cut between words: the space at a cut is not kept (servers strip
        # a trailing space).
        await frank.waitFor(
            lambda: " ".join(line.strip() for line in privmsgs(frank, "alice[corp]")) == words or None, 20, "the whole message"
        )
        self.assertGreater(len(privmsgs(frank, "alice[corp]")), 3)
        await alice.sendMessage(f"frank@{NET}", "before\r\nQUIT :x")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]")[-2:] == ["before", "QUIT :x"] or None, 10, "the text")
        await alice.sendMessage(f"frank@{NET}", "still here")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]")[-1:] == ["still here"] or None, 10, "still here")
        self.assertEqual(frank.messages("QUIT", "alice[corp]"), [])
        with self.assertRaises(DeliveryError):
            await alice.sendMessage(f"nobody@{NET}", "hello?")

    async def test_presenceAndAway(self: Any) -> None:
        """
        alice adds frank@NET: she sees him online, away with his away
        message, offline when he quits. Once she lets frank watch her,
        her state and note ("Busy: in a meeting") are her puppet's away message, cleared when she is
        online again.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        await alice.subscribe(f"frank@{NET}", "Frank")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=10)
        frank.send("AWAY :gone to lunch")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.AWAY, "gone to lunch", timeout=10)
        frank.send("AWAY")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=10)

        await aliceSees.waitForSubscription(f"frank@{NET}", "subscribe", timeout=10)
        await alice.authorise(f"frank@{NET}")
        await alice.sendMessage(f"frank@{NET}", "hi")
        await alice.publish(PresenceState.BUSY, "in a meeting")

        async def awayMessage() -> str | None:
            since = len(frank.received)
            frank.send("WHOIS alice[corp]")
            end = await frank.waitForLine(lambda m: m.command == "318", since=since)
            away = [m for m in frank.received[since:] if m.command == "301"]
            del end
            return away[0].params[2] if away else None

        for _ in range(50):
            if await awayMessage() == "Busy: in a meeting":
                break
            await sleep(0.2)
        self.assertEqual(await awayMessage(), "Busy: in a meeting")
        await alice.publish(PresenceState.ONLINE)
        for _ in range(50):
            if await awayMessage() is None:
                break
            await sleep(0.2)
        self.assertIsNone(await awayMessage())

        frank.send("QUIT :bye")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.OFFLINE, timeout=10)

    async def test_nickCollision(self: Any) -> None:
        """
        When someone holds C{alice[corp]}, alice's puppet takes the
        predictable C{alice[corp]_}, and takes her nick back once it is
        free.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        squatter = await connectUser(self, server, "alice[corp]")
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        await alice.sendMessage(f"frank@{NET}", "first")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]_") == ["first"] or None, 10, "from alice[corp]_")
        squatter.send("QUIT :leaving")
        await sleep(3.0)
        await alice.sendMessage(f"frank@{NET}", "second")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]") == ["second"] or None, 10, "from alice[corp]")


class NgircdTests(_BothWays, TestCase):
    """
    Against ngIRCd (no MONITOR: ISON polling).
    """

    shared = NGIRCD


class InspircdTests(_BothWays, TestCase):
    """
    Against InspIRCd 3 with its monitor module (MONITOR), its flood
    control enforced.
    """

    shared = INSPIRCD

    async def test_noExcessFlood(self) -> None:
        """
        A client that writes 40 lines at once is cut off for
        C{Excess Flood} by this server; 200 messages from alice, paced
        under the network's allowance, all reach frank, in order, and her
        puppet is never disconnected.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        flooder = await connectUser(self, server, "flooder")
        frank = await connectUser(self, server, "frank")
        # 40 short lines: past the threshold, within the server's RecvQ.
        flooder.send(b"".join(b"PRIVMSG frank :flood %d\r\n" % i for i in range(40)).rstrip(b"\r\n"))
        await flooder.waitFor(lambda: flooder.closed, 10, "the flooder cut off")
        self.assertIn("Excess Flood", "\n".join(line.decode("utf-8", "replace") for line in flooder.raw))

        # The burst plus a second's lines stay under the server's threshold
        # (20 commands between two of its ticks, INSPIRCD_THRESHOLD).
        gw = bridgedGateway(self, server, flood_burst=5, flood_rate=12.0)
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        sent = [alice.sendMessage(f"frank@{NET}", f"message {i:03d}") for i in range(200)]
        for d in sent:
            await d
        expected = [f"message {i:03d}" for i in range(200)]
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]") == expected or None, 60, "200 messages in order")
        self.assertEqual(frank.messages("QUIT", "alice[corp]"), [])
        self.assertNotIn("Excess Flood", gw.log())

    async def test_presenceByMonitor(self) -> None:
        """
        InspIRCd offers MONITOR and extended-monitor: with polling once a
        minute, frank's arrival, away message and departure still reach
        alice within seconds.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        gw = bridgedGateway(self, server, presence_interval=60.0)
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        await alice.subscribe(f"monty@{NET}", "Monty")
        await sleep(1.0)
        monty = await connectUser(self, server, "monty")
        await aliceSees.waitForPresence(f"monty@{NET}", PresenceState.ONLINE, timeout=5)
        monty.send("AWAY :on a call")
        await aliceSees.waitForPresence(f"monty@{NET}", PresenceState.AWAY, "on a call", timeout=5)
        monty.send("QUIT :bye")
        await aliceSees.waitForPresence(f"monty@{NET}", PresenceState.OFFLINE, timeout=5)

    async def test_latin1AndControlsToXMPP(self) -> None:
        """
        latin-1 text, colours, bold, CTCP and other control codes from IRC
        reach an XMPP (slixmpp) user clean, and the XMPP stream stays up.
        """
        server = await self.shared.get(self)
        await nickFree(self, server)
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server, xmpp=True)
        await gw.start()
        bob = await connectAgent(
            self, f"bob@{DOMAIN}/agent", PASSWORDS["bob"], gw.xmppPort, tls="starttls", caFile=gw.caPath  # type: ignore[attr-defined]
        )
        bob.message(f"frank@{NET}", "hello from xmpp")
        await frank.waitFor(lambda: privmsgs(frank, "bob[corp]") == ["hello from xmpp"] or None, 10, "bob's message")
        frank.send(b"PRIVMSG bob[corp] :caf\xe9 cr\xe8me \x0304,01red\x03 \x02bold\x02 \x1ditalic\x1d \x16rev\x0f bell\x07 esc\x1b nul-free")
        await bob.waitForMessage(f"frank@{NET}", "café crème red bold italic rev bell esc nul-free", timeout=10)
        frank.send("PRIVMSG bob[corp] :\x01ACTION dances\x01")
        await bob.waitForMessage(f"frank@{NET}", "/me dances", timeout=10)
        frank.send("PRIVMSG bob[corp] :still connected")
        await bob.waitForMessage(f"frank@{NET}", "still connected", timeout=10)

class TroubleTests(TestCase):
    """
    Trouble on the network: a K-line; the IRC server killed and started
    again (each on a server of its own).
    """

    async def test_kline(self) -> None:
        """
        An oper K-lines alice's puppet (on a server of its own): it is disconnected and not retried;
        alice's next message fails with the network's reason, and the log
        says so.
        """
        requireIRCd(self, "inspircd")
        server = IRCdProcess("inspircd")
        self.addCleanup(server.destroy)
        await server.start()
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, _ = await gw.client("alice", PASSWORDS["alice"])
        await alice.sendMessage(f"frank@{NET}", "hello")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]") == ["hello"] or None, 10, "hello")
        frank.send("OPER oper oper")
        await frank.waitForLine(lambda m: m.command == "381")
        frank.send("KLINE alice@127.0.0.1 1h :no bridges here")
        for _ in range(100):
            if "refused for good" in gw.log():
                break
            await sleep(0.1)
        await sleep(3.0)  # longer than max_reconnect_delay: no retry
        with self.assertRaises(DeliveryError) as e:
            await alice.sendMessage(f"frank@{NET}", "again")
        self.assertIn("K-lined: no bridges here", str(e.exception))
        self.assertIn("refused for good", gw.log())
        self.assertEqual(privmsgs(frank, "alice[corp]"), ["hello"])



    async def test_serverRestart(self) -> None:
        """
        The link comes back after the server restarts: alice sees frank
        offline, then online again once he is back, and her messages reach
        him again.
        """
        requireIRCd(self, "ngircd")
        server = IRCdProcess("ngircd")
        self.addCleanup(server.destroy)
        await server.start()
        frank = await connectUser(self, server, "frank")
        gw = bridgedGateway(self, server)
        await gw.start()
        alice, aliceSees = await gw.client("alice", PASSWORDS["alice"])
        await alice.subscribe(f"frank@{NET}", "Frank")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=10)
        await alice.sendMessage(f"frank@{NET}", "before")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]") == ["before"] or None, 10, "before")

        await server.restart()
        await frank.waitFor(lambda: frank.closed, 10, "frank dropped")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.OFFLINE, timeout=10)
        frank = await connectUser(self, server, "frank")
        await aliceSees.waitForPresence(f"frank@{NET}", PresenceState.ONLINE, timeout=20)
        await alice.sendMessage(f"frank@{NET}", "after")
        await frank.waitFor(lambda: privmsgs(frank, "alice[corp]") == ["after"] or None, 20, "after")
