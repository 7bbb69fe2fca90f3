# -*- test-case-name: tests.test_client_cli,tests.test_router_front,tests.e2e.test_client_cli,tests.e2e.test_native_gateway,tests.e2e.test_router_faces -*-
"""
A Twisted client for the native protocol (C{docs/protocol.md}).

L{NativeClientProtocol} sends requests and returns L{Deferred}s of their
responses; it answers the server's requests (messages, notifications, pings)
and passes them to a L{ClientObserver}. L{connect} opens a connection, logs
in and publishes an initial presence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgateway.adapters.native.framing import (
    CLIENT_LIMITS,
    FrameParser,
    FramingError,
    Headers,
    Limits,
    Request,
    Response,
    serialise,
)
from imgateway.adapters.native.mapping import PRESENCE, deliveryErrorFor, isDeliveryCode, presenceAnswersNone, presenceFromToken
from imgateway.auth.sasl import SASLFailure, clientMechanism, preferredMechanism
from imgateway.config import HostPort, parseHostPort
from imgateway.core.address import Address
from imgateway.core.errors import AuthenticationFailed, ImgatewayError, NotAuthorised
from imgateway.core.presence import Presence, PresenceState
from imgateway.net.endpoints import clientEndpointFromString, redirectedDescription

__all__ = [
    "BYE_TIMEOUT",
    "DEFAULT_MAX_REDIRECTS",
    "ClientError",
    "ClientObserver",
    "NativeClientProtocol",
    "Redirected",
    "TooManyRedirects",
    "connect",
    "goodbye",
    "redirector",
]

#: Seconds L{goodbye} waits for the server to close the connection after BYE.
BYE_TIMEOUT = 5.0

#: How many redirects (C{302} to C{AUTH}) L{connect} follows by default.
DEFAULT_MAX_REDIRECTS = 3


class ClientError(ImgatewayError):
    """
    The server answered a request with an error status that is not a
    delivery status.

    @ivar code: The status code.
    @ivar reason: The reason phrase.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class Redirected(ClientError):
    """
    The server answered C{AUTH} with C{302}: log in at C{location} instead
    (C{docs/protocol.md} section 7.2.1). The server proved it knows the
    password (the SCRAM server-final message was checked) before this is
    raised.

    @ivar location: Where to connect.
    """

    def __init__(self, code: int, reason: str, location: HostPort) -> None:
        super().__init__(code, reason)
        self.location = location


class TooManyRedirects(ClientError):
    """
    L{connect} was redirected more times than it may follow.

    @ivar locations: Where it was sent, in order (the last one not
        followed).
    """

    def __init__(self, locations: Sequence[HostPort], maxRedirects: int) -> None:
        path = " -> ".join(str(h) for h in locations)
        super().__init__(302, f"redirected more than {maxRedirects} times ({path})")
        self.locations = tuple(locations)


class ClientObserver:
    """
    Receives what the server sends. Override what you need; every method
    does nothing by default.
    """

    def messageReceived(
        self, sender: Address, body: str, messageId: str, contentType: str, timestamp: float
    ) -> None:
        """
        A message arrived.
        """

    def presenceReceived(self, address: Address, presence: Presence) -> None:
        """
        C{address}'s presence (or the user's own aggregate presence).
        """

    def subscriptionReceived(self, address: Address, kind: str) -> None:
        """
        A subscription event: C{subscribe} (C{address} asks to watch you),
        C{authorise} / C{refuse} (an answer to your request), or
        C{unsubscribe}.
        """

    def contactUpdated(self, contact: dict[str, Any]) -> None:
        """
        A contact-list entry changed (one entry of L{NativeClientProtocol.contacts}).
        """

    def contactRemoved(self, address: Address) -> None:
        """
        A contact was removed from the list.
        """

    def disconnected(self, reason: str) -> None:
        """
        The connection ended (C{reason} is the server's BYE reason, if any).
        """


class NativeClientProtocol(Protocol):
    """
    The client end of a native-protocol connection.

    @ivar address: The logged-in address, once L{login} succeeded.
    @ivar presenceAnswers: C{"none"} once the server agreed to send
        presence C{NOTIFY}s that are not answered (its C{200} to C{AUTH}
        says C{Presence-Answers: none}), else C{"all"}.
    @ivar requestTimeout: Seconds to wait for any response.
    @ivar limits: The sizes accepted from the server (L{CLIENT_LIMITS} unless
        given). A response over them fails its request with a L{ClientError}
        (C{413}: the body is skipped and the connection goes on; C{431}:
        the connection is closed).
    """

    log = Logger()
    requestTimeout = 30.0
    #: Whether L{login} asks the server not to want answers to presence
    #: C{NOTIFY}s (C{Presence-Answers: none}, C{docs/protocol.md} section
    #: 7.2). Either way the client answers every request with a C{Seq}
    #: other than 0, and never answers a presence C{NOTIFY} with C{Seq: 0}.
    askQuietPresence = True

    def __init__(
        self, observer: ClientObserver | None = None, clock: IReactorTime | None = None, limits: Limits = CLIENT_LIMITS
    ) -> None:
        self.observer = observer or ClientObserver()
        self.clock = clock
        self.limits = limits
        self.address: Address | None = None
        self.sessionId = ""
        self.presenceAnswers = "all"
        self._parser = FrameParser(limits)
        self._seq = 0
        self._pending: dict[int, Deferred[Response]] = {}
        self._byeReason = ""
        self._closed: Deferred[str] = Deferred()
        self._lost = False
        self._connected: Deferred[NativeClientProtocol] = Deferred()
        self._refresh: IDelayedCall | None = None
        self._presence: tuple[PresenceState, str, float | None] | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._connected.callback(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        # From here on no request is taken: what the callbacks below run
        # (pending requests' errbacks, the observer) may try to send one.
        self._lost = True
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None
        if not self._byeReason and not reason.check(ConnectionDone):
            # No BYE: say what ended the connection (a TLS verification
            # failure, a reset...).
            self._byeReason = reason.getErrorMessage()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ClientError(0, f"connection closed{': ' + self._byeReason if self._byeReason else ''}"))
        self.observer.disconnected(self._byeReason)
        self._closed.callback(self._byeReason)

    def whenClosed(self) -> Deferred[str]:
        """
        @return: Fires with the server's BYE reason (or C{""}) when the
            connection is gone.
        """
        d: Deferred[str] = Deferred()

        def fire(reason: str) -> str:
            d.callback(reason)
            return reason

        if self._closed.called:
            return succeed(self._byeReason)
        self._closed.addCallback(fire)
        return d

    def dataReceived(self, data: bytes) -> None:
        for item in self._parser.feed(data):
            if isinstance(item, FramingError):
                self.log.warn("Bad frame from server: {error}", error=item)
                if item.inResponse and item.seq is not None:
                    # The answer was dropped: its request fails now rather
                    # than wait for it forever.
                    d = self._pending.pop(item.seq, None)
                    if d is not None:
                        d.errback(ClientError(item.code, f"the server's answer was refused: {item.detail}"))
                if item.fatal:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
            elif isinstance(item, Response):
                d = self._pending.pop(item.seq, None)
                if d is not None:
                    d.callback(item)
            else:
                self._serverRequest(item)

    # -- requests -------------------------------------------------------------

    def request(
        self, method: str, target: str = "*", headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Deferred[Response]:
        """
        Send a request.

        @return: Fires with the server's response, whatever its status.
        """
        if self.transport is None or self._lost:
            return fail(ClientError(0, "not connected"))
        self._seq += 1
        seq = self._seq
        frame = Request(method, target, Headers.of(("Seq", str(seq)), *headers), body)
        data = serialise(frame)
        d: Deferred[Response] = Deferred()
        self._pending[seq] = d
        if self.clock is not None:

            def timedOut(f: Failure) -> Failure:
                self._pending.pop(seq, None)
                return f

            d.addTimeout(self.requestTimeout, self.clock)
            d.addErrback(timedOut)
        self.transport.write(data)
        return d

    def call(
        self, method: str, target: str = "*", headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Deferred[Response]:
        """
        Send a request; fail unless it succeeds.

        @return: Fires with a 1xx or 2xx response; fails with a
            L{DeliveryError} for a delivery status (404, 480, 486...) or a
            L{ClientError} for any other error status.
        """
        return self.request(method, target, headers, body).addCallback(_check)

    # -- the protocol's methods ------------------------------------------------------

    def options(self) -> Deferred[dict[str, str]]:
        """
        @return: The server's OPTIONS headers (name to value).
        """
        return self.call("OPTIONS").addCallback(lambda r: dict(r.headers))

    def login(self, username: str, password: str, label: str = "", mechanism: str | None = None) -> Deferred[Address]:
        """
        Log in with SASL (the strongest mechanism the server offers, unless
        C{mechanism} is given).

        @return: Fires with the logged-in address; fails with
            L{AuthenticationFailed} for wrong credentials, or L{Redirected}
            when the server (a router) sends the client to the user's home
            server (the connection is then closed by the server).
        """

        def chosen(offered: dict[str, str]) -> Deferred[Address]:
            names = [m.strip() for m in offered.get("Mechanisms", "").split(",") if m.strip()]
            if mechanism is not None:
                name = mechanism
            else:
                try:
                    name = preferredMechanism(names)
                except SASLFailure:
                    raise ClientError(426, f"no usable mechanism offered ({', '.join(names) or 'none'})") from None
            mech = clientMechanism(name, username, password)
            headers = [("Mechanism", name)]
            if label:
                headers.append(("Label", label))
            if self.askQuietPresence:
                headers.append(("Presence-Answers", "none"))
            return self.request("AUTH", "*", headers, mech.start()).addCallback(_checkAuth).addCallbacks(
                stepped, refused, (mech,)
            )

        def refused(f: Failure) -> Failure:
            # 401 on AUTH is a failed login, not a failed delivery.
            if f.check(NotAuthorised):
                raise AuthenticationFailed(f.value.text)  # type: ignore[union-attr]
            return f

        def stepped(response: Response, mech: Any) -> Any:
            if response.code == 110:
                return self.request("AUTH", "*", (), mech.step(response.body)).addCallback(_checkAuth).addCallbacks(
                    stepped, refused, (mech,)
                )
            mech.verifyFinal(response.body)
            if response.code == 302:
                raise Redirected(response.code, response.reason, _location(response))
            self.address = Address.fromString(response.headers.get("Address") or "")
            self.sessionId = response.headers.get("Session") or ""
            if presenceAnswersNone(response.headers.get("Presence-Answers")):
                self.presenceAnswers = "none"
            return self.address

        return self.options().addCallback(chosen)

    def publish(self, state: PresenceState | str, note: str = "", expires: float | None = None, refresh: bool = True) -> Deferred[int]:
        """
        Publish presence.

        @param refresh: Re-publish the same presence at 80% of the granted
            lease, for as long as the connection lasts (needs a clock).
        @return: Fires with the granted lease in seconds.
        """
        state = _presenceState(state)
        headers = [("Presence", PRESENCE[state])]
        if note:
            headers.append(("Note", note))
        if expires is not None:
            headers.append(("Expires", str(expires)))
        self._presence = (state, note, expires)

        def granted(response: Response) -> int:
            lease = int(response.headers.get("Expires") or "0")
            if self._refresh is not None and self._refresh.active():
                self._refresh.cancel()
            self._refresh = None
            if refresh and self.clock is not None and lease > 0 and state is not PresenceState.OFFLINE:
                self._refresh = self.clock.callLater(lease * 0.8, self._republish)
            return lease

        return self.call("PUBLISH", "*", headers).addCallback(granted)

    def _republish(self) -> None:
        self._refresh = None
        if self._presence is not None:
            state, note, expires = self._presence
            self.publish(state, note, expires).addErrback(lambda f: self.log.failure("Refreshing presence", f))

    def sendMessage(self, to: Address | str, body: str, contentType: str = "text/plain", messageId: str | None = None) -> Deferred[str]:
        """
        Send a message.

        @return: Fires with the message id once delivered; fails with a
            L{DeliveryError} (L{imgateway.core.errors.UserOffline}, ...).
        """
        headers = [("Content-Type", f"{contentType}; charset=utf-8")]
        if messageId:
            headers.append(("Message-ID", messageId))
        return self.call("MESSAGE", _uri("im", to), headers, body.encode("utf-8")).addCallback(
            lambda r: r.headers.get("Message-ID") or messageId or ""
        )

    def subscribe(self, to: Address | str, name: str = "") -> Deferred[bool]:
        """
        Add a contact and ask to see its presence.

        @return: Fires with C{True} if already authorised, C{False} while the
            request is pending.
        """
        headers = [("Name", name)] if name else []
        return self.call("SUBSCRIBE", _uri("pres", to), headers).addCallback(lambda r: r.code == 200)

    def unsubscribe(self, to: Address | str) -> Deferred[None]:
        """
        Remove a contact and stop watching it.
        """
        return self.call("UNSUBSCRIBE", _uri("pres", to)).addCallback(lambda _: None)

    def authorise(self, watcher: Address | str, allow: bool = True) -> Deferred[None]:
        """
        Allow (or deny) a watcher.
        """
        return self.call("AUTHORISE", _uri("pres", watcher), [("Decision", "allow" if allow else "deny")]).addCallback(
            lambda _: None
        )

    def contacts(self) -> Deferred[dict[str, Any]]:
        """
        @return: C{{"contacts": [...], "requests": [...]}} (see the spec).
        """
        return self.call("CONTACTS").addCallback(_jsonBody)

    def accessLists(self) -> Deferred[dict[str, list[str]]]:
        """
        @return: C{{"allow": [...], "block": [...]}}.
        """
        return self.call("ACCESS").addCallback(_jsonBody)

    def setAccess(self, entry: str, accessList: str) -> Deferred[None]:
        """
        Put an address or domain on the C{allow} or C{block} list, or take it
        off (C{none}).
        """
        target = _uri("im", entry) if "@" in entry else entry
        return self.call("ACCESS", target, [("List", accessList)]).addCallback(lambda _: None)

    def rules(self) -> Deferred[list[dict[str, Any]]]:
        """
        @return: The presence rules, in order, in their JSON form
            (docs/protocol.md 7.7).
        """
        return self.call("RULE").addCallback(_jsonBody).addCallback(lambda d: d["rules"])

    def addRule(self, rule: dict[str, object], position: int | None = None) -> Deferred[None]:
        """
        Add a presence rule (its JSON form, docs/protocol.md 7.7) at
        C{position} (1 for first), or last.
        """
        headers = [("Rule-Action", "add"), ("Content-Type", "application/json")]
        if position is not None:
            headers.append(("Position", str(position)))
        body = json.dumps(rule).encode("utf-8")
        return self.call("RULE", "*", headers, body).addCallback(lambda _: None)

    def removeRule(self, position: int) -> Deferred[None]:
        """
        Remove the presence rule at C{position} (1 for first).
        """
        return self.call("RULE", "*", [("Rule-Action", "remove"), ("Position", str(position))]).addCallback(lambda _: None)

    def replaceRules(self, rules: list[dict[str, object]]) -> Deferred[None]:
        """
        Replace every presence rule with C{rules}, in order.
        """
        headers = [("Rule-Action", "replace"), ("Content-Type", "application/json")]
        body = json.dumps({"rules": rules}).encode("utf-8")
        return self.call("RULE", "*", headers, body).addCallback(lambda _: None)

    def setRule(self, state: PresenceState | str, alternate: str | None) -> Deferred[None]:
        """
        Set (or remove, with C{None}) the rule for a presence state.
        """
        headers = [("Presence", PRESENCE[_presenceState(state)])]
        if alternate is not None:
            headers.append(("Alternate", alternate))
        return self.call("RULE", "*", headers).addCallback(lambda _: None)

    def ping(self) -> Deferred[None]:
        """
        Ping the server.
        """
        return self.call("PING").addCallback(lambda _: None)

    def bye(self) -> Deferred[str]:
        """
        Say goodbye and wait for the connection to close.
        """
        if self._closed.called:
            return succeed(self._byeReason)
        self.request("BYE").addErrback(lambda _: None)
        return self.whenClosed()

    # -- the server's requests ----------------------------------------------------------

    def _respond(self, request: Request, code: int = 200, reason: str = "OK") -> None:
        self.transport.write(serialise(Response(code, reason, Headers.of(("Seq", str(request.seq))))))  # type: ignore[union-attr]

    def _serverRequest(self, request: Request) -> None:
        method = request.method
        h = request.headers
        try:
            if method == "MESSAGE":
                self._respond(request)
                sender = Address.fromString(h.get("From") or "")
                contentType = (h.get("Content-Type") or "text/plain").split(";")[0].strip()
                self.observer.messageReceived(
                    sender,
                    request.body.decode("utf-8", "replace"),
                    h.get("Message-ID") or "",
                    contentType,
                    float(h.get("Timestamp") or "0"),
                )
            elif method == "NOTIFY":
                if request.seq != 0 or h.get("Event") != "presence":
                    # A presence NOTIFY with Seq 0 wants no answer
                    # (Presence-Answers: none): a response would answer no
                    # request, a fatal error (docs/protocol.md section 7.9).
                    self._respond(request)
                self._notify(request)
            elif method == "PING":
                self._respond(request)
            elif method == "BYE":
                self._byeReason = h.get("Reason") or ""
                self._respond(request)
                self.transport.loseConnection()  # type: ignore[union-attr]
            else:
                self._respond(request, 405, "Method Not Allowed")
        except Exception:
            self.log.failure("Handling {method} from the server", method=method)

    def _notify(self, request: Request) -> None:
        h = request.headers
        event = h.get("Event")
        address = Address.fromString(request.target)
        if event == "presence":
            state = presenceFromToken(h.get("Presence") or "offline")
            self.observer.presenceReceived(address, Presence(state, h.get("Note") or ""))
        elif event == "subscription":
            self.observer.subscriptionReceived(address, h.get("Subscription") or "")
        elif event == "contact":
            data = json.loads(request.body)
            if data.get("removed"):
                self.observer.contactRemoved(address)
            else:
                self.observer.contactUpdated(data)


def _presenceState(state: PresenceState | str) -> PresenceState:
    return state if isinstance(state, PresenceState) else presenceFromToken(state)


def _uri(scheme: str, address: Address | str) -> str:
    text = str(address)
    if ":" in text.split("@")[0]:
        return text
    return f"{scheme}:{text}"


def _check(response: Response) -> Response:
    if response.code < 300:
        return response
    if isDeliveryCode(response.code):
        raise deliveryErrorFor(response.code, response.reason, response.headers.get("Alternate"))
    raise ClientError(response.code, response.reason)


def _checkAuth(response: Response) -> Response:
    """
    L{_check} for an answer to C{AUTH}, which may also be C{302} (a redirect
    after a successful authentication, with the SASL additional data).
    """
    if response.code == 302:
        return response
    return _check(response)


def _location(response: Response) -> HostPort:
    try:
        return parseHostPort(response.headers.get("Location") or "")
    except ValueError as e:
        raise ClientError(response.code, f"redirected to a bad Location: {e}") from None


def _jsonBody(response: Response) -> Any:
    return json.loads(response.body)


class _ClientFactory(Factory):
    def __init__(self, observer: ClientObserver | None, clock: IReactorTime) -> None:
        self.observer = observer
        self.clock = clock

    def buildProtocol(self, addr: Any) -> NativeClientProtocol:
        p = NativeClientProtocol(self.observer, self.clock)
        p.factory = self
        return p


def connect(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint,
    username: str,
    password: str,
    observer: ClientObserver | None = None,
    label: str = "",
    presence: PresenceState | str | None = PresenceState.ONLINE,
    note: str = "",
    maxRedirects: int = DEFAULT_MAX_REDIRECTS,
    redirectTo: Callable[[HostPort], IStreamClientEndpoint] | None = None,
) -> Deferred[NativeClientProtocol]:
    """
    Connect, log in and (unless C{presence} is C{None}) publish presence.

    A router may answer the login with C{302} and the user's home server
    (C{docs/protocol.md} section 7.2.1): then the connection is closed and
    the same credentials are tried there, with the same TLS choice, up to
    C{maxRedirects} times.

    @param endpoint: A client endpoint or its string (C{"tcp:127.0.0.1:5300"},
        C{"tls:gw.corp.example:5301"}).
    @param maxRedirects: How many redirects to follow (0: none).
    @param redirectTo: Makes the endpoint to follow a redirect to; by
        default, when C{endpoint} is a string, that string with its host
        and port replaced (L{redirectedDescription}). With neither, a
        redirect fails the login with L{Redirected}.
    @return: Fires with the logged-in protocol; fails with
        L{TooManyRedirects} past C{maxRedirects}.
    """
    if isinstance(endpoint, str):
        description = endpoint
        ep: IStreamClientEndpoint = clientEndpointFromString(reactor, description)
        if redirectTo is None:
            redirectTo = redirector(reactor, description)
    else:
        ep = endpoint
    follow = redirectTo

    async def run() -> NativeClientProtocol:
        current = ep
        locations: list[HostPort] = []
        while True:
            proto = cast(NativeClientProtocol, await current.connect(_ClientFactory(observer, reactor)))
            try:
                await proto.login(username, password, label)
                if presence is not None:
                    await proto.publish(presence, note)
                return proto
            except Redirected as e:
                # This connection was never ours to use: its end is no news
                # to the observer.
                proto.observer = ClientObserver()
                if proto.transport is not None:
                    proto.transport.loseConnection()
                locations.append(e.location)
                if follow is None:
                    raise
                if len(locations) > maxRedirects:
                    raise TooManyRedirects(locations, maxRedirects) from None
                try:
                    current = follow(e.location)
                except Exception as problem:
                    raise ClientError(302, f"cannot follow the redirect to {e.location}: {problem}") from None
            except BaseException:
                if proto.transport is not None:
                    proto.transport.loseConnection()
                raise

    return Deferred.fromCoroutine(run())


def redirector(reactor: Any, description: str) -> Callable[[HostPort], IStreamClientEndpoint]:
    """
    What L{connect} takes as C{redirectTo} for an endpoint given as the
    string C{description}: that string with its host and port replaced
    (L{redirectedDescription}), its files checked again.
    """

    def redirectTo(location: HostPort) -> IStreamClientEndpoint:
        return clientEndpointFromString(reactor, redirectedDescription(description, location.host, location.port))

    return redirectTo


def goodbye(client: NativeClientProtocol, clock: IReactorTime, timeout: float = BYE_TIMEOUT) -> Deferred[str]:
    """
    Say BYE, and close the connection ourselves if the server has not closed
    it within C{timeout} seconds.

    @return: Fires with the server's BYE reason (or C{""}) once the
        connection is gone.
    """
    d = client.bye()

    def tooSlow() -> None:
        if client.transport is not None:
            client.transport.abortConnection()  # type: ignore[attr-defined]

    timer = clock.callLater(timeout, tooSlow)

    def closed(reason: str) -> str:
        if timer.active():
            timer.cancel()
        return reason

    return d.addCallback(closed)
