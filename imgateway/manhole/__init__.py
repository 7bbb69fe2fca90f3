# -*- test-case-name: tests.test_manhole -*-
"""
The operator's console: an SSH manhole into the running gateway
(L{imgateway.manhole.ssh}, public keys only), the helpers its namespace
offers (L{imgateway.manhole.namespace}), scripts run through it
(L{imgateway.manhole.script}) and the reactor watchdog
(L{imgateway.manhole.watchdog}). C{docs/manhole.md} shows how to use them.

Nothing here imports L{twisted.conch.manhole_ssh} (which installs the global
reactor) but L{imgateway.manhole.ssh}, imported only when the gateway's
service is built.
"""
