# -*- test-case-name: tests.test_client_cli -*-
"""
C{imgateway-client}: a command-line client for the native protocol, built on
L{imgateway.client.protocol}.

With no subcommand (or C{chat}) it is an interactive chat client reading
commands from standard input; the other subcommands (C{send}, C{presence},
C{add}, ...) log in without publishing presence, do one thing and exit with
status 0 on success, 1 on failure and 2 for a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.auth.sasl import SASLFailure
from imgateway.client.protocol import ClientError, ClientObserver, NativeClientProtocol, connect
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    NotAuthorised,
    UserBusy,
)
from imgateway.core.presence import OFFLINE, Presence, PresenceState

__all__ = [
    "ChatSession",
    "DEFAULT_LABEL",
    "DEFAULT_SERVER",
    "PASSWORD_ENVIRONMENT",
    "buildParser",
    "describeConnectFailure",
    "describeFailure",
    "formatContact",
    "formatContactRow",
    "formatMessage",
    "formatPresence",
    "formatSubscription",
    "formatWho",
    "main",
    "parseArguments",
    "parseEntry",
    "parseState",
    "parseStatus",
    "readPassword",
    "resolveAddress",
    "sanitise",
]

#: The program's name, as it prefixes errors.
PROGRAM = "imgateway-client"

#: Where to connect unless C{--server} says otherwise.
DEFAULT_SERVER = "tcp:127.0.0.1:5300"

#: The session label unless C{--label} says otherwise.
DEFAULT_LABEL = "imgateway-client"

#: The environment variable read for the password (after C{--password-stdin}).
PASSWORD_ENVIRONMENT = "IMGATEWAY_PASSWORD"

#: Seconds between keep-alive PINGs in chat mode (the server closes idle
#: connections; see C{idle_timeout} in the configuration).
PING_INTERVAL = 60.0

#: Seconds to wait for the server to close the connection after our BYE.
BYE_TIMEOUT = 5.0


# -- parsing what the user types ----------------------------------------------------

#: Short names accepted for presence states, besides the states' own names.
_STATE_ALIASES: dict[str, PresenceState] = {
    "brb": PresenceState.BE_RIGHT_BACK,
    "lunch": PresenceState.OUT_TO_LUNCH,
    "phone": PresenceState.ON_THE_PHONE,
    "dnd": PresenceState.BUSY,
    "invisible": PresenceState.APPEAR_OFFLINE,
}

#: Every name of a state a user may set (C{offline} is not one: end the
#: session instead).
_SETTABLE = [s for s in PresenceState if s is not PresenceState.OFFLINE]


def _stateNames() -> str:
    names = [s.value for s in _SETTABLE]
    aliases = [f"{alias} ({state.value})" for alias, state in _STATE_ALIASES.items()]
    return ", ".join(names) + "; or " + ", ".join(aliases)


def parseState(text: str) -> PresenceState:
    """
    Parse a presence state as a user types it: a state's name (C{away},
    C{be-right-back}), with C{_} or spaces for C{-} and in any case, or a
    short alias (C{brb}, C{lunch}, C{phone}, C{dnd} for busy, C{invisible}
    for appear-offline).

    @raise ValueError: If C{text} names no state, or names C{offline}
        (which is not something one publishes: one logs out).
    """
    key = "-".join(text.strip().lower().replace("_", " ").replace("-", " ").split())
    state = _STATE_ALIASES.get(key)
    if state is None:
        try:
            state = PresenceState(key)
        except ValueError:
            raise ValueError(f"unknown presence state {text!r} (states: {_stateNames()})") from None
    if state is PresenceState.OFFLINE:
        raise ValueError("cannot publish offline: use appear-offline (invisible), or /quit")
    return state


def parseStatus(text: str) -> tuple[PresenceState, str]:
    """
    Parse the arguments of C{/status}: a state, then an optional note.

    The state may be written in several words (C{be right back}); the longest
    run of leading words that names a state wins, so C{away at lunch} is
    C{away} with the note C{at lunch}.

    @return: The state and the note (C{""} when none).
    @raise ValueError: If the first words name no state.
    """
    words = text.split()
    if not words:
        raise ValueError(f"usage: /status STATE [NOTE...] (states: {_stateNames()})")
    for n in range(min(3, len(words)), 1, -1):
        try:
            state = parseState(" ".join(words[:n]))
        except ValueError:
            continue
        return state, " ".join(words[n:])
    return parseState(words[0]), " ".join(words[1:])


def resolveAddress(text: str, domain: str | None) -> Address:
    """
    Parse an address a user typed: C{bob@corp.example}, a URI form
    (C{im:bob@corp.example}), or a bare C{bob} meaning C{bob} in C{domain}
    (the logged-in user's domain).

    @raise InvalidAddress: If it is not a valid address.
    """
    text = text.strip()
    if "@" not in text and ":" not in text and domain:
        return Address.fromParts(text, domain)
    return Address.fromString(text)


def parseEntry(text: str, domain: str | None = None) -> str:
    """
    Parse an access-list entry: an address (C{bob@corp.example}), a domain
    (C{spam.example}), or a bare name without a dot (C{bob}), meaning that
    user in C{domain}.

    @return: The entry, normalised.
    @raise InvalidAddress: If it is none of these.
    """
    text = text.strip()
    if "@" in text or ("." not in text and domain):
        return str(resolveAddress(text, domain))
    return normaliseDomain(text)


# -- formatting what the server says ------------------------------------------------------

# Bidirectional-text controls, which could make a line read as something else.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def sanitise(text: str, keepTabs: bool = False) -> str:
    """
    Make text from the network safe to print on a terminal: control
    characters (escape sequences, carriage returns, line breaks) and
    bidirectional overrides are shown escaped (C{\\x1b}, C{\\u202e}).

    @param keepTabs: Keep tab characters as they are.
    """
    out = []
    for c in text:
        if c == "\t" and keepTabs:
            out.append(c)
        elif c in _BIDI or unicodedata.category(c) in ("Cc", "Cs"):
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def formatMessage(sender: Address | str, body: str) -> str:
    """
    An incoming message: C{<< alice@corp.example: hello}. Each further
    line of a multi-line message is printed indented under the first.
    """
    prefix = f"<< {sanitise(str(sender))}: "
    lines = body.replace("\r\n", "\n").split("\n")
    indent = " " * len(prefix)
    return "\n".join([prefix + sanitise(lines[0])] + [indent + sanitise(line) for line in lines[1:]])


def _presenceText(presence: Presence) -> str:
    if presence.note:
        return f"{presence.state.value} ({sanitise(presence.note)})"
    return presence.state.value


def formatPresence(address: Address | str, presence: Presence) -> str:
    """
    A contact's presence changed: C{** bob@corp.example is now away (at lunch)}.
    """
    return f"** {sanitise(str(address))} is now {_presenceText(presence)}"


_SUBSCRIPTION_EVENTS = {
    "subscribe": "{who} asks to see your presence: /accept {who} or /deny {who}",
    "authorise": "{who} authorised you",
    "refuse": "{who} refused",
    "unsubscribe": "{who} stopped watching your presence",
}


def formatSubscription(address: Address | str, kind: str) -> str:
    """
    A subscription event: C{** carol@corp.example asks to see your
    presence: /accept carol@corp.example or /deny carol@corp.example},
    C{** bob@corp.example authorised you}, C{** bob@corp.example refused}.
    """
    who = sanitise(str(address))
    template = _SUBSCRIPTION_EVENTS.get(kind, "{who}: subscription event {kind}")
    return "** " + template.format(who=who, kind=sanitise(kind))


def _contactPresence(contact: Mapping[str, Any]) -> Presence:
    try:
        return Presence(PresenceState(contact.get("presence", "offline")), str(contact.get("note") or ""))
    except ValueError:
        return OFFLINE


def _subscriptionText(contact: Mapping[str, Any]) -> str:
    text = f"subscription {contact.get('subscription', 'none')}"
    if contact.get("pending"):
        text += ", pending"
    return sanitise(text)


def formatContactRow(contact: Mapping[str, Any]) -> str:
    """
    One line of C{imgateway-client presence}, tab-separated for scripts:
    C{bob@corp.example<TAB>away<TAB>at lunch<TAB>(subscription both)}.
    Tabs in the note become spaces.
    """
    note = sanitise(str(contact.get("note") or "").replace("\t", " "))
    return "\t".join(
        [
            sanitise(str(contact.get("address", "?"))),
            sanitise(str(contact.get("presence", "offline"))),
            note,
            f"({_subscriptionText(contact)})",
        ]
    )


def formatContact(contact: Mapping[str, Any]) -> str:
    """
    One contact as C{/who} shows it:
    C{bob@corp.example (Bob): away (at lunch) [subscription both]}. The
    presence of a contact one does not watch (subscription C{none} or
    C{from}) is not known, and is shown as such.
    """
    who = sanitise(str(contact.get("address", "?")))
    name = str(contact.get("name") or "")
    if name:
        who += f" ({sanitise(name)})"
    if contact.get("subscription") in ("to", "both"):
        seen = _presenceText(_contactPresence(contact))
    elif contact.get("pending"):
        seen = "awaiting authorisation"
    else:
        seen = "presence not shared"
    return f"{who}: {seen} [{_subscriptionText(contact)}]"


def formatWho(data: Mapping[str, Any]) -> list[str]:
    """
    The lines of C{/who}: the contacts, then the pending requests.

    @param data: The server's C{CONTACTS} answer.
    """
    contacts = list(data.get("contacts") or [])
    lines = []
    if contacts:
        lines.append(f"** {len(contacts)} contact{'s' if len(contacts) != 1 else ''}:")
        lines.extend("**   " + formatContact(c) for c in contacts)
    else:
        lines.append("** no contacts yet (/add ADDRESS)")
    for request in data.get("requests") or []:
        lines.append(formatSubscription(str(request), "subscribe"))
    return lines


#: How a failed delivery reads, by status: a template (C{{target}} is the
#: recipient) and whether the server's text adds to it.
_DELIVERY_TEXT: dict[DeliveryStatus, tuple[str, bool]] = {
    DeliveryStatus.NOT_AUTHORISED: ("{target}: not authorised", True),
    DeliveryStatus.BLOCKED: ("{target} blocks you", False),
    DeliveryStatus.NO_SUCH_USER: ("{target} does not exist", False),
    DeliveryStatus.TOO_LARGE: ("{target}: too large", True),
    DeliveryStatus.RATE_LIMITED: ("{target}: too many requests, slow down", False),
    DeliveryStatus.OFFLINE: ("{target} is offline", False),
    DeliveryStatus.LOOP_DETECTED: ("{target}: loop detected", False),
    DeliveryStatus.BUSY: ("{target} is busy", False),
    DeliveryStatus.SERVER_ERROR: ("{target}: server error", True),
    DeliveryStatus.NO_ROUTE: ("{target}: no route to its domain", True),
}


def describeFailure(error: BaseException, target: str | None = None) -> str:
    """
    Describe why a request failed, for a person: C{bob@corp.example is
    offline (480)}, C{bob@corp.example is busy (486); try tel:+15550100}.

    @param target: What the request was about (an address, an entry), if
        anything.
    """
    subject = sanitise(target) if target else "the server"
    if isinstance(error, DeliveryError):
        status = error.status
        template, withText = _DELIVERY_TEXT.get(status, ("{target}: failed", True))
        text = template.format(target=subject) + f" ({status.value})"
        if withText and error.text:
            text += f": {sanitise(error.text)}"
        if isinstance(error, UserBusy) and error.alternate:
            text += f"; try {sanitise(error.alternate)}"
        return text
    if isinstance(error, ClientError):
        if error.code == 0:
            return sanitise(error.reason)
        prefix = f"{subject}: " if target else ""
        return f"{prefix}{sanitise(error.reason)} ({error.code})"
    if isinstance(error, InvalidAddress):
        return f"invalid address: {error}"
    if isinstance(error, ValueError):
        return str(error)
    if type(error).__name__ in ("TimeoutError", "CancelledError"):
        return "no answer from the server"
    return sanitise(str(error)) or type(error).__name__


def describeConnectFailure(error: BaseException, server: str, user: str) -> str:
    """
    Describe why connecting or logging in failed:
    C{cannot connect to tcp:127.0.0.1:5300: Connection refused}, or
    C{cannot log in as alice: Authentication failed (not-authorized)}.
    """
    if isinstance(error, ConnectError):
        why = error.args[0] if error.args and isinstance(error.args[0], str) and error.args[0] else error.MESSAGE
        return f"cannot connect to {server}: {why}"
    if isinstance(error, OSError):
        return f"cannot connect to {server}: {error}"
    login = f"cannot log in as {sanitise(user)}"
    if isinstance(error, NotAuthorised):
        return f"{login}: {sanitise(error.text)}"
    if isinstance(error, ClientError):
        if error.code == 426:
            return f"{login}: the server requires an encrypted connection (use --server tls:HOST:PORT)"
        if error.code == 0:
            return f"{login}: {sanitise(error.reason)}"
        return f"{login}: {sanitise(error.reason)} ({error.code})"
    if isinstance(error, SASLFailure):
        return f"{login}: the server could not prove it knows the password ({error})"
    return f"{login}: {describeFailure(error)}"


def _error(f: Failure) -> BaseException:
    return f.value if f.value is not None else Exception(f.getErrorMessage())


# -- the interactive client ---------------------------------------------------------------

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
**   /rule STATE ALTERNATE    while in STATE, turn messages away naming ALTERNATE (a URI)
**   /rule STATE              remove the rule for STATE
**   /rules                   show your rules
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
        client = self.client
        client.bye()

        def tooSlow() -> None:
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]

        timer = self.clock.callLater(BYE_TIMEOUT, tooSlow)
        client.whenClosed().addBoth(lambda _: timer.cancel() if timer.active() else None)

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
                self.write(f"!! {describeFailure(_error(result))}")

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
            self.write(f"!! {describeFailure(_error(f), target)}")

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
                    self._presences[Address.fromString(contact["address"])] = _contactPresence(contact)
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
            self.write(f"-> you are {_presenceText(presence)}")

        def failed(f: Failure) -> None:
            if presence in self._expectedOwn:
                self._expectedOwn.remove(presence)
            self._failed("")(f)

        return self._client.publish(state, note).addCallbacks(published, failed)

    def command_rule(self, rest: str) -> Deferred[None] | None:
        """
        C{/rule STATE ALTERNATE} sets a rule; C{/rule STATE} removes it.
        """
        words = rest.split()
        if not words:
            self.write("!! usage: /rule STATE [ALTERNATE]")
            return None
        try:
            state = parseState(words[0])
        except ValueError as e:
            self.write(f"!! {e}")
            return None
        alternate = " ".join(words[1:]) or None
        if alternate is None:
            said = f"rule for {state.value} removed"
        else:
            said = f"while {state.value}, messages are turned away naming {alternate}"
        return self._client.setRule(state, alternate).addCallbacks(self._ok(said), self._failed(""))

    def command_rules(self, rest: str) -> Deferred[None]:
        """
        C{/rules}: the presence rules.
        """

        def show(rules: list[dict[str, str]]) -> None:
            if not rules:
                self.write("** no rules")
            for rule in rules:
                self.write(f"** while {sanitise(str(rule.get('presence')))}: {sanitise(str(rule.get('alternate')))}")

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
                self.write(f"** your presence is now {_presenceText(presence)}")
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


def _chat(
    reactor: Any, arguments: argparse.Namespace, password: str, endpoint: IStreamClientEndpoint
) -> Deferred[None]:
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
        sys.stderr.write(f"{PROGRAM}: {describeConnectFailure(_error(f), arguments.server, arguments.user)}\n")
        sys.stderr.flush()
        return 1

    d = connect(reactor, endpoint, arguments.user, password, session, arguments.label)
    result: Deferred[Any] = d.addCallbacks(session.start, loginFailed)

    def finish(code: int) -> Deferred[None]:
        def exit(_: object) -> None:
            if code:
                raise SystemExit(code)

        return console.close().addCallback(exit)

    return result.addCallback(finish)


# -- one-shot commands ------------------------------------------------------------


class _Output:
    """
    Where one-shot commands print (standard output, and whether to be
    verbose).
    """

    def __init__(self, out: TextIO, verbose: bool) -> None:
        self.out = out
        self.verbose = verbose

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def done(self, text: str) -> None:
        if self.verbose:
            self.line(f"-> {text}")


_OneShot = Callable[[NativeClientProtocol, argparse.Namespace, _Output], Awaitable[None]]


def _domainOf(client: NativeClientProtocol) -> str | None:
    return client.address.domain if client.address is not None else None


async def _send(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    await client.sendMessage(to, arguments.message)
    out.done(f"{to}: delivered")


async def _presence(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    data = await client.contacts()
    if arguments.json:
        out.line(json.dumps(data, indent=2, ensure_ascii=False))
        return
    for contact in data.get("contacts") or []:
        out.line(formatContactRow(contact))


async def _requests(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    data = await client.contacts()
    requests = data.get("requests") or []
    if arguments.json:
        out.line(json.dumps(requests, ensure_ascii=False))
        return
    for request in requests:
        out.line(sanitise(str(request)))


async def _add(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    authorised = await client.subscribe(to, " ".join(arguments.name))
    out.line(f"{to}: {'authorised' if authorised else 'request pending'}")


async def _remove(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    await client.unsubscribe(to)
    out.done(f"{to}: removed")


def _authoriser(allow: bool) -> _OneShot:
    async def authorise(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
        to = resolveAddress(arguments.address, _domainOf(client))
        await client.authorise(to, allow)
        out.done(f"{to} {'may now' if allow else 'may not'} see your presence")

    return authorise


def _lister(accessList: str, said: str) -> _OneShot:
    async def setAccess(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
        entry = parseEntry(arguments.entry, _domainOf(client))
        await client.setAccess(entry, accessList)
        out.done(f"{entry} {said}")

    return setAccess


async def _lists(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    lists = await client.accessLists()
    if arguments.json:
        out.line(json.dumps(lists, ensure_ascii=False))
        return
    for name in ("allow", "block"):
        for entry in lists.get(name) or []:
            out.line(f"{name}\t{sanitise(entry)}")


async def _rules(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    rules = await client.rules()
    if arguments.json:
        out.line(json.dumps(rules, ensure_ascii=False))
        return
    for rule in rules:
        out.line(f"{sanitise(str(rule.get('presence')))}\t{sanitise(str(rule.get('alternate')))}")


async def _rule(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    state = parseState(arguments.state)
    alternate = " ".join(arguments.alternate) or None
    await client.setRule(state, alternate)
    out.done(f"rule for {state.value} {'removed' if alternate is None else 'set'}")


async def _ping(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    await client.ping()
    out.done("pong")


#: One-shot subcommand to what it does, and what its failures are about.
_ONE_SHOTS: dict[str, tuple[_OneShot, str | None]] = {
    "send": (_send, "address"),
    "presence": (_presence, None),
    "requests": (_requests, None),
    "add": (_add, "address"),
    "remove": (_remove, "address"),
    "accept": (_authoriser(True), "address"),
    "deny": (_authoriser(False), "address"),
    "allow": (_lister("allow", "is on your allow list"), "entry"),
    "block": (_lister("block", "is on your block list"), "entry"),
    "unlist": (_lister("none", "is off your lists"), "entry"),
    "lists": (_lists, None),
    "rules": (_rules, None),
    "rule": (_rule, None),
    "ping": (_ping, None),
}


def _goodbye(client: NativeClientProtocol, clock: IReactorTime) -> Deferred[None]:
    """
    Say BYE; close the connection ourselves if the server does not within
    L{BYE_TIMEOUT} seconds.
    """
    d = client.bye()
    timer = clock.callLater(
        BYE_TIMEOUT, lambda: client.transport.abortConnection() if client.transport is not None else None  # type: ignore[attr-defined]
    )

    def closed(_: object) -> None:
        if timer.active():
            timer.cancel()

    return d.addBoth(closed)


async def _oneShot(
    reactor: Any, arguments: argparse.Namespace, password: str, endpoint: IStreamClientEndpoint
) -> None:
    run, about = _ONE_SHOTS[arguments.command]
    try:
        client = await connect(reactor, endpoint, arguments.user, password, None, arguments.label, presence=None)
    except Exception as e:
        _die(describeConnectFailure(e, arguments.server, arguments.user))
    code = 0
    try:
        await run(client, arguments, _Output(sys.stdout, arguments.verbose))
    except Exception as e:
        target = getattr(arguments, about) if about is not None else None
        if isinstance(e, DeliveryError) and about == "address" and client.address is not None:
            try:
                target = str(resolveAddress(target or "", client.address.domain))
            except InvalidAddress:
                pass
        sys.stderr.write(f"{PROGRAM}: {describeFailure(e, target)}\n")
        code = 1
    await _goodbye(client, reactor)
    if code:
        raise SystemExit(code)


# -- the command line ---------------------------------------------------------------


def _addCommonOptions(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """
    The options every subcommand takes, before or after its name. On
    subparsers their defaults are suppressed, so that an option given before
    the subcommand is not reset by the subparser's default.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--server",
        metavar="ENDPOINT",
        default=default(DEFAULT_SERVER),
        help=f"Twisted client endpoint of the gateway (default {DEFAULT_SERVER}); e.g. tls:gw.corp.example:5301",
    )
    parser.add_argument(
        "-u", "--user", metavar="ADDRESS", default=default(None), help="your address, or your bare user name (required)"
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        default=default(False),
        help=f"read the password from the first line of standard input (otherwise ${PASSWORD_ENVIRONMENT}, "
        "otherwise a prompt)",
    )
    parser.add_argument("--label", metavar="NAME", default=default(DEFAULT_LABEL), help="session label the server shows")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="say what succeeded")


def buildParser() -> argparse.ArgumentParser:
    """
    @return: The parser of C{imgateway-client}'s command line.
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Chat through an imgateway server (no subcommand: interactive chat), "
        "or run one command and exit (status 0 on success, 1 on failure, 2 on a usage error).",
    )
    _addCommonOptions(parser, False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help, description=help)
        _addCommonOptions(p, True)
        return p

    sub("chat", "interactive chat (the default); /help lists its commands")
    p = sub("send", "send a message")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("text", metavar="TEXT", nargs="+", help="the message; - reads it from standard input")
    p = sub("presence", "print your contacts' presence, one line each: ADDRESS, STATE, NOTE, (SUBSCRIPTION)")
    p.add_argument("--json", action="store_true", help="print the server's CONTACTS answer as JSON")
    p = sub("requests", "print who asks to see your presence")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p = sub("add", "add a contact and ask to see its presence")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("name", metavar="NAME", nargs="*", help="display name")
    p = sub("remove", "remove a contact")
    p.add_argument("address", metavar="ADDRESS")
    p = sub("accept", "let ADDRESS see your presence")
    p.add_argument("address", metavar="ADDRESS")
    p = sub("deny", "do not let ADDRESS see your presence")
    p.add_argument("address", metavar="ADDRESS")
    for name, help in (
        ("allow", "put an address or domain on your allow list"),
        ("block", "put an address or domain on your block list"),
        ("unlist", "take an address or domain off your lists"),
    ):
        p = sub(name, help)
        p.add_argument("entry", metavar="ENTRY")
    p = sub("lists", "print your allow and block lists, one entry a line: LIST, ENTRY")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub("rules", "print your presence rules, one a line: STATE, ALTERNATE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub("rule", "while in STATE, turn messages away naming ALTERNATE; with no ALTERNATE, remove the rule")
    p.add_argument("state", metavar="STATE")
    p.add_argument("alternate", metavar="ALTERNATE", nargs="*")
    sub("ping", "check that the server answers")
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line (without the program name).

    @raise SystemExit: With status 2 on a usage error (after printing it).
    """
    parser = buildParser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        arguments.command = "chat"
    if not arguments.user:
        parser.error("--user is required")
    if arguments.command == "rule":
        try:
            parseState(arguments.state)
        except ValueError as e:
            parser.error(str(e))
    return arguments


def _readLine(fd: int) -> str | None:
    """
    Read one line from a file descriptor, one byte at a time, so that
    nothing after it is consumed (the chat client reads the rest).

    @return: The line without its line break, or C{None} at end of input.
    """
    data = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte:
            if not data:
                return None
            break
        if byte == b"\n":
            break
        data += byte
    return data.decode("utf-8").rstrip("\r")


def readPassword(
    arguments: argparse.Namespace,
    stdin: int = 0,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    """
    The password: the first line of standard input with C{--password-stdin},
    else C{$IMGATEWAY_PASSWORD}, else asked for.

    @raise ValueError: If there is none.
    """
    if arguments.password_stdin:
        password = _readLine(stdin)
        if password is None:
            raise ValueError("--password-stdin: standard input is empty")
    elif environ.get(PASSWORD_ENVIRONMENT):
        password = environ[PASSWORD_ENVIRONMENT]
    else:
        try:
            password = prompt(f"Password for {arguments.user}: ")
        except EOFError:
            password = ""
    if not password:
        raise ValueError("no password given")
    return password


def _die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run C{imgateway-client}.

    @param argv: The arguments (default: C{sys.argv[1:]}).
    """
    arguments = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        password = readPassword(arguments)
    except (ValueError, UnicodeDecodeError) as e:
        _die(str(e), 2)
    if arguments.command == "send":
        if arguments.text == ["-"]:
            arguments.message = sys.stdin.buffer.read().decode("utf-8", "replace").removesuffix("\n")
        else:
            arguments.message = " ".join(arguments.text)
        if not arguments.message:
            _die("send: the message is empty", 2)

    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.task import react

    try:
        endpoint = clientFromString(reactor, arguments.server)
    except Exception as e:  # clientFromString raises many kinds
        _die(f"bad --server endpoint {arguments.server!r}: {e} (expected e.g. tcp:HOST:PORT or tls:HOST:PORT)", 2)

    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings (a bad frame from the server, a failed presence refresh) and
    # unexpected failures go to standard error; routine events do not.
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    if arguments.command == "chat":
        react(_chat, (arguments, password, endpoint))
    react(_oneShot, (arguments, password, endpoint))


if __name__ == "__main__":
    main()
