# -*- test-case-name: tests.test_address -*-
"""
Addresses: C{user@domain}, normalised once, compared by value.

An L{Address} names a user anywhere: on this gateway, on a peer domain, or on an
external network reached through a domain (an XMPP server, an IRC network).
"""

from __future__ import annotations

import functools
import sys
import unicodedata

from attrs import frozen

from imgateway.core.errors import InvalidAddress

__all__ = [
    "Address",
    "MAX_LOCAL_BYTES",
    "MAX_DOMAIN_CHARS",
    "PARSED_CACHE_SIZE",
    "normaliseDomain",
    "parseAddress",
    "validateAccountLocalPart",
]

#: Longest local part, in UTF-8 bytes (the XMPP limit, RFC 7622 section 3.3).
MAX_LOCAL_BYTES = 1023

#: Longest domain, in characters of its ASCII (IDNA) form (RFC 1035).
MAX_DOMAIN_CHARS = 253

#: Longest label of a domain (RFC 1035).
MAX_LABEL_CHARS = 63

#: Characters a local part may never hold (separators of the address forms
#: used on every protocol we speak, plus space).
_FORBIDDEN_LOCAL = frozenset("@/\\\"&'<>:\x7f ")

#: Characters allowed in the local part of an account hosted here: a
#: conservative set, so that two accounts never look alike on screen.
_ACCOUNT_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-+")

#: Longest local part of an account hosted here.
MAX_ACCOUNT_LOCAL_CHARS = 64

_URI_SCHEMES = ("im:", "pres:", "xmpp:", "mailto:")


def normaliseDomain(domain: str) -> str:
    """
    Normalise a domain: IDNA to its ASCII form, lower case, no trailing dot.

    @param domain: A domain as written by a person or a peer.
    @return: The normalised domain, interned (C{sys.intern}): the addresses
        of one domain share one string, not one each (the caches of parsed
        addresses and of user names hold thousands).
    @raise InvalidAddress: If it is empty, too long, or not a valid name.
    """
    if not domain:
        raise InvalidAddress("empty domain")
    if domain.endswith("."):
        # The root label is implicit: "corp.example." is "corp.example".
        domain = domain[:-1]
    try:
        ascii = domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError) as e:
        raise InvalidAddress(f"invalid domain {domain!r}: {e}") from None
    if not ascii or len(ascii) > MAX_DOMAIN_CHARS:
        raise InvalidAddress(f"domain longer than {MAX_DOMAIN_CHARS} characters")
    for label in ascii.split("."):
        if not label or len(label) > MAX_LABEL_CHARS:
            raise InvalidAddress(f"invalid domain {domain!r}: bad label length")
        if label.startswith("-") or label.endswith("-"):
            raise InvalidAddress(f"invalid domain {domain!r}: label starts or ends with '-'")
        for c in label:
            if not (c.isalnum() or c == "-"):
                raise InvalidAddress(f"invalid domain {domain!r}: character {c!r}")
    return sys.intern(ascii)


def _normaliseLocal(local: str) -> str:
    if not local:
        raise InvalidAddress("empty local part")
    # NFKC folds compatibility forms (fullwidth letters and such) and
    # casefold() makes the local part case-insensitive, as for e-mail users
    # of Exchange and for XMPP localparts.
    folded = unicodedata.normalize("NFKC", local).casefold()
    # Default-ignorable characters (zero-width space, soft hyphen, ...) would
    # make two addresses look alike: drop them, as stringprep's B.1 does.
    folded = "".join(c for c in folded if not _isIgnorable(c))
    if not folded:
        raise InvalidAddress("empty local part")
    for c in folded:
        if c in _FORBIDDEN_LOCAL or unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"):
            raise InvalidAddress(f"invalid character {c!r} in local part")
    if len(folded.encode("utf-8")) > MAX_LOCAL_BYTES:
        raise InvalidAddress(f"local part longer than {MAX_LOCAL_BYTES} bytes")
    return folded


def _isIgnorable(c: str) -> bool:
    return c in "\u00ad\u034f\u180b\u180c\u180d\u200b\u200c\u200d\u2060\ufe00\ufeff" or (
        "\ufe00" <= c <= "\ufe0f"
    )


@frozen(eq=False)
class Address:
    """
    A normalised C{user@domain} address.

    Construct one with L{Address.fromString} (or L{Address.fromParts}); the
    attributes are already normalised, so two addresses are the same user
    exactly when they compare equal.

    Compared, ordered and hashed by value (local part, then domain), as
    C{attrs.frozen(order=True)} would make it, by methods written here: in
    a module compiled with mypyc, C{==} between two addresses calls this
    class's C{__eq__} (compiled too, as C{__hash__}, which the home
    server's dictionaries keyed by address call for every message), where
    with attrs' generated methods, which mypyc does not see, it would test
    identity (C{imgateway._compiled}).

    @ivar local: The normalised local part.
    @ivar domain: The normalised (ASCII, lower-case) domain.
    """

    local: str
    domain: str

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        # An Address, by the test above (mypy narrows it): no isinstance()
        # call, as this runs for every look-up of an address key that is
        # not the key object itself.
        return self.local == other.local and self.domain == other.domain

    def __hash__(self) -> int:
        return hash((self.local, self.domain))

    def __lt__(self, other: Address) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.local, self.domain) < (other.local, other.domain)

    def __le__(self, other: Address) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.local, self.domain) <= (other.local, other.domain)

    def __gt__(self, other: Address) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.local, self.domain) > (other.local, other.domain)

    def __ge__(self, other: Address) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.local, self.domain) >= (other.local, other.domain)

    @classmethod
    def fromParts(cls, local: str, domain: str) -> Address:
        """
        Build an address from its two parts, normalising both.

        @raise InvalidAddress: If either part is invalid.
        """
        return cls(_normaliseLocal(local), normaliseDomain(domain))

    @classmethod
    def fromString(cls, text: str) -> Address:
        """
        Parse C{user@domain}, or one of its URI forms (C{im:}, C{pres:},
        C{xmpp:}, C{mailto:}). Results are cached (L{PARSED_CACHE_SIZE}
        entries, so hostile input can only evict them).

        @raise InvalidAddress: If C{text} is not a valid address.
        """
        if cls is Address:
            return _parseCached(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Address:
        for scheme in _URI_SCHEMES:
            if text[: len(scheme)].lower() == scheme:
                text = text[len(scheme) :]
                break
        local, sep, domain = text.rpartition("@")
        if not sep:
            raise InvalidAddress(f"{text[:80]!r} is not of the form user@domain")
        return cls.fromParts(local, domain)

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def imURI(self) -> str:
        """
        @return: The RFC 3860 form, C{im:user@domain}.
        """
        return f"im:{self.local}@{self.domain}"

    def presURI(self) -> str:
        """
        @return: The RFC 3859 form, C{pres:user@domain}.
        """
        return f"pres:{self.local}@{self.domain}"


#: How many parsed addresses L{Address.fromString} remembers: normalising
#: (NFKC, casefolding, IDNA) costs more than routing a message.
PARSED_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def _parseCached(text: str) -> Address:
    return Address._parse(text)


#: L{Address.fromString} for an L{Address} (the same cache), without the
#: class method's binding and call: for code that parses addresses for
#: every message (the link codec's reader), where those cost about 900
#: instructions per address (C{bench/README.md}, "recv12").
parseAddress = _parseCached


def validateAccountLocalPart(address: Address) -> None:
    """
    Check that an address may name an account hosted here.

    Remote addresses may use any local part their network allows; accounts we
    create use a small, unambiguous set (C{a-z 0-9 . _ - +}, at most 64
    characters), so that no two of our users look alike.

    @raise InvalidAddress: If it may not.
    """
    local = address.local
    if len(local) > MAX_ACCOUNT_LOCAL_CHARS:
        raise InvalidAddress(
            f"account names are at most {MAX_ACCOUNT_LOCAL_CHARS} characters"
        )
    bad = sorted(set(local) - _ACCOUNT_LOCAL)
    if bad:
        raise InvalidAddress(
            f"account names may only use a-z, 0-9 and . _ - + (not {''.join(bad)!r})"
        )
    if local[0] in ".-" or local[-1] in ".-":
        raise InvalidAddress("account names may not start or end with '.' or '-'")
