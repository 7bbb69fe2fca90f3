# -*- test-case-name: tests.test_passwords -*-
"""
Password verifiers, as stored in the directory.

A password is never stored. An account keeps, serialised as one JSON string:
an scrypt hash (to check a password given in the clear, as SASL PLAIN does)
and SCRAM verifiers (RFC 5802 C{StoredKey}/C{ServerKey}, for SCRAM-SHA-1 and
SCRAM-SHA-256), each with its own random salt.

Deriving these costs tens of milliseconds of CPU on purpose: call
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

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "SCRAM_HASHES",
    "ScramVerifier",
    "StoredCredentials",
    "checkPassword",
    "makeCredentials",
    "saltedPassword",
]

#: PBKDF2 iterations of new SCRAM verifiers (RFC 7677 asks for at least 4096).
DEFAULT_SCRAM_ITERATIONS = 10000

#: SCRAM mechanism name to hashlib name.
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

# scrypt cost: N=2**14, r=8, p=1 takes ~50 ms and 16 MiB.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
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


@frozen
class StoredCredentials:
    """
    All the verifiers of one password.

    @ivar scryptSalt: Salt of C{scryptHash}.
    @ivar scryptHash: scrypt(password) with the module's cost parameters
        (recorded in the serialised form, so they can change later).
    @ivar scram: SCRAM mechanism name to its L{ScramVerifier}.
    """

    scryptSalt: bytes
    scryptHash: bytes
    scryptParams: tuple[int, int, int]
    scram: dict[str, ScramVerifier]

    def serialise(self) -> str:
        """
        @return: The JSON text stored in the directory.
        """
        n, r, p = self.scryptParams
        data: dict[str, Any] = {
            "scrypt": {"salt": _b64(self.scryptSalt), "hash": _b64(self.scryptHash), "n": n, "r": r, "p": p},
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
        return json.dumps(data, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> StoredCredentials:
        """
        Read the form written by L{serialise}.

        @raise ValueError: If C{text} is not such a form.
        """
        try:
            data = json.loads(text)
            s = data["scrypt"]
            scram = {
                name: ScramVerifier(_unb64(v["salt"]), int(v["i"]), _unb64(v["stored"]), _unb64(v["server"]))
                for name, v in data.get("scram", {}).items()
            }
            return cls(_unb64(s["salt"]), _unb64(s["hash"]), (int(s["n"]), int(s["r"]), int(s["p"])), scram)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"unreadable stored credentials: {e}") from None


def makeCredentials(password: str, scramIterations: int = DEFAULT_SCRAM_ITERATIONS) -> StoredCredentials:
    """
    Derive the verifiers of a new password. Slow: run it in a thread.

    @param password: The password (UTF-8 encoded before hashing; SASLprep
        is not applied, so clients must send it exactly as set).
    @raise ValueError: If the password is empty.
    """
    if not password:
        raise ValueError("empty password")
    raw = password.encode("utf-8")
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(raw, salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    scram = {
        name: ScramVerifier.derive(hashName, raw, os.urandom(_SALT_BYTES), scramIterations)
        for name, hashName in SCRAM_HASHES.items()
    }
    return StoredCredentials(salt, digest, (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P), scram)


def checkPassword(credentials: StoredCredentials, password: str) -> bool:
    """
    Whether C{password} matches. Slow: run it in a thread.
    """
    n, r, p = credentials.scryptParams
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=credentials.scryptSalt, n=n, r=r, p=p, maxmem=2**26
    )
    return hmac.compare_digest(digest, credentials.scryptHash)
