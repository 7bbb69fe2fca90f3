# -*- test-case-name: tests.test_ldap_directory,tests.e2e.test_ldap_directory -*-
"""
The directory in an LDAP server (a company's directory: OpenLDAP, 389-ds,
Active Directory), read with ldaptor without blocking the reactor.

Users are found by a configurable filter on their mail attribute
(L{imgateway.directory.ldapconfig.userFilter}, with the address escaped as
RFC 4515 asks); their home
server, display name, whether they are disabled and, optionally, SCRAM
verifiers (RFC 5803) are read from configurable attributes
(L{accountFromEntry}). Passwords are checked with an LDAP simple bind as
the user's entry (L{LDAPDirectory.checkPassword}). The directory is
read-only to the gateway: accounts are managed in the directory server.

Connections are pooled (L{LDAPConfig.poolSize}), each bound as the
service account for look-ups, and reconnect with backoff and jitter when
they fail; while none is up, every operation fails at once with
L{imgateway.core.errors.DirectoryUnavailable}.

The configuration (L{LDAPConfig}) and the search filters are
L{imgateway.directory.ldapconfig}'s.

Importing this module imports ldaptor's client, which imports the global
reactor: import it once the reactor is chosen (C{makeService} does).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgateway.auth.passwords import SCRAM_HASHES, ScramVerifier, StoredCredentials
from imgateway.core.address import Address
from imgateway.core.errors import DirectoryUnavailable, PersistenceFailed
from imgateway.core.records import MAX_DISPLAY_NAME_CHARS, AccountRecord
from imgateway.directory.ldapconfig import FilterError, LDAPConfig, listFilter, parseFilter, simpleName, userFilter
from imgateway.interfaces import IDirectory, IPasswordDirectory

__all__ = [
    "DECOY_RDN",
    "LDAPDirectory",
    "MAX_MESSAGE_BYTES",
    "accountFromEntry",
    "parseRFC5803",
]

T = TypeVar("T")

_log = Logger(namespace="imgateway.directory.ldap")

#: The RDN of the entry a password is checked against for an unknown user
#: (under C{base_dn}; no such entry exists): the server answers as for a
#: wrong password, after the same exchanges as for a known user.
DECOY_RDN = "cn=imgateway-no-such-user"

#: The most bytes of one LDAP message read from the server; past it the
#: connection is dropped (answers here are a few entries of a few
#: attributes).
MAX_MESSAGE_BYTES = 1024 * 1024

#: LDAP result codes (RFC 4511 appendix A).
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_INVALID_CREDENTIALS = 49


# -- entries to records ---------------------------------------------------------------------


def parseRFC5803(value: bytes | str) -> tuple[str, ScramVerifier]:
    """
    Read a SCRAM verifier in the form of RFC 5803 (an C{authPassword} value,
    RFC 3112): C{SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>},
    each of the last three in base64.

    @return: The mechanism and its verifier.
    @raise ValueError: If C{value} is not such a verifier of a mechanism
        we know.
    """
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        scheme, info, keys = text.strip().split("$")
        iterationsText, saltText = info.split(":")
        storedText, serverText = keys.split(":")
        iterations = int(iterationsText)
        salt, storedKey, serverKey = (
            base64.b64decode(t, validate=True) for t in (saltText, storedText, serverText)
        )
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise ValueError("not a SCRAM verifier in the form of RFC 5803") from None
    mechanism = scheme.strip().upper()
    if mechanism not in SCRAM_HASHES:
        raise ValueError(f"unknown SCRAM mechanism {scheme[:40]!r}")
    if iterations < 1 or not salt or not storedKey or not serverKey:
        raise ValueError("bad iteration count, salt or key")
    return mechanism, ScramVerifier(salt, iterations, storedKey, serverKey)


def _attributes(raw: Sequence[tuple[Any, Sequence[Any]]]) -> dict[str, list[bytes]]:
    """
    An entry's attributes by lower-case name (options such as C{;lang-en}
    left out), values as bytes.
    """
    result: dict[str, list[bytes]] = {}
    for name, values in raw:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if ";" in text:
            continue
        result.setdefault(text.lower(), []).extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values
        )
    return result


def _text(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return "".join(c for c in text if c.isprintable() or c == " ").strip()


def accountFromEntry(
    config: LDAPConfig, address: Address, dn: str, attributes: Mapping[str, Sequence[bytes]]
) -> tuple[AccountRecord, list[str]]:
    """
    The account of a user's entry.

    @param address: The address the user was looked up by (the record's
        address: the directory's spelling of it may differ in case).
    @param dn: The entry's DN (for the problems).
    @param attributes: Its attributes, by lower-case name.
    @return: The account, and the problems found (to log): a home server
        that is no valid name (L{LDAPConfig.defaultHome} is used
        instead), SCRAM verifiers that cannot be read (left out).
    """
    problems = []

    def values(name: str) -> Sequence[bytes]:
        return attributes.get(name.lower(), ()) if name else ()

    names = values(config.displayNameAttribute)
    displayName = _text(names[0])[:MAX_DISPLAY_NAME_CHARS] if names else ""

    homeServer = config.defaultHome
    homes = values(config.homeAttribute)
    if homes:
        home = _text(homes[0])
        if simpleName(home):
            homeServer = home
        else:
            problems.append(
                f"{dn}: {config.homeAttribute} {home[:80]!r} is not a home server name;"
                f" using {config.defaultHome}"
            )

    enabled = True
    if config.disabledAttribute:
        marks = values(config.disabledAttribute)
        if config.disabledValues:
            wanted = {v.casefold() for v in config.disabledValues}
            enabled = not any(_text(m).casefold() in wanted for m in marks)
        else:
            enabled = not marks

    credentials = ""
    if config.scramAttribute:
        verifiers: dict[str, ScramVerifier] = {}
        for value in values(config.scramAttribute):
            try:
                mechanism, verifier = parseRFC5803(value)
            except ValueError as e:
                problems.append(f"{dn}: unreadable {config.scramAttribute} value: {e}")
                continue
            verifiers.setdefault(mechanism, verifier)
        if verifiers:
            credentials = StoredCredentials(verifiers, prepared=True).serialise()
    return AccountRecord(address, homeServer, displayName, enabled, credentials), problems


# -- the protocol ---------------------------------------------------------------------------


class _Client(LDAPClient):  # type: ignore[misc]
    """
    ldaptor's LDAP client, reading at most L{MAX_MESSAGE_BYTES} per message
    and dropping the connection on anything it cannot decode.

    @ivar lost: Fires once the connection is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except Exception as e:
            _log.warn("LDAP directory: dropping a connection that sent an unreadable answer ({error})", error=repr(e)[:200])
            self.buffer = b""
            self.transport.abortConnection()
            return
        if len(self.buffer) > MAX_MESSAGE_BYTES:
            _log.warn(
                "LDAP directory: dropping a connection that sent an answer of more than {n} bytes", n=MAX_MESSAGE_BYTES
            )
            self.buffer = b""
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionClosed())) -> None:
        # The pool learns first, so that it does not hand this connection
        # out again when the operations under way fail below.
        self.lost.callback(None)
        super().connectionLost(reason)


class _ClientFactory(Factory):
    """
    Makes L{_Client}s, without logging each connection's start and stop.
    """

    protocol = _Client
    noisy = False


def _resultError(result: Any) -> str:
    """
    A result's code and message, for logs and errors.
    """
    code = result.resultCode
    cls = ldaperrors.LDAPExceptionCollection.collection.get(code)
    name = cls.name.decode("ascii") if cls is not None else "unknown"
    message = result.errorMessage
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"{name} ({code})" + (f": {message[:200]}" if message else "")


def _bind(client: _Client, dn: bytes | str, password: str) -> Deferred[Any]:
    """
    A simple bind.

    @return: Fires with the server's L{pureldap.LDAPBindResponse}.
    """
    request = pureldap.LDAPBindRequest(dn=dn, auth=password.encode("utf-8"))
    return client.send(request)  # type: ignore[no-any-return]


def _search(client: _Client, request: Any) -> Deferred[tuple[list[Any], Any]]:
    """
    Send a search.

    @return: Fires with its entries and its final result.
    """
    entries: list[Any] = []
    done: Deferred[tuple[list[Any], Any]] = Deferred()

    def handle(response: Any) -> bool:
        if isinstance(response, pureldap.LDAPSearchResultEntry):
            entries.append(response)
            return False
        if isinstance(response, pureldap.LDAPSearchResultReference):
            return False
        done.callback((entries, response))
        return True

    # The Deferred of send_multiResponse only ever fails (connection lost).
    client.send_multiResponse(request, handle).addErrback(done.errback)
    return done


def _startTLS(client: _Client, options: Any) -> Deferred[None]:
    """
    StartTLS (RFC 4511 section 4.14), on a connection with nothing else
    under way.
    """

    def started(response: Any) -> None:
        if response.resultCode != _SUCCESS:
            raise DirectoryUnavailable(f"the server refused StartTLS: {_resultError(response)}")
        client.transport.startTLS(options)

    return client.send(pureldap.LDAPStartTLSRequest()).addCallback(started)  # type: ignore[no-any-return]


# -- the pool ----------------------------------------------------------------------------------


class _State(enum.Enum):
    DOWN = "down"
    CONNECTING = "connecting"
    READY = "ready"


class _Slot:
    """
    One pooled connection.

    @ivar identity: The DN the connection is bound as (C{""}:
        anonymously), or C{None} when it is not known to be the service's.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = _State.DOWN
        self.client: _Client | None = None
        self.connecting: Deferred[Any] | None = None
        self.identity: str | None = None
        self.busy = False
        self.failures = 0
        self.upSince = 0.0
        self.retry: IDelayedCall | None = None


def _connectionLost(f: Failure) -> bool:
    return f.check(ConnectionClosed, LDAPClientConnectionLostException) is not None


@implementer(IPasswordDirectory, IDirectory)
class LDAPDirectory:
    """
    An L{IDirectory} in an LDAP server: read-only, with passwords checked
    by the server (L{IPasswordDirectory}).

    Operations run on a pool of L{LDAPConfig.poolSize} connections, one
    operation at a time on each; an operation waits for a free connection
    at most L{LDAPConfig.timeout} seconds, and takes at most as long. A
    connection lost during an operation is retried once on another. While
    no connection is up (the server is down), operations fail at once
    with L{DirectoryUnavailable}, and each connection retries with
    exponential backoff and jitter (L{LDAPConfig.reconnectDelay} up to
    L{LDAPConfig.reconnectMaxDelay}).

    @ivar config: The configuration.
    @ivar scramAvailable: Whether accounts carry SCRAM verifiers (a
        C{scram_attribute} is configured).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: LDAPConfig,
        endpoint: IStreamClientEndpoint | None = None,
        reactor: Any = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        """
        @param clock: Times operations and reconnections.
        @param config: What to connect to and how to read entries.
        @param endpoint: Where to connect; by default a
            L{HostnameEndpoint} for C{config.url} (with TLS for
            C{ldaps://}) on C{reactor}.
        @param reactor: The reactor (for the default endpoint); C{clock}
            when C{None}.
        @param random: Jitter for the backoff (tests fix it).
        """
        self.config = config
        self.scramAvailable = bool(config.scramAttribute)
        self._where = f"{config.url} with StartTLS" if config.startTLS else str(config.url)
        self._clock = clock
        self._tlsOptions: Any = None
        if config.encrypted:
            from imgateway.net.certificates import loadTrustRootFile
            from imgateway.net.tls import trustRoot

            roots = loadTrustRootFile(config.caCertificates) if config.caCertificates else None
            self._tlsOptions = optionsForClientTLS(config.url.host, trustRoot=trustRoot(roots))
        if endpoint is None:
            plain = HostnameEndpoint(reactor if reactor is not None else clock, config.url.host, config.url.port, timeout=config.timeout)
            endpoint = wrapClientTLS(self._tlsOptions, plain) if config.url.tls else plain
        self._endpoint = endpoint
        self._policy = backoffPolicy(config.reconnectDelay, config.reconnectMaxDelay, factor=2.0, jitter=random)
        self._slots = [_Slot(n) for n in range(config.poolSize)]
        self._waiting: deque[tuple[Deferred[_Slot], bool, IDelayedCall]] = deque()
        self._started = False
        self._closed = False
        self._closing: Deferred[None] | None = None
        self._reachable: bool | None = None
        self._lastError = "not connected yet"
        self._logged: dict[str, float] = {}
        self._attributes = [
            a
            for a in (
                config.mailAttribute,
                config.displayNameAttribute,
                config.homeAttribute,
                config.disabledAttribute,
                config.scramAttribute,
            )
            if a
        ]

    def __repr__(self) -> str:
        return f"<LDAPDirectory {self.config.url} base={self.config.baseDN!r}>"

    @property
    def problem(self) -> str | None:
        """
        Why the directory cannot be reached now (none of the pool's
        connections is up), or C{None} when it can (C{/healthz}).
        """
        if any(slot.state is _State.READY for slot in self._slots):
            return None
        return f"unreachable: {self._lastError}"

    # -- the pool ----------------------------------------------------------------------------

    def start(self) -> None:
        """
        Open the pool's connections (the first operation does, if this was
        not called).
        """
        if self._started or self._closed:
            return
        self._started = True
        _log.info(
            "LDAP directory {url}: connecting {n} connections (users under {base}, as {who})",
            url=self._where,
            n=len(self._slots),
            base=self.config.baseDN,
            who=self.config.bindDN or "anonymous",
        )
        for slot in self._slots:
            self._connect(slot)

    def _connect(self, slot: _Slot) -> None:
        slot.retry = None
        slot.state = _State.CONNECTING
        d: Deferred[Any] = self._endpoint.connect(_ClientFactory())
        slot.connecting = d
        timer = self._clock.callLater(self.config.timeout, d.cancel)

        def connected(client: _Client) -> Deferred[Any]:
            slot.client = client
            client.lost.addCallback(lambda _: self._lost(slot, client))
            steps: Deferred[Any] = succeed(None)
            if self.config.startTLS:
                steps.addCallback(lambda _: _startTLS(client, self._tlsOptions))
            return steps.addCallback(lambda _: self._bindService(client))

        def ready(_: object) -> None:
            if timer.active():
                timer.cancel()
            slot.connecting = None
            slot.identity = self.config.bindDN
            slot.state = _State.READY
            slot.failures = 0
            slot.upSince = self._clock.seconds()
            if self._reachable is not True:
                if self._reachable is False:
                    _log.info("LDAP directory {url} is reachable again", url=self._where)
                else:
                    _log.info(
                        "LDAP directory {url}: connected, bound as {who}",
                        url=self._where,
                        who=self.config.bindDN or "anonymous",
                    )
                self._reachable = True
            self._serveWaiting()

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            slot.connecting = None
            if self._closed:
                return
            if f.check(CancelledError):
                why = f"no connection within {self.config.timeout:g} s"
            else:
                why = _describe(f)
            self._down(slot, why)

        d.addCallback(connected).addCallbacks(ready, failed)

    def _bindService(self, client: _Client) -> Deferred[None]:
        def bound(response: Any) -> None:
            if response.resultCode != _SUCCESS:
                raise DirectoryUnavailable(
                    f"the bind as {self.config.bindDN or 'anonymous'} was refused: {_resultError(response)}"
                )

        return _bind(client, self.config.bindDN, self.config.bindPassword).addCallback(bound)

    def _lost(self, slot: _Slot, client: _Client) -> None:
        if slot.client is not client:
            return
        slot.client = None
        slot.identity = None
        slot.busy = False
        if self._closed:
            slot.state = _State.DOWN
            return
        if slot.state is _State.READY:
            # Up long enough: reconnect at once (an idle connection that the
            # server closed, or a server restarting). Else back off.
            if self._clock.seconds() - slot.upSince >= self.config.reconnectDelay:
                slot.state = _State.DOWN
                slot.failures = 0
                _log.debug("LDAP directory {url}: connection {n} lost; reconnecting", url=self._where, n=slot.number)
                self._connect(slot)
                return
            self._down(slot, "the server closed the connection")
        # CONNECTING: the connect chain's own failure handles it.

    def _down(self, slot: _Slot, why: str) -> None:
        """
        A connection attempt of C{slot} failed: retry later, and fail the
        waiting operations if no connection is left.
        """
        if slot.client is not None:
            client, slot.client = slot.client, None
            if client.transport is not None:
                client.transport.abortConnection()
        slot.state = _State.DOWN
        slot.identity = None
        slot.busy = False
        slot.failures += 1
        delay = self._policy(slot.failures - 1)
        slot.retry = self._clock.callLater(delay, self._connect, slot)
        self._lastError = why
        if not any(s.state is not _State.DOWN for s in self._slots):
            if self._reachable is not False:
                _log.warn(
                    "LDAP directory {url} is unreachable: {why}; look-ups and logins fail until it is back"
                    " (retrying in {delay:.1f} s, then backing off up to {max:g} s)",
                    url=self._where,
                    why=why,
                    delay=delay,
                    max=self.config.reconnectMaxDelay,
                )
                self._reachable = False
            self._failWaiting(DirectoryUnavailable(f"the LDAP directory {self.config.url} is unreachable: {why}"))
        else:
            _log.debug(
                "LDAP directory {url}: connection {n} failed ({why}); retrying in {delay:.1f} s",
                url=self._where,
                n=slot.number,
                why=why,
                delay=delay,
            )

    def _acquire(self, forService: bool) -> Deferred[_Slot]:
        """
        A free connection, preferring one bound as the service account
        (for a search, C{forService}) or one that is not (for a user's
        bind).
        """
        if self._closed:
            return fail(DirectoryUnavailable("the LDAP directory is closed"))
        self.start()
        slot = self._freeSlot(forService)
        if slot is not None:
            slot.busy = True
            return succeed(slot)
        ready = any(s.state is _State.READY for s in self._slots)
        connecting = any(s.state is _State.CONNECTING for s in self._slots)
        # Wait for a busy connection, or for the first ones to connect (at
        # start, or replacing one that was lost); but during an outage, not
        # for a retry (which may take up to the timeout).
        if not (ready or (connecting and self._reachable is not False)):
            return fail(DirectoryUnavailable(f"the LDAP directory {self.config.url} is unreachable: {self._lastError}"))
        d: Deferred[_Slot] = Deferred()

        def timedOut() -> None:
            for i, (waiter, _, _) in enumerate(self._waiting):
                if waiter is d:
                    del self._waiting[i]
                    break
            d.errback(DirectoryUnavailable(f"no LDAP connection free within {self.config.timeout:g} s"))

        self._waiting.append((d, forService, self._clock.callLater(self.config.timeout, timedOut)))
        return d

    def _freeSlot(self, forService: bool) -> _Slot | None:
        free = [s for s in self._slots if s.state is _State.READY and not s.busy]
        if not free:
            return None
        service = self.config.bindDN
        for s in free:
            if (s.identity == service) == forService:
                return s
        return free[0]

    def _release(self, slot: _Slot) -> None:
        slot.busy = False
        self._serveWaiting()

    def _serveWaiting(self) -> None:
        while self._waiting:
            _, forService, _ = self._waiting[0]
            slot = self._freeSlot(forService)
            if slot is None:
                return
            d, _, timer = self._waiting.popleft()
            timer.cancel()
            slot.busy = True
            d.callback(slot)

    def _failWaiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d, _, timer in waiting:
            timer.cancel()
            d.errback(error)

    def _run(self, forService: bool, operation: Callable[[_Client, _Slot], Deferred[T]]) -> Deferred[T]:
        """
        Run C{operation} on a free connection, within L{LDAPConfig.timeout};
        once more on another if the connection is lost meanwhile.

        @return: Its result; or fails with L{DirectoryUnavailable}.
        """
        return Deferred.fromCoroutine(self._runNow(forService, operation))

    async def _runNow(self, forService: bool, operation: Callable[[_Client, _Slot], Deferred[T]]) -> T:
        for attempt in (1, 2):
            slot = await self._acquire(forService)
            client = slot.client
            assert client is not None
            timedOut: list[bool] = []

            def expire(client: _Client = client) -> None:
                timedOut.append(True)
                self._logOnce(
                    "timeout",
                    "warn",
                    "LDAP directory {url}: an operation took more than {timeout:g} s; dropping its connection",
                    timeout=self.config.timeout,
                )
                if client.transport is not None:
                    client.transport.abortConnection()

            timer = self._clock.callLater(self.config.timeout, expire)
            try:
                return await operation(client, slot)
            except Exception:
                f = Failure()
                if timedOut:
                    raise DirectoryUnavailable(
                        f"the LDAP directory did not answer within {self.config.timeout:g} s"
                    ) from None
                if not _connectionLost(f):
                    raise
                if attempt == 1 and not self._closed:
                    continue
                raise DirectoryUnavailable(f"the connection to the LDAP directory was lost ({_describe(f)})") from None
            finally:
                if timer.active():
                    timer.cancel()
                if slot.client is client:
                    self._release(slot)
        raise AssertionError("not reached")

    def _asService(self, client: _Client, slot: _Slot) -> Deferred[None]:
        """
        Bind C{slot}'s connection as the service account again, if it is
        bound as someone else.
        """
        if slot.identity == self.config.bindDN:
            return succeed(None)

        def bound(_: None) -> None:
            slot.identity = self.config.bindDN

        def refused(f: Failure) -> Failure:
            if f.check(DirectoryUnavailable):
                problem = str(f.value)
                self._logOnce(problem, "error", "LDAP directory {url}: {problem}", problem=problem)
            return f

        return self._bindService(client).addCallbacks(bound, refused)

    # -- searches -----------------------------------------------------------------------

    def _searchRequest(self, filter: Any, sizeLimit: int) -> Any:
        return pureldap.LDAPSearchRequest(
            baseObject=self.config.baseDN,
            scope=pureldap.LDAP_SCOPE_wholeSubtree,
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases,
            sizeLimit=sizeLimit,
            timeLimit=max(1, math.ceil(self.config.timeout)),
            typesOnly=0,
            filter=filter,
            attributes=self._attributes,
        )

    def _searchAsService(self, filter: Any, sizeLimit: int) -> Deferred[tuple[list[Any], Any]]:
        request = self._searchRequest(filter, sizeLimit)

        def operation(client: _Client, slot: _Slot) -> Deferred[tuple[list[Any], Any]]:
            return self._asService(client, slot).addCallback(lambda _: _search(client, request))

        return self._run(True, operation)

    def _find(self, address: Address) -> Deferred[tuple[bytes, AccountRecord] | None]:
        """
        Look a user up.

        @return: Fires with their entry's DN and their account, or C{None}
            if no entry, or several, match.
        """
        try:
            filter = userFilter(self.config.userFilter, address)
        except FilterError as e:
            # Checked at start-up with a sample address; cannot happen.
            return fail(DirectoryUnavailable(str(e)))

        def found(result: tuple[list[Any], Any]) -> tuple[bytes, AccountRecord] | None:
            entries, done = result
            if done.resultCode not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
                problem = f"the search for {address} under {self.config.baseDN} failed: {_resultError(done)}"
                self._logOnce(problem, "error", "LDAP directory {url}: {problem}", problem=problem)
                raise DirectoryUnavailable(problem)
            if len(entries) != 1 or done.resultCode != _SUCCESS:
                if entries:
                    self._logOnce(
                        f"ambiguous {address}",
                        "warn",
                        "LDAP directory {url}: several entries match {address} ({filter}); treating it as unknown",
                        address=str(address),
                        filter=self.config.userFilter,
                    )
                return None
            entry = entries[0]
            dn = entry.objectName if isinstance(entry.objectName, bytes) else str(entry.objectName).encode("utf-8")
            dnText = dn.decode("utf-8", "replace")
            record, problems = accountFromEntry(self.config, address, dnText, _attributes(entry.attributes))
            for problem in problems:
                self._logOnce(problem, "warn", "LDAP directory {url}: {problem}", problem=problem)
            return dn, record

        return self._searchAsService(filter, 2).addCallback(found)

    # -- IDirectory -------------------------------------------------------------------------

    def getAccount(self, address: Address) -> Deferred[AccountRecord | None]:
        """
        See L{IDirectory.getAccount}.

        @return: Fails with L{DirectoryUnavailable} if the server cannot be
            asked.
        """
        return self._find(address).addCallback(lambda found: None if found is None else found[1])

    def checkPassword(self, address: Address, password: str) -> Deferred[AccountRecord | None]:
        """
        See L{IPasswordDirectory.checkPassword}: a simple bind as the user's
        entry, with the password as the client gave it (UTF-8). For an
        unknown user, the bind is made all the same, as C{DECOY_RDN} under
        the base DN, which does not exist: the same exchanges, the same
        answer. An empty password is never sent (the server would take it
        for an anonymous bind, which succeeds).
        """
        if not password:
            return succeed(None)

        def found(result: tuple[bytes, AccountRecord] | None) -> Deferred[AccountRecord | None]:
            if result is None:
                decoy = self.config.decoyDN or (f"{DECOY_RDN},{self.config.baseDN}" if self.config.baseDN else DECOY_RDN)
                return self._userBind(decoy.encode("utf-8"), password).addCallback(lambda _: None)
            dn, record = result
            return self._userBind(dn, password).addCallback(lambda ok: record if ok else None)

        return self._find(address).addCallback(found)

    def _userBind(self, dn: bytes, password: str) -> Deferred[bool]:
        """
        Bind as C{dn} on a free connection.

        @return: Fires with whether the server accepted the password.
        """

        def operation(client: _Client, slot: _Slot) -> Deferred[bool]:
            slot.identity = None

            def answered(response: Any) -> bool:
                if response.resultCode == _SUCCESS:
                    return True
                if response.resultCode != _INVALID_CREDENTIALS:
                    _log.info(
                        "LDAP directory {url}: bind as {dn} refused: {error}",
                        url=self._where,
                        dn=dn.decode("utf-8", "replace"),
                        error=_resultError(response),
                    )
                return False

            return _bind(client, dn, password).addCallback(answered)

        return self._run(False, operation)

    def addAccount(self, record: AccountRecord) -> Deferred[None]:
        """
        Refused: the LDAP directory is read-only to the gateway.

        @return: Fails with L{PersistenceFailed}.
        """
        return fail(self._readOnly(f"add {record.address}"))

    def updateAccount(
        self,
        address: Address,
        credentials: str | None = None,
        enabled: bool | None = None,
        displayName: str | None = None,
    ) -> Deferred[AccountRecord]:
        """
        Refused: the LDAP directory is read-only to the gateway.

        @return: Fails with L{PersistenceFailed}.
        """
        return fail(self._readOnly(f"change {address}"))

    def _readOnly(self, what: str) -> PersistenceFailed:
        return PersistenceFailed(
            f"cannot {what}: the directory is the LDAP server {self.config.url} ({self.config.baseDN}),"
            " read-only to imgateway; manage accounts there"
        )

    def listAccounts(self, domain: str | None = None) -> Deferred[list[AccountRecord]]:
        """
        See L{IDirectory.listAccounts}: the entries under the base DN whose
        mail attribute holds an address (of C{domain}, if given), by their
        first such address; an address of several entries is left out, as
        L{getAccount} finds no one by it. The server's size limit applies:
        past it this fails with L{DirectoryUnavailable} rather than give
        part of the list.
        """
        try:
            filter = listFilter(self.config.userFilter, domain) if domain else parseFilter(f"({self.config.mailAttribute}=*)")
        except FilterError as e:
            return fail(DirectoryUnavailable(str(e)))

        def found(result: tuple[list[Any], Any]) -> list[AccountRecord]:
            entries, done = result
            if done.resultCode != _SUCCESS:
                raise DirectoryUnavailable(f"listing the accounts under {self.config.baseDN} failed: {_resultError(done)}")
            records: dict[Address, AccountRecord] = {}
            ambiguous: set[Address] = set()
            for entry in entries:
                attributes = _attributes(entry.attributes)
                address = _firstAddress(attributes.get(self.config.mailAttribute.lower(), ()), domain)
                if address is None:
                    continue
                if address in records:
                    # As for a look-up: an address of several entries is no one's.
                    ambiguous.add(address)
                    continue
                dn = entry.objectName
                dnText = dn.decode("utf-8", "replace") if isinstance(dn, bytes) else str(dn)
                records[address] = accountFromEntry(self.config, address, dnText, attributes)[0]
            return [records[a] for a in sorted(records) if a not in ambiguous]

        return self._searchAsService(filter, 0).addCallback(found)

    def close(self) -> Deferred[None]:
        """
        See L{IDirectory.close}: close every connection.

        @return: Fires once they are all gone.
        """
        if self._closing is not None:
            return self._closing
        self._closed = True
        self._failWaiting(DirectoryUnavailable("the LDAP directory is closed"))
        gone: list[Deferred[None]] = []
        for slot in self._slots:
            if slot.retry is not None and slot.retry.active():
                slot.retry.cancel()
            slot.retry = None
            if slot.connecting is not None:
                slot.connecting.cancel()
            client = slot.client
            if client is not None and client.transport is not None:
                gone.append(client.lost)
                try:
                    client.send_noResponse(pureldap.LDAPUnbindRequest())
                except Exception:
                    pass
                client.transport.loseConnection()
        self._closing = DeferredList(gone).addCallback(lambda _: None)
        return self._closing

    # -- logs --------------------------------------------------------------------------------

    def _logOnce(self, key: str, level: str, format: str, **kwargs: object) -> None:
        """
        Log an event, but the same one at most once a minute.
        """
        now = self._clock.seconds()
        last = self._logged.get(key)
        if last is not None and now - last < 60:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        getattr(_log, level)(format, url=self._where, **kwargs)


def _firstAddress(values: Sequence[bytes], domain: str | None) -> Address | None:
    for value in values:
        try:
            address = Address.fromString(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if domain is None or address.domain == domain:
            return address
    return None


def _describe(f: Failure) -> str:
    """
    What went wrong, in a few words (no traceback).
    """
    value = f.value
    if isinstance(value, DirectoryUnavailable):
        return str(value)
    text = str(value) or type(value).__name__
    return f"{type(value).__name__}: {text}"[:300] if not text.startswith(type(value).__name__) else text[:300]
