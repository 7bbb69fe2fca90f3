"""
imgateway's tests: unit tests beside end-to-end tests (C{tests/e2e/}) that
run the real gateway on loopback.

Tests run with C{python -b -W error}: a warning from our code is an error.
The filters below silence known third-party warnings only.
"""

import warnings

# Twisted's conch checkers import the stdlib spwd module, deprecated in 3.11,
# whenever twisted.plugin scans Twisted's own plugins.
warnings.filterwarnings("ignore", r"'spwd' is deprecated", DeprecationWarning)
