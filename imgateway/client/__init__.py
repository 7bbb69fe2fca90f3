"""
The native-protocol client: a Twisted library (L{imgateway.client.protocol})
and the C{imgateway-client} command (L{imgateway.client.cli}).
"""

from imgateway.client.protocol import ClientError, ClientObserver, NativeClientProtocol, connect

__all__ = ["ClientError", "ClientObserver", "NativeClientProtocol", "connect"]
