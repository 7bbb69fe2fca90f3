"""
The router: delivers core events by the recipient's domain.
"""

from imgateway.router.locator import DirectoryHomeLocator
from imgateway.router.router import Router

__all__ = ["DirectoryHomeLocator", "Router"]
