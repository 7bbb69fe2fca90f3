"""
What every face and link shares on the network, whatever protocol it
speaks:

  - L{imgateway.net.tls}: TLS options for servers and clients, and the
    record of a peer certificate's verification;
  - L{imgateway.net.certificates}: certificate, key and trust-root files
    and folders, read and checked before any port opens;
  - L{imgateway.net.endpoints}: the files named by C{tls:} and C{ssl:}
    endpoint strings, checked the same way;
  - L{imgateway.net.srv}: an SRV-aware client endpoint (RFC 2782) for any
    service name;
  - L{imgateway.net.addresses}: what a peer's address says (loopback or
    not).
  - L{imgateway.net.authority}: a small certificate authority and the
    certificates it issues (C{imgateway-admin certs}, and the tests').
  - L{imgateway.net.gather}: what one read makes a connection write,
    gathered into one C{transport.write} per connection.

Nothing here imports the rest of imgateway: protocol adapters, the router
and the command-line clients import it.
"""
