"""The one exception root for relay, with stable error codes.

Every error a user can see carries a code (``RLY_xxx``) that never changes meaning, so it can be
searched for in the docs and sent over the wire: the edge puts ``(code, message)`` in an
``AuthError``/``BindError`` control message and the agent rebuilds the same class with
:func:`error_from_code`. Messages are for humans and may change; codes may not.

Codes
-----
========  ======================  ===============================================================
code      class                   meaning
========  ======================  ===============================================================
RLY_000   RelayError              unclassified error (also: an unknown code received from a peer)
RLY_101   AuthError               authentication failed (family root)
RLY_101   InvalidToken            unknown or garbled authtoken
RLY_102   RevokedToken            the authtoken was revoked
RLY_103   ExpiredToken            the authtoken has expired
RLY_104   AccountSuspended        the credential's account is suspended
RLY_111   InvalidApiKey           unknown or garbled API key
RLY_112   RevokedApiKey           the API key was revoked
RLY_113   ExpiredApiKey           the API key has expired
RLY_120   Forbidden               the API key lacks the scope or the account the resource
                                  belongs to
RLY_121   RateLimited             too many failed attempts from this address; retry later
RLY_122   SessionStopped          an operator stopped the agent's session (do not reconnect)
RLY_201   BindError               an endpoint could not be bound (family root)
RLY_202   PortUnavailable         port in use or outside the allowed range
RLY_203   PortRangeExhausted      no free port left in the configured range
RLY_204   EndpointAlreadyBound    the endpoint is held by another agent (or by pool members
                                  with another Host rewrite than the joining one's)
RLY_205   BindNotAllowed          the token's bind ACL forbids this endpoint
RLY_206   TooManyEndpoints        an endpoint limit is reached: of the session, or of the
                                  account's endpoints or TCP ports on the edge
RLY_207   NameReserved            the name or port is reserved by another account, or a
                                  name outside the base domain is not reserved by the
                                  binding account
RLY_208   RegionPinned            the name or port is pinned to another region than the
                                  edge's: its agent must connect to a PoP of that region
RLY_301   ProtocolViolation       malformed control message
RLY_302   UnsupportedVersion      the peer speaks a protocol version we don't
RLY_401   ConfigError             invalid configuration or argument
RLY_402   DataDirError            the data directory is unusable (permissions, corrupt files)
RLY_403   ListenError             a listener cannot bind its address (in use, not permitted)
RLY_404   RelayError              the agent's link processes (``--links``) kept dying right
                                  after their start (a broken install, an upgrade under a
                                  running agent); raised with ``code=``, no class of its own
RLY_501   TlsError                edge certificate not trusted / fingerprint mismatch
RLY_502   ConnectError            cannot reach the edge
RLY_503   NotAnEdge               the address is not a relay edge's agent port (no TLS, no ALPN)
RLY_504   ControlUnavailable      the edge cannot reach its control plane now; try again later
RLY_505   TooManySessions         the edge holds as many sessions of the token's account as it
                                  allows (max_sessions_per_account); try again later
RLY_601   NotFound                the named object (e.g. a token id) does not exist
RLY_602   Conflict                the name is taken
RLY_701   AuditChainBroken        the audit log's hash chain does not verify
RLY_801   CertificateError        a certificate could not be issued or loaded (family root)
RLY_802   CertificateNameMismatch the certificate does not cover the requested name
RLY_803   AcmeError               the ACME server refused (family root)
RLY_804   AcmeChallengeFailed     ACME validation of a challenge failed
RLY_805   AcmeUnavailable         the ACME server could not be reached (the edge tries again)
RLY_806   UnsupportedIdentifier   the issuer cannot issue for this name (e.g. ACME wildcard)
RLY_807   CertificateQuota        the account ordered its share of certificates lately; later
RLY_901   SecretError             a sealed secret could not be opened (family root)
RLY_902   SecretAuthenticationFailed  tampered blob, wrong owner/name, or wrong key bytes
RLY_903   UnknownKeyId            sealed under a key-encryption key id that is not configured
RLY_904   MalformedSecret         not a sealed secret (bad magic, truncated, unknown version)
========  ======================  ===============================================================

Visitor-facing codes
--------------------
Sent to visitors in error pages (header ``x-relay-error-code`` and the body), never raised:

========  ======  ==================================================================
code      status  meaning
========  ======  ==================================================================
RLY_610   404     no tunnel serves this host name
RLY_611   503     the agent serving this host is offline (its name is held for it)
RLY_612   503     the agent's session cannot take another stream
RLY_613   502     the agent could not reach its upstream (refused, TLS failure, reset)
RLY_614   504     the upstream did not answer in time
RLY_615   503     the certificate for this name is not issued yet (the edge finished the
                  TLS handshake with a stand-in certificate to say so)
RLY_616   502     the tunnel carrying the request was lost before its answer began (the
                  agent's link, or the link to the node holding the agent, went down)
RLY_620   400     malformed HTTP request
RLY_621   502     the edge could not forward the request (internal error)
RLY_622   431     request head larger than the limit
RLY_623   431     more request headers than the limit
RLY_624   413     request body larger than the limit
RLY_625   421     a request for another host on a connection already routed elsewhere
RLY_626   408     the request head did not arrive within the header timeout
RLY_627   400     ambiguous body framing or hop-by-hop nomination: Connection names
                  Content-Length, Transfer-Encoding, Host or a forwarding header; more
                  than one Content-Length; Content-Length with Transfer-Encoding;
                  Transfer-Encoding not ending in chunked, or on HTTP/1.0
RLY_628   400     missing (HTTP/1.1), repeated or malformed Host, or an absolute-form
                  target that is not http(s) with a plain authority
RLY_629   405     CONNECT is not supported
RLY_630   421     on the TLS port, a Host that is not an https endpoint the TLS server
                  name (SNI) selected
RLY_631   421     the name is served in another region only (pinned there, or held by
                  that region's PoPs): a cluster never carries it across regions
========  ======  ==================================================================

``AuthError`` and ``InvalidToken`` share RLY_101 on purpose: to an agent every "who are you?"
failure that isn't revocation or expiry looks the same, so no oracle tells valid ids apart.
On the wire RLY_101 is rebuilt as :class:`InvalidToken` (still an ``AuthError``). API keys
have codes of their own (RLY_111 to 113) because the REST API answers them, not the agent.
RLY_104 is only ever said to a caller who presented the right secret.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ERROR_CODES",
    "AccountSuspended",
    "AuditChainBroken",
    "AuthError",
    "BindError",
    "BindNotAllowed",
    "ConfigError",
    "Conflict",
    "ConnectError",
    "ControlUnavailable",
    "DataDirError",
    "EndpointAlreadyBound",
    "ExpiredApiKey",
    "ExpiredToken",
    "Forbidden",
    "InvalidApiKey",
    "InvalidToken",
    "ListenError",
    "NameReserved",
    "NotAnEdge",
    "NotFound",
    "PortRangeExhausted",
    "PortUnavailable",
    "ProtocolViolation",
    "RateLimited",
    "RegionPinned",
    "RelayError",
    "RevokedApiKey",
    "RevokedToken",
    "SessionStopped",
    "TlsError",
    "TooManyEndpoints",
    "TooManySessions",
    "UnsupportedVersion",
    "error_from_code",
]

_CODE_RE = re.compile(r"RLY_[0-9]{3}")


class RelayError(Exception):
    """Root of every error relay raises on purpose.

    ``str(err)`` is the human message alone (so it composes into other messages); ``err.code``
    is the stable code; ``err.one_line()`` is what a CLI prints.
    """

    code: str = "RLY_000"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # Instance attribute shadows the class default only when asked to.
            self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def one_line(self) -> str:
        """``error RLY_xxx: message`` — the form users paste into a search box."""
        return f"error {self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only ``code`` would otherwise be lost when pickled (e.g. across processes).
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls: type[RelayError], message: str, code: str) -> RelayError:
    err = cls(message)
    err.code = code
    return err


class AuthError(RelayError):
    """Authentication failed (family root)."""

    code = "RLY_101"


class InvalidToken(AuthError):
    """Unknown or garbled authtoken. Deliberately says nothing about which part was wrong."""

    code = "RLY_101"


class RevokedToken(AuthError):
    """The authtoken was valid but has been revoked."""

    code = "RLY_102"


class ExpiredToken(AuthError):
    """The authtoken was valid but its expiry time has passed."""

    code = "RLY_103"


class AccountSuspended(AuthError):
    """The credential (authtoken or API key) is valid, but its account is suspended."""

    code = "RLY_104"


class InvalidApiKey(AuthError):
    """Unknown or garbled API key; like :class:`InvalidToken`, says nothing about which part
    was wrong."""

    code = "RLY_111"


class RevokedApiKey(AuthError):
    """The API key was valid but has been revoked."""

    code = "RLY_112"


class ExpiredApiKey(AuthError):
    """The API key was valid but its expiry time has passed."""

    code = "RLY_113"


class Forbidden(RelayError):
    """The API key lacks the scope, or the account the resource belongs to."""

    code = "RLY_120"


class RateLimited(RelayError):
    """Too many failed attempts from this address; ``retry_after`` (seconds) says when to
    try again, when known."""

    code = "RLY_121"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class SessionStopped(RelayError):
    """An operator stopped the agent's session through the control plane; the agent must
    not reconnect on its own."""

    code = "RLY_122"


class BindError(RelayError):
    """An endpoint could not be bound (family root)."""

    code = "RLY_201"


class PortUnavailable(BindError):
    """The requested port is in use or outside the allowed range."""

    code = "RLY_202"


class PortRangeExhausted(BindError):
    """No free port is left in the configured allocation range."""

    code = "RLY_203"


class EndpointAlreadyBound(BindError):
    """The endpoint is held by another agent."""

    code = "RLY_204"


class BindNotAllowed(BindError):
    """The token's bind ACL does not allow this endpoint."""

    code = "RLY_205"


class TooManyEndpoints(BindError):
    """The endpoint limit is reached."""

    code = "RLY_206"


class NameReserved(BindError):
    """The hostname or TCP port is reserved by another account; or it is a name outside
    the edge's base domain (or a wildcard) that the binding account has not reserved:
    only names under the base domain are first come, first served."""

    code = "RLY_207"


class RegionPinned(BindError):
    """The reserved name or port is pinned to a region other than this edge's: its
    traffic must never be served here (data residency)."""

    code = "RLY_208"


class ProtocolViolation(RelayError):
    """A control message was malformed."""

    code = "RLY_301"


class UnsupportedVersion(RelayError):
    """The peer speaks a protocol version this build does not."""

    code = "RLY_302"


class ConfigError(RelayError):
    """Invalid configuration or argument supplied by the operator or user."""

    code = "RLY_401"


class DataDirError(RelayError):
    """The data directory is unusable: wrong permissions, corrupt or inconsistent files."""

    code = "RLY_402"


class ListenError(RelayError):
    """A listener of the edge cannot bind its address. The message names the address and
    the flag (or config key) that sets it; ``relay edge`` exits 4 with it."""

    code = "RLY_403"

    @classmethod
    def for_address(cls, address: str, flag: str, exc: OSError) -> ListenError:
        reason = exc.strerror or str(exc)
        return cls(f"cannot listen on {address} ({flag}): {reason}")


class TlsError(RelayError):
    """The edge certificate is not trusted, or its fingerprint does not match the pin."""

    code = "RLY_501"


class ConnectError(RelayError):
    """The edge cannot be reached."""

    code = "RLY_502"


class NotAnEdge(RelayError):
    """The address answered, but not as a relay edge's agent port (no TLS at all, or a TLS
    server that does not speak relay): reconnecting would reach the same thing."""

    code = "RLY_503"


class ControlUnavailable(ConnectError):
    """The edge cannot reach its control plane (`relay control`) to verify a token: not
    the agent's fault, and worth retrying — a ConnectError, so the agent reconnects with
    backoff as when the edge itself is away."""

    code = "RLY_504"


class TooManySessions(ConnectError):
    """The edge holds as many sessions of the token's account as it allows
    (``max_sessions_per_account``): the token is good, and the agent reconnects with
    backoff (or tries another PoP) as when the edge itself is away."""

    code = "RLY_505"


class NotFound(RelayError):
    """The named object does not exist (e.g. a token id on revoke)."""

    code = "RLY_601"


class Conflict(RelayError):
    """The name is taken (e.g. an account name)."""

    code = "RLY_602"


class AuditChainBroken(RelayError):
    """The audit log's hash chain does not verify; ``seq`` is the first bad event."""

    code = "RLY_701"

    def __init__(self, message: str, *, seq: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.seq = seq


ERROR_CODES: dict[str, type[RelayError]] = {
    cls.code: cls
    for cls in (
        RelayError,
        # InvalidToken (not AuthError) owns RLY_101: it is the concrete thing that happened.
        InvalidToken,
        RevokedToken,
        ExpiredToken,
        AccountSuspended,
        InvalidApiKey,
        RevokedApiKey,
        ExpiredApiKey,
        Forbidden,
        RateLimited,
        SessionStopped,
        BindError,
        PortUnavailable,
        PortRangeExhausted,
        EndpointAlreadyBound,
        BindNotAllowed,
        TooManyEndpoints,
        NameReserved,
        RegionPinned,
        ProtocolViolation,
        UnsupportedVersion,
        ConfigError,
        DataDirError,
        ListenError,
        TlsError,
        ConnectError,
        NotAnEdge,
        ControlUnavailable,
        TooManySessions,
        NotFound,
        Conflict,
        AuditChainBroken,
    )
}


def error_from_code(code: str, message: str) -> RelayError:
    """Rebuild an error received from a peer (the edge) as the matching local class.

    An unknown but well-formed code (a newer edge) becomes a plain :class:`RelayError` that
    keeps the code, so the user still sees what the edge said. A code that isn't ``RLY_ddd`` at
    all is not trusted to reach a terminal and becomes RLY_000.
    """
    cls = ERROR_CODES.get(code)
    if cls is not None:
        return cls(message)
    if _CODE_RE.fullmatch(code) is None:
        return RelayError(message)
    return RelayError(message, code=code)


# -- certificates (RLY_8xx) and secrets (RLY_9xx) -------------------------------------------
#
# ========  ==========================  =========================================================
# RLY_801   CertificateError            a certificate could not be provided (family root)
# RLY_802   CertificateNameMismatch     the operator's certificate files don't cover the name
# RLY_803   AcmeError                   the ACME server refused a request (not worth retrying)
# RLY_804   AcmeChallengeFailed         the ACME server could not validate a challenge
# RLY_805   AcmeUnavailable             the ACME server could not be reached (the edge tries again)
# RLY_806   UnsupportedIdentifier       the issuer cannot issue for this name (e.g. ACME wildcard)
# RLY_807   CertificateQuota            the account started its share of orders lately (later)
# RLY_901   SecretError                 a sealed secret could not be opened (family root)
# RLY_902   SecretAuthenticationFailed  tampered blob, wrong owner/name, or wrong key bytes
# RLY_903   UnknownKeyId                the blob names a key-encryption key that isn't configured
# RLY_904   MalformedSecret             not a sealed secret, truncated, or an unknown version
# ========  ==========================  =========================================================


class CertificateError(RelayError):
    """A certificate could not be provided (family root)."""

    code = "RLY_801"


class CertificateNameMismatch(CertificateError):
    """The operator-provided certificate does not cover the requested name."""

    code = "RLY_802"


class AcmeError(CertificateError):
    """The ACME server refused a request; retrying the same request will not help."""

    code = "RLY_803"


class AcmeChallengeFailed(AcmeError):
    """The ACME server could not validate a challenge (the name does not reach this edge)."""

    code = "RLY_804"


class AcmeUnavailable(CertificateError):
    """The ACME server stayed unreachable or failing through every retry."""

    code = "RLY_805"


class UnsupportedIdentifier(CertificateError):
    """The issuer cannot issue for this name (e.g. a wildcard over ACME needs DNS-01)."""

    code = "RLY_806"


class CertificateQuota(CertificateError):
    """The binding account started its share of certificate orders in the CA's window
    (``cert_orders_per_account``): the name is ordered once one of them leaves it."""

    code = "RLY_807"


class SecretError(RelayError):
    """A sealed secret could not be opened (family root)."""

    code = "RLY_901"


class SecretAuthenticationFailed(SecretError):
    """Tampered blob, wrong owner/name, or the key-encryption key's bytes changed."""

    code = "RLY_902"


class UnknownKeyId(SecretError):
    """The blob was sealed under a key-encryption key id that is not configured."""

    code = "RLY_903"


class MalformedSecret(SecretError):
    """Not a sealed secret: bad magic, truncated, or an unsupported format version."""

    code = "RLY_904"


_CERT_SECRET_ERRORS: tuple[type[RelayError], ...] = (
    CertificateError,
    CertificateNameMismatch,
    AcmeError,
    AcmeChallengeFailed,
    AcmeUnavailable,
    UnsupportedIdentifier,
    CertificateQuota,
    SecretError,
    SecretAuthenticationFailed,
    UnknownKeyId,
    MalformedSecret,
)
ERROR_CODES.update({cls.code: cls for cls in _CERT_SECRET_ERRORS})
__all__ += [
    "AcmeChallengeFailed",
    "AcmeError",
    "AcmeUnavailable",
    "CertificateError",
    "CertificateNameMismatch",
    "CertificateQuota",
    "MalformedSecret",
    "SecretAuthenticationFailed",
    "SecretError",
    "UnknownKeyId",
    "UnsupportedIdentifier",
]
