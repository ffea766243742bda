"""Secrets at rest: application-layer envelope encryption.

Every secret gets a fresh 256-bit data key (DEK). The plaintext is sealed with AES-256-GCM under
the DEK; the DEK is wrapped (AES-256-GCM again) under a key-encryption key (KEK) that the
operator holds. Both encryptions take the secret's ``owner`` and ``name`` as associated data, so
a blob copied onto another secret's row or file does not open.

Blob format, version 1 (all lengths fixed except the key id and the ciphertext)::

    magic   b"RLYS"                      4
    version 0x01                         1
    kid_len                              1      1..64
    kid     ASCII [A-Za-z0-9._-]         kid_len
    wnonce  nonce wrapping the DEK       12
    wdek    AES-GCM(KEK, DEK) + tag      48
    nonce   nonce sealing the data       12
    ct      AES-GCM(DEK, plaintext)+tag  >= 16

Associated data: the wrap authenticates ``magic‖version‖kid‖ctx``, the data authenticates
``magic‖version‖ctx``, where ``ctx`` is owner and name, each length-prefixed (so
``("ab", "c")`` and ``("a", "bc")`` differ). The data's AAD leaves out the key id and the
wrapped key on purpose: :meth:`SecretBox.rewrap` moves a blob to another KEK by re-wrapping
only the 32-byte DEK, without ever decrypting the secret itself. Every byte of a blob is still
covered: flipping the key id names another (or no) KEK, flipping the wrapped key fails the
wrap's tag, anything else fails the data's tag or the format check.

KEKs are 32 random bytes. Their ids are derived from the key itself (``k`` + 16 hex digits of
``SHA-256("relay kek id" ‖ key)``): stable, non-secret, and the same on every node holding the
same key, with nothing for the operator to name. Where they come from
(:meth:`SecretBox.load`):

* ``RELAY_KEK``: one or more base64 keys separated by commas; the first is current (seals new
  secrets), the rest only open old ones. This is how a key is rotated: put the new key first,
  :meth:`~SecretBox.rewrap` everything, then drop the old one.
* ``<data_dir>/kek``: 32 raw bytes, mode 0600, created on first start when ``RELAY_KEK`` is not
  set (same creation path as the token pepper). When ``RELAY_KEK`` is set an existing file still
  opens old blobs, so moving from the file to the environment is a rotation like any other.

A KEK kept in the data directory protects secrets in database dumps and backups of the store,
not against someone who can read the whole data directory; the environment variable (from a
secret manager) is the way to keep the two apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.control.tokens import _create_pepper
from relay.errors import (
    ConfigError,
    DataDirError,
    MalformedSecret,
    SecretAuthenticationFailed,
    UnknownKeyId,
)
from relay.secret_files import read_owner_only_file

__all__ = [
    "FORMAT_VERSION",
    "KEK_BYTES",
    "KEK_ENV",
    "KEK_FILE",
    "SecretBox",
    "kek_id",
    "load_or_create_kek",
]

MAGIC = b"RLYS"
FORMAT_VERSION = 1
KEK_BYTES = 32
KEK_ENV = "RELAY_KEK"
KEK_FILE = "kek"
_NONCE = 12
_TAG = 16
_DEK = 32
_WRAPPED = _DEK + _TAG
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def kek_id(kek: bytes) -> str:
    """The public id of a KEK: ``k`` + 16 hex digits of a domain-separated SHA-256."""
    return "k" + hashlib.sha256(b"relay kek id\x00" + kek).hexdigest()[:16]


def load_or_create_kek(data_dir: Path) -> bytes:
    """The KEK in ``<data_dir>/kek``, created (0600, complete-or-not-at-all) on first start.

    A file readable by group/other or of the wrong length is refused, never replaced: replacing
    it would make every sealed secret unreadable.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / KEK_FILE
    if not os.path.lexists(path):
        _create_pepper(path)  # 32 random bytes, 0600, O_EXCL temp file linked into place
    return _read_kek_file(path)


def _read_kek_file(path: Path) -> bytes:
    data = read_owner_only_file(path)
    if len(data) != KEK_BYTES:
        raise DataDirError(
            f"KEK file {path} has the wrong length ({len(data)} bytes, expected {KEK_BYTES}); "
            "refusing to use or replace it"
        )
    return data


def _context(owner: str, name: str) -> bytes:
    out = bytearray()
    for part in (owner, name):
        raw = part.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ConfigError("secret owner/name is too long")
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


class SecretBox:
    """Seals and opens secrets under a set of KEKs, one of which is current."""

    def __init__(self, keks: Mapping[str, bytes], current: str) -> None:
        if current not in keks:
            raise ConfigError(f"current KEK id {current!r} is not among the configured keys")
        for kid, key in keks.items():
            if _KID_RE.fullmatch(kid) is None:
                raise ConfigError(f"invalid KEK id {kid!r} (1-64 of A-Z a-z 0-9 . _ -)")
            if len(key) != KEK_BYTES:
                raise ConfigError(f"KEK {kid!r} must be {KEK_BYTES} bytes, got {len(key)}")
        self._keks = {kid: AESGCM(bytes(key)) for kid, key in keks.items()}
        self._current = current

    @property
    def current(self) -> str:
        return self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keks)

    @classmethod
    def load(cls, data_dir: Path, *, environ: Mapping[str, str] | None = None) -> SecretBox:
        """The edge's box: keys from ``RELAY_KEK`` (current first) and/or ``<data_dir>/kek``."""
        env = os.environ if environ is None else environ
        keks: dict[str, bytes] = {}
        current: str | None = None
        raw = env.get(KEK_ENV, "").strip()
        if raw:
            for i, item in enumerate(raw.split(",")):
                key = _decode_env_key(item.strip(), i)
                kid = kek_id(key)
                keks.setdefault(kid, key)
                current = current or kid
            file_path = data_dir / KEK_FILE
            if os.path.lexists(file_path):
                key = _read_kek_file(file_path)
                keks.setdefault(kek_id(key), key)
        else:
            key = load_or_create_kek(data_dir)
            current = kek_id(key)
            keks[current] = key
        assert current is not None
        return cls(keks, current)

    def seal(self, plaintext: bytes, *, owner: str, name: str) -> bytes:
        """Encrypt ``plaintext`` for (owner, name) under a fresh DEK wrapped by the current KEK."""
        ctx = _context(owner, name)
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        ct = AESGCM(dek).encrypt(nonce, bytes(plaintext), self._data_aad(ctx))
        return self._wrap(dek, ctx) + nonce + ct

    def open(self, blob: bytes, *, owner: str, name: str) -> bytes:
        """Decrypt a blob sealed for (owner, name).

        Raises :class:`~relay.errors.MalformedSecret`, :class:`~relay.errors.UnknownKeyId` or
        :class:`~relay.errors.SecretAuthenticationFailed` (tampering, another secret's blob, or
        a KEK whose bytes changed under the same id); all are :class:`SecretError`.
        """
        ctx = _context(owner, name)
        kid, wnonce, wdek, rest = _parse(blob)
        dek = self._unwrap(kid, wnonce, wdek, ctx)
        nonce, ct = rest[:_NONCE], rest[_NONCE:]
        try:
            return AESGCM(dek).decrypt(nonce, ct, self._data_aad(ctx))
        except InvalidTag:
            raise SecretAuthenticationFailed(
                f"secret {owner}/{name} failed authentication (tampered, or not this secret)"
            ) from None

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether the blob is wrapped by a KEK other than the current one."""
        return _parse(blob)[0] != self._current

    def rewrap(self, blob: bytes, *, owner: str, name: str) -> bytes:
        """The same secret with its DEK re-wrapped under the current KEK.

        The data ciphertext is kept as it is (it is not decrypted); a blob already on the
        current KEK is returned unchanged. The data's tag is still checked first, so a
        tampered blob is reported here rather than re-wrapped.
        """
        self.open(blob, owner=owner, name=name)
        ctx = _context(owner, name)
        kid, wnonce, wdek, rest = _parse(blob)
        if kid == self._current:
            return bytes(blob)
        dek = self._unwrap(kid, wnonce, wdek, ctx)
        return self._wrap(dek, ctx) + rest

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _data_aad(ctx: bytes) -> bytes:
        return MAGIC + bytes([FORMAT_VERSION]) + ctx

    def _wrap(self, dek: bytes, ctx: bytes) -> bytes:
        kid = self._current.encode("ascii")
        header = MAGIC + bytes([FORMAT_VERSION, len(kid)]) + kid
        wnonce = os.urandom(_NONCE)
        wdek = self._keks[self._current].encrypt(wnonce, dek, header + ctx)
        return header + wnonce + wdek

    def _unwrap(self, kid: str, wnonce: bytes, wdek: bytes, ctx: bytes) -> bytes:
        aead = self._keks.get(kid)
        if aead is None:
            raise UnknownKeyId(
                f"secret was sealed with key-encryption key {kid!r}, which is not configured "
                f"(configured: {', '.join(sorted(self._keks))})"
            )
        raw_kid = kid.encode("ascii")
        header = MAGIC + bytes([FORMAT_VERSION, len(raw_kid)]) + raw_kid
        try:
            return aead.decrypt(wnonce, wdek, header + ctx)
        except InvalidTag:
            raise SecretAuthenticationFailed(
                f"data key of a secret under KEK {kid!r} failed authentication "
                "(tampered, not this secret, or the KEK's bytes changed)"
            ) from None


def _parse(blob: bytes) -> tuple[str, bytes, bytes, bytes]:
    """Split a blob into ``(kid, wrap nonce, wrapped DEK, nonce‖ciphertext)``."""
    blob = bytes(blob)
    if len(blob) < len(MAGIC) + 2 or blob[: len(MAGIC)] != MAGIC:
        raise MalformedSecret("not a sealed secret (bad magic)")
    version = blob[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise MalformedSecret(f"unsupported sealed-secret format version {version}")
    kid_len = blob[len(MAGIC) + 1]
    pos = len(MAGIC) + 2
    raw_kid = blob[pos : pos + kid_len]
    pos += kid_len
    if len(blob) < pos + _NONCE + _WRAPPED + _NONCE + _TAG:
        raise MalformedSecret("sealed secret is truncated")
    try:
        kid = raw_kid.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedSecret("sealed secret has an invalid key id") from None
    if _KID_RE.fullmatch(kid) is None:
        raise MalformedSecret("sealed secret has an invalid key id")
    wnonce = blob[pos : pos + _NONCE]
    wdek = blob[pos + _NONCE : pos + _NONCE + _WRAPPED]
    return kid, wnonce, wdek, blob[pos + _NONCE + _WRAPPED :]


def _decode_env_key(item: str, index: int) -> bytes:
    # Messages never echo the value: it is a key.
    try:
        key = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.urlsafe_b64decode(item)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{KEK_ENV} key #{index + 1} is not valid base64") from None
    if len(key) != KEK_BYTES:
        raise ConfigError(
            f"{KEK_ENV} key #{index + 1} decodes to {len(key)} bytes; a KEK is {KEK_BYTES} "
            "random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key
