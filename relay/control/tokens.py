"""Credential secrets: generation, parsing, one-way hashing and the server pepper.

Two kinds of credential share one shape, told apart by their prefix: an authtoken (what an
agent presents) is ``rly_<id>_<secret>``, an API key (what a REST API client presents) is
``rlk_<id>_<secret>``:

* ``id`` — 12 lowercase base32 characters (60 random bits). Public: it is the lookup key, shows
  up in ``relay token list`` and in the audit log, and is safe to log.
* ``secret`` — 32 random bytes, urlsafe base64 without padding (43 characters, 256 bits). Shown
  once at creation and never stored.

The store keeps only ``HMAC-SHA-256(key=pepper, msg=salt || secret)`` with a 16-byte random salt
per credential. The pepper lives in a file next to the database, not in it, so a leaked
database dump alone is not enough to test guesses offline. A fast HMAC (not a password hash) is
right here: the secret has 256 bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from relay.errors import AuthError, DataDirError, InvalidApiKey, InvalidToken

__all__ = [
    "API_KEY_PREFIX",
    "MAX_TOKEN_LENGTH",
    "PEPPER_BYTES",
    "SALT_BYTES",
    "TOKEN_PREFIX",
    "generate",
    "generate_api_key",
    "generate_token",
    "hash_secret",
    "load_or_create_pepper",
    "new_id",
    "new_salt",
    "parse",
    "parse_api_key",
    "parse_token",
    "verify_secret",
]

TOKEN_PREFIX = "rly"
API_KEY_PREFIX = "rlk"
ID_LENGTH = 12
SECRET_BYTES = 32
SALT_BYTES = 16
PEPPER_BYTES = 32
#: Anything longer is rejected before any other work: credentials arrive from the internet.
MAX_TOKEN_LENGTH = 200

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercased
_ID_RE = re.compile(r"[a-z2-7]{12}")
# 32 bytes -> 43 urlsafe base64 characters without padding.
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_PEPPER_FILE = "pepper"
#: What each prefix is called in messages, and the error a malformed one raises.
_KINDS: dict[str, tuple[str, type[AuthError]]] = {
    TOKEN_PREFIX: ("authtoken", InvalidToken),
    API_KEY_PREFIX: ("API key", InvalidApiKey),
}


def new_id(length: int = ID_LENGTH) -> str:
    """A random lowercase base32 id (5 bits a character)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def generate(prefix: str) -> tuple[str, str, str]:
    """Return ``(plaintext, id, secret)`` for a fresh credential of the kind ``prefix`` names."""
    if prefix not in _KINDS:
        raise ValueError(f"unknown credential prefix {prefix!r}")
    credential_id = new_id()
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return f"{prefix}_{credential_id}_{secret}", credential_id, secret


def parse(plaintext: object, prefix: str) -> tuple[str, str]:
    """Split a credential of the kind ``prefix`` names into ``(id, secret)``.

    Raises that kind's error (:class:`~relay.errors.InvalidToken`,
    :class:`~relay.errors.InvalidApiKey`) — and nothing else — for any input that is not
    well-formed, whatever its type or size. Messages never echo the input: it may be a real
    secret pasted into the wrong place.
    """
    noun, error = _KINDS[prefix]
    if not isinstance(plaintext, str):
        raise error(f"{noun} must be a string")
    if len(plaintext) > MAX_TOKEN_LENGTH:
        raise error(f"{noun} is too long")
    if plaintext != plaintext.strip():
        # The usual cause is a trailing newline from a file; say so instead of "invalid".
        raise error(f"{noun} has leading or trailing whitespace")
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix:
        raise error(f"{noun} is malformed (expected {prefix}_<id>_<secret>)")
    _, credential_id, secret = parts
    # re.fullmatch on str also rejects non-ASCII look-alikes: the classes are ASCII-only ranges.
    if _ID_RE.fullmatch(credential_id) is None or _SECRET_RE.fullmatch(secret) is None:
        raise error(f"{noun} is malformed (expected {prefix}_<id>_<secret>)")
    return credential_id, secret


def generate_token() -> tuple[str, str, str]:
    """Return ``(plaintext, token_id, secret)`` for a fresh authtoken."""
    return generate(TOKEN_PREFIX)


def parse_token(plaintext: object) -> tuple[str, str]:
    """Split an authtoken into ``(token_id, secret)``; :class:`~relay.errors.InvalidToken`
    for anything else (see :func:`parse`)."""
    return parse(plaintext, TOKEN_PREFIX)


def generate_api_key() -> tuple[str, str, str]:
    """Return ``(plaintext, key_id, secret)`` for a fresh API key."""
    return generate(API_KEY_PREFIX)


def parse_api_key(plaintext: object) -> tuple[str, str]:
    """Split an API key into ``(key_id, secret)``; :class:`~relay.errors.InvalidApiKey` for
    anything else (see :func:`parse`)."""
    return parse(plaintext, API_KEY_PREFIX)


def new_salt() -> bytes:
    """A fresh random per-credential salt."""
    return secrets.token_bytes(SALT_BYTES)


def hash_secret(secret: str, salt: bytes, pepper: bytes) -> bytes:
    """``HMAC-SHA-256(key=pepper, msg=salt || secret)`` — the only form a secret is stored in."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    if len(pepper) != PEPPER_BYTES:
        raise ValueError(f"pepper must be {PEPPER_BYTES} bytes")
    return hmac.new(pepper, salt + secret.encode("utf-8"), hashlib.sha256).digest()


def verify_secret(secret: str, salt: bytes, pepper: bytes, expected: bytes) -> bool:
    """Constant-time check of ``secret`` against a stored hash."""
    return hmac.compare_digest(hash_secret(secret, salt, pepper), expected)


def load_or_create_pepper(data_dir: Path) -> bytes:
    """Return the server pepper from ``<data_dir>/pepper``, creating it on first start.

    The file is created complete-or-not-at-all: written to a private temporary file (mode 0600,
    ``O_CREAT|O_EXCL``) and then hard-linked into place, which fails if another process won the
    race — in which case we read theirs. A pepper readable by group/other, of the wrong length or
    not a regular file is refused rather than repaired: any of those means someone changed it,
    and silently replacing it would invalidate every token.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / _PEPPER_FILE
    if not os.path.lexists(path):
        _create_pepper(path)
    return _read_pepper(path)


def _create_pepper(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits, but be explicit
            os.write(fd, secrets.token_bytes(PEPPER_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        # FileExistsError: a concurrent start created it first; use that one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _read_pepper(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DataDirError(f"cannot open pepper file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataDirError(f"pepper file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise DataDirError(
                f"pepper file {path} is accessible by group/other "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); it must be 0600"
            )
        data = os.read(fd, PEPPER_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != PEPPER_BYTES:
        raise DataDirError(
            f"pepper file {path} has the wrong length ({len(data)} bytes, expected "
            f"{PEPPER_BYTES}); refusing to use or replace it"
        )
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
