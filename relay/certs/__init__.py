"""Certificates: the local CA (default), later ACME and a certificate store."""

from relay.certs.local_ca import (
    LocalCA,
    cert_pem_fingerprint_matches,
    edge_certificate,
    fingerprint_sha256,
    normalize_pin,
)

__all__ = [
    "LocalCA",
    "cert_pem_fingerprint_matches",
    "edge_certificate",
    "fingerprint_sha256",
    "normalize_pin",
]
