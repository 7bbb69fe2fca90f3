# -*- test-case-name: tests.test_native_server -*-
"""
The native protocol's server side: one L{NativeServerProtocol} per client
connection, speaking C{docs/protocol.md}, logging its user in through the
gateway's portal and acting as that session's L{ISessionClient}.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway import __version__
from imgateway._compiled import cachedProperty
from imgateway.adapters.base import ConnectionSlot, FaceConnections, SendQueueGuard, TLSHandshakeMixin
from imgateway.adapters.native.framing import (
    MAX_SEQ,
    FrameParser,
    FramingError,
    Headers,
    Limits,
    Request,
    Response,
    serialise,
    serialiseUnsequenced,
)
from imgateway.adapters.native.mapping import (
    ACCESS_LISTS,
    MESSAGE_MARKS,
    PRESENCE,
    REASONS,
    SUBSCRIBE_ANSWERS,
    SUBSCRIPTION_KINDS,
    SUBSCRIPTIONS,
    TARGETS,
    TargetForm,
    accessListFromToken,
    codeForError,
    decisionFromToken,
    describeTargets,
    presenceAnswersNone,
    presenceFromToken,
    ruleFromJSON,
    ruleToJSON,
    targetForm,
)
from imgateway.adapters.native.outstanding import OutstandingRequests
from imgateway.auth.sasl import SASLFailure, mechanismsFor, serverMechanism
from imgateway.config import HomeConfig
from imgateway.core.address import MAX_DOMAIN_CHARS, MAX_LOCAL_BYTES, Address
from imgateway.core.deadlines import Deadlines
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    PersistenceFailed,
    ServiceUnavailable,
    TooManySessions,
)
from imgateway.core.events import Message, SubscriptionEvent, newMessageId
from imgateway.core.presence import MAX_NOTE_CHARS, Presence, PresenceState
from imgateway.core.ratelimit import TokenBucket
from imgateway.core.records import (
    MAX_ALTERNATE_CHARS,
    MAX_DISPLAY_NAME_CHARS,
    MAX_REPLY_CHARS,
    RULE_STATES,
    AccessList,
    AuthorisationState,
    ContactView,
    PresenceRule,
    RuleAction,
    RuleNetwork,
)
from imgateway.interfaces import IGateway, ISession, ISessionClient
from imgateway.net.addresses import isLoopback
from imgateway.net.gather import GATHER
from imgateway.router.front import UNAVAILABLE_TEXT, FrontAction, FrontDecision, decideFront, openFrontSession

__all__ = ["NativeConfig", "NativeServerFactory", "NativeServerProtocol", "largestListAnswers"]

_T = TypeVar("_T")

#: The control characters (Unicode's C{Cc}) but TAB: what no header value
#: may hold (L{serialise}'s check), what L{_clean} replaces, and what
#: L{sentResponse} and L{messageRequest} leave to the general way.
_NOT_PLAIN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
#: What a request's target may not hold (L{serialise}'s check): control
#: characters and any white space.
_NOT_TARGET = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


@frozen
class NativeConfig:
    """
    The C{[native]} table; see C{etc/imgateway.toml} for each key.
    """

    listen: tuple[str, ...] = ("tcp:5300:interface=127.0.0.1",)
    maxStartLineBytes: int = 2048
    maxHeaderBytes: int = 8192
    maxHeaders: int = 64
    maxBodyBytes: int = 65536
    requestsPerSecond: float = 20.0
    requestBurst: int = 10
    maxUnauthenticated: int = 1000
    loginTimeout: float = 30.0
    idleTimeout: float = 300.0
    maxAuthAttempts: int = 3
    allowPlaintextAuth: bool = False
    maxSendQueueBytes: int = 1048576
    framesPerTurn: int = 32
    answerWindow: int = 65536
    preAuthBytes: int = 262144

    @cachedProperty
    def limits(self) -> Limits:
        """
        The framing limits: made once per configuration, and shared by
        every connection's parser (an idle connection does not hold a
        copy of its own).
        """
        return Limits(self.maxStartLineBytes, self.maxHeaderBytes, self.maxHeaders, self.maxBodyBytes)


class _Reply(Exception):
    """
    Raised by a request handler to answer with an error status.
    """

    def __init__(self, code: int, reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason or REASONS.get(code, "Error")
        self.headers = headers


def _clean(text: str) -> str:
    """
    Make text safe for a header value: control characters (Unicode's
    C{Cc}: C0, DEL, C1) but TAB become spaces.
    """
    return _NOT_PLAIN.sub(" ", text) if _NOT_PLAIN.search(text) is not None else text


def _target(request: Request) -> Address:
    """
    The address in a request's C{im:} or C{pres:} target (its form was
    checked against L{TARGETS} before the request was handled).
    """
    try:
        return Address.fromString(request.target)
    except InvalidAddress as e:
        raise _Reply(400, f"Bad address: {e}") from None


def _contactJSON(view: ContactView) -> dict[str, Any]:
    return {
        "address": str(view.address),
        "name": view.displayName,
        "subscription": SUBSCRIPTIONS[view.subscription],
        "pending": view.pending,
        "presence": PRESENCE[view.presence.state],
        "note": view.presence.note,
    }


#: The most bytes one character of a text field takes in a JSON body:
#: C{json.dumps} escapes every character outside ASCII, one outside the
#: Basic Multilingual Plane as two C{\\uXXXX} escapes.
_JSON_BYTES_PER_CHAR = 12

#: The most bytes one byte of an address's UTF-8 local part takes in a JSON
#: body: a local part holds no quote, backslash or control character, and
#: a character of 2, 3 or 4 bytes is escaped to 6, 6 or 12.
_JSON_BYTES_PER_LOCAL_BYTE = 3

#: The longest address in a JSON body, its quotes included.
_LONGEST_ADDRESS_JSON = 2 + _JSON_BYTES_PER_LOCAL_BYTE * MAX_LOCAL_BYTES + len("@") + MAX_DOMAIN_CHARS


def _longestToken(tokens: Any) -> str:
    return "x" * max(len(t) for t in tokens.values())


def _jsonList(count: int, item: int) -> int:
    """
    @return: The bytes of a JSON list (C{json.dumps}' separators) of
        C{count} items of at most C{item} bytes each.
    """
    return 2 + count * item + max(0, count - 1) * len(", ")


def _jsonString(chars: int) -> int:
    """
    @return: The most bytes a text field of C{chars} characters takes in a
        JSON body, its quotes included.
    """
    return 2 + _JSON_BYTES_PER_CHAR * chars


def largestListAnswers(home: HomeConfig) -> dict[str, int]:
    """
    The largest bodies the list answers (C{CONTACTS}, C{ACCESS *}, C{RULE *})
    can have under the quotas of C{home}, whatever the lists hold: the
    longest addresses, display names, notes and alternates, in the
    characters that take the most room. (Lists stored before the quotas,
    or before they were lowered, may be longer.)

    @return: The method to its largest body, in bytes.
    """
    entry = len(
        json.dumps(
            {
                "address": "",
                "name": "",
                "subscription": _longestToken(SUBSCRIPTIONS),
                "pending": False,
                "presence": _longestToken(PRESENCE),
                "note": "",
            }
        )
    )
    entry += _LONGEST_ADDRESS_JSON + _jsonString(MAX_DISPLAY_NAME_CHARS) + _jsonString(MAX_NOTE_CHARS) - 3 * 2
    contacts = (
        len(json.dumps({"contacts": [], "requests": []}))
        - 2 * 2
        + _jsonList(home.maxContacts, entry)
        + _jsonList(home.maxPendingRequests, _LONGEST_ADDRESS_JSON)
    )
    access = len(json.dumps({"allow": [], "block": []})) - 2 + _jsonList(home.maxAccessEntries, _LONGEST_ADDRESS_JSON)
    # The longest rule: every state, a sender address, a network, and the
    # longest of an alternate, a reply text or an address (one per rule).
    longest = PresenceRule(RULE_STATES, RuleAction.AUTO_REPLY, network=RuleNetwork.REMOTE, text="x")
    rule = len(json.dumps({**ruleToJSON(longest), "sender": ""})) - 2 - 3
    rule += _LONGEST_ADDRESS_JSON + _jsonString(max(MAX_REPLY_CHARS, MAX_ALTERNATE_CHARS))
    rules = len(json.dumps({"rules": []})) - 2 + _jsonList(home.maxRules, rule)
    return {"CONTACTS": contacts, "ACCESS": access, "RULE": rules}


@implementer(ISessionClient, IHandshakeListener)
class NativeServerProtocol(Protocol, TLSHandshakeMixin):
    """
    One client connection of the native face.
    """

    log = Logger()
    # Quoted although annotations are lazy here: the compiled build
    # (imgateway._compiled) loads a class named in a class annotation when
    # the class is made, and this one is defined further down.
    factory: "NativeServerFactory"
    #: The SASL mechanism of the last AUTH, for /metrics.
    mechanismName = "none"

    def __init__(self, gateway: IGateway, config: NativeConfig, clock: IReactorTime) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock
        self.session: ISession | None = None
        self.sessionLabel = ""
        self._parser = FrameParser(config.limits)
        self._bucket = TokenBucket(config.requestsPerSecond, config.requestBurst, clock)
        self._outstanding = OutstandingRequests(config.answerWindow)
        self._mechanism: Any = None
        self._authFailures = 0
        # Its login_timeout and idle_timeout run on the factory's shared
        # timers (loginTimers, idleTimers): no delayed call of its own.
        self._closing = False
        # Its place among the connections not logged in, and the bytes it
        # sent before a successful AUTH (pre_auth_bytes).
        self._slot: ConnectionSlot | None = None
        self._rateLimited = False
        # The input pipeline (see _process): the item parsed but not handled
        # yet, the timer that waits for a token, the call that starts the
        # next turn once this one's frames_per_turn are parsed, the frames
        # parsed in this turn, requests being handled, whether one of them
        # is a barrier, and whether reading is paused.
        self._held: Request | FramingError | None = None
        self._tokenTimer: IDelayedCall | None = None
        self._turnCall: IDelayedCall | None = None
        self._turnFrames = 0
        self._inFlight = 0
        self._barrier = False
        self._processing = False
        self._readingPaused = False
        self._sendGuard: SendQueueGuard | None = None
        # Presence-Answers: none (docs/protocol.md section 7.2): asked for
        # by the AUTH that started the exchange, in force once logged in.
        # The session's presence NOTIFYs then go with Seq 0, not counted
        # and not answered.
        self._quietAsked = False
        self.quietPresence = False
        # The frames kept while a read is handled (imgateway.net.gather),
        # or, holding none, the gather's epoch of the read this connection
        # last wrote in directly (0: none): written after it, a frame is
        # kept. One attribute, not two: with a 30th attribute CPython 3.11
        # gives each instance a dictionary of its own keys (1,584 bytes
        # against 296 for 28 or 29 keys shared with the class), 1.3 KiB of
        # every session (tests.test_native_server.InstanceMemoryTests).
        self._gathered: list[bytes] | int = 0

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        f.connections.add(self)
        if ITCPTransport.providedBy(self.transport):
            # Small frames answered at once: Nagle's algorithm plus the
            # peer's delayed ACK would add up to 40 ms to each.
            self.transport.setTcpNoDelay(True)
        # max_unauthenticated, and the per-source limits shared with the
        # other faces (imgateway.adapters.base.FaceConnections); refusals
        # are logged once per interval with a count.
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._slot = slot = f.limits.admit(peer, self.gateway.connectionLimiter, self.config.maxUnauthenticated)
        if slot.refusal is not None:
            wait = slot.retryAfter
            self._refuse(slot.refusal, (("Retry-After", str(wait)),) if wait else ())
            return
        self._sendGuard = SendQueueGuard(self.transport, self.config.maxSendQueueBytes, self._sendQueueFull)  # type: ignore[arg-type]
        f.loginTimers.start(self, self.config.loginTimeout)
        f.idleTimers.start(self, self.config.idleTimeout)

    def _refuse(self, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """
        Refuse a new connection: 503 and close; or, while a TLS handshake
        is pending (nothing can be sent yet), drop it.
        """
        if self.abortIfHandshakePending():
            self._closing = True
            return
        self._respond(0, 503, reason, headers)
        self._close()

    def _uncount(self) -> None:
        if self._slot is not None:
            self._slot.loggedIn()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.factory.connections.discard(self)
        if self._slot is not None:
            self._slot.closed()
        self.factory.loginTimers.stop(self)
        self.factory.idleTimers.stop(self)
        for timer in (self._tokenTimer, self._turnCall):
            if timer is not None and timer.active():
                timer.cancel()
        self._tokenTimer = self._turnCall = None
        self._held = None
        self._closing = True
        session, self.session = self.session, None
        if session is not None:
            session.close("connection lost")

    def _sendQueueFull(self) -> None:
        self._closing = True
        if self._sendGuard is not None:
            self._sendGuard.dropPeer(self.log, self.session.address if self.session is not None else "not logged in")

    def _loginTimedOut(self) -> None:
        self._uncount()
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        if self.abortIfHandshakePending():
            # A BYE would wait for the handshake forever: dropped instead.
            self.log.info("Dropping {peer}: no TLS handshake within login_timeout", peer=peer)
            self._closing = True
            return
        self._bye("login-timeout")

    def _idleTimedOut(self) -> None:
        if self._tokenTimer is not None:
            # Not idle: its requests wait for tokens (and reading is paused).
            self.factory.idleTimers.start(self, self.config.idleTimeout)
            return
        self._bye("idle-timeout")

    def bye(self, reason: str) -> None:
        """
        Say BYE with C{reason} and close the connection.
        """
        self._bye(reason)

    def _bye(self, reason: str) -> None:
        if self._closing:
            return
        self._request("BYE", "*", (("Reason", reason),))
        self._close()

    def _close(self) -> None:
        # Every close goes through here: the send queue guard lets go of
        # the transport first (a TLS transport does not close while a
        # producer is registered).
        self._closing = True
        if isinstance(self._gathered, list):
            # What was kept goes before the close, as it was written.
            self.flushGathered()
        if self._sendGuard is not None:
            self._sendGuard.release()
        self.transport.loseConnection()  # type: ignore[union-attr]

    @property
    def secure(self) -> bool:
        """
        Whether the connection is encrypted (TLS).
        """
        return ISSLTransport.providedBy(self.transport)

    def _plainAllowed(self) -> bool:
        return self.config.allowPlaintextAuth or isLoopback(self.transport.getPeer())  # type: ignore[union-attr]

    @property
    def _scram(self) -> bool:
        """
        Whether the SCRAM mechanisms are offered (not with a directory that
        only checks passwords given in the clear, such as LDAP).
        """
        return bool(self.gateway.authenticator.scramAvailable)

    # -- frames ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.factory.idleTimers.restart(self)
        over = False
        if self.session is None and self._slot is not None:
            # pre_auth_bytes: the bytes within the budget are handled as
            # usual, however the stream is cut; the first byte past it
            # ends the connection (see _preAuthExceeded).
            data, over = self._slot.beforeLogin(data, self.config.preAuthBytes)
        elif (
            self._turnCall is None
            and self._held is None
            and self._tokenTimer is None
            and not self._barrier
            and not self._processing
            and data.startswith(_BARE_OK_START)
        ):
            # A read of bare 200s only (a recipient's usual read: its
            # answers to the server's MESSAGEs and NOTIFYs), within one
            # turn's frames: taken as _process takes them (nextBareOK),
            # without storing and parsing the read (as router/link.py does).
            # First the usual read: the answers to the oldest requests
            # awaiting one, in order, recognised by their bytes and taken in
            # one step.
            out = self._outstanding
            turn = self.config.framesPerTurn
            unanswered = out.sent - out.floor
            count = self._parser.bareOKRun(data, out.floor % MAX_SEQ + 1, unanswered if unanswered < turn else turn)
            if count and self.session is not None and out.answerInOrder(count):
                self._turnFrames = count
                return
            # Other bare 200s are matched one by one: the first that
            # answers nothing closes the connection, as _process would.
            seqs = self._parser.takeBareOKs(data)
            if seqs is not None:
                count = len(seqs)
                if count <= turn:
                    self._turnFrames = count
                    taken = 0 if self.session is None else self._outstanding.answerAll(seqs)
                    if taken < count:
                        self._answers(seqs[taken])
                    return
        self._parser.receive(data)
        if self._turnCall is None:
            self._turnFrames = 0  # a read: a turn of its own
        # What the read's requests write to a connection after its first
        # frame (their answers to this one, the messages to a recipient)
        # is written at the end of the read, one write per connection.
        began = GATHER.begin()
        try:
            self._process()
        finally:
            if began:
                GATHER.end()
        if over:
            self._preAuthExceeded()

    def _preAuthExceeded(self) -> None:
        """
        More than C{pre_auth_bytes} were received before a successful
        C{AUTH}: say BYE (C{pre-auth-bytes}) and close, handling nothing
        more. Logged as refusals are: a few lines for a flood.
        """
        if self._closing or self._slot is None:
            return
        self._slot.refusePreAuth(self.config.preAuthBytes)
        self._bye("pre-auth-bytes")

    def _process(self) -> None:
        """
        Handle what was received, frame by frame in stream order, until it
        runs out or the next frame must wait: for a token of the rate
        limit, for a barrier (C{AUTH}, C{BYE}: see L{_BARRIERS}), or for the
        next reactor turn once C{frames_per_turn} frames were parsed in this
        one. While something waits, reading from the transport is paused,
        so what is not handled yet stays unparsed in the parser or unread in
        the network: one read never makes more than C{request_burst}
        requests' worth of work, nor more than C{frames_per_turn} frames'
        before the other connections have had their turn.
        """
        if self._processing:
            return  # a handler finished synchronously: the loop goes on
        self._processing = True
        try:
            while not self._closing and not self._barrier and self._tokenTimer is None and self._turnCall is None:
                if self._held is not None:
                    item: Request | Response | FramingError | None = self._held
                    self._held = None
                elif self._turnFrames >= self.config.framesPerTurn:
                    if self._parser.bufferedBytes:
                        self._turnCall = self.clock.callLater(0, self._nextTurn)
                    break
                else:
                    seq = self._parser.nextBareOK()
                    if seq is not None:
                        # A bare 200 (the client's usual answer to a
                        # MESSAGE or NOTIFY): what _responseReceived does
                        # with one, without the Response.
                        self._turnFrames += 1
                        self._answers(seq)
                        continue
                    item = self._parser.next()
                    if item is None:
                        break
                    self._turnFrames += 1
                if isinstance(item, Response):
                    self._responseReceived(item)
                elif isinstance(item, FramingError) and item.fatal:
                    self._framingError(item)
                elif isinstance(item, FramingError) and item.inResponse:
                    self._badResponse(item)
                elif isinstance(item, Request) and item.method in _BARRIERS and self._inFlight:
                    # Wait until every earlier request has been answered.
                    self._held = item
                    break
                elif not self._bucket.consume():
                    self._held = item
                    self._waitForToken()
                    break
                elif isinstance(item, FramingError):
                    self._framingError(item)
                else:
                    self._requestReceived(item)  # type: ignore[arg-type]
        finally:
            self._processing = False
        self._pauseReading(self._barrier or self._held is not None or self._turnCall is not None)

    def _nextTurn(self) -> None:
        self._turnCall = None
        self._turnFrames = 0
        self._process()

    def _pauseReading(self, pause: bool) -> None:
        if self._closing or self.transport is None or pause == self._readingPaused:
            return
        if getattr(self.transport, "disconnecting", False):
            return
        self._readingPaused = pause
        if pause:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _waitForToken(self) -> None:
        if not self._rateLimited:
            self._rateLimited = True
            self.log.warn(
                "Rate-limiting {peer} ({who}): more than {rate}/s requests; reading paused while it waits",
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
                who=self.session.address if self.session is not None else "not logged in",
                rate=self.config.requestsPerSecond,
            )
        self._tokenTimer = self.clock.callLater(self._bucket.retryAfter(), self._tokenReady)

    def _tokenReady(self) -> None:
        self._tokenTimer = None
        self._turnFrames = 0
        self._process()

    def _framingError(self, item: FramingError) -> None:
        if item.fatal:
            self.log.info(
                "Closing {peer}: {code} {reason} ({detail})",
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
                code=item.code,
                reason=item.reason,
                detail=item.detail,
            )
        # A bad response is never answered (its Seq is one of ours).
        if item.fatal or not item.inResponse:
            self._respond(item.seq or 0, item.code, f"{item.reason}: {item.detail}")
        if item.fatal:
            self._close()

    def _requestReceived(self, request: Request) -> None:
        if request.method == "MESSAGE" and self.session is not None and _isIMTarget(request.target):
            # The hot path, the only MESSAGE the checks below let through
            # (tests.test_native_server.TargetFormTests): it answers itself.
            self.do_MESSAGE(request)
            return
        method = _HANDLERS.get(request.method)
        if method is None:
            self._respond(request.seq, 405, f"Unknown method {request.method}")
            return
        if self.session is None and request.method not in ("OPTIONS", "AUTH", "PING", "BYE"):
            self._respond(request.seq, 401, "Log in first (AUTH)")
            return
        if targetForm(request.target) not in TARGETS[request.method]:
            self._respond(request.seq, 400, f"{request.method} takes {describeTargets(request.method)} as its target")
            return
        d = maybeDeferred(method, self, request)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        # Whether it was answered at once: set by the last callback. (No
        # nested function here: mypyc cannot compile one in a method of this
        # class, imgateway._compiled.)
        answered: list[bool] = []
        d.addBoth(_markAnswered, answered)
        if not answered:
            barrier = request.method in _BARRIERS
            self._inFlight += 1
            self._barrier = self._barrier or barrier
            d.addBoth(self._requestDone, barrier)

    def _requestDone(self, result: _T, barrier: bool) -> _T:
        self._inFlight -= 1
        if barrier:
            self._barrier = False
        self._process()
        return result

    def _answered(self, result: tuple[int, str, tuple[tuple[str, str], ...], bytes] | None, request: Request) -> None:
        code, reason, headers, body = result if result is not None else (200, "OK", (), b"")
        self._respond(request.seq, code, reason, headers, body)

    def _failed(self, f: Failure, request: Request) -> None:
        e = f.value
        if isinstance(e, _Closed):
            return
        if isinstance(e, _Reply):
            self._respond(request.seq, e.code, e.reason, e.headers)
            return
        code = codeForError(e) if e is not None else None
        if code is None:
            self.log.failure("Handling {method} from {peer}", f, method=request.method, peer=self.transport.getPeer())  # type: ignore[union-attr]
            self._respond(request.seq, 500, "Server Error")
        elif isinstance(e, DeliveryError):
            headers: tuple[tuple[str, str], ...] = ()
            alternate = getattr(e, "alternate", None)
            if alternate:
                headers = (("Alternate", _clean(alternate)),)
            self._respond(request.seq, code, _clean(e.text), headers)
        elif isinstance(e, PersistenceFailed):
            self.log.error("Storage failed for {request.method}: {error}", request=request, error=e)
            self._respond(request.seq, code, "Storage failed; nothing was changed")
        else:
            self._respond(request.seq, code, _clean(str(e)))

    def _responseReceived(self, response: Response) -> None:
        if not self._answers(response.seq):
            return
        if response.code >= 300:
            self.log.debug("Client answered {seq} with {code} {reason}", seq=response.seq, code=response.code, reason=response.reason)

    def _badResponse(self, item: FramingError) -> None:
        """
        A response with a non-fatal framing error: dropped (never answered)
        if it answers a request of ours, as any response must.
        """
        self._answers(item.seq)

    def _answers(self, seq: int | None) -> bool:
        """
        Whether a response with C{seq} answers one of our requests awaiting
        an answer (which now is answered). If not (before login, or no such
        request), it is a protocol error: C{400} with C{Seq: 0}, and the
        connection is closed (C{docs/protocol.md} section 3.3).
        """
        if self.session is not None and seq is not None and self._outstanding.answer(seq):
            return True
        if self.session is None:
            detail = "response before login"
        elif seq is None:
            detail = "response without a valid Seq"
        else:
            detail = f"response to no request awaiting one (Seq {seq})"
        self.log.info("Closing {peer}: 400 Bad Request ({detail})", peer=self.transport.getPeer(), detail=detail)  # type: ignore[union-attr]
        self._respond(0, 400, f"Bad Request: {detail}")
        self._close()
        return False

    def _write(self, frame: Request | Response) -> None:
        try:
            data = serialise(frame)
        except ValueError:
            self.log.failure("Cannot serialise {frame!r}", frame=frame)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        """
        Write a serialised frame, counted by the send queue guard; or, if
        this connection wrote already while the read being handled now
        (L{GATHER}) is handled, keep it, to be written with the others kept
        once that read is done (L{flushGathered}).
        """
        transport = self.transport
        if transport is None:
            return
        gathered = self._gathered
        if isinstance(gathered, list):
            gathered.append(data)
            return
        gather = GATHER
        if gather.active:
            if gathered == gather.epoch:
                self._gathered = [data]
                gather.held.append(self)
                return
            self._gathered = gather.epoch
        transport.write(data)
        # The guard's call only when it counts (while the transport is
        # paused: see SendQueueGuard.wrote).
        guard = self._sendGuard
        if guard is not None and guard.paused:
            guard.wrote(len(data))

    def flushGathered(self) -> None:
        """
        Write the frames kept while a read was handled (L{_send}), in one
        C{transport.write}. The send queue guard counts each frame as a
        write of its own if the transport is paused after it (so it counts
        at least the bytes it counted when each was written by itself).
        """
        gathered = self._gathered
        if not isinstance(gathered, list):
            return
        self._gathered = 0
        transport = self.transport
        if transport is None:
            return
        transport.write(gathered[0] if len(gathered) == 1 else b"".join(gathered))
        guard = self._sendGuard
        if guard is not None and guard.paused:
            for data in gathered:
                guard.wrote(len(data))

    def _respond(
        self,
        seq: int,
        code: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> None:
        self._write(Response(code, reason, Headers.of(("Seq", str(seq)), *headers), body))

    def _request(self, method: str, target: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> None:
        if self._closing:
            return
        seq = self._outstanding.next()
        self._write(Request(method, target, Headers.of(("Seq", str(seq)), *headers), body))

    # -- before login ------------------------------------------------------------

    def do_OPTIONS(self, request: Request) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
        mechanisms = mechanismsFor(self.secure, self._plainAllowed(), self._scram)
        c = self.config
        return (
            200,
            "OK",
            (
                ("Server", f"imgateway/{__version__}"),
                ("Domain", self.gateway.domain),
                ("Mechanisms", ", ".join(mechanisms)),
                ("Max-Body", str(c.maxBodyBytes)),
                ("Max-Header", str(c.maxHeaderBytes)),
                ("Max-Message-Chars", str(self.gateway.config.home.maxMessageChars)),
            ),
            b"",
        )

    def do_PING(self, request: Request) -> None:
        return None

    def do_BYE(self, request: Request) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close("bye")
        self._respond(request.seq, 200, "OK")
        self._close()
        raise _Closed()

    def do_AUTH(self, request: Request) -> Deferred[Any] | tuple[int, str, tuple[tuple[str, str], ...], bytes]:
        if self.session is not None:
            raise _Reply(400, "Already logged in")
        name = request.headers.get("Mechanism")
        if name is not None:
            name = name.strip().upper()
            offered = mechanismsFor(self.secure, self._plainAllowed(), self._scram)
            if name not in offered:
                if name in mechanismsFor(True, True, self._scram):
                    raise _Reply(426, f"{name} needs an encrypted connection")
                raise _Reply(401, f"Unknown mechanism {name}")
            # Interned: a logged-in connection keeps both, and most are
            # the same few strings (one copy each, not one per session).
            self.mechanismName = sys.intern(name)
            label = request.headers.get("Label", "") or ""
            self.sessionLabel = sys.intern(label[:64])
            self._quietAsked = presenceAnswersNone(request.headers.get("Presence-Answers"))
            self._mechanism = serverMechanism(
                name,
                self.gateway.authenticator,
                self.gateway.domain,
                self.secure,
                allowPlaintext=self._plainAllowed(),
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
            )
        elif self._mechanism is None:
            raise _Reply(400, "Mechanism header required to start")
        d: Deferred[Any] = self._mechanism.step(request.body)
        d.addCallback(self._authStepped, request)
        return d.addErrback(self._authFailed)

    def _authStepped(self, step: Any, request: Request) -> Any:
        if not step.complete:
            return (110, "Challenge", (), step.challenge or b"")
        self._mechanism = None
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        decided = decideFront(
            self.gateway.config, self.gateway.locator, step.address, peer, "native", self.gateway.proxy is not None
        )
        return decided.addCallback(self._authenticated, step, request)

    def _sendAway(self, decision: FrontDecision, step: Any, request: Request) -> None:
        """
        Answer an C{AUTH} that succeeded for a user this router does not
        serve here (L{imgateway.router.front}): C{302} to its home server,
        or C{503}; with the SASL additional data, as a C{200} would carry
        it, so that the client can check the server before it follows; then
        close the connection.
        """
        if decision.action is FrontAction.REDIRECT:
            assert decision.location is not None
            self._respond(request.seq, 302, REASONS[302], (("Location", str(decision.location)),), step.challenge or b"")
        else:
            self._respond(request.seq, 503, UNAVAILABLE_TEXT, (), step.challenge or b"")
        self._close()
        raise _Closed()

    def _authenticated(self, decision: FrontDecision, step: Any, request: Request) -> Any:
        if self._closing:
            raise _Closed()
        if decision.action not in (FrontAction.SERVE, FrontAction.PROXY):
            self._sendAway(decision, step, request)
        return openFrontSession(self.gateway, decision, step.address, self).addCallback(self._loggedIn, step)

    def _loggedIn(self, session: ISession, step: Any) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
        if self._closing:
            session.close("connection lost during login")
            raise _Closed()
        self.session = session
        self.quietPresence = self._quietAsked
        self.gateway.metrics.loggedIn("native", self.mechanismName, session)
        self._uncount()
        if self._slot is not None and self._slot.settled:
            # Closing would change nothing in the counts: the slot (with
            # its admission and the peer's address) is not kept for as
            # long as the session lasts.
            self._slot = None
        self.factory.loginTimers.stop(self)
        self.log.info("{address} logged in from {peer} as {session}", address=session.address, peer=self.transport.getPeer(), session=session.sessionId)  # type: ignore[union-attr]
        headers: tuple[tuple[str, str], ...] = (("Address", str(session.address)), ("Session", session.sessionId))
        if self.quietPresence:
            headers += (("Presence-Answers", "none"),)
        return (200, "OK", headers, step.challenge or b"")

    def _authFailed(self, f: Failure) -> Any:
        self._mechanism = None
        if f.check(TooManySessions):
            raise _Reply(codeForError(f.value) or 500, _clean(str(f.value)))  # type: ignore[arg-type]
        if f.check(ServiceUnavailable):
            # A proxied session's home server cannot be reached (or takes
            # no more sessions over the link): as when a home server stops.
            self.log.info("Login from {peer} failed: {error}", peer=self.transport.getPeer(), error=f.getErrorMessage())  # type: ignore[union-attr]
            raise _Reply(503, "Your home server is unavailable")
        if f.check(_Closed, _Reply):
            return f
        retry: tuple[tuple[str, str], ...] = ()
        if f.check(SASLFailure):
            condition = f.value.condition  # type: ignore[union-attr]
            if f.value.retryAfter is not None:  # type: ignore[union-attr]
                retry = (("Retry-After", str(f.value.retryAfter)),)  # type: ignore[union-attr]
        else:
            if not f.check(PersistenceFailed):
                self.log.failure("Authentication error", f)
            condition = "temporary-auth-failure"
        self._authFailures += 1
        self.gateway.metrics.loginFailed("native", self.mechanismName, condition)
        self.log.info(
            "Authentication failed from {peer}: {condition} ({n} of {max})",
            peer=self.transport.getPeer(),  # type: ignore[union-attr]
            condition=condition,
            n=self._authFailures,
            max=self.config.maxAuthAttempts,
        )
        if condition == "encryption-required":
            raise _Reply(426, "Encryption required")
        if self._authFailures >= self.config.maxAuthAttempts:
            self.clock.callLater(0, self._bye, "auth-failures")
        raise _Reply(401, f"Authentication failed ({condition})", (("Error", condition),) + retry)

    # -- after login ---------------------------------------------------------------

    @property
    def _session(self) -> ISession:
        assert self.session is not None
        return self.session

    def do_PUBLISH(self, request: Request) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
        h = request.headers
        stateText = h.get("Presence")
        if stateText is None:
            raise _Reply(400, "Presence header required")
        try:
            state = presenceFromToken(stateText)
            presence = Presence(state, h.get("Note", "") or "")
        except ValueError as e:
            raise _Reply(400, f"Bad presence: {e}") from None
        lease: float | None = None
        expires = h.get("Expires")
        if expires is not None:
            try:
                lease = float(expires)
            except ValueError:
                raise _Reply(400, "Expires must be a number of seconds") from None
            if not lease >= 0:
                raise _Reply(400, "Expires must be a number of seconds")
        granted = self._session.publish(presence, lease)
        return (200, "OK", (("Expires", str(int(granted))),), b"")

    def do_SUBSCRIBE(self, request: Request) -> Deferred[Any]:
        target = _target(request)
        name = _clean(request.headers.get("Name", "") or "")[:MAX_DISPLAY_NAME_CHARS]
        return self._session.subscribe(target, name).addCallback(_subscribeAnswer)

    def do_UNSUBSCRIBE(self, request: Request) -> Deferred[None]:
        return self._session.unsubscribe(_target(request))

    def do_AUTHORISE(self, request: Request) -> Deferred[None]:
        try:
            allow = decisionFromToken(request.headers.get("Decision") or "")
        except ValueError:
            raise _Reply(400, "Decision must be allow or deny") from None
        return self._session.authorise(_target(request), allow)

    def do_CONTACTS(self, request: Request) -> Deferred[Any]:
        session = self._session
        return session.contacts().addCallback(_withRequests, session)

    def do_ACCESS(self, request: Request) -> Deferred[Any]:
        session = self._session
        if request.target == "*":
            return session.accessLists().addCallback(_accessAnswer)
        try:
            accessList = accessListFromToken(request.headers.get("List") or "")
        except ValueError:
            raise _Reply(400, "List must be allow, block or none") from None
        entry = request.target
        if targetForm(entry) is TargetForm.IM:
            entry = entry.partition(":")[2]
        return session.setAccess(entry, accessList)

    def do_RULE(self, request: Request) -> Deferred[Any]:
        """
        C{RULE *} (docs/protocol.md 7.7): with C{Rule-Action} (C{add},
        C{remove}, C{replace}) the ordered rules; with C{Presence} the
        first protocol's refusal for one state; with neither, the list.
        """
        session = self._session
        action = request.headers.get("Rule-Action")
        if action is not None:
            return self._ruleAction(session, request, action.strip().lower())
        stateText = request.headers.get("Presence")
        if stateText is None:
            return session.rules().addCallback(_rulesAnswer)
        try:
            state = presenceFromToken(stateText)
        except ValueError:
            raise _Reply(400, f"Unknown presence state {stateText!r}") from None
        return session.setRule(state, request.headers.get("Alternate"))

    def _ruleAction(self, session: ISession, request: Request, action: str) -> Deferred[None]:
        position = _position(request)
        if action == "remove":
            if position is None:
                raise _Reply(400, "Rule-Action: remove needs Position")
            return session.removeRule(position)
        if action not in ("add", "replace"):
            raise _Reply(400, "Rule-Action must be add, remove or replace")
        try:
            data = json.loads(request.body.decode("utf-8"))
            if action == "add":
                return session.addRule(ruleFromJSON(data), position)
            if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
                raise ValueError('the body must be {"rules": [...]}')
            return session.setRules([ruleFromJSON(r) for r in data["rules"]])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Reply(400, "The body must be a JSON rule") from None
        except ValueError as e:
            raise _Reply(400, _clean(str(e))) from None

    def do_MESSAGE(self, request: Request) -> None:
        """
        Send a message; unlike the other handlers, answer the request
        itself (L{_requestReceived} calls it directly), without the
        L{Deferred} layers of the others: a session that knows the outcome
        at once (a home server's, C{sendMessageThen} or
        C{sendMessageAtOnce}: a recipient in this process) is answered now,
        with no L{Deferred} at all; for a session that calls back (a
        router's proxied session, a home server's for a message it sends
        over a link: C{sendMessageThen}), that call, L{_messageAnswered};
        any other outcome with that one callback on its L{Deferred}.
        The answers are those of
        L{_answered} and L{_failed}: C{200} with the C{Message-ID} (one is
        made when the request has none), or the refusal's status.

        C{sendMessageThen} and C{sendMessageAtOnce} are the session's
        optional fast paths, declared by L{IAnsweringSession
        <imgateway.interfaces.IAnsweringSession>} and L{IAtOnceSession
        <imgateway.interfaces.IAtOnceSession>}: looked up by name, with no
        test of the interfaces per message.
        """
        try:
            arguments = _messageArguments(request)
            session = self.session
            assert session is not None  # what _session says: never here without one
            then = getattr(session, "sendMessageThen", None)
            if then is not None:
                # A session that calls back with an outcome that comes
                # later (IAnsweringSession: a router's proxied session; a
                # home server's, for a message it sends over a link): no
                # Deferred unless it returns one.
                # (Its arguments one by one: a call with *arguments after
                # others builds a tuple of them all first.)
                outcome = then(self._messageAnswered, request, arguments[0], arguments[1], arguments[2], arguments[3])
                if outcome is None:
                    self._inFlight += 1
                    return
            else:
                # (IAtOnceSession: a home server's.)
                atOnce = getattr(session, "sendMessageAtOnce", None)
                outcome = session.sendMessage(*arguments) if atOnce is None else atOnce(*arguments)
        except BaseException:
            self._failed(Failure(), request)
            return
        # A status first: isinstance() of anything but a Deferred against
        # Deferred (an abc.ABC, through Awaitable) runs ABCMeta's check.
        if type(outcome) is not DeliveryStatus and isinstance(outcome, Deferred):
            self._inFlight += 1
            outcome.addBoth(self._messageAnswered, request, arguments[3])
        else:
            self._respondSent(request.seq, arguments[3])

    def _messageAnswered(self, result: object, request: Request, messageId: str) -> None:
        self._inFlight -= 1
        try:
            # A status first (nearly every outcome): no isinstance() call.
            if type(result) is not DeliveryStatus and isinstance(result, Failure):
                self._failed(result, request)
            else:
                self._respondSent(request.seq, messageId)
        finally:
            # Only a request held for the answers before it (AUTH, BYE)
            # waits for this one: whatever else stopped _process has its
            # own way back (a read, a timer, _requestDone).
            if self._held is not None:
                self._process()

    def _respondSent(self, seq: int, messageId: str) -> None:
        """
        Answer a C{MESSAGE} with C{200} and its C{Message-ID}: the bytes
        L{_respond} writes, made directly when every value is plain
        (L{sentResponse}).
        """
        # sentResponse, written out (one call fewer per message).
        if _NOT_PLAIN.search(messageId) is None:
            try:
                data = f"IMGW/1.0 200 OK\r\nSeq: {seq}\r\nMessage-ID: {messageId}\r\n\r\n".encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                self._send(data)
                return
        self._respond(seq, 200, "OK", (("Message-ID", messageId),))

    # -- ISessionClient ---------------------------------------------------------------

    def messageReceived(self, message: Message) -> Deferred[None]:
        body = message.body.encode("utf-8")
        if self._closing:
            return succeed(None)
        seq = self._outstanding.next()
        data = messageRequest(seq, message, body)
        if data is None:
            self._write(Request("MESSAGE", message.recipient.imURI(), Headers((("Seq", str(seq)),) + _messageHeaders(message)), body))
        else:
            self._send(data)
        return succeed(None)

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        if self._closing:
            return succeed(None)
        # Serialised once per fan-out, and cut once where each recipient's
        # Seq goes: the home server hands every recipient of a fan-out the
        # same sender and presence objects.
        last = _lastNotify
        if last.sender is not sender or last.presence is not presence:
            try:
                encoded = presenceNotify(sender, presence)
            except ValueError:
                # Cannot be serialised: logged by the general way.
                if self.quietPresence:
                    self._write(Request("NOTIFY", sender.presURI(), Headers.of(("Seq", "0"), *_presenceHeaders(presence))))
                else:
                    self._request("NOTIFY", sender.presURI(), _presenceHeaders(presence))
                return succeed(None)
            last.take(sender, presence, encoded)
        if self.quietPresence:
            # Presence-Answers: none: the same bytes for every such
            # recipient, Seq 0, nothing counted (no answer comes).
            data = last.quiet
        else:
            # The request counted as next() counts it, without its call in
            # the usual case (nothing to forget from the window, no wrap).
            out = self._outstanding
            seq = out.sent + 1
            if seq - out.floor > out.window or seq > MAX_SEQ:
                seq = out.next()
            else:
                out.sent = seq
            data = b"%s%d%s" % (last.head, seq, last.tail)
        # What _send does, without its call, nor the guard's unless it
        # counts (only while the transport is paused).
        transport = self.transport
        if transport is not None:
            gathered = self._gathered
            if isinstance(gathered, list):
                gathered.append(data)
                return succeed(None)
            gather = GATHER
            if gather.active:
                if gathered == gather.epoch:
                    self._gathered = [data]
                    gather.held.append(self)
                    return succeed(None)
                self._gathered = gather.epoch
            transport.write(data)
            guard = self._sendGuard
            if guard is not None and guard.paused:
                guard.wrote(len(data))
        return succeed(None)

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        self._request(
            "NOTIFY",
            event.sender.presURI(),
            (("Event", "subscription"), ("Subscription", SUBSCRIPTION_KINDS[event.kind])),
        )
        return succeed(None)

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        self._request(
            "NOTIFY",
            contact.address.presURI(),
            (("Event", "contact"), ("Content-Type", "application/json")),
            json.dumps(_contactJSON(contact)).encode("utf-8"),
        )
        return succeed(None)

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        self._request(
            "NOTIFY",
            contact.presURI(),
            (("Event", "contact"), ("Content-Type", "application/json")),
            json.dumps({"address": str(contact), "removed": True}).encode("utf-8"),
        )
        return succeed(None)

    def sessionClosed(self, reason: str) -> None:
        self.session = None
        self._bye(reason)


#: How a bare 200 starts (framing.FrameParser.takeBareOKs): a read that does
#: not start so (a client's request, blank lines) goes to the parser at once.
_BARE_OK_START = b"IMGW/1.0 200 OK\r\nSeq: "


#: Requests handled alone: each waits until every earlier request has been
#: answered, and no later request is handled until it has been (an C{AUTH}
#: step changes what the next requests may do; a C{BYE} closes the
#: connection only after the answers to the requests before it).
_BARRIERS = frozenset({"AUTH", "BYE"})


#: The handler of each method, shared by all connections (a dictionary of
#: bound methods per connection cost an idle session about 1.4 KiB).
_HANDLERS: dict[str, Callable[[NativeServerProtocol, Request], Any]] = {
    "OPTIONS": NativeServerProtocol.do_OPTIONS,
    "AUTH": NativeServerProtocol.do_AUTH,
    "PING": NativeServerProtocol.do_PING,
    "BYE": NativeServerProtocol.do_BYE,
    "PUBLISH": NativeServerProtocol.do_PUBLISH,
    "SUBSCRIBE": NativeServerProtocol.do_SUBSCRIBE,
    "UNSUBSCRIBE": NativeServerProtocol.do_UNSUBSCRIBE,
    "AUTHORISE": NativeServerProtocol.do_AUTHORISE,
    "CONTACTS": NativeServerProtocol.do_CONTACTS,
    "ACCESS": NativeServerProtocol.do_ACCESS,
    "RULE": NativeServerProtocol.do_RULE,
    "MESSAGE": NativeServerProtocol.do_MESSAGE,
}


class _Closed(Exception):
    """
    The handler already answered and closed the connection.
    """


def _isIMTarget(target: str) -> bool:
    """
    Whether a request target has the C{im:} form: what C{targetForm(target)
    is TargetForm.IM} says (the scheme compared case-insensitively), without
    the look-ups.
    """
    return target[:3].lower() == "im:"


def _messageArguments(request: Request) -> tuple[Address, str, str, str]:
    """
    The arguments of L{ISession.sendMessage} a C{MESSAGE} request carries
    (a C{Message-ID} made when it has none).

    @raise _Reply: C{400} for a bad address or a body that is not UTF-8.
    """
    target = _target(request)
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reply(400, "Message body must be UTF-8") from None
    contentType, messageId = _messageFields(request.headers)
    if contentType is not None:
        contentType = contentType.split(";")[0].strip() or "text/plain"
    return target, body, contentType or "text/plain", messageId or newMessageId()


def _messageFields(headers: Headers) -> tuple[str | None, str | None]:
    """
    The C{Content-Type} and C{Message-ID} of a C{MESSAGE} request, read in
    one pass: what L{Headers.get} gives for each (the first of the name, in
    any case; C{None} when absent), without the index it builds for
    headers looked up many times.
    """
    contentType: str | None = None
    messageId: str | None = None
    for name, value in headers.items:
        size = len(name)
        if size == 12:
            if contentType is None and name.lower() == "content-type":
                contentType = value
        elif size == 10 and messageId is None and name.lower() == "message-id":
            messageId = value
    return contentType, messageId


def sentResponse(seq: int, messageId: str) -> bytes | None:
    """
    The bytes of the C{200} answering a sent C{MESSAGE}: exactly what
    L{serialise} makes of C{Response(200, "OK", Headers.of(("Seq", seq),
    ("Message-ID", messageId)))}, written directly.

    @return: The bytes, or C{None} when C{messageId} is not plain (a
        control character, or text UTF-8 cannot encode): the general way
        decides.
    """
    if _NOT_PLAIN.search(messageId) is not None:
        return None
    try:
        return f"IMGW/1.0 200 OK\r\nSeq: {seq}\r\nMessage-ID: {messageId}\r\n\r\n".encode("utf-8")
    except UnicodeEncodeError:
        return None


def _messageHeaders(message: Message) -> tuple[tuple[str, str], ...]:
    """
    The headers, but C{Seq}, of the C{MESSAGE} that delivers C{message} to
    a client (C{docs/protocol.md} section 7.8).
    """
    headers: tuple[tuple[str, str], ...] = (
        ("From", message.sender.imURI()),
        ("Message-ID", message.messageId),
        ("Timestamp", format(message.timestamp, ".3f")),
        ("Content-Type", f"{_clean(message.contentType)}; charset=utf-8"),
    )
    if message.mark is not None:
        headers += (("Auto", MESSAGE_MARKS[message.mark]),)
    return headers


def messageRequest(seq: int, message: Message, body: bytes) -> bytes | None:
    """
    The bytes of the C{MESSAGE} that delivers C{message} to a client:
    exactly what L{serialise} makes of C{Request("MESSAGE",
    message.recipient.imURI(), Headers((("Seq", str(seq)),) +
    _messageHeaders(message)), body)}, written directly.

    @param body: C{message.body} encoded as UTF-8.
    @return: The bytes, or C{None} when a value is not plain (a control
        character in the sender or the message id, white space in the
        recipient, text UTF-8 cannot encode): the general way decides.
    """
    target = message.recipient.imURI()
    sender = message.sender.imURI()
    messageId = message.messageId
    if _NOT_TARGET.search(target) is not None or _NOT_PLAIN.search(sender + messageId) is not None:
        return None
    mark = message.mark
    auto = "" if mark is None else f"Auto: {MESSAGE_MARKS[mark]}\r\n"
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    # The timestamp formatted apart: compiled, an f-string with a format
    # spec calls str.format for each of its parts (mypyc's join of the
    # parts is for plain ones only).
    timestamp = format(message.timestamp, ".3f")
    try:
        head = (
            f"MESSAGE {target} IMGW/1.0\r\nSeq: {seq}\r\nFrom: {sender}\r\nMessage-ID: {messageId}\r\n"
            f"Timestamp: {timestamp}\r\nContent-Type: {_clean(message.contentType)}; charset=utf-8\r\n"
            f"{auto}{length}\r\n"
        ).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return head + body if body else head


def _presenceHeaders(presence: Presence) -> tuple[tuple[str, str], ...]:
    """
    The headers, but C{Seq}, of the presence C{NOTIFY} that tells a client
    of C{presence} (C{docs/protocol.md} section 7.9).
    """
    headers: tuple[tuple[str, str], ...] = (("Event", "presence"), ("Presence", PRESENCE[presence.state]))
    if presence.note:
        headers += (("Note", _clean(presence.note)),)
    return headers


#: How many serialised presences L{presenceNotify} remembers: one fan-out
#: (a user's presence to all its contacts' sessions) asks for the same one
#: once per recipient.
PRESENCE_NOTIFY_CACHE_SIZE = 256


@functools.lru_cache(maxsize=PRESENCE_NOTIFY_CACHE_SIZE)
def presenceNotify(sender: Address, presence: Presence) -> bytes:
    """
    The presence C{NOTIFY} that tells a client of C{sender}'s C{presence},
    serialised once for all its recipients, without its C{Seq}: each
    recipient's connection puts its own in (L{withSeq}). Results are cached
    (L{PRESENCE_NOTIFY_CACHE_SIZE} entries; both arguments are immutable
    values).

    @raise ValueError: If it cannot be serialised (L{serialise}).
    """
    return serialiseUnsequenced(Request("NOTIFY", sender.presURI(), Headers(_presenceHeaders(presence))))


class _LastNotify:
    """
    The presence C{NOTIFY} last written (L{presenceNotify}), cut where its
    C{Seq} goes, for the next recipient of the same fan-out: two identity
    checks find it, without hashing the sender and the presence for the
    cache, and each recipient's frame is one formatting, the bytes
    L{withSeq} makes.

    @ivar head: The frame's start line and C{"Seq: "}.
    @ivar tail: The CRLF after the C{Seq} value, and the rest of the frame.
    @ivar quiet: The whole frame with C{Seq: 0}, for the recipients that
        do not answer presence C{NOTIFY}s (C{Presence-Answers: none}).
    """

    __slots__ = ("sender", "presence", "head", "tail", "quiet")

    def __init__(self) -> None:
        self.sender: Address | None = None
        self.presence: Presence | None = None
        self.head = self.tail = self.quiet = b""

    def take(self, sender: Address, presence: Presence, encoded: bytes) -> None:
        """
        Remember C{encoded}, the L{presenceNotify} of C{sender}'s
        C{presence}.
        """
        end = encoded.index(b"\r\n") + 2
        self.sender, self.presence = sender, presence
        self.head, self.tail = encoded[:end] + b"Seq: ", b"\r\n" + encoded[end:]
        self.quiet = self.head + b"0" + self.tail


_lastNotify = _LastNotify()


def ruleListEntry(rule: PresenceRule) -> dict[str, Any]:
    """
    One rule of a C{RULE *} list: its portable form
    (L{imgateway.core.records.ruleToJSON}), with C{presence} (one state's
    token) too for a rule of the first protocol, which older clients show.
    """
    entry = ruleToJSON(rule)
    if rule.legacyState is not None:
        entry["presence"] = PRESENCE[rule.legacyState]
    return entry


def _markAnswered(result: _T, answered: list[bool]) -> _T:
    """
    The last callback of a request's handling: mark it answered.
    """
    answered.append(True)
    return result


def _subscribeAnswer(state: AuthorisationState) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    """
    The answer to a C{SUBSCRIBE}, from the state it left.
    """
    code = SUBSCRIBE_ANSWERS[state]
    return (code, REASONS[code], (), b"")


def _withRequests(contacts: list[ContactView], session: ISession) -> Deferred[tuple[int, str, tuple[tuple[str, str], ...], bytes]]:
    """
    The answer to a C{CONTACTS}: C{contacts} and the session's pending
    requests.
    """
    return session.pendingRequests().addCallback(_contactsAnswer, contacts)


def _contactsAnswer(requests: list[Address], contacts: list[ContactView]) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    return _json({"contacts": [_contactJSON(c) for c in contacts], "requests": [str(a) for a in requests]})


def _accessAnswer(entries: dict[str, AccessList]) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    """
    The answer to C{ACCESS *}: the entries of each list.
    """
    return _json({ACCESS_LISTS[kind]: [e for e, l in entries.items() if l is kind] for kind in (AccessList.ALLOW, AccessList.BLOCK)})


def _rulesAnswer(rules: list[PresenceRule]) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    """
    The answer to C{RULE *} without an action: the rules, in order.
    """
    return _json({"rules": [ruleListEntry(r) for r in rules]})


def _position(request: Request) -> int | None:
    text = request.headers.get("Position")
    if text is None:
        return None
    if not text.strip().isdigit() or len(text.strip()) > 6:
        raise _Reply(400, "Position must be a rule's number (1 for the first)")
    return int(text)


def _json(data: object) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    return (200, "OK", (("Content-Type", "application/json"),), json.dumps(data).encode("utf-8"))


class NativeServerFactory(Factory):
    """
    Builds L{NativeServerProtocol}s for one listener (or several sharing a
    config).

    @ivar limits: Counts the connections for the limits before login
        (C{max_unauthenticated}).
    @ivar connections: Every open connection.
    @ivar loginTimers: The connections' C{login_timeout} timers: one
        delayed call for all of them (per distinct timeout), not one each.
    @ivar idleTimers: The connections' C{idle_timeout} timers, as
        C{loginTimers}.
    """

    protocol = NativeServerProtocol  # type: ignore[assignment]

    def __init__(self, gateway: IGateway, config: NativeConfig, clock: IReactorTime | None = None) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock if clock is not None else gateway.clock
        self.limits = FaceConnections("native")
        self.connections: set[NativeServerProtocol] = set()
        self.loginTimers: Deadlines[NativeServerProtocol] = Deadlines(self.clock, NativeServerProtocol._loginTimedOut)
        self.idleTimers: Deadlines[NativeServerProtocol] = Deadlines(self.clock, NativeServerProtocol._idleTimedOut)

    @property
    def unauthenticated(self) -> int:
        """
        Connections that have not logged in yet.
        """
        return self.limits.unauthenticated

    def sayGoodbye(self, reason: str) -> None:
        """
        Send every connection BYE with C{reason} and close it.
        """
        for protocol in list(self.connections):
            protocol.bye(reason)

    def buildProtocol(self, addr: Any) -> NativeServerProtocol:  # type: ignore[override]
        p = NativeServerProtocol(self.gateway, self.config, self.clock)
        p.factory = self
        return p

