# -*- test-case-name: tests.test_manhole -*-
"""
Running an operator's script in the manhole's namespace: its C{print}s go
to the operator, its exit status says whether it raised. A script may
C{await} what the helpers return (top-level C{await}); a script that raises
(or calls C{sys.exit}) ends with a traceback and a non-zero status, and the
gateway goes on.
"""

from __future__ import annotations

import ast
import inspect
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["SCRIPT_FILENAME", "runScript"]

#: The file name a script's traceback shows.
SCRIPT_FILENAME = "<script>"

log = Logger()


def _status(exit: SystemExit, err: Callable[[str], None]) -> int:
    code = exit.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    err(f"{code}\n")
    return 1


def _traceback(error: BaseException) -> str:
    """
    The traceback of an error a script raised, from the script's frames
    on (not this module's).
    """
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != SCRIPT_FILENAME:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def runScript(
    source: bytes | str,
    namespace: Mapping[str, object],
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> Deferred[int]:
    """
    Run C{source} (UTF-8 when bytes) as a module whose globals are a copy
    of C{namespace}, with a C{print} that writes to C{out}.

    @param err: Where a traceback (or another reason to fail) is written.
    @return: Fires with the exit status: 0, 1 when the script raised (or
        could not be compiled), or what it gave C{sys.exit}; never fails.
    """
    try:
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        code = compile(text, SCRIPT_FILENAME, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except UnicodeDecodeError as e:
        err(f"the script is not UTF-8: {e}\n")
        return _fired(1)
    except (SyntaxError, ValueError) as e:
        err(_traceback(e) if isinstance(e, SyntaxError) else f"{e}\n")
        return _fired(1)

    def scriptPrint(*values: object, sep: str | None = " ", end: str | None = "\n", **ignored: Any) -> None:
        out((" " if sep is None else sep).join(str(v) for v in values) + ("\n" if end is None else end))

    globals_: dict[str, Any] = dict(namespace)
    globals_.update({"__name__": "__script__", "print": scriptPrint})

    def failed(error: BaseException) -> int:
        if isinstance(error, SystemExit):
            return _status(error, err)
        err(_traceback(error))
        log.info("A console script raised {error!r}", error=error)
        return 1

    try:
        result = eval(code, globals_)
    except BaseException as e:  # noqa: B902 - a script must never stop the gateway (SystemExit included)
        return _fired(failed(e))
    if not inspect.iscoroutine(result):
        return _fired(0)

    async def awaited() -> int:
        try:
            await result
        except BaseException as e:  # noqa: B902 - as above
            return failed(e)
        return 0

    return Deferred.fromCoroutine(awaited())


def _fired(status: int) -> Deferred[int]:
    d: Deferred[int] = Deferred()
    d.callback(status)
    return d
