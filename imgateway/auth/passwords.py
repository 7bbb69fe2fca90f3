"""
Password verifiers, as stored in the directory.

A password is never stored. An account keeps, serialised as one JSON
string, SCRAM verifiers (RFC 5802 C{StoredKey}/C{ServerKey}, for
SCRAM-SHA-1 and SCRAM-SHA-256), each with its own random salt, derived from
the password prepared with SASLprep (L{imgateway.auth.saslprep}). A
password given in the clear (SASL PLAIN) is checked against the same
verifiers, as Prosody does: C{SaltedPassword} from the stored salt and
iteration count, then C{ClientKey} and its hash, compared with the stored
C{StoredKey} in constant time.

Credentials written before SASLprep was applied (and before the scrypt
hash that they also held was dropped) still load; their verifiers were
derived from the password exactly as typed, so a password is checked
against them unprepared (L{StoredCredentials.prepared} is false).

Deriving a verifier costs milliseconds of CPU on purpose: call
L{makeCredentials} and L{checkPassword} off the reactor thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from attrs import frozen

from imgateway.auth.saslprep import saslprep

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "SCRAM_HASHES",
    "ScramVerifier",
    "StoredCredentials",
    "checkPassword",
    "makeCredentials",
    "preparePassword",
    "saltedPassword",
]

#: PBKDF2 iterations of new SCRAM verifiers (RFC 7677 asks for at least 4096).
DEFAULT_SCRAM_ITERATIONS = 10000

#: SCRAM mechanism name to hashlib name.
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

#: The verifier a password given in the clear is checked against, in order
#: of preference.
PLAIN_VERIFIERS = ("SCRAM-SHA-256", "SCRAM-SHA-1")

#: How the serialised form names the preparation of the password.
_PREPARED = "saslprep"

_SALT_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def saltedPassword(hashName: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """
    RFC 5802 C{SaltedPassword}: PBKDF2 with HMAC over C{hashName}.
    """
    return hashlib.pbkdf2_hmac(hashName, password, salt, iterations)


def preparePassword(password: str) -> str:
    """
    Prepare a password with SASLprep, as every mechanism and every new
    password does.

    Code points unassigned in Unicode 3.2 (emoji, newer scripts) are
    allowed, in new passwords too, although RFC 3454 would refuse them in a
    stored string: RFC 7613's OpaqueString allows them, users put emoji in
    passwords, and the tables being fixed at Unicode 3.2, such a code point
    is left as it is by every SASLprep implementation alike.

    @return: The prepared password.
    @raise ValueError: If it cannot be prepared, or is empty once
        prepared.
    """
    prepared = saslprep(password, allowUnassigned=True)
    if not prepared:
        raise ValueError("empty password")
    return prepared


@frozen
class ScramVerifier:
    """
    What a server keeps to run one SCRAM mechanism (RFC 5802 section 3).
    """

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes

    @classmethod
    def derive(cls, hashName: str, password: bytes, salt: bytes, iterations: int) -> ScramVerifier:
        """
        Compute the verifier of C{password}.
        """
        salted = saltedPassword(hashName, password, salt, iterations)
        clientKey = hmac.digest(salted, b"Client Key", hashName)
        serverKey = hmac.digest(salted, b"Server Key", hashName)
        return cls(salt, iterations, hashlib.new(hashName, clientKey).digest(), serverKey)

    def matches(self, hashName: str, password: bytes) -> bool:
        """
        Whether C{password} is the one this verifier was derived from: one
        PBKDF2 derivation, then C{StoredKey} compared in constant time.

        @param hashName: The verifier's hash (C{"sha256"}).
        @param password: The password, prepared and UTF-8 encoded.
        """
        salted = saltedPassword(hashName, password, self.salt, self.iterations)
        clientKey = hmac.digest(salted, b"Client Key", hashName)
        return hmac.compare_digest(hashlib.new(hashName, clientKey).digest(), self.storedKey)


@frozen
class StoredCredentials:
    """
    All the verifiers of one password.

    @ivar scram: SCRAM mechanism name to its L{ScramVerifier}.
    @ivar prepared: Whether the verifiers were derived from the password
        prepared with SASLprep (false for credentials written by older
        versions, derived from the password as typed).
    """

    scram: dict[str, ScramVerifier]
    prepared: bool = True

    def serialise(self) -> str:
        """
        @return: The JSON text stored in the directory.
        """
        data: dict[str, Any] = {
            "scram": {
                name: {
                    "salt": _b64(v.salt),
                    "i": v.iterations,
                    "stored": _b64(v.storedKey),
                    "server": _b64(v.serverKey),
                }
                for name, v in sorted(self.scram.items())
            },
        }
        if self.prepared:
            data["prep"] = _PREPARED
        return json.dumps(data, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> StoredCredentials:
        """
        Read the form written by L{serialise}, or by older versions (with
        an C{scrypt} member, which is ignored, and no C{prep}).

        @raise ValueError: If C{text} is not such a form, or holds no SCRAM
            verifier.
        """
        try:
            data = json.loads(text)
            scram = {
                name: ScramVerifier(_unb64(v["salt"]), int(v["i"]), _unb64(v["stored"]), _unb64(v["server"]))
                for name, v in data["scram"].items()
            }
            prep = data.get("prep")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"unreadable stored credentials: {e}") from None
        if not any(name in scram for name in PLAIN_VERIFIERS):
            raise ValueError("unreadable stored credentials: no SCRAM-SHA-256 or SCRAM-SHA-1 verifier")
        if prep not in (None, _PREPARED):
            raise ValueError(f"unreadable stored credentials: unknown preparation {prep!r}")
        if any(v.iterations < 1 or not v.salt for v in scram.values()):
            raise ValueError("unreadable stored credentials: bad salt or iteration count")
        return cls(scram, prep == _PREPARED)

    def plainVerifier(self) -> tuple[str, ScramVerifier]:
        """
        The verifier that a password given in the clear is checked against.

        @return: The hash name and the verifier (SCRAM-SHA-256's when
            there is one).
        @raise ValueError: If there is no verifier of a known mechanism.
        """
        for name in PLAIN_VERIFIERS:
            if name in self.scram:
                return SCRAM_HASHES[name], self.scram[name]
        raise ValueError("no SCRAM-SHA-256 or SCRAM-SHA-1 verifier")


def makeCredentials(password: str, scramIterations: int = DEFAULT_SCRAM_ITERATIONS) -> StoredCredentials:
    """
    Derive the verifiers of a new password. Slow: run it in a thread.

    @param password: The password; prepared with SASLprep (so that a client
        may send any equivalent form), then UTF-8 encoded.
    @raise ValueError: If the password is empty or cannot be prepared
        (L{imgateway.auth.saslprep.SASLprepError}: it holds control
        characters or other prohibited ones).
    """
    raw = preparePassword(password).encode("utf-8")
    scram = {
        name: ScramVerifier.derive(hashName, raw, os.urandom(_SALT_BYTES), scramIterations)
        for name, hashName in SCRAM_HASHES.items()
    }
    return StoredCredentials(scram)


def checkPassword(credentials: StoredCredentials, password: str) -> bool:
    """
    Whether C{password}, given in the clear, matches. Slow (one PBKDF2
    derivation): run it in a thread.

    @param password: As the client sent it; prepared here, unless the
        credentials predate SASLprep.
    """
    if credentials.prepared:
        try:
            password = preparePassword(password)
        except ValueError:
            return False
    hashName, verifier = credentials.plainVerifier()
    return verifier.matches(hashName, password.encode("utf-8"))
