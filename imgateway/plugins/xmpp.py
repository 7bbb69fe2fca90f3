"""
Registers the XMPP protocol adapter (a Twisted plugin dropin).
"""

from imgateway.adapters.xmpp.adapter import XMPPAdapter

xmpp = XMPPAdapter()
