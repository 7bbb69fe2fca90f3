# -*- test-case-name: tests.e2e.test_prosody_harness -*-
"""
Real XMPP clients for the end-to-end tests: L{XMPPAgent} runs slixmpp in a
subprocess (C{xmpp_agent.py} beside this file: slixmpp is asyncio-based and
stays out of trial's Twisted reactor), sends it commands and records the
events it prints, one JSON object a line; a test waits for the events it
expects with L{XMPPAgent.waitForEvent} and friends.

    agent = await connectAgent(self, "alice@xmpp.example/a", "pw", port, caFile=ca)
    agent.send({"cmd": "presence", "show": "dnd", "status": "busy"})
    await agent.waitForMessage("bob@xmpp.example", "hi")
    roster = await agent.request({"cmd": "roster"})

See C{xmpp_agent.py} for every command and event. The agent connects to
the address it is given and never looks up a name.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.e2e.harness import REPO_ROOT, WaitTimedOut, _deferred, _readText, _Waiters, reactor, sleep

__all__ = ["AGENT_SCRIPT", "AgentError", "XMPPAgent", "bare", "connectAgent", "jidMatches"]

#: The script each agent process runs.
AGENT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xmpp_agent.py")

#: How long an agent may take to log in, in seconds.
LOGIN_TIMEOUT = 15.0

#: How long an agent may take to exit after C{quit}, in seconds.
QUIT_TIMEOUT = 5.0

#: Events after which an agent that was logging in will not log in.
_LOGIN_FAILURES = (
    "failed_auth", "no_auth", "tls_failed", "connection_failed", "agent_error", "stream_error", "disconnected", "exited",
)

Event = dict[str, Any]


class AgentError(AssertionError):
    """
    An agent reported an error, or did not log in.

    @ivar event: The event that says so, if any.
    """

    def __init__(self, message: str, event: Event | None = None) -> None:
        super().__init__(message)
        self.event = event


def bare(jid: str) -> str:
    """
    The bare JID of C{jid}, lowercased (good enough for test addresses).
    """
    return jid.split("/", 1)[0].lower()


def jidMatches(actual: str | None, wanted: str) -> bool:
    """
    Whether C{actual} is C{wanted}: a bare C{wanted} matches any resource,
    a full one only itself.
    """
    if actual is None:
        return False
    if "/" in wanted:
        return bare(actual) == bare(wanted) and actual.split("/", 1)[1] == wanted.split("/", 1)[1]
    return bare(actual) == bare(wanted)


def _matches(event: Event, name: str | None, fields: Mapping[str, Any]) -> bool:
    if name is not None and event.get("event") != name:
        return False
    for key, value in fields.items():
        if key in ("from", "to", "jid") and isinstance(value, str):
            if not jidMatches(event.get(key), value):
                return False
        elif event.get(key) != value:
            return False
    return True


class _AgentProtocol(ProcessProtocol):
    def __init__(self, agent: XMPPAgent) -> None:
        self.agent = agent
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "garbage", "line": line.decode("utf-8", "replace")}
                self.agent._record(event)

    def errReceived(self, data: bytes) -> None:
        self.agent._stderr(data)

    def processEnded(self, reason: Failure) -> None:
        code: int | None = None
        signal: int | None = None
        if isinstance(reason.value, (ProcessDone, ProcessTerminated)):
            code = reason.value.exitCode
            signal = reason.value.signal
        self.agent._ended(code, signal)


class XMPPAgent(_Waiters):
    """
    A real XMPP client (slixmpp, in a subprocess) logged in as L{jid}.

    @ivar events: Every event the agent printed, in order (plus a last
        C{{"event": "exited", "code": ..., "signal": ...}} once the process
        has ended).
    @ivar logPath: The agent's standard error (slixmpp's log at
        C{logLevel}).
    @ivar boundJid: The full JID the server bound, once logged in.
    """

    def __init__(
        self,
        testCase: TestCase,
        jid: str,
        password: str,
        port: int,
        host: str = "127.0.0.1",
        tls: str = "starttls",
        caFile: str | None = None,
        verify: bool = True,
        serverName: str | None = None,
        presence: bool = True,
        roster: bool = True,
        manualSubscriptions: bool = True,
        logLevel: str = "INFO",
        directory: str | None = None,
        followSeeOtherHost: int | None = None,
        bindAddress: str | None = None,
    ) -> None:
        """
        Prepare an agent; start nothing yet (L{start} logs in).

        @param jid: The JID to log in as (with a resource, or the server
            picks one).
        @param port: The server's c2s port on C{host}.
        @param tls: C{starttls} (STARTTLS required: without it the agent
            refuses to authenticate and reports C{no_auth}), C{optional}
            (STARTTLS if offered), C{plain} (never STARTTLS), or C{direct}
            (TLS from the first byte, XEP-0368).
        @param caFile: A PEM file of the CAs to trust for the server's
            certificate (which must be valid for C{serverName}).
        @param verify: C{False} accepts any certificate (self-signed
            servers).
        @param serverName: The name the certificate must match; the JID's
            domain by default.
        @param presence: Whether to send an initial presence after login.
        @param roster: Whether to fetch the roster at login.
        @param manualSubscriptions: Whether subscription requests wait for
            an C{approve}/C{deny} command (C{False}: slixmpp approves them
            and subscribes back itself).
        @param directory: Where to put the agent's log; a new folder from
            C{testCase.mktemp()} when C{None}.
        @param followSeeOtherHost: Follow at most this many
            C{<see-other-host/>} stream errors (C{None}: slixmpp's own
            handling).
        @param bindAddress: The local address to connect from.
        """
        super().__init__()
        self.testCase = testCase
        self.jid = jid
        self.password = password
        self.port = port
        self.host = host
        self.tls = tls
        self.caFile = os.path.abspath(caFile) if caFile else None
        self.verify = verify
        self.serverName = serverName
        self.presence = presence
        self.roster = roster
        self.manualSubscriptions = manualSubscriptions
        self.logLevel = logLevel
        self.followSeeOtherHost = followSeeOtherHost
        self.bindAddress = bindAddress
        self.directory = os.path.abspath(directory if directory is not None else testCase.mktemp())
        os.makedirs(self.directory, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.@-]", "_", jid)
        self.logPath = os.path.join(self.directory, f"agent-{name}.log")
        self.events: list[Event] = []
        self.boundJid: str | None = None
        self.exitCode: int | None = None
        self.exitSignal: int | None = None
        self._transport: Any = None
        self._log: IO[bytes] | None = None
        self._exited: list[Deferred[None]] = []
        self._ids = 0
        testCase.addCleanup(self.stop)

    # -- the process ----------------------------------------------------------------

    def command(self) -> list[str]:
        """
        The agent's command line (the password goes in the environment).
        """
        args = [sys.executable, "-u", AGENT_SCRIPT, "--jid", self.jid, "--host", self.host, "--port", str(self.port)]
        args += ["--tls", self.tls, "--log-level", self.logLevel]
        if not self.verify:
            args.append("--no-verify")
        elif self.caFile:
            args += ["--ca-file", self.caFile]
        if self.serverName:
            args += ["--server-name", self.serverName]
        if not self.presence:
            args.append("--no-presence")
        if not self.roster:
            args.append("--no-roster")
        if not self.manualSubscriptions:
            args.append("--auto-subscriptions")
        if self.followSeeOtherHost is not None:
            args += ["--follow-see-other-host", str(self.followSeeOtherHost)]
        if self.bindAddress:
            args += ["--bind-address", self.bindAddress]
        return args

    @property
    def running(self) -> bool:
        """
        Whether the agent process has been started and has not ended.
        """
        return self._transport is not None

    def spawn(self) -> None:
        """
        Start the agent process, which connects and logs in; do not wait.
        """
        if self._transport is not None:
            raise AssertionError("the agent is already running")
        self._log = open(self.logPath, "ab")
        env = dict(os.environ)
        env["XMPP_AGENT_PASSWORD"] = self.password
        env.pop("PYTHONWARNINGS", None)
        command = self.command()
        self._transport = reactor().spawnProcess(_AgentProtocol(self), command[0], command, env=env, path=REPO_ROOT)

    def start(self, timeout: float = LOGIN_TIMEOUT) -> Deferred[Event]:
        """
        L{spawn} the agent and wait until it has logged in.

        @return: Fires with the C{session_start} event; fails with
            L{AgentError} if the agent reports a failure (bad password, TLS
            failure, connection refused...) or has not logged in within
            C{timeout} seconds.
        """

        async def run() -> Event:
            self.spawn()
            try:
                event = await self.waitForEvent(
                    lambda e: e["event"] == "session_start" or e["event"] in _LOGIN_FAILURES,
                    timeout,
                    description="login",
                )
            except WaitTimedOut as e:
                raise AgentError(f"{self.jid} did not log in: {e}\n--- agent log ---\n{self.log()}") from None
            if event["event"] != "session_start":
                raise AgentError(
                    f"{self.jid} did not log in: {event}\n--- agent log ---\n{self.log()}", event
                )
            self.boundJid = event.get("jid")
            return event

        return _deferred(run())

    def stop(self, timeout: float = QUIT_TIMEOUT) -> Deferred[None]:
        """
        Tell the agent to quit (it closes its stream) and wait for it to
        exit; kill it if it has not within C{timeout} seconds.
        """

        async def run() -> None:
            self.cancelWaits()
            if self._transport is None:
                return
            exited = self.whenExited()
            self.send({"cmd": "quit"})
            deadline = time.monotonic() + timeout
            while not exited.called and time.monotonic() < deadline:
                await sleep(0.02)
            if not exited.called and self._transport is not None:
                self._transport.signalProcess("KILL")
            await exited

        return _deferred(run())

    def whenExited(self) -> Deferred[None]:
        """
        @return: Fires once the agent process has ended.
        """
        d: Deferred[None] = Deferred()
        if self._transport is None:
            d.callback(None)
        else:
            self._exited.append(d)
        return d

    def log(self) -> str:
        """
        @return: The agent's standard error so far (slixmpp's log).
        """
        return _readText(self.logPath)

    # -- from the process -----------------------------------------------------------

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._changed()

    def _stderr(self, data: bytes) -> None:
        if self._log is not None:
            self._log.write(data)
            self._log.flush()

    def _ended(self, code: int | None, signal: int | None) -> None:
        self._transport = None
        self.exitCode, self.exitSignal = code, signal
        if self._log is not None:
            self._log.close()
            self._log = None
        self._record({"event": "exited", "code": code, "signal": signal})
        waiting, self._exited = self._exited, []
        for d in waiting:
            d.callback(None)

    # -- commands -------------------------------------------------------------------

    def send(self, cmd: Mapping[str, Any]) -> None:
        """
        Send the agent a command, without waiting for anything.
        """
        if self._transport is None:
            raise AssertionError(f"the agent for {self.jid} is not running; events: {self.summary()}")
        self._transport.write(json.dumps(dict(cmd)).encode("utf-8") + b"\n")

    def request(self, cmd: Mapping[str, Any], timeout: float = 10.0) -> Deferred[Event]:
        """
        Send a command with a fresh C{id} and wait for the event answering
        it (C{result}, or the command's own event: C{roster}, C{pong},
        C{disco}, C{iq}).

        @return: Fires with that event; fails with L{AgentError} if the
            answer is an C{error} event (its C{condition}, C{text} and
            C{etype} are then the XMPP error's).
        """
        self._ids += 1
        rid = f"r{self._ids}"

        async def run() -> Event:
            waiting = self.waitForEvent(lambda e: e.get("id") == rid and e["event"] != "message", timeout,
                                        description=f"the answer to {dict(cmd)}")
            self.send({**cmd, "id": rid})
            event = await waiting
            if event["event"] == "error":
                raise AgentError(f"{cmd.get('cmd')} failed: {event}", event)
            return event

        return _deferred(run())

    def message(self, to: str, body: str, type: str = "chat", **more: Any) -> None:
        """
        Send a message.
        """
        self.send({"cmd": "message", "to": to, "body": body, "type": type, **more})

    def setPresence(self, show: str | None = None, status: str | None = None, **more: Any) -> None:
        """
        Send an available presence with C{show} and C{status}.
        """
        self.send({"cmd": "presence", "show": show, "status": status, **more})

    def subscribe(self, jid: str) -> None:
        """
        Ask C{jid} for a presence subscription.
        """
        self.send({"cmd": "subscribe", "jid": jid})

    def approve(self, jid: str) -> None:
        """
        Approve C{jid}'s subscription request.
        """
        self.send({"cmd": "approve", "jid": jid})

    # -- waiting --------------------------------------------------------------------

    def summary(self) -> str:
        shown = self.events[-30:]
        more = len(self.events) - len(shown)
        return (f"(+{more} earlier) " if more else "") + json.dumps(shown)

    def mark(self) -> int:
        """
        @return: The number of events so far, for C{since=} arguments: wait
            only for what comes after now.
        """
        return len(self.events)

    def find(
        self,
        predicate: Callable[[Event], bool] | str | None = None,
        since: int = 0,
        **fields: Any,
    ) -> list[Event]:
        """
        @param predicate: An event name, or a function of an event.
        @param fields: Values the event must have; C{from}, C{to} and
            C{jid} match as JIDs (see L{jidMatches}). C{from} is a Python
            keyword: pass C{**{"from": jid}} or use the C{sender} alias.
        @return: The events since C{since} that match.
        """
        if "sender" in fields:
            fields["from"] = fields.pop("sender")
        name = predicate if isinstance(predicate, str) else None
        check = predicate if callable(predicate) else None
        return [
            e for e in self.events[since:] if _matches(e, name, fields) and (check is None or check(e))
        ]

    def waitForEvent(
        self,
        predicate: Callable[[Event], bool] | str | None = None,
        timeout: float = 5.0,
        since: int = 0,
        description: str = "",
        **fields: Any,
    ) -> Deferred[Event]:
        """
        Wait for the first event since C{since} (already recorded or yet to
        come) that matches, as L{find} matches.

        @return: Fires with the event; fails with L{WaitTimedOut} after
            C{timeout} seconds (the message lists the recent events).
        """
        what = description or f"{predicate if isinstance(predicate, str) else 'an event'} {fields or ''}"

        def first() -> Event | None:
            found = self.find(predicate, since, **fields)
            return found[0] if found else None

        return self.waitFor(first, timeout, f"{what} at {self.jid}")

    def presenceOf(self, jid: str) -> Event | None:
        """
        @return: The latest presence event from C{jid}, if any.
        """
        found = self.find("presence", sender=jid)
        return found[-1] if found else None

    def waitForPresence(
        self,
        jid: str,
        show: str | None = None,
        status: str | None = None,
        type: str = "available",
        timeout: float = 5.0,
    ) -> Deferred[Event]:
        """
        Wait until the latest presence from C{jid} has C{type}, C{show}
        (C{None}: no C{<show/>}, i.e. plain available) and C{status}
        (C{None}: any).
        """

        def matches() -> Event | None:
            p = self.presenceOf(jid)
            if p is None or p.get("type") != type:
                return None
            if type == "available" and (p.get("show") or None) != show:
                return None
            if status is not None and p.get("status") != status:
                return None
            return p

        return self.waitFor(matches, timeout, f"presence {type} show={show} status={status!r} from {jid} at {self.jid}")

    def waitForMessage(self, jid: str, body: str | None = None, timeout: float = 5.0, since: int = 0) -> Deferred[Event]:
        """
        Wait for a message from C{jid} (with C{body}, unless C{None}).
        """
        fields: dict[str, Any] = {"from": jid}
        if body is not None:
            fields["body"] = body
        return self.waitForEvent("message", timeout, since, description=f"message {body!r} from {jid}", **fields)

    def waitForSubscribe(self, jid: str, timeout: float = 5.0, since: int = 0) -> Deferred[Event]:
        """
        Wait for a subscription request from C{jid}.
        """
        return self.waitForEvent("subscribe", timeout, since, sender=jid)


def connectAgent(
    testCase: TestCase,
    jid: str,
    password: str,
    port: int,
    timeout: float = LOGIN_TIMEOUT,
    **kwargs: Any,
) -> Deferred[XMPPAgent]:
    """
    Start an L{XMPPAgent} and wait until it has logged in; it quits when
    the test ends.

    @param kwargs: More arguments for L{XMPPAgent}.
    @return: Fires with the agent; fails with L{AgentError} if it cannot
        log in.
    """
    agent = XMPPAgent(testCase, jid, password, port, **kwargs)

    async def run() -> XMPPAgent:
        await agent.start(timeout)
        return agent

    return _deferred(run())
