# -*- test-case-name: tests.test_irc_face,tests.e2e.test_irc_router -*-
"""
The IRC face, in the style of BitlBee: an IRC client connects, logs in as
a gateway user (C{PASS user:password}, or C{CAP LS 302} and SASL), and finds
its contacts as nicks in the channel C{&contacts} (voiced when available,
away with their presence's label and note), talks to them with C{PRIVMSG},
and manages its contact list with commands said in C{&contacts}.

One L{IRCFaceProtocol} per connection, acting as its session's
L{ISessionClient}. Lines are parsed and written with
L{imgateway.adapters.irc.wire}; nicks and away messages come from
L{imgateway.adapters.irc.mapping}. The face knows only the core interfaces.
C{docs/irc.md} describes it for users and operators.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway import __version__
from imgateway.adapters.base import ConnectionSlot, FaceConnections, SendQueueGuard, TLSHandshakeMixin
from imgateway.adapters.irc.mapping import (
    addressForNick,
    awayFromPresence,
    maskForAddress,
    nickForAddress,
    presenceFromIRC,
)
from imgateway.adapters.irc.wire import (
    IRCMessage,
    IRCParseError,
    LineReader,
    LineTooLong,
    ctcpAction,
    lineBudget,
    makeAction,
    parseLine,
    serialise,
    splitText,
    stripFormatting,
)
from imgateway.auth.sasl import MAX_STEP_BYTES, SASLFailure, mechanismsFor, serverMechanism
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, DeliveryStatus, InvalidAddress, ServiceUnavailable, TooManySessions
from imgateway.core.events import Message, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import MAX_NOTE_CHARS, OFFLINE, Presence, PresenceState
from imgateway.core.ratelimit import TokenBucket
from imgateway.core.records import MAX_DISPLAY_NAME_CHARS, AccessList, AuthorisationState, ContactView, PresenceRule
from imgateway.interfaces import IGateway, ISession, ISessionClient
from imgateway.net.addresses import isLoopback
from imgateway.router.front import NOT_HOMED_HERE_TEXT, SERVE, UNAVAILABLE_TEXT, FrontAction, decideFront, openFrontSession

if TYPE_CHECKING:
    from imgateway.adapters.irc.network import IRCNetworkConfig

__all__ = ["CHANNEL", "IRCConfig", "IRCFaceFactory", "IRCFaceProtocol"]

#: The channel that holds the user's contacts.
CHANNEL = "&contacts"

#: The capabilities the face offers (IRCv3), besides C{sasl}.
CAPABILITIES = ("away-notify", "multi-prefix")

#: The most bytes of one C{AUTHENTICATE} chunk (IRCv3 SASL).
SASL_CHUNK = 400


@frozen
class IRCConfig:
    """
    The C{[irc]} table; see C{etc/imgateway.toml} for each key.

    @ivar networks: The C{[[irc.network]]} tables, as the bridge
        (L{imgateway.adapters.irc.network.parseNetworks}) parses them.
    """

    listen: tuple[str, ...] = ("tcp:6667:interface=127.0.0.1",)
    maxLineBytes: int = 512
    maxTagBytes: int = 4096
    registrationTimeout: float = 30.0
    maxRegistrationCommands: int = 64
    commandsPerSecond: float = 4.0
    commandBurst: int = 10
    maxConnectionsPerAddress: int = 16
    maxUnauthenticated: int = 1000
    preAuthBytes: int = 32768
    maxAuthAttempts: int = 3
    allowPlaintextAuth: bool = False
    pingInterval: float = 90.0
    pingTimeout: float = 60.0
    maxSendQueueBytes: int = 1048576
    maxMessageLines: int = 50
    maxMonitorTargets: int = 100
    fallbackCharset: str = "latin-1"
    networks: tuple[IRCNetworkConfig, ...] = ()


#: Delivery statuses that must not tell a stranger whether an account
#: exists or is online: all answered as an unknown nick is on IRC.
_PRIVATE_STATUSES = frozenset(
    {DeliveryStatus.NO_SUCH_USER, DeliveryStatus.OFFLINE, DeliveryStatus.BLOCKED, DeliveryStatus.MOVED}
)

#: Presence states by the words of the C{status} command.
_STATES = {state.value: state for state in PresenceState if state is not PresenceState.OFFLINE}

#: Subscription events to the notice that says them (the C{{who}} is the
#: other user's address).
_SUBSCRIPTION_NOTICES = {
    SubscriptionKind.SUBSCRIBE: "{who} asks to watch your presence: say 'accept {who}' to allow it",
    SubscriptionKind.UNSUBSCRIBE: "{who} stopped watching your presence",
    SubscriptionKind.AUTHORISE: "{who} allowed you to watch their presence",
    SubscriptionKind.REFUSE: "{who} does not allow you to watch their presence",
}

_HELP = [
    "Commands, said in &contacts:",
    "  add ADDRESS [NAME]   add a contact and ask to watch their presence",
    "  accept ADDRESS       allow ADDRESS to watch your presence",
    "  remove NICK|ADDRESS  remove a contact",
    "  allow ADDRESS|DOMAIN / block ADDRESS|DOMAIN   put on your allow or block list;"
    " allow -X or block -X takes X off; allow or block alone lists",
    "  status [STATE [NOTE]]  show or set your presence (" + ", ".join(_STATES) + ")",
    "  rule [STATE [ALTERNATE|-]]  list, set or remove (-) the presence rule for STATE",
    "  help",
    "Talk to a contact with /msg NICK (or any address as NICK: see docs/irc.md).",
]


def _cleanText(text: str) -> str:
    """
    Text from an IRC client as a message body or note: formatting codes
    and control characters but tab removed.
    """
    text = stripFormatting(text)
    return "".join(c for c in text if c == "\t" or unicodedata.category(c) not in ("Cc", "Cs"))


class _Closed(Exception):
    """
    The connection closed while something was pending.
    """


class _NotServed(Exception):
    """
    The face's front decision: this client is not served here; the
    exception's text is what the client is told.
    """


@implementer(ISessionClient, IHandshakeListener)
class IRCFaceProtocol(Protocol, TLSHandshakeMixin):
    """
    One IRC client's connection to the face.

    @ivar session: The user's session once registered.
    @ivar nick: The client's nick: what it asked for until registered,
        then the one L{nickForAddress} gives its user.
    """

    log = Logger()
    factory: IRCFaceFactory

    def __init__(self, gateway: IGateway, config: IRCConfig, clock: IReactorTime) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock
        self.serverName = gateway.domain
        self.session: ISession | None = None
        self.sessionLabel = "irc"
        self.nick = "*"
        self.address: Address | None = None
        self._user: str | None = None
        self._password: str | None = None
        self._capNegotiating = False
        self._caps: set[str] = set()
        self._capVersion = 0
        self._mechanism: Any = None
        self._saslBuffer = b""
        self._saslFinal = False
        self._authenticated: Address | None = None
        self._authFailures = 0
        self._registering = False
        self._registrationCommands = 0
        self._reader = LineReader(config.maxLineBytes - 2 + config.maxTagBytes)
        self._lines: deque[bytes] = deque()
        self._bucket = TokenBucket(config.commandsPerSecond, config.commandBurst, clock)
        self._tokenTimer: IDelayedCall | None = None
        self._registrationTimer: IDelayedCall | None = None
        self._pingTimer: IDelayedCall | None = None
        self._pingSent = False
        self._refresh: IDelayedCall | None = None
        self._waiting = 0
        self._processing = False
        self._readingPaused = False
        self._closing = False
        self._slot: ConnectionSlot | None = None
        self._sendGuard: SendQueueGuard | None = None
        self._presence = Presence(PresenceState.ONLINE)
        self._contacts: dict[Address, ContactView] = {}
        self._presences: dict[Address, Presence] = {}
        self._joined = False
        self._monitor: set[Address] = set()
        self._handlers: dict[str, Callable[[IRCMessage], Any]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("irc_")
        }

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        f.connections.add(self)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        # max_connections_per_address, max_unauthenticated and the limits
        # every face shares (imgateway.adapters.base.FaceConnections).
        self._slot = slot = f.limits.admit(
            peer, self.gateway.connectionLimiter, self.config.maxUnauthenticated, self.config.maxConnectionsPerAddress
        )
        if slot.refusal is not None:
            self._refuse(slot.refusal)
            return
        self._sendGuard = SendQueueGuard(self.transport, self.config.maxSendQueueBytes, self._sendQueueFull)  # type: ignore[arg-type]
        self._registrationTimer = self.clock.callLater(self.config.registrationTimeout, self._registrationTimedOut)
        self._pingTimer = self.clock.callLater(self.config.pingInterval, self._pingDue)

    def _refuse(self, reason: str) -> None:
        if self.abortIfHandshakePending():
            self._closing = True
            return
        self._error(reason)

    def _uncount(self) -> None:
        if self._slot is not None:
            self._slot.loggedIn()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        f = self.factory
        f.connections.discard(self)
        if self._slot is not None:
            self._slot.closed()
        for timer in (self._tokenTimer, self._registrationTimer, self._pingTimer, self._refresh):
            if timer is not None and timer.active():
                timer.cancel()
        self._tokenTimer = self._registrationTimer = self._pingTimer = self._refresh = None
        self._closing = True
        self._lines.clear()
        if self._mechanism is not None:
            self._mechanism.abort()
            self._mechanism = None
        session, self.session = self.session, None
        if session is not None:
            session.close("connection lost")

    def _close(self) -> None:
        self._closing = True
        if self._sendGuard is not None:
            self._sendGuard.release()
        if self.transport is not None:
            self.transport.loseConnection()

    def _error(self, reason: str) -> None:
        """
        Say C{ERROR} and close, as an ircd does.
        """
        if self._closing:
            return
        self._send(None, "ERROR", f"Closing link: {reason}")
        self._close()

    def _sendQueueFull(self) -> None:
        self._closing = True
        if self._sendGuard is not None:
            self._sendGuard.dropPeer(self.log, self.address if self.session is not None else "not logged in")

    def _registrationTimedOut(self) -> None:
        self._registrationTimer = None
        self._uncount()
        if self.abortIfHandshakePending():
            self._closing = True
            return
        self._error("Registration timed out")

    def _pingDue(self) -> None:
        self._pingTimer = None
        if self._closing:
            return
        if self._tokenTimer is not None or self._waiting:
            # Not idle: its lines wait (reading is paused meanwhile).
            self._pingTimer = self.clock.callLater(self.config.pingInterval, self._pingDue)
            return
        if self._pingSent:
            self._error(f"Ping timeout: {self.config.pingTimeout:g} seconds")
            return
        self._pingSent = True
        self._send(None, "PING", self.serverName)
        self._pingTimer = self.clock.callLater(self.config.pingTimeout, self._pingDue)

    @property
    def secure(self) -> bool:
        """
        Whether the connection is encrypted (TLS).
        """
        return ISSLTransport.providedBy(self.transport)

    def _plainAllowed(self) -> bool:
        return self.secure or self.config.allowPlaintextAuth or isLoopback(self.transport.getPeer())  # type: ignore[union-attr]

    def _mechanisms(self) -> list[str]:
        return mechanismsFor(self.secure, self._plainAllowed(), bool(self.gateway.authenticator.scramAvailable))

    # -- writing ------------------------------------------------------------------

    def _send(self, prefix: str | None, command: str, *params: str, tags: dict[str, str] | None = None) -> None:
        if self.transport is None or self._closing:
            return
        try:
            data = serialise(IRCMessage(tags or {}, prefix, command, params)) + b"\r\n"
        except ValueError:
            self.log.failure("Cannot write IRC {command}", command=command)
            return
        self.transport.write(data)
        if self._sendGuard is not None:
            self._sendGuard.wrote(len(data))

    def _numeric(self, code: str, *params: str) -> None:
        self._send(self.serverName, code, self.nick, *params)

    def _notice(self, text: str, target: str | None = None) -> None:
        for line in splitText(text, lineBudget(target or self.nick, self.serverName), self.config.maxMessageLines)[0]:
            self._send(self.serverName, "NOTICE", target or self.nick, line)

    def _say(self, text: str) -> None:
        """
        Answer a command said in C{&contacts}.
        """
        self._notice(text, CHANNEL)

    @property
    def _mask(self) -> str:
        assert self.address is not None
        return maskForAddress(self.address, self.gateway.domain)

    def _nickOf(self, address: Address) -> str:
        return nickForAddress(address, self.gateway.domain)

    def _maskOf(self, address: Address) -> str:
        return maskForAddress(address, self.gateway.domain)

    # -- reading ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._pingSent = False
        if self._pingTimer is not None and self._pingTimer.active():
            self._pingTimer.reset(self.config.pingInterval)
        over = False
        if self.session is None and self._slot is not None:
            data, over = self._slot.beforeLogin(data, self.config.preAuthBytes)
        try:
            self._lines.extend(self._reader.feed(data))
        except LineTooLong:
            self._error(f"Line longer than {self.config.maxLineBytes + self.config.maxTagBytes} bytes")
            return
        self._process()
        if over and not self._closing and self._slot is not None:
            self._slot.refusePreAuth(self.config.preAuthBytes)
            self._error(f"More than {self.config.preAuthBytes} bytes before logging in")

    def _process(self) -> None:
        """
        Handle the lines received, in order, until they run out or one must
        wait: for a token of the command rate (fakelag), or for a login in
        progress. Reading pauses while a line waits.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while self._lines and not self._closing and not self._waiting and self._tokenTimer is None:
                if not self._bucket.consume():
                    self._tokenTimer = self.clock.callLater(self._bucket.retryAfter(), self._tokenReady)
                    break
                self._lineReceived(self._lines.popleft())
        finally:
            self._processing = False
        self._pauseReading(bool(self._lines) and not self._closing)

    def _tokenReady(self) -> None:
        self._tokenTimer = None
        self._process()

    def _pauseReading(self, pause: bool) -> None:
        if self._closing or self.transport is None or pause == self._readingPaused:
            return
        self._readingPaused = pause
        if pause:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _lineReceived(self, line: bytes) -> None:
        if line.startswith(b"@"):
            space = line.find(b" ")
            tagBytes = (space if space >= 0 else len(line)) + 1
            body = len(line) - tagBytes if space >= 0 else 0
        else:
            tagBytes = 0
            body = len(line)
        if tagBytes > self.config.maxTagBytes or body + 2 > self.config.maxLineBytes:
            self._numeric("417", "Input line was too long")
            return
        try:
            message = parseLine(line, self.config.fallbackCharset)
        except IRCParseError:
            return  # empty lines and noise are ignored, as ircds do
        command = message.command.upper()
        if self.session is None:
            self._registrationCommands += 1
            if self._registrationCommands > self.config.maxRegistrationCommands:
                self._error(f"More than {self.config.maxRegistrationCommands} commands before registration")
                return
            if command not in _BEFORE_REGISTRATION:
                if command in self._handlers:
                    self._numeric("451", "You have not registered")
                else:
                    self._numeric("421", command, "Unknown command")
                return
        handler = self._handlers.get(command)
        if handler is None:
            self._numeric("421", command, "Unknown command")
            return
        try:
            handler(message)
        except Exception:
            self.log.failure("Handling IRC {command} from {peer}", command=command, peer=self.transport.getPeer())  # type: ignore[union-attr]

    def _needParams(self, message: IRCMessage, count: int) -> bool:
        if len(message.params) < count or any(not p for p in message.params[:count]):
            self._numeric("461", message.command.upper(), "Not enough parameters")
            return False
        return True

    def _wait(self, d: Deferred[Any]) -> None:
        """
        Hold the lines that follow until C{d} has fired.
        """
        self._waiting += 1

        def done(result: object) -> object:
            self._waiting -= 1
            if not self._closing:
                self._process()
            return result

        d.addBoth(done)

    # -- registration -------------------------------------------------------------

    def irc_CAP(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        sub = message.params[0].upper()
        if sub == "LS":
            if self.session is None:
                self._capNegotiating = True
            if len(message.params) > 1 and message.params[1].isdigit():
                self._capVersion = max(self._capVersion, int(message.params[1]))
            self._send(self.serverName, "CAP", self.nick, "LS", " ".join(self._offered(self._capVersion >= 302)))
        elif sub == "LIST":
            self._send(self.serverName, "CAP", self.nick, "LIST", " ".join(sorted(self._caps)))
        elif sub == "REQ":
            if self.session is None:
                self._capNegotiating = True
            wanted = message.params[1].split() if len(message.params) > 1 else []
            offered = set(self._offered(False))
            names = [w.lstrip("-") for w in wanted]
            if not wanted or any(n not in offered for n in names) or ("sasl" in names and self.session is not None):
                self._send(self.serverName, "CAP", self.nick, "NAK", " ".join(wanted))
                return
            for w in wanted:
                if w.startswith("-"):
                    self._caps.discard(w[1:])
                else:
                    self._caps.add(w)
            self._send(self.serverName, "CAP", self.nick, "ACK", " ".join(wanted))
        elif sub == "END":
            if self.session is None and self._capNegotiating:
                self._capNegotiating = False
                self._maybeRegister()
        else:
            self._numeric("410", message.params[0], "Invalid CAP command")

    def _offered(self, withValues: bool) -> list[str]:
        caps = list(CAPABILITIES)
        mechanisms = self._mechanisms()
        if mechanisms:
            caps.append("sasl=" + ",".join(mechanisms) if withValues else "sasl")
        return caps

    def irc_NICK(self, message: IRCMessage) -> None:
        if not message.params or not message.params[0]:
            self._numeric("431", "No nickname given")
            return
        if self.session is not None:
            if message.params[0].lower() != self.nick.lower():
                self._numeric("447", "Your nick is your address here: it cannot change")
            return
        nick = message.params[0]
        if any(c in nick for c in " ,*?!@:") or nick[0] in "#&$":
            self._numeric("432", nick, "Erroneous nickname")
            return
        self.nick = nick[:64]
        self._maybeRegister()

    def irc_USER(self, message: IRCMessage) -> None:
        if self.session is not None or self._registering:
            self._numeric("462", "You may not reregister")
            return
        if not self._needParams(message, 4):
            return
        self._user = message.params[0]
        self._maybeRegister()

    def irc_PASS(self, message: IRCMessage) -> None:
        if self.session is not None or self._registering:
            self._numeric("462", "You may not reregister")
            return
        if not self._needParams(message, 1):
            return
        self._password = message.params[0]

    def irc_AUTHENTICATE(self, message: IRCMessage) -> None:
        if self._saslFinal and self.session is None:
            # The client acknowledged the server's final data ("+"), or
            # gave up ("*").
            self._saslFinal = False
            if message.params and message.params[0] == "*":
                self._authenticated = None
                self._mechanism = None
                self._numeric("906", "SASL authentication aborted")
            else:
                self._saslSucceeded()
            return
        if self.session is not None or self._authenticated is not None:
            self._numeric("907", "You have already authenticated")
            return
        if "sasl" not in self._caps:
            self._numeric("904", "SASL authentication failed: request the sasl capability first")
            return
        if not self._needParams(message, 1):
            return
        param = message.params[0]
        if param == "*":
            if self._mechanism is not None:
                self._mechanism.abort()
                self._mechanism = None
            self._saslBuffer = b""
            self._numeric("906", "SASL authentication aborted")
            return
        if self._mechanism is None:
            self._startMechanism(param.upper())
            return
        if param != "+":
            self._saslBuffer += param.encode("ascii", "replace")
        if len(self._saslBuffer) > (MAX_STEP_BYTES * 4) // 3 + 4:
            self._mechanism.abort()
            self._mechanism = None
            self._saslBuffer = b""
            self._numeric("905", "SASL message too long")
            return
        if len(param) == SASL_CHUNK:
            return  # more chunks follow
        data, self._saslBuffer = self._saslBuffer, b""
        try:
            response = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._mechanism.abort()
            self._mechanism = None
            self._authFailed("malformed-request")
            return
        d = self._mechanism.step(response)
        d.addCallbacks(self._saslStepped, self._saslFailed)
        self._wait(d)

    def _startMechanism(self, name: str) -> None:
        offered = self._mechanisms()
        if name not in offered:
            self._numeric("908", ",".join(offered), "are available SASL mechanisms")
            self._authFailed("invalid-mechanism")
            return
        try:
            self._mechanism = serverMechanism(
                name,
                self.gateway.authenticator,
                self.gateway.domain,
                self.secure,
                allowPlaintext=self._plainAllowed(),
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
            )
        except SASLFailure as e:
            self._authFailed(e.condition)
            return
        self._saslBuffer = b""
        d = self._mechanism.step(None)
        d.addCallbacks(self._saslStepped, self._saslFailed)
        self._wait(d)

    def _sendChallenge(self, challenge: bytes) -> None:
        text = base64.b64encode(challenge).decode("ascii")
        chunks = [text[i : i + SASL_CHUNK] for i in range(0, len(text), SASL_CHUNK)] or ["+"]
        if len(chunks[-1]) == SASL_CHUNK:
            chunks.append("+")
        for chunk in chunks:
            self._send(self.serverName, "AUTHENTICATE", chunk)

    def _saslStepped(self, step: Any) -> None:
        if self._closing:
            return
        if not step.complete:
            self._sendChallenge(step.challenge or b"")
            return
        self._authenticated = step.address
        if step.challenge:
            # SCRAM's server-final message: the client answers "+".
            self._saslFinal = True
            self._sendChallenge(step.challenge)
            return
        self._saslSucceeded()

    def _saslSucceeded(self) -> None:
        self._mechanism = None
        address = self._authenticated
        assert address is not None
        account = str(address)
        mask = f"{self.nick}!{self._user or '*'}@{self.serverName}"
        self._numeric("900", mask, account, f"You are now logged in as {account}")
        self._numeric("903", "SASL authentication successful")

    def _saslFailed(self, f: Failure) -> None:
        self._mechanism = None
        self._saslFinal = False
        self._authenticated = None
        if self._closing:
            return
        condition = f.value.condition if isinstance(f.value, SASLFailure) else "temporary-auth-failure"
        if not isinstance(f.value, SASLFailure):
            self.log.failure("SASL error", f)
        self._authFailed(condition)

    def _authFailed(self, condition: str) -> None:
        self._authFailures += 1
        self.log.info(
            "IRC authentication failed from {peer}: {condition} ({n} of {max})",
            peer=self.transport.getPeer(),  # type: ignore[union-attr]
            condition=condition,
            n=self._authFailures,
            max=self.config.maxAuthAttempts,
        )
        self._numeric("904", "SASL authentication failed")
        if self._authFailures >= self.config.maxAuthAttempts:
            self._error("Too many failed logins")

    def _maybeRegister(self) -> None:
        if self.session is not None or self._registering or self._closing:
            return
        if self.nick == "*" or self._user is None or self._capNegotiating:
            return
        if self._mechanism is not None:
            self._mechanism.abort()
            self._mechanism = None
        self._registering = True
        if self._authenticated is not None:
            d: Deferred[Address] = succeed(self._authenticated)
        elif self._password is not None:
            d = self._checkPass(self._password)
        else:
            self._numeric("464", "Password required: PASS user:password, or SASL PLAIN")
            self._error("Password required")
            return
        d.addCallback(self._decide)
        d.addErrback(self._registrationFailed)
        self._wait(d)

    def _checkPass(self, password: str) -> Deferred[Address]:
        """
        Check C{PASS user:password} (or C{PASS password} with the nick as
        the user name) as a SASL PLAIN exchange would.
        """
        user, colon, secret = password.partition(":")
        if not colon:
            user, secret = self.nick, password
        try:
            mechanism = serverMechanism(
                "PLAIN",
                self.gateway.authenticator,
                self.gateway.domain,
                self.secure,
                allowPlaintext=self._plainAllowed(),
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
            )
        except SASLFailure as e:
            d: Deferred[Address] = Deferred()
            d.errback(e)
            return d
        step: Deferred[Any] = mechanism.step(f"\0{user}\0{secret}".encode())
        return step.addCallback(lambda s: s.address)

    def _decide(self, address: Address) -> Deferred[None]:
        if self._closing:
            raise _Closed()
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        config = self.gateway.config
        if self.gateway.locator is None:
            decided: Deferred[Any] = succeed(SERVE)
        else:
            # IRC clients seldom follow redirects: a client of a user homed
            # elsewhere is proxied there (from any network) where this
            # process can proxy, and refused otherwise, never sent away.
            decided = decideFront(config, self.gateway.locator, address, peer, "irc", self.gateway.proxy is not None)

        def open(decision: Any) -> Deferred[ISession]:
            if self._closing:
                raise _Closed()
            if decision.action not in (FrontAction.SERVE, FrontAction.PROXY):
                elsewhere = decision.home not in (None, config.homeServerName) and "router" not in config.roles
                raise _NotServed(NOT_HOMED_HERE_TEXT if elsewhere else UNAVAILABLE_TEXT)
            return openFrontSession(self.gateway, decision, address, self)

        opened: Deferred[ISession] = decided.addCallback(open)
        return opened.addCallback(self._registered)

    def _registrationFailed(self, f: Failure) -> None:
        self._registering = False
        if f.check(_Closed) or self._closing:
            return
        if f.check(SASLFailure):
            condition = f.value.condition  # type: ignore[union-attr]
            self.log.info("IRC login failed from {peer}: {condition}", peer=self.transport.getPeer(), condition=condition)  # type: ignore[union-attr]
            if condition == "encryption-required":
                self._numeric("464", "Passwords are accepted only over TLS here")
            elif condition == "temporary-auth-failure":
                self._numeric("464", "Login not possible now: try again later")
            else:
                # One answer whether the account exists or not.
                self._numeric("464", "Password incorrect")
            self._error("Bad password")
        elif f.check(TooManySessions, _NotServed):
            self._error(str(f.value))
        elif f.check(ServiceUnavailable):
            self._error("Your home server is unavailable")
        else:
            self.log.failure("IRC registration failed", f)
            self._error("Server error")

    def _registered(self, session: ISession) -> None:
        if self._closing:
            session.close("connection lost during login")
            raise _Closed()
        self.session = session
        self.address = session.address
        self._registering = False
        self._uncount()
        if self._registrationTimer is not None and self._registrationTimer.active():
            self._registrationTimer.cancel()
        self._registrationTimer = None
        self.log.info(
            "{address} logged in over IRC from {peer} as {session}",
            address=session.address,
            peer=self.transport.getPeer(),  # type: ignore[union-attr]
            session=session.sessionId,
        )
        nick = self._nickOf(session.address)
        if nick != self.nick:
            old = self.nick
            self.nick = nick
            self._send(f"{old}!{self._user}@{self.serverName}", "NICK", nick)
        self._welcome()
        self._publish(self._presence)
        contacts = session.contacts()
        contacts.addErrback(self._contactsFailed)
        self._wait(contacts.addCallback(self._joinContacts))

    def _welcome(self) -> None:
        c = self.config
        self._numeric("001", f"Welcome to the imgateway IRC face, {self.nick} ({self.address})")
        self._numeric("002", f"Your host is {self.serverName}, running imgateway-{__version__}")
        self._numeric("003", "This server speaks for your contacts on every network of the gateway")
        self._send(self.serverName, "004", self.nick, self.serverName, f"imgateway-{__version__}", "iw", "ntv")
        tokens = [
            "CASEMAPPING=ascii",
            "CHANTYPES=&",
            "PREFIX=(v)+",
            "CHANMODES=,,,nt",
            f"NETWORK={self.serverName}",
            "NICKLEN=255",
            "CHANNELLEN=32",
            f"MONITOR={c.maxMonitorTargets}",
            "TARGMAX=PRIVMSG:1,NOTICE:1,WHOIS:1,MONITOR:",
            "AWAYLEN=1024",
            "MODES=1",
            f"LINELEN={c.maxLineBytes}",
        ]
        self._numeric("005", *tokens, "are supported by this server")
        self._numeric("422", "MOTD File is missing")

    # -- the session: presence and contacts -----------------------------------------

    def _publish(self, presence: Presence) -> None:
        if self.session is None:
            return
        self._presence = presence
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        granted = self.session.publish(presence)
        # The presence lasts as long as the connection: renew the lease.
        self._refresh = self.clock.callLater(granted * 0.8, self._republish)

    def _republish(self) -> None:
        self._refresh = None
        if self.session is not None:
            self._publish(self._presence)

    def _contactsFailed(self, f: Failure) -> list[ContactView]:
        self.log.failure("Reading the contacts of {address}", f, address=self.address)
        self._notice("Your contacts could not be read; try JOIN &contacts later")
        return []

    def _joinContacts(self, contacts: list[ContactView]) -> None:
        if self._closing or self.session is None:
            return
        for view in contacts:
            self._contacts[view.address] = view
            self._presences.setdefault(view.address, view.presence)
        self._join()

    def _join(self) -> None:
        self._joined = True
        self._send(self._mask, "JOIN", CHANNEL)
        self._numeric("332", CHANNEL, "Your contacts: voiced when available. Say 'help' here for commands.")
        self._names()
        for address in sorted(self._contacts):
            away = self._awayOf(address)
            if away is not None and "away-notify" in self._caps:
                self._send(self._maskOf(address), "AWAY", away)

    def _names(self) -> None:
        names = ["@" + self.nick] + [
            ("+" if self._presenceOf(a).isOpen else "") + self._nickOf(a) for a in sorted(self._contacts)
        ]
        budget = lineBudget(self.nick, self.serverName) - len(f"353 {self.nick} = {CHANNEL} :".encode()) - 64
        line: list[str] = []
        size = 0
        for name in names:
            if line and size + len(name) + 1 > budget:
                self._numeric("353", "=", CHANNEL, " ".join(line))
                line, size = [], 0
            line.append(name)
            size += len(name.encode()) + 1
        if line:
            self._numeric("353", "=", CHANNEL, " ".join(line))
        self._numeric("366", CHANNEL, "End of /NAMES list")

    def _presenceOf(self, address: Address) -> Presence:
        return self._presences.get(address, OFFLINE)

    def _awayOf(self, address: Address) -> str | None:
        presence = self._presenceOf(address)
        return awayFromPresence(presence) if presence.isOpen else None

    def _showChange(self, address: Address, old: Presence, new: Presence) -> None:
        nick = self._nickOf(address)
        if new.isOpen and not old.isOpen:
            self._send(self.serverName, "MODE", CHANNEL, "+v", nick)
        elif old.isOpen and not new.isOpen:
            self._send(self.serverName, "MODE", CHANNEL, "-v", nick)
        if "away-notify" in self._caps:
            oldAway = awayFromPresence(old) if old.isOpen else None
            newAway = awayFromPresence(new) if new.isOpen else None
            if oldAway != newAway:
                if newAway is None:
                    self._send(self._maskOf(address), "AWAY")
                else:
                    self._send(self._maskOf(address), "AWAY", newAway)

    def _showMonitor(self, address: Address, presence: Presence) -> None:
        if presence.isOpen:
            self._numeric("730", self._maskOf(address))
        else:
            self._numeric("731", self._nickOf(address))

    # -- ISessionClient ---------------------------------------------------------------

    def messageReceived(self, message: Message) -> Deferred[None]:
        if self.session is None or self._closing:
            return succeed(None)
        mask = self._maskOf(message.sender)
        # A \x01 in a body would make the client take it for CTCP.
        body = message.body.replace("\x01", "")
        budget = lineBudget(self.nick, mask)
        if body.startswith("/me "):
            wrapper = len(makeAction("").encode())
            lines, _ = splitText(body[4:], budget - wrapper, self.config.maxMessageLines)
            lines = [makeAction(line) for line in lines]
        else:
            lines, _ = splitText(body, budget, self.config.maxMessageLines)
        for line in lines:
            self._send(mask, "PRIVMSG", self.nick, line)
        return succeed(None)

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        if self.session is None or sender == self.address:
            return succeed(None)
        old = self._presenceOf(sender)
        self._presences[sender] = presence
        if self._joined and sender in self._contacts:
            self._showChange(sender, old, presence)
        if sender in self._monitor and old.isOpen != presence.isOpen:
            self._showMonitor(sender, presence)
        return succeed(None)

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        if self.session is not None:
            self._say(_SUBSCRIPTION_NOTICES[event.kind].format(who=event.sender))
        return succeed(None)

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        if self.session is None:
            return succeed(None)
        address = contact.address
        known = address in self._contacts
        old = self._presenceOf(address) if known else OFFLINE
        self._contacts[address] = contact
        self._presences[address] = contact.presence
        if self._joined:
            if not known:
                self._send(self._maskOf(address), "JOIN", CHANNEL)
            self._showChange(address, old, contact.presence)
        return succeed(None)

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        if self.session is not None and contact in self._contacts:
            del self._contacts[contact]
            if self._joined:
                    self._send(self._maskOf(contact), "PART", CHANNEL, "Removed from your contacts")
        return succeed(None)

    def sessionClosed(self, reason: str) -> None:
        self.session = None
        self._error(reason or "Session closed")

    # -- commands after registration ---------------------------------------------------

    def irc_PING(self, message: IRCMessage) -> None:
        if not message.params:
            self._numeric("409", "No origin specified")
            return
        self._send(self.serverName, "PONG", self.serverName, message.params[0])

    def irc_PONG(self, message: IRCMessage) -> None:
        pass  # any line resets the ping timer

    def irc_QUIT(self, message: IRCMessage) -> None:
        self._error("Quit")

    def irc_PRIVMSG(self, message: IRCMessage) -> None:
        self._message(message, notice=False)

    def irc_NOTICE(self, message: IRCMessage) -> None:
        self._message(message, notice=True)

    def _message(self, message: IRCMessage, notice: bool) -> None:
        if not message.params or not message.params[0]:
            if not notice:
                self._numeric("411", f"No recipient given ({message.command.upper()})")
            return
        if len(message.params) < 2 or not message.params[1]:
            if not notice:
                self._numeric("412", "No text to send")
            return
        target, text = message.params[0], message.params[1]
        if "," in target:
            if not notice:
                self._numeric("407", target, "Too many recipients: one at a time")
            return
        if target.lower() == CHANNEL:
            if not notice and ctcpAction(text) is None and not text.startswith("\x01"):
                self._command(_cleanText(text))
            return
        address = self._addressOf(target)
        if address is None:
            if not notice:
                self._numeric("401", target, "No such nick/channel")
            return
        action = ctcpAction(text)
        if action is not None:
            body = "/me " + _cleanText(action)
        elif text.startswith("\x01"):
            return  # other CTCP requests: not carried
        else:
            body = _cleanText(text)
        if not body.strip():
            if not notice:
                self._numeric("412", "No text to send")
            return
        assert self.session is not None
        d = self.session.sendMessage(address, body)
        d.addErrback(self._notDelivered, target, notice)

    def _notDelivered(self, f: Failure, target: str, notice: bool) -> None:
        if self._closing or notice:
            return
        e = f.value
        if not isinstance(e, DeliveryError):
            self.log.failure("Sending a message", f)
            self._notice(f"Your message to {target} was not delivered: server error")
            return
        if e.status in _PRIVATE_STATUSES:
            self._numeric("401", target, "No such nick/channel")
            return
        text = e.text
        alternate = getattr(e, "alternate", None)
        if alternate:
            text = f"{text}; reach them at {alternate}"
        self._notice(f"Your message to {target} was not delivered: {text}")

    def _addressOf(self, word: str) -> Address | None:
        """
        The address a command argument or message target names: an
        address (C{bob@example.org}), or a nick.
        """
        if "@" in word:
            try:
                return Address.fromString(word)
            except InvalidAddress:
                return None
        return addressForNick(word, self.gateway.domain)

    def irc_AWAY(self, message: IRCMessage) -> None:
        text = message.params[0] if message.params else ""
        if text:
            presence = presenceFromIRC(True, _cleanText(text))
            self._publish(presence)
            self._numeric("306", "You have been marked as being away")
        else:
            self._publish(Presence(PresenceState.ONLINE))
            self._numeric("305", "You are no longer marked as being away")

    def irc_JOIN(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        for channel in message.params[0].split(","):
            if channel.lower() == CHANNEL:
                if not self._joined:
                    self._join()
            elif channel == "0":
                self._part()
            else:
                self._numeric("403", channel, "No such channel: your contacts are in &contacts")

    def irc_PART(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        for channel in message.params[0].split(","):
            if channel.lower() == CHANNEL and self._joined:
                self._part()
            else:
                self._numeric("442", channel, "You're not on that channel")

    def _part(self) -> None:
        if self._joined:
            self._joined = False
            self._send(self._mask, "PART", CHANNEL)

    def irc_NAMES(self, message: IRCMessage) -> None:
        if message.params and message.params[0].lower() == CHANNEL and self._joined:
            self._names()
        else:
            self._numeric("366", message.params[0] if message.params else "*", "End of /NAMES list")

    def irc_TOPIC(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        if message.params[0].lower() != CHANNEL:
            self._numeric("403", message.params[0], "No such channel")
        elif len(message.params) > 1:
            self._numeric("482", CHANNEL, "The topic of &contacts is fixed")
        else:
            self._numeric("332", CHANNEL, "Your contacts: voiced when available. Say 'help' here for commands.")

    def irc_MODE(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        target = message.params[0]
        if target.lower() == CHANNEL:
            if len(message.params) == 1:
                self._numeric("324", CHANNEL, "+nt")
            elif message.params[1] in ("b", "+b"):
                self._numeric("368", CHANNEL, "End of channel ban list")
            else:
                self._numeric("482", CHANNEL, "Modes of &contacts follow your contacts' presence")
        elif target.lower() == self.nick.lower():
            if len(message.params) == 1:
                self._numeric("221", "+")
        else:
            self._numeric("403", target, "No such channel")

    def irc_WHO(self, message: IRCMessage) -> None:
        target = message.params[0] if message.params else "*"
        if target.lower() == CHANNEL:
            addresses = sorted(self._contacts) if self._joined else []
        else:
            address = self._addressOf(target)
            addresses = [address] if address is not None and address in self._contacts else []
        for address in addresses:
            presence = self._presenceOf(address)
            flags = ("G" if self._awayOf(address) is not None else "H") + ("+" if presence.isOpen else "")
            nick, user, host = self._maskOf(address).replace("!", "@", 1).split("@", 2)
            self._numeric("352", CHANNEL, user, host, self.serverName, nick, flags, f"0 {address}")
        self._numeric("315", target, "End of WHO list")

    def irc_WHOIS(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        target = message.params[-1]
        if target.lower() == self.nick.lower():
            address: Address | None = self.address
        else:
            address = self._addressOf(target)
        if address is None:
            self._numeric("401", target, "No such nick/channel")
            self._numeric("318", target, "End of /WHOIS list")
            return
        nick = self._nickOf(address)
        _, user, host = self._maskOf(address).replace("!", "@", 1).split("@", 2)
        self._numeric("311", nick, user, host, "*", str(address))
        if address in self._contacts and self._joined:
            prefix = "+" if self._presenceOf(address).isOpen else ""
            self._numeric("319", nick, prefix + CHANNEL)
        self._numeric("312", nick, self.serverName, "imgateway")
        away = self._awayOf(address) if address in self._contacts else None
        if away is not None:
            self._numeric("301", nick, away)
        self._numeric("318", nick, "End of /WHOIS list")

    def irc_ISON(self, message: IRCMessage) -> None:
        words = " ".join(message.params).split()
        online = []
        for word in words:
            address = self._addressOf(word)
            if address is not None and self._presenceOf(address).isOpen:
                online.append(self._nickOf(address))
        self._numeric("303", " ".join(online))

    def irc_USERHOST(self, message: IRCMessage) -> None:
        replies = []
        for word in message.params[:5]:
            address = self.address if word.lower() == self.nick.lower() else self._addressOf(word)
            if address is None:
                continue
            away = "-" if self._awayOf(address) is not None else "+"
            nick, rest = self._maskOf(address).split("!", 1)
            replies.append(f"{nick}={away}{rest}")
        self._numeric("302", " ".join(replies))

    def irc_MONITOR(self, message: IRCMessage) -> None:
        if not self._needParams(message, 1):
            return
        sub = message.params[0]
        if sub == "+":
            if not self._needParams(message, 2):
                return
            targets = [t for t in message.params[1].split(",") if t]
            for n, target in enumerate(targets):
                address = self._addressOf(target)
                if address is None:
                    self._numeric("731", target)
                    continue
                if address not in self._monitor and len(self._monitor) >= self.config.maxMonitorTargets:
                    self._numeric("734", str(self.config.maxMonitorTargets), ",".join(targets[n:]), "Monitor list is full")
                    return
                self._monitor.add(address)
                self._showMonitor(address, self._presenceOf(address))
        elif sub == "-":
            if not self._needParams(message, 2):
                return
            for target in message.params[1].split(","):
                address = self._addressOf(target)
                if address is not None:
                    self._monitor.discard(address)
        elif sub.upper() == "C":
            self._monitor.clear()
        elif sub.upper() == "L":
            nicks = sorted(self._nickOf(a) for a in self._monitor)
            if nicks:
                self._numeric("732", ",".join(nicks))
            self._numeric("733", "End of MONITOR list")
        elif sub.upper() == "S":
            for address in sorted(self._monitor):
                self._showMonitor(address, self._presenceOf(address))

    def irc_MOTD(self, message: IRCMessage) -> None:
        self._numeric("422", "MOTD File is missing")

    def irc_LIST(self, message: IRCMessage) -> None:
        self._numeric("321", "Channel", "Users  Name")
        self._numeric("322", CHANNEL, str(len(self._contacts) + 1), "Your contacts")
        self._numeric("323", "End of /LIST")

    def irc_VERSION(self, message: IRCMessage) -> None:
        self._numeric("351", f"imgateway-{__version__}", self.serverName, "IRC face")

    # -- commands said in &contacts -----------------------------------------------------

    def _command(self, text: str) -> None:
        words = text.split()
        if not words:
            return
        name, args = words[0].lower(), words[1:]
        handler = _COMMANDS.get(name)
        if handler is None:
            self._say(f"Unknown command {name!r}: say 'help'")
            return
        assert self.session is not None
        try:
            result = handler(self, self.session, args)
        except _Usage as e:
            self._say(str(e))
            return
        if isinstance(result, Deferred):
            result.addErrback(self._commandFailed, name)

    def _commandFailed(self, f: Failure, name: str) -> None:
        e = f.value
        if isinstance(e, (InvalidAddress, ValueError)):
            self._say(f"{name}: {e}")
        elif isinstance(e, DeliveryError) and e.status not in _PRIVATE_STATUSES:
            self._say(f"{name}: {e.text}")
        else:
            if not isinstance(e, DeliveryError):
                self.log.failure("IRC command {name}", f, name=name)
            self._say(f"{name} failed")

    def _argAddress(self, word: str) -> Address:
        address = self._addressOf(word)
        if address is None:
            raise _Usage(f"{word!r} is neither an address nor a contact's nick")
        return address

    def cmd_add(self, session: ISession, args: list[str]) -> Deferred[Any]:
        if not args:
            raise _Usage("add ADDRESS [NAME]")
        address = self._argAddress(args[0])

        def added(state: AuthorisationState) -> None:
            if state is AuthorisationState.AUTHORISED:
                self._say(f"Added {address}; you may see their presence")
            else:
                self._say(f"Added {address}; you will see their presence once they allow it")

        return session.subscribe(address, " ".join(args[1:])[:MAX_DISPLAY_NAME_CHARS]).addCallback(added)

    def cmd_accept(self, session: ISession, args: list[str]) -> Deferred[Any]:
        if len(args) != 1:
            raise _Usage("accept ADDRESS")
        address = self._argAddress(args[0])
        return session.authorise(address, True).addCallback(lambda _: self._say(f"{address} may watch your presence"))

    def cmd_remove(self, session: ISession, args: list[str]) -> Deferred[Any]:
        if len(args) != 1:
            raise _Usage("remove NICK|ADDRESS")
        address = self._argAddress(args[0])
        return session.unsubscribe(address).addCallback(lambda _: self._say(f"Removed {address}"))

    def _access(self, session: ISession, args: list[str], kind: AccessList) -> Deferred[Any]:
        word = kind.value
        if not args:

            def listed(entries: dict[str, AccessList]) -> None:
                names = sorted(e for e, l in entries.items() if l is kind)
                self._say(f"{word}: {', '.join(names) if names else 'nobody'}")

            return session.accessLists().addCallback(listed)
        if len(args) != 1:
            raise _Usage(f"{word} [-]ADDRESS|DOMAIN")
        entry = args[0]
        if entry.startswith("-"):
            entry, kind = entry[1:], AccessList.NONE
        if "@" not in entry and "." not in entry:
            address = addressForNick(entry, self.gateway.domain)
            if address is not None:
                entry = str(address)
        what = f"{entry} is on your {word} list" if kind is not AccessList.NONE else f"{entry} is off your {word} list"
        return session.setAccess(entry, kind).addCallback(lambda _: self._say(what))

    def cmd_allow(self, session: ISession, args: list[str]) -> Deferred[Any]:
        return self._access(session, args, AccessList.ALLOW)

    def cmd_block(self, session: ISession, args: list[str]) -> Deferred[Any]:
        return self._access(session, args, AccessList.BLOCK)

    def cmd_status(self, session: ISession, args: list[str]) -> None:
        if not args:
            self._say(f"Your presence: {self._presence}")
            return
        state = _STATES.get(args[0].lower())
        if state is None:
            raise _Usage(f"status STATE [NOTE], STATE one of {', '.join(_STATES)}")
        try:
            presence = Presence(state, " ".join(args[1:])[:MAX_NOTE_CHARS])
        except ValueError as e:
            raise _Usage(str(e)) from None
        self._publish(presence)
        self._say(f"Your presence: {presence}")

    def cmd_rule(self, session: ISession, args: list[str]) -> Deferred[Any]:
        if not args:

            def listed(rules: list[PresenceRule]) -> None:
                if not rules:
                    self._say("No presence rules")
                for n, rule in enumerate(rules, 1):
                    states = ",".join(sorted(state.value for state in rule.states))
                    detail = " ".join(
                        str(part)
                        for part in (rule.sender, rule.alternate, rule.text, rule.forwardTo or "")
                        if part
                    )
                    self._say(f"{n}. {states}: {rule.action.value} {detail}".rstrip())

            return session.rules().addCallback(listed)
        state = _STATES.get(args[0].lower())
        if state is None:
            raise _Usage(f"rule STATE [ALTERNATE|-], STATE one of {', '.join(_STATES)}")
        alternate = " ".join(args[1:]) if len(args) > 1 and args[1:] != ["-"] else None
        done = f"rule {state.value} {alternate}" if alternate else f"No rule for {state.value}"
        return session.setRule(state, alternate).addCallback(lambda _: self._say(done))

    def cmd_help(self, session: ISession, args: list[str]) -> None:
        for line in _HELP:
            self._say(line)


class _Usage(Exception):
    """
    A command was said wrongly: the text says how to say it.
    """


#: What a client may send before it is registered.
_BEFORE_REGISTRATION = frozenset({"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"})

#: The commands said in &contacts.
_COMMANDS: dict[str, Callable[[IRCFaceProtocol, ISession, list[str]], Any]] = {
    name[4:]: getattr(IRCFaceProtocol, name) for name in dir(IRCFaceProtocol) if name.startswith("cmd_")
}


class IRCFaceFactory(Factory):
    """
    Builds L{IRCFaceProtocol}s for the face's listeners.

    @ivar limits: Counts the connections for the limits before login
        (C{max_unauthenticated}, C{max_connections_per_address}).
    @ivar connections: Every open connection.
    """

    protocol = IRCFaceProtocol  # type: ignore[assignment]

    def __init__(self, gateway: IGateway, config: IRCConfig, clock: IReactorTime | None = None) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock if clock is not None else gateway.clock
        self.limits = FaceConnections("IRC")
        self.connections: set[IRCFaceProtocol] = set()

    def sayGoodbye(self, reason: str) -> None:
        """
        Close every connection with C{ERROR} and C{reason}.
        """
        for protocol in list(self.connections):
            protocol._error(reason)

    def buildProtocol(self, addr: Any) -> IRCFaceProtocol:  # type: ignore[override]
        p = IRCFaceProtocol(self.gateway, self.config, self.clock)
        p.factory = self
        return p
