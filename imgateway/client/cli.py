# -*- test-case-name: tests.test_client_cli,tests.e2e.test_client_cli -*-
"""
C{imgateway-client}: a command-line client for the native protocol, built on
L{imgateway.client.protocol}. This module reads the command line and the
password and starts the right mode.

With no subcommand (or C{chat}) it is an interactive chat client reading
commands from standard input (L{imgateway.client.chat}); the other
subcommands (C{send}, C{presence}, C{add}, ...) log in without publishing
presence, do one thing and exit with status 0 on success, 1 on failure and 2
for a usage error (L{imgateway.client.oneshot}).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from imgateway import __version__
from imgateway.client.chat import runChat
from imgateway.client.formatting import PROGRAM, errorLine
from imgateway.client.oneshot import RULE_COMMAND, runOneShot
from imgateway.client.parsing import RULE_SYNTAX, parseRuleCommand
from imgateway.client.protocol import DEFAULT_MAX_REDIRECTS

__all__ = [
    "DEFAULT_LABEL",
    "DEFAULT_SERVER",
    "PASSWORD_ENVIRONMENT",
    "buildParser",
    "main",
    "parseArguments",
    "readPassword",
]

#: Where to connect unless C{--server} says otherwise.
DEFAULT_SERVER = "tcp:127.0.0.1:5300"

#: The session label unless C{--label} says otherwise.
DEFAULT_LABEL = "imgateway-client"

#: The environment variable read for the password (after C{--password-stdin}).
PASSWORD_ENVIRONMENT = "IMGATEWAY_PASSWORD"




def _addCommonOptions(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """
    The options every subcommand takes, before or after its name. On
    subparsers their defaults are suppressed, so that an option given before
    the subcommand is not reset by the subparser's default.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--server",
        metavar="ENDPOINT",
        default=default(DEFAULT_SERVER),
        help=f"Twisted client endpoint of the gateway (default {DEFAULT_SERVER}); e.g. tls:gw.corp.example:5301",
    )
    parser.add_argument(
        "-u", "--user", metavar="ADDRESS", default=default(None), help="your address, or your bare user name (required)"
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        default=default(False),
        help=f"read the password from the first line of standard input (otherwise ${PASSWORD_ENVIRONMENT}, "
        "otherwise a prompt)",
    )
    parser.add_argument("--label", metavar="NAME", default=default(DEFAULT_LABEL), help="session label the server shows")
    parser.add_argument(
        "--max-redirects",
        metavar="N",
        type=int,
        default=default(DEFAULT_MAX_REDIRECTS),
        help=f"follow at most N redirects to your home server (default {DEFAULT_MAX_REDIRECTS}; 0: none)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="say what succeeded")


def buildParser() -> argparse.ArgumentParser:
    """
    @return: The parser of C{imgateway-client}'s command line.
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Chat through an imgateway server (no subcommand: interactive chat), "
        "or run one command and exit (status 0 on success, 1 on failure, 2 on a usage error).",
    )
    _addCommonOptions(parser, False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help, description=help)
        _addCommonOptions(p, True)
        return p

    sub("chat", "interactive chat (the default); /help lists its commands")
    p = sub("send", "send a message")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("text", metavar="TEXT", nargs="+", help="the message; - reads it from standard input")
    p = sub("presence", "print your contacts' presence, one line each: ADDRESS, STATE, NOTE, (SUBSCRIPTION)")
    p.add_argument("--json", action="store_true", help="print the server's CONTACTS answer as JSON")
    p = sub("requests", "print who asks to see your presence")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p = sub("add", "add a contact and ask to see its presence")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("name", metavar="NAME", nargs="*", help="display name")
    p = sub("remove", "remove a contact")
    p.add_argument("address", metavar="ADDRESS")
    p = sub("accept", "let ADDRESS see your presence")
    p.add_argument("address", metavar="ADDRESS")
    p = sub("deny", "do not let ADDRESS see your presence")
    p.add_argument("address", metavar="ADDRESS")
    for name, help in (
        ("allow", "put an address or domain on your allow list"),
        ("block", "put an address or domain on your block list"),
        ("unlist", "take an address or domain off your lists"),
    ):
        p = sub(name, help)
        p.add_argument("entry", metavar="ENTRY")
    p = sub("lists", "print your allow and block lists, one entry a line: LIST, ENTRY")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub("rules", "print your presence rules, numbered, one a line (the first that matches decides)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub(
        "rule",
        "edit your presence rules: 'add RULE' (last), 'insert N RULE', 'remove N' (N: 1 for the first rule); "
        "or 'STATE ALTERNATE': while in STATE, turn messages away naming ALTERNATE (no ALTERNATE: remove that rule)",
    )
    p.add_argument(
        "words",
        metavar="WORDS",
        nargs="+",
        help=f"RULE is {RULE_SYNTAX}; ALTERNATE a URI: tel:+15550100, im:bob@corp.example, sip:, xmpp:, mailto:, https:",
    )
    sub("ping", "check that the server answers")
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line (without the program name).

    @raise SystemExit: With status 2 on a usage error (after printing it).
    """
    parser = buildParser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        arguments.command = "chat"
    if not arguments.user:
        parser.error("--user is required")
    if arguments.max_redirects < 0:
        parser.error("--max-redirects must be 0 or more")
    if arguments.command == "rule":
        # Checked before connecting; a bare name is resolved again, in the
        # user's own domain, once logged in.
        domain = arguments.user.rpartition("@")[2] if "@" in arguments.user else "example.invalid"
        try:
            parseRuleCommand(list(arguments.words), domain, RULE_COMMAND)
        except ValueError as e:
            parser.error(str(e))
    return arguments


def _readLine(fd: int) -> str | None:
    """
    Read one line from a file descriptor, one byte at a time, so that
    nothing after it is consumed (the chat client reads the rest).

    @return: The line without its line break, or C{None} at end of input.
    """
    data = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte:
            if not data:
                return None
            break
        if byte == b"\n":
            break
        data += byte
    return data.decode("utf-8").rstrip("\r")


def readPassword(
    arguments: argparse.Namespace,
    stdin: int = 0,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    """
    The password: the first line of standard input with C{--password-stdin},
    else C{$IMGATEWAY_PASSWORD}, else asked for.

    @raise ValueError: If there is none.
    """
    if arguments.password_stdin:
        password = _readLine(stdin)
        if password is None:
            raise ValueError("--password-stdin: standard input is empty")
    elif environ.get(PASSWORD_ENVIRONMENT):
        password = environ[PASSWORD_ENVIRONMENT]
    else:
        try:
            password = prompt(f"Password for {arguments.user}: ")
        except EOFError:
            password = ""
    if not password:
        raise ValueError("no password given")
    return password


def _die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(errorLine(message))
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run C{imgateway-client}.

    @param argv: The arguments (default: C{sys.argv[1:]}).
    """
    arguments = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        password = readPassword(arguments)
    except (ValueError, UnicodeDecodeError) as e:
        _die(str(e), 2)
    if arguments.command == "send":
        if arguments.text == ["-"]:
            arguments.message = sys.stdin.buffer.read().decode("utf-8", "replace").removesuffix("\n")
        else:
            arguments.message = " ".join(arguments.text)
        if not arguments.message:
            _die("send: the message is empty", 2)

    from twisted.internet import reactor
    from twisted.internet.task import react

    from imgateway.net.endpoints import clientEndpointFromString

    try:
        endpoint = clientEndpointFromString(reactor, arguments.server)
    except Exception as e:  # clientFromString raises many kinds
        _die(f"bad --server endpoint {arguments.server!r}: {e} (expected e.g. tcp:HOST:PORT or tls:HOST:PORT)", 2)

    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings (a bad frame from the server, a failed presence refresh) and
    # unexpected failures go to standard error; routine events do not.
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    if arguments.command == "chat":
        react(runChat, (arguments, password, endpoint))
    react(runOneShot, (arguments, password, endpoint))


if __name__ == "__main__":
    main()