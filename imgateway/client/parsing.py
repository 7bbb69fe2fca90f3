# -*- test-case-name: tests.test_client_cli -*-
"""
What a user of C{imgateway-client} types: presence states and notes,
addresses (a bare name is in the user's own domain), access-list entries.

Presence states are named by their native tokens
(L{imgateway.adapters.native.mapping.PRESENCE}), plus a few aliases.

Every parser raises L{ValueError} (or L{InvalidAddress}, one of them) with a
message meant for the user.
"""

from __future__ import annotations

import re
import unicodedata

from attrs import frozen

from imgateway.adapters.native.mapping import PRESENCE, presenceFromToken
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.presence import PresenceState

__all__ = [
    "RULE_SYNTAX",
    "RuleCommand",
    "describeRule",
    "parseAlternate",
    "parseEntry",
    "parseRule",
    "parseRuleCommand",
    "parseState",
    "parseStatus",
    "resolveAddress",
]


#: Short names accepted for presence states, besides the states' tokens.
_STATE_ALIASES: dict[str, PresenceState] = {
    "brb": PresenceState.BE_RIGHT_BACK,
    "lunch": PresenceState.OUT_TO_LUNCH,
    "phone": PresenceState.ON_THE_PHONE,
    "dnd": PresenceState.BUSY,
    "invisible": PresenceState.APPEAR_OFFLINE,
}

#: Every name of a state a user may set (C{offline} is not one: end the
#: session instead).
_SETTABLE = [s for s in PresenceState if s is not PresenceState.OFFLINE]


def _stateNames() -> str:
    names = [PRESENCE[s] for s in _SETTABLE]
    aliases = [f"{alias} ({PRESENCE[state]})" for alias, state in _STATE_ALIASES.items()]
    return ", ".join(names) + "; or " + ", ".join(aliases)


def parseState(text: str) -> PresenceState:
    """
    Parse a presence state as a user types it: a state's token (C{away},
    C{be-right-back}), with C{_} or spaces for C{-} and in any case, or a
    short alias (C{brb}, C{lunch}, C{phone}, C{dnd} for busy, C{invisible}
    for appear-offline).

    @raise ValueError: If C{text} names no state, or names C{offline}
        (which is not something one publishes: one logs out).
    """
    key = "-".join(text.strip().lower().replace("_", " ").replace("-", " ").split())
    state = _STATE_ALIASES.get(key)
    if state is None:
        try:
            state = presenceFromToken(key)
        except ValueError:
            raise ValueError(f"unknown presence state {text!r} (states: {_stateNames()})") from None
    if state is PresenceState.OFFLINE:
        raise ValueError("cannot publish offline: use appear-offline (invisible), or /quit")
    return state


def parseStatus(text: str) -> tuple[PresenceState, str]:
    """
    Parse the arguments of C{/status}: a state, then an optional note.

    The state may be written in several words (C{be right back}); the longest
    run of leading words that names a state wins, so C{away at lunch} is
    C{away} with the note C{at lunch}.

    @return: The state and the note (C{""} when none).
    @raise ValueError: If the first words name no state.
    """
    words = text.split()
    if not words:
        raise ValueError(f"usage: /status STATE [NOTE...] (states: {_stateNames()})")
    for n in range(min(3, len(words)), 1, -1):
        try:
            state = parseState(" ".join(words[:n]))
        except ValueError:
            continue
        return state, " ".join(words[n:])
    return parseState(words[0]), " ".join(words[1:])


def resolveAddress(text: str, domain: str | None) -> Address:
    """
    Parse an address a user typed: C{bob@corp.example}, a URI form
    (C{im:bob@corp.example}), or a bare C{bob} meaning C{bob} in C{domain}
    (the logged-in user's domain).

    @raise InvalidAddress: If it is not a valid address.
    """
    text = text.strip()
    if "@" not in text and ":" not in text and domain:
        return Address.fromParts(text, domain)
    return Address.fromString(text)


def parseEntry(text: str, domain: str | None = None) -> str:
    """
    Parse an access-list entry: an address (C{bob@corp.example}), a domain
    (C{spam.example}), or a bare name without a dot (C{bob}), meaning that
    user in C{domain}.

    @return: The entry, normalised.
    @raise InvalidAddress: If it is none of these.
    """
    text = text.strip()
    if "@" in text or ("." not in text and domain):
        return str(resolveAddress(text, domain))
    return normaliseDomain(text)


#: A URI as RFC 3986 section 3 begins: a scheme (a letter, then letters,
#: digits, C{+}, C{-} or C{.}), a colon, and something after it.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:.+", re.DOTALL)

_ALTERNATE_EXAMPLES = (
    "tel:+15550100, im:bob@corp.example, sip:bob@corp.example, xmpp:bob@xmpp.example, "
    "mailto:bob@corp.example or https://corp.example/bob"
)


def parseAlternate(text: str) -> str:
    """
    Parse the alternate contact of a presence rule: a URI (C{tel:+15550100},
    C{im:bob@corp.example}, C{sip:}, C{xmpp:}, C{mailto:}, C{https:}...),
    which the server hands to those its rule turns away.

    Only the form is checked here (a scheme, a colon, no spaces or control
    characters); the server decides which schemes it takes.

    @return: The URI, without surrounding spaces.
    @raise ValueError: If C{text} is not a URI; the message gives examples,
        and the URI meant when C{text} is an address or a telephone number
        without its scheme.
    """
    uri = text.strip()
    if _URI.fullmatch(uri) and not any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in uri):
        return uri
    shown = uri.encode("unicode_escape").decode("ascii")
    message = f"the alternate must be a URI such as {_ALTERNATE_EXAMPLES}; got '{shown}'"
    digits = uri.replace(" ", "").replace("-", "").replace(".", "").replace("(", "").replace(")", "")
    if "@" in uri and ":" not in uri and not any(c.isspace() for c in uri):
        message += f" (did you mean im:{shown}?)"
    elif digits.lstrip("+").isdigit():
        message += f" (did you mean tel:{digits}?)"
    raise ValueError(message)


#: How a presence rule is typed (C{/rule add}, C{imgateway-admin rule add}).
RULE_SYNTAX = (
    "STATES [from SENDER] [network local|remote] (deliver | reply TEXT... | forward ADDRESS | refuse ALTERNATE)"
)


def parseRule(words: list[str], domain: str | None = None) -> dict[str, object]:
    """
    Parse a presence rule a user typed (L{RULE_SYNTAX}): C{STATES} are
    presence states separated by commas (C{phone,busy}); C{from} takes an
    address, a bare name in C{domain}, or a domain; then what the rule does.
    C{phone from alice forward alice@xmpp.example}, C{phone reply On the
    phone, back at 3}, C{away network remote refuse tel:+15550100}.

    @return: The rule's JSON form (docs/protocol.md 7.7), for C{RULE}.
    @raise ValueError: Saying what is wrong, with the syntax.
    """
    usage = f"a rule is {RULE_SYNTAX}"
    if not words:
        raise ValueError(usage)
    rule: dict[str, object] = {"states": [PRESENCE[parseState(w)] for w in words[0].split(",") if w]}
    rest = words[1:]
    while rest and rest[0].lower() in ("from", "network"):
        if len(rest) < 2:
            raise ValueError(usage)
        if rest[0].lower() == "from":
            rule["sender"] = parseEntry(rest[1], domain)
        else:
            if rest[1].lower() not in ("any", "local", "remote"):
                raise ValueError(f"the network is local, remote or any, not {rest[1]!r}")
            rule["network"] = rest[1].lower()
        rest = rest[2:]
    if not rest:
        raise ValueError(usage)
    action, arguments = rest[0].lower(), rest[1:]
    if action == "deliver" and not arguments:
        rule["action"] = "deliver"
    elif action == "reply" and arguments:
        rule["action"], rule["text"] = "auto-reply", " ".join(arguments)
    elif action == "forward" and len(arguments) == 1:
        rule["action"], rule["forward"] = "forward", str(resolveAddress(arguments[0], domain))
    elif action == "refuse" and len(arguments) == 1:
        rule["action"], rule["alternate"] = "refuse", parseAlternate(arguments[0])
    else:
        raise ValueError(usage)
    return rule


@frozen
class RuleCommand:
    """
    A rule command as a user typed it (C{/rule ...} in the chat client,
    C{imgateway-client rule ...}), parsed (L{parseRuleCommand}).

    @ivar verb: C{"add"} (C{rule}, last or at C{position}), C{"remove"}
        (rule C{position}), or C{"state"}: the first protocol's refusal for
        one C{state} naming C{alternate} (C{None}: remove it).
    @ivar position: From 1 (the first rule looked at); C{None} for
        C{add}: last.
    @ivar rule: The rule's JSON form (L{parseRule}), for C{add}.
    """

    verb: str
    position: int | None = None
    rule: dict[str, object] | None = None
    state: PresenceState | None = None
    alternate: str | None = None


def parseRuleCommand(words: list[str], domain: str | None = None, command: str = "/rule") -> RuleCommand:
    """
    Parse a rule command: C{add RULE}, C{insert N RULE}, C{remove N} (N
    from 1, the first rule looked at), or the first protocol's C{STATE
    [ALTERNATE]} (a refusal for one state naming C{ALTERNATE}, a URI; no
    C{ALTERNATE}: remove it). C{RULE} is L{RULE_SYNTAX} (L{parseRule}).

    @param command: How the user typed the command, for usage messages
        (C{"/rule"}, C{"imgateway-client rule"}).
    @raise ValueError: Saying what is wrong, with the syntax.
    """
    if not words:
        raise ValueError(
            f"usage: {command} add {RULE_SYNTAX} | {command} insert N ... | {command} remove N | {command} STATE [ALTERNATE]"
        )
    verb, rest = words[0].lower(), words[1:]
    if verb in ("insert", "remove"):
        if not rest or not rest[0].isdigit() or int(rest[0]) < 1:
            raise ValueError(f"usage: {command} {verb} N{' RULE' if verb == 'insert' else ''} (N: 1 for the first rule)")
        position, rest = int(rest[0]), rest[1:]
        if verb == "remove":
            if rest:
                raise ValueError(f"usage: {command} remove N")
            return RuleCommand("remove", position)
        return RuleCommand("add", position, parseRule(rest, domain))
    if verb == "add":
        return RuleCommand("add", None, parseRule(rest, domain))
    state = parseState(words[0])
    return RuleCommand("state", state=state, alternate=parseAlternate(" ".join(rest)) if rest else None)


def describeRule(rule: dict[str, object]) -> str:
    """
    A rule of a C{RULE} list as a line of text (without the reply's text:
    C{reply "..."} is shown in full).
    """
    states = rule.get("states", rule.get("presence"))
    shown = ",".join(str(s) for s in states) if isinstance(states, list) else str(states)
    line = f"while {shown}"
    if rule.get("sender"):
        line += f" from {rule['sender']}"
    if rule.get("network") not in (None, "any"):
        line += f" ({rule['network']} senders)"
    action = rule.get("action", "refuse")
    if action == "auto-reply":
        line += f": reply {rule.get('text')!r}"
    elif action == "forward":
        line += f": forward to {rule.get('forward')}"
    elif action == "refuse":
        line += f": refuse, naming {rule.get('alternate')}"
    else:
        line += ": deliver"
    return line
