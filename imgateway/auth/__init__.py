"""
Authentication: password verifiers, SASL mechanisms and twisted.cred glue.
"""
