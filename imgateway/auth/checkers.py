# -*- test-case-name: tests.test_checkers -*-
"""
The gateway's C{twisted.cred} glue: an L{Authenticator} that checks
passwords and looks up SCRAM verifiers in the directory, the credentials
checkers built on it, and the realm that opens home-server sessions.

Every front end logs its clients in through the portal of L{makePortal}:
with L{IUsernamePassword} credentials when it has a password in the clear,
or with L{SASLAuthenticated} credentials after a SASL exchange
(L{imgateway.auth.sasl}) has authenticated the user. Failures are
L{imgateway.core.errors.AuthenticationFailed} (or its subclass
L{imgateway.core.errors.AccountDisabled}), which the front end maps to its
protocol's error.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from imgateway.auth.passwords import (
    DEFAULT_SCRAM_ITERATIONS,
    SCRAM_HASHES,
    ScramVerifier,
    StoredCredentials,
    checkPassword,
)
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import AccountDisabled, AuthenticationFailed, InvalidAddress
from imgateway.core.records import AccountRecord
from imgateway.core.throttle import LoginThrottle
from imgateway.interfaces import IDirectory, IHomeServer, IMetrics, IPasswordDirectory, ISession, ISessionClient
from imgateway.status.nometrics import NO_METRICS

__all__ = [
    "AuthenticationBusy",
    "Authenticator",
    "DEFAULT_PASSWORD_QUEUE",
    "DEFAULT_PASSWORD_WORKERS",
    "GatewayRealm",
    "ISASLAuthenticated",
    "PasswordChecker",
    "SASLAuthenticated",
    "SASLAuthenticatedChecker",
    "makePortal",
]

_log = Logger()

#: Length of the salt of the verifiers made up for unknown users (the same
#: as the salts of real verifiers, see L{imgateway.auth.passwords}).
_FAKE_SALT_BYTES = 16

#: Passwords checked at once (each in a thread), by default.
DEFAULT_PASSWORD_WORKERS = 2

#: Password checks that may wait for a worker, by default; more are
#: refused at once (SASL C{temporary-auth-failure}).
DEFAULT_PASSWORD_QUEUE = 256


class AuthenticationBusy(AuthenticationFailed):
    """
    The password was not checked: too many password checks are waiting
    already. The client may try again shortly.
    """


class Authenticator:
    """
    Checks the credentials of this gateway's users against the directory.

    A password given in the clear is checked against the account's SCRAM
    verifier (one PBKDF2 derivation, slow on purpose), through
    C{runInThread}, never on the reactor thread, at most C{maxConcurrent}
    at once; past C{maxQueued} checks waiting for their turn, more are
    refused at once with L{AuthenticationBusy}, so a flood of logins costs
    bounded memory and threads. Unknown users cost as much as known ones:
    a password is checked against a verifier made up from the secret, and
    SCRAM gets that made-up verifier, so that a client cannot tell from the
    answer or its timing whether an account exists.

    With a L{LoginThrottle}, logins from sources that failed too often are
    refused (L{imgateway.core.throttle.LoginThrottled}) before anything is
    looked up or derived.

    A directory that checks passwords itself (an L{IPasswordDirectory}, such
    as LDAP) is handed the password instead, under the same bounds (but on
    the reactor thread: it does not block); it checks unknown users as
    known ones too. Unless its accounts carry SCRAM verifiers
    (L{scramAvailable}), SCRAM mechanisms are not offered.

    @ivar directory: The L{IDirectory} holding the accounts.
    @ivar domain: The (normalised) domain of the users checked here.
    @ivar throttle: The L{LoginThrottle}, or C{None}.
    """

    #: Counts the logins refused for C{[auth] password_queue}.
    metrics: IMetrics = NO_METRICS

    def __init__(
        self,
        directory: IDirectory,
        domain: str,
        runInThread: Callable[..., Deferred[Any]],
        secret: bytes | None = None,
        fakeIterations: int = DEFAULT_SCRAM_ITERATIONS,
        maxConcurrent: int = DEFAULT_PASSWORD_WORKERS,
        maxQueued: int = DEFAULT_PASSWORD_QUEUE,
        throttle: LoginThrottle | None = None,
    ) -> None:
        """
        @param directory: Where the accounts are.
        @param domain: The domain whose users log in here.
        @param runInThread: Calls a function with the given positional
            arguments off the reactor thread, returning a L{Deferred} of its
            result (for example C{lambda f, *a: deferToThreadPool(reactor,
            reactor.getThreadPool(), f, *a)}).
        @param secret: The key from which the SCRAM verifiers of unknown
            users are derived; random when C{None}. Keep it stable (across
            restarts, and across the servers of one domain) so that an
            unknown user always gets the same salt.
        @param fakeIterations: The iteration count announced to unknown
            users; should be that of most real verifiers.
        @param maxConcurrent: Password checks running at once.
        @param maxQueued: Password checks that may wait for their turn.
        @param throttle: Refuses logins from sources that failed too often.
        @raise InvalidAddress: If C{domain} is not a valid domain.
        """
        self.directory = directory
        self.domain = normaliseDomain(domain)
        self.throttle = throttle
        self._runInThread = runInThread
        self._secret = secret if secret is not None else os.urandom(32)
        self._fakeIterations = fakeIterations
        self._workers = DeferredSemaphore(maxConcurrent)
        self._maxQueued = maxQueued
        self._busy = False

    @property
    def scramAvailable(self) -> bool:
        """
        Whether the accounts have SCRAM verifiers, so that the SCRAM
        mechanisms can be offered: always, but for an
        L{IPasswordDirectory} without them.
        """
        if IPasswordDirectory.providedBy(self.directory):
            return bool(IPasswordDirectory(self.directory).scramAvailable)
        return True

    @property
    def passwordChecksWaiting(self) -> int:
        """
        Password checks waiting for a worker.
        """
        return len(self._workers.waiting)

    def _runBounded(self, f: Callable[..., Any], *args: Any, inThread: bool = True) -> Deferred[Any]:
        """
        Run C{f(*args)} through C{runInThread} (or, unless C{inThread},
        here: C{f} returns a L{Deferred}) once one of the C{maxConcurrent}
        workers is free.

        @return: Its result, or a failure with L{AuthenticationBusy} at
            once if C{maxQueued} calls are waiting already.
        """
        waiting = len(self._workers.waiting)
        if waiting >= self._maxQueued:
            self.metrics.limitHit("password_queue")
            if not self._busy:
                self._busy = True
                _log.warn(
                    "Refusing logins with a password given in the clear: {n} password checks are"
                    " waiting already ([auth] password_queue)",
                    n=waiting,
                )
            return fail(AuthenticationBusy("the server is busy; try again shortly"))
        if self._busy and waiting < self._maxQueued // 2:
            self._busy = False
            _log.info("Password checks are keeping up again ({n} waiting)", n=waiting)
        if not inThread:
            return self._workers.run(f, *args)
        return self._workers.run(self._runInThread, f, *args)

    def _checkThrottle(self, address: Address, source: str | None) -> None:
        if self.throttle is not None:
            self.throttle.check(source, str(address))

    def loginFailed(self, address: Address, source: str | None) -> None:
        """
        Count a failed login (wrong password or unknown user) of
        C{address} from C{source} towards the throttle.
        """
        if self.throttle is not None:
            self.throttle.failed(source, str(address))

    def loginSucceeded(self, address: Address, source: str | None) -> None:
        """
        The user at C{address} proved their password from C{source}.
        """
        if self.throttle is not None:
            self.throttle.succeeded(source, str(address))

    def resolveAuthcid(self, authcid: str, domain: str | None = None) -> Address:
        """
        Turn what a client gave as its user name into an address of this
        domain.

        @param authcid: A bare local part (C{alice}, meaning C{alice@domain})
            or a full address (C{alice@corp.example}).
        @param domain: The domain the client addressed (an XMPP stream's
            C{to}); L{domain} when C{None}.
        @return: The address.
        @raise AuthenticationFailed: If C{authcid} is not a valid address or
            names a user of another domain.
        @raise InvalidAddress: If C{domain} is not a valid domain.
        """
        if domain is None or domain == self.domain:
            domain = self.domain
        else:
            domain = normaliseDomain(domain)
        try:
            address = _authcidAddress(authcid, domain)
        except InvalidAddress:
            raise AuthenticationFailed("invalid user name") from None
        if address.domain != domain:
            raise AuthenticationFailed("not a user of this domain")
        return address

    def checkPassword(self, address: Address, password: str, source: str | None = None) -> Deferred[AccountRecord]:
        """
        Check a password given in the clear.

        @param address: The user.
        @param password: The password, as the client sent it.
        @param source: Where the client connects from
            (L{imgateway.net.addresses.sourceOf}), for the throttle.
        @return: A L{Deferred} that fires with the user's account, or fails
            with L{AuthenticationFailed} (wrong password, unknown user),
            L{AccountDisabled} (right password, disabled account),
            L{imgateway.core.throttle.LoginThrottled} (not checked: too many
            failures from C{source}) or L{AuthenticationBusy} (not checked:
            too many checks waiting).
        """
        try:
            self._checkThrottle(address, source)
        except AuthenticationFailed:
            return fail()

        if IPasswordDirectory.providedBy(self.directory):
            return self._checkInDirectory(address, password, source)

        def verify(record: AccountRecord | None) -> Deferred[AccountRecord]:
            stored = self._storedCredentials(record)
            real = stored is not None
            if stored is None:
                # Check against a made-up verifier: the same cost.
                stored = StoredCredentials({"SCRAM-SHA-256": self._fakeVerifier(address, "SCRAM-SHA-256")})
            d = self._runBounded(checkPassword, stored, password)

            def decide(matches: bool) -> AccountRecord:
                return self._outcome(address, source, record if real and matches else None)

            return d.addCallback(decide)

        return self.directory.getAccount(address).addCallback(verify)

    def _checkInDirectory(self, address: Address, password: str, source: str | None) -> Deferred[AccountRecord]:
        """
        L{checkPassword} for an L{IPasswordDirectory}: the directory checks
        the password.
        """
        d = self._runBounded(IPasswordDirectory(self.directory).checkPassword, address, password, inThread=False)
        return d.addCallback(lambda record: self._outcome(address, source, record))

    def _outcome(self, address: Address, source: str | None, record: AccountRecord | None) -> AccountRecord:
        """
        Count a password check's outcome for the login throttle, and say it.

        @param record: The account, if the password matched it; C{None} for
            a wrong password or an unknown account (one answer for both).
        @raise AuthenticationFailed: If C{record} is C{None}.
        @raise AccountDisabled: If the account is disabled (the password
            was right).
        """
        if record is None:
            self.loginFailed(address, source)
            raise AuthenticationFailed("wrong user name or password")
        self.loginSucceeded(address, source)
        if not record.enabled:
            raise AccountDisabled("account disabled")
        return record

    def scramVerifier(
        self, address: Address, mechanism: str, source: str | None = None
    ) -> Deferred[tuple[ScramVerifier, AccountRecord | None]]:
        """
        Look up what a SCRAM exchange needs to authenticate a user.

        For an unknown user (or an account without a verifier for
        C{mechanism}, or with unreadable credentials) this still fires with
        a verifier: one derived from the secret and the address, so that it
        is the same every time and no password matches it. The exchange then
        fails at its very end, as for a wrong password.

        A disabled account gets its real verifier: the caller must check
        C{record.enabled} once the client's proof is verified.

        @param address: The user.
        @param mechanism: C{"SCRAM-SHA-1"} or C{"SCRAM-SHA-256"}.
        @param source: Where the client connects from, for the throttle.
            The caller reports the outcome with L{loginFailed} or
            L{loginSucceeded}.
        @return: A L{Deferred} that fires with C{(verifier, record)}, where
            C{record} is the user's account, or C{None} when C{verifier} is
            made up; or fails with
            L{imgateway.core.throttle.LoginThrottled}.
        @raise ValueError: If C{mechanism} is not a SCRAM mechanism.
        """
        if mechanism not in SCRAM_HASHES:
            raise ValueError(f"not a SCRAM mechanism: {mechanism!r}")
        try:
            self._checkThrottle(address, source)
        except AuthenticationFailed:
            return fail()

        def found(
            record: AccountRecord | None,
        ) -> tuple[ScramVerifier, AccountRecord | None]:
            stored = self._storedCredentials(record)
            if stored is not None and mechanism in stored.scram:
                return stored.scram[mechanism], record
            return self._fakeVerifier(address, mechanism), None

        return self.directory.getAccount(address).addCallback(found)

    def _fakeVerifier(self, address: Address, mechanism: str) -> ScramVerifier:
        """
        A verifier for a user who has none: the same for each address, and
        matched by no password.
        """
        hashName = SCRAM_HASHES[mechanism]
        key = hmac.digest(self._secret, f"{mechanism}\0{address}".encode("utf-8"), "sha256")
        salt = hmac.digest(key, b"salt", "sha256")[:_FAKE_SALT_BYTES]
        storedKey = hmac.digest(key, b"stored key", hashName)
        serverKey = hmac.digest(key, b"server key", hashName)
        return ScramVerifier(salt, self._fakeIterations, storedKey, serverKey)

    def _storedCredentials(self, record: AccountRecord | None) -> StoredCredentials | None:
        """
        The verifiers of an account, or C{None} if there is no account, it
        has none (empty credentials: an L{IPasswordDirectory} account) or
        its credentials are unreadable (which is logged).
        """
        if record is None or not record.credentials:
            return None
        try:
            return StoredCredentials.parse(record.credentials)
        except ValueError as e:
            _log.error(
                "Unreadable credentials of {address}: {error}",
                address=str(record.address),
                error=str(e),
            )
            return None

    def requireAccount(self, address: Address) -> Deferred[AccountRecord]:
        """
        Check that an already authenticated user may still log in.

        @param address: The user.
        @return: A L{Deferred} that fires with the user's account, or fails
            with L{AuthenticationFailed} if there is no such account here or
            L{AccountDisabled} if it is disabled.
        """
        if address.domain != self.domain:
            return fail(AuthenticationFailed("not a user of this domain"))

        def check(record: AccountRecord | None) -> AccountRecord:
            if record is None:
                raise AuthenticationFailed("no such account")
            if not record.enabled:
                raise AccountDisabled("account disabled")
            return record

        return self.directory.getAccount(address).addCallback(check)


#: How many user names L{_authcidAddress} remembers.
AUTHCID_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=AUTHCID_CACHE_SIZE)
def _authcidAddress(authcid: str, domain: str) -> Address:
    """
    The address a client's user name stands for (see
    L{Authenticator.resolveAuthcid}), normalised once per name and domain:
    a bounded cache (hostile names can only evict entries; invalid ones
    are not kept), so that a login does not normalise the domain and the
    name again. Nothing in it depends on the directory: a name is resolved
    alike whether or not its account exists.

    @raise InvalidAddress: If it is not a valid address.
    """
    if "@" in authcid:
        return Address.fromString(authcid)
    return Address.fromParts(authcid, domain)


def _avatarId(record: AccountRecord) -> bytes | tuple[()]:
    return str(record.address).encode("utf-8")


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Checks user names and passwords given in the clear.

    The user name is a bare local part or a full address, UTF-8 encoded; the
    avatar ID is the user's address (C{alice@corp.example}), UTF-8 encoded.
    Failures are L{AuthenticationFailed} or L{AccountDisabled} rather than
    L{twisted.cred.error.UnauthorizedLogin}, so that front ends can tell a
    disabled account (reported only after a right password) from a wrong
    password.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, authenticator: Authenticator) -> None:
        """
        @param authenticator: What checks the password.
        """
        self._authenticator = authenticator

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        """
        Check the credentials.

        @param credentials: The user name and password.
        @return: A L{Deferred} that fires with the avatar ID, or fails with
            L{AuthenticationFailed} (or L{AccountDisabled}).
        """
        try:
            username = credentials.username.decode("utf-8")
            password = credentials.password.decode("utf-8")
            address = self._authenticator.resolveAuthcid(username)
        except UnicodeDecodeError:
            return fail(AuthenticationFailed("user name or password is not UTF-8"))
        except AuthenticationFailed as e:
            return fail(e)
        return self._authenticator.checkPassword(address, password).addCallback(_avatarId)


class ISASLAuthenticated(ICredentials):
    """
    Credentials of a user whom a completed SASL exchange (or another trusted
    mechanism) has already authenticated.
    """

    address = Attribute("The L{Address} of the authenticated user.")


@implementer(ISASLAuthenticated)
@frozen
class SASLAuthenticated:
    """
    The user that a completed SASL exchange authenticated.

    @ivar address: The user.
    """

    address: Address


@implementer(ICredentialsChecker)
class SASLAuthenticatedChecker:
    """
    Accepts L{ISASLAuthenticated} credentials after checking that the account
    exists here and is enabled (it may have changed since the exchange).
    The avatar ID is the user's address, UTF-8 encoded.
    """

    credentialInterfaces = (ISASLAuthenticated,)

    def __init__(self, authenticator: Authenticator) -> None:
        """
        @param authenticator: What looks the account up.
        """
        self._authenticator = authenticator

    def requestAvatarId(self, credentials: ISASLAuthenticated) -> Deferred[bytes | tuple[()]]:
        """
        Check the account of the authenticated user.

        @param credentials: The authenticated user.
        @return: A L{Deferred} that fires with the avatar ID, or fails with
            L{AuthenticationFailed} (or L{AccountDisabled}).
        """
        address: Address = credentials.address
        return self._authenticator.requireAccount(address).addCallback(_avatarId)


@implementer(IRealm)
class GatewayRealm:
    """
    Opens home-server sessions for logged-in users.

    The avatar is an L{ISession}; the mind must be the front end's
    L{ISessionClient}, and may name the session with a C{sessionLabel}
    attribute (an XMPP resource, a device name). Logging out closes the
    session with the reason C{"logout"}.
    """

    def __init__(self, homeServer: IHomeServer) -> None:
        """
        @param homeServer: The home server whose sessions are opened.
        """
        self._homeServer = homeServer

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> Deferred[tuple[type[Interface], object, Callable[[], None]]]:
        """
        Open a session.

        @param avatarId: The user's address, UTF-8 encoded.
        @param mind: The L{ISessionClient} of the session.
        @param interfaces: Must include L{ISession}.
        @return: A L{Deferred} that fires with C{(ISession, session,
            logout)} once the home server has opened the session, or fails
            with L{imgateway.core.errors.TooManySessions} if the user has as
            many sessions as allowed.
        @raise NotImplementedError: If L{ISession} is not asked for, the mind
            is not an L{ISessionClient}, or the login is anonymous.
        """
        if ISession not in interfaces:
            raise NotImplementedError("GatewayRealm only provides ISession")
        if not ISessionClient.providedBy(mind):
            raise NotImplementedError("the mind must provide ISessionClient")
        if not isinstance(avatarId, bytes):
            raise NotImplementedError("anonymous logins are not supported")
        label = getattr(mind, "sessionLabel", "")
        if not isinstance(label, str):
            label = ""
        address = Address.fromString(avatarId.decode("utf-8"))

        def opened(session: ISession) -> tuple[type[Interface], object, Callable[[], None]]:
            def logout() -> None:
                session.close("logout")

            return ISession, session, logout

        return self._homeServer.openSession(address, mind, label).addCallback(opened)


def makePortal(homeServer: IHomeServer, authenticator: Authenticator) -> Portal:
    """
    Build the gateway's portal.

    @param homeServer: The home server whose sessions the portal opens.
    @param authenticator: What checks the users' credentials.
    @return: A portal that accepts L{IUsernamePassword} and
        L{ISASLAuthenticated} credentials and gives L{ISession} avatars.
    """
    return Portal(
        GatewayRealm(homeServer),
        [PasswordChecker(authenticator), SASLAuthenticatedChecker(authenticator)],
    )
