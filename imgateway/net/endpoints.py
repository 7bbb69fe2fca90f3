# -*- test-case-name: tests.test_net_endpoints,tests.test_router_front -*-
"""
The certificate, key and trust-root files that Twisted endpoint strings
name, checked before any port opens or any connection is tried, with a
message that names the file and says what to change:

  - server strings (every listener: L{imgateway.config.ConfigTable.endpoints}
    calls L{checkServerEndpoint}): the folder of C{tls:}, and the
    C{privateKey}, C{certKey} and C{extraCertChain} files of C{ssl:};
  - client strings (C{imgateway-client --server}, XMPP component and s2s
    routes: L{clientEndpointFromString}): the C{trustRoots} folder and the
    C{certificate} and C{privateKey} files of C{tls:} (and of a C{tls:}
    string given as its C{endpoint=}), and the C{caCertsDir}, C{certKey}
    and C{privateKey} of C{ssl:}.

Other endpoint types name no such file and pass unchecked. Relative paths
resolve against the current directory, as Twisted resolves them.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.interfaces import IStreamClientEndpoint

from imgateway.net.certificates import (
    CertificateProblem,
    checkCertificateFolder,
    checkTrustRootsFolder,
    keyMatches,
    loadCertificates,
    loadPrivateKey,
)

__all__ = [
    "checkClientEndpoint",
    "checkServerEndpoint",
    "clientEndpointFromString",
    "redirectedDescription",
    "splitDescription",
]

#: The positional parameters of the endpoint types we check, by role and
#: type, in Twisted's order (after the type itself).
_POSITIONAL = {
    ("server", "tls"): ("path", "port", "backlog", "interface"),
    ("server", "ssl"): ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain", "dhParameters"),
    ("client", "tls"): ("host", "port", "timeout", "bindAddress", "certificate", "privateKey", "trustRoots", "endpoint"),
    ("client", "ssl"): ("host", "port"),
}


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint string as L{twisted.internet.endpoints.serverFromString}
    and L{clientFromString} do: parameters are separated by C{:}, a
    parameter holding C{=} is a keyword (its value may hold C{=}), and a
    backslash escapes the next character
    (L{twisted.internet.endpoints.quoteStringArgument} adds them).

    @return: The positional parameters (the type first) and the keyword
        ones.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    parts: list[str] = []
    current: list[str] = []
    separators = ":="
    characters = iter(description)

    def add() -> None:
        if len(parts) == 1:
            args.append(parts[0])
        else:
            kwargs[parts[0]] = parts[1]

    for character in characters:
        if character in separators:
            parts.append("".join(current))
            current = []
            if character == ":":
                add()
                parts.clear()
                separators = ":="
            else:
                separators = ":"
        elif character == "\\":
            current.append(next(characters, ""))
        else:
            current.append(character)
    parts.append("".join(current))
    add()
    return args, kwargs


def _parameters(role: str, description: str) -> tuple[str, dict[str, str]]:
    """
    @return: The endpoint type (lower case) and its parameters by name, for
        the types in L{_POSITIONAL}; C{("", {})} for others.
    """
    args, kwargs = splitDescription(description)
    kind = args[0].strip().lower() if args else ""
    names: Sequence[str] | None = _POSITIONAL.get((role, kind))
    if names is None:
        return "", {}
    named = dict(zip(names, args[1:]))
    named.update(kwargs)
    return kind, named


def _checkPair(certificatePath: str, keyPath: str, now: float | None) -> None:
    chain = loadCertificates(certificatePath, now)
    key = loadPrivateKey(keyPath)
    if not keyMatches(chain[0], key):
        raise CertificateProblem(f"{keyPath} does not match the certificate in {certificatePath}")


def checkServerEndpoint(description: str, now: float | None = None) -> None:
    """
    Check the files a server endpoint string names: the folder of
    C{tls:PATH} (L{checkCertificateFolder}); the key (C{privateKey},
    C{server.pem} by default), certificate (C{certKey}, by default the
    key's file) and C{extraCertChain} of C{ssl:}.

    @param now: POSIX time to check validity dates at; the current time
        when C{None}.
    @raise CertificateProblem: Naming the file at fault.
    """
    kind, named = _parameters("server", description)
    if kind == "tls" and "path" in named:
        checkCertificateFolder(named["path"], now)
    elif kind == "ssl":
        privateKey = named.get("privateKey", "server.pem")
        _checkPair(named.get("certKey", privateKey), privateKey, now)
        if "extraCertChain" in named:
            loadCertificates(named["extraCertChain"], now)


def checkClientEndpoint(description: str, now: float | None = None) -> None:
    """
    Check the files a client endpoint string names: the C{trustRoots}
    folder (L{checkTrustRootsFolder}), the client C{certificate} and its
    C{privateKey} (by default in the certificate's file) of C{tls:}, and
    its C{endpoint=}; the C{caCertsDir}, C{certKey} and C{privateKey} of
    C{ssl:}.

    @param now: POSIX time to check validity dates at; the current time
        when C{None}.
    @raise CertificateProblem: Naming the file at fault.
    """
    kind, named = _parameters("client", description)
    if kind == "tls":
        roots, certificate, key = "trustRoots", "certificate", "privateKey"
    elif kind == "ssl":
        roots, certificate, key = "caCertsDir", "certKey", "privateKey"
    else:
        return
    if roots in named:
        checkTrustRootsFolder(named[roots], roots)
    if key in named and certificate not in named:
        raise CertificateProblem(f"{key}={named[key]} needs {certificate}= (Twisted ignores a key alone)")
    if certificate in named:
        _checkPair(named[certificate], named.get(key, named[certificate]), now)
    if kind == "tls" and "endpoint" in named:
        checkClientEndpoint(named["endpoint"], now)


def clientEndpointFromString(reactor: object, description: str) -> IStreamClientEndpoint:
    """
    L{clientFromString}, after L{checkClientEndpoint}: use it wherever a
    client endpoint string comes from a user.

    @raise CertificateProblem: If a file it names cannot serve.
    @raise ValueError: Or another exception of L{clientFromString}'s, if
        the string is otherwise wrong.
    """
    checkClientEndpoint(description)
    endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
    return endpoint


#: The positional parameters of the client endpoint types a redirect can
#: be followed from, in Twisted's order.
_REDIRECTABLE = {
    "tcp": ("host", "port", "timeout", "bindAddress"),
    "tls": _POSITIONAL[("client", "tls")],
    "ssl": _POSITIONAL[("client", "ssl")],
}


def redirectedDescription(description: str, host: str, port: int) -> str:
    """
    A client endpoint string like C{description}, with its host and port
    replaced: the same type (so the same TLS choice: a C{tls:} endpoint
    checks the new host's certificate against the new host's name) and
    every other parameter (trust roots, client certificate, bind address,
    timeout) kept. The C{endpoint=} a C{tls:} endpoint connects over is
    redirected likewise.

    @raise ValueError: If C{description} is not of a type that names a
        host and port (C{tcp:}, C{tls:}, C{ssl:}).
    """
    args, kwargs = splitDescription(description)
    kind = args[0].strip().lower() if args else ""
    names = _REDIRECTABLE.get(kind)
    if names is None:
        raise ValueError(f"cannot follow a redirect from a {kind or 'bad'}: endpoint (tcp:, tls: and ssl: can)")
    named = dict(zip(names, args[1:]))
    named.update(kwargs)
    named["host"] = host
    named["port"] = str(port)
    if kind == "tls" and "endpoint" in named:
        # The endpoint the TLS connection is made over names where it goes.
        named["endpoint"] = redirectedDescription(named["endpoint"], host, port)
    first = [f"{name}={quoteStringArgument(named.pop(name))}" for name in ("host", "port")]
    rest = [f"{name}={quoteStringArgument(value)}" for name, value in named.items()]
    return ":".join([kind, *first, *rest])
