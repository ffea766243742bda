"""The control plane: store, credentials, audit log (later: API, secrets, abuse).

Submodules are imported explicitly (``from relay.control.store import Store``) so that importing
``relay.control.tokens`` does not pull in SQLAlchemy.
"""
