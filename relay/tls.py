"""TLS for the agent link: TLS 1.2+ only, Mozilla "intermediate" ciphers, ALPN ``relay/<version>``.

The agent trusts the edge in one of three ways: a CA file (the edge's local CA by
default), a pinned SHA-256 fingerprint of the edge's certificate, or the system trust
store when the edge has a publicly trusted certificate.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

from relay._tlslink import set_tls13_suites
from relay.certs.local_ca import cert_pem_fingerprint_matches
from relay.errors import ConfigError, TlsError
from relay.protocol import ALPN_PROTOCOLS

#: Mozilla "intermediate" TLS 1.2 suites (TLS 1.3 suites are always on and all AEAD).
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: TLS 1.3 suites, AES-128-GCM first (OpenSSL's default puts AES-256-GCM first). All
#: three are TLS 1.3's own AEADs; AES-128-GCM is the one TLS 1.3 requires, and the one
#: Go's clients offer first on AES-NI hardware. It seals about 15% more bytes per
#: CPU-second than AES-256-GCM on the bench machine (`openssl speed -evp`, 16 KiB, best
#: of 4 alternated runs: 4.88 against 4.20 GB/s), and every byte of a tunnel is sealed
#: and opened once per TLS hop. The bench method asks for it too: the peers' TLS (Go's,
#: OpenSSH's aes128-gcm) is AES-128-GCM. A server picks by its own order (the ssl
#: module sets OP_CIPHER_SERVER_PREFERENCE), so an edge with this order gets
#: AES-128-GCM from every agent, old or new.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

log = logging.getLogger("relay.tls")


def prefer_tls13_suites(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Give ``ctx`` :data:`TLS13_SUITES`; where OpenSSL cannot be reached (a Python
    with OpenSSL linked in statically) it keeps OpenSSL's default order."""
    try:
        set_tls13_suites(ctx, TLS13_SUITES)
    except RuntimeError as exc:
        log.debug("TLS 1.3 suites left in OpenSSL's order: %s", exc)
    return ctx


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    prefer_tls13_suites(ctx)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Context for the edge's agent listener."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def client_context(*, ca_file: Path | None = None, pin: str | None = None) -> ssl.SSLContext:
    """Context for the agent. With ``pin`` the chain is not checked against any CA —
    the pin is checked after the handshake by ``check_pin`` instead, before the agent
    sends its token."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if pin is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise ConfigError(
                f"--ca-file {ca_file} is not a PEM CA certificate ({reason}): use the edge's "
                "DATA_DIR/ca/ca.pem"
            ) from None
    else:
        ctx.load_default_certs()
    return ctx


def certificate_fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, pin: str) -> None:
    """Raise TlsError unless the peer's certificate has the pinned fingerprint."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise TlsError("the edge presented no certificate")
    if not cert_pem_fingerprint_matches(der, pin):
        got = certificate_fingerprint(der)
        raise TlsError(f"edge certificate fingerprint {got} does not match the pin {pin}")
