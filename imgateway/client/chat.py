# -*- test-case-name: tests.test_client_cli,tests.e2e.test_client_cli -*-
"""
The interactive C{imgateway-client}: a L{ChatSession} turns the lines a user
types into requests and what the server sends into lines of text; L{runChat}
wires it to standard input and output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.adapters.native.mapping import PRESENCE
from imgateway.client.formatting import (
    contactPresence,
    describeConnectFailure,
    describeFailure,
    errorLine,
    errorOf,
    formatMessage,
    formatPresence,
    formatSubscription,
    formatWho,
    presenceText,
    sanitise,
)
from imgateway.client.parsing import (
    describeRule,
    parseEntry,
    parseRuleCommand,
    parseStatus,
    resolveAddress,
)
from imgateway.client.protocol import ClientObserver, NativeClientProtocol, connect, goodbye, redirector
from imgateway.core.address import Address
from imgateway.core.errors import InvalidAddress
from imgateway.core.presence import Presence, PresenceState

__all__ = ["ChatSession", "PING_INTERVAL", "runChat"]

#: Seconds between keep-alive PINGs (the server closes idle connections; see
#: C{idle_timeout} in the configuration).
PING_INTERVAL = 60.0

_HELP = """\
** commands:
**   /msg ADDRESS [TEXT...]   send a message; later lines without / go to ADDRESS too
**   /who                     contacts, their presence, and pending requests
**   /add ADDRESS [NAME...]   add a contact and ask to see its presence
**   /remove ADDRESS          remove a contact
**   /accept ADDRESS          let ADDRESS see your presence (answers a request)
**   /deny ADDRESS            do not let ADDRESS see your presence
**   /status STATE [NOTE...]  publish presence: online, busy, be-right-back (brb), away,
**                            on-the-phone (phone), out-to-lunch (lunch), appear-offline (invisible)
**   /allow ENTRY             put an address (bob, bob@corp.example) or a domain (corp.example) on your allow list
**   /block ENTRY             put an address or domain on your block list
**   /unlist ENTRY            take an address or domain off your lists
**   /lists                   show your allow and block lists
**   /rule add RULE           add a presence rule last; RULE is STATES [from SENDER] [network local|remote]
**                            then deliver, reply TEXT..., forward ADDRESS or refuse ALTERNATE:
**                            /rule add phone from alice forward alice@xmpp.example
**                            /rule add phone,busy reply On the phone, back soon
**   /rule insert N RULE      add a rule at position N (1 is looked at first)
**   /rule remove N           remove rule N
**   /rule STATE ALTERNATE    while in STATE, turn messages away naming ALTERNATE, a URI
**                            (tel:+15550100, im:bob@corp.example, sip:, xmpp:, mailto:, https:)
**   /rule STATE              remove the rule for STATE set so
**   /rules                   show your rules, numbered (the first that matches decides)
**   /ping                    check the server answers
**   /quit                    log out and exit (so does end of input)
** ADDRESS may be a bare name (bob) in your own domain; start a message with // to send a leading /."""


class ChatSession(ClientObserver):
    """
    The interactive client: turns lines the user types into requests, and
    what the server sends into lines of text.

    Lines typed before the login completes wait for it. When input ends (or
    on C{/quit}) the session waits for the requests already sent, then says
    BYE.

    @ivar client: The logged-in protocol, once L{start} was called.
    @ivar target: Where lines without a leading C{/} go (set by C{/msg}).
    @ivar quitting: Whether the user asked to quit.
    @ivar done: Fires with the exit status (0 if the user quit, 1 if the
        connection ended otherwise) once the connection is gone.
    """

    def __init__(self, write: Callable[[str], None], clock: IReactorTime, pingInterval: float = PING_INTERVAL) -> None:
        """
        @param write: Prints one line of output (without its line break;
            it may hold several lines).
        @param clock: Times keep-alive pings and C{/ping}.
        @param pingInterval: Seconds between keep-alive pings.
        """
        self.write = write
        self.clock = clock
        self.pingInterval = pingInterval
        self.client: NativeClientProtocol | None = None
        self.target: Address | None = None
        self.quitting = False
        self.done: Deferred[int] = Deferred()
        self._queue: list[str] | None = []
        self._early: list[Callable[[], None]] | None = []
        self._inputEnded = False
        self._outstanding: set[Deferred[Any]] = set()
        self._presences: dict[Address, Presence] = {}
        self._ownPresence: Presence | None = None
        # Our own presences the server will echo (connect() publishes online).
        self._expectedOwn: list[Presence] = [Presence(PresenceState.ONLINE)]
        self._pinger: LoopingCall | None = None
        self._byeSent = False

    # -- life cycle -------------------------------------------------------------

    @property
    def domain(self) -> str | None:
        """
        The logged-in user's domain (bare names typed are in it).
        """
        if self.client is None or self.client.address is None:
            return None
        return self.client.address.domain

    def start(self, client: NativeClientProtocol) -> Deferred[int]:
        """
        The login succeeded: greet, list the contacts, then run the lines
        typed so far.

        @return: L{done}.
        """
        self.client = client
        self.write(f"** logged in as {client.address}")
        early, self._early = self._early or [], None
        for event in early:
            event()
        if self.pingInterval > 0:
            self._pinger = LoopingCall(self._keepAlive)
            self._pinger.clock = self.clock
            self._pinger.start(self.pingInterval, now=False).addErrback(lambda _: None)
        self._track(self.command_who(""))
        queued, self._queue = self._queue or [], None
        for line in queued:
            self.lineReceived(line)
        if self._inputEnded:
            self.quit()
        return self.done

    def _keepAlive(self) -> Deferred[None]:
        assert self.client is not None
        return self.client.ping().addErrback(lambda _: None)

    def inputEnded(self) -> None:
        """
        Standard input ended: quit once the requests already sent are
        answered.
        """
        self._inputEnded = True
        if self.client is not None:
            self.quit()

    def quit(self) -> Deferred[None]:
        """
        Quit: wait for outstanding requests, then say BYE.

        @return: Fires once BYE was sent.
        """
        self.quitting = True
        pending = list(self._outstanding)
        d: Deferred[Any] = DeferredList(pending) if pending else succeed(None)
        return d.addCallback(lambda _: self._sayBye())

    def _sayBye(self) -> None:
        if self._byeSent or self.client is None:
            return
        self._byeSent = True
        goodbye(self.client, self.clock)

    def shutdown(self) -> Deferred[None] | None:
        """
        The process is being stopped (an interrupt): say BYE if still
        connected.

        @return: Fires when the connection is closed, or C{None}.
        """
        if self.client is None or self.done.called:
            return None
        self.quitting = True
        self._sayBye()
        return self.client.whenClosed().addCallback(lambda _: None)

    def _track(self, d: Deferred[Any] | None) -> None:
        if d is None:
            return
        self._outstanding.add(d)

        def finished(result: object) -> None:
            self._outstanding.discard(d)
            if isinstance(result, Failure):
                self.write(f"!! {describeFailure(errorOf(result))}")

        d.addBoth(finished)

    # -- input ------------------------------------------------------------------

    def lineReceived(self, line: str) -> None:
        """
        Run one line the user typed: a C{/command}, or text for the
        current C{/msg} target.
        """
        line = line.rstrip("\r\n")
        if self._queue is not None:
            self._queue.append(line)
            return
        if not line.strip():
            return
        if line.startswith("/") and not line.startswith("//"):
            name, _, rest = line[1:].partition(" ")
            handler = getattr(self, "command_" + name.lower(), None) if name.isalpha() else None
            if handler is None:
                self.write(f"!! unknown command /{sanitise(name)} (try /help)")
                return
            self._track(handler(rest.strip()))
            return
        if line.startswith("//"):
            line = line[1:]
        if self.target is None:
            self.write("!! no recipient: use /msg ADDRESS TEXT first (/help for commands)")
            return
        self._track(self._send(self.target, line))

    def _address(self, text: str, usage: str) -> Address | None:
        if not text:
            self.write(f"!! usage: {usage}")
            return None
        try:
            return resolveAddress(text, self.domain)
        except InvalidAddress as e:
            self.write(f"!! invalid address {sanitise(text)!r}: {e}")
            return None

    def _ok(self, text: str) -> Callable[[object], None]:
        def ok(_: object) -> None:
            self.write(f"-> {text}")

        return ok

    def _failed(self, target: str) -> Callable[[Failure], None]:
        def failed(f: Failure) -> None:
            self.write(f"!! {describeFailure(errorOf(f), target)}")

        return failed

    @property
    def _client(self) -> NativeClientProtocol:
        assert self.client is not None
        return self.client

    def _send(self, to: Address, text: str) -> Deferred[None]:
        return self._client.sendMessage(to, text).addCallbacks(self._ok(f"{to}: delivered"), self._failed(str(to)))

    # -- commands ------------------------------------------------------------------
    # Each takes the rest of the line and returns a Deferred (or None).

    def command_help(self, rest: str) -> None:
        """
        C{/help}.
        """
        self.write(_HELP)

    def command_quit(self, rest: str) -> Deferred[None]:
        """
        C{/quit}.
        """
        return self.quit()

    def command_msg(self, rest: str) -> Deferred[None] | None:
        """
        C{/msg ADDRESS [TEXT...]}: send C{TEXT}, and make C{ADDRESS} the
        target of lines without a leading C{/}.
        """
        addressText, _, text = rest.partition(" ")
        to = self._address(addressText, "/msg ADDRESS [TEXT...]")
        if to is None:
            return None
        self.target = to
        if not text.strip():
            self.write(f"** talking to {to}; lines without / go there")
            return None
        return self._send(to, text)

    def command_who(self, rest: str) -> Deferred[None]:
        """
        C{/who}: the contacts and pending requests.
        """

        def show(data: dict[str, Any]) -> None:
            for contact in data.get("contacts") or []:
                try:
                    self._presences[Address.fromString(contact["address"])] = contactPresence(contact)
                except (InvalidAddress, KeyError, TypeError):
                    pass
            for line in formatWho(data):
                self.write(line)

        return self._client.contacts().addCallbacks(show, self._failed(""))

    def command_add(self, rest: str) -> Deferred[None] | None:
        """
        C{/add ADDRESS [NAME...]}.
        """
        addressText, _, name = rest.partition(" ")
        to = self._address(addressText, "/add ADDRESS [NAME...]")
        if to is None:
            return None

        def answered(authorised: bool) -> None:
            self.write(f"-> {to}: {'authorised' if authorised else 'request pending'}")

        return self._client.subscribe(to, name.strip()).addCallbacks(answered, self._failed(str(to)))

    def command_remove(self, rest: str) -> Deferred[None] | None:
        """
        C{/remove ADDRESS}.
        """
        to = self._address(rest, "/remove ADDRESS")
        if to is None:
            return None
        return self._client.unsubscribe(to).addCallbacks(self._ok(f"{to}: removed"), self._failed(str(to)))

    def _authorise(self, rest: str, allow: bool) -> Deferred[None] | None:
        to = self._address(rest, f"/{'accept' if allow else 'deny'} ADDRESS")
        if to is None:
            return None
        said = "may now see your presence" if allow else "may not see your presence"
        return self._client.authorise(to, allow).addCallbacks(self._ok(f"{to} {said}"), self._failed(str(to)))

    def command_accept(self, rest: str) -> Deferred[None] | None:
        """
        C{/accept ADDRESS}: allow a watcher.
        """
        return self._authorise(rest, True)

    def command_deny(self, rest: str) -> Deferred[None] | None:
        """
        C{/deny ADDRESS}: deny a watcher.
        """
        return self._authorise(rest, False)

    def _access(self, command: str, rest: str, accessList: str, said: str) -> Deferred[None] | None:
        if not rest:
            self.write(f"!! usage: /{command} ENTRY")
            return None
        try:
            entry = parseEntry(rest, self.domain)
        except InvalidAddress as e:
            self.write(f"!! invalid entry {sanitise(rest)!r}: {e}")
            return None
        return self._client.setAccess(entry, accessList).addCallbacks(self._ok(f"{entry} {said}"), self._failed(entry))

    def command_allow(self, rest: str) -> Deferred[None] | None:
        """
        C{/allow ENTRY}: put an address or domain on the allow list.
        """
        return self._access("allow", rest, "allow", "is on your allow list")

    def command_block(self, rest: str) -> Deferred[None] | None:
        """
        C{/block ENTRY}: put an address or domain on the block list.
        """
        return self._access("block", rest, "block", "is on your block list")

    def command_unlist(self, rest: str) -> Deferred[None] | None:
        """
        C{/unlist ENTRY}: take an address or domain off the lists.
        """
        return self._access("unlist", rest, "none", "is off your lists")

    def command_lists(self, rest: str) -> Deferred[None]:
        """
        C{/lists}: the allow and block lists.
        """

        def show(lists: dict[str, list[str]]) -> None:
            for name in ("allow", "block"):
                entries = lists.get(name) or []
                self.write(f"** {name}: {', '.join(sanitise(e) for e in entries) if entries else '(empty)'}")

        return self._client.accessLists().addCallbacks(show, self._failed(""))

    def command_status(self, rest: str) -> Deferred[None] | None:
        """
        C{/status STATE [NOTE...]}: publish presence.
        """
        try:
            state, note = parseStatus(rest)
            presence = Presence(state, note)
        except ValueError as e:
            self.write(f"!! {e}")
            return None

        # The server echoes our own presence before it answers: expect it.
        self._expectedOwn.append(presence)

        def published(_: int) -> None:
            self.write(f"-> you are {presenceText(presence)}")

        def failed(f: Failure) -> None:
            if presence in self._expectedOwn:
                self._expectedOwn.remove(presence)
            self._failed("")(f)

        return self._client.publish(state, note).addCallbacks(published, failed)

    def command_rule(self, rest: str) -> Deferred[None] | None:
        """
        C{/rule add RULE}, C{/rule insert N RULE}, C{/rule remove N}; and
        the first protocol's C{/rule STATE ALTERNATE} (sets a refusal) and
        C{/rule STATE} (removes it).
        """
        try:
            command = parseRuleCommand(rest.split(), self.domain)
        except ValueError as e:
            self.write(f"!! {sanitise(str(e))}")
            return None
        if command.verb == "remove":
            assert command.position is not None
            return self._client.removeRule(command.position).addCallbacks(
                self._ok(f"rule {command.position} removed"), self._failed("")
            )
        if command.verb == "add":
            assert command.rule is not None
            said = f"rule added{'' if command.position is None else f' at {command.position}'}: {describeRule(command.rule)}"
            return self._client.addRule(command.rule, command.position).addCallbacks(
                self._ok(sanitise(said)), self._failed("")
            )
        assert command.state is not None
        state, alternate = command.state, command.alternate
        if alternate is None:
            said = f"rule for {PRESENCE[state]} removed"
        else:
            said = f"while {PRESENCE[state]}, messages are turned away naming {alternate}"
        return self._client.setRule(state, alternate).addCallbacks(self._ok(said), self._failed(""))

    def command_rules(self, rest: str) -> Deferred[None]:
        """
        C{/rules}: the presence rules, numbered.
        """

        def show(rules: list[dict[str, Any]]) -> None:
            if not rules:
                self.write("** no rules")
            for number, rule in enumerate(rules, 1):
                self.write(f"** {number}. {sanitise(describeRule(rule))}")

        return self._client.rules().addCallbacks(show, self._failed(""))

    def command_ping(self, rest: str) -> Deferred[None]:
        """
        C{/ping}: how long the server takes to answer.
        """
        began = self.clock.seconds()

        def answered(_: None) -> None:
            self.write(f"-> pong ({(self.clock.seconds() - began) * 1000:.0f} ms)")

        return self._client.ping().addCallbacks(answered, self._failed(""))

    # -- what the server sends -----------------------------------------------------

    def messageReceived(self, sender: Address, body: str, messageId: str, contentType: str, timestamp: float) -> None:
        """
        Print C{<< sender: body}.
        """
        if self._early is not None:
            self._early.append(lambda: self.messageReceived(sender, body, messageId, contentType, timestamp))
            return
        self.write(formatMessage(sender, body))

    def presenceReceived(self, address: Address, presence: Presence) -> None:
        """
        Print a contact's presence when it changes; the user's own aggregate
        presence is printed when it differs from what this session set.
        """
        if self._early is not None:
            self._early.append(lambda: self.presenceReceived(address, presence))
            return
        own = self.client is not None and address == self.client.address
        if own:
            if presence in self._expectedOwn:
                # The echo of what this session published.
                del self._expectedOwn[: self._expectedOwn.index(presence) + 1]
            elif presence != self._ownPresence:
                self.write(f"** your presence is now {presenceText(presence)}")
            self._ownPresence = presence
            return
        if self._presences.get(address) == presence:
            return
        self._presences[address] = presence
        self.write(formatPresence(address, presence))

    def subscriptionReceived(self, address: Address, kind: str) -> None:
        """
        Print a subscription request or answer.
        """
        if self._early is not None:
            self._early.append(lambda: self.subscriptionReceived(address, kind))
            return
        self.write(formatSubscription(address, kind))

    def disconnected(self, reason: str) -> None:
        """
        Print C{** disconnected: REASON} and fire L{done}.
        """
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self.client is None or self.done.called:
            # The login failed; whoever started us reports it.
            return
        if reason:
            why = sanitise(reason)
        else:
            why = "bye" if self.quitting else "connection lost"
        self.write(f"** disconnected: {why}")
        self.done.callback(0 if self.quitting else 1)


@implementer(IHalfCloseableProtocol)
class _ConsoleLines(LineReceiver):
    """
    Standard input and output of the chat client: lines go to a
    L{ChatSession}, which writes through this transport.
    """

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.session: ChatSession | None = None
        self._closed: Deferred[None] = Deferred()
        self._inputOver = False

    def write(self, text: str) -> None:
        if self.transport is not None and not self._closed.called:
            self.transport.write(text.encode(self.encoding, "replace") + b"\n")

    def lineReceived(self, line: bytes) -> None:
        if self.session is not None:
            self.session.lineReceived(line.decode(self.encoding, "replace"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.write(f"!! line longer than {self.MAX_LENGTH} bytes ignored")
        self.clearLineBuffer()

    def readConnectionLost(self) -> None:
        self._inputOver = True
        if self.session is not None:
            self.session.inputEnded()

    def writeConnectionLost(self) -> None:
        # Nobody reads our output any more: leave.
        self.readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._inputOver:
            self.readConnectionLost()
        if not self._closed.called:
            self._closed.callback(None)

    def close(self) -> Deferred[None]:
        """
        Flush the output and close standard input and output.
        """
        if not self._closed.called and self.transport is not None:
            self.transport.loseConnection()
        return self._closed


def runChat(
    reactor: Any, arguments: argparse.Namespace, password: str, endpoint: IStreamClientEndpoint
) -> Deferred[None]:
    """
    Chat on standard input and output until the user quits or the
    connection ends; for L{twisted.internet.task.react}.

    @param arguments: The parsed command line (C{server}, C{user}, C{label}).
    @return: Fires when done; fails with L{SystemExit} for a non-zero
        status.
    """
    from twisted.internet.stdio import StandardIO

    console = _ConsoleLines(sys.stdout.encoding or "utf-8")
    session = ChatSession(console.write, reactor)
    console.session = session
    StandardIO(console, reactor=reactor)

    def shutdown() -> Deferred[None]:
        # Interrupted: say BYE, then flush and close standard output (which
        # also puts a terminal back into blocking mode).
        d = session.shutdown() or succeed(None)
        return d.addBoth(lambda _: console.close())

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)

    def loginFailed(f: Failure) -> int:
        sys.stderr.write(errorLine(describeConnectFailure(errorOf(f), arguments.server, arguments.user)))
        sys.stderr.flush()
        return 1

    d = connect(
        reactor,
        endpoint,
        arguments.user,
        password,
        session,
        arguments.label,
        maxRedirects=arguments.max_redirects,
        redirectTo=redirector(reactor, arguments.server),
    )
    result: Deferred[Any] = d.addCallbacks(session.start, loginFailed)

    def finish(code: int) -> Deferred[None]:
        def exit(_: object) -> None:
            if code:
                raise SystemExit(code)

        return console.close().addCallback(exit)

    return result.addCallback(finish)
