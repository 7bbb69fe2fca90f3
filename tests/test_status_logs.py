"""
Unit tests for the gateway's log lines (L{imgateway.status.logs}): the text
and JSON lines written for an event, and how C{twistd imgateway} applies
C{[log] format}.
"""

from __future__ import annotations

import io
import os
import json
import signal
import sys
from typing import Any, cast

from twisted.application.service import Application, MultiService
from twisted.logger import ILogObserver, Logger, LogLevel, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from imgateway.status.logs import _twistdLogFile, classicLine, jsonLine, jsonLogObserver, textLogObserver, withLogFormat


def _twistedLine(event: dict[str, Any]) -> str | None:
    """
    The line Twisted's C{textFileLogObserver} (twistd's) writes for C{event}.
    """
    return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))


class _Peer:
    def __repr__(self) -> str:
        return "IPv4Address(type='TCP', host='127.0.0.1', port=4000)"

    def __str__(self) -> str:
        return "127.0.0.1:4000"

    def port(self) -> int:
        return 4000


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class TextLineTests(SynchronousTestCase):
    """
    L{classicLine} and L{textLogObserver}: twistd's text lines, the same
    text as Twisted's.
    """

    def events(self) -> list[dict[str, Any]]:
        """
        Events of every kind a line can be made of.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        info = {"log_level": LogLevel.info, "log_namespace": "imgateway.home.server", "log_time": 1764948532.25}
        return [
            {**info, "log_format": "Session {session} opened", "session": "hs1-7"},
            {
                **info,
                "log_format": "{address} authenticated from {peer} ({mechanism}) and bound {jid} as session {session}",
                "address": "alice@corp.example",
                "peer": _Peer(),
                "mechanism": "SCRAM-SHA-1",
                "jid": "alice@corp.example/r",
                "session": "hs1-7",
            },
            {**info, "log_format": "{peer!r} {peer!s} {peer!a} {n:>5} {n:,} {x[0]} {x[k]}", "peer": _Peer(), "n": 12345, "x": {0: "a", "k": "b"}},
            {**info, "log_format": "{peer.port()} and {f()}", "peer": _Peer(), "f": lambda: "called"},
            {**info, "log_format": "missing {nothing}"},
            {**info, "log_format": "unprintable {u}", "u": _Unprintable()},
            {**info, "log_format": "{}"},
            {**info, "log_format": b"bytes {n}", "n": 1},
            {**info, "log_format": "two\nlines\nhere"},
            {**info, "log_format": "braces {{literal}} {n}", "n": 1},
            {**info, "log_format": ""},
            {**info, "log_format": None},
            {**info},
            {"log_format": "no level, namespace or time"},
            {**info, "log_format": "system given", "log_system": "-"},
            {**info, "log_format": "system unprintable", "log_system": _Unprintable()},
            {**info, "log_format": "Oops {n}", "n": 1, "log_level": LogLevel.critical, "log_failure": failure},
            {**info, "log_format": "end of a second", "log_time": 1764948532.9999997},
            {**info, "log_format": "before 1970", "log_time": -0.5},
            {**info, "log_format": "at 0", "log_time": 0},
            {**info, "log_format": "legacy {log_text}", "log_text": "x"},
        ]

    def test_sameAsTwisted(self) -> None:
        """
        Every event gets the line Twisted's observer writes (or, as there,
        none).
        """
        for event in self.events():
            self.assertEqual(classicLine(event), _twistedLine(event), event)

    def test_observer(self) -> None:
        """
        L{textLogObserver} writes, in order, the lines Twisted's would: its
        time stamps, made once per second, are those of every event's own
        second, across seconds and out of order.
        """
        events = self.events()
        times = [1764948532.25, 1764948532.75, 1764948533.0, 1764948532.5, 1764948599.999, 1764948533.9989, None]
        for when in times:
            events.append({"log_format": "at {when}", "when": when, "log_time": when, "log_namespace": "n"})
        out = io.StringIO()
        observer = textLogObserver(out)
        for event in events:
            observer(event)
        self.assertEqual(out.getvalue(), "".join(line for line in map(_twistedLine, events) if line))

    def test_logger(self) -> None:
        """
        Lines logged through a L{Logger} are Twisted's.
        """
        out = io.StringIO()
        events: list[dict[str, Any]] = []
        observer = textLogObserver(out)

        @provider(ILogObserver)
        def both(event: Any) -> None:
            events.append(dict(event))
            observer(event)

        log = Logger(observer=cast(ILogObserver, both), namespace="imgateway.test")
        log.info("Session {session} closed ({reason})", session="hs1-7", reason="logout")
        log.warn("Refusing {peer}", peer=_Peer())
        self.assertEqual(out.getvalue(), "".join(_twistedLine(e) or "" for e in events))
        self.assertIn("[imgateway.test#info] Session hs1-7 closed (logout)\n", out.getvalue())


class JSONLineTests(SynchronousTestCase):
    """
    L{jsonLine} and L{jsonLogObserver}.
    """

    def test_event(self) -> None:
        """
        An event is one line of JSON with its fields, its formatted message
        and its level; objects JSON cannot hold are marked unpersistable.
        """
        out = io.StringIO()
        log = Logger(observer=jsonLogObserver(out), namespace="imgateway.test")
        log.warn("Refusing {peer}: {why}", peer=object(), why="too many (max_unauthenticated)")
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["why"], "too many (max_unauthenticated)")
        self.assertEqual(record["peer"], {"unpersistable": True})
        self.assertTrue(record["message"].startswith("Refusing <object object at"), record["message"])
        self.assertEqual(record["log_namespace"], "imgateway.test")
        self.assertTrue(out.getvalue().endswith("\n"))

    def test_failure(self) -> None:
        """
        A failure's traceback is in the line, which stays one line.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        line = jsonLine({"log_format": "Oops", "log_level": LogLevel.critical, "log_failure": failure, "log_time": 0.0})
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual((record["message"], record["level"]), ("Oops", "critical"))


class WithLogFormatTests(SynchronousTestCase):
    """
    L{withLogFormat}: twistd's application gets a JSON observer for
    C{[log] format = "json"}, writing where twistd would.
    """

    def test_noTwistd(self) -> None:
        """
        Without twistd's options, or where twistd would use another
        observer (C{--syslog}): the service as it is.
        """
        service = MultiService()
        self.assertIs(withLogFormat(service, "text", None), service)
        self.assertIs(withLogFormat(service, "json", None), service)
        self.assertIs(withLogFormat(service, "text", {"nodaemon": True, "syslog": True}), service)

    def test_text(self) -> None:
        """
        C{"text"}: the service, added to twistd's application, gives it an
        L{ILogObserver} writing twistd's text lines (L{textLogObserver})
        where twistd would; a log file is rotated on C{SIGUSR1} through the
        reactor's C{callFromThread}, as twistd rotates its own.
        """
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        service = MultiService()
        path = self.mktemp()
        called: list[Any] = []
        wrapped = withLogFormat(service, "text", {"nodaemon": False, "logfile": path}, called.append)
        application = Application("imgateway")
        wrapped.setServiceParent(application)
        observer: Any = application.getComponent(ILogObserver)
        self.assertIs(service.parent, wrapped)
        logFile = observer._outFile
        self.addCleanup(logFile.close)
        self.assertIsInstance(logFile, LogFile)
        event = {"log_format": "Session {s} opened", "s": "hs1-7", "log_time": 1764948532.5, "log_namespace": "n"}
        observer(event)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), _twistedLine(event))
        handler: Any = signal.getsignal(signal.SIGUSR1)
        handler(signal.SIGUSR1, None)
        self.assertEqual(called, [logFile.rotate])

    def test_textStandardOutput(self) -> None:
        """
        C{"text"} with C{-n} and no C{--logfile}: the lines go to standard
        output, and no signal handler is installed.
        """
        before = signal.getsignal(signal.SIGUSR1)
        wrapped = withLogFormat(MultiService(), "text", {"nodaemon": True}, lambda f: None)
        application = Application("imgateway")
        wrapped.setServiceParent(application)
        observer: Any = application.getComponent(ILogObserver)
        self.assertIs(observer._outFile, sys.stdout)
        self.assertEqual(signal.getsignal(signal.SIGUSR1), before)

    def test_jsonLogFileRotated(self) -> None:
        """
        C{"json"} with a log file: the file is rotated on C{SIGUSR1} through
        the reactor's C{callFromThread}, as twistd rotates its own (twistd
        installs no handler of its own when the gateway's observer replaces
        its, and the signal's default action would end the process).
        """
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        path = self.mktemp()
        called: list[Any] = []
        wrapped = withLogFormat(MultiService(), "json", {"nodaemon": False, "logfile": path}, called.append)
        application = Application("imgateway")
        wrapped.setServiceParent(application)
        observer: Any = application.getComponent(ILogObserver)
        logFile = observer._outFile
        self.addCleanup(logFile.close)
        self.assertIsInstance(logFile, LogFile)
        handler: Any = signal.getsignal(signal.SIGUSR1)
        handler(signal.SIGUSR1, None)
        self.assertEqual(called, [logFile.rotate])

    def test_json(self) -> None:
        """
        C{"json"}: the service, added to twistd's application, gives it an
        L{ILogObserver} (which twistd logs through) writing JSON lines; the
        gateway's service runs under it.
        """
        service = MultiService()
        wrapped = withLogFormat(service, "json", {"nodaemon": True, "logfile": ""})
        application = Application("imgateway")
        wrapped.setServiceParent(application)
        observer: Any = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        self.assertIs(service.parent, wrapped)
        self.assertIs(observer._outFile, sys.stdout)

    def test_where(self) -> None:
        """
        Where twistd would log: C{-n} without C{--logfile}, or
        C{--logfile=-}, standard output; a file otherwise; nowhere of ours
        with C{--logger}, C{--syslog} or a daemon asked to log to standard
        output (twistd refuses that itself).
        """
        self.assertIs(_twistdLogFile({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(_twistdLogFile({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIsNone(_twistdLogFile({"nodaemon": False, "logfile": "-"}))
        self.assertIsNone(_twistdLogFile({"nodaemon": True, "logger": "x.y"}))
        self.assertIsNone(_twistdLogFile({"nodaemon": True, "syslog": True}))
        path = self.mktemp()
        logFile: Any = _twistdLogFile({"nodaemon": True, "logfile": path})
        self.addCleanup(logFile.close)
        self.assertEqual(logFile.path, os.path.abspath(path))
