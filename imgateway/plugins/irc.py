"""
Registers the IRC protocol adapter (a Twisted plugin dropin).
"""

from imgateway.adapters.irc.adapter import IRCAdapter

irc = IRCAdapter()
