# -*- test-case-name: tests.test_events -*-
"""
Records kept by the directory and the home-server stores.
"""

from __future__ import annotations

import enum
from typing import Union

from attrs import frozen

from imgateway.core.address import Address
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
    "RemoveContact",
    "SetAccess",
    "SetAuthorisation",
    "SetRule",
    "Subscription",
    "checkAlternate",
    "ruleOrder",
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


@frozen
class PresenceRule:
    """
    A presence rule: while the user's presence is C{state}, messages are
    answered C{486 busy} with C{alternate} as another way to reach them
    ("I am on the phone: reach me on my mobile").

    @ivar state: The state the rule applies to.
    @ivar alternate: A URI (C{tel:}, C{im:}, C{mailto:}, ...; see
        L{checkAlternate}). Rules stored before alternates were checked
        may hold other text.
    """

    state: PresenceState
    alternate: str


_STATE_ORDER = {state: n for n, state in enumerate(PresenceState)}


def ruleOrder(rule: PresenceRule) -> int:
    """
    The sort key of presence rules: the order in which L{PresenceState}
    lists their states. Every store and the home server list rules in it.
    """
    return _STATE_ORDER[rule.state]


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
class SetRule:
    """
    Set C{owner}'s presence rule for C{state}; C{None} removes it.
    """

    owner: Address
    state: PresenceState
    alternate: str | None


#: Every authorisation state: C{SetAuthorisation(..., onlyIf=ANY_STATE)}
#: changes a row only if there is one.
ANY_STATE: tuple[AuthorisationState, ...] = tuple(AuthorisationState)

#: One change to a home store.
HomeChange = Union[PutContact, RemoveContact, SetAuthorisation, SetAccess, SetRule]
