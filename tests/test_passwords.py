"""
Tests for L{imgateway.auth.passwords}, L{imgateway.auth.saslprep} and the
directory migration that drops the scrypt hash of old credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import stringprep
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from imgateway.auth.passwords import (
    SCRAM_HASHES,
    ScramVerifier,
    StoredCredentials,
    checkPassword,
    makeCredentials,
    preparePassword,
)
from imgateway.auth import saslprep as saslprepModule
from imgateway.auth.saslprep import SASLprepError, saslprep
from imgateway.directory.sqlite import MIGRATIONS

#: Credentials of the password C{pencil} as imgateway 0.1 wrote them: an
#: scrypt hash beside the SCRAM verifiers, no C{prep}.
LEGACY_PENCIL = (
    '{"scram": {"SCRAM-SHA-1": {"i": 4096, "salt": "S1UosMq6Pd5gZ1yfyOJJiw==", "server": '
    '"Y9o9mzvwzvvJG0Fz6cQFVPwnhG8=", "stored": "lcJjd3B4uFYRF4kHfQCupbsLpJo="}, "SCRAM-SHA-256": '
    '{"i": 4096, "salt": "3OzOI7OgDApwvU1ewUGihg==", "server": '
    '"Q8JXAgiLWoa3tsjOUOuxtOu9/4jzV4OT4rGE/wqLFDo=", "stored": '
    '"Gx8dinSrO3E0EULy6cQvMybkLOzPk4af4eG48SICWoM="}}, "scrypt": {"hash": '
    '"1+c8umqaovB9pkhzVGtFBLKgJYRx9/pvKT20iI1Pi2O/3F20gb3xqlEfN8CLjLLrK8q/8fT0ms9rSh8FtI3wow==", '
    '"n": 16384, "p": 1, "r": 8, "salt": "ION0o+4WTcfl4a5qbSegbw=="}}'
)

#: Credentials that imgateway 0.1 wrote for C{"cafe\\u0301 au\\u00a0lait"}
#: (a decomposed é and a no-break space), derived from it as typed.
LEGACY_CAFE = (
    '{"scram": {"SCRAM-SHA-1": {"i": 4096, "salt": "GarXy8X/QM9cHK8j5biXSA==", "server": '
    '"fmO1/WOtlZlowCQKZrJCmRRx7Gw=", "stored": "5Sb+OZkPg3mXidsGVvyHHh7uk8M="}, "SCRAM-SHA-256": '
    '{"i": 4096, "salt": "1pLYVAnfLcvs9FgMcdMYzA==", "server": '
    '"lv//4HA0odqOKDUIiUuu1RJYkSHZbh5rfmOTcySyjzA=", "stored": '
    '"vBFKVcJrHpXA7YOSA40UJRUsHJFvMYR/Olunsk4yGSU="}}, "scrypt": {"hash": '
    '"b7CajxFhuf9tEoE57tPNclXzMBBFXa1XuvOWx9Vut9/ChmIvBa0HzQH733hBjAoVuYPeUNrzikONjhjt0XBnkA==", '
    '"n": 16384, "p": 1, "r": 8, "salt": "e1nnr1OC2oQFl9FaDsXAWw=="}}'
)

#: The same password, composed (é as one code point) or decomposed (e and a
#: combining acute accent), with a no-break space or a plain one.
CAFE_FORMS = ["caf\u00e9 au lait", "cafe\u0301 au lait", "caf\u00e9 au\u00a0lait", "cafe\u0301\u2002au\u3000lait"]


class PasswordTests(SynchronousTestCase):
    """
    Stored verifiers.
    """

    def test_roundTrip(self) -> None:
        """
        Credentials serialise and parse back equal, and check the password
        they were made from (and no other).
        """
        c = makeCredentials("pencil", 4096)
        again = StoredCredentials.parse(c.serialise())
        self.assertEqual(again, c)
        self.assertTrue(checkPassword(again, "pencil"))
        self.assertFalse(checkPassword(again, "Pencil"))
        self.assertEqual(sorted(c.scram), sorted(SCRAM_HASHES))
        self.assertNotIn("pencil", c.serialise())

    def test_noScrypt(self) -> None:
        """
        New credentials hold SCRAM verifiers only (no scrypt hash) and say
        that the password was prepared with SASLprep.
        """
        data = json.loads(makeCredentials("pencil", 4096).serialise())
        self.assertEqual(sorted(data), ["prep", "scram"])
        self.assertEqual(data["prep"], "saslprep")

    def test_plainUsesScramVerifier(self) -> None:
        """
        A password in the clear is checked against the SCRAM-SHA-256
        verifier (RFC 7677's example: salt, 4096 iterations and C{pencil}),
        with one PBKDF2 derivation; SCRAM-SHA-1's is used when there is no
        SCRAM-SHA-256 verifier.
        """
        salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        sha256 = ScramVerifier.derive("sha256", b"pencil", salt, 4096)
        sha1 = ScramVerifier.derive("sha1", b"pencil", salt, 4096)
        only256 = StoredCredentials({"SCRAM-SHA-256": sha256})
        self.assertTrue(checkPassword(only256, "pencil"))
        self.assertFalse(checkPassword(only256, "pencil2"))
        only1 = StoredCredentials({"SCRAM-SHA-1": sha1})
        self.assertTrue(checkPassword(only1, "pencil"))
        # Which verifier is used: a wrong SCRAM-SHA-1 verifier is ignored.
        bogus = ScramVerifier.derive("sha1", b"other", salt, 4096)
        self.assertTrue(checkPassword(StoredCredentials({"SCRAM-SHA-256": sha256, "SCRAM-SHA-1": bogus}), "pencil"))
        self.assertEqual(only256.plainVerifier(), ("sha256", sha256))

    def test_matches(self) -> None:
        """
        L{ScramVerifier.matches} recomputes C{StoredKey} from the password
        and compares it with the stored one.
        """
        v = ScramVerifier.derive("sha256", b"pencil", b"salt", 4096)
        self.assertTrue(v.matches("sha256", b"pencil"))
        self.assertFalse(v.matches("sha256", b"pencil "))
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", b"salt", 4096)
        clientKey = hmac.digest(salted, b"Client Key", "sha256")
        self.assertEqual(hashlib.sha256(clientKey).digest(), v.storedKey)

    def test_saltedPerPassword(self) -> None:
        """
        The same password gives different verifiers (fresh salts).
        """
        self.assertNotEqual(makeCredentials("x", 4096).serialise(), makeCredentials("x", 4096).serialise())

    def test_rfc7677Vector(self) -> None:
        """
        The SCRAM-SHA-256 verifier matches RFC 7677's example.
        """
        v = ScramVerifier.derive("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
        self.assertEqual(base64.b64encode(v.serverKey).decode(), "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")

    def test_badInput(self) -> None:
        """
        Empty passwords and unreadable stored forms raise L{ValueError}.
        """
        self.assertRaises(ValueError, makeCredentials, "")
        for bad in (
            "",
            "{}",
            "[]",
            "not json",
            '{"scrypt": {"salt": "!!"}}',
            '{"scram": {}}',
            '{"scram": {"SCRAM-MD5": {"salt": "AA==", "i": 1, "stored": "", "server": ""}}}',
            '{"scram": {"SCRAM-SHA-1": {"salt": "AA==", "i": 0, "stored": "", "server": ""}}}',
            '{"scram": {"SCRAM-SHA-1": {"salt": "AA==", "i": 1, "stored": "", "server": ""}}, "prep": "x"}',
        ):
            self.assertRaises(ValueError, StoredCredentials.parse, bad)


class LegacyCredentialsTests(SynchronousTestCase):
    """
    Credentials written by imgateway 0.1 (scrypt hash, no SASLprep) load and
    work as before.
    """

    def test_load(self) -> None:
        """
        The old form parses (its scrypt hash ignored), is marked as not
        prepared, and checks its password in the clear.
        """
        c = StoredCredentials.parse(LEGACY_PENCIL)
        self.assertFalse(c.prepared)
        self.assertTrue(checkPassword(c, "pencil"))
        self.assertFalse(checkPassword(c, "pencil!"))
        self.assertNotIn("scrypt", c.serialise())
        self.assertNotIn("prep", json.loads(c.serialise()))

    def test_unprepared(self) -> None:
        """
        A password set before SASLprep was applied is checked as it was
        typed: its verifiers were derived from that form.
        """
        c = StoredCredentials.parse(LEGACY_CAFE)
        self.assertTrue(checkPassword(c, "cafe\u0301 au\u00a0lait"))
        self.assertFalse(checkPassword(c, "caf\u00e9 au lait"))

    def test_migration(self) -> None:
        """
        The directory migration to schema version 2 removes the scrypt hash
        from every account written by version 1, keeps the verifiers (the
        password still logs in), and leaves other rows alone.
        """
        db = sqlite3.connect(":memory:")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        rows: list[tuple[str, str]] = [
            ("alice@corp.example", LEGACY_PENCIL),
            ("bob@corp.example", makeCredentials("hunter2", 4096).serialise()),
            ("broken@corp.example", "{"),
        ]
        for address, credentials in rows:
            local, domain = address.split("@")
            db.execute(
                "INSERT INTO accounts (address, local, domain, home_server, credentials, created)"
                " VALUES (?, ?, ?, 'hs1', ?, 0)",
                (address, local, domain, credentials),
            )
        self.assertGreaterEqual(len(MIGRATIONS), 2)
        for statement in MIGRATIONS[1]:
            db.execute(statement)
        after = dict(db.execute("SELECT address, credentials FROM accounts").fetchall())
        alice = after["alice@corp.example"]
        self.assertNotIn("scrypt", alice)
        self.assertEqual(StoredCredentials.parse(alice), StoredCredentials.parse(LEGACY_PENCIL))
        self.assertTrue(checkPassword(StoredCredentials.parse(alice), "pencil"))
        self.assertEqual(after["bob@corp.example"], rows[1][1])
        self.assertEqual(after["broken@corp.example"], "{")


class SASLprepTests(SynchronousTestCase):
    """
    Tests for L{saslprep} (RFC 4013) and its use for passwords.
    """

    def test_rfc4013Examples(self) -> None:
        """
        The examples of RFC 4013 section 3.
        """
        self.assertEqual(saslprep("I\u00adX"), "IX")
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")
        self.assertEqual(saslprep("\u00aa"), "a")
        self.assertEqual(saslprep("\u2168"), "IX")
        self.assertRaises(SASLprepError, saslprep, "\u0007")
        self.assertRaises(SASLprepError, saslprep, "\u0627\u0031")

    def test_spaces(self) -> None:
        """
        Non-ASCII spaces become ASCII spaces; ASCII is left alone.
        """
        self.assertEqual(saslprep("a\u00a0b\u2002c\u3000d"), "a b c d")
        printable = "".join(chr(c) for c in range(0x20, 0x7F))
        self.assertEqual(saslprep(printable), printable)

    def test_printableASCIIUnchanged(self) -> None:
        """
        Every step of SASLprep leaves printable ASCII as it is (nothing
        mapped, NFKC the same, nothing prohibited, nothing right-to-left),
        which is why it skips the tables for such a string; ASCII controls
        are still refused.
        """
        for c in map(chr, range(0x20, 0x7F)):
            self.assertFalse(stringprep.in_table_b1(c) or stringprep.in_table_c12(c), repr(c))
            self.assertEqual(unicodedata.ucd_3_2_0.normalize("NFKC", c), c)
            self.assertFalse(any(test(c) for _, test in saslprepModule._PROHIBITED), repr(c))
            self.assertFalse(stringprep.in_table_d1(c) or stringprep.in_table_a1(c), repr(c))
        self.assertRaises(SASLprepError, saslprep, "pw\x7f")
        self.assertRaises(SASLprepError, saslprep, "pw\x1f")

    def test_printableASCIISkipsTables(self) -> None:
        """
        A printable ASCII password is prepared without the stringprep
        tables (the cheap path of nearly every PLAIN login); any other
        goes through them.
        """

        def refuseAll(c: str) -> bool:
            return True

        self.patch(saslprepModule, "_PROHIBITED", (("anything", refuseAll),))
        self.assertEqual(saslprep("bench-pw 42~"), "bench-pw 42~")
        self.assertRaises(SASLprepError, saslprep, "caf\u00e9")

    def test_normalisation(self) -> None:
        """
        Composed and decomposed forms of a character prepare alike (NFKC).
        """
        self.assertEqual(saslprep("cafe\u0301"), "caf\u00e9")
        self.assertEqual(saslprep("\ufb01"), "fi")

    def test_prohibited(self) -> None:
        """
        Control, private-use, non-character and tagging code points are
        refused, without naming them in the message.
        """
        for text in ["a\tb", "a\nb", "\x7f", "\u200e", "\ue000", "\ufffe", "\U000e0001", "\u2ff0"]:
            e = self.assertRaises(SASLprepError, saslprep, "secret" + text)
            self.assertIsInstance(e, ValueError)
            self.assertNotIn("secret", str(e))

    def test_bidi(self) -> None:
        """
        Right-to-left text must start and end with right-to-left characters
        and hold no left-to-right ones.
        """
        self.assertEqual(saslprep("\u0627\u0628"), "\u0627\u0628")
        self.assertEqual(saslprep("\u0627 1 \u0628"), "\u0627 1 \u0628")
        self.assertRaises(SASLprepError, saslprep, "\u0627a\u0628")
        self.assertRaises(SASLprepError, saslprep, "1\u0627")

    def test_unassigned(self) -> None:
        """
        Code points unassigned in Unicode 3.2 are refused by L{saslprep} in
        a stored string and allowed in a query; passwords allow them (an
        emoji is unassigned in Unicode 3.2), when set and when checked.
        """
        unassigned = "\u0221"
        self.assertRaises(SASLprepError, saslprep, unassigned)
        self.assertEqual(saslprep(unassigned, allowUnassigned=True), unassigned)
        for password in ["pw" + unassigned, "dave-\U0001f511"]:
            c = makeCredentials(password, 4096)
            self.assertTrue(checkPassword(c, password))
            self.assertTrue(c.scram["SCRAM-SHA-256"].matches("sha256", password.encode()))

    def test_preparedCredentials(self) -> None:
        """
        A password set in one form is checked in the clear in any
        equivalent form (composed or decomposed, any kind of space), and
        its SCRAM verifiers are those of its prepared form, which a SCRAM
        client that applies SASLprep derives.
        """
        for setAs in CAFE_FORMS:
            c = makeCredentials(setAs, 4096)
            self.assertTrue(c.prepared)
            for typed in CAFE_FORMS:
                self.assertTrue(checkPassword(c, typed), (setAs, typed))
            self.assertFalse(checkPassword(c, "cafe au lait"))
            verifier = c.scram["SCRAM-SHA-256"]
            self.assertTrue(verifier.matches("sha256", "caf\u00e9 au lait".encode()))

    def test_preparePassword(self) -> None:
        """
        L{preparePassword} refuses passwords that are empty once prepared,
        and prohibited characters, with L{ValueError}.
        """
        self.assertEqual(preparePassword("a\u00a0b"), "a b")
        self.assertRaises(ValueError, preparePassword, "\u00ad")
        self.assertRaises(ValueError, preparePassword, "pw\x00")
        self.assertRaises(ValueError, makeCredentials, "\u200b\u00ad", 4096)
        self.assertFalse(checkPassword(makeCredentials("pw", 4096), "pw\x00"))
