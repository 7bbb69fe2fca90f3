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
from typing import Any

from tests.e2e import test_xmpp_federation_gateway as gateway
from tests.e2e.ejabberd import EjabberdProcess
from tests.e2e.harness import DOMAIN, GatewayProcess, freePort, makeCertificates


class EjabberdFederationTests(gateway.FederationGatewayTests):
    """
    The gateway federating with ejabberd: every test of
    L{FederationGatewayTests}, with L{federate} starting ejabberd.
    """

    # The scenario only calls agent() on the peer server; its annotation
    # names ProsodyProcess, hence Any here.
    async def federate(self, verify: bool) -> tuple[GatewayProcess, Any]:
        """
        Start ejabberd and a federating gateway.

        @param verify: Authenticate with certificates both ways (ejabberd
            without C{mod_s2s_dialback}: SASL EXTERNAL only, and it verifies
            our certificate; our certificate verification); otherwise with
            dialback (neither side trusts the other's authority).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # Our certificate must be for TLS clients too for ejabberd to accept
        # it (makeCertificates(clientAuth=True)).
        caPath, serverDir = makeCertificates(directory, DOMAIN, clientAuth=verify)
        pem = os.path.join(serverDir, f"{DOMAIN}.pem")
        s2sPort = freePort()
        ejabberd = EjabberdProcess(
            self,
            users=gateway.USERS,
            peers={DOMAIN: s2sPort},
            trust=[caPath] if verify else [],
            s2sRequireEncryption=True,
            dialback=not verify,
            directory=os.path.join(directory, "ejabberd"),
        )
        xmpp: dict[str, Any] = {
            "listen": [],
            "certificate": pem,
            "private_key": pem,
            "federation": True,
            "s2s_listen": [f"tcp:{s2sPort}:interface=127.0.0.1"],
            "s2s_routes": {ejabberd.domain: f"tcp:127.0.0.1:{ejabberd.s2sPort}"},
            "s2s_use_dns": False,
            "s2s_verify_certificates": verify,
        }
        if verify:
            xmpp["s2s_trust_roots"] = ejabberd.caPath
        gw = GatewayProcess(self, {"xmpp": xmpp}, directory=os.path.join(directory, "gw"))
        gw.waitPorts.append(s2sPort)
        gw.addUser("alice", "alice's pw")
        await ejabberd.start()
        await gw.start()
        return gw, ejabberd
