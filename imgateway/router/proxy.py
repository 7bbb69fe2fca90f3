# -*- test-case-name: tests.test_proxy,tests.e2e.test_router_proxy -*-
"""
Proxied sessions (C{docs/protocol.md} section 9.7): a router's client face
serves a user homed on another server of the domain through a session that
lives on that home server, reached over the server link.

  - L{ProxyHomeServer} (on a router): L{openSession} as an
    L{IHomeServer} has it; the session it gives (L{RemoteSession}) sends
    each L{ISession} call as a C{SESSION} request over the link to the
    user's home server (L{LinkClient.request}: its queue and time limit),
    and hands the home server's C{CLIENT} requests to the face's
    L{ISessionClient}.
  - L{SessionHost} (on a home server): opens a real session when a router
    asks, with an L{ISessionClient} (L{RemoteSessionClient}) whose callbacks
    are C{CLIENT} requests back on the same connection.

A proxied session lives as long as the link connection it was opened on:
when it is lost, both sides close their end (the client is told as when its
home server stops). Arguments and results travel as JSON bodies, their
tokens from the native face's tables (L{imgateway.adapters.native.mapping});
failures as the link codec's statuses (L{imgateway.router.link_codec}).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.adapters.native.framing import VERSION, Headers, Request, Response
from imgateway.adapters.native.mapping import (
    ACCESS_LISTS,
    MESSAGE_MARKS,
    PRESENCE,
    REASONS,
    SUBSCRIPTION_KINDS,
    SUBSCRIPTIONS,
    accessListFromToken,
    codeForError,
    markFromToken,
    presenceFromToken,
    ruleFromJSON,
    ruleToJSON,
    subscriptionFromToken,
    subscriptionKindFromToken,
)
from imgateway.config import GatewayConfig
from imgateway.core.address import Address
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    MovedTo,
    ServerError,
    ServiceUnavailable,
    TooManySessions,
)
from imgateway.core.events import Message, SubscriptionEvent
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.core.records import AccessList, AuthorisationState, ContactView, PresenceRule
from imgateway.core.sending import SentOutcome, sendRouted, sessionMessage
from imgateway.interfaces import IAnsweringSession, IHomeLocator, IHomeServer, ILinkRoutes, IMetrics, IRouter, ISession, ISessionClient
from imgateway.router.link import ANSWERED_LATER, LinkClient, LinkConnection, serialiseUnsequenced
from imgateway.router.link_codec import DELIVERED, MAX_DETAIL_CHARS, decodeResponse, encodeResponse
from imgateway.router.locator import followMoves, homeOfAuthenticated
from imgateway.status.nometrics import NO_METRICS

__all__ = [
    "CLIENT_METHOD",
    "SESSION_METHOD",
    "ProxyHomeServer",
    "RemoteSession",
    "RemoteSessionClient",
    "SessionHost",
    "encodeSessionMessage",
    "installProxy",
    "messageArguments",
]

log = Logger()

_T = TypeVar("_T")

#: The method of a router's requests for a proxied session (target: the
#: operation), answered by the home server.
SESSION_METHOD = "SESSION"

#: The method of a home server's callbacks to a proxied session's client
#: (target: the callback), answered by the router.
CLIENT_METHOD = "CLIENT"

#: Why a proxied session ends when its link connection is lost.
LINK_LOST = "the link to the home server was lost"


# -- the JSON forms of the core's values ------------------------------------------


def _presenceJSON(presence: Presence) -> dict[str, str]:
    return {"presence": PRESENCE[presence.state], "note": presence.note}


def _presence(data: dict[str, Any]) -> Presence:
    return Presence(presenceFromToken(str(data["presence"])), str(data.get("note", "")))


def _contactJSON(view: ContactView) -> dict[str, Any]:
    return {
        "address": str(view.address),
        "name": view.displayName,
        "subscription": SUBSCRIPTIONS[view.subscription],
        "pending": view.pending,
        **_presenceJSON(view.presence),
    }


def _contact(data: dict[str, Any]) -> ContactView:
    return ContactView(
        Address.fromString(str(data["address"])),
        str(data["name"]),
        subscriptionFromToken(str(data["subscription"])),
        bool(data["pending"]),
        _presence(data),
    )


def _messageJSON(message: Message) -> dict[str, Any]:
    return {
        "from": str(message.sender),
        "to": str(message.recipient),
        "body": message.body,
        "contentType": message.contentType,
        "messageId": message.messageId,
        "timestamp": message.timestamp,
        "hops": message.hops,
        "routingId": message.routingId,
        **({"mark": MESSAGE_MARKS[message.mark]} if message.mark is not None else {}),
    }


def _message(data: dict[str, Any]) -> Message:
    return Message(
        Address.fromString(str(data["from"])),
        Address.fromString(str(data["to"])),
        str(data["body"]),
        contentType=str(data["contentType"]),
        messageId=str(data["messageId"]),
        timestamp=float(data["timestamp"]),
        hops=int(data["hops"]),
        routingId=str(data["routingId"]),
        mark=markFromToken(str(data["mark"])) if data.get("mark") else None,
    )


def _body(data: object) -> bytes:
    return json.dumps(data).encode("utf-8")


def _read(request: Request | Response) -> Any:
    if not request.body:
        return {}
    return json.loads(request.body.decode("utf-8"))


def _ok(data: object = None) -> Response:
    if data is None:
        # One object, whose bytes the link connection keeps.
        return DELIVERED
    return Response(200, REASONS[200], Headers((("Content-Type", "application/json"),)), _body(data))


def _error(code: int, detail: str) -> Response:
    return Response(code, REASONS.get(code, "Error"), Headers((("Detail", detail[:MAX_DETAIL_CHARS]),)))


def encodeFailure(error: BaseException) -> Response:
    """
    The response that reports a session operation's failure: a
    L{DeliveryError} as the link codec reports it; another error the
    native face has a code for (L{codeForError}) with that code; anything
    else C{500}.
    """
    if isinstance(error, DeliveryError):
        return encodeResponse(error)
    code = codeForError(error)
    if code is None:
        return _error(500, "internal error")
    return _error(code, str(error))


#: The status codes of the errors other than L{DeliveryError}s a session
#: operation fails with, to the error (the inverse of the native face's
#: table for these: L{imgateway.adapters.native.mapping.ERROR_CODES}).
_ERRORS: dict[int, Callable[[str], Exception]] = {
    codeForError(InvalidAddress()) or 400: InvalidAddress,
    codeForError(TooManySessions()) or 453: TooManySessions,
}


def decodeResult(response: Response) -> Any:
    """
    @return: The JSON result of a successful session request (C{None}
        without a body).
    @raise Exception: The failure it reports: L{InvalidAddress} (400),
        L{TooManySessions} (453), else the L{DeliveryError} of its code.
    """
    if 200 <= response.code < 300:
        return _read(response) if response.body else None
    detail = response.headers.get("Detail") or response.reason
    maker = _ERRORS.get(response.code)
    if maker is not None:
        raise maker(detail)
    decodeResponse(response)
    raise ServiceUnavailable(detail)


#: The control characters a header value of the compact C{SESSION message}
#: may not hold (the framing refuses them).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: The longest value the compact C{SESSION message} carries in a header.
MAX_HEADER_VALUE_CHARS = 1024


def _headerSafe(value: str) -> bool:
    """
    Whether C{value} can be a header value of the compact C{SESSION
    message} as it is: 1 to L{MAX_HEADER_VALUE_CHARS} characters, no
    control character, no white space at either end (which a parser
    strips; C{str.isspace} is what C{\\s} matches in a pattern).
    """
    return (
        0 < len(value) <= MAX_HEADER_VALUE_CHARS
        and not value[0].isspace()
        and not value[-1].isspace()
        and (value.isprintable() or _CONTROL_CHARACTERS.search(value) is None)
    )


def _delivered(result: object) -> DeliveryStatus:
    return DeliveryStatus.DELIVERED


def _messageOutcome(response: Response) -> DeliveryStatus:
    """
    The outcome of a proxied session's C{SESSION message}, from its answer:
    for L{RemoteSession.sendMessage}, called by the link as the answer comes
    (the C{decode} given to L{LinkClient.requestEncoded}); for
    L{RemoteSession.sendMessageThen}, by L{_MessageAnswer.callback}, for an
    answer other than the bare C{200}.

    @raise Exception: The failure an error response reports
        (L{decodeResult}).
    """
    if response is not DELIVERED:
        decodeResult(response)
    return DeliveryStatus.DELIVERED


class _MessageAnswer(Generic[_T]):
    """
    A proxied session's message in flight, for a face that takes its
    outcome through a call (L{RemoteSession.sendMessageThen}): what the
    link tells in place of a L{Deferred} (L{LinkClient.requestEncoded}'s
    C{waiter}, given hs1's answer as it is: it reads it itself, as
    L{_messageOutcome} does), and what the session fails when it ends
    first. Told once; what comes after (a late answer) is dropped, as a
    fired L{Deferred}'s link drops it.
    """

    __slots__ = ("called", "_answer", "_token", "_messageId", "_session")

    def __init__(
        self,
        answer: Callable[[DeliveryStatus | Failure, _T, str | None], object],
        token: _T,
        messageId: str | None,
        session: RemoteSession,
    ) -> None:
        self.called = False
        self._answer = answer
        self._token = token
        self._messageId = messageId
        #: The session told when it is answered (L{RemoteSession._homeSettled}).
        self._session = session

    def callback(self, response: Response) -> None:
        """
        The home server's answer (L{OutcomeWaiter
        <imgateway.router.link.OutcomeWaiter>}, without a C{decode}): its
        outcome told, as L{_messageOutcome} reads it (C{DELIVERED}, or the
        failure an error response reports), unless told before.
        """
        if self.called:
            return
        self.called = True
        outcome: DeliveryStatus | Failure
        if response is DELIVERED:
            # A bare 200 (nearly every answer): no call to read it.
            outcome = DeliveryStatus.DELIVERED
        else:
            try:
                outcome = _messageOutcome(response)
            except Exception:
                outcome = Failure()
        try:
            self._answer(outcome, self._token, self._messageId)
        except Exception:
            # Logged as a Deferred's callback's failure would be, not
            # raised into the link's reading.
            log.failure("Answering a proxied session's message")
        self._session._homeSettled()

    def errback(self, error: BaseException | Failure) -> None:
        """
        The message failed (refused, timed out, link or session gone):
        told as a L{Failure}, unless told before.
        """
        if not self.called:
            self.called = True
            try:
                self._answer(error if isinstance(error, Failure) else Failure(error), self._token, self._messageId)
            except Exception:
                log.failure("Answering a proxied session's message")
            self._session._homeSettled()


#: The fewest of a proxied session's messages it keeps (L{RemoteSession._keep})
#: before it drops those answered.
_IN_FLIGHT_SWEEP = 64


#: What L{encodeSessionMessage} leaves to the general way: what a header
#: value could not carry as it is (stricter than the framing's check).
_VALUES_NOT_PLAIN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")



def _sessionMessageRequest(sessionId: str, recipient: str, text: bytes, contentType: str, messageId: str | None) -> Request:
    headers = [("Session", sessionId), ("To", recipient)]
    if contentType != "text/plain":
        headers.append(("Content-Type", contentType))
    if messageId is not None:
        headers.append(("Message-ID", messageId))
    return Request(SESSION_METHOD, "message", Headers(tuple(headers)), text)


def encodeSessionMessage(sessionId: str, recipient: str, text: bytes, contentType: str, messageId: str | None) -> bytes:
    """
    The bytes of a compact C{SESSION message} request (C{docs/protocol.md}
    section 9.7) without C{Seq}: exactly what
    L{serialiseUnsequenced} makes of the request with the headers
    C{Session}, C{To}, C{Content-Type} (left out when C{text/plain}) and
    C{Message-ID} (left out when C{None}), in that order, and C{text} as
    its body; written directly (L{sessionMessageHead}, then
    L{encodeSessionMessageAfter}) when every value is plain, else the
    general way.

    @raise ValueError: As L{serialiseUnsequenced} raises.
    """
    head = sessionMessageHead(sessionId, recipient)
    if head is not None:
        encoded = encodeSessionMessageAfter(head, text, contentType, messageId)
        if encoded is not None:
            return encoded
    return serialiseUnsequenced(_sessionMessageRequest(sessionId, recipient, text, contentType, messageId))


#: The start line of a C{SESSION message}, as the framing writes it.
_SESSION_MESSAGE_START_BYTES = f"{SESSION_METHOD} message {VERSION}\r\n".encode("ascii")


def _plainValue(value: str) -> bytes | None:
    """
    C{value} as UTF-8, if L{encodeSessionMessage} writes it as it is: it
    holds nothing L{_VALUES_NOT_PLAIN} finds, and UTF-8 can encode it.
    """
    if not value.isprintable() and _VALUES_NOT_PLAIN.search(value) is not None:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def sessionMessageHead(sessionId: str, recipient: str) -> bytes | None:
    """
    The start of every compact C{SESSION message} of session C{sessionId}
    to C{recipient}: its start line and its C{Session} and C{To} headers,
    as L{encodeSessionMessage} writes them.

    @return: The bytes, or C{None} when either value is not written as it
        is (L{encodeSessionMessage} decides).
    """
    session = _plainValue(sessionId)
    to = _plainValue(recipient)
    if session is None or to is None:
        return None
    return b"%sSession: %s\r\nTo: %s\r\n" % (_SESSION_MESSAGE_START_BYTES, session, to)


def encodeSessionMessageAfter(head: bytes, text: bytes, contentType: str, messageId: str | None) -> bytes | None:
    """
    What L{encodeSessionMessage} writes for a message whose start is
    C{head} (L{sessionMessageHead}'s), with C{text}, C{contentType} and
    C{messageId}: the same bytes, or C{None} when a value is not written as
    it is (L{encodeSessionMessage} decides).
    """
    if contentType != "text/plain":
        plain = _plainValue(contentType)
        if plain is None:
            return None
        head = b"%sContent-Type: %s\r\n" % (head, plain)
    if messageId is not None:
        plain = _plainValue(messageId)
        if plain is None:
            return None
        if text:
            return b"%sMessage-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (head, plain, len(text), text)
        return b"%sMessage-ID: %s\r\n\r\n" % (head, plain)
    if text:
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(text), text)
    return head + b"\r\n"


#: The most recipients a proxied session keeps the start of its messages to
#: (L{sessionMessageHead}); past it, it forgets them all.
_HEADS_KEPT = 32


def messageArguments(request: Request) -> tuple[Address, str, str, str | None]:
    """
    The arguments of a C{SESSION message} request
    (L{ISession.sendMessage}'s): in the compact form, a C{To} header (the
    recipient), optional C{Content-Type} (C{text/plain} when absent) and
    C{Message-ID}, and the text as the body (UTF-8); or, without C{To},
    the JSON form (C{{"to", "body", "contentType", "messageId"}}).

    @raise ValueError: If the request is malformed (L{InvalidAddress} for
        an invalid recipient).
    @raise KeyError: If the JSON form lacks an argument.
    """
    headers = request.headers
    to = headers.get("To")
    if to is None:
        data = _read(request)
        messageId = data.get("messageId")
        return (
            Address.fromString(str(data["to"])),
            str(data["body"]),
            str(data["contentType"]),
            None if messageId is None else str(messageId),
        )
    return (
        Address.fromString(to),
        request.body.decode("utf-8"),
        headers.get("Content-Type") or "text/plain",
        headers.get("Message-ID"),
    )


#: The index in L{sessionMessageFields}' answer of each header it reads, by
#: its name as L{encodeSessionMessage} writes it (-1: a header it skips).
_MESSAGE_FIELDS = {"Session": 0, "To": 1, "Content-Type": 2, "Message-ID": 3, "Seq": -1}

#: L{_MESSAGE_FIELDS} by name in lower case (names are case-insensitive).
_MESSAGE_FIELDS_LOWER = {"session": 0, "to": 1, "content-type": 2, "message-id": 3}


def sessionMessageFields(headers: Headers) -> list[str | None]:
    """
    The headers of a C{SESSION message} request, read in one pass: the
    values L{Headers.get} gives for C{Session}, C{To}, C{Content-Type} and
    C{Message-ID} (the first of each name, in any case; C{None} when
    absent), in that order.
    """
    fields: list[str | None] = [None, None, None, None]
    for name, value in headers.items:
        index = _MESSAGE_FIELDS.get(name)
        if index is None:
            index = _MESSAGE_FIELDS_LOWER.get(name.lower())
            if index is None:
                continue
        if index >= 0 and fields[index] is None:
            fields[index] = value
    return fields


# -- the router's side ----------------------------------------------------------------


class _RoutedOutcome(SentOutcome):
    """
    The router's waiter for a proxied session's message that this
    process's router sends (L{RemoteSession._routedNow}, with the face's
    answer): a L{SentOutcome} that, once it has told the face's answer,
    counts the message answered in its session's order
    (L{RemoteSession._routedSettled}, in place): between the link's reading
    of the answer and the face's C{200}, this call alone.

    @ivar _session: The L{RemoteSession} whose message it is.
    """

    __slots__ = ("_session",)

    _session: RemoteSession

    def callback(self, result: Any) -> None:
        answer = self._answer
        if answer is None:
            # Told before sendRouted gave it the answer: the Deferred's
            # way, which _routedNow settles.
            SentOutcome.callback(self, result)
            return
        self.called = True
        self._metrics.messageOutcome(result)
        try:
            answer(result, self._token, self._messageId)
        except Exception:
            log.failure("Answering a message sent over a link")
        # _routedSettled, without its call.
        session = self._session
        session._routedBusy -= 1
        if not session._routedBusy and session._held is not None:
            session._release()

    def errback(self, failed: BaseException | Failure) -> None:
        told = self._answer is not None
        try:
            SentOutcome.errback(self, failed)
        finally:
            if told:
                self._session._routedSettled()


@implementer(IAnsweringSession)
class RemoteSession:
    """
    A proxied session, as a router's face sees it: each L{ISession} call
    is a C{SESSION} request to the home server that holds the session, but
    a message to another user of the domain, which this process's router
    sends itself (L{_routedNow}).

    The two ways keep the order of the session's requests
    (C{docs/protocol.md} section 4.1): a request goes at once only while
    nothing of the other way is unanswered (nor held); otherwise it is
    held, in order, until it is (L{_release}). So a message sent after a
    C{PUBLISH} reaches its recipient after the presence does, and a
    C{PUBLISH} after a message goes to the home server once the message is
    delivered.

    @ivar closed: Whether the session has ended (either side).
    """

    def __init__(
        self,
        proxy: ProxyHomeServer,
        link: LinkClient,
        connection: LinkConnection,
        address: Address,
        sessionId: str,
        label: str,
        client: ISessionClient,
    ) -> None:
        self._proxy = proxy
        self._link = link
        self.connection = connection
        self.address = address
        self.sessionId = sessionId
        self.label = label
        self.client = client
        self.presence: Presence = OFFLINE
        self.closed = False
        self._inFlight: set[Deferred[Any] | _MessageAnswer[Any]] = set()
        self._sweepAt = _IN_FLIGHT_SWEEP
        #: The start of this session's messages, by recipient
        #: (L{sessionMessageHead}); made at the first message.
        self._heads: dict[str, bytes] | None = None
        #: The recipient of the last message written directly, and its start.
        self._lastTo: Address | None = None
        self._lastHead = b""
        #: The requests sent to the home server and not answered yet, and
        #: the messages this process's router sends that are not answered.
        self._homeBusy = 0
        self._routedBusy = 0
        #: The requests held until the other way is done (L{_release}), in
        #: order, each with whether it is a routed message; C{None} when
        #: none is.
        self._held: deque[tuple[bool, Callable[[], object]]] | None = None
        self._releasing = False
        #: Whether the home server's side has ended (L{ended}): nothing more
        #: is sent to it.
        self._ended = False

    def __repr__(self) -> str:
        return f"<RemoteSession {self.sessionId} {self.address} on {self._link.name}>"

    def _call(self, operation: str, arguments: object = None, request: Request | None = None) -> Deferred[Any]:
        """
        Send a C{SESSION} request: C{operation} with C{arguments} as its
        JSON body, or C{request} as it is (its C{Session} header included).

        @return: Fires with the answer's JSON result (L{decodeResult}).
        """
        if self.closed:
            return fail(ServiceUnavailable("the session has ended"))
        if request is None:
            body = _body(arguments) if arguments is not None else b""
            request = Request(SESSION_METHOD, operation, Headers((("Session", self.sessionId),)), body)
        if self._routedBusy or self._held is not None:
            # After the routed messages before it (or the requests held).
            held: Deferred[Response] = Deferred()
            self._hold(False, lambda: self._sendCall(request).chainDeferred(held))
            return held.addCallback(decodeResult)
        return self._sendCall(request).addCallback(decodeResult)

    def _sendCall(self, request: Request) -> Deferred[Response]:
        """
        Send C{request} to the home server now (L{_call}, or held until
        L{_release}), counted until it is answered.
        """
        if self._ended:
            return fail(ServiceUnavailable("the session has ended"))
        self._homeBusy += 1
        return self._track(self._link.request(request))

    def _hold(self, routed: bool, send: Callable[[], object]) -> None:
        """
        Hold a request (C{send} sends it) until the requests before it of
        the other way are answered (L{_release}).

        @param routed: Whether it is a message this process's router sends.
        """
        held = self._held
        if held is None:
            held = self._held = deque()
        held.append((routed, send))

    def _release(self) -> None:
        """
        Send the held requests, in order, while nothing of the other way is
        unanswered; called when a way's last request is answered.
        """
        if self._releasing:
            # (A request sent here answered at once: the loop goes on.)
            return
        self._releasing = True
        try:
            held = self._held
            while held:
                routed, send = held[0]
                if self._homeBusy if routed else self._routedBusy:
                    return
                held.popleft()
                send()
            self._held = None
        finally:
            self._releasing = False

    def _homeSettled(self) -> None:
        """
        A request to the home server was answered (or failed).
        """
        self._homeBusy -= 1
        if not self._homeBusy and self._held is not None:
            self._release()

    def _homeSettledThen(self, result: _T) -> _T:
        self._homeSettled()
        return result

    def _routedSettled(self) -> None:
        """
        A message this process's router sent was answered (or failed).
        """
        self._routedBusy -= 1
        if not self._routedBusy and self._held is not None:
            self._release()

    def _routedSettledThen(self, result: _T) -> _T:
        self._routedSettled()
        return result

    def _track(self, d: Deferred[Response]) -> Deferred[Response]:
        """
        Keep C{d}, a request's L{Deferred} from the link, until it fires:
        answered by the link, or failed at once when the session ends first
        (L{ended}: its link connection lost), never left to wait for a
        resend the home server would refuse (the link drops the answer
        that comes later, L{LinkClient.request}).
        """
        self._inFlight.add(d)
        return d.addBoth(self._settled, d)

    def _settled(self, result: Response | Failure, d: Deferred[Response]) -> Response | Failure:
        self._inFlight.discard(d)
        self._homeSettled()
        return result

    def publish(self, presence: Presence, lease: float | None = None) -> float:
        granted = self._proxy.config.home.grantLease(lease)
        self.presence = presence
        arguments: dict[str, Any] = _presenceJSON(presence)
        if lease is not None:
            arguments["lease"] = lease
        self._call("publish", arguments).addErrback(self._logFailure, "publish")
        return granted

    def _logFailure(self, f: Failure, what: str) -> None:
        log.warn("Proxied session {session}: {what} failed: {error}", session=self, what=what, error=f.getErrorMessage())

    def sendMessage(
        self, recipient: Address, body: str, contentType: str = "text/plain", messageId: str | None = None
    ) -> Deferred[DeliveryStatus]:
        routed = self._routes(recipient)
        if self._held is not None or (self._homeBusy if routed else self._routedBusy):
            held: Deferred[DeliveryStatus] = Deferred()
            self._hold(routed, lambda: self._sendMessageNow(routed, recipient, body, contentType, messageId).chainDeferred(held))
            return held
        return self._sendMessageNow(routed, recipient, body, contentType, messageId)

    def _sendMessageNow(
        self, routed: bool, recipient: Address, body: str, contentType: str, messageId: str | None
    ) -> Deferred[DeliveryStatus]:
        """
        L{sendMessage}, now: by this process's router (C{routed}), or to
        the home server.
        """
        if routed:
            router = self._proxy.router
            assert router is not None
            try:
                outcome = self._routedNow(router, None, None, recipient, body, contentType, messageId)
            except BaseException:
                return fail()
            assert outcome is not None
            return succeed(outcome) if type(outcome) is DeliveryStatus else outcome  # type: ignore[return-value]
        try:
            encoded = self._compactMessage(recipient, body, contentType, messageId)
        except Exception:
            return fail()
        if encoded is None:
            # Values a header cannot carry as they are (from a face other
            # than the native one): the JSON form.
            arguments = {"to": str(recipient), "body": body, "contentType": contentType, "messageId": messageId}
            request = Request(SESSION_METHOD, "message", Headers((("Session", self.sessionId),)), _body(arguments))
            return self._sendCall(request).addCallback(decodeResult).addCallback(_delivered)
        self._homeBusy += 1
        try:
            d: Deferred[DeliveryStatus] = self._link.requestEncoded(encoded, _messageOutcome)
        except BaseException:
            self._homeSettled()
            raise
        self._keep(d)
        return d.addBoth(self._homeSettledThen)

    def sendMessageThen(
        self,
        answer: Callable[[DeliveryStatus | Failure, _T, str | None], object],
        token: _T,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        Send a message as L{sendMessage} does, its outcome given to
        C{answer} rather than through a L{Deferred} (the router's native
        face: nothing between the link's reading of the home server's
        answer and the client's C{200} but one call).

        @param answer: Called once, later (never before this returns), with
            the outcome (L{DeliveryStatus.DELIVERED}, or the L{Failure} that
            L{sendMessage}'s L{Deferred} would have failed with), C{token}
            and C{messageId}: when the home server answers, when the link's
            C{request_timeout} passes, or when the session ends first.
        @return: C{None} when C{answer} will be called; otherwise what
            L{sendMessage} returns (a message in the JSON form), for the
            face to wait for as usual.
        @raise Exception: What L{sendMessage}'s L{Deferred} would fail with
            at once (the session ended, text that cannot be sent, a full
            link queue).
        """
        routed = self._routes(recipient)
        if self._held is not None or (self._homeBusy if routed else self._routedBusy):
            self._hold(routed, partial(self._tellWhenSent, routed, answer, token, recipient, body, contentType, messageId))
            return None
        if not routed:
            return self._sessionMessageThen(answer, token, recipient, body, contentType, messageId)
        router = self._proxy.router
        assert router is not None
        return self._routedNow(router, answer, token, recipient, body, contentType, messageId)

    def _routes(self, recipient: Address) -> bool:
        """
        @return: Whether a message to C{recipient} is sent by this
            process's router (L{_routedNow}): to another user of the
            domain, with a router to send it. The addresses are compared
            by their parts (no C{Address.__eq__} call, which C{!=} makes
            through C{object.__ne__}).
        """
        proxy = self._proxy
        address = self.address
        return (
            proxy.router is not None
            and recipient.domain == proxy.config.domain
            and (recipient.local != address.local or recipient.domain != address.domain)
        )

    def _tellWhenSent(
        self,
        routed: bool,
        answer: Callable[[DeliveryStatus | Failure, _T, str | None], object],
        token: _T,
        recipient: Address,
        body: str,
        contentType: str,
        messageId: str | None,
    ) -> None:
        """
        Send a held message (L{sendMessageThen}, L{_release}), its outcome
        told to C{answer} however it comes.
        """
        outcome: DeliveryStatus | Deferred[DeliveryStatus] | None
        try:
            if routed:
                router = self._proxy.router
                assert router is not None
                outcome = self._routedNow(router, answer, token, recipient, body, contentType, messageId)
            else:
                outcome = self._sessionMessageThen(answer, token, recipient, body, contentType, messageId)
        except BaseException:
            outcome = fail()
        if outcome is None:
            return

        def tell(result: DeliveryStatus | Failure) -> None:
            try:
                answer(result, token, messageId)
            except Exception:
                log.failure("Answering a proxied session's message")

        if type(outcome) is DeliveryStatus:
            tell(outcome)
        else:
            outcome.addBoth(tell)  # type: ignore[union-attr]

    def _sessionMessageThen(
        self,
        answer: Callable[[DeliveryStatus | Failure, _T, str | None], object],
        token: _T,
        recipient: Address,
        body: str,
        contentType: str,
        messageId: str | None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{sendMessageThen} as a C{SESSION message} to the home server, now.
        """
        encoded: bytes | None = None
        plainId: bytes | None = None
        if contentType == "text/plain" and messageId is not None and not self.closed:
            try:
                idBytes = messageId.encode("utf-8")
            except UnicodeEncodeError:
                idBytes = b""
            if idBytes.isalnum():
                # ASCII letters and digits alone (the id the native face
                # makes for a client's message without one: 32 hexadecimal
                # digits), found by the bytes' test, a table look-up per
                # byte: printable, no white space (about 1,500 instructions
                # fewer than str.isprintable and the tests of its ends).
                if len(idBytes) <= MAX_HEADER_VALUE_CHARS:
                    plainId = idBytes
            elif 0 < len(messageId) <= MAX_HEADER_VALUE_CHARS and messageId.isprintable() and messageId[0] != " " and messageId[-1] != " ":
                # A printable id (no surrogate: UTF-8 encoded it).
                plainId = idBytes
        if plainId is not None:
            # The usual message (what the native face passes: plain text,
            # an id), written as _compactMessage writes it without its
            # calls: a printable id passes _headerSafe and _plainValue (its
            # only white space can be U+0020, and UTF-8 encodes it).
            head: bytes | None
            if recipient is self._lastTo:
                # The recipient of the last message (the face's addresses
                # are parsed once, L{Address.fromString}'s cache): its
                # start without writing the address out again.
                head = self._lastHead
            else:
                heads = self._heads
                head = None if heads is None else heads.get(str(recipient))
                if head is not None:
                    self._lastTo, self._lastHead = recipient, head
            if head is not None:
                try:
                    text = body.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidAddress("the message is not valid text") from None
                if text:
                    encoded = b"%sMessage-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (head, plainId, len(text), text)
                else:
                    encoded = b"%sMessage-ID: %s\r\n\r\n" % (head, plainId)
        if encoded is None:
            encoded = self._compactMessage(recipient, body, contentType, messageId)
            if encoded is None:
                return self._sendMessageNow(False, recipient, body, contentType, messageId)
        waiter = _MessageAnswer(answer, token, messageId, self)
        # Its answer read by the waiter (no decode): one call fewer.
        self._homeBusy += 1
        try:
            self._link.requestEncoded(encoded, None, waiter)
        except BaseException:
            self._homeSettled()
            raise
        # Kept as _keep keeps it, inline.
        inFlight = self._inFlight
        inFlight.add(waiter)
        if len(inFlight) >= self._sweepAt:
            self._sweep()
        return None

    def _routedNow(
        self,
        router: IRouter,
        answer: Callable[[DeliveryStatus | Failure, _T, str | None], object] | None,
        token: _T,
        recipient: Address,
        body: str,
        contentType: str,
        messageId: str | None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        Send a message to another user of the domain from here, not through
        the home server that holds the session: checked as the home server
        checks a session's message (L{sessionMessage}, with this router's
        C{[home] max_message_chars}), then handed to this process's router
        (L{sendRouted}), which sends it over the link to the recipient's
        home server as an event from the session's user (C{docs/protocol.md}
        section 9.7): one process fewer on the message's way, and the same
        outcomes, counted in this process's metrics. Messages to the user's
        own other sessions, and to other domains, go through the home
        server (the C{SESSION} requests of L{sendMessageThen}).

        A message sent so does not wait for the session's link: its outcome
        is told when the recipient's home server answers, whether or not the
        session ends meanwhile.

        @return: As L{sendMessageThen} (C{None} when C{answer} will be
            called).
        @raise Exception: Why the message is refused at once (counted, but
            for a session that has ended, refused as the home server's way
            refuses it).
        """
        if self.closed:
            raise ServiceUnavailable("the session has ended")
        proxy = self._proxy
        metrics = proxy.metrics
        try:
            message = sessionMessage(self.address, recipient, body, contentType, messageId, proxy.config.home, metrics, proxy.clock)
        except BaseException:
            metrics.messageOutcome(Failure())
            raise
        self._routedBusy += 1
        try:
            if answer is None:
                outcome = sendRouted(router, metrics, message, None, None)
            else:
                sent = _RoutedOutcome(metrics)
                sent._session = self
                outcome = sendRouted(router, metrics, message, answer, token, sent)
        except BaseException:
            metrics.messageOutcome(Failure())
            self._routedSettled()
            raise
        if outcome is None:
            # The waiter tells the answer, and settles the message.
            return None
        if type(outcome) is DeliveryStatus:
            self._routedSettled()
            return outcome
        return outcome.addBoth(self._routedSettledThen)  # type: ignore[union-attr]

    def _compactMessage(self, recipient: Address, body: str, contentType: str, messageId: str | None) -> bytes | None:
        """
        The bytes of a message's compact C{SESSION message}
        (C{docs/protocol.md} section 9.7: headers and the text itself, no
        JSON to write here or to read at the home server).

        @return: The bytes, or C{None} for values a header cannot carry as
            they are (the JSON form).
        @raise Exception: Why the message cannot be sent (L{InvalidAddress}
            for text that is not valid, L{ServiceUnavailable} for a session
            that has ended, L{ServerError} for what cannot be serialised).
        """
        # (text/plain, what nearly every message has, is safe as it is.)
        if not ((contentType == "text/plain" or _headerSafe(contentType)) and (messageId is None or _headerSafe(messageId))):
            return None
        try:
            text = body.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidAddress("the message is not valid text") from None
        if self.closed:
            raise ServiceUnavailable("the session has ended")
        # The start of its messages to a recipient (the session and the
        # recipient) written once; anything not plain the general way.
        to = str(recipient)
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        head = heads.get(to)
        if head is None:
            head = sessionMessageHead(self.sessionId, to)
            if head is not None:
                if len(heads) >= _HEADS_KEPT:
                    heads.clear()
                heads[to] = head
        if head is not None:
            encoded = encodeSessionMessageAfter(head, text, contentType, messageId)
            if encoded is not None:
                return encoded
        try:
            return encodeSessionMessage(self.sessionId, to, text, contentType, messageId)
        except ValueError as e:
            log.error("Link to {peer}: cannot send SESSION message: {error}", peer=self._link.name, error=e)
            raise ServerError("cannot send SESSION over a link") from None

    def _keep(self, d: Deferred[Any]) -> None:
        """
        Keep C{d}, a message's L{Deferred} from the link (L{sendMessage}),
        to fail it at once if the session ends first (L{ended}), without a
        callback to forget it: the answered ones are dropped when those
        kept reach twice as many as were unanswered at the last count (at
        least L{_IN_FLIGHT_SWEEP}), so what is kept stays bounded by the
        messages in flight. L{sendMessageThen} keeps its L{_MessageAnswer}
        the same way, written out inline.
        """
        inFlight = self._inFlight
        inFlight.add(d)
        if len(inFlight) >= self._sweepAt:
            self._sweep()

    def _sweep(self) -> None:
        """
        Drop the kept messages that were answered (L{_keep}).
        """
        self._inFlight = inFlight = {kept for kept in self._inFlight if not kept.called}
        self._sweepAt = max(_IN_FLIGHT_SWEEP, 2 * len(inFlight))

    def subscribe(self, target: Address, displayName: str = "") -> Deferred[AuthorisationState]:
        d = self._call("subscribe", {"target": str(target), "name": displayName})
        return d.addCallback(lambda result: AuthorisationState(result["state"]))

    def putContact(self, contact: Address, displayName: str = "") -> Deferred[None]:
        return self._call("put-contact", {"target": str(contact), "name": displayName}).addCallback(lambda _: None)

    def unsubscribe(self, target: Address) -> Deferred[None]:
        return self._call("unsubscribe", {"target": str(target)}).addCallback(lambda _: None)

    def authorise(self, watcher: Address, allow: bool) -> Deferred[None]:
        return self._call("authorise", {"watcher": str(watcher), "allow": allow}).addCallback(lambda _: None)

    def contacts(self) -> Deferred[list[ContactView]]:
        return self._call("contacts").addCallback(lambda result: [_contact(c) for c in result["contacts"]])

    def pendingRequests(self) -> Deferred[list[Address]]:
        return self._call("pending").addCallback(lambda result: [Address.fromString(a) for a in result["requests"]])

    def setAccess(self, entry: str, accessList: AccessList) -> Deferred[None]:
        return self._call("set-access", {"entry": entry, "list": ACCESS_LISTS[accessList]}).addCallback(lambda _: None)

    def accessLists(self) -> Deferred[dict[str, AccessList]]:
        d = self._call("access")
        return d.addCallback(lambda result: {e: accessListFromToken(t) for e, t in result["entries"].items()})

    def setRule(self, state: PresenceState, alternate: str | None) -> Deferred[None]:
        return self._call("set-rule", {"presence": PRESENCE[state], "alternate": alternate}).addCallback(lambda _: None)

    def rules(self) -> Deferred[list[PresenceRule]]:
        d = self._call("rules")
        return d.addCallback(lambda result: [ruleFromJSON(r) for r in result["rules"]])

    def setRules(self, rules: Sequence[PresenceRule]) -> Deferred[None]:
        return self._call("set-rules", {"rules": [ruleToJSON(r) for r in rules]}).addCallback(lambda _: None)

    def addRule(self, rule: PresenceRule, position: int | None = None) -> Deferred[None]:
        return self._call("add-rule", {"rule": ruleToJSON(rule), "position": position}).addCallback(lambda _: None)

    def removeRule(self, position: int) -> Deferred[None]:
        return self._call("remove-rule", {"position": position}).addCallback(lambda _: None)

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self._call("close", {"reason": reason}).addErrback(self._logFailure, "close")
        self.closed = True
        self._proxy._forget(self)

    def ended(self, reason: str) -> None:
        """
        The home server ended the session, or its link was lost: tell the
        client (L{ISessionClient.sessionClosed}).
        """
        if self.closed:
            return
        self.closed = True
        self._ended = True
        self._proxy._forget(self)
        inFlight, self._inFlight = self._inFlight, set()
        for d in inFlight:
            if not d.called:
                d.errback(ServiceUnavailable(reason))
        # The held requests fail as the session has ended.
        held, self._held = self._held, None
        for routed, send in held or ():
            send()
        self.client.sessionClosed(reason)


class ProxyHomeServer:
    """
    A router's way to its users' home servers: L{openSession} opens a
    session on the user's home server over the link to it
    (L{RemoteSession}). At most C{[links] max_sessions} are open (or being
    opened) over one link; a refusal is counted in L{metrics}.
    """

    metrics: IMetrics = NO_METRICS

    #: This process's router, which sends the proxied sessions' messages to
    #: other users of the domain (L{RemoteSession._routedNow}), and the
    #: clock of their timestamps (L{sendThrough}); without them, every
    #: message goes through the session's home server.
    router: IRouter | None = None
    clock: IReactorTime

    def __init__(self, config: GatewayConfig, locator: IHomeLocator, routes: ILinkRoutes) -> None:
        self.config = config
        self._locator = locator
        self._routes = routes
        #: Sessions open or being opened, by link.
        self._counts: dict[LinkClient, int] = {}
        self._sessions: dict[LinkConnection, dict[str, RemoteSession]] = {}

    def sendThrough(self, router: IRouter, clock: IReactorTime) -> None:
        """
        Send the proxied sessions' messages to other users of the domain
        through C{router}, this process's, timestamped by C{clock}
        (L{RemoteSession._routedNow}).
        """
        self.router = router
        self.clock = clock

    def sessionCount(self, link: LinkClient) -> int:
        """
        @return: The proxied sessions open or being opened over C{link}.
        """
        return self._counts.get(link, 0)

    def openSession(self, address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        """
        Open a session for C{address}, authenticated here, on its home
        server (as L{IHomeServer.openSession}).

        A home server that answers C{301} (the directory homes the user
        elsewhere now: the locator's answer was old) makes the locator
        forget the answer, and the session is opened on the new home server
        (once: L{followMoves}).

        @return: Fires with the L{RemoteSession}; fails with
            L{ServiceUnavailable} when the user's home server cannot be
            reached over a link, or C{[links] max_sessions} sessions are
            open on it, or it answers C{301} twice in a row, or as the home
            server's L{IHomeServer.openSession} does (L{TooManySessions}).
        """
        def attempt(home: str | None) -> Deferred[ISession]:
            return Deferred.fromCoroutine(self._open(home, address, client, label))

        # A home server that no longer homes the user (the locator's answer
        # was old) answers MovedTo: forget the answer, and try the new home.
        return followMoves(self._locator, address, attempt, "the opening of a proxied session", _movedAgain)

    async def _open(self, home: str | None, address: Address, client: ISessionClient, label: str) -> ISession:
        if home is None or home == self.config.homeServerName or home not in self.config.servers:
            raise ServiceUnavailable("no home server to proxy this session to")
        link = self._routes.toServer(home)
        if not isinstance(link, LinkClient):
            raise ServiceUnavailable(f"no link to server {home}")
        limit = self.config.links.maxSessions
        count = self._counts.get(link, 0)
        if count >= limit:
            self.metrics.limitHit("max_sessions")
            log.warn(
                "Not proxying a session of {user} to {home}: {limit} proxied sessions on its link already "
                "([links] max_sessions)",
                user=address,
                home=home,
                limit=limit,
            )
            raise ServiceUnavailable("too many proxied sessions")
        self._counts[link] = count + 1
        registered = False
        try:
            request = Request(SESSION_METHOD, "open", Headers(), _body({"address": str(address), "label": label}))
            try:
                result = decodeResult(await link.request(request))
            except MovedTo as e:
                log.info(
                    "Proxied session of {user} not opened on {home}: the directory homes it on {new} now",
                    user=address,
                    home=home,
                    new=e.home or "another server",
                )
                raise
            except DeliveryError as e:
                # Refused (403: not homed there), or the home server cannot
                # take it now: the face tells its client it is unavailable.
                log.info("Proxied session of {user} not opened on {home}: {error}", user=address, home=home, error=e)
                raise ServiceUnavailable(e.text) from None
            # The response came on the link's current connection: the one
            # the session lives on.
            connection = link.connection
            sessionId, finalLabel = str(result["session"]), str(result["label"])
            if connection is None or not connection.connected:
                raise ServiceUnavailable(LINK_LOST)
            session = RemoteSession(self, link, connection, address, sessionId, finalLabel, client)
            sessions = self._sessions.get(connection)
            if sessions is None:
                sessions = self._sessions[connection] = {}
                connection.whenLost(self._connectionLost)
            sessions[sessionId] = session
            registered = True
            log.info("Proxied session {session} of {user} opened on {home}", session=sessionId, user=address, home=home)
            return session
        finally:
            if not registered:
                self._counts[link] -= 1

    def _forget(self, session: RemoteSession) -> None:
        sessions = self._sessions.get(session.connection)
        if sessions is not None and sessions.pop(session.sessionId, None) is session:
            self._counts[session._link] -= 1
            if not sessions:
                del self._sessions[session.connection]

    def _connectionLost(self, connection: LinkConnection) -> None:
        sessions = self._sessions.pop(connection, {})
        if sessions:
            log.warn(
                "Link connection to {peer} lost: closing its {count} proxied sessions", peer=connection.peer, count=len(sessions)
            )
        for session in sessions.values():
            self._counts[session._link] -= 1
            session.connection = _GONE
            session.ended(LINK_LOST)

    def callbackReceived(self, connection: LinkConnection, request: Request) -> Deferred[Response] | Response:
        """
        Handle a home server's C{CLIENT} request: a callback for the
        client of one of the sessions opened on C{connection}.
        """
        session = self._sessions.get(connection, {}).get(request.headers.get("Session") or "")
        if session is None:
            return _error(503, "no such session")
        try:
            data = _read(request)
            callback = request.target
            client = session.client
            if callback == "closed":
                session.ended(str(data.get("reason", "")))
                return _ok()
            d: Deferred[None]
            if callback == "message":
                d = client.messageReceived(_message(data))
            elif callback == "presence":
                d = client.presenceReceived(Address.fromString(str(data["from"])), _presence(data))
            elif callback == "subscription":
                event = SubscriptionEvent(
                    subscriptionKindFromToken(str(data["kind"])),
                    Address.fromString(str(data["from"])),
                    Address.fromString(str(data["to"])),
                )
                d = client.subscriptionReceived(event)
            elif callback == "contact":
                d = client.contactUpdated(_contact(data))
            elif callback == "contact-removed":
                d = client.contactRemoved(Address.fromString(str(data["address"])))
            else:
                return _error(405, f"unknown callback {callback[:32]!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.warn("Link with {peer}: bad CLIENT {callback} request: {error}", peer=connection.peer, callback=request.target, error=e)
            return _error(400, "bad callback")
        return d.addCallbacks(lambda _: _ok(), lambda f: _error(503, "the client did not take it"))


#: No proxied sessions (on a connection that has none).
_NO_SESSIONS: dict[str, ISession] = {}


def _encodeFailed(f: Failure) -> Response:
    assert f.value is not None
    return encodeFailure(f.value)


def _movedAgain() -> ServiceUnavailable:
    return ServiceUnavailable("the user moved again as its session was opened")


class _Gone:
    connected = False


_GONE: Any = _Gone()


# -- the home server's side ---------------------------------------------------------------


@implementer(ISessionClient)
class RemoteSessionClient:
    """
    The client of a session a router proxies: each callback is a C{CLIENT}
    request to the router, on the connection the session was opened on,
    answered within C{[links] request_timeout}.
    """

    def __init__(self, host: SessionHost, connection: LinkConnection, label: str) -> None:
        self._host = host
        self._connection = connection
        self.sessionLabel = label
        self.sessionId: str | None = None
        self._early: list[tuple[str, object]] = []

    def started(self, sessionId: str) -> None:
        """
        The session is open and its id told to the router: send what came
        before.
        """
        self.sessionId = sessionId
        early, self._early = self._early, []
        for callback, data in early:
            self._send(callback, data).addErrback(lambda f: None)

    def _send(self, callback: str, data: object) -> Deferred[None]:
        if self.sessionId is None:
            self._early.append((callback, data))
            return succeed(None)
        request = Request(CLIENT_METHOD, callback, Headers((("Session", self.sessionId),)), _body(data))
        d = self._connection.request(request)
        d.addTimeout(self._host.config.links.requestTimeout, self._host.clock)

        def answered(response: Response) -> None:
            if not 200 <= response.code < 300:
                raise ServiceUnavailable(f"the router answered {response.code}")

        return d.addCallback(answered)

    def messageReceived(self, message: Message) -> Deferred[None]:
        return self._send("message", _messageJSON(message))

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        return self._send("presence", {"from": str(sender), **_presenceJSON(presence)})

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        return self._send(
            "subscription", {"kind": SUBSCRIPTION_KINDS[event.kind], "from": str(event.sender), "to": str(event.recipient)}
        )

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        return self._send("contact", _contactJSON(contact))

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        return self._send("contact-removed", {"address": str(contact)})

    def sessionClosed(self, reason: str) -> None:
        self._host._forget(self._connection, self.sessionId)
        self._send("closed", {"reason": reason}).addErrback(lambda f: None)


class SessionHost:
    """
    A home server's side of proxied sessions: answers a router's
    C{SESSION} requests. Only a peer with the role C{router} may ask, only
    for users the directory homes here (for a user it homes on another
    server, the answer is C{301} with C{Home}, as for an event: the
    router's answer was old); the router authenticated the user
    (the home server takes its word, as it takes a link peer's for the
    events it sends). At most C{[links] max_sessions} sessions per
    connection (a refusal is counted in L{metrics}); they are closed when
    it is lost.
    """

    metrics: IMetrics = NO_METRICS

    def __init__(self, config: GatewayConfig, home: IHomeServer, locator: IHomeLocator, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self._home = home
        self._locator = locator
        self._sessions: dict[LinkConnection, dict[str, ISession]] = {}
        self._opening: dict[LinkConnection, int] = {}

    def sessionsOn(self, connection: LinkConnection) -> list[ISession]:
        """
        @return: The proxied sessions open on C{connection}.
        """
        return list(self._sessions.get(connection, {}).values())

    def requestReceived(self, connection: LinkConnection, request: Request) -> Deferred[Response] | Response:
        """
        Handle a router's C{SESSION} request: a C{SESSION message} here
        (the hot path, one call from the link), any other by L{_operation}.

        A C{SESSION message}: its headers read in one pass
        (L{sessionMessageFields}), no JSON (the compact form), and a session
        that knows the outcome at once (C{sendMessageThen} or
        C{sendMessageAtOnce}: a recipient in this process) answered without
        a L{Deferred}, as is one whose outcome a link tells later
        (C{sendMessageThen}'s call, L{_messageAnswered}); any other outcome
        with one callback. The answers are those of the general way: a
        refusal's status, C{400} for a malformed request, C{503} for no such
        session.
        """
        peer = connection.peer
        if peer is None or peer.name is None or "router" not in peer.roles:
            log.warn("Link from {peer}: SESSION {operation} refused (403): the peer is no router of this domain", peer=peer, operation=request.target)
            return _error(403, "only a router may proxy sessions")
        if request.target != "message":
            return self._operation(connection, request)
        items = request.headers.items
        sessionId: str | None
        to: str | None
        contentType: str | None
        messageId: str | None
        if len(items) == 4 and items[3][0] == "Message-ID" and items[2][0] == "To" and items[1][0] == "Session" and items[0][0] == "Seq":
            # The shape the router writes and the link reads (a message
            # with an id, as the native face sends every one): the values
            # sessionMessageFields reads, without its pass.
            sessionId, to, contentType, messageId = items[1][1], items[2][1], None, items[3][1]
        else:
            sessionId, to, contentType, messageId = sessionMessageFields(request.headers)
        session = self._sessions.get(connection, _NO_SESSIONS).get(sessionId or "")
        if session is None:
            return _error(503, "no such session")
        recipient: Address
        body: str
        try:
            if to is None:
                recipient, body, contentType, messageId = messageArguments(request)
            else:
                # (No tuple of the arguments: each is passed as it is.)
                recipient, body = Address.fromString(to), request.body.decode("utf-8")
                if not contentType:
                    # (Absent or empty: as messageArguments reads it.)
                    contentType = "text/plain"
        except (ValueError, KeyError, TypeError) as e:
            return self._badRequest(connection, request, e)
        # The session's optional fast paths (IAnsweringSession, then
        # IAtOnceSession), looked up by name: no interface test per message.
        then = getattr(session, "sendMessageThen", None)
        if then is not None:
            # A home session (IAnsweringSession: Session.sendMessageThen): an
            # outcome that comes later from a link is told to
            # _messageAnswered, which answers as answerWhenFired would, with
            # no Deferred between.
            try:
                outcome = then(self._messageAnswered, (connection, request), recipient, body, contentType, messageId)
            except BaseException:
                return _encodeFailed(Failure())
            if outcome is None:
                return ANSWERED_LATER
            # A status first: isinstance() of anything but a Deferred
            # against Deferred (an abc.ABC, through Awaitable) runs ABCMeta's
            # check.
            if type(outcome) is not DeliveryStatus and isinstance(outcome, Deferred):
                return connection.answerWhenFired(request, outcome, encodeFailure)
            return DELIVERED
        atOnce = getattr(session, "sendMessageAtOnce", None)
        if atOnce is None:
            # Answered by the connection when it fires: one callback.
            return connection.answerWhenFired(request, session.sendMessage(recipient, body, contentType, messageId), encodeFailure)
        try:
            outcome = atOnce(recipient, body, contentType, messageId)
        except BaseException:
            return _encodeFailed(Failure())
        if type(outcome) is not DeliveryStatus and isinstance(outcome, Deferred):
            return connection.answerWhenFired(request, outcome, encodeFailure)
        return DELIVERED

    def _operation(self, connection: LinkConnection, request: Request) -> Deferred[Response] | Response:
        """
        A router's C{SESSION} request other than C{message}: C{open}, or an
        operation on one of the sessions open on C{connection}.
        """
        if request.target == "open":
            return Deferred.fromCoroutine(self._open(connection, request))
        session = self._sessions.get(connection, _NO_SESSIONS).get(request.headers.get("Session") or "")
        if session is None:
            return _error(503, "no such session")
        try:
            d = self._operate(connection, session, request.target, _read(request))
        except (ValueError, KeyError, TypeError) as e:
            return self._badRequest(connection, request, e)
        return d.addErrback(_encodeFailed)

    def _badRequest(self, connection: LinkConnection, request: Request, e: Exception) -> Response:
        if isinstance(e, InvalidAddress):
            return encodeFailure(e)
        log.warn("Link from {peer}: bad SESSION {operation} request: {error}", peer=connection.peer, operation=request.target, error=e)
        return _error(400, "bad session request")

    def _messageAnswered(self, outcome: object, token: tuple[LinkConnection, Request], messageId: str | None) -> None:
        """
        The outcome of a C{SESSION message} that a home session told later
        (L{requestReceived}'s C{sendMessageThen}): answered on its connection.
        """
        connection, request = token
        connection.answerOutcome(request, outcome, encodeFailure)

    def _operate(self, connection: LinkConnection, session: ISession, operation: str, data: dict[str, Any]) -> Deferred[Response]:
        def target(key: str = "target") -> Address:
            return Address.fromString(str(data[key]))

        done: Callable[[object], Response] = lambda _: _ok()
        if operation == "publish":
            lease = data.get("lease")
            granted = session.publish(_presence(data), None if lease is None else float(lease))
            return succeed(_ok({"lease": granted}))
        if operation == "subscribe":
            return session.subscribe(target(), str(data.get("name", ""))).addCallback(lambda state: _ok({"state": state.value}))
        if operation == "put-contact":
            return session.putContact(target(), str(data.get("name", ""))).addCallback(done)
        if operation == "unsubscribe":
            return session.unsubscribe(target()).addCallback(done)
        if operation == "authorise":
            return session.authorise(target("watcher"), bool(data["allow"])).addCallback(done)
        if operation == "contacts":
            return session.contacts().addCallback(lambda views: _ok({"contacts": [_contactJSON(v) for v in views]}))
        if operation == "pending":
            return session.pendingRequests().addCallback(lambda ws: _ok({"requests": [str(w) for w in ws]}))
        if operation == "set-access":
            return maybeDeferred(session.setAccess, str(data["entry"]), accessListFromToken(str(data["list"]))).addCallback(done)
        if operation == "access":
            return session.accessLists().addCallback(lambda es: _ok({"entries": {e: ACCESS_LISTS[l] for e, l in es.items()}}))
        if operation == "set-rule":
            alternate = data.get("alternate")
            ruled = session.setRule(presenceFromToken(str(data["presence"])), None if alternate is None else str(alternate))
            return ruled.addCallback(done)
        if operation == "rules":
            return session.rules().addCallback(lambda rs: _ok({"rules": [ruleToJSON(r) for r in rs]}))
        if operation == "set-rules":
            return session.setRules([ruleFromJSON(r) for r in data["rules"]]).addCallback(done)
        if operation == "add-rule":
            position = data.get("position")
            return session.addRule(ruleFromJSON(data["rule"]), None if position is None else int(position)).addCallback(done)
        if operation == "remove-rule":
            return session.removeRule(int(data["position"])).addCallback(done)
        if operation == "close":
            self._forget(connection, session.sessionId)
            session.close(str(data.get("reason", "")) or "logout")
            return succeed(_ok())
        raise ValueError(f"unknown operation {operation[:32]!r}")

    async def _open(self, connection: LinkConnection, request: Request) -> Response:
        try:
            data = _read(request)
            address = Address.fromString(str(data["address"]))
            label = str(data.get("label", ""))
        except (ValueError, KeyError, TypeError) as e:
            return _error(400, f"bad open request: {e}"[:MAX_DETAIL_CHARS])
        try:
            mine = self.config.homeServerName
            home = await homeOfAuthenticated(self._locator, address, mine) if address.domain == self.config.domain else None
        except Exception as e:
            log.warn("Link from {peer}: a session for {user} not opened (503): the directory cannot be read: {error}", peer=connection.peer, user=address, error=e)
            return _error(503, "cannot check the user's home server now")
        if home is not None and home != self.config.homeServerName:
            # The router's answer was old: it forgets it and asks again.
            log.info(
                "Link from {peer}: a session for {user} not opened (301): the directory homes it on {home}",
                peer=connection.peer,
                user=address,
                home=home,
            )
            return encodeResponse(MovedTo(f"homed on {home}", home))
        if home != self.config.homeServerName:
            log.warn("Link from {peer}: a session for {user} refused (403): not homed on {name}", peer=connection.peer, user=address, name=self.config.homeServerName)
            return _error(403, "not homed here")
        limit = self.config.links.maxSessions
        opening = self._opening.get(connection, 0)
        if len(self._sessions.get(connection, {})) + opening >= limit:
            self.metrics.limitHit("max_sessions")
            log.warn("Link from {peer}: a session for {user} refused (503): {limit} proxied sessions on the link already ([links] max_sessions)", peer=connection.peer, user=address, limit=limit)
            return _error(503, "too many proxied sessions")
        self._opening[connection] = opening + 1
        client = RemoteSessionClient(self, connection, label)
        try:
            session: ISession = await self._home.openSession(address, client, label)
        except Exception as e:
            return encodeFailure(e)
        finally:
            self._opening[connection] -= 1
            if not self._opening[connection]:
                del self._opening[connection]
        if not connection.connected:
            session.close(LINK_LOST)
            return _error(503, LINK_LOST)
        sessions = self._sessions.get(connection)
        if sessions is None:
            sessions = self._sessions[connection] = {}
            connection.whenLost(self._connectionLost)
        sessions[session.sessionId] = session
        log.info("Proxied session {session} of {user} opened for {peer}", session=session.sessionId, user=address, peer=connection.peer)
        # The callbacks that came before go after this answer.
        self.clock.callLater(0, client.started, session.sessionId)
        return _ok({"session": session.sessionId, "label": session.label})

    def _forget(self, connection: LinkConnection, sessionId: str | None) -> None:
        sessions = self._sessions.get(connection)
        if sessions is not None and sessionId is not None:
            sessions.pop(sessionId, None)
            if not sessions:
                del self._sessions[connection]

    def _connectionLost(self, connection: LinkConnection) -> None:
        sessions = self._sessions.pop(connection, {})
        if sessions:
            log.warn("Link connection from {peer} lost: closing its {count} proxied sessions", peer=connection.peer, count=len(sessions))
        for session in sessions.values():
            session.close(LINK_LOST)


def installProxy(gateway: Any, links: Any, locator: IHomeLocator) -> ProxyHomeServer | None:
    """
    Add proxied sessions to a process's links
    (L{imgateway.gateway.addLinks}): a home server answers C{SESSION}
    requests; a router opens sessions (its faces' C{proxy}) and answers
    C{CLIENT} requests.

    @param gateway: The L{imgateway.gateway.Gateway}.
    @param links: Its L{imgateway.router.link.LinkService}.
    @param locator: Where the domain's users are homed.
    @return: The router's L{ProxyHomeServer}, or C{None} for a process
        without the role C{router}.
    """
    config: GatewayConfig = gateway.config
    if "home" in config.roles:
        host = SessionHost(config, gateway.homeServer, locator, gateway.clock)
        host.metrics = gateway.metrics
        links.receiver.addMethod(SESSION_METHOD, host.requestReceived)
    if "router" not in config.roles:
        return None
    proxy = ProxyHomeServer(config, locator, links.routes)
    proxy.metrics = gateway.metrics
    proxy.sendThrough(gateway.router, gateway.clock)
    links.receiver.addBackMethod(CLIENT_METHOD, proxy.callbackReceived)
    return proxy
