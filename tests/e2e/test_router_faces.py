"""
End-to-end tests of a router's client faces (L{imgateway.router.front}): a
router and a home server as two real C{twistd imgateway} processes sharing
one data folder (so one SQLite directory), real TCP on loopback. A native
client (the shipped library and C{imgateway-client}) and a real XMPP client
(slixmpp) from 127.0.0.1, an internal network, are redirected to the home
server and log in there; from 127.0.0.2, outside it, they get the
documented answer for a router without links to proxy over (native C{503},
XMPP C{<policy-violation/>}); proxied sessions are in C{test_router_proxy}.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from imgateway.client.protocol import connect, goodbye
from imgateway.core.errors import ServiceUnavailable
from tests.e2e.harness import DOMAIN, REPO_ROOT, GatewayProcess, failureOf, reactor
from tests.e2e.multihost import OUTSIDE, RouterAndHome
from tests.e2e.xmppclient import AgentError

PASSWORDS = {"carol": "carol-pw-1"}

class NativeRedirectTests(TestCase):
    """
    The native face of a router, and the shipped client.
    """

    async def test_internalRedirected(self) -> None:
        """
        carol connects to the router from 127.0.0.1: the router answers her
        login C{302} naming hs1's native endpoint and logs why; the shipped
        client follows it and carol is logged in at hs1.
        """
        pair = RouterAndHome(self, PASSWORDS)
        await pair.start()
        client = await connect(reactor(), pair.router.endpoint, "carol", PASSWORDS["carol"])
        self.addCleanup(goodbye, client, reactor())
        self.assertEqual(str(client.address), f"carol@{DOMAIN}")
        self.assertEqual(client.transport.getPeer().port, pair.homePort)  # type: ignore[union-attr]
        self.assertIn(
            f"Redirecting carol@{DOMAIN} (native, from IPv4Address(type='TCP', host='127.0.0.1'",
            pair.router.log(),
        )
        self.assertIn(f"to its home server hs1 at 127.0.0.1:{pair.homePort}: internal network 127.0.0.1/32", pair.router.log())
        self.assertIn(f"carol@{DOMAIN} logged in from", pair.home.log())
        self.assertNotIn(f"carol@{DOMAIN} logged in from", pair.router.log())

    async def test_sameTLSChoice(self) -> None:
        """
        A client that reached the router over TLS is redirected to hs1's TLS
        listener (C{localhost:PORT}) and follows it over TLS, checking hs1's
        certificate against C{localhost} with the same trust roots.
        """
        pair = RouterAndHome(self, PASSWORDS, tls=True)
        await pair.start()
        roots = quoteStringArgument(os.path.dirname(pair.tlsCAPath))
        endpoint = f"tls:localhost:{pair.routerTLSPort}:trustRoots={roots}"
        client = await connect(reactor(), endpoint, "carol", PASSWORDS["carol"])
        self.addCleanup(goodbye, client, reactor())
        self.assertEqual(str(client.address), f"carol@{DOMAIN}")
        self.assertTrue(ISSLTransport.providedBy(client.transport))
        self.assertEqual(client.transport.getPeer().port, pair.homeTLSPort)  # type: ignore[union-attr]
        self.assertIn(f"to its home server hs1 at localhost:{pair.homeTLSPort}", pair.router.log())
        self.assertIn(f"carol@{DOMAIN} logged in from", pair.home.log())

    async def test_externalUnavailable(self) -> None:
        """
        From 127.0.0.2, outside the internal network, carol's login at the
        router is answered C{503} (it has no link to hs1 to proxy over) and the
        router logs why; nothing reaches hs1.
        """
        pair = RouterAndHome(self, PASSWORDS)
        await pair.start()
        endpoint = f"{pair.router.endpoint}:bindAddress={OUTSIDE}"
        e = await failureOf(connect(reactor(), endpoint, "carol", PASSWORDS["carol"]), ServiceUnavailable)
        self.assertEqual(e.text, "Your home server is not served here to your network")
        self.assertIn(f"Not serving carol@{DOMAIN} (native, from IPv4Address(type='TCP', host='{OUTSIDE}'", pair.router.log())
        self.assertNotIn("carol", pair.home.log())

    async def test_commandLine(self) -> None:
        """
        C{imgateway-client} pointed at the router follows the redirect
        (C{ping} succeeds, at hs1); with C{--max-redirects 0} it does not,
        and says so.
        """
        pair = RouterAndHome(self, PASSWORDS)
        await pair.start()
        env = GatewayProcess.environment()
        env["IMGATEWAY_PASSWORD"] = PASSWORDS["carol"]
        args = ["-m", "imgateway.client.cli", "--server", pair.router.endpoint, "--user", "carol", "-v"]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [*args, "ping"], env=env, path=REPO_ROOT, reactor=reactor()
        )
        self.assertEqual(code, 0, (out, err))
        self.assertIn(f"carol@{DOMAIN} logged in from", pair.home.log())
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*args, "--max-redirects", "0", "ping"],
            env=env,
            path=REPO_ROOT,
            reactor=reactor(),
        )
        self.assertEqual(code, 1)
        self.assertIn(b"redirected more than 0 times (127.0.0.1:", err)


class XMPPRedirectTests(TestCase):
    """
    The XMPP c2s face of a router, with slixmpp.
    """

    async def test_seeOtherHost(self) -> None:
        """
        slixmpp logs in to the router from 127.0.0.1 over STARTTLS; the
        restarted stream gets C{<see-other-host>} naming hs1's c2s endpoint;
        following it, slixmpp connects there and logs in (its session
        starts at hs1).
        """
        pair = RouterAndHome(self, PASSWORDS, xmpp=True)
        await pair.start()
        agent = pair.agent(followSeeOtherHost=3)
        await agent.start()
        [redirect] = [e for e in agent.events if e["event"] == "see_other_host"]
        self.assertEqual(redirect["location"], f"127.0.0.1:{pair.homeXMPPPort}")
        self.assertIn(f"Redirecting carol@{DOMAIN} (xmpp, from", pair.router.log())
        self.assertIn(f"carol@{DOMAIN} authenticated from", pair.home.log())

    async def test_externalPolicyViolation(self) -> None:
        """
        From 127.0.0.2, slixmpp's restarted stream at the router gets
        C{<policy-violation/>} with a text that says why, and the router
        logs why.
        """
        pair = RouterAndHome(self, PASSWORDS, xmpp=True)
        await pair.start()
        agent = pair.agent(bindAddress=OUTSIDE)
        e = await failureOf(agent.start(), AgentError)
        errors = [ev for ev in agent.events if ev["event"] == "stream_error"]
        self.assertEqual([ev["condition"] for ev in errors], ["policy-violation"], e)
        self.assertEqual(errors[0]["text"], "Your home server is not served here to your network")
        self.assertIn(f"Not serving carol@{DOMAIN} (xmpp, from IPv4Address(type='TCP', host='{OUTSIDE}'", pair.router.log())
