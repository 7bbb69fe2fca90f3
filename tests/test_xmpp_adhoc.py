"""
Tests for L{imgateway.adapters.xmpp.adhoc}: a user's presence rules edited
through ad-hoc commands (XEP-0050) and data forms (XEP-0004) on the c2s
face.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from imgateway.adapters.xmpp.adhoc import NS_COMMANDS, NS_DATA
from imgateway.core.address import Address
from imgateway.core.presence import PresenceState
from imgateway.core.records import PresenceRule, RuleAction
from tests.test_xmpp_c2s import C2STestsMixin, Client


def submit(node: str, values: dict[str, list[str]], action: str = "complete") -> str:
    """
    The XML of a C{<command/>} request that submits a form with C{values}.
    """
    fields = "".join(
        f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in vs) + "</field>" for var, vs in values.items()
    )
    return (
        f"<iq type='set' id='c2' to='corp.example'><command xmlns='{NS_COMMANDS}' node='{node}' sessionid='s1'"
        f" action='{action}'><x xmlns='{NS_DATA}' type='submit'>{fields}</x></command></iq>"
    )


def execute(node: str) -> str:
    return f"<iq type='set' id='c1' to='corp.example'><command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/></iq>"


def command(reply: domish.Element) -> domish.Element:
    assert reply["type"] == "result", reply.toXml()
    [c] = list(reply.elements(NS_COMMANDS, "command"))
    return c  # type: ignore[no-any-return]


def children(element: domish.Element, name: str) -> list[domish.Element]:
    """
    The child elements of C{element} named C{name}, whatever their
    namespace.
    """
    return [c for c in element.elements() if c.name == name]


def fieldVars(form: domish.Element) -> list[str]:
    return [f["var"] for f in form.elements(NS_DATA, "field")]


class AdHocTests(C2STestsMixin, SynchronousTestCase):
    """
    alice's rules through ad-hoc commands.
    """

    def setUp(self) -> None:
        super().setUp()
        self.c = self.bound()

    def ask(self, xml: str) -> domish.Element:
        self.c.write(xml)
        [reply] = [e for e in self.c.read() if e.name == "iq"]
        return reply

    def rules(self) -> list[PresenceRule]:
        [session] = self.gateway.homeServer.sessionsOf(self.alice)
        return self.successResultOf(session.rules())

    def test_discovered(self) -> None:
        """
        The domain's disco#info names XEP-0050's feature; its disco#items
        on the commands node lists the three rule commands.
        """
        info = self.ask("<iq type='get' id='d1' to='corp.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertIn(NS_COMMANDS, [f["var"] for f in children(info.firstChildElement(), "feature")])
        items = self.ask(
            f"<iq type='get' id='d2' to='corp.example'><query xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>"
        )
        found = [(i["jid"], i["node"]) for i in children(items.firstChildElement(), "item")]
        self.assertEqual(
            found, [("corp.example", "rules-list"), ("corp.example", "rules-add"), ("corp.example", "rules-remove")]
        )

    def test_add(self) -> None:
        """
        C{rules-add} answers C{execute} with a form (status executing);
        the submitted form adds the rule (status completed, with a note).
        Fields the chosen action does not use are ignored.
        """
        answer = command(self.ask(execute("rules-add")))
        self.assertEqual(answer["status"], "executing")
        [form] = list(answer.elements(NS_DATA, "x"))
        self.assertEqual(fieldVars(form), ["states", "action", "sender", "network", "text", "forward", "alternate", "position"])
        done = command(
            self.ask(
                submit(
                    "rules-add",
                    {
                        "states": ["on-the-phone", "busy"],
                        "action": ["forward"],
                        "sender": ["Bob@corp.example"],
                        "network": ["any"],
                        "text": [""],
                        "forward": ["alice@xmpp.example"],
                        "alternate": ["tel:1"],
                    },
                )
            )
        )
        self.assertEqual(done["status"], "completed")
        self.assertEqual(
            self.rules(),
            [
                PresenceRule(
                    [PresenceState.ON_THE_PHONE, PresenceState.BUSY],
                    RuleAction.FORWARD,
                    sender="bob@corp.example",
                    forwardTo=Address("alice", "xmpp.example"),
                )
            ],
        )
        command(self.ask(submit("rules-add", {"states": ["away"], "action": ["auto-reply"], "text": ["Out", "back at 3"], "position": ["1"]})))
        self.assertEqual(self.rules()[0], PresenceRule([PresenceState.AWAY], RuleAction.AUTO_REPLY, text="Out\nback at 3"))

    def test_listAndRemove(self) -> None:
        """
        C{rules-list} answers with a result form, one item per rule in
        order; C{rules-remove} offers the rules and removes the one chosen.
        """
        for text in ("one", "two"):
            command(self.ask(submit("rules-add", {"states": ["away"], "action": ["auto-reply"], "text": [text]})))
        listed = command(self.ask(execute("rules-list")))
        self.assertEqual(listed["status"], "completed")
        [form] = list(listed.elements(NS_DATA, "x"))
        rows = [[str(v) for f in item.elements(NS_DATA, "field") for v in f.elements(NS_DATA, "value")] for item in form.elements(NS_DATA, "item")]
        self.assertEqual(rows, [["1", "away", "anyone", "any", "auto-reply", "one"], ["2", "away", "anyone", "any", "auto-reply", "two"]])
        offered = command(self.ask(execute("rules-remove")))
        [form] = list(offered.elements(NS_DATA, "x"))
        self.assertEqual(fieldVars(form), ["position"])
        command(self.ask(submit("rules-remove", {"position": ["1"]})))
        self.assertEqual([r.text for r in self.rules()], ["two"])

    def test_errors(self) -> None:
        """
        A form that makes no rule, a rule the home server refuses, an
        unknown node or action, and a position out of range are answered
        with stanza errors (bad-request with XEP-0050's bad-payload, or
        item-not-found); nothing changes. C{cancel} is answered canceled.
        """
        for xml, condition in [
            (submit("rules-add", {"states": ["snoozing"], "action": ["deliver"]}), "bad-request"),
            (submit("rules-add", {"states": ["online"], "action": ["deliver"]}), "bad-request"),
            (submit("rules-add", {"states": ["away"], "action": ["auto-reply"]}), "bad-request"),
            (submit("rules-add", {"states": ["away"], "action": ["deliver"], "position": ["x"]}), "bad-request"),
            (submit("rules-remove", {"position": ["3"]}), "bad-request"),
            (execute("rules-explode"), "item-not-found"),
            (submit("rules-add", {}, action="dance"), "bad-request"),
        ]:
            reply = self.ask(xml)
            self.assertEqual(reply["type"], "error", xml)
            [error] = children(reply, "error")
            self.assertIn(condition, [e.name for e in error.elements()], xml)
        self.assertEqual(self.rules(), [])
        reply = self.ask(submit("rules-add", {"states": ["snoozing"], "action": ["deliver"]}))
        [error] = children(reply, "error")
        self.assertEqual([e.uri for e in error.elements() if e.name == "bad-payload"], [NS_COMMANDS])
        self.assertEqual(command(self.ask(submit("rules-add", {}, action="cancel")))["status"], "canceled")

    def test_quota(self) -> None:
        """
        Past C{max_rules}, adding is answered not-allowed.
        """
        for _ in range(self.gateway.homeServer.config.maxRules):
            command(self.ask(submit("rules-add", {"states": ["away"], "action": ["deliver"]})))
        reply = self.ask(submit("rules-add", {"states": ["away"], "action": ["deliver"]}))
        self.assertEqual(reply["type"], "error")
        [error] = children(reply, "error")
        self.assertIn("not-allowed", [e.name for e in error.elements()])


__all__ = ["AdHocTests", "Client"]
