# -*- test-case-name: tests.e2e.test_irc_face -*-
"""
End-to-end tests of the IRC face: a real IRC client library (jaraco's
C{irc}, its own reactor in a thread) logs in to the real C{twistd
imgateway} with C{PASS} and with SASL PLAIN, sees a contact's presence
change (voice and C{AWAY}), and exchanges messages with a native user and
with an XMPP user (slixmpp).
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
from typing import Any

import irc.client
import irc.connection
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from imgateway.adapters.irc.wire import IRCMessage, parseLine
from imgateway.core.presence import PresenceState
from tests.e2e.harness import (
    DOMAIN,
    TLS_HOSTNAME,
    GatewayProcess,
    _Waiters,
    freePort,
    makeCertificates,
    reactor,
    tlsServerEndpoint,
)
from tests.e2e.xmppclient import XMPPAgent, connectAgent

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}


class IRCUser(_Waiters):
    """
    A jaraco C{irc} client connection, its reactor running in a thread of
    its own; every line it receives is recorded (and parsed), and waits
    are checked in the Twisted reactor's thread.

    @ivar lines: The lines received, parsed.
    @ivar privmsgs: C{(nick, text)} of each PRIVMSG received.
    """

    def __init__(self, testCase: TestCase) -> None:
        super().__init__()
        self.lines: list[IRCMessage] = []
        self.privmsgs: list[tuple[str, str]] = []
        self.disconnected = False
        self._reactor = irc.client.Reactor()
        self._reactor.add_global_handler("all_raw_messages", self._raw, -10)
        self._reactor.add_global_handler("privmsg", self._privmsg, -10)
        self._reactor.add_global_handler("disconnect", self._disconnect, -10)
        self.connection = self._reactor.server()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        testCase.addCleanup(self.close)

    def connect(
        self, port: int, nick: str, password: str, sasl: bool = False, caPath: str | None = None, bindAddress: str | None = None
    ) -> None:
        """
        Connect and send the login lines (C{PASS} or SASL PLAIN); over TLS,
        verifying the server's certificate against C{caPath}, if given;
        from C{bindAddress}, if given (another loopback address).
        """
        bind = (bindAddress, 0) if bindAddress is not None else None
        factory = irc.connection.Factory(bind_address=bind)
        if caPath is not None:
            context = ssl.create_default_context(cafile=caPath)
            factory = irc.connection.Factory(
                bind_address=bind, wrapper=functools.partial(context.wrap_socket, server_hostname=TLS_HOSTNAME)
            )
        self.connection.connect(
            "127.0.0.1",
            port,
            nick,
            password=password,
            sasl_login=nick if sasl else None,
            ircname="Test user",
            connect_factory=factory,
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._reactor.process_once(0.05)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.connection.is_connected():
            self.connection.close()
        self.cancelWaits()

    def _record(self) -> None:
        reactor().callFromThread(self._changed)

    def _raw(self, connection: Any, event: Any) -> None:
        self.lines.append(parseLine(event.arguments[0].encode("utf-8")))
        self._record()

    def _privmsg(self, connection: Any, event: Any) -> None:
        self.privmsgs.append((event.source.nick, event.arguments[0]))
        self._record()

    def _disconnect(self, connection: Any, event: Any) -> None:
        self.disconnected = True
        self._record()

    def summary(self) -> str:
        return "; ".join(f"{m.command} {' '.join(m.params)}"[:120] for m in self.lines[-15:])

    def waitForLine(self, command: str, *params: str, prefix: str | None = None, timeout: float = 10.0) -> Deferred[IRCMessage]:
        """
        Wait for a line with C{command}, starting with C{params}.
        """

        def matches() -> IRCMessage | None:
            for m in self.lines:
                if m.command == command and m.params[: len(params)] == params and (prefix is None or m.prefix == prefix):
                    return m
            return None

        return self.waitFor(matches, timeout, f"{command} {params}")

    def waitForPrivmsg(self, nick: str, text: str, timeout: float = 10.0) -> Deferred[tuple[str, str]]:
        """
        Wait for a PRIVMSG from C{nick} saying C{text}.
        """
        return self.waitFor(lambda: (nick, text) if (nick, text) in self.privmsgs else None, timeout, f"{text[:40]!r} from {nick}")

    def waitForText(self, nick: str, text: str, timeout: float = 10.0) -> Deferred[str]:
        """
        Wait until the PRIVMSGs from C{nick} joined end with C{text}.
        """

        def matches() -> str | None:
            joined = "".join(t for n, t in self.privmsgs if n == nick)
            return joined if joined.endswith(text) else None

        return self.waitFor(matches, timeout, f"text ending {text[-40:]!r} from {nick}")

    def say(self, text: str) -> None:
        """
        Say a command in &contacts.
        """
        self.connection.privmsg("&contacts", text)


class IRCGateway:
    """
    A gateway with the native face and the IRC face on loopback, and
    optionally the XMPP face (with a test certificate).
    """

    def __init__(self, testCase: TestCase, xmpp: bool = False, tls: bool = False) -> None:
        self.testCase = testCase
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.ircPort = freePort()
        listen = f"tcp:{self.ircPort}:interface=127.0.0.1"
        self.tlsCA: str | None = None
        if tls:
            self.tlsCA, tlsDir = makeCertificates(os.path.join(directory, "irc-tls"))
            listen = tlsServerEndpoint(tlsDir, self.ircPort)
        tables: dict[str, dict[str, object]] = {"irc": {"listen": [listen]}}
        self.xmppPort = 0
        if xmpp:
            self.caPath, serverDir = makeCertificates(directory, DOMAIN)
            pem = os.path.join(serverDir, f"{DOMAIN}.pem")
            self.xmppPort = freePort()
            tables["xmpp"] = {
                "listen": [f"tcp:{self.xmppPort}:interface=127.0.0.1"],
                "certificate": pem,
                "private_key": pem,
            }
        self.gw = GatewayProcess(testCase, tables, directory=os.path.join(directory, "gw"))
        self.gw.waitPorts.append(self.ircPort)
        if xmpp:
            self.gw.waitPorts.append(self.xmppPort)
        self.gw.addUsers(PASSWORDS)

    async def ircUser(self, user: str, sasl: bool = False, password: str | None = None) -> IRCUser:
        """
        An IRC client logged in as C{user}, with C{away-notify}.
        """
        client = IRCUser(self.testCase)
        secret = password if password is not None else PASSWORDS[user]
        client.connect(self.ircPort, user, secret if sasl else f"{user}:{secret}", sasl, self.tlsCA)
        await client.waitForLine("001")
        await client.waitForLine("366", user, "&contacts")
        client.connection.cap("REQ", "away-notify")
        await client.waitForLine("CAP", user, "ACK")
        return client

    def xmppAgent(self, user: str) -> Deferred[XMPPAgent]:
        return connectAgent(
            self.testCase, f"{user}@{DOMAIN}/agent", PASSWORDS[user], self.xmppPort, tls="starttls", caFile=self.caPath
        )


class IRCFaceEndToEndTests(TestCase):
    """
    jaraco's C{irc} library against the gateway's IRC face.
    """

    async def test_passAndNativeUser(self) -> None:
        """
        An IRC user (alice, logged in with C{PASS alice:password}) and a
        native user (bob) add each other through the &contacts commands
        and the native client; alice sees bob voiced when he comes online,
        away with his state's label and note, back, and unvoiced when he
        leaves; they exchange messages, a 2,000-character one arrives whole
        and in order, and an embedded C{\\r\\nQUIT :x} arrives as text.
        """
        g = IRCGateway(self)
        await g.gw.start()
        alice = await g.ircUser("alice")
        bob, bobSees = await g.gw.client("bob", PASSWORDS["bob"])
        alice.say("add bob@corp.example Bob")
        await alice.waitForLine("JOIN", "&contacts", prefix="bob!bob@corp.example")
        await bobSees.waitForSubscription("alice@corp.example", "subscribe")
        await bob.authorise("alice@corp.example")
        await alice.waitForLine("MODE", "&contacts", "+v", "bob")
        await bob.publish(PresenceState.BUSY, "in a meeting")
        await alice.waitForLine("AWAY", "Busy: in a meeting", prefix="bob!bob@corp.example")
        await bob.publish(PresenceState.ONLINE)
        await alice.waitFor(
            lambda: any(m.command == "AWAY" and m.params == () for m in alice.lines), 10, "AWAY unset"
        )
        alice.connection.privmsg("bob", "hello bob")
        await bobSees.waitForMessage("alice@corp.example", "hello bob", timeout=10)
        await bob.sendMessage("alice@corp.example", "hello alice")
        await alice.waitForPrivmsg("bob", "hello alice")
        text = "".join(f"{n:04d} " for n in range(400))
        self.assertEqual(len(text), 2000)
        await bob.sendMessage("alice@corp.example", text)
        await alice.waitForText("bob", text)
        await bob.sendMessage("alice@corp.example", "before\r\nQUIT :x")
        await alice.waitForPrivmsg("bob", "QUIT :x")
        alice.connection.privmsg("bob", "still here")
        await bobSees.waitForMessage("alice@corp.example", "still here", timeout=10)
        self.assertFalse(alice.disconnected)
        await bob.bye()
        await alice.waitForLine("MODE", "&contacts", "-v", "bob")

    async def test_saslAndXMPPUser(self) -> None:
        """
        An IRC user (carol, logged in with SASL PLAIN) and an XMPP user
        (bob, slixmpp) add each other; carol sees bob's dnd as C{AWAY}
        with C{Busy} and his status, and they exchange messages both ways.
        """
        g = IRCGateway(self, xmpp=True)
        await g.gw.start()
        carol = await g.ircUser("carol", sasl=True)
        self.assertTrue(any(m.command == "903" for m in carol.lines))
        bob = await g.xmppAgent("bob")
        carol.say("add bob@corp.example")
        await bob.waitForSubscribe("carol@corp.example")
        bob.approve("carol@corp.example")
        bob.subscribe("carol@corp.example")
        await carol.waitForLine(
            "NOTICE", "&contacts", "bob@corp.example asks to watch your presence: say 'accept bob@corp.example' to allow it"
        )
        carol.say("accept bob@corp.example")
        await carol.waitForLine("MODE", "&contacts", "+v", "bob")
        bob.setPresence(show="dnd", status="on a call")
        await carol.waitForLine("AWAY", "Busy: on a call", prefix="bob!bob@corp.example")
        carol.connection.privmsg("bob", "hi from IRC")
        await bob.waitForMessage("carol@corp.example", "hi from IRC")
        bob.message("carol@corp.example", "hi from XMPP")
        await carol.waitForPrivmsg("bob", "hi from XMPP")

    async def test_tls(self) -> None:
        """
        On a C{tls:} listener, a client that verifies the certificate logs
        in with SASL PLAIN and talks with a native user.
        """
        g = IRCGateway(self, tls=True)
        await g.gw.start()
        alice = await g.ircUser("alice", sasl=True)
        bob, bobSees = await g.gw.client("bob", PASSWORDS["bob"])
        alice.connection.privmsg("bob", "over TLS")
        await bobSees.waitForMessage("alice@corp.example", "over TLS", timeout=10)
        await bob.sendMessage("alice@corp.example", "read over TLS \u2713")
        await alice.waitForPrivmsg("bob", "read over TLS \u2713")

    async def test_badPassword(self) -> None:
        """
        A wrong password gets 464 and the connection is closed; the same
        for an account that does not exist.
        """
        g = IRCGateway(self)
        await g.gw.start()
        answers = []
        for user, password in [("alice", "alice:wrong"), ("nobody", "nobody:wrong")]:
            client = IRCUser(self)
            client.connect(g.ircPort, user, password)
            line = await client.waitForLine("464")
            await client.waitFor(lambda: client.disconnected, 10, "disconnect")
            answers.append(line.params[1:])
        self.assertEqual(answers, [("Password incorrect",)] * 2)
