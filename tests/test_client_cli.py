# -*- test-case-name: tests.test_client_cli -*-
"""
Tests for the C{imgateway-client} command: L{imgateway.client.cli},
L{imgateway.client.parsing}, L{imgateway.client.formatting},
L{imgateway.client.chat} and L{imgateway.client.oneshot}.

They check parsing and formatting, and drive L{ChatSession} with a fake
client; C{tests.e2e.test_client_cli} runs the command as a real process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgateway import __version__
from imgateway.auth.sasl import SASLFailure
from imgateway.client.chat import ChatSession
from imgateway.client.cli import buildParser, parseArguments, readPassword
from imgateway.client.formatting import (
    describeConnectFailure,
    describeFailure,
    formatContact,
    formatContactRow,
    formatMessage,
    formatPresence,
    formatSubscription,
    formatWho,
    sanitise,
)
from imgateway.client.oneshot import ONE_SHOT_COMMANDS, runOn
from imgateway.client.parsing import parseAlternate, parseEntry, parseState, parseStatus, resolveAddress
from imgateway.client.protocol import BYE_TIMEOUT, ClientError
from imgateway.core.address import Address
from imgateway.core.errors import (
    InvalidAddress,
    NoSuchUser,
    NotAuthorised,
    ServerError,
    UserBusy,
    UserOffline,
)
from imgateway.core.presence import Presence, PresenceState

ALICE = Address.fromString("alice@corp.example")
BOB = Address.fromString("bob@corp.example")
CAROL = Address.fromString("carol@corp.example")


class ParseStateTests(SynchronousTestCase):
    """
    Tests for L{parseState} and L{parseStatus}.
    """

    def test_exactNames(self) -> None:
        """
        Every state but offline is accepted by its protocol name.
        """
        for state in PresenceState:
            if state is not PresenceState.OFFLINE:
                self.assertIs(parseState(state.value), state)

    def test_variants(self) -> None:
        """
        Case, underscores and spaces in place of dashes do not matter.
        """
        self.assertIs(parseState("Be_Right_Back"), PresenceState.BE_RIGHT_BACK)
        self.assertIs(parseState("out to lunch"), PresenceState.OUT_TO_LUNCH)
        self.assertIs(parseState(" AWAY "), PresenceState.AWAY)

    def test_aliases(self) -> None:
        """
        The short aliases name their states.
        """
        self.assertEqual(
            {alias: parseState(alias) for alias in ("brb", "lunch", "phone", "dnd", "invisible")},
            {
                "brb": PresenceState.BE_RIGHT_BACK,
                "lunch": PresenceState.OUT_TO_LUNCH,
                "phone": PresenceState.ON_THE_PHONE,
                "dnd": PresenceState.BUSY,
                "invisible": PresenceState.APPEAR_OFFLINE,
            },
        )

    def test_offline(self) -> None:
        """
        C{offline} cannot be published; the error says what to do instead.
        """
        e = self.assertRaises(ValueError, parseState, "offline")
        self.assertIn("appear-offline", str(e))

    def test_unknown(self) -> None:
        """
        An unknown state is an error that lists the known ones.
        """
        e = self.assertRaises(ValueError, parseState, "snoozing")
        self.assertIn("'snoozing'", str(e))
        self.assertIn("be-right-back", str(e))
        self.assertIn("brb", str(e))

    def test_statusWithNote(self) -> None:
        """
        C{/status away at lunch} is the state C{away} with the note
        C{at lunch}.
        """
        self.assertEqual(parseStatus("away at lunch"), (PresenceState.AWAY, "at lunch"))

    def test_statusWithoutNote(self) -> None:
        """
        A state alone has an empty note.
        """
        self.assertEqual(parseStatus("out-to-lunch"), (PresenceState.OUT_TO_LUNCH, ""))
        self.assertEqual(parseStatus("brb"), (PresenceState.BE_RIGHT_BACK, ""))

    def test_statusInWords(self) -> None:
        """
        A state may be written in words; the longest run of words naming a
        state is the state, the rest is the note.
        """
        self.assertEqual(parseStatus("be right back in 5"), (PresenceState.BE_RIGHT_BACK, "in 5"))
        self.assertEqual(parseStatus("on the phone"), (PresenceState.ON_THE_PHONE, ""))
        self.assertEqual(parseStatus("lunch with bob"), (PresenceState.OUT_TO_LUNCH, "with bob"))

    def test_statusEmpty(self) -> None:
        """
        No state at all is a usage error.
        """
        e = self.assertRaises(ValueError, parseStatus, "   ")
        self.assertIn("usage: /status", str(e))

    def test_statusUnknown(self) -> None:
        """
        An unknown first word is an error naming it.
        """
        e = self.assertRaises(ValueError, parseStatus, "gone fishing")
        self.assertIn("'gone'", str(e))


class AddressTests(SynchronousTestCase):
    """
    Tests for L{resolveAddress} and L{parseEntry}.
    """

    def test_bare(self) -> None:
        """
        A bare name is a user of the given domain.
        """
        self.assertEqual(resolveAddress("Bob", "corp.example"), BOB)

    def test_full(self) -> None:
        """
        A full address or URI is taken as it is.
        """
        self.assertEqual(resolveAddress("bob@corp.example", "other.example"), BOB)
        self.assertEqual(resolveAddress("im:bob@corp.example", None), BOB)

    def test_bareWithoutDomain(self) -> None:
        """
        With no domain to complete it, a bare name is invalid.
        """
        self.assertRaises(InvalidAddress, resolveAddress, "bob", None)

    def test_invalid(self) -> None:
        """
        An invalid address raises L{InvalidAddress}.
        """
        self.assertRaises(InvalidAddress, resolveAddress, "bob smith@corp.example", "corp.example")

    def test_entries(self) -> None:
        """
        An access-list entry is an address, a domain (it has a dot), or a
        bare user name in the given domain; all normalised.
        """
        self.assertEqual(parseEntry("Bob@Corp.Example"), "bob@corp.example")
        self.assertEqual(parseEntry("Spam.Example"), "spam.example")
        self.assertEqual(parseEntry("bob", "corp.example"), "bob@corp.example")
        self.assertRaises(InvalidAddress, parseEntry, "not a domain")


class AlternateTests(SynchronousTestCase):
    """
    Tests for L{parseAlternate}: the alternate contact of a presence rule
    is a URI.
    """

    def test_uris(self) -> None:
        """
        URIs of every scheme one may be reached by are taken as typed
        (around spaces stripped).
        """
        for uri in [
            "tel:+15550100",
            "im:bob@corp.example",
            "sip:bob@corp.example",
            "xmpp:bob@xmpp.example",
            "mailto:bob@corp.example",
            "https://corp.example/bob",
            "SIPS:bob@corp.example;transport=tls",
        ]:
            self.assertEqual(parseAlternate(f" {uri} "), uri)

    def assertRefused(self, text: str, *parts: str) -> None:
        e = self.assertRaises(ValueError, parseAlternate, text)
        for part in ("the alternate must be a URI such as tel:+15550100",) + parts:
            self.assertIn(part, str(e))

    def test_notURIs(self) -> None:
        """
        Text without a scheme, with spaces, an empty or malformed scheme, or
        nothing after the scheme is refused, with examples.
        """
        self.assertRefused("not a uri", "im:bob@corp.example", "'not a uri'")
        self.assertRefused("")
        self.assertRefused("tel:+1 555 0100")
        self.assertRefused("tel:")
        self.assertRefused(":+15550100")
        self.assertRefused("1tel:+15550100")
        self.assertRefused("te l:+15550100")

    def test_controlCharacters(self) -> None:
        """
        Control characters are refused, and shown escaped.
        """
        self.assertRefused("tel:+1555\x1b[2J", "\\x1b")

    def test_hints(self) -> None:
        """
        An address or a telephone number without its scheme gets a hint.
        """
        self.assertRefused("bob@corp.example", "did you mean im:bob@corp.example?")
        self.assertRefused("+1 555 0100", "did you mean tel:+15550100?")


class FormatTests(SynchronousTestCase):
    """
    Tests for the formatting of what the server sends.
    """

    def test_message(self) -> None:
        """
        An incoming message is C{<< sender: body}.
        """
        self.assertEqual(formatMessage(ALICE, "hello"), "<< alice@corp.example: hello")

    def test_multilineMessage(self) -> None:
        """
        Further lines of a message are indented under the first.
        """
        self.assertEqual(
            formatMessage(ALICE, "one\r\ntwo"),
            "<< alice@corp.example: one\n                       two",
        )

    def test_sanitise(self) -> None:
        """
        Terminal escapes, other control characters and bidirectional
        overrides are shown escaped; other text is kept.
        """
        self.assertEqual(sanitise("\x1b[2Jhi\r\u202eré"), "\\x1b[2Jhi\\r\\u202eré")
        self.assertEqual(sanitise("a\tb"), "a\\tb")
        self.assertEqual(sanitise("a\tb", keepTabs=True), "a\tb")
        self.assertEqual(formatMessage(ALICE, "\x07bell"), "<< alice@corp.example: \\x07bell")

    def test_presence(self) -> None:
        """
        A presence change reads C{** ADDRESS is now STATE (NOTE)}.
        """
        self.assertEqual(
            formatPresence(BOB, Presence(PresenceState.AWAY, "at lunch")),
            "** bob@corp.example is now away (at lunch)",
        )
        self.assertEqual(formatPresence(BOB, Presence(PresenceState.BUSY)), "** bob@corp.example is now busy")

    def test_subscription(self) -> None:
        """
        Subscription events say who did what, and a request says how to
        answer it.
        """
        self.assertEqual(
            formatSubscription(CAROL, "subscribe"),
            "** carol@corp.example asks to see your presence: "
            "/accept carol@corp.example or /deny carol@corp.example",
        )
        self.assertEqual(formatSubscription(BOB, "authorise"), "** bob@corp.example authorised you")
        self.assertEqual(formatSubscription(BOB, "refuse"), "** bob@corp.example refused")
        self.assertEqual(formatSubscription(BOB, "unsubscribe"), "** bob@corp.example stopped watching your presence")
        self.assertEqual(formatSubscription(BOB, "poke"), "** bob@corp.example: subscription event poke")

    def test_contactRow(self) -> None:
        """
        C{imgateway-client presence} prints one tab-separated row per
        contact; tabs in the note become spaces.
        """
        contact = {"address": "bob@corp.example", "presence": "away", "note": "at\tlunch", "subscription": "both"}
        self.assertEqual(formatContactRow(contact), "bob@corp.example\taway\tat lunch\t(subscription both)")
        pending = {"address": "carol@corp.example", "presence": "offline", "note": "", "subscription": "none", "pending": True}
        self.assertEqual(formatContactRow(pending), "carol@corp.example\toffline\t\t(subscription none, pending)")

    def test_contact(self) -> None:
        """
        C{/who} shows a watched contact's presence, and says when the
        presence is not shared or awaits authorisation.
        """
        self.assertEqual(
            formatContact({"address": "bob@corp.example", "name": "Bob", "subscription": "both", "presence": "away", "note": "at lunch"}),
            "bob@corp.example (Bob): away (at lunch) [subscription both]",
        )
        self.assertEqual(
            formatContact({"address": "bob@corp.example", "subscription": "from", "presence": "offline"}),
            "bob@corp.example: presence not shared [subscription from]",
        )
        self.assertEqual(
            formatContact({"address": "bob@corp.example", "subscription": "none", "pending": True}),
            "bob@corp.example: awaiting authorisation [subscription none, pending]",
        )

    def test_who(self) -> None:
        """
        C{/who} lists the contacts, then the pending requests.
        """
        data = {
            "contacts": [{"address": "bob@corp.example", "subscription": "to", "presence": "online", "note": ""}],
            "requests": ["carol@corp.example"],
        }
        self.assertEqual(
            formatWho(data),
            [
                "** 1 contact:",
                "**   bob@corp.example: online [subscription to]",
                "** carol@corp.example asks to see your presence: /accept carol@corp.example or /deny carol@corp.example",
            ],
        )
        self.assertEqual(formatWho({"contacts": [], "requests": []}), ["** no contacts yet (/add ADDRESS)"])


class DescribeFailureTests(SynchronousTestCase):
    """
    Tests for L{describeFailure} and L{describeConnectFailure}.
    """

    def test_offline(self) -> None:
        """
        A recipient offline: C{ADDRESS is offline (480)}.
        """
        self.assertEqual(describeFailure(UserOffline("bob@corp.example is offline"), "bob@corp.example"), "bob@corp.example is offline (480)")

    def test_busyWithAlternate(self) -> None:
        """
        A 486 names the alternate the recipient's rule gives.
        """
        self.assertEqual(
            describeFailure(UserBusy("bob is on the phone", "tel:+15550100"), "bob@corp.example"),
            "bob@corp.example is busy (486); try tel:+15550100",
        )
        self.assertEqual(describeFailure(UserBusy("busy"), "bob@corp.example"), "bob@corp.example is busy (486)")

    def test_noSuchUser(self) -> None:
        """
        A 404 says the recipient does not exist.
        """
        self.assertEqual(describeFailure(NoSuchUser("x"), "nobody@corp.example"), "nobody@corp.example does not exist (404)")

    def test_serverText(self) -> None:
        """
        For a server error the server's text is shown (escaped).
        """
        self.assertEqual(
            describeFailure(ServerError("disk \x1b on fire"), "bob@corp.example"),
            "bob@corp.example: server error (500): disk \\x1b on fire",
        )

    def test_clientError(self) -> None:
        """
        Other error statuses show their reason and code; a closed connection
        shows its reason alone.
        """
        self.assertEqual(describeFailure(ClientError(400, "Bad address"), "x"), "x: Bad address (400)")
        self.assertEqual(describeFailure(ClientError(400, "Bad address")), "Bad address (400)")
        self.assertEqual(describeFailure(ClientError(0, "connection closed")), "connection closed")

    def test_timeout(self) -> None:
        """
        A request that timed out says the server did not answer.
        """
        from twisted.internet.defer import TimeoutError as DeferredTimeout

        self.assertEqual(describeFailure(DeferredTimeout()), "no answer from the server")

    def test_connectionRefused(self) -> None:
        """
        A refused connection names the endpoint and the system's reason.
        """
        self.assertEqual(
            describeConnectFailure(ConnectionRefusedError(string="Connection refused"), "tcp:127.0.0.1:5300", "alice"),
            "cannot connect to tcp:127.0.0.1:5300: Connection refused",
        )

    def test_connectTimeout(self) -> None:
        """
        A connection error without a system reason uses its own message.
        """
        self.assertEqual(
            describeConnectFailure(TimeoutError(), "tcp:gw:5300", "alice"),
            "cannot connect to tcp:gw:5300: User timeout caused connection failure",
        )

    def test_authenticationFailed(self) -> None:
        """
        A refused login (401, which the library raises as
        L{NotAuthorised}) names the user and the server's reason.
        """
        self.assertEqual(
            describeConnectFailure(NotAuthorised("Authentication failed (not-authorized)"), "tcp:x:1", "alice"),
            "cannot log in as alice: Authentication failed (not-authorized)",
        )

    def test_encryptionRequired(self) -> None:
        """
        A 426 at login says to use TLS.
        """
        self.assertIn("tls:HOST:PORT", describeConnectFailure(ClientError(426, "Encryption required"), "tcp:x:1", "alice"))

    def test_serverProof(self) -> None:
        """
        A server that fails SCRAM's final check is reported as such.
        """
        self.assertIn(
            "could not prove",
            describeConnectFailure(SASLFailure("not-authorized", "bad server signature"), "tcp:x:1", "alice"),
        )


class ArgumentTests(SynchronousTestCase):
    """
    Tests for L{parseArguments} and L{readPassword}.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_defaultIsChat(self) -> None:
        """
        With no subcommand the client chats, with the default server and
        label.
        """
        a = parseArguments(["--user", "alice@corp.example"])
        self.assertEqual(
            (a.command, a.user, a.server, a.label, a.password_stdin),
            ("chat", "alice@corp.example", "tcp:127.0.0.1:5300", "imgateway-client", False),
        )

    def test_optionsAfterSubcommand(self) -> None:
        """
        Common options may follow the subcommand, and options given before
        it are not reset by it.
        """
        a = parseArguments(["--server", "tls:gw:5301", "send", "--user", "alice", "bob", "hello", "there"])
        self.assertEqual((a.server, a.user, a.address, a.text), ("tls:gw:5301", "alice", "bob", ["hello", "there"]))
        a = parseArguments(["--user", "alice", "--password-stdin", "presence", "--json"])
        self.assertEqual((a.user, a.password_stdin, a.json, a.server), ("alice", True, True, "tcp:127.0.0.1:5300"))

    def test_version(self) -> None:
        """
        C{--version} prints the program's name and version and exits with
        status 0, without asking for C{--user}.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, parseArguments, ["--version"])
        self.assertEqual((e.code, out.getvalue()), (0, f"imgateway-client {__version__}\n"))

    def test_everySubcommandRuns(self) -> None:
        """
        Every subcommand of the command line is C{chat} or a one-shot
        command that L{imgateway.client.oneshot} runs.
        """
        subparsers = [a for a in buildParser()._actions if isinstance(a, argparse._SubParsersAction)]
        self.assertEqual(len(subparsers), 1)
        self.assertEqual(set(subparsers[0].choices), ONE_SHOT_COMMANDS | {"chat"})

    def test_maxRedirects(self) -> None:
        """
        C{--max-redirects} (default 3) says how many redirects to the home
        server to follow, before or after the subcommand; a negative number
        is a usage error.
        """
        self.assertEqual(parseArguments(["--user", "alice"]).max_redirects, 3)
        self.assertEqual(parseArguments(["--max-redirects", "0", "--user", "alice", "ping"]).max_redirects, 0)
        self.assertEqual(parseArguments(["--user", "alice", "ping", "--max-redirects", "5"]).max_redirects, 5)
        e = self.assertRaises(SystemExit, parseArguments, ["--user", "alice", "--max-redirects", "-1"])
        self.assertEqual(e.code, 2)
        self.assertIn("--max-redirects must be 0 or more", self.stderr.getvalue())

    def test_userRequired(self) -> None:
        """
        Without C{--user}, the usage error exits with status 2.
        """
        e = self.assertRaises(SystemExit, parseArguments, ["send", "bob", "hi"])
        self.assertEqual(e.code, 2)
        self.assertIn("--user is required", self.stderr.getvalue())

    def test_missingArgument(self) -> None:
        """
        A subcommand without its arguments exits with status 2.
        """
        e = self.assertRaises(SystemExit, parseArguments, ["--user", "alice", "send", "bob"])
        self.assertEqual(e.code, 2)

    def test_badRuleState(self) -> None:
        """
        C{rule} checks its state before connecting.
        """
        e = self.assertRaises(SystemExit, parseArguments, ["--user", "alice", "rule", "snoozing", "tel:1"])
        self.assertEqual(e.code, 2)
        self.assertIn("unknown presence state", self.stderr.getvalue())

    def test_badRuleAlternate(self) -> None:
        """
        C{rule} checks that the alternate is a URI before connecting.
        """
        e = self.assertRaises(SystemExit, parseArguments, ["--user", "alice", "rule", "busy", "not a uri"])
        self.assertEqual(e.code, 2)
        self.assertIn("the alternate must be a URI", self.stderr.getvalue())
        a = parseArguments(["--user", "alice", "rule", "busy", "tel:+15550100"])
        self.assertEqual(a.words, ["busy", "tel:+15550100"])

    def test_ruleForms(self) -> None:
        """
        C{rule} takes the chat client's forms (C{add RULE}, C{insert N
        RULE}, C{remove N}, C{STATE [ALTERNATE]}), options after them too,
        and checks them before connecting, a bare name included; a rule
        that does not parse is a usage error naming the command.
        """
        for words in (
            ["add", "phone", "from", "bob", "forward", "bob@xmpp.example"],
            ["insert", "1", "busy", "reply", "In", "a", "meeting"],
            ["remove", "2"],
            ["busy"],
        ):
            a = parseArguments(["--user", "alice", "rule", *words, "-v"])
            self.assertEqual((a.words, a.verbose), (words, True))
        for words, said in (
            (["add", "phone", "shout"], "a rule is STATES [from SENDER]"),
            (["insert", "x", "busy", "deliver"], "usage: imgateway-client rule insert N RULE (N: 1 for the first rule)"),
            (["remove", "0"], "usage: imgateway-client rule remove N (N: 1 for the first rule)"),
            (["remove", "1", "2"], "usage: imgateway-client rule remove N"),
            (["add", "snoozing", "deliver"], "unknown presence state 'snoozing'"),
        ):
            self.stderr.seek(0)
            self.stderr.truncate()
            e = self.assertRaises(SystemExit, parseArguments, ["--user", "alice@corp.example", "rule", *words])
            self.assertEqual(e.code, 2)
            self.assertIn(said, self.stderr.getvalue())

    def _namespace(self, passwordStdin: bool) -> argparse.Namespace:
        return argparse.Namespace(password_stdin=passwordStdin, user="alice")

    def test_passwordStdin(self) -> None:
        """
        C{--password-stdin} reads the first line, and nothing after it.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        os.write(w, "s3cret é\r\n/msg bob hi\n".encode())
        os.close(w)
        self.assertEqual(readPassword(self._namespace(True), stdin=r, environ={}), "s3cret é")
        self.assertEqual(os.read(r, 100), b"/msg bob hi\n")

    def test_passwordStdinEmpty(self) -> None:
        """
        C{--password-stdin} with empty input is an error.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        os.close(w)
        self.assertRaises(ValueError, readPassword, self._namespace(True), stdin=r, environ={})

    def test_passwordEnvironment(self) -> None:
        """
        Without C{--password-stdin}, C{$IMGATEWAY_PASSWORD} is used.
        """
        self.assertEqual(readPassword(self._namespace(False), environ={"IMGATEWAY_PASSWORD": "pw"}), "pw")

    def test_passwordPrompt(self) -> None:
        """
        Otherwise the password is asked for; an empty answer is an error.
        """
        prompts: list[str] = []

        def prompt(text: str) -> str:
            prompts.append(text)
            return "typed"

        self.assertEqual(readPassword(self._namespace(False), environ={}, prompt=prompt), "typed")
        self.assertEqual(prompts, ["Password for alice: "])
        self.assertRaises(ValueError, readPassword, self._namespace(False), environ={}, prompt=lambda _: "")


class FakeClient:
    """
    Stands for a logged-in L{imgateway.client.protocol.NativeClientProtocol}:
    records calls, and answers with C{answers[method]} (a L{Deferred}) or
    at once with C{None}.
    """

    def __init__(self) -> None:
        self.address = ALICE
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.answers: dict[str, Deferred[Any]] = {}
        self.closed: Deferred[str] = Deferred()
        self.transport = None

    def _call(self, name: str, *args: Any) -> Deferred[Any]:
        self.calls.append((name, args))
        return self.answers.pop(name, None) or succeed(None)

    def sendMessage(self, to: Address, body: str) -> Deferred[Any]:
        return self._call("sendMessage", to, body)

    def subscribe(self, to: Address, name: str) -> Deferred[Any]:
        return self._call("subscribe", to, name)

    def unsubscribe(self, to: Address) -> Deferred[Any]:
        return self._call("unsubscribe", to)

    def authorise(self, to: Address, allow: bool) -> Deferred[Any]:
        return self._call("authorise", to, allow)

    def setAccess(self, entry: str, accessList: str) -> Deferred[Any]:
        return self._call("setAccess", entry, accessList)

    def accessLists(self) -> Deferred[Any]:
        return self._call("accessLists")

    def publish(self, state: PresenceState, note: str) -> Deferred[Any]:
        return self._call("publish", state, note)

    def setRule(self, state: PresenceState, alternate: str | None) -> Deferred[Any]:
        return self._call("setRule", state, alternate)

    def rules(self) -> Deferred[Any]:
        return self._call("rules")

    def addRule(self, rule: dict[str, object], position: int | None = None) -> Deferred[Any]:
        return self._call("addRule", rule, position)

    def removeRule(self, position: int) -> Deferred[Any]:
        return self._call("removeRule", position)

    def ping(self) -> Deferred[Any]:
        return self._call("ping")

    def contacts(self) -> Deferred[Any]:
        d = self._call("contacts")
        return d.addCallback(lambda r: r if r is not None else {"contacts": [], "requests": []})

    def bye(self) -> Deferred[str]:
        self.calls.append(("bye", ()))
        return self.whenClosed()

    def whenClosed(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()

        def fire(reason: str) -> str:
            d.callback(reason)
            return reason

        self.closed.addCallback(fire)
        return d


class OneShotRuleTests(SynchronousTestCase):
    """
    The one-shot C{rules} and C{rule} commands (L{runOn}), with a fake
    client: the chat client's forms, parsed by the same parser.
    """

    def setUp(self) -> None:
        self.client = FakeClient()
        self.out = io.StringIO()

    def oneShot(self, *argv: str) -> Deferred[None]:
        """
        Run C{imgateway-client --user alice -v ARGV} on the fake client.
        """
        arguments = parseArguments(["--user", "alice", "-v", *argv])
        return Deferred.fromCoroutine(runOn(cast(Any, self.client), arguments, self.out))

    def test_edit(self) -> None:
        """
        C{rule add RULE} adds a rule last, C{rule insert N RULE} at N, and
        C{rule remove N} removes rule N (a bare name in the user's domain);
        C{rule STATE ALTERNATE} and C{rule STATE} still set and remove the
        first protocol's refusal.
        """
        for argv in (
            ["add", "phone", "from", "bob", "forward", "bob@xmpp.example"],
            ["insert", "1", "phone,busy", "network", "remote", "reply", "On", "the", "phone"],
            ["remove", "2"],
            ["busy", "tel:+15550100"],
            ["dnd"],
        ):
            self.successResultOf(self.oneShot("rule", *argv))
        self.assertEqual(
            self.client.calls,
            [
                ("addRule", ({"states": ["on-the-phone"], "sender": "bob@corp.example", "action": "forward", "forward": "bob@xmpp.example"}, None)),
                ("addRule", ({"states": ["on-the-phone", "busy"], "network": "remote", "action": "auto-reply", "text": "On the phone"}, 1)),
                ("removeRule", (2,)),
                ("setRule", (PresenceState.BUSY, "tel:+15550100")),
                ("setRule", (PresenceState.BUSY, None)),
            ],
        )
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                "-> rule added: while on-the-phone from bob@corp.example: forward to bob@xmpp.example",
                "-> rule added at 1: while on-the-phone,busy (remote senders): reply 'On the phone'",
                "-> rule 2 removed",
                "-> rule for busy set",
                "-> rule for busy removed",
            ],
        )

    def test_list(self) -> None:
        """
        C{rules} prints the rules numbered, as C{/rules} shows them (the
        first protocol's refusals too); C{--json} the server's list.
        """
        answer = [
            {"states": ["on-the-phone"], "action": "refuse", "alternate": "tel:+15550100", "presence": "on-the-phone"},
            {"states": ["away"], "action": "auto-reply", "sender": "corp.example", "text": "back at 3"},
        ]
        self.client.answers["rules"] = succeed(answer)
        self.successResultOf(self.oneShot("rules"))
        self.assertEqual(
            self.out.getvalue().splitlines(),
            ["1. while on-the-phone: refuse, naming tel:+15550100", "2. while away from corp.example: reply 'back at 3'"],
        )
        self.out = io.StringIO()
        self.client.answers["rules"] = succeed(answer)
        self.successResultOf(self.oneShot("rules", "--json"))
        self.assertEqual(json.loads(self.out.getvalue()), answer)


class ChatSessionTests(SynchronousTestCase):
    """
    Tests for L{ChatSession}, with a fake client and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.output: list[str] = []
        self.session = ChatSession(self.output.append, self.clock, pingInterval=60)
        self.client = FakeClient()
        self.addCleanup(self._noStrayCalls)

    def _noStrayCalls(self) -> None:
        if not self.session.done.called:
            self.session.disconnected("")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start(self) -> Deferred[int]:
        done = self.session.start(cast(Any, self.client))
        del self.output[:]
        del self.client.calls[:]
        return done

    def typeLines(self, *lines: str) -> list[str]:
        """
        Type C{lines}; return what was printed.
        """
        for line in lines:
            self.session.lineReceived(line)
        printed, self.output[:] = list(self.output), []
        return printed

    def test_start(self) -> None:
        """
        On login the session greets and lists the contacts.
        """
        self.client.answers["contacts"] = succeed(
            {"contacts": [{"address": "bob@corp.example", "subscription": "both", "presence": "away", "note": ""}], "requests": []}
        )
        self.session.start(cast(Any, self.client))
        self.assertEqual(
            self.output,
            ["** logged in as alice@corp.example", "** 1 contact:", "**   bob@corp.example: away [subscription both]"],
        )

    def test_linesBeforeLogin(self) -> None:
        """
        Lines typed before the login completes run once it has; events
        that arrived before it are printed after the greeting.
        """
        self.session.lineReceived("/msg bob hi")
        self.session.messageReceived(BOB, "early", "m1", "text/plain", 0.0)
        self.assertEqual(self.output, [])
        self.session.start(cast(Any, self.client))
        self.assertEqual(self.output[0], "** logged in as alice@corp.example")
        self.assertEqual(self.output[1], "<< bob@corp.example: early")
        self.assertIn(("sendMessage", (BOB, "hi")), self.client.calls)

    def test_msg(self) -> None:
        """
        C{/msg ADDRESS TEXT} sends C{TEXT}, completing a bare name with the
        user's domain, and reports delivery.
        """
        self.start()
        self.assertEqual(self.typeLines("/msg bob hello there"), ["-> bob@corp.example: delivered"])
        self.assertEqual(self.client.calls, [("sendMessage", (BOB, "hello there"))])

    def test_plainLines(self) -> None:
        """
        After C{/msg}, lines without a leading C{/} go to the same
        recipient; C{//} sends a line starting with C{/}.
        """
        self.start()
        self.assertEqual(self.typeLines("/msg bob@corp.example"), ["** talking to bob@corp.example; lines without / go there"])
        self.typeLines("how are you?", "//shrug")
        self.assertEqual(
            self.client.calls, [("sendMessage", (BOB, "how are you?")), ("sendMessage", (BOB, "/shrug"))]
        )

    def test_plainLineWithoutTarget(self) -> None:
        """
        A line without a leading C{/} and no recipient yet prints a hint.
        """
        self.start()
        self.assertEqual(self.typeLines("hello?"), ["!! no recipient: use /msg ADDRESS TEXT first (/help for commands)"])
        self.assertEqual(self.client.calls, [])

    def test_msgOffline(self) -> None:
        """
        A failed delivery prints the error.
        """
        self.start()
        self.client.answers["sendMessage"] = fail(UserOffline("offline"))
        self.assertEqual(self.typeLines("/msg carol hi"), ["!! carol@corp.example is offline (480)"])

    def test_msgBusy(self) -> None:
        """
        A 486 prints the alternate.
        """
        self.start()
        self.client.answers["sendMessage"] = fail(UserBusy("busy", "im:bob.mobile@corp.example"))
        self.assertEqual(self.typeLines("/msg bob hi"), ["!! bob@corp.example is busy (486); try im:bob.mobile@corp.example"])

    def test_badAddress(self) -> None:
        """
        An invalid address is reported without sending anything.
        """
        self.start()
        [line] = self.typeLines("/msg bob@@ hi")
        self.assertTrue(line.startswith("!! invalid address 'bob@@'"), line)
        self.assertEqual(self.client.calls, [])

    def test_unknownCommand(self) -> None:
        """
        An unknown command prints a hint.
        """
        self.start()
        self.assertEqual(self.typeLines("/frobnicate now"), ["!! unknown command /frobnicate (try /help)"])

    def test_help(self) -> None:
        """
        C{/help} lists every command.
        """
        self.start()
        [text] = self.typeLines("/help")
        for command in ("/msg", "/who", "/add", "/remove", "/accept", "/deny", "/status", "/allow", "/block", "/unlist", "/lists", "/rule", "/rules", "/ping", "/quit"):
            self.assertIn(command + " ", text)

    def test_status(self) -> None:
        """
        C{/status away at lunch} publishes away with the note; the server's
        echo of it is not printed again, but a different aggregate (another
        session) is.
        """
        self.start()
        self.assertEqual(self.typeLines("/status away at lunch"), ["-> you are away (at lunch)"])
        self.assertEqual(self.client.calls, [("publish", (PresenceState.AWAY, "at lunch"))])
        self.session.presenceReceived(ALICE, Presence(PresenceState.AWAY, "at lunch"))
        self.assertEqual(self.output, [])
        self.session.presenceReceived(ALICE, Presence(PresenceState.ONLINE))
        self.assertEqual(self.output, ["** your presence is now online"])

    def test_statusQuick(self) -> None:
        """
        Two quick C{/status} commands print no echo even when the echoes come
        after both were sent.
        """
        self.start()
        first: Deferred[Any] = Deferred()
        second: Deferred[Any] = Deferred()
        self.client.answers["publish"] = first
        self.typeLines("/status brb")
        self.client.answers["publish"] = second
        self.typeLines("/status brb soon")
        self.session.presenceReceived(ALICE, Presence(PresenceState.BE_RIGHT_BACK))
        self.session.presenceReceived(ALICE, Presence(PresenceState.BE_RIGHT_BACK, "soon"))
        first.callback(60)
        second.callback(60)
        self.assertEqual(self.output, ["-> you are be-right-back", "-> you are be-right-back (soon)"])

    def test_statusBad(self) -> None:
        """
        An unknown state publishes nothing.
        """
        self.start()
        [line] = self.typeLines("/status snoozing")
        self.assertTrue(line.startswith("!! unknown presence state 'snoozing'"), line)
        self.assertEqual(self.client.calls, [])

    def test_subscriptionCommands(self) -> None:
        """
        C{/add}, C{/remove}, C{/accept} and C{/deny} make their requests
        and say how they went.
        """
        self.start()
        self.client.answers["subscribe"] = succeed(False)
        self.assertEqual(self.typeLines("/add bob Bob Smith"), ["-> bob@corp.example: request pending"])
        self.client.answers["subscribe"] = succeed(True)
        self.assertEqual(self.typeLines("/add carol"), ["-> carol@corp.example: authorised"])
        self.assertEqual(
            self.typeLines("/remove carol", "/accept bob", "/deny carol"),
            [
                "-> carol@corp.example: removed",
                "-> bob@corp.example may now see your presence",
                "-> carol@corp.example may not see your presence",
            ],
        )
        self.assertEqual(
            self.client.calls,
            [
                ("subscribe", (BOB, "Bob Smith")),
                ("subscribe", (CAROL, "")),
                ("unsubscribe", (CAROL,)),
                ("authorise", (BOB, True)),
                ("authorise", (CAROL, False)),
            ],
        )

    def test_accessLists(self) -> None:
        """
        C{/allow}, C{/block} and C{/unlist} set entries; C{/lists} shows them.
        """
        self.start()
        self.assertEqual(
            self.typeLines("/block Spam.Example", "/allow bob", "/unlist carol@corp.example"),
            [
                "-> spam.example is on your block list",
                "-> bob@corp.example is on your allow list",
                "-> carol@corp.example is off your lists",
            ],
        )
        self.assertEqual(
            self.client.calls,
            [
                ("setAccess", ("spam.example", "block")),
                ("setAccess", ("bob@corp.example", "allow")),
                ("setAccess", ("carol@corp.example", "none")),
            ],
        )
        self.client.answers["accessLists"] = succeed({"allow": ["bob@corp.example"], "block": []})
        self.assertEqual(self.typeLines("/lists"), ["** allow: bob@corp.example", "** block: (empty)"])

    def test_rules(self) -> None:
        """
        C{/rule STATE ALTERNATE} sets a rule, C{/rule STATE} removes it,
        C{/rules} lists them.
        """
        self.start()
        self.assertEqual(
            self.typeLines("/rule phone tel:+15550100", "/rule dnd"),
            ["-> while on-the-phone, messages are turned away naming tel:+15550100", "-> rule for busy removed"],
        )
        self.assertEqual(
            self.client.calls,
            [("setRule", (PresenceState.ON_THE_PHONE, "tel:+15550100")), ("setRule", (PresenceState.BUSY, None))],
        )
        self.client.answers["rules"] = succeed(
            [
                {"states": ["on-the-phone"], "action": "refuse", "alternate": "tel:+15550100", "presence": "on-the-phone"},
                {"states": ["busy", "on-the-phone"], "action": "forward", "sender": "alice@corp.example", "forward": "alice@xmpp.example"},
                {"states": ["away"], "action": "auto-reply", "network": "remote", "text": "back at 3"},
            ]
        )
        self.assertEqual(
            self.typeLines("/rules"),
            [
                "** 1. while on-the-phone: refuse, naming tel:+15550100",
                "** 2. while busy,on-the-phone from alice@corp.example: forward to alice@xmpp.example",
                "** 3. while away (remote senders): reply 'back at 3'",
            ],
        )

    def test_ruleEdit(self) -> None:
        """
        C{/rule add RULE} adds a rule last, C{/rule insert N RULE} at
        position N, C{/rule remove N} removes rule N; a bare name is in the
        user's domain; a rule that does not parse is refused without asking
        the server, with the syntax.
        """
        self.start()
        self.assertEqual(
            self.typeLines(
                "/rule add phone from alice forward alice@xmpp.example",
                "/rule insert 1 phone,busy network remote reply On the phone, back soon",
                "/rule remove 2",
            ),
            [
                "-> rule added: while on-the-phone from alice@corp.example: forward to alice@xmpp.example",
                "-> rule added at 1: while on-the-phone,busy (remote senders): reply 'On the phone, back soon'",
                "-> rule 2 removed",
            ],
        )
        self.assertEqual(
            self.client.calls,
            [
                ("addRule", ({"states": ["on-the-phone"], "sender": "alice@corp.example", "action": "forward", "forward": "alice@xmpp.example"}, None)),
                ("addRule", ({"states": ["on-the-phone", "busy"], "network": "remote", "action": "auto-reply", "text": "On the phone, back soon"}, 1)),
                ("removeRule", (2,)),
            ],
        )
        for wrong in ("/rule add phone", "/rule add phone shout", "/rule insert x phone deliver", "/rule remove", "/rule add snoozing deliver"):
            printed = self.typeLines(wrong)
            self.assertEqual(len(printed), 1, wrong)
            self.assertTrue(printed[0].startswith("!! "), printed)
        self.assertEqual(len(self.client.calls), 3)

    def test_ruleNotURI(self) -> None:
        """
        C{/rule STATE ALTERNATE} with an alternate that is not a URI is
        refused without asking the server.
        """
        self.start()
        printed = self.typeLines("/rule busy not a uri")
        self.assertEqual(len(printed), 1)
        self.assertTrue(printed[0].startswith("!! the alternate must be a URI such as tel:+15550100"), printed)
        self.assertEqual(self.client.calls, [])

    def test_requestFailure(self) -> None:
        """
        A failed request prints its error.
        """
        self.start()
        self.client.answers["setAccess"] = fail(ClientError(400, "List must be allow, block or none"))
        self.assertEqual(self.typeLines("/block spam.example"), ["!! spam.example: List must be allow, block or none (400)"])

    def test_events(self) -> None:
        """
        Messages, presence changes and subscription events are printed; a
        presence that did not change is not printed again.
        """
        self.start()
        self.session.messageReceived(BOB, "hello", "m1", "text/plain", 0.0)
        self.session.presenceReceived(BOB, Presence(PresenceState.AWAY, "at lunch"))
        self.session.presenceReceived(BOB, Presence(PresenceState.AWAY, "at lunch"))
        self.session.subscriptionReceived(CAROL, "subscribe")
        self.session.subscriptionReceived(BOB, "authorise")
        self.assertEqual(
            self.output,
            [
                "<< bob@corp.example: hello",
                "** bob@corp.example is now away (at lunch)",
                "** carol@corp.example asks to see your presence: /accept carol@corp.example or /deny carol@corp.example",
                "** bob@corp.example authorised you",
            ],
        )

    def test_quit(self) -> None:
        """
        C{/quit} says BYE; when the connection closes the session is done
        with status 0.
        """
        done = self.start()
        self.typeLines("/quit")
        self.assertEqual(self.client.calls, [("bye", ())])
        self.client.closed.callback("")
        self.session.disconnected("")
        self.assertEqual(self.output, ["** disconnected: bye"])
        self.assertEqual(self.successResultOf(done), 0)

    def test_inputEndsAfterRequests(self) -> None:
        """
        When input ends, BYE waits for the requests already sent.
        """
        self.start()
        answer: Deferred[Any] = Deferred()
        self.client.answers["sendMessage"] = answer
        self.typeLines("/msg bob last words")
        self.session.inputEnded()
        self.assertEqual([c[0] for c in self.client.calls], ["sendMessage"])
        answer.callback("m1")
        self.assertEqual([c[0] for c in self.client.calls], ["sendMessage", "bye"])
        self.client.closed.callback("")

    def test_byeTimeout(self) -> None:
        """
        If the server does not close the connection after BYE, the session
        aborts it.
        """
        aborted: list[bool] = []

        class Transport:
            def abortConnection(self) -> None:
                aborted.append(True)

        self.start()
        self.client.transport = cast(Any, Transport())
        self.typeLines("/quit")
        self.clock.advance(BYE_TIMEOUT)
        self.assertEqual(aborted, [True])

    def test_disconnected(self) -> None:
        """
        A connection the user did not end is done with status 1, and the
        server's reason is printed.
        """
        done = self.start()
        self.session.disconnected("idle timeout")
        self.assertEqual(self.output, ["** disconnected: idle timeout"])
        self.assertEqual(self.successResultOf(done), 1)

    def test_keepAlive(self) -> None:
        """
        The session pings the server every C{pingInterval} seconds until
        disconnected.
        """
        self.start()
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(self.client.calls, [("ping", ()), ("ping", ())])
        self.session.disconnected("")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ping(self) -> None:
        """
        C{/ping} prints the round-trip time.
        """
        self.start()
        answer: Deferred[Any] = Deferred()
        self.client.answers["ping"] = answer
        self.typeLines("/ping")
        self.clock.advance(0.012)
        answer.callback(None)
        self.assertEqual(self.output, ["-> pong (12 ms)"])
