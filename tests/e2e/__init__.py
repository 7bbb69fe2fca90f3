"""
End-to-end tests: the real C{twistd imgateway} process, started on a
temporary configuration and data folder, with accounts made by the real
C{imgateway-admin}, driven by real clients over TCP and TLS on loopback.

They take seconds, not milliseconds; the unit tests beside them in
C{tests/} stay synchronous. L{tests.e2e.harness} holds what every
end-to-end test of any protocol face needs.
"""
