# -*- test-case-name: tests.e2e.test_admin -*-
"""
End-to-end tests of L{imgateway.admin.cli}: the real C{imgateway-admin} run
as a subprocess against a temporary configuration and data folder.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorCore
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from imgateway.auth.passwords import StoredCredentials, checkPassword
from imgateway.core.address import Address
from imgateway.admin.move import moveAccount
from imgateway.core.presence import PresenceState
from imgateway.core.records import (
    AccessList,
    AccountRecord,
    AuthorisationState,
    ContactRecord,
    PresenceRule,
    PutContact,
    SetAccess,
    SetAuthorisation,
    SetRules,
)
from imgateway.directory.sqlite import SQLiteDirectory
from imgateway.home.store import SQLiteHomeStore
from tests.test_examples import walkThrough

#: The folder holding the C{imgateway} package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALICE = Address("alice", "corp.example")


def theReactor() -> IReactorCore:
    """
    The global reactor, which trial runs during L{TestCase} tests.
    """
    from twisted.internet import reactor

    return cast(IReactorCore, reactor)


class AdminCommand(TestCase):
    """
    Runs C{imgateway-admin} for a test, with the configuration file
    C{self.config} and, as its current folder, C{self.base}.
    """

    base: FilePath[str]
    config: FilePath[str]

    def admin(
        self, *args: str, stdin: str = "", config: str | None = None, environ: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """
        Run C{imgateway-admin --config <config> *args}.

        @param stdin: What the command reads on standard input.
        @param config: The configuration file; the test's when C{None}, and
            no C{--config} option when C{""}.
        @param environ: Variables to add to the environment.
        @return: Its exit status, standard output and standard error.
        """
        env = dict(os.environ)
        env.pop("IMGATEWAY_CONFIG", None)
        env.update(environ or {})
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        configArgs = [] if config == "" else ["--config", config or self.config.path]
        done = subprocess.run(
            [sys.executable, "-m", "imgateway.admin.cli", *configArgs, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base.path,
            timeout=120,
        )
        return done.returncode, done.stdout, done.stderr

    def assertSucceeds(self, *args: str, stdin: str = "") -> str:
        """
        Run C{imgateway-admin}, which must succeed without a word on
        standard error.

        @return: Its standard output.
        """
        code, out, err = self.admin(*args, stdin=stdin)
        self.assertEqual((code, err), (0, ""), out)
        return out

    def assertRefused(self, *args: str, stdin: str = "", config: str | None = None) -> str:
        """
        Run C{imgateway-admin}, which must fail with status 1, one line on
        standard error and no traceback, and print nothing.

        @return: Its error message (without the program name).
        """
        code, out, err = self.admin(*args, stdin=stdin, config=config)
        self.assertEqual((code, out), (1, ""), err)
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.startswith("imgateway-admin: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        return err[len("imgateway-admin: ") : -1]


class AdminTests(AdminCommand):
    """
    C{imgateway-admin user ...} against a gateway configured for
    C{corp.example}.
    """

    def setUp(self) -> None:
        """
        Write a configuration whose data folder does not exist yet.
        """
        self.base = FilePath(self.mktemp())
        etc = self.base.child("etc")
        etc.makedirs()
        self.config = etc.child("imgateway.toml")
        self.config.setContent(b'[gateway]\ndomain = "Corp.Example"\ndata_dir = "../data"\n')
        self.dataDir = self.base.child("data")
        self.directoryPath = self.dataDir.child("directory.sqlite3")

    async def account(self, address: Address) -> AccountRecord | None:
        """
        Read an account from the directory file, as the gateway would.
        """
        directory = await SQLiteDirectory.open(theReactor(), self.directoryPath)
        try:
            return await directory.getAccount(address)
        finally:
            await directory.close()

    async def test_add(self) -> None:
        """
        C{user add NAME} creates an enabled account in the gateway's domain
        on its home server, with the display name given and credentials
        that verify the password read from standard input.
        """
        out = self.assertSucceeds("user", "add", "alice", "--name", "Alice Liddell", "--password-stdin", stdin="s3cret pass\n")
        self.assertEqual(out, "added alice@corp.example (home server hs1)\n")
        record = await self.account(ALICE)
        assert record is not None
        self.assertEqual(
            (record.address, record.homeServer, record.displayName, record.enabled),
            (ALICE, "hs1", "Alice Liddell", True),
        )
        credentials = StoredCredentials.parse(record.credentials)
        self.assertTrue(checkPassword(credentials, "s3cret pass"))
        self.assertFalse(checkPassword(credentials, "s3cret pass\n"))
        self.assertEqual(sorted(credentials.scram), ["SCRAM-SHA-1", "SCRAM-SHA-256"])

    async def test_addFullAddress(self) -> None:
        """
        A full address in the gateway's domain is accepted, normalised.
        """
        out = self.assertSucceeds("user", "add", "Bob@CORP.example", "--password-stdin", stdin="pw")
        self.assertEqual(out, "added bob@corp.example (home server hs1)\n")
        record = await self.account(Address("bob", "corp.example"))
        assert record is not None
        self.assertEqual(record.displayName, "")
        self.assertTrue(checkPassword(StoredCredentials.parse(record.credentials), "pw"))

    def test_dataDirCreated(self) -> None:
        """
        The data folder is created, readable by its owner only.
        """
        self.assertSucceeds("user", "add", "alice", "--password-stdin", stdin="pw\n")
        self.assertTrue(self.directoryPath.exists())
        self.assertEqual(stat.S_IMODE(os.stat(self.dataDir.path).st_mode) & 0o077, 0)

    def test_addExisting(self) -> None:
        """
        Adding an account that exists fails, saying so.
        """
        self.assertSucceeds("user", "add", "alice", "--password-stdin", stdin="pw\n")
        message = self.assertRefused("user", "add", "alice@corp.example", "--password-stdin", stdin="pw\n")
        self.assertEqual(message, "account alice@corp.example exists")

    def test_addBadAddress(self) -> None:
        """
        Invalid addresses, names outside the account character set, and
        addresses of other domains are refused with a message.
        """
        message = self.assertRefused("user", "add", "alice smith", "--password-stdin", stdin="pw\n")
        self.assertIn("invalid address 'alice smith'", message)
        message = self.assertRefused("user", "add", "émile", "--password-stdin", stdin="pw\n")
        self.assertIn("account names may only use", message)
        message = self.assertRefused("user", "add", "alice@", "--password-stdin", stdin="pw\n")
        self.assertIn("invalid address 'alice@'", message)
        message = self.assertRefused("user", "add", "bob@other.example", "--password-stdin", stdin="pw\n")
        self.assertEqual(message, "bob@other.example is not in this gateway's domain (corp.example)")
        # Refused before the directory was even opened.
        self.assertFalse(self.directoryPath.exists())

    def test_badPassword(self) -> None:
        """
        An empty password, or none at all on standard input, is refused.
        """
        self.assertEqual(
            self.assertRefused("user", "add", "alice", "--password-stdin", stdin="\n"), "the password is empty"
        )
        self.assertEqual(
            self.assertRefused("user", "add", "alice", "--password-stdin", stdin=""),
            "no password on standard input",
        )
        self.assertEqual(self.assertSucceeds("user", "list"), "")

    async def test_passwordPrepared(self) -> None:
        """
        A password is prepared with SASLprep when set: one with a control
        character is refused (with one line, not naming the password); one
        with a decomposed letter and a no-break space then logs in in any
        equivalent form.
        """
        message = self.assertRefused("user", "add", "alice", "--password-stdin", stdin="bell\x07pw\n")
        self.assertEqual(message, "unusable password: the string holds a control character")
        self.assertSucceeds("user", "add", "alice", "--password-stdin", stdin="cafe\u0301\u00a0au lait\n")
        record = await self.account(ALICE)
        assert record is not None
        self.assertTrue(checkPassword(StoredCredentials.parse(record.credentials), "caf\u00e9 au lait"))

    def test_badName(self) -> None:
        """
        A display name with a line break is refused.
        """
        message = self.assertRefused("user", "add", "alice", "--name", "A\nB", "--password-stdin", stdin="pw\n")
        self.assertIn("display names may not", message)

    def test_list(self) -> None:
        """
        C{user list} prints one line per account, in address order: address,
        enabled or disabled, home server and display name, aligned.
        """
        self.assertEqual(self.assertSucceeds("user", "list"), "")
        self.assertSucceeds("user", "add", "bob", "--name", "Bob", "--password-stdin", stdin="pw\n")
        self.assertSucceeds("user", "add", "alice", "--name", "Alice L.", "--password-stdin", stdin="pw\n")
        self.assertSucceeds("user", "add", "c", "--password-stdin", stdin="pw\n")
        self.assertSucceeds("user", "disable", "bob")
        self.assertEqual(
            self.assertSucceeds("user", "list"),
            "alice@corp.example  enabled   hs1  Alice L.\n"
            "bob@corp.example    disabled  hs1  Bob\n"
            "c@corp.example      enabled   hs1\n",
        )

    async def test_passwd(self) -> None:
        """
        C{user passwd} replaces the account's credentials: the new password
        verifies, the old one no longer does, and nothing else changes.
        """
        self.assertSucceeds("user", "add", "alice", "--name", "Alice", "--password-stdin", stdin="old\n")
        out = self.assertSucceeds("user", "passwd", "alice@corp.example", "--password-stdin", stdin="new one\r\n")
        self.assertEqual(out, "changed the password of alice@corp.example\n")
        record = await self.account(ALICE)
        assert record is not None
        credentials = StoredCredentials.parse(record.credentials)
        self.assertTrue(checkPassword(credentials, "new one"))
        self.assertFalse(checkPassword(credentials, "old"))
        self.assertEqual((record.displayName, record.enabled), ("Alice", True))

    def test_passwdMissing(self) -> None:
        """
        C{user passwd} of an unknown account fails, saying so, before
        reading a password.
        """
        self.assertEqual(self.assertRefused("user", "passwd", "nobody"), "no account nobody@corp.example")

    async def test_disableEnable(self) -> None:
        """
        C{user disable} and C{user enable} switch the account's C{enabled}
        flag.
        """
        self.assertSucceeds("user", "add", "alice", "--password-stdin", stdin="pw\n")
        self.assertEqual(self.assertSucceeds("user", "disable", "alice"), "disabled alice@corp.example\n")
        record = await self.account(ALICE)
        assert record is not None
        self.assertFalse(record.enabled)
        self.assertEqual(self.assertSucceeds("user", "enable", "alice"), "enabled alice@corp.example\n")
        record = await self.account(ALICE)
        assert record is not None
        self.assertTrue(record.enabled)

    def test_enableMissing(self) -> None:
        """
        Enabling or disabling an unknown account fails, saying so.
        """
        self.assertEqual(self.assertRefused("user", "enable", "nobody"), "no account nobody@corp.example")
        self.assertEqual(self.assertRefused("user", "disable", "nobody"), "no account nobody@corp.example")

    async def test_whileOpen(self) -> None:
        """
        Accounts can be managed while the gateway has the directory open,
        which sees the changes at once.
        """
        directory = await SQLiteDirectory.open(theReactor(), self.directoryPath)
        self.addCleanup(directory.close)
        self.assertSucceeds("user", "add", "alice", "--password-stdin", stdin="pw\n")
        record = await directory.getAccount(ALICE)
        assert record is not None
        self.assertTrue(record.enabled)
        self.assertSucceeds("user", "disable", "alice")
        record = await directory.getAccount(ALICE)
        assert record is not None
        self.assertFalse(record.enabled)

    def test_missingConfig(self) -> None:
        """
        A configuration file that cannot be read is named in the error.
        """
        missing = self.base.child("nowhere.toml").path
        message = self.assertRefused("user", "list", config=missing)
        self.assertIn(missing, message)
        self.assertIn("cannot read", message)

    def test_configFromEnvironment(self) -> None:
        """
        Without C{--config}, C{$IMGATEWAY_CONFIG} names the configuration,
        whatever the current directory holds (here an C{etc/imgateway.toml}
        for another domain).
        """
        self.base.child("etc").child("imgateway.toml").moveTo(self.base.child("gateway.toml"))
        self.base.child("etc").child("imgateway.toml").setContent(b'[gateway]\ndomain = "elsewhere.example"\n')
        code, out, err = self.admin(
            "user", "add", "alice", "--password-stdin",
            stdin="pw\n", config="", environ={"IMGATEWAY_CONFIG": self.base.child("gateway.toml").path},
        )
        self.assertEqual((code, out, err), (0, "added alice@corp.example (home server hs1)\n", ""))

    def test_defaultConfig(self) -> None:
        """
        With neither, C{/etc/imgateway/imgateway.toml} is read, not a file
        of the current directory; when it does not exist the error says so
        and how to name another.
        """
        if os.path.exists("/etc/imgateway/imgateway.toml"):
            raise SkipTest("this machine has an /etc/imgateway/imgateway.toml")
        code, out, err = self.admin("user", "list", config="")
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn("no configuration file: /etc/imgateway/imgateway.toml does not exist", err)
        self.assertIn("$IMGATEWAY_CONFIG", err)

    def test_badConfig(self) -> None:
        """
        A configuration error is printed as its message.
        """
        self.config.setContent(b'[gateway]\ndomain = "corp.example"\ncolour = "blue"\n')
        message = self.assertRefused("user", "list")
        self.assertEqual(message, f"{self.config.path} [gateway]: colour: unknown key")

    def test_usage(self) -> None:
        """
        A command line that does not parse exits with status 2 and usage.
        """
        code, out, err = self.admin("user")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("usage: imgateway-admin", err)
        code, out, err = self.admin("user", "frobnicate", "alice")
        self.assertEqual(code, 2)


BOB = Address("bob", "corp.example")
CAROL = Address("carol", "corp.example")
DAVE = Address("dave", "xmpp.example")

_AUTHORISED, _PENDING = AuthorisationState.AUTHORISED, AuthorisationState.PENDING


class _Crash(Exception):
    """
    Stands in for a crash of C{imgateway-admin user move} at some step.
    """


class _CrashingDirectory:
    """
    An L{SQLiteDirectory} whose method C{crashAt} fails, changing nothing.
    """

    def __init__(self, directory: SQLiteDirectory, crashAt: str) -> None:
        self._directory = directory
        self._crashAt = crashAt

    def __getattr__(self, name: str) -> Any:
        if name == self._crashAt:
            return lambda *args: fail(_Crash(name))
        return getattr(self._directory, name)


class _CrashingStore:
    """
    An L{SQLiteHomeStore} whose writes fail, changing nothing.
    """

    def __init__(self, store: SQLiteHomeStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "apply":
            return lambda *args: fail(_Crash(name))
        return getattr(self._store, name)


class MoveTests(AdminCommand):
    """
    C{imgateway-admin user move} between the SQLite stores of the home
    servers of C{etc/examples/}, set up as the walk-through of
    docs/operations.md ("Many servers on one machine") does.
    """

    def setUp(self) -> None:
        """
        Copy the examples, run the walk-through's C{imgateway-admin}
        commands (certificates, alice on hs1 and carol on hs2), and add bob
        on hs1.
        """
        self.base = FilePath(self.mktemp())
        shutil.copytree(os.path.join(REPO_ROOT, "etc", "examples"), self.base.path)
        self.dataDir = self.base.child("data")
        self.config = self.base.child("hs1.toml")
        # How long a move keeps the account disabled after the switch.
        self.config.setContent(self.config.getContent() + b"\n[router]\ndirectory_cache_seconds = 0.2\n")
        for argv in walkThrough():
            if "add" in argv:
                self.assertSucceeds(*argv[1:], "--password-stdin", stdin="pw\n")
            else:
                self.assertSucceeds(*argv[1:])
        self.assertSucceeds("user", "add", "bob", "--home", "hs1", "--password-stdin", stdin="pw\n")

    async def store(self, name: str) -> SQLiteHomeStore:
        """
        Open the store of the home server C{name}, as that server would.
        """
        store = await SQLiteHomeStore.open(theReactor(), self.dataDir.child(f"home-{name}.sqlite3").path)
        self.addCleanup(store.close)
        return store

    async def fill(self) -> None:
        """
        Give alice (on hs1) contacts, lists, a rule and authorisations with
        bob (hs1), carol (hs2: both stores have a copy of their pair) and
        dave (another domain); bob and carol have rows of their own.
        """
        hs1, hs2 = await self.store("hs1"), await self.store("hs2")
        await hs1.apply(
            [
                PutContact(ALICE, ContactRecord(BOB, "Bob")),
                PutContact(ALICE, ContactRecord(CAROL, "Carol")),
                PutContact(ALICE, ContactRecord(DAVE, "Dave")),
                PutContact(BOB, ContactRecord(ALICE, "Al")),
                SetAccess(ALICE, "spam.example", AccessList.BLOCK),
                SetRules(ALICE, (PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100"),)),
                SetAuthorisation(ALICE, BOB, _AUTHORISED),
                SetAuthorisation(BOB, ALICE, _AUTHORISED),
                SetAuthorisation(ALICE, CAROL, _AUTHORISED),
                SetAuthorisation(CAROL, ALICE, _PENDING),
                SetAuthorisation(DAVE, ALICE, _AUTHORISED),
            ]
        )
        await hs2.apply(
            [
                PutContact(CAROL, ContactRecord(ALICE, "Alice")),
                SetAuthorisation(ALICE, CAROL, _PENDING),
                SetAuthorisation(CAROL, ALICE, _AUTHORISED),
            ]
        )

    async def assertMoved(self) -> None:
        """
        alice is enabled on hs2, with all its rows there; hs1 keeps bob's
        and the pair of alice and bob for bob.
        """
        self.assertEqual(
            self.assertSucceeds("user", "list"),
            "alice@corp.example  enabled   hs2\n"
            "bob@corp.example    enabled   hs1\n"
            "carol@corp.example  enabled   hs2\n",
        )
        hs1, hs2 = await self.store("hs1"), await self.store("hs2")
        self.assertEqual(
            await hs2.getContacts(ALICE),
            [ContactRecord(BOB, "Bob"), ContactRecord(CAROL, "Carol"), ContactRecord(DAVE, "Dave")],
        )
        self.assertEqual(await hs2.getAccess(ALICE), {"spam.example": AccessList.BLOCK})
        self.assertEqual(await hs2.getRules(ALICE), [PresenceRule.refuse(PresenceState.BUSY, "tel:+15550100")])
        self.assertEqual(
            await hs2.getAuthorisations(ALICE),
            [
                (ALICE, BOB, _AUTHORISED),
                (ALICE, CAROL, _AUTHORISED),
                (BOB, ALICE, _AUTHORISED),
                (CAROL, ALICE, _AUTHORISED),
                (DAVE, ALICE, _AUTHORISED),
            ],
        )
        self.assertEqual(await hs2.getContacts(CAROL), [ContactRecord(ALICE, "Alice")])
        self.assertEqual(
            (await hs1.getContacts(ALICE), await hs1.getAccess(ALICE), await hs1.getRules(ALICE)), ([], {}, [])
        )
        self.assertEqual(await hs1.getAuthorisations(ALICE), [(ALICE, BOB, _AUTHORISED), (BOB, ALICE, _AUTHORISED)])
        self.assertEqual(await hs1.getContacts(BOB), [ContactRecord(ALICE, "Al")])

    async def test_move(self) -> None:
        """
        C{user move alice hs2} moves alice's rows from C{home-hs1.sqlite3}
        to C{home-hs2.sqlite3}, homes alice on hs2, and enables alice again
        once C{directory_cache_seconds} have passed.
        """
        await self.fill()
        out = self.assertSucceeds("user", "move", "alice", "hs2")
        self.assertEqual(
            out,
            "alice@corp.example is homed on hs2; it stays disabled for 0.2 s more (directory_cache_seconds),"
            " until no server remembers hs1 as its home\n"
            "moved alice@corp.example from hs1 to hs2 (contacts: 3, authorisations: 4, access-list entries: 1,"
            " rules: 1; authorisations kept in hs1's store for its users: 2)\n",
        )
        await self.assertMoved()
        self.assertEqual(self.assertRefused("user", "move", "alice", "hs2"), "alice@corp.example is homed on hs2 already")
        self.assertIn("router is not a home server", self.assertRefused("user", "move", "alice", "router"))

    async def test_interrupted(self) -> None:
        """
        A move that stops at any step (here: a step that fails, in a move
        run in this process on the real files) leaves the account disabled,
        shown as moving, with all its rows in the store of the home server
        the directory names; running C{user move} again finishes it.
        """
        await self.fill()
        steps = ["copy", "switchMove", "remove", "endMove"]
        for step in steps:
            if step != steps[0]:
                # Start again from the same data, in a new folder.
                self.setUp()
                await self.fill()
            directory = await SQLiteDirectory.open(theReactor(), self.dataDir.child("directory.sqlite3").path)
            stores: dict[str, Any] = {}

            async def openStore(name: str) -> Any:
                store = await self.store(name)
                crashes = (step, name) in (("copy", "hs2"), ("remove", "hs1"))
                stores[name] = _CrashingStore(store) if crashes else store
                return stores[name]

            try:
                crashing = _CrashingDirectory(directory, step)
                await self.assertFailure(
                    Deferred.fromCoroutine(moveAccount(crashing, openStore, ALICE, "hs2")), _Crash
                )
            finally:
                await directory.close()
            home = "hs1" if step in ("copy", "switchMove") else "hs2"
            self.assertIn("alice@corp.example  moving    hs1 -> hs2\n", self.assertSucceeds("user", "list"))
            record = await self.account(ALICE)
            assert record is not None
            self.assertEqual((record.homeServer, record.enabled), (home, False))
            there = await self.store(home)
            self.assertEqual(len(await there.getContacts(ALICE)), 3, step)
            self.assertIn("unfinished", self.assertRefused("user", "enable", "alice"))
            out = self.assertSucceeds("user", "move", "alice", "hs2")
            self.assertTrue(out.splitlines()[-1].startswith("finished the move of alice@corp.example from hs1 to hs2 ("), out)
            await self.assertMoved()

    async def account(self, address: Address) -> AccountRecord | None:
        """
        Read an account from the directory file, as the gateway would.
        """
        directory = await SQLiteDirectory.open(theReactor(), self.dataDir.child("directory.sqlite3"))
        try:
            return await directory.getAccount(address)
        finally:
            await directory.close()
