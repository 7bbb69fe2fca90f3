"""
Registers the native protocol adapter (a Twisted plugin dropin).
"""

from imgateway.adapters.native.adapter import NativeAdapter

native = NativeAdapter()
