# -*- test-case-name: tests.test_status_logs -*-
"""
The gateway's log lines as C{twistd imgateway} writes them (L{withLogFormat}):
C{[log] format = "text"}, twistd's own lines (L{classicLine}, written by
L{textLogObserver}, the same text as Twisted's C{textFileLogObserver}, made
with less work per line), or C{"json"} for log collectors: one JSON object
a line, through C{twisted.logger} (L{eventAsJSON}), with the formatted
C{message} and the C{level} beside the event's own fields.

The observer goes where twistd's own would (C{--logfile}, or standard
output with C{-n}), unless C{--logger} or C{--syslog} is given (then
twistd's is used).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    eventAsJSON,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.logfile import LogFile

__all__ = ["classicLine", "jsonLine", "jsonLogObserver", "textLogObserver", "withLogFormat"]


class _SecondStamps:
    """
    Twisted's L{formatTime} of a log event's time (RFC 3339, to the
    second), made once per second: the text of the last second is kept and
    given again for every event of that second.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        # One tuple, replaced at once: a thread logging as the reactor
        # thread moves to the next second never pairs one second's number
        # with another's text.
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when, timeFormatRFC3339)
        second = int(when)
        # Twisted rounds to the microsecond: the last microsecond of a
        # second may show the next one (and before 1970, int() is not the
        # floor); those are made as Twisted makes them.
        if when - second >= 0.999 or when < 0:
            return formatTime(when, timeFormatRFC3339)
        last = self.last
        if second != last[0]:
            last = self.last = (second, formatTime(when, timeFormatRFC3339))
        return last[1]


def _system(event: LogEvent) -> str:
    """
    The bracketed part of a line, as Twisted writes it: the event's
    C{log_system}, else its namespace and level.
    """
    system = event.get("log_system", None)
    if system is None:
        level = event.get("log_level", None)
        return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def _message(event: LogEvent) -> str:
    """
    The event's message, as Twisted's L{formatEvent} makes it. A format
    without Twisted's call syntax (C{{name()}}) is the format syntax of
    L{str.format_map} itself, which makes it without
    L{string.Formatter}'s Python code; anything else (calls, bytes,
    flattened events, a field that cannot be formatted) is left to
    L{formatEvent}, which also makes the message of an event that cannot
    be formatted.
    """
    format = event.get("log_format", None)
    if type(format) is str and "()" not in format and "log_flattened" not in event:
        try:
            return format.format_map(event)
        except BaseException:
            pass
    return formatEvent(event)


def classicLine(event: LogEvent, stamps: Callable[[float | None], str] | None = None) -> str | None:
    """
    One event as one line of twistd's text log: the same text as Twisted's
    L{formatEventAsClassicLogText} with its RFC 3339 time stamps
    (C{"2026-12-05T15:28:52+0000 [imgateway.home.server#info] Session
    hs1-7 opened\\n"}), lines after the first indented, or C{None} for an
    event without a message.

    @param stamps: Makes the time stamp of an event's C{log_time}
        (L{textLogObserver} gives one that keeps the last second's).
    """
    if "log_failure" in event:
        # With a traceback: rare, made by Twisted.
        return formatEventAsClassicLogText(event, formatTime=stamps or (lambda when: formatTime(when, timeFormatRFC3339)))
    text = _message(event)
    if not text:
        return None
    when = event.get("log_time", None)
    stamp = stamps(when) if stamps is not None else formatTime(when, timeFormatRFC3339)
    return f"{stamp} [{_system(event)}] {text}".replace("\n", "\n\t") + "\n"


def textLogObserver(outFile: IO[Any]) -> ILogObserver:
    """
    @return: An observer writing L{classicLine}s to C{outFile}, as Twisted's
        C{textFileLogObserver} (which twistd makes for its log file) writes
        the same lines: one time stamp made per second rather than per
        line, and the messages formatted by L{str.format_map} when they
        can be.
    """
    stamps = _SecondStamps()
    return FileLogObserver(outFile, lambda event: classicLine(event, stamps))


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


def _rotateOnSignal(logFile: Any, callFromThread: Callable[..., Any]) -> None:
    """
    Rotate C{logFile} on C{SIGUSR1}, as twistd does its own log file
    (unless something handles the signal already).
    """
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: object) -> None:
        callFromThread(logFile.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def withLogFormat(
    service: IService,
    format: str,
    serverOptions: Mapping[str, Any] | None,
    callFromThread: Callable[..., Any] | None = None,
) -> IService:
    """
    Apply C{[log] format} to twistd's log: the application gets a
    L{textLogObserver} (C{"text"}: twistd's lines) or a L{jsonLogObserver}
    (C{"json"}), writing where twistd would; a log file is rotated on
    C{SIGUSR1}, as twistd rotates its own.

    @param format: C{"text"} or C{"json"}.
    @param serverOptions: twistd's options (the parent of the plugin's
        options), or C{None} outside twistd (nothing changes).
    @param callFromThread: The reactor's C{callFromThread}, for the log
        file's rotation on C{SIGUSR1} (none without it).
    @return: The service to give twistd.
    """
    if serverOptions is None:
        return service
    outFile = _twistdLogFile(serverOptions)
    if outFile is None:
        return service
    if isinstance(outFile, LogFile) and callFromThread is not None:
        _rotateOnSignal(outFile, callFromThread)
    if format == "json":
        return _LoggingService(service, jsonLogObserver(outFile))
    return _LoggingService(service, textLogObserver(outFile))
