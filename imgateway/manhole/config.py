# -*- test-case-name: tests.test_manhole -*-
"""
The C{[manhole]} table: the SSH console (off unless C{listen} is set), the
sender of system messages and the reactor watchdog; checked at start-up
with the rest of the configuration (L{imgateway.config.parseConfig}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from attrs import frozen

from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, InvalidAddress

if TYPE_CHECKING:
    from twisted.conch.ssh.keys import Key
    from twisted.internet.interfaces import IReactorCore

T = TypeVar("T")

__all__ = ["HOST_KEY_FILE", "ManholeConfig", "parseManholeConfig", "readAuthorizedKeys"]

#: The manhole's SSH host key (OpenSSH private key format, mode 0600), in the
#: data folder; made on the first start.
HOST_KEY_FILE = "manhole_host_key"


@frozen
class ManholeConfig:
    """
    The C{[manhole]} table.

    @ivar listen: Server endpoint strings of the SSH console; empty: no
        console.
    @ivar authorizedKeys: The OpenSSH C{authorized_keys} file of the keys
        that may log in (read again at each login), or C{None} (only
        without C{listen}).
    @ivar user: The one SSH user name accepted.
    @ivar loginTimeout: Seconds an SSH connection may take to authenticate.
    @ivar maxAuthAttempts: Failed authentication attempts before the
        connection is closed.
    @ivar maxScriptBytes: The longest script a non-terminal session takes
        on its input.
    @ivar systemSender: The local part of the address system messages
        (L{imgateway.manhole.namespace.GatewayConsole.notify}) come from.
    @ivar watchdogSeconds: Log when the reactor did not run for longer
        than this; 0 turns the watchdog off.
    """

    listen: tuple[str, ...] = ()
    authorizedKeys: str | None = None
    user: str = "admin"
    loginTimeout: float = 30.0
    maxAuthAttempts: int = 3
    maxScriptBytes: int = 1024 * 1024
    systemSender: str = "imgateway"
    watchdogSeconds: float = 1.0


_DEFAULT = ManholeConfig()


class _Table(Protocol):
    """
    What is read of an L{imgateway.config.ConfigTable} (which imports this
    module).
    """

    def error(self, key: str, problem: str) -> ConfigError: ...

    def get(self, key: str, kind: type[T], default: T = ...) -> T: ...

    def positive(self, key: str, kind: type[T], default: T) -> T: ...

    def path(self, key: str, default: str | None = None) -> str | None: ...

    def endpoints(self, key: str, reactor: IReactorCore, default: Sequence[str] = ()) -> tuple[str, ...]: ...


def readAuthorizedKeys(path: str) -> list[Key]:
    """
    Read an OpenSSH C{authorized_keys} file: one public key a line; blank
    lines, comments and lines that hold no key OpenSSH's format allows are
    skipped (options before a key are not supported: such a line is
    skipped too).

    @raise OSError: If the file cannot be read.
    """
    from twisted.conch.ssh.keys import BadKeyError, Key

    found = []
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                found.append(Key.fromString(line))
            except (BadKeyError, ValueError, IndexError):
                continue
    return found


def parseManholeConfig(table: _Table, reactor: IReactorCore, domain: str) -> ManholeConfig:
    """
    Read and check the C{[manhole]} table.

    @param domain: The gateway's domain (of the system sender's address).
    @raise imgateway.core.errors.ConfigError: Naming the key at fault: a
        C{listen} without C{authorized_keys}, a keys file that cannot be
        read or holds no public key, a user name or system sender that is
        not a simple name, a negative watchdog time.
    """
    listen = table.endpoints("listen", reactor)
    authorizedKeys = table.path("authorized_keys")
    if listen and authorizedKeys is None:
        raise table.error("authorized_keys", "missing (required when listen is set: the keys that may log in)")
    if authorizedKeys is not None and not readAuthorizedKeys(authorizedKeys):
        raise table.error("authorized_keys", f"{authorizedKeys} holds no public key (OpenSSH authorized_keys format)")
    user = table.get("user", str, _DEFAULT.user)
    if not user or not all(c.isalnum() or c in "-_." for c in user) or not user.isascii():
        raise table.error("user", f"must be a simple name (letters, digits, '-', '_', '.'), got {user!r}")
    systemSender = table.get("system_sender", str, _DEFAULT.systemSender)
    if "@" in systemSender:
        raise table.error("system_sender", f"a local part, without '@' (the domain is {domain}), got {systemSender!r}")
    try:
        address = Address.fromParts(systemSender, domain)
    except InvalidAddress as e:
        raise table.error("system_sender", f"{systemSender!r}: {e}") from None
    watchdog = table.get("watchdog_seconds", float, _DEFAULT.watchdogSeconds)
    if watchdog < 0:
        raise table.error("watchdog_seconds", f"must be 0 (off) or more, got {watchdog!r}")
    return ManholeConfig(
        listen=listen,
        authorizedKeys=authorizedKeys,
        user=user,
        loginTimeout=table.positive("login_timeout", float, _DEFAULT.loginTimeout),
        maxAuthAttempts=table.positive("max_auth_attempts", int, _DEFAULT.maxAuthAttempts),
        maxScriptBytes=table.positive("max_script_bytes", int, _DEFAULT.maxScriptBytes),
        systemSender=address.local,
        watchdogSeconds=watchdog,
    )
