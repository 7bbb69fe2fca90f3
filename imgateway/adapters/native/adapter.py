# -*- test-case-name: tests.test_native_server,tests.test_native_client -*-
"""
The native protocol adapter: the C{[native]} config table and the face's
listeners.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from imgateway.adapters.base import ListenerService
from imgateway.adapters.native.framing import CLIENT_LIMITS, MAX_SEQ
from imgateway.adapters.native.server import NativeConfig, NativeServerFactory, largestListAnswers
from imgateway.config import ConfigTable, HomeConfig
from imgateway.interfaces import IGateway, IProtocolAdapter

__all__ = ["NativeAdapter"]

log = Logger()


def _checkAnswerSizes(home: HomeConfig) -> None:
    """
    Warn if the quotas of C{home} let list answers grow larger than the
    shipped client reads (C{docs/protocol.md} section 3.2).
    """
    limit = CLIENT_LIMITS.maxBodyBytes
    for method, size in largestListAnswers(home).items():
        if size > limit:
            log.warn(
                "{method} answers may reach {size} bytes under the [home] quotas ({keys}), more than"
                " the shipped client reads ({limit} bytes): its users with lists that long could not read them",
                method=method,
                size=size,
                keys=_QUOTA_KEYS[method],
                limit=limit,
            )


#: The [home] keys that bound each list answer.
_QUOTA_KEYS = {
    "CONTACTS": "max_contacts, max_pending_requests",
    "ACCESS": "max_access_entries",
    "RULE": "max_rules",
}


class _NativeService(MultiService):
    def __init__(self, factory: NativeServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def stopService(self) -> Any:
        # Tell every client, logged in or not, before the listeners go.
        self.factory.sayGoodbye("shutdown")
        return super().stopService()


@implementer(IPlugin, IProtocolAdapter)
class NativeAdapter:
    """
    The native (IMPP-like) protocol: see C{docs/protocol.md}.
    """

    name = "native"
    description = "imgateway's native IMPP-like protocol (docs/protocol.md)"

    def parseConfig(self, table: ConfigTable, reactor: IReactorCore) -> NativeConfig:
        t = table
        d = NativeConfig()
        config = NativeConfig(
            listen=t.endpoints("listen", reactor, d.listen),
            maxStartLineBytes=t.positive("max_start_line_bytes", int, d.maxStartLineBytes),
            maxHeaderBytes=t.positive("max_header_bytes", int, d.maxHeaderBytes),
            maxHeaders=t.positive("max_headers", int, d.maxHeaders),
            maxBodyBytes=t.positive("max_body_bytes", int, d.maxBodyBytes),
            requestsPerSecond=t.positive("requests_per_second", float, d.requestsPerSecond),
            requestBurst=t.positive("request_burst", int, d.requestBurst),
            maxUnauthenticated=t.positive("max_unauthenticated", int, d.maxUnauthenticated),
            loginTimeout=t.positive("login_timeout", float, d.loginTimeout),
            idleTimeout=t.positive("idle_timeout", float, d.idleTimeout),
            maxAuthAttempts=t.positive("max_auth_attempts", int, d.maxAuthAttempts),
            allowPlaintextAuth=t.get("allow_plaintext_auth", bool, d.allowPlaintextAuth),
            maxSendQueueBytes=t.positive("max_send_queue_bytes", int, d.maxSendQueueBytes),
            framesPerTurn=t.positive("frames_per_turn", int, d.framesPerTurn),
            answerWindow=t.positive("answer_window", int, d.answerWindow),
            preAuthBytes=t.positive("pre_auth_bytes", int, d.preAuthBytes),
        )
        if config.maxStartLineBytes < 64:
            raise t.error("max_start_line_bytes", "must be at least 64")
        if config.maxHeaderBytes < 256:
            raise t.error("max_header_bytes", "must be at least 256")
        if config.answerWindow >= MAX_SEQ:
            raise t.error("answer_window", f"must be below {MAX_SEQ}")
        return config

    def makeService(self, gateway: IGateway, config: object) -> IService:
        assert isinstance(config, NativeConfig)
        _checkAnswerSizes(gateway.config.home)
        factory = NativeServerFactory(gateway, config)
        top = _NativeService(factory)
        for description in config.listen:
            ListenerService(gateway.reactor, description, factory, "Native face").setServiceParent(top)
        return top
