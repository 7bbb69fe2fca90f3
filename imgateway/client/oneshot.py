# -*- test-case-name: tests.test_client_cli,tests.e2e.test_client_cli -*-
"""
The one-shot commands of C{imgateway-client} (C{send}, C{presence}, C{add},
...): log in without publishing presence, do one thing, print its result
for scripts, say goodbye. L{runOneShot} runs the one the command line names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from twisted.internet.interfaces import IStreamClientEndpoint

from imgateway.adapters.native.mapping import PRESENCE
from imgateway.client.formatting import describeConnectFailure, describeFailure, errorLine, formatContactRow, sanitise
from imgateway.client.parsing import describeRule, parseEntry, parseRuleCommand, resolveAddress
from imgateway.client.protocol import NativeClientProtocol, connect, goodbye, redirector
from imgateway.core.errors import DeliveryError, InvalidAddress

__all__ = ["ONE_SHOT_COMMANDS", "RULE_COMMAND", "runOn", "runOneShot"]


class _Output:
    """
    Where one-shot commands print (standard output, and whether to be
    verbose).
    """

    def __init__(self, out: TextIO, verbose: bool) -> None:
        self.out = out
        self.verbose = verbose

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def done(self, text: str) -> None:
        if self.verbose:
            self.line(f"-> {text}")


_OneShot = Callable[[NativeClientProtocol, argparse.Namespace, _Output], Awaitable[None]]


def _domainOf(client: NativeClientProtocol) -> str | None:
    return client.address.domain if client.address is not None else None


async def _send(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    await client.sendMessage(to, arguments.message)
    out.done(f"{to}: delivered")


async def _presence(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    data = await client.contacts()
    if arguments.json:
        out.line(json.dumps(data, indent=2, ensure_ascii=False))
        return
    for contact in data.get("contacts") or []:
        out.line(formatContactRow(contact))


async def _requests(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    data = await client.contacts()
    requests = data.get("requests") or []
    if arguments.json:
        out.line(json.dumps(requests, ensure_ascii=False))
        return
    for request in requests:
        out.line(sanitise(str(request)))


async def _add(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    authorised = await client.subscribe(to, " ".join(arguments.name))
    out.line(f"{to}: {'authorised' if authorised else 'request pending'}")


async def _remove(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    to = resolveAddress(arguments.address, _domainOf(client))
    await client.unsubscribe(to)
    out.done(f"{to}: removed")


def _authoriser(allow: bool) -> _OneShot:
    async def authorise(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
        to = resolveAddress(arguments.address, _domainOf(client))
        await client.authorise(to, allow)
        out.done(f"{to} {'may now' if allow else 'may not'} see your presence")

    return authorise


def _lister(accessList: str, said: str) -> _OneShot:
    async def setAccess(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
        entry = parseEntry(arguments.entry, _domainOf(client))
        await client.setAccess(entry, accessList)
        out.done(f"{entry} {said}")

    return setAccess


async def _lists(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    lists = await client.accessLists()
    if arguments.json:
        out.line(json.dumps(lists, ensure_ascii=False))
        return
    for name in ("allow", "block"):
        for entry in lists.get(name) or []:
            out.line(f"{name}\t{sanitise(entry)}")


async def _rules(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    rules = await client.rules()
    if arguments.json:
        out.line(json.dumps(rules, ensure_ascii=False))
        return
    for number, rule in enumerate(rules, 1):
        out.line(f"{number}. {sanitise(describeRule(rule))}")


#: How L{_rule}'s usage messages name it.
RULE_COMMAND = "imgateway-client rule"


async def _rule(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    command = parseRuleCommand(list(arguments.words), _domainOf(client), RULE_COMMAND)
    if command.verb == "remove":
        assert command.position is not None
        await client.removeRule(command.position)
        out.done(f"rule {command.position} removed")
    elif command.verb == "add":
        assert command.rule is not None
        await client.addRule(command.rule, command.position)
        where = "" if command.position is None else f" at {command.position}"
        out.done(sanitise(f"rule added{where}: {describeRule(command.rule)}"))
    else:
        assert command.state is not None
        await client.setRule(command.state, command.alternate)
        out.done(f"rule for {PRESENCE[command.state]} {'removed' if command.alternate is None else 'set'}")


async def _ping(client: NativeClientProtocol, arguments: argparse.Namespace, out: _Output) -> None:
    await client.ping()
    out.done("pong")


#: One-shot subcommand to what it does, and what its failures are about.
_ONE_SHOTS: dict[str, tuple[_OneShot, str | None]] = {
    "send": (_send, "address"),
    "presence": (_presence, None),
    "requests": (_requests, None),
    "add": (_add, "address"),
    "remove": (_remove, "address"),
    "accept": (_authoriser(True), "address"),
    "deny": (_authoriser(False), "address"),
    "allow": (_lister("allow", "is on your allow list"), "entry"),
    "block": (_lister("block", "is on your block list"), "entry"),
    "unlist": (_lister("none", "is off your lists"), "entry"),
    "lists": (_lists, None),
    "rules": (_rules, None),
    "rule": (_rule, None),
    "ping": (_ping, None),
}


#: The names of the one-shot subcommands.
ONE_SHOT_COMMANDS = frozenset(_ONE_SHOTS)


async def runOn(client: NativeClientProtocol, arguments: argparse.Namespace, out: TextIO) -> None:
    """
    Run the one-shot command C{arguments.command} on a logged-in
    C{client}, printing its result on C{out}.

    @raise Exception: What the command failed with (a L{ValueError} for
        what the user typed, a L{DeliveryError} or a client error from the
        server).
    """
    run, _ = _ONE_SHOTS[arguments.command]
    await run(client, arguments, _Output(out, arguments.verbose))


async def runOneShot(
    reactor: Any, arguments: argparse.Namespace, password: str, endpoint: IStreamClientEndpoint
) -> None:
    """
    Log in, run the one-shot command C{arguments.command}, print its
    result on standard output (its error on standard error), and say
    goodbye; for L{twisted.internet.task.react}.

    @raise SystemExit: With status 1 if logging in or the command failed.
    """
    _, about = _ONE_SHOTS[arguments.command]
    try:
        client = await connect(
            reactor,
            endpoint,
            arguments.user,
            password,
            None,
            arguments.label,
            presence=None,
            maxRedirects=arguments.max_redirects,
            redirectTo=redirector(reactor, arguments.server),
        )
    except Exception as e:
        sys.stderr.write(errorLine(describeConnectFailure(e, arguments.server, arguments.user)))
        sys.stderr.flush()
        raise SystemExit(1) from None
    code = 0
    try:
        await runOn(client, arguments, sys.stdout)
    except Exception as e:
        target = getattr(arguments, about) if about is not None else None
        if isinstance(e, DeliveryError) and about == "address" and client.address is not None:
            try:
                target = str(resolveAddress(target or "", client.address.domain))
            except InvalidAddress:
                pass
        sys.stderr.write(errorLine(describeFailure(e, target)))
        code = 1
    await goodbye(client, reactor)
    if code:
        raise SystemExit(code)
