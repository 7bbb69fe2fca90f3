# -*- test-case-name: tests.test_xmpp_jid -*-
"""
JIDs from untrusted input, and their mapping to core addresses.

Twisted's L{JID} applies stringprep but accepts an empty localpart and parts
of any length (C{../shared/RELIABILITY-NOTES.md} finding 6); L{parseJID}
adds RFC 7622's limits. L{internJID} is never used: its cache grows without
bound.
"""

from __future__ import annotations

import functools

import re

from twisted.words.protocols.jabber.jid import JID, InvalidFormat, prep
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep

from imgateway.core.address import Address
from imgateway.core.errors import InvalidAddress

__all__ = ["MAX_PART_BYTES", "InvalidJID", "addressOf", "jidOf", "parseJID"]

#: Longest localpart, domainpart or resourcepart, in UTF-8 bytes (RFC 7622).
MAX_PART_BYTES = 1023

# The label separators of a domain name (RFC 3490 section 3.1), as Twisted's
# nameprep splits on them.
_DOTS = re.compile("[.\u3002\uff0e\uff61]")


class InvalidJID(ValueError):
    """
    Not a valid JID (XMPP stanza error C{jid-malformed}).
    """


#: How many prepared JIDs L{parseJID} remembers. Preparing (stringprep)
#: costs more than everything else a message does; unlike L{internJID}'s
#: cache, this one is bounded, so hostile input can only evict entries.
PREPARED_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PREPARED_CACHE_SIZE)
def parseJID(text: str) -> JID:
    """
    Parse and prepare a JID, with RFC 7622's limits. Results are cached
    (L{PREPARED_CACHE_SIZE} entries; JIDs are immutable); invalid input is
    not.

    @raise InvalidJID: If C{text} is not a valid JID.
    """
    if len(text) > 3 * (MAX_PART_BYTES + 1):
        raise InvalidJID("JID too long")
    bare, slash, resource = text.partition("/")
    local, at, domain = bare.rpartition("@")
    if at and not local:
        raise InvalidJID("empty localpart")
    if slash and not resource:
        raise InvalidJID("empty resourcepart")
    labels = _DOTS.split(domain)
    if len(labels) > 1 and not labels[-1]:
        # The root label is implicit: "corp.example." is "corp.example".
        del labels[-1]
    if not any(labels):
        raise InvalidJID("empty domainpart")
    if not all(labels):
        raise InvalidJID("empty label in domainpart")
    try:
        jid = JID(tuple=(local or None, ".".join(labels), resource or None))
    except (InvalidFormat, ValueError) as e:
        raise InvalidJID(str(e) or "invalid JID") from None
    except IndexError:
        # Twisted's nameprep, on a label that preparation empties ("\u00ad").
        raise InvalidJID("empty label in domainpart") from None
    if (local and not jid.user) or (resource and not jid.resource):
        # Preparation removed every character ("\u200b@corp.example").
        raise InvalidJID("empty part after preparation")
    for part in (jid.user, jid.host, jid.resource):
        if part is not None and len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise InvalidJID(f"a JID part is longer than {MAX_PART_BYTES} bytes")
    return jid


def addressOf(jid: JID) -> Address:
    """
    The core address of a JID's bare form.

    @raise InvalidJID: If the JID has no localpart, or its parts are not a
        valid address.
    """
    if not jid.user:
        raise InvalidJID(f"{jid.full()} names a server, not a user")
    return _addressOfParts(jid.user, jid.host)


@functools.lru_cache(maxsize=PREPARED_CACHE_SIZE)
def _addressOfParts(user: str, host: str) -> Address:
    """
    L{addressOf} of a prepared localpart and domainpart. Cached
    (L{PREPARED_CACHE_SIZE} entries; addresses are immutable, so every
    stanza to one contact gets the same one, normalised once); invalid
    parts are not.
    """
    try:
        return Address.fromParts(user, host)
    except InvalidAddress as e:
        raise InvalidJID(str(e)) from None


@functools.lru_cache(maxsize=PREPARED_CACHE_SIZE)
def _preparedBare(local: str, domain: str) -> tuple[str | None, str]:
    """
    The localpart and domainpart of a JID, prepared (as Twisted's L{JID}
    does). Cached: preparing the domain (nameprep) costs more than the
    rest of a login's JID.
    """
    user, host, _ = prep(local, domain, None)
    return user, host


def _asPrepared(resource: str) -> bool:
    """
    Whether resourceprep (RFC 3920 appendix B) gives C{resource} back as it
    is because it is printable ASCII: no character of it is mapped to
    nothing (table B.1) or changed by NFKC, prohibited (C.2.1 holds only
    ASCII's controls; the other tables no ASCII) or right-to-left, or
    unassigned. The bind of every login asks, with the client's resource
    or the label the home server made.
    """
    return resource.isascii() and resource.isprintable()


def jidOf(address: Address, resource: str | None = None) -> JID:
    """
    The JID of an address (with a resource, for a full JID): the same as
    C{JID(tuple=(address.local, address.domain, resource))}, but the
    address's parts are prepared once per address (a bounded cache of
    L{PREPARED_CACHE_SIZE}), and only the resource each time, unless it is
    printable ASCII, which resourceprep leaves as it is (L{_asPrepared}).

    @raise InvalidFormat: If the resource cannot be prepared (as
        Twisted's L{JID} raises).
    """
    user, host = _preparedBare(address.local, address.domain)
    if resource and not _asPrepared(resource):
        try:
            resource = resourceprep.prepare(resource)
        except UnicodeError:
            raise InvalidFormat("Invalid character in resource") from None
    jid = JID.__new__(JID)
    jid.user, jid.host, jid.resource = user, host, resource or None
    return jid
