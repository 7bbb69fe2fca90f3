"""
imgateway: an instant-messaging home server, router and multi-protocol gateway
built on Twisted.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
