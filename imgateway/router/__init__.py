"""
The router: delivers core events by the recipient's domain.
"""

from imgateway.router.router import Router

__all__ = ["Router"]
