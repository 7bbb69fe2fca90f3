# -*- test-case-name: tests.test_manhole -*-
"""
What the manhole's namespace holds: C{gateway}, a L{GatewayConsole} whose
documented methods look at and act on the running gateway through its core
interfaces (L{IGateway}, L{IHomeServer}, L{IRouter}, L{IDirectory}).

Users are named by address (C{"alice@corp.example"}) or by local part
(C{"alice"}, of the gateway's domain). Helpers that must wait for a store or
a delivery return a L{Deferred}: the console shows its result when it fires
(C{Deferred #0 called back: ...}), and a script C{await}s it.
"""

from __future__ import annotations

import inspect
import re
import rlcompleter
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.adapters.native.mapping import ruleFromJSON, ruleToJSON
from imgateway.client.parsing import RULE_SYNTAX, describeRule, parseRule
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, InvalidAddress, NoSuchAccount, ServiceUnavailable, TooLarge
from imgateway.core.events import Message, newMessageId
from imgateway.core.linkinfo import LinkInfo, findLinkSources, linkInfos
from imgateway.core.presence import Presence, PresenceState
from imgateway.core.records import AccountRecord, ContactRecord, ContactView, PresenceRule, checkRule
from imgateway.interfaces import IGateway, ISession, ISessionClient

__all__ = ["CONSOLE_LABEL", "GatewayConsole", "LinkInfo", "SessionInfo", "UserInfo", "completions", "makeNamespace"]

#: The label of the sessions the console holds to set the presence of users
#: without one.
CONSOLE_LABEL = "console"

log = Logger()

#: Epytext markup (C{C{x}}, C{L{x}}), left out of L{GatewayConsole.help}.
_MARKUP = re.compile(r"[CLIB]\{([^{}]*)\}")


class _Text(str):
    """
    Text the console shows as it is (not quoted, with its line breaks).
    """

    def __repr__(self) -> str:
        return str(self)


@frozen
class SessionInfo:
    """
    One open session.
    """

    sessionId: str
    user: str
    label: str
    presence: str

    def __repr__(self) -> str:
        return f"<session {self.sessionId} {self.user} {self.label!r} {self.presence}>"


@frozen
class UserInfo:
    """
    One account of the directory, with its sessions on this server.
    """

    address: str
    name: str
    enabled: bool
    home: str
    sessions: int

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        name = f" {self.name!r}" if self.name else ""
        return f"<user {self.address}{name} {state} home={self.home} sessions={self.sessions}>"


@implementer(ISessionClient)
class _ConsoleClient:
    """
    The client of a session the console holds for a user without one, so
    that the user has the presence the operator set: it takes presence and
    contact updates (and drops them) but no message (nobody would read it:
    a sender sees the user as it would without that session).
    """

    def __init__(self, console: GatewayConsole) -> None:
        self._console = console
        self.session: ISession | None = None

    def messageReceived(self, message: Message) -> Deferred[None]:
        return fail(ServiceUnavailable("a session the manhole holds for its presence: nobody reads it"))

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        return succeed(None)

    def subscriptionReceived(self, event: Any) -> Deferred[None]:
        return succeed(None)

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        return succeed(None)

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        return succeed(None)

    def sessionClosed(self, reason: str) -> None:
        if self.session is not None:
            self._console._held.pop(self.session.address, None)


class GatewayConsole:
    """
    The running gateway, for its operator. C{gateway.help()} lists what it
    can do; C{help(gateway.sessions)} says more about one helper.
    """

    def __init__(self, gateway: IGateway, systemSender: str = "imgateway", root: IService | None = None) -> None:
        """
        @param systemSender: The local part of the address system messages
            come from.
        @param root: The gateway's service tree, searched for links
            (L{links}); C{None}: no links are shown.
        """
        self._gateway = gateway
        self._system = Address.fromParts(systemSender, gateway.domain)
        self._root = root
        self._held: dict[Address, ISession] = {}

    def __repr__(self) -> str:
        return f"<gateway {self._gateway.domain}: gateway.help() lists the helpers>"

    def __dir__(self) -> list[str]:
        # What tab completion offers: the helpers.
        return sorted(self._helpers())

    @classmethod
    def _helpers(cls) -> dict[str, str]:
        found = {}
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                first = (inspect.getdoc(member) or "").split("\n\n")[0].replace("\n", " ")
                found[name] = _MARKUP.sub(r"\1", first)
        return found

    # -- looking --------------------------------------------------------------------

    def help(self) -> _Text:
        """
        List the helpers; C{help(gateway.NAME)} says more about one.
        """
        return _Text(
            "".join(
                f"gateway.{name}{_arguments(getattr(type(self), name))}\n    {text}\n"
                for name, text in sorted(self._helpers().items())
            )
        )

    def users(self, domain: str | None = None) -> Deferred[list[UserInfo]]:
        """
        The accounts of the directory, with their sessions here.

        Those of C{domain}; this gateway's when C{None}.
        """
        home = self._home()
        d: Deferred[list[AccountRecord]] = self._gateway.directory.listAccounts(
            domain if domain is not None else self._gateway.domain
        )

        def described(accounts: list[AccountRecord]) -> list[UserInfo]:
            return [
                UserInfo(
                    str(a.address),
                    a.displayName,
                    a.enabled,
                    a.homeServer,
                    len(home.sessionsOf(a.address)) if home is not None else 0,
                )
                for a in accounts
            ]

        return d.addCallback(described)

    def online(self) -> list[str]:
        """
        The users that have sessions on this server now.
        """
        home = self._needHome()
        return [str(a) for a in home.users()]

    def sessions(self, user: str | Address | None = None) -> list[SessionInfo]:
        """
        The open sessions (of C{user}, or of everybody).

        Each with its id (what L{kick} takes), user, label and presence.
        """
        home = self._needHome()
        users = [self._address(user)] if user is not None else home.users()
        return [
            SessionInfo(s.sessionId, str(s.address), s.label, str(s.presence))
            for u in users
            for s in home.sessionsOf(u)
        ]

    def presence(self, user: str | Address) -> str:
        """
        A user's presence, as its own sessions see it: C{"away (lunch)"}.
        """
        return str(self._needHome().presenceOf(self._address(user)))

    def contacts(self, user: str | Address) -> Deferred[list[str]]:
        """
        A user's contact list.

        Each contact comes with the user's name for it and, while the user
        has a session, the subscription and the presence the user sees.
        """
        address = self._address(user)
        sessions = self._needHome().sessionsOf(address)
        if sessions:
            views: Deferred[list[ContactView]] = sessions[0].contacts()
            return views.addCallback(
                lambda views: [
                    f"{v.address}{f' {v.displayName!r}' if v.displayName else ''} "
                    f"subscription={v.subscription.value}{' (pending)' if v.pending else ''} presence={v.presence}"
                    for v in views
                ]
            )
        store = getattr(self._gateway, "homeStore", None)
        if store is None:
            return fail(ServiceUnavailable("this process has no home store"))
        records: Deferred[list[ContactRecord]] = store.getContacts(address)
        return records.addCallback(
            lambda records: [f"{r.address}{f' {r.displayName!r}' if r.displayName else ''}" for r in records]
        )

    def routes(self) -> dict[str, str]:
        """
        The router's table: each domain with what takes its events.

        C{"*"} is the default route (XMPP federation), for domains without
        a route of their own.
        """
        router = self._gateway.router
        table = {domain: _describeRoute(route) for domain, route in sorted(router.routes().items())}
        if router.defaultRoute is not None:
            table["*"] = _describeRoute(router.defaultRoute)
        return table

    def links(self) -> list[LinkInfo]:
        """
        The state of every link.

        Links to the domain's other servers and peer domains' routers (and
        the incoming ones), to XMPP servers (federation) and component
        hosts, and the IRC bridge's connections to each network (its
        presence watcher and each user's puppet).
        """
        return linkInfos(findLinkSources(self._root)) if self._root is not None else []

    # -- acting ---------------------------------------------------------------------

    def setPresence(self, user: str | Address, state: str | PresenceState, note: str = "") -> Deferred[str]:
        """
        Set a user's presence: a state and a note.

        The state is one of C{"online"}, C{"busy"}, C{"be-right-back"},
        C{"away"}, C{"on-the-phone"}, C{"out-to-lunch"},
        C{"appear-offline"}, C{"offline"}. It is published on each of the
        user's sessions (until its client publishes again); a user without
        one gets a session the console holds (labelled C{console}; its
        presence holds for at most C{[home] max_presence_lease} seconds),
        which C{"offline"} (or L{kick}) closes.

        @return: Fires with what was done.
        """
        try:
            address = self._address(user)
            presence = Presence(PresenceState(state), note)
        except ValueError as e:
            return fail(e)
        home = self._needHome()

        async def go() -> str:
            account = await self._gateway.directory.getAccount(address)
            if account is None or not account.enabled:
                raise NoSuchAccount(f"no enabled account {address}")
            held = self._held.get(address)
            if presence.state is PresenceState.OFFLINE and held is not None:
                held.client.sessionClosed("presence set offline in the console")
                held.close("presence set offline in the console")
            sessions = home.sessionsOf(address)
            if not sessions and presence.state is not PresenceState.OFFLINE:
                client = _ConsoleClient(self)
                session = await home.openSession(address, client, CONSOLE_LABEL)
                client.session = session
                self._held[address] = session
                sessions = [session]
            for session in sessions:
                session.publish(presence, float("inf") if session is self._held.get(address) else None)
            log.info("Console: presence of {user} set to {presence}", user=address, presence=presence)
            return f"{address} set to {presence} on {len(sessions)} session(s)"

        return Deferred.fromCoroutine(go())

    def sendMessage(self, sender: str | Address, recipient: str | Address, body: str) -> Deferred[str]:
        """
        Send a message as a user.

        C{sender} is a user of this domain (or any address), C{recipient}
        an address of any network; the message goes as if C{sender}'s
        client had sent it.

        @return: Fires with the outcome (C{"200 delivered"}), or fails with
            the delivery error (C{"480 alice@... is offline"}).
        """
        try:
            return self._send(self._address(sender), self._address(recipient), body)
        except ValueError as e:
            return fail(e)

    def notify(self, recipient: str | Address, body: str) -> Deferred[str]:
        """
        Send a message from the system to a user.

        The sender is C{[manhole] system_sender} at this domain.

        @return: As L{sendMessage}.
        """
        try:
            return self._send(self._system, self._address(recipient), body)
        except ValueError as e:
            return fail(e)

    def broadcast(self, body: str) -> Deferred[dict[str, str]]:
        """
        Send a notice from the system to every user online here.

        @return: Fires with each user's outcome.
        """
        users = self._needHome().users()
        sends = [self.notify(u, body) for u in users]
        done: Deferred[list[tuple[bool, Any]]] = DeferredList(sends, consumeErrors=True)
        return done.addCallback(
            lambda results: {
                str(u): (r if ok else _outcome(r)) for u, (ok, r) in zip(users, results)
            }
        )

    def kick(self, sessionId: str, reason: str = "closed by the operator") -> str:
        """
        End a session (an id from L{sessions}).

        Its client is told C{reason} and disconnected.
        """
        home = self._needHome()
        for user in home.users():
            for session in home.sessionsOf(user):
                if session.sessionId == sessionId:
                    session.client.sessionClosed(reason)
                    session.close(reason)
                    log.info("Console: session {session} closed ({reason})", session=sessionId, reason=reason)
                    return f"closed {sessionId} of {user}"
        raise KeyError(f"no session {sessionId!r} (gateway.sessions() lists them)")

    def disable(self, user: str | Address, reason: str = "account disabled by the operator") -> Deferred[str]:
        """
        Disable an account and end its sessions.

        It can no longer log in or receive, as after C{imgateway-admin user
        disable}.
        """
        try:
            address = self._address(user)
        except ValueError as e:
            return fail(e)

        async def go() -> str:
            await self._gateway.directory.updateAccount(address, enabled=False)
            home = getattr(self._gateway, "homeServer", None)
            closed = 0
            for session in list(home.sessionsOf(address)) if home is not None else []:
                session.client.sessionClosed(reason)
                session.close(reason)
                closed += 1
            log.info("Console: account {user} disabled ({count} sessions closed)", user=address, count=closed)
            return f"disabled {address}; closed {closed} session(s)"

        return Deferred.fromCoroutine(go())

    # -- presence rules -------------------------------------------------------------

    def rules(self, user: str | Address) -> Deferred[_Text]:
        """
        A user's presence rules, numbered in order (the first that matches
        a message decides).

        As C{/rules} and C{imgateway-admin rule list} show them:
        C{1. while on-the-phone from alice@corp.example: forward to
        alice@xmpp.example}. (C{gateway.homeServer.userRules} gives the
        L{PresenceRule}s themselves, for scripts.)
        """

        async def go() -> _Text:
            return _numbered(await self._userRules(self._address(user)))

        return Deferred.fromCoroutine(go())

    def setRules(self, user: str | Address, rules: Sequence[str | PresenceRule]) -> Deferred[_Text]:
        """
        Replace a user's presence rules.

        Each rule is typed as in C{/rule add}: C{STATES [from SENDER]
        [network local|remote] (deliver | reply TEXT... | forward ADDRESS |
        refuse ALTERNATE)} (or is a L{PresenceRule}); C{[]} removes them
        all. Checked as the user's own request would be (C{[home]
        max_rules}); the user's sessions follow at once.

        @return: Fires with the new list, as L{rules} shows it.
        """

        async def go() -> _Text:
            address = self._address(user)
            parsed = [self._rule(r) for r in rules]
            await self._userRules(address)
            return await self._setRules(address, parsed)

        return Deferred.fromCoroutine(go())

    def addRule(self, user: str | Address, rule: str | PresenceRule, position: int | None = None) -> Deferred[_Text]:
        """
        Add a presence rule: last, or at C{position} (1 is looked at first).

        C{rule} is typed as in C{/rule add}:
        C{gateway.addRule("bob", "phone reply On the phone, back soon")}.

        @return: Fires with the new list, as L{rules} shows it.
        """

        async def go() -> _Text:
            address = self._address(user)
            parsed = self._rule(rule)
            current = await self._userRules(address)
            where = len(current) if position is None else position - 1
            if not 0 <= where <= len(current):
                raise ValueError(f"the position must be 1 to {len(current) + 1}")
            current.insert(where, parsed)
            return await self._setRules(address, current)

        return Deferred.fromCoroutine(go())

    def removeRule(self, user: str | Address, number: int) -> Deferred[_Text]:
        """
        Remove a user's presence rule C{number} (as L{rules} numbers them).

        @return: Fires with the new list, as L{rules} shows it.
        """

        async def go() -> _Text:
            address = self._address(user)
            current = await self._userRules(address)
            if not isinstance(number, int) or not 1 <= number <= len(current):
                raise IndexError(f"{address} has no rule {number!r} ({len(current)} rules)")
            del current[number - 1]
            return await self._setRules(address, current)

        return Deferred.fromCoroutine(go())

    # -- inside ---------------------------------------------------------------------

    def _home(self) -> Any:
        return getattr(self._gateway, "homeServer", None)

    def _needHome(self) -> Any:
        home = self._home()
        if home is None:
            raise ServiceUnavailable("this process has no home server (its roles do not include home)")
        return home

    def _address(self, user: str | Address) -> Address:
        if isinstance(user, Address):
            return user
        if not isinstance(user, str):
            raise InvalidAddress(f"expected an address or a local part, got {user!r}")
        return Address.fromString(user) if "@" in user else Address.fromParts(user, self._gateway.domain)

    def _rule(self, rule: str | PresenceRule) -> PresenceRule:
        if isinstance(rule, PresenceRule):
            return rule
        if not isinstance(rule, str):
            raise TypeError(f"a rule is typed as text ({RULE_SYNTAX}) or is a PresenceRule, not {rule!r}")
        return checkRule(ruleFromJSON(parseRule(rule.split(), self._gateway.domain)))

    async def _userRules(self, address: Address) -> list[PresenceRule]:
        """
        The rules of a user of this home server (the account must exist and
        be homed here: another server's user has its rules in that
        server's store).
        """
        home = self._needHome()
        account = await self._gateway.directory.getAccount(address)
        if account is None:
            raise NoSuchAccount(f"no account {address}")
        here = self._gateway.config.homeServerName
        if account.homeServer != here:
            raise ServiceUnavailable(f"{address} is homed on {account.homeServer}, not {here}: use its manhole")
        rules: list[PresenceRule] = await home.userRules(address)
        return rules

    async def _setRules(self, address: Address, rules: list[PresenceRule]) -> _Text:
        await self._needHome().setUserRules(address, rules)
        log.info("Console: presence rules of {user} set ({count} rules)", user=address, count=len(rules))
        return _numbered(await self._needHome().userRules(address))

    def _send(self, sender: Address, recipient: Address, body: str) -> Deferred[str]:
        limit = self._gateway.config.home.maxMessageChars
        if len(body) > limit:
            return fail(TooLarge(f"message longer than {limit} characters ([home] max_message_chars)"))
        message = Message(
            sender=sender,
            recipient=recipient,
            body=body,
            messageId=newMessageId(),
            timestamp=self._gateway.clock.seconds(),
        )
        log.info("Console: message {id} from {sender} to {recipient}", id=message.messageId, sender=sender, recipient=recipient)
        d: Deferred[Any] = maybeDeferred(self._gateway.router.deliver, message)
        return d.addCallback(lambda status: f"{status.value} {status.name.lower().replace('_', ' ')}")


def _arguments(method: Any) -> str:
    """
    A method's arguments, without C{self} and annotations: C{(user, note='')}.
    """
    parameters = list(inspect.signature(method).parameters.values())[1:]
    return "(" + ", ".join(p.name + ("" if p.default is p.empty else f"={p.default!r}") for p in parameters) + ")"


def _numbered(rules: Sequence[PresenceRule]) -> _Text:
    """
    Rules, one a line, numbered from 1, as C{/rules} shows them.
    """
    if not rules:
        return _Text("no rules")
    return _Text("\n".join(f"{n}. {describeRule(ruleToJSON(r))}" for n, r in enumerate(rules, 1)))


def _outcome(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, DeliveryError):
        return f"{error.status.value} {failure.getErrorMessage()}"
    return f"error: {failure.getErrorMessage()}"


def _describeRoute(route: object) -> str:
    name = type(route).__name__
    domains = getattr(route, "domains", None)
    what = getattr(route, "name", None)
    if isinstance(what, str):
        return f"{name} {what}"
    if domains:
        return f"{name} ({', '.join(sorted(domains))})"
    return name


def makeNamespace(console: GatewayConsole) -> dict[str, object]:
    """
    @return: The namespace of a console or script: C{gateway}.
    """
    return {"gateway": console}


def completions(text: str, namespace: Mapping[str, object]) -> list[str]:
    """
    What tab completion offers for C{text} (a name or a dotted name, as
    typed so far) in C{namespace}: the names it may become, callables with
    an opening parenthesis (L{rlcompleter}).
    """
    completer = rlcompleter.Completer(dict(namespace))
    found: list[str] = []
    for state in range(1000):
        match = completer.complete(text, state)
        if match is None:
            break
        if match not in found:
            found.append(match)
    return found
