# -*- test-case-name: tests.test_xmpp_c2s -*-
"""
The XMPP protocol adapter: the C{[xmpp]} config table and the services of
its faces.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from attrs import frozen
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.plugin import IPlugin
from zope.interface import implementer

from imgateway.adapters.xmpp.c2s import C2SConfig, C2SFactory
from imgateway.adapters.xmpp.component import ComponentConfig, makeComponentService, parseComponents
from imgateway.adapters.xmpp.federation_service import FederationConfig, FederationService
from imgateway.adapters.xmpp.s2s import S2S_LIMITS, S2SConfig
from imgateway.adapters.xmpp.stream import IDLE_PARSER_SECONDS, StreamLimits
from imgateway.core.address import normaliseDomain
from imgateway.core.errors import InvalidAddress
from imgateway.adapters.base import ListenerService
from imgateway.config import ConfigTable
from imgateway.interfaces import IGateway, IProtocolAdapter
from imgateway.malloctrim import MALLOC_TRIM_SECONDS
from imgateway.net.certificates import CertificateProblem, keyMatches, loadCertificates, loadPrivateKey, loadTrustRootFile
from imgateway.net.endpoints import clientEndpointFromString
from imgateway.net.tls import TLSFiles

__all__ = ["XMPPAdapter", "XMPPConfig"]



@frozen
class XMPPConfig:
    """
    The parsed C{[xmpp]} table.
    """

    c2s: C2SConfig
    tls: TLSFiles | None
    components: tuple[ComponentConfig, ...] = ()
    federation: FederationConfig | None = None


def _loadTLS(t: ConfigTable) -> TLSFiles | None:
    certificate = t.path("certificate")
    key = t.path("private_key")
    if (certificate is None) != (key is None):
        raise t.error("certificate" if certificate is None else "private_key", "certificate and private_key go together")
    if certificate is None or key is None:
        return None
    try:
        chain = loadCertificates(certificate)
    except CertificateProblem as e:
        raise t.error("certificate", str(e)) from None
    try:
        privateKey = loadPrivateKey(key)
    except CertificateProblem as e:
        raise t.error("private_key", str(e)) from None
    if not keyMatches(chain[0], privateKey):
        raise t.error("private_key", f"{key} does not match the certificate in {certificate}")
    return TLSFiles(certificate, key, chain, privateKey)


def _trustRoots(t: ConfigTable, key: str) -> str | None:
    """
    The path of a PEM file of CA certificates, checked.
    """
    path = t.path(key)
    if path is not None:
        try:
            loadTrustRootFile(path)
        except CertificateProblem as e:
            raise t.error(key, str(e)) from None
    return path


def _secretFile(t: ConfigTable, key: str) -> str | None:
    """
    The path of a secret's file, which need not exist yet (it is created
    on first use); relative to the config file's folder.
    """
    value = t.get(key, str, None)
    if value is None:
        return None
    if not value:
        raise t.error(key, "must not be empty")
    full = os.path.normpath(os.path.join(t.baseDir, os.path.expanduser(value)))
    if not os.path.isdir(os.path.dirname(full)):
        raise t.error(key, f"the folder of {full} does not exist")
    return full


def _parseFederation(t: ConfigTable, reactor: IReactorCore, tls: TLSFiles | None) -> FederationConfig | None:
    """
    The C{federation} and C{s2s_*} keys of C{[xmpp]}.
    """
    enabled = t.get("federation", bool, False)
    d = S2SConfig()
    l = S2S_LIMITS
    routesTable = t.get("s2s_routes", dict, {})
    routes: dict[str, str] = {}
    for domain, endpoint in routesTable.items():
        if not isinstance(endpoint, str):
            raise t.error("s2s_routes", f"{domain}: expected a client endpoint string, got {endpoint!r}")
        try:
            normal = normaliseDomain(domain)
            clientEndpointFromString(reactor, endpoint)
        except (InvalidAddress, ValueError) as e:
            raise t.error("s2s_routes", f"{domain} = {endpoint!r}: {e}") from None
        routes[normal] = endpoint
    limits = attrs.evolve(
        l,
        stanzaBytes=t.positive("s2s_stanza_bytes", int, l.stanzaBytes),
        stanzasPerSecond=t.positive("s2s_stanzas_per_second", float, l.stanzasPerSecond),
        stanzaBurst=t.positive("s2s_stanza_burst", int, l.stanzaBurst),
        maxQueuedStanzas=t.positive("s2s_stanza_queue", int, l.maxQueuedStanzas),
    )
    s2s = S2SConfig(
        listen=t.endpoints("s2s_listen", reactor, d.listen),
        routes=routes,
        useDNS=t.get("s2s_use_dns", bool, d.useDNS),
        requireTLS=t.get("s2s_require_tls", bool, d.requireTLS),
        verifyCertificates=t.get("s2s_verify_certificates", bool, d.verifyCertificates),
        allowDialback=t.get("s2s_allow_dialback", bool, d.allowDialback),
        trustRoots=_trustRoots(t, "s2s_trust_roots"),
        limits=limits,
        connectTimeout=t.positive("s2s_connect_timeout", float, d.connectTimeout),
        maxQueuedStanzas=t.positive("s2s_max_queued_stanzas", int, d.maxQueuedStanzas),
        maxIncomingStreams=t.positive("s2s_max_incoming_streams", int, d.maxIncomingStreams),
        maxUnauthenticated=t.positive("s2s_max_unauthenticated", int, d.maxUnauthenticated),
        negotiationTimeout=t.positive("s2s_negotiation_timeout", float, d.negotiationTimeout),
        maxDomainsPerStream=t.positive("s2s_max_domains_per_stream", int, d.maxDomainsPerStream),
        maxPendingDialback=t.positive("s2s_max_pending_dialback", int, d.maxPendingDialback),
        maxPendingDialbackPerAddress=t.positive(
            "s2s_max_pending_dialback_per_address", int, d.maxPendingDialbackPerAddress
        ),
        maxAuthAttempts=t.positive("s2s_max_auth_attempts", int, d.maxAuthAttempts),
    )
    config = FederationConfig(
        s2s=s2s,
        defaultRoute=t.get("s2s_default_route", bool, True),
        statusWait=t.positive("s2s_status_wait", float, 1.0),
        dialbackSecretFile=_secretFile(t, "s2s_dialback_secret_file"),
    )
    if not enabled:
        return None
    if not s2s.verifyCertificates and not s2s.allowDialback:
        raise t.error("s2s_allow_dialback", "peers cannot authenticate with s2s_verify_certificates and s2s_allow_dialback both false")
    if tls is None and (s2s.requireTLS or s2s.listen):
        raise t.error("federation", "federation needs certificate and private_key (the domain's certificate)")
    return config


class _XMPPService(MultiService):
    def __init__(self, c2s: C2SFactory) -> None:
        super().__init__()
        self.c2s = c2s

    def stopService(self) -> Any:
        self.c2s.sayGoodbye()
        return super().stopService()


@implementer(IPlugin, IProtocolAdapter)
class XMPPAdapter:
    """
    XMPP (RFC 6120/6121): a c2s face for standard clients, federation with
    other XMPP servers (s2s), and XEP-0114 component links.
    """

    name = "xmpp"
    description = "XMPP: c2s face (RFC 6120/6121), s2s federation, XEP-0114 components"

    def parseConfig(self, table: ConfigTable, reactor: IReactorCore) -> XMPPConfig:
        t = table
        d = C2SConfig()
        l = StreamLimits()
        limits = StreamLimits(
            preAuthStanzaBytes=t.positive("pre_auth_stanza_bytes", int, l.preAuthStanzaBytes),
            preAuthElements=t.positive("pre_auth_elements", int, l.preAuthElements),
            stanzaBytes=t.positive("stanza_bytes", int, l.stanzaBytes),
            elements=t.positive("stanza_elements", int, l.elements),
            stanzasPerSecond=t.positive("stanzas_per_second", float, l.stanzasPerSecond),
            stanzaBurst=t.positive("stanza_burst", int, l.stanzaBurst),
            maxQueuedStanzas=t.positive("stanza_queue", int, l.maxQueuedStanzas),
            sendQueueBytes=t.positive("max_send_queue_bytes", int, l.sendQueueBytes),
            idleParserSeconds=t.positive("idle_parser_seconds", float, IDLE_PARSER_SECONDS),
        )
        c2s = C2SConfig(
            listen=t.endpoints("listen", reactor, d.listen),
            requireTLS=t.get("require_tls", bool, d.requireTLS),
            allowPlaintextAuth=t.get("allow_plaintext_auth", bool, d.allowPlaintextAuth),
            limits=limits,
            loginTimeout=t.positive("login_timeout", float, d.loginTimeout),
            maxUnauthenticated=t.positive("max_unauthenticated", int, d.maxUnauthenticated),
            maxAuthAttempts=t.positive("max_auth_attempts", int, d.maxAuthAttempts),
            mallocTrimSeconds=t.get("malloc_trim_seconds", float, MALLOC_TRIM_SECONDS),
        )
        if c2s.mallocTrimSeconds < 0:
            raise t.error("malloc_trim_seconds", "must be 0 (never) or more")
        if limits.preAuthStanzaBytes < 1024:
            raise t.error("pre_auth_stanza_bytes", "must be at least 1024 (a stream header must fit)")
        if limits.stanzaBytes < 10000:
            raise t.error("stanza_bytes", "must be at least 10000 (RFC 6120 13.12)")
        tls = _loadTLS(t)
        if c2s.requireTLS and tls is None and c2s.listen:
            raise t.error(
                "require_tls", "true needs certificate and private_key (set require_tls = false to allow clients without TLS)"
            )
        return XMPPConfig(c2s, tls, parseComponents(t, reactor), _parseFederation(t, reactor, tls))

    def makeService(self, gateway: IGateway, config: object) -> IService:
        assert isinstance(config, XMPPConfig)
        tls = config.tls.options([b"xmpp-client"]) if config.tls is not None else None
        c2s = C2SFactory(gateway, config.c2s, tls)
        top = _XMPPService(c2s)
        for description in config.c2s.listen:
            ListenerService(gateway.reactor, description, c2s, "XMPP c2s").setServiceParent(top)
        for component in config.components:
            makeComponentService(gateway, component).setServiceParent(top)
        if config.federation is not None:
            FederationService(gateway, config.federation, config.tls).setServiceParent(top)
        return top
