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
only the 32-byte DEK: the secret's ciphertext stays as it is (it is decrypted in memory only
to check its tag, never encrypted again). Every byte of a blob is still
covered: flipping the key id names another (or no) KEK, flipping the wrapped key fails the
wrap's tag, anything else fails the data's tag or the format check.

KEKs are 32 random bytes. Their ids are derived from the key itself (``k`` + 16 hex digits of
``SHA-256("relay kek id" ‖ key)``): stable, non-secret, and the same on every node holding the
same key, with nothing for the operator to name.

Where KEKs come from (:meth:`SecretBox.load`, :mod:`relay.control.keyring`), first match wins
for the *current* key (the one that seals new secrets):

1. ``RELAY_KEK_FILE``: the path of a file holding one or more base64 keys, one a line (blank
   lines and ``#`` comments are skipped), the first current; the form a secret manager mounts
   (Kubernetes secret volume, systemd ``LoadCredential=``, Vault agent). The path may be a
   symlink; the file must not be readable by group/other.
2. ``RELAY_KEK``: one or more base64 keys separated by commas, the first current.
3. ``<data_dir>/kek``: 32 raw bytes, mode 0600, created on first start when neither variable
   is set (complete-or-not-at-all, like the token pepper).

Setting both variables is refused: which one wins would be a guess. Whatever the source of the
current key, every key file in the data directory still *opens* the blobs it wrapped:
``<data_dir>/kek`` (so moving from the file to the environment is a rotation like any other)
and ``<data_dir>/kek.retired-<id>``, the keys ``relay keys rotate`` replaced
(relay/cli_keys.py), until ``relay keys retire`` deletes them once no blob needs them.

A running edge keeps opening its secrets through a rotation: a box made by :meth:`load`
re-reads its key sources when they change on disk (checked with a few ``stat`` calls before
each seal, and when a blob names a key id it does not hold), and on SIGHUP
(:meth:`SecretBox.read_keys`, :meth:`SecretBox.use`).

A KEK kept in the data directory protects secrets in database dumps and backups of the store,
not against someone who can read the whole data directory; a secret manager's file or the
environment is the way to keep the two apart.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.control.keyring import (
    KEK_BYTES,
    KEK_ENV,
    KEK_FILE,
    KEK_FILE_ENV,
    Kek,
    KeySet,
    kek_id,
    load_keyset,
    sources_signature,
)
from relay.errors import (
    ConfigError,
    MalformedSecret,
    RelayError,
    SecretAuthenticationFailed,
    UnknownKeyId,
)

__all__ = [
    "FORMAT_VERSION",
    "KEK_BYTES",
    "KEK_ENV",
    "KEK_FILE",
    "KEK_FILE_ENV",
    "MAGIC",
    "SecretBox",
    "kek_id",
    "load_or_create_kek",
    "sealed_key_id",
]

log = logging.getLogger("relay.control.secrets")

MAGIC = b"RLYS"
FORMAT_VERSION = 1
_NONCE = 12
_TAG = 16
_DEK = 32
_WRAPPED = _DEK + _TAG
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def load_or_create_kek(data_dir: Path) -> bytes:
    """The KEK in ``<data_dir>/kek``, created (0600, complete-or-not-at-all) on first start.

    A file readable by group/other or of the wrong length is refused, never replaced: replacing
    it would make every sealed secret unreadable.
    """
    keys = load_keyset(data_dir, {}, create=True)
    return keys.keys[0].key


def sealed_key_id(blob: bytes) -> str:
    """The id of the KEK a blob's data key is wrapped under (read from its header; nothing
    is decrypted). Raises :class:`~relay.errors.MalformedSecret` for anything not a blob."""
    return _parse(blob)[0]


def _context(owner: str, name: str) -> bytes:
    out = bytearray()
    for part in (owner, name):
        raw = part.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ConfigError("secret owner/name is too long")
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


@dataclass(frozen=True)
class _Loaded:
    """The keys in use, swapped as one object (seal and open may run on other threads)."""

    keys: KeySet
    aeads: dict[str, AESGCM]


@dataclass(frozen=True)
class _Source:
    data_dir: Path
    environ: Mapping[str, str]


class SecretBox:
    """Seals and opens secrets under a set of KEKs, one of which is current."""

    def __init__(self, keks: Mapping[str, bytes], current: str) -> None:
        if current not in keks:
            raise ConfigError(f"current KEK id {current!r} is not among the configured keys")
        ordered = [current, *(kid for kid in keks if kid != current)]
        self._loaded = self._prepare(
            KeySet("given", tuple(Kek(kid, bytes(keks[kid]), "given") for kid in ordered))
        )
        self._source: _Source | None = None
        self._signature: tuple[object, ...] = ()
        self._refresh_lock = threading.RLock()

    @staticmethod
    def _prepare(keys: KeySet) -> _Loaded:
        for kek in keys.keys:
            if _KID_RE.fullmatch(kek.kid) is None:
                raise ConfigError(f"invalid KEK id {kek.kid!r} (1-64 of A-Z a-z 0-9 . _ -)")
            if len(kek.key) != KEK_BYTES:
                raise ConfigError(f"KEK {kek.kid!r} must be {KEK_BYTES} bytes, got {len(kek.key)}")
        return _Loaded(keys, {k.kid: AESGCM(k.key) for k in keys.keys})

    @property
    def current(self) -> str:
        return self._loaded.keys.current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._loaded.aeads)

    @property
    def keys(self) -> KeySet:
        """The keys in use, with where each came from (``repr`` never shows key bytes)."""
        return self._loaded.keys

    @classmethod
    def load(cls, data_dir: Path, *, environ: Mapping[str, str] | None = None) -> SecretBox:
        """The edge's box: keys from ``RELAY_KEK_FILE``, ``RELAY_KEK`` or ``<data_dir>/kek``
        (created on first start), plus the data directory's other key files; see the module
        doc. The box re-reads them when they change (:meth:`refresh`)."""
        env = dict(os.environ if environ is None else environ)
        source = _Source(Path(data_dir), env)
        # The signature is taken before reading: a change in between is seen next time.
        signature = sources_signature(source.data_dir, env)
        keys = load_keyset(source.data_dir, env, create=True)
        box = cls.__new__(cls)
        box._loaded = cls._prepare(keys)
        box._source = source
        box._signature = signature
        box._refresh_lock = threading.RLock()
        return box

    # -- reloading the keys ------------------------------------------------------------------

    def read_keys(self) -> KeySet | None:
        """Read the key sources again (None for a box given its keys); nothing changes
        until :meth:`use`. Raises :class:`~relay.errors.RelayError` if they do not load."""
        if self._source is None:
            return None
        return load_keyset(self._source.data_dir, self._source.environ, create=False)

    def use(self, keys: KeySet) -> bool:
        """Seal and open with ``keys`` from now on; whether anything changed."""
        loaded = self._prepare(keys)
        with self._refresh_lock:
            changed = loaded.keys.by_id() != self._loaded.keys.by_id() or (
                loaded.keys.current != self._loaded.keys.current
            )
            self._loaded = loaded
            # The files may have changed since ``keys`` were read: the next check reads
            # them once more rather than trust a signature taken now.
            self._signature = ()
        return changed

    def refresh(self) -> bool:
        """Re-read the key sources if they changed on disk since last read: a rotation
        replaced ``kek``, a retirement deleted a key, a secret manager replaced its file.
        Whether the keys changed. A source that does not load now is logged and the keys
        in use stay: a rotation half seen must not stop the edge opening what it could."""
        source = self._source
        if source is None:
            return False
        signature = sources_signature(source.data_dir, source.environ)
        if signature == self._signature:
            return False
        with self._refresh_lock:
            if signature == self._signature:
                return False
            try:
                keys = load_keyset(source.data_dir, source.environ, create=False)
            except RelayError as exc:
                self._signature = signature  # logged once per change, not once per secret
                log.error("key-encryption keys not re-read, the ones in use stay: %s", exc)
                return False
            before = self._loaded.keys
            changed = self.use(keys)
            self._signature = signature
        if changed:
            log.info(
                "key-encryption keys re-read: current %s (was %s), %d keys",
                keys.current,
                before.current,
                len(keys.keys),
            )
        return changed

    def seal(self, plaintext: bytes, *, owner: str, name: str) -> bytes:
        """Encrypt ``plaintext`` for (owner, name) under a fresh DEK wrapped by the current KEK."""
        # A rotation may have made another key current since: new secrets go under it, so
        # that retiring the old key does not find a blob sealed a moment after the rotation.
        self.refresh()
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
        try:
            dek = self._unwrap(kid, wnonce, wdek, ctx)
        except UnknownKeyId:
            # Re-wrapped by a rotation under a key this process has not read yet.
            if not self.refresh():
                raise
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
        return _parse(blob)[0] != self.current

    def rewrap(self, blob: bytes, *, owner: str, name: str) -> bytes:
        """The same secret with its DEK re-wrapped under the current KEK.

        The data ciphertext is kept as it is (never encrypted again); a blob already on the
        current KEK is returned unchanged. The data's tag is still checked first (which,
        with AES-GCM, decrypts it in memory), so a tampered blob is reported here rather
        than re-wrapped.
        """
        self.open(blob, owner=owner, name=name)
        ctx = _context(owner, name)
        kid, wnonce, wdek, rest = _parse(blob)
        if kid == self.current:
            return bytes(blob)
        dek = self._unwrap(kid, wnonce, wdek, ctx)
        return self._wrap(dek, ctx) + rest

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _data_aad(ctx: bytes) -> bytes:
        return MAGIC + bytes([FORMAT_VERSION]) + ctx

    def _wrap(self, dek: bytes, ctx: bytes) -> bytes:
        loaded = self._loaded  # one reading: the id and the key must match
        kid = loaded.keys.current.encode("ascii")
        header = MAGIC + bytes([FORMAT_VERSION, len(kid)]) + kid
        wnonce = os.urandom(_NONCE)
        wdek = loaded.aeads[loaded.keys.current].encrypt(wnonce, dek, header + ctx)
        return header + wnonce + wdek

    def _unwrap(self, kid: str, wnonce: bytes, wdek: bytes, ctx: bytes) -> bytes:
        aeads = self._loaded.aeads
        aead = aeads.get(kid)
        if aead is None:
            raise UnknownKeyId(
                f"secret was sealed with key-encryption key {kid!r}, which is not configured "
                f"(configured: {', '.join(sorted(aeads))})"
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
