"""
Unit tests for JSON logs (L{imgateway.status.logs}): the line written for
an event, and how C{twistd imgateway} applies C{[log] format}.
"""

from __future__ import annotations

import io
import os
import json
import sys
from typing import Any

from twisted.application.service import Application, MultiService
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgateway.status.logs import _twistdLogFile, jsonLine, jsonLogObserver, withLogFormat


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

    def test_text(self) -> None:
        """
        C{"text"}, or no twistd options: the service as it is.
        """
        service = MultiService()
        self.assertIs(withLogFormat(service, "text", {"nodaemon": True}), service)
        self.assertIs(withLogFormat(service, "json", None), service)

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
