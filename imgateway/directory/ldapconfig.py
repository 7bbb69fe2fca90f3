# -*- test-case-name: tests.test_ldap_directory -*-
"""
The configuration of the LDAP directory (L{LDAPConfig}, the C{[directory]}
table when C{backend = "ldap"}) and the LDAP search filters it holds:
parsed here (L{parseFilter}), with the user's address escaped as RFC 4515
asks (L{userFilter}). The directory itself is L{imgateway.directory.ldap}.

Filters are parsed here rather than by ldaptor's C{ldapfilter}: that one
has no extensible match (Active Directory's
C{userAccountControl:1.2.840.113556.1.4.803:=2}), decodes C{\\XX}
escapes one code point at a time (so an escaped UTF-8 character comes out
wrong), and its pyparsing grammar warns when it is imported. The objects
built are ldaptor's (C{pureldap.LDAPFilter_*}), ready to send.

This module does not import L{imgateway.config} (which imports it): it
reads its table through the few methods of L{imgateway.config.ConfigTable}
that it needs.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Collection
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from attrs import field, frozen
from ldaptor.protocols import pureldap

from imgateway.core.address import Address
from imgateway.core.errors import ConfigError

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_RECONNECT_MAX_DELAY",
    "DEFAULT_TIMEOUT",
    "FilterError",
    "LDAPConfig",
    "LDAPURL",
    "escapeFilterValue",
    "listFilter",
    "parseFilter",
    "parseLDAPConfig",
    "parseLDAPURL",
    "simpleName",
    "userFilter",
]

T = TypeVar("T")

#: Connections kept open to the LDAP server, by default.
DEFAULT_POOL_SIZE = 2

#: Seconds an LDAP operation (connecting included) may take, by default.
DEFAULT_TIMEOUT = 10.0

#: Seconds before the first reconnection attempt after a failed one, and
#: the most between two attempts, by default (with jitter in between).
DEFAULT_RECONNECT_DELAY = 1.0
DEFAULT_RECONNECT_MAX_DELAY = 30.0

#: The placeholders of C{user_filter}.
_PLACEHOLDERS = ("address", "local", "domain")


class _Table(Protocol):
    """
    What is read of an L{imgateway.config.ConfigTable}.
    """

    def error(self, key: str, problem: str) -> ConfigError: ...

    def get(self, key: str, kind: type[T], default: T = ...) -> T: ...

    def positive(self, key: str, kind: type[T], default: T) -> T: ...

    def path(self, key: str, default: str | None = None) -> str | None: ...


# -- filters (RFC 4515) ----------------------------------------------------------------


class FilterError(ValueError):
    """
    An LDAP search filter is not valid RFC 4515 text.
    """


def escapeFilterValue(value: str) -> str:
    """
    Escape a value for use inside an LDAP search filter (RFC 4515 section
    3): C{*}, C{(}, C{)}, C{\\} and NUL become C{\\2a}, C{\\28}, C{\\29},
    C{\\5c} and C{\\00}; anything else (UTF-8 included) stays as it is.
    """
    return (
        value.replace("\\", "\\5c")
        .replace("*", "\\2a")
        .replace("(", "\\28")
        .replace(")", "\\29")
        .replace("\0", "\\00")
    )


_ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_MATCHING_RULE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*")
_HEX = frozenset("0123456789abcdefABCDEF")


class _FilterParser:
    """
    A recursive-descent parser of RFC 4515 filters into ldaptor's filter
    objects.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def error(self, problem: str) -> FilterError:
        return FilterError(f"invalid LDAP filter {self.text!r}: {problem} at position {self.i}")

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, c: str) -> None:
        if self.peek() != c:
            raise self.error(f"expected {c!r}")
        self.i += 1

    def parse(self) -> Any:
        result = self.filter()
        if self.i != len(self.text):
            raise self.error("text after the filter")
        return result

    def filter(self) -> Any:
        self.expect("(")
        c = self.peek()
        if c in ("&", "|"):
            self.i += 1
            parts = []
            while self.peek() == "(":
                parts.append(self.filter())
            if not parts:
                raise self.error(f"{c} needs at least one filter")
            result: Any = (pureldap.LDAPFilter_and if c == "&" else pureldap.LDAPFilter_or)(parts)
        elif c == "!":
            self.i += 1
            result = pureldap.LDAPFilter_not(self.filter())
        else:
            result = self.item()
        self.expect(")")
        return result

    def attribute(self) -> str:
        m = _ATTRIBUTE.match(self.text, self.i)
        if m is None:
            raise self.error("expected an attribute description")
        self.i = m.end()
        return m.group()

    def value(self, allowStar: bool = False) -> list[bytes | None]:
        """
        Read an assertion value up to C{)}: a list of byte strings, with
        C{None} for each unescaped C{*} when C{allowStar}.
        """
        parts: list[bytes | None] = []
        current = bytearray()
        while True:
            c = self.peek()
            if c in ("", ")"):
                break
            if c == "(" or c == "\0":
                raise self.error(f"{c!r} must be escaped in a value")
            if c == "*":
                if not allowStar:
                    raise self.error("'*' must be escaped in a value")
                parts.append(bytes(current))
                parts.append(None)
                current = bytearray()
                self.i += 1
            elif c == "\\":
                code = self.text[self.i + 1 : self.i + 3]
                if len(code) != 2 or not set(code) <= _HEX:
                    raise self.error("'\\' must start an escape of two hexadecimal digits")
                current.append(int(code, 16))
                self.i += 3
            else:
                current += c.encode("utf-8")
                self.i += 1
        parts.append(bytes(current))
        return parts

    def item(self) -> Any:
        if self.peek() == ":":
            return self.extensible(None)
        attribute = self.attribute()
        c = self.peek()
        if c == ":":
            return self.extensible(attribute)
        kinds = {
            "~=": pureldap.LDAPFilter_approxMatch,
            ">=": pureldap.LDAPFilter_greaterOrEqual,
            "<=": pureldap.LDAPFilter_lessOrEqual,
        }
        operator = self.text[self.i : self.i + 2]
        if operator in kinds:
            self.i += 2
            (value,) = self.value()
            return kinds[operator](
                attributeDesc=pureldap.LDAPAttributeDescription(attribute),
                assertionValue=pureldap.LDAPAssertionValue(value),
            )
        self.expect("=")
        parts = self.value(allowStar=True)
        if len(parts) == 1:
            assert parts[0] is not None
            return pureldap.LDAPFilter_equalityMatch(
                attributeDesc=pureldap.LDAPAttributeDescription(attribute),
                assertionValue=pureldap.LDAPAssertionValue(parts[0]),
            )
        if parts == [b"", None, b""]:
            return pureldap.LDAPFilter_present(attribute)
        # initial * any * ... * final: the pieces between the stars.
        pieces = [p for p in parts if p is not None]
        initial, middle, final = pieces[0], pieces[1:-1], pieces[-1]
        if any(not p for p in middle):
            raise self.error("two '*' in a row")
        substrings: list[Any] = []
        if initial:
            substrings.append(pureldap.LDAPFilter_substrings_initial(initial))
        substrings += [pureldap.LDAPFilter_substrings_any(p) for p in middle]
        if final:
            substrings.append(pureldap.LDAPFilter_substrings_final(final))
        return pureldap.LDAPFilter_substrings(type=attribute, substrings=substrings)

    def extensible(self, attribute: str | None) -> Any:
        dnAttributes = False
        rule: str | None = None
        if self.text.startswith(":dn", self.i) and self.text[self.i + 3 : self.i + 4] in (":",):
            dnAttributes = True
            self.i += 3
        if self.text.startswith(":=", self.i):
            self.i += 2
        else:
            self.expect(":")
            m = _MATCHING_RULE.match(self.text, self.i)
            if m is None:
                raise self.error("expected a matching rule")
            rule = m.group()
            self.i = m.end()
            if not self.text.startswith(":=", self.i):
                raise self.error("expected ':='")
            self.i += 2
        if attribute is None and rule is None:
            raise self.error("an extensible match needs an attribute or a matching rule")
        (value,) = self.value()
        return pureldap.LDAPFilter_extensibleMatch(
            matchingRule=rule, type=attribute, matchValue=value, dnAttributes=dnAttributes or None
        )


def parseFilter(text: str) -> Any:
    """
    Parse an LDAP search filter (RFC 4515): C{&}, C{|}, C{!}, equality,
    C{~=}, C{>=}, C{<=}, presence, substrings and extensible matches, with
    C{\\XX} escapes standing for bytes (so an escaped UTF-8 character is
    its bytes, escaped one by one).

    @return: The filter, as ldaptor's C{pureldap.LDAPFilter_*} objects.
    @raise FilterError: If C{text} is not a valid filter.
    """
    return _FilterParser(text).parse()


def userFilter(template: str, address: Address) -> Any:
    """
    The filter that finds a user: C{template} with C{{address}},
    C{{local}} and C{{domain}} replaced by the parts of C{address},
    escaped (L{escapeFilterValue}), so that no address can change the
    filter's structure.

    @raise FilterError: If the result is not a valid filter.
    """
    values = {
        "address": escapeFilterValue(str(address)),
        "local": escapeFilterValue(address.local),
        "domain": escapeFilterValue(address.domain),
    }
    return parseFilter(template.format_map(values))


def listFilter(template: str, domain: str) -> Any:
    """
    The filter that finds every user of C{domain}: C{template} with
    C{{address}} as C{*@domain} and C{{local}} as C{*} (unescaped stars:
    substring and presence matches).
    """
    escaped = escapeFilterValue(domain)
    return parseFilter(template.format_map({"address": f"*@{escaped}", "local": "*", "domain": escaped}))


def _checkTemplate(template: str) -> None:
    """
    @raise ValueError: If C{template} names an unknown placeholder, names
        neither C{{address}} nor C{{local}}, or does not give a valid
        filter.
    """
    names = set()
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is not None:
                names.add(name)
    except ValueError as e:
        raise ValueError(f"{e} (write a literal brace as {{{{ or }}}})") from None
    unknown = names - set(_PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (use {{address}}, {{local}}, {{domain}})")
    if not names & {"address", "local"}:
        raise ValueError("must hold {address} or {local}")
    userFilter(template, Address.fromParts("alice", "corp.example"))


# -- URLs and configuration --------------------------------------------------------------


@frozen
class LDAPURL:
    """
    Where the LDAP server is.

    @ivar host: Its name or address (also the name its certificate must
        be valid for).
    @ivar port: Its port.
    @ivar tls: Whether the connection is TLS from the start (C{ldaps://}).
    """

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'ldaps' if self.tls else 'ldap'}://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """
        Whether the server is on this host (C{localhost} or a loopback
        address).
        """
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parseLDAPURL(text: str) -> LDAPURL:
    """
    Read C{ldap://host[:port]} or C{ldaps://host[:port]} (default ports 389
    and 636; an IPv6 address in brackets).

    @raise ValueError: Saying what is wrong with it.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not an LDAP URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ldap", "ldaps"):
        raise ValueError("must start with ldap:// or ldaps://")
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user or password (use bind_dn and bind_password_file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only ldap[s]://host[:port] (give the base DN as base_dn)")
    tls = scheme == "ldaps"
    return LDAPURL(parts.hostname, port if port is not None else (636 if tls else 389), tls)


_SIMPLE_NAME = re.compile(r"[A-Za-z0-9.-]+")


def simpleName(name: str) -> bool:
    """
    Whether C{name} is a valid home server name (as C{[gateway]
    home_server}).
    """
    return bool(_SIMPLE_NAME.fullmatch(name)) and any(c.isalnum() for c in name)


def _attributeName(table: _Table, key: str, default: str) -> str:
    value = table.get(key, str, default)
    if value and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*", value):
        raise table.error(key, f"not an attribute name: {value!r}")
    return value


@frozen
class LDAPConfig:
    """
    The C{[directory]} table of an LDAP directory (see
    C{etc/imgateway.toml}).

    @ivar url: The server.
    @ivar startTLS: Whether to start TLS (StartTLS) on an C{ldap://}
        connection before anything else.
    @ivar caCertificates: The PEM file of the authorities trusted to vouch
        for the server's certificate; C{None} for the system's.
    @ivar allowPlaintext: Whether passwords may cross an unencrypted
        connection to a server that is not on this host.
    @ivar bindDN: The service account the gateway searches as (C{""}:
        anonymously).
    @ivar bindPassword: Its password (read from C{bind_password_file};
        never shown).
    @ivar baseDN: Where the users are searched for (the whole subtree).
    @ivar userFilter: The filter that finds one user (see L{userFilter}).
    @ivar mailAttribute: The attribute holding users' addresses.
    @ivar displayNameAttribute: The attribute holding their display name.
    @ivar homeAttribute: The attribute naming their home server; C{""}
        for none (every user is on L{defaultHome}).
    @ivar defaultHome: The home server of users without one.
    @ivar disabledAttribute: The attribute that marks a disabled account;
        C{""} for none.
    @ivar disabledValues: The values of L{disabledAttribute} that mark it
        (compared without case); empty: any value does.
    @ivar decoyDN: The DN a password given for an unknown user is checked
        against; C{""} for C{cn=imgateway-no-such-user} under L{baseDN},
        which does not exist (see L{imgateway.directory.ldap.DECOY_RDN}).
    @ivar scramAttribute: The attribute holding SCRAM verifiers in the
        form of RFC 5803; C{""} for none (SCRAM is then not offered).
    @ivar poolSize: Connections kept open.
    @ivar timeout: Seconds an operation may take, connecting included.
    @ivar reconnectDelay: Seconds before the first attempt to reconnect
        after a failed one.
    @ivar reconnectMaxDelay: The most seconds between two attempts.
    """

    url: LDAPURL
    baseDN: str
    defaultHome: str
    startTLS: bool = False
    caCertificates: str | None = None
    allowPlaintext: bool = False
    bindDN: str = ""
    bindPassword: str = field(default="", repr=False)
    userFilter: str = "(mail={address})"
    mailAttribute: str = "mail"
    displayNameAttribute: str = "displayName"
    homeAttribute: str = ""
    disabledAttribute: str = ""
    disabledValues: tuple[str, ...] = ()
    scramAttribute: str = ""
    decoyDN: str = ""
    poolSize: int = DEFAULT_POOL_SIZE
    timeout: float = DEFAULT_TIMEOUT
    reconnectDelay: float = DEFAULT_RECONNECT_DELAY
    reconnectMaxDelay: float = DEFAULT_RECONNECT_MAX_DELAY

    @property
    def encrypted(self) -> bool:
        """
        Whether the connections are encrypted.
        """
        return self.url.tls or self.startTLS


def _readPasswordFile(table: _Table, key: str) -> str:
    path = table.path(key)
    if path is None:
        raise table.error(key, "missing (required with bind_dn): the file holding the service account's password")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise table.error(key, f"{path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise table.error(key, f"{path} is empty")
    if "\n" in text or "\0" in text:
        raise table.error(key, f"{path} must hold the password alone, on one line")
    return text


def parseLDAPConfig(table: _Table, defaultHome: str, homeServers: Collection[str] | None = None) -> LDAPConfig:
    """
    Read the keys of an LDAP C{[directory]} table (all but C{backend}).

    @param defaultHome: C{[gateway] home_server}: the default of
        C{default_home} for a single-host gateway.
    @param homeServers: With C{[servers]} tables, the names of those whose
        roles include C{"home"} (C{None} without: a single-host gateway).
        C{default_home} must then name one of them, the same in every
        process of the domain, so it is required unless there is only one
        (which is then its default): each process's own C{home_server}
        would differ from process to process, and a router's is no home
        server at all.
    @raise ConfigError: Naming the key at fault.
    """
    urlText = table.get("url", str)
    try:
        url = parseLDAPURL(urlText)
    except ValueError as e:
        raise table.error("url", f"{urlText!r}: {e}") from None
    startTLS = table.get("start_tls", bool, False)
    if startTLS and url.tls:
        raise table.error("start_tls", "an ldaps:// connection is encrypted already: use start_tls with ldap:// only")
    caPath = table.path("ca_file") if table.get("ca_file", str, "") else None
    if caPath is not None:
        from imgateway.net.certificates import CertificateProblem, loadTrustRootFile

        try:
            loadTrustRootFile(caPath)
        except CertificateProblem as e:
            raise table.error("ca_file", str(e)) from None
    allowPlaintext = table.get("allow_plaintext", bool, False)
    if not (url.tls or startTLS or allowPlaintext or url.loopback):
        raise table.error(
            "url",
            f"{url} is not encrypted and not on this host: passwords would cross the network in the clear"
            " (use ldaps://, or start_tls = true, or allow_plaintext = true on a network you trust)",
        )
    bindDN = table.get("bind_dn", str, "")
    if bindDN:
        bindPassword = _readPasswordFile(table, "bind_password_file")
    else:
        if table.get("bind_password_file", str, ""):
            raise table.error("bind_password_file", "given without bind_dn")
        bindPassword = ""
    baseDN = table.get("base_dn", str)
    mailAttribute = _attributeName(table, "mail_attribute", "mail")
    if not mailAttribute:
        raise table.error("mail_attribute", "must name an attribute")
    template = table.get("user_filter", str, f"({mailAttribute}={{address}})")
    try:
        _checkTemplate(template)
    except ValueError as e:
        raise table.error("user_filter", str(e)) from None
    if homeServers is None:
        home = table.get("default_home", str, defaultHome)
    else:
        homes = ", ".join(sorted(homeServers))
        only = next(iter(homeServers)) if len(homeServers) == 1 else None
        home = table.get("default_home", str, only or "")
        if not home:
            raise table.error(
                "default_home",
                f"required with several home servers in [servers] ({homes}): the home server of users whose entry"
                " names none, the same in every process of the domain",
            )
    if not simpleName(home):
        raise table.error("default_home", f"must be a simple name (letters, digits, '-', '.'), got {home!r}")
    if homeServers is not None and home not in homeServers:
        raise table.error("default_home", f"must name a home server of [servers] ({homes}), got {home!r}")
    disabledValues = table.get("disabled_values", list, [])
    if not all(isinstance(v, str) and v for v in disabledValues):
        raise table.error("disabled_values", "expected a list of non-empty strings")
    disabledAttribute = _attributeName(table, "disabled_attribute", "")
    if disabledValues and not disabledAttribute:
        raise table.error("disabled_values", "given without disabled_attribute")
    config = LDAPConfig(
        url=url,
        baseDN=baseDN,
        defaultHome=home,
        startTLS=startTLS,
        caCertificates=caPath,
        allowPlaintext=allowPlaintext,
        bindDN=bindDN,
        bindPassword=bindPassword,
        userFilter=template,
        mailAttribute=mailAttribute,
        displayNameAttribute=_attributeName(table, "display_name_attribute", "displayName"),
        homeAttribute=_attributeName(table, "home_attribute", ""),
        disabledAttribute=disabledAttribute,
        disabledValues=tuple(disabledValues),
        scramAttribute=_attributeName(table, "scram_attribute", ""),
        decoyDN=table.get("decoy_dn", str, ""),
        poolSize=table.positive("pool_size", int, DEFAULT_POOL_SIZE),
        timeout=table.positive("timeout", float, DEFAULT_TIMEOUT),
        reconnectDelay=table.positive("reconnect_delay", float, DEFAULT_RECONNECT_DELAY),
        reconnectMaxDelay=table.positive("reconnect_max_delay", float, DEFAULT_RECONNECT_MAX_DELAY),
    )
    if config.reconnectMaxDelay < config.reconnectDelay:
        raise table.error("reconnect_max_delay", "must be at least reconnect_delay")
    return config
