# -*- test-case-name: tests.test_passwords -*-
"""
SASLprep (RFC 4013), the stringprep profile that SASL mechanisms (PLAIN,
RFC 4616; SCRAM, RFC 5802) apply to passwords, built on the standard
library's L{stringprep} tables (Unicode 3.2, as RFC 3454 requires).

It maps non-ASCII spaces to the ASCII space, drops characters that are
"commonly mapped to nothing" (soft hyphen, zero-width joiners...),
normalises with NFKC (so a composed and a decomposed C{é} are the same
password), then refuses control characters and the other prohibited
classes, and right-to-left text that breaks the bidirectional rule.

User names are not prepared here: they are addresses, normalised by
L{imgateway.core.address.Address} (NFKC and case folding), which is at
least as strict.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable

__all__ = ["SASLprepError", "saslprep"]

#: The classes a prepared string may not hold (RFC 4013 section 2.3).
_PROHIBITED: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("a non-ASCII space", stringprep.in_table_c12),
    ("a control character", stringprep.in_table_c21_c22),
    ("a private use character", stringprep.in_table_c3),
    ("a non-character code point", stringprep.in_table_c4),
    ("a surrogate code point", stringprep.in_table_c5),
    ("a character inappropriate for plain text", stringprep.in_table_c6),
    ("a character inappropriate for canonical representation", stringprep.in_table_c7),
    ("a character that changes display properties", stringprep.in_table_c8),
    ("a tagging character", stringprep.in_table_c9),
)


class SASLprepError(ValueError):
    """
    The string cannot be prepared: it holds a prohibited character or
    breaks the bidirectional rule. The message says which, never the
    string itself (it may be a password).
    """


def saslprep(text: str, allowUnassigned: bool = False) -> str:
    """
    Prepare a string with SASLprep.

    @param text: The string (a password).
    @param allowUnassigned: Whether code points unassigned in Unicode 3.2
        are allowed: C{False} for a string to be stored (a new password),
        C{True} for a query (a password to check), as RFC 3454 section 7
        says.
    @return: The prepared string (possibly empty, when every character was
        mapped to nothing).
    @raise SASLprepError: If it cannot be prepared.
    """
    if text.isascii() and text.isprintable():
        # Printable ASCII (U+0020 to U+007E), most passwords, comes out as
        # it went in: B.1 and C.1.2 hold no ASCII, NFKC leaves it alone,
        # the only prohibited ASCII are the controls (C.2.1), and none of
        # it is right-to-left. Nothing is cached: a password is kept
        # nowhere.
        return text
    # 1. Map: non-ASCII spaces to SPACE, and B.1 to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # 2. Normalise: NFKC, as of Unicode 3.2.
    normal = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normal:
        return normal
    # 3. Prohibit.
    for c in normal:
        for what, test in _PROHIBITED:
            if test(c):
                raise SASLprepError(f"the string holds {what}")
        if not allowUnassigned and stringprep.in_table_a1(c):
            raise SASLprepError("the string holds a code point unassigned in Unicode 3.2")
    # 4. Bidirectional characters (RFC 3454 section 6).
    if any(stringprep.in_table_d1(c) for c in normal):
        if any(stringprep.in_table_d2(c) for c in normal):
            raise SASLprepError("the string mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise SASLprepError("right-to-left text must start and end with a right-to-left character")
    return normal
