"""
The native-protocol client: a Twisted library (L{imgateway.client.protocol})
and the C{imgateway-client} command: its command line (L{imgateway.client.cli}),
what the user types (L{imgateway.client.parsing}), what it prints
(L{imgateway.client.formatting}), the interactive console
(L{imgateway.client.chat}) and the one-shot commands
(L{imgateway.client.oneshot}).
"""

from imgateway.client.protocol import (
    ClientError,
    ClientObserver,
    NativeClientProtocol,
    Redirected,
    TooManyRedirects,
    connect,
)

__all__ = ["ClientError", "ClientObserver", "NativeClientProtocol", "Redirected", "TooManyRedirects", "connect"]
