# -*- test-case-name: tests.test_events -*-
"""
Typed errors of the core model.

Every delivery ends in a status the sender can see. Failures are the
L{DeliveryError} subclasses below, each with a L{DeliveryStatus}; adapters map
them to their wire form (a native status code, an XMPP stanza error, an IRC
numeric) in one table each.
"""

from __future__ import annotations

import enum

__all__ = [
    "AccountDisabled",
    "AccountExists",
    "AuthenticationFailed",
    "Blocked",
    "ConfigError",
    "DeliveryError",
    "DeliveryStatus",
    "DirectoryUnavailable",
    "ImgatewayError",
    "InvalidAddress",
    "LoopDetected",
    "MovedTo",
    "NoSuchAccount",
    "NoRoute",
    "NoSuchUser",
    "NotAuthorised",
    "PendingRequestsFull",
    "PersistenceFailed",
    "QuotaExceeded",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "TooLarge",
    "TooManySessions",
    "UserBusy",
    "UserOffline",
    "statusError",
]


class ImgatewayError(Exception):
    """
    Base of every error imgateway raises on purpose.
    """


class InvalidAddress(ImgatewayError, ValueError):
    """
    A string is not a valid address (or one of its parts is invalid).
    """


class ConfigError(ImgatewayError):
    """
    The configuration is unusable. The message names the file and the key.
    """


class AccountExists(ImgatewayError):
    """
    An account with that address already exists.
    """


class NoSuchAccount(ImgatewayError):
    """
    The directory has no account with that address.
    """


class AuthenticationFailed(ImgatewayError):
    """
    Credentials were wrong, or the account may not log in.
    """


class AccountDisabled(AuthenticationFailed):
    """
    The account exists but is disabled.
    """


class PersistenceFailed(ImgatewayError):
    """
    The store could not write (disk full, I/O error). Nothing acknowledged
    was lost; the operation that raised this did not happen.
    """


class DirectoryUnavailable(PersistenceFailed):
    """
    The directory could not be asked (an LDAP server down, or too slow to
    answer): nothing was looked up or changed. Trying again later may work.
    """


class PendingRequestsFull(ImgatewayError):
    """
    A home store refused to keep a new subscription request: its target
    already has as many requests awaiting an answer as allowed
    (L{SetAuthorisation.pendingLimit<imgateway.core.records.SetAuthorisation>},
    C{[home] max_pending_requests}). Nothing was changed.

    Never shown to the requester: the home server answers such a request as
    it answers any pending one, so that nobody learns anything of the target
    from it.
    """


class TooManySessions(ImgatewayError):
    """
    The user already has as many sessions as the home server allows.
    """


class DeliveryStatus(enum.Enum):
    """
    The outcome of delivering a message (or presence, or subscription event),
    as the sender sees it. Values are the native protocol's status codes,
    which are the reference for every other adapter's mapping.
    """

    DELIVERED = 200
    MOVED = 301
    NOT_AUTHORISED = 401
    BLOCKED = 403
    NO_SUCH_USER = 404
    TOO_LARGE = 413
    RATE_LIMITED = 429
    QUOTA_EXCEEDED = 454
    OFFLINE = 480
    LOOP_DETECTED = 482
    BUSY = 486
    SERVER_ERROR = 500
    NO_ROUTE = 502
    SERVICE_UNAVAILABLE = 503

    # Hashed by identity (each member is the only one of its value, and
    # members compare by identity): C{enum.Enum}'s own C{__hash__}, in
    # Python, hashes the name, and the metrics count every message in a
    # dictionary keyed by its status.
    __hash__ = object.__hash__


class DeliveryError(ImgatewayError):
    """
    A delivery failed; C{status} says why.

    @cvar status: The L{DeliveryStatus} of this kind of failure.
    @ivar text: Human-readable detail, safe to show to the sender.
    """

    status: DeliveryStatus = DeliveryStatus.SERVER_ERROR

    def __init__(self, text: str = "") -> None:
        super().__init__(text)
        self.text = text or self.status.name.lower().replace("_", " ")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class NoSuchUser(DeliveryError):
    """
    The recipient does not exist.
    """

    status = DeliveryStatus.NO_SUCH_USER


class UserOffline(DeliveryError):
    """
    The recipient exists but has no session that can take the message.
    """

    status = DeliveryStatus.OFFLINE


class Blocked(DeliveryError):
    """
    The recipient blocks the sender.
    """

    status = DeliveryStatus.BLOCKED


class NotAuthorised(DeliveryError):
    """
    The sender may not do this (for example, it is not logged in).
    """

    status = DeliveryStatus.NOT_AUTHORISED


class UserBusy(DeliveryError):
    """
    The recipient's presence rules turn the message away, naming another way
    to reach them.

    @ivar alternate: Where to reach the user instead (a URI such as
        C{tel:+15550100} or C{im:alice.mobile@corp.example}), or C{None}.
    """

    status = DeliveryStatus.BUSY

    def __init__(self, text: str = "", alternate: str | None = None) -> None:
        super().__init__(text)
        self.alternate = alternate


class MovedTo(DeliveryError):
    """
    The recipient is a user of this domain whose home is another server
    now: the sender's router had an old answer of the directory. The
    router that gets it forgets that answer and delivers once more; no
    client or other network ever sees it.

    @ivar home: The name of the recipient's home server, as the directory
        now records it.
    """

    status = DeliveryStatus.MOVED

    def __init__(self, text: str = "", home: str = "") -> None:
        super().__init__(text)
        self.home = home


class LoopDetected(DeliveryError):
    """
    The event has been seen before, or has gone through too many hops.
    """

    status = DeliveryStatus.LOOP_DETECTED


class TooLarge(DeliveryError):
    """
    The message is larger than a limit on its path.
    """

    status = DeliveryStatus.TOO_LARGE


class RateLimited(DeliveryError):
    """
    The sender is sending faster than allowed.
    """

    status = DeliveryStatus.RATE_LIMITED


class QuotaExceeded(DeliveryError):
    """
    The request would take one of the user's lists past its quota (contacts,
    access-list entries, presence rules); nothing was changed.
    """

    status = DeliveryStatus.QUOTA_EXCEEDED


class NoRoute(DeliveryError):
    """
    No route leads to the recipient's domain.
    """

    status = DeliveryStatus.NO_ROUTE


class ServerError(DeliveryError):
    """
    Something failed on our side; the failure was logged.
    """

    status = DeliveryStatus.SERVER_ERROR


class ServiceUnavailable(ServerError):
    """
    The server does not take this now (it is shutting down); the request
    may be retried later, elsewhere or once it is back.
    """

    status = DeliveryStatus.SERVICE_UNAVAILABLE


_BY_STATUS: dict[DeliveryStatus, type[DeliveryError]] = {
    cls.status: cls
    for cls in (
        NoSuchUser,
        UserOffline,
        Blocked,
        NotAuthorised,
        UserBusy,
        MovedTo,
        LoopDetected,
        TooLarge,
        RateLimited,
        QuotaExceeded,
        NoRoute,
        ServerError,
        ServiceUnavailable,
    )
}


def statusError(
    status: DeliveryStatus, text: str = "", alternate: str | None = None, home: str | None = None
) -> DeliveryError:
    """
    Build the L{DeliveryError} for a failed status (for example one that a
    peer reported back on the wire).

    @param status: Any status but L{DeliveryStatus.DELIVERED}.
    @param alternate: The alternate of a L{UserBusy} (C{486}).
    @param home: The home server of a L{MovedTo} (C{301}).
    """
    if status is DeliveryStatus.BUSY:
        return UserBusy(text, alternate)
    if status is DeliveryStatus.MOVED:
        return MovedTo(text, home or "")
    return _BY_STATUS.get(status, ServerError)(text)

