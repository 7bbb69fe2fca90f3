# -*- test-case-name: tests.test_home -*-
"""
The home server: its users' sessions, presence, contacts, watchers, access
lists and presence rules, and delivery of inbound events to them.

It knows no wire format. Faces open sessions on it for authenticated users
(through the gateway's portal); the router hands it every event for its
domain (L{HomeServer.deliver}); events for other users leave through the
router.

State: everything that must survive a restart is written to the
L{IHomeStore} before it is acted upon. For users with at least one session,
a L{_UserState} caches their rows, so delivering a message or a presence
update needs no storage read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.config import HomeConfig
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import (
    Blocked,
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    NoSuchUser,
    NotAuthorised,
    TooLarge,
    TooManySessions,
    UserBusy,
    UserOffline,
)
from imgateway.core.events import (
    Event,
    Message,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    SubscriptionKind,
    newMessageId,
)
from imgateway.core.presence import OFFLINE, Presence, PresenceState, aggregate
from imgateway.core.records import (
    AccessList,
    AuthorisationState,
    ContactRecord,
    ContactView,
    PresenceRule,
    Subscription,
)
from imgateway.interfaces import (
    IDirectory,
    IHomeServer,
    IHomeStore,
    IRouter,
    ISession,
    ISessionClient,
)

__all__ = ["MAX_LABEL_CHARS", "HomeServer", "HomeServerService", "Session"]

#: The longest session label, in characters (an XMPP resource may be longer
#: on the wire; longer labels are cut).
MAX_LABEL_CHARS = 256

T = TypeVar("T")

_AUTHORISED = AuthorisationState.AUTHORISED
_PENDING = AuthorisationState.PENDING
_REFUSED = AuthorisationState.REFUSED


def parseAccessEntry(entry: str) -> str:
    """
    Normalise an access-list entry: an address (C{bob@corp.example}, or an
    C{im:}/C{pres:} URI) or a whole domain (C{corp.example}).

    @raise InvalidAddress: If it is neither.
    """
    if "@" in entry:
        return str(Address.fromString(entry))
    return normaliseDomain(entry)


class _UserState:
    """
    The cached rows of one user with sessions.
    """

    def __init__(
        self,
        address: Address,
        contacts: list[ContactRecord],
        authorisations: list[tuple[Address, Address, AuthorisationState]],
        access: dict[str, AccessList],
        rules: list[PresenceRule],
    ) -> None:
        self.address = address
        self.contacts = {c.address: c for c in contacts}
        # (target, watcher) -> state, for rows where the user is either.
        self.authorisations = {(t, w): s for t, w, s in authorisations}
        self.access = access
        self.rules = {r.state: r.alternate for r in rules}
        # What the user has been told of its contacts' presence.
        self.contactPresence: dict[Address, Presence] = {}
        self.sessions: list[Session] = []
        # The presence watchers were last told.
        self.announced: Presence = OFFLINE

    def accessOf(self, other: Address) -> AccessList:
        """
        @return: The list that holds C{other}, by address or by domain
            (an address entry wins over a domain entry).
        """
        found = self.access.get(str(other))
        if found is None:
            found = self.access.get(other.domain, AccessList.NONE)
        return found

    def state(self, target: Address, watcher: Address) -> AuthorisationState | None:
        return self.authorisations.get((target, watcher))

    def watchers(self) -> list[Address]:
        """
        @return: Who may watch this user, less blocked ones.
        """
        return [
            w
            for (t, w), s in self.authorisations.items()
            if t == self.address and s is _AUTHORISED and self.accessOf(w) is not AccessList.BLOCK
        ]

    def presence(self) -> Presence:
        return aggregate(s.presence for s in self.sessions)

    def view(self, contact: ContactRecord) -> ContactView:
        me, them = self.address, contact.address
        to = self.state(them, me) is _AUTHORISED
        return ContactView(
            address=them,
            displayName=contact.displayName,
            subscription=Subscription.fromFlags(to, self.state(me, them) is _AUTHORISED),
            pending=self.state(them, me) is _PENDING,
            presence=self.contactPresence.get(them, OFFLINE) if to else OFFLINE,
        )


@implementer(ISession)
class Session:
    """
    One logged-in session; see L{ISession}.
    """

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
        self.closed = False
        self._lease: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<Session {self.sessionId} {self.address} {self.label!r} {self.presence}>"

    def publish(self, presence: Presence, lease: float | None = None) -> float:
        """
        Publish this session's presence; see L{ISession.publish}.

        @return: The lease granted, in seconds.
        """
        if self.closed:
            return 0.0
        granted = self._server.grantLease(lease)
        if self._lease is not None and self._lease.active():
            self._lease.cancel()
        self._lease = None
        if presence.state is not PresenceState.OFFLINE:
            self._lease = self._server.clock.callLater(granted, self._leaseExpired)
        self.presence = presence
        self._server.presenceChanged(self._user)
        return granted

    def _leaseExpired(self) -> None:
        self._lease = None
        self._server.log.info(
            "Presence lease of {session} ran out; it now counts as offline", session=self
        )
        self.presence = OFFLINE
        self._server.presenceChanged(self._user)

    def sendMessage(
        self,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> Deferred[DeliveryStatus]:
        if self.closed:
            return fail(NotAuthorised("session closed"))
        limit = self._server.config.maxMessageChars
        if len(body) > limit:
            return fail(TooLarge(f"message longer than {limit} characters"))
        try:
            message = Message(
                sender=self.address,
                recipient=recipient,
                body=body,
                contentType=contentType,
                messageId=messageId or newMessageId(),
                timestamp=self._server.clock.seconds(),
            )
        except ValueError as e:
            return fail(InvalidAddress(str(e)))
        return self._server.router.deliver(message)

    def subscribe(self, target: Address, displayName: str = "") -> Deferred[AuthorisationState]:
        return self._server.subscribe(self._user, target, displayName)

    def putContact(self, contact: Address, displayName: str = "") -> Deferred[None]:
        return self._server.putContact(self._user, contact, displayName)

    def unsubscribe(self, target: Address) -> Deferred[None]:
        return self._server.unsubscribe(self._user, target)

    def authorise(self, watcher: Address, allow: bool) -> Deferred[None]:
        return self._server.authorise(self._user, watcher, allow)

    def contacts(self) -> Deferred[list[ContactView]]:
        user = self._user
        return succeed([user.view(c) for _, c in sorted(user.contacts.items())])

    def pendingRequests(self) -> Deferred[list[Address]]:
        user = self._user
        return succeed(
            sorted(w for (t, w), s in user.authorisations.items() if t == user.address and s is _PENDING)
        )

    def setAccess(self, entry: str, accessList: AccessList) -> Deferred[None]:
        try:
            normal = parseAccessEntry(entry)
        except InvalidAddress as e:
            return fail(e)
        return self._server.setAccess(self._user, normal, accessList)

    def accessLists(self) -> Deferred[dict[str, AccessList]]:
        return succeed(dict(sorted(self._user.access.items())))

    def setRule(self, state: PresenceState, alternate: str | None) -> Deferred[None]:
        return self._server.setRule(self._user, state, alternate)

    def rules(self) -> Deferred[list[PresenceRule]]:
        return succeed(
            [PresenceRule(s, a) for s, a in sorted(self._user.rules.items(), key=lambda i: i[0].value)]
        )

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self._lease is not None and self._lease.active():
            self._lease.cancel()
        self._lease = None
        self._server.sessionClosed(self, reason)


@implementer(IHomeServer)
class HomeServer:
    """
    A home server; see the module docstring and L{IHomeServer}.

    @ivar name: This home server's name in the directory.
    @ivar domain: The domain of its users.
    @ivar clock: Where leases are timed.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        domain: str,
        directory: IDirectory,
        store: IHomeStore,
        router: IRouter,
        clock: IReactorTime,
        config: HomeConfig = HomeConfig(),
    ) -> None:
        self.name = name
        self.domain = domain
        self.directory = directory
        self.store = store
        self.router = router
        self.clock = clock
        self.config = config
        self._users: dict[Address, _UserState] = {}
        self._loading: dict[Address, Deferred[_UserState]] = {}
        self._ids = itertools.count(1)

    # -- sessions -----------------------------------------------------------

    def openSession(self, address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        def opened(user: _UserState) -> ISession:
            if len(user.sessions) >= self.config.maxSessionsPerUser:
                self._forgetIfIdle(user)
                raise TooManySessions(
                    f"{address} already has {len(user.sessions)} sessions "
                    f"(max_sessions_per_user = {self.config.maxSessionsPerUser})"
                )
            sessionId = f"{self.name}-{next(self._ids)}"
            session = Session(self, user, client, _uniqueLabel(label, sessionId, user), sessionId)
            first = not user.sessions
            user.sessions.append(session)
            self.log.info("Session {session} opened", session=session)
            if first:
                self._probeContacts(user)
            return session

        return self._user(address).addCallback(opened)

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
        Called by a session when it ends.
        """
        user = self._users.get(session.address)
        if user is None or session not in user.sessions:
            return
        user.sessions.remove(session)
        self.log.info("Session {session} closed ({reason})", session=session, reason=reason or "no reason given")
        self.presenceChanged(user)
        self._forgetIfIdle(user)

    def grantLease(self, asked: float | None) -> float:
        """
        @return: The presence lease to grant for one asked for (or the
            default for C{None}), within the configured bounds.
        """
        c = self.config
        if asked is None:
            return c.presenceLease
        return min(max(asked, c.minPresenceLease), c.maxPresenceLease)

    def _user(self, address: Address) -> Deferred[_UserState]:
        """
        The cached state of C{address}, loading it if needed.
        """
        user = self._users.get(address)
        if user is not None:
            return succeed(user)
        loading = self._loading.get(address)
        if loading is None:
            loading = self._load(address)
            self._loading[address] = loading

            def loaded(u: _UserState) -> _UserState:
                self._loading.pop(address, None)
                self._users[address] = u
                return u

            def failed(f: Failure) -> Failure:
                self._loading.pop(address, None)
                return f

            loading.addCallbacks(loaded, failed)
        waiter: Deferred[_UserState] = Deferred()
        loading.addBoth(_chain(waiter))
        return waiter

    def _load(self, address: Address) -> Deferred[_UserState]:
        s = self.store
        ds: list[Deferred[Any]] = [
            s.getContacts(address),
            s.getAuthorisations(address),
            s.getAccess(address),
            s.getRules(address),
        ]
        d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)

        def build(results: list[tuple[bool, Any]]) -> _UserState:
            contacts, auths, access, rules = (r for _, r in results)
            return _UserState(address, contacts, auths, access, rules)

        def unwrap(f: Failure) -> Failure:
            return f.value.subFailure  # type: ignore[no-any-return,union-attr]

        return d.addCallbacks(build, unwrap)

    def _forgetIfIdle(self, user: _UserState) -> None:
        if not user.sessions and self._users.get(user.address) is user:
            del self._users[user.address]

    def _localState(self, address: Address) -> _UserState | None:
        """
        The cached state of a user with sessions, or C{None}.
        """
        user = self._users.get(address)
        return user if user is not None and user.sessions else None

    # -- presence -----------------------------------------------------------

    def presenceChanged(self, user: _UserState) -> None:
        """
        Recompute C{user}'s aggregate presence; tell its sessions, and its
        watchers if what they see changed.
        """
        presence = user.presence()
        self._push(user.sessions, "own presence", lambda c: c.presenceReceived(user.address, presence))
        seen = presence.toWatchers()
        if seen == user.announced:
            return
        user.announced = seen
        for watcher in user.watchers():
            self._send(PresenceUpdate(user.address, watcher, seen))

    def _probeContacts(self, user: _UserState) -> None:
        """
        Ask for the presence of every contact C{user} may watch.
        """
        for (target, watcher), state in list(user.authorisations.items()):
            if watcher == user.address and state is _AUTHORISED:
                self._send(PresenceProbe(user.address, target))

    def _push(self, sessions: Iterable[Session], what: str, call: Callable[[ISessionClient], Deferred[None]]) -> None:
        """
        Give something to each of C{sessions}' clients; a client that could
        not take it is logged (it is the face's to close the session).

        @param what: What is given, for the log.
        @param call: Calls the client.
        """
        for session in list(sessions):
            d: Deferred[None] = maybeDeferred(call, session.client)
            d.addErrback(self._pushFailed, session, what)

    def _pushFailed(self, f: Failure, session: Session, what: str) -> None:
        self.log.failure("Session {session} could not take a {what}", f, session=session, what=what)

    def _send(self, event: Event) -> Deferred[DeliveryStatus | None]:
        """
        Send an event whose outcome nobody waits for (presence, answers):
        failures are logged, never raised.
        """

        def failed(f: Failure) -> None:
            if f.check(UserOffline):
                return
            if f.check(DeliveryError):
                self.log.debug("{event!r} not delivered: {error!r}", event=event, error=f.value)
            else:
                self.log.failure("Sending {event!r}", f, event=event)

        d: Deferred[DeliveryStatus | None] = self.router.deliver(event)  # type: ignore[assignment]
        return d.addErrback(failed)

    # -- inbound events (IRoute) ---------------------------------------------

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver an event to a user of this home server.
        """
        if event.recipient.domain != self.domain:
            return fail(NoSuchUser(f"{event.recipient} is not a user of {self.domain}"))
        if isinstance(event, Message):
            return self._deliverMessage(event)
        if isinstance(event, PresenceUpdate):
            return self._deliverPresence(event)
        if isinstance(event, PresenceProbe):
            return self._answerProbe(event)
        return self._deliverSubscription(event)

    def _deliverMessage(self, message: Message) -> Deferred[DeliveryStatus]:
        user = self._localState(message.recipient)
        if user is None:
            return self._refuseToAbsent(message.recipient, message.sender)
        if user.accessOf(message.sender) is AccessList.BLOCK:
            return fail(Blocked(f"{message.recipient} does not accept messages from {message.sender}"))
        presence = user.presence()
        if not presence.isOpen:
            return fail(UserOffline(f"{message.recipient} is offline"))
        alternate = user.rules.get(presence.state)
        if alternate is not None:
            return fail(UserBusy(f"{message.recipient} is {presence.state.label}", alternate))
        sessions = [s for s in user.sessions if s.presence.state is not PresenceState.OFFLINE]
        results = DeferredList(
            [maybeDeferred(s.client.messageReceived, message) for s in sessions], consumeErrors=True
        )

        def counted(outcomes: list[tuple[bool, Any]]) -> DeliveryStatus:
            took = 0
            for session, (ok, result) in zip(sessions, outcomes):
                if ok:
                    took += 1
                else:
                    self.log.failure(
                        "Session {session} could not take message {id}", result, session=session, id=message.messageId
                    )
            if not took:
                raise UserOffline(f"{message.recipient} is offline")
            return DeliveryStatus.DELIVERED

        return results.addCallback(counted)

    def _refuseToAbsent(self, recipient: Address, sender: Address) -> Deferred[DeliveryStatus]:
        """
        The failure for an event to a user with no session: no such user,
        blocked, or offline.
        """

        def check(account: Any) -> Deferred[DeliveryStatus]:
            if account is None or not account.enabled:
                raise NoSuchUser(f"no such user: {recipient}")
            return self.store.getAccess(recipient).addCallback(blocked)

        def blocked(access: dict[str, AccessList]) -> DeliveryStatus:
            entry = access.get(str(sender), access.get(sender.domain))
            if entry is AccessList.BLOCK:
                raise Blocked(f"{recipient} does not accept messages from {sender}")
            raise UserOffline(f"{recipient} is offline")

        return self.directory.getAccount(recipient).addCallback(check)

    def _deliverPresence(self, update: PresenceUpdate) -> Deferred[DeliveryStatus]:
        user = self._localState(update.recipient)
        if user is None:
            return fail(UserOffline(f"{update.recipient} is offline"))
        if user.state(update.sender, update.recipient) is not _AUTHORISED:
            return fail(NotAuthorised(f"{update.recipient} does not watch {update.sender}"))
        if user.contactPresence.get(update.sender, OFFLINE) != update.presence:
            if update.presence == OFFLINE:
                user.contactPresence.pop(update.sender, None)
            else:
                user.contactPresence[update.sender] = update.presence
            self._push(user.sessions, "presence", lambda c: c.presenceReceived(update.sender, update.presence))
        return succeed(DeliveryStatus.DELIVERED)

    def _answerProbe(self, probe: PresenceProbe) -> Deferred[DeliveryStatus]:
        target, watcher = probe.recipient, probe.sender
        user = self._localState(target)
        if user is None:
            # Offline (or unknown): the watcher already assumes offline.
            return succeed(DeliveryStatus.DELIVERED)
        if user.state(target, watcher) is not _AUTHORISED or user.accessOf(watcher) is AccessList.BLOCK:
            return fail(NotAuthorised(f"{watcher} may not watch {target}"))
        self._send(PresenceUpdate(target, watcher, user.presence().toWatchers()))
        return succeed(DeliveryStatus.DELIVERED)

    def _deliverSubscription(self, event: SubscriptionEvent) -> Deferred[DeliveryStatus]:
        def withAccount(account: Any) -> Deferred[DeliveryStatus]:
            if account is None or not account.enabled:
                raise NoSuchUser(f"no such user: {event.recipient}")
            return self._withState(event.recipient, lambda user: handle(user))

        def handle(user: _UserState) -> Deferred[DeliveryStatus]:
            me, other = event.recipient, event.sender
            kind = event.kind
            if kind is SubscriptionKind.SUBSCRIBE:
                return self._subscriptionRequested(user, other)
            if kind is SubscriptionKind.UNSUBSCRIBE:
                d = self._setAuthorisation(user, me, other, None)
            elif kind is SubscriptionKind.AUTHORISE:
                if user.state(other, me) is None:
                    # An answer to nothing we asked: ignore it (RFC 6121 3.1.5).
                    return succeed(DeliveryStatus.DELIVERED)
                d = self._setAuthorisation(user, other, me, _AUTHORISED)
            else:
                d = self._setAuthorisation(user, other, me, _REFUSED if user.state(other, me) else None)
                d.addCallback(lambda _: self._forgetPresence(user, other))
            d.addCallback(lambda _: self._tell(user, event))
            return d.addCallback(lambda _: DeliveryStatus.DELIVERED)

        return self.directory.getAccount(event.recipient).addCallback(withAccount)

    def _subscriptionRequested(self, user: _UserState, watcher: Address) -> Deferred[DeliveryStatus]:
        me = user.address
        access = user.accessOf(watcher)
        if access is AccessList.BLOCK:
            return fail(Blocked(f"{me} does not accept requests from {watcher}"))
        current = user.state(me, watcher)
        if current is _AUTHORISED or access is AccessList.ALLOW:
            d = self._setAuthorisation(user, me, watcher, _AUTHORISED)
            d.addCallback(lambda _: self._authorised(user, watcher))
        else:
            d = self._setAuthorisation(user, me, watcher, _PENDING)
            d.addCallback(lambda _: self._tell(user, SubscriptionEvent(SubscriptionKind.SUBSCRIBE, watcher, me)))
        return d.addCallback(lambda _: DeliveryStatus.DELIVERED)

    def _forgetPresence(self, user: _UserState, other: Address) -> None:
        """
        C{user} may no longer watch C{other}: it sees C{other} offline now.
        """
        if user.contactPresence.pop(other, OFFLINE) != OFFLINE:
            self._push(user.sessions, "presence", lambda c: c.presenceReceived(other, OFFLINE))

    def _authorised(self, user: _UserState, watcher: Address) -> None:
        """
        Tell C{watcher} it may watch C{user}, and what it sees now.
        """
        me = user.address
        self._send(SubscriptionEvent(SubscriptionKind.AUTHORISE, me, watcher))
        self._send(PresenceUpdate(me, watcher, user.presence().toWatchers()))

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

    # -- what sessions ask --------------------------------------------------

    def subscribe(self, user: _UserState, target: Address, displayName: str) -> Deferred[AuthorisationState]:
        me = user.address
        if target == me:
            return fail(InvalidAddress("you cannot subscribe to yourself"))
        contact = ContactRecord(target, displayName or (user.contacts[target].displayName if target in user.contacts else ""))
        previous = user.state(target, me)
        d = self.store.putContact(me, contact)

        def stored(_: None) -> Deferred[None]:
            user.contacts[target] = contact
            if previous is _AUTHORISED:
                return succeed(None)
            return self._setAuthorisation(user, target, me, _PENDING)

        def ask(_: None) -> Deferred[AuthorisationState]:
            self._contactChanged(user, target)
            if previous is _AUTHORISED:
                self._send(PresenceProbe(me, target))
                return succeed(_AUTHORISED)
            request = self.router.deliver(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, me, target))

            def answered(_: object) -> AuthorisationState:
                return user.state(target, me) or _PENDING

            def refused(f: Failure) -> Deferred[AuthorisationState]:
                # The request went nowhere: forget it, keep the error.
                undo = self._setAuthorisation(user, target, me, previous)
                undo.addCallback(lambda _: self._forgetContact(user, target))
                return undo.addCallback(lambda _: f)

            return request.addCallbacks(answered, refused)

        return d.addCallback(stored).addCallback(ask)

    def putContact(self, user: _UserState, target: Address, displayName: str) -> Deferred[None]:
        if target == user.address:
            return fail(InvalidAddress("you cannot add yourself as a contact"))
        contact = ContactRecord(target, displayName)

        def stored(_: None) -> None:
            user.contacts[target] = contact
            self._contactChanged(user, target)

        return self.store.putContact(user.address, contact).addCallback(stored)

    def _forgetContact(self, user: _UserState, target: Address) -> Deferred[None]:
        def removed(_: object) -> None:
            if user.contacts.pop(target, None) is not None:
                self._push(user.sessions, "contact removal", lambda c: c.contactRemoved(target))

        return self.store.removeContact(user.address, target).addCallback(removed)

    def unsubscribe(self, user: _UserState, target: Address) -> Deferred[None]:
        me = user.address
        had = user.state(target, me)
        d = self._setAuthorisation(user, target, me, None)
        d.addCallback(lambda _: self._forgetContact(user, target))

        def tell(_: None) -> None:
            self._forgetPresence(user, target)
            if had is not None:
                self._send(SubscriptionEvent(SubscriptionKind.UNSUBSCRIBE, me, target))

        return d.addCallback(tell)

    def authorise(self, user: _UserState, watcher: Address, allow: bool) -> Deferred[None]:
        me = user.address
        was = user.state(me, watcher)
        state = _AUTHORISED if allow else _REFUSED
        d = self._setAuthorisation(user, me, watcher, state)

        def tell(_: None) -> None:
            self._contactChanged(user, watcher)
            if allow:
                self._authorised(user, watcher)
            else:
                self._send(SubscriptionEvent(SubscriptionKind.REFUSE, me, watcher))
                if was is _AUTHORISED:
                    self._send(PresenceUpdate(me, watcher, OFFLINE))

        return d.addCallback(tell)

    def setAccess(self, user: _UserState, entry: str, accessList: AccessList) -> Deferred[None]:
        me = user.address
        before = set(user.watchers())
        d = self.store.setAccess(me, entry, accessList)

        def stored(_: None) -> None:
            if accessList is AccessList.NONE:
                user.access.pop(entry, None)
            else:
                user.access[entry] = accessList
            after = set(user.watchers())
            seen = user.presence().toWatchers()
            for watcher in before - after:
                self._send(PresenceUpdate(me, watcher, OFFLINE))
            for watcher in after - before:
                self._send(PresenceUpdate(me, watcher, seen))

        return d.addCallback(stored)

    def setRule(self, user: _UserState, state: PresenceState, alternate: str | None) -> Deferred[None]:
        if state in (PresenceState.OFFLINE, PresenceState.APPEAR_OFFLINE, PresenceState.ONLINE):
            return fail(ValueError(f"rules apply to busy and away states, not {state.value}"))
        if alternate is not None and not (0 < len(alternate) <= 256 and alternate.isprintable()):
            return fail(ValueError("the alternate contact must be 1 to 256 printable characters"))

        def stored(_: None) -> None:
            if alternate is None:
                user.rules.pop(state, None)
            else:
                user.rules[state] = alternate

        return self.store.setRule(user.address, state, alternate).addCallback(stored)

    def _contactChanged(self, user: _UserState, other: Address) -> None:
        contact = user.contacts.get(other)
        if contact is None:
            return
        view = user.view(contact)
        self._push(user.sessions, "contact", lambda c: c.contactUpdated(view))

    def _setAuthorisation(
        self, user: _UserState, target: Address, watcher: Address, state: AuthorisationState | None
    ) -> Deferred[None]:
        """
        Store an authorisation row, then update the caches of every local
        user it concerns.
        """

        def stored(_: None) -> None:
            for cached in self._cachedFor(user, target, watcher):
                if state is None:
                    cached.authorisations.pop((target, watcher), None)
                else:
                    cached.authorisations[(target, watcher)] = state

        return self.store.setAuthorisation(target, watcher, state).addCallback(stored)

    def _cachedFor(self, user: _UserState, *addresses: Address) -> Iterable[_UserState]:
        found = {id(user): user}
        for a in addresses:
            cached = self._users.get(a)
            if cached is not None:
                found[id(cached)] = cached
        return found.values()

    def _withState(self, address: Address, f: Callable[[_UserState], Deferred[T]]) -> Deferred[T]:
        """
        Run C{f} with the state of C{address}: cached if the user has
        sessions, else loaded for this one call.
        """
        cached = self._users.get(address)
        if cached is not None:
            return f(cached)
        return self._load(address).addCallback(f)


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


def _chain(waiter: Deferred[T]) -> Callable[[Any], Any]:
    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            waiter.errback(result)
            return None
        waiter.callback(result)
        return result

    return fire


class HomeServerService(Service):
    """
    Runs a L{HomeServer}: on stop, every session is told the server is
    shutting down and closed.
    """

    def __init__(self, homeServer: HomeServer) -> None:
        self.homeServer = homeServer

    def stopService(self) -> None:
        super().stopService()
        self.homeServer.closeAll("shutdown")
