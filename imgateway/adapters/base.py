# -*- test-case-name: tests.test_native_server -*-
"""
What every face shares: listeners that stop start-up cleanly when they
cannot bind, server TLS options that survive unknown ALPN offers, and
telling loopback peers apart.
"""

from __future__ import annotations

import sys
from ipaddress import ip_address
from typing import Any

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger

__all__ = ["ListenerService", "ServerTLSOptions", "isLoopback"]

log = Logger()


def isLoopback(address: object) -> bool:
    """
    Whether a peer address is on this host (loopback IP or UNIX socket).
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            return ip_address(address.host.split("%")[0]).is_loopback
        except ValueError:
            return False
    return False


class ListenerService(StreamServerEndpointService):
    """
    Listens on one endpoint string for a face. If the endpoint cannot
    listen, start-up stops with one line naming it (exit status 1), not a
    traceback.

    @ivar description: The endpoint string.
    @ivar what: The face, for logs (C{"Native face"}, C{"XMPP c2s"}).
    """

    def __init__(self, reactor: Any, description: str, factory: Any, what: str) -> None:
        super().__init__(serverFromString(reactor, description), factory)
        self.description = description
        self.what = what
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            message = f"imgateway: cannot listen on {self.description}: {e.socketError or e}"
            log.critical("{message}", message=message)
            sys.stderr.write(message + "\n")
            raise SystemExit(1) from None
        log.info("{what} listening on {endpoint}", what=self.what, endpoint=self.description)


class _ALPNSafeContext(SSL.Context):
    """
    An OpenSSL context whose ALPN selection declines politely when nothing
    overlaps. Twisted 26.10's selection callback returns C{b""} then, which
    OpenSSL 3 turns into an C{internal_error} alert that kills the
    handshake: any client offering a protocol we do not list (Prosody on
    s2s STARTTLS, XMPP clients offering C{xmpp-client}) could not connect.
    """

    def set_alpn_select_callback(self, callback: Any) -> None:
        def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
            chosen = callback(connection, offered)
            return chosen if chosen else SSL.NO_OVERLAPPING_PROTOCOLS

        super().set_alpn_select_callback(select)


class ServerTLSOptions(CertificateOptions):
    """
    L{CertificateOptions} for servers whose contexts decline unknown ALPN
    offers instead of aborting the handshake. Pass C{acceptableProtocols}
    with the protocols the face speaks.
    """

    _contextFactory = _ALPNSafeContext
