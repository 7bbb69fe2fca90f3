"""
The native protocol adapter: imgateway's own IMPP-like protocol (see C{docs/protocol.md}).
"""
