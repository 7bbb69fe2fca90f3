"""
Unit tests for the LDAP directory: its configuration and search filters
(L{imgateway.directory.ldapconfig}), the mapping of entries to accounts and
the connection pool (L{imgateway.directory.ldap}), against an LDAP server
played in memory (L{FakeServer}) on a fake clock. The real slapd is in
C{tests/e2e/test_ldap_directory.py}.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

from ldaptor.protocols import pureber, pureldap
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgateway.auth.passwords import SCRAM_HASHES, ScramVerifier, StoredCredentials, preparePassword
from imgateway.config import DirectoryConfig, parseConfig
from imgateway.core.address import Address
from imgateway.core.errors import ConfigError, DirectoryUnavailable, PersistenceFailed
from imgateway.core.records import MAX_DISPLAY_NAME_CHARS
from imgateway.directory.ldap import DECOY_RDN, MAX_MESSAGE_BYTES, LDAPDirectory, accountFromEntry, parseRFC5803
from imgateway.directory.ldapconfig import (
    FilterError,
    LDAPConfig,
    LDAPURL,
    escapeFilterValue,
    listFilter,
    parseFilter,
    parseLDAPURL,
    userFilter,
)
from imgateway.interfaces import IDirectory, IPasswordDirectory
from imgateway.testing import TLSStringTransport

ALICE = Address.fromParts("alice", "corp.example")
BOB = Address.fromParts("bob", "corp.example")
NOBODY = Address.fromParts("nobody", "corp.example")
BASE = "ou=people,dc=corp,dc=example"
SERVICE = "cn=imgateway,ou=services,dc=corp,dc=example"
SERVICE_PASSWORD = "service secret"


def text(value: str | bytes) -> str:
    """
    A DN or password of a request, as text (decoded requests hold bytes).
    """
    return value.decode() if isinstance(value, bytes) else value


def equality(attribute: str, value: bytes) -> Any:
    """
    An equality filter, built by hand.
    """
    return pureldap.LDAPFilter_equalityMatch(
        attributeDesc=pureldap.LDAPAttributeDescription(attribute),
        assertionValue=pureldap.LDAPAssertionValue(value),
    )


class EscapeTests(SynchronousTestCase):
    """
    L{escapeFilterValue}.
    """

    def test_specials(self) -> None:
        """
        C{*}, C{(}, C{)}, C{\\} and NUL are escaped as two hexadecimal
        digits (the backslash first, so that escapes are not escaped
        again).
        """
        self.assertEqual(escapeFilterValue("a*b(c)d\\e\0f"), "a\\2ab\\28c\\29d\\5ce\\00f")
        self.assertEqual(escapeFilterValue("\\2a"), "\\5c2a")

    def test_othersKept(self) -> None:
        """
        Anything else stays as it is, non-ASCII letters included (a filter
        is UTF-8 text).
        """
        self.assertEqual(escapeFilterValue("jérôme.o'neil+x=y@corp.example"), "jérôme.o'neil+x=y@corp.example")


class ParseFilterTests(SynchronousTestCase):
    """
    L{parseFilter}: RFC 4515 text to ldaptor's filter objects.
    """

    def assertSameWire(self, text: str, expected: Any) -> None:
        """
        C{text} parses to a filter that is sent as C{expected} is.
        """
        self.assertEqual(parseFilter(text).toWire(), expected.toWire())

    def test_equality(self) -> None:
        """
        C{(attr=value)} is an equality match, its value as bytes.
        """
        f = parseFilter("(mail=alice@corp.example)")
        self.assertIsInstance(f, pureldap.LDAPFilter_equalityMatch)
        self.assertEqual((f.attributeDesc.value, f.assertionValue.value), ("mail", b"alice@corp.example"))

    def test_escapes(self) -> None:
        """
        C{\\XX} escapes stand for bytes: an escaped UTF-8 character is its
        bytes (ldaptor's own parser would make two code points of it);
        unescaped non-ASCII text is UTF-8 encoded.
        """
        self.assertEqual(parseFilter("(cn=J\\c3\\a9r\\2a)").assertionValue.value, "Jér*".encode())
        self.assertEqual(parseFilter("(cn=Jér)").assertionValue.value, "Jér".encode())

    def test_operators(self) -> None:
        """
        C{~=}, C{>=}, C{<=}, presence, C{&}, C{|} and C{!}.
        """
        cases = [
            ("(cn~=x)", pureldap.LDAPFilter_approxMatch),
            ("(n>=3)", pureldap.LDAPFilter_greaterOrEqual),
            ("(n<=3)", pureldap.LDAPFilter_lessOrEqual),
        ]
        for text, kind in cases:
            self.assertIsInstance(parseFilter(text), kind)
        self.assertSameWire("(mail=*)", pureldap.LDAPFilter_present("mail"))
        self.assertSameWire(
            "(&(objectClass=person)(|(mail=a)(!(uid=b))))",
            pureldap.LDAPFilter_and(
                [
                    equality("objectClass", b"person"),
                    pureldap.LDAPFilter_or([equality("mail", b"a"), pureldap.LDAPFilter_not(equality("uid", b"b"))]),
                ]
            ),
        )

    def test_substrings(self) -> None:
        """
        Unescaped stars make a substring match: initial, any, final.
        """
        self.assertSameWire(
            "(mail=a*b*c)",
            pureldap.LDAPFilter_substrings(
                type="mail",
                substrings=[
                    pureldap.LDAPFilter_substrings_initial(b"a"),
                    pureldap.LDAPFilter_substrings_any(b"b"),
                    pureldap.LDAPFilter_substrings_final(b"c"),
                ],
            ),
        )
        self.assertSameWire(
            "(mail=*@corp.example)",
            pureldap.LDAPFilter_substrings(type="mail", substrings=[pureldap.LDAPFilter_substrings_final(b"@corp.example")]),
        )

    def test_extensible(self) -> None:
        """
        Extensible matches, such as Active Directory's test of the
        C{ACCOUNTDISABLE} bit, parse (ldaptor's own parser cannot).
        """
        self.assertSameWire(
            "(!(userAccountControl:1.2.840.113556.1.4.803:=2))",
            pureldap.LDAPFilter_not(
                pureldap.LDAPFilter_extensibleMatch(
                    matchingRule="1.2.840.113556.1.4.803", type="userAccountControl", matchValue=b"2"
                )
            ),
        )
        self.assertSameWire(
            "(ou:dn:=people)",
            pureldap.LDAPFilter_extensibleMatch(type="ou", matchValue=b"people", dnAttributes=True),
        )
        self.assertSameWire(
            "(:caseExactMatch:=X)",
            pureldap.LDAPFilter_extensibleMatch(matchingRule="caseExactMatch", matchValue=b"X"),
        )

    def test_invalid(self) -> None:
        """
        Text that is no filter raises L{FilterError}.
        """
        for text in [
            "",
            "mail=x",
            "(mail=x",
            "(mail=x))",
            "(mail=x)(uid=y)",
            "(mail=(x)",
            "(mail=x\\2)",
            "(mail=x\\zz)",
            "(mail=a**b)",
            "(&)",
            "(!(a=b)(c=d))",
            "(=x)",
            "(:=x)",
            "(m ail=x)",
            "(mail~=*)",
        ]:
            self.assertRaises(FilterError, parseFilter, text)


class UserFilterTests(SynchronousTestCase):
    """
    L{userFilter} and L{listFilter}: the configured template with an
    address in it.
    """

    def test_address(self) -> None:
        """
        C{{address}}, C{{local}} and C{{domain}} are the address's parts.
        """
        f = userFilter("(&(mail={address})(uid={local})(o={domain}))", ALICE)
        self.assertEqual(
            f.toWire(),
            pureldap.LDAPFilter_and(
                [equality("mail", b"alice@corp.example"), equality("uid", b"alice"), equality("o", b"corp.example")]
            ).toWire(),
        )

    def test_injection(self) -> None:
        """
        An address made to change the filter (C{*)(uid=*} is a valid local
        part) is a plain value of the one equality match: escaped, never a
        wildcard or a second filter. Left unescaped, it would not even be
        one filter.
        """
        evil = Address.fromParts("*)(uid=*", "corp.example")
        f = userFilter("(mail={address})", evil)
        self.assertEqual(f.toWire(), equality("mail", b"*)(uid=*@corp.example").toWire())
        f = userFilter("(&(objectClass=person)(uid={local}))", evil)
        self.assertEqual(f.toWire(), pureldap.LDAPFilter_and([equality("objectClass", b"person"), equality("uid", b"*)(uid=*")]).toWire())
        self.assertRaises(FilterError, parseFilter, "(mail={address})".format(address=str(evil)))

    def test_listFilter(self) -> None:
        """
        The filter listing a domain's users has unescaped stars for the
        local part: a substring or presence match.
        """
        self.assertEqual(
            listFilter("(mail={address})", "corp.example").toWire(),
            pureldap.LDAPFilter_substrings(type="mail", substrings=[pureldap.LDAPFilter_substrings_final(b"@corp.example")]).toWire(),
        )
        self.assertEqual(listFilter("(uid={local})", "corp.example").toWire(), pureldap.LDAPFilter_present("uid").toWire())


class URLTests(SynchronousTestCase):
    """
    L{parseLDAPURL}.
    """

    def test_valid(self) -> None:
        """
        C{ldap://} defaults to port 389, C{ldaps://} to 636 (with TLS); a
        port and an IPv6 address in brackets are understood.
        """
        self.assertEqual(parseLDAPURL("ldap://ldap.corp.example"), LDAPURL("ldap.corp.example", 389, False))
        self.assertEqual(parseLDAPURL("LDAPS://ldap.corp.example/"), LDAPURL("ldap.corp.example", 636, True))
        self.assertEqual(parseLDAPURL("ldap://[2001:db8::1]:3389"), LDAPURL("2001:db8::1", 3389, False))
        self.assertEqual(str(LDAPURL("2001:db8::1", 3389, False)), "ldap://[2001:db8::1]:3389")

    def test_invalid(self) -> None:
        """
        Other schemes, no host, a user, a base DN, a bad port: refused.
        """
        for text in [
            "http://ldap",
            "ldap://",
            "ldap://u:p@ldap",
            "ldap://ldap/dc=corp,dc=example",
            "ldap://ldap?mail",
            "ldap://ldap:99999",
            "ldap.corp.example",
        ]:
            self.assertRaises(ValueError, parseLDAPURL, text)

    def test_loopback(self) -> None:
        """
        C{localhost} and loopback addresses are on this host.
        """
        for host, loopback in [("localhost", True), ("127.0.0.1", True), ("::1", True), ("ldap", False), ("192.0.2.1", False)]:
            self.assertEqual(LDAPURL(host, 389, False).loopback, loopback, host)


class ConfigTests(SynchronousTestCase):
    """
    The C{[directory]} table, through L{imgateway.config.parseConfig}.
    """

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.folder.child("bind-password").setContent(b"s3cret service password\n")

    def parse(self, **directory: object) -> DirectoryConfig:
        """
        Parse a config whose C{[directory]} table is C{directory}.
        """
        data = {"gateway": {"domain": "corp.example", "home_server": "hs7"}, "directory": directory}
        return parseConfig(data, self.folder.child("imgateway.toml"), Clock(), {}).directory  # type: ignore[arg-type]

    def ldap(self, **keys: object) -> LDAPConfig:
        """
        Parse an LDAP directory table with the required keys and C{keys}.
        """
        table: dict[str, object] = {"backend": "ldap", "url": "ldaps://ldap.corp.example", "base_dn": BASE}
        table.update(keys)
        config = self.parse(**table).ldap
        assert config is not None
        return config

    def assertRefused(self, key: str, **directory: object) -> ConfigError:
        """
        Parsing C{directory} fails, naming C{key}.
        """
        e: ConfigError = self.assertRaises(ConfigError, self.parse, **directory)
        self.assertIn(f"[directory]: {key}:", str(e))
        return e

    def test_sqliteDefault(self) -> None:
        """
        Without a C{[directory]} table, or with C{backend = "sqlite"}, the
        directory is SQLite, as before; other keys are then unknown.
        """
        data = {"gateway": {"domain": "corp.example"}}
        self.assertEqual(parseConfig(data, self.folder.child("x.toml"), Clock(), {}).directory, DirectoryConfig())  # type: ignore[arg-type]
        self.assertEqual(self.parse(backend="sqlite"), DirectoryConfig("sqlite", None))
        self.assertRefused("url", backend="sqlite", url="ldap://localhost")
        self.assertRefused("backend", backend="mysql")

    def test_defaults(self) -> None:
        """
        An LDAP table needs C{url} and C{base_dn}; every other key has its
        default: the filter on C{mail}, the home server of the process for
        everyone, no disabled marks, no SCRAM.
        """
        config = self.ldap()
        self.assertEqual(
            config,
            LDAPConfig(url=LDAPURL("ldap.corp.example", 636, True), baseDN=BASE, defaultHome="hs7"),
        )
        self.assertEqual(
            (config.userFilter, config.mailAttribute, config.displayNameAttribute, config.homeAttribute),
            ("(mail={address})", "mail", "displayName", ""),
        )
        self.assertEqual((config.poolSize, config.timeout, config.reconnectDelay, config.reconnectMaxDelay), (2, 10.0, 1.0, 30.0))
        self.assertRefused("url", backend="ldap", base_dn=BASE)
        self.assertRefused("base_dn", backend="ldap", url="ldaps://ldap")

    def test_mailAttribute(self) -> None:
        """
        The default filter follows C{mail_attribute}.
        """
        self.assertEqual(self.ldap(mail_attribute="proxyAddress").userFilter, "(proxyAddress={address})")

    def test_bindPassword(self) -> None:
        """
        The service account's password is read from C{bind_password_file}
        (relative to the config's folder; one trailing newline dropped),
        and never shown by the config's C{repr}.
        """
        config = self.ldap(bind_dn=SERVICE, bind_password_file="bind-password")
        self.assertEqual((config.bindDN, config.bindPassword), (SERVICE, "s3cret service password"))
        self.assertNotIn("s3cret", repr(config))
        self.assertNotIn("s3cret", repr(self.parse(backend="ldap", url="ldaps://l", base_dn=BASE, bind_dn=SERVICE, bind_password_file="bind-password")))

    def test_bindPasswordProblems(self) -> None:
        """
        A bind DN needs a readable, non-empty one-line password file; a
        password file without a bind DN is a mistake; and there is no key
        for the password itself.
        """
        base = {"backend": "ldap", "url": "ldaps://l", "base_dn": BASE}
        self.assertRefused("bind_password_file", **base, bind_dn=SERVICE)
        self.assertRefused("bind_password_file", **base, bind_dn=SERVICE, bind_password_file="missing")
        self.folder.child("empty").setContent(b"\n")
        self.assertRefused("bind_password_file", **base, bind_dn=SERVICE, bind_password_file="empty")
        self.folder.child("two").setContent(b"a\nb\n")
        self.assertRefused("bind_password_file", **base, bind_dn=SERVICE, bind_password_file="two")
        self.assertRefused("bind_password_file", **base, bind_password_file="bind-password")
        self.assertRefused("bind_password", **base, bind_dn=SERVICE, bind_password_file="bind-password", bind_password="s3cret")

    def test_plaintext(self) -> None:
        """
        Passwords never cross the network unencrypted unless the config
        says so: C{ldap://} to another host needs C{start_tls} or
        C{allow_plaintext}; on this host it is allowed. StartTLS on
        C{ldaps://} is a mistake.
        """
        base = {"backend": "ldap", "base_dn": BASE}
        e = self.assertRefused("url", **base, url="ldap://ldap.corp.example")
        self.assertIn("start_tls", str(e))
        self.assertTrue(self.ldap(url="ldap://ldap.corp.example", start_tls=True).encrypted)
        self.assertFalse(self.ldap(url="ldap://ldap.corp.example", allow_plaintext=True).encrypted)
        self.assertFalse(self.ldap(url="ldap://127.0.0.1").encrypted)
        self.assertRefused("start_tls", **base, url="ldaps://ldap", start_tls=True)

    def test_userFilter(self) -> None:
        """
        C{user_filter} must name C{{address}} or C{{local}}, only known
        placeholders, and be a valid filter.
        """
        base = {"backend": "ldap", "url": "ldaps://l", "base_dn": BASE}
        self.assertEqual(self.ldap(user_filter="(&(uid={local})(o={domain}))").userFilter, "(&(uid={local})(o={domain}))")
        self.assertRefused("user_filter", **base, user_filter="(objectClass=person)")
        self.assertRefused("user_filter", **base, user_filter="(mail={mail})")
        self.assertRefused("user_filter", **base, user_filter="(mail={address}")
        self.assertRefused("user_filter", **base, user_filter="(mail={address)")

    def test_attributes(self) -> None:
        """
        Attribute keys take attribute names; C{disabled_values} needs
        C{disabled_attribute}; C{default_home} is a simple name.
        """
        base = {"backend": "ldap", "url": "ldaps://l", "base_dn": BASE}
        config = self.ldap(
            home_attribute="imgatewayHomeServer",
            display_name_attribute="cn",
            disabled_attribute="nsAccountLock",
            disabled_values=["TRUE"],
            scram_attribute="authPassword",
            default_home="hs2",
        )
        self.assertEqual(
            (config.homeAttribute, config.displayNameAttribute, config.disabledAttribute, config.disabledValues),
            ("imgatewayHomeServer", "cn", "nsAccountLock", ("TRUE",)),
        )
        self.assertEqual((config.scramAttribute, config.defaultHome), ("authPassword", "hs2"))
        self.assertRefused("home_attribute", **base, home_attribute="home server")
        self.assertRefused("disabled_values", **base, disabled_values=["TRUE"])
        self.assertRefused("disabled_values", **base, disabled_attribute="x", disabled_values=[""])
        self.assertRefused("default_home", **base, default_home="hs 2")
        self.assertRefused("mail_attribute", **base, mail_attribute="")

    def test_manyServers(self) -> None:
        """
        With C{[servers]} tables, C{default_home} must name one of their
        home servers, the same in every process: it is required when there
        are several (a router's own name, or each home server's, would not
        do), and defaults to the only one otherwise.
        """
        servers = {
            "router": {"roles": ["router"]},
            "hs1": {"roles": ["home"], "link": "127.0.0.1:5311"},
            "hs2": {"roles": ["home", "router"], "link": "127.0.0.1:5312"},
        }
        directory = {"backend": "ldap", "url": "ldaps://ldap.corp.example", "base_dn": BASE}

        def parse(name: str, servers: dict[str, object], **keys: object) -> DirectoryConfig:
            data = {"gateway": {"domain": "corp.example", "home_server": name}, "servers": servers, "directory": {**directory, **keys}}
            return parseConfig(data, self.folder.child("imgateway.toml"), Clock(), {}).directory  # type: ignore[arg-type]

        for name in servers:
            e = self.assertRaises(ConfigError, parse, name, servers)
            self.assertIn("[directory]: default_home: required with several home servers in [servers] (hs1, hs2)", str(e))
            config = parse(name, servers, default_home="hs2").ldap
            assert config is not None
            self.assertEqual(config.defaultHome, "hs2")
            e = self.assertRaises(ConfigError, parse, name, servers, default_home="router")
            self.assertIn("[directory]: default_home: must name a home server of [servers] (hs1, hs2), got 'router'", str(e))
        oneHome = {"router": servers["router"], "hs1": servers["hs1"]}
        config = parse("router", oneHome).ldap
        assert config is not None
        self.assertEqual(config.defaultHome, "hs1")
        self.assertRaises(ConfigError, parse, "router", oneHome, default_home="hs2")

    def test_shippedExample(self) -> None:
        """
        The commented C{[directory]} table of C{etc/imgateway.toml}, once
        uncommented (with C{backend = "ldap"}), shows every key with its
        default (C{url} and C{base_dn} have none: the example's are taken).
        """
        import tomllib

        shipped = FilePath(__file__).parent().parent().child("etc").child("imgateway.toml").getContent().decode()
        block = shipped[shipped.index("\n# [directory]\n") :]
        lines = [line[2:].split("  #")[0] for line in block.splitlines() if line.startswith("# ") and not line.startswith("#  ")]
        table = tomllib.loads("\n".join(line for line in lines if "=" in line or line.startswith("[")))["directory"]
        self.assertEqual(table.pop("backend"), "sqlite")
        keys = set(table)
        config = self.ldap(**table)
        self.assertEqual(config, LDAPConfig(url=config.url, baseDN=config.baseDN, defaultHome="hs1"))
        self.assertEqual(config.defaultHome, "hs1")
        self.assertEqual(
            keys,
            {
                "url", "start_tls", "ca_file", "allow_plaintext", "bind_dn", "bind_password_file", "base_dn",
                "user_filter", "mail_attribute", "display_name_attribute", "home_attribute", "default_home",
                "disabled_attribute", "disabled_values", "scram_attribute", "decoy_dn", "pool_size", "timeout",
                "reconnect_delay", "reconnect_max_delay",
            },
        )

    def test_limits(self) -> None:
        """
        C{pool_size}, C{timeout} and the reconnection delays must be
        positive, the maximum delay at least the first.
        """
        base = {"backend": "ldap", "url": "ldaps://l", "base_dn": BASE}
        self.assertEqual(self.ldap(pool_size=1, timeout=0.5).poolSize, 1)
        for key in ("pool_size", "timeout", "reconnect_delay", "reconnect_max_delay"):
            self.assertRefused(key, **base, **{key: 0})
        self.assertRefused("reconnect_max_delay", **base, reconnect_delay=10, reconnect_max_delay=5)


def verifierOf(password: str, mechanism: str = "SCRAM-SHA-256", iterations: int = 4096) -> tuple[ScramVerifier, str]:
    """
    A verifier of C{password}, and its RFC 5803 form.
    """
    salt = os.urandom(16)
    v = ScramVerifier.derive(SCRAM_HASHES[mechanism], preparePassword(password).encode("utf-8"), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return v, f"{mechanism}${iterations}:{b64(v.salt)}${b64(v.storedKey)}:{b64(v.serverKey)}"


def ldapConfig(**kwargs: Any) -> LDAPConfig:
    """
    An L{LDAPConfig} for the tests: service account, base DN, C{kwargs}.
    """
    values: dict[str, Any] = dict(
        url=LDAPURL("ldap.corp.example", 636, True),
        baseDN=BASE,
        defaultHome="hs1",
        bindDN=SERVICE,
        bindPassword=SERVICE_PASSWORD,
    )
    values.update(kwargs)
    return LDAPConfig(**values)


class MappingTests(SynchronousTestCase):
    """
    L{accountFromEntry} and L{parseRFC5803}.
    """

    def test_plain(self) -> None:
        """
        An entry with only a mail attribute is an enabled account on the
        default home server, without a display name or verifiers.
        """
        record, problems = accountFromEntry(ldapConfig(), ALICE, "uid=alice", {"mail": [b"Alice@Corp.Example"]})
        self.assertEqual((record.address, record.homeServer, record.displayName, record.enabled, record.credentials), (ALICE, "hs1", "", True, ""))
        self.assertEqual(problems, [])

    def test_attributes(self) -> None:
        """
        The display name (first value, UTF-8, without control characters,
        cut to L{MAX_DISPLAY_NAME_CHARS}) and home server come from their
        attributes.
        """
        config = ldapConfig(homeAttribute="imgatewayHomeServer")
        entry = {"displayname": ["Jérôme\x07 Dupont".encode(), b"Other"], "imgatewayhomeserver": [b"hs2"]}
        record, problems = accountFromEntry(config, ALICE, "uid=alice", entry)
        self.assertEqual((record.displayName, record.homeServer, problems), ("Jérôme Dupont", "hs2", []))
        record, _ = accountFromEntry(config, ALICE, "uid=alice", {"displayname": [b"x" * 1000]})
        self.assertEqual(len(record.displayName), MAX_DISPLAY_NAME_CHARS)

    def test_badHome(self) -> None:
        """
        A home server that is no valid name is reported, and the default
        used.
        """
        config = ldapConfig(homeAttribute="imgatewayHomeServer")
        record, problems = accountFromEntry(config, ALICE, "uid=alice", {"imgatewayhomeserver": [b"hs 2; drop"]})
        self.assertEqual(record.homeServer, "hs1")
        self.assertEqual(problems, ["uid=alice: imgatewayHomeServer 'hs 2; drop' is not a home server name; using hs1"])

    def test_disabledByPresence(self) -> None:
        """
        Without C{disabled_values}, any value of C{disabled_attribute}
        disables the account (OpenLDAP's C{pwdAccountLockedTime}).
        """
        config = ldapConfig(disabledAttribute="pwdAccountLockedTime")
        self.assertTrue(accountFromEntry(config, ALICE, "x", {})[0].enabled)
        self.assertFalse(accountFromEntry(config, ALICE, "x", {"pwdaccountlockedtime": [b"000001010000Z"]})[0].enabled)

    def test_disabledByValue(self) -> None:
        """
        With C{disabled_values}, one of them (in any case) disables the
        account; other values do not.
        """
        config = ldapConfig(disabledAttribute="nsAccountLock", disabledValues=("TRUE",))
        self.assertFalse(accountFromEntry(config, ALICE, "x", {"nsaccountlock": [b"true"]})[0].enabled)
        self.assertTrue(accountFromEntry(config, ALICE, "x", {"nsaccountlock": [b"FALSE"]})[0].enabled)
        self.assertTrue(accountFromEntry(config, ALICE, "x", {})[0].enabled)

    def test_scram(self) -> None:
        """
        SCRAM verifiers in the form of RFC 5803 become the account's
        credentials (the first of each mechanism); unreadable ones are
        reported and left out.
        """
        v256, text256 = verifierOf("pw", "SCRAM-SHA-256")
        v1, text1 = verifierOf("pw", "SCRAM-SHA-1")
        config = ldapConfig(scramAttribute="authPassword")
        entry = {"authpassword": [text256.encode(), b"MD5$x$y", text1.encode(), verifierOf("other")[1].encode()]}
        record, problems = accountFromEntry(config, ALICE, "uid=alice", entry)
        stored = StoredCredentials.parse(record.credentials)
        self.assertEqual(stored, StoredCredentials({"SCRAM-SHA-256": v256, "SCRAM-SHA-1": v1}, prepared=True))
        self.assertEqual(len(problems), 1)
        self.assertIn("uid=alice: unreadable authPassword value", problems[0])

    def test_rfc5803(self) -> None:
        """
        L{parseRFC5803} reads C{SCRAM-SHA-1$4096:salt$stored:server}
        (RFC 5803's example form) and refuses anything else.
        """
        verifier, text = verifierOf("pencil", "SCRAM-SHA-1")
        self.assertEqual(parseRFC5803(text.encode()), ("SCRAM-SHA-1", verifier))
        for bad in ["", "SCRAM-SHA-1$4096:c2FsdA==$eA==", "SCRAM-SHA-512$1:c2FsdA==$eA==:eA==", "SCRAM-SHA-1$0:c2FsdA==$eA==:eA==", "SCRAM-SHA-1$x:c2FsdA==$eA==:eA==", "SCRAM-SHA-1$1:!!$eA==:eA=="]:
            self.assertRaises(ValueError, parseRFC5803, bad)


# -- an LDAP server in memory -------------------------------------------------------------------

_DECODER = pureldap.LDAPBERDecoderContext_TopLevel(
    inherit=pureldap.LDAPBERDecoderContext_LDAPMessage(
        fallback=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
        inherit=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
    )
)


class FakeConnection(TLSStringTransport):
    """
    One connection of the LDAP client to L{FakeServer}: what the client
    writes is decoded into requests, answered at once when the server is
    in C{auto} mode, else kept until the test answers (L{answer}).
    """

    def __init__(self, server: FakeServer) -> None:
        super().__init__()
        self.server = server
        self.protocol: Any = None
        self.requests: list[tuple[int, Any]] = []
        self.pending: list[tuple[int, Any]] = []
        self.lost = False
        self._buffer = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        self._buffer += data
        while True:
            try:
                message, used = pureber.berDecodeObject(_DECODER, self._buffer)
            except pureber.BERExceptionInsufficientData:
                return
            if message is None:
                return
            self._buffer = self._buffer[used:]
            self.requests.append((message.id, message.value))
            self.server.log.append((self, message.value))
            if self.server.auto:
                self.answer(message.id, message.value)
            else:
                self.pending.append((message.id, message.value))

    def answer(self, messageID: int, request: Any) -> None:
        """
        Answer a request as the server's handler says.
        """
        for response in self.server.handle(self, request):
            self.receive(pureldap.LDAPMessage(response, id=messageID).toWire())

    def answerPending(self) -> None:
        """
        Answer every request kept so far.
        """
        while self.pending:
            self.answer(*self.pending.pop(0))

    def receive(self, data: bytes) -> None:
        """
        Give the client bytes from the server.
        """
        if not self.lost:
            self.protocol.dataReceived(data)

    def loseConnection(self) -> None:
        super().loseConnection()
        self.drop()

    def abortConnection(self) -> None:
        super().abortConnection()
        self.drop()

    def drop(self, reason: Exception | None = None) -> None:
        """
        The connection ends (from either side).
        """
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class FakeServer:
    """
    An LDAP server in memory, and the endpoint that connects to it.

    @ivar entries: Address to (DN, attributes) of the people.
    @ivar passwords: DN to password.
    @ivar auto: Whether requests are answered as soon as they are sent.
    @ivar refuse: Whether connection attempts fail.
    @ivar hang: Whether connection attempts never end (until cancelled).
    @ivar connections: Every connection made.
    @ivar log: Every request, with its connection.
    @ivar searchResult: The result code of searches.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, list[tuple[str, list[bytes]]]]] = {}
        self.passwords: dict[str, str] = {SERVICE: SERVICE_PASSWORD}
        self.auto = True
        self.refuse = False
        self.hang = False
        self.connections: list[FakeConnection] = []
        self.attempts = 0
        self.log: list[tuple[FakeConnection, Any]] = []
        self.searchResult = 0

    def add(self, address: Address, password: str, **attributes: Sequence[bytes]) -> str:
        """
        Add a person, C{uid=<local>,ou=people,...}, with their address as
        C{mail}.

        @return: Their DN.
        """
        dn = f"uid={address.local},{BASE}"
        self.entries[str(address)] = (dn, [("mail", [str(address).encode()])] + [(k, list(v)) for k, v in attributes.items()])
        self.passwords[dn] = password
        return dn

    def connect(self, factory: Any) -> Deferred[Any]:
        """
        L{IStreamClientEndpoint.connect}.
        """
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError("refused by the test"))
        if self.hang:
            return Deferred(lambda d: None)
        protocol = factory.buildProtocol(None)
        connection = FakeConnection(self)
        connection.protocol = protocol
        self.connections.append(connection)
        protocol.makeConnection(connection)
        return succeed(protocol)

    def handle(self, connection: FakeConnection, request: Any) -> list[Any]:
        """
        The responses to a request.
        """
        if isinstance(request, pureldap.LDAPBindRequest):
            dn = request.dn.decode() if isinstance(request.dn, bytes) else request.dn
            auth = request.auth.decode() if isinstance(request.auth, bytes) else request.auth
            ok = dn in self.passwords and auth and self.passwords[dn] == auth
            return [pureldap.LDAPBindResponse(resultCode=0 if ok else 49)]
        if isinstance(request, pureldap.LDAPSearchRequest):
            if self.searchResult:
                return [pureldap.LDAPSearchResultDone(resultCode=self.searchResult, errorMessage="no such object")]
            found = []
            f = request.filter
            if isinstance(f, pureldap.LDAPFilter_equalityMatch) and f.attributeDesc.value in (b"mail", "mail"):
                value = f.assertionValue.value
                entry = self.entries.get(value.decode() if isinstance(value, bytes) else value)
                if entry is not None:
                    found.append(entry)
            else:
                found = list(self.entries.values())
            return [pureldap.LDAPSearchResultEntry(dn, attributes) for dn, attributes in found] + [
                pureldap.LDAPSearchResultDone(resultCode=0)
            ]
        if isinstance(request, pureldap.LDAPExtendedRequest):
            return [pureldap.LDAPExtendedResponse(resultCode=0, responseName=pureldap.LDAPStartTLSRequest.oid)]
        return []

    def requests(self, kind: type | None = None) -> list[Any]:
        """
        The requests received so far (of C{kind}).
        """
        return [r for _, r in self.log if kind is None or isinstance(r, kind)]

    def binds(self) -> list[tuple[int, str]]:
        """
        The binds received so far: connection number and DN.
        """
        return [
            (self.connections.index(c), r.dn.decode() if isinstance(r.dn, bytes) else r.dn)
            for c, r in self.log
            if isinstance(r, pureldap.LDAPBindRequest)
        ]


class DirectoryTestsMixin:
    """
    An L{LDAPDirectory} on a L{FakeServer} and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeServer()
        self.aliceDN = self.server.add(ALICE, "alice-pw", displayName=[b"Alice Liddell"])

    def directory(self, **kwargs: Any) -> LDAPDirectory:
        """
        A directory with the test config and C{kwargs}, closed when the
        test ends.
        """
        directory = LDAPDirectory(self.clock, ldapConfig(**kwargs), endpoint=self.server, random=lambda: 0.0)  # type: ignore[arg-type]
        self.addCleanup(self.close, directory)  # type: ignore[attr-defined]
        return directory

    def close(self, directory: LDAPDirectory) -> None:
        """
        Close the directory; no timer may be left.
        """
        self.successResultOf(directory.close())  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]


class DirectoryTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    L{LDAPDirectory}'s look-ups and password checks.
    """

    def test_interfaces(self) -> None:
        """
        It is an L{IPasswordDirectory} (and so an L{IDirectory}); SCRAM is
        available when a verifier attribute is configured.
        """
        directory = self.directory()
        verifyObject(IPasswordDirectory, directory)
        verifyObject(IDirectory, directory)
        self.assertFalse(directory.scramAvailable)
        self.assertTrue(self.directory(scramAttribute="authPassword").scramAvailable)

    def test_getAccount(self) -> None:
        """
        A look-up binds as the service account once per connection, then
        searches the base DN's subtree with the user filter, asking for the
        configured attributes and at most two entries.
        """
        directory = self.directory(homeAttribute="imgatewayHomeServer")
        record = self.successResultOf(directory.getAccount(ALICE))
        assert record is not None
        self.assertEqual((record.address, record.displayName, record.homeServer), (ALICE, "Alice Liddell", "hs1"))
        binds = self.server.requests(pureldap.LDAPBindRequest)
        self.assertEqual({(text(b.dn), text(b.auth)) for b in binds}, {(SERVICE, SERVICE_PASSWORD)})
        [search] = self.server.requests(pureldap.LDAPSearchRequest)
        self.assertEqual((text(search.baseObject), search.scope, search.sizeLimit), (BASE, pureldap.LDAP_SCOPE_wholeSubtree, 2))
        self.assertEqual([text(a) for a in search.attributes], ["mail", "displayName", "imgatewayHomeServer"])
        self.assertEqual(search.filter.toWire(), equality("mail", b"alice@corp.example").toWire())
        self.assertIsNone(self.successResultOf(directory.getAccount(NOBODY)))
        self.assertEqual(len(self.server.requests(pureldap.LDAPBindRequest)), len(binds))

    def test_ambiguous(self) -> None:
        """
        An address that several entries match is unknown (and logged).
        """
        directory = self.directory()
        twin = self.server.entries[str(ALICE)]
        original = self.server.handle

        def twice(connection: FakeConnection, request: Any) -> list[Any]:
            responses = original(connection, request)
            if isinstance(request, pureldap.LDAPSearchRequest):
                responses.insert(0, pureldap.LDAPSearchResultEntry("uid=alice2," + BASE, twin[1]))
            return responses

        self.server.handle = twice  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(directory.getAccount(ALICE)))
        self.assertEqual([e["address"] for e in events if "several" in e["log_format"]], ["alice@corp.example"])

    def test_checkPassword(self) -> None:
        """
        A password is checked by a bind as the user's entry: the right one
        gives the account, a wrong one C{None}.
        """
        directory = self.directory()
        record = self.successResultOf(directory.checkPassword(ALICE, "alice-pw"))
        assert record is not None
        self.assertEqual(record.address, ALICE)
        self.assertIsNone(self.successResultOf(directory.checkPassword(ALICE, "wrong")))
        userBinds = [(text(b.dn), text(b.auth)) for b in self.server.requests(pureldap.LDAPBindRequest) if text(b.dn) != SERVICE]
        self.assertEqual(userBinds, [(self.aliceDN, "alice-pw"), (self.aliceDN, "wrong")])

    def test_unknownUserBinds(self) -> None:
        """
        For an unknown user the bind is made all the same, with the
        password given, as a DN that does not exist: the same exchanges as
        for a wrong password.
        """
        directory = self.directory()
        self.assertIsNone(self.successResultOf(directory.checkPassword(NOBODY, "guess")))
        last = self.server.requests(pureldap.LDAPBindRequest)[-1]
        self.assertEqual((text(last.dn), text(last.auth)), (f"{DECOY_RDN},{BASE}", "guess"))
        kinds = [type(r).__name__ for r in self.server.requests() if not (isinstance(r, pureldap.LDAPBindRequest) and text(r.dn) == SERVICE)]
        self.assertEqual(kinds, ["LDAPSearchRequest", "LDAPBindRequest"])

    def test_decoyDN(self) -> None:
        """
        C{decoy_dn} names the entry the unknown users' binds are made as.
        """
        decoy = "uid=decoy,ou=system,dc=corp,dc=example"
        directory = self.directory(decoyDN=decoy)
        self.assertIsNone(self.successResultOf(directory.checkPassword(NOBODY, "guess")))
        last = self.server.requests(pureldap.LDAPBindRequest)[-1]
        self.assertEqual((text(last.dn), text(last.auth)), (decoy, "guess"))

    def test_emptyPassword(self) -> None:
        """
        An empty password is never sent: the server would take the bind for
        an anonymous one, and accept it.
        """
        directory = self.directory()
        self.assertIsNone(self.successResultOf(directory.checkPassword(ALICE, "")))
        self.assertEqual(self.server.requests(), [])

    def test_serviceRebind(self) -> None:
        """
        A connection that served a user's bind is bound as the service
        account again before its next search; with two connections, the
        search goes to the one still bound as the service account.
        """
        directory = self.directory(poolSize=1)
        self.successResultOf(directory.checkPassword(ALICE, "alice-pw"))
        self.successResultOf(directory.getAccount(ALICE))
        self.assertEqual(
            [dn for _, dn in self.server.binds()], [SERVICE, self.aliceDN, SERVICE]
        )
        self.server.log.clear()
        directory = self.directory(poolSize=2)
        directory.start()
        self.successResultOf(directory.checkPassword(ALICE, "alice-pw"))
        self.successResultOf(directory.getAccount(ALICE))
        self.assertEqual([dn for _, dn in self.server.binds()], [SERVICE, SERVICE, self.aliceDN])

    def test_searchError(self) -> None:
        """
        A search the server answers with an error (a wrong base DN) fails
        with L{DirectoryUnavailable}; the error is logged once a minute.
        """
        directory = self.directory()
        self.server.searchResult = 32
        with capturedLogs() as events:
            for _ in range(3):
                f = self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.assertIn("noSuchObject (32)", str(f.value))
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("noSuchObject (32)", errors[0]["problem"])

    def test_readOnly(self) -> None:
        """
        Writes are refused with L{PersistenceFailed} naming the directory.
        """
        directory = self.directory()
        from imgateway.core.records import AccountRecord

        f = self.failureResultOf(directory.addAccount(AccountRecord(BOB, "hs1", "", True, "")), PersistenceFailed)
        self.assertIn("ldaps://ldap.corp.example:636", str(f.value))
        self.assertIn("read-only", str(f.value))
        self.failureResultOf(directory.updateAccount(ALICE, enabled=False), PersistenceFailed)
        self.assertEqual(self.server.attempts, 0)

    def test_listAccounts(self) -> None:
        """
        The accounts are listed by their address, in order; a domain's by
        a substring filter. An address of several entries is left out (no
        one has it, as for a look-up); past the server's size limit the
        list fails rather than be cut.
        """
        directory = self.directory()
        self.server.add(BOB, "bob-pw")
        records = self.successResultOf(directory.listAccounts("corp.example"))
        self.assertEqual([r.address for r in records], [ALICE, BOB])
        [search] = self.server.requests(pureldap.LDAPSearchRequest)
        self.assertIsInstance(search.filter, pureldap.LDAPFilter_substrings)
        self.server.entries["twin"] = ("uid=bob2," + BASE, self.server.entries[str(BOB)][1])
        records = self.successResultOf(directory.listAccounts("corp.example"))
        self.assertEqual([r.address for r in records], [ALICE])
        self.server.searchResult = 4
        self.failureResultOf(directory.listAccounts(), DirectoryUnavailable)

    def test_startTLS(self) -> None:
        """
        With C{start_tls}, a new connection asks for StartTLS and starts
        TLS before it binds.
        """
        directory = self.directory(url=LDAPURL("ldap.corp.example", 389, False), startTLS=True)
        self.successResultOf(directory.getAccount(ALICE))
        [connection, _] = self.server.connections
        first, second = [r for _, r in connection.requests][:2]
        self.assertIsInstance(first, pureldap.LDAPExtendedRequest)
        self.assertEqual(text(first.requestName), text(pureldap.LDAPStartTLSRequest.oid))
        self.assertIsInstance(second, pureldap.LDAPBindRequest)
        self.assertIsNotNone(connection.tlsOptions)
        self.assertEqual(connection.bytesBeforeTLS, connection.value()[: len(connection.bytesBeforeTLS or b"")])


class PoolTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    L{LDAPDirectory}'s connections: waiting, timeouts, failures and
    reconnection.
    """

    def test_unreachableFailsAtOnce(self) -> None:
        """
        While no connection is up, operations fail at once with
        L{DirectoryUnavailable}; the outage is logged once, and each
        connection retries after C{reconnect_delay}, backing off up to
        C{reconnect_max_delay}.
        """
        self.server.refuse = True
        directory = self.directory(poolSize=1, reconnectDelay=1.0, reconnectMaxDelay=5.0)
        with capturedLogs() as events:
            f = self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
            self.failureResultOf(directory.checkPassword(ALICE, "alice-pw"), DirectoryUnavailable)
        self.assertIn("unreachable", str(f.value))
        self.assertIn("refused by the test", str(f.value))
        self.assertEqual([e["log_level"].name for e in events if "unreachable" in e["log_format"]], ["warn"])
        attempts = []
        for _ in range(6):
            before = self.server.attempts
            delay = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            attempts.append(delay)
            self.clock.advance(delay)
            self.assertEqual(self.server.attempts, before + 1)
        self.assertEqual(attempts, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0])

    def test_recovers(self) -> None:
        """
        Once the server is back, the next attempt connects, the recovery is
        logged, and operations work again.
        """
        self.server.refuse = True
        directory = self.directory(poolSize=1)
        self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.server.refuse = False
        with capturedLogs() as events:
            self.clock.advance(1.0)
        self.assertEqual([e["log_format"] for e in events], ["LDAP directory {url} is reachable again"])
        self.assertIsNotNone(self.successResultOf(directory.getAccount(ALICE)))

    def test_lostConnectionRetried(self) -> None:
        """
        A connection lost during an operation: the operation runs again on
        another connection, and the lost one reconnects at once (it had
        been up a while).
        """
        directory = self.directory(poolSize=2)
        directory.start()
        self.clock.advance(5)
        self.server.auto = False
        d = directory.getAccount(ALICE)
        self.assertNoResult(d)
        [busy] = [c for c in self.server.connections if c.pending]
        busy.drop()
        self.assertNoResult(d)
        self.assertEqual(len(self.server.connections), 3)
        self.server.auto = True
        for c in self.server.connections:
            c.answerPending()
        self.assertEqual(self.successResultOf(d).address, ALICE)  # type: ignore[union-attr]

    def test_lostTwice(self) -> None:
        """
        An operation whose connection is lost twice fails with
        L{DirectoryUnavailable}.
        """
        directory = self.directory(poolSize=1)
        directory.start()
        self.clock.advance(5)
        self.server.auto = False
        d = directory.getAccount(ALICE)
        self.server.connections[-1].drop()
        again = self.server.connections[-1]
        again.answer(*again.pending.pop(0))
        self.assertIsInstance(again.pending[0][1], pureldap.LDAPSearchRequest)
        self.clock.advance(5)
        self.server.connections[-1].drop()
        f = self.failureResultOf(d, DirectoryUnavailable)
        self.assertIn("lost", str(f.value))

    def test_timeout(self) -> None:
        """
        An operation without an answer within C{timeout} fails with
        L{DirectoryUnavailable}, and its connection is dropped (and
        reconnected).
        """
        directory = self.directory(poolSize=1, timeout=3.0)
        directory.start()
        self.server.auto = False
        first = self.server.connections[0]
        first.answerPending()
        self.clock.advance(5)
        d = directory.getAccount(ALICE)
        with capturedLogs() as events:
            self.clock.advance(2.9)
            self.assertNoResult(d)
            self.clock.advance(0.1)
        f = self.failureResultOf(d, DirectoryUnavailable)
        self.assertIn("within 3 s", str(f.value))
        self.assertTrue(first.lost)
        self.assertEqual(len(self.server.connections), 2)
        self.assertEqual(len([e for e in events if "took more than" in e["log_format"]]), 1)

    def test_connectTimeout(self) -> None:
        """
        A connection attempt that does not end within C{timeout} is given
        up and retried later.
        """
        self.server.hang = True
        directory = self.directory(poolSize=1, timeout=2.0)
        d = directory.getAccount(ALICE)
        self.assertNoResult(d)
        with capturedLogs() as events:
            self.clock.advance(2.0)
        f = self.failureResultOf(d, DirectoryUnavailable)
        self.assertIn("no connection within 2 s", str(f.value))
        self.assertEqual(len([e for e in events if "unreachable" in e["log_format"]]), 1)

    def test_noWaitForRetries(self) -> None:
        """
        During an outage, an operation does not wait for a retry under way
        (which may take up to C{timeout}): it fails at once. At start, it
        waits for the first connections.
        """
        self.server.hang = True
        directory = self.directory(poolSize=1, timeout=2.0)
        first = directory.getAccount(ALICE)
        self.assertNoResult(first)
        self.clock.advance(2.0)
        self.failureResultOf(first, DirectoryUnavailable)
        self.clock.advance(1.0)
        self.assertEqual(self.server.attempts, 2)
        self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.clock.advance(2.0)

    def test_waitForFreeConnection(self) -> None:
        """
        With every connection busy, an operation waits for one, at most
        C{timeout} seconds.
        """
        directory = self.directory(poolSize=1, timeout=3.0)
        directory.start()
        self.server.auto = False
        connection = self.server.connections[0]
        connection.answerPending()
        first, second = directory.getAccount(ALICE), directory.getAccount(ALICE)
        self.assertEqual(len(connection.pending), 1)
        connection.answerPending()
        self.assertIsNotNone(self.successResultOf(first))
        connection.answerPending()
        self.assertIsNotNone(self.successResultOf(second))
        busy, waiting = directory.getAccount(ALICE), directory.getAccount(ALICE)
        self.clock.advance(3.0)
        f = self.failureResultOf(waiting, DirectoryUnavailable)
        self.assertIn("no LDAP connection free within 3 s", str(f.value))
        self.failureResultOf(busy, DirectoryUnavailable)

    def test_serviceBindRefused(self) -> None:
        """
        A refused bind of the service account (a wrong password in
        C{bind_password_file}) leaves the directory unreachable, and says
        why.
        """
        self.server.passwords[SERVICE] = "changed"
        directory = self.directory(poolSize=1)
        with capturedLogs() as events:
            f = self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.assertIn(f"the bind as {SERVICE} was refused: invalidCredentials (49)", str(f.value))
        self.assertIn("invalidCredentials", events[-1]["why"])

    def test_oversizedAnswer(self) -> None:
        """
        An answer larger than L{MAX_MESSAGE_BYTES} drops the connection.
        """
        directory = self.directory(poolSize=1)
        directory.start()
        self.clock.advance(5)
        connection = self.server.connections[0]
        with capturedLogs() as events:
            connection.receive(b"\x30\x84\x7f\xff\xff\xff" + b"x" * MAX_MESSAGE_BYTES)
        self.assertTrue(connection.lost)
        self.assertEqual([e["log_level"].name for e in events if e["log_level"].name != "debug"], ["warn"])

    def test_garbage(self) -> None:
        """
        An answer that cannot be decoded drops the connection, logged, with
        no traceback.
        """
        directory = self.directory(poolSize=1)
        directory.start()
        self.clock.advance(5)
        connection = self.server.connections[0]
        with capturedLogs() as events:
            connection.receive(b"\x30\x03\x02\x01\x09")
        self.assertTrue(connection.lost)
        self.assertEqual([e["log_level"].name for e in events if e["log_level"].name != "debug"], ["warn"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_close(self) -> None:
        """
        Closing unbinds and closes every connection, cancels the retries,
        fails the operations waiting, and refuses new ones.
        """
        directory = self.directory(poolSize=2)
        directory.start()
        self.server.auto = False
        for c in self.server.connections:
            c.answerPending()
        busy = [directory.getAccount(ALICE) for _ in range(3)]
        d = directory.close()
        self.successResultOf(d)
        self.assertTrue(all(c.lost for c in self.server.connections))
        self.assertEqual(len(self.server.requests(pureldap.LDAPUnbindRequest)), 2)
        for op in busy:
            self.failureResultOf(op, DirectoryUnavailable)
        self.failureResultOf(directory.getAccount(ALICE), DirectoryUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeWhileRetrying(self) -> None:
        """
        Closing while the connections wait to retry cancels the retries.
        """
        self.server.refuse = True
        directory = self.directory(poolSize=2)
        directory.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.successResultOf(directory.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
