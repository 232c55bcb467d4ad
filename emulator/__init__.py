"""Local Azure Relay (Hybrid Connections) and managed-identity emulator.

Run it with ``python -m emulator`` (see emulator/README.md). Modules: ``config``
(load/validate), ``certs`` (CA, TLS, signing key), ``identity`` (token endpoint and
JWT issuer), ``auth`` (SAS and RBAC checks), ``listeners`` (control channels and
routing), ``rendezvous`` (WebSocket relaying), ``http_mode`` (HTTP senders),
``server`` (the Relay port), ``__main__`` (CLI). The wire format comes from
:mod:`relay.protocol` and :mod:`relay.sas`, shared with the client library.
"""
