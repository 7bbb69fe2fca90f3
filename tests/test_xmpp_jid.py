# -*- test-case-name: tests.test_xmpp_jid -*-
"""
Tests for L{imgateway.adapters.xmpp.jid}: JIDs from untrusted input, with
RFC 7622's limits, and their mapping to core addresses.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID, InvalidFormat, prep
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep

from imgateway.adapters.xmpp import jid as jidModule
from imgateway.adapters.xmpp.jid import (
    PREPARED_CACHE_SIZE,
    MAX_PART_BYTES,
    InvalidJID,
    addressOf,
    jidOf,
    parseJID,
)
from imgateway.core.address import Address

#: Characters for the random JIDs: separators, label dots of every script,
#: controls, unpaired surrogates, characters preparation removes or maps,
#: right-to-left and non-BMP characters.
ALPHABET = [
    *"abcXYZ019@/.-_ <>&'\"\\:[]",
    *"\t\n\r\x00\x01\x1b\x7f\x85",
    "\u00ad", "\u200b", "\u200d", "\ufeff", "\u034f",
    "\u3002", "\uff0e", "\uff61", "\u2024",
    "\uff41", "\u0430", "\u00e9", "\u0301", "\u00df", "\u0130", "\u03a3", "\ufb01", "\u2126",
    "\u0627", "\u05d0", "\u200f",
    "\ufffd", "\ufffe", "\uffff", "\ue000", "\u2028",
    "\ud800", "\udbff", "\udc00", "\udfff",
    "\U0001f600", "\U00020000", "\U0010ffff",
]


def randomStrings(count: int, seed: int = 7622) -> list[str]:
    """
    C{count} strings of up to 16 characters from L{ALPHABET}, the same on
    every run.
    """
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 16))) for _ in range(count)]


def utf8Length(text: str) -> int:
    """
    The length of C{text} in UTF-8 bytes.
    """
    return len(text.encode("utf-8"))


class NormalisationTests(SynchronousTestCase):
    """
    L{parseJID} prepares each part (nodeprep, nameprep, resourceprep).
    """

    def test_case(self) -> None:
        """
        The localpart and domainpart are case-folded; the resourcepart
        keeps its case.
        """
        jid = parseJID("Juliet@Example.COM/Balcony")
        self.assertEqual((jid.user, jid.host, jid.resource), ("juliet", "example.com", "Balcony"))
        self.assertEqual(jid, parseJID("juliet@example.com/Balcony"))
        self.assertNotEqual(jid, parseJID("juliet@example.com/balcony"))

    def test_fullwidth(self) -> None:
        """
        Fullwidth letters and the fullwidth and ideographic full stops fold
        to their ASCII forms.
        """
        jid = parseJID("\uff2a\uff55\uff4c\uff49\uff45\uff54@example\uff0ecom")
        self.assertEqual(jid.full(), "juliet@example.com")
        self.assertEqual(parseJID("\uff41dmin@corp\u3002example").full(), "admin@corp.example")

    def test_ignorableRemoved(self) -> None:
        """
        Soft hyphens and zero-width spaces are removed from the localpart.
        """
        self.assertEqual(parseJID("jul\u00adi\u200bet@example.com").user, "juliet")

    def test_homographDistinct(self) -> None:
        """
        A Cyrillic letter is not folded to the Latin one it looks like:
        C{\u0430dmin} is another user than C{admin}
        (C{RELIABILITY-NOTES.md} finding 6; new accounts are restricted to
        ASCII elsewhere).
        """
        self.assertNotEqual(parseJID("\u0430dmin@corp.example"), parseJID("admin@corp.example"))

    def test_trailingDotRemoved(self) -> None:
        """
        A trailing dot (the DNS root) is removed, whatever the script of
        the dot, so C{example.com.} is the same domain as C{example.com}.
        """
        for text in ("juliet@example.com.", "juliet@example.com\u3002", "juliet@example.com\uff0e", "juliet@example.com./r"):
            jid = parseJID(text)
            self.assertEqual(jid.host, "example.com", text)
            self.assertEqual(jid.userhostJID(), parseJID("juliet@example.com"), text)
        self.assertEqual(parseJID("example.com.").full(), "example.com")

    def test_domainOnly(self) -> None:
        """
        A JID may be a bare domain, with or without a resource.
        """
        jid = parseJID("example.com")
        self.assertEqual((jid.user, jid.host, jid.resource), (None, "example.com", None))
        jid = parseJID("example.com/admin")
        self.assertEqual((jid.user, jid.host, jid.resource), (None, "example.com", "admin"))

    def test_resourceSeparators(self) -> None:
        """
        The resourcepart runs from the first C{/} to the end and may hold
        C{@} and C{/}.
        """
        jid = parseJID("juliet@example.com/a@b/c")
        self.assertEqual((jid.user, jid.host, jid.resource), ("juliet", "example.com", "a@b/c"))

    def test_idempotent(self) -> None:
        """
        Parsing the full form of a parsed JID gives the same JID.
        """
        for text in ("Juliet@Example.COM/Balcony", "\uff41dmin@corp\u3002example.", "a@b\u00fccher.example/\u00e9", "x/y"):
            jid = parseJID(text)
            self.assertEqual(parseJID(jid.full()), jid, text)

    def test_cacheBounded(self) -> None:
        """
        L{parseJID} remembers at most L{PREPARED_CACHE_SIZE} prepared JIDs
        however many distinct ones it sees, and never touches Twisted's
        unbounded C{internJID} cache.
        """
        from twisted.words.protocols.jabber import jid as twistedJID

        cache = getattr(twistedJID, "__internJIDs")
        interned = dict(cache)
        for i in range(PREPARED_CACHE_SIZE + 100):
            parseJID(f"user{i}@flood.example/r")
        self.assertLessEqual(parseJID.cache_info().currsize, PREPARED_CACHE_SIZE)
        self.assertEqual(cache, interned)


class LimitTests(SynchronousTestCase):
    """
    Each part is at most 1023 bytes of UTF-8 once prepared (RFC 7622
    sections 3.2, 3.3, 3.4).
    """

    def assertBoundary(self, fits: str, tooLong: str, make: str) -> None:
        """
        C{make} with C{{}} replaced by C{fits} parses; with C{tooLong}, it
        raises L{InvalidJID}.
        """
        self.assertEqual(utf8Length(fits), MAX_PART_BYTES)
        self.assertEqual(utf8Length(tooLong), MAX_PART_BYTES + 1)
        parseJID(make.format(fits))
        self.assertRaises(InvalidJID, parseJID, make.format(tooLong))

    def test_maxPartBytes(self) -> None:
        """
        The limit is 1023 bytes.
        """
        self.assertEqual(MAX_PART_BYTES, 1023)

    def test_localpart(self) -> None:
        """
        A localpart of 1023 bytes is accepted, 1024 refused: ASCII, two-,
        three- and four-byte characters.
        """
        make = "{}@example.com"
        self.assertBoundary("a" * 1023, "a" * 1024, make)
        self.assertBoundary("\u00e9" * 511 + "a", "\u00e9" * 512, make)
        self.assertBoundary("\u4e2d" * 341, "\u4e2d" * 341 + "a", make)
        self.assertBoundary("\U00020000" * 255 + "abc", "\U00020000" * 256, make)

    def test_domainpart(self) -> None:
        """
        A domainpart of 1023 bytes is accepted, 1024 refused, in one label
        or in many, ASCII or not.
        """
        make = "juliet@{}"
        self.assertBoundary("a" * 1023, "a" * 1024, make)
        self.assertBoundary(".".join(["a" * 63] * 16), ".".join(["a" * 63] * 15 + ["a" * 64]), make)
        self.assertBoundary("\u00e9" * 511 + "a", "\u00e9" * 512, make)

    def test_resourcepart(self) -> None:
        """
        A resourcepart of 1023 bytes is accepted, 1024 refused.
        """
        make = "juliet@example.com/{}"
        self.assertBoundary("r" * 1023, "r" * 1024, make)
        self.assertBoundary("\u00e9" * 511 + "r", "\u00e9" * 512, make)
        self.assertBoundary("\U00020000" * 255 + "abc", "\U00020000" * 256, make)

    def test_allPartsAtLimit(self) -> None:
        """
        A JID with all three parts at the limit (3071 characters) is
        accepted.
        """
        jid = parseJID("a" * 1023 + "@" + "b" * 1023 + "/" + "c" * 1023)
        self.assertEqual([utf8Length(p or "") for p in (jid.user, jid.host, jid.resource)], [1023] * 3)

    def test_preparedFormCounts(self) -> None:
        """
        The limit applies to the prepared form: 1023 fullwidth letters
        (3069 bytes as sent) are 1023 bytes once folded, and accepted.
        """
        jid = parseJID("\uff41" * 1023 + "@example.com")
        self.assertEqual(jid.user, "a" * 1023)
        self.assertRaises(InvalidJID, parseJID, "\uff41" * 1024 + "@example.com")

    def test_hugeInput(self) -> None:
        """
        A megabyte of input is refused with L{InvalidJID}, before any
        preparation.
        """
        self.assertRaises(InvalidJID, parseJID, "a" * 1000000 + "@example.com")
        self.assertRaises(InvalidJID, parseJID, "juliet@example.com/" + "\u00ad" * 1000000)


class InvalidTests(SynchronousTestCase):
    """
    What is not a JID raises L{InvalidJID}, and nothing else.
    """

    def test_emptyParts(self) -> None:
        """
        Empty localparts, domainparts, resourceparts and labels are refused,
        including parts that preparation empties.
        """
        for text in (
            "",
            "@",
            "/",
            "@example.com",
            "juliet@",
            "juliet@/r",
            "juliet@example.com/",
            "/resource",
            ".",
            "juliet@.",
            "juliet@..",
            "juliet@example..com",
            "juliet@.example.com",
            "juliet@example.com..",
            "juliet@example\u3002\u3002",
            "\u200b@example.com",
            "\u00ad\u200b@example.com",
            "juliet@example.com/\u00ad",
            "juliet@\u00ad.example.com",
        ):
            self.assertRaises(InvalidJID, parseJID, text)

    def test_prohibited(self) -> None:
        """
        Characters that preparation prohibits are refused in each part.
        """
        for text in (
            "jul iet@example.com",
            "jul\x00iet@example.com",
            "jul:iet@example.com",
            "<juliet>@example.com",
            "juliet@exa mple.com",
            "juliet@exam_ple.com",
            "juliet@-example.com",
            "juliet@[::1]",
            "juliet@example.com/a\x00b",
            "juliet@example.com/a\x07b",
            "jul\ud800iet@example.com",
            "juliet@exa\udc00mple.com",
            "juliet@example.com/\udfff",
            "juliet@example.com/\ufffe",
            "a@b@example.com",
        ):
            self.assertRaises(InvalidJID, parseJID, text)

    def test_invalidJIDIsValueError(self) -> None:
        """
        L{InvalidJID} is a L{ValueError}.
        """
        self.assertTrue(issubclass(InvalidJID, ValueError))

    def test_randomGarbage(self) -> None:
        """
        Thousands of random strings of separators, controls, unpaired
        surrogates and odd characters either parse or raise L{InvalidJID};
        whatever parses has non-empty parts within the limits, no empty
        domain label, and parses again to itself.
        """
        parsed = 0
        for text in randomStrings(3000) + [s + "@example.com" for s in randomStrings(500, seed=1)]:
            try:
                jid = parseJID(text)
            except InvalidJID:
                continue
            parsed += 1
            for part in (jid.user, jid.resource):
                self.assertTrue(part is None or 0 < utf8Length(part) <= MAX_PART_BYTES, repr(text))
            self.assertTrue(0 < utf8Length(jid.host) <= MAX_PART_BYTES, repr(text))
            self.assertNotIn("", jid.host.split("."), repr(text))
            self.assertEqual(parseJID(jid.full()), jid, repr(text))
        # The generator does produce valid JIDs, so both paths are tested.
        self.assertGreater(parsed, 100)


class AddressTests(SynchronousTestCase):
    """
    L{addressOf} and L{jidOf} map between JIDs and core addresses.
    """

    def test_addressOf(self) -> None:
        """
        The address of a JID is its bare form, normalised.
        """
        self.assertEqual(addressOf(parseJID("Juliet@Example.COM/Balcony")), Address.fromString("juliet@example.com"))

    def test_addressOfDomain(self) -> None:
        """
        A domain-only JID names a server, not a user: L{InvalidJID}.
        """
        self.assertRaises(InvalidJID, addressOf, parseJID("example.com"))
        self.assertRaises(InvalidJID, addressOf, parseJID("example.com/resource"))

    def test_addressOfNotAnAddress(self) -> None:
        """
        A valid JID that is not a valid address (a backslash in the
        localpart, a domain IDNA refuses) raises L{InvalidJID}.
        """
        self.assertRaises(InvalidJID, addressOf, parseJID("jul\\iet@example.com"))
        self.assertRaises(InvalidJID, addressOf, parseJID("juliet@" + "a" * 64 + ".example"))

    def test_addressOfInterned(self) -> None:
        """
        Every JID of one bare address, whatever its resource or spelling,
        maps to the same L{Address} object: normalised once, then taken
        from a cache of at most L{PREPARED_CACHE_SIZE} entries; an invalid
        one raises every time (it is not cached).
        """
        first = addressOf(parseJID("Juliet@Example.COM/Balcony"))
        self.assertIs(addressOf(parseJID("juliet@example.com")), first)
        self.assertIs(addressOf(parseJID("JULIET@example.com/garden")), first)
        for _ in range(2):
            self.assertRaises(InvalidJID, addressOf, parseJID("jul\\iet@example.com"))
        for i in range(PREPARED_CACHE_SIZE + 100):
            addressOf(parseJID(f"user{i}@flood.example"))
        self.assertLessEqual(jidModule._addressOfParts.cache_info().currsize, PREPARED_CACHE_SIZE)
        self.assertEqual(addressOf(parseJID("juliet@example.com")), first)

    def test_jidOf(self) -> None:
        """
        L{jidOf} gives the bare JID of an address, or a full JID with a
        resource.
        """
        address = Address.fromString("juliet@example.com")
        self.assertEqual(jidOf(address).full(), "juliet@example.com")
        self.assertEqual(jidOf(address, "Balcony").full(), "juliet@example.com/Balcony")

    def test_jidOfAsTwisted(self) -> None:
        """
        L{jidOf} gives the JID that Twisted's L{JID} makes of the same
        parts, resource prepared, for every resource (none, empty, one
        that preparation changes).
        """
        for text in ("juliet@example.com", "\u00e9lise@b\u00fccher.example", "\u4e2d@xn--fiq228c.example"):
            address = Address.fromString(text)
            for resource in (None, "", "Balcony", "\u2163 Home", "r\u00ad"):
                expected = JID(tuple=(address.local, address.domain, resource))
                got = jidOf(address, resource)
                self.assertEqual((got.user, got.host, got.resource), (expected.user, expected.host, expected.resource))
                self.assertEqual(got, expected)
                self.assertEqual(hash(got), hash(expected))

    def test_jidOfPreparesAddressOnce(self) -> None:
        """
        L{jidOf} prepares an address's parts once, whatever the resources
        asked for after: only the resource is prepared each time.
        """
        calls: list[tuple[object, ...]] = []

        def counting(*args: object) -> tuple[str | None, str, str | None]:
            calls.append(args)
            return prep(*args)  # type: ignore[arg-type]

        self.patch(jidModule, "prep", counting)
        jidModule._preparedBare.cache_clear()
        self.addCleanup(jidModule._preparedBare.cache_clear)
        address = Address.fromString("juliet@example.com")
        full = [jidOf(address, f"r{i}").full() for i in range(3)]
        self.assertEqual(full, [f"juliet@example.com/r{i}" for i in range(3)])
        self.assertEqual(calls, [("juliet", "example.com", None)])

    def test_jidOfPrintableASCIIResource(self) -> None:
        """
        A printable ASCII resource is taken as it is, without resourceprep
        (which gives every such resource back unchanged): the resources
        that clients bind at login, and the labels the home server makes.
        """
        address = Address.fromString("juliet@example.com")
        ascii = "".join(map(chr, range(0x20, 0x7F)))
        for resource in (ascii, "desk", "imgateway-0a1b2c3d", "r-2", " spaced out "):
            self.assertEqual(resourceprep.prepare(resource), resource)
        calls: list[str] = []
        real = resourceprep.prepare

        def counting(text: str) -> str:
            calls.append(text)
            prepared: str = real(text)
            return prepared

        self.patch(resourceprep, "prepare", counting)
        self.assertEqual(jidOf(address, ascii).resource, ascii)
        self.assertEqual(jidOf(address, "desk").full(), "juliet@example.com/desk")
        self.assertEqual(calls, [])
        # Anything else is prepared: a control character, non-ASCII text.
        self.assertEqual(jidOf(address, "\u2163 Home").resource, "IV Home")
        self.assertEqual(calls, ["\u2163 Home"])
        self.assertRaises(InvalidFormat, jidOf, address, "tab\there")

    def test_jidOfBadResource(self) -> None:
        """
        A resource that cannot be prepared is refused as Twisted's L{JID}
        refuses it, with L{InvalidFormat}.
        """
        address = Address.fromString("juliet@example.com")
        self.assertRaises(InvalidFormat, JID, tuple=(address.local, address.domain, "a\u0000b"))
        self.assertRaises(InvalidFormat, jidOf, address, "a\u0000b")

    def test_roundTripFromAddress(self) -> None:
        """
        C{addressOf(jidOf(a)) == a} for every address, IDN domains
        included.
        """
        for text in ("juliet@example.com", "j.doe+x@corp.example", "\u00e9lise@b\u00fccher.example", "\u4e2d@xn--fiq228c.example"):
            address = Address.fromString(text)
            self.assertEqual(addressOf(jidOf(address)), address, text)
            self.assertEqual(addressOf(jidOf(address, "r")), address, text)
            self.assertEqual(addressOf(parseJID(str(address))), address, text)

    def test_roundTripFromJID(self) -> None:
        """
        C{jidOf(addressOf(j))} is C{j}'s bare JID, for JIDs with ASCII
        domains.
        """
        for text in ("juliet@example.com", "Juliet@Example.COM/Balcony", "\uff41dmin@corp.example.", "\u00e9lise@example.com/r"):
            jid = parseJID(text)
            self.assertEqual(jidOf(addressOf(jid)), jid.userhostJID(), text)
            self.assertEqual(jidOf(addressOf(jid), jid.resource), jid, text)

    def test_idnComparedAsAddresses(self) -> None:
        """
        An IDN domain stays in Unicode in a JID and in ASCII in an address:
        the two JID spellings differ, their addresses are equal. Compare
        users by address, not by JID.
        """
        unicode, ascii = parseJID("a@b\u00fccher.example"), parseJID("a@xn--bcher-kva.example")
        self.assertNotEqual(unicode, ascii)
        self.assertEqual(addressOf(unicode), addressOf(ascii))
        self.assertEqual(jidOf(addressOf(unicode)), ascii)
