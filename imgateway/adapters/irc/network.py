# -*- test-case-name: tests.test_irc_network -*-
"""
The bridge to real IRC networks: the C{[[irc.network]]} tables, and for
each network a route registered for its domain (C{libera.irc}), so that
gateway users of any face reach the network's users as
C{frank@libera.irc}.

Puppets: each gateway user who writes to the network gets an IRC
connection of their own (L{Puppet}, an L{IRCLink}), opened on the first
message, registered under the nick the network's template makes of the
user's name (C{{user}} or C{{user}[corp]}), closed after C{idle_close}
seconds without a message either way; C{max_puppets} such connections per
network at most. A message becomes one C{PRIVMSG} per line, split under
the real prefix budget (L{wire.splitText}, L{wire.lineBudget}); C{/me}
becomes a CTCP ACTION. The message counts as delivered once every line is
written and the network said no C{401} (no such nick) within
C{status_wait} seconds; otherwise its sender gets the error.

Presence: one more connection per network, the presence watcher (nick
C{presence_nick}), follows the IRC users that gateway users watch: with
C{MONITOR} where the network offers it (ISUPPORT), else C{ISON} every
C{presence_interval} seconds, and C{WHOIS} of the online ones for their
away message. A watched user's presence (offline; online; away with the
away message as note, L{mapping.presenceFromIRC}) goes to every gateway
user who watches them, as federation delivers remote users' presence.

A gateway user who subscribes to C{frank@libera.irc} is authorised at
once (IRC has no such consent), and frank asks back to watch the user:
once the user allows it, the user's presence reaches the bridge, and their
puppet is C{AWAY} with the note as away message whenever the user is not
available (L{mapping.awayFromPresence}). Nobody on IRC learns anything of
a user who did not allow it.

Inbound: a C{PRIVMSG} (or C{NOTICE}) to a puppet from C{frank} becomes a
message from C{frank@libera.irc} to the puppet's user, IRC formatting and
other control characters removed, a CTCP ACTION as C{/me}, text that is
not UTF-8 decoded with the network's C{fallback_charset}.
"""

from __future__ import annotations

import codecs
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.adapters.irc.mapping import awayFromPresence, presenceFromIRC
from imgateway.adapters.irc.puppet import (
    ConnectionLimits,
    FloodAllowance,
    IRCLink,
    Registration,
    isupportInt,
)
from imgateway.adapters.irc.wire import IRCMessage, ctcpAction, lineBudget, makeAction, splitText, stripFormatting
from imgateway.config import ConfigTable
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import (
    ConfigError,
    DeliveryError,
    DeliveryStatus,
    InvalidAddress,
    NoRoute,
    NoSuchUser,
    ServiceUnavailable,
    TooLarge,
    UserOffline,
)
from imgateway.core.events import Event, Message, PresenceProbe, PresenceUpdate, SubscriptionEvent, SubscriptionKind
from imgateway.core.linkinfo import LinkInfo
from imgateway.core.presence import MAX_NOTE_CHARS, OFFLINE, Presence
from imgateway.interfaces import IGateway, IRoute
from imgateway.net.endpoints import clientEndpointFromString

__all__ = [
    "IRCNetworkConfig",
    "IRCNetworkRoute",
    "IRCNetworkService",
    "Puppet",
    "PresenceWatcher",
    "cleanIncoming",
    "ircNick",
    "makeNetworkServices",
    "parseNetworkConfig",
    "parseNetworks",
    "puppetNick",
]

#: What a nick may be (RFC 2812 2.3.1, the characters every ircd takes).
_NICK = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]*$")
#: Longest nick we ask for or write to.
MAX_NICK_CHARS = 32
_NOT_NICK = re.compile(r"[^A-Za-z0-9\[\]\\`_^{|}-]")
#: Control characters removed from text that comes from IRC (tab stays).
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@frozen
class IRCNetworkConfig:
    """
    One bridged network (a C{[[irc.network]]} table); see
    C{etc/imgateway.toml} for what each key means.
    """

    name: str
    domain: str
    endpoint: str
    nickTemplate: str = "{user}"
    password: str | None = attrs.field(default=None, repr=False)
    saslAccount: str | None = None
    saslPassword: str | None = attrs.field(default=None, repr=False)
    flood: FloodAllowance = FloodAllowance()
    limits: ConnectionLimits = ConnectionLimits()
    maxPuppets: int = 50
    idleClose: float = 600.0
    fallbackCharset: str = "latin-1"
    presenceNick: str = "imgw"
    presenceInterval: float = 60.0
    maxWatched: int = 1000
    maxMessageLines: int = 20
    maxQueuedLines: int = 1000
    lineTimeout: float = 60.0
    statusWait: float = 1.0
    maxReconnectDelay: float = 300.0
    maxRememberedPresences: int = 100000

    @property
    def sasl(self) -> tuple[str, str] | None:
        if self.saslAccount is None or self.saslPassword is None:
            return None
        return (self.saslAccount, self.saslPassword)


def _checkEndpoint(t: ConfigTable, reactor: IReactorCore | None, endpoint: str) -> None:
    if reactor is None:
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
    try:
        clientEndpointFromString(reactor, endpoint)
    except Exception as e:  # clientFromString raises many kinds
        raise t.error("endpoint", f"bad client endpoint {endpoint!r}: {e}") from None


def parseNetworkConfig(t: ConfigTable, reactor: IReactorCore | None = None) -> IRCNetworkConfig:
    """
    Read one C{[[irc.network]]} table; calls C{t.finish()}.

    @raise ConfigError: Naming the table and key at fault.
    """
    name = t.get("name", str)
    if not name or not name.isprintable():
        raise t.error("name", "must be a non-empty printable name")
    try:
        domain = normaliseDomain(t.get("domain", str))
    except InvalidAddress as e:
        raise t.error("domain", str(e)) from None
    endpoint = t.get("endpoint", str)
    _checkEndpoint(t, reactor, endpoint)
    d = IRCNetworkConfig(name, domain, endpoint)
    template = t.get("nick_template", str, d.nickTemplate)
    try:
        sample = template.format(user="alice")
    except (KeyError, IndexError, ValueError) as e:
        raise t.error("nick_template", f"{template!r}: only {{user}} may be named ({e})") from None
    if "{user}" not in template or not _NICK.match(sample):
        raise t.error("nick_template", f"{template!r} must contain {{user}} and make a valid nick")
    password = t.get("password", str, None)
    saslAccount = t.get("sasl_account", str, None)
    saslPassword = t.get("sasl_password", str, None)
    if (saslAccount is None) != (saslPassword is None):
        raise t.error("sasl_password" if saslPassword is None else "sasl_account", "sasl_account and sasl_password go together")
    charset = t.get("fallback_charset", str, d.fallbackCharset)
    try:
        codecs.lookup(charset)
    except LookupError:
        raise t.error("fallback_charset", f"unknown charset {charset!r}") from None
    presenceNick = t.get("presence_nick", str, d.presenceNick)
    if not _NICK.match(presenceNick) or len(presenceNick) > MAX_NICK_CHARS:
        raise t.error("presence_nick", f"{presenceNick!r} is not a valid nick")
    f, l = d.flood, d.limits
    burst = t.positive("flood_burst", int, f.burst)
    rate = t.positive("flood_rate", float, f.rate)
    config = IRCNetworkConfig(
        name=name,
        domain=domain,
        endpoint=endpoint,
        nickTemplate=template,
        password=password,
        saslAccount=saslAccount,
        saslPassword=saslPassword,
        flood=FloodAllowance(burst=burst, rate=rate),
        limits=ConnectionLimits(
            registrationTimeout=t.positive("registration_timeout", float, l.registrationTimeout),
            maxLinesPerSecond=t.positive("max_lines_per_second", int, l.maxLinesPerSecond),
            maxNames=t.positive("max_names", int, l.maxNames),
            pingInterval=t.positive("ping_interval", float, l.pingInterval),
        ),
        maxPuppets=t.positive("max_puppets", int, d.maxPuppets),
        idleClose=t.positive("idle_close", float, d.idleClose),
        fallbackCharset=charset,
        presenceNick=presenceNick,
        presenceInterval=t.positive("presence_interval", float, d.presenceInterval),
        maxWatched=t.positive("max_watched", int, d.maxWatched),
        maxMessageLines=t.positive("max_message_lines", int, d.maxMessageLines),
        maxQueuedLines=t.positive("max_queued_lines", int, d.maxQueuedLines),
        lineTimeout=t.positive("line_timeout", float, d.lineTimeout),
        statusWait=t.positive("status_wait", float, d.statusWait),
        maxReconnectDelay=t.positive("max_reconnect_delay", float, d.maxReconnectDelay),
        maxRememberedPresences=t.positive("max_remembered_presences", int, d.maxRememberedPresences),
    )
    t.finish()
    return config


def parseNetworks(table: ConfigTable, reactor: IReactorCore | None = None, key: str = "network") -> tuple[IRCNetworkConfig, ...]:
    """
    Read the C{[[irc.network]]} tables of the C{[irc]} table: one
    L{IRCNetworkConfig} each, with distinct names and domains.

    @param reactor: For checking endpoint strings (nothing is opened); a
        memory reactor when C{None}.
    @raise ConfigError: Naming the table and key at fault.
    """
    items = table.get(key, list, [])
    configs: list[IRCNetworkConfig] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise table.error(key, f"expected tables ([[irc.{key}]]), got {item!r}")
        sub = ConfigTable(item, f"{table.where} {key}[{i}]", table.baseDir)
        config = parseNetworkConfig(sub, reactor)
        for other in configs:
            if other.name == config.name:
                raise sub.error("name", f"{config.name} is configured twice")
            if other.domain == config.domain:
                raise sub.error("domain", f"{config.domain} is already the domain of {other.name}")
        configs.append(config)
    return tuple(configs)


# -- text and nicks --------------------------------------------------------------


def ircNick(address: Address) -> str | None:
    """
    @return: The IRC nick a bridged address names (its local part), or
        C{None} if it cannot be a nick.
    """
    nick = address.local
    if len(nick) > MAX_NICK_CHARS or not _NICK.match(nick):
        return None
    return nick


def puppetNick(template: str, user: Address) -> str:
    """
    The nick a gateway user's puppet asks for: the template with C{{user}}
    as the user's local part, each character a nick may not hold as C{-},
    a leading digit or C{-} behind a C{_}, at most L{MAX_NICK_CHARS}.
    """
    local = _NOT_NICK.sub("-", user.local)
    if not local or not _NICK.match(local[0]):
        local = "_" + local
    nick = template.format(user=local)
    return nick[:MAX_NICK_CHARS]


def cleanIncoming(text: str) -> tuple[str, bool]:
    """
    Text from IRC as a gateway message: a CTCP ACTION becomes C{/me ...},
    formatting and other control characters go.

    @return: The text, and whether it was an action.
    """
    action = ctcpAction(text)
    if action is not None:
        text = action
    text = _CONTROLS.sub("", stripFormatting(text).replace("\x01", ""))
    return (f"/me {text}" if action is not None else text), action is not None


def _key(nick: str) -> str:
    """
    The case-insensitive form of a nick (RFC 1459 casemapping).
    """
    return nick.lower().translate(str.maketrans("[]\\~", "{}|^"))


# -- puppets ------------------------------------------------------------------------


class _Status:
    """
    A message whose lines are written, waiting C{status_wait} for a C{401}.
    """

    __slots__ = ("target", "result", "timer")

    def __init__(self, target: str, result: Deferred[DeliveryStatus]) -> None:
        self.target = target
        self.result = result
        self.timer: IDelayedCall | None = None


class Puppet:
    """
    A gateway user on an IRC network; see the module docstring.
    """

    log = Logger()

    def __init__(self, route: IRCNetworkRoute, user: Address, endpoint: IStreamClientEndpoint) -> None:
        config = route.config
        self.route = route
        self.user = user
        self.clock = route.clock
        self.wanted = puppetNick(config.nickTemplate, user)
        ident = re.sub(r"[^a-z0-9]", "", user.local)[:10] or "imgw"
        self.link = IRCLink(
            config.name,
            endpoint,
            Registration(self.wanted, ident, str(user), config.password, config.sasl, config.fallbackCharset),
            self,
            self.clock,
            flood=config.flood,
            limits=config.limits,
            maxQueuedLines=config.maxQueuedLines,
            lineTimeout=config.lineTimeout,
            maxDelay=config.maxReconnectDelay,
        )
        self.banned: str | None = None
        self._away: str | None = None
        self._awaySent: str | None = None
        self._awayKnown = False
        self._idle: IDelayedCall | None = None
        self._statuses: list[_Status] = []
        self._reclaim: IDelayedCall | None = None

    def start(self) -> None:
        self.link.start()
        self.touch()

    def stop(self, why: str) -> Deferred[None]:
        for timer in (self._idle, self._reclaim):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._reclaim = None
        for status in list(self._statuses):
            self._settle(status, DeliveryStatus.DELIVERED)
        return self.link.stop(why, quit="idle" if why == "idle" else "gateway stopping")

    def touch(self) -> None:
        """
        The puppet was used: its idle time starts again.
        """
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.route.config.idleClose)
        else:
            self._idle = self.clock.callLater(self.route.config.idleClose, self._idleOut)

    def _idleOut(self) -> None:
        self._idle = None
        if self.link.queued:
            self.touch()
            return
        self.log.info("IRC {network}: closing the idle puppet of {user}", network=self.route.config.name, user=self.user)
        self.route.puppetClosed(self)
        self.stop("idle")

    # -- out ----------------------------------------------------------------

    def sendMessage(self, nick: str, body: str) -> Deferred[DeliveryStatus]:
        """
        Send C{body} to C{nick}, one C{PRIVMSG} per line.
        """
        if self.banned is not None:
            return fail(ServiceUnavailable(self.banned))
        self.touch()
        action = body.startswith("/me ")
        text = body[4:] if action else body
        prefix = self.link.prefix or f"{self.link.nick or self.wanted}!{self.link.registration.user}@{'x' * 63}"
        budget = lineBudget(nick, prefix) - (len(makeAction("")) if action else 0)
        try:
            lines, truncated = splitText(text, budget, self.route.config.maxMessageLines)
        except ValueError as e:
            return fail(TooLarge(f"cannot fit the message in IRC lines to {nick}: {e}"))
        if not lines:
            return succeed(DeliveryStatus.DELIVERED)
        if truncated:
            self.log.info(
                "IRC {network}: a message of {user} to {nick} was cut at {lines} lines (max_message_lines)",
                network=self.route.config.name,
                user=self.user,
                nick=nick,
                lines=len(lines),
            )
        written = [self.link.send("PRIVMSG", nick, makeAction(line) if action else line) for line in lines]
        result: Deferred[DeliveryStatus] = Deferred()
        status = _Status(_key(nick), result)

        def allWritten(outcomes: list[tuple[bool, Any]]) -> None:
            for ok, value in outcomes:
                if not ok:
                    f: Failure = value
                    error = f.value if isinstance(f.value, DeliveryError) else ServiceUnavailable(str(f.value))
                    if not result.called:
                        result.errback(Failure(error))
                    return
            self._statuses.append(status)
            status.timer = self.clock.callLater(self.route.config.statusWait, self._settle, status, DeliveryStatus.DELIVERED)

        DeferredList(written, consumeErrors=True).addCallback(allWritten)
        return result

    def _settle(self, status: _Status, outcome: DeliveryStatus | DeliveryError) -> None:
        if status in self._statuses:
            self._statuses.remove(status)
        if status.timer is not None and status.timer.active():
            status.timer.cancel()
        if status.result.called:
            return
        if isinstance(outcome, DeliveryError):
            status.result.errback(Failure(outcome))
        else:
            status.result.callback(outcome)

    def setPresence(self, presence: Presence) -> None:
        """
        The user's presence: set or clear C{AWAY} when it changes.
        """
        self._away = awayFromPresence(presence)
        self._awayKnown = True
        self._applyAway()

    def _applyAway(self) -> None:
        if not self._awayKnown or self.link.connection is None or self._away == self._awaySent:
            return
        self._awaySent = self._away
        d = self.link.send("AWAY", self._away) if self._away is not None else self.link.send("AWAY")
        d.addErrback(lambda f: None)

    # -- link events -------------------------------------------------------

    def linkRegistered(self, link: IRCLink) -> None:
        self._awaySent = None
        self._applyAway()
        self._checkNick()

    def _checkNick(self) -> None:
        if self._reclaim is not None and self._reclaim.active():
            self._reclaim.cancel()
        self._reclaim = None
        if self.link.nick is not None and _key(self.link.nick) != _key(self.wanted):
            self._reclaim = self.clock.callLater(self.route.config.presenceInterval, self._askNick)

    def _askNick(self) -> None:
        self._reclaim = None
        if self.link.connection is not None:
            self.link.send("ISON", self.wanted).addErrback(lambda f: None)
            self._reclaim = self.clock.callLater(self.route.config.presenceInterval, self._askNick)

    def linkMessage(self, link: IRCLink, message: IRCMessage) -> None:
        command, params = message.command, message.params
        if command in ("PRIVMSG", "NOTICE") and len(params) >= 2 and message.prefix and "!" in message.prefix:
            if _key(params[0]) != _key(link.nick or ""):
                return  # a channel's
            self.touch()
            self.route.fromIRC(self, message.prefix.partition("!")[0], params[1], command == "NOTICE")
        elif command == "401" and len(params) >= 2:
            target = _key(params[1])
            for status in list(self._statuses):
                if status.target == target:
                    self._settle(status, UserOffline(f"{params[1]} is not on {self.route.config.name}"))
        elif command == "303" and params:
            online = {_key(n) for n in params[-1].split()}
            if _key(self.wanted) not in online and link.nick is not None and _key(link.nick) != _key(self.wanted):
                link.send("NICK", self.wanted).addErrback(lambda f: None)
        elif command == "NICK":
            self._checkNick()

    def linkLost(self, link: IRCLink) -> None:
        if self._reclaim is not None and self._reclaim.active():
            self._reclaim.cancel()
        self._reclaim = None

    def linkBanned(self, link: IRCLink, reason: str) -> None:
        self.banned = f"{self.route.config.name} refused {self.user}'s connection: {reason}"
        for status in list(self._statuses):
            self._settle(status, DeliveryStatus.DELIVERED)
        self.route.puppetBanned(self, reason)


# -- presence ----------------------------------------------------------------------


class PresenceWatcher:
    """
    The network's presence watcher connection; see the module docstring.

    @ivar watchers: Watched nick (case-folded) to the gateway users who
        watch it.
    @ivar known: Watched nick to the presence last delivered.
    """

    log = Logger()

    def __init__(self, route: IRCNetworkRoute, endpoint: IStreamClientEndpoint) -> None:
        config = route.config
        self.route = route
        self.clock = route.clock
        self.link = IRCLink(
            config.name,
            endpoint,
            Registration(config.presenceNick, "imgw", f"imgateway presence ({config.domain})", config.password, config.sasl, config.fallbackCharset),
            self,
            self.clock,
            flood=config.flood,
            limits=config.limits,
            maxQueuedLines=config.maxQueuedLines,
            lineTimeout=config.lineTimeout,
            maxDelay=config.maxReconnectDelay,
        )
        self.watchers: OrderedDict[str, set[Address]] = OrderedDict()
        self.names: dict[str, str] = {}
        self.known: dict[str, Presence] = {}
        self._online: dict[str, bool] = {}
        self._away: dict[str, str | None] = {}
        self._monitored: set[str] = set()
        self._whois: dict[str, str | None] = {}
        self._poll: IDelayedCall | None = None
        self.banned: str | None = None

    def stop(self) -> Deferred[None]:
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        return self.link.stop("gateway stopping", quit="gateway stopping")

    def watch(self, nick: str, user: Address) -> None:
        """
        C{user} watches C{nick}: deliver its presence now if known, and on
        every change.
        """
        key = _key(nick)
        users = self.watchers.get(key)
        if users is None:
            if len(self.watchers) >= self.route.config.maxWatched:
                self.log.warn(
                    "IRC {network}: {limit} nicks watched already (max_watched); {nick} is not",
                    network=self.route.config.name,
                    limit=self.route.config.maxWatched,
                    nick=nick,
                )
                return
            users = self.watchers[key] = set()
            self.names[key] = nick
            self.link.start()
            self._startWatching(key)
        users.add(user)
        if key in self.known:
            self.route.deliverPresence(nick, user, self.known[key])

    def unwatch(self, nick: str, user: Address) -> None:
        key = _key(nick)
        users = self.watchers.get(key)
        if users is None:
            return
        users.discard(user)
        if not users:
            del self.watchers[key]
            self.names.pop(key, None)
            self.known.pop(key, None)
            self._online.pop(key, None)
            self._away.pop(key, None)
            if key in self._monitored:
                self._monitored.discard(key)
                if self.link.connection is not None:
                    self.link.send("MONITOR", "-", nick).addErrback(lambda f: None)

    def _monitorLimit(self) -> int:
        connection = self.link.connection
        if connection is None or "MONITOR" not in connection.isupport:
            return 0
        return isupportInt(connection.isupport, "MONITOR", 100)

    def _startWatching(self, key: str) -> None:
        if self.link.connection is None:
            return
        if len(self._monitored) < self._monitorLimit():
            self._monitored.add(key)
            self.link.send("MONITOR", "+", self.names[key]).addErrback(lambda f: None)
        else:
            self.link.send("ISON", self.names[key]).addErrback(lambda f: None)

    def _pollDue(self) -> None:
        """
        C{ISON} the nicks not monitored; C{WHOIS} the online ones (away).
        """
        self._poll = None
        if self.link.connection is None:
            return
        unmonitored = [self.names[k] for k in self.watchers if k not in self._monitored]
        line: list[str] = []
        for nick in unmonitored:
            if sum(len(n) + 1 for n in line) + len(nick) > 400:
                self.link.send("ISON", *[" ".join(line)]).addErrback(lambda f: None)
                line = []
            line.append(nick)
        if line:
            self.link.send("ISON", " ".join(line)).addErrback(lambda f: None)
        for key, online in list(self._online.items()):
            if online and key in self.names:
                self.link.send("WHOIS", self.names[key]).addErrback(lambda f: None)
        self._poll = self.clock.callLater(self.route.config.presenceInterval, self._pollDue)

    def _update(self, key: str, online: bool | None = None, away: str | None | bool = False) -> None:
        if key not in self.watchers:
            return
        if online is not None:
            self._online[key] = online
            if not online:
                self._away.pop(key, None)
        if away is not False:
            assert away is not True
            self._away[key] = away
        presence = presenceFromIRC(self._online.get(key, False), self._away.get(key))
        if self.known.get(key) != presence:
            self.known[key] = presence
            nick = self.names[key]
            for user in list(self.watchers[key]):
                self.route.deliverPresence(nick, user, presence)

    # -- link events -------------------------------------------------------

    def linkRegistered(self, link: IRCLink) -> None:
        self._monitored = set()
        for key in list(self.watchers):
            self._startWatching(key)
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = self.clock.callLater(self.route.config.presenceInterval, self._pollDue)

    def linkLost(self, link: IRCLink) -> None:
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        self._whois = {}
        for key in list(self.watchers):
            self._update(key, online=False)

    def linkBanned(self, link: IRCLink, reason: str) -> None:
        self.banned = reason
        self.linkLost(link)

    def linkMessage(self, link: IRCLink, message: IRCMessage) -> None:
        command, params = message.command, message.params
        if command in ("376", "422"):
            # The end of the welcome burst: ISUPPORT (005) has come, which
            # says whether MONITOR is offered; the nicks polled until now
            # are monitored from here on, as many as it allows.
            for key in list(self.watchers):
                if key not in self._monitored and len(self._monitored) < self._monitorLimit():
                    self._monitored.add(key)
                    link.send("MONITOR", "+", self.names[key]).addErrback(lambda f: None)
        elif command in ("730", "731") and params:
            online = command == "730"
            for target in params[-1].split(","):
                key = _key(target.partition("!")[0])
                was = self._online.get(key, False)
                self._update(key, online=online)
                if online and not was:
                    link.send("WHOIS", self.names.get(key, target.partition("!")[0])).addErrback(lambda f: None)
        elif command == "303" and params:
            present = {_key(n) for n in params[-1].split()}
            for key in list(self.watchers):
                if key in self._monitored:
                    continue
                was = self._online.get(key, False)
                self._update(key, online=key in present)
                if key in present and not was:
                    link.send("WHOIS", self.names[key]).addErrback(lambda f: None)
        elif command == "311" and len(params) >= 2:
            self._whois[_key(params[1])] = None
        elif command == "301" and len(params) >= 3:
            key = _key(params[1])
            if key in self._whois:
                self._whois[key] = params[2][:MAX_NOTE_CHARS]
        elif command == "318" and len(params) >= 2:
            key = _key(params[1])
            if key in self._whois:
                away = self._whois.pop(key)
                note = None if away is None else cleanIncoming(away)[0]
                self._update(key, online=True, away=note)
        elif command == "401" and len(params) >= 2:
            self._update(_key(params[1]), online=False)
        elif command == "AWAY" and message.prefix:
            key = _key(message.prefix.partition("!")[0])
            self._update(key, away=cleanIncoming(params[0])[0] if params else None)
        elif command == "QUIT" and message.prefix:
            self._update(_key(message.prefix.partition("!")[0]), online=False)


# -- the route ---------------------------------------------------------------------------


@implementer(IRoute)
class IRCNetworkRoute:
    """
    The route of one bridged network; see the module docstring.
    """

    log = Logger()

    def __init__(
        self,
        config: IRCNetworkConfig,
        router: IRoute,
        clock: IReactorTime,
        endpointFactory: Callable[[], IStreamClientEndpoint],
        maxBodyChars: int = 16384,
    ) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.endpointFactory = endpointFactory
        self.maxBodyChars = maxBodyChars
        self.puppets: dict[Address, Puppet] = {}
        self.banned: dict[Address, str] = {}
        self.presence = PresenceWatcher(self, endpointFactory())
        # The users' own presence, as they let IRC see it, for their puppets
        # opened later: the latest max_remembered_presences users.
        self._userPresence: OrderedDict[Address, Presence] = OrderedDict()
        self._stopped = False

    def stop(self) -> Deferred[None]:
        self._stopped = True
        stops = [p.stop("gateway stopping") for p in self.puppets.values()]
        stops.append(self.presence.stop())
        self.puppets.clear()
        return DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    def deliver(self, event: Event) -> Deferred[DeliveryStatus]:
        """
        An event from a gateway user to a user of this network.
        """
        if self._stopped:
            return fail(NoRoute(f"the IRC route to {self.config.domain} is stopped"))
        nick = ircNick(event.recipient)
        if nick is None:
            return fail(NoSuchUser(f"{event.recipient} is not an IRC nick"))
        user = event.sender
        if isinstance(event, Message):
            return self._message(user, nick, event)
        if isinstance(event, SubscriptionEvent):
            kind = event.kind
            if kind is SubscriptionKind.SUBSCRIBE:
                contact = event.recipient
                self._send(SubscriptionEvent(SubscriptionKind.AUTHORISE, contact, user))
                self._send(SubscriptionEvent(SubscriptionKind.SUBSCRIBE, contact, user))
                self.presence.watch(nick, user)
            elif kind is SubscriptionKind.UNSUBSCRIBE:
                self.presence.unwatch(nick, user)
            elif kind is SubscriptionKind.REFUSE:
                self._setUserPresence(user, None)
        elif isinstance(event, PresenceProbe):
            self.presence.watch(nick, user)
        elif isinstance(event, PresenceUpdate):
            self._setUserPresence(user, event.presence)
        return succeed(DeliveryStatus.DELIVERED)

    def _send(self, event: Event) -> None:
        def failed(f: Failure) -> None:
            self.log.debug("IRC {network}: {event!r} not delivered: {error}", network=self.config.name, event=event, error=f.value)

        d: Deferred[DeliveryStatus] = self.router.deliver(event)
        d.addErrback(failed)

    def _setUserPresence(self, user: Address, presence: Presence | None) -> None:
        if presence is None:
            self._userPresence.pop(user, None)
            presence = OFFLINE
        else:
            self._userPresence[user] = presence
            self._userPresence.move_to_end(user)
            while len(self._userPresence) > self.config.maxRememberedPresences:
                self._userPresence.popitem(last=False)
        puppet = self.puppets.get(user)
        if puppet is not None:
            puppet.setPresence(presence)

    def deliverPresence(self, nick: str, user: Address, presence: Presence) -> None:
        """
        Tell C{user} the presence of C{nick}; a user whose home refuses it
        (no longer watches) is no longer told.
        """
        try:
            contact = Address.fromParts(nick, self.config.domain)
        except InvalidAddress:
            return

        def refused(f: Failure) -> None:
            if f.check(DeliveryError) and not f.check(ServiceUnavailable):
                self.presence.unwatch(nick, user)
            self.log.debug("IRC {network}: presence of {nick} for {user}: {error}", network=self.config.name, nick=nick, user=user, error=f.value)

        self.router.deliver(PresenceUpdate(contact, user, presence)).addErrback(refused)

    # -- messages ----------------------------------------------------------

    def _message(self, user: Address, nick: str, message: Message) -> Deferred[DeliveryStatus]:
        if not message.contentType.startswith("text/"):
            return fail(TooLarge(f"IRC carries text only, not {message.contentType}"))
        puppet = self.puppets.get(user)
        if puppet is None:
            if user in self.banned:
                return fail(ServiceUnavailable(self.banned[user]))
            if len(self.puppets) >= self.config.maxPuppets:
                self.log.warn(
                    "IRC {network}: {limit} puppets connected already (max_puppets); {user}'s message refused",
                    network=self.config.name,
                    limit=self.config.maxPuppets,
                    user=user,
                )
                return fail(ServiceUnavailable(f"{self.config.name} has {self.config.maxPuppets} gateway users connected already"))
            puppet = Puppet(self, user, self.endpointFactory())
            self.puppets[user] = puppet
            known = self._userPresence.get(user)
            if known is not None:
                puppet.setPresence(known)
            puppet.start()
        return puppet.sendMessage(nick, message.body)

    def fromIRC(self, puppet: Puppet, nick: str, text: str, notice: bool) -> None:
        """
        A message from C{nick} to a puppet: on to its user.
        """
        body, _ = cleanIncoming(text)
        if not body.strip():
            return
        if len(body) > self.maxBodyChars:
            body = body[: self.maxBodyChars]
        try:
            sender = Address.fromParts(nick, self.config.domain)
        except InvalidAddress:
            self.log.info("IRC {network}: a message from {nick!r} dropped: not an address", network=self.config.name, nick=nick)
            return
        d = self.router.deliver(Message(sender, puppet.user, body))

        def failed(f: Failure) -> None:
            reason = f.value.args[0] if isinstance(f.value, DeliveryError) and f.value.args else "not delivered"
            self.log.info("IRC {network}: message from {nick} to {user} not delivered: {reason}", network=self.config.name, nick=nick, user=puppet.user, reason=reason)
            if not notice and puppet.link.connection is not None:
                puppet.link.send("NOTICE", nick, f"Not delivered: {reason}"[:300]).addErrback(lambda f: None)

        d.addErrback(failed)

    def linkInfo(self) -> list[LinkInfo]:
        """
        The state of the network's connections
        (L{imgateway.core.linkinfo.LinkInfoSource}): the presence watcher's,
        then each user's puppet's (by user), then the users refused for good
        (not required: one user's, logged as an error when it happened).
        """
        name = self.config.name
        found = [_linkInfo("irc-watcher", name, self.presence.link, "idle: nobody watches anyone there")]
        for user, puppet in sorted(self.puppets.items(), key=lambda item: str(item[0])):
            found.append(_linkInfo("irc-puppet", f"{name} {user}", puppet.link, "not started"))
        for user, reason in sorted(self.banned.items(), key=lambda item: str(item[0])):
            found.append(LinkInfo("irc-puppet", f"{name} {user}", False, f"banned: {reason}", required=False))
        return found

    def puppetClosed(self, puppet: Puppet) -> None:
        if self.puppets.get(puppet.user) is puppet:
            del self.puppets[puppet.user]

    def puppetBanned(self, puppet: Puppet, reason: str) -> None:
        self.log.error("IRC {network}: the puppet of {user} is banned: {reason}", network=self.config.name, user=puppet.user, reason=reason)
        self.puppetClosed(puppet)
        self.banned[puppet.user] = puppet.banned or reason


def _linkInfo(kind: str, name: str, link: IRCLink, idle: str) -> LinkInfo:
    """
    The state of one IRC connection: registered (up: as which nick, how
    many lines wait), connecting (down: after how many failures), stopped
    (down: why), or C{idle} when not started (not required).
    """
    if link.stopped is not None:
        return LinkInfo(kind, name, False, f"stopped: {link.stopped}")
    if link.connection is not None:
        return LinkInfo(kind, name, True, f"as {link.nick}, {link.queued} line(s) waiting")
    if not link.service.running:
        return LinkInfo(kind, name, False, idle, required=False)
    return LinkInfo(kind, name, False, f"connecting ({link.failures} failed), {link.queued} line(s) waiting")


class IRCNetworkService(MultiService):
    """
    Runs one bridged network: routes its domain to its route while running.
    """

    def __init__(self, gateway: IGateway, config: IRCNetworkConfig, endpointFactory: Callable[[], IStreamClientEndpoint] | None = None) -> None:
        super().__init__()
        self.gateway = gateway
        self.config = config
        if endpointFactory is None:
            endpointFactory = lambda: clientEndpointFromString(gateway.reactor, config.endpoint)  # noqa: E731
        self.route = IRCNetworkRoute(config, gateway.router, gateway.clock, endpointFactory, gateway.config.home.maxMessageChars)
        self._routed = False

    def startService(self) -> None:
        self.gateway.router.addRoute(self.config.domain, self.route)
        self._routed = True
        super().startService()

    def linkInfo(self) -> list[LinkInfo]:
        """
        The state of the network's connections (L{IRCNetworkRoute.linkInfo}):
        what the operator's console, C{/healthz} and C{/metrics} show.
        """
        return self.route.linkInfo()

    def stopService(self) -> Deferred[None]:
        if self._routed:
            self.gateway.router.removeRoute(self.config.domain)
            self._routed = False
        super().stopService()
        return self.route.stop()


def makeNetworkServices(gateway: IGateway, networks: Iterable[IRCNetworkConfig]) -> MultiService:
    """
    The bridge's service, for the IRC adapter's C{makeService}: one child
    per network.

    @raise ConfigError: If a network's domain is the gateway's own.
    """
    top = MultiService()
    for config in networks:
        if config.domain == gateway.domain:
            raise ConfigError(f"IRC network {config.name}: {config.domain} is this gateway's own domain")
        IRCNetworkService(gateway, config).setServiceParent(top)
    return top
