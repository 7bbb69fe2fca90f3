# -*- test-case-name: tests.test_xmpp_federation -*-
"""
The translator between core events and the stanzas of a remote XMPP
network, whatever the link that carries them: server-to-server federation
(C{s2s.py}) or an XEP-0114 component on the remote server (C{component.py}).

A link builds one L{XMPPRemoteRoute} with a L{JIDMapper} (how our users and
the remote users are written as JIDs on that network) and a C{send}
callable, registers it with the router for the remote domains, hands it
every inbound stanza of its authenticated streams
(L{XMPPRemoteRoute.stanzaReceived}) and tells it when the link goes down
and comes back (L{XMPPRemoteRoute.linkLost},
L{XMPPRemoteRoute.linkEstablished}).

Out (L{XMPPRemoteRoute.deliver}):
  - L{Message}: C{<message type='chat'>} asking for an XEP-0184 receipt.
    XMPP has no positive delivery acknowledgement, so the status is
    C{DELIVERED} once the stanza has been handed to the link and no error
    for it came back within C{statusWait} seconds; an error stanza in that
    window fails it with the L{DeliveryError} it stands for
    (L{mapping.deliveryErrorFor}: Prosody's C{service-unavailable} for an
    offline user is L{UserOffline}), and a receipt ends the wait early.
  - L{PresenceUpdate}: available or unavailable presence with C{<show/>}
    and C{<status/>} (L{mapping.presenceToXMPP}), from the user's bare JID.
  - L{PresenceProbe}: C{<presence type='probe'>}.
  - L{SubscriptionEvent}: presence of type C{subscribe}, C{subscribed},
    C{unsubscribe} or C{unsubscribed} (L{mapping.SUBSCRIPTION_TYPES}).

In (L{XMPPRemoteRoute.stanzaReceived}):
  - chat and normal messages with a body become L{Message}s; a failed
    delivery is answered with a message error (L{mapping.stanzaErrorFor}),
    a successful one with a receipt if the sender asked for one.
  - Presence comes per resource: the route keeps each remote contact's
    resources (per local watcher) and delivers their aggregate
    (L{imgateway.core.presence.aggregate}) as one L{PresenceUpdate} when it
    changes. Probes become L{PresenceProbe}s, subscription presence
    L{SubscriptionEvent}s; a refused subscription request (unknown user,
    blocked) is answered with C{unsubscribed} (RFC 6121 3.1.3).
  - IQs: XEP-0199 ping and XEP-0030 disco#info/#items are answered for our
    service JID; anything else, and every IQ to a user's JID, gets
    C{service-unavailable}, whether the user exists or not (RFC 6121
    8.5.1: no existence leak).
  - A message to a user who is unknown, offline or does not take the
    sender's messages gets C{service-unavailable}, the same error without
    a text in every case (L{mapping.ERRORS}).

Events from one remote contact to one local user are delivered in the order
their stanzas arrived (a C{subscribed} is stored before the presence that
follows it is delivered).

Limits (L{RouteLimits}) keep a hostile peer from growing memory without
bound: messages waiting for their status, remote contacts and resources
per contact, events queued per contact. No stanza raises out of
L{XMPPRemoteRoute.stanzaReceived}: malformed ones are answered with a
stanza error when they can be answered, dropped otherwise.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from zope.interface import implementer

from imgateway.adapters.xmpp.jid import InvalidJID, addressOf, jidOf, parseJID
from imgateway.adapters.xmpp.mapping import (
    SUBSCRIPTION_KINDS,
    addMark,
    markOf,
    SUBSCRIPTION_TYPES,
    deliveryErrorFor,
    presenceFromXMPP,
    fillPresence,
    stanzaErrorFor,
    stanzaErrorText,
)
from imgateway.adapters.xmpp.stream import xmlSafe
from imgateway.core.address import Address
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    NoRoute,
    NoSuchUser,
    NotAuthorised,
    RateLimited,
    ServerError,
    TooLarge,
)
from imgateway.core.events import (
    MAX_MESSAGE_ID_CHARS,
    Event,
    Message,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    SubscriptionKind,
    newMessageId,
)
from imgateway.core.presence import OFFLINE, Presence, aggregate
from imgateway.interfaces import IRoute

__all__ = [
    "COMPONENT_IDENTITY",
    "Identity",
    "JIDMapper",
    "NS_RECEIPTS",
    "NS_SERVER",
    "RouteLimits",
    "S2SJIDMapper",
    "SERVER_IDENTITY",
    "SendFunction",
    "XMPPRemoteRoute",
]

#: The stanza namespace of server-to-server streams.
NS_SERVER = "jabber:server"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"

#: Features of our service JID, in disco#info.
SERVICE_FEATURES = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING)

#: Features of our users' bare JIDs, in disco#info.

#: Longest error text taken from a peer's stanza error, in characters.
MAX_ERROR_TEXT = 200

#: What a link gives the route to send a stanza: it fires once the stanza
#: is handed to the connection, or fails (with a L{DeliveryError}, e.g.
#: L{NoRoute} while the link is down).
SendFunction = Callable[[domish.Element], "Deferred[None]"]


class JIDMapper(Protocol):
    """
    How addresses are written as JIDs on one remote XMPP network, and back.

    A local address is one of ours (C{alice@corp.example}); a remote address
    is a user of the remote network (C{romeo@xmpp.example}). The methods
    raise L{InvalidJID} for what cannot be mapped.

    @ivar domain: The domain our JIDs live on, on that network: the service
        JID that answers disco (C{corp.example} over s2s, the component's
        domain for a component).
    """

    domain: str

    def localJID(self, address: Address) -> JID:
        """
        @return: The bare JID of our user C{address} on the remote network.
        """

    def localAddress(self, jid: JID) -> Address:
        """
        @return: Our user that C{jid} (bare or full) names.
        @raise InvalidJID: If it names none of our users.
        """

    def remoteJID(self, address: Address) -> JID:
        """
        @return: The bare JID of the remote user C{address}.
        """

    def remoteAddress(self, jid: JID) -> Address:
        """
        @return: The address of the remote user C{jid} (bare or full).
        @raise InvalidJID: If C{jid} names no user (a server) or cannot be
            an address.
        """


class S2SJIDMapper:
    """
    The L{JIDMapper} of server-to-server federation: addresses are JIDs as
    they are, both ways (C{alice@corp.example} is the JID
    C{alice@corp.example}).
    """

    def __init__(self, domain: str) -> None:
        """
        @param domain: Our domain (the gateway's).
        """
        self.domain = domain

    def localJID(self, address: Address) -> JID:
        if address.domain != self.domain:
            raise InvalidJID(f"{address} is not a user of {self.domain}")
        return jidOf(address)

    def localAddress(self, jid: JID) -> Address:
        if jid.host != self.domain:
            raise InvalidJID(f"{jid.full()} is not a user of {self.domain}")
        return addressOf(jid)

    def remoteJID(self, address: Address) -> JID:
        return jidOf(address)

    def remoteAddress(self, jid: JID) -> Address:
        return addressOf(jid)


@frozen
class Identity:
    """
    An XEP-0030 identity.
    """

    category: str
    type: str
    name: str


#: The identity of our service JID over s2s.
SERVER_IDENTITY = Identity("server", "im", "imgateway")

#: The identity of our service JID as a component: a gateway to the native
#: network ("impp" is not in the XEP-0030 registry, none of its gateway
#: types fits).
COMPONENT_IDENTITY = Identity("gateway", "impp", "imgateway")


@frozen
class RouteLimits:
    """
    Bounds on what one route keeps for its peers.

    @ivar maxPending: Messages waiting for their status (an error or a
        receipt within C{statusWait}). When the table is full, the oldest
        entry is settled as C{DELIVERED} at once (which it would have been
        unless an error came back) to make room.
    @ivar maxContacts: (remote contact, local user) pairs whose remote
        resources are kept; past it, the least recently updated pair is
        forgotten (its next presence is delivered afresh). The same bound
        applies to the pairs remembered for re-probing after a link comes
        back.
    @ivar maxResources: Resources kept per remote contact; past it, the
        least recently updated resource is forgotten.
    @ivar maxQueued: Events from one remote contact to one local user that
        may wait for the one being delivered; past it, messages are
        answered with C{resource-constraint} and presence is coalesced.
    @ivar maxBodyChars: Longest inbound message body (the home server's
        C{max_message_chars}); longer ones are answered with
        C{policy-violation}.
    @ivar maxIdChars: Longest stanza id echoed in a reply; longer ones are
        answered without an id (and never become a message id).
    """

    maxPending: int = 10000
    maxContacts: int = 50000
    maxResources: int = 32
    maxQueued: int = 64
    maxBodyChars: int = 16384
    maxIdChars: int = 256


class _Refused(Exception):
    """
    An inbound stanza is refused with a stanza error.
    """

    def __init__(self, condition: str, kind: str = "cancel", text: str | None = None, content: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.kind = kind
        self.text = text
        self.content = content

    @classmethod
    def forError(cls, e: DeliveryError) -> _Refused:
        spec, content = stanzaErrorFor(e)
        return cls(spec.condition, spec.type, stanzaErrorText(e), content)


class _Drop(Exception):
    """
    An inbound stanza cannot be answered (no usable C{from}): drop it.
    """


class _Pending:
    """
    A message waiting for its status.
    """

    def __init__(self, remote: Address, result: Deferred[DeliveryStatus]) -> None:
        self.remote = remote
        self.result = result
        self.timer: IDelayedCall | None = None


_Key = tuple[Address, Address]  # (remote contact, local user)


class _LRU:
    """
    An ordered set of keys of bounded size: the oldest added key goes first.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[_Key, None] = OrderedDict()

    def add(self, key: _Key) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)

    def discard(self, key: _Key) -> None:
        self._keys.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[_Key]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


def _child(element: domish.Element, name: str, uri: str | None = None) -> domish.Element | None:
    """
    The first child element named C{name} in C{uri} (by default the
    namespace of C{element} itself: C{jabber:server} or
    C{jabber:component:accept}).
    """
    wanted = element.uri if uri is None else uri
    for child in element.elements():
        if child.name == name and child.uri == wanted:
            return child  # type: ignore[no-any-return]
    return None


def _validMessageId(text: str | None) -> str | None:
    if text and len(text) <= MAX_MESSAGE_ID_CHARS and text.isprintable() and " " not in text:
        return text
    return None


@implementer(IRoute)
class XMPPRemoteRoute:
    """
    The route of one remote XMPP network; see the module docstring.

    @ivar router: Where inbound events go (the gateway's router).
    @ivar mapper: The L{JIDMapper} of the network.
    @ivar namespace: The stanza namespace of the link's streams.
    @ivar domains: The remote domains served; stanzas from other domains
        are refused. C{None}: any domain (the link checks senders).
    @ivar statusWait: Seconds to wait for an error (or a receipt) before a
        message counts as delivered.
    """

    log = Logger()

    def __init__(
        self,
        router: IRoute,
        mapper: JIDMapper,
        send: SendFunction,
        clock: IReactorTime,
        namespace: str = NS_SERVER,
        domains: Iterable[str] | None = None,
        statusWait: float = 1.0,
        identity: Identity = SERVER_IDENTITY,
        limits: RouteLimits = RouteLimits(),
    ) -> None:
        """
        @param router: Where inbound events are delivered.
        @param send: Sends one stanza on the link (see L{SendFunction}).
        @param clock: Times the status waits.
        @param identity: The disco identity of the service JID
            (C{mapper.domain}).
        """
        self.router = router
        self.mapper = mapper
        self._sendStanza = send
        self.clock = clock
        self.namespace = namespace
        self.domains = frozenset(domains) if domains is not None else None
        self.statusWait = statusWait
        self.identity = identity
        self.limits = limits
        # (stanza id, local sender) -> message waiting for its status.
        self._pending: OrderedDict[tuple[str, Address], _Pending] = OrderedDict()
        # (remote, local) -> resource -> presence, least recently updated
        # pair first.
        self._resources: OrderedDict[_Key, OrderedDict[str, Presence]] = OrderedDict()
        # (remote, local) -> the aggregate the local user was last given.
        self._delivered: dict[_Key, Presence] = {}
        # Inbound events waiting, per (remote, local).
        self._lanes: dict[_Key, deque[tuple[Callable[[], Deferred[DeliveryStatus]], Deferred[DeliveryStatus]]]] = {}
        self._aggregateQueued: set[_Key] = set()
        # Pairs to re-probe when the link comes back: local watches remote,
        # and remote watches local.
        self._watching = _LRU(limits.maxContacts)
        self._watchers = _LRU(limits.maxContacts)
        self._stopped = False

    # -- out ----------------------------------------------------------------------

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Send C{event} to the remote network; see the module docstring for
        when the returned L{Deferred} fires.
        """
        if self._stopped:
            return fail(NoRoute(f"the XMPP route to {event.recipient.domain} is stopped"))
        try:
            sender = self.mapper.localJID(event.sender).userhost()
            recipient = self.mapper.remoteJID(event.recipient).userhost()
        except (InvalidJID, InvalidAddress, ValueError) as e:
            return fail(NoRoute(f"{event.sender} cannot reach {event.recipient} over XMPP: {e}"))
        if isinstance(event, Message):
            return self._sendMessage(event, sender, recipient)
        stanza = self._element("presence")
        stanza["from"] = sender
        stanza["to"] = recipient
        key = (event.recipient, event.sender)
        if isinstance(event, PresenceUpdate):
            fillPresence(stanza, event.presence)
            self._watchers.add(key)
        elif isinstance(event, PresenceProbe):
            stanza["type"] = "probe"
            self._watching.add(key)
            # The answer is delivered even if it says what we said last:
            # the user may have forgotten it (a new session).
            self._delivered.pop(key, None)
        else:
            stanza["type"] = SUBSCRIPTION_TYPES[event.kind]
            if event.kind is SubscriptionKind.UNSUBSCRIBE:
                self._watching.discard(key)
            elif event.kind is SubscriptionKind.AUTHORISE:
                self._watchers.add(key)
            elif event.kind is SubscriptionKind.REFUSE:
                self._watchers.discard(key)
        return self._send(stanza).addCallback(lambda _: DeliveryStatus.DELIVERED)

    def _sendMessage(self, message: Message, sender: str, recipient: str) -> Deferred[DeliveryStatus]:
        stanzaId = message.messageId
        key = (stanzaId, message.sender)
        if key in self._pending:
            stanzaId = newMessageId()
            key = (stanzaId, message.sender)
        stanza = self._element("message")
        stanza["from"] = sender
        stanza["to"] = recipient
        stanza["type"] = "chat"
        stanza["id"] = xmlSafe(stanzaId)
        stanza.addElement("body", content=xmlSafe(message.body))
        stanza.addElement((NS_RECEIPTS, "request"))
        addMark(stanza, message.mark)

        def cancel(d: Deferred[DeliveryStatus]) -> None:
            entry = self._pending.get(key)
            if entry is not None and entry.result is d:
                del self._pending[key]
                if entry.timer is not None and entry.timer.active():
                    entry.timer.cancel()

        result: Deferred[DeliveryStatus] = Deferred(cancel)
        entry = _Pending(message.recipient, result)
        # Registered before sending, so that an error that comes back
        # before the link says "sent" is not missed.
        self._pending[key] = entry
        while len(self._pending) > self.limits.maxPending:
            oldest = next(iter(self._pending))
            self._settle(oldest, DeliveryStatus.DELIVERED)

        def sent(_: None) -> None:
            if self._pending.get(key) is entry and not result.called:
                entry.timer = self.clock.callLater(self.statusWait, self._settle, key, DeliveryStatus.DELIVERED)

        def notSent(f: Failure) -> None:
            if self._pending.get(key) is entry:
                del self._pending[key]
            if not result.called:
                result.errback(f)

        self._send(stanza).addCallbacks(sent, notSent)
        return result

    def _settle(self, key: tuple[str, Address], outcome: DeliveryStatus | DeliveryError) -> None:
        """
        Give a waiting message its status.
        """
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        if entry.result.called:
            return
        if isinstance(outcome, DeliveryError):
            entry.result.errback(Failure(outcome))
        else:
            entry.result.callback(outcome)

    def _send(self, stanza: domish.Element) -> Deferred[None]:
        """
        Hand a stanza to the link. Fails with a L{DeliveryError}: the
        link's, or L{ServerError} for anything else (logged).
        """

        def failed(f: Failure) -> Failure:
            if f.check(DeliveryError):
                return f
            self.log.failure("Sending a {name} stanza to {to}", f, name=stanza.name, to=stanza.getAttribute("to"))
            return Failure(ServerError("the XMPP link failed to send"))

        d: Deferred[None] = maybeDeferred(self._sendStanza, stanza)
        return d.addErrback(failed)

    def _fire(self, stanza: domish.Element) -> None:
        """
        Send a stanza whose outcome nobody waits for (answers, errors).
        """

        def failed(f: Failure) -> None:
            self.log.debug("Could not send {name} to {to}: {error}", name=stanza.name, to=stanza.getAttribute("to"), error=f.value)

        self._send(stanza).addErrback(failed)

    def _element(self, name: str) -> domish.Element:
        return domish.Element((self.namespace, name))

    # -- in -----------------------------------------------------------------------

    def stanzaReceived(self, stanza: domish.Element) -> None:
        """
        Handle a stanza from the remote network. Never raises.

        The link has authenticated the stream it came on, and checked that
        its C{from} is in a domain the stream is authenticated for (s2s);
        a component's server is trusted to stamp C{from} itself, and
        L{domains} limits whom it may speak for.
        """
        try:
            name = stanza.name
            if name == "message":
                self._messageReceived(stanza)
            elif name == "presence":
                self._presenceReceived(stanza)
            elif name == "iq":
                self._iqReceived(stanza)
            else:
                self.log.debug("Ignoring a {name} element from the remote network", name=name)
        except _Drop as e:
            self.log.debug("Dropping a {name} stanza: {why}", name=stanza.name, why=str(e))
        except _Refused as refusal:
            if stanza.name != "presence":
                self._replyError(stanza, refusal)
        except Exception:
            self.log.failure("Handling a {name} stanza from {sender}", name=stanza.name, sender=str(stanza.getAttribute("from"))[:100])
            try:
                if stanza.name in ("message", "iq"):
                    self._replyError(stanza, _Refused("internal-server-error"))
            except Exception:
                self.log.failure("Answering a stanza that could not be handled")

    def _from(self, stanza: domish.Element) -> JID:
        text = stanza.getAttribute("from")
        if not text:
            raise _Drop("no 'from'")
        try:
            return parseJID(text)
        except InvalidJID as e:
            raise _Drop(f"malformed 'from': {e}") from None

    def _sender(self, stanza: domish.Element) -> tuple[JID, Address]:
        """
        The sender of a stanza that carries an event.

        @raise _Drop: If it has no usable C{from}.
        @raise _Refused: If its sender may not send us events.
        """
        jid = self._from(stanza)
        if self.domains is not None and jid.host not in self.domains:
            raise _Refused("service-unavailable", "cancel", f"this gateway does not serve {jid.host}")
        try:
            return jid, self.mapper.remoteAddress(jid)
        except InvalidJID as e:
            raise _Refused("service-unavailable", "cancel", str(e)) from None

    def _recipient(self, stanza: domish.Element) -> Address:
        """
        Our user a stanza is for.

        @raise _Refused: If it names none.
        """
        text = stanza.getAttribute("to")
        if not text:
            raise _Refused("jid-malformed", "modify", "no 'to'")
        try:
            jid = parseJID(text)
        except InvalidJID as e:
            raise _Refused("jid-malformed", "modify", str(e)) from None
        try:
            return self.mapper.localAddress(jid)
        except InvalidJID:
            raise _Refused("service-unavailable", "cancel") from None

    def _replyError(self, stanza: domish.Element, refusal: _Refused) -> None:
        """
        Answer a stanza with a stanza error (never an error with an error,
        nor a stanza without a valid C{from}).
        """
        if stanza.getAttribute("type") == "error":
            return
        try:
            to = self._from(stanza)
        except _Drop:
            return
        reply = self._element(stanza.name)
        reply["type"] = "error"
        reply["to"] = to.full()
        reply["from"] = self._ourJID(stanza)
        stanzaId = stanza.getAttribute("id")
        if stanzaId and len(stanzaId) <= self.limits.maxIdChars:
            reply["id"] = stanzaId
        e = error.StanzaError(refusal.condition, refusal.kind, xmlSafe(refusal.text) if refusal.text else None)
        element = e.getElement()
        if refusal.content:
            for c in element.elements(NS_STANZAS, refusal.condition):
                c.addContent(xmlSafe(refusal.content))
        reply.addChild(element)
        self._fire(reply)

    def _ourJID(self, stanza: domish.Element) -> str:
        """
        The C{from} of a reply to C{stanza}: its C{to} if that is valid,
        else our service JID.
        """
        text = stanza.getAttribute("to")
        if text:
            try:
                return str(parseJID(text).full())
            except InvalidJID:
                pass
        return self.mapper.domain

    # -- messages --------------------------------------------------------------------

    def _messageReceived(self, stanza: domish.Element) -> None:
        kind = stanza.getAttribute("type") or "normal"
        if kind == "error":
            self._messageErrorReceived(stanza)
            return
        try:
            jid, sender = self._sender(stanza)
            recipient = self._recipient(stanza)
        except _Refused as refusal:
            self._replyError(stanza, refusal)
            return
        received = _child(stanza, "received", NS_RECEIPTS)
        if received is not None:
            self._receiptReceived(received.getAttribute("id"), recipient, sender)
        body = _child(stanza, "body")
        if body is None or kind == "headline":
            return  # receipts, chat states, headlines: nothing to deliver
        if kind == "groupchat":
            self._replyError(stanza, _Refused("service-unavailable", "cancel", "group chat is not offered here"))
            return
        text = str(body)
        if len(text) > self.limits.maxBodyChars:
            self._replyError(
                stanza, _Refused.forError(TooLarge(f"message longer than {self.limits.maxBodyChars} characters"))
            )
            return
        stanzaId = stanza.getAttribute("id")
        message = Message(
            sender=sender,
            recipient=recipient,
            body=text,
            messageId=_validMessageId(stanzaId) or newMessageId(),
            timestamp=self.clock.seconds(),
            mark=markOf(stanza),
        )
        wantsReceipt = (
            _child(stanza, "request", NS_RECEIPTS) is not None
            and stanzaId is not None
            and len(stanzaId) <= self.limits.maxIdChars
        )

        def delivered(status: DeliveryStatus) -> None:
            if wantsReceipt:
                receipt = self._element("message")
                receipt["from"] = self._ourJID(stanza)
                receipt["to"] = jid.full()
                receipt["id"] = newMessageId()
                receipt.addElement((NS_RECEIPTS, "received"))["id"] = stanzaId
                self._fire(receipt)

        def failed(f: Failure) -> None:
            if f.check(DeliveryError):
                self._replyError(stanza, _Refused.forError(f.value))  # type: ignore[arg-type]
            else:
                self.log.failure("Delivering a message from {sender} to {recipient}", f, sender=sender, recipient=recipient)
                self._replyError(stanza, _Refused("internal-server-error"))

        self._inOrder((sender, recipient), lambda: self.router.deliver(message)).addCallbacks(delivered, failed)

    def _messageErrorReceived(self, stanza: domish.Element) -> None:
        """
        An error for a message we sent: fail its delivery if it still
        waits for its status.
        """
        stanzaId = stanza.getAttribute("id")
        text = stanza.getAttribute("to")
        if not stanzaId or not text:
            return
        try:
            local = self.mapper.localAddress(parseJID(text))
            sender = self._from(stanza)
        except (InvalidJID, _Drop):
            return
        key = (stanzaId, local)
        entry = self._pending.get(key)
        if entry is None:
            self.log.debug("An error for message {id} arrived after its status was given", id=stanzaId[:100])
            return
        if sender.user is not None:
            try:
                if self.mapper.remoteAddress(sender) != entry.remote:
                    return
            except InvalidJID:
                return
        elif sender.host != entry.remote.domain:
            return
        condition, errorText, content = _parseError(stanza)
        self._settle(key, deliveryErrorFor(condition, errorText, content))

    def _receiptReceived(self, stanzaId: str | None, local: Address, remote: Address) -> None:
        if not stanzaId:
            return
        key = (stanzaId, local)
        entry = self._pending.get(key)
        if entry is not None and entry.remote == remote:
            self._settle(key, DeliveryStatus.DELIVERED)

    # -- presence --------------------------------------------------------------------

    def _presenceReceived(self, stanza: domish.Element) -> None:
        kind = stanza.getAttribute("type")
        if kind == "error":
            self.log.debug("Presence error from {sender}: {error}", sender=str(stanza.getAttribute("from"))[:100], error=_parseError(stanza)[0])
            return
        if kind not in (None, "unavailable", "probe") and kind not in SUBSCRIPTION_KINDS:
            raise _Drop(f"unknown presence type {str(kind)[:40]!r}")
        try:
            jid, sender = self._sender(stanza)
            recipient = self._recipient(stanza)
        except _Refused as refusal:
            if kind == "subscribe":
                self._unsubscribed(stanza)
            raise _Drop(f"refused: {refusal.condition}") from None
        key = (sender, recipient)
        if kind is None or kind == "unavailable":
            resource = jid.resource or ""
            if kind is None:
                show = _child(stanza, "show")
                status = _child(stanza, "status")
                presence = presenceFromXMPP(
                    True, str(show).strip() if show is not None else None, str(status) if status is not None else ""
                )
                self._setResource(key, resource, presence)
            else:
                self._dropResource(key, resource)
            self._queueAggregate(key)
        elif kind == "probe":
            d = self._inOrder(key, lambda: self.router.deliver(PresenceProbe(sender, recipient)))
            d.addErrback(self._probeFailed, stanza, sender, recipient)
        else:
            event = SubscriptionEvent(SUBSCRIPTION_KINDS[kind], sender, recipient)
            if event.kind is SubscriptionKind.AUTHORISE:
                self._watching.add(key)
            elif event.kind is SubscriptionKind.REFUSE:
                self._watching.discard(key)
                self._forget(key)
            elif event.kind is SubscriptionKind.UNSUBSCRIBE:
                self._watchers.discard(key)
            d = self._inOrder(key, lambda: self.router.deliver(event))
            d.addErrback(self._subscriptionFailed, stanza, event)

    def _unsubscribed(self, stanza: domish.Element) -> None:
        """
        Answer a subscription request (or a probe) with C{unsubscribed}
        (RFC 6121 3.1.3, 4.3.2).
        """
        try:
            to = self._from(stanza)
        except _Drop:
            return
        reply = self._element("presence")
        reply["type"] = "unsubscribed"
        reply["to"] = to.userhost()
        ours = self._ourJID(stanza)
        reply["from"] = ours.split("/", 1)[0]
        self._fire(reply)

    def _probeFailed(self, f: Failure, stanza: domish.Element, sender: Address, recipient: Address) -> None:
        if f.check(NotAuthorised, NoSuchUser):
            self._unsubscribed(stanza)
        elif f.check(DeliveryError):
            self.log.debug("Probe from {sender} to {recipient} refused: {error!r}", sender=sender, recipient=recipient, error=f.value)
        else:
            self.log.failure("Delivering a probe from {sender} to {recipient}", f, sender=sender, recipient=recipient)

    def _subscriptionFailed(self, f: Failure, stanza: domish.Element, event: SubscriptionEvent) -> None:
        if f.check(DeliveryError):
            self.log.debug("{event!r} refused: {error!r}", event=event, error=f.value)
            if event.kind is SubscriptionKind.SUBSCRIBE:
                # Unknown user, blocked...: refused (RFC 6121 3.1.3).
                self._unsubscribed(stanza)
        else:
            self.log.failure("Delivering {event!r}", f, event=event)

    def _setResource(self, key: _Key, resource: str, presence: Presence) -> None:
        resources = self._resources.get(key)
        if resources is None:
            resources = self._resources[key] = OrderedDict()
        self._resources.move_to_end(key)
        resources[resource] = presence
        resources.move_to_end(resource)
        while len(resources) > self.limits.maxResources:
            resources.popitem(last=False)
        while len(self._resources) > self.limits.maxContacts:
            oldest, _ = self._resources.popitem(last=False)
            self._delivered.pop(oldest, None)
            self.log.warn("Forgetting the presence of {remote} for {local}: more than {n} remote contacts", remote=oldest[0], local=oldest[1], n=self.limits.maxContacts)

    def _dropResource(self, key: _Key, resource: str) -> None:
        resources = self._resources.get(key)
        if resources is None:
            return
        if resource:
            resources.pop(resource, None)
        else:
            # Unavailable from the bare JID: the contact is gone.
            resources.clear()
        if not resources:
            del self._resources[key]

    def _forget(self, key: _Key) -> None:
        self._resources.pop(key, None)
        self._delivered.pop(key, None)

    def _queueAggregate(self, key: _Key) -> None:
        """
        Deliver the contact's aggregate presence after what is queued for
        the pair (once, however many presences arrive meanwhile).
        """
        if key in self._aggregateQueued:
            return
        self._aggregateQueued.add(key)

        def run() -> Deferred[DeliveryStatus]:
            self._aggregateQueued.discard(key)
            return self._deliverAggregate(key)

        def failed(f: Failure) -> None:
            if not f.check(DeliveryError):
                self.log.failure("Delivering the presence of {remote} to {local}", f, remote=key[0], local=key[1])

        self._inOrder(key, run, bounded=False).addErrback(failed)

    def _deliverAggregate(self, key: _Key) -> Deferred[DeliveryStatus]:
        resources = self._resources.get(key)
        current = aggregate(resources.values()) if resources else OFFLINE
        if current == self._delivered.get(key, OFFLINE):
            return succeed(DeliveryStatus.DELIVERED)
        if current == OFFLINE:
            self._delivered.pop(key, None)
        else:
            self._delivered[key] = current
        remote, local = key

        def failed(f: Failure) -> Failure:
            # Not delivered (the user is offline, or does not watch the
            # contact): forget the contact, a probe will bring it back.
            if f.check(DeliveryError):
                self._forget(key)
            else:
                self._delivered.pop(key, None)
            return f

        return self.router.deliver(PresenceUpdate(remote, local, current)).addErrback(failed)

    # -- ordering -------------------------------------------------------------------

    def _inOrder(
        self, key: _Key, thunk: Callable[[], Deferred[DeliveryStatus]], bounded: bool = True
    ) -> Deferred[DeliveryStatus]:
        """
        Run C{thunk} once every event queued before it for C{key} has been
        delivered (or refused).

        @raise _Refused: (as a failure of the L{Deferred}, a
            L{RateLimited}) if C{bounded} and too many events wait.
        """
        lane = self._lanes.get(key)
        result: Deferred[DeliveryStatus] = Deferred()
        if lane is not None:
            if bounded and len(lane) >= self.limits.maxQueued:
                return fail(RateLimited(f"too many events from {key[0]} to {key[1]} waiting"))
            lane.append((thunk, result))
            return result
        self._lanes[key] = deque()
        self._run(key, thunk, result)
        return result

    def _run(self, key: _Key, thunk: Callable[[], Deferred[DeliveryStatus]], result: Deferred[DeliveryStatus]) -> None:
        def done(outcome: DeliveryStatus | Failure) -> None:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            lane = self._lanes.get(key)
            if lane:
                nextThunk, nextResult = lane.popleft()
                self._run(key, nextThunk, nextResult)
            else:
                self._lanes.pop(key, None)

        d: Deferred[DeliveryStatus] = maybeDeferred(thunk)
        d.addBoth(done)

    # -- iq ---------------------------------------------------------------------------

    def _iqReceived(self, iq: domish.Element) -> None:
        kind = iq.getAttribute("type")
        if kind in ("result", "error"):
            return
        stanzaId = iq.getAttribute("id")
        if not stanzaId:
            raise _Drop("an IQ without an id")
        sender = self._from(iq)
        if kind not in ("get", "set"):
            self._replyError(iq, _Refused("bad-request", "modify"))
            return
        text = iq.getAttribute("to")
        try:
            to = parseJID(text) if text else None
        except InvalidJID as e:
            self._replyError(iq, _Refused("jid-malformed", "modify", str(e)))
            return
        child = iq.firstChildElement()
        if child is None:
            self._replyError(iq, _Refused("bad-request", "modify"))
            return
        what = (kind, child.uri, child.name)
        if to is None or (to.user is None and to.resource is None and to.host == self.mapper.domain):
            self._answerIQ(iq, sender, what)
            return
        # An IQ to a user (bare or full JID) is answered as one to an
        # unknown user would be, whether the account exists or not: the
        # answer must not tell a stranger (RFC 6121 8.5.1; Prosody answers
        # a user's disco only to subscribed contacts, which this route
        # cannot know).
        self._replyError(iq, _Refused("service-unavailable"))

    def _answerIQ(self, iq: domish.Element, sender: JID, what: tuple[str, str, str]) -> None:
        if what == ("get", NS_PING, "ping"):
            self._fire(self._result(iq, sender))
        elif what == ("get", NS_DISCO_INFO, "query"):
            reply = self._result(iq, sender)
            query = reply.addElement((NS_DISCO_INFO, "query"))
            identity = query.addElement("identity")
            i = self.identity
            identity["category"], identity["type"], identity["name"] = i.category, i.type, i.name
            for feature in SERVICE_FEATURES:
                query.addElement("feature")["var"] = feature
            self._fire(reply)
        elif what == ("get", NS_DISCO_ITEMS, "query"):
            reply = self._result(iq, sender)
            reply.addElement((NS_DISCO_ITEMS, "query"))
            self._fire(reply)
        else:
            self._replyError(iq, _Refused("service-unavailable"))

    def _result(self, iq: domish.Element, sender: JID) -> domish.Element:
        reply = self._element("iq")
        reply["type"] = "result"
        reply["to"] = sender.full()
        reply["from"] = self._ourJID(iq)
        stanzaId = iq.getAttribute("id")
        if len(stanzaId) <= self.limits.maxIdChars:
            reply["id"] = stanzaId
        return reply

    # -- the link ---------------------------------------------------------------------

    def _affected(self, domain: str | None) -> Callable[[_Key], bool]:
        return lambda key: domain is None or key[0].domain == domain

    def linkLost(self, domain: str | None = None) -> None:
        """
        The link (to C{domain}, or to every domain) is down: what the
        remote contacts' presence was is no longer known, so every local
        user that sees one of them available is told it is offline.
        """
        affected = self._affected(domain)
        for key in [k for k in self._delivered if affected(k)]:
            self._forget(key)
            self._inOrder(key, self._offline(key), bounded=False).addErrback(lambda f: None)
        for key in [k for k in self._resources if affected(k)]:
            self._forget(key)

    def _offline(self, key: _Key) -> Callable[[], Deferred[DeliveryStatus]]:
        remote, local = key
        return lambda: self.router.deliver(PresenceUpdate(remote, local, OFFLINE))

    def linkEstablished(self, domain: str | None = None) -> None:
        """
        The link (to C{domain}, or to every domain) is up again: ask the
        remote network for the presence of the contacts our users watch,
        and send our users' presence to the remote contacts that watch them
        (by probing the home server on their behalf).
        """
        affected = self._affected(domain)
        for key in self._watching:
            if affected(key):
                remote, local = key
                self.deliver(PresenceProbe(local, remote)).addErrback(lambda f: None)
        for key in self._watchers:
            if affected(key):
                remote, local = key
                self.router.deliver(PresenceProbe(remote, local)).addErrback(lambda f: None)

    def stop(self) -> None:
        """
        The route is going away: every message still waiting for its status
        is settled as C{DELIVERED} now, so that no timer is left behind.
        """
        self._stopped = True
        for key in list(self._pending):
            self._settle(key, DeliveryStatus.DELIVERED)


def _parseError(stanza: domish.Element) -> tuple[str, str, str | None]:
    """
    @return: The condition, text and condition content of a stanza error
        (C{undefined-condition} if there is none).
    """
    condition, text, content = "undefined-condition", "", None
    for element in stanza.elements():
        if element.name != "error":
            continue
        for child in element.elements():
            if child.uri != NS_STANZAS:
                continue
            if child.name == "text":
                text = str(child)[:MAX_ERROR_TEXT]
            elif condition == "undefined-condition":
                condition = child.name
                content = str(child).strip()[:MAX_ERROR_TEXT] or None
        break
    return condition, text, content
