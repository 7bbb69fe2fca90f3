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
    imgateway-admin rule list bob
    imgateway-admin rule add bob phone from alice forward alice@xmpp.example
    imgateway-admin rule add --position 1 bob phone,busy reply On the phone, back soon
    imgateway-admin rule remove bob 2

and, with home servers on different machines (L{imgateway.admin.transfer};
also with an LDAP directory, which they only read):

    imgateway-admin --config hs1.toml user export alice --out alice.json
    imgateway-admin --config hs2.toml user import alice.json
    imgateway-admin --config hs1.toml user purge alice

and a lab's link certificates (L{imgateway.admin.certs}), without a
configuration:

    imgateway-admin certs ca /etc/imgateway/lab-ca
    imgateway-admin certs server /etc/imgateway/lab-ca hs1 --dns hs1.corp.example
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import signal
import sys
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import attrs
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import react
from twisted.python.filepath import FilePath

from imgateway import __version__
from imgateway.adapters.native.mapping import ruleFromJSON, ruleToJSON
from imgateway.admin.certs import describe, makeAuthority, makeServer
from imgateway.admin.move import MoveSummary, moveAccount
from imgateway.admin.transfer import (
    BadExport,
    ImportSummary,
    PurgeSummary,
    UserExport,
    decodeExport,
    describeCounts,
    encodeExport,
    exportUser,
    importUser,
    purgeUser,
)
from imgateway.auth.passwords import makeCredentials
from imgateway.client.parsing import RULE_SYNTAX, describeRule, parseRule
from imgateway.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG_PATH, GatewayConfig, findConfig, loadConfig
from imgateway.core.address import Address, validateAccountLocalPart
from imgateway.core.errors import AccountExists, ImgatewayError, InvalidAddress, NoSuchAccount
from imgateway.core.records import AccountRecord, MoveRecord, PresenceRule, SetRules, checkRule
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.home.store import MIGRATIONS as HOME_MIGRATIONS, SQLiteHomeStore
from imgateway.interfaces import IDirectory, IHomeStore
from imgateway.plugins import adapterConfigParsers
from imgateway.sqlite import Database, openDatabase

__all__ = ["main"]

_PROG = "imgateway-admin"

#: Longest display name accepted.
_MAX_NAME_CHARS = 256

_Action = Callable[[IReactorCore, SQLiteDirectory], Awaitable[None]]

#: An action that needs only to read accounts, so runs on an LDAP directory
#: too.
_ReadingAction = Callable[[IReactorCore, IDirectory], Awaitable[None]]

#: The commands that run on an LDAP directory too (they only read it).
_READING_COMMANDS = frozenset({"export", "import", "purge"})


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

    export = commands.add_parser(
        "export",
        help="write an account's rows in this home server's store to a file (to move it to another machine)",
        description="Write every row this home server's store keeps of an account (contacts, authorisations, "
        "access lists, rules) to a checksummed file, for 'user import' on its new home server; a copy is kept in "
        "data_dir/exports/ for 'user purge'. Run it on the account's home server, while the account is offline "
        "(see docs/operations.md, 'Moving a user to another machine').",
    )
    export.add_argument("address", metavar="ADDRESS", help=addressHelp)
    export.add_argument("--out", "-o", metavar="FILE", required=True, help="the file to write (mode 0600)")
    export.add_argument(
        "--force", action="store_true", help="export even if the directory homes the account on another server"
    )

    importer = commands.add_parser(
        "import",
        help="write an exported account's rows into this home server's store",
        description="Write the rows of a 'user export' file into this home server's store, in one transaction. "
        "The file must be whole and unchanged, of this store's schema version. Importing the same file again does "
        "nothing; rows of the account's that the store holds and that differ from the file are refused unless "
        "--replace. Then make the directory name this home server for the account.",
    )
    importer.add_argument("file", metavar="FILE", help="the export file")
    importer.add_argument(
        "--replace", action="store_true", help="replace the account's rows already in this store with the file's"
    )

    purge = commands.add_parser(
        "purge",
        help="remove a moved account's rows from this (its old) home server's store",
        description="Once the directory names the account's new home server (and 'user import' is done there), "
        "remove its rows from this store, but those of pairs with this server's own users. Refused while the "
        "directory names this server, and if the rows changed since the last 'user export' made here.",
    )
    purge.add_argument("address", metavar="ADDRESS", help=addressHelp)

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
    _ruleParser(areas)
    _addConsoleParser(areas)
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


def _ownHome(config: GatewayConfig) -> str:
    """
    This configuration's home server, whose store C{export}, C{import} and
    C{purge} work on.

    @raise _Refused: If the process is not a home server.
    """
    name = config.homeServerName
    if name not in _homeServers(config):
        raise _Refused(
            f"{name} ([gateway] home_server of {config.path.path}) is not a home server: run the command with "
            "the configuration of the home server whose store it works on"
        )
    return name


def _storePath(config: GatewayConfig, home: str) -> FilePath[str]:
    return config.dataDir.child(f"home-{home}.sqlite3")


async def _openStore(reactor: IReactorCore, config: GatewayConfig, home: str, create: bool) -> Database:
    """
    Open this home server's store, with the configuration's durability.

    @param create: Whether to make it if missing (else refuse).
    """
    path = _storePath(config, home)
    if not create and not path.exists():
        raise _Refused(f"{home} has no store at {path.path} (is this the configuration of {home}'s machine?)")
    return await openDatabase(reactor, path, HOME_MIGRATIONS, durability=config.durability)


def _recordPath(config: GatewayConfig, address: Address) -> FilePath[str]:
    """
    Where C{user export} keeps a copy of the last export of C{address}, for
    C{user purge}.
    """
    return config.dataDir.child("exports").child(f"{address}.json")


def _writePrivate(path: FilePath[str], data: bytes) -> None:
    """
    Write C{data} to C{path} whole or not at all (a new file, mode 0600,
    renamed over the old).
    """
    temporary = path.siblingExtension(f".{os.getpid()}.tmp")
    fd = os.open(temporary.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary.path, path.path)
    except BaseException:
        if temporary.exists():
            temporary.remove()
        raise


def _readExport(path: str) -> UserExport:
    """
    @raise _Refused: If the file cannot be read.
    @raise BadExport: If it is not a whole export.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Refused(f"cannot read {path}: {e.strerror}") from None
    return decodeExport(data, path)


def _exportSummary(address: Address, export: UserExport, path: str) -> str:
    return (
        f"exported {address} from {export.home}'s store to {path} ({describeCounts(export.counts())}; "
        f"sha256 {export.digest[:16]})"
    )


def _importSummary(export: UserExport, home: str, path: str, s: ImportSummary) -> str:
    done = (
        f"{export.address} is in {home}'s store as in {path} already"
        if s.already
        else f"imported {export.address} into {home}'s store from {path}"
    )
    return (
        f"{done} (exported from {export.home} at {export.exported}, sha256 {export.digest[:16]}: "
        f"{describeCounts(s.written)}; left as {home} keeps them, decided by its users: {s.theirs}; "
        f"removed: {s.removed})"
    )


def _purgeSummary(address: Address, home: str, s: PurgeSummary) -> str:
    if not any(s.removed.values()):
        return f"{home}'s store holds no rows of {address}'s to purge (kept for its users: {s.kept})"
    return f"purged {address} from {home}'s store ({describeCounts(s.removed)}; kept for its users: {s.kept})"


def _readingAction(args: argparse.Namespace, config: GatewayConfig) -> _ReadingAction:
    """
    Prepare C{user export}, C{import} or C{purge}, which only read the
    directory.
    """
    home = _ownHome(config)
    command: str = args.command
    if command == "export":
        address = _resolveAddress(args.address, config, new=False)
        out: str = args.out

        async def export(reactor: IReactorCore, directory: IDirectory) -> None:
            database = await _openStore(reactor, config, home, create=False)
            try:
                now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                result, account = await exportUser(directory, database, address, home, now, args.force)
            finally:
                await database.close()
            data, digest = encodeExport(result)
            record = _recordPath(config, address)
            record.parent().makedirs(ignoreExistingDirectory=True)
            os.chmod(record.parent().path, 0o700)
            _writePrivate(record, data)
            try:
                _writePrivate(FilePath(os.path.abspath(out)), data)
            except OSError as e:
                raise _Refused(f"cannot write {out}: {e.strerror}") from None
            print(_exportSummary(address, attrs.evolve(result, digest=digest), out))
            if account.enabled:
                print(
                    f"note: {address} is enabled in the directory: until the directory names its new home, a session "
                    f"of its on {home} could change these rows (user purge will then refuse: export and import again)"
                )

        return export

    if command == "import":
        path: str = args.file

        async def importer(reactor: IReactorCore, directory: IDirectory) -> None:
            export = _readExport(path)
            if export.address.domain != config.domain:
                raise _Refused(f"{path} is an export of {export.address}, not of this gateway's domain ({config.domain})")
            database = await _openStore(reactor, config, home, create=True)
            try:
                summary = await importUser(directory, database, export, home, args.replace)
            finally:
                await database.close()
            print(_importSummary(export, home, path, summary))
            account = await directory.getAccount(export.address)
            if account is not None and account.homeServer != home:
                print(
                    f"next: make the directory name {home} as the home server of {export.address} (LDAP: its "
                    f"home attribute), then, on {account.homeServer}: imgateway-admin user purge {export.address}"
                )

        return importer

    address = _resolveAddress(args.address, config, new=False)

    async def purge(reactor: IReactorCore, directory: IDirectory) -> None:
        record = _recordPath(config, address)
        last = _readExport(record.path) if record.exists() else None
        if last is not None and (last.address != address or last.home != home):
            raise _Refused(f"{record.path} is not an export of {address} from {home}")
        database = await _openStore(reactor, config, home, create=False)
        try:
            summary = await purgeUser(directory, database, address, home, last)
        finally:
            await database.close()
        print(_purgeSummary(address, home, summary))

    return purge


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


def _ruleParser(areas: Any) -> None:
    """
    The C{rule} area: a user's presence rules, in the home server's store.
    """
    rule = areas.add_parser(
        "rule",
        help="list, add or remove a user's presence rules (in the home store; see docs/rules.md)",
        description="Edit a user's presence rules in its home server's store. A user with sessions sees "
        "the change at its next login; the running gateway's manhole (homeServer.setUserRules) and the "
        "user's own clients change them at once.",
    )
    commands = rule.add_subparsers(dest="command", required=True, metavar="COMMAND")
    addressHelp = "the account: a name (alice) in the gateway's domain, or a full address"
    listing = commands.add_parser("list", help="print the user's rules, numbered, in order")
    listing.add_argument("address", metavar="USER", help=addressHelp)
    listing.add_argument("--json", action="store_true", help="print them as JSON (docs/protocol.md 7.7)")
    add = commands.add_parser(
        "add",
        help="add a rule",
        description=f"Add a rule: {RULE_SYNTAX}. STATES are presence states separated by commas "
        "(busy, be-right-back, away, on-the-phone, out-to-lunch; brb, phone, lunch, dnd).",
    )
    add.add_argument("address", metavar="USER", help=addressHelp)
    add.add_argument("--position", type=int, default=None, metavar="N", help="where (1 is looked at first; default: last)")
    add.add_argument("rule", nargs=argparse.REMAINDER, metavar="RULE", help=RULE_SYNTAX)
    remove = commands.add_parser("remove", help="remove rule N")
    remove.add_argument("address", metavar="USER", help=addressHelp)
    remove.add_argument("position", type=int, metavar="N", help="the rule's number (see rule list)")


def _ruleAction(args: argparse.Namespace, config: GatewayConfig) -> _ReadingAction:
    """
    Check a C{rule} command and prepare it: the user's rules are read and
    written in the store of its home server (the directory says which),
    checked as the user's own request would be (L{checkRule}, C{[home]
    max_rules}).
    """
    address = _resolveAddress(args.address, config, new=False)
    command: str = args.command
    newRule: PresenceRule | None = None
    if command == "add":
        try:
            newRule = checkRule(ruleFromJSON(parseRule(list(args.rule), config.domain)))
        except (ValueError, InvalidAddress) as e:
            raise _Refused(str(e)) from None
        if newRule.forwardTo == address:
            raise _Refused("a rule cannot forward to its own user")

    async def edit(reactor: IReactorCore, directory: IDirectory) -> None:
        account = await directory.getAccount(address)
        if account is None:
            raise NoSuchAccount(f"no account {address}")
        stores = _Stores(reactor, config)
        try:
            store = await stores.open(account.homeServer)
            rules = await store.getRules(address)
            if command == "list":
                if args.json:
                    print(json.dumps({"rules": [ruleToJSON(r) for r in rules]}, ensure_ascii=False))
                for number, rule in enumerate(rules, 1):
                    if not args.json:
                        print(f"{number}. {describeRule(ruleToJSON(rule))}")
                return
            if command == "remove":
                if not 1 <= args.position <= len(rules):
                    raise _Refused(f"{address} has no rule {args.position} ({len(rules)} rules)")
                removed = rules.pop(args.position - 1)
                said = f"removed rule {args.position} of {address}: {describeRule(ruleToJSON(removed))}"
            else:
                assert newRule is not None
                where = len(rules) if args.position is None else args.position - 1
                if not 0 <= where <= len(rules):
                    raise _Refused(f"the position must be 1 to {len(rules) + 1}")
                if len(rules) >= config.home.maxRules:
                    raise _Refused(f"{address} has {len(rules)} rules, the most allowed ([home] max_rules)")
                rules.insert(where, newRule)
                said = f"added rule {where + 1} of {address}: {describeRule(ruleToJSON(newRule))}"
            await store.apply([SetRules(address, tuple(rules))])
            print(said)
        finally:
            await stores.close()

    return edit


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


async def _openDirectory(reactor: IReactorCore, config: GatewayConfig) -> SQLiteDirectory | IDirectory:
    """
    Open the configured directory: SQLite's, or LDAP's (for the commands
    that only read it).
    """
    ldap = config.directory.ldap
    if ldap is None:
        return await SQLiteDirectory.open(reactor, config.dataDir.child("directory.sqlite3"), durability=config.durability)
    from imgateway.directory.ldap import LDAPDirectory

    directory = LDAPDirectory(cast(IReactorTime, reactor), ldap, reactor=reactor)
    directory.start()
    return directory


async def _run(reactor: IReactorCore, config: GatewayConfig, action: _Action | _ReadingAction) -> None:
    """
    Open the directory, do C{action}, close it. Expected errors end the
    process with a message and status 1; others with a traceback.
    """
    try:
        directory = await _openDirectory(reactor, config)
        try:
            await action(reactor, directory)  # type: ignore[arg-type]
        finally:
            await directory.close()
    except (ImgatewayError, _Refused) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))
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
    if args.area == "console":
        _console(args)
    from twisted.internet import reactor

    theReactor = cast(IReactorCore, reactor)
    try:
        config = loadConfig(findConfig(args.config), theReactor, adapterConfigParsers())
        action: _Action | _ReadingAction
        if args.area == "rule":
            action = _ruleAction(args, config)
        elif args.command in _READING_COMMANDS:
            action = _readingAction(args, config)
        elif config.directory.ldap is not None:
            ldap = config.directory.ldap
            raise _Refused(
                f"the directory is the LDAP server {ldap.url} ({ldap.baseDN}), read-only to imgateway:"
                " manage accounts there ([directory] backend in the configuration); of the user commands, only"
                " export, import and purge run on it (see docs/operations.md, 'Moving a user to another machine')"
            )
        else:
            action = _action(args, config)
    except (ImgatewayError, _Refused) as e:
        _fail(str(e))
    react(lambda r: _run(r, config, action), _reactor=theReactor)


# -- imgateway-admin console: the manhole over OpenSSH ------------------------------------


def _addConsoleParser(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = areas.add_parser(
        "console",
        help="open the gateway's console (the SSH manhole, [manhole] listen), or run a script in it",
        description="Connect to the running gateway's manhole with OpenSSH's ssh, as [manhole] user, checking its "
        "host key against the one in the data folder. Without --script: the interactive console. With --script: "
        "run the file in the console's namespace, print its output, and exit with its status (1 when it raised).",
    )
    console.add_argument("--script", metavar="FILE", default=None, help="run FILE (- for standard input) and exit")
    console.add_argument(
        "--identity", "-i", metavar="KEY", default=None, help="the private key to log in with (default: ssh's own)"
    )
    console.add_argument(
        "--connect",
        metavar="HOST:PORT",
        default=None,
        help="where the manhole listens (default: the first tcp endpoint of [manhole] listen)",
    )
    console.add_argument("--ssh", metavar="PROGRAM", default="ssh", help="the ssh client to run (default: ssh)")


#: The name the manhole's host key is known by in the C{known_hosts} file
#: L{consoleCommand} writes (C{HostKeyAlias}).
MANHOLE_HOST_ALIAS = "imgateway-manhole"


def _manholeTarget(config: GatewayConfig, connect: str | None) -> tuple[str, int]:
    from imgateway.config import parseHostPort

    if connect is not None:
        try:
            hostPort = parseHostPort(connect)
        except ValueError as e:
            raise _Refused(f"--connect: {e}") from None
        return hostPort.host, hostPort.port
    for description in config.manhole.listen:
        parts = description.split(":")
        if parts[0] in ("tcp", "tcp6") and len(parts) > 1 and parts[1].isdigit():
            interface = next((p.split("=", 1)[1] for p in parts[2:] if p.startswith("interface=")), "")
            host = interface if interface not in ("", "0.0.0.0", "::") else ("::1" if parts[0] == "tcp6" else "127.0.0.1")
            return host, int(parts[1])
    if not config.manhole.listen:
        raise _Refused(f"{config.path.path}: [manhole] listen is not set: the gateway has no console")
    raise _Refused("[manhole] listen has no tcp endpoint: give --connect HOST:PORT")


def consoleCommand(
    config: GatewayConfig,
    knownHosts: str,
    script: bool,
    identity: str | None = None,
    connect: str | None = None,
    ssh: str = "ssh",
) -> list[str]:
    """
    The C{ssh} command line that reaches the manhole of the gateway
    C{config} describes.

    @param knownHosts: The C{known_hosts} file that will hold the
        manhole's host key (L{manholeKnownHosts}) under
        L{MANHOLE_HOST_ALIAS}.
    @param script: Whether a script is sent on the input (no terminal,
        no prompt), else the interactive console (a terminal).
    @raise _Refused: If the manhole cannot be reached that way.
    """
    host, port = _manholeTarget(config, connect)
    command = [
        ssh,
        "-p",
        str(port),
        "-l",
        config.manhole.user,
        "-o",
        f"UserKnownHostsFile={knownHosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"HostKeyAlias={MANHOLE_HOST_ALIAS}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PreferredAuthentications=publickey",
    ]
    if identity is not None:
        command += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    command += ["-T", "-o", "BatchMode=yes"] if script else ["-t"]
    command.append(host)
    return command


def manholeKnownHosts(config: GatewayConfig) -> str:
    """
    @return: A C{known_hosts} line for the manhole's host key (the C{.pub}
        the gateway keeps beside it in the data folder).
    @raise _Refused: If there is none yet (the gateway never ran with a
        console).
    """
    from imgateway.manhole.config import HOST_KEY_FILE

    public = config.dataDir.child(HOST_KEY_FILE + ".pub")
    try:
        key = public.getContent().decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise _Refused(
            f"cannot read the manhole's host key {public.path} ({getattr(e, 'strerror', e)}):"
            " start the gateway with [manhole] listen set first"
        ) from None
    return f"{MANHOLE_HOST_ALIAS} {key}\n"


def _console(args: argparse.Namespace) -> NoReturn:
    """
    Run C{imgateway-admin console}: ssh to the manhole, and exit with
    ssh's status (the script's, in script mode).
    """
    import subprocess
    import tempfile

    from twisted.internet import reactor

    try:
        config = loadConfig(findConfig(args.config), cast(IReactorCore, reactor), adapterConfigParsers())
        knownHostsLine = manholeKnownHosts(config)
        source: bytes | None = None
        if args.script is not None:
            try:
                if args.script == "-":
                    source = sys.stdin.buffer.read()
                else:
                    with open(args.script, "rb") as f:
                        source = f.read()
            except OSError as e:
                raise _Refused(f"cannot read {args.script}: {e.strerror}") from None
        with tempfile.TemporaryDirectory(prefix="imgateway-console-") as folder:
            knownHosts = os.path.join(folder, "known_hosts")
            with open(knownHosts, "w", encoding="ascii") as f:
                f.write(knownHostsLine)
            command = consoleCommand(config, knownHosts, source is not None, args.identity, args.connect, args.ssh)
            try:
                done = subprocess.run(command, input=source, stdin=None if source is not None else sys.stdin)
            except OSError as e:
                raise _Refused(f"cannot run {args.ssh}: {e.strerror}") from None
    except (ImgatewayError, _Refused) as e:
        _fail(str(e))
    if done.returncode == 255:
        print(
            f"{_PROG}: ssh could not log in to the manhole (exit status 255): is the gateway running, and is your"
            f" key (--identity) in [manhole] authorized_keys for the user {config.manhole.user}?",
            file=sys.stderr,
        )
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
