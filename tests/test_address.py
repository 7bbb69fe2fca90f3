"""
Tests for L{imgateway.core.address}.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from imgateway.core import address as addressModule

from imgateway.core.address import (
    MAX_DOMAIN_CHARS,
    MAX_LOCAL_BYTES,
    PARSED_CACHE_SIZE,
    Address,
    normaliseDomain,
    validateAccountLocalPart,
)
from imgateway.core.errors import InvalidAddress


class AddressTests(SynchronousTestCase):
    """
    Parsing and normalisation.
    """

    def test_normalised(self) -> None:
        """
        Local parts are case-folded and NFKC-normalised, domains lower-cased
        IDNA without a trailing dot; equal users compare equal.
        """
        a = Address.fromString("Alice@Corp.Example.")
        self.assertEqual((a.local, a.domain), ("alice", "corp.example"))
        self.assertEqual(Address.fromString("\uff41lice@corp.example"), a)
        self.assertEqual(Address.fromString("al\u200bice@corp.example"), a)
        self.assertEqual(Address.fromString("bob@b\u00fccher.example").domain, "xn--bcher-kva.example")
        self.assertEqual(str(a), "alice@corp.example")

    def test_uriForms(self) -> None:
        """
        C{im:}, C{pres:}, C{xmpp:} and C{mailto:} forms parse to the same
        address; L{Address.imURI} and L{Address.presURI} write them.
        """
        a = Address.fromString("alice@corp.example")
        for text in ("im:alice@corp.example", "PRES:alice@corp.example", "xmpp:alice@corp.example", "mailto:alice@corp.example"):
            self.assertEqual(Address.fromString(text), a)
        self.assertEqual((a.imURI(), a.presURI()), ("im:alice@corp.example", "pres:alice@corp.example"))

    def test_invalid(self) -> None:
        """
        Malformed addresses raise L{InvalidAddress} (never another
        exception).
        """
        for text in ("", "alice", "@corp.example", "alice@", "a b@corp.example", "a@b@", "a/b@c.example",
                     "a@-corp.example", "a@corp..example", "a@co rp.example", "a\x00@corp.example", "a@\udcff.example"):
            self.assertRaises(InvalidAddress, Address.fromString, text)

    def test_localLimit(self) -> None:
        """
        A local part of exactly L{MAX_LOCAL_BYTES} UTF-8 bytes is accepted;
        one byte more is refused (counted in bytes, not characters).
        """
        Address.fromParts("a" * MAX_LOCAL_BYTES, "corp.example")
        self.assertRaises(InvalidAddress, Address.fromParts, "a" * (MAX_LOCAL_BYTES + 1), "corp.example")
        self.assertRaises(InvalidAddress, Address.fromParts, "\u00e9" * (MAX_LOCAL_BYTES // 2 + 1), "corp.example")

    def test_domainLimit(self) -> None:
        """
        A domain of L{MAX_DOMAIN_CHARS} characters is accepted, one more is
        refused; labels are at most 63 characters.
        """
        labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 61]
        domain = ".".join(labels)
        self.assertEqual(len(domain), MAX_DOMAIN_CHARS)
        self.assertEqual(normaliseDomain(domain), domain)
        self.assertRaises(InvalidAddress, normaliseDomain, domain + "e")
        self.assertRaises(InvalidAddress, normaliseDomain, "a" * 64 + ".example")

    def test_domainInterned(self) -> None:
        """
        The addresses of one domain share one domain string, however each
        was written (case, trailing dot) and parsed.
        """
        texts = ["a@Corp.Example", "b@corp.example.", "im:c@CORP.EXAMPLE"]
        domains = [Address._parse(t).domain for t in texts] + [normaliseDomain("corp." + "example")]
        self.assertEqual(set(domains), {"corp.example"})
        self.assertEqual(len({id(d) for d in domains}), 1)

    def test_cacheBounded(self) -> None:
        """
        The parse cache holds at most L{PARSED_CACHE_SIZE} entries, and
        cached results are equal to fresh ones.
        """
        from imgateway.core.address import _parseCached

        for i in range(PARSED_CACHE_SIZE + 50):
            Address.fromString(f"user{i}@flood.example")
        self.assertLessEqual(_parseCached.cache_info().currsize, PARSED_CACHE_SIZE)
        self.assertEqual(Address.fromString("x@flood.example"), Address._parse("x@flood.example"))


class ComparisonTests(SynchronousTestCase):
    """
    Addresses compare, order and hash by value, by methods of
    L{Address}'s own (what the compiled build compiles, so that C{==} in a
    compiled module is not identity: C{imgateway._compiled}).
    """

    def test_ownMethods(self) -> None:
        """
        C{__eq__}, C{__hash__} and the orderings are L{Address}'s own,
        written in its module (not attrs' generated ones, which mypyc does
        not see); compiled with it in the compiled build.
        """
        for name in ("__eq__", "__hash__", "__lt__", "__le__", "__gt__", "__ge__"):
            method = Address.__dict__[name]
            code = getattr(method, "__code__", None)
            if code is not None:
                self.assertEqual(code.co_filename, addressModule.__file__, name)
            else:
                # Compiled: mypyc's callable object for a method of the
                # module's class.
                self.assertEqual(type(method).__module__, addressModule.__name__, name)

    def test_equalValues(self) -> None:
        """
        Two distinct addresses of the same parts are equal, not unequal, and
        hash alike: each finds the other's entry in a dictionary and a set.
        """
        a, b = Address("alice", "corp.example"), Address("alice", "corp.example")
        self.assertIsNot(a, b)
        self.assertTrue(a == b)
        self.assertFalse(a != b)
        self.assertEqual(hash(a), hash(b))
        self.assertEqual({a: 1}[b], 1)
        self.assertIn(b, {a})
        for other in (Address("alice", "other.example"), Address("bob", "corp.example")):
            self.assertFalse(a == other)
            self.assertTrue(a != other)

    def test_otherTypes(self) -> None:
        """
        An address equals nothing but an address (not its string, nor a
        tuple of its parts), and is not ordered against other types.
        """
        a = Address("alice", "corp.example")
        for other in ("alice@corp.example", ("alice", "corp.example"), None, 1):
            self.assertFalse(a == other)
            self.assertTrue(a != other)
            self.assertRaises(TypeError, lambda: a < other)  # type: ignore[operator]
            self.assertRaises(TypeError, lambda: a >= other)  # type: ignore[operator]

    def test_order(self) -> None:
        """
        Addresses are ordered by local part, then domain: as the tuples of
        their parts, for each of the four comparisons.
        """
        rng = random.Random(11)
        parts = [("".join(rng.choice("ab") for _ in range(rng.randint(1, 3))), rng.choice(["a.example", "b.example"])) for _ in range(40)]
        addresses = [Address(*p) for p in parts]
        for x, px in zip(addresses, parts):
            for y, py in zip(addresses, parts):
                self.assertEqual((x < y, x <= y, x > y, x >= y, x == y), (px < py, px <= py, px > py, px >= py, px == py))
        self.assertEqual([(a.local, a.domain) for a in sorted(addresses)], sorted(parts))


class AccountNameTests(SynchronousTestCase):
    """
    L{validateAccountLocalPart}: the stricter rule for accounts hosted here.
    """

    def test_allowed(self) -> None:
        """
        Letters, digits and C{. _ - +} are allowed.
        """
        validateAccountLocalPart(Address.fromString("alice.smith-2+im_x@corp.example"))

    def test_refused(self) -> None:
        """
        Look-alike characters, leading or trailing dots and dashes, and
        names over 64 characters are refused.
        """
        for local in ("\u0430dmin", "élodie", ".alice", "alice-", "a" * 65, "a!b"):
            self.assertRaises(InvalidAddress, validateAccountLocalPart, Address.fromParts(local, "corp.example"))
