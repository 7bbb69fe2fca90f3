"""
Tests for L{imgateway.manhole}: the C{[manhole]} table
(L{imgateway.manhole.config}), the console's helpers
(L{imgateway.manhole.namespace}) and scripts (L{imgateway.manhole.script}),
on a gateway of memory stores with a fake clock.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.config import GatewayConfig, HomeConfig, ManholeConfig, parseConfig
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, NoSuchAccount, QuotaExceeded, ServiceUnavailable, TooLarge, UserOffline
from imgateway.core.presence import OFFLINE, Presence, PresenceState
from imgateway.core.records import AccountRecord, ContactRecord, PresenceRule, PutContact, RuleAction, RuleNetwork
from imgateway.gateway import Gateway
from imgateway.interfaces import ISession
from imgateway.manhole.namespace import CONSOLE_LABEL, GatewayConsole, LinkInfo, UserInfo, completions, makeNamespace
from imgateway.manhole.script import runScript
from imgateway.testing import RecordingSessionClient, addUser, memoryGateway

ED25519_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl operator@example"
)


class ManholeConfigTests(SynchronousTestCase):
    """
    The C{[manhole]} table, checked with the rest of the configuration.
    """

    def setUp(self) -> None:
        self.folder = FilePath(os.path.abspath(self.mktemp()))
        self.folder.makedirs()
        self.keys = self.folder.child("authorized_keys")
        self.keys.setContent(b"# the operators\n\n" + ED25519_PUBLIC.encode() + b"\n")

    def parse(self, **manhole: object) -> GatewayConfig:
        """
        Parse a configuration with C{manhole} as its C{[manhole]} table (none
        when empty).
        """
        data: dict[str, Any] = {"gateway": {"domain": "corp.example"}}
        if manhole:
            data["manhole"] = manhole
        return parseConfig(data, self.folder.child("imgateway.toml"), MemoryReactor(), {})

    def refused(self, **manhole: object) -> str:
        """
        @return: The message of the L{ConfigError} parsing C{manhole} raises.
        """
        return str(self.assertRaises(ConfigError, self.parse, **manhole))

    def test_offByDefault(self) -> None:
        """
        Without a C{[manhole]} table there is no console (no C{listen}), and
        the watchdog logs blocks longer than a second.
        """
        config = self.parse().manhole
        self.assertEqual(config, ManholeConfig())
        self.assertEqual(
            (config.listen, config.user, config.loginTimeout, config.maxAuthAttempts, config.watchdogSeconds),
            ((), "admin", 30.0, 3, 1.0),
        )
        self.assertEqual((config.maxScriptBytes, config.systemSender), (1024 * 1024, "imgateway"))

    def test_shipped(self) -> None:
        """
        The shipped C{etc/imgateway.toml} shows every key of C{[manhole]}
        with its default.
        """
        from imgateway.config import loadConfig
        from imgateway.plugins import adapterConfigParsers
        from tests.test_imports import REPO

        path = REPO.child("etc").child("imgateway.toml")
        self.assertEqual(loadConfig(path.path, MemoryReactor(), adapterConfigParsers()).manhole, ManholeConfig())
        text = path.getContent().decode("utf-8").split("\n[manhole]\n", 1)[1]
        for key in ("listen", "authorized_keys", "user", "login_timeout", "max_auth_attempts", "max_script_bytes",
                    "system_sender", "watchdog_seconds"):
            self.assertIn(f"\n{key} = ", "\n" + text.replace("# ", ""))

    def test_everyKey(self) -> None:
        """
        Every key is read; a relative C{authorized_keys} resolves against the
        configuration file's folder.
        """
        config = self.parse(
            listen=["tcp:2222:interface=127.0.0.1"],
            authorized_keys="authorized_keys",
            user="ops",
            login_timeout=10,
            max_auth_attempts=2,
            max_script_bytes=4096,
            system_sender="Postmaster",
            watchdog_seconds=0.5,
        ).manhole
        self.assertEqual(
            config,
            ManholeConfig(
                listen=("tcp:2222:interface=127.0.0.1",),
                authorizedKeys=self.keys.path,
                user="ops",
                loginTimeout=10.0,
                maxAuthAttempts=2,
                maxScriptBytes=4096,
                systemSender="postmaster",
                watchdogSeconds=0.5,
            ),
        )

    def test_listenNeedsKeys(self) -> None:
        """
        A console without C{authorized_keys} is refused: no one could log in,
        and passwords are never accepted.
        """
        message = self.refused(listen=["tcp:2222:interface=127.0.0.1"])
        self.assertIn("[manhole]: authorized_keys: missing (required when listen is set", message)

    def test_keysUnreadable(self) -> None:
        """
        An C{authorized_keys} file that cannot be read is named, with why.
        """
        message = self.refused(listen=["tcp:2222"], authorized_keys="nowhere")
        self.assertIn(f"authorized_keys: cannot read {self.folder.child('nowhere').path}: No such file", message)

    def test_keysWithoutKey(self) -> None:
        """
        An C{authorized_keys} file without any public key is refused.
        """
        self.keys.setContent(b"# nobody yet\nnot a key\n")
        message = self.refused(listen=["tcp:2222"], authorized_keys="authorized_keys")
        self.assertIn(f"authorized_keys: {self.keys.path} holds no public key", message)

    def test_badValues(self) -> None:
        """
        A bad endpoint, user name, system sender, watchdog time or limit is
        refused, naming its key.
        """
        keys = {"authorized_keys": "authorized_keys"}
        self.assertIn("listen: bad endpoint 'nonsense:1'", self.refused(listen=["nonsense:1"], **keys))
        self.assertIn("user: must be a simple name", self.refused(user="ad min"))
        self.assertIn("system_sender: a local part, without '@'", self.refused(system_sender="a@corp.example"))
        self.assertIn("system_sender: ''", self.refused(system_sender=""))
        self.assertIn("watchdog_seconds: must be 0 (off) or more", self.refused(watchdog_seconds=-1))
        self.assertIn("login_timeout: must be greater than 0", self.refused(login_timeout=0))
        self.assertIn("max_auth_attempts: must be greater than 0", self.refused(max_auth_attempts=0))
        self.assertIn("max_script_bytes: must be greater than 0", self.refused(max_script_bytes=0))
        self.assertIn("[manhole]: lisen: unknown key", self.refused(lisen=["tcp:2222"]))

    def test_watchdogOff(self) -> None:
        """
        C{watchdog_seconds = 0} turns the watchdog off.
        """
        self.assertEqual(self.parse(watchdog_seconds=0).manhole.watchdogSeconds, 0.0)


class _ConsoleTestMixin:
    clock: Clock
    gateway: Gateway
    console: GatewayConsole

    def makeConsole(self, home: HomeConfig | None = None) -> None:
        self.clock = Clock()
        self.gateway = memoryGateway(self.clock, home=home)
        self.alice = addUser(self.gateway, "alice", "pw")
        self.bob = addUser(self.gateway, "bob", "pw")
        self.console = GatewayConsole(self.gateway, "imgateway")

    def login(self: Any, user: Address, label: str = "", state: PresenceState = PresenceState.ONLINE) -> tuple[ISession, RecordingSessionClient]:
        """
        Open a session for C{user} and publish C{state}.
        """
        client = RecordingSessionClient()
        session: ISession = self.successResultOf(self.gateway.homeServer.openSession(user, client, label))
        session.publish(Presence(state))
        return session, client


class GatewayConsoleTests(_ConsoleTestMixin, SynchronousTestCase):
    """
    The console's C{gateway} helpers, on a memory gateway.
    """

    def setUp(self) -> None:
        self.makeConsole()

    def test_lookAtSessions(self) -> None:
        """
        C{online}, C{sessions} and C{presence} show who is here, on which
        sessions, with which presence; C{users} lists the accounts.
        """
        self.assertEqual(self.console.online(), [])
        session, _ = self.login(self.alice, "laptop", PresenceState.AWAY)
        self.assertEqual(self.console.online(), ["alice@corp.example"])
        [info] = self.console.sessions()
        self.assertEqual(
            (info.sessionId, info.user, info.label, info.presence), (session.sessionId, "alice@corp.example", "laptop", "away")
        )
        self.assertEqual(self.console.sessions("bob"), [])
        self.assertEqual(self.console.presence("alice"), "away")
        self.assertEqual(self.console.presence("bob@corp.example"), "offline")
        self.assertEqual(
            self.successResultOf(self.console.users()),
            [UserInfo("alice@corp.example", "", True, "hs1", 1), UserInfo("bob@corp.example", "", True, "hs1", 0)],
        )

    def test_setPresenceOnSessions(self) -> None:
        """
        C{setPresence} publishes the presence on each of the user's
        sessions: the user's clients are told, and watchers see it.
        """
        _, client = self.login(self.alice)
        done = self.successResultOf(self.console.setPresence("alice", "on-the-phone", "call me later"))
        self.assertEqual(done, "alice@corp.example set to on-the-phone (call me later) on 1 session(s)")
        self.assertEqual(self.gateway.homeServer.presenceOf(self.alice), Presence(PresenceState.ON_THE_PHONE, "call me later"))
        self.assertEqual(client.presences[-1], (self.alice, Presence(PresenceState.ON_THE_PHONE, "call me later")))

    def test_setPresenceHeld(self) -> None:
        """
        A user without a session gets one the console holds, labelled
        C{console}, for at most C{[home] max_presence_lease}; it takes no
        message (a sender sees the user offline); C{"offline"} closes it.
        """
        self.successResultOf(self.console.setPresence("bob", "busy"))
        self.assertEqual(self.gateway.homeServer.presenceOf(self.bob), Presence(PresenceState.BUSY))
        [info] = self.console.sessions("bob")
        self.assertEqual(info.label, CONSOLE_LABEL)
        self.failureResultOf(self.console.sendMessage("alice", "bob", "hi"), UserOffline)
        self.clock.advance(self.gateway.config.home.maxPresenceLease - 1)
        self.assertEqual(self.gateway.homeServer.presenceOf(self.bob), Presence(PresenceState.BUSY))
        self.clock.advance(1)
        self.assertEqual(self.gateway.homeServer.presenceOf(self.bob), OFFLINE)
        self.successResultOf(self.console.setPresence("bob", "online"))
        self.assertEqual(len(self.console.sessions("bob")), 1)
        self.successResultOf(self.console.setPresence("bob", "offline"))
        self.assertEqual(self.console.sessions("bob"), [])
        self.assertEqual(self.gateway.homeServer.presenceOf(self.bob), OFFLINE)

    def test_setPresenceRefused(self) -> None:
        """
        An unknown (or disabled) account, or an unknown state, is refused.
        """
        self.failureResultOf(self.console.setPresence("nobody", "online"), NoSuchAccount)
        self.failureResultOf(self.console.setPresence("alice", "sleepy"), ValueError)
        self.assertEqual(self.console.sessions(), [])

    def test_sendMessage(self) -> None:
        """
        C{sendMessage} sends as the user; the recipient's client receives
        it; the outcome is shown, an error as a failure.
        """
        _, client = self.login(self.bob)
        self.assertEqual(self.successResultOf(self.console.sendMessage("alice", "bob", "hello")), "200 delivered")
        [message] = client.messages
        self.assertEqual((message.sender, message.recipient, message.body), (self.alice, self.bob, "hello"))
        self.failureResultOf(self.console.sendMessage("bob", "alice", "are you there?"), UserOffline)

    def test_messageLimit(self) -> None:
        """
        A message of C{[home] max_message_chars} is sent; one character more
        is refused.
        """
        _, client = self.login(self.bob)
        limit = self.gateway.config.home.maxMessageChars
        self.successResultOf(self.console.notify("bob", "x" * limit))
        self.failureResultOf(self.console.notify("bob", "x" * (limit + 1)), TooLarge)
        self.assertEqual(len(client.messages), 1)

    def test_notifyAndBroadcast(self) -> None:
        """
        C{notify} and C{broadcast} send from C{system_sender} at the
        domain; a broadcast reaches every user online here and says how it
        went for each.
        """
        _, aliceClient = self.login(self.alice)
        _, bobClient = self.login(self.bob, state=PresenceState.APPEAR_OFFLINE)
        self.assertEqual(self.successResultOf(self.console.notify("alice", "hi")), "200 delivered")
        outcome = self.successResultOf(self.console.broadcast("restart at 5"))
        self.assertEqual(outcome, {"alice@corp.example": "200 delivered", "bob@corp.example": "480 bob@corp.example is offline"})
        system = Address("imgateway", "corp.example")
        self.assertEqual([(m.sender, m.body) for m in aliceClient.messages], [(system, "hi"), (system, "restart at 5")])
        self.assertEqual(bobClient.messages, [])

    def test_kick(self) -> None:
        """
        C{kick} ends one session: its client is told why; an unknown id is
        a C{KeyError}.
        """
        laptop, laptopClient = self.login(self.alice, "laptop")
        _, phoneClient = self.login(self.alice, "phone")
        self.assertEqual(self.console.kick(laptop.sessionId, "bye"), f"closed {laptop.sessionId} of alice@corp.example")
        self.assertEqual((laptopClient.closed, phoneClient.closed), (["bye"], []))
        self.assertEqual([s.label for s in self.console.sessions("alice")], ["phone"])
        self.assertRaises(KeyError, self.console.kick, laptop.sessionId)

    def test_disable(self) -> None:
        """
        C{disable} disables the account in the directory and ends its
        sessions.
        """
        _, client = self.login(self.alice)
        self.assertEqual(self.successResultOf(self.console.disable("alice")), "disabled alice@corp.example; closed 1 session(s)")
        self.assertEqual(client.closed, ["account disabled by the operator"])
        account = self.successResultOf(self.gateway.directory.getAccount(self.alice))
        assert account is not None
        self.assertFalse(account.enabled)
        self.assertEqual(self.console.online(), [])

    def test_contacts(self) -> None:
        """
        C{contacts} shows the stored list of a user without a session, and
        what the user's sessions see (subscription, presence) otherwise.
        """
        self.successResultOf(self.gateway.homeStore.apply([PutContact(self.alice, ContactRecord(self.bob, "Bobby"))]))
        self.assertEqual(self.successResultOf(self.console.contacts("alice")), ["bob@corp.example 'Bobby'"])
        self.login(self.alice)
        self.assertEqual(
            self.successResultOf(self.console.contacts("alice")),
            ["bob@corp.example 'Bobby' subscription=none presence=offline"],
        )

    def test_rules(self) -> None:
        """
        C{addRule}, C{removeRule} and C{setRules} edit a user's presence
        rules, typed as in C{/rule add} (or given as L{PresenceRule}s); each
        answers with the new list, numbered, as C{rules} shows it.
        """
        self.assertEqual(self.successResultOf(self.console.rules("bob")), "no rules")
        shown = self.successResultOf(self.console.addRule("bob", "phone reply On the phone, back soon"))
        self.assertEqual(shown, "1. while on-the-phone: reply 'On the phone, back soon'")
        self.assertEqual(repr(shown), str(shown))
        shown = self.successResultOf(self.console.addRule("bob", "phone from alice forward alice@xmpp.example", 1))
        self.assertEqual(
            shown,
            "1. while on-the-phone from alice@corp.example: forward to alice@xmpp.example\n"
            "2. while on-the-phone: reply 'On the phone, back soon'",
        )
        self.assertEqual(self.successResultOf(self.console.rules("bob@corp.example")), shown)
        self.assertEqual(
            self.successResultOf(self.console.removeRule("bob", 1)), "1. while on-the-phone: reply 'On the phone, back soon'"
        )
        rule = PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100")
        shown = self.successResultOf(self.console.setRules("bob", ["away,busy network remote deliver", rule]))
        self.assertEqual(
            shown, "1. while busy,away (remote senders): deliver\n2. while busy: refuse, naming tel:+15550100"
        )
        self.assertEqual(
            self.successResultOf(self.gateway.homeServer.userRules(self.bob)),
            [PresenceRule(frozenset([PresenceState.AWAY, PresenceState.BUSY]), RuleAction.DELIVER, network=RuleNetwork.REMOTE), rule],
        )
        self.assertEqual(self.successResultOf(self.console.setRules("bob", [])), "no rules")

    def test_ruleActs(self) -> None:
        """
        A rule set in the console acts at once on a user with a session: a
        message to bob, on the phone, is answered with his auto-reply.
        """
        _, bobClient = self.login(self.bob, state=PresenceState.ON_THE_PHONE)
        _, aliceClient = self.login(self.alice)
        self.successResultOf(self.console.addRule("bob", "phone reply On the phone"))
        self.successResultOf(self.console.sendMessage("alice", "bob", "are you there?"))
        self.assertEqual([m.body for m in bobClient.messages], ["are you there?"])
        self.assertEqual([(m.sender, m.body) for m in aliceClient.messages], [(self.bob, "On the phone")])

    def test_rulesRefused(self) -> None:
        """
        A rule that does not parse or is not allowed, a position or number
        out of range, more than C{[home] max_rules} rules, an unknown account
        or one homed on another server: each is refused, and the rules stay
        as they were.
        """
        self.successResultOf(self.console.addRule("bob", "busy deliver"))
        self.failureResultOf(self.console.addRule("bob", "phone reply"), ValueError)
        self.failureResultOf(self.console.addRule("bob", "online reply hi"), ValueError)
        self.failureResultOf(self.console.addRule("bob", "phone forward bob"), ValueError)
        self.failureResultOf(self.console.addRule("bob", "phone deliver", 3), ValueError)
        self.failureResultOf(self.console.addRule("bob", 42), TypeError)  # type: ignore[arg-type]
        self.failureResultOf(self.console.removeRule("bob", 2), IndexError)
        self.failureResultOf(self.console.removeRule("bob", 0), IndexError)
        self.failureResultOf(self.console.setRules("bob", ["busy deliver", "sleepy deliver"]), ValueError)
        self.failureResultOf(self.console.rules("nobody"), NoSuchAccount)
        self.failureResultOf(self.console.addRule("nobody", "busy deliver"), NoSuchAccount)
        limit = self.gateway.config.home.maxRules
        self.successResultOf(self.console.setRules("alice", ["busy deliver"] * limit))
        self.failureResultOf(self.console.addRule("alice", "away deliver"), QuotaExceeded)
        self.failureResultOf(self.console.setRules("alice", ["busy deliver"] * (limit + 1)), QuotaExceeded)
        self.assertEqual(self.successResultOf(self.console.rules("bob")), "1. while busy: deliver")
        self.successResultOf(self.gateway.directory.addAccount(AccountRecord(Address("carol", "corp.example"), "hs2", "", True, "")))
        failure = self.failureResultOf(self.console.addRule("carol", "busy deliver"), ServiceUnavailable)
        self.assertEqual(failure.getErrorMessage(), "carol@corp.example is homed on hs2, not hs1: use its manhole")

    def test_routes(self) -> None:
        """
        C{routes} shows the router's table: this domain goes to the home
        server; C{links} is empty without links.
        """
        self.assertEqual(self.console.routes(), {"corp.example": "HomeServer hs1"})
        self.assertEqual(self.console.links(), [])

    def test_links(self) -> None:
        """
        C{links} asks every service of the tree that keeps links up
        (L{LinkInfoSource}), at any depth: an XMPP component link, the IRC
        bridge's connections to a network, any other.
        """
        from imgateway.adapters.irc.network import IRCNetworkConfig, IRCNetworkService
        from imgateway.adapters.xmpp.component import ComponentConfig, makeComponentService
        from tests.test_irc_network import FakeEndpoint

        class Other(Service):
            def linkInfo(self) -> list[LinkInfo]:
                return [LinkInfo("other", "one", True)]

        root = MultiService()
        makeComponentService(
            self.gateway, ComponentConfig("gw.xmpp.example", "s3cret", "tcp:127.0.0.1:5347", ("xmpp.example",)), FakeEndpoint()
        ).setServiceParent(root)
        nested = MultiService()
        nested.setServiceParent(root)
        IRCNetworkService(self.gateway, IRCNetworkConfig("libera", "libera.irc", "tcp:x:1"), FakeEndpoint).setServiceParent(nested)
        Other().setServiceParent(nested)
        console = GatewayConsole(self.gateway, root=root)
        self.assertEqual(
            console.links(),
            [
                LinkInfo("xmpp-component", "gw.xmpp.example", False, "to tcp:127.0.0.1:5347", connects=0),
                LinkInfo("irc-watcher", "libera", False, "idle: nobody watches anyone there", required=False),
                LinkInfo("other", "one", True),
            ],
        )
        self.assertEqual(repr(console.links()[-1]), "<link other one up>")

    def test_help(self) -> None:
        """
        C{help()} lists every helper with its arguments and first sentence,
        without markup; the console shows it as it is.
        """
        text = self.console.help()
        self.assertIn("gateway.setPresence(user, state, note='')\n    Set a user's presence: a state and a note.\n", text)
        self.assertIn("gateway.kick(sessionId, reason='closed by the operator')\n    End a session (an id from sessions).\n", text)
        for name in ("users", "sessions", "presence", "contacts", "sendMessage", "notify", "broadcast", "disable", "routes", "links",
                     "rules", "setRules", "addRule", "removeRule"):
            self.assertIn(f"gateway.{name}(", text)
        self.assertEqual(repr(text), str(text))

    def test_completions(self) -> None:
        """
        Tab completion offers the helpers after C{gateway.}, and names of
        the namespace.
        """
        namespace = makeNamespace(self.console)
        self.assertEqual(
            [c for c in completions("gateway.se", namespace) if not c.startswith("gateway.__")],
            ["gateway.sendMessage(", "gateway.sessions(", "gateway.setPresence(", "gateway.setRules("],
        )
        self.assertIn("gateway", completions("gatew", namespace))
        self.assertEqual(completions("gateway.nothing", namespace), [])


class ScriptTests(_ConsoleTestMixin, SynchronousTestCase):
    """
    L{runScript}: a script's output and exit status.
    """

    def setUp(self) -> None:
        self.makeConsole()
        self.out: list[str] = []
        self.err: list[str] = []

    def runSource(self, source: bytes | str) -> int:
        """
        Run C{source} in the console's namespace.

        @return: Its exit status.
        """
        return self.successResultOf(runScript(source, makeNamespace(self.console), self.out.append, self.err.append))

    def test_output(self) -> None:
        """
        What a script prints comes back; it may await what helpers return;
        its status is 0.
        """
        self.login(self.bob)
        status = self.runSource(b"print('online:', gateway.online())\nprint(await gateway.notify('bob', 'hi'), end='!')\n")
        self.assertEqual((status, "".join(self.out), self.err), (0, "online: ['bob@corp.example']\n200 delivered!", []))

    def test_raises(self) -> None:
        """
        A script that raises ends with status 1 and its traceback, from the
        script's frames; an awaited failure too. The gateway goes on.
        """
        self.assertEqual(self.runSource("x = 1\nraise ValueError('boom')\n"), 1)
        self.assertIn('File "<script>", line 2, in <module>\nValueError: boom\n', "".join(self.err))
        self.assertNotIn("script.py", "".join(self.err))
        del self.err[:]
        self.assertEqual(self.runSource("await gateway.sendMessage('alice', 'bob', 'hi')\n"), 1)
        self.assertIn("UserOffline: bob@corp.example is offline", "".join(self.err))
        self.assertEqual(self.runSource("print(gateway.online())"), 0)

    def test_exit(self) -> None:
        """
        C{sys.exit(n)} ends the script with status n (and only the script).
        """
        self.assertEqual(self.runSource("import sys\nprint('bye')\nsys.exit(3)\n"), 3)
        self.assertEqual(self.runSource("import sys\nsys.exit()\n"), 0)
        self.assertEqual(self.runSource("import sys\nsys.exit('failed')\n"), 1)
        self.assertEqual(self.err, ["failed\n"])

    def test_notPython(self) -> None:
        """
        A script that does not compile, or is not UTF-8, ends with status 1
        and says why.
        """
        self.assertEqual(self.runSource("print(\n"), 1)
        self.assertIn("SyntaxError", "".join(self.err))
        self.assertEqual(self.runSource(b"print('\xff')"), 1)
        self.assertIn("the script is not UTF-8", self.err[-1])

    def test_ownNamespace(self) -> None:
        """
        Each script has its own copy of the namespace.
        """
        namespace = makeNamespace(self.console)
        self.successResultOf(runScript("gateway = None\nleft = 1\n", namespace, self.out.append, self.err.append))
        self.assertEqual(namespace, {"gateway": self.console})
