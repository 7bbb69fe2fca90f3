# -*- test-case-name: tests.e2e.test_xmpp_component_prosody -*-
"""
End-to-end tests of the XEP-0114 component link against a real Prosody on
loopback (L{tests.e2e.prosody.ProsodyProcess}, with
C{Component "gw.xmpp.example"}) and real slixmpp clients: romeo, a user of
Prosody, adds our alice as C{alice\\40corp.example@gw.xmpp.example}; alice
authorises him and subscribes back; both see each other's presence (busy is
C{dnd} with its status text, both ways); messages go both ways; a message
to a Prosody user who is offline ends in C{480}; when romeo leaves, alice
sees him offline.

The scenario runs twice: against the real C{twistd imgateway} process
configured with a C{[[xmpp.component]]} table (alice on the native
protocol), and in this process (a memory gateway on the real reactor, alice
as a home-server session), which exercises the link without the adapter's
configuration.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from imgateway.adapters.xmpp.component import ComponentConfig, ComponentService, makeComponentService
from imgateway.client.protocol import NativeClientProtocol
from imgateway.config import loadConfig
from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, DeliveryStatus, UserOffline
from imgateway.core.events import Message, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import Presence, PresenceState
from imgateway.interfaces import ISession
from imgateway.plugins import adapterConfigParsers
from imgateway.testing import RecordingSessionClient, addUser, memoryGateway
from tests.e2e.harness import (
    DOMAIN,
    GatewayProcess,
    Recorder,
    _tomlKey,
    _tomlValue,
    _Waiters,
    failureOf,
    freePort,
    reactor,
    sleep,
)
from tests.e2e.prosody import COMPONENT_SECRET, ProsodyProcess

COMPONENT = "gw.xmpp.example"
ALICE = f"alice@{DOMAIN}"
ALICE_JID = f"alice\\40{DOMAIN}@{COMPONENT}"
ROMEO = "romeo@xmpp.example"
JULIET = "juliet@xmpp.example"
USERS = {"romeo": "romeo's pw", "juliet": "juliet's pw"}

#: How long the link may take to come up, in seconds.
LINK_TIMEOUT = 15.0


class Alice(Protocol):
    """
    Our user, whatever the face: what the scenario does and waits for.
    """

    def authorise(self, watcher: str) -> Deferred[Any]: ...

    def subscribe(self, target: str) -> Deferred[Any]: ...

    def publish(self, state: PresenceState, note: str = "") -> None: ...

    def send(self, to: str, body: str) -> Deferred[Any]: ...

    def waitForSubscribe(self, sender: str) -> Deferred[Any]: ...

    def waitForPresence(self, sender: str, state: PresenceState, note: str | None = None) -> Deferred[Any]: ...

    def waitForMessage(self, sender: str, body: str) -> Deferred[Any]: ...


class NativeAlice:
    """
    Alice on the native protocol of a gateway process.
    """

    def __init__(self, proto: NativeClientProtocol, recorder: Recorder) -> None:
        self.proto = proto
        self.recorder = recorder

    def authorise(self, watcher: str) -> Deferred[Any]:
        return self.proto.authorise(watcher, True)

    def subscribe(self, target: str) -> Deferred[Any]:
        return self.proto.subscribe(target)

    def publish(self, state: PresenceState, note: str = "") -> None:
        self.proto.publish(state, note)

    def send(self, to: str, body: str) -> Deferred[Any]:
        return self.proto.sendMessage(to, body)

    def waitForSubscribe(self, sender: str) -> Deferred[Any]:
        return self.recorder.waitForSubscription(sender, "subscribe", timeout=10)

    def waitForPresence(self, sender: str, state: PresenceState, note: str | None = None) -> Deferred[Any]:
        return self.recorder.waitForPresence(sender, state, note, timeout=10)

    def waitForMessage(self, sender: str, body: str) -> Deferred[Any]:
        return self.recorder.waitForMessage(sender, body, timeout=10)


class WaitingClient(_Waiters, RecordingSessionClient):
    """
    A L{RecordingSessionClient} a test can wait on.
    """

    def __init__(self) -> None:
        _Waiters.__init__(self)
        RecordingSessionClient.__init__(self, "e2e")

    def summary(self) -> str:
        return f"messages={self.messages!r} presences={self.presences!r} subscriptions={self.subscriptions!r}"

    def messageReceived(self, message: Message) -> Deferred[None]:
        d = super().messageReceived(message)
        self._changed()
        return d

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        d = super().presenceReceived(sender, presence)
        self._changed()
        return d

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        d = super().subscriptionReceived(event)
        self._changed()
        return d


class SessionAlice:
    """
    Alice as a session of an in-process home server.
    """

    def __init__(self, session: ISession, client: WaitingClient) -> None:
        self.session = session
        self.client = client

    def authorise(self, watcher: str) -> Deferred[Any]:
        return self.session.authorise(Address.fromString(watcher), True)

    def subscribe(self, target: str) -> Deferred[Any]:
        return self.session.subscribe(Address.fromString(target))

    def publish(self, state: PresenceState, note: str = "") -> None:
        self.session.publish(Presence(state, note))

    def send(self, to: str, body: str) -> Deferred[Any]:
        return self.session.sendMessage(Address.fromString(to), body)

    def waitForSubscribe(self, sender: str) -> Deferred[Any]:
        wanted = SubscriptionEvent(SubscriptionKind.SUBSCRIBE, Address.fromString(sender), self.session.address)
        return self.client.waitFor(lambda: wanted in self.client.subscriptions, 10, f"subscribe from {sender}")

    def waitForPresence(self, sender: str, state: PresenceState, note: str | None = None) -> Deferred[Any]:
        address = Address.fromString(sender)

        def seen() -> bool:
            latest = [p for a, p in self.client.presences if a == address][-1:]
            return bool(latest) and latest[0].state is state and (note is None or latest[0].note == note)

        return self.client.waitFor(seen, 10, f"presence {state.value} {note!r} of {sender}")

    def waitForMessage(self, sender: str, body: str) -> Deferred[Any]:
        address = Address.fromString(sender)
        return self.client.waitFor(
            lambda: any(m.sender == address and m.body == body for m in self.client.messages), 10, f"message {body!r}"
        )


class ComponentGatewayProcess(GatewayProcess):
    """
    A L{GatewayProcess} whose configuration also has C{[[xmpp.component]]}
    tables (arrays of tables are beyond the harness's TOML writer).

    @ivar components: The keys of each C{[[xmpp.component]]} table.
    """

    def __init__(self, testCase: TestCase, tables: dict[str, Any], components: list[dict[str, object]]) -> None:
        self.components = components
        super().__init__(testCase, tables)

    def writeConfig(self) -> None:
        super().writeConfig()
        with open(self.configPath, "a", encoding="utf-8") as f:
            for keys in self.components:
                f.write("\n[[xmpp.component]]\n")
                for key, value in keys.items():
                    f.write(f"{_tomlKey(key)} = {_tomlValue(value)}\n")


async def waitUntil(predicate: Any, timeout: float, what: str) -> None:
    """
    Poll C{predicate} until it is true.
    """
    deadline = reactor().seconds() + timeout
    while not predicate():
        if reactor().seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(0.05)


class ScenarioMixin:
    """
    The scenario, for any face of alice's.
    """

    async def scenario(self: Any, prosody: ProsodyProcess, alice: Alice) -> None:
        romeo = await prosody.agent("romeo")

        # Romeo adds alice; she authorises him and sees him ask.
        romeo.subscribe(ALICE_JID)
        await alice.waitForSubscribe(ROMEO)
        await alice.authorise(ROMEO)
        await romeo.waitForPresence(ALICE_JID, timeout=10)

        # She subscribes back; he approves: each sees the other.
        await alice.subscribe(ROMEO)
        await romeo.waitForSubscribe(ALICE_JID, timeout=10)
        romeo.approve(ALICE_JID)
        await alice.waitForPresence(ROMEO, PresenceState.ONLINE)

        # Busy is dnd with its status text, both ways.
        alice.publish(PresenceState.BUSY, "in a meeting")
        await romeo.waitForPresence(ALICE_JID, "dnd", "in a meeting", timeout=10)
        romeo.setPresence("dnd", "on a call")
        await alice.waitForPresence(ROMEO, PresenceState.BUSY, "on a call")

        # Messages both ways.
        await alice.send(ROMEO, "hello romeo ✓")
        message = await romeo.waitForMessage(ALICE_JID, "hello romeo ✓", timeout=10)
        self.assertEqual(message["type"], "chat")
        romeo.message(ALICE_JID, "hi alice & co")
        await alice.waitForMessage(ROMEO, "hi alice & co")

        # Juliet has an account but is not logged in: Prosody bounces the
        # message (service-unavailable), which is 480 for alice.
        e = await failureOf(alice.send(JULIET, "are you there?"), DeliveryError)
        self.assertIsInstance(e, UserOffline)
        self.assertEqual(e.status.value, 480)

        # Romeo sees the component as a gateway.
        disco = await romeo.request({"cmd": "disco", "jid": COMPONENT})
        self.assertIn("gateway", [i[0] for i in disco["identities"]])

        # Romeo leaves: alice sees him offline.
        await romeo.stop()
        await alice.waitForPresence(ROMEO, PresenceState.OFFLINE)


class InProcessComponentTests(ScenarioMixin, TestCase):
    """
    The component link in this process (a memory gateway on the real
    reactor) against a real Prosody.
    """

    async def test_scenario(self) -> None:
        """
        Subscriptions, presence and messages both ways, and 480 for an
        offline Prosody user.
        """
        prosody = ProsodyProcess(self, users=USERS)
        await prosody.start()
        gateway = memoryGateway(reactor())
        alice = addUser(gateway, "alice", "pw")
        config = ComponentConfig(
            COMPONENT, COMPONENT_SECRET, f"tcp:127.0.0.1:{prosody.componentPort}", (prosody.domain,)
        )
        service = makeComponentService(gateway, config)
        service.startService()
        self.addCleanup(service.stopService)
        await waitUntil(lambda: service.link.stream is not None, LINK_TIMEOUT, "the component link")
        client = WaitingClient()
        self.addCleanup(client.cancelWaits)
        session = await gateway.homeServer.openSession(alice, client, "e2e")
        self.addCleanup(session.close)
        session.publish(Presence(PresenceState.ONLINE))
        await self.scenario(prosody, SessionAlice(session, client))

    async def test_wrongSecret(self) -> None:
        """
        With the wrong secret, Prosody refuses the handshake, the link
        stays down (messages fail with 502), and it keeps trying.
        """
        prosody = ProsodyProcess(self, users=USERS)
        await prosody.start()
        gateway = memoryGateway(reactor())
        alice = addUser(gateway, "alice", "pw")
        config = ComponentConfig(COMPONENT, "wrong", f"tcp:127.0.0.1:{prosody.componentPort}", (prosody.domain,))
        service: ComponentService = makeComponentService(gateway, config)
        service.startService()
        self.addCleanup(service.stopService)
        await waitUntil(lambda: service.link.failures >= 1, LINK_TIMEOUT, "a refused handshake")
        self.assertIsNone(service.link.stream)
        session = await gateway.homeServer.openSession(alice, RecordingSessionClient(), "e2e")
        self.addCleanup(session.close)
        e = await failureOf(session.sendMessage(Address.fromString(ROMEO), "x"), DeliveryError)
        self.assertEqual(e.status, DeliveryStatus.NO_ROUTE)


class GatewayComponentTests(ScenarioMixin, TestCase):
    """
    The real gateway process, configured with C{[[xmpp.component]]},
    against a real Prosody.
    """

    async def test_scenario(self) -> None:
        """
        Subscriptions, presence and messages both ways between a native
        client and a slixmpp client, and 480 for an offline Prosody user.
        """
        prosody = ProsodyProcess(self, users=USERS)
        tables = {"xmpp": {"listen": [f"tcp:{freePort()}:interface=127.0.0.1"], "require_tls": False}}
        component: dict[str, object] = {
            "jid": COMPONENT,
            "secret": COMPONENT_SECRET,
            "endpoint": f"tcp:127.0.0.1:{prosody.componentPort}",
            "domains": [prosody.domain],
        }
        gw = ComponentGatewayProcess(self, tables, [component])
        # The configuration is checked before anything starts: a mistake in
        # the component table fails here, with the key at fault.
        loadConfig(gw.configPath, reactor(), adapterConfigParsers())
        gw.addUser("alice", "alice's pw")
        await prosody.start()
        await gw.start()
        await waitUntil(lambda: f"XMPP component {COMPONENT} connected" in gw.log(), LINK_TIMEOUT, "the component link")
        proto, recorder = await gw.client("alice", "alice's pw")
        await self.scenario(prosody, NativeAlice(proto, recorder))
