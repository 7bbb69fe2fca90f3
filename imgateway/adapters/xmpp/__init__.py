"""
The XMPP protocol adapter: a c2s face for standard clients, server-to-server
federation and XEP-0114 component links, on a hardened XML stream.
"""
