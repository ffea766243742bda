"""What an API key may do: its scopes.

A scope names one kind of thing and one verb (``credentials:write``); a key holds the few its
holder needs (least privilege), and ``admin`` stands for all of them. Scopes say *what* a key
may touch; *whose* (its own account's objects, or every account's) is the account's role,
checked by the API where the object is known.

This module is plain data and two functions (no SQLAlchemy), so the API and the CLI can
import it cheaply.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from relay.errors import ConfigError

__all__ = ["ADMIN", "SCOPES", "SCOPE_MEANINGS", "grants", "validate_scopes"]

ADMIN = "admin"

#: Every scope, with what it allows (shown by the API's documentation and the CLI).
SCOPE_MEANINGS: dict[str, str] = {
    "accounts:read": "see accounts (names, roles, status)",
    "accounts:write": "create accounts, suspend and resume them",
    "credentials:read": "list authtokens and API keys (never their secrets)",
    "credentials:write": "create and revoke authtokens and API keys",
    "endpoints:read": "see the endpoints agents have bound",
    "reserved:read": "see reserved domains and TCP addresses",
    "reserved:write": "reserve domains and TCP addresses for an account, and release them",
    "sessions:read": "see live agent sessions",
    "sessions:write": "end live agent sessions",
    "audit:read": "read and verify the audit log",
    "edge": "act as an edge of this control plane: verify agents' tokens, report audit "
    "events (operators' keys only)",
    ADMIN: "everything above",
}

SCOPES: tuple[str, ...] = tuple(SCOPE_MEANINGS)

#: Longest unknown scope echoed in an error message (the rest is cut, not shown).
_SHOWN = 64


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check a key's scopes: sorted and deduplicated; :class:`ConfigError` when there are
    none, when one is not a string, or naming the first scope that does not exist."""
    if isinstance(scopes, str):
        # A lone "admin" would otherwise be read letter by letter.
        raise ConfigError("scopes must be a list of scope names, not a string")
    out: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str):
            raise ConfigError("scopes must be strings")
        if scope not in SCOPE_MEANINGS:
            shown = scope if len(scope) <= _SHOWN else scope[:_SHOWN] + "…"
            raise ConfigError(f"unknown scope {shown!r} (known: {', '.join(SCOPES)})")
        out.add(scope)
    if not out:
        raise ConfigError("an API key needs at least one scope")
    return tuple(sorted(out))


def grants(scopes: Collection[str], needed: str) -> bool:
    """Whether a key holding ``scopes`` may do what ``needed`` allows."""
    return needed in scopes or ADMIN in scopes
