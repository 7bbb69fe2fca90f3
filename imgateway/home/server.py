# -*- test-case-name: tests.test_home -*-
"""
The home server: its users' sessions, presence, contacts, watchers, access
lists and presence rules, and delivery of inbound events to them.

It knows no wire format. Faces open sessions on it for authenticated users
(through the gateway's portal); the router hands it every event for its
domain (L{HomeServer.deliver}); events for other users leave through the
router. A message from one of its sessions to a user with sessions here
is given to them in place, without the router, when the router routes
the domain here with nothing of its own between (L{HomeServer.routedDirectly}:
the domain's only home server).

Order: each user has a lane, a queue in which everything that concerns the
user runs one piece at a time, in the order it arrived: the requests of the
user's sessions (whatever their face) and the events that arrive for the
user (subscription requests and answers, presence, messages). A piece of
work never waits in its lane for another user's lane (that could deadlock
two users asking each other at once): a request that sends an event to
another user hands it to the router and lets its lane go on; when it needs
the answer, it waits outside its lane and then queues what remains.

State: each request's changes are written to the L{IHomeStore} together
(L{IHomeStore.apply}) before they are acted upon. For users with at least
one session, a L{_UserState} caches their rows, so delivering a message or
a presence update needs no storage read; only the user's own lane changes
it.

Other home servers: when the domain has several (a L{IHomeLocator} is
given), users of the domain homed on other servers are treated as users of
other domains are: their rows are in their own server's store, each server
writing only its own (L{HomeServer._shares}, asked of the directory before
the lane needs it); their presence is kept while a user is offline, and
expires with its lease. A user's presence goes to watchers on the other
servers with the lease it has left, renewed when a session renews it. An
event for a user the directory homes elsewhere now is answered
L{MovedTo}, for the sender's router to deliver again.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.config import HomeConfig
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.deadlines import Deadlines
from imgateway.core.errors import (
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    MovedTo,
    NoSuchUser,
    NotAuthorised,
    PendingRequestsFull,
    QuotaExceeded,
    ServerError,
    ServiceUnavailable,
    TooManySessions,
    UserBusy,
    UserOffline,
)
from imgateway.core.events import (
    Event,
    Message,
    MessageMark,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    SubscriptionKind,
)
from imgateway.core.presence import OFFLINE, Presence, PresenceState, aggregate
from imgateway.core.records import (
    ANY_STATE,
    MAX_DISPLAY_NAME_CHARS,
    AccessList,
    AuthorisationState,
    ContactRecord,
    ContactView,
    HomeChange,
    PresenceRule,
    PutContact,
    RemoveContact,
    SetAccess,
    RULE_STATES,
    RuleAction,
    RuleNetwork,
    SetAuthorisation,
    SetRules,
    Subscription,
    UserRecords,
    checkRule,
)
from imgateway.core.throttle import REFUSAL_LOG_INTERVAL
from imgateway.core.sending import sendRouted, sessionMessage
from imgateway.home._interning import internAddress, internContact
from imgateway.interfaces import (
    IAnsweringSession,
    IAtOnceSession,
    IDirectory,
    IDirectRoute,
    IHomeLocator,
    IHomeServer,
    IHomeStore,
    IMetrics,
    IRouter,
    ISession,
    ISessionClient,
)
from imgateway.status.nometrics import NO_METRICS

__all__ = ["MAX_LABEL_CHARS", "HomeServer", "HomeServerService", "Session", "answerNoAccount"]

#: The longest session label, in characters (an XMPP resource may be longer
#: on the wire; longer labels are cut).
MAX_LABEL_CHARS = 256

T = TypeVar("T")

_AUTHORISED = AuthorisationState.AUTHORISED
_OFFLINE_STATE = PresenceState.OFFLINE
_APPEAR_OFFLINE = PresenceState.APPEAR_OFFLINE
_PENDING = AuthorisationState.PENDING
_REFUSED = AuthorisationState.REFUSED
#: L{DeliveryStatus.DELIVERED}, for the message paths (L{HomeServer._give}):
#: a member looked up on its C{Enum} class goes through the class's
#: attribute hook (about 1,000 instructions under Python 3.11), a module
#: global does not.
_DELIVERED = DeliveryStatus.DELIVERED

#: The empty table a user's state holds until it has an entry (the access
#: list, the SUBSCRIBEs awaiting an answer): shared and read-only, so that
#: an idle user does not hold empty dictionaries of its own.
_NO_ENTRIES: Mapping[Any, Any] = MappingProxyType({})

#: The empty set of contacts whose presence came from another server, until
#: there is one (L{_UserState.markRemote}): shared, as L{_NO_ENTRIES}.
_NO_REMOTE: frozenset[Address] = frozenset()


def parseAccessEntry(entry: str) -> str:
    """
    Normalise an access-list entry: an address (C{bob@corp.example}, or an
    C{im:}/C{pres:} URI) or a whole domain (C{corp.example}).

    @raise InvalidAddress: If it is neither.
    """
    if "@" in entry:
        return str(Address.fromString(entry))
    return normaliseDomain(entry)


class _States(dict[Address, AuthorisationState]):
    """
    Authorisation states by the other party, with an index by domain (for
    domain entries of the access lists), made the first time it is asked
    for and kept up to date from then on: a user who never sets a domain
    entry does not pay for it (two sets of all the contacts' addresses,
    about 4 KiB for 20 contacts). Change it through L{put} and L{apply}
    only; the parties are interned (L{internAddress}).
    """

    __slots__ = ("_byDomain",)

    def __init__(self) -> None:
        super().__init__()
        self._byDomain: dict[str, set[Address]] | None = None

    def put(self, other: Address, state: AuthorisationState | None) -> None:
        byDomain = self._byDomain
        if state is not None:
            if other not in self:
                other = internAddress(other)
            self[other] = state
            if byDomain is not None:
                byDomain.setdefault(other.domain, set()).add(other)
        elif self.pop(other, None) is not None and byDomain is not None:
            others = byDomain[other.domain]
            others.discard(other)
            if not others:
                del byDomain[other.domain]

    def apply(self, other: Address, change: SetAuthorisation) -> None:
        if change.appliesTo(self.get(other)):
            self.put(other, change.state)

    def inDomain(self, domain: str) -> set[Address]:
        """
        @return: The parties of C{domain}, without a look at the others.
        """
        byDomain = self._byDomain
        if byDomain is None:
            byDomain = self._byDomain = {}
            for other in self:
                byDomain.setdefault(other.domain, set()).add(other)
        return set(byDomain.get(domain, ()))

    def of(self, entry: str) -> list[Address]:
        """
        @return: The parties an access-list entry (an address or a domain)
            names.
        """
        if "@" in entry:
            other = Address.fromString(entry)
            return [other] if other in self else []
        return sorted(self.inDomain(entry))


class _UserState:
    """
    The cached rows of one user with sessions.

    @ivar watchers: Who asked to watch this user, and the answer (the
        authorisation rows whose target is the user).
    @ivar watching: Whom this user asked to watch, and their answer (the
        rows whose watcher is the user).
    @ivar access: The access lists' entries: a shared read-only empty
        table while there are none (changed by L{applied} only).
    @ivar rules: The presence rules, in order (a tuple: replaced, never
        changed in place).
    @ivar remote: The contacts whose presence came from another server: a
        shared empty set until there is one (added to by L{markRemote}).
    @ivar awaiting: Target to one flag per SUBSCRIBE sent to it whose
        answer is still to be read: a shared read-only empty table while
        there are none (added to by L{awaitAnswer}, taken from by
        L{_forget}).
    """

    # No instance dict: one per user with sessions.
    __slots__ = (
        "address", "contacts", "watchers", "watching", "access", "rules", "repliedTo", "contactPresence",
        "remote", "contactLeases", "announcedUntil", "sessions", "announced", "ownAnnounced", "awaiting",
    )  # fmt: skip

    def __init__(
        self,
        address: Address,
        contacts: list[ContactRecord],
        authorisations: list[tuple[Address, Address, AuthorisationState]],
        access: dict[str, AccessList],
        rules: list[PresenceRule],
    ) -> None:
        self.address = address = internAddress(address)
        # The rows' addresses are interned: one object per address for
        # all the users cached (see _interning).
        self.contacts = {c.address: c for c in map(internContact, contacts)}
        self.watchers = _States()
        self.watching = _States()
        for target, watcher, state in authorisations:
            if target == address:
                self.watchers.put(watcher, state)
            if watcher == address:
                self.watching.put(target, state)
        self.access: Mapping[str, AccessList] = access if access else _NO_ENTRIES
        self.rules: tuple[PresenceRule, ...] = tuple(rules)
        # When each sender was last auto-replied to (auto_reply_period).
        self.repliedTo: dict[Address, float] = {}
        # What the user has been told of its contacts' presence.
        self.contactPresence: dict[Address, Presence] = {}
        # The contacts whose presence came from another server (kept
        # while the user has no session), and the end of the lease of
        # those whose presence has one.
        self.remote: set[Address] | frozenset[Address] = _NO_REMOTE
        self.contactLeases: dict[Address, IDelayedCall] = {}
        # Until when watchers on the other servers of the domain were
        # told the user's presence holds.
        self.announcedUntil = 0.0
        self.sessions: list[Session] = []
        # The presence watchers were last told.
        self.announced: Presence = OFFLINE
        # The presence the user's own sessions were last told.
        self.ownAnnounced: Presence = OFFLINE
        # Target -> one flag per SUBSCRIBE sent to it whose answer is still
        # to be read: set when the target's authorisation arrives.
        self.awaiting: Mapping[Address, list[list[bool]]] = _NO_ENTRIES

    def markRemote(self, contact: Address) -> None:
        """
        C{contact}'s presence came from another server (see L{remote}).
        """
        remote = self.remote
        if type(remote) is not set:
            remote = self.remote = set()
        remote.add(contact)

    def awaitAnswer(self, target: Address, answer: list[bool]) -> None:
        """
        Remember C{answer}, the flag of a SUBSCRIBE sent to C{target}, until
        the target's authorisation arrives (see L{awaiting}).
        """
        awaiting = self.awaiting
        if not isinstance(awaiting, dict):
            awaiting = self.awaiting = {}
        awaiting.setdefault(target, []).append(answer)

    def accessOf(self, other: Address) -> AccessList:
        """
        @return: The list that holds C{other}, by address or by domain
            (an address entry wins over a domain entry).
        """
        access = self.access
        if not access:
            # Most users list no one: no address text made for nothing
            # (a presence fan-out asks once per watcher).
            return AccessList.NONE
        found = access.get(str(other))
        if found is None:
            found = access.get(other.domain, AccessList.NONE)
        return found

    def sees(self, watcher: Address) -> bool:
        """
        @return: Whether C{watcher} may see this user's presence: authorised
            and not blocked.
        """
        return self.watchers.get(watcher) is _AUTHORISED and self.accessOf(watcher) is not AccessList.BLOCK

    def visibleTo(self) -> list[Address]:
        """
        @return: Who may see this user's presence now (see L{sees}).
        """
        # What sees() asks of each watcher, from the rows at hand: the
        # fan-out asks once per watcher.
        if not self.access:
            return [w for w, state in self.watchers.items() if state is _AUTHORISED]
        return [w for w, state in self.watchers.items() if state is _AUTHORISED and self.accessOf(w) is not AccessList.BLOCK]

    def presence(self) -> Presence:
        """
        The user's presence as its own sessions see it: the aggregate of its
        sessions' (L{aggregate}: a session in C{appear-offline} hides the
        user; otherwise the most available state wins), the note of the
        session in that state that published last.
        """
        return aggregate(s.presence for s in sorted(self.sessions, key=lambda s: -s.published))

    def view(self, contact: ContactRecord) -> ContactView:
        them = contact.address
        to = self.watching.get(them) is _AUTHORISED
        return ContactView(
            address=them,
            displayName=contact.displayName,
            subscription=Subscription.fromFlags(to, self.watchers.get(them) is _AUTHORISED),
            pending=self.watching.get(them) is _PENDING,
            presence=self.contactPresence.get(them, OFFLINE) if to else OFFLINE,
        )

    def applied(self, changes: Iterable[HomeChange]) -> None:
        """
        Bring the cache up to date with changes just written (those that
        concern this user).
        """
        me = self.address
        for change in changes:
            if isinstance(change, PutContact):
                if change.owner == me:
                    contact = internContact(change.contact)
                    self.contacts[contact.address] = contact
            elif isinstance(change, RemoveContact):
                if change.owner == me:
                    self.contacts.pop(change.contact, None)
            elif isinstance(change, SetAuthorisation):
                if change.target == me:
                    self.watchers.apply(change.watcher, change)
                if change.watcher == me:
                    self.watching.apply(change.target, change)
            elif isinstance(change, SetAccess):
                if change.owner == me:
                    access = self.access
                    if not isinstance(access, dict):
                        access = {}
                    if change.accessList is AccessList.NONE:
                        access.pop(change.entry, None)
                    else:
                        access[change.entry] = change.accessList
                    self.access = access if access else _NO_ENTRIES
            elif change.owner == me:
                self.rules = tuple(change.rules)


@implementer(IAtOnceSession, IAnsweringSession)
class Session:
    """
    One logged-in session; see L{ISession}.
    """

    # No instance dict: one per session (weakly referenced by the metrics).
    __slots__ = ("_server", "_user", "address", "client", "label", "sessionId", "presence", "published", "closed", "__weakref__")

    def __init__(
        self, server: HomeServer, user: _UserState, client: ISessionClient, label: str, sessionId: str
    ) -> None:
        self._server = server
        self._user = user
        self.address = user.address
        self.client = client
        self.label = label
        self.sessionId = sessionId
        self.presence: Presence = OFFLINE
        # When it last published (a count, higher is later).
        self.published = 0
        self.closed = False
        # Its presence lease runs on the server's shared timers
        # (HomeServer.leases): no delayed call of its own.

    def __repr__(self) -> str:
        return f"<Session {self.sessionId} {self.address} {self.label!r} {self.presence}>"

    def _request(self, work: Callable[[_UserState], object]) -> Deferred[Any]:
        """
        Run a request of this session in its user's lane.
        """
        refused = self._refused()
        if refused is not None:
            return fail(refused)
        user = self._user
        return self._server._serial(self.address, lambda: work(user))

    def _refused(self) -> Exception | None:
        """
        @return: Why this session may not ask anything now, or C{None}.
        """
        if self.closed:
            return NotAuthorised("session closed")
        if self._server.stopping:
            return _shuttingDown()
        return None

    def publish(self, presence: Presence, lease: float | None = None) -> float:
        """
        Publish this session's presence; see L{ISession.publish}. It takes
        effect in the user's lane, after the requests sent before it.

        @return: The lease granted, in seconds.
        """
        if self.closed:
            return 0.0
        granted = self._server.grantLease(lease)
        if self._server.stopping:
            # Ignored: the session is about to be closed (a lease of 0
            # would have a client publish again at once).
            return granted
        self._server.metrics.presencePublished()
        if presence.state is not PresenceState.OFFLINE:
            self._server.leases.start(self, granted)
        else:
            self._server.leases.stop(self)
        self._server._serial(self.address, lambda: self._setPresence(presence)).addErrback(
            self._server._logFailure, "publishing presence"
        )
        return granted

    def _setPresence(self, presence: Presence) -> None:
        if not self.closed:
            self.presence = presence
            self.published = next(self._server._publishes)
            self._server.presenceChanged(self._user)

    def leaseEnd(self) -> float | None:
        """
        @return: When its presence lease runs out (the clock's seconds), or
            C{None} if none runs.
        """
        return self._server.leases.when(self)

    def _leaseExpired(self) -> None:
        self._server.log.info(
            "Presence lease of {session} ran out; it now counts as offline", session=self
        )
        self._server._serial(self.address, lambda: self._setPresence(OFFLINE)).addErrback(
            self._server._logFailure, "ending a presence lease"
        )

    def sendMessage(
        self,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> Deferred[DeliveryStatus]:
        try:
            outcome = self.sendMessageAtOnce(recipient, body, contentType, messageId)
        except BaseException:
            return fail()
        if type(outcome) is DeliveryStatus:
            return succeed(outcome)
        return outcome  # type: ignore[return-value]

    def sendMessageAtOnce(
        self,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        L{sendMessage}, answered without a L{Deferred} when the outcome is
        known at once (L{sendMessageThen} without its call).

        @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
            outcome.
        @raise DeliveryError: If the message is refused at once.
        """
        outcome = self.sendMessageThen(None, None, recipient, body, contentType, messageId)
        assert outcome is not None
        return outcome

    def sendMessageThen(
        self,
        answer: Callable[[DeliveryStatus | Failure, T, str | None], object] | None,
        token: T,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{sendMessage}, answered without a L{Deferred} when the outcome is
        known at once, and, with C{answer}, through a call when it comes
        later from a link: what a face that writes its answer itself calls
        (the native face's C{MESSAGE}). Counted in the metrics as
        L{sendMessage} counts it.

        A message to a user of this server's domain, when the router
        hands this server every message for the domain with nothing of
        its own between (L{HomeServer.routedDirectly}: the domain's only
        home server), is given to the recipient's sessions here in place
        (L{HomeServer._deliverTo}): the delivery the router's fast path
        would make (L{Router.deliverAtOnce
        <imgateway.router.router.Router.deliverAtOnce>}, then
        L{HomeServer.deliverAtOnce}), with the same checks, rules and
        statuses, without the router. Any other message (its recipient
        without sessions here, its lane busy, another domain, a domain of
        several home servers) goes through the router as before; one that
        the router hands a link at once (C{Router.deliverThen}: a recipient
        on another home server of the domain) has its outcome told by the
        link through the router's waiter to this session's
        (L{SentOutcome<imgateway.core.sending.SentOutcome>}, which counts it), which calls C{answer}, or
        without C{answer} fires a L{Deferred} of this session's with no
        callback on it: no chain of callbacks.

        @param answer: Called once, later (never before this returns), with
            the outcome (L{DeliveryStatus.DELIVERED}, or the L{Failure}
            that L{sendMessage}'s L{Deferred} would fail with), C{token}
            and C{messageId} as given, when this returns C{None}; as
            L{RemoteSession.sendMessageThen
            <imgateway.router.proxy.RemoteSession.sendMessageThen>} calls it.
        @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
            outcome, or C{None} when C{answer} will be called.
        @raise DeliveryError: If the message is refused at once.
        """
        server = self._server
        try:
            if self.closed or server.stopping:
                refused = self._refused()
                assert refused is not None
                raise refused
            message = sessionMessage(self.address, recipient, body, contentType, messageId, server.config, server.metrics, server.clock)
            outcome: DeliveryStatus | Deferred[DeliveryStatus] | None
            if recipient == self.address:
                # To one's other sessions.
                outcome = server._serial(self.address, partial(server._deliverToOthers, self, message))
            else:
                # (_direct's first test before its call: a domain of many
                # home servers has no _remember.)
                outcome = self._direct(server, message) if recipient.domain == server.domain and server._remember is not None else None
                if outcome is None:
                    # Counted there.
                    return sendRouted(server.router, server.metrics, message, answer, token)
        except BaseException:
            server.metrics.messageOutcome(Failure())
            raise
        if type(outcome) is DeliveryStatus:
            # Delivered at once: counted without a callback.
            server.metrics.messageOutcome(outcome)
            return outcome
        return outcome.addBoth(server.metrics.messageOutcome)  # type: ignore[union-attr]

    def _direct(self, server: HomeServer, message: Message) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        Give a message to another user of this server's domain in place,
        when the router routes the domain here directly (see
        L{sendMessageAtOnce}).

        @return: The outcome, or C{None} when the message is for the
            router (nothing was done).
        @raise DeliveryError: If the message is refused at once.
        """
        remember = server._remember
        if remember is None:
            return None
        user = server._users.get(message.recipient)
        if user is None:
            return None
        try:
            outcome = server._deliverTo(user, message)
        except DeliveryError:
            raise
        except Exception:
            # As the router logs and answers a route that fails
            # (deliverAtOnce): the same line for the operator.
            server.log.failure("Route for {domain} failed to deliver {event!r}", domain=server.domain, event=message)
            raise ServerError("internal error while delivering") from None
        if outcome is None or type(outcome) is DeliveryStatus:
            return outcome
        # A session that answers later (in another process): the router
        # remembers the message, as if it had routed it.
        return remember(message, outcome)  # type: ignore[arg-type]

    def subscribe(self, target: Address, displayName: str = "") -> Deferred[AuthorisationState]:
        refused = self._refused()
        if refused is not None:
            return fail(refused)
        return self._server.subscribe(self._user, target, displayName)

    def putContact(self, contact: Address, displayName: str = "") -> Deferred[None]:
        return self._request(lambda user: self._server.putContact(user, contact, displayName))

    def unsubscribe(self, target: Address) -> Deferred[None]:
        return self._request(lambda user: self._server.unsubscribe(user, target))

    def authorise(self, watcher: Address, allow: bool) -> Deferred[None]:
        return self._request(lambda user: self._server.authorise(user, watcher, allow))

    def contacts(self) -> Deferred[list[ContactView]]:
        return self._request(lambda user: [user.view(c) for _, c in sorted(user.contacts.items())])

    def pendingRequests(self) -> Deferred[list[Address]]:
        return self._request(
            lambda user: sorted(
                w for w, s in user.watchers.items() if s is _PENDING and user.accessOf(w) is not AccessList.BLOCK
            )
        )

    def setAccess(self, entry: str, accessList: AccessList) -> Deferred[None]:
        try:
            normal = parseAccessEntry(entry)
        except InvalidAddress as e:
            return fail(e)
        return self._request(lambda user: self._server.setAccess(user, normal, accessList))

    def accessLists(self) -> Deferred[dict[str, AccessList]]:
        return self._request(lambda user: dict(sorted(user.access.items())))

    def setRule(self, state: PresenceState, alternate: str | None) -> Deferred[None]:
        return self._request(lambda user: self._server.setRule(user, state, alternate))

    def rules(self) -> Deferred[list[PresenceRule]]:
        return self._request(lambda user: list(user.rules))

    def setRules(self, rules: Sequence[PresenceRule]) -> Deferred[None]:
        return self._request(lambda user: self._server.replaceRules(user, list(rules)))

    def addRule(self, rule: PresenceRule, position: int | None = None) -> Deferred[None]:
        def add(user: _UserState) -> Deferred[None]:
            rules = list(user.rules)
            where = len(rules) if position is None else position - 1
            if not 0 <= where <= len(rules):
                return fail(ValueError(f"position must be 1 to {len(rules) + 1}"))
            rules.insert(where, rule)
            return self._server.replaceRules(user, rules, checkOnly=rule)

        return self._request(add)

    def removeRule(self, position: int) -> Deferred[None]:
        def remove(user: _UserState) -> Deferred[None]:
            if not 1 <= position <= len(user.rules):
                return fail(ValueError(f"there is no rule {position} (you have {len(user.rules)})"))
            rules = list(user.rules)
            del rules[position - 1]
            return self._server.replaceRules(user, rules, checkOnly=None)

        return self._request(remove)

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._server.leases.stop(self)
        self._server.sessionClosed(self, reason)


class _KeptPresence:
    """
    The presence of contacts of other networks, kept for users without
    sessions: at most a configured number of entries
    (C{[home] max_kept_presences}), the least recently updated forgotten
    first. An offline presence is not kept (it is what a user assumes).
    """

    def __init__(self) -> None:
        # (user, contact) -> (presence, until when it holds or None).
        self._entries: OrderedDict[tuple[Address, Address], tuple[Presence, float | None]] = OrderedDict()
        self._byUser: dict[Address, set[Address]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, user: Address, contact: Address, presence: Presence, limit: int, until: float | None = None) -> None:
        """
        Keep C{contact}'s presence for C{user}, until the time C{until}
        (its lease) or, when C{None}, until it changes.
        """
        if presence == OFFLINE:
            self.drop(user, contact)
            return
        key = (user, contact)
        self._entries[key] = (presence, until)
        self._entries.move_to_end(key)
        self._byUser.setdefault(user, set()).add(contact)
        while len(self._entries) > limit:
            (oldUser, oldContact), _ = self._entries.popitem(last=False)
            self._unindex(oldUser, oldContact)

    def drop(self, user: Address, contact: Address) -> None:
        if self._entries.pop((user, contact), None) is not None:
            self._unindex(user, contact)

    def take(self, user: Address, now: float) -> dict[Address, tuple[Presence, float | None]]:
        """
        @return: What is kept for C{user} and still holds at C{now} (its
            presence and lease end, by contact), forgotten here.
        """
        taken = {c: self._entries.pop((user, c)) for c in sorted(self._byUser.pop(user, ()))}
        return {c: kept for c, kept in taken.items() if kept[1] is None or kept[1] > now}

    def _unindex(self, user: Address, contact: Address) -> None:
        contacts = self._byUser.get(user)
        if contacts is not None:
            contacts.discard(contact)
            if not contacts:
                del self._byUser[user]


# One piece of work in a lane, and the Deferred of its outcome.
_Work = tuple[Callable[[], Any], Deferred[Any]]


class _Told:
    """
    A presence given to users (a fan-out gives the same one to every
    watcher), with what L{HomeServer._takePresence} asks of it for each:
    whether it is L{OFFLINE}, and whether it differs from what the user
    saw before. The last answer is kept: a fan-out's watchers mostly saw
    one same object before (the previous fan-out's), so the values,
    compared by attrs' Python code, are compared once per fan-out rather
    than once per watcher.
    """

    __slots__ = ("presence", "offline", "_old", "_differs")

    def __init__(self, presence: Presence) -> None:
        self.presence = presence
        self.offline = presence == OFFLINE
        self._old: Presence = presence
        self._differs = False

    def differsFrom(self, old: Presence) -> bool:
        """
        @return: Whether C{old} differs from the presence (C{!=}).
        """
        if old is not self._old:
            self._old = old
            self._differs = old != self.presence
        return self._differs


@implementer(IHomeServer, IDirectRoute)
class HomeServer:
    """
    A home server; see the module docstring and L{IHomeServer}.

    @ivar name: This home server's name in the directory.
    @ivar domain: The domain of its users.
    @ivar clock: Where leases are timed.
    @ivar stopping: Whether L{drain} was called: new work is refused.
    @ivar metrics: Counts messages, presences and quota refusals
        (C{/metrics}); the gateway gives its own.
    """

    log = Logger()
    metrics: IMetrics = NO_METRICS

    def __init__(
        self,
        name: str,
        domain: str,
        directory: IDirectory,
        store: IHomeStore,
        router: IRouter,
        clock: IReactorTime,
        config: HomeConfig = HomeConfig(),
        locator: IHomeLocator | None = None,
    ) -> None:
        """
        @param locator: Where the users of the domain are homed, when the
            domain has other home servers; C{None} when this is its only
            one (every user of the domain is homed here).
        """
        self.name = name
        self.locator = locator
        self.domain = domain
        self.directory = directory
        self.store = store
        self.router = router
        self.clock = clock
        self.config = config
        self._users: dict[Address, _UserState] = {}
        # User -> the work waiting behind the piece running now; a user
        # with no entry has nothing running.
        self._lanes: dict[Address, deque[_Work]] = {}
        self._kept = _KeptPresence()
        # Work under way outside the lanes (a SUBSCRIBE waiting for its
        # target); see drain().
        self._outside = 0
        self.stopping = False
        self._drainWaiters: list[Deferred[None]] = []
        self._drainTimer: IDelayedCall | None = None
        self._ids = itertools.count(1)
        self._publishes = itertools.count(1)
        # Subscription requests not kept (max_pending_requests) since the
        # last log line, by target; the timer of the next line, if any.
        self._dropped: Counter[Address] = Counter()
        self._droppedTimer: IDelayedCall | None = None
        # The sessions' presence leases, on one delayed call per distinct
        # lease instead of one per session.
        self.leases: Deadlines[Session] = Deadlines(clock, Session._leaseExpired)
        # While the router hands this server every message for its domain
        # with nothing of its own between (routedDirectly), the router's
        # remember; else None.
        self._remember: Callable[[Message, Deferred[DeliveryStatus]], Deferred[DeliveryStatus]] | None = None

    # -- lanes --------------------------------------------------------------

    def _serial(self, address: Address, work: Callable[[], object]) -> Deferred[Any]:
        """
        Run C{work} in C{address}'s lane: once everything queued there
        before it is done.

        @return: C{work}'s outcome (the result of the L{Deferred} it
            returns, if it returns one).
        """
        result: Deferred[Any] = Deferred()
        lane = self._lanes.get(address)
        if lane is not None:
            lane.append((work, result))
            return result
        self._lanes[address] = deque()
        self._run(address, work, result)
        return result

    def _run(self, address: Address, work: Callable[[], Any], result: Deferred[Any]) -> None:
        """
        Run a lane's pieces of work from C{work} on, for as long as they end
        at once (a loop, not a recursion: a memory store answers at once);
        one that waits goes on from L{_stepped}.
        """
        while True:
            outcome: list[Any] = []
            waiting = [False]

            def ended(r: Any, result: Deferred[Any] = result) -> None:
                if waiting[0]:
                    self._stepped(address, result, r)
                else:
                    outcome.append(r)

            maybeDeferred(work).addBoth(ended)
            if not outcome:
                waiting[0] = True
                return
            _fire(result, outcome[0])
            following = self._next(address)
            if following is None:
                return
            work, result = following

    def _stepped(self, address: Address, result: Deferred[Any], outcome: Any) -> None:
        _fire(result, outcome)
        following = self._next(address)
        if following is not None:
            self._run(address, *following)

    def _next(self, address: Address) -> _Work | None:
        lane = self._lanes[address]
        if lane:
            return lane.popleft()
        del self._lanes[address]
        self._checkDrained()
        return None

    # -- stopping -----------------------------------------------------------

    def drain(self) -> Deferred[None]:
        """
        Stop taking new work, and wait for the work under way to end.

        From now on, sessions' requests and openings, and events from
        outside (from users of other servers), fail with
        L{ServiceUnavailable} ("shutting down", 503). The work already
        queued in the users' lanes, and what it sends to this server's
        users in turn, runs to its end, so that it is all written before
        the stores close.

        @return: A L{Deferred} that fires once no work is under way (or
            after C{[home] drain_timeout} seconds, logging what was left).
            Safe to call more than once.
        """
        if not self.stopping:
            self.stopping = True
            self.log.info("Home server {name} stops taking work; {lanes} users' work under way", name=self.name, lanes=len(self._lanes))
        d: Deferred[None] = Deferred()
        self._drainWaiters.append(d)
        if self._drainTimer is None and not self._idle():
            self._drainTimer = self.clock.callLater(self.config.drainTimeout, self._drainTimedOut)
        self._checkDrained()
        return d

    def _idle(self) -> bool:
        return not self._lanes and not self._outside

    def _checkDrained(self) -> None:
        if self.stopping and self._drainWaiters and self._idle():
            self._drained()

    def _drainTimedOut(self) -> None:
        self._drainTimer = None
        self.log.warn(
            "Home server {name}: work still under way for {users} after {seconds} s (drain_timeout); stopping anyway",
            name=self.name,
            users=", ".join(str(a) for a in sorted(self._lanes)) or "no user",
            seconds=self.config.drainTimeout,
        )
        self._drained()

    def _drained(self) -> None:
        if self._drainTimer is not None and self._drainTimer.active():
            self._drainTimer.cancel()
        self._drainTimer = None
        if self._droppedTimer is not None and self._droppedTimer.active():
            self._droppedTimer.cancel()
            self._logDropped()
        self._droppedTimer = None
        waiters, self._drainWaiters = self._drainWaiters, []
        for d in waiters:
            d.callback(None)

    def _outsideLane(self, d: Deferred[T]) -> Deferred[T]:
        """
        Count C{d} as work under way (outside any lane) until it fires.
        """
        self._outside += 1

        def done(result: T) -> T:
            self._outside -= 1
            self._checkDrained()
            return result

        return d.addBoth(done)

    # -- sessions -----------------------------------------------------------

    def openSession(self, address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        """
        See L{IHomeServer.openSession}. When the domain has other home
        servers, a session is opened only for a user the directory homes
        here, whatever path led here (the faces and the proxied sessions'
        host ask first; this is the last check): else the opening fails
        with L{ServiceUnavailable}, and a warning is logged. The
        locator's answer was just read by what asked, so it is remembered:
        this costs no directory read, unless it names another server (then
        the directory is asked again, as
        L{imgateway.router.locator.homeOfAuthenticated} does).
        """
        if self.stopping:
            return fail(_shuttingDown())
        made: list[Session] = []
        # Asked now, while the opening waits for its turn in the lane.
        homed = self._homedHere(address)

        def opened(user: _UserState) -> ISession:
            if len(user.sessions) >= self.config.maxSessionsPerUser:
                self.metrics.limitHit("max_sessions_per_user")
                self._forgetIfIdle(user)
                raise TooManySessions(
                    f"{address} already has {len(user.sessions)} sessions "
                    f"(max_sessions_per_user = {self.config.maxSessionsPerUser})"
                )
            sessionId = f"{self.name}-{next(self._ids)}"
            session = Session(self, user, client, _uniqueLabel(label, sessionId, user), sessionId)
            user.sessions.append(session)
            made.append(session)
            self.log.info("Session {session} opened", session=session)
            return session

        opening = self._serial(address, lambda: homed.addCallback(lambda _: self._user(address)).addCallback(opened))
        # Next in the lane, once the face has its session: what the new
        # session should know at once.
        self._serial(address, lambda: self._welcome(made)).addErrback(self._logFailure, "welcoming a session")
        return opening

    def _homedHere(self, address: Address) -> Deferred[None]:
        """
        Check that the directory homes C{address} on this server (always
        so for the domain's only home server).

        @return: Fires with C{None} if so; fails with L{ServiceUnavailable}
            if not (logged), or as the locator does.
        """
        locator = self.locator
        if locator is None:
            return succeed(None)

        def check(home: str | None, again: bool) -> Deferred[None] | None:
            if home == self.name:
                return None
            if again:
                # Perhaps an old answer: confirm it before refusing.
                locator.forget(address)
                return locator.homeOf(address).addCallback(check, False)
            self.log.warn(
                "Not opening a session for {user} on {name}: the directory homes it on {home}",
                user=address,
                name=self.name,
                home=home or "no server",
            )
            raise ServiceUnavailable(f"{address} is not homed on {self.name}")

        return locator.homeOf(address).addCallback(check, True)

    def _welcome(self, made: list[Session]) -> None:
        """
        Tell a session just opened the presence its user may see of each
        contact, as far as it is known: for the user's first session, that
        kept while the user had none (L{_KeptPresence}); then ask every
        contact the user may watch for its presence.
        """
        if not made:
            return
        session = made[0]
        user = session._user
        if session.closed or session not in user.sessions:
            return
        first = user.sessions[0] is session and len(user.sessions) == 1
        if first:
            now = self.clock.seconds()
            for contact, (presence, until) in self._kept.take(user.address, now).items():
                if user.watching.get(contact) is _AUTHORISED and user.accessOf(contact) is not AccessList.BLOCK:
                    user.contactPresence[contact] = presence
                    user.markRemote(contact)
                    if until is not None:
                        self._leaseContact(user, contact, until - now)
        for contact, presence in sorted(user.contactPresence.items()):
            self._push([session], "presence", lambda c: c.presenceReceived(contact, presence))
        own = user.presence()
        if own != OFFLINE:
            self._push([session], "own presence", lambda c: c.presenceReceived(user.address, own))
        if first:
            self._probeContacts(user)

    def sessionsOf(self, address: Address) -> list[ISession]:
        user = self._users.get(address)
        return list(user.sessions) if user is not None else []

    def presenceOf(self, address: Address) -> Presence:
        user = self._users.get(address)
        return user.presence() if user is not None else OFFLINE

    def users(self) -> list[Address]:
        """
        @return: The users that have sessions now.
        """
        return sorted(a for a, u in self._users.items() if u.sessions)

    def closeAll(self, reason: str) -> None:
        """
        End every session, telling each client why.
        """
        for user in list(self._users.values()):
            for session in list(user.sessions):
                session.client.sessionClosed(reason)
                session.close(reason)

    def sessionClosed(self, session: Session, reason: str) -> None:
        """
        Called by a session when it ends: it receives nothing more at once;
        its user's presence is recomputed in the user's lane.
        """
        user = self._users.get(session.address)
        if user is None or session not in user.sessions:
            return
        user.sessions.remove(session)
        self.log.info("Session {session} closed ({reason})", session=session, reason=reason or "no reason given")

        def closed() -> None:
            self.presenceChanged(user)
            if not user.sessions:
                # Keep what the user saw of contacts of other servers,
                # for when it comes back (those of this server answer
                # probes at once), with what is left of their leases.
                for contact, presence in user.contactPresence.items():
                    if contact in user.remote:
                        lease = user.contactLeases.get(contact)
                        until = lease.getTime() if lease is not None else None
                        self._kept.keep(user.address, contact, presence, self.config.maxKeptPresences, until)
                for lease in user.contactLeases.values():
                    lease.cancel()
                user.contactLeases.clear()
            self._forgetIfIdle(user)

        self._serial(user.address, closed).addErrback(self._logFailure, "closing a session")

    def grantLease(self, asked: float | None) -> float:
        """
        @return: The presence lease to grant for one asked for (or the
            default for C{None}), within the configured bounds.
        """
        return self.config.grantLease(asked)

    def _user(self, address: Address) -> Deferred[_UserState]:
        """
        The cached state of C{address}, loading it if needed (in its lane).
        """
        user = self._users.get(address)
        if user is not None:
            return succeed(user)

        def loaded(u: _UserState) -> _UserState:
            # Keyed by the user's interned address (the one other users'
            # rows hold): a fan-out finds each watcher by identity.
            self._users[u.address] = u
            return u

        return self._load(address).addCallback(loaded)

    def _load(self, address: Address) -> Deferred[_UserState]:
        """
        Read C{address}'s rows: one store read (L{IHomeStore.getUserRecords}),
        not one per table, so that a login costs one operation of the store
        and one hop to its thread.
        """
        return self.store.getUserRecords(address).addCallback(_userState, address)

    def _forgetIfIdle(self, user: _UserState) -> None:
        if not user.sessions and self._users.get(user.address) is user:
            del self._users[user.address]

    def _localState(self, address: Address) -> _UserState | None:
        """
        The cached state of a user with sessions, or C{None}.
        """
        user = self._users.get(address)
        return user if user is not None and user.sessions else None

    def _store(
        self, user: _UserState | None, changes: Sequence[HomeChange], cacheAs: Sequence[HomeChange] | None = None
    ) -> Deferred[None]:
        """
        Write one request's changes together, then bring C{user}'s cache
        (if any) up to date with them.

        @param cacheAs: What the cache takes in, when not just C{changes}
            (what the store already holds because another user's request
            wrote it; see L{_shares}).
        """
        d = self.store.apply(changes) if changes else succeed(None)
        if user is not None:
            cached = changes if cacheAs is None else cacheAs
            d.addCallback(lambda _: user.applied(cached))
        return d

    def _shares(self, other: Address) -> Deferred[bool]:
        """
        Whether C{other}'s authorisation rows are in this home server's
        store: a user homed here. The row of two such users is written
        only by the lane of the user whose request changes it, in that
        request's transaction; the other user's lane, when the event
        reaches it, only takes the change into its cache. (A lane that
        wrote it again could undo a newer request of the other user, and a
        crash between the two writes would leave the two users disagreeing.)
        Users of other domains, and of this domain homed on other servers,
        have their rows in their own server's store: each server writes
        only its own.

        It is asked before the lane needs it (the directory may have to be
        read), and carried into the lane.
        """
        if other.domain != self.domain:
            return succeed(False)
        if self.locator is None:
            return succeed(True)
        return self.locator.homeOf(other).addCallback(lambda home: home == self.name)

    # -- presence -----------------------------------------------------------

    def presenceChanged(self, user: _UserState) -> None:
        """
        Recompute C{user}'s aggregate presence; tell its sessions, and its
        watchers if what they see changed.
        """
        presence = user.presence()
        me = user.address
        if presence != user.ownAnnounced:
            user.ownAnnounced = presence
            self._pushPresence(user.sessions, me, presence, "a own presence")
        seen = presence.toWatchers()
        if seen == user.announced:
            self._renewLease(user)
            return
        user.announced = seen
        user.announcedUntil = self._leaseEnd(user)
        users, lanes, domain = self._users, self._lanes, self.domain
        told = _Told(seen)
        for watcher in user.visibleTo():
            # What _sendPresence does for each watcher: in place for one
            # whose lane is idle here (_laneIdleHere, asked after its
            # state, so that one lane claim answers both), with the update
            # made only if the log needs it; else through the router.
            if self.locator is None and watcher.domain == domain and not self.stopping:
                state = users.get(watcher)
                if state is not None and state.sessions:
                    lane: deque[_Work] = deque()
                    if lanes.setdefault(watcher, lane) is lane:
                        self._takeInPlace(state, lane, me, told, None)
                        continue
                elif watcher not in lanes:
                    # Without sessions, and nothing under way that could
                    # open one: nothing to tell (_presenceInPlace).
                    continue
            self._send(self._presenceFor(me, user, watcher, seen))

    def _leaseEnd(self, user: _UserState) -> float:
        """
        @return: Until when C{user}'s presence holds: the latest end of its
            present sessions' leases (0 when none is present).
        """
        ends = [
            end
            for s in user.sessions
            if (end := s.leaseEnd()) is not None and s.presence.state is not PresenceState.OFFLINE
        ]
        return max(ends, default=0.0)

    def _presenceFor(self, me: Address, user: _UserState | None, watcher: Address, seen: Presence) -> PresenceUpdate:
        """
        The update that tells C{watcher} C{seen}, the presence of C{user}
        (C{None}: without sessions): to a watcher of this domain when the
        domain has other home servers, with the lease it has left (the
        watcher's home, if it is another server, shows the user offline
        once it runs out; L{_renewLease} renews it).
        """
        lease = None
        if user is not None and self.locator is not None and watcher.domain == self.domain and seen != OFFLINE:
            left = self._leaseEnd(user) - self.clock.seconds()
            lease = left if left > 0 else None
        return PresenceUpdate(me, watcher, seen, lease=lease)

    def _renewLease(self, user: _UserState) -> None:
        """
        A session published again without changing what watchers see: if
        that holds longer than watchers on the other servers of the domain
        were told, tell them again (what they see then, with its lease).
        """
        if self.locator is None or user.announced == OFFLINE:
            return
        until = self._leaseEnd(user)
        if until <= user.announcedUntil:
            return
        user.announcedUntil = until
        for watcher in user.visibleTo():
            if watcher.domain == self.domain:
                self._shares(watcher).addCallback(self._renewTo, user, watcher).addErrback(
                    self._logFailure, "renewing a presence lease"
                )

    def _renewTo(self, here: bool, user: _UserState, watcher: Address) -> None:
        if not here and user.sees(watcher) and user.sessions:
            self._send(self._presenceFor(user.address, user, watcher, user.announced))

    def _leaseContact(self, user: _UserState, contact: Address, lease: float) -> None:
        """
        C{contact}'s presence, from another server, holds for C{lease}
        seconds unless renewed: then C{user} sees it offline.
        """
        old = user.contactLeases.pop(contact, None)
        if old is not None and old.active():
            old.cancel()

        def ended() -> None:
            user.contactLeases.pop(contact, None)
            self.log.info(
                "Presence lease of {contact} (watched by {user}) ran out; it now counts as offline",
                contact=contact,
                user=user.address,
            )
            self._serial(user.address, lambda: self._forgetPresence(user, contact)).addErrback(
                self._logFailure, "ending a contact's presence lease"
            )

        user.contactLeases[contact] = self.clock.callLater(lease, ended)

    def _unleaseContact(self, user: _UserState, contact: Address) -> None:
        old = user.contactLeases.pop(contact, None)
        if old is not None and old.active():
            old.cancel()

    def _probeContacts(self, user: _UserState) -> None:
        """
        Ask for the presence of every contact C{user} may watch. A contact
        that this server alone homes, with nothing under way in its lane,
        is asked here and now, as its lane would ask it (L{_answerProbe}),
        without a probe through the router: for one without sessions, that
        is nothing at all.
        """
        me = user.address
        for target, state in list(user.watching.items()):
            if state is _AUTHORISED:
                probe = PresenceProbe(me, target)
                if not self._laneIdleHere(target):
                    self._send(probe)
                    continue
                answer = self._probeAnswer(probe)
                if answer is None:
                    continue
                lane = self._lanes.get(me)
                if lane is not None and not lane:
                    # In the user's lane (at login, _welcome), with nothing
                    # waiting behind: the answer, which would be next, is
                    # taken in now.
                    try:
                        d = self._deliverPresence(answer, True)
                    except Exception:
                        d = fail()
                    d.addErrback(self._unsent, answer)
                else:
                    self._sendPresence(answer)

    def _laneIdleHere(self, address: Address) -> bool:
        """
        Whether an event for C{address} would be handled by this server at
        once, in its lane: a user of the domain whose only home server this
        is (no locator), with nothing under way or waiting in its lane,
        while the server takes work. What the lane would do can then be
        done in place, without the router and the lane's L{Deferred}s.
        """
        return self.locator is None and address.domain == self.domain and address not in self._lanes and not self.stopping

    def _push(self, sessions: Iterable[Session], what: str, call: Callable[[ISessionClient], Deferred[None]]) -> None:
        """
        Give something to each of C{sessions}' clients; a client that could
        not take it is logged (it is the face's to close the session).

        @param what: What is given, for the log.
        @param call: Calls the client.
        """
        what = f"a {what}"
        for session in list(sessions):
            try:
                answer = call(session.client)
            except BaseException:
                self._sessionFailed(Failure(), session, what)
            else:
                self._clientAnswered(answer, session, what)

    def _pushPresence(self, sessions: Iterable[Session], sender: Address, presence: Presence, what: str) -> None:
        """
        L{_push} of C{sender}'s C{presence} (C{presenceReceived}), without
        a function made for it: the fan-out's hot path.

        @param what: What is given, for the log, with its article (C{"a
            presence"}).
        """
        for session in list(sessions):
            try:
                answer = session.client.presenceReceived(sender, presence)
            except BaseException:
                self._sessionFailed(Failure(), session, what)
                continue
            # _clientAnswered's test for a success already there, inline.
            if answer.__class__ is Deferred and answer.called and not answer.paused and answer.result is None:
                continue
            self._clientAnswered(answer, session, what)

    def _clientAnswered(self, answer: object, session: Session, what: str) -> None:
        """
        Take a client's answer to L{_push}: a client in this process
        answers with an already fired L{Deferred} (L{ISessionClient}),
        whose success is taken at once, without a L{Deferred} or a callback
        of the home server's; only a failure, or an answer still to come
        (a proxied session's), gets L{_sessionFailed} as its errback.
        """
        if isinstance(answer, Deferred) and not (
            answer.called and not answer.paused and not isinstance(answer.result, Failure)
        ):
            answer.addErrback(self._sessionFailed, session, what)

    def _sessionFailed(self, f: Failure, session: Session, what: str) -> None:
        """
        Log a session's client that could not take something: without a
        traceback when it is unavailable (L{ServiceUnavailable}: the router
        of a proxied session no longer has it, its client having just left,
        or its link is down; the session's end is on its way).
        """
        if f.check(ServiceUnavailable):
            self.log.info(
                "Session {session} could not take {what}: {why}", session=session, what=what, why=f.getErrorMessage()
            )
            return
        self.log.failure("Session {session} could not take {what}", f, session=session, what=what)

    def _logFailure(self, f: Failure, doing: str) -> None:
        self.log.failure("While {doing}", f, doing=doing)

    def _send(self, event: Event) -> Deferred[DeliveryStatus | None]:
        """
        Send an event whose outcome nobody waits for (presence, answers):
        failures are logged, never raised.
        """

        d: Deferred[DeliveryStatus | None] = self.router.deliver(event)  # type: ignore[assignment]
        return d.addErrback(self._unsent, event)

    def _unsent(self, f: Failure, event: Event) -> None:
        """
        Log an event of L{_send} that was not delivered (an offline
        recipient, silently).
        """
        if f.check(UserOffline):
            return
        if f.check(DeliveryError):
            self.log.debug("{event!r} not delivered: {error!r}", event=event, error=f.value)
        else:
            self.log.failure("Sending {event!r}", f, event=event)

    def _sendPresence(self, update: PresenceUpdate) -> None:
        """
        L{_send} a presence update of a user of this server. To a user that
        this server alone homes, with nothing under way in its lane
        (L{_laneIdleHere}), it is delivered in place, in that lane, as the
        router and the lane would deliver it at once (L{_deliverPresence},
        as L{deliverAtOnce} does a message); to one without sessions it is
        not sent at all (it would be refused as offline: the user asks at
        its next login, L{_probeContacts}).
        """
        recipient = update.recipient
        if not self._laneIdleHere(recipient):
            self._send(update)
            return
        self._presenceInPlace(update.sender, recipient, update.presence, update)

    def _presenceInPlace(self, sender: Address, recipient: Address, presence: Presence, update: PresenceUpdate | None) -> None:
        """
        Deliver C{sender}'s C{presence} to C{recipient}, a user whose lane
        is idle here (L{_laneIdleHere}), in place, in its lane, as
        L{_sendPresence} does: nothing to one without sessions; a refusal
        is logged as L{_unsent} logs it.

        @param update: The update delivered, if there is one already (the
            log names it): otherwise it is made only if the log needs it.
        """
        user = self._localState(recipient)
        if user is None:
            return
        lane: deque[_Work] = deque()
        self._lanes[user.address] = lane
        self._takeInPlace(user, lane, sender, _Told(presence), update)

    def _takeInPlace(self, user: _UserState, lane: deque[_Work], sender: Address, told: _Told, update: PresenceUpdate | None) -> None:
        """
        L{_presenceInPlace} once C{user}'s lane is claimed (C{lane}, its
        entry in the lanes): C{user} takes the presence of C{told} from
        C{sender} (L{_takePresence}), then the lane ends, or runs what
        was queued in it meanwhile.
        """
        failed: Failure | None = None
        try:
            self._takePresence(user, sender, told.presence, True, None, told)
        except Exception:
            failed = Failure()
        finally:
            recipient = user.address
            if lane:
                self._laneFree(recipient)
            else:
                # Nothing was queued behind (the common case): the lane
                # ends as L{_next} ends it.
                del self._lanes[recipient]
                if self.stopping:
                    self._checkDrained()
        if failed is not None:
            self._unsent(failed, update if update is not None else PresenceUpdate(sender, user.address, told.presence))

    # -- inbound events (IRoute) ---------------------------------------------

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver an event to a user of this home server, in the user's lane
        (a message to a user with sessions here whose lane is idle at once:
        L{deliverAtOnce}).
        """
        try:
            outcome = self.deliverAtOnce(event)
        except BaseException:
            return fail()
        if outcome is not None:
            return succeed(outcome) if type(outcome) is DeliveryStatus else outcome  # type: ignore[return-value]
        recipient = event.recipient
        if recipient.domain != self.domain:
            return fail(NoSuchUser(f"{recipient} is not a user of {self.domain}"))
        if self.stopping and event.sender.domain != self.domain:
            # What this server's users send each other in turn while the
            # work under way ends is still taken.
            return fail(_shuttingDown())
        if self.locator is None:
            # The domain's only home server: every user of the domain is
            # homed here.
            here = event.sender.domain == self.domain
            if isinstance(event, SubscriptionEvent):
                # The directory's answer does not depend on what the lane
                # writes: ask now, while the event waits for its turn.
                account = self.directory.getAccount(recipient)
                return self._serial(recipient, lambda: account.addCallback(self._deliverSubscription, event, here))
            return self._serial(recipient, lambda: self._deliverNow(event, here))
        if isinstance(event, Message) and self._localState(recipient) is not None:
            # A message for a user with sessions here (so homed here): the
            # directory is asked nothing, unless the server is stopping
            # (then a message from a user homed elsewhere is refused).
            def message() -> Deferred[DeliveryStatus]:
                if not self.stopping:
                    return self._deliverMessage(event)

                def decide(here: bool) -> Deferred[DeliveryStatus]:
                    if not here:
                        raise _shuttingDown()
                    return self._deliverMessage(event)

                return self._shares(event.sender).addCallback(decide)

            return self._serial(recipient, message)
        # The directory's answers do not depend on what the lane writes:
        # ask now, while the event waits for its turn. The recipient's
        # account says whether it lives here still: read for subscription
        # events (which need it) and, when the domain has other home
        # servers, for users without sessions here (a user with sessions
        # here is homed here).
        reads: list[Deferred[Any]] = [self._shares(event.sender)]
        if isinstance(event, SubscriptionEvent) or self._localState(recipient) is None:
            reads.append(self.directory.getAccount(recipient))
        else:
            reads.append(succeed(None))
        read = DeferredList(reads, fireOnOneErrback=True, consumeErrors=True)

        def go(results: list[tuple[bool, Any]]) -> Deferred[DeliveryStatus]:
            here, account = (r for _, r in results)
            if self.stopping and not here:
                raise _shuttingDown()
            if account is not None and account.enabled and account.homeServer != self.name:
                raise MovedTo(f"{recipient} is homed on {account.homeServer}", account.homeServer)
            if isinstance(event, SubscriptionEvent):
                return self._deliverSubscription(account, event, here)
            return self._deliverNow(event, here)

        def work() -> Deferred[DeliveryStatus]:
            return read.addCallbacks(go, _firstError)

        return self._serial(recipient, work)

    def _deliverNow(self, event: Message | PresenceUpdate | PresenceProbe, here: bool) -> Deferred[DeliveryStatus]:
        """
        @param here: Whether the sender is homed on this server.
        """
        if isinstance(event, Message):
            return self._deliverMessage(event)
        if isinstance(event, PresenceUpdate):
            return self._deliverPresence(event, here)
        return self._answerProbe(event)

    def _deliverToOthers(self, sender: Session, message: Message) -> Deferred[DeliveryStatus]:
        """
        A message a user sends to itself: delivered to the user's other
        present sessions (as an XMPP server delivers a message to one's own
        bare JID to one's available resources), L{UserOffline} if there is
        none. Rules and access lists are for others: they do not apply.
        """
        user = sender._user
        others = [s for s in user.sessions if s is not sender]
        return self._deliverToSessions(others, message)

    def routedDirectly(
        self,
        router: object,
        domain: str,
        remember: Callable[[Message, Deferred[DeliveryStatus]], Deferred[DeliveryStatus]] | None,
    ) -> None:
        """
        Told by the router of this process (L{Router.addRoute
        <imgateway.router.router.Router.addRoute>}) that it hands this
        server every message for C{domain} at once with nothing of its own
        between (the domain has no other home server), or, with
        C{remember} C{None}, that it no longer does. While it does, and
        C{domain} is this server's and C{router} its router, this
        server's sessions give their messages to its users in place
        (L{Session.sendMessageAtOnce}), and hand the router the message
        of a delivery that is still to come (C{remember}).
        """
        if router is self.router and domain == self.domain:
            self._remember = remember

    def deliverAtOnce(self, event: Event) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{deliver}'s synchronous fast path: a message to a user with
        sessions here whose lane is idle (nothing of the user's under way or
        waiting), while the server takes work, is delivered now, without a
        L{Deferred} when every session it goes to is in this process (their
        clients answer with an already fired L{Deferred}). It is the same
        delivery as L{deliver}'s (L{_deliverMessage}: access lists, rules,
        statuses), in the user's lane: what it causes for the same user in
        turn waits behind it.

        @return: L{DeliveryStatus.DELIVERED} when delivered; a L{Deferred}
            of the outcome when a session it goes to answers later (a
            proxied session: the lane waits for it); C{None} when this
            event is not for the fast path (call L{deliver}; nothing was
            done).
        @raise DeliveryError: When the message is refused (offline,
            busy...), as L{deliver} would fail.
        """
        if type(event) is not Message or self.stopping:
            return None
        recipient = event.recipient
        if recipient.domain != self.domain:
            return None
        user = self._users.get(recipient)
        if user is None or not user.sessions:
            # The directory may have to say where the user lives.
            return None
        # _deliverTo, without its call (the router calls this for every
        # message to a user of the domain that comes from a link).
        lane: deque[_Work] = deque()
        if self._lanes.setdefault(recipient, lane) is not lane:
            return None
        try:
            # _messageOutcome, without its call: the same tests in the same
            # order (FastPathTests.test_outcomeOverSessionStates compares
            # the two).
            if user.access and user.accessOf(event.sender) is AccessList.BLOCK:
                raise _offline(recipient)
            present: list[Session] = []
            for session in user.sessions:
                state = session.presence.state
                if state is _APPEAR_OFFLINE:
                    raise _offline(recipient)
                if state is not _OFFLINE_STATE:
                    present.append(session)
            if not present:
                raise _offline(recipient)
            if user.rules:
                outcome = self._applyRules(user, user.presence().state, event)
            else:
                outcome = self._give(present, event)
        except BaseException:
            self._laneFree(recipient)
            raise
        if type(outcome) is DeliveryStatus:
            if lane or self.stopping:
                self._laneFree(recipient)
            else:
                del self._lanes[recipient]
            return outcome
        return self._laneFreeAfter(recipient, outcome)  # type: ignore[arg-type]

    def _deliverTo(self, user: _UserState, message: Message) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{deliverAtOnce} of a message for C{user}, a user of this domain
        (its cached state), while the server takes work: what its
        sessions' messages to it take in place
        (L{Session.sendMessageAtOnce}). L{deliverAtOnce} does the same work
        in place, for a link's messages: a change here is a change there.

        @return: See L{deliverAtOnce}.
        @raise DeliveryError: See L{deliverAtOnce}.
        """
        if not user.sessions:
            # The directory may have to say where the user lives.
            return None
        recipient = message.recipient
        # The lane is busy while the message is delivered (unless busy
        # already: then it waits its turn, the way deliver queues it).
        lane: deque[_Work] = deque()
        if self._lanes.setdefault(recipient, lane) is not lane:
            return None
        try:
            outcome = self._messageOutcome(user, message)
        except BaseException:
            self._laneFree(recipient)
            raise
        if type(outcome) is DeliveryStatus:
            if lane or self.stopping:
                self._laneFree(recipient)
            else:
                # Nothing came for the user meanwhile: what _laneFree does
                # then, in place.
                del self._lanes[recipient]
            return outcome
        return self._laneFreeAfter(recipient, outcome)  # type: ignore[arg-type]

    def _laneFreeAfter(self, address: Address, outcome: Deferred[DeliveryStatus]) -> Deferred[DeliveryStatus]:
        """
        The fast path's delivery in C{address}'s lane ends when C{outcome}
        fires (a session that answers later): the lane is freed then.

        @return: C{outcome}, which fires as before once the lane is free.
        """

        def ended(result: Any) -> Any:
            self._laneFree(address)
            return result

        return outcome.addBoth(ended)

    def _laneFree(self, address: Address) -> None:
        """
        The fast path's work in C{address}'s lane is over: run what was
        queued behind it meanwhile.
        """
        following = self._next(address)
        if following is not None:
            self._run(address, *following)

    def _deliverMessage(self, message: Message) -> Deferred[DeliveryStatus]:
        """
        L{_messageOutcome} as a L{Deferred}.
        """
        try:
            outcome = self._messageOutcome(self._localState(message.recipient), message)
        except BaseException:
            return fail()
        return succeed(outcome) if type(outcome) is DeliveryStatus else outcome  # type: ignore[return-value]

    def _messageOutcome(self, user: _UserState | None, message: Message) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        Deliver a message to the recipient's present sessions.

        No existence or presence leaks (RFC 6121 8.5.1): a sender who may
        not see the recipient's presence (not authorised, or blocked) gets
        the same answer, L{UserOffline} with the same text, whether the
        recipient is unknown, disabled, offline, blocks the sender or has a
        presence rule for its state; a message to a present recipient that
        does not block the sender is delivered. Only a sender who may see
        the recipient's presence learns of its rule (L{UserBusy}).

        L{deliverAtOnce} makes these tests in place, in the same order: a
        change here is a change there (C{tests.test_home.FastPathTests}).

        @param user: The recipient's state, if it has sessions here.
        @return: See L{_toSessions}.
        @raise DeliveryError: If it is not delivered.
        """
        recipient = message.recipient
        if user is None or (user.access and user.accessOf(message.sender) is AccessList.BLOCK):
            raise _offline(recipient)
        # The aggregate presence (user.presence()) is open exactly when no
        # session appears offline and one is in a state other than offline;
        # those are the sessions _toSessions would give the message to.
        present: list[Session] = []
        for session in user.sessions:
            state = session.presence.state
            if state is _APPEAR_OFFLINE:
                raise _offline(recipient)
            if state is not _OFFLINE_STATE:
                present.append(session)
        if not present:
            raise _offline(recipient)
        if user.rules:
            return self._applyRules(user, user.presence().state, message)
        return self._give(present, message)

    def _applyRules(self, user: _UserState, state: PresenceState, message: Message) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        Deliver a message to a present user with presence rules: the first
        rule that matches decides (L{RuleAction}); with none, it is
        delivered as usual. Auto-replies and forwards never act on a marked
        message (L{MessageMark}: an auto-reply, a forwarded copy, an
        error), which is delivered as usual instead: two users' rules
        cannot loop. Each decision is logged, without the message's body.

        @return: See L{_toSessions}.
        @raise DeliveryError: If it is not delivered.
        """
        recipient, sender = message.recipient, message.sender
        local = sender.domain == self.domain
        for number, rule in enumerate(user.rules, 1):
            if rule.matches(state, sender, local):
                break
        else:
            return self._toSessions(user.sessions, message)
        action = rule.action
        if message.mark is not None and action in (RuleAction.AUTO_REPLY, RuleAction.FORWARD):
            self.log.info(
                "Rule {number} of {user} ({rule}) does not act on message {id} from {sender}, marked {mark}: delivered",
                number=number, user=recipient, rule=rule.describe(), id=message.messageId, sender=sender,
                mark=message.mark.value,
            )
            return self._toSessions(user.sessions, message)
        if action is RuleAction.REFUSE:
            seen = user.sees(sender)
            self.log.info(
                "Rule {number} of {user} ({rule}) refuses message {id} from {sender} ({answer})",
                number=number, user=recipient, rule=rule.describe(), id=message.messageId, sender=sender,
                answer="486 busy" if seen else "told offline: may not see the presence",
            )
            if seen:
                raise UserBusy(f"{recipient} is {state.label}", rule.alternate)
            raise _offline(recipient)
        now = self.clock.seconds()
        if action is RuleAction.AUTO_REPLY:
            last = user.repliedTo.get(sender)
            period = self.config.autoReplyPeriod
            if last is not None and now - last < period:
                outcome = f"no reply (already replied within auto_reply_period = {period:g} s)"
            else:
                _prune(user.repliedTo, now - period)
                user.repliedTo[sender] = now
                self._send(Message(recipient, sender, rule.text, timestamp=now, mark=MessageMark.AUTO_REPLY))
                outcome = "replied"
        elif action is RuleAction.FORWARD:
            assert rule.forwardTo is not None
            copy = Message(
                recipient,
                rule.forwardTo,
                f"[forwarded from {sender}] {message.body}",
                message.contentType,
                timestamp=now,
                mark=MessageMark.FORWARDED,
            )
            self._send(copy)
            outcome = f"forwarded to {rule.forwardTo}"
        else:
            outcome = "delivered as usual"
        self.log.info(
            "Rule {number} of {user} ({rule}) for message {id} from {sender}: {outcome}",
            number=number, user=recipient, rule=rule.describe(), id=message.messageId, sender=sender,
            outcome=outcome,
        )
        return self._toSessions(user.sessions, message)

    def _deliverToSessions(self, candidates: list[Session], message: Message) -> Deferred[DeliveryStatus]:
        """
        L{_toSessions} as a L{Deferred}.
        """
        try:
            outcome = self._toSessions(candidates, message)
        except BaseException:
            return fail()
        return succeed(outcome) if type(outcome) is DeliveryStatus else outcome  # type: ignore[return-value]

    def _toSessions(self, candidates: list[Session], message: Message) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        Give a message to those of C{candidates} that are present (have
        published a presence other than C{offline} and C{appear-offline}).

        A client in this process answers with an already fired L{Deferred}
        (L{ISessionClient}): its answer is taken at once, so a message to
        sessions of this process is delivered without a L{Deferred} of its
        own. Only the answers still to come (a proxied session's) are
        waited for.

        @return: L{DeliveryStatus.DELIVERED} if at least one of them took
            it; a L{Deferred} of that when some have not answered yet.
        @raise UserOffline: If none of them took it (or none is present).
        """
        sessions = [s for s in candidates if s.presence.state not in (_OFFLINE_STATE, _APPEAR_OFFLINE)]
        if not sessions:
            raise _offline(message.recipient)
        return self._give(sessions, message)

    def _give(self, sessions: list[Session], message: Message) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        Give a message to C{sessions}, present ones (L{_toSessions}).

        @return: See L{_toSessions}.
        @raise UserOffline: If none of them took it.
        """
        recipient = message.recipient
        took = 0
        waiting: list[tuple[Session, Deferred[Any]]] = []
        for session in sessions:
            try:
                answer = session.client.messageReceived(message)
            except BaseException:
                self._sessionFailed(Failure(), session, f"message {message.messageId}")
                continue
            if not isinstance(answer, Deferred):
                took += 1
            elif answer.called and not answer.paused:
                # Answered already: the result is there.
                result = answer.result
                if isinstance(result, Failure):
                    # Handled here (no "unhandled error" when it is freed).
                    answer.addErrback(self._sessionFailed, session, f"message {message.messageId}")
                else:
                    took += 1
            else:
                waiting.append((session, answer))
        if not waiting:
            if not took:
                raise _offline(recipient)
            return _DELIVERED
        results = DeferredList([d for _, d in waiting], consumeErrors=True)

        def counted(outcomes: list[tuple[bool, Any]]) -> DeliveryStatus:
            count = took
            for (session, _), (ok, result) in zip(waiting, outcomes):
                if ok:
                    count += 1
                else:
                    self._sessionFailed(result, session, f"message {message.messageId}")
            if not count:
                raise _offline(recipient)
            return DeliveryStatus.DELIVERED

        return results.addCallback(counted)

    def _deliverPresence(self, update: PresenceUpdate, here: bool) -> Deferred[DeliveryStatus]:
        """
        A contact's presence: C{here} says whether the contact is homed on
        this server. The lease of one homed elsewhere is kept: when it
        runs out without another update, the contact counts as offline.
        """
        user = self._localState(update.recipient)
        if user is None:
            return self._keepPresence(update, here)
        try:
            self._takePresence(user, update.sender, update.presence, here, update.lease)
        except NotAuthorised:
            return fail()
        return succeed(DeliveryStatus.DELIVERED)

    def _takePresence(
        self, user: _UserState, contact: Address, presence: Presence, here: bool, lease: float | None, told: _Told | None = None
    ) -> None:
        """
        L{_deliverPresence} to a user with sessions (C{user}): C{contact}'s
        C{presence}, with its C{lease}; C{here} says whether the contact is
        homed on this server. The user's sessions are told if what the
        user saw of the contact changed.

        @param told: C{presence} as the fan-out gives it to every watcher
            (its comparisons made once for all); one is made if C{None}.
        @raise NotAuthorised: If the user does not watch C{contact}, or
            blocks it.
        """
        if user.watching.get(contact) is not _AUTHORISED or (user.access and user.accessOf(contact) is AccessList.BLOCK):
            raise NotAuthorised(f"{user.address} does not watch {contact}")
        if here:
            if user.remote:
                # Not empty: a set of its own (markRemote).
                user.remote.discard(contact)  # type: ignore[union-attr]
        else:
            user.markRemote(contact)
        if not here and lease is not None and presence != OFFLINE:
            self._leaseContact(user, contact, lease)
        elif user.contactLeases:
            self._unleaseContact(user, contact)
        contactPresence = user.contactPresence
        old = contactPresence.get(contact, OFFLINE)
        if told is None:
            told = _Told(presence)
        if old is not presence and told.differsFrom(old):
            if told.offline:
                contactPresence.pop(contact, None)
            else:
                contactPresence[contact] = presence
            self._pushPresence(user.sessions, contact, presence, "a presence")

    def _keepPresence(self, update: PresenceUpdate, here: bool) -> Deferred[DeliveryStatus]:
        """
        Presence for a user without sessions: from a contact of another
        server (of another network, or of this domain homed elsewhere) the
        user may see, it is kept (L{_KeptPresence}) for as long as its
        lease, so that the user sees it at once on logging in instead of
        offline until the contact answers a probe. A contact of this
        server answers probes at once: nothing is kept for it.
        """
        me, contact = update.recipient, update.sender
        if here:
            return fail(UserOffline(f"{me} is offline"))
        if update.presence == OFFLINE:
            self._kept.drop(me, contact)
            return succeed(DeliveryStatus.DELIVERED)
        reads: list[Deferred[Any]] = [self.store.getAuthorisation(contact, me), self.store.getAccessOf(me, contact)]

        def decide(results: list[tuple[bool, Any]]) -> DeliveryStatus:
            state, access = (r for _, r in results)
            if state is not _AUTHORISED or access is AccessList.BLOCK:
                self._kept.drop(me, contact)
                raise NotAuthorised(f"{me} does not watch {contact}")
            until = None if update.lease is None else self.clock.seconds() + update.lease
            self._kept.keep(me, contact, update.presence, self.config.maxKeptPresences, until)
            return DeliveryStatus.DELIVERED

        d = DeferredList(reads, fireOnOneErrback=True, consumeErrors=True)
        return d.addCallbacks(decide, _firstError)

    def _answerProbe(self, probe: PresenceProbe) -> Deferred[DeliveryStatus]:
        answer = self._probeAnswer(probe)
        if answer is not None:
            self._sendPresence(answer)
        return succeed(DeliveryStatus.DELIVERED)

    def _probeAnswer(self, probe: PresenceProbe) -> PresenceUpdate | None:
        """
        The answer to a probe of a user of this server: its presence as the
        prober may see it, or C{None} when the probe is ignored (offline,
        unknown, not authorised, blocked alike: the prober assumes offline,
        and learns nothing).
        """
        target, watcher = probe.recipient, probe.sender
        user = self._localState(target)
        if user is not None and user.sees(watcher):
            return self._presenceFor(target, user, watcher, user.presence().toWatchers())
        return None

    def _deliverSubscription(self, account: Any, event: SubscriptionEvent, shared: bool) -> Deferred[DeliveryStatus]:
        """
        A subscription event for a user whose account record is
        C{account}, from a sender homed here when C{shared} (see
        L{_shares}). For a user with sessions the cache says what is
        needed; for one without, targeted reads do (one row, one or two
        access entries), never the user's whole lists.
        """
        me, other, kind = event.recipient, event.sender, event.kind
        if account is None or not account.enabled:
            # Answered as for a user who has not decided yet: a request
            # stays pending; nothing tells whether the account exists.
            return succeed(DeliveryStatus.DELIVERED)
        user = self._localState(me)
        if kind is SubscriptionKind.SUBSCRIBE:
            return self._subscriptionRequested(me, user, other, shared)
        if kind is SubscriptionKind.UNSUBSCRIBE:
            change = SetAuthorisation(me, other, None)
        elif kind is SubscriptionKind.AUTHORISE:
            if user is not None:
                for answer in user.awaiting.get(other, []):
                    answer[0] = True
            if user is not None and user.watching.get(other) is None:
                # An answer to nothing we asked: ignore it (RFC 6121 3.1.5);
                # the store, for a user without sessions, does the same
                # (onlyIf).
                return succeed(DeliveryStatus.DELIVERED)
            change = SetAuthorisation(other, me, _AUTHORISED, onlyIf=ANY_STATE)
        else:
            change = SetAuthorisation(other, me, _REFUSED, onlyIf=ANY_STATE)
        d = self._store(user, [] if shared else [change], [change])
        if kind is SubscriptionKind.REFUSE:
            self._kept.drop(me, other)
        if user is not None:
            if kind is SubscriptionKind.REFUSE:
                d.addCallback(lambda _: self._forgetPresence(user, other))
            d.addCallback(lambda _: self._tell(user, event))
        return d.addCallback(lambda _: DeliveryStatus.DELIVERED)

    def _subscriptionRequested(
        self, me: Address, user: _UserState | None, watcher: Address, shared: bool
    ) -> Deferred[DeliveryStatus]:
        """
        C{watcher} asks to watch C{me} (whose cached state is C{user}, or
        C{None} without sessions).
        """
        if user is not None:
            return self._decideRequest(me, user, watcher, user.accessOf(watcher), user.watchers.get(watcher), shared)
        reads: list[Deferred[Any]] = [self.store.getAccessOf(me, watcher), self.store.getAuthorisation(me, watcher)]

        def decide(results: list[tuple[bool, Any]]) -> Deferred[DeliveryStatus]:
            access, current = (r for _, r in results)
            return self._decideRequest(me, None, watcher, access, current, shared)

        d = DeferredList(reads, fireOnOneErrback=True, consumeErrors=True)
        return d.addCallbacks(decide, _firstError)

    def _decideRequest(
        self,
        me: Address,
        user: _UserState | None,
        watcher: Address,
        access: AccessList,
        current: AuthorisationState | None,
        shared: bool,
    ) -> Deferred[DeliveryStatus]:
        if access is AccessList.BLOCK:
            # Dropped, and answered as a request still pending is.
            self.log.debug("{me} blocks {watcher}: its subscription request is dropped", me=me, watcher=watcher)
            return succeed(DeliveryStatus.DELIVERED)
        if current is _AUTHORISED or access is AccessList.ALLOW:
            # A watcher of this store has just written its request: turn
            # it into an authorisation, unless it has been withdrawn since.
            write = SetAuthorisation(me, watcher, _AUTHORISED, onlyIf=(_PENDING,) if shared else ())
            d = self._store(user, [write], [SetAuthorisation(me, watcher, _AUTHORISED)])
            d.addCallback(lambda _: self._authorised(me, user, watcher))
        else:
            pending = SetAuthorisation(me, watcher, _PENDING)
            # A watcher of this store wrote its request itself, within
            # max_pending_requests; another's is kept here only within it.
            limited = SetAuthorisation(me, watcher, _PENDING, pendingLimit=self.config.maxPendingRequests)
            d = self._store(user, [] if shared else [limited], [pending])
            if user is not None:
                event = SubscriptionEvent(SubscriptionKind.SUBSCRIBE, watcher, me)
                d.addCallback(lambda _: self._tell(user, event))
            delivered = d.addCallback(lambda _: DeliveryStatus.DELIVERED)
            # Past the limit: not kept, and answered as a pending request is.
            return delivered.addErrback(self._requestDropped, me, watcher)
        return d.addCallback(lambda _: DeliveryStatus.DELIVERED)

    def _requestDropped(self, f: Failure, target: Address, watcher: Address) -> DeliveryStatus:
        """
        A subscription request was not kept: C{target} has
        C{max_pending_requests} requests awaiting an answer. It is answered
        as a request kept pending is (nothing tells the requester), and
        logged: the first at once, then one line every
        L{REFUSAL_LOG_INTERVAL} seconds counting the others, however many
        arrive.
        """
        f.trap(PendingRequestsFull)
        self.metrics.limitHit("max_pending_requests")
        if self._droppedTimer is not None:
            self._dropped[target] += 1
        else:
            self.log.warn(
                "Subscription request from {watcher} to {target} not kept: {target} has {limit} requests"
                " awaiting an answer (max_pending_requests); the next are counted for {interval} s",
                watcher=watcher,
                target=target,
                limit=self.config.maxPendingRequests,
                interval=REFUSAL_LOG_INTERVAL,
            )
            self._droppedTimer = self.clock.callLater(REFUSAL_LOG_INTERVAL, self._droppedLogDue)
        return DeliveryStatus.DELIVERED

    def _droppedLogDue(self) -> None:
        # Requests kept coming: say how many, and go on counting; none came:
        # the next is logged at once.
        self._droppedTimer = None
        if self._dropped:
            self._logDropped()
            self._droppedTimer = self.clock.callLater(REFUSAL_LOG_INTERVAL, self._droppedLogDue)

    def _logDropped(self) -> None:
        dropped, self._dropped = self._dropped, Counter()
        if not dropped:
            return
        top = dropped.most_common(5)
        targets = ", ".join(f"{t} ({n})" for t, n in top)
        if len(dropped) > len(top):
            targets += f" and {len(dropped) - len(top)} more users"
        self.log.warn(
            "{count} more subscription requests not kept (max_pending_requests = {limit}), to {targets}",
            count=sum(dropped.values()),
            limit=self.config.maxPendingRequests,
            targets=targets,
        )

    def _forgetPresence(self, user: _UserState, other: Address) -> None:
        """
        C{user} may no longer watch C{other}: it sees C{other} offline now.
        """
        self._unleaseContact(user, other)
        if user.contactPresence.pop(other, OFFLINE) != OFFLINE:
            self._push(user.sessions, "presence", lambda c: c.presenceReceived(other, OFFLINE))

    def _authorised(self, me: Address, user: _UserState | None, watcher: Address) -> None:
        """
        Tell C{watcher} it may watch C{me} (whose cached state is C{user},
        or C{None} without sessions), and what it sees now.
        """
        self._send(SubscriptionEvent(SubscriptionKind.AUTHORISE, me, watcher))
        self._send(self._presenceFor(me, user, watcher, user.presence().toWatchers() if user is not None else OFFLINE))

    def _tell(self, user: _UserState, event: SubscriptionEvent) -> None:
        """
        Tell C{user}'s sessions of a subscription event, and of the contact
        entry it changed.
        """
        other = event.sender
        contact = user.contacts.get(other)
        self._push(user.sessions, "subscription event", lambda c: c.subscriptionReceived(event))
        if contact is not None:
            view = user.view(contact)
            self._push(user.sessions, "contact", lambda c: c.contactUpdated(view))

    # -- what sessions ask (each in its user's lane) --------------------------

    def subscribe(self, user: _UserState, target: Address, displayName: str) -> Deferred[AuthorisationState]:
        """
        Add C{target} to C{user}'s contacts and ask to watch it. The writes
        and the request leave in C{user}'s lane; the answer is awaited
        outside it, then read in it.
        """
        me = user.address
        if target == me:
            return fail(InvalidAddress("you cannot subscribe to yourself"))
        # What the request changed, and how to undo it if the request goes
        # nowhere: (what it wrote, what to write back).
        undo: list[tuple[HomeChange, HomeChange]] = []

        # Set when the target's authorisation reaches this user's lane
        # before the answer is read (see _tellAnswer).
        answer = [False]

        # Whether the target is homed here: asked before the lane needs it.
        targetHere = self._shares(target)

        def ask(here: bool) -> Deferred[list[Deferred[DeliveryStatus]]]:
            old = user.contacts.get(target)
            if old is None:
                self._checkQuota("contacts", len(user.contacts), self.config.maxContacts, "max_contacts")
            name = displayName[:MAX_DISPLAY_NAME_CHARS]
            contact = ContactRecord(target, name or (old.displayName if old is not None else ""))
            previous = user.watching.get(target)
            changes: list[HomeChange] = [PutContact(me, contact)]
            undo.append((changes[0], PutContact(me, old) if old is not None else RemoveContact(me, target)))
            if previous is not _AUTHORISED:
                # The request of a user of this server to another is kept
                # in the target's store by this request: within the
                # target's max_pending_requests.
                limit = self.config.maxPendingRequests if here else None
                changes.append(SetAuthorisation(target, me, _PENDING, pendingLimit=limit))
                undo.append((changes[1], SetAuthorisation(target, me, previous)))

            def stored(_: None) -> list[Deferred[DeliveryStatus]]:
                # (In a list: the lane must not wait for the target.)
                self._contactChanged(user, target)
                # Even when this user was authorised before, the target
                # decides (it may block this user now): it answers with an
                # authorisation when it still grants one.
                user.awaitAnswer(target, answer)
                return [self.router.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, me, target))]

            def full(f: Failure) -> Deferred[list[Deferred[DeliveryStatus]]]:
                # The target has max_pending_requests already (whether or
                # not the account exists): the contact is added, the
                # request is not kept nor sent, and the answer is that of
                # a pending request.
                dropped = self._requestDropped(f, target, me)
                del undo[1:]

                def added(_: None) -> list[Deferred[DeliveryStatus]]:
                    self._contactChanged(user, target)
                    return [succeed(dropped)]

                return self._store(user, changes[:1]).addCallback(added)

            return self._store(user, changes).addCallbacks(stored, full)

        def asked(request: list[Deferred[DeliveryStatus]]) -> Deferred[AuthorisationState]:
            return request[0].addCallbacks(answered, refused)

        def answered(_: object) -> Deferred[AuthorisationState]:
            # In the lane, after whatever the target answered meanwhile: a
            # target of this server has queued its answer before its
            # delivery returned; another network's answer comes later.
            def read() -> AuthorisationState:
                _forget(user, target, answer)
                return _AUTHORISED if answer[0] else _PENDING

            return self._serial(me, read)

        def refused(f: Failure) -> Deferred[AuthorisationState]:
            # The request went nowhere: undo what is still as it left it
            # (a later request may have changed it since), keep the error.
            def undoIt() -> Deferred[AuthorisationState]:
                _forget(user, target, answer)
                changes = [back for wrote, back in undo if _stillAsWritten(user, wrote)]
                d = self._store(user, changes) if changes else succeed(None)
                return d.addCallback(lambda _: self._contactUndone(user, target)).addCallback(lambda _: f)

            return self._serial(me, undoIt)

        return self._outsideLane(self._serial(me, lambda: targetHere.addCallback(ask)).addCallback(asked))

    def _contactUndone(self, user: _UserState, target: Address) -> None:
        if target in user.contacts:
            self._contactChanged(user, target)
        else:
            self._push(user.sessions, "contact removal", lambda c: c.contactRemoved(target))

    def putContact(self, user: _UserState, target: Address, displayName: str) -> Deferred[None]:
        if target == user.address:
            return fail(InvalidAddress("you cannot add yourself as a contact"))
        if target not in user.contacts:
            self._checkQuota("contacts", len(user.contacts), self.config.maxContacts, "max_contacts")
        contact = ContactRecord(target, displayName[:MAX_DISPLAY_NAME_CHARS])
        d = self._store(user, [PutContact(user.address, contact)])
        return d.addCallback(lambda _: self._contactChanged(user, target))

    def unsubscribe(self, user: _UserState, target: Address) -> Deferred[None]:
        me = user.address
        had = user.watching.get(target)
        wasContact = target in user.contacts
        d = self._store(user, [SetAuthorisation(target, me, None), RemoveContact(me, target)])

        def tell(_: None) -> None:
            if wasContact:
                self._push(user.sessions, "contact removal", lambda c: c.contactRemoved(target))
            self._forgetPresence(user, target)
            if had is not None:
                self._send(SubscriptionEvent(SubscriptionKind.UNSUBSCRIBE, me, target))

        return d.addCallback(tell)

    def authorise(self, user: _UserState, watcher: Address, allow: bool) -> Deferred[None]:
        """
        Answer C{watcher}'s request (or change the answer). Allowing adds
        the watcher to the user's contact list if it is not there yet
        (subscription C{from}, as RFC 6121 3.1.5 has the contact's server
        do), within C{max_contacts}; denying leaves the list as it is.
        """
        me = user.address
        if watcher == me:
            return fail(InvalidAddress("you cannot authorise yourself"))
        was = user.watchers.get(watcher)
        state = _AUTHORISED if allow else _REFUSED
        changes: list[HomeChange] = [SetAuthorisation(me, watcher, state)]
        if allow and watcher not in user.contacts:
            self._checkQuota("contacts", len(user.contacts), self.config.maxContacts, "max_contacts")
            changes.append(PutContact(me, ContactRecord(watcher)))
        d = self._store(user, changes)

        def tell(_: None) -> None:
            self._contactChanged(user, watcher)
            if allow:
                self._authorised(me, user, watcher)
            else:
                self._send(SubscriptionEvent(SubscriptionKind.REFUSE, me, watcher))
                if was is _AUTHORISED:
                    self._send(PresenceUpdate(me, watcher, OFFLINE))

        return d.addCallback(tell)

    def setAccess(self, user: _UserState, entry: str, accessList: AccessList) -> Deferred[None]:
        me = user.address
        if accessList is not AccessList.NONE and entry not in user.access:
            self._checkQuota(
                "access-list entries", len(user.access), self.config.maxAccessEntries, "max_access_entries"
            )
        # Whom the entry can concern: its address, or its domain's; found
        # through indexes, without a look at the others.
        watchers = user.watchers.of(entry)
        watched = [t for t in user.watching.of(entry) if user.watching[t] is _AUTHORISED]
        before = {w for w in watchers if user.sees(w)}
        blockedBefore = {t for t in watched if user.accessOf(t) is AccessList.BLOCK}
        d = self._store(user, [SetAccess(me, entry, accessList)])

        def stored(_: None) -> None:
            # Block means block, at once: those blocked no longer see this
            # user, nor does this user see them; unblocked, both ways again.
            after = {w for w in watchers if user.sees(w)}
            seen = user.presence().toWatchers()
            for watcher in sorted(before - after):
                self._send(PresenceUpdate(me, watcher, OFFLINE))
            for watcher in sorted(after - before):
                self._send(self._presenceFor(me, user, watcher, seen))
            blockedAfter = {t for t in watched if user.accessOf(t) is AccessList.BLOCK}
            for target in sorted(blockedAfter - blockedBefore):
                self._forgetPresence(user, target)
            for target in sorted(blockedBefore - blockedAfter):
                self._send(PresenceProbe(me, target))

        return d.addCallback(stored)

    def setRule(self, user: _UserState, state: PresenceState, alternate: str | None) -> Deferred[None]:
        """
        The request of the first protocol: set (or remove, C{None}) the
        refusal for C{state} (L{PresenceRule.legacyState}): it replaces
        such a rule where it stands, or comes last.
        """
        if state not in RULE_STATES:
            return fail(ValueError(f"rules apply to busy and away states, not {state.label}"))
        rules = list(user.rules)
        at = next((n for n, r in enumerate(rules) if r.legacyState is state), None)
        if alternate is None:
            if at is None:
                return succeed(None)
            del rules[at]
            return self.replaceRules(user, rules, checkOnly=None)
        rule = PresenceRule.refuse(state, alternate)
        if at is None:
            rules.append(rule)
        else:
            rules[at] = rule
        return self.replaceRules(user, rules, checkOnly=rule)

    def replaceRules(
        self, user: _UserState, rules: list[PresenceRule], checkOnly: PresenceRule | None | bool = False
    ) -> Deferred[None]:
        """
        Replace C{user}'s rules with C{rules}, in order, within
        C{max_rules} (a list already longer, from before the quota was
        lowered, may stay as long but not grow).

        @param checkOnly: Which rule to check (L{checkRule}): C{False}
            (the default), all of them; a rule, only that one (added to
            rules already stored); C{None}, none (a rule removed).
        """
        try:
            if checkOnly is False:
                rules = [self._checkRule(user, r) for r in rules]
            elif isinstance(checkOnly, PresenceRule):
                checked = self._checkRule(user, checkOnly)
                rules = [checked if r is checkOnly else r for r in rules]
        except (ValueError, InvalidAddress) as e:
            return fail(ValueError(str(e)))
        limit = self.config.maxRules
        if len(rules) > max(limit, len(user.rules)):
            return fail(QuotaExceeded(f"{len(rules)} presence rules are more than allowed (max_rules = {limit})"))
        self.log.info("Presence rules of {user} set: {count} rules", user=user.address, count=len(rules))
        return self._store(user, [SetRules(user.address, tuple(rules))])

    def _checkRule(self, user: _UserState, rule: PresenceRule) -> PresenceRule:
        checked = checkRule(rule)
        if checked.forwardTo == user.address:
            raise ValueError("a rule cannot forward to yourself")
        return checked

    def userRules(self, address: Address) -> Deferred[list[PresenceRule]]:
        """
        The presence rules of a user homed here, with or without sessions
        (for the manhole and scripts).
        """

        def read() -> Deferred[list[PresenceRule]]:
            user = self._localState(address)
            if user is not None:
                return succeed(list(user.rules))
            return self.store.getRules(address)

        return self._serial(address, read)

    def setUserRules(self, address: Address, rules: Sequence[PresenceRule]) -> Deferred[None]:
        """
        Replace the presence rules of a user homed here, with or without
        sessions (for the manhole and scripts): checked as a user's own
        request is (L{checkRule}, C{max_rules}).
        """

        def write(rows: list[PresenceRule]) -> Deferred[None]:
            # No sessions: a state of its stored rules only, dropped after.
            return self.replaceRules(_UserState(address, [], [], {}, rows), list(rules))

        def work() -> Deferred[None]:
            user = self._localState(address)
            if user is not None:
                return self.replaceRules(user, list(rules))
            return self.store.getRules(address).addCallback(write)

        return self._serial(address, work)

    def _checkQuota(self, what: str, count: int, limit: int, key: str) -> None:
        """
        @raise QuotaExceeded: If one more of C{what} would take C{count}
            past C{limit} (the C{[home]} key C{key}).
        """
        if count >= limit:
            self.metrics.limitHit(key)
            raise QuotaExceeded(f"you have {count} {what}, the most allowed ({key} = {limit})")

    def _contactChanged(self, user: _UserState, other: Address) -> None:
        contact = user.contacts.get(other)
        if contact is None:
            return
        view = user.view(contact)
        self._push(user.sessions, "contact", lambda c: c.contactUpdated(view))




def answerNoAccount(event: Event) -> Deferred[DeliveryStatus]:
    """
    The answer of a home server to an event for a user of its domain that
    has no account (or a disabled one), from a sender not homed on it: the
    same as for a user who exists but has no session and has authorised
    nobody, so that it tells nothing. A message gets L{UserOffline} (the
    one text of L{_offline}); a presence update, L{NotAuthorised} (an
    offline one is taken); a probe or a subscription event is taken (a
    request stays pending for ever).

    A router with no home server of its own answers so for users the
    directory does not know (L{imgateway.router.router.Router}).
    """
    recipient = event.recipient
    if isinstance(event, Message):
        return fail(_offline(recipient))
    if isinstance(event, PresenceUpdate) and event.presence != OFFLINE:
        return fail(NotAuthorised(f"{recipient} does not watch {event.sender}"))
    return succeed(DeliveryStatus.DELIVERED)


def _shuttingDown() -> ServiceUnavailable:
    return ServiceUnavailable("shutting down")


def _offline(recipient: Address) -> UserOffline:
    """
    The one answer for a message that cannot be delivered to a user of
    this server, whatever the reason (see L{HomeServer._deliverMessage}).
    """
    return UserOffline(f"{recipient} is offline")


def _prune(replied: dict[Address, float], before: float) -> None:
    """
    Forget the auto-replies sent before C{before} (their period is over),
    once there are many: the table stays as large as the senders replied
    to within one period.
    """
    if len(replied) >= 64:
        for sender in [s for s, when in replied.items() if when <= before]:
            del replied[sender]


def _userState(records: UserRecords, address: Address) -> _UserState:
    return _UserState(address, records.contacts, records.authorisations, records.access, records.rules)


def _forget(user: _UserState, target: Address, answer: list[bool]) -> None:
    awaiting = user.awaiting
    waiting = awaiting.get(target, [])
    if answer in waiting:
        waiting.remove(answer)
    if not waiting and target in awaiting:
        assert isinstance(awaiting, dict)
        del awaiting[target]
        if not awaiting:
            user.awaiting = _NO_ENTRIES


def _stillAsWritten(user: _UserState, change: HomeChange) -> bool:
    """
    @return: Whether C{user}'s cache still holds what C{change} (a
        L{PutContact} or a L{SetAuthorisation} by the user) wrote.
    """
    if isinstance(change, PutContact):
        return user.contacts.get(change.contact.address) == change.contact
    if isinstance(change, SetAuthorisation):
        return user.watching.get(change.target) is change.state
    return False


def _firstError(f: Failure) -> Failure:
    """
    The failure of the L{Deferred} that failed a
    C{DeferredList(..., fireOnOneErrback=True)}.
    """
    return f.value.subFailure  # type: ignore[no-any-return,union-attr]


def _fire(result: Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        result.errback(outcome)
    else:
        result.callback(outcome)


def _uniqueLabel(label: str, sessionId: str, user: _UserState) -> str:
    """
    C{label} made unique among C{user}'s sessions (see
    L{IHomeServer.openSession}).
    """
    label = label[:MAX_LABEL_CHARS] or sessionId
    taken = {s.label for s in user.sessions}
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        suffix = f"-{n}"
        candidate = label[: MAX_LABEL_CHARS - len(suffix)] + suffix
    return candidate


class HomeServerService(Service):
    """
    Runs a L{HomeServer}. On stop, the home server stops taking work
    (L{HomeServer.drain}), every session is told the server is shutting
    down and closed, and the service's stop waits until the work under way
    has ended: the stores may close once it has.
    """

    def __init__(self, homeServer: HomeServer) -> None:
        self.homeServer = homeServer

    def stopService(self) -> Deferred[None]:
        super().stopService()
        drained = self.homeServer.drain()
        self.homeServer.closeAll("shutdown")
        return drained
