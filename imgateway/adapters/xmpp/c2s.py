# -*- test-case-name: tests.test_xmpp_c2s -*-
"""
The XMPP client-to-server face (RFC 6120, RFC 6121): standard XMPP clients
log in to the home server, as its users.

Negotiation: STARTTLS (required unless configured otherwise), SASL
(SCRAM-SHA-256, SCRAM-SHA-1, and PLAIN over TLS or loopback) through
L{imgateway.auth.sasl}, resource binding. Then each bound resource is one
home-server session: the roster is the user's contact list, presence maps
through L{imgateway.adapters.xmpp.mapping}, messages of type chat and
normal flow to and from users of any face, and the server answers XEP-0199
pings and disco#info.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import os
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from zope.interface import implementer

from imgateway import __version__
from imgateway.adapters.base import TLSHandshakeMixin
from imgateway.adapters.xmpp.adhoc import NS_COMMANDS, CommandError, commandItems, runCommand
from imgateway.adapters.xmpp.jid import InvalidJID, addressOf, jidOf, parseJID
from imgateway.adapters.xmpp.mapping import (
    ROSTER_SUBSCRIPTIONS,
    addMark,
    SUBSCRIPTION_KINDS,
    SUBSCRIPTION_TYPES,
    presenceFromXMPP,
    fillPresence,
    presenceStanzaParts,
    stanzaErrorFor,
    stanzaErrorText,
)
from imgateway.adapters.xmpp.stream import HardenedXmlStream, LightStanza, StreamLimits, xmlAttribute, xmlSafe, xmlTextElement
from imgateway.auth.sasl import SASLFailure, mechanismsFor, serverMechanism
from imgateway.core.address import Address
from imgateway.core.deadlines import Deadlines
from imgateway.core.errors import DeliveryError, InvalidAddress, QuotaExceeded, ServiceUnavailable, TooManySessions
from imgateway.core.events import Message, SubscriptionEvent, SubscriptionKind
from imgateway.core.presence import OFFLINE, Presence
from imgateway.core.records import ContactView
from imgateway.core.throttle import Admission
from imgateway.interfaces import IGateway, ISession, ISessionClient
from imgateway.malloctrim import MallocTrimmer
from imgateway.net.addresses import isLoopback
from imgateway.router.front import SERVE, UNAVAILABLE_TEXT, FrontAction, FrontDecision, decideFront, openFrontSession

__all__ = ["C2SConfig", "C2SFactory", "C2SProtocol"]

NS_CLIENT = "jabber:client"
NS_STREAMS = xmlstream.NS_STREAMS
NS_TLS = xmlstream.NS_XMPP_TLS
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_VERSION = "jabber:iq:version"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: Features announced in disco#info.
FEATURES = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, NS_COMMANDS)

#: A client's stanza: a domish tree, or one of the commonest as parsed for
#: the hot path (L{HardenedXmlStream.lightStanzas}).
_Stanza = domish.Element | LightStanza

#: Longest resourcepart we keep (clients may send longer ones; we replace them).
MAX_RESOURCE_CHARS = 256


@frozen
class C2SConfig:
    """
    The c2s part of the C{[xmpp]} table; see C{etc/imgateway.toml}.
    """

    listen: tuple[str, ...] = ("tcp:5222:interface=127.0.0.1",)
    requireTLS: bool = True
    allowPlaintextAuth: bool = False
    limits: StreamLimits = StreamLimits()
    loginTimeout: float = 60.0
    maxUnauthenticated: int = 1000
    maxAuthAttempts: int = 3
    #: Seconds between trims of the C library's heap after idle parsers
    #: were dropped (L{imgateway.malloctrim}); 0: none (the file's
    #: C{malloc_trim_seconds} sets it).
    mallocTrimSeconds: float = 0.0


class _Authenticator(xmlstream.Authenticator):
    """
    Makes the stream the receiving one; the protocol handles the stream
    headers itself (L{C2SProtocol.onDocumentStart}). Twisted's
    C{ListenAuthenticator} is not used: it interns the untrusted C{to}
    attribute.
    """

    def associateWithStream(self, xs: Any) -> None:
        super().associateWithStream(xs)
        xs.initiating = False


@implementer(ISessionClient, IHandshakeListener)
class C2SProtocol(HardenedXmlStream, TLSHandshakeMixin):
    """
    One XMPP client connection.

    @ivar session: The home-server session, once a resource is bound.
    @ivar fullJID: The bound full JID.
    """

    log = Logger()
    factory: C2SFactory
    #: The SASL mechanism of the last <auth/>, for /metrics.
    mechanismName = "none"
    #: The commonest stanzas are parsed without domish trees.
    lightStanzas = True

    def __init__(self, gateway: IGateway, config: C2SConfig, clock: IReactorTime, tls: Any | None) -> None:
        super().__init__(_Authenticator(), config.limits, clock)
        self.gateway = gateway
        self.config = config
        self._tlsOptions = tls
        self.namespace = NS_CLIENT
        self.address: Address | None = None
        self.session: ISession | None = None
        self.fullJID: JID | None = None
        self.sessionLabel = ""
        self._mechanism: Any = None
        self._authFailures = 0
        # Its login_timeout and the renewal of its presence lease run on
        # the factory's shared timers (loginTimers, refreshTimers): no
        # delayed call of its own.
        self._available = False
        self._presence: Presence = OFFLINE
        self._counted = False
        self._admission: Admission | None = None
        self._ids = itertools.count(1)
        self._closed = False
        self._away: FrontDecision | None = None
        self._decision: FrontDecision = SERVE
        # The bound JID as a "to" attribute, and the JID it was made for.
        self._toFor: JID | None = None
        self._toText = ""
        # Whether the peer is on this host, once asked (_plainAllowed).
        self._loopback: bool | None = None

    # -- connection --------------------------------------------------------------

    @property
    def _t(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        super().connectionMade()
        f = self.factory
        f.connections.add(self)
        if ITCPTransport.providedBy(self.transport):
            self._t.setTcpNoDelay(True)
        if f.unauthenticated >= self.config.maxUnauthenticated:
            # Logged once per interval with a count, as the per-source refusals.
            self.gateway.connectionLimiter.refused(
                self._t.getPeer(), "XMPP c2s", f"{self.config.maxUnauthenticated} connections waiting to log in (max_unauthenticated)"
            )
            self._failed = True
            self.closeConnection()
            return
        # Per-source limits, shared with the other faces (imgateway.core.throttle).
        self._admission = self.gateway.connectionLimiter.admit(self._t.getPeer(), "XMPP c2s")
        if not self._admission.admitted:
            self._failed = True
            self.closeConnection()
            return
        f.unauthenticated += 1
        self._counted = True
        f.loginTimers.start(self, self.config.loginTimeout)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.unauthenticated -= 1
        if self._admission is not None:
            self._admission.release()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self.address is not None and self.fullJID is None and self._away is None:
            # Authenticated, never bound: the login's line (see bound).
            self.log.info(
                "{address} authenticated from {peer} ({mechanism}); the stream closed before a resource was bound",
                address=self.address,
                peer=self._t.getPeer(),
                mechanism=self.mechanismName,
            )
        self._closed = True
        self.factory.connections.discard(self)
        self._uncount()
        self.factory.loginTimers.stop(self)
        self.factory.refreshTimers.stop(self)
        session, self.session = self.session, None
        if session is not None:
            session.close("connection lost")
        super().connectionLost(reason)

    def parserDropped(self) -> None:
        self.factory.trimmer.freed()

    def _loginTimedOut(self) -> None:
        self._uncount()
        if self.abortIfHandshakePending():
            # A stream error would wait for the handshake forever: dropped instead.
            self.log.info("Dropping c2s connection from {peer}: no TLS handshake within login_timeout", peer=self._t.getPeer())
            self._closed = True
            return
        self._fail("connection-timeout", "no login in time")

    def _fail(self, condition: str, text: str = "") -> None:
        """
        Close the stream with a stream error.
        """
        if self._closed:
            return
        self._closed = True
        self.log.info("Closing c2s stream from {peer}: {condition} {text}", peer=self._t.getPeer(), condition=condition, text=text)
        self.sendStreamError(error.StreamError(condition, text=text or None))

    @property
    def secure(self) -> bool:
        """
        Whether the stream is encrypted.
        """
        return self.tlsStarted or ISSLTransport.providedBy(self.transport)

    def _plainAllowed(self) -> bool:
        if self.secure or self.config.allowPlaintextAuth:
            return True
        if self._loopback is None:
            # The peer does not change: asked once per connection.
            self._loopback = isLoopback(self._t.getPeer())
        return self._loopback

    @property
    def _scram(self) -> bool:
        """
        Whether the SCRAM mechanisms are offered (not with a directory that
        only checks passwords given in the clear, such as LDAP).
        """
        return bool(self.gateway.authenticator.scramAvailable)

    # -- stream negotiation -----------------------------------------------------------

    def onDocumentStart(self, rootElement: domish.Element) -> None:
        """
        The client's stream header arrived: as Twisted's
        C{XmlStream.onDocumentStart} and its authenticator's
        C{streamStarted} (the lower of the two versions is the stream's),
        then L{streamStarted}. Twisted also dispatches the stream's start
        and adds a one-time observer of stream errors at every header:
        nothing observes a c2s stream (L{elementReceived} handles every
        element, stream errors too), so neither is done, and no observer
        piles up at each restart.
        """
        self.version = min(self.version, _streamVersion(rootElement.attributes.get("version")))
        self.streamStarted(rootElement)

    def sendHeader(self) -> None:
        """
        Send our stream header: what Twisted's C{XmlStream.sendHeader}
        sends (tests compare), serialised here rather than built as a
        L{domish.Element} at every header.
        """
        # The prefix of the streams namespace is the only one declared.
        header = f"<stream:stream xmlns:stream='{NS_STREAMS}' xmlns='{xmlAttribute(self.namespace)}'"
        if self.otherEntity:
            header += f" to='{xmlAttribute(self.otherEntity.userhost())}'"
        if self.thisEntity:
            header += f" from='{xmlAttribute(self.thisEntity.userhost())}'"
        if not self.initiating and self.sid:
            header += f" id='{xmlAttribute(self.sid)}'"
        if self.version >= (1, 0):
            header += " version='%d.%d'>" % self.version
        else:
            header += ">"
        self.sendSerialised(header)
        self._headerSent = True

    def streamStarted(self, root: domish.Element) -> None:
        """
        The client's stream header arrived: check it, answer with ours and
        the features that fit this stage.
        """
        self.sid = os.urandom(8).hex()  # type: ignore[assignment]
        # The domain's JID, prepared once (parseJID's cache), not per header.
        self.thisEntity = parseJID(self.gateway.domain)  # type: ignore[assignment]
        self.prefixes = {NS_STREAMS: "stream"}
        if root.uri != NS_STREAMS or root.name != "stream":
            self._fail("invalid-namespace")
            return
        if root.defaultUri != NS_CLIENT:
            self._fail("invalid-namespace", "expected jabber:client")
            return
        if self.version < (1, 0):
            self._fail("unsupported-version", "XMPP 1.0 is required")
            return
        to = root.getAttribute("to")
        if not to:
            self._fail("host-unknown", "the stream header needs a 'to'")
            return
        try:
            domain = parseJID(to)
        except InvalidJID:
            self._fail("host-unknown")
            return
        if domain.user or domain.resource or domain.host != self.gateway.domain:
            self._fail("host-unknown", f"this server serves {self.gateway.domain}")
            return
        self.sendHeader()
        if self._away is not None:
            self._sendAway(self._away)
            return
        self._sendFeatures()

    def _sendAway(self, decision: FrontDecision) -> None:
        """
        Close the restarted stream of a user this router does not serve
        here (L{imgateway.router.front}): with C{<see-other-host/>} naming
        the home server (RFC 6120 section 4.9.3.19), or C{<policy-violation/>}.
        """
        self._closed = True
        if decision.action is FrontAction.REDIRECT:
            streamError: error.StreamError = _SeeOtherHost(str(decision.location))
        else:
            streamError = error.StreamError("policy-violation", text=UNAVAILABLE_TEXT)
        self.sendStreamError(streamError)

    def _sendFeatures(self) -> None:
        """
        Send the features that fit this stage: serialised once per listener
        for each combination of what they depend on
        (L{C2SFactory.featuresText}), not built and serialised per stream.
        """
        key = (self.address is None, self.authenticated, self.secure, self._tlsOptions is not None, self._plainAllowed(), self._scram)
        cache = self.factory.featuresText
        text = cache.get(key)
        if text is None:
            text = cache[key] = xmlSafe(
                self._features().toXml(
                    prefixes=self.prefixes, defaultUri=self.namespace, prefixesInScope=list(self.prefixes.values())
                )
            )
        self.sendSerialised(text)

    def _features(self) -> domish.Element:
        features = domish.Element((NS_STREAMS, "features"))
        # XEP-0478: the stanza cap in force, and until login the time left
        # to log in (the stream is not closed for idleness afterwards).
        features.addChild(self.limitsFeature(self.config.loginTimeout if self.address is None else None))
        if self.address is None:
            if not self.secure and self._tlsOptions is not None:
                starttls = features.addElement((NS_TLS, "starttls"))
                if self.config.requireTLS:
                    starttls.addElement("required")
            if self.secure or not self.config.requireTLS:
                mechanisms = features.addElement((NS_SASL, "mechanisms"))
                for name in mechanismsFor(self.secure, self._plainAllowed(), self._scram):
                    mechanisms.addElement("mechanism", content=name)
        else:
            features.addElement((NS_BIND, "bind"))
            features.addElement((NS_SESSION, "session")).addElement("optional")
        return features

    def stanzaReceived(self, element: domish.Element | LightStanza) -> None:
        if not isinstance(element, LightStanza):
            self.elementReceived(element)
            return
        # A <message> or <presence> of jabber:client, handled as
        # elementReceived's last branch handles them.
        if self._closed:
            return
        if self.address is None:
            self._fail("not-authorized", "log in first")
        elif self.session is None:
            self._fail("not-authorized", "bind a resource first")
        else:
            # As _stanza.
            try:
                if element.name == "message":
                    self._message(element)
                else:
                    self._presence_(element)
            except InvalidJID as e:
                self._error(element, "jid-malformed", "modify", str(e))

    def elementReceived(self, element: domish.Element) -> None:
        if self._closed:
            return
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "error":
            self.log.info("Client {peer} closed its stream with an error: {error}", peer=self._t.getPeer(), error=element.toXml()[:200])
            self._closed = True
            self.closeConnection()
        elif uri == NS_TLS and name == "starttls":
            self._startTLS()
        elif uri == NS_SASL:
            self._sasl(element)
        elif uri == NS_CLIENT and name in ("iq", "message", "presence"):
            if self.address is None:
                self._fail("not-authorized", "log in first")
            elif self.session is None:
                if name == "iq":
                    self._iqBeforeBind(element)
                else:
                    self._fail("not-authorized", "bind a resource first")
            else:
                self._stanza(element)
        else:
            self._fail("unsupported-stanza-type", f"{name} is not understood here")

    def _startTLS(self) -> None:
        if self._tlsOptions is None or self.secure or self.address is not None:
            self.send(domish.Element((NS_TLS, "failure")))
            self._closed = True
            self.sendFooter()
            self.closeConnection()
            return
        self.send(domish.Element((NS_TLS, "proceed")))
        self.startTLS(self._tlsOptions)
        # The restart drops whatever the client sent after <starttls/>
        # before the handshake: in this read (the old parser's events no
        # longer count) and in the queue (CVE-2011-0411).
        self.reset()

    def _sasl(self, element: domish.Element) -> None:
        if self.address is not None or (self.config.requireTLS and not self.secure):
            self._fail("policy-violation" if self.address is None else "not-authorized", "encrypt the stream first")
            return
        name = element.name
        try:
            if name == "auth":
                mechanism = element.getAttribute("mechanism") or ""
                if mechanism not in mechanismsFor(True, True, self._scram):
                    raise SASLFailure("invalid-mechanism")
                self.mechanismName = mechanism
                if mechanism not in mechanismsFor(self.secure, self._plainAllowed(), self._scram):
                    raise SASLFailure("encryption-required")
                self._mechanism = serverMechanism(
                    mechanism,
                    self.gateway.authenticator,
                    self.gateway.domain,
                    self.secure,
                    allowPlaintext=self._plainAllowed(),
                    peer=self._t.getPeer(),
                )
                data = _b64decode(str(element))
            elif name == "response":
                if self._mechanism is None:
                    raise SASLFailure("malformed-request", "no exchange in progress")
                data = _b64decode(str(element)) or b""
            elif name == "abort":
                if self._mechanism is not None:
                    self._mechanism.abort()
                self._mechanism = None
                raise SASLFailure("aborted")
            else:
                raise SASLFailure("malformed-request")
            # The outcome at once when the mechanism has it (a SCRAM
            # client-final message): no Deferred on the way.
            outcome = self._mechanism.stepAtOnce(data)
        except SASLFailure as e:
            self._saslFailed(Failure(e))
            return
        if isinstance(outcome, Deferred):
            outcome.addCallbacks(self._saslStepped, self._saslFailed)
        else:
            self._saslStepped(outcome)

    def _saslStepped(self, step: Any) -> None:
        if self._closed:
            return
        if not step.complete:
            # Serialised here (base64 needs no escaping), not through domish.
            self.sendSerialised(f"<challenge xmlns='{NS_SASL}'>{_b64encode(step.challenge or b'')}</challenge>")
            return
        self._mechanism = None
        decided = decideFront(
            self.gateway.config, self.gateway.locator, step.address, self._t.getPeer(), "xmpp", self.gateway.proxy is not None
        )
        decided.addCallbacks(self._authenticated, self._saslFailed, (step,))

    def _authenticated(self, decision: FrontDecision, step: Any) -> None:
        if self._closed:
            return
        if decision.action in (FrontAction.SERVE, FrontAction.PROXY):
            # Served here: by a session on this home server or proxied to
            # the user's own (opened at bind).
            self._decision = decision
        else:
            # Sent at the restarted stream's header (docs/operations.md,
            # "Router faces").
            self._away = decision
        self.address = step.address
        if step.challenge:
            self.sendSerialised(f"<success xmlns='{NS_SASL}'>{_b64encode(step.challenge)}</success>")
        else:
            self.sendSerialised(f"<success xmlns='{NS_SASL}'/>")
        self.setAuthenticated()
        # Logged with the bind (one line per login), or when the stream
        # closes unbound (connectionLost); a user sent away is logged by
        # decideFront.
        self.reset()

    def _saslFailed(self, f: Failure) -> None:
        self._mechanism = None
        if self._closed:
            return
        if f.check(SASLFailure):
            condition = f.value.condition  # type: ignore[union-attr]
        else:
            self.log.failure("SASL error", f)
            condition = "temporary-auth-failure"
        failure = domish.Element((NS_SASL, "failure"))
        failure.addElement(condition)
        if f.check(SASLFailure) and f.value.retryAfter is not None:  # type: ignore[union-attr]
            failure.addElement("text", content=f.value.text)  # type: ignore[union-attr]
        self.send(failure)
        if condition == "aborted":
            return
        self._authFailures += 1
        self.gateway.metrics.loginFailed("xmpp", self.mechanismName, condition)
        self.log.info("c2s authentication failed from {peer}: {condition}", peer=self._t.getPeer(), condition=condition)
        if self._authFailures >= self.config.maxAuthAttempts:
            self._fail("policy-violation", "too many failed logins")

    def _iqBeforeBind(self, iq: domish.Element) -> None:
        bind = _child(iq, NS_BIND, "bind")
        if iq.getAttribute("type") != "set" or bind is None:
            self._error(iq, "not-authorized", "auth", "bind a resource first")
            return
        resource = None
        requested = _child(bind, NS_BIND, "resource")
        if requested is not None and str(requested).strip():
            try:
                resource = parseJID(f"x@{self.gateway.domain}/{str(requested).strip()}").resource
            except InvalidJID:
                self._error(iq, "bad-request", "modify", "invalid resource")
                return
            if resource is not None and len(resource) > MAX_RESOURCE_CHARS:
                resource = None
        assert self.address is not None
        # The home server makes the label unique among the user's sessions
        # (IHomeServer.openSession): the bound resource is the session's
        # label, which may differ from the one asked for.
        self.sessionLabel = resource or "imgateway-" + binascii.hexlify(os.urandom(4)).decode()
        d = openFrontSession(self.gateway, self._decision, self.address, self)

        def bound(session: ISession) -> None:
            if self._closed:
                session.close("connection lost during bind")
                return
            self.session = session
            self.gateway.metrics.loggedIn("xmpp", self.mechanismName, session)
            self._uncount()
            self.factory.loginTimers.stop(self)
            assert self.address is not None
            self.sessionLabel = session.label
            self.fullJID = jidOf(self.address, session.label)
            # As xmlstream.toResponse(iq, "result") with the bound JID,
            # serialised here rather than through domish.
            self.sendSerialised(
                f"<iq{_responseAttributes(iq)} type='result'><bind xmlns='{NS_BIND}'>"
                f"{xmlTextElement('jid', self.fullJID.full())}</bind></iq>"
            )
            self.log.info(
                "{address} authenticated from {peer} ({mechanism}) and bound {jid} as session {session}",
                address=self.address,
                peer=self._t.getPeer(),
                mechanism=self.mechanismName,
                jid=self.fullJID.full(),
                session=session.sessionId,
            )

        def failed(f: Failure) -> None:
            if f.check(TooManySessions):
                self._error(iq, "resource-constraint", "wait", "too many sessions for this account")
            elif f.check(ServiceUnavailable):
                # A proxied session's home server cannot be reached now.
                self.log.info("Binding a resource for {peer} failed: {error}", peer=self._t.getPeer(), error=f.getErrorMessage())
                self._error(iq, "service-unavailable", "wait", "your home server is unavailable")
            else:
                self.log.failure("Binding a resource", f)
                self._error(iq, "internal-server-error", "cancel")

        d.addCallbacks(bound, failed)

    # -- stanzas after binding ----------------------------------------------------------

    @property
    def _session(self) -> ISession:
        assert self.session is not None
        return self.session

    def _stanza(self, stanza: _Stanza) -> None:
        name = stanza.name
        try:
            if name == "message":
                self._message(stanza)
            elif name == "presence":
                self._presence_(stanza)
            else:
                self._iq(stanza.element() if isinstance(stanza, LightStanza) else stanza)
        except InvalidJID as e:
            self._error(stanza, "jid-malformed", "modify", str(e))

    def _to(self, stanza: domish.Element) -> JID | None:
        to = stanza.getAttribute("to")
        return parseJID(to) if to else None

    def _message(self, stanza: _Stanza) -> None:
        attributes = stanza.attributes
        kind = attributes.get("type") or "normal"
        if kind == "error":
            return
        to = attributes.get("to")
        jid = parseJID(to) if to else None
        if jid is None or jid.user is None:
            self._error(stanza, "service-unavailable", "cancel")
            return
        if kind == "groupchat":
            self._error(stanza, "service-unavailable", "cancel", "group chat is not offered here")
            return
        body = _childText(stanza, "body")
        if body is None or kind == "headline":
            return  # chat states, receipts, headlines: nothing to deliver
        recipient = addressOf(jid)
        messageId = attributes.get("id")
        ours = messageId if messageId and len(messageId) <= 128 and messageId.isprintable() and " " not in messageId else None
        session = self._session
        # The outcome without a Deferred when the home server has it at
        # once (a recipient in this process), or tells it later through a
        # call (a recipient on another home server, over a link), as the
        # native face's MESSAGE: the session's optional fast paths
        # (IAnsweringSession, then IAtOnceSession), looked up by name (no
        # interface test per message).
        then = getattr(session, "sendMessageThen", None)
        if then is not None:
            try:
                outcome = then(self._messageOutcome, stanza, recipient, body, "text/plain", ours)
            except BaseException:
                self._deliveryFailed(Failure(), stanza)
                return
            if isinstance(outcome, Deferred):
                outcome.addErrback(self._deliveryFailed, stanza)
            return
        atOnce = getattr(session, "sendMessageAtOnce", None)
        if atOnce is None:
            session.sendMessage(recipient, body, "text/plain", ours).addErrback(self._deliveryFailed, stanza)
            return
        try:
            outcome = atOnce(recipient, body, "text/plain", ours)
        except BaseException:
            self._deliveryFailed(Failure(), stanza)
            return
        if isinstance(outcome, Deferred):
            outcome.addErrback(self._deliveryFailed, stanza)

    def _messageOutcome(self, outcome: object, stanza: _Stanza, messageId: str | None) -> None:
        """
        The outcome of a message sent with C{sendMessageThen}
        (L{IAnsweringSession<imgateway.interfaces.IAnsweringSession>}'s
        C{answer}), told later:
        a failure answered as the L{Deferred}'s errback answers it.
        """
        if isinstance(outcome, Failure):
            self._deliveryFailed(outcome, stanza)

    def _deliveryFailed(self, f: Failure, stanza: _Stanza) -> None:
        if f.check(DeliveryError):
            spec, content = stanzaErrorFor(f.value)  # type: ignore[arg-type]
            self._error(stanza, spec.condition, spec.type, stanzaErrorText(f.value), content)  # type: ignore[arg-type]
        elif f.check(InvalidAddress, ValueError):
            self._error(stanza, "bad-request", "modify", str(f.value))
        else:
            self.log.failure("Delivering a message from {jid}", f, jid=self.fullJID)
            self._error(stanza, "internal-server-error", "cancel")

    def _presence_(self, stanza: _Stanza) -> None:
        attributes = stanza.attributes
        kind = attributes.get("type")
        to = attributes.get("to")
        jid = parseJID(to) if to else None
        if jid is not None and kind in SUBSCRIPTION_KINDS:
            self._subscription(SUBSCRIPTION_KINDS[kind], addressOf(jid))
            return
        if jid is not None or kind not in (None, "unavailable"):
            return  # directed presence, probes, errors: not offered
        show = _childText(stanza, "show")
        status = _childText(stanza, "status")
        presence = presenceFromXMPP(kind is None, show.strip() if show is not None else None, status if status is not None else "")
        self._publish(presence)
        if kind is None and not self._available:
            self._available = True
            self._sendInitialState()
        elif kind == "unavailable":
            self._available = False

    def _publish(self, presence: Presence) -> None:
        self._presence = presence
        granted = self._session.publish(presence)
        if presence != OFFLINE:
            # An XMPP presence lasts as long as the stream: renew the lease.
            self.factory.refreshTimers.start(self, granted * 0.8)
        else:
            self.factory.refreshTimers.stop(self)

    def _republish(self) -> None:
        if self.session is not None:
            self._publish(self._presence)

    def _sendInitialState(self) -> None:
        """
        After the client's initial presence: its contacts' presence and the
        subscription requests waiting for an answer (RFC 6121 4.4.2, 3.1.3).
        """
        session = self._session

        def contacts(views: list[ContactView]) -> None:
            for view in views:
                if view.presence.isOpen:
                    self.presenceReceived(view.address, view.presence)

        def requests(watchers: list[Address]) -> None:
            for watcher in watchers:
                self._sendSubscription(watcher, SubscriptionKind.SUBSCRIBE)

        session.contacts().addCallback(contacts).addErrback(self._logFailure, "sending contacts' presence")
        session.pendingRequests().addCallback(requests).addErrback(self._logFailure, "sending pending requests")

    def _subscription(self, kind: SubscriptionKind, other: Address) -> None:
        session = self._session
        if kind is SubscriptionKind.SUBSCRIBE:
            d: Deferred[Any] = session.subscribe(other)
        elif kind is SubscriptionKind.AUTHORISE:
            d = session.authorise(other, True)
        elif kind is SubscriptionKind.REFUSE:
            d = session.authorise(other, False)
        else:
            d = session.unsubscribe(other)
        d.addErrback(self._subscriptionFailed, kind, other)

    def _subscriptionFailed(self, f: Failure, kind: SubscriptionKind, other: Address) -> None:
        if f.check(DeliveryError, InvalidAddress):
            # RFC 6121 3.1.3: an undeliverable request is answered as refused.
            if kind is SubscriptionKind.SUBSCRIBE:
                self._sendSubscription(other, SubscriptionKind.REFUSE)
            return
        self._logFailure(f, "handling a subscription")

    def _iq(self, iq: domish.Element) -> None:
        kind = iq.getAttribute("type")
        if kind in ("result", "error"):
            return
        if kind not in ("get", "set") or not iq.getAttribute("id"):
            self._error(iq, "bad-request", "modify")
            return
        to = self._to(iq)
        assert self.address is not None
        if to is not None and not (to.user is None and to.host == self.gateway.domain) and not (to.resource is None and to.user is not None and addressOf(to) == self.address):
            self._error(iq, "service-unavailable", "cancel")
            return
        child = iq.firstChildElement()
        if child is None:
            self._error(iq, "bad-request", "modify")
            return
        key = (kind, child.uri, child.name)
        if key == ("get", NS_PING, "ping"):
            self.send(xmlstream.toResponse(iq, "result"))
        elif key == ("get", NS_DISCO_INFO, "query"):
            reply = xmlstream.toResponse(iq, "result")
            query = reply.addElement((NS_DISCO_INFO, "query"))
            identity = query.addElement("identity")
            if to is not None and to.user is not None:
                identity["category"], identity["type"] = "account", "registered"
            else:
                identity["category"], identity["type"], identity["name"] = "server", "im", "imgateway"
            for feature in FEATURES:
                query.addElement("feature")["var"] = feature
            self.send(reply)
        elif key == ("get", NS_DISCO_ITEMS, "query"):
            reply = xmlstream.toResponse(iq, "result")
            query = reply.addElement((NS_DISCO_ITEMS, "query"))
            if child.getAttribute("node") == NS_COMMANDS and (to is None or to.user is None):
                # XEP-0050: the commands are items of the domain's JID.
                query["node"] = NS_COMMANDS
                commandItems(query, self.gateway.domain)
            self.send(reply)
        elif key == ("set", NS_COMMANDS, "command"):
            self._command(iq, child)
        elif key == ("get", NS_VERSION, "query"):
            reply = xmlstream.toResponse(iq, "result")
            query = reply.addElement((NS_VERSION, "query"))
            query.addElement("name", content="imgateway")
            query.addElement("version", content=__version__)
            self.send(reply)
        elif key == ("set", NS_SESSION, "session"):
            self.send(xmlstream.toResponse(iq, "result"))
        elif child.uri == NS_ROSTER and child.name == "query":
            self._roster(iq, kind, child)
        else:
            self._error(iq, "service-unavailable", "cancel")

    def _command(self, iq: domish.Element, command: domish.Element) -> None:
        """
        An ad-hoc command (XEP-0050, L{imgateway.adapters.xmpp.adhoc}): the
        user's presence rules.
        """

        def answered(answer: domish.Element) -> None:
            reply = xmlstream.toResponse(iq, "result")
            reply.addChild(answer)
            self.send(reply)

        def failed(f: Failure) -> None:
            if f.check(CommandError):
                e = f.value
                assert isinstance(e, CommandError)
                self._error(iq, e.condition, "modify" if e.condition == "bad-request" else "cancel", str(e), specific=e.specific)
            elif f.check(QuotaExceeded):
                self._error(iq, "not-allowed", "cancel", str(f.value))
            elif f.check(ValueError, InvalidAddress):
                self._error(iq, "bad-request", "modify", str(f.value), specific="bad-payload")
            else:
                self.log.failure("Running command {node} for {jid}", f, node=command.getAttribute("node"), jid=self.fullJID)
                self._error(iq, "internal-server-error", "cancel")

        maybeDeferred(runCommand, self._session, command).addCallbacks(answered, failed)

    def _roster(self, iq: domish.Element, kind: str, query: domish.Element) -> None:
        session = self._session
        if kind == "get":

            def got(views: list[ContactView]) -> None:
                # As toResponse(iq, "result") with a query of _rosterItem()s,
                # serialised here in one piece rather than through domish.
                items = "".join(map(_rosterItemText, views))
                query = f"<query xmlns='{NS_ROSTER}'>{items}</query>" if items else f"<query xmlns='{NS_ROSTER}'/>"
                self.sendSerialised(f"<iq{_responseAttributes(iq)} type='result'>{query}</iq>")

            session.contacts().addCallbacks(got, self._iqFailed, errbackArgs=(iq,))
            return
        items = [e for e in query.elements(NS_ROSTER, "item")]
        if len(items) != 1:
            self._error(iq, "bad-request", "modify", "one item per roster set")
            return
        item = items[0]
        contact = addressOf(parseJID(item.getAttribute("jid") or ""))
        if item.getAttribute("subscription") == "remove":
            d: Deferred[Any] = session.unsubscribe(contact)
            d.addCallback(lambda _: session.authorise(contact, False))
        else:
            name = " ".join((item.getAttribute("name") or "").split())[:256]
            d = session.putContact(contact, name)
        d.addCallbacks(lambda _: self.send(xmlstream.toResponse(iq, "result")), self._iqFailed, errbackArgs=(iq,))

    def _iqFailed(self, f: Failure, iq: domish.Element) -> None:
        if f.check(InvalidAddress, ValueError):
            self._error(iq, "bad-request", "modify", str(f.value))
        elif f.check(DeliveryError):
            spec, content = stanzaErrorFor(f.value)  # type: ignore[arg-type]
            self._error(iq, spec.condition, spec.type, stanzaErrorText(f.value), content)  # type: ignore[arg-type]
        else:
            self.log.failure("Handling an IQ from {jid}", f, jid=self.fullJID)
            self._error(iq, "internal-server-error", "cancel")

    def _logFailure(self, f: Failure, doing: str) -> None:
        if f.check(ServiceUnavailable):
            # The home server is stopping, or a proxied session's home
            # server went away (imgateway.router.proxy): expected, no bug.
            self.log.info("{doing} for {jid} failed: {error}", doing=doing.capitalize(), jid=self.fullJID, error=f.getErrorMessage())
            return
        self.log.failure("While {doing} for {jid}", f, doing=doing, jid=self.fullJID)

    def _error(
        self,
        stanza: _Stanza,
        condition: str,
        kind: str,
        text: str | None = None,
        content: str | None = None,
        specific: str | None = None,
    ) -> None:
        """
        Answer a stanza with a stanza error (never an error with an error).

        @param specific: An ad-hoc command's specific condition (XEP-0050).
        """
        if stanza.getAttribute("type") == "error" or self._closed:
            return
        if isinstance(stanza, LightStanza):
            stanza = stanza.element()
        reply = error.StanzaError(condition, kind, text or None).toResponse(stanza)
        if content:
            for e in reply.elements(NS_CLIENT, "error"):
                for c in e.elements(NS_STANZAS, condition):
                    c.addContent(content)
        if specific:
            for e in reply.elements():
                if e.name == "error":
                    e.addElement((NS_COMMANDS, specific))
        if self.fullJID is not None and not reply.getAttribute("to"):
            reply["to"] = self.fullJID.full()
        self.send(reply)

    # -- ISessionClient ----------------------------------------------------------------

    def _stanzaTo(self, name: str, sender: Address) -> domish.Element:
        stanza = domish.Element((NS_CLIENT, name))
        stanza["from"] = str(sender)
        if self.fullJID is not None:
            stanza["to"] = self.fullJID.full()
        return stanza

    def _toAttribute(self) -> str:
        """
        C{" to='<full JID>'"} for the stanzas sent to this client, escaped
        once per bound JID; empty before binding.
        """
        jid = self.fullJID
        if jid is None:
            return ""
        if self._toFor is not jid:
            self._toFor = jid
            self._toText = f" to='{xmlAttribute(jid.full())}'"
        return self._toText

    def messageReceived(self, message: Message) -> Deferred[None]:
        if message.mark is not None:
            self.send(_messageElement(message, self.fullJID))
        else:
            # The hot path: serialised as the domish path above would,
            # without building an element (tests.test_xmpp_c2s checks both
            # give the same text).
            self.sendSerialised(
                f"<message from='{_addressAttribute(message.sender)}'{self._toAttribute()} type='chat' "
                f"id='{xmlAttribute(message.messageId)}'>{xmlTextElement('body', message.body)}</message>"
            )
        return succeed(None)

    def presenceReceived(self, sender: Address, presence: Presence) -> Deferred[None]:
        if not self._available or sender == self.address:
            return succeed(None)
        # Serialised once per fan-out (the parts are cached), not once per
        # recipient: only the recipient's address differs.
        last = _lastPresence
        if last.sender is sender and last.presence is presence:
            head, tail = last.head, last.tail
        else:
            head, tail = presenceStanzaParts(sender, presence)
            last.sender, last.presence, last.head, last.tail = sender, presence, head, tail
        self.sendSerialised(head + self._toAttribute() + tail)
        return succeed(None)

    def subscriptionReceived(self, event: SubscriptionEvent) -> Deferred[None]:
        self._sendSubscription(event.sender, event.kind)
        return succeed(None)

    def _sendSubscription(self, other: Address, kind: SubscriptionKind) -> None:
        stanza = self._stanzaTo("presence", other)
        stanza["type"] = SUBSCRIPTION_TYPES[kind]
        self.send(stanza)

    def _rosterPush(self, item: domish.Element) -> None:
        if self.fullJID is None:
            return
        push = domish.Element((NS_CLIENT, "iq"))
        push["type"] = "set"
        push["id"] = f"push{next(self._ids)}"
        push["to"] = self.fullJID.full()
        push.addElement((NS_ROSTER, "query")).addChild(item)
        self.send(push)

    def contactUpdated(self, contact: ContactView) -> Deferred[None]:
        self._rosterPush(_rosterItem(contact))
        return succeed(None)

    def contactRemoved(self, contact: Address) -> Deferred[None]:
        item = domish.Element((NS_ROSTER, "item"))
        item["jid"] = str(contact)
        item["subscription"] = "remove"
        self._rosterPush(item)
        return succeed(None)

    def sessionClosed(self, reason: str) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close(reason)
        if reason == "shutdown":
            self._fail("system-shutdown")
        else:
            self._fail("reset", reason)


def _streamVersion(text: str | None) -> tuple[int, int]:
    """
    The version of a stream header's C{version} attribute, as Twisted's
    authenticator reads it: C{(0, 0)} when it is absent or unreadable.
    """
    if text is None:
        return (0, 0)
    parts = text.split(".")
    try:
        return (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return (0, 0)


class _SeeOtherHost(error.StreamError):
    """
    The C{<see-other-host/>} stream error, whose element holds where to
    connect (Twisted's L{error.StreamError} puts no text in its condition).
    """

    def __init__(self, location: str) -> None:
        super().__init__("see-other-host")
        self.location = location

    def getElement(self) -> domish.Element:
        element: domish.Element = super().getElement()
        condition = element.firstChildElement()
        assert condition is not None
        condition.addContent(self.location)
        return element


def _messageElement(message: Message, to: JID | None) -> domish.Element:
    """
    A message to a client as a L{domish.Element}: the path of a marked
    message (L{addMark}), and what L{C2SProtocol.messageReceived}'s
    serialised path must equal.
    """
    stanza = domish.Element((NS_CLIENT, "message"))
    stanza["from"] = str(message.sender)
    if to is not None:
        stanza["to"] = to.full()
    stanza["type"] = "chat"
    stanza["id"] = message.messageId
    stanza.addElement("body", content=xmlSafe(message.body))
    addMark(stanza, message.mark)
    return stanza


def _presenceElement(sender: Address, presence: Presence, to: JID | None) -> domish.Element:
    """
    A presence to a client as a L{domish.Element}: what
    L{C2SProtocol.presenceReceived}'s serialised path must equal.
    """
    stanza = domish.Element((NS_CLIENT, "presence"))
    stanza["from"] = str(sender)
    if to is not None:
        stanza["to"] = to.full()
    fillPresence(stanza, presence)
    return stanza


class _LastPresence:
    """
    The parts of the presence stanza last serialised
    (L{presenceStanzaParts}), for the next recipient of the same fan-out:
    the home server hands every recipient the same sender and presence
    objects (immutable values), so two identity checks find them, without
    hashing both for the cache.
    """

    __slots__ = ("sender", "presence", "head", "tail")

    def __init__(self) -> None:
        self.sender: Address | None = None
        self.presence: Presence | None = None
        self.head = self.tail = ""


_lastPresence = _LastPresence()


#: How many senders' C{from} attributes L{_addressAttribute} remembers.
ADDRESS_ATTRIBUTE_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=ADDRESS_ATTRIBUTE_CACHE_SIZE)
def _addressAttribute(address: Address) -> str:
    """
    An address as the escaped value of a C{from} attribute, made once per
    address (a bounded cache: addresses are immutable values).
    """
    return xmlAttribute(str(address))


def _rosterItem(view: ContactView) -> domish.Element:
    item = domish.Element((NS_ROSTER, "item"))
    item["jid"] = str(view.address)
    if view.displayName:
        item["name"] = xmlSafe(view.displayName)
    item["subscription"] = ROSTER_SUBSCRIPTIONS[view.subscription]
    if view.pending:
        item["ask"] = "subscribe"
    return item


def _rosterItemText(view: ContactView) -> str:
    """
    L{_rosterItem} serialised as a child of the roster's C{<query/>}.
    """
    name = f" name='{xmlAttribute(view.displayName)}'" if view.displayName else ""
    ask = " ask='subscribe'" if view.pending else ""
    return (
        f"<item jid='{xmlAttribute(str(view.address))}'{name}"
        f" subscription='{ROSTER_SUBSCRIPTIONS[view.subscription]}'{ask}/>"
    )


def _child(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    for child in element.elements(uri, name):
        return child  # type: ignore[no-any-return]
    return None


def _childText(stanza: _Stanza, name: str) -> str | None:
    """
    The text of a stanza's first child C{name} of C{jabber:client} (its
    first text, C{""} when it holds none), or C{None} without such a child.
    """
    if isinstance(stanza, LightStanza):
        return stanza.childText(name)
    child = _child(stanza, NS_CLIENT, name)
    return None if child is None else str(child)


def _b64decode(text: str) -> bytes | None:
    """
    SASL data from XML: C{=} is an empty response, nothing is no initial
    response (RFC 6120 6.4.2).
    """
    text = text.strip()
    if not text:
        return None
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("incorrect-encoding") from None


def _responseAttributes(stanza: domish.Element) -> str:
    """
    The addressing and C{id} attributes of a response to C{stanza}, as
    L{xmlstream.toResponse} sets them (C{to} and C{from} swapped, C{id}
    copied), serialised and escaped, each after a space.
    """
    out = ""
    for name, value in (("to", stanza.getAttribute("from")), ("from", stanza.getAttribute("to")), ("id", stanza.getAttribute("id"))):
        if value:
            out += f" {name}='{xmlAttribute(value)}'"
    return out


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else "="


class C2SFactory(ServerFactory):
    """
    Builds L{C2SProtocol}s for the c2s listeners.

    @ivar unauthenticated: Connections that have not bound a resource.
    @ivar connections: Open connections.
    """

    def __init__(self, gateway: IGateway, config: C2SConfig, tls: IOpenSSLServerConnectionCreator | Any | None, clock: IReactorTime | None = None) -> None:
        self.gateway = gateway
        self.config = config
        self.tls = tls
        self.clock = clock if clock is not None else gateway.clock
        self.unauthenticated = 0
        self.connections: set[C2SProtocol] = set()
        # The connections' login_timeout timers and the renewals of their
        # presence leases: one delayed call for all (per distinct delay).
        self.loginTimers: Deadlines[C2SProtocol] = Deadlines(self.clock, C2SProtocol._loginTimedOut)
        self.refreshTimers: Deadlines[C2SProtocol] = Deadlines(self.clock, C2SProtocol._republish)
        # Gives the memory of dropped parsers back to the system.
        self.trimmer = MallocTrimmer(self.clock, config.mallocTrimSeconds)
        #: The serialised stream features, by what they depend on (stage,
        #: stanza cap, TLS, mechanisms offered): a handful of entries.
        self.featuresText: dict[tuple[bool, ...], str] = {}

    def sayGoodbye(self) -> None:
        """
        Close every stream with C{system-shutdown}.
        """
        for protocol in list(self.connections):
            protocol.sessionClosed("shutdown")
        self.trimmer.stop()

    def buildProtocol(self, addr: Any) -> C2SProtocol:  # type: ignore[override]
        p = C2SProtocol(self.gateway, self.config, self.clock, self.tls)
        p.factory = self
        return p
