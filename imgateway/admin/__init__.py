"""
Administration tools: the C{imgateway-admin} command (L{imgateway.admin.cli}).
"""
