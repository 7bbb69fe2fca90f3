# -*- test-case-name: tests.test_admin,tests.e2e.test_admin -*-
"""
C{imgateway-admin}: manage the accounts in the directory, also while the
gateway runs (the directory is an SQLite file in WAL mode, and the gateway
caches nothing about accounts for long).

    imgateway-admin --config etc/imgateway.toml user add alice --name "Alice"
    imgateway-admin user add carol --home hs2
    IMGATEWAY_CONFIG=/srv/gw/imgateway.toml imgateway-admin user list
    imgateway-admin user passwd alice@corp.example --password-stdin < pw.txt
    imgateway-admin user disable alice
    imgateway-admin user enable alice
    imgateway-admin user move alice hs2
    imgateway-admin user list

and a lab's link certificates (L{imgateway.admin.certs}), without a
configuration:

    imgateway-admin certs ca /etc/imgateway/lab-ca
    imgateway-admin certs server /etc/imgateway/lab-ca hs1 --dns hs1.corp.example
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, cast

from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import react

from imgateway import __version__
from imgateway.admin.certs import describe, makeAuthority, makeServer
from imgateway.admin.move import MoveSummary, moveAccount
from imgateway.auth.passwords import makeCredentials
from imgateway.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG_PATH, GatewayConfig, findConfig, loadConfig
from imgateway.core.address import Address, validateAccountLocalPart
from imgateway.core.errors import AccountExists, ImgatewayError, InvalidAddress, NoSuchAccount
from imgateway.core.records import AccountRecord, MoveRecord
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.home.store import MIGRATIONS as HOME_MIGRATIONS, SQLiteHomeStore
from imgateway.interfaces import IHomeStore
from imgateway.plugins import adapterConfigParsers
from imgateway.sqlite import openDatabase

__all__ = ["main"]

_PROG = "imgateway-admin"

#: Longest display name accepted.
_MAX_NAME_CHARS = 256

_Action = Callable[[IReactorCore, SQLiteDirectory], Awaitable[None]]


class _Refused(Exception):
    """
    The command cannot be done; the message says why, for the operator.
    """


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Manage the accounts of an imgateway gateway, and a lab's certificates."
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
    add.add_argument(
        "--home",
        metavar="NAME",
        default=None,
        help="its home server: one of the configuration's [servers] with the role home (default: [gateway] home_server)",
    )

    passwd = commands.add_parser("passwd", help="set an account's password")
    passwd.add_argument("address", metavar="ADDRESS", help=addressHelp)
    passwd.add_argument("--password-stdin", action="store_true", help=passwordHelp)

    disable = commands.add_parser("disable", help="stop an account from logging in and receiving")
    disable.add_argument("address", metavar="ADDRESS", help=addressHelp)

    enable = commands.add_parser("enable", help="let a disabled account log in again")
    enable.add_argument("address", metavar="ADDRESS", help=addressHelp)

    commands.add_parser("list", help="list the accounts, with their home servers")

    move = commands.add_parser(
        "move",
        help="move an offline account to another home server, with its contacts, access lists and rules",
        description="Move an account to another home server: its contacts, authorisations, access lists and "
        "rules go to the new home server's store, then the directory names it. The account is disabled "
        "during the move; end its sessions first (see docs/operations.md, 'Moving a user'). Running the "
        "command again finishes a move that was interrupted.",
    )
    move.add_argument("address", metavar="ADDRESS", help=addressHelp)
    move.add_argument("home", metavar="NAME", help="the new home server (one of [servers] with the role home)")

    certs = areas.add_parser("certs", help="make a lab's certificate authority and link certificates")
    certCommands = certs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ca = certCommands.add_parser(
        "ca", help="make a certificate authority: DIR/ca.key (mode 0600) and DIR/ca.crt"
    )
    ca.add_argument("folder", metavar="DIR", help="where to write it (made if missing)")
    ca.add_argument("--name", default=None, help="its common name (default: imgateway lab CA and a random suffix)")
    ca.add_argument("--days", type=int, default=3650, help="how many days it is valid (default: 3650)")
    server = certCommands.add_parser(
        "server",
        help="issue a server's link certificate with the authority in DIR: DIR/NAME.key (mode 0600) and DIR/NAME.crt",
    )
    server.add_argument("folder", metavar="DIR", help="the authority's folder (see certs ca)")
    server.add_argument("name", metavar="NAME", help="the server's name (its files' name and its common name)")
    server.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="a DNS name it holds (repeatable; default: NAME)"
    )
    server.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="an IP address it holds (repeatable)")
    server.add_argument("--days", type=int, default=365, help="how many days it is valid (default: 365)")
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


def _formatAccounts(accounts: Sequence[AccountRecord], moves: Sequence[MoveRecord] = ()) -> list[str]:
    """
    One line per account: address, enabled or disabled (or C{moving}
    while a move is under way), home server (C{hs1 -> hs2} while moving),
    display name, in aligned columns.
    """
    if not accounts:
        return []
    moving = {m.address: m for m in moves}

    def home(a: AccountRecord) -> str:
        m = moving.get(a.address)
        return a.homeServer if m is None else f"{m.source} -> {m.target}"

    def status(a: AccountRecord) -> str:
        return "moving" if a.address in moving else "enabled" if a.enabled else "disabled"

    addressWidth = max(len(str(a.address)) for a in accounts)
    serverWidth = max(len(home(a)) for a in accounts)
    return [
        f"{str(a.address):<{addressWidth}}  {status(a):<8}"
        f"  {home(a):<{serverWidth}}  {a.displayName}".rstrip()
        for a in accounts
    ]


def _homeServers(config: GatewayConfig) -> list[str]:
    """
    The domain's home servers: the C{[servers]} with the role C{home}, or
    this process alone for a single-host gateway.
    """
    if not config.servers:
        return [config.homeServerName]
    return [name for name, server in config.servers.items() if "home" in server.roles]


def _checkHome(name: str, config: GatewayConfig) -> str:
    """
    @raise _Refused: If C{name} is not one of the domain's home servers.
    """
    homes = _homeServers(config)
    if name not in homes:
        raise _Refused(
            f"{name} is not a home server of {config.domain} in {config.path.path} "
            f"(home servers: {', '.join(homes) or 'none'}; [servers.NAME] roles must include \"home\")"
        )
    return name


def _summary(address: Address, s: MoveSummary) -> str:
    done = "finished the move of" if s.resumed else "moved"
    return (
        f"{done} {address} from {s.source} to {s.target} (contacts: {s.contacts}, "
        f"authorisations: {s.authorisations}, access-list entries: {s.access}, rules: {s.rules}; "
        f"authorisations kept in {s.source}'s store for its users: {s.kept})"
    )


class _Stores:
    """
    The home servers' stores a command opens (C{home-<name>.sqlite3} in
    the data folder), each once, all closed by L{close}.
    """

    def __init__(self, reactor: IReactorCore, config: GatewayConfig) -> None:
        self._reactor = reactor
        self._config = config
        self._open: dict[str, SQLiteHomeStore] = {}

    async def open(self, name: str) -> IHomeStore:
        """
        The store of the home server C{name}, opened (made if missing) with
        the configuration's durability.
        """
        if name not in self._open:
            path = self._config.dataDir.child(f"home-{name}.sqlite3")
            database = await openDatabase(self._reactor, path, HOME_MIGRATIONS, durability=self._config.durability)
            self._open[name] = SQLiteHomeStore(database)
        return self._open[name]

    async def close(self) -> None:
        """
        Close every store opened.
        """
        for store in self._open.values():
            await store.close()


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

        async def listAccounts(reactor: IReactorCore, directory: SQLiteDirectory) -> None:
            accounts = await directory.listAccounts()
            for line in _formatAccounts(accounts, await directory.listMoves()):
                print(line)

        return listAccounts

    address = _resolveAddress(args.address, config, new=command == "add")
    if command == "add":
        name = _checkName(args.name)
        home = _checkHome(args.home if args.home is not None else config.homeServerName, config)

        async def add(reactor: IReactorCore, directory: SQLiteDirectory) -> None:
            # Check first, so as not to ask for a password in vain.
            if await directory.getAccount(address) is not None:
                raise AccountExists(f"account {address} exists")
            credentials = _credentials(_readPassword(args.password_stdin), config)
            record = AccountRecord(address, home, name, True, credentials)
            await directory.addAccount(record)
            print(f"added {address} (home server {home})")

        return add

    if command == "passwd":

        async def passwd(reactor: IReactorCore, directory: SQLiteDirectory) -> None:
            if await directory.getAccount(address) is None:
                raise NoSuchAccount(f"no account {address}")
            credentials = _credentials(_readPassword(args.password_stdin), config)
            await directory.updateAccount(address, credentials=credentials)
            print(f"changed the password of {address}")

        return passwd

    if command == "move":
        target = _checkHome(args.home, config)

        async def move(reactor: IReactorCore, directory: SQLiteDirectory) -> None:
            stores = _Stores(reactor, config)
            settle = config.router.directoryCacheSeconds
            try:
                summary = await moveAccount(
                    directory,
                    stores.open,
                    address,
                    target,
                    settle,
                    cast(IReactorTime, reactor),
                    lambda message: print(message, flush=True),
                )
            finally:
                await stores.close()
            if summary is None:
                raise _Refused(f"{address} is homed on {target} already")
            print(_summary(address, summary))

        return move

    enabled = command == "enable"

    async def setEnabled(reactor: IReactorCore, directory: SQLiteDirectory) -> None:
        under = await directory.getMove(address)
        if under is not None:
            raise _Refused(
                f"a move of {address} to {under.target} is unfinished; finish it first "
                f"(imgateway-admin user move {address} {under.target}): it leaves the account "
                f"{'enabled' if under.enabled else 'disabled'} as it was"
            )
        await directory.updateAccount(address, enabled=enabled)
        print(f"{command}d {address}")

    return setEnabled


def _certs(args: argparse.Namespace) -> NoReturn:
    """
    Run a C{certs} command (they need no configuration), and exit.
    """
    try:
        if args.command == "ca":
            name = args.name if args.name is not None else f"imgateway lab CA {os.urandom(4).hex()}"
            keyPath, certificatePath = makeAuthority(args.folder, name, args.days)
        else:
            keyPath, certificatePath = makeServer(args.folder, args.name, args.dns, args.ip, args.days)
    except ImgatewayError as e:
        _fail(str(e))
    print(f"wrote {keyPath} (mode 0600) and {certificatePath}: {describe(certificatePath)}")
    raise SystemExit(0)


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
            await action(reactor, directory)
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
    if args.area == "certs":
        _certs(args)
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
