# -*- test-case-name: tests.test_events -*-
"""
Records kept by the directory and the home-server stores.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Union

from attrs import evolve, field, frozen

from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import InvalidAddress
from imgateway.core.presence import Presence, PresenceState

__all__ = [
    "ALTERNATE_SCHEMES",
    "ANY_STATE",
    "MAX_ALTERNATE_CHARS",
    "MAX_DISPLAY_NAME_CHARS",
    "AccessList",
    "AccountRecord",
    "AuthorisationState",
    "ContactRecord",
    "ContactView",
    "HomeChange",
    "MoveRecord",
    "PresenceRule",
    "PutContact",
    "RULE_STATES",
    "MAX_REPLY_CHARS",
    "RuleAction",
    "RuleNetwork",
    "RemoveContact",
    "SetAccess",
    "SetAuthorisation",
    "SetRules",
    "Subscription",
    "UserRecords",
    "checkAlternate",
    "checkRule",
]


@frozen
class AccountRecord:
    """
    What the directory knows of one account.

    @ivar address: The account's address.
    @ivar homeServer: The name of the home server that hosts it.
    @ivar displayName: A human name, or C{""}.
    @ivar enabled: Whether it may log in and receive.
    @ivar credentials: The serialised password verifiers (see
        L{imgateway.auth.passwords.StoredCredentials}).
    """

    address: Address
    homeServer: str
    displayName: str
    enabled: bool
    credentials: str


@frozen
class MoveRecord:
    """
    A move of an account from one home server to another, under way
    (C{imgateway-admin user move}): the directory keeps it from the moment
    the account is disabled for the move until the move is done, so that
    running the command again finishes a move that was interrupted.

    @ivar address: The account.
    @ivar source: The home server it is moved from.
    @ivar target: The home server it is moved to.
    @ivar enabled: Whether the account was enabled before the move (what
        it is again once the move is done).
    """

    address: Address
    source: str
    target: str
    enabled: bool


class AuthorisationState(enum.Enum):
    """
    The state of a watcher's right to see a user's presence.
    """

    PENDING = "pending"
    AUTHORISED = "authorised"
    REFUSED = "refused"


class AccessList(enum.Enum):
    """
    Which of a user's access lists holds an entry (an address or a domain).

    Entries on the C{ALLOW} list have their subscription requests authorised
    without asking; entries on the C{BLOCK} list cannot send messages or
    subscription requests to the user, and see the user as offline.
    """

    ALLOW = "allow"
    BLOCK = "block"
    NONE = "none"


class Subscription(enum.Enum):
    """
    A contact's subscription state, seen from the contact list's owner
    (the same four values as an XMPP roster item).
    """

    NONE = "none"
    TO = "to"  # the owner sees the contact's presence
    FROM = "from"  # the contact sees the owner's presence
    BOTH = "both"

    @classmethod
    def fromFlags(cls, to: bool, from_: bool) -> Subscription:
        """
        @param to: Whether the owner is authorised to watch the contact.
        @param from_: Whether the contact is authorised to watch the owner.
        """
        if to and from_:
            return cls.BOTH
        if to:
            return cls.TO
        if from_:
            return cls.FROM
        return cls.NONE


#: The longest display name of a contact, in characters; the home server
#: cuts longer ones (the faces already do).
MAX_DISPLAY_NAME_CHARS = 256


@frozen
class ContactRecord:
    """
    One entry of a user's contact list.

    @ivar address: The contact.
    @ivar displayName: The owner's name for the contact, or C{""}.
    """

    address: Address
    displayName: str = ""


#: The URI schemes a presence rule's alternate may use.
ALTERNATE_SCHEMES = frozenset(
    ["tel", "sms", "sip", "sips", "im", "pres", "xmpp", "mailto", "http", "https", "irc", "ircs"]
)

#: The longest alternate, in characters.
MAX_ALTERNATE_CHARS = 256


def checkAlternate(alternate: str) -> str:
    """
    Check a presence rule's alternate: a URI (C{scheme:rest}) with one of
    L{ALTERNATE_SCHEMES}, at most L{MAX_ALTERNATE_CHARS} characters, without
    spaces or control characters.

    @return: C{alternate}.
    @raise ValueError: Saying what is wrong with it.
    """
    if not 0 < len(alternate) <= MAX_ALTERNATE_CHARS:
        raise ValueError(f"the alternate must be 1 to {MAX_ALTERNATE_CHARS} characters")
    scheme, colon, rest = alternate.partition(":")
    if not colon or scheme.lower() not in ALTERNATE_SCHEMES or not rest:
        schemes = ", ".join(f"{s}:" for s in sorted(ALTERNATE_SCHEMES))
        raise ValueError(f"the alternate must be a URI ({schemes}), such as tel:+15550100")
    if not alternate.isprintable() or any(c.isspace() for c in alternate):
        raise ValueError("the alternate must be a URI, without spaces or control characters")
    return alternate


class RuleAction(enum.Enum):
    """
    What a presence rule does with a message it matches.

    @cvar DELIVER: Deliver it as usual (and stop looking at later rules).
    @cvar AUTO_REPLY: Answer the sender with the rule's text (at most once
        per sender per C{[home] auto_reply_period}), then deliver it.
    @cvar FORWARD: Send a copy to the rule's other address (any network),
        then deliver it as usual.
    @cvar REFUSE: Answer C{486 busy} with the rule's alternate (to senders
        who may see the user's presence; others are told offline).
    """

    DELIVER = "deliver"
    AUTO_REPLY = "auto-reply"
    FORWARD = "forward"
    REFUSE = "refuse"


class RuleNetwork(enum.Enum):
    """
    Which senders a presence rule matches by network.

    @cvar ANY: Every sender.
    @cvar LOCAL: Senders of the home server's own domain (the gateway's
        users, whatever face they use).
    @cvar REMOTE: Senders of any other domain (XMPP federation, other
        networks).
    """

    ANY = "any"
    LOCAL = "local"
    REMOTE = "remote"


#: The presence states a rule can name: the present states but C{online}
#: (a message to an offline or hidden user is never looked at by rules).
RULE_STATES = frozenset(
    [
        PresenceState.BUSY,
        PresenceState.BE_RIGHT_BACK,
        PresenceState.AWAY,
        PresenceState.ON_THE_PHONE,
        PresenceState.OUT_TO_LUNCH,
    ]
)

#: The longest auto-reply text, in characters.
MAX_REPLY_CHARS = 1024


def _stateSet(states: Iterable[PresenceState]) -> frozenset[PresenceState]:
    return frozenset(states)


@frozen
class PresenceRule:
    """
    A presence rule: one entry of a user's ordered list. The first rule
    that matches a message (by the user's presence state, and optionally
    the sender) decides what happens to it (L{RuleAction}); a message no
    rule matches is delivered as usual.

    @ivar states: The presence states it applies to (one or several of
        L{RULE_STATES}).
    @ivar action: What it does.
    @ivar sender: C{""} (anyone), an address (C{alice@corp.example}) or a
        domain (C{corp.example}), normalised: only that sender matches.
    @ivar network: L{RuleNetwork}: only senders of that network match.
    @ivar alternate: For L{RuleAction.REFUSE}: a URI (see
        L{checkAlternate}). Rules stored before alternates were checked
        may hold other text.
    @ivar text: For L{RuleAction.AUTO_REPLY}: the reply.
    @ivar forwardTo: For L{RuleAction.FORWARD}: where the copy goes.
    """

    states: frozenset[PresenceState] = field(converter=_stateSet)
    action: RuleAction = RuleAction.REFUSE
    sender: str = ""
    network: RuleNetwork = RuleNetwork.ANY
    alternate: str = ""
    text: str = field(default="", repr=False)
    forwardTo: Address | None = None

    @classmethod
    def refuse(cls, state: PresenceState, alternate: str) -> PresenceRule:
        """
        The rule of the first protocol (C{RULE *} with C{Presence} and
        C{Alternate}): in C{state}, refuse with C{alternate}, whoever sends.
        """
        return cls(frozenset([state]), RuleAction.REFUSE, alternate=alternate)

    @property
    def legacyState(self) -> PresenceState | None:
        """
        The state of a rule the first protocol can show and replace (a
        refusal for one state, whoever sends), or C{None}.
        """
        if self.action is RuleAction.REFUSE and len(self.states) == 1 and not self.sender:
            if self.network is RuleNetwork.ANY:
                return next(iter(self.states))
        return None

    def matches(self, state: PresenceState, sender: Address, local: bool) -> bool:
        """
        @param state: The user's presence state now.
        @param sender: Who sends the message.
        @param local: Whether C{sender} is of the home server's domain.
        @return: Whether this rule applies to the message.
        """
        if state not in self.states:
            return False
        if self.network is RuleNetwork.LOCAL and not local:
            return False
        if self.network is RuleNetwork.REMOTE and local:
            return False
        if self.sender:
            if "@" in self.sender:
                return str(sender) == self.sender
            return sender.domain == self.sender
        return True

    def describe(self) -> str:
        """
        A one-line summary for logs and lists (without the reply's text).
        """
        states = ",".join(sorted(s.value for s in self.states))
        who = self.sender or "anyone"
        if self.network is not RuleNetwork.ANY:
            who += f" ({self.network.value})"
        what = self.action.value
        if self.action is RuleAction.REFUSE and self.alternate:
            what += f" {self.alternate}"
        elif self.action is RuleAction.FORWARD:
            what += f" to {self.forwardTo}"
        return f"while {states}, from {who}: {what}"


def checkRule(rule: PresenceRule, normaliseSender: bool = True) -> PresenceRule:
    """
    Check a rule a user asks for: its states, its sender (normalised), and
    what its action needs (an alternate URI to refuse, a text to reply, an
    address to forward to) and nothing else.

    @return: The rule, its sender normalised.
    @raise ValueError: Saying what is wrong with it.
    """
    if not rule.states:
        raise ValueError("a rule needs at least one presence state")
    wrong = sorted(s.value for s in rule.states - RULE_STATES)
    if wrong:
        raise ValueError(f"rules apply to busy and away states, not {', '.join(wrong)}")
    sender = rule.sender
    if sender:
        try:
            sender = str(Address.fromString(sender)) if "@" in sender else normaliseDomain(sender)
        except InvalidAddress as e:
            raise ValueError(f"the sender must be an address or a domain: {e}") from None
    if rule.action is RuleAction.REFUSE:
        checkAlternate(rule.alternate)
    elif rule.alternate:
        raise ValueError("only a refuse rule has an alternate")
    if rule.action is RuleAction.AUTO_REPLY:
        if not 0 < len(rule.text) <= MAX_REPLY_CHARS or not rule.text.strip():
            raise ValueError(f"an auto-reply needs a text of 1 to {MAX_REPLY_CHARS} characters")
    elif rule.text:
        raise ValueError("only an auto-reply rule has a text")
    if rule.action is RuleAction.FORWARD:
        if rule.forwardTo is None:
            raise ValueError("a forward rule needs an address to forward to")
    elif rule.forwardTo is not None:
        raise ValueError("only a forward rule has an address to forward to")
    return evolve(rule, sender=sender)


@frozen
class ContactView:
    """
    A contact as its owner's sessions see it: the stored record plus the
    subscription state and the contact's current presence.

    @ivar address: The contact.
    @ivar displayName: The owner's name for the contact.
    @ivar subscription: Which ways presence flows (L{Subscription}).
    @ivar pending: Whether the owner's request to watch the contact awaits
        an answer.
    @ivar presence: The contact's presence as the owner may see it (offline
        unless the owner is authorised).
    """

    address: Address
    displayName: str
    subscription: Subscription
    pending: bool
    presence: Presence



@frozen
class UserRecords:
    """
    Everything a home store keeps of one user, read at once when the user
    logs in (L{imgateway.interfaces.IHomeStore.getUserRecords}): what
    L{IHomeStore.getContacts<imgateway.interfaces.IHomeStore.getContacts>},
    C{getAuthorisations}, C{getAccess} and C{getRules} give, in their orders.

    @ivar contacts: The user's contact list, ordered by address.
    @ivar authorisations: Every authorisation row in which the user is the
        target or the watcher, as C{(target, watcher, state)}, ordered by
        target, then watcher.
    @ivar access: The user's access-list entries, ordered by entry.
    @ivar rules: The user's presence rules, in their order.
    """

    contacts: list[ContactRecord]
    authorisations: list[tuple[Address, Address, AuthorisationState]]
    access: dict[str, AccessList]
    rules: list[PresenceRule]


# -- changes to a home store, applied together (IHomeStore.apply) -------------------


@frozen
class PutContact:
    """
    Add C{contact} to C{owner}'s contact list, or replace its record.
    """

    owner: Address
    contact: ContactRecord


@frozen
class RemoveContact:
    """
    Remove C{contact} from C{owner}'s contact list (nothing if absent).
    """

    owner: Address
    contact: Address


@frozen
class SetAuthorisation:
    """
    Set whether C{watcher} may watch C{target}; C{None} deletes the row.

    @ivar onlyIf: If not empty, change the row only if it is there in one
        of these states (an answer to a request that has since been
        withdrawn changes nothing).
    @ivar pendingLimit: If set, a change that makes a new pending request
        (the row is absent or in another state, and the change applies to
        it) is made only while C{target} has fewer than this many pending
        requests (rows with C{target} as target, in state pending), or its
        access lists allow C{watcher} (who will be authorised at once).
        Otherwise L{IHomeStore.apply<imgateway.interfaces.IHomeStore.apply>}
        fails with L{PendingRequestsFull<imgateway.core.errors.PendingRequestsFull>}
        and changes nothing (C{[home] max_pending_requests}).
    """

    target: Address
    watcher: Address
    state: AuthorisationState | None
    onlyIf: tuple[AuthorisationState, ...] = ()
    pendingLimit: int | None = None

    def appliesTo(self, current: AuthorisationState | None) -> bool:
        """
        @return: Whether this change changes a row in state C{current}
            (C{None}: no row).
        """
        return not self.onlyIf or current in self.onlyIf


@frozen
class SetAccess:
    """
    Put C{entry} (an address or a domain) on C{owner}'s C{accessList};
    L{AccessList.NONE} removes it.
    """

    owner: Address
    entry: str
    accessList: AccessList


@frozen
class SetRules:
    """
    Replace C{owner}'s presence rules with C{rules}, in order (an empty
    tuple removes them all).
    """

    owner: Address
    rules: tuple[PresenceRule, ...]


#: Every authorisation state: C{SetAuthorisation(..., onlyIf=ANY_STATE)}
#: changes a row only if there is one.
ANY_STATE: tuple[AuthorisationState, ...] = tuple(AuthorisationState)

#: One change to a home store.
HomeChange = Union[PutContact, RemoveContact, SetAuthorisation, SetAccess, SetRules]
