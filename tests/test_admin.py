# -*- test-case-name: tests.test_admin -*-
"""
Unit tests for L{imgateway.admin.cli}; C{tests.e2e.test_admin} runs the real
command against a configuration and data folder.
"""

from __future__ import annotations

import datetime
import io
import os
import sqlite3
import stat
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway import __version__
from imgateway.admin import certs, cli
from imgateway.admin.cli import main
from imgateway.admin.move import MoveRefused, MoveSummary, moveAccount
from imgateway.config import AuthConfig, GatewayConfig, HomeConfig, ServerConfig
from imgateway.core.address import Address
from imgateway.core.errors import NoSuchAccount, PersistenceFailed
from imgateway.core.presence import PresenceState
from imgateway.core.records import AccessList, AccountRecord, AuthorisationState, ContactRecord, MoveRecord, PresenceRule
from imgateway.directory.sqlite import MIGRATIONS as DIRECTORY_MIGRATIONS, SQLiteDirectory
from imgateway.interfaces import IHomeStore
from imgateway.net.certificates import keyMatches, loadTLSFiles
from imgateway.sqlite import Durability
from imgateway.testing import MemoryDirectory, MemoryHomeStore


class CommandLineTests(SynchronousTestCase):
    """
    L{imgateway.admin.cli.main}'s options that need no configuration.
    """

    def test_version(self) -> None:
        """
        C{--version} prints the program's name and version and exits with
        status 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, main, ["--version"])
        self.assertEqual((e.code, out.getvalue()), (0, f"imgateway-admin {__version__}\n"))


class DurabilityTests(SynchronousTestCase):
    """
    C{imgateway-admin} writes with the configured C{[gateway] durability}.
    """

    def test_configured(self) -> None:
        """
        The directory is opened with the configuration's durability, so an
        account added with C{durability = "power"} survives a power loss
        too.
        """
        opened: list[dict[str, Any]] = []

        def fakeOpen(reactor: object, path: object, **kwargs: Any) -> Deferred[MemoryDirectory]:
            opened.append(kwargs)
            return succeed(MemoryDirectory())

        self.patch(SQLiteDirectory, "open", fakeOpen)
        folder = FilePath(self.mktemp())
        config = GatewayConfig(
            path=folder.child("imgateway.toml"),
            domain="corp.example",
            dataDir=folder.child("data"),
            homeServerName="hs1",
            home=HomeConfig(),
            auth=AuthConfig(),
            adapters={},
            durability=Durability.POWER,
        )
        done: list[object] = []

        async def action(reactor: object, directory: Any) -> None:
            done.append(directory)

        self.successResultOf(Deferred.fromCoroutine(cli._run(object(), config, action)))  # type: ignore[arg-type]
        self.assertEqual([o.get("durability") for o in opened], [Durability.POWER])
        self.assertEqual(len(done), 1)


def _config(servers: dict[str, frozenset[str]] | None = None, homeServerName: str = "hs1") -> GatewayConfig:
    """
    A configuration for C{corp.example} with these C{[servers]} (name to
    roles), and this process's name.
    """
    folder = FilePath("/nonexistent/imgateway")
    return GatewayConfig(
        path=folder.child("imgateway.toml"),
        domain="corp.example",
        dataDir=folder.child("data"),
        homeServerName=homeServerName,
        home=HomeConfig(),
        auth=AuthConfig(scramIterations=4096),
        adapters={},
        servers={name: ServerConfig(name, roles) for name, roles in (servers or {}).items()},
    )


#: A router and three home servers.
SERVERS = {
    "router": frozenset({"router"}),
    "hs1": frozenset({"home"}),
    "hs2": frozenset({"home"}),
    "hs3": frozenset({"home", "router"}),
}

ALICE = Address("alice", "corp.example")
BOB = Address("bob", "corp.example")
CAROL = Address("carol", "corp.example")
DAVE = Address("dave", "xmpp.example")
ERIN = Address("erin", "corp.example")
FRANK = Address("frank", "corp.example")

_A, _P, _R = AuthorisationState.AUTHORISED, AuthorisationState.PENDING, AuthorisationState.REFUSED


def _account(address: Address, home: str, enabled: bool = True) -> AccountRecord:
    return AccountRecord(address, home, "", enabled, "{}")


def _run(
    testCase: SynchronousTestCase, config: GatewayConfig, directory: MemoryDirectory, *argv: str, wait: float = 0.0
) -> str:
    """
    Prepare and run C{imgateway-admin user ARGV...} against C{directory},
    with a L{Clock} for reactor.

    @param wait: Seconds the command may wait on the clock.
    @return: What it printed.
    @raise cli._Refused: As the command does.
    """
    out = io.StringIO()
    testCase.patch(sys, "stdout", out)
    action = cli._action(cli._parser().parse_args(["user", *argv]), config)
    clock = Clock()
    d: Deferred[None] = Deferred.fromCoroutine(action(clock, directory))  # type: ignore[arg-type]
    if wait:
        clock.advance(wait)
    if not d.called:
        raise AssertionError("the command waited")
    failures: list[Failure] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    return out.getvalue()


class HomeOptionTests(SynchronousTestCase):
    """
    C{user add --home NAME} homes the account on one of the domain's home
    servers, by default this process's own.
    """

    def add(self, config: GatewayConfig, *argv: str) -> tuple[MemoryDirectory, str]:
        """
        Run C{user add ARGV... --password-stdin}, with a password on
        standard input.
        """
        directory = MemoryDirectory()
        self.patch(sys, "stdin", io.StringIO("secret\n"))
        out = _run(self, config, directory, "add", *argv, "--password-stdin")
        return directory, out

    def test_home(self) -> None:
        """
        C{--home hs2} records hs2 as the account's home server, and says so.
        """
        directory, out = self.add(_config(SERVERS), "alice", "--home", "hs2")
        self.assertEqual(directory.accounts[ALICE].homeServer, "hs2")
        self.assertEqual(out, "added alice@corp.example (home server hs2)\n")

    def test_routerAndHome(self) -> None:
        """
        A server whose roles include C{home} besides C{router} is a home.
        """
        directory, _ = self.add(_config(SERVERS), "alice", "--home", "hs3")
        self.assertEqual(directory.accounts[ALICE].homeServer, "hs3")

    def test_default(self) -> None:
        """
        Without C{--home}, the account's home is C{[gateway] home_server}.
        """
        directory, _ = self.add(_config(SERVERS, "hs2"), "alice")
        self.assertEqual(directory.accounts[ALICE].homeServer, "hs2")

    def test_singleHost(self) -> None:
        """
        Without C{[servers]}, the gateway is the domain's only home server:
        C{--home} may name it, and nothing else.
        """
        directory, _ = self.add(_config(), "alice", "--home", "hs1")
        self.assertEqual(directory.accounts[ALICE].homeServer, "hs1")
        e = self.assertRaises(cli._Refused, self.add, _config(), "bob", "--home", "hs2")
        self.assertEqual(
            str(e),
            "hs2 is not a home server of corp.example in /nonexistent/imgateway/imgateway.toml "
            '(home servers: hs1; [servers.NAME] roles must include "home")',
        )

    def test_notAHome(self) -> None:
        """
        A router, or a name that is no server at all, is refused before
        anything is asked or written, naming the home servers.
        """
        for name in ("router", "hs9"):
            e = self.assertRaises(cli._Refused, self.add, _config(SERVERS), "alice", "--home", name)
            self.assertEqual(
                str(e),
                f"{name} is not a home server of corp.example in /nonexistent/imgateway/imgateway.toml "
                '(home servers: hs1, hs2, hs3; [servers.NAME] roles must include "home")',
            )

    def test_routerDefault(self) -> None:
        """
        Run with a router's configuration, C{user add} without C{--home}
        is refused: the router is no home.
        """
        e = self.assertRaises(cli._Refused, self.add, _config(SERVERS, "router"), "alice")
        self.assertIn("router is not a home server of corp.example", str(e))


class ListTests(SynchronousTestCase):
    """
    C{user list} shows each account's home server, and the moves under
    way.
    """

    def test_homes(self) -> None:
        """
        One line per account: address, status, home server, display name;
        an account being moved shows C{moving} and both home servers.
        """
        directory = MemoryDirectory(
            [_account(ALICE, "hs1"), _account(BOB, "hs2", enabled=False), _account(CAROL, "hs3")]
        )
        directory.moves[CAROL] = MoveRecord(CAROL, "hs3", "hs1", True)
        self.assertEqual(
            _run(self, _config(SERVERS), directory, "list").splitlines(),
            [
                "alice@corp.example  enabled   hs1",
                "bob@corp.example    disabled  hs2",
                "carol@corp.example  moving    hs3 -> hs1",
            ],
        )


def _store(*rows: tuple[Address, Address, AuthorisationState]) -> MemoryHomeStore:
    store = MemoryHomeStore()
    for target, watcher, state in rows:
        store.authorisations[(target, watcher)] = state
    return store


class _Failing(Exception):
    """
    A test's stand-in for a crash.
    """


class FlakyDirectory(MemoryDirectory):
    """
    A L{MemoryDirectory} whose move steps named in L{failing} fail (as a
    crash at that point would leave things), changing nothing.
    """

    def __init__(self, accounts: list[AccountRecord]) -> None:
        super().__init__(accounts)
        self.failing: set[str] = set()

    def switchMove(self, address: Address) -> Deferred[None]:
        if "switchMove" in self.failing:
            return fail(_Failing("switchMove"))
        return super().switchMove(address)

    def endMove(self, address: Address) -> Deferred[None]:
        if "endMove" in self.failing:
            return fail(_Failing("endMove"))
        return super().endMove(address)


class MoveTests(SynchronousTestCase):
    """
    L{imgateway.admin.move.moveAccount} moves a user's rows from its home
    server's store to another's, then names the new home in the directory;
    C{user move} runs it.
    """

    def setUp(self) -> None:
        """
        alice, on hs1, has contacts, access lists, rules, and authorisation
        rows with: bob (on hs1, staying), carol (on hs2, where alice goes:
        each store has its copy of their rows, which disagree), dave (of
        another domain), erin (on hs3) and frank (no account). bob and carol
        have contacts and rules of their own.
        """
        self.directory = FlakyDirectory(
            [_account(ALICE, "hs1"), _account(BOB, "hs1"), _account(CAROL, "hs2"), _account(ERIN, "hs3")]
        )
        hs1 = _store(
            (ALICE, BOB, _A),
            (BOB, ALICE, _P),
            (ALICE, CAROL, _A),  # alice authorised carol...
            (CAROL, ALICE, _P),  # ...and still thinks carol has not answered
            (ALICE, DAVE, _R),
            (DAVE, ALICE, _A),
            (ERIN, ALICE, _A),
            (ALICE, FRANK, _P),
            (BOB, CAROL, _A),  # not alice's
        )
        hs1.contacts[ALICE] = {c: ContactRecord(c, c.local.title()) for c in (BOB, CAROL, DAVE, ERIN)}
        hs1.contacts[BOB] = {ALICE: ContactRecord(ALICE, "Al")}
        hs1.access[ALICE] = {"spam.example": AccessList.BLOCK, str(BOB): AccessList.ALLOW}
        hs1.access[BOB] = {str(ALICE): AccessList.ALLOW}
        hs1.rules[ALICE] = [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100"), PresenceRule.refuse(PresenceState.AWAY, "mailto:alice@corp.example")]
        hs1.rules[BOB] = [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550101")]
        hs2 = _store(
            (ALICE, CAROL, _P),  # carol's copy: alice's answer did not reach it
            (CAROL, ALICE, _A),  # carol's decision
            (CAROL, ERIN, _A),
        )
        hs2.contacts[CAROL] = {ALICE: ContactRecord(ALICE, "Alice")}
        self.stores = {"hs1": hs1, "hs2": hs2, "hs3": MemoryHomeStore()}
        self.opened: list[str] = []

    def openStore(self, name: str) -> Deferred[IHomeStore]:
        self.opened.append(name)
        return succeed(self.stores[name])

    def move(self, address: Address = ALICE, target: str = "hs2") -> MoveSummary | None:
        """
        Run the move, which must not wait.
        """
        return self.successResultOf(Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, address, target)))

    def assertMoved(self) -> None:
        """
        alice is on hs2, enabled, with every row it had, but for the
        authorisation rows carol's copy decides; hs1 keeps the rows of
        alice and bob for bob, and nothing else of alice's.
        """
        hs1, hs2 = self.stores["hs1"], self.stores["hs2"]
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs2"))
        self.assertEqual(self.directory.moves, {})
        self.assertEqual(
            hs2.contacts,
            {
                ALICE: {c: ContactRecord(c, c.local.title()) for c in (BOB, CAROL, DAVE, ERIN)},
                CAROL: {ALICE: ContactRecord(ALICE, "Alice")},
            },
        )
        self.assertEqual(hs2.access, {ALICE: {"spam.example": AccessList.BLOCK, str(BOB): AccessList.ALLOW}})
        self.assertEqual(
            hs2.rules,
            {ALICE: [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100"), PresenceRule.refuse(PresenceState.AWAY, "mailto:alice@corp.example")]},
        )
        self.assertEqual(
            hs2.authorisations,
            {
                (ALICE, BOB): _A,
                (BOB, ALICE): _P,
                (ALICE, CAROL): _A,  # alice's decision wins...
                (CAROL, ALICE): _A,  # ...and so does carol's
                (ALICE, DAVE): _R,
                (DAVE, ALICE): _A,
                (ERIN, ALICE): _A,
                (ALICE, FRANK): _P,
                (CAROL, ERIN): _A,
            },
        )
        self.assertEqual(hs1.contacts, {BOB: {ALICE: ContactRecord(ALICE, "Al")}})
        self.assertEqual(hs1.access, {BOB: {str(ALICE): AccessList.ALLOW}})
        self.assertEqual(hs1.rules, {BOB: [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550101")]})
        self.assertEqual(hs1.authorisations, {(ALICE, BOB): _A, (BOB, ALICE): _P, (BOB, CAROL): _A})
        self.assertEqual(self.stores["hs3"].authorisations, {})

    def test_move(self) -> None:
        """
        Contacts, access lists and rules move; authorisation rows are
        copied, stay in the old store for its users (bob), and merge with
        the new store's copy (carol's) where the pair's target decides.
        """
        summary = self.move()
        self.assertEqual(
            summary,
            MoveSummary("hs1", "hs2", resumed=False, contacts=4, authorisations=7, access=2, rules=2, kept=2),
        )
        self.assertMoved()
        self.assertEqual(sorted(set(self.opened)), ["hs1", "hs2"])

    def test_settle(self) -> None:
        """
        With C{settle}, the account stays disabled that many seconds after
        the directory names its new home (as long as servers may remember
        the old one), saying so, then is enabled again.
        """
        clock = Clock()
        told: list[str] = []
        d = Deferred.fromCoroutine(
            moveAccount(self.directory, self.openStore, ALICE, "hs2", 30.0, clock, told.append)
        )
        self.assertNoResult(d)
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs2", enabled=False))
        self.assertEqual(self.stores["hs1"].contacts.get(ALICE), None)
        self.assertEqual(len(told), 1)
        clock.advance(29.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertMoved()

    def test_settleDisabled(self) -> None:
        """
        An account disabled before the move has nothing to wait for.
        """
        self.directory.accounts[ALICE] = _account(ALICE, "hs1", enabled=False)
        d = Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, ALICE, "hs2", 30.0, Clock()))
        self.successResultOf(d)
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs2", enabled=False))

    def test_disabled(self) -> None:
        """
        A disabled account moves, and stays disabled.
        """
        self.directory.accounts[ALICE] = _account(ALICE, "hs1", enabled=False)
        self.move()
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs2", enabled=False))

    def test_disabledDuringMove(self) -> None:
        """
        From before the new store is first touched, the account is disabled
        (no login can start) and the move is recorded in the directory.
        """
        hs2 = self.stores["hs2"]
        hs2.hold = True
        d = Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, ALICE, "hs2"))
        self.assertEqual(len(hs2.held), 1)
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs1", enabled=False))
        self.assertEqual(self.directory.moves, {ALICE: MoveRecord(ALICE, "hs1", "hs2", True)})
        hs2.hold = False
        hs2.release()
        self.successResultOf(d)
        self.assertMoved()

    def test_replacesStale(self) -> None:
        """
        What the new store held of the user's own rows before (left by an
        earlier stay there) is replaced by the old store's.
        """
        hs2 = self.stores["hs2"]
        hs2.contacts[ALICE] = {FRANK: ContactRecord(FRANK, "old")}
        hs2.access[ALICE] = {"old.example": AccessList.BLOCK}
        hs2.rules[ALICE] = [PresenceRule.refuse(PresenceState.ON_THE_PHONE, "tel:+1")]
        hs2.authorisations[(ALICE, ERIN)] = _A
        hs2.authorisations[(DAVE, ALICE)] = _P
        self.move()
        self.assertMoved()

    def test_already(self) -> None:
        """
        A user homed on the target already is left alone: nothing is
        opened or written, and the command says so.
        """
        self.assertIsNone(self.move(ALICE, "hs1"))
        self.assertEqual(self.opened, [])
        self.assertEqual(self.directory.accounts[ALICE], _account(ALICE, "hs1"))
        self.assertEqual(self.directory.moves, {})

    def test_noAccount(self) -> None:
        """
        Moving an account that does not exist fails with L{NoSuchAccount}.
        """
        f = self.failureResultOf(
            Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, FRANK, "hs2")), NoSuchAccount
        )
        self.assertEqual(str(f.value), "no account frank@corp.example")

    def test_otherMoveUnfinished(self) -> None:
        """
        While a move elsewhere is unfinished, another is refused, saying
        how to finish the first.
        """
        self.directory.failing.add("switchMove")
        self.failureResultOf(Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, ALICE, "hs2")), _Failing)
        f = self.failureResultOf(
            Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, ALICE, "hs3")), MoveRefused
        )
        self.assertEqual(
            str(f.value),
            "a move of alice@corp.example from hs1 to hs2 is unfinished: finish it first "
            "(imgateway-admin user move alice@corp.example hs2)",
        )

    def assertRecoverable(self) -> None:
        """
        After a failure: the store of the home server the directory names
        holds all of alice's rows; the account is disabled; the move is
        recorded.
        """
        account = self.directory.accounts[ALICE]
        self.assertFalse(account.enabled)
        self.assertEqual(self.directory.moves, {ALICE: MoveRecord(ALICE, "hs1", "hs2", True)})
        store = self.stores[account.homeServer]
        self.assertEqual(len(store.contacts[ALICE]), 4)
        self.assertEqual(len(store.access[ALICE]), 2)
        self.assertEqual(len(store.rules[ALICE]), 2)
        # hs2 has carol's row too, in place of alice's copy of it.
        self.assertEqual(sum(1 for t, w in store.authorisations if ALICE in (t, w)), 8)

    def test_failureBetweenSteps(self) -> None:
        """
        Whichever step fails (the copy to the new store, the switch of the
        home server, the removal from the old store, the end of the move),
        nothing is lost: the user's rows are whole in the store of the home
        server the directory names, the account stays disabled, and running
        the move again finishes it, exactly as an uninterrupted move.
        """
        for step in ("copy", "switchMove", "remove", "endMove"):
            self.setUp()
            if step == "copy":
                self.stores["hs2"].failWrites = True
            elif step == "remove":
                self.stores["hs1"].failWrites = True
            else:
                self.directory.failing.add(step)
            d = Deferred.fromCoroutine(moveAccount(self.directory, self.openStore, ALICE, "hs2"))
            self.failureResultOf(d, _Failing, PersistenceFailed)
            self.assertRecoverable()
            self.assertEqual(self.directory.accounts[ALICE].homeServer, "hs1" if step in ("copy", "switchMove") else "hs2")
            self.stores["hs1"].failWrites = self.stores["hs2"].failWrites = False
            self.directory.failing.clear()
            summary = self.move()
            assert summary is not None
            self.assertTrue(summary.resumed)
            self.assertMoved()

    def test_command(self) -> None:
        """
        C{user move ADDRESS NAME} checks NAME is a home server, runs the
        move and prints what it did.
        """
        self.patch(cli, "_Stores", lambda reactor, config: _FakeStores(self.stores))
        out = _run(self, _config(SERVERS), self.directory, "move", "alice", "hs2", wait=30)
        self.assertEqual(
            out,
            "alice@corp.example is homed on hs2; it stays disabled for 30 s more (directory_cache_seconds),"
            " until no server remembers hs1 as its home\n"
            "moved alice@corp.example from hs1 to hs2 (contacts: 4, authorisations: 7, access-list entries: 2,"
            " rules: 2; authorisations kept in hs1's store for its users: 2)\n",
        )
        self.assertMoved()
        e = self.assertRaises(cli._Refused, _run, self, _config(SERVERS), self.directory, "move", "alice", "hs2")
        self.assertEqual(str(e), "alice@corp.example is homed on hs2 already")
        e = self.assertRaises(cli._Refused, _run, self, _config(SERVERS), self.directory, "move", "alice", "router")
        self.assertIn("router is not a home server of corp.example", str(e))

    def test_enableDuringMove(self) -> None:
        """
        C{user enable} and C{user disable} are refused while a move of the
        account is unfinished (its end sets the account as it was).
        """
        self.directory.moves[ALICE] = MoveRecord(ALICE, "hs1", "hs2", True)
        for command in ("enable", "disable"):
            e = self.assertRaises(cli._Refused, _run, self, _config(SERVERS), self.directory, command, "alice")
            self.assertEqual(
                str(e),
                "a move of alice@corp.example to hs2 is unfinished; finish it first "
                "(imgateway-admin user move alice@corp.example hs2): it leaves the account enabled as it was",
            )


class _FakeStores:
    """
    Stands in for L{cli._Stores}: hands out memory stores.
    """

    def __init__(self, stores: dict[str, MemoryHomeStore]) -> None:
        self.stores = stores
        self.closed = False

    async def open(self, name: str) -> IHomeStore:
        return self.stores[name]

    async def close(self) -> None:
        self.closed = True


class CertsTests(SynchronousTestCase):
    """
    C{imgateway-admin certs ca DIR} and C{certs server DIR NAME}: a lab
    certificate authority and the link certificates it issues
    (L{imgateway.admin.certs}).
    """

    def setUp(self) -> None:
        self.folder = os.path.join(self.mktemp(), "lab-ca")

    def admin(self, *argv: str) -> tuple[object, str, str]:
        """
        Run C{imgateway-admin ARGV...}.

        @return: Its exit status, standard output and standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, main, list(argv))
        return e.code, out.getvalue(), err.getvalue()

    def certificate(self, name: str) -> x509.Certificate:
        with open(os.path.join(self.folder, name), "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def test_authority(self) -> None:
        """
        C{certs ca DIR} makes the folder (0700), the authority's key (mode
        0600) and its self-signed CA certificate, valid ten years, and
        needs no configuration.
        """
        code, out, err = self.admin("--config", "/nonexistent.toml", "certs", "ca", self.folder, "--name", "Corp lab CA")
        self.assertEqual((code, err), (0, ""))
        keyPath, certificatePath = os.path.join(self.folder, "ca.key"), os.path.join(self.folder, "ca.crt")
        self.assertTrue(out.startswith(f"wrote {keyPath} (mode 0600) and {certificatePath}: CN=Corp lab CA, valid until "), out)
        self.assertEqual(stat.S_IMODE(os.stat(self.folder).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(keyPath).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(certificatePath).st_mode), 0o644)
        ca = self.certificate("ca.crt")
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(ca.issuer, ca.subject)
        lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
        self.assertEqual(lifetime.days, 3651)
        with open(keyPath, "rb") as f:
            self.assertTrue(keyMatches(ca, serialization.load_pem_private_key(f.read(), None)))

    def test_defaultName(self) -> None:
        """
        Two authorities made without C{--name} have different names, so
        that a trust bundle can hold both.
        """
        other = os.path.join(self.mktemp(), "other")
        self.assertEqual(self.admin("certs", "ca", self.folder)[0], 0)
        self.assertEqual(self.admin("certs", "ca", other)[0], 0)
        first = self.certificate("ca.crt").subject.rfc4514_string()
        with open(os.path.join(other, "ca.crt"), "rb") as f:
            second = x509.load_pem_x509_certificate(f.read()).subject.rfc4514_string()
        self.assertTrue(first.startswith("CN=imgateway lab CA "), first)
        self.assertNotEqual(first, second)

    def test_server(self) -> None:
        """
        C{certs server DIR NAME --dns ... --ip ...} writes NAME.key (0600)
        and NAME.crt: a certificate for those names and addresses, for TLS
        servers and clients, that OpenSSL verifies against the authority and
        the gateway's checks accept.
        """
        self.admin("certs", "ca", self.folder)
        code, out, err = self.admin(
            "certs", "server", self.folder, "hs1", "--dns", "hs1.corp.example", "--dns", "HS1.lab", "--ip", "127.0.0.1"
        )
        self.assertEqual((code, err), (0, ""))
        keyPath, certificatePath = os.path.join(self.folder, "hs1.key"), os.path.join(self.folder, "hs1.crt")
        self.assertEqual(
            out.split(", valid until ")[0],
            f"wrote {keyPath} (mode 0600) and {certificatePath}: CN=hs1 (DNS:hs1.corp.example, DNS:hs1.lab, IP:127.0.0.1)",
        )
        self.assertEqual(stat.S_IMODE(os.stat(keyPath).st_mode), 0o600)
        files = loadTLSFiles(certificatePath, keyPath)
        (leaf,) = files.chain
        self.assertEqual(
            list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.assertFalse(leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual((leaf.not_valid_after_utc - leaf.not_valid_before_utc).days, 366)
        store = crypto.X509Store()
        store.add_cert(crypto.X509.from_cryptography(self.certificate("ca.crt")))
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf)).verify_certificate()
        verify_certificate_hostname(leaf, "hs1.corp.example")
        verify_certificate_ip_address(leaf, "127.0.0.1")

    def test_serverDefaultName(self) -> None:
        """
        Without C{--dns} or C{--ip}, the certificate names NAME.
        """
        self.admin("certs", "ca", self.folder)
        self.assertEqual(self.admin("certs", "server", self.folder, "corp.example")[0], 0)
        verify_certificate_hostname(self.certificate("corp.example.crt"), "corp.example")

    def test_noAuthority(self) -> None:
        """
        C{certs server} without an authority in DIR says how to make one,
        and writes nothing.
        """
        code, out, err = self.admin("certs", "server", self.folder, "hs1")
        self.assertEqual(
            (code, out, err),
            (
                1,
                "",
                f"imgateway-admin: cannot read {self.folder}/ca.key: No such file or directory "
                f"(make the authority first: imgateway-admin certs ca {self.folder})\n",
            ),
        )
        self.assertFalse(os.path.exists(self.folder))

    def test_notAnAuthority(self) -> None:
        """
        A server certificate in place of the authority's is refused.
        """
        self.admin("certs", "ca", self.folder)
        self.admin("certs", "server", self.folder, "hs1")
        os.rename(os.path.join(self.folder, "hs1.crt"), os.path.join(self.folder, "ca.crt"))
        code, out, err = self.admin("certs", "server", self.folder, "hs2")
        self.assertEqual(code, 1)
        self.assertIn("not a certificate authority made by imgateway-admin certs ca", err)

    def test_noOverwrite(self) -> None:
        """
        An existing file is never overwritten (a CA's key least of all):
        the command is refused before anything is written.
        """
        self.admin("certs", "ca", self.folder)
        with open(os.path.join(self.folder, "ca.key"), "rb") as f:
            key = f.read()
        code, out, err = self.admin("certs", "ca", self.folder)
        self.assertEqual(
            (code, err),
            (1, f"imgateway-admin: {self.folder}/ca.key exists: remove it first to make a new one\n"),
        )
        with open(os.path.join(self.folder, "ca.key"), "rb") as f:
            self.assertEqual(f.read(), key)
        self.admin("certs", "server", self.folder, "hs1")
        os.remove(os.path.join(self.folder, "hs1.key"))
        code, out, err = self.admin("certs", "server", self.folder, "hs1")
        self.assertEqual(code, 1)
        self.assertIn("hs1.crt exists", err)
        self.assertFalse(os.path.exists(os.path.join(self.folder, "hs1.key")))

    def test_badArguments(self) -> None:
        """
        Bad names, addresses and durations are refused with a message.
        """
        self.admin("certs", "ca", self.folder)
        for argv, message in [
            (["hs1", "--dns", "bad name"], "--dns 'bad name' is not a DNS name"),
            (["hs1", "--dns=-x.corp.example"], "--dns '-x.corp.example' is not a DNS name"),
            (["hs1", "--ip", "300.1.1.1"], "--ip '300.1.1.1' is not an IP address"),
            (["../hs1"], "'../hs1' cannot name a server's files"),
            (["ca"], "'ca' cannot name a server's files"),
            (["hs1", "--days", "0"], "--days must be at least 1, got 0"),
        ]:
            code, out, err = self.admin("certs", "server", self.folder, *argv)
            self.assertEqual(code, 1, argv)
            self.assertTrue(err.startswith(f"imgateway-admin: {message}"), err)
        self.assertEqual(sorted(os.listdir(self.folder)), ["ca.crt", "ca.key"])

    def test_notPastAuthority(self) -> None:
        """
        A server certificate never outlives its authority.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        certs.makeAuthority(self.folder, "short", days=10, now=now)
        certs.makeServer(self.folder, "hs1", days=365, now=now)
        self.assertEqual(
            self.certificate("hs1.crt").not_valid_after_utc, self.certificate("ca.crt").not_valid_after_utc
        )


class DirectorySchemaTests(SynchronousTestCase):
    """
    The directory's migration to schema version 3: the moves under way.
    """

    def test_moves(self) -> None:
        """
        Version 3 adds the C{moves} table to a version 2 directory, leaving
        its accounts alone; a move names an existing account.
        """
        db = sqlite3.connect(":memory:")
        db.execute("PRAGMA foreign_keys = ON")
        for statement in [*DIRECTORY_MIGRATIONS[0], *DIRECTORY_MIGRATIONS[1]]:
            db.execute(statement)
        db.execute(
            "INSERT INTO accounts (address, local, domain, home_server, credentials, created)"
            " VALUES ('alice@corp.example', 'alice', 'corp.example', 'hs1', '{}', 0)"
        )
        self.assertEqual(len(DIRECTORY_MIGRATIONS), 3)
        for statement in DIRECTORY_MIGRATIONS[2]:
            db.execute(statement)
        self.assertEqual(
            db.execute("SELECT address, home_server, enabled FROM accounts").fetchall(),
            [("alice@corp.example", "hs1", 1)],
        )
        db.execute("INSERT INTO moves VALUES ('alice@corp.example', 'hs1', 'hs2', 1, 0)")
        self.assertRaises(
            sqlite3.IntegrityError, db.execute, "INSERT INTO moves VALUES ('bob@corp.example', 'hs1', 'hs2', 1, 0)"
        )
