# -*- test-case-name: tests.test_manhole_ssh,tests.e2e.test_manhole -*-
"""
The SSH manhole: C{[manhole] listen} endpoints serving a Python console
into the running gateway (L{twisted.conch.manhole}), to the one user
C{[manhole] user} holding a key of C{[manhole] authorized_keys}; no
password is ever accepted.

A session with a terminal (C{ssh -t}) gets the interactive console, with
tab completion; one without (C{ssh host < script.py}) sends a script on
its input, which runs once the input ends (L{imgateway.manhole.script}):
its output comes back, then its exit status.

Importing this module installs the global reactor (through
L{twisted.conch.manhole_ssh}): only the gateway's C{makeService} does.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import IService, MultiService
from twisted.conch import manhole_ssh
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.ssh import connection, userauth
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key
from twisted.conch.ssh.session import SSHSessionProcessProtocol, wrapProcessProtocol, wrapProtocol
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imgateway.core.errors import ConfigError
from imgateway.manhole.config import HOST_KEY_FILE, ManholeConfig, readAuthorizedKeys
from imgateway.manhole.namespace import completions
from imgateway.manhole.script import runScript

with warnings.catch_warnings():
    # Python 3.11 deprecates spwd, which conch's checkers import (for
    # passwords, never used here).
    warnings.filterwarnings("ignore", "'spwd' is deprecated", DeprecationWarning)
    from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker

__all__ = ["ConsoleManhole", "loadHostKey", "makeManholeFactory", "makeManholeService"]

log = Logger()

#: Exit status of a script refused for its size (C{max_script_bytes}).
TOO_LONG_STATUS = 2


def loadHostKey(dataDir: FilePath[str]) -> Key:
    """
    The manhole's SSH host key: L{HOST_KEY_FILE} in the data folder, made
    (Ed25519, mode 0600) when there is none; its public half is kept beside
    it in C{.pub} (for C{imgateway-admin console}'s C{known_hosts}).

    @raise ConfigError: If the key file is readable by others than its
        owner, or is no private key.
    """
    path = dataDir.child(HOST_KEY_FILE)
    if not path.exists():
        made = Key(ed25519.Ed25519PrivateKey.generate())
        fd = os.open(path.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(made.toString("OPENSSH"))
        log.info(
            "Made the manhole's SSH host key {path} ({fingerprint})",
            path=path.path,
            fingerprint=made.fingerprint(FingerprintFormats.SHA256_BASE64),
        )
    mode = os.stat(path.path).st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path.path}: the manhole's host key may be read by others (mode {mode:o}): chmod 600 it")
    try:
        key: Key = Key.fromFile(path.path)
    except (BadKeyError, ValueError) as e:
        raise ConfigError(f"{path.path}: not an SSH private key: {e}") from None
    if key.isPublic():
        raise ConfigError(f"{path.path}: not an SSH private key")
    public = dataDir.child(HOST_KEY_FILE + ".pub")
    line = key.public().toString("OPENSSH") + b"\n"
    if not public.exists() or public.getContent() != line:
        fd = os.open(public.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(line)
    return key


@implementer(IAuthorizedKeysDB)
class _AuthorizedKeysFile:
    """
    The keys of C{[manhole] authorized_keys}, read again at every login
    (keys added or removed take effect at once), for the one user name.
    """

    def __init__(self, path: str, user: str) -> None:
        self._path = path
        self._user = user.encode("utf-8")

    def getAuthorizedKeys(self, avatarId: bytes) -> list[Key]:
        if avatarId != self._user:
            return []
        try:
            return readAuthorizedKeys(self._path)
        except OSError as e:
            log.warn("Manhole: cannot read {path}: {error}", path=self._path, error=e.strerror)
            return []


class _ConsoleInterpreter(ManholeInterpreter):
    """
    The console's interpreter: a L{Deferred} shown failed (C{Deferred #1
    failed: ...}, or C{<Deferred failed: ...>} when it had failed already)
    is handled, not left to be logged as an unhandled error when it is
    collected; one that had fired already shows its result.
    """

    def displayhook(self, obj: object) -> None:
        if isinstance(obj, Deferred) and obj.called and not isinstance(getattr(obj, "result", None), Deferred):
            self.locals["_"] = obj
            result = obj.result
            if isinstance(result, Failure):
                obj.addErrback(lambda f: None)
                self.write(f"<Deferred failed: {result.getErrorMessage()!r}>")
            else:
                self.write(f"<Deferred called back: {result!r}>")
            return
        super().displayhook(obj)

    def _ebDisplayDeferred(self, failure: Failure, k: int, obj: Any) -> None:
        super()._ebDisplayDeferred(failure, k, obj)


class ConsoleManhole(ColoredManhole):
    """
    The interactive console: L{ColoredManhole}, whose TAB completes the name
    before the cursor (L{completions}), and whose failed L{Deferred}s are
    shown only (L{_ConsoleInterpreter}).
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = _ConsoleInterpreter(self, self.namespace)

    def handle_TAB(self) -> None:
        before = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", "replace")
        word = re.search(r"[\w.]*$", before)
        text = word.group(0) if word is not None else ""
        if not text:
            super().handle_TAB()
            return
        found = completions(text, self.interpreter.locals)
        if not found:
            self.terminal.write(b"\a")
            return
        common = os.path.commonprefix(found)
        if len(common) > len(text):
            rest = common[len(text) :].encode("utf-8")
            for i in range(len(rest)):
                self.characterReceived(rest[i : i + 1], i < len(rest) - 1)
            return
        if len(found) > 1:
            self.terminal.nextLine()
            self.terminal.write("  ".join(found).encode("utf-8"))
            self.terminal.nextLine()
            self.drawInputLine()
            back = len(self.lineBuffer) - self.lineBufferIndex
            if back:
                self.terminal.cursorBackward(back)


class _ScriptProtocol(Protocol):
    """
    A session without a terminal: the script comes on the input; once it
    ends, it runs, and the session ends with its exit status.
    """

    def __init__(self, namespace: dict[str, object], maxBytes: int, end: Callable[[int], None]) -> None:
        self._namespace = namespace
        self._maxBytes = maxBytes
        self._end = end
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self.errors: Callable[[bytes], None] = lambda data: None

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > self._maxBytes:
            self._done = True
            self._chunks = []
            self.errors(f"script longer than {self._maxBytes} bytes ([manhole] max_script_bytes)\n".encode())
            self._end(TOO_LONG_STATUS)
            return
        self._chunks.append(data)

    def inputEnded(self) -> None:
        """
        The input ended: run the script.
        """
        if self._done:
            return
        self._done = True
        source = b"".join(self._chunks)
        self._chunks = []
        assert self.transport is not None
        write = self.transport.write
        log.info("Manhole: running a script of {size} bytes", size=len(source))
        runScript(
            source,
            self._namespace,
            lambda text: write(text.encode("utf-8")),
            lambda text: self.errors(text.encode("utf-8")),
        ).addCallback(self._end)


class _ConsoleSession(manhole_ssh.TerminalSession):
    """
    An SSH session: the interactive console with a terminal, a script
    without (L{_ScriptProtocol}).
    """

    makeNamespace: Callable[[], dict[str, object]]
    maxScriptBytes: int

    def __init__(self, original: Any) -> None:
        super().__init__(original)
        self._terminal = False
        self._chained: Any = None
        self._script: _ScriptProtocol | None = None

    def getPty(self, term: bytes, windowSize: Any, attrs: Any) -> None:
        super().getPty(term, windowSize, attrs)
        self._terminal = True

    def openShell(self, proto: SSHSessionProcessProtocol) -> None:
        if self._terminal:
            namespace = self.makeNamespace()
            self._chained = insults.ServerProtocol(ConsoleManhole, namespace)
            self.transportFactory(
                proto, self._chained, IConchUser(self.original), self.width, self.height
            )
            return
        self._startScript(proto)

    def execCommand(self, proto: SSHSessionProcessProtocol, command: bytes) -> None:
        # ssh host 'print(gateway.online())': the command is the script.
        script = self._startScript(proto)
        script.dataReceived(command)
        script.inputEnded()

    def _startScript(self, proto: SSHSessionProcessProtocol) -> _ScriptProtocol:
        def end(status: int) -> None:
            reason = ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status)
            proto.processEnded(Failure(reason))

        script = self._script = _ScriptProtocol(self.makeNamespace(), self.maxScriptBytes, end)
        script.errors = proto.errReceived
        script.makeConnection(wrapProcessProtocol(proto))
        proto.makeConnection(wrapProtocol(script))
        return script

    def windowChanged(self, newWindowSize: Any) -> None:
        if self._chained is not None and self._chained.terminalProtocol is not None:
            height, width = newWindowSize[:2]
            self._chained.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self._script is not None:
            self._script.inputEnded()

    def closed(self) -> None:
        pass


def makeManholeFactory(
    config: ManholeConfig,
    hostKey: Key,
    makeNamespace: Callable[[], dict[str, object]],
    clock: IReactorTime,
) -> manhole_ssh.ConchFactory:
    """
    The SSH factory of the manhole: public-key authentication of
    C{config.user} against C{config.authorizedKeys}, within
    C{config.loginTimeout} seconds and C{config.maxAuthAttempts} refused
    attempts.

    @param makeNamespace: Makes the namespace of each session.
    """
    assert config.authorizedKeys is not None
    realm: Any = manhole_ssh.TerminalRealm()
    session: Any = type(
        "_Session",
        (_ConsoleSession,),
        {"makeNamespace": staticmethod(makeNamespace), "maxScriptBytes": config.maxScriptBytes},
    )
    realm.sessionFactory = session
    checker = SSHPublicKeyChecker(_AuthorizedKeysFile(config.authorizedKeys, config.user))
    factory = manhole_ssh.ConchFactory(Portal(realm, [checker]))
    # Fresh dicts: ConchFactory's are class attributes.
    name = hostKey.sshType()
    keys: Any = factory
    keys.publicKeys = {name: hostKey.public()}
    keys.privateKeys = {name: hostKey}
    auth: Any = type(
        "_UserAuth",
        (userauth.SSHUserAuthServer,),
        {
            "loginTimeout": config.loginTimeout,
            "attemptsBeforeDisconnect": config.maxAuthAttempts,
            "clock": clock,
        },
    )
    factory.services = {b"ssh-userauth": auth, b"ssh-connection": connection.SSHConnection}
    return factory


def makeManholeService(
    config: ManholeConfig,
    dataDir: FilePath[str],
    makeNamespace: Callable[[], dict[str, object]],
    reactor: Any,
) -> IService:
    """
    The manhole's listeners (C{config.listen}).

    @raise ConfigError: If the host key is unusable.
    """
    from imgateway.adapters.base import ListenerService

    factory = makeManholeFactory(config, loadHostKey(dataDir), makeNamespace, reactor)
    top = MultiService()
    for description in config.listen:
        ListenerService(reactor, description, factory, "Manhole (SSH)").setServiceParent(top)
    return top
