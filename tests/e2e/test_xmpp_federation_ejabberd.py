"""
End-to-end tests of XMPP federation through the real gateway with a real
ejabberd (L{EjabberdProcess}) serving C{xmpp.example}: the scenario of
L{test_xmpp_federation_gateway.FederationGatewayTests} (a slixmpp user on
the peer server and a native user on the gateway add each other, see each
other's presence and talk), run against ejabberd instead of Prosody, with
certificates (SASL EXTERNAL both ways) and with dialback.
"""

from __future__ import annotations

import os

from tests.e2e import test_xmpp_federation_gateway as gateway
from tests.e2e.ejabberd import EjabberdProcess
from tests.e2e.harness import DOMAIN, GatewayProcess, freePort, makeCertificates
from tests.e2e.peerserver import PeerServerProcess


class EjabberdFederationTests(gateway.FederationGatewayTests):
    """
    The gateway federating with ejabberd: every test of
    L{FederationGatewayTests}, with L{federate} starting ejabberd.
    """

    async def federate(self, verify: bool, c2s: bool = False) -> tuple[GatewayProcess, PeerServerProcess]:
        """
        Start ejabberd and a federating gateway.

        @param verify: Authenticate with certificates both ways (ejabberd
            without C{mod_s2s_dialback}: SASL EXTERNAL only, and it verifies
            our certificate; our certificate verification); otherwise with
            dialback (neither side trusts the other's authority).
        @param c2s: Whether the gateway also serves XMPP clients (see
            L{gateway}).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # Our certificate must be for TLS clients too for ejabberd to accept
        # it (makeCertificates(clientAuth=True)).
        certificates = makeCertificates(directory, DOMAIN, clientAuth=verify)
        s2sPort = freePort()
        ejabberd = EjabberdProcess(
            self,
            users=gateway.USERS,
            peers={DOMAIN: s2sPort},
            trust=[certificates[0]] if verify else [],
            s2sRequireEncryption=True,
            dialback=not verify,
            directory=os.path.join(directory, "ejabberd"),
        )
        gw = self.gateway(directory, certificates, s2sPort, ejabberd, verify, c2s)
        await ejabberd.start()
        await gw.start()
        return gw, ejabberd
