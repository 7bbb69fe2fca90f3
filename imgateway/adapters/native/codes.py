# -*- test-case-name: tests.test_native_server -*-
"""
Status codes of the native protocol, and their mapping to the core model's
delivery statuses: the one table both the server and the client use.
"""

from __future__ import annotations

from imgateway.core.errors import DeliveryError, DeliveryStatus, statusError

__all__ = [
    "REASONS",
    "codeForDelivery",
    "deliveryErrorFor",
]

#: Status code to its reason phrase.
REASONS: dict[int, str] = {
    110: "Challenge",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Too Large",
    426: "Encryption Required",
    429: "Too Many Requests",
    431: "Header Too Large",
    453: "Too Many Sessions",
    480: "Offline",
    482: "Loop Detected",
    486: "Busy Here",
    500: "Server Error",
    502: "No Route",
    503: "Service Unavailable",
    505: "Version Not Supported",
}

# DeliveryStatus values are the native codes (see imgateway.core.errors).
_DELIVERY_CODES = {status.value for status in DeliveryStatus}


def codeForDelivery(error: DeliveryError) -> int:
    """
    @return: The native status code of a failed delivery.
    """
    return error.status.value


def deliveryErrorFor(code: int, reason: str, alternate: str | None = None) -> DeliveryError:
    """
    The L{DeliveryError} a native error response stands for.
    """
    status = DeliveryStatus(code) if code in _DELIVERY_CODES else DeliveryStatus.SERVER_ERROR
    return statusError(status, reason, alternate)
