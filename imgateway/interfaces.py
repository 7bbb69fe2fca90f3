# -*- test-case-name: tests.test_home,tests.test_native_server,tests.test_router,tests.test_link,tests.test_proxy -*-
"""
The zope interfaces of imgateway: storage, the home server and its sessions,
routing, and protocol adapters.

Everything inside the gateway speaks the core model (L{imgateway.core});
only protocol adapters know wire formats. An adapter is found through
Twisted's plugin system (L{IProtocolAdapter}, dropins in
C{imgateway/plugins/}), is handed an L{IGateway}, and offers faces (listeners
on which its protocol's clients log in to the home server, each session an
L{ISessionClient} towards the home server) and links (connections out to
an external network, registered with the router as the L{IRoute} for the
network's domains).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

# (The types of the links' waiters and of the locator's answers, which
# live in modules that import this one, are written Any here and named in
# the docstrings: the import graph has no cycle, TYPE_CHECKING included.)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from twisted.application.service import IService
    from twisted.internet.interfaces import IReactorCore
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from imgateway.config import ConfigTable
    from imgateway.core.address import Address
    from imgateway.core.errors import DeliveryStatus
    from imgateway.core.events import Event, Message, SubscriptionEvent
    from imgateway.core.presence import Presence, PresenceState
    from imgateway.core.records import (
        AccessList,
        AccountRecord,
        AuthorisationState,
        ContactRecord,
        ContactView,
        HomeChange,
        PresenceRule,
        UserRecords,
    )

__all__ = [
    "IAnsweringSession",
    "IAtOnceRoute",
    "IAtOnceRouter",
    "IAtOnceSession",
    "IDirectRoute",
    "IDirectory",
    "IGateway",
    "IHealthCheck",
    "IHomeServer",
    "IHomeStore",
    "IHomeLocator",
    "ILinkRoutes",
    "IMetrics",
    "IPasswordDirectory",
    "IProtocolAdapter",
    "IRoute",
    "IRouter",
    "ISession",
    "ISessionClient",
    "IWaiterRoute",
]


class IDirectory(Interface):
    """
    Address to account record: who exists, where they live, how they log in.

    Every method returns a L{Deferred}; a failed write fails with
    L{imgateway.core.errors.PersistenceFailed} and changes nothing.
    """

    def getAccount(address: Address) -> Deferred[AccountRecord | None]:
        """
        @return: The account with that address, or C{None}.
        """

    def addAccount(record: AccountRecord) -> Deferred[None]:
        """
        Create an account.

        @raise imgateway.core.errors.AccountExists: (asynchronously) if an
            account with that address exists.
        """

    def updateAccount(
        address: Address,
        credentials: str | None = None,
        enabled: bool | None = None,
        displayName: str | None = None,
    ) -> Deferred[AccountRecord]:
        """
        Change the given fields of an account; C{None} leaves one as it is.

        @return: The account as it is now.
        @raise imgateway.core.errors.NoSuchAccount: (asynchronously) if
            there is no such account.
        """

    def listAccounts(domain: str | None = None) -> Deferred[list[AccountRecord]]:
        """
        @param domain: Only accounts of this domain; all when C{None}.
        @return: The accounts, ordered by address.
        """

    def close() -> Deferred[None]:
        """
        Release the storage.
        """


class IPasswordDirectory(IDirectory):
    """
    A directory that checks passwords itself (an LDAP server, with a simple
    bind as the user) rather than keeping verifiers for the gateway: the
    L{imgateway.auth.checkers.Authenticator} hands it a password given in
    the clear (SASL PLAIN) instead of checking it against the account's
    C{credentials}.
    """

    scramAvailable = Attribute(
        "Whether account records carry SCRAM verifiers in their C{credentials}; "
        "when false, SCRAM mechanisms are not offered."
    )

    def checkPassword(address: Address, password: str) -> Deferred[AccountRecord | None]:
        """
        Check a user's password, as the client gave it.

        @return: Fires with the account if C{password} is its password, or
            C{None} if it is not or there is no such account (the same
            answer, after the same exchanges with the directory); fails with
            L{imgateway.core.errors.DirectoryUnavailable} if the directory
            cannot be asked.
        """


class IHomeStore(Interface):
    """
    What a home server persists for its users: contacts, authorisations (who
    may watch whom), access lists and presence rules.

    An authorisation row relates a C{target} (the watched user) and a
    C{watcher}; at least one of them is a user of this home server.

    Reads give what the last write that completed left; writes are whole
    requests (L{apply}): all of a request's changes are kept, or none.
    Operations take effect in the order they are asked for. A failed write
    fails with L{imgateway.core.errors.PersistenceFailed} and changes
    nothing.
    """

    def getContacts(owner: Address) -> Deferred[list[ContactRecord]]:
        """
        @return: C{owner}'s contact list, ordered by address.
        """

    def getAuthorisations(
        user: Address,
    ) -> Deferred[list[tuple[Address, Address, AuthorisationState]]]:
        """
        @return: Every authorisation row in which C{user} is the target or
            the watcher, as C{(target, watcher, state)}.
        """

    def getAccess(owner: Address) -> Deferred[dict[str, AccessList]]:
        """
        @return: C{owner}'s access-list entries: an address (C{"bob@x"}) or
            a domain (C{"x"}) mapped to its list.
        """

    def getUserRecords(user: Address) -> Deferred[UserRecords]:
        """
        Everything kept of C{user}, in one read: what L{getContacts},
        L{getAuthorisations}, L{getAccess} and L{getRules} give, as they
        would give it at the same moment (a home server reads it when the
        user logs in).

        @return: The user's L{UserRecords}.
        """

    def getAuthorisation(target: Address, watcher: Address) -> Deferred[AuthorisationState | None]:
        """
        @return: The state of one authorisation row, or C{None} if there is
            none (one row read, whatever the size of the lists).
        """

    def getAccessOf(owner: Address, other: Address) -> Deferred[AccessList]:
        """
        @return: The list of C{owner}'s that holds C{other}: its address
            entry, else its domain's entry, else L{AccessList.NONE} (two
            entries read at most, whatever the size of the list).
        """

    def getRules(owner: Address) -> Deferred[list[PresenceRule]]:
        """
        @return: C{owner}'s presence rules.
        """

    def apply(changes: Sequence[HomeChange]) -> Deferred[None]:
        """
        Make C{changes} (L{imgateway.core.records.PutContact},
        L{RemoveContact<imgateway.core.records.RemoveContact>},
        L{SetAuthorisation<imgateway.core.records.SetAuthorisation>},
        L{SetAccess<imgateway.core.records.SetAccess>},
        L{SetRules<imgateway.core.records.SetRules>}), in order, in one
        transaction: after a crash or a failure either all of them are
        kept or none.

        @raise imgateway.core.errors.PendingRequestsFull: (As a failure.) A
            L{SetAuthorisation<imgateway.core.records.SetAuthorisation>}
            with a C{pendingLimit} would make a pending request past it;
            nothing was changed.
        """

    def close() -> Deferred[None]:
        """
        Release the storage.
        """


class IRoute(Interface):
    """
    Something that core events can be delivered to: a home server for its
    domain, a link to a peer router, or an adapter's link to an external
    network.
    """

    def deliver(event: Event) -> Deferred[DeliveryStatus]:
        """
        Deliver one event to its recipient.

        @return: A L{Deferred} that fires with
            L{DeliveryStatus.DELIVERED}, or fails with a
            L{imgateway.core.errors.DeliveryError} saying why not.
        """


class IAtOnceRoute(IRoute):
    """
    A route in this process with a synchronous fast path: a home server
    (L{HomeServer.deliverAtOnce
    <imgateway.home.server.HomeServer.deliverAtOnce>}). The router offers
    it the messages for its domain (L{IRouter.addRoute} with C{local}), and
    calls L{IRoute.deliver} for the events it does not take. Optional: the
    router looks for the method once, when the route is added, not per
    event.
    """

    def deliverAtOnce(event: Event) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{IRoute.deliver}'s synchronous fast path: the same delivery, with
        the same checks, rules and statuses, answered without a
        L{Deferred} when the outcome is known at once (a message to a user
        with sessions here whose lane is idle, every session it goes to in
        this process).

        @return: L{DeliveryStatus.DELIVERED} when delivered; a L{Deferred}
            of the outcome when a session it goes to answers later (a
            proxied session); C{None} when this event is not for the fast
            path: nothing was done, and the caller calls L{IRoute.deliver}.
        @raise imgateway.core.errors.DeliveryError: When the event is
            refused at once (offline, busy...), as L{IRoute.deliver}'s
            L{Deferred} would fail.
        """


class IDirectRoute(IAtOnceRoute):
    """
    An L{IAtOnceRoute} that is told when the router of its process hands
    it every message for its domain with nothing of its own between (no
    locator: the domain has one home server), so that it may deliver its
    own sessions' messages to its own users in place, without the router
    (L{Session.sendMessageAtOnce
    <imgateway.home.server.Session.sendMessageAtOnce>}). Optional: the
    router looks for the method when the route is added and removed.
    """

    def routedDirectly(
        router: object,
        domain: str,
        remember: Callable[[Message, Deferred[DeliveryStatus]], Deferred[DeliveryStatus]] | None,
    ) -> None:
        """
        Told by C{router} (L{IRouter.addRoute}, with C{local}) that it now
        routes C{domain} to this route directly, or, with C{remember}
        C{None} (L{IRouter.removeRoute}), that it no longer does. A route
        heeds it only for its own domain and its own router.

        @param remember: What a message delivered without the router to a
            session that answers later is handed to, with that outcome
            still to come (L{Router.remember
            <imgateway.router.router.Router.remember>}: seen by the loop
            check as if routed): it returns the outcome to wait for.
        """


class IWaiterRoute(IRoute):
    """
    A route that tells a message's outcome to a waiter rather than
    through a L{Deferred}: a link to another server
    (L{LinkClient.deliverThen<imgateway.router.link.LinkClient.deliverThen>}).
    Optional: the router looks for the method on the route of each message
    it hands a link with a waiter (L{IAtOnceRouter.deliverThen}).
    """

    def deliverThen(
        message: Message,
        waiter: Any,
        hops: int | None = None,
        failed: Callable[[BaseException | Failure, Message, Any], object] | None = None,
    ) -> None:
        """
        L{IRoute.deliver} a message, its outcome told to C{waiter} (its
        C{callback} with L{DeliveryStatus.DELIVERED}, or its C{errback}
        with what L{IRoute.deliver}'s L{Deferred} would fail with), once,
        in place of a L{Deferred}: the same bytes, queue, limits, time
        limit and resends. What L{IRoute.deliver}'s L{Deferred} would fail
        with at once (the hops used up, a message that cannot be written,
        a full queue) is told at once, before this returns; every other
        outcome later. A refusal is told, not raised.

        @param waiter: An L{OutcomeWaiter<imgateway.router.link.OutcomeWaiter>}
            (a L{Deferred}, or an object with its C{callback}, C{errback}
            and C{called}).
        @param hops: The hop count the message goes with, if not its own
            (a router counting the hop it sends it on, without a copy of
            the message).
        @param failed: If given, a failure is told by C{failed(error,
            message, waiter)} in place of C{waiter.errback(error)} (the
            router's answer to a failed link delivery): a
            L{FailureTeller<imgateway.router.link.FailureTeller>}.
        """


class IRouter(IRoute):
    """
    Delivers events by the recipient's domain: to the home server for a local
    domain, otherwise to the route registered for that domain.
    """

    def addRoute(domain: str, route: IRoute) -> None:
        """
        Send events for C{domain} to C{route}.

        @raise ValueError: If the domain already has a route.
        """

    def removeRoute(domain: str) -> None:
        """
        Forget the route for C{domain}, if any.
        """

    defaultRoute = Attribute("The L{IRoute} for domains without a route of their own, or C{None}.")

    def routeFor(domain: str) -> IRoute | None:
        """
        @return: The route that events for C{domain} take (the default
            route when it has none of its own), or C{None}.
        """

    def setDefaultRoute(route: IRoute | None) -> None:
        """
        Send events for every domain without a route of its own to
        C{route}; C{None} removes the default route.

        @raise ValueError: If another default route is set.
        """

    def routes() -> dict[str, IRoute]:
        """
        @return: The domains with a route of their own (registered by
            L{addRoute}: this process's home server's, adapters' links),
            each with its route; not the default route, nor the routes over
            server links (found per event).
        """


class IAtOnceRouter(IRouter):
    """
    A router with synchronous fast paths (L{Router
    <imgateway.router.router.Router>}): what a home server's sessions
    (L{Session.sendMessageThen
    <imgateway.home.server.Session.sendMessageThen>}) and a link's
    receiving side (L{LinkReceiver<imgateway.router.link.LinkReceiver>})
    hand their messages to when their router provides it. Optional: they
    look for the methods by name (the receiver once, at construction; a
    session per message, where a look-up by name costs less than a test of
    the interface).
    """

    def deliverAtOnce(event: Event) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        L{IRoute.deliver}, answered without a L{Deferred} when the outcome
        is known at once (a message to a user homed in this process,
        delivered by its home server's L{IAtOnceRoute.deliverAtOnce}); any
        other event the way L{IRoute.deliver} takes it, its L{Deferred}
        returned.

        @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
            outcome; never C{None}.
        @raise imgateway.core.errors.DeliveryError: If the event is refused
            at once (a loop, its hops used up, a refusal of the home
            server's fast path).
        """

    def deliverAtHome(event: Event, home: Any) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        L{deliverAtOnce}, given the recipient's home as the caller already
        asked the router's locator for it, so that it is not asked again
        (a link's receiving side, which asks it with the sender's). May be
        a read-only attribute holding a bound method.

        @param home: L{knownHome<imgateway.router.locator.knownHome>}'s
            answer for the recipient: a server's name, C{None} for no such
            account, or L{UNKNOWN<imgateway.router.locator.UNKNOWN>} when
            the locator does not remember.
        @return: As L{deliverAtOnce}.
        @raise imgateway.core.errors.DeliveryError: As L{deliverAtOnce}.
        """

    def deliverThen(event: Event, waiter: Any) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{deliverAtOnce}, with the outcome of a message that goes to a link
        at once told to C{waiter} (a home session's message: see
        L{IAnsweringSession.sendMessageThen}): for a recipient of this
        domain that the locator remembers on another server whose route
        is an L{IWaiterRoute}, the route is given the message and
        C{waiter}, told the outcome once (at once or later, never raised
        once the message is handed over), with the same checks and
        outcomes as L{deliverAtOnce}'s. Every other event goes to
        L{deliverAtOnce}, and C{waiter} is not told.

        @param waiter: An L{OutcomeWaiter<imgateway.router.link.OutcomeWaiter>}.
        @return: C{None} when C{waiter} is told the outcome; else what
            L{deliverAtOnce} returns.
        @raise imgateway.core.errors.DeliveryError: If the event is refused
            at once (C{waiter} not told).
        """


class IHomeLocator(Interface):
    """
    Which home server of this domain hosts a user: the directory's answer,
    remembered for a short while (C{[router] directory_cache_seconds}).
    """

    def homeOf(address: Address) -> Deferred[str | None]:
        """
        @return: The name of the home server of the account C{address} (a
            C{[servers.NAME]} name, or this process's own C{home_server}),
            or C{None} when there is no such account.
        """

    def forget(address: Address) -> None:
        """
        Drop what is remembered of C{address} (its account was moved or
        removed).
        """


class ILinkRoutes(Interface):
    """
    Routes over server links (docs/protocol.md section 9): to the other
    servers of this domain, and to peer domains' routers.
    """

    def toServer(name: str) -> IRoute:
        """
        @param name: A C{[servers.NAME]} name other than this process's.
        @return: The route over the link to that server.
        @raise KeyError: If no such server is configured.
        """

    def toDomain(domain: str) -> Deferred[IRoute | None]:
        """
        @return: The route to C{domain}'s router: its static route
            (C{[routes]}), else what its C{_imgw._tcp} DNS SRV records name;
            C{None} when it has neither (the domain may be reached another
            way, for example XMPP federation).
        """


class ISessionClient(Interface):
    """
    The protocol side of a session: how the home server talks to a logged-in
    client, whatever its protocol. A face's protocol instance provides this
    and passes it as the C{mind} of its portal login.

    Deliveries (every method but L{sessionClosed}) return a L{Deferred}
    that fires with C{None} once the client has taken what it was given, or
    fails if it could not; so a session may live in another process. A
    client in this process answers with an already fired L{Deferred}
    (C{succeed(None)}). A client that cannot write (its connection is gone)
    may drop what it is given; the home server learns of it when the face
    closes the session. The home server logs a failed delivery; a message
    counts as delivered when at least one of the user's sessions took it.
    """

    def messageReceived(message: Message) -> Deferred[None]:
        """
        A message for this session's user.
        """

    def presenceReceived(sender: Address, presence: Presence) -> Deferred[None]:
        """
        C{sender}'s presence changed (or is being reported for the first
        time). Also called with the user's own address when the user's
        aggregate presence, as its own sessions see it, changes.
        """

    def subscriptionReceived(event: SubscriptionEvent) -> Deferred[None]:
        """
        A subscription request from a watcher (C{SUBSCRIBE}), or an answer to
        one of the user's requests (C{AUTHORISE}, C{REFUSE}), or a watcher
        leaving (C{UNSUBSCRIBE}).
        """

    def contactUpdated(contact: ContactView) -> Deferred[None]:
        """
        An entry of the user's contact list was added or changed (by any of
        the user's sessions, or by an answer from the contact).
        """

    def contactRemoved(contact: Address) -> Deferred[None]:
        """
        An entry was removed from the user's contact list.
        """

    def sessionClosed(reason: str) -> None:
        """
        The home server ended this session (shutdown, account disabled,
        presence lease...). The client should say goodbye and disconnect.
        """


class ISession(Interface):
    """
    A logged-in session of a home-server user. Faces obtain one from the
    gateway's portal and call it on behalf of their client.
    """

    address = Attribute("The L{Address} of the session's user.")
    sessionId = Attribute("A string unique among the home server's sessions.")
    label = Attribute(
        "What the client calls this session (an XMPP resource, a device name): unique among the "
        "user's sessions, at most L{imgateway.home.server.MAX_LABEL_CHARS} characters (see "
        "L{IHomeServer.openSession})."
    )
    presence = Attribute("The L{Presence} this session last published.")
    client = Attribute("The L{ISessionClient} of this session.")

    def publish(presence: Presence, lease: float | None = None) -> float:
        """
        Publish this session's presence, held for C{lease} seconds (the home
        server's default when C{None}, kept within its bounds). When the
        lease runs out without another publish, the session counts as
        offline.

        @return: The lease granted, in seconds.
        """

    def sendMessage(
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> Deferred[DeliveryStatus]:
        """
        Send a message from this session's user.

        @return: Fires with L{DeliveryStatus.DELIVERED} or fails with a
            L{imgateway.core.errors.DeliveryError}.
        """

    def subscribe(target: Address, displayName: str = "") -> Deferred[AuthorisationState]:
        """
        Add C{target} to the contact list and ask to watch its presence.
        The target's side decides, every time (even if it authorised the
        user before).

        @return: Fires with the state of the request: C{AUTHORISED} when the
            target's side authorised it at once, C{PENDING} otherwise (also
            for an unknown target, or one that blocks the user: nothing
            tells them apart).
        """

    def putContact(contact: Address, displayName: str = "") -> Deferred[None]:
        """
        Add C{contact} to the contact list, or rename it, without asking to
        watch it (as an XMPP roster set does).
        """

    def unsubscribe(target: Address) -> Deferred[None]:
        """
        Stop watching C{target} and remove it from the contact list.
        """

    def authorise(watcher: Address, allow: bool) -> Deferred[None]:
        """
        Answer (or change the answer to) C{watcher}'s request to watch this
        user. Allowing adds the watcher to the contact list if it is not
        there (subscription C{from}).
        """

    def contacts() -> Deferred[list[ContactView]]:
        """
        @return: The user's contact list with subscription states and the
            presence the user may see.
        """

    def pendingRequests() -> Deferred[list[Address]]:
        """
        @return: The watchers whose requests await this user's answer.
        """

    def setAccess(entry: str, accessList: AccessList) -> Deferred[None]:
        """
        Put an address or domain on the user's allow or block list, or take
        it off (L{AccessList.NONE}).

        @raise imgateway.core.errors.InvalidAddress: If C{entry} is neither.
        """

    def accessLists() -> Deferred[dict[str, AccessList]]:
        """
        @return: The user's access-list entries.
        """

    def setRule(state: PresenceState, alternate: str | None) -> Deferred[None]:
        """
        The first protocol's request: set or remove (C{None}) the refusal
        for C{state} alone (a refuse rule for that one state, whoever
        sends), in place, or last if there was none.

        @raise ValueError: A state no rule may name, or an alternate that
            is not a URI.
        @raise imgateway.core.errors.QuotaExceeded: Past C{max_rules}.
        """

    def rules() -> Deferred[list[PresenceRule]]:
        """
        @return: The user's presence rules, in order (the first that
            matches a message decides).
        """

    def setRules(rules: Sequence[PresenceRule]) -> Deferred[None]:
        """
        Replace the user's presence rules with C{rules}, in order; each is
        checked (L{imgateway.core.records.checkRule}).

        @raise ValueError: Saying which rule is wrong.
        @raise imgateway.core.errors.QuotaExceeded: Past C{max_rules}.
        """

    def addRule(rule: PresenceRule, position: int | None = None) -> Deferred[None]:
        """
        Insert C{rule} at C{position} (1 for first; C{None} for last).

        @raise ValueError: A wrong rule, or a position out of range.
        @raise imgateway.core.errors.QuotaExceeded: Past C{max_rules}.
        """

    def removeRule(position: int) -> Deferred[None]:
        """
        Remove the rule at C{position} (1 for first).

        @raise ValueError: If there is none there.
        """

    def close(reason: str = "") -> None:
        """
        End the session (the client left or its connection was lost).
        Idempotent.
        """


class IAtOnceSession(ISession):
    """
    A session whose messages' outcomes known at once come without a
    L{Deferred} (a home server's L{Session
    <imgateway.home.server.Session>}). Optional: a face looks for the
    method by name per message, after L{IAnsweringSession}'s.
    """

    def sendMessageAtOnce(
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus]:
        """
        L{ISession.sendMessage}, answered without a L{Deferred} when the
        outcome is known at once (a recipient in this process); counted
        in the metrics as L{ISession.sendMessage} counts it.

        @return: L{DeliveryStatus.DELIVERED}, or a L{Deferred} of the
            outcome.
        @raise imgateway.core.errors.DeliveryError: If the message is
            refused at once (what L{ISession.sendMessage}'s L{Deferred}
            would fail with at once).
        """


class IAnsweringSession(ISession):
    """
    A session whose messages' outcomes come without a L{Deferred}: at
    once when known at once, else later through a call, for a face that
    writes its answers itself (the native face's C{MESSAGE}, the XMPP
    face's message, a home server's C{SESSION message} from a router). A
    home server's L{Session<imgateway.home.server.Session>} (for a
    message it hands a link) and a router's proxied
    L{RemoteSession<imgateway.router.proxy.RemoteSession>} provide it.
    Optional: a face looks for the method by name per message, first.
    """

    def sendMessageThen(
        answer: Callable[[DeliveryStatus | Failure, Any, str | None], object],
        token: Any,
        recipient: Address,
        body: str,
        contentType: str = "text/plain",
        messageId: str | None = None,
    ) -> DeliveryStatus | Deferred[DeliveryStatus] | None:
        """
        L{ISession.sendMessage}, its outcome returned when known at once,
        else given to C{answer}; counted in the metrics as
        L{ISession.sendMessage} counts it.

        @param answer: Called once, later (never before this returns), with
            the outcome (L{DeliveryStatus.DELIVERED}, or the L{Failure}
            that L{ISession.sendMessage}'s L{Deferred} would fail with),
            C{token} and C{messageId} as given, when this returns C{None}
            (and only then): when the answer comes over the link the
            message went on, when that link's C{request_timeout} passes,
            or, for a proxied session, when the session ends first.
        @param token: Given back to C{answer} as it is (what the face
            answers: its request, its stanza).
        @return: L{DeliveryStatus.DELIVERED} when delivered at once; a
            L{Deferred} of the outcome, for the face to wait for as for
            L{ISession.sendMessage}'s (C{answer} not called); C{None} when
            C{answer} will be called.
        @raise Exception: What L{ISession.sendMessage}'s L{Deferred} would
            fail with at once (a L{imgateway.core.errors.DeliveryError}:
            refused, the session ended, text that cannot be sent, a full
            link queue); C{answer} is then not called.
        """


class IHomeServer(IRoute):
    """
    Owns its users' sessions, presence, contacts, watchers, access lists and
    rules; delivers inbound events (L{IRoute.deliver}) to them.
    """

    name = Attribute("This home server's name, as the directory records it.")
    domain = Attribute("The domain this home server's users belong to.")

    def openSession(address: Address, client: ISessionClient, label: str = "") -> Deferred[ISession]:
        """
        Open a session for an authenticated user, once the user's contacts
        and authorisations are loaded. The session starts offline: it counts
        as present once its client publishes a presence.

        The session's L{ISession.label} is C{label} made unique among the
        user's open sessions: cut to
        L{imgateway.home.server.MAX_LABEL_CHARS} characters, and when
        another session has it, given a suffix (C{"phone-2"}); an empty
        label becomes the session's id. Faces show the final label (an XMPP
        face binds it as the resource).

        @return: Fires with the L{ISession}; fails with
            L{imgateway.core.errors.TooManySessions} if the user has as many
            sessions as allowed, or
            L{imgateway.core.errors.ServiceUnavailable} if the home server
            is stopping.
        """

    def sessionsOf(address: Address) -> list[ISession]:
        """
        @return: The user's open sessions.
        """

    def presenceOf(address: Address) -> Presence:
        """
        @return: The user's aggregate presence as its own sessions see it
            (C{appear-offline} included).
        """

    def userRules(address: Address) -> Deferred[list[PresenceRule]]:
        """
        The presence rules of a user homed here, whether or not it has
        sessions, in order (for the manhole and scripts).
        """

    def setUserRules(address: Address, rules: Sequence[PresenceRule]) -> Deferred[None]:
        """
        Replace the presence rules of a user homed here, whether or not it
        has sessions, checked as the user's own request would be (for the
        manhole and scripts: C{gateway.homeServer.setUserRules(bob, [rule])}).

        @raise ValueError: Saying which rule is wrong.
        @raise imgateway.core.errors.QuotaExceeded: Past C{max_rules}.
        """

    def users() -> list[Address]:
        """
        @return: The users that have sessions now, ordered by address.
        """


class IGateway(Interface):
    """
    The running gateway, as adapters (and the manhole) see it.
    """

    domain = Attribute("The domain served, normalised (C{corp.example}).")
    reactor = Attribute("The reactor everything runs on.")
    clock = Attribute("An IReactorTime, the reactor unless a test says otherwise.")
    homeServer = Attribute(
        "The L{IHomeServer} of this process. A process without the C{home} role has none: "
        "reading it raises L{imgateway.gateway.NoHomeServer} (an C{AttributeError})."
    )
    router = Attribute("The L{IRouter}.")
    directory = Attribute("The L{IDirectory}.")
    portal = Attribute(
        "A L{twisted.cred.portal.Portal} whose realm opens L{ISession}s; "
        "faces log their clients in through it, with the client as the mind."
    )
    authenticator = Attribute(
        "The L{imgateway.auth.checkers.Authenticator}: password and SCRAM "
        "verifiers for SASL mechanisms."
    )
    dataDir = Attribute("A L{twisted.python.filepath.FilePath}: where state is kept.")
    config = Attribute(
        "The whole checked L{imgateway.config.GatewayConfig}, for the limits "
        "every face shares (C{config.home.maxMessageChars})."
    )
    connectionLimiter = Attribute(
        "The L{imgateway.core.throttle.ConnectionLimiter} every face asks, as a "
        "connection opens, whether its source may open one more."
    )
    locator = Attribute(
        "The L{IHomeLocator}: which home server of the domain hosts a user "
        "(the router, the home server and a router's faces after "
        "authentication, L{imgateway.router.front}, ask it); C{None} for a "
        "single-host gateway, where every user is homed here."
    )
    proxy = Attribute(
        "A router's way to the sessions of users homed on the domain's other servers: an object with "
        "L{IHomeServer.openSession} (L{imgateway.router.proxy.ProxyHomeServer}), through which its faces "
        "proxy external clients; C{None} for a process that is no router or has no links."
    )
    metrics = Attribute(
        "The L{IMetrics} that faces, the home server and the links count what they do in "
        "(L{imgateway.status.metrics.GatewayMetrics}: C{/metrics} of C{[status]})."
    )
    healthChecks = Attribute(
        "A list of L{IHealthCheck} providers that C{/healthz} of C{[status]} asks: the gateway "
        "registers its listeners and stores; an adapter appends its own (or gives a service "
        "of its tree that provides L{IHealthCheck}: the gateway finds those when it builds the tree). "
        "Links are checked through their services' C{linkInfo} (L{imgateway.core.linkinfo}), not here."
    )


class IProtocolAdapter(Interface):
    """
    A protocol adapter: translates between the core model and one wire
    protocol. Provided by a plugin object in C{imgateway/plugins/} (or any
    C{imgateway.plugins} dropin of a third-party package).

    The gateway starts an adapter when the configuration has a table named
    after it (C{[native]}, C{[xmpp]}, ...) whose C{enabled} key is not false.
    """

    name = Attribute("Short name; also the name of the adapter's config table.")
    description = Attribute("One line for operators.")

    def parseConfig(table: ConfigTable, reactor: IReactorCore) -> object:
        """
        Validate the adapter's config table, before anything starts. Read
        every key through C{table} (C{get}, C{positive}, C{endpoints},
        C{path}); keys left unread are reported as unknown.

        @param table: The table (without its C{enabled} key); its C{where}
            names it in errors (C{"etc/x.toml [native]"}).
        @param reactor: For checking endpoint strings (nothing is opened).
        @return: The adapter's parsed configuration, passed back to
            L{makeService}.
        @raise imgateway.core.errors.ConfigError: Naming the file, the table
            and the key at fault.
        """

    def makeService(gateway: IGateway, config: object) -> IService:
        """
        Build the adapter's service: its faces' listeners and its links.
        The gateway starts it after the stores are open.
        """


class IHealthCheck(Interface):
    """
    One thing whose health C{/healthz} reports (C{[status]}): a listener, a
    store, a link. Links are not checked through this interface by their
    adapters: a service of the tree that keeps links up gives their states
    (L{imgateway.core.linkinfo.LinkInfoSource}), and the gateway makes a
    check of each (L{imgateway.status.health.LinkCheck}). Other checks are
    appended to L{IGateway.healthChecks}, or provided by a service of the
    tree.
    """

    kind = Attribute('What it is: C{"listener"}, C{"link"} or C{"store"}.')
    subject = Attribute(
        'Which one, unique among its kind, for operators (C{"Native face tcp:5300"}, C{"server hs2"}, '
        'C{"directory"}). (Not C{name}: services that provide this interface have a C{name} already.)'
    )

    def check() -> Deferred[str | None] | str | None:
        """
        Is it up? Cheap, and without side effects a user would see; may
        answer later (a store asked through its queue).

        @return: C{None} when it is up, else why not, in a few words
            (C{"down: connection refused"}); or a L{Deferred} firing with
            that. A check that fails or takes too long counts as down.
        """


class IMetrics(Interface):
    """
    What the gateway counts for C{/metrics} (C{[status]}). Every method is
    cheap (a counter increment: no L{Deferred}, no allocation beyond the
    counter's) and returns nothing, so a call is one line where the thing
    happens.
    """

    def loggedIn(face: str, mechanism: str, session: ISession) -> None:
        """
        A client logged in on C{face} (C{"native"}, C{"xmpp"}) with the SASL
        C{mechanism}, and its C{session} is open (counted among the face's
        sessions while it is not closed).
        """

    def loginFailed(face: str, mechanism: str, condition: str) -> None:
        """
        A login on C{face} failed with the SASL C{condition}
        (C{"not-authorized"}, C{"temporary-auth-failure"}...).
        """

    def messageOutcome(result: object) -> object:
        """
        Count the outcome of a message a user of this home server sent, by
        its status (C{200}, C{404}, C{480}, C{486}...: the native status
        code of L{imgateway.core.errors.DeliveryStatus}; C{"error"} for an
        unexpected failure). Added to the message's L{Deferred} as callback
        and errback both.

        @param result: A L{imgateway.core.errors.DeliveryStatus}, or a
            L{twisted.python.failure.Failure}.
        @return: C{result}, unchanged.
        """

    def presencePublished() -> None:
        """
        A session published a presence.
        """

    def limitHit(limit: str) -> None:
        """
        Something was refused for a configured limit, named by its
        configuration key (C{"max_unauthenticated_per_address"}).
        """
