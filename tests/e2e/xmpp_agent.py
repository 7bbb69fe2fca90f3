"""
A real XMPP client (slixmpp) driven through standard input and output, one
JSON object a line, for the end-to-end tests (L{tests.e2e.xmppclient}
spawns it; slixmpp is asyncio-based, so it runs in a process of its own
rather than inside trial's Twisted reactor).

    python xmpp_agent.py --jid alice@xmpp.example --password pw --port 5222 \\
        --tls starttls --ca-file ca.pem

It connects to C{--host:--port} (127.0.0.1 unless told otherwise; it never
looks up a name), logs in, and prints events; it reads commands. Every
command may carry an C{"id"}: the events answering it (C{result} or
C{error}, and for some commands a named event) carry the same C{"id"}.

Commands (C{"cmd"}):
  - C{presence}: C{show}, C{status}, C{priority}, C{to}, C{type} (all
    optional): send a presence.
  - C{subscribe} / C{approve} / C{deny} / C{unsubscribe}: C{jid}: send
    presence of type subscribe / subscribed / unsubscribed / unsubscribe.
  - C{message}: C{to}, C{body}, C{type} (default C{chat}), C{subject},
    C{thread}, C{msgid}: send a message.
  - C{roster}: fetch the roster; answered by a C{roster} event.
  - C{roster_set}: C{jid}, C{name}, C{groups}; C{roster_remove}: C{jid}.
  - C{ping}: C{jid} (XEP-0199); answered by C{pong} or C{error}.
  - C{disco}: C{jid}, C{node}, C{items} (true for disco#items); answered
    by C{disco}.
  - C{iq}: C{xml}: send an IQ given as XML and wait for its answer;
    answered by C{iq} (with the answer's XML) or C{error}.
  - C{raw}: C{xml}: send raw XML on the stream.
  - C{quit}: close the stream and exit (so does the end of input).

Events (C{"event"}): C{connected}, C{tls} (STARTTLS or direct TLS done),
C{session_start} (C{jid}: the bound JID, C{encrypted}), C{presence}
(C{from}, C{to}, C{type}: C{available}, C{unavailable}, C{subscribe}...,
C{show}, C{status}, C{priority}), C{subscribe} (C{from}; also reported as
a C{presence}), C{message} (C{from}, C{to}, C{body}, C{type}, C{id},
C{subject}, C{thread}, C{error} for C{type=error}), C{roster} (C{items}:
C{jid}, C{name}, C{subscription}, C{ask}, C{groups}), C{roster_push}
(C{items}), C{pong}, C{disco}, C{iq}, C{result}, C{error} (C{condition},
C{text}, C{etype}), C{failed_auth} (C{condition}), C{no_auth} (no
mechanism could be used, e.g. no TLS in C{starttls} mode),
C{tls_failed}, C{connection_failed} (C{reason}), C{agent_error} (slixmpp
logged an error: C{logger}, C{message}), C{stream_error}
(C{condition}, C{text}), C{disconnected} (C{reason}). After
C{disconnected} the agent exits: it never reconnects.

With C{--follow-see-other-host N}, a C{<see-other-host/>} stream error is
followed as RFC 6120 section 4.9.3.19 asks, at most N times: the event
C{see_other_host} (C{location}), then the agent connects to that host and
port and logs in again, with the same TLS mode and the same name to verify
the certificate against (slixmpp's own handling goes back to the first
address when it was given one, as here). C{--bind-address} connects from
that local address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
from typing import Any, cast

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET

#: How the client secures the connection.
TLS_MODES = ("starttls", "optional", "plain", "direct")


def emit(event: str, **fields: Any) -> None:
    """
    Print one event line on standard output.
    """
    fields = {"event": event, **fields}
    sys.stdout.write(json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


class _ErrorEvents(logging.Handler):
    """
    Report what slixmpp logs at C{ERROR} or above as C{agent_error} events
    (exceptions in its handlers would otherwise only reach the log).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit("agent_error", logger=record.name, message=record.getMessage())
        except Exception:
            pass


def _stanzaError(stanza: Any) -> dict[str, Any]:
    err = stanza["error"]
    return {"condition": err["condition"], "text": err["text"], "etype": err["type"]}


class Agent(slixmpp.ClientXMPP):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options.jid, options.password)
        self.options = options
        self.quitting = False
        self.encrypted = False
        self.redirectsLeft: int | None = options.follow_see_other_host
        self.redirectTo: tuple[str, int] | None = None
        mode = options.tls
        self.enable_direct_tls = mode == "direct"
        self.enable_starttls = mode in ("starttls", "optional")
        self.enable_plaintext = mode in ("optional", "plain")
        self.use_aiodns = False
        self.use_ipv6 = False
        self.whitespace_keepalive = False
        if options.server_name:
            # TLS checks the server's certificate against this name (SNI too).
            self.default_domain = options.server_name
        if options.no_verify:
            self.ssl_context.check_hostname = False
            self.ssl_context.verify_mode = ssl.CERT_NONE
        elif options.ca_file:
            # Trust exactly this CA (not the system's too), and check the name.
            self.ssl_context = ssl.create_default_context(cafile=options.ca_file)

        self.register_plugin("xep_0030")  # service discovery
        self.register_plugin("xep_0199", {"keepalive": False})  # ping
        if mode in ("optional", "plain"):
            # Let SASL run on an unencrypted stream (slixmpp refuses by default).
            for key in ("unencrypted_plain", "unencrypted_scram"):
                self.plugin["feature_mechanisms"].config[key] = True
        # None: leave subscription requests to the test (False would refuse them).
        self.auto_authorize = None if options.manual_subscriptions else True
        self.auto_subscribe = not options.manual_subscriptions

        self.add_event_handler("connected", lambda _: emit("connected"))
        self.add_event_handler("session_start", self.onSessionStart)
        self.add_event_handler("presence", self.onPresence)
        self.add_event_handler("presence_subscribe", lambda p: emit("subscribe", **{"from": str(p["from"])}))
        # slixmpp tells an error message as both: recorded once, from its
        # message_error, so that a test can count the error stanzas.
        self.add_event_handler("message", lambda m: None if m["type"] == "error" else self.onMessage(m))
        self.add_event_handler("message_error", self.onMessage)
        self.add_event_handler("roster_update", self.onRosterPush)
        self.add_event_handler("failed_auth", self.onFailedAuth)
        self.add_event_handler("no_auth", lambda _: emit("no_auth"))
        self.add_event_handler("ssl_invalid_chain", self.onInvalidChain)
        self.add_event_handler("connection_failed", self.onConnectionFailed)
        self.add_event_handler("stream_error", self.onStreamError)
        self.add_event_handler("disconnected", self.onDisconnected)
        self.add_event_handler("tls_success", lambda _: emit("tls"))

    # -- events ------------------------------------------------------------------

    async def onSessionStart(self, _: Any) -> None:
        encrypted = "starttls" in self.features or self.options.tls == "direct"
        if self.options.fetch_roster:
            try:
                await self.get_roster()
            except (IqError, IqTimeout) as e:
                emit("error", what="initial roster", detail=str(e))
        if self.options.initial_presence:
            self.send_presence()
        emit("session_start", jid=str(self.boundjid), encrypted=encrypted)

    def onPresence(self, p: Any) -> None:
        fields: dict[str, Any] = {
            "from": str(p["from"]),
            "to": str(p["to"]),
            "type": p.xml.get("type", "available"),
            "show": p["show"],
            "status": p["status"],
            "priority": p["priority"],
        }
        if fields["type"] == "error":
            fields["error"] = _stanzaError(p)
        emit("presence", **fields)

    def onMessage(self, m: Any) -> None:
        fields: dict[str, Any] = {
            "from": str(m["from"]),
            "to": str(m["to"]),
            "type": m.xml.get("type", "normal"),
            "body": m["body"],
            "id": m["id"],
            "subject": m["subject"] or "",
            "thread": m["thread"],
        }
        if fields["type"] == "error":
            fields["error"] = _stanzaError(m)
        # imgateway's loop mark (an auto-reply, a forwarded copy), if any.
        auto = m.xml.find("{urn:imgateway:auto}auto")
        fields["auto"] = auto.get("type") if auto is not None else None
        emit("message", **fields)

    def onRosterPush(self, iq: Any) -> None:
        if iq["type"] == "set":
            emit("roster_push", items=self.rosterItems(iq))

    def onFailedAuth(self, stanza: Any) -> None:
        emit("failed_auth", condition=stanza["condition"], text=stanza["text"])

    def onInvalidChain(self, e: Any) -> None:
        emit("tls_failed", reason=str(e))
        self.disconnect(wait=0)

    def onConnectionFailed(self, reason: Any) -> None:
        emit("connection_failed", reason=str(reason))
        # Never retry: stop the reconnection loop and end.
        self.cancel_connection_attempt()
        self.finish("connection failed")

    def _handle_stream_error(self, error: Any) -> None:
        # Overrides slixmpp's handler (registered as a bound method at
        # construction), which would reconnect to the first address.
        if error["condition"] != "see-other-host" or self.redirectsLeft is None:
            super()._handle_stream_error(error)
            return
        location = error["see_other_host"]
        emit("see_other_host", location=location)
        if self.redirectsLeft <= 0:
            emit("stream_error", condition="see-other-host", text="too many redirects")
            return
        self.redirectsLeft -= 1
        host, _, port = location.rpartition(":")
        self.redirectTo = (host.strip("[]"), int(port))

    def onStreamError(self, error: Any) -> None:
        emit("stream_error", condition=error["condition"], text=error["text"])

    def onDisconnected(self, reason: Any) -> None:
        if self.redirectTo is not None and not self.quitting:
            host, port = self.redirectTo
            self.redirectTo = None
            self.connect(host=host, port=port)
            return
        if isinstance(reason, ssl.SSLError) and not self.quitting:
            # A failed TLS handshake (e.g. an untrusted certificate) ends the connection.
            emit("tls_failed", reason=str(reason))
        self.finish(reason)

    def finish(self, reason: Any) -> None:
        if not self.quitting:
            self.quitting = True
            emit("disconnected", reason=None if reason is None else str(reason))
            asyncio.get_event_loop().call_later(0.05, stop)

    # -- commands ----------------------------------------------------------------

    def rosterItems(self, iq: Any) -> list[dict[str, Any]]:
        items = []
        for jid, item in iq["roster"]["items"].items():
            items.append(
                {
                    "jid": str(jid),
                    "name": item["name"],
                    "subscription": item["subscription"],
                    "ask": item["ask"],
                    "groups": sorted(item["groups"]),
                }
            )
        return items

    async def command(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        rid = cmd.get("id")
        try:
            handler = getattr(self, f"cmd_{name}", None)
            if handler is None:
                emit("error", id=rid, condition="bad-command", text=f"unknown command {name!r}")
                return
            await handler(cmd, rid)
        except IqError as e:
            emit("error", id=rid, cmd=name, **_stanzaError(e.iq))
        except IqTimeout:
            emit("error", id=rid, cmd=name, condition="timeout", text="no answer")
        except Exception as e:  # report, never die on a bad command
            logging.exception("command %r failed", cmd)
            emit("error", id=rid, cmd=name, condition="exception", text=f"{type(e).__name__}: {e}")

    async def cmd_presence(self, cmd: dict[str, Any], rid: Any) -> None:
        p = self.make_presence(
            pshow=cmd.get("show"),
            pstatus=cmd.get("status"),
            ppriority=cmd.get("priority"),
            pto=cmd.get("to"),
            ptype=cmd.get("type"),
        )
        p.send()
        emit("result", id=rid, cmd="presence")

    async def _presenceTo(self, cmd: dict[str, Any], rid: Any, ptype: str) -> None:
        self.send_presence(pto=cmd["jid"], ptype=cast(Any, ptype))
        emit("result", id=rid, cmd=cmd["cmd"])

    async def cmd_subscribe(self, cmd: dict[str, Any], rid: Any) -> None:
        await self._presenceTo(cmd, rid, "subscribe")

    async def cmd_approve(self, cmd: dict[str, Any], rid: Any) -> None:
        await self._presenceTo(cmd, rid, "subscribed")

    async def cmd_deny(self, cmd: dict[str, Any], rid: Any) -> None:
        await self._presenceTo(cmd, rid, "unsubscribed")

    async def cmd_unsubscribe(self, cmd: dict[str, Any], rid: Any) -> None:
        await self._presenceTo(cmd, rid, "unsubscribe")

    async def cmd_message(self, cmd: dict[str, Any], rid: Any) -> None:
        m = self.make_message(
            mto=cmd["to"],
            mbody=cmd.get("body"),
            msubject=cmd.get("subject"),
            mtype=cmd.get("type", "chat"),
        )
        if cmd.get("thread"):
            m["thread"] = cmd["thread"]
        if cmd.get("msgid"):
            m["id"] = cmd["msgid"]
        m.send()
        emit("result", id=rid, cmd="message", msgid=m["id"])

    async def cmd_roster(self, cmd: dict[str, Any], rid: Any) -> None:
        iq = self.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        answer = await iq.send(timeout=cmd.get("timeout", 10))
        emit("roster", id=rid, items=self.rosterItems(answer))

    async def cmd_roster_set(self, cmd: dict[str, Any], rid: Any) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["roster"]["items"] = {cmd["jid"]: {"name": cmd.get("name", ""), "groups": cmd.get("groups", [])}}
        await iq.send(timeout=cmd.get("timeout", 10))
        emit("result", id=rid, cmd="roster_set")

    async def cmd_roster_remove(self, cmd: dict[str, Any], rid: Any) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["roster"]["items"] = {cmd["jid"]: {"subscription": "remove"}}
        await iq.send(timeout=cmd.get("timeout", 10))
        emit("result", id=rid, cmd="roster_remove")

    async def cmd_ping(self, cmd: dict[str, Any], rid: Any) -> None:
        rtt = await self.plugin["xep_0199"].ping(cmd["jid"], timeout=cmd.get("timeout", 10))
        emit("pong", id=rid, jid=cmd["jid"], rtt=rtt)

    async def cmd_disco(self, cmd: dict[str, Any], rid: Any) -> None:
        disco = self.plugin["xep_0030"]
        if cmd.get("items"):
            answer = await disco.get_items(jid=cmd["jid"], node=cmd.get("node"), timeout=cmd.get("timeout", 10))
            items = [{"jid": str(j), "node": n, "name": name} for j, n, name in answer["disco_items"]["items"]]
            emit("disco", id=rid, jid=cmd["jid"], items=items)
        else:
            answer = await disco.get_info(jid=cmd["jid"], node=cmd.get("node"), timeout=cmd.get("timeout", 10))
            info = answer["disco_info"]
            emit(
                "disco",
                id=rid,
                jid=cmd["jid"],
                identities=[list(i) for i in info["identities"]],
                features=sorted(info["features"]),
            )

    async def cmd_iq(self, cmd: dict[str, Any], rid: Any) -> None:
        iq = self.Iq(xml=ET.fromstring(cmd["xml"]))
        if not iq["id"]:
            iq["id"] = self.new_id()
        answer = await iq.send(timeout=cmd.get("timeout", 10))
        emit("iq", id=rid, type=answer["type"], xml=str(answer))

    async def cmd_raw(self, cmd: dict[str, Any], rid: Any) -> None:
        self.send_raw(cmd["xml"])
        emit("result", id=rid, cmd="raw")

    async def cmd_quit(self, cmd: dict[str, Any], rid: Any) -> None:
        await self.quit()

    async def quit(self) -> None:
        if self.transport is None:
            self.finish("quit")
            return
        await self.disconnect(wait=2.0, reason="quit")
        self.finish("quit")


_loop: asyncio.AbstractEventLoop | None = None


class _BoundLoop(asyncio.SelectorEventLoop):
    """
    An event loop whose outgoing connections leave from one local address.
    """

    def __init__(self, bindAddress: str) -> None:
        super().__init__()
        self.bindAddress = bindAddress

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("local_addr", (self.bindAddress, 0))
        return await super().create_connection(*args, **kwargs)


def stop() -> None:
    if _loop is not None:
        _loop.stop()


def readCommands(agent: Agent, loop: asyncio.AbstractEventLoop) -> None:
    """
    Read standard input without blocking the loop; run each command line.
    """
    buffer = b""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        nonlocal buffer
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            loop.remove_reader(fd)
            asyncio.ensure_future(agent.quit())
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
            except ValueError as e:
                emit("error", condition="bad-json", text=str(e))
                continue
            asyncio.ensure_future(agent.command(cmd))

    loop.add_reader(fd, readable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", default=os.environ.get("XMPP_AGENT_PASSWORD", ""))
    parser.add_argument("--host", default="127.0.0.1", help="address to connect to (no name lookup)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", choices=TLS_MODES, default="starttls")
    parser.add_argument("--ca-file", help="trust the authorities in this PEM file")
    parser.add_argument("--no-verify", action="store_true", help="accept any server certificate")
    parser.add_argument("--server-name", help="name to verify the certificate for (default: the JID's domain)")
    parser.add_argument("--no-presence", dest="initial_presence", action="store_false")
    parser.add_argument("--no-roster", dest="fetch_roster", action="store_false")
    parser.add_argument(
        "--auto-subscriptions",
        dest="manual_subscriptions",
        action="store_false",
        help="let slixmpp approve subscription requests itself",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--follow-see-other-host", type=int, metavar="N", help="follow at most N see-other-host errors")
    parser.add_argument("--bind-address", help="local address to connect from")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    errors = _ErrorEvents(logging.ERROR)
    logging.getLogger().addHandler(errors)

    global _loop
    loop = _BoundLoop(options.bind_address) if options.bind_address else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _loop = loop
    agent = Agent(options)
    readCommands(agent, loop)
    agent.connect(host=options.host, port=options.port)
    try:
        loop.run_forever()
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
