# -*- test-case-name: tests.test_status_logs -*-
"""
Logs as JSON for log collectors (C{[log] format = "json"}): one JSON
object a line, through C{twisted.logger} (L{eventAsJSON}), with the
formatted C{message} and the C{level} beside the event's own fields.

C{twistd imgateway} applies it (L{withLogFormat}): the observer goes where
twistd's own would (C{--logfile}, or standard output with C{-n}), unless
C{--logger} or C{--syslog} is given.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsJSON, formatEvent
from twisted.python.logfile import LogFile

__all__ = ["jsonLine", "jsonLogObserver", "withLogFormat"]


def jsonLine(event: LogEvent) -> str:
    """
    One event as one line of JSON: the event's fields as L{eventAsJSON}
    writes them (objects it cannot write are C{{"unpersistable": true}}),
    plus C{message} (the event formatted, as the text log shows it),
    C{level} (C{"info"}, C{"warn"}...) and, for a failure, C{traceback}.
    """
    record = dict(event)
    record["message"] = formatEvent(event)
    level = event.get("log_level")
    if level is not None:
        record["level"] = level.name
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return eventAsJSON(record) + "\n"


def jsonLogObserver(outFile: IO[Any]) -> ILogObserver:
    """
    @return: An observer writing L{jsonLine}s to C{outFile}.
    """
    return FileLogObserver(outFile, jsonLine)


def _twistdLogFile(serverOptions: Mapping[str, Any]) -> IO[Any] | None:
    """
    Where twistd would log, given its options (as
    C{twisted.scripts._twistd_unix.UnixAppLogger} decides); C{None} when
    another observer is asked for (C{--logger}, C{--syslog}), or for what
    twistd refuses itself (a daemon logging to standard output).
    """
    if serverOptions.get("logger") or serverOptions.get("syslog"):
        return None
    name = serverOptions.get("logfile") or ""
    nodaemon = bool(serverOptions.get("nodaemon"))
    if name == "-" or (nodaemon and not name):
        return sys.stdout if nodaemon else None
    logFile: Any = LogFile.fromFullPath(name or "twistd.log")
    return logFile  # type: ignore[no-any-return]


class _LoggingService(MultiService):
    """
    Holds the gateway's service; as it is added to twistd's application,
    gives the application the log observer (twistd then logs through it,
    L{twisted.application.app.AppLogger.start}).
    """

    def __init__(self, service: IService, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        setComponent = getattr(parent, "setComponent", None)
        if setComponent is not None:
            setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def withLogFormat(service: IService, format: str, serverOptions: Mapping[str, Any] | None) -> IService:
    """
    Apply C{[log] format} to twistd's log.

    @param format: C{"text"} (nothing changes) or C{"json"}.
    @param serverOptions: twistd's options (the parent of the plugin's
        options), or C{None} outside twistd (nothing changes).
    @return: The service to give twistd.
    """
    if format != "json" or serverOptions is None:
        return service
    outFile = _twistdLogFile(serverOptions)
    if outFile is None:
        return service
    return _LoggingService(service, jsonLogObserver(outFile))
