"""
The twistd plugin: C{twistd imgateway --config FILE}.

This file is imported by twistd before it picks a reactor, so it imports
nothing but L{ServiceMaker}; L{imgateway.tap} is loaded only when the
subcommand runs.
"""

from twisted.application.service import ServiceMaker

imgateway = ServiceMaker(
    "imgateway",
    "imgateway.tap",
    "Instant-messaging home server and multi-protocol gateway",
    "imgateway",
)
