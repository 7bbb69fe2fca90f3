"""
Protocol adapters, one package per protocol.
"""
