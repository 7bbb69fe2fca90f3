"""
Tests for L{imgateway.auth.passwords}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgateway.auth.passwords import SCRAM_HASHES, ScramVerifier, StoredCredentials, checkPassword, makeCredentials


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

    def test_saltedPerPassword(self) -> None:
        """
        The same password gives different verifiers (fresh salts).
        """
        self.assertNotEqual(makeCredentials("x", 4096).serialise(), makeCredentials("x", 4096).serialise())

    def test_rfc7677Vector(self) -> None:
        """
        The SCRAM-SHA-256 verifier matches RFC 7677's example.
        """
        import base64

        v = ScramVerifier.derive("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
        self.assertEqual(base64.b64encode(v.serverKey).decode(), "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")

    def test_badInput(self) -> None:
        """
        Empty passwords and unreadable stored forms raise L{ValueError}.
        """
        self.assertRaises(ValueError, makeCredentials, "")
        for bad in ("", "{}", "not json", '{"scrypt": {"salt": "!!"}}'):
            self.assertRaises(ValueError, StoredCredentials.parse, bad)
