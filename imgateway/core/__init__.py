"""
The protocol-free core model: addresses, presence, events and errors.
"""

from imgateway.core.address import Address
from imgateway.core.errors import DeliveryError, DeliveryStatus
from imgateway.core.events import (
    Event,
    Message,
    PresenceProbe,
    PresenceUpdate,
    SubscriptionEvent,
    SubscriptionKind,
)
from imgateway.core.presence import OFFLINE, Presence, PresenceState

__all__ = [
    "OFFLINE",
    "Address",
    "DeliveryError",
    "DeliveryStatus",
    "Event",
    "Message",
    "Presence",
    "PresenceProbe",
    "PresenceState",
    "PresenceUpdate",
    "SubscriptionEvent",
    "SubscriptionKind",
]
