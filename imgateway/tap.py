# -*- test-case-name: tests.test_plugins,tests.e2e.test_operator,tests.e2e.test_native_gateway -*-
"""
C{twistd imgateway}: options and service construction for the twistd plugin.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from imgateway import __version__
from imgateway.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG_PATH, DEFAULT_GC_YOUNG_OBJECTS, findConfig
from imgateway.core.errors import ConfigError

__all__ = ["Options", "freezeStartupHeap", "makeService"]


class Options(usage.Options):
    """
    Options of C{twistd imgateway}.

    @ivar environ: Where C{$IMGATEWAY_CONFIG} is read.
    @ivar defaultConfig: The file read when neither C{--config} nor
        C{$IMGATEWAY_CONFIG} names one.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the imgateway home server and its protocol faces, as the "
        "configuration file says. The file is checked whole before any port "
        "is opened."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"Configuration file (TOML). Default: ${CONFIG_ENVIRONMENT} if set, else {DEFAULT_CONFIG_PATH}.",
        ],
    ]

    environ: Mapping[str, str] = os.environ
    defaultConfig = DEFAULT_CONFIG_PATH

    def postOptions(self) -> None:
        from imgateway.net.reactor import installDefault

        # Unless twistd --reactor chose one: sends in the turn that wrote.
        installDefault()
        from twisted.internet import reactor

        from imgateway.config import loadConfig
        from imgateway.plugins import adapterConfigParsers

        try:
            path = findConfig(self["config"], self.environ, self.defaultConfig)
            self["gatewayConfig"] = loadConfig(path, reactor, adapterConfigParsers())
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def opt_version(self) -> None:
        """
        Print imgateway's version (and Twisted's) and exit.
        """
        from twisted import __version__ as twistedVersion

        print(f"imgateway {__version__} (Twisted {twistedVersion})")
        sys.exit(0)


def makeService(options: Options) -> IService:
    """
    Build the gateway's service tree from parsed options.
    """
    from twisted.internet import reactor

    from imgateway.gateway import makeGatewayService

    from imgateway.core.errors import PersistenceFailed
    from imgateway.sqlite import SchemaTooNew

    from imgateway.status.logs import withLogFormat

    reactorAny: Any = reactor
    config = options["gatewayConfig"]
    try:
        _, service = makeGatewayService(config, reactorAny)
    except (ConfigError, PersistenceFailed, SchemaTooNew, OSError) as e:
        # Before any port is opened: one clear line, no traceback.
        sys.stderr.write(f"imgateway: cannot start: {e}\n")
        raise SystemExit(1) from None
    reactor.callWhenRunning(freezeStartupHeap, youngObjects=config.gcYoungObjects)
    # [log] format: twistd's options are the parent of ours.
    return withLogFormat(service, config.log.format, getattr(options, "parent", None), reactorAny.callFromThread)


def freezeStartupHeap(collector: Any = gc, youngObjects: int = DEFAULT_GC_YOUNG_OBJECTS) -> None:
    """
    Put what start-up made (modules, classes, functions, the configuration:
    tens of thousands of objects, alive for as long as the process) out of
    the cyclic garbage collector's way (C{gc.freeze}), once the reactor
    runs. Its full collections then go through the objects made since,
    instead of the whole heap every time: under load, with many events in
    flight, they came to a quarter of a busy server's CPU time. And the
    youngest generation is collected every C{youngObjects} new objects
    (C{[gateway] gc_young_objects}, 10,000 by default) instead of 700: an
    event's objects live for its round trip (a server's thousands of
    events in flight), so most of them are gone by then instead of being
    moved to an older generation, collected again and again.

    @param collector: The garbage collector (L{gc}).
    @param youngObjects: The youngest generation's threshold.
    """
    collector.collect()
    collector.freeze()
    _, older, oldest = collector.get_threshold()
    collector.set_threshold(youngObjects, older, oldest)
