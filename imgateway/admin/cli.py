# -*- test-case-name: tests.test_admin,tests.e2e.test_admin -*-
"""
C{imgateway-admin}: manage the accounts in the directory, also while the
gateway runs (the directory is an SQLite file in WAL mode, and the gateway
caches nothing about accounts for long).

    imgateway-admin --config etc/imgateway.toml user add alice --name "Alice"
    IMGATEWAY_CONFIG=/srv/gw/imgateway.toml imgateway-admin user list
    imgateway-admin user passwd alice@corp.example --password-stdin < pw.txt
    imgateway-admin user disable alice
    imgateway-admin user enable alice
    imgateway-admin user list
"""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, cast

from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import react

from imgateway import __version__
from imgateway.auth.passwords import makeCredentials
from imgateway.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG_PATH, GatewayConfig, findConfig, loadConfig
from imgateway.core.address import Address, validateAccountLocalPart
from imgateway.core.errors import AccountExists, ImgatewayError, InvalidAddress, NoSuchAccount
from imgateway.core.records import AccountRecord
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.plugins import adapterConfigParsers

__all__ = ["main"]

_PROG = "imgateway-admin"

#: Longest display name accepted.
_MAX_NAME_CHARS = 256

_Action = Callable[[SQLiteDirectory], Awaitable[None]]


class _Refused(Exception):
    """
    The command cannot be done; the message says why, for the operator.
    """


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Manage the accounts of an imgateway gateway."
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=None,
        help=f"the gateway's configuration file (default: ${CONFIG_ENVIRONMENT} if set, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    areas = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    user = areas.add_parser("user", help="manage accounts")
    commands = user.add_subparsers(dest="command", required=True, metavar="COMMAND")

    addressHelp = "the account: a name (alice) in the gateway's domain, or a full address"
    passwordHelp = "read the password from one line of standard input instead of asking"

    add = commands.add_parser("add", help="add an account")
    add.add_argument("address", metavar="ADDRESS", help=addressHelp)
    add.add_argument("--name", default="", help="the account's display name")
    add.add_argument("--password-stdin", action="store_true", help=passwordHelp)

    passwd = commands.add_parser("passwd", help="set an account's password")
    passwd.add_argument("address", metavar="ADDRESS", help=addressHelp)
    passwd.add_argument("--password-stdin", action="store_true", help=passwordHelp)

    disable = commands.add_parser("disable", help="stop an account from logging in and receiving")
    disable.add_argument("address", metavar="ADDRESS", help=addressHelp)

    enable = commands.add_parser("enable", help="let a disabled account log in again")
    enable.add_argument("address", metavar="ADDRESS", help=addressHelp)

    commands.add_parser("list", help="list the accounts")
    return parser


def _resolveAddress(text: str, config: GatewayConfig, new: bool) -> Address:
    """
    The address of an account of this gateway: C{alice} is
    C{alice@<domain>}; a full address must be in the gateway's domain.

    @param new: Whether the account is to be created, so that its name must
        be one that accounts may have.
    @raise _Refused: If C{text} names no such address.
    """
    try:
        if "@" in text or ":" in text:
            address = Address.fromString(text)
        else:
            address = Address.fromParts(text, config.domain)
        if new:
            validateAccountLocalPart(address)
    except InvalidAddress as e:
        raise _Refused(f"invalid address {text!r}: {e}") from None
    if address.domain != config.domain:
        raise _Refused(f"{address} is not in this gateway's domain ({config.domain})")
    return address


def _checkName(name: str) -> str:
    """
    @raise _Refused: If C{name} cannot be a display name.
    """
    if len(name) > _MAX_NAME_CHARS:
        raise _Refused(f"display names are at most {_MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise _Refused("display names may not hold control characters or line breaks")
    return name


def _readPassword(fromStdin: bool) -> str:
    """
    Read a new password: one line of standard input, or asked twice on the
    terminal.

    @raise _Refused: If there is none, or the two differ.
    """
    if fromStdin:
        line = sys.stdin.readline()
        if not line:
            raise _Refused("no password on standard input")
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        # The reactor is running: give Control-C back its usual meaning
        # while the terminal waits for the password.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            password = getpass.getpass("New password: ")
            again = getpass.getpass("New password (again): ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            raise _Refused("no password given") from None
        finally:
            signal.signal(signal.SIGINT, previous)
        if password != again:
            raise _Refused("the passwords do not match")
    if not password:
        raise _Refused("the password is empty")
    return password


def _credentials(password: str, config: GatewayConfig) -> str:
    try:
        return makeCredentials(password, config.auth.scramIterations).serialise()
    except ValueError as e:  # SASLprep refused it
        raise _Refused(f"unusable password: {e}") from None


def _formatAccounts(accounts: Sequence[AccountRecord]) -> list[str]:
    """
    One line per account: address, enabled or disabled, home server,
    display name, in aligned columns.
    """
    if not accounts:
        return []
    addressWidth = max(len(str(a.address)) for a in accounts)
    serverWidth = max(len(a.homeServer) for a in accounts)
    return [
        f"{str(a.address):<{addressWidth}}  {'enabled' if a.enabled else 'disabled':<8}"
        f"  {a.homeServer:<{serverWidth}}  {a.displayName}".rstrip()
        for a in accounts
    ]


def _action(args: argparse.Namespace, config: GatewayConfig) -> _Action:
    """
    Check the command line and prepare the command, before any storage is
    opened. (A password is asked for once the account is known to exist,
    or not to exist, as the command needs.)

    @return: What to do with the directory.
    @raise _Refused: If the command cannot be done (the action may raise it
        too).
    """
    command: str = args.command
    if command == "list":

        async def listAccounts(directory: SQLiteDirectory) -> None:
            for line in _formatAccounts(await directory.listAccounts()):
                print(line)

        return listAccounts

    address = _resolveAddress(args.address, config, new=command == "add")
    if command == "add":
        name = _checkName(args.name)

        async def add(directory: SQLiteDirectory) -> None:
            # Check first, so as not to ask for a password in vain.
            if await directory.getAccount(address) is not None:
                raise AccountExists(f"account {address} exists")
            credentials = _credentials(_readPassword(args.password_stdin), config)
            record = AccountRecord(address, config.homeServerName, name, True, credentials)
            await directory.addAccount(record)
            print(f"added {address}")

        return add

    if command == "passwd":

        async def passwd(directory: SQLiteDirectory) -> None:
            if await directory.getAccount(address) is None:
                raise NoSuchAccount(f"no account {address}")
            credentials = _credentials(_readPassword(args.password_stdin), config)
            await directory.updateAccount(address, credentials=credentials)
            print(f"changed the password of {address}")

        return passwd

    enabled = command == "enable"

    async def setEnabled(directory: SQLiteDirectory) -> None:
        await directory.updateAccount(address, enabled=enabled)
        print(f"{command}d {address}")

    return setEnabled


def _fail(message: str) -> NoReturn:
    print(f"{_PROG}: {message}", file=sys.stderr)
    raise SystemExit(1)


async def _run(reactor: IReactorCore, config: GatewayConfig, action: _Action) -> None:
    """
    Open the directory, do C{action}, close it. Expected errors end the
    process with a message and status 1; others with a traceback.
    """
    try:
        directory = await SQLiteDirectory.open(
            reactor, config.dataDir.child("directory.sqlite3"), durability=config.durability
        )
        try:
            await action(directory)
        finally:
            await directory.close()
    except (ImgatewayError, _Refused) as e:
        _fail(str(e))
    except Exception:
        # react() would only log it, and nothing here reads the log.
        traceback.print_exc()
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run C{imgateway-admin}, and exit: status 0 on success, 1 when the
    command failed (with a message on standard error), 2 for a bad command
    line.

    @param argv: The arguments; C{sys.argv[1:]} when C{None}.
    """
    args = _parser().parse_args(argv)
    from twisted.internet import reactor

    theReactor = cast(IReactorCore, reactor)
    try:
        config = loadConfig(findConfig(args.config), theReactor, adapterConfigParsers())
        if config.directory.ldap is not None:
            ldap = config.directory.ldap
            raise _Refused(
                f"the directory is the LDAP server {ldap.url} ({ldap.baseDN}), read-only to imgateway:"
                " manage accounts there ([directory] backend in the configuration)"
            )
        action = _action(args, config)
    except (ImgatewayError, _Refused) as e:
        _fail(str(e))
    react(lambda r: _run(r, config, action), _reactor=theReactor)


if __name__ == "__main__":
    main()
