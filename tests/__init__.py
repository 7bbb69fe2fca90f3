"""
Tests of imgateway.
"""
