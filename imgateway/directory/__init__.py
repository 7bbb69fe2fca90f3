"""
The directory: every account, where it lives and how it logs in
(L{imgateway.interfaces.IDirectory}), kept in SQLite by
L{imgateway.directory.sqlite}.
"""
