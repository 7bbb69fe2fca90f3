# -*- test-case-name: tests.test_irc_face -*-
"""
Unit tests for the IRC face (L{imgateway.adapters.irc.face}) and the IRC
adapter's config: the protocol on a fake transport and a fake clock, over a
memory gateway. The real-socket proof, with a real IRC client library, is
in C{tests/e2e/test_irc_face.py}.
"""

from __future__ import annotations

import base64
from typing import Any

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.adapters.irc.adapter import IRCAdapter
from imgateway.adapters.irc.face import CHANNEL, IRCConfig, IRCFaceFactory, IRCFaceProtocol
from imgateway.adapters.irc.network import IRCNetworkConfig
from imgateway.adapters.irc.wire import MAX_LINE_BYTES, TRUNCATION_MARK, IRCMessage, parseLine
from imgateway.auth.sasl import clientMechanism
from imgateway.config import ConfigTable, HomeConfig
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import AccessList
from imgateway.interfaces import IProtocolAdapter, ISession, ISessionClient
from imgateway.testing import RecordingSessionClient, TLSStringTransport, addUser, memoryGateway

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)
DOMAIN = "corp.example"
ALICE = Address.fromParts("alice", DOMAIN)
BOB = Address.fromParts("bob", DOMAIN)


class Client:
    """
    One IRC client connection to the face: write lines, read what the
    server wrote.
    """

    def __init__(self, factory: IRCFaceFactory, peer: IPv4Address = LOOPBACK, secure: bool = False) -> None:
        host = IPv4Address("TCP", "127.0.0.1", 6667)
        if secure:
            tls = TLSStringTransport(hostAddress=host, peerAddress=peer)
            tls.startTLS(object())
            tls.completeHandshake()
            self.transport: StringTransport = tls
        else:
            self.transport = StringTransport(peerAddress=peer, hostAddress=host)
        self.protocol: IRCFaceProtocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)

    def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode("utf-8")
            self.protocol.dataReceived(data + b"\r\n")

    def raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def rawLines(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n"), data
        lines: list[bytes] = data.split(b"\r\n")[:-1]
        return lines

    def read(self) -> list[IRCMessage]:
        return [parseLine(line) for line in self.rawLines()]

    def commands(self) -> list[str]:
        return [m.command for m in self.read()]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def register(self, nick: str = "someone", password: str | None = "alice:alice-pw") -> list[IRCMessage]:
        if password is not None:
            self.send(f"PASS {password}")
        self.send(f"NICK {nick}", "USER u 0 * :Real Name")
        return self.read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") or "+"


class FaceTestsMixin(SynchronousTestCase):
    """
    A memory gateway with alice and bob, and an IRC face.
    """

    config = IRCConfig()

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock, domain=DOMAIN, home=HomeConfig(maxSessionsPerUser=4))
        addUser(self.gateway, "alice", "alice-pw")
        addUser(self.gateway, "bob", "bob-pw")
        self.factory = IRCFaceFactory(self.gateway, self.config, self.clock)

    def client(self, peer: IPv4Address = LOOPBACK, secure: bool = False) -> Client:
        return Client(self.factory, peer, secure)

    def loggedIn(self) -> Client:
        c = self.client()
        lines = c.register()
        assert "001" in [m.command for m in lines], lines
        return c

    def session(self, address: Address = BOB) -> tuple[ISession, RecordingSessionClient]:
        mind = RecordingSessionClient()
        session = self.successResultOf(self.gateway.homeServer.openSession(address, mind))
        return session, mind

    def friends(self) -> tuple[ISession, RecordingSessionClient]:
        """
        Bob online, alice and bob watching each other.
        """
        bob, mind = self.session(BOB)
        alice, _ = self.session(ALICE)
        self.successResultOf(alice.subscribe(BOB))
        self.successResultOf(bob.authorise(ALICE, True))
        self.successResultOf(bob.subscribe(ALICE))
        self.successResultOf(alice.authorise(BOB, True))
        alice.close()
        bob.publish(Presence(PresenceState.ONLINE))
        return bob, mind


class RegistrationTests(FaceTestsMixin):
    """
    Logging in with PASS or SASL, and the registration numerics.
    """

    def test_interfaces(self) -> None:
        """
        The protocol is an L{ISessionClient}; the adapter an
        L{IProtocolAdapter}.
        """
        c = self.client()
        self.assertTrue(verifyObject(ISessionClient, c.protocol))
        self.assertTrue(verifyObject(IProtocolAdapter, IRCAdapter()))

    def test_pass(self) -> None:
        """
        C{PASS user:password}, C{NICK} and C{USER} log in: the client's
        nick becomes the user's (a C{NICK} line), then 001-005 with
        ISUPPORT, 422, and the join of C{&contacts}.
        """
        c = self.client()
        lines = c.register(nick="whatever")
        commands = [m.command for m in lines]
        self.assertEqual(commands[:8], ["NICK", "001", "002", "003", "004", "005", "422", "JOIN"])
        self.assertEqual(lines[0].prefix, "whatever!u@corp.example")
        self.assertEqual(lines[0].params, ("alice",))
        self.assertEqual(lines[1].params[0], "alice")
        isupport = lines[5].params
        for token in ["CASEMAPPING=ascii", "CHANTYPES=&", "PREFIX=(v)+", "MONITOR=100", "LINELEN=512"]:
            self.assertIn(token, isupport)
        self.assertEqual(lines[7].prefix, "alice!alice@corp.example")
        self.assertEqual(lines[7].params, (CHANNEL,))
        self.assertIn("366", commands)
        self.assertEqual(self.gateway.homeServer.presenceOf(ALICE).state, PresenceState.ONLINE)
        self.assertFalse(c.closed)

    def test_passWithNick(self) -> None:
        """
        C{PASS password} alone takes the nick as the user name.
        """
        c = self.client()
        lines = c.register(nick="alice", password="alice-pw")
        self.assertEqual([m.command for m in lines][:1], ["001"])

    def test_passAfterUser(self) -> None:
        """
        The order of C{NICK}, C{USER} and C{PASS} does not matter as long
        as C{PASS} comes before the registration completes.
        """
        c = self.client()
        c.send("NICK alice", "PASS :alice:alice-pw", "USER u 0 * :x")
        self.assertIn("001", c.commands())

    def test_badPasswordSameAsNoAccount(self) -> None:
        """
        A wrong password and an unknown account get the same 464 and
        C{ERROR}, and the connection closes.
        """
        answers = []
        for password in ["alice:wrong", "nobody:wrong"]:
            c = self.client()
            lines = c.register(password=password)
            answers.append([(m.command, m.params) for m in lines])
            self.assertTrue(c.closed)
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], ("464", ("someone", "Password incorrect")))
        self.assertEqual(answers[0][1][0], "ERROR")

    def test_passwordRequired(self) -> None:
        """
        Registration without PASS or SASL is refused: 464 and C{ERROR}.
        """
        c = self.client()
        lines = c.register(password=None)
        self.assertEqual([m.command for m in lines], ["464", "ERROR"])
        self.assertTrue(c.closed)

    def test_plainNeedsTLS(self) -> None:
        """
        From a remote address without TLS, C{PASS} is refused (464) and
        SASL PLAIN is not offered; over TLS both work.
        """
        c = self.client(REMOTE)
        lines = c.register()
        self.assertEqual(lines[0].params[-1], "Passwords are accepted only over TLS here")
        self.assertTrue(c.closed)
        c = self.client(REMOTE)
        c.send("CAP LS 302")
        caps = c.read()[0].params[-1].split()
        self.assertNotIn("sasl=SCRAM-SHA-256,SCRAM-SHA-1,PLAIN", caps)
        self.assertIn("sasl=SCRAM-SHA-256,SCRAM-SHA-1", caps)
        c = self.client(REMOTE, secure=True)
        self.assertIn("001", [m.command for m in c.register()])

    def test_sasl(self) -> None:
        """
        C{CAP LS 302}, C{CAP REQ :sasl}, C{AUTHENTICATE PLAIN} and the
        response log in: 900 and 903, then the registration completes at
        C{CAP END}.
        """
        c = self.client()
        c.send("CAP LS 302", "NICK x", "USER u 0 * :r")
        ls = c.read()
        self.assertEqual(ls[0].command, "CAP")
        self.assertEqual(ls[0].params[:2], ("*", "LS"))
        self.assertIn("sasl=SCRAM-SHA-256,SCRAM-SHA-1,PLAIN", ls[0].params[2].split())
        self.assertIn("away-notify", ls[0].params[2].split())
        c.send("CAP REQ :sasl away-notify")
        self.assertEqual(c.read()[0].params[1:], ("ACK", "sasl away-notify"))
        c.send("AUTHENTICATE PLAIN")
        self.assertEqual(c.read()[0], IRCMessage({}, DOMAIN, "AUTHENTICATE", ("+",)))
        c.send("AUTHENTICATE " + b64(b"\0alice\0alice-pw"))
        lines = c.read()
        self.assertEqual([m.command for m in lines], ["900", "903"])
        self.assertEqual(lines[0].params[2], "alice@corp.example")
        c.send("CAP END")
        self.assertIn("001", c.commands())

    def test_saslScram(self) -> None:
        """
        SCRAM-SHA-256 works too: the server-final message goes as a
        challenge, which the client answers with C{+}.
        """
        c = self.client()
        c.send("CAP LS 302", "CAP REQ sasl", "NICK x", "USER u 0 * :r")
        c.read()
        mech = clientMechanism("SCRAM-SHA-256", "alice", "alice-pw")
        c.send("AUTHENTICATE SCRAM-SHA-256")
        self.assertEqual(c.read()[0].params, ("+",))
        c.send("AUTHENTICATE " + b64(mech.start()))
        challenge = base64.b64decode(c.read()[0].params[0])
        c.send("AUTHENTICATE " + b64(mech.step(challenge)))
        final = base64.b64decode(c.read()[0].params[0])
        mech.verifyFinal(final)
        c.send("AUTHENTICATE +")
        self.assertEqual([m.command for m in c.read()], ["900", "903"])
        c.send("CAP END")
        self.assertIn("001", c.commands())

    def test_saslChunks(self) -> None:
        """
        A response of more than 400 base64 characters comes in chunks of
        400; one that is a multiple of 400 ends with C{AUTHENTICATE +}. The
        face waits for the last chunk.
        """
        for password in ["p" * 293, "q" * 350]:
            addUser(self.gateway, "carol", password)
            c = self.client()
            c.send("CAP LS 302", "CAP REQ sasl", "NICK x", "USER u 0 * :r", "AUTHENTICATE PLAIN")
            c.read()
            text = b64(b"\0carol\0" + password.encode())
            chunks = [text[i : i + 400] for i in range(0, len(text), 400)]
            if len(chunks[-1]) == 400:
                chunks.append("+")
            self.assertEqual(len(chunks), 2)
            c.send("AUTHENTICATE " + chunks[0])
            self.assertEqual(c.read(), [])
            c.send("AUTHENTICATE " + chunks[1])
            self.assertEqual([m.command for m in c.read()], ["900", "903"])
            del self.gateway.directory.accounts[Address.fromParts("carol", DOMAIN)]  # type: ignore[attr-defined]

    def test_saslFailuresBoundary(self) -> None:
        """
        C{max_auth_attempts} - 1 failures answer 904 and leave the
        connection open; the next one closes it.
        """
        c = self.client()
        c.send("CAP LS 302", "CAP REQ sasl")
        c.read()
        for n in range(self.config.maxAuthAttempts):
            c.send("AUTHENTICATE PLAIN")
            c.read()
            c.send("AUTHENTICATE " + b64(b"\0alice\0wrong"))
            lines = c.read()
            self.assertEqual(lines[0].command, "904")
            self.assertEqual(c.closed, n == self.config.maxAuthAttempts - 1)
        self.assertEqual(lines[-1].command, "ERROR")

    def test_saslAbortAndUnknownMechanism(self) -> None:
        """
        C{AUTHENTICATE *} aborts (906); an unknown mechanism gets 908 and
        904; AUTHENTICATE without the capability gets 904.
        """
        c = self.client()
        c.send("AUTHENTICATE PLAIN")
        self.assertEqual(c.commands(), ["904"])
        c.send("CAP LS 302", "CAP REQ sasl")
        c.read()
        c.send("AUTHENTICATE PLAIN", "AUTHENTICATE *")
        self.assertEqual(c.commands(), ["AUTHENTICATE", "906"])
        c.send("AUTHENTICATE X-UNKNOWN")
        self.assertEqual(c.commands(), ["908", "904"])

    def test_commandsBeforeRegistration(self) -> None:
        """
        Known commands before registration get 451; unknown ones 421;
        PING is answered.
        """
        c = self.client()
        c.send("PRIVMSG bob :hi", "FOO", "PING :x")
        lines = c.read()
        self.assertEqual([m.command for m in lines], ["451", "421", "PONG"])
        self.assertEqual(lines[2].params, (DOMAIN, "x"))

    def test_nickCannotChange(self) -> None:
        """
        After registration, C{NICK} to another nick is refused (447).
        """
        c = self.loggedIn()
        c.send("NICK other", "NICK alice")
        self.assertEqual(c.commands(), ["447"])

    def test_unknownCommand(self) -> None:
        """
        An unknown command gets 421 with the command named.
        """
        c = self.loggedIn()
        c.send("FROB x")
        self.assertEqual([(m.command, m.params[1]) for m in c.read()], [("421", "FROB")])

    def test_nonUTF8(self) -> None:
        """
        A latin-1 line is decoded with the fallback charset, and a UTF-8
        character split across reads is whole.
        """
        bob, mind = self.session(BOB)
        bob.publish(Presence(PresenceState.ONLINE))
        c = self.loggedIn()
        c.send(b"PRIVMSG bob :caf\xe9")
        data = "PRIVMSG bob :\u00e9t\u00e9\r\n".encode()
        c.raw(data[:14])
        c.raw(data[14:])
        self.assertEqual([m.body for m in mind.messages], ["caf\u00e9", "\u00e9t\u00e9"])
        self.assertFalse(c.closed)

    def test_quit(self) -> None:
        """
        C{QUIT} closes with C{ERROR}; the session ends.
        """
        c = self.loggedIn()
        c.send("QUIT :bye")
        self.assertEqual(c.commands(), ["ERROR"])
        c.protocol.connectionLost()
        self.assertEqual(self.gateway.homeServer.sessionsOf(ALICE), [])


class ContactsTests(FaceTestsMixin):
    """
    Contacts in &contacts, presence as voice and away, messages.
    """

    def test_namesVoice(self) -> None:
        """
        An available contact is voiced in the NAMES of &contacts.
        """
        self.friends()
        c = self.client()
        lines = c.register()
        names = [m for m in lines if m.command == "353"]
        self.assertEqual(names[0].params[1:], ("=", CHANNEL, "@alice +bob"))

    def test_presenceChanges(self) -> None:
        """
        A contact going away shows as C{AWAY} (away-notify) with its
        label and note; coming back unsets it; going offline takes its
        voice; coming online gives it back.
        """
        bob, _ = self.friends()
        c = self.client()
        c.send("CAP LS 302", "CAP REQ away-notify", "CAP END")
        c.register()
        bob.publish(Presence(PresenceState.BUSY, "in a meeting"))
        self.assertEqual(c.read(), [IRCMessage({}, "bob!bob@corp.example", "AWAY", ("Busy: in a meeting",))])
        bob.publish(Presence(PresenceState.ONLINE))
        self.assertEqual(c.read(), [IRCMessage({}, "bob!bob@corp.example", "AWAY", ())])
        bob.close()
        self.assertEqual(c.read(), [IRCMessage({}, DOMAIN, "MODE", (CHANNEL, "-v", "bob"))])
        bob2, _ = self.session(BOB)
        bob2.publish(Presence(PresenceState.AWAY))
        self.assertEqual(
            c.read(),
            [
                IRCMessage({}, DOMAIN, "MODE", (CHANNEL, "+v", "bob")),
                IRCMessage({}, "bob!bob@corp.example", "AWAY", ("Away",)),
            ],
        )

    def test_whoisAndWho(self) -> None:
        """
        WHOIS names the contact's address and away message; WHO lists
        &contacts with H/G and voice.
        """
        bob, _ = self.friends()
        bob.publish(Presence(PresenceState.ON_THE_PHONE))
        c = self.loggedIn()
        c.send("WHOIS bob")
        lines = c.read()
        self.assertEqual([m.command for m in lines], ["311", "319", "312", "301", "318"])
        self.assertEqual(lines[0].params[1:], ("bob", "bob", DOMAIN, "*", "bob@corp.example"))
        self.assertEqual(lines[3].params[2], "On the phone")
        c.send("WHO &contacts")
        lines = c.read()
        self.assertEqual(lines[0].command, "352")
        self.assertEqual(lines[0].params[5:7], ("bob", "G+"))
        self.assertEqual(lines[-1].command, "315")

    def test_whoisUnknownAddressSameAsOffline(self) -> None:
        """
        WHOIS of a nick that is no contact tells nothing about whether
        the account exists.
        """
        c = self.loggedIn()
        c.send("WHOIS nobody", "WHOIS bob")
        lines = c.read()
        self.assertEqual(len(lines), 6)
        first = [(m.command, [p.replace("nobody", "X") for p in m.params]) for m in lines[:3]]
        second = [(m.command, [p.replace("bob", "X") for p in m.params]) for m in lines[3:]]
        self.assertEqual(first, second)

    def test_monitor(self) -> None:
        """
        MONITOR + answers 730 for an available contact and 731 otherwise,
        then reports changes; L lists; - removes.
        """
        bob, _ = self.friends()
        c = self.loggedIn()
        c.send("MONITOR + bob,nobody")
        self.assertEqual([(m.command, m.params[1]) for m in c.read()], [("730", "bob!bob@corp.example"), ("731", "nobody")])
        bob.close()
        self.assertIn(("731", "bob"), [(m.command, m.params[1]) for m in c.read()])
        c.send("MONITOR L")
        self.assertEqual([m.command for m in c.read()], ["732", "733"])
        c.send("MONITOR - bob,nobody", "MONITOR L")
        self.assertEqual([m.command for m in c.read()], ["733"])

    def test_ison(self) -> None:
        """
        ISON names the available ones.
        """
        self.friends()
        c = self.loggedIn()
        c.send("ISON bob nobody")
        self.assertEqual(c.read()[0].params[1], "bob")

    def test_messages(self) -> None:
        """
        PRIVMSG nick goes to the contact; its messages come back as PRIVMSG
        from its mask; /me both ways; formatting stripped.
        """
        bob, mind = self.friends()
        c = self.loggedIn()
        c.send("PRIVMSG bob :\x02hi\x02 there", "PRIVMSG bob :\x01ACTION waves\x01")
        self.assertEqual([m.body for m in mind.messages], ["hi there", "/me waves"])
        self.successResultOf(bob.sendMessage(ALICE, "hello\x01 alice"))
        self.successResultOf(bob.sendMessage(ALICE, "/me smiles"))
        self.assertEqual(
            c.read(),
            [
                IRCMessage({}, "bob!bob@corp.example", "PRIVMSG", ("alice", "hello alice")),
                IRCMessage({}, "bob!bob@corp.example", "PRIVMSG", ("alice", "\x01ACTION smiles\x01")),
            ],
        )

    def test_anyAddress(self) -> None:
        """
        A message to the nick of an address of another domain goes to
        that address (through the router).
        """
        c = self.loggedIn()
        c.send("PRIVMSG frank|libera^irc :hi")
        # No route to libera.irc here: the core says so, and that is not
        # a private status.
        lines = c.read()
        self.assertEqual(lines[0].command, "NOTICE")
        self.assertIn("frank|libera^irc", lines[0].params[1])

    def test_longAndInjectedMessages(self) -> None:
        """
        A 2,000-character message arrives as lines within 512 bytes that
        join back to it; embedded C{\\r\\nQUIT :x} arrives as text.
        """
        bob, _ = self.friends()
        c = self.loggedIn()
        text = ("word " * 400)[:2000]
        self.successResultOf(bob.sendMessage(ALICE, text))
        raw = c.rawLines()
        self.assertGreater(len(raw), 3)
        for line in raw:
            self.assertLessEqual(len(line) + 2, MAX_LINE_BYTES)
        self.assertEqual("".join(parseLine(line).params[1] for line in raw), text)
        self.successResultOf(bob.sendMessage(ALICE, "hi\r\nQUIT :x"))
        self.assertEqual([m.params for m in c.read()], [("alice", "hi"), ("alice", "QUIT :x")])
        self.assertFalse(c.closed)

    def test_messageLinesBoundary(self) -> None:
        """
        A message of C{max_message_lines} lines arrives whole; one more
        line and the last is cut with the truncation mark.
        """
        bob, _ = self.friends()
        c = self.loggedIn()
        n = self.config.maxMessageLines
        self.successResultOf(bob.sendMessage(ALICE, "\n".join(str(i) for i in range(n))))
        lines = c.read()
        self.assertEqual(len(lines), n)
        self.assertEqual(lines[-1].params[1], str(n - 1))
        self.successResultOf(bob.sendMessage(ALICE, "\n".join(str(i) for i in range(n + 1))))
        lines = c.read()
        self.assertEqual(len(lines), n)
        self.assertEqual(lines[-1].params[1], str(n - 1) + TRUNCATION_MARK)

    def test_undeliverableSameForUnknownAndOffline(self) -> None:
        """
        A message to an unknown user and one to an offline user get the
        same 401.
        """
        c = self.loggedIn()
        c.send("PRIVMSG nobody :hi", "PRIVMSG bob :hi")
        lines = c.read()
        self.assertEqual([(m.command, m.params[2]) for m in lines], [("401", "No such nick/channel")] * 2)
        self.assertEqual([m.params[1] for m in lines], ["nobody", "bob"])

    def test_awayPublishes(self) -> None:
        """
        AWAY publishes the presence the shared table gives the message;
        AWAY alone publishes online.
        """
        c = self.loggedIn()
        c.send("AWAY :Out to lunch: back at 2")
        self.assertEqual(c.commands(), ["306"])
        self.assertEqual(
            self.gateway.homeServer.presenceOf(ALICE), Presence(PresenceState.OUT_TO_LUNCH, "back at 2")
        )
        c.send("AWAY")
        self.assertEqual(c.commands(), ["305"])
        self.assertEqual(self.gateway.homeServer.presenceOf(ALICE).state, PresenceState.ONLINE)

    def test_leaseRenewed(self) -> None:
        """
        The presence stays published as long as the connection: the face
        renews its lease.
        """
        c = self.loggedIn()
        for _ in range(5):
            self.clock.advance(self.gateway.config.home.presenceLease)
            c.send("PING x")
        self.assertEqual(self.gateway.homeServer.presenceOf(ALICE).state, PresenceState.ONLINE)


class CommandTests(FaceTestsMixin):
    """
    The commands said in &contacts: thin calls on the session.
    """

    def say(self, c: Client, text: str) -> list[str]:
        c.send(f"PRIVMSG {CHANNEL} :{text}")
        return [m.params[1] for m in c.read() if m.command == "NOTICE"]

    def test_addAcceptRemove(self) -> None:
        """
        add asks to watch; the other side's answer arrives as a notice and
        the contact joins &contacts; remove parts it; accept answers a
        request.
        """
        bob, _ = self.session(BOB)
        bob.publish(Presence(PresenceState.ONLINE))
        c = self.loggedIn()
        c.send(f"PRIVMSG {CHANNEL} :add bob Bobby")
        lines = c.read()
        self.assertIn(IRCMessage({}, "bob!bob@corp.example", "JOIN", (CHANNEL,)), lines)
        self.assertIn("you will see their presence once they allow it", lines[-1].params[1])
        self.successResultOf(bob.authorise(ALICE, True))
        lines = c.read()
        self.assertIn(IRCMessage({}, DOMAIN, "MODE", (CHANNEL, "+v", "bob")), lines)
        self.assertIn("bob@corp.example allowed you to watch their presence", [m.params[1] for m in lines])
        self.successResultOf(bob.subscribe(ALICE))
        self.assertIn("say 'accept bob@corp.example'", c.read()[0].params[1])
        self.assertEqual(self.say(c, "accept bob@corp.example"), ["bob@corp.example may watch your presence"])
        c.send(f"PRIVMSG {CHANNEL} :remove bob")
        lines = c.read()
        self.assertIn(IRCMessage({}, "bob!bob@corp.example", "PART", (CHANNEL, "Removed from your contacts")), lines)

    def test_allowBlock(self) -> None:
        """
        allow and block put entries on the lists, - takes them off, and
        alone they list.
        """
        c = self.loggedIn()
        self.assertEqual(self.say(c, "block evil.example"), ["evil.example is on your block list"])
        self.assertEqual(self.say(c, "allow bob"), ["bob@corp.example is on your allow list"])
        self.assertEqual(self.say(c, "block"), ["block: evil.example"])
        session = self.gateway.homeServer.sessionsOf(ALICE)[0]
        self.assertEqual(
            self.successResultOf(session.accessLists()),
            {"evil.example": AccessList.BLOCK, "bob@corp.example": AccessList.ALLOW},
        )
        self.assertEqual(self.say(c, "block -evil.example"), ["evil.example is off your block list"])
        self.assertEqual(self.say(c, "block"), ["block: nobody"])

    def test_status(self) -> None:
        """
        status sets the presence; alone it shows it.
        """
        c = self.loggedIn()
        self.assertEqual(self.say(c, "status busy in a meeting"), ["Your presence: busy (in a meeting)"])
        self.assertEqual(self.gateway.homeServer.presenceOf(ALICE), Presence(PresenceState.BUSY, "in a meeting"))
        self.assertEqual(self.say(c, "status"), ["Your presence: busy (in a meeting)"])
        self.assertIn("status STATE [NOTE]", self.say(c, "status dancing")[0])

    def test_rule(self) -> None:
        """
        rule sets, lists and removes a presence rule through the session.
        """
        c = self.loggedIn()
        self.assertEqual(self.say(c, "rule busy tel:+15550100"), ["rule busy tel:+15550100"])
        self.assertEqual(self.say(c, "rule"), ["1. busy: refuse tel:+15550100"])
        self.assertEqual(self.say(c, "rule busy -"), ["No rule for busy"])
        self.assertEqual(self.say(c, "rule"), ["No presence rules"])

    def test_helpAndUnknown(self) -> None:
        """
        help lists the commands; an unknown one says so.
        """
        c = self.loggedIn()
        self.assertIn("Commands, said in &contacts:", self.say(c, "help"))
        self.assertEqual(self.say(c, "frob"), ["Unknown command 'frob': say 'help'"])
        self.assertEqual(self.say(c, "add"), ["add ADDRESS [NAME]"])


class LimitTests(FaceTestsMixin):
    """
    Each limit at its boundary: N accepted, N+1 refused.
    """

    config = IRCConfig(
        maxRegistrationCommands=6,
        commandBurst=3,
        commandsPerSecond=2.0,
        maxConnectionsPerAddress=3,
        maxUnauthenticated=2,
        preAuthBytes=200,
        maxMonitorTargets=2,
    )

    def loggedIn(self) -> Client:
        # Registering takes the burst of command tokens: wait for a new one.
        c = super().loggedIn()
        self.clock.advance(5)
        return c

    def test_lineLength(self) -> None:
        """
        A line of 512 bytes with its CR LF is handled; 513 gets 417
        (ERR_INPUTTOOLONG) and the connection stays.
        """
        c = self.loggedIn()
        c.send("PING " + "x" * (510 - 5))
        self.assertEqual(c.commands(), ["PONG"])
        c.send("PING " + "x" * (511 - 5))
        self.assertEqual(c.commands(), ["417"])
        self.assertFalse(c.closed)

    def test_tagBytes(self) -> None:
        """
        A tag section of 4096 bytes (its @ and space included) is
        accepted; 4097 gets 417.
        """
        c = self.loggedIn()
        c.send("@a=" + "x" * (4096 - 4) + " PING y")
        self.assertEqual(c.commands(), ["PONG"])
        c.send("@a=" + "x" * (4096 - 3) + " PING y")
        self.assertEqual(c.commands(), ["417"])

    def test_hardLineCap(self) -> None:
        """
        A line as long as tags and line together (4,606 bytes without its
        CR LF) gets 417; one byte more is not buffered: ERROR and close,
        whether the line has ended or not.
        """
        c = self.loggedIn()
        c.raw(b"x" * (4096 + 510) + b"\r\n")
        self.assertEqual(c.commands(), ["417"])
        self.assertFalse(c.closed)
        c.raw(b"x" * (4096 + 510 + 1) + b"\r\n")
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)
        c = self.loggedIn()
        c.raw(b"x" * (4096 + 510 + 2))
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)

    def test_registrationTimeout(self) -> None:
        """
        A connection not registered within C{registration_timeout} gets
        C{ERROR} and is closed; just before, it is open.
        """
        c = self.client()
        self.clock.advance(self.config.registrationTimeout - 0.001)
        self.assertFalse(c.closed)
        self.clock.advance(0.001)
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)

    def test_registrationCommands(self) -> None:
        """
        C{max_registration_commands} commands before registration are
        handled; one more closes the connection.
        """
        c = self.client()
        for _ in range(self.config.maxRegistrationCommands):
            c.send("PING a")
            self.clock.advance(1)
        self.assertEqual(c.commands(), ["PONG"] * self.config.maxRegistrationCommands)
        c.send("PING a")
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)

    def test_fakelag(self) -> None:
        """
        C{command_burst} commands are handled at once; the next waits
        1/C{commands_per_second} seconds, reading paused meanwhile.
        """
        c = self.loggedIn()
        self.clock.advance(10)
        c.send(*["PING a"] * (self.config.commandBurst + 1))
        self.assertEqual(c.commands(), ["PONG"] * self.config.commandBurst)
        self.assertEqual(c.transport.producerState, "paused")
        self.clock.advance(1 / self.config.commandsPerSecond - 0.001)
        self.assertEqual(c.commands(), [])
        self.clock.advance(0.001)
        self.assertEqual(c.commands(), ["PONG"])
        self.assertEqual(c.transport.producerState, "producing")

    def test_connectionsPerAddress(self) -> None:
        """
        C{max_connections_per_address} connections from one address, logged
        in or not, are accepted; the next is refused.
        """
        clients = [self.loggedIn() for _ in range(self.config.maxConnectionsPerAddress)]
        self.assertFalse(any(c.closed for c in clients))
        extra = self.client()
        self.assertEqual(extra.commands(), ["ERROR"])
        self.assertTrue(extra.closed)
        clients[0].protocol.connectionLost()
        self.assertFalse(self.client().closed)

    def test_unauthenticated(self) -> None:
        """
        C{max_unauthenticated} connections waiting to register are
        accepted; the next is refused.
        """
        peers = [IPv4Address("TCP", f"127.0.0.{n}", 40000) for n in range(1, 5)]
        first = [self.client(peers[n]) for n in range(self.config.maxUnauthenticated)]
        self.assertFalse(any(c.closed for c in first))
        extra = self.client(peers[3])
        self.assertTrue(extra.closed)

    def test_preAuthBytes(self) -> None:
        """
        C{pre_auth_bytes} bytes before login are handled; one more closes
        the connection.
        """
        c = self.client()
        c.raw(b"\r\n" * (self.config.preAuthBytes // 2))
        self.assertFalse(c.closed)
        c.raw(b"\n")
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)

    def test_monitorTargets(self) -> None:
        """
        C{max_monitor_targets} targets are monitored; one more gets 734.
        """
        c = self.loggedIn()
        c.send("MONITOR + a,b")
        self.assertEqual(c.commands(), ["731", "731"])
        c.send("MONITOR + c")
        lines = c.read()
        self.assertEqual([m.command for m in lines], ["734"])
        self.assertEqual(lines[0].params[1:3], ("2", "c"))

    def test_ping(self) -> None:
        """
        After C{ping_interval} seconds of silence the face PINGs; without
        an answer within C{ping_timeout}, ERROR and close; an answer keeps
        the connection.
        """
        c = self.loggedIn()
        self.clock.advance(self.config.pingInterval)
        self.assertEqual(c.commands(), ["PING"])
        c.send("PONG :" + DOMAIN)
        self.clock.advance(self.config.pingInterval)
        self.assertEqual(c.commands(), ["PING"])
        self.clock.advance(self.config.pingTimeout - 0.001)
        self.assertFalse(c.closed)
        self.clock.advance(0.001)
        self.assertEqual(c.commands(), ["ERROR"])
        self.assertTrue(c.closed)

    def test_sendQueue(self) -> None:
        """
        A client that does not read while messages pile up past
        C{max_send_queue_bytes} is dropped.
        """
        factory = IRCFaceFactory(self.gateway, evolve(self.config, maxSendQueueBytes=1000), self.clock)
        bob, _ = self.friends()
        c = Client(factory)
        c.register()
        c.protocol.transport.producer.pauseProducing()  # type: ignore[union-attr]
        for _ in range(3):
            self.successResultOf(bob.sendMessage(ALICE, "x" * 400))
        self.assertFalse(c.transport.disconnected)
        self.successResultOf(bob.sendMessage(ALICE, "x" * 400))
        self.assertTrue(c.transport.disconnected)


class ConfigTests(SynchronousTestCase):
    """
    The [irc] table.
    """

    def parse(self, table: dict[str, Any]) -> IRCConfig:
        t = ConfigTable(table, "test.toml [irc]")
        config = IRCAdapter().parseConfig(t, MemoryReactor())
        t.finish()
        return config

    def test_defaults(self) -> None:
        """
        An empty table gives the defaults: a loopback listener, a 512-byte
        line and 4096 bytes of tags, and no networks.
        """
        config = self.parse({})
        self.assertEqual(config, IRCConfig())
        self.assertEqual(config.listen, ("tcp:6667:interface=127.0.0.1",))
        self.assertEqual(config.networks, ())

    def test_keys(self) -> None:
        """
        Every key is read.
        """
        config = self.parse(
            {
                "listen": ["tcp:7000:interface=127.0.0.1"],
                "max_line_bytes": 1024,
                "max_tag_bytes": 8192,
                "registration_timeout": 10,
                "max_registration_commands": 10,
                "commands_per_second": 1,
                "command_burst": 2,
                "max_connections_per_address": 3,
                "max_unauthenticated": 4,
                "pre_auth_bytes": 5000,
                "max_auth_attempts": 2,
                "allow_plaintext_auth": True,
                "ping_interval": 60,
                "ping_timeout": 30,
                "max_send_queue_bytes": 9999,
                "max_message_lines": 7,
                "max_monitor_targets": 8,
                "fallback_charset": "cp1252",
            }
        )
        self.assertEqual(config.maxLineBytes, 1024)
        self.assertEqual(config.fallbackCharset, "cp1252")
        self.assertTrue(config.allowPlaintextAuth)

    def test_errors(self) -> None:
        """
        Bad values name their key.
        """
        for table, key in [
            ({"max_line_bytes": 511}, "max_line_bytes"),
            ({"max_tag_bytes": 0}, "max_tag_bytes"),
            ({"fallback_charset": "no-such"}, "fallback_charset"),
            ({"listen": ["bogus:1"]}, "listen"),
            ({"commands_per_second": -1}, "commands_per_second"),
            ({"frob": 1}, "frob"),
        ]:
            e = self.assertRaises(ConfigError, self.parse, table)
            self.assertIn(key, str(e))

    def test_shippedConfig(self) -> None:
        """
        The [irc] table of C{etc/imgateway.toml} is off, and its keys are
        every key, at its default.
        """
        import tomllib

        from twisted.python.filepath import FilePath

        path = FilePath(__file__).parent().parent().child("etc").child("imgateway.toml")
        table = tomllib.loads(path.getContent().decode())["irc"]
        self.assertIs(table.pop("enabled"), False)
        self.assertEqual(self.parse(table), IRCConfig())
        names = {"listen", "max_line_bytes", "max_tag_bytes", "registration_timeout", "max_registration_commands"}
        self.assertTrue(names <= set(table))
        self.assertEqual(len(table), len([f for f in IRCConfig.__attrs_attrs__ if f.name != "networks"]))


class NetworkPlacementTests(SynchronousTestCase):
    """
    Where C{[[irc.network]]} tables may be, in a domain with several
    servers (C{docs/irc.md}, "Behind the router").
    """

    network = IRCNetworkConfig("testnet", "testnet.irc", "tcp:127.0.0.1:6667")

    def makeService(self, roles: frozenset[str]) -> Any:
        from tests.test_router_front import routerGateway

        gateway = routerGateway(Clock(), roles=roles)
        return IRCAdapter().makeService(gateway, IRCConfig(listen=(), networks=(self.network,)))

    def test_homeServerRefused(self) -> None:
        """
        A home server that is no router, in a domain with other servers,
        does not start with an C{[[irc.network]]} table: the error names
        the network, the process and its roles, and says where the table
        goes.
        """
        e = self.assertRaises(ConfigError, self.makeService, frozenset({"home"}))
        for part in ("[[irc.network]] testnet", "hs1 has the roles home", "routers' configurations"):
            self.assertIn(part, str(e))

    def test_routerBridges(self) -> None:
        """
        A router (with or without the role C{home}) runs the bridge; so does
        a single-host gateway.
        """
        for roles in (frozenset({"router"}), frozenset({"router", "home"})):
            self.assertIsNotNone(self.makeService(roles))
        gateway = memoryGateway(Clock(), domain=DOMAIN)
        self.assertIsNotNone(IRCAdapter().makeService(gateway, IRCConfig(listen=(), networks=(self.network,))))
