"""
Tests for L{imgateway.manhole.ssh}: the host key kept in the data folder,
public-key authentication only, the login limits, and the script session's
size limit. (A real OpenSSH client logs in in L{tests.e2e.test_manhole}.)
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from imgateway.core.errors import ConfigError
from imgateway.manhole.config import HOST_KEY_FILE, ManholeConfig
from imgateway.manhole.ssh import TOO_LONG_STATUS, _AuthorizedKeysFile, _ScriptProtocol, loadHostKey, makeManholeFactory


def _key() -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate())


class HostKeyTests(SynchronousTestCase):
    """
    L{loadHostKey}: made once, kept private, checked.
    """

    def setUp(self) -> None:
        self.dataDir = FilePath(os.path.abspath(self.mktemp()))
        self.dataDir.makedirs()

    def test_madeOnFirstStart(self) -> None:
        """
        The first start makes an Ed25519 key, mode 0600, and its public half
        beside it; later starts load the same key.
        """
        key = loadHostKey(self.dataDir)
        path = self.dataDir.child(HOST_KEY_FILE)
        self.assertEqual((key.type(), os.stat(path.path).st_mode & 0o777), ("Ed25519", 0o600))
        self.assertEqual(self.dataDir.child(HOST_KEY_FILE + ".pub").getContent(), key.public().toString("OPENSSH") + b"\n")
        self.assertEqual(loadHostKey(self.dataDir), key)

    def test_publicHalfRewritten(self) -> None:
        """
        A missing C{.pub} is written again from the private key.
        """
        key = loadHostKey(self.dataDir)
        self.dataDir.child(HOST_KEY_FILE + ".pub").remove()
        loadHostKey(self.dataDir)
        self.assertEqual(self.dataDir.child(HOST_KEY_FILE + ".pub").getContent(), key.public().toString("OPENSSH") + b"\n")

    def test_readableByOthers(self) -> None:
        """
        A host key others may read is refused, with the fix.
        """
        loadHostKey(self.dataDir)
        path = self.dataDir.child(HOST_KEY_FILE)
        os.chmod(path.path, 0o640)
        error = self.assertRaises(ConfigError, loadHostKey, self.dataDir)
        self.assertEqual(str(error), f"{path.path}: the manhole's host key may be read by others (mode 640): chmod 600 it")

    def test_notAKey(self) -> None:
        """
        A host key file that holds no private key is refused.
        """
        path = self.dataDir.child(HOST_KEY_FILE)
        path.setContent(b"garbage\n")
        os.chmod(path.path, 0o600)
        self.assertIn("not an SSH private key", str(self.assertRaises(ConfigError, loadHostKey, self.dataDir)))


class AuthenticationTests(SynchronousTestCase):
    """
    The factory's portal: public keys of C{authorized_keys} for the one
    user, read again at each login; nothing else.
    """

    def setUp(self) -> None:
        folder = FilePath(os.path.abspath(self.mktemp()))
        folder.makedirs()
        self.keysFile = folder.child("authorized_keys")
        self.operator = _key()
        self.keysFile.setContent(self.operator.public().toString("OPENSSH") + b" ops@example\n")
        self.config = ManholeConfig(
            listen=("tcp:0",), authorizedKeys=self.keysFile.path, loginTimeout=12.0, maxAuthAttempts=2
        )
        self.clock = Clock()
        self.factory = makeManholeFactory(self.config, _key(), dict, self.clock)

    def login(self, key: Key, user: bytes = b"admin") -> Any:
        """
        Log in as C{user} with a signature by C{key}.
        """
        signed = b"session and request data"
        credentials = SSHPrivateKey(user, b"ssh-ed25519", key.public().blob(), signed, key.sign(signed))
        return self.factory.portal.login(credentials, None, *self._interfaces())

    def _interfaces(self) -> list[Any]:
        from twisted.conch.interfaces import IConchUser

        return [IConchUser]

    def test_publicKeysOnly(self) -> None:
        """
        The portal checks SSH public keys only: no password is asked for.
        """
        self.assertEqual(self.factory.portal.listCredentialsInterfaces(), [ISSHPrivateKey])

    def test_authorizedKey(self) -> None:
        """
        A key of C{authorized_keys} logs the configured user in; another
        key, or another user, is refused.
        """
        self.successResultOf(self.login(self.operator))
        self.failureResultOf(self.login(_key()), UnauthorizedLogin)
        self.failureResultOf(self.login(self.operator, b"root"), UnauthorizedLogin)

    def test_keysReadAgain(self) -> None:
        """
        A key added to C{authorized_keys} is accepted at the next login,
        without a restart; a removed one is refused.
        """
        other = _key()
        self.failureResultOf(self.login(other), UnauthorizedLogin)
        self.keysFile.setContent(other.public().toString("OPENSSH") + b"\n")
        self.successResultOf(self.login(other))
        self.failureResultOf(self.login(self.operator), UnauthorizedLogin)

    def test_keysFileGone(self) -> None:
        """
        When C{authorized_keys} cannot be read, every login is refused and
        the problem logged.
        """
        self.keysFile.remove()
        with capturedLogs() as events:
            self.failureResultOf(self.login(self.operator), UnauthorizedLogin)
        self.assertIn("Manhole: cannot read", [e.get("log_format", "") for e in events][0])
        self.assertEqual(_AuthorizedKeysFile(self.keysFile.path, "admin").getAuthorizedKeys(b"admin"), [])

    def test_loginLimits(self) -> None:
        """
        The user-authentication service times logins out after
        C{login_timeout} seconds on the given clock, and disconnects after
        C{max_auth_attempts} refused attempts.
        """
        auth: Any = self.factory.services[b"ssh-userauth"]
        self.assertEqual((auth.loginTimeout, auth.attemptsBeforeDisconnect, auth.clock), (12.0, 2, self.clock))

    def test_hostKey(self) -> None:
        """
        Each factory has its own host keys (not C{ConchFactory}'s class
        attributes).
        """
        from twisted.conch.manhole_ssh import ConchFactory

        self.assertEqual(list(self.factory.privateKeys), [b"ssh-ed25519"])
        self.assertEqual(ConchFactory.privateKeys, {})


class ScriptSessionTests(SynchronousTestCase):
    """
    The session without a terminal: the script on its input, at most
    C{max_script_bytes}.
    """

    def start(self, maxBytes: int) -> tuple[_ScriptProtocol, StringTransport, list[int], list[bytes]]:
        ended: list[int] = []
        errors: list[bytes] = []
        script = _ScriptProtocol({}, maxBytes, ended.append)
        script.errors = errors.append
        transport = StringTransport()
        script.makeConnection(transport)
        return script, transport, ended, errors

    def test_runsAtEnd(self) -> None:
        """
        The script runs once its input ends, however it was split; its
        output is written and the session ends with its status.
        """
        script, transport, ended, _ = self.start(100)
        script.dataReceived(b"print('a'")
        script.dataReceived(b" * 3)\n")
        self.assertEqual(ended, [])
        script.inputEnded()
        self.assertEqual((transport.value(), ended), (b"aaa\n", [0]))

    def test_sizeLimit(self) -> None:
        """
        A script of C{max_script_bytes} runs; one byte more is refused with
        status 2, and is not run.
        """
        source = b"print('x')#"
        script, transport, ended, errors = self.start(len(source))
        script.dataReceived(source)
        script.inputEnded()
        self.assertEqual((transport.value(), ended), (b"x\n", [0]))

        script, transport, ended, errors = self.start(len(source) - 1)
        script.dataReceived(source[:5])
        script.dataReceived(source[5:])
        script.inputEnded()
        self.assertEqual((transport.value(), ended), (b"", [TOO_LONG_STATUS]))
        self.assertEqual(errors, [f"script longer than {len(source) - 1} bytes ([manhole] max_script_bytes)\n".encode()])


class _Handler:
    def __init__(self) -> None:
        self.output: list[str] = []

    def addOutput(self, data: str, isAsync: bool | None = None) -> None:
        self.output.append(data)


class ConsoleInterpreterTests(SynchronousTestCase):
    """
    The interactive console's interpreter.
    """

    def test_failedDeferredShown(self) -> None:
        """
        A L{Deferred} the console shows that then fails is shown failed,
        and handled: it is not logged later as an unhandled error.
        """
        from twisted.internet.defer import Deferred

        from imgateway.manhole.ssh import _ConsoleInterpreter

        handler = _Handler()
        interpreter = _ConsoleInterpreter(handler, {})
        d: Deferred[None] = Deferred()
        interpreter.displayhook(d)
        d.errback(ValueError("dave@corp.example is offline"))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(handler.output, ["<Deferred #0>", "Deferred #0 failed: 'dave@corp.example is offline'"])

    def test_firedDeferredShown(self) -> None:
        """
        A L{Deferred} that had fired already shows its result; one that had
        failed shows why, and is handled.
        """
        from twisted.internet.defer import fail, succeed

        from imgateway.manhole.ssh import _ConsoleInterpreter

        handler = _Handler()
        interpreter = _ConsoleInterpreter(handler, {})
        interpreter.displayhook(succeed("200 delivered"))
        failed = fail(ValueError("bob@corp.example is offline"))
        interpreter.displayhook(failed)
        self.assertIsNone(self.successResultOf(failed))
        self.assertEqual(
            handler.output, ["<Deferred called back: '200 delivered'>", "<Deferred failed: 'bob@corp.example is offline'>"]
        )
