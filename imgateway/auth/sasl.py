# -*- test-case-name: tests.test_sasl -*-
"""
SASL, independent of the protocol that carries it: the server side of
PLAIN (RFC 4616), SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), and
the client side of the same mechanisms.

Failures are L{SASLFailure}s named by the SASL conditions of RFC 6120
section 6.5, which the native protocol uses as they are and the XMPP face
sends as C{<failure/>} elements. Channel binding is not supported: no
C{-PLUS} mechanism is offered.

A server front end offers L{mechanismsFor}, makes a L{ServerMechanism} with
L{serverMechanism} when the client picks one, feeds it the client's
responses with L{ServerMechanism.step} until a L{SASLStep} is complete, and
then logs the user in with
L{imgateway.auth.checkers.SASLAuthenticated}C{(step.address)}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from abc import ABC, abstractmethod

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgateway.auth.checkers import AuthenticationBusy, Authenticator
from imgateway.auth.passwords import SCRAM_HASHES, ScramVerifier, preparePassword, saltedPassword
from imgateway.core.address import Address, normaliseDomain
from imgateway.core.errors import AccountDisabled, AuthenticationFailed, DirectoryUnavailable
from imgateway.core.records import AccountRecord
from imgateway.core.throttle import LoginThrottled
from imgateway.net.addresses import sourceOf

__all__ = [
    "CONDITIONS",
    "MAX_STEP_BYTES",
    "ClientMechanism",
    "SASLFailure",
    "SASLStep",
    "ServerMechanism",
    "clientMechanism",
    "decodeBase64",
    "mechanismsFor",
    "preferredMechanism",
    "serverMechanism",
]

_log = Logger()

#: The SASL failure conditions (RFC 6120 section 6.5).
CONDITIONS = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)

#: The longest message a server mechanism accepts in one step.
MAX_STEP_BYTES = 8192

#: The mechanisms implemented here, strongest first.
_PLAIN = "PLAIN"
_SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-1")

#: Random bytes in a nonce that we make (RFC 5802 asks for enough
#: randomness; 24 bytes are 32 base64 characters).
_NONCE_BYTES = 24

#: The most PBKDF2 iterations a client accepts from a server (more would let
#: a hostile server keep the client busy for a long time).
_MAX_CLIENT_ITERATIONS = 1_000_000


class SASLFailure(Exception):
    """
    A SASL exchange failed.

    @ivar condition: One of L{CONDITIONS}.
    @ivar text: Human-readable detail; safe to send to the peer (it never
        tells whether an account exists).
    @ivar retryAfter: For a C{temporary-auth-failure} refused by the login
        throttle, seconds until the client may try again; else C{None}.
    """

    def __init__(self, condition: str, text: str = "", retryAfter: int | None = None) -> None:
        """
        @param condition: One of L{CONDITIONS}.
        @param text: Human-readable detail.
        @param retryAfter: See L{retryAfter}.
        @raise ValueError: If C{condition} is not one of L{CONDITIONS}.
        """
        if condition not in CONDITIONS:
            raise ValueError(f"not a SASL condition: {condition!r}")
        super().__init__(condition, text)
        self.condition = condition
        self.text = text
        self.retryAfter = retryAfter

    def __repr__(self) -> str:
        return f"SASLFailure({self.condition!r}, {self.text!r})"

    def __str__(self) -> str:
        return f"{self.condition}: {self.text}" if self.text else self.condition


@frozen
class SASLStep:
    """
    What a server mechanism answers to one step.

    @ivar challenge: When not C{complete}, the challenge to send to the
        client. When C{complete}, the additional data to send with the
        success (SCRAM's server-final message), or C{None} if there is none.
    @ivar complete: Whether the client is authenticated.
    @ivar address: When C{complete}, the authenticated user; otherwise
        C{None}.
    """

    challenge: bytes | None
    complete: bool
    address: Address | None = None


def mechanismsFor(secure: bool, allowPlaintext: bool, scram: bool = True) -> list[str]:
    """
    The mechanisms to offer a client, strongest first.

    @param secure: Whether the connection is encrypted (TLS).
    @param allowPlaintext: Whether PLAIN may be offered on an unencrypted
        connection (for tests and trusted networks only).
    @param scram: Whether the SCRAM mechanisms may be offered: the
        authenticator's L{Authenticator.scramAvailable} (false for an LDAP
        directory without SCRAM verifiers, which only checks passwords
        given in the clear).
    @return: C{SCRAM-SHA-256}, C{SCRAM-SHA-1} (if C{scram}), and C{PLAIN}
        if C{secure} or C{allowPlaintext}.
    """
    mechanisms = list(_SCRAM) if scram else []
    if secure or allowPlaintext:
        mechanisms.append(_PLAIN)
    return mechanisms


def decodeBase64(data: bytes | str) -> bytes:
    """
    Decode the base64 form in which a protocol carries SASL data.

    @param data: Base64 text, with its padding.
    @return: The decoded data.
    @raise SASLFailure: C{incorrect-encoding}, if it is not strict base64.
    """
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("incorrect-encoding", "invalid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """
    Decode base64 inside a SCRAM message.

    @raise SASLFailure: C{malformed-request}, naming C{what}.
    """
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("malformed-request", f"invalid base64 in {what}") from None


def _malformed(text: str) -> SASLFailure:
    return SASLFailure("malformed-request", text)


def _decodeUTF8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("not UTF-8") from None


def _makeNonce() -> str:
    return _b64(os.urandom(_NONCE_BYTES))


def _checkNonce(nonce: str) -> str:
    """
    @return: C{nonce}, if it is a valid SCRAM nonce (printable ASCII
        without C{,}).
    @raise SASLFailure: C{malformed-request} otherwise.
    """
    if not nonce or any(not ("\x21" <= c <= "\x7e") or c == "," for c in nonce):
        raise _malformed("invalid nonce")
    return nonce


def _escapeName(name: str) -> str:
    """
    RFC 5802 C{saslname}: C{=} as C{=3D} and C{,} as C{=2C}.
    """
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescapeName(text: str) -> str:
    """
    Undo L{_escapeName}.

    @raise SASLFailure: C{malformed-request} for a stray C{=} or an empty
        name.
    """
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "=":
            code = text[i + 1 : i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise _malformed("invalid escape in name")
            i += 3
        else:
            out.append(c)
            i += 1
    if not out:
        raise _malformed("empty name")
    return "".join(out)


def _attribute(part: str, name: str) -> str:
    """
    The value of a SCRAM C{name=value} attribute.

    @raise SASLFailure: C{malformed-request} if C{part} is not attribute
        C{name}.
    """
    if not part.startswith(name + "="):
        raise _malformed(f"expected attribute {name!r}")
    return part[len(name) + 1 :]


def _checkExtensions(parts: list[str]) -> None:
    """
    Check optional SCRAM extensions: each C{x=value}; we support none, and
    the mandatory C{m} makes the exchange fail.
    """
    for part in parts:
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise _malformed("invalid attribute")
        if part[0] == "m":
            raise _malformed("mandatory extensions are not supported")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# Server side


class ServerMechanism(ABC):
    """
    The server's side of one SASL exchange. Make one per attempt with
    L{serverMechanism}.

    @ivar name: The mechanism's name (C{"SCRAM-SHA-256"}).
    """

    name: str

    def __init__(self) -> None:
        self._busy = False
        self._over = False
        self._abortedWith: SASLFailure | None = None

    def step(self, data: bytes | None) -> Deferred[SASLStep]:
        """
        Take the client's next message.

        @param data: The client's initial response (on the first step) or
            its response to the last challenge; C{None} on the first step if
            the client sent no initial response (the answer is then an empty
            challenge), as opposed to an empty one (C{b""}).
        @return: A L{Deferred} that fires with the next L{SASLStep}, or fails
            with L{SASLFailure}. Once it has completed or failed, the
            exchange is over and any further step fails with
            C{malformed-request}. A step taken while the previous one is
            still pending fails the exchange: both steps fail with
            C{malformed-request}.
        """
        try:
            outcome = self.stepAtOnce(data)
        except SASLFailure:
            return fail()
        return outcome if isinstance(outcome, Deferred) else succeed(outcome)

    def stepAtOnce(self, data: bytes | None) -> SASLStep | Deferred[SASLStep]:
        """
        L{step}, with its outcome at once when the mechanism has it without
        waiting (a SCRAM client-final message, checked against the stored
        keys read at the first step; a first step's challenge of nothing):
        then the next L{SASLStep} is returned, or L{SASLFailure} raised,
        rather than put in a L{Deferred}. Otherwise (the directory is read,
        a password is checked) a L{Deferred} is returned, as by L{step}.
        Every check and every outcome is L{step}'s.

        @raise SASLFailure: If the step fails at once.
        """
        if self._over:
            raise _malformed("the exchange is over")
        if self._busy:
            self._abort(_malformed("the previous step is not finished"))
            raise _malformed("the previous step is not finished")
        if data is not None and len(data) > MAX_STEP_BYTES:
            self._over = True
            raise _malformed("message too long")
        self._busy = True
        try:
            result = self._step(data)
        except Exception:
            self._stepFailed(Failure()).raiseException()
        if isinstance(result, Deferred):
            return result.addCallbacks(self._stepDone, self._stepFailed)
        return self._stepDone(result)

    def abort(self) -> None:
        """
        End the exchange (the client gave up, or its connection is gone). A
        pending step fails with C{aborted}; further steps fail with
        C{malformed-request}.
        """
        self._abort(SASLFailure("aborted", "the exchange was aborted"))

    def _abort(self, reason: SASLFailure) -> None:
        self._over = True
        if self._busy and self._abortedWith is None:
            self._abortedWith = reason

    def _stepDone(self, result: SASLStep) -> SASLStep:
        self._busy = False
        if self._abortedWith is not None:
            raise self._abortedWith
        if result.complete:
            self._over = True
        return result

    def _stepFailed(self, reason: Failure) -> Failure:
        self._busy = False
        self._over = True
        unexpected = not isinstance(reason.value, SASLFailure)
        if unexpected:
            _log.failure("SASL {mechanism} step failed", reason, mechanism=self.name)
        if self._abortedWith is not None:
            raise self._abortedWith
        if unexpected:
            raise SASLFailure("temporary-auth-failure", "internal error")
        return reason

    @abstractmethod
    def _step(self, data: bytes | None) -> SASLStep | Deferred[SASLStep]:
        """
        Take the client's next message (see L{step}).

        @raise SASLFailure: If the exchange fails (or return a L{Deferred}
            that fails so).
        """


def _authFailure(reason: Failure) -> Failure:
    """
    Map an authenticator's failure to a L{SASLFailure}; pass others on.
    """
    if isinstance(reason.value, LoginThrottled):
        raise SASLFailure("temporary-auth-failure", str(reason.value), reason.value.retryAfter)
    if isinstance(reason.value, AuthenticationBusy):
        raise SASLFailure("temporary-auth-failure", str(reason.value))
    if isinstance(reason.value, DirectoryUnavailable):
        # Logged by the directory; the client may try again shortly.
        raise SASLFailure("temporary-auth-failure", "the account directory is unavailable; try again shortly")
    if isinstance(reason.value, AccountDisabled):
        raise SASLFailure("account-disabled", "account disabled")
    if isinstance(reason.value, AuthenticationFailed):
        raise SASLFailure("not-authorized", "wrong user name or password")
    return reason


def _resolve(authenticator: Authenticator, name: str, domain: str) -> Address:
    try:
        return authenticator.resolveAuthcid(name, domain)
    except AuthenticationFailed:
        raise SASLFailure("not-authorized", "wrong user name or password") from None


def _checkAuthzid(
    authenticator: Authenticator, authzid: str, address: Address, domain: str
) -> None:
    """
    Allow only an authorisation identity that names the authenticated user.

    @raise SASLFailure: C{invalid-authzid} otherwise.
    """
    try:
        requested = authenticator.resolveAuthcid(authzid, domain)
    except AuthenticationFailed:
        requested = None
    if requested != address:
        raise SASLFailure("invalid-authzid", "may only act as oneself")


class _PlainServer(ServerMechanism):
    """
    PLAIN (RFC 4616): C{[authzid] NUL authcid NUL passwd}.
    """

    name = _PLAIN

    def __init__(self, authenticator: Authenticator, domain: str, source: str | None) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._domain = domain
        self._source = source
        self._challenged = False

    def _step(self, data: bytes | None) -> SASLStep | Deferred[SASLStep]:
        if data is None:
            if self._challenged:
                raise _malformed("missing response")
            self._challenged = True
            return SASLStep(b"", False)
        parts = _decodeUTF8(data).split("\0")
        if len(parts) != 3:
            raise _malformed("expected authzid NUL authcid NUL password")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise _malformed("empty user name or password")
        address = _resolve(self._authenticator, authcid, self._domain)
        if authzid:
            _checkAuthzid(self._authenticator, authzid, address, self._domain)
        d = self._authenticator.checkPassword(address, password, self._source)

        def success(record: AccountRecord) -> SASLStep:
            return SASLStep(None, True, record.address)

        return d.addCallbacks(success, _authFailure)


class _ScramServer(ServerMechanism):
    """
    SCRAM-SHA-1 or SCRAM-SHA-256, without channel binding.
    """

    def __init__(
        self, name: str, authenticator: Authenticator, domain: str, nonce: str | None, source: str | None
    ) -> None:
        super().__init__()
        self.name = name
        self._hashName = SCRAM_HASHES[name]
        self._authenticator = authenticator
        self._domain = domain
        self._source = source
        self._address: Address | None = None
        self._serverNonce = _makeNonce() if nonce is None else _checkNonce(nonce)
        self._challenged = False
        # Set by the client-first message:
        self._gs2Header = b""
        self._clientFirstBare = ""
        self._serverFirst = ""
        self._nonce = ""
        self._verifier: ScramVerifier | None = None
        self._record: AccountRecord | None = None

    def _step(self, data: bytes | None) -> SASLStep | Deferred[SASLStep]:
        if self._verifier is None:
            if data is None:
                if self._challenged:
                    raise _malformed("missing response")
                self._challenged = True
                return SASLStep(b"", False)
            return self._clientFirst(data)
        if data is None:
            raise _malformed("missing response")
        return self._clientFinal(data, self._verifier)

    def _clientFirst(self, data: bytes) -> Deferred[SASLStep]:
        text = _decodeUTF8(data)
        flag, sep, rest = text.partition(",")
        if not sep:
            raise _malformed("missing GS2 header")
        if flag.startswith("p="):
            raise _malformed("channel binding is not supported")
        if flag not in ("n", "y"):
            raise _malformed("invalid channel binding flag")
        authzPart, sep, bare = rest.partition(",")
        if not sep:
            raise _malformed("missing GS2 header")
        authzid = _unescapeName(_attribute(authzPart, "a")) if authzPart else None
        self._gs2Header = text[: len(text) - len(bare)].encode("utf-8")
        parts = bare.split(",")
        if parts[0].startswith("m="):
            raise _malformed("mandatory extensions are not supported")
        if len(parts) < 2:
            raise _malformed("expected n= and r=")
        username = _unescapeName(_attribute(parts[0], "n"))
        clientNonce = _checkNonce(_attribute(parts[1], "r"))
        _checkExtensions(parts[2:])

        address = _resolve(self._authenticator, username, self._domain)
        if authzid is not None:
            _checkAuthzid(self._authenticator, authzid, address, self._domain)
        self._clientFirstBare = bare
        self._nonce = clientNonce + self._serverNonce
        self._address = address

        def found(result: tuple[ScramVerifier, AccountRecord | None]) -> SASLStep:
            verifier, record = result
            self._verifier = verifier
            self._record = record
            self._serverFirst = f"r={self._nonce},s={_b64(verifier.salt)},i={verifier.iterations}"
            return SASLStep(self._serverFirst.encode("ascii"), False)

        d = self._authenticator.scramVerifier(address, self.name, self._source)
        return d.addCallbacks(found, _authFailure)

    def _clientFinal(self, data: bytes, verifier: ScramVerifier) -> SASLStep:
        text = _decodeUTF8(data)
        parts = text.split(",")
        if len(parts) < 3:
            raise _malformed("expected c=, r= and p=")
        channelBinding = _unb64(_attribute(parts[0], "c"), "c")
        nonce = _attribute(parts[1], "r")
        _checkExtensions(parts[2:-1])
        proof = _unb64(_attribute(parts[-1], "p"), "p")
        if nonce != self._nonce:
            raise SASLFailure("not-authorized", "nonce mismatch")
        if channelBinding != self._gs2Header:
            raise SASLFailure("not-authorized", "channel binding mismatch")

        withoutProof = text[: len(text) - len(parts[-1]) - 1]
        authMessage = ",".join((self._clientFirstBare, self._serverFirst, withoutProof)).encode(
            "utf-8"
        )
        clientSignature = hmac.digest(verifier.storedKey, authMessage, self._hashName)
        if len(proof) != len(clientSignature):
            raise _malformed("proof of the wrong length")
        clientKey = _xor(proof, clientSignature)
        matches = hmac.compare_digest(
            hashlib.new(self._hashName, clientKey).digest(), verifier.storedKey
        )
        record = self._record
        assert self._address is not None
        if not matches or record is None:
            self._authenticator.loginFailed(self._address, self._source)
            raise SASLFailure("not-authorized", "wrong user name or password")
        self._authenticator.loginSucceeded(self._address, self._source)
        if not record.enabled:
            raise SASLFailure("account-disabled", "account disabled")
        serverSignature = hmac.digest(verifier.serverKey, authMessage, self._hashName)
        return SASLStep(f"v={_b64(serverSignature)}".encode("ascii"), True, record.address)


def serverMechanism(
    name: str,
    authenticator: Authenticator,
    domain: str,
    secure: bool,
    *,
    allowPlaintext: bool = False,
    nonce: str | None = None,
    peer: object = None,
) -> ServerMechanism:
    """
    Start the server side of an exchange.

    @param name: The mechanism the client chose.
    @param authenticator: What checks passwords and finds SCRAM verifiers.
    @param domain: The domain the client logs in to: a bare user name
        C{alice} means C{alice@domain}, and users of other domains are
        refused.
    @param secure: Whether the connection is encrypted.
    @param allowPlaintext: Whether PLAIN is allowed on an unencrypted
        connection (as for L{mechanismsFor}).
    @param nonce: For tests only: the server's part of the SCRAM nonce,
        instead of a random one.
    @param peer: The client's address (its transport's C{getPeer()}):
        failed logins are throttled per source address
        (L{imgateway.core.throttle}); C{None} for no throttling.
    @return: The mechanism, ready for its first L{ServerMechanism.step}.
    @raise SASLFailure: C{invalid-mechanism} if C{name} is not a
        mechanism we support, or is SCRAM and the authenticator has no
        SCRAM verifiers (L{Authenticator.scramAvailable});
        C{encryption-required} for PLAIN on an unencrypted connection
        without C{allowPlaintext}.
    """
    if domain != authenticator.domain:
        # The authenticator's own domain is normalised already.
        domain = normaliseDomain(domain)
    source = sourceOf(peer)
    if name == _PLAIN:
        if not (secure or allowPlaintext):
            raise SASLFailure("encryption-required", "PLAIN needs an encrypted connection")
        return _PlainServer(authenticator, domain, source)
    if name in _SCRAM:
        if not authenticator.scramAvailable:
            raise SASLFailure("invalid-mechanism", f"{name} is not offered: the directory keeps no SCRAM verifiers")
        return _ScramServer(name, authenticator, domain, nonce, source)
    raise SASLFailure("invalid-mechanism", f"unsupported mechanism {name[:40]!r}")


# Client side


class ClientMechanism(ABC):
    """
    The client's side of one SASL exchange. Make one per attempt with
    L{clientMechanism}.

    The client sends L{start}'s result as its initial response (or in
    answer to the server's first, empty, challenge if it sends no initial
    response), answers each further challenge with L{step}, and on success
    passes the success's additional data (C{b""} if none) to
    L{verifyFinal} before trusting the server.

    @ivar name: The mechanism's name.
    """

    name: str

    @abstractmethod
    def start(self) -> bytes:
        """
        @return: The initial response.
        """

    @abstractmethod
    def step(self, challenge: bytes) -> bytes:
        """
        Answer a challenge.

        @param challenge: The server's challenge.
        @return: The response.
        @raise SASLFailure: If the challenge is not what the mechanism
            expects at this point.
        """

    @abstractmethod
    def verifyFinal(self, additionalData: bytes) -> None:
        """
        Check the data that came with the server's success.

        @param additionalData: The data, C{b""} if none.
        @raise SASLFailure: If the server did not prove that it knows the
            user's credentials (SCRAM), or sent unexpected data.
        """


class _PlainClient(ClientMechanism):
    name = _PLAIN

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def start(self) -> bytes:
        return f"\0{self._username}\0{self._password}".encode("utf-8")

    def step(self, challenge: bytes) -> bytes:
        raise _malformed("PLAIN has no challenges")

    def verifyFinal(self, additionalData: bytes) -> None:
        if additionalData:
            raise _malformed("unexpected additional data")


class _ScramClient(ClientMechanism):
    def __init__(self, name: str, username: str, password: str, nonce: str | None) -> None:
        self.name = name
        self._hashName = SCRAM_HASHES[name]
        self._username = username
        self._password = password
        self._clientNonce = _makeNonce() if nonce is None else _checkNonce(nonce)
        self._gs2Header = "n,,"
        self._clientFirstBare = f"n={_escapeName(username)},r={self._clientNonce}"
        self._serverSignature: bytes | None = None
        self._state = "start"

    def start(self) -> bytes:
        if self._state != "start":
            raise _malformed("already started")
        self._state = "first"
        return (self._gs2Header + self._clientFirstBare).encode("utf-8")

    def step(self, challenge: bytes) -> bytes:
        if self._state == "first":
            self._state = "final"
            return self._serverFirst(challenge)
        if self._state == "final":
            # Some servers send the server-final message as a challenge.
            self._checkServerFinal(challenge)
            return b""
        raise _malformed(f"unexpected challenge in state {self._state}")

    def _serverFirst(self, challenge: bytes) -> bytes:
        text = _decodeUTF8(challenge)
        parts = text.split(",")
        if parts[0].startswith("m="):
            raise _malformed("mandatory extensions are not supported")
        if len(parts) < 3:
            raise _malformed("expected r=, s= and i=")
        nonce = _checkNonce(_attribute(parts[0], "r"))
        salt = _unb64(_attribute(parts[1], "s"), "s")
        try:
            iterations = int(_attribute(parts[2], "i"))
        except ValueError:
            raise _malformed("invalid iteration count") from None
        _checkExtensions(parts[3:])
        if not nonce.startswith(self._clientNonce) or len(nonce) == len(self._clientNonce):
            raise _malformed("the server's nonce does not extend ours")
        if not salt:
            raise _malformed("empty salt")
        if not 1 <= iterations <= _MAX_CLIENT_ITERATIONS:
            raise _malformed(f"unacceptable iteration count {iterations}")

        try:
            password = preparePassword(self._password)
        except ValueError:
            password = self._password
        salted = saltedPassword(self._hashName, password.encode("utf-8"), salt, iterations)
        clientKey = hmac.digest(salted, b"Client Key", self._hashName)
        storedKey = hashlib.new(self._hashName, clientKey).digest()
        serverKey = hmac.digest(salted, b"Server Key", self._hashName)
        withoutProof = f"c={_b64(self._gs2Header.encode('utf-8'))},r={nonce}"
        authMessage = ",".join((self._clientFirstBare, text, withoutProof)).encode("utf-8")
        proof = _xor(clientKey, hmac.digest(storedKey, authMessage, self._hashName))
        self._serverSignature = hmac.digest(serverKey, authMessage, self._hashName)
        return f"{withoutProof},p={_b64(proof)}".encode("ascii")

    def _checkServerFinal(self, data: bytes) -> None:
        expected = self._serverSignature
        if expected is None:
            raise _malformed("no server-final message expected")
        first = _decodeUTF8(data).split(",")[0]
        if first.startswith("e="):
            self._state = "failed"
            raise SASLFailure("not-authorized", first[2:])
        signature = _unb64(_attribute(first, "v"), "v")
        if not hmac.compare_digest(signature, expected):
            self._state = "failed"
            raise SASLFailure("not-authorized", "wrong server signature")
        self._state = "verified"

    def verifyFinal(self, additionalData: bytes) -> None:
        if self._state == "verified" and not additionalData:
            return
        if self._state != "final":
            raise _malformed(f"unexpected success in state {self._state}")
        self._checkServerFinal(additionalData)


def clientMechanism(
    name: str, username: str, password: str, *, nonce: str | None = None
) -> ClientMechanism:
    """
    Start the client side of an exchange.

    SCRAM's key derivation runs in L{ClientMechanism.step} and takes a few
    milliseconds (as many PBKDF2 iterations as the server asks for, at most
    a million).

    @param name: The mechanism (one of L{mechanismsFor}C{(True, True)}).
    @param username: The user name: a bare local part or a full address.
    @param password: The password.
    @param nonce: For tests only: the client's SCRAM nonce, instead of a
        random one.
    @return: The mechanism, ready for L{ClientMechanism.start}.
    @raise SASLFailure: C{invalid-mechanism} if C{name} is not supported.
    """
    if name == _PLAIN:
        return _PlainClient(username, password)
    if name in _SCRAM:
        return _ScramClient(name, username, password, nonce)
    raise SASLFailure("invalid-mechanism", f"unsupported mechanism {name[:40]!r}")


def preferredMechanism(offered: list[str], allowPlain: bool = True) -> str:
    """
    Choose the strongest mechanism that a server offers.

    @param offered: The server's mechanisms.
    @param allowPlain: Whether PLAIN may be chosen (a client should say
        C{False} on an unencrypted connection).
    @return: C{SCRAM-SHA-256}, C{SCRAM-SHA-1} or C{PLAIN}.
    @raise SASLFailure: C{invalid-mechanism} if none of them is offered.
    """
    for name in mechanismsFor(secure=allowPlain, allowPlaintext=False):
        if name in offered:
            return name
    raise SASLFailure("invalid-mechanism", "no supported mechanism offered")
