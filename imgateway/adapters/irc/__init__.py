"""
The IRC adapter: an IRC face for IRC clients (L{imgateway.adapters.irc.face})
and a bridge to IRC networks (C{network}), sharing the line format and text
splitting (L{imgateway.adapters.irc.wire}) and the presence and nick
mappings (L{imgateway.adapters.irc.mapping}).
"""
