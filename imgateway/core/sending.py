# -*- test-case-name: tests.test_home,tests.test_proxy -*-
"""
A session's message on its way out, wherever the session is served: checked
as every session's message is (L{sessionMessage}) and handed to the
process's router with its outcome counted (L{sendRouted}). A home server's
sessions (L{imgateway.home.server.Session.sendMessageThen}) and a router's
proxied sessions (L{imgateway.router.proxy.RemoteSession}, for a message to
another user of the domain) send their messages so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgateway.config import HomeConfig
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryStatus, InvalidAddress, TooLarge
from imgateway.core.events import Event, Message, checkMessageId, newMessageId, newRoutingId, preCheckedMessage
from imgateway.interfaces import IMetrics, IRouter

__all__ = ["SentOutcome", "sendRouted", "sessionMessage"]

log = Logger()

T = TypeVar("T")


def sessionMessage(
    sender: Address,
    recipient: Address,
    body: str,
    contentType: str,
    messageId: str | None,
    config: HomeConfig,
    metrics: IMetrics,
    clock: IReactorTime,
) -> Message:
    """
    The message a session of C{sender} sends, checked as every session's
    message is, wherever the session is served (L{Session.sendMessageThen<imgateway.home.server.Session.sendMessageThen>},
    and a router's proxied sessions,
    L{RemoteSession.sendMessageThen<imgateway.router.proxy.RemoteSession.sendMessageThen>}):
    its text no longer than C{[home] max_message_chars} (a refusal counted
    in C{metrics}), its id a valid one, or a new one when none is given.

    @raise TooLarge: If the text is too long.
    @raise InvalidAddress: If the id is not a valid one.
    """
    limit = config.maxMessageChars
    if len(body) > limit:
        metrics.limitHit("max_message_chars")
        raise TooLarge(f"message longer than {limit} characters")
    if messageId:
        try:
            checkMessageId(messageId)
        except ValueError as e:
            raise InvalidAddress(str(e)) from None
    else:
        messageId = newMessageId()
    # What Message(...) checks is checked (the id): made without its
    # constructor's generic checks, as a link's messages are.
    return preCheckedMessage(sender, recipient, body, contentType, messageId, clock.seconds(), 0, newRoutingId(), None)


def sendRouted(
    router: IRouter,
    metrics: IMetrics,
    message: Message,
    answer: Callable[[DeliveryStatus | Failure, T, str | None], object] | None,
    token: T,
    sent: SentOutcome | None = None,
) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
    """
    Hand a session's message (L{sessionMessage}) to C{router}, its outcome
    counted in C{metrics}: at once where the router can (an
    L{IAtOnceRouter<imgateway.interfaces.IAtOnceRouter>}'s C{deliverThen},
    else its C{deliverAtOnce}, looked up by name: no interface test per
    message). One that the router hands a link at once has its outcome told
    by the link through the router's waiter (L{SentOutcome}, which counts
    it), which calls C{answer}, or without C{answer} fires a L{Deferred}
    with no callback on it: no chain of callbacks.

    @param answer: As L{Session.sendMessageThen<imgateway.home.server.Session.sendMessageThen>} takes it.
    @param sent: The waiter to give the router (a L{SentOutcome} of the
        caller's, for C{metrics}); a new L{SentOutcome} when C{None}.
    @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
        outcome, or C{None} when C{answer} will be called.
    @raise DeliveryError: If the message is refused at once; not counted
        (the caller counts it with its own refusals).
    """
    then = getattr(router, "deliverThen", None)
    outcome: DeliveryStatus | Deferred[DeliveryStatus] | None
    if then is None:
        atOnce: Callable[[Event], DeliveryStatus | Deferred[DeliveryStatus]] | None = getattr(router, "deliverAtOnce", None)
        outcome = router.deliver(message) if atOnce is None else atOnce(message)
    else:
        # A router that takes a waiter (Router.deliverThen): a message it
        # hands a link at once is counted and answered through it (by the
        # call, or one Deferred without it).
        if sent is None:
            sent = SentOutcome(metrics)
        outcome = then(message, sent)
        if outcome is None:
            if answer is not None and not sent.called:
                # answerWith, without its call.
                sent._answer = answer
                sent._token = token
                sent._messageId = message.messageId
                return None
            return sent.deferred()
    if type(outcome) is DeliveryStatus:
        # Delivered at once: counted without a callback.
        metrics.messageOutcome(outcome)
        return outcome
    return outcome.addBoth(metrics.messageOutcome)  # type: ignore[union-attr]


class SentOutcome:
    """
    What a router tells the outcome of a session's message that it hands
    a link at once (C{Router.deliverThen}, L{Session.sendMessageThen<imgateway.home.server.Session.sendMessageThen>}):
    counted in the metrics as the session's callback on a L{Deferred}
    counts it, then given to the session's caller: through its call
    (L{answerWith}), or to the one L{Deferred} the session returns (made
    when asked for; made fired when the outcome came first). An
    L{OutcomeWaiter<imgateway.router.link.OutcomeWaiter>}.
    """

    __slots__ = ("called", "_metrics", "_deferred", "_answer", "_token", "_messageId")

    _token: Any
    _messageId: str | None

    def __init__(self, metrics: IMetrics) -> None:
        self.called = False
        self._metrics = metrics
        self._deferred: Deferred[DeliveryStatus] | None = None
        self._answer: Callable[[DeliveryStatus | Failure, Any, str | None], object] | None = None

    def answerWith(self, answer: Callable[[DeliveryStatus | Failure, T, str | None], object], token: T, messageId: str | None) -> None:
        """
        Tell the outcome, when it comes, by calling C{answer} with it,
        C{token} and C{messageId}.
        """
        self._answer = answer
        self._token = token
        self._messageId = messageId

    def callback(self, result: Any) -> None:
        self.called = True
        self._metrics.messageOutcome(result)
        answer = self._answer
        if answer is not None:
            # _tell, without its call (the usual answer: delivered).
            try:
                answer(result, self._token, self._messageId)
            except Exception:
                log.failure("Answering a message sent over a link")
            return
        d = self._deferred
        if d is None:
            self._deferred = succeed(result)
        else:
            d.callback(result)

    def errback(self, failed: BaseException | Failure) -> None:
        self.called = True
        f = failed if isinstance(failed, Failure) else Failure(failed)
        self._metrics.messageOutcome(f)
        if self._answer is not None:
            self._tell(f)
            return
        d = self._deferred
        if d is None:
            self._deferred = fail(f)
        else:
            d.errback(f)

    def _tell(self, result: DeliveryStatus | Failure) -> None:
        try:
            self._answer(result, self._token, self._messageId)  # type: ignore[misc]
        except Exception:
            # Logged as a Deferred's callback's failure would be, not
            # raised into the link's reading.
            log.failure("Answering a message sent over a link")

    def deferred(self) -> Deferred[DeliveryStatus]:
        """
        @return: The L{Deferred} of the outcome, the same every time.
        """
        d = self._deferred
        if d is None:
            d = self._deferred = Deferred()
        return d
