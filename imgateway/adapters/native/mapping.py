# -*- test-case-name: tests.test_native_mapping -*-
"""
The native face's mappings between the core model and the wire
(C{docs/protocol.md}), one declarative table each: status codes, delivery
statuses and core errors; presence tokens; subscription event tokens;
contact subscription states; access lists; C{AUTHORISE} decisions; and
the target forms each method takes.

The core's enums carry no wire values as far as this face is concerned:
the server (L{imgateway.adapters.native.server}) and the client library
(L{imgateway.client.protocol}) go through these tables, never through an
enum's C{.value}.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from imgateway.core.errors import (
    AuthenticationFailed,
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    PersistenceFailed,
    TooManySessions,
    statusError,
)
from imgateway.core.address import Address
from imgateway.core.events import MessageMark, SubscriptionKind
from imgateway.core.presence import PresenceState
from imgateway.core.records import AccessList, AuthorisationState, PresenceRule, RuleAction, RuleNetwork, Subscription

__all__ = [
    "ACCESS_LISTS",
    "DECISIONS",
    "DELIVERY_CODES",
    "ERROR_CODES",
    "MESSAGE_MARKS",
    "PRESENCE",
    "RULE_ACTIONS",
    "RULE_NETWORKS",
    "REASONS",
    "SUBSCRIBE_ANSWERS",
    "SUBSCRIPTIONS",
    "SUBSCRIPTION_KINDS",
    "TARGETS",
    "TargetForm",
    "accessListFromToken",
    "codeForDelivery",
    "codeForError",
    "decisionFromToken",
    "deliveryErrorFor",
    "describeTargets",
    "isDeliveryCode",
    "markFromToken",
    "presenceAnswersNone",
    "presenceFromToken",
    "ruleFromJSON",
    "ruleToJSON",
    "subscriptionKindFromToken",
    "subscriptionFromToken",
    "targetForm",
]

_E = TypeVar("_E")


def _inverse(table: Mapping[_E, str], what: str) -> Mapping[str, _E]:
    """
    The inverse of a table of tokens, checking that no token is used
    twice (a round trip must give back what went in).
    """
    inverse = {token: member for member, token in table.items()}
    if len(inverse) != len(table):
        raise ValueError(f"a {what} token is used twice")
    return MappingProxyType(inverse)


def _fromToken(inverse: Mapping[str, _E], token: str, what: str) -> _E:
    """
    Look a token up, ignoring case and the spaces around it.

    @raise ValueError: For an unknown token.
    """
    try:
        return inverse[token.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {token!r}") from None


# -- status codes --------------------------------------------------------------

#: Status code to its reason phrase (C{docs/protocol.md} §5).
REASONS: Mapping[int, str] = MappingProxyType(
    {
        110: "Challenge",
        200: "OK",
        202: "Accepted",
        301: "Moved Permanently",
        302: "Moved Temporarily",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        413: "Too Large",
        426: "Encryption Required",
        429: "Too Many Requests",
        431: "Header Too Large",
        453: "Too Many Sessions",
        454: "Quota Exceeded",
        480: "Offline",
        482: "Loop Detected",
        486: "Busy Here",
        500: "Server Error",
        502: "No Route",
        503: "Service Unavailable",
        505: "Version Not Supported",
    }
)

#: Delivery status to the status code that carries it (both ways: no two
#: statuses share a code).
DELIVERY_CODES: Mapping[DeliveryStatus, int] = MappingProxyType(
    {
        DeliveryStatus.DELIVERED: 200,
        DeliveryStatus.MOVED: 301,
        DeliveryStatus.NOT_AUTHORISED: 401,
        DeliveryStatus.BLOCKED: 403,
        DeliveryStatus.NO_SUCH_USER: 404,
        DeliveryStatus.TOO_LARGE: 413,
        DeliveryStatus.RATE_LIMITED: 429,
        DeliveryStatus.QUOTA_EXCEEDED: 454,
        DeliveryStatus.OFFLINE: 480,
        DeliveryStatus.LOOP_DETECTED: 482,
        DeliveryStatus.BUSY: 486,
        DeliveryStatus.SERVER_ERROR: 500,
        DeliveryStatus.NO_ROUTE: 502,
        DeliveryStatus.SERVICE_UNAVAILABLE: 503,
    }
)

_DELIVERY_FROM_CODE: Mapping[int, DeliveryStatus] = MappingProxyType(
    {code: status for status, code in DELIVERY_CODES.items()}
)

#: Core errors other than L{DeliveryError}s to the status code that answers
#: them; an error takes the entry of the first class of its MRO found here.
ERROR_CODES: Mapping[type[Exception], int] = MappingProxyType(
    {
        InvalidAddress: 400,
        AuthenticationFailed: 401,
        TooManySessions: 453,
        PersistenceFailed: 500,
        ValueError: 400,
    }
)


def codeForDelivery(error: DeliveryError) -> int:
    """
    @param error: A failed delivery.
    @return: The status code that reports it.
    """
    return DELIVERY_CODES[error.status]


def codeForError(error: BaseException) -> int | None:
    """
    @param error: An error raised while handling a request.
    @return: The status code that answers it, or C{None} if it is not an
        error the protocol has a code for (an unexpected failure: 500).
    """
    if isinstance(error, DeliveryError):
        return codeForDelivery(error)
    for cls in type(error).__mro__:
        code = ERROR_CODES.get(cls)
        if code is not None:
            return code
    return None


def isDeliveryCode(code: int) -> bool:
    """
    @return: Whether C{code} is an error status that reports a failed
        delivery (404, 480, 486...), as opposed to a protocol error.
    """
    status = _DELIVERY_FROM_CODE.get(code)
    return status is not None and status is not DeliveryStatus.DELIVERED


def deliveryErrorFor(code: int, reason: str, alternate: str | None = None) -> DeliveryError:
    """
    The L{DeliveryError} a native error response stands for.

    @param code: The response's status code; one that is no delivery status
        stands for L{DeliveryStatus.SERVER_ERROR}.
    @param reason: Its reason phrase.
    @param alternate: Its C{Alternate} header, if any (for 486).
    """
    status = _DELIVERY_FROM_CODE.get(code, DeliveryStatus.SERVER_ERROR)
    if status is DeliveryStatus.DELIVERED:
        status = DeliveryStatus.SERVER_ERROR
    return statusError(status, reason, alternate)


#: How a C{SUBSCRIBE} is answered, by the state of the subscriber's right
#: to watch: C{200} once authorised, C{202} otherwise (a refusal is not
#: told apart from a pending request).
SUBSCRIBE_ANSWERS: Mapping[AuthorisationState, int] = MappingProxyType(
    {
        AuthorisationState.AUTHORISED: 200,
        AuthorisationState.PENDING: 202,
        AuthorisationState.REFUSED: 202,
    }
)


# -- tokens in headers and JSON bodies --------------------------------------------

#: Presence state to its token (C{Presence:} headers, JSON C{presence}).
PRESENCE: Mapping[PresenceState, str] = MappingProxyType(
    {
        PresenceState.ONLINE: "online",
        PresenceState.BUSY: "busy",
        PresenceState.BE_RIGHT_BACK: "be-right-back",
        PresenceState.AWAY: "away",
        PresenceState.ON_THE_PHONE: "on-the-phone",
        PresenceState.OUT_TO_LUNCH: "out-to-lunch",
        PresenceState.APPEAR_OFFLINE: "appear-offline",
        PresenceState.OFFLINE: "offline",
    }
)
_PRESENCE_FROM_TOKEN = _inverse(PRESENCE, "presence")

#: Subscription event to its token (C{Subscription:} header of a
#: C{subscription} C{NOTIFY}).
SUBSCRIPTION_KINDS: Mapping[SubscriptionKind, str] = MappingProxyType(
    {
        SubscriptionKind.SUBSCRIBE: "subscribe",
        SubscriptionKind.UNSUBSCRIBE: "unsubscribe",
        SubscriptionKind.AUTHORISE: "authorise",
        SubscriptionKind.REFUSE: "refuse",
    }
)
_KIND_FROM_TOKEN = _inverse(SUBSCRIPTION_KINDS, "subscription event")

#: A contact's subscription state to its token (JSON C{subscription}).
SUBSCRIPTIONS: Mapping[Subscription, str] = MappingProxyType(
    {
        Subscription.NONE: "none",
        Subscription.TO: "to",
        Subscription.FROM: "from",
        Subscription.BOTH: "both",
    }
)
_SUBSCRIPTION_FROM_TOKEN = _inverse(SUBSCRIPTIONS, "subscription state")

#: Access list to its token (C{List:} header of C{ACCESS}; the keys of
#: C{ACCESS *}'s JSON body).
ACCESS_LISTS: Mapping[AccessList, str] = MappingProxyType(
    {
        AccessList.ALLOW: "allow",
        AccessList.BLOCK: "block",
        AccessList.NONE: "none",
    }
)
_ACCESS_FROM_TOKEN = _inverse(ACCESS_LISTS, "access list")

#: C{Decision:} header of C{AUTHORISE} to whether it allows.
DECISIONS: Mapping[bool, str] = MappingProxyType({True: "allow", False: "deny"})
_DECISION_FROM_TOKEN = _inverse(DECISIONS, "decision")


#: A presence rule's action to its token (JSON C{action}).
RULE_ACTIONS: Mapping[RuleAction, str] = MappingProxyType(
    {
        RuleAction.DELIVER: "deliver",
        RuleAction.AUTO_REPLY: "auto-reply",
        RuleAction.FORWARD: "forward",
        RuleAction.REFUSE: "refuse",
    }
)
_ACTION_FROM_TOKEN = _inverse(RULE_ACTIONS, "rule action")

#: A presence rule's network to its token (JSON C{network}).
RULE_NETWORKS: Mapping[RuleNetwork, str] = MappingProxyType(
    {
        RuleNetwork.ANY: "any",
        RuleNetwork.LOCAL: "local",
        RuleNetwork.REMOTE: "remote",
    }
)
_NETWORK_FROM_TOKEN = _inverse(RULE_NETWORKS, "rule network")

#: A message's loop mark to its token (C{Auto:} header of C{MESSAGE}, on
#: the client protocol and on server links).
MESSAGE_MARKS: Mapping[MessageMark, str] = MappingProxyType(
    {
        MessageMark.AUTO_REPLY: "auto-reply",
        MessageMark.FORWARDED: "forwarded",
        MessageMark.ERROR: "error",
    }
)
_MARK_FROM_TOKEN = _inverse(MESSAGE_MARKS, "message mark")


def markFromToken(token: str) -> MessageMark:
    """
    @param token: An C{Auto:} token, in any case.
    @return: The mark it names.
    @raise ValueError: If it names none.
    """
    return _fromToken(_MARK_FROM_TOKEN, token, "message mark")


def ruleToJSON(rule: PresenceRule) -> dict[str, object]:
    """
    The JSON form of a presence rule (C{RULE}, docs/protocol.md 7.7; server
    links; C{imgateway-admin rule}): C{states} (presence tokens, in the
    order of L{PresenceState}), C{action}, and, when set, C{sender},
    C{network}, C{alternate}, C{text}, C{forward}.
    """
    out: dict[str, object] = {
        "states": [PRESENCE[s] for s in PresenceState if s in rule.states],
        "action": RULE_ACTIONS[rule.action],
    }
    if rule.sender:
        out["sender"] = rule.sender
    if rule.network is not RuleNetwork.ANY:
        out["network"] = RULE_NETWORKS[rule.network]
    if rule.alternate:
        out["alternate"] = rule.alternate
    if rule.text:
        out["text"] = rule.text
    if rule.forwardTo is not None:
        out["forward"] = str(rule.forwardTo)
    return out


_RULE_FIELDS = frozenset(["states", "presence", "action", "sender", "network", "alternate", "text", "forward"])


def ruleFromJSON(data: object) -> PresenceRule:
    """
    Read a rule's JSON form (L{ruleToJSON}). C{states} may be one token (a
    string), or given as C{presence} (a list entry of the first protocol);
    C{action} defaults to C{refuse}. The rule is not checked yet
    (L{imgateway.core.records.checkRule}).

    @raise ValueError: If it is not one.
    """
    if not isinstance(data, dict):
        raise ValueError("a rule must be a JSON object")
    unknown = sorted(str(k) for k in set(data) - _RULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown rule field {unknown[0][:32]!r}")
    for key in _RULE_FIELDS - {"states"}:
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{key} must be a string")
    states = data.get("states", data.get("presence"))
    if isinstance(states, str):
        states = [states]
    if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
        raise ValueError("states must be a list of presence states")
    forward = data.get("forward")
    try:
        forwardTo = Address.fromString(forward) if forward else None
    except InvalidAddress as e:
        raise ValueError(f"cannot forward there: {e}") from None
    return PresenceRule(
        frozenset(presenceFromToken(s) for s in states),
        _fromToken(_ACTION_FROM_TOKEN, data.get("action", "refuse"), "rule action"),
        sender=data.get("sender", ""),
        network=_fromToken(_NETWORK_FROM_TOKEN, data.get("network", "any"), "rule network"),
        alternate=data.get("alternate", ""),
        text=data.get("text", ""),
        forwardTo=forwardTo,
    )


def presenceFromToken(token: str) -> PresenceState:
    """
    @param token: A presence token, in any case.
    @return: The state it names.
    @raise ValueError: If it names none.
    """
    return _fromToken(_PRESENCE_FROM_TOKEN, token, "presence state")


def subscriptionKindFromToken(token: str) -> SubscriptionKind:
    """
    @param token: A C{Subscription:} token, in any case.
    @return: The subscription event it names.
    @raise ValueError: If it names none.
    """
    return _fromToken(_KIND_FROM_TOKEN, token, "subscription event")


def subscriptionFromToken(token: str) -> Subscription:
    """
    @param token: A contact's C{subscription} token, in any case.
    @return: The subscription state it names.
    @raise ValueError: If it names none.
    """
    return _fromToken(_SUBSCRIPTION_FROM_TOKEN, token, "subscription state")


def accessListFromToken(token: str) -> AccessList:
    """
    @param token: A C{List:} token, in any case.
    @return: The access list it names.
    @raise ValueError: If it names none.
    """
    return _fromToken(_ACCESS_FROM_TOKEN, token, "access list")


def decisionFromToken(token: str) -> bool:
    """
    @param token: A C{Decision:} token, in any case.
    @return: Whether it allows.
    @raise ValueError: If it is neither C{allow} nor C{deny}.
    """
    return _fromToken(_DECISION_FROM_TOKEN, token, "decision")


# -- request targets -----------------------------------------------------------------


class TargetForm(enum.Enum):
    """
    The forms a request target can take (C{docs/protocol.md} §2). The value
    is how the spec writes the form, for error reasons.
    """

    #: C{*}: the request has no object.
    STAR = "*"
    #: C{im:user@domain} (RFC 3860).
    IM = "im:user@domain"
    #: C{pres:user@domain} (RFC 3859).
    PRES = "pres:user@domain"
    #: A bare domain: C{corp.example}.
    DOMAIN = "a domain"
    #: A bare address, C{user@domain}: never a target.
    ADDRESS = "user@domain"
    #: A URI of another scheme (C{xmpp:}, C{tel:}...): never a target.
    OTHER_URI = "another URI"


#: URI scheme (with its colon, lower case) to its form.
_SCHEMES: Mapping[str, TargetForm] = MappingProxyType({"im:": TargetForm.IM, "pres:": TargetForm.PRES})

#: Request method (client to server) to the target forms it takes.
TARGETS: Mapping[str, frozenset[TargetForm]] = MappingProxyType(
    {
        "OPTIONS": frozenset({TargetForm.STAR}),
        "AUTH": frozenset({TargetForm.STAR}),
        "PING": frozenset({TargetForm.STAR}),
        "BYE": frozenset({TargetForm.STAR}),
        "PUBLISH": frozenset({TargetForm.STAR}),
        "CONTACTS": frozenset({TargetForm.STAR}),
        "RULE": frozenset({TargetForm.STAR}),
        "SUBSCRIBE": frozenset({TargetForm.PRES}),
        "UNSUBSCRIBE": frozenset({TargetForm.PRES}),
        "AUTHORISE": frozenset({TargetForm.PRES}),
        "MESSAGE": frozenset({TargetForm.IM}),
        "ACCESS": frozenset({TargetForm.IM, TargetForm.DOMAIN, TargetForm.STAR}),
    }
)

# The order forms are listed in, in error reasons.
_FORM_ORDER = [TargetForm.IM, TargetForm.PRES, TargetForm.DOMAIN, TargetForm.STAR]


def targetForm(target: str) -> TargetForm:
    """
    Tell which form a request target has; whether the address or domain in
    it is valid is not checked here.

    @param target: A request target as parsed from a start line.
    @return: Its form. URI schemes are compared case-insensitively.
    """
    if target == "*":
        return TargetForm.STAR
    scheme, colon, _ = target.partition(":")
    if colon:
        return _SCHEMES.get(scheme.lower() + ":", TargetForm.OTHER_URI)
    if "@" in target:
        return TargetForm.ADDRESS
    return TargetForm.DOMAIN


def describeTargets(method: str) -> str:
    """
    @param method: A method of L{TARGETS}.
    @return: The target forms it takes, in words: C{"im:user@domain, a
        domain or *"}.
    """
    forms = [f.value for f in _FORM_ORDER if f in TARGETS[method]]
    if len(forms) == 1:
        return forms[0]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def presenceAnswersNone(value: str | None) -> bool:
    """
    Whether a C{Presence-Answers} header value (a client's C{AUTH} asking,
    or the server's C{200} agreeing) says that the session's presence
    C{NOTIFY}s go unanswered (C{docs/protocol.md} section 7.2): C{none}, in
    any case, spaces around it ignored. Any other value, or none, is the
    default (C{all}: every request answered).
    """
    return value is not None and value.strip().lower() == "none"
