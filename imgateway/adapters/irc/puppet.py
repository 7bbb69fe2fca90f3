# -*- test-case-name: tests.test_irc_network -*-
"""
One client connection to an IRC network, kept up: a gateway user's puppet
(the user on IRC under their own nick) or the network's presence watcher.

L{IRCClientConnection} speaks the client side of IRC on one TCP (or TLS)
connection: registration (server C{PASS}, C{CAP LS 302}, SASL PLAIN,
C{NICK}/C{USER}, a predictable alternate nick on a collision), C{PING},
ISUPPORT, and the caps that cut off a network that misbehaves
(L{ConnectionLimits}: registration time, lines per second, C{NAMES} size,
line length). Every line it writes, its own and its owner's, leaves through
one queue paced by a L{TokenBucket} under the network's flood allowance.

L{IRCLink} keeps one such connection up under a L{ClientService}
(exponential backoff with jitter, counting connections that ended before
registration as failures), holds the lines its owner wants sent while the
connection is down, and stops for good when the network bans it (C{465},
or C{ERROR} saying the link is banned or K-lined): every waiting line then
fails, and so does every later one, with the network's reason.

Not here: what the lines mean to the gateway (L{imgateway.adapters.irc.network}).
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from attrs import frozen
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from imgateway.adapters.irc.wire import IRCMessage, IRCParseError, parseLine, serialise
from imgateway.core.errors import RateLimited, ServiceUnavailable
from imgateway.core.ratelimit import TokenBucket

__all__ = [
    "BANNED_PATTERN",
    "ConnectionLimits",
    "FloodAllowance",
    "IRCClientConnection",
    "IRCLink",
    "LinkOwner",
    "LinkStopped",
    "Registration",
    "alternateNick",
]

#: What in an C{ERROR} line (or a C{465}) means the network refuses us
#: for good: a ban, a K-, G-, Z- or D-line.
BANNED_PATTERN = re.compile(r"\b(banned|[kgzd]-?lined?)\b", re.IGNORECASE)

#: What in an C{ERROR} line means the network cut us off for writing too
#: fast (the flood allowance is set too high for it).
FLOODED_PATTERN = re.compile(r"excess flood|recvq exceeded|flood", re.IGNORECASE)

#: The capabilities asked for when offered: SASL (when configured), and
#: the away state of the users we share a channel with or monitor
#: (C{away-notify}, C{extended-monitor}).
WANTED_CAPS = ("sasl", "away-notify", "extended-monitor")

#: The longest line (with its IRCv3 tags) read from a network before the
#: connection is cut: 8191 bytes of tags plus 512 of message (IRCv3
#: message-tags).
MAX_READ_LINE_BYTES = 8191 + 512


class LinkStopped(ServiceUnavailable):
    """
    The link will not connect again: the network banned it, or the gateway
    is stopping. The text says which.
    """


@frozen
class FloodAllowance:
    """
    How fast lines may be written to a network: a burst, then a steady
    rate (a token bucket, as the ircd's own flood control counts).

    @ivar burst: Lines that may be written at once.
    @ivar rate: Lines per second after the burst.
    """

    burst: int = 5
    rate: float = 1.0


@frozen
class ConnectionLimits:
    """
    The caps that cut off a misbehaving network.

    @ivar registrationTimeout: Seconds the network has to finish our
        registration (C{001}); then the connection is closed and counts as
        a failed attempt.
    @ivar maxLinesPerSecond: Lines read per second (a bucket of as many
        lines, refilled at that rate): the line past it closes the
        connection.
    @ivar maxNames: Names one C{NAMES} reply (C{353} lines up to C{366})
        may list: the name past it closes the connection.
    @ivar pingInterval: Seconds of silence from the network after which we
        send a C{PING}; as long again without an answer closes the
        connection.
    """

    registrationTimeout: float = 60.0
    maxLinesPerSecond: int = 200
    maxNames: int = 10000
    pingInterval: float = 120.0


@frozen
class Registration:
    """
    How a connection registers.

    @ivar nick: The nick wanted.
    @ivar user: The user name (ident) sent in C{USER}.
    @ivar realname: The real name sent in C{USER}.
    @ivar password: The server password (C{PASS}), or C{None}.
    @ivar sasl: SASL PLAIN account and password, or C{None}.
    @ivar fallbackCharset: How lines that are not UTF-8 are decoded.
    """

    nick: str
    user: str
    realname: str
    password: str | None = attrs.field(default=None, repr=False)
    sasl: tuple[str, str] | None = attrs.field(default=None, repr=False)
    fallbackCharset: str = "latin-1"


def alternateNick(nick: str, attempt: int, maxLength: int | None = None) -> str:
    """
    The predictable alternate for a nick in use: C{nick_}, then C{nick_2},
    C{nick_3}, ..., the nick cut so that the whole fits C{maxLength}.

    @param attempt: 1 for the first alternate.
    """
    suffix = "_" if attempt == 1 else f"_{attempt}"
    base = nick
    if maxLength is not None and len(base) + len(suffix) > maxLength:
        base = base[: max(1, maxLength - len(suffix))]
    return base + suffix


class LinkOwner(Protocol):
    """
    What an L{IRCLink} tells its owner.
    """

    def linkRegistered(self, link: IRCLink) -> None:
        """
        The connection is registered (again): C{link.nick} is our nick.
        """

    def linkMessage(self, link: IRCLink, message: IRCMessage) -> None:
        """
        A message from the network, after registration (but C{PING}).
        """

    def linkLost(self, link: IRCLink) -> None:
        """
        The registered connection is gone (the link reconnects unless it
        has stopped).
        """

    def linkBanned(self, link: IRCLink, reason: str) -> None:
        """
        The network refused us for good; the link has stopped.
        """


class _Line:
    """
    One line waiting to be written, and who waits for it.
    """

    __slots__ = ("data", "result", "queuedAt")

    def __init__(self, data: bytes, result: Deferred[None] | None, queuedAt: float) -> None:
        self.data = data
        self.result = result
        self.queuedAt = queuedAt


class IRCClientConnection(LineOnlyReceiver):
    """
    The client side of one IRC connection; see the module docstring.

    @ivar nick: Our nick, once registered (the one we ask for before).
    @ivar registered: Whether the network sent C{001}.
    @ivar isupport: ISUPPORT tokens (C{005}), upper-case names to values
        (C{""} for a token without a value).
    @ivar caps: The capabilities the network acknowledged.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_READ_LINE_BYTES
    log = Logger()

    def __init__(self, link: IRCLink) -> None:
        self.link = link
        self.clock = link.clock
        registration = link.registration
        self.registration = registration
        self.nick = registration.nick
        self.registered = False
        self.isupport: dict[str, str] = {}
        self.caps: set[str] = set()
        self._offered: set[str] = set()
        self._capDone = False
        self._nickAttempt = 0
        self._queue: deque[_Line] = deque()
        self._bucket = TokenBucket(link.flood.rate, link.flood.burst, self.clock)
        self._pumpTimer: IDelayedCall | None = None
        self._regTimer: IDelayedCall | None = None
        self._pingTimer: IDelayedCall | None = None
        self._awaitingPong = False
        self._readBucket = TokenBucket(link.limits.maxLinesPerSecond, link.limits.maxLinesPerSecond, self.clock)
        self._names = 0
        self._closing = False
        self.banned: str | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        self._regTimer = self.clock.callLater(self.link.limits.registrationTimeout, self._registrationTimedOut)
        r = self.registration
        if r.password is not None:
            self.sendMessage("PASS", r.password)
        self.sendMessage("CAP", "LS", "302")
        self.sendMessage("NICK", self.nick)
        self.sendMessage("USER", r.user, "0", "*", r.realname)
        self._armPing()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        for timer in (self._pumpTimer, self._regTimer, self._pingTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._pumpTimer = self._regTimer = self._pingTimer = None
        queue, self._queue = self._queue, deque()
        for line in queue:
            if line.result is not None and not line.result.called:
                line.result.errback(Failure(ServiceUnavailable("the IRC connection was lost")))
        self.link.connectionEnded(self)

    def close(self, why: str) -> None:
        """
        Close the connection at once (a cap was passed, a timer ran out).
        """
        if self._closing:
            return
        self._closing = True
        self.log.warn("IRC {network} ({nick}): closing the connection: {why}", network=self.link.name, nick=self.nick, why=why)
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _registrationTimedOut(self) -> None:
        self._regTimer = None
        self.close(f"registration not finished within {self.link.limits.registrationTimeout} s (registration_timeout)")

    def _armPing(self) -> None:
        if self._pingTimer is not None and self._pingTimer.active():
            self._pingTimer.reset(self.link.limits.pingInterval)
        else:
            self._pingTimer = self.clock.callLater(self.link.limits.pingInterval, self._pingDue)

    def _pingDue(self) -> None:
        self._pingTimer = None
        if self._awaitingPong:
            self.close(f"no answer to PING within {self.link.limits.pingInterval} s")
            return
        self._awaitingPong = True
        self.sendMessage("PING", "imgateway", urgent=True)
        self._pingTimer = self.clock.callLater(self.link.limits.pingInterval, self._pingDue)

    # -- writing ------------------------------------------------------------

    def sendMessage(self, command: str, *params: str, urgent: bool = False) -> Deferred[None]:
        """
        Queue one line; it leaves when the flood allowance permits.

        @param urgent: Put it before the lines already waiting (C{PONG}).
        @return: Fires when the line is written; fails with
            L{ServiceUnavailable} if the connection ends first, or
            C{ValueError} if the line cannot be written safely.
        """
        try:
            data = serialise(IRCMessage({}, None, command, tuple(params)))
        except ValueError as e:
            return fail(e)
        d: Deferred[None] = Deferred()
        line = _Line(data, d, self.clock.seconds())
        if urgent:
            self._queue.appendleft(line)
        else:
            self._queue.append(line)
        self.pump()
        return d

    def pump(self) -> None:
        """
        Write what the flood allowance permits: this connection's own
        lines first, then (once registered) the link's.
        """
        if self._pumpTimer is not None or self.transport is None or self._closing:
            return
        while True:
            line: _Line | None = None
            if self._queue:
                line = self._queue[0]
            elif self.registered:
                line = self.link.peekLine()
            if line is None:
                return
            if not self._bucket.consume():
                self._pumpTimer = self.clock.callLater(self._bucket.retryAfter(), self._pumpDue)
                return
            if self._queue and self._queue[0] is line:
                self._queue.popleft()
            else:
                self.link.popLine()
            self.transport.write(line.data + b"\r\n")
            if line.result is not None and not line.result.called:
                line.result.callback(None)

    def _pumpDue(self) -> None:
        self._pumpTimer = None
        self.pump()

    # -- reading ------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        self.close(f"a line longer than {self.MAX_LENGTH} bytes")

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if not self._readBucket.consume():
            self.close(f"more than {self.link.limits.maxLinesPerSecond} lines per second (max_lines_per_second)")
            return
        line = line.rstrip(b"\r")
        if not line:
            return
        try:
            message = parseLine(line, self.registration.fallbackCharset)
        except IRCParseError:
            self.log.debug("IRC {network}: unparsable line dropped", network=self.link.name)
            return
        self._awaitingPong = False
        self._armPing()
        try:
            self.messageReceived(message)
        except Exception:
            self.log.failure("IRC {network}: handling {command}", network=self.link.name, command=message.command)

    def messageReceived(self, message: IRCMessage) -> None:
        """
        Handle one message from the network.
        """
        command, params = message.command, message.params
        if command == "PING":
            self.sendMessage("PONG", *(params[:1] or ("imgateway",)), urgent=True)
            return
        if command == "PONG":
            return
        if command == "ERROR":
            text = params[0] if params else ""
            if BANNED_PATTERN.search(text):
                self.banned = text or "banned"
            if FLOODED_PATTERN.search(text):
                # Lines written just before were dropped by the network:
                # the allowance is set too high for it.
                self.log.error(
                    "IRC {network} ({nick}): disconnected for flooding ({text}): lower flood_burst and flood_rate"
                    " (now {burst} and {rate}/s) under the network's limit",
                    network=self.link.name,
                    nick=self.nick,
                    text=text,
                    burst=self.link.flood.burst,
                    rate=self.link.flood.rate,
                )
                return
            self.log.warn("IRC {network} ({nick}): ERROR {text}", network=self.link.name, nick=self.nick, text=text)
            return
        if command == "465":
            self.banned = params[-1] if params else "banned"
            return
        if command == "353":
            self._names += len(params[-1].split()) if params else 0
            if self._names > self.link.limits.maxNames:
                self.close(f"a NAMES reply of more than {self.link.limits.maxNames} names (max_names)")
            return
        if command == "366":
            self._names = 0
            return
        if command == "005":
            for token in params[1:-1]:
                name, _, value = token.partition("=")
                if name.startswith("-"):
                    self.isupport.pop(name[1:].upper(), None)
                else:
                    self.isupport[name.upper()] = value
        if not self.registered:
            self._registering(message)
            return
        if command == "NICK" and message.prefix and _nickOf(message.prefix).lower() == self.nick.lower() and params:
            self.nick = params[0]
        self.link.messageReceived(self, message)

    def _registering(self, message: IRCMessage) -> None:
        command, params = message.command, message.params
        r = self.registration
        if command == "CAP" and len(params) >= 3:
            sub = params[1].upper()
            if sub == "LS":
                self._offered.update(c.partition("=")[0] for c in params[-1].split())
                if params[2] == "*" and len(params) >= 4:
                    return  # more to come
                wanted = [c for c in WANTED_CAPS if c in self._offered and (c != "sasl" or r.sasl is not None)]
                if r.sasl is not None and "sasl" not in self._offered:
                    self.banned = "the network offers no SASL, but the configuration asks for it"
                    self.close(self.banned)
                    return
                if wanted:
                    self.sendMessage("CAP", "REQ", " ".join(wanted))
                else:
                    self._endCap()
            elif sub == "ACK":
                self.caps.update(params[-1].split())
                if "sasl" in self.caps and r.sasl is not None:
                    self.sendMessage("AUTHENTICATE", "PLAIN")
                else:
                    self._endCap()
            elif sub == "NAK":
                if r.sasl is not None:
                    self.banned = "the network refused the SASL capability"
                    self.close(self.banned)
                    return
                self._endCap()
            return
        if command == "AUTHENTICATE" and params == ("+",) and r.sasl is not None:
            account, password = r.sasl
            blob = base64.b64encode(f"{account}\0{account}\0{password}".encode()).decode("ascii")
            chunks = [blob[i : i + 400] for i in range(0, len(blob), 400)] or ["+"]
            if len(chunks[-1]) == 400:
                chunks.append("+")
            for chunk in chunks:
                self.sendMessage("AUTHENTICATE", chunk)
            return
        if command in ("903", "907"):
            self._endCap()
            return
        if command in ("902", "904", "905", "906", "908"):
            self.banned = f"SASL authentication failed ({command}): check the account and password"
            self.close(self.banned)
            return
        if command in ("432", "433", "436", "437"):
            self._nickAttempt += 1
            if self._nickAttempt > 9:
                self.close("no free nick after 9 alternates")
                return
            maxLength = 9 if command == "432" else None
            self.nick = alternateNick(r.nick, self._nickAttempt, maxLength)
            self.sendMessage("NICK", self.nick)
            return
        if command == "001":
            if params:
                self.nick = params[0]
                words = params[-1].split()
                if words and "!" in words[-1] and "@" in words[-1]:
                    self.link.prefix = words[-1]
            self.registered = True
            if self._regTimer is not None and self._regTimer.active():
                self._regTimer.cancel()
            self._regTimer = None
            if not self._capDone:
                self._endCap()
            self.link.connectionRegistered(self)
            self.pump()

    def _endCap(self) -> None:
        if not self._capDone:
            self._capDone = True
            self.sendMessage("CAP", "END")


def _nickOf(prefix: str) -> str:
    return prefix.partition("!")[0]


class _ConnectionFactory(Factory):
    def __init__(self, link: IRCLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> IRCClientConnection:
        connection = IRCClientConnection(self.link)
        connection.factory = self
        self.link.latest = connection
        return connection


class IRCLink:
    """
    One identity's connection to a network, kept up; see the module
    docstring.

    @ivar name: The network's name (for logs).
    @ivar nick: Our current nick, while registered.
    @ivar prefix: Our C{nick!user@host} as the network last told it
        (C{001}), or C{None}.
    @ivar connection: The registered connection, or C{None}.
    @ivar latest: The connection made last, registered or not.
    @ivar stopped: Why the link stopped for good, or C{None} while it runs.
    @ivar failures: Consecutive connections that ended before registration.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        endpoint: IStreamClientEndpoint,
        registration: Registration,
        owner: LinkOwner,
        clock: IReactorTime,
        flood: FloodAllowance = FloodAllowance(),
        limits: ConnectionLimits = ConnectionLimits(),
        maxQueuedLines: int = 1000,
        lineTimeout: float = 60.0,
        initialDelay: float = 1.0,
        maxDelay: float = 300.0,
    ) -> None:
        self.name = name
        self.registration = registration
        self.owner = owner
        self.clock = clock
        self.flood = flood
        self.limits = limits
        self.maxQueuedLines = maxQueuedLines
        self.lineTimeout = lineTimeout
        self.nick: str | None = None
        self.prefix: str | None = None
        self.connection: IRCClientConnection | None = None
        self.latest: IRCClientConnection | None = None
        self.stopped: str | None = None
        self.failures = 0
        self._lines: deque[_Line] = deque()
        self._expiry: IDelayedCall | None = None
        self._backoff = backoffPolicy(initialDelay=initialDelay, maxDelay=maxDelay)
        self.service = ClientService(endpoint, _ConnectionFactory(self), retryPolicy=self.retryDelay, clock=clock)

    def retryDelay(self, attempt: int) -> float:
        """
        The L{ClientService} retry policy: exponential backoff with jitter
        over failed connection attempts I{and} registrations.
        """
        return float(self._backoff(max(attempt, self.failures)))

    def start(self) -> None:
        """
        Connect, and keep connected.
        """
        if self.stopped is None and not self.service.running:
            self.service.startService()

    def stop(self, why: str, quit: str | None = None) -> Deferred[None]:
        """
        Disconnect for good: every waiting line fails with L{LinkStopped}
        (C{why}), as will every later one.

        @param quit: Send C{QUIT} with this message first, when connected.
        """
        if self.stopped is None:
            self.stopped = why
        self._failAll(LinkStopped(why))
        connection = self.connection
        if quit is not None and connection is not None and connection.transport is not None:
            try:
                data = serialise(IRCMessage({}, None, "QUIT", (quit,)))
            except ValueError:
                data = b"QUIT"
            connection.transport.write(data + b"\r\n")
        if self.service.running:
            d: Deferred[None] | None = self.service.stopService()
            return d if d is not None else succeed(None)
        return succeed(None)

    # -- lines from the owner ---------------------------------------------

    def send(self, command: str, *params: str) -> Deferred[None]:
        """
        Send one line once registered, in order with the link's other lines
        and within the flood allowance.

        @return: Fires when the line is written; fails with L{LinkStopped}
            if the link stopped, L{RateLimited} if C{maxQueuedLines} lines
            wait already, L{ServiceUnavailable} if the line waited
            C{lineTimeout} seconds (the network is unreachable), or
            C{ValueError} if it cannot be written safely.
        """
        if self.stopped is not None:
            return fail(LinkStopped(self.stopped))
        try:
            data = serialise(IRCMessage({}, None, command, tuple(params)))
        except ValueError as e:
            return fail(e)
        if len(self._lines) >= self.maxQueuedLines:
            return fail(RateLimited(f"{self.maxQueuedLines} lines already wait for {self.name} (max_queued_lines)"))
        d: Deferred[None] = Deferred()
        self._lines.append(_Line(data, d, self.clock.seconds()))
        if self._expiry is None:
            self._expiry = self.clock.callLater(self.lineTimeout, self._expire)
        if self.connection is not None:
            self.connection.pump()
        return d

    @property
    def queued(self) -> int:
        """
        Lines waiting to be written.
        """
        return len(self._lines)

    def peekLine(self) -> _Line | None:
        return self._lines[0] if self._lines else None

    def popLine(self) -> None:
        self._lines.popleft()
        if not self._lines and self._expiry is not None:
            if self._expiry.active():
                self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        """
        Fail the lines that waited C{lineTimeout} seconds.
        """
        self._expiry = None
        now = self.clock.seconds()
        while self._lines and now - self._lines[0].queuedAt >= self.lineTimeout:
            line = self._lines.popleft()
            if line.result is not None and not line.result.called:
                line.result.errback(
                    Failure(ServiceUnavailable(f"{self.name} did not take the line within {self.lineTimeout} s"))
                )
        if self._lines:
            self._expiry = self.clock.callLater(self._lines[0].queuedAt + self.lineTimeout - now, self._expire)

    def _failAll(self, error: Exception) -> None:
        lines, self._lines = self._lines, deque()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        for line in lines:
            if line.result is not None and not line.result.called:
                line.result.errback(Failure(error))

    # -- from the connection ----------------------------------------------

    def connectionRegistered(self, connection: IRCClientConnection) -> None:
        self.failures = 0
        self.connection = connection
        self.nick = connection.nick
        self.log.info("IRC {network}: registered as {nick}", network=self.name, nick=connection.nick)
        self.owner.linkRegistered(self)

    def messageReceived(self, connection: IRCClientConnection, message: IRCMessage) -> None:
        if connection is self.connection:
            self.nick = connection.nick
            self.owner.linkMessage(self, message)

    def connectionEnded(self, connection: IRCClientConnection) -> None:
        wasRegistered = connection is self.connection
        if wasRegistered:
            self.connection = None
            self.nick = None
        else:
            self.failures += 1
        if connection.banned is not None and self.stopped is None:
            reason = connection.banned
            self.log.error("IRC {network}: refused for good ({reason}); not reconnecting", network=self.name, reason=reason)
            self.stop(f"{self.name} refused the connection: {reason}")
            self.owner.linkBanned(self, reason)
            return
        if wasRegistered and self.stopped is None:
            self.log.info("IRC {network}: connection lost ({nick}); reconnecting", network=self.name, nick=connection.nick)
            self.owner.linkLost(self)


def isupportInt(isupport: Mapping[str, str], name: str, default: int) -> int:
    """
    An ISUPPORT token's value as a number, or C{default}.
    """
    try:
        return int(isupport.get(name, ""))
    except ValueError:
        return default


#: Callable type used by owners to say what happens to a delivered message.
Sender = Callable[[str], Deferred[None]]
