# -*- test-case-name: tests.test_xmpp_adhoc -*-
"""
Ad-hoc commands (XEP-0050) on the XMPP c2s face: a user lists, adds and
removes its presence rules (docs/rules.md) with data forms (XEP-0004), from
Gajim, slixmpp or any client that runs commands.

The commands are items of the gateway's domain JID (C{corp.example}) under
the node C{http://jabber.org/protocol/commands}. They keep no state between
the stages of a command: the form a client submits says everything (the
C{sessionid} is only echoed), so nothing waits on the server for a client
that walks away.

    <iq type='set' to='corp.example'>
      <command xmlns='http://jabber.org/protocol/commands' node='rules-add' action='execute'/>
    </iq>
    -> a form (states, action, sender, network, text, forward, alternate, position)
    <iq type='set' to='corp.example'>
      <command xmlns='http://jabber.org/protocol/commands' node='rules-add' sessionid='...' action='complete'>
        <x xmlns='jabber:x:data' type='submit'>...</x>
      </command>
    </iq>
    -> status='completed' with a note
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.words.xish import domish

from imgateway.adapters.native.mapping import PRESENCE, RULE_ACTIONS, RULE_NETWORKS, ruleFromJSON
from imgateway.core.presence import PresenceState
from imgateway.core.records import RULE_STATES, PresenceRule, RuleAction, RuleNetwork
from imgateway.interfaces import ISession

__all__ = ["COMMANDS", "NS_COMMANDS", "NS_DATA", "CommandError", "commandItems", "runCommand"]

#: XEP-0050's namespace (and the disco node listing the commands).
NS_COMMANDS = "http://jabber.org/protocol/commands"

#: XEP-0004 data forms.
NS_DATA = "jabber:x:data"

#: The commands: node to its name.
COMMANDS: dict[str, str] = {
    "rules-list": "List my presence rules",
    "rules-add": "Add a presence rule",
    "rules-remove": "Remove a presence rule",
}

_ACTION_LABELS = {
    RuleAction.DELIVER: "Deliver as usual",
    RuleAction.AUTO_REPLY: "Auto-reply with a text, then deliver",
    RuleAction.FORWARD: "Forward a copy to another address, then deliver",
    RuleAction.REFUSE: "Refuse (busy), naming an alternate",
}
_NETWORK_LABELS = {
    RuleNetwork.ANY: "Any sender",
    RuleNetwork.LOCAL: "Senders of this gateway's domain",
    RuleNetwork.REMOTE: "Senders of other domains and networks",
}


class CommandError(Exception):
    """
    A command cannot be run as asked: answered with a stanza error.

    @ivar condition: The stanza error condition (C{bad-request},
        C{item-not-found}).
    @ivar specific: XEP-0050's specific condition (C{bad-payload},
        C{bad-action}, C{malformed-action}), or C{None}.
    """

    def __init__(self, condition: str, text: str, specific: str | None = None) -> None:
        super().__init__(text)
        self.condition = condition
        self.specific = specific


def commandItems(query: domish.Element, jid: str) -> None:
    """
    Fill a disco#items answer for the commands node: one item per command.
    """
    for node, name in COMMANDS.items():
        item = query.addElement("item")
        item["jid"], item["node"], item["name"] = jid, node, name


def runCommand(session: ISession, command: domish.Element) -> Deferred[domish.Element]:
    """
    Run one stage of a command for C{session}'s user.

    @param command: The C{<command/>} element of the request.
    @return: A L{Deferred} firing with the C{<command/>} element of the
        answer, or failing with L{CommandError} (bad input),
        C{ValueError} or L{imgateway.core.errors.QuotaExceeded} (the home
        server refused the change).
    """
    node = command.getAttribute("node") or ""
    if node not in COMMANDS:
        raise CommandError("item-not-found", f"no command {node[:64]!r}")
    action = command.getAttribute("action") or "execute"
    sessionId = command.getAttribute("sessionid") or os.urandom(8).hex()
    if action == "cancel":
        return succeed(_answer(node, sessionId, "canceled"))
    if action not in ("execute", "complete", "next"):
        raise CommandError("bad-request", f"unknown action {action[:32]!r}", "bad-action")
    submitted = _submitted(command)
    if node == "rules-list":
        return session.rules().addCallback(lambda rules: _listed(node, sessionId, rules))
    if submitted is None:
        if node == "rules-add":
            return succeed(_addForm(node, sessionId))
        return session.rules().addCallback(lambda rules: _removeForm(node, sessionId, rules))
    if node == "rules-add":
        rule, position = _ruleFromForm(submitted)
        done = session.addRule(rule, position)
        return done.addCallback(lambda _: _completed(node, sessionId, f"Rule added: {rule.describe()}"))
    position = _position(submitted, required=True)
    assert position is not None
    done = session.removeRule(position)
    return done.addCallback(lambda _: _completed(node, sessionId, f"Rule {position} removed"))


def _answer(node: str, sessionId: str, status: str) -> domish.Element:
    answer = domish.Element((NS_COMMANDS, "command"))
    answer["node"], answer["sessionid"], answer["status"] = node, sessionId, status
    return answer


def _completed(node: str, sessionId: str, text: str) -> domish.Element:
    answer = _answer(node, sessionId, "completed")
    answer.addElement("note", content=text)["type"] = "info"
    return answer


def _form(answer: domish.Element, kind: str, title: str, instructions: str = "") -> domish.Element:
    form: domish.Element = answer.addElement((NS_DATA, "x"))
    form["type"] = kind
    form.addElement("title", content=title)
    if instructions:
        form.addElement("instructions", content=instructions)
    return form


def _field(
    form: domish.Element,
    var: str,
    kind: str,
    label: str,
    values: Sequence[str] = (),
    options: Sequence[tuple[str, str]] = (),
    required: bool = False,
) -> None:
    field = form.addElement("field")
    field["var"], field["type"], field["label"] = var, kind, label
    if required:
        field.addElement("required")
    for value in values:
        field.addElement("value", content=value)
    for value, optionLabel in options:
        option = field.addElement("option")
        option["label"] = optionLabel
        option.addElement("value", content=value)


def _executing(node: str, sessionId: str) -> domish.Element:
    answer = _answer(node, sessionId, "executing")
    actions = answer.addElement("actions")
    actions["execute"] = "complete"
    actions.addElement("complete")
    return answer


def _addForm(node: str, sessionId: str) -> domish.Element:
    answer = _executing(node, sessionId)
    form = _form(
        answer,
        "form",
        "Add a presence rule",
        "The first rule that matches a message decides what happens to it. Fill in the text for an "
        "auto-reply, the address for a forward, the alternate (a URI such as tel:+15550100) to refuse.",
    )
    states = [(PRESENCE[s], s.label.capitalize()) for s in PresenceState if s in RULE_STATES]
    _field(form, "states", "list-multi", "While my presence is", options=states, required=True)
    actions = [(RULE_ACTIONS[a], _ACTION_LABELS[a]) for a in RuleAction]
    _field(form, "action", "list-single", "Then", [RULE_ACTIONS[RuleAction.AUTO_REPLY]], actions, required=True)
    _field(form, "sender", "text-single", "Only from this address or domain (empty: anyone)")
    networks = [(RULE_NETWORKS[n], _NETWORK_LABELS[n]) for n in RuleNetwork]
    _field(form, "network", "list-single", "Only from", [RULE_NETWORKS[RuleNetwork.ANY]], networks)
    _field(form, "text", "text-multi", "Auto-reply text")
    _field(form, "forward", "jid-single", "Forward to")
    _field(form, "alternate", "text-single", "Alternate to name when refusing (tel:, im:, xmpp:, mailto:...)")
    _field(form, "position", "text-single", "Position (1 is looked at first; empty: last)")
    return answer


def _removeForm(node: str, sessionId: str, rules: list[PresenceRule]) -> domish.Element:
    if not rules:
        return _completed(node, sessionId, "You have no presence rules")
    answer = _executing(node, sessionId)
    form = _form(answer, "form", "Remove a presence rule")
    options = [(str(n), f"{n}. {r.describe()}") for n, r in enumerate(rules, 1)]
    _field(form, "position", "list-single", "Rule", [], options, required=True)
    return answer


def _listed(node: str, sessionId: str, rules: list[PresenceRule]) -> domish.Element:
    answer = _answer(node, sessionId, "completed")
    form = _form(answer, "result", "Presence rules")
    reported = form.addElement("reported")
    columns = [("position", "#"), ("states", "While"), ("sender", "From"), ("network", "Network"), ("action", "Then"), ("detail", "Detail")]
    for var, label in columns:
        field = reported.addElement("field")
        field["var"], field["label"] = var, label
    for number, rule in enumerate(rules, 1):
        detail = rule.text or rule.alternate or (str(rule.forwardTo) if rule.forwardTo is not None else "")
        row = {
            "position": str(number),
            "states": ", ".join(PRESENCE[s] for s in PresenceState if s in rule.states),
            "sender": rule.sender or "anyone",
            "network": RULE_NETWORKS[rule.network],
            "action": RULE_ACTIONS[rule.action],
            "detail": detail,
        }
        item = form.addElement("item")
        for var, _ in columns:
            field = item.addElement("field")
            field["var"] = var
            field.addElement("value", content=row[var])
    if not rules:
        answer.addElement("note", content="You have no presence rules")["type"] = "info"
    return answer


def _submitted(command: domish.Element) -> dict[str, list[str]] | None:
    """
    The values of the form a C{<command/>} carries (C{type='submit'}), by
    field, or C{None} without one.
    """
    for form in command.elements(NS_DATA, "x"):
        if form.getAttribute("type") != "submit":
            raise CommandError("bad-request", "the form must be submitted (type='submit')", "bad-payload")
        values: dict[str, list[str]] = {}
        for field in form.elements(NS_DATA, "field"):
            var = field.getAttribute("var")
            if var:
                values[var] = [str(v) for v in field.elements(NS_DATA, "value")]
        return values
    return None


def _one(values: dict[str, list[str]], var: str) -> str:
    return "\n".join(values.get(var, [])).strip()


def _position(values: dict[str, list[str]], required: bool) -> int | None:
    text = _one(values, "position")
    if not text:
        if required:
            raise CommandError("bad-request", "which rule? (position)", "bad-payload")
        return None
    if not text.isdigit() or len(text) > 6 or int(text) < 1:
        raise CommandError("bad-request", "the position is a rule's number, 1 for the first", "bad-payload")
    return int(text)


def _ruleFromForm(values: dict[str, list[str]]) -> tuple[PresenceRule, int | None]:
    """
    The rule (not checked yet: the home server does) and the position a
    submitted C{rules-add} form asks for.

    @raise CommandError: If the form does not make a rule.
    """
    data: dict[str, object] = {"states": [s.strip() for s in values.get("states", []) if s.strip()]}
    for var in ("action", "sender", "network", "text", "forward", "alternate"):
        text = _one(values, var)
        if text:
            data[var] = text
    action = data.get("action")
    # A form shows every field: keep only what the action uses.
    unused: dict[object, tuple[str, ...]] = {
        "deliver": ("text", "forward", "alternate"),
        "auto-reply": ("forward", "alternate"),
        "forward": ("text", "alternate"),
        "refuse": ("text", "forward"),
    }
    for var in unused.get(action, ()):
        data.pop(var, None)
    try:
        rule = ruleFromJSON(data)
    except ValueError as e:
        raise CommandError("bad-request", str(e), "bad-payload") from None
    return rule, _position(values, required=False)

