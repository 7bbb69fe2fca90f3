# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
Server-to-server authentication (RFC 6120, XEP-0178, XEP-0220, XEP-0185,
XEP-0344), apart from the streams that carry it: SASL EXTERNAL's
authorisation identity, and dialback keys from a secret that never shows
in a C{repr} or a log. How a peer's certificate is checked (OpenSSL's
chain verification recorded rather than fatal, then L{service_identity}
against the remote I{domain}) is L{imgateway.net.tls}'.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import attrs

from imgateway.adapters.xmpp.jid import InvalidJID, parseJID

__all__ = [
    "ALPN_PROTOCOLS",
    "DialbackKeys",
    "MAX_KEY_CHARS",
    "NS_DIALBACK",
    "NS_DIALBACK_FEATURES",
    "NS_SASL",
    "dialbackKey",
    "externalAuthzidProblem",
]

NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURES = "urn:xmpp:features:dialback"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: Longest dialback key we accept.
MAX_KEY_CHARS = 1024


def dialbackKey(secret: bytes, receiving: str, originating: str, streamID: str) -> str:
    """
    A dialback key (XEP-0185):
    C{HMAC-SHA256(hex(SHA256(secret)), receiving + ' ' + originating + ' ' + streamID)},
    in hex.
    """
    keyed = hashlib.sha256(secret).hexdigest().encode("ascii")
    return hmac.new(keyed, f"{receiving} {originating} {streamID}".encode(), hashlib.sha256).hexdigest()


#: What we answer a TLS client's ALPN with (XEP-0368).
ALPN_PROTOCOLS = [b"xmpp-server"]


@attrs.frozen
class DialbackKeys:
    """
    Our dialback keys (XEP-0185), from a secret that stays out of every
    C{repr} and log.

    @ivar secret: Keys every dialback key; the same in every process that
        serves the domain, and across restarts (C{s2s_dialback_secret_file}).
    @ivar domain: Our domain (the originating domain of our keys).
    """

    secret: bytes = attrs.field(repr=False)
    domain: str

    def key(self, receiving: str, streamID: str) -> str:
        """
        @return: Our key for stream C{streamID} from C{receiving} to us.
        """
        return dialbackKey(self.secret, receiving, self.domain, streamID)

    def valid(self, receiving: str, streamID: str, key: str) -> bool:
        """
        @return: Whether C{key} is ours for that stream (in constant time).
        """
        return hmac.compare_digest(self.key(receiving, streamID).encode("ascii"), key.encode("utf-8", "replace"))


def externalAuthzidProblem(text: str, identity: str) -> str | None:
    """
    Check the authorisation identity of a SASL EXTERNAL C{<auth/>} (XEP-0178):
    none (empty or C{=}), or C{identity}, the domain the certificate proves.

    @param text: The C{<auth/>} element's text.
    @return: C{None} if it is acceptable, else the SASL failure condition.
    """
    text = text.strip()
    if text in ("", "="):
        return None
    try:
        authzid = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "incorrect-encoding"
    if not authzid:
        return None
    try:
        jid = parseJID(authzid)
    except InvalidJID:
        return "invalid-authzid"
    if jid.user is not None or jid.resource is not None or jid.host != identity:
        return "invalid-authzid"
    return None
