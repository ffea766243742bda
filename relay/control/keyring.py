"""Where key-encryption keys (KEKs) come from, and the data directory's key files.

The precedence and the file formats are described for operators in
:mod:`relay.control.secrets`; this module reads and writes them. A :class:`KeySet` is one
reading of every source: the current KEK first, then every other KEK that still opens old
blobs, each with a human-readable ``source`` (never the key bytes).

Data directory files (all 32 raw bytes, mode 0600, written complete-or-not-at-all):

* ``kek``: the current KEK when no environment variable names one;
* ``kek.retired-<id>``: a KEK that ``relay keys rotate`` replaced; it opens blobs not
  re-wrapped yet until ``relay keys retire`` deletes it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.errors import ConfigError, DataDirError
from relay.secret_files import read_owner_only_file

__all__ = [
    "KEK_BYTES",
    "KEK_ENV",
    "KEK_FILE",
    "KEK_FILE_ENV",
    "RETIRED_PREFIX",
    "Kek",
    "KeySet",
    "data_dir_key_files",
    "delete_key_files",
    "kek_id",
    "keys_lock",
    "load_keyset",
    "rotate_data_dir_kek",
    "sources_signature",
]

KEK_BYTES = 32
KEK_ENV = "RELAY_KEK"
KEK_FILE_ENV = "RELAY_KEK_FILE"
KEK_FILE = "kek"
RETIRED_PREFIX = "kek.retired-"
LOCK_FILE = ".keys.lock"
#: A key file from a secret manager is a few lines; anything bigger is not one.
MAX_KEY_FILE = 64 * 1024
KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

Mode = Literal["data_dir", "env", "file", "given"]


def kek_id(kek: bytes) -> str:
    """The public id of a KEK: ``k`` + 16 hex digits of a domain-separated SHA-256."""
    return "k" + hashlib.sha256(b"relay kek id\x00" + kek).hexdigest()[:16]


@dataclass(frozen=True)
class Kek:
    kid: str
    key: bytes = field(repr=False)  # never in a repr, a log line or a traceback
    source: str
    #: The data directory file holding it (``relay keys retire`` deletes those), if any.
    path: Path | None = None


@dataclass(frozen=True)
class KeySet:
    """Every configured KEK, current first (one entry per id); ``mode`` says where the
    current one comes from."""

    mode: Mode
    keys: tuple[Kek, ...]

    @property
    def current(self) -> str:
        return self.keys[0].kid

    def by_id(self) -> dict[str, bytes]:
        return {k.kid: k.key for k in self.keys}


def load_keyset(data_dir: Path, environ: Mapping[str, str], *, create: bool) -> KeySet:
    """Read every KEK source (see :mod:`relay.control.secrets` for the precedence).

    ``create``: make ``<data_dir>/kek`` when no environment variable names a KEK and there is
    none yet (the edge does, on first start); otherwise that is a :class:`ConfigError`.
    """
    env_keys = (environ.get(KEK_ENV) or "").strip()
    file_name = (environ.get(KEK_FILE_ENV) or "").strip()
    if env_keys and file_name:
        raise ConfigError(
            f"both {KEK_ENV} and {KEK_FILE_ENV} are set; set one of them (put every key, "
            "current first, in that one)"
        )
    found: list[Kek] = []
    mode: Mode
    if file_name:
        mode = "file"
        found += _keys_from_file(Path(file_name))
    elif env_keys:
        mode = "env"
        for i, item in enumerate(env_keys.split(",")):
            key = _decode_key(item.strip(), f"{KEK_ENV} key #{i + 1}")
            found.append(Kek(kek_id(key), key, f"{KEK_ENV} key #{i + 1}"))
    else:
        mode = "data_dir"
        path = data_dir / KEK_FILE
        if not os.path.lexists(path):
            if not create:
                raise ConfigError(
                    f"no key-encryption key in {data_dir} (neither {KEK_ENV} nor "
                    f"{KEK_FILE_ENV} is set, and the edge creates {path} on its first start)"
                )
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_key_file(path, secrets.token_bytes(KEK_BYTES), replace=False)
    # Whatever the mode, the data directory's files still open the blobs they wrapped:
    # moving from the file to the environment is a rotation like any other.
    for path, key in _data_dir_keys(data_dir):
        found.append(Kek(kek_id(key), key, str(path), path))
    unique: dict[str, Kek] = {}
    for kek in found:
        unique.setdefault(kek.kid, kek)
    return KeySet(mode, tuple(unique.values()))


def data_dir_key_files(data_dir: Path) -> list[tuple[Path, str]]:
    """``(path, key id)`` of every KEK file in the data directory: ``kek`` first."""
    return [(path, kek_id(key)) for path, key in _data_dir_keys(data_dir)]


def _data_dir_keys(data_dir: Path) -> list[tuple[Path, bytes]]:
    out: list[tuple[Path, bytes]] = []
    path = data_dir / KEK_FILE
    if os.path.lexists(path):
        out.append((path, read_kek_file(path)))
    for retired in _retired_paths(data_dir):
        key = read_kek_file(retired)
        named = retired.name[len(RETIRED_PREFIX) :]
        if kek_id(key) != named:
            raise DataDirError(
                f"KEK file {retired} holds key {kek_id(key)}, not the {named} its name says; "
                "refusing to guess which is right"
            )
        out.append((retired, key))
    return out


def _retired_paths(data_dir: Path) -> list[Path]:
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataDirError(f"cannot list {data_dir}: {exc.strerror}") from None
    return [
        data_dir / n
        for n in sorted(names)
        if n.startswith(RETIRED_PREFIX) and KID_RE.fullmatch(n[len(RETIRED_PREFIX) :])
    ]


def read_kek_file(path: Path) -> bytes:
    """A data directory KEK file: 32 raw bytes, owner-only, not a symlink."""
    data = read_owner_only_file(path)
    if len(data) != KEK_BYTES:
        raise DataDirError(
            f"KEK file {path} has the wrong length ({len(data)} bytes, expected {KEK_BYTES}); "
            "refusing to use or replace it"
        )
    return data


def _keys_from_file(path: Path) -> list[Kek]:
    # A secret manager's mount is often a symlink (Kubernetes: ..data/<name>), so this one
    # file is followed; it must still be a regular file nobody else can read.
    what = f"{KEK_FILE_ENV} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open {what}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what} is accessible by group/other (mode {stat.S_IMODE(st.st_mode):04o}); "
                "make it 0400 or 0600 (Kubernetes: defaultMode 0400)"
            )
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(f"{what} is larger than {MAX_KEY_FILE} bytes; it holds keys, one a line")
    keys: list[Kek] = []
    for number, raw in enumerate(data.decode("ascii", "replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = _decode_key(line, f"{what} line {number}")
        keys.append(Kek(kek_id(key), key, f"{what} line {number}"))
    if not keys:
        raise ConfigError(f"{what} holds no key (one base64 key a line, the current first)")
    return keys


def _decode_key(item: str, what: str) -> bytes:
    # Messages never echo the value: it is a key.
    try:
        key = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.urlsafe_b64decode(item)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{what} is not valid base64") from None
    if len(key) != KEK_BYTES:
        raise ConfigError(
            f"{what} decodes to {len(key)} bytes; a KEK is {KEK_BYTES} random bytes "
            "(e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key


# -- noticing that a source changed --------------------------------------------------------


def sources_signature(data_dir: Path, environ: Mapping[str, str]) -> tuple[object, ...]:
    """A cheap fingerprint of the key files (a few ``stat`` calls and one directory
    listing): it changes whenever a rotation, a retirement or a secret manager replaces one
    of them, so a running edge can notice without re-reading the keys each time."""
    paths = [data_dir / KEK_FILE, *_retired_paths_quiet(data_dir)]
    file_name = (environ.get(KEK_FILE_ENV) or "").strip()
    out: list[object] = [_stat_tuple(p, follow=False) for p in paths]
    out.append(tuple(p.name for p in paths))
    if file_name:
        out.append(_stat_tuple(Path(file_name), follow=True))
    return tuple(out)


def _retired_paths_quiet(data_dir: Path) -> list[Path]:
    try:
        return _retired_paths(data_dir)
    except DataDirError:
        return []


def _stat_tuple(path: Path, *, follow: bool) -> tuple[int, ...] | None:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- rotation and retirement in the data directory -----------------------------------------


@contextlib.contextmanager
def keys_lock(data_dir: Path) -> Iterator[None]:
    """One ``relay keys rotate``/``retire`` at a time on a data directory."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DataDirError(f"cannot open {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirError(
                f"another `relay keys` command is working on {data_dir}; try again when it ends"
            ) from None
        yield
    finally:
        os.close(fd)  # also releases the lock


def rotate_data_dir_kek(data_dir: Path) -> tuple[str, str]:
    """Make a new current KEK in ``<data_dir>/kek``; the old one becomes
    ``kek.retired-<old id>``. Returns ``(old id, new id)``.

    The old key is written to its new name *before* ``kek`` is replaced, so a crash at any
    point leaves every key on disk (at worst twice).
    """
    path = data_dir / KEK_FILE
    if not os.path.lexists(path):
        raise ConfigError(f"no key-encryption key in {data_dir} yet; nothing to rotate")
    old = read_kek_file(path)
    old_id = kek_id(old)
    retired = data_dir / f"{RETIRED_PREFIX}{old_id}"
    # Left by a rotation that stopped before replacing ``kek``: the same key, by its name.
    if not _write_key_file(retired, old, replace=False) and read_kek_file(retired) != old:
        raise DataDirError(f"{retired} exists and holds another key; refusing to replace it")
    new = secrets.token_bytes(KEK_BYTES)
    _write_key_file(path, new, replace=True)
    return old_id, kek_id(new)


def delete_key_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    for parent in {p.parent for p in paths}:
        _fsync_dir(parent)


def _write_key_file(path: Path, key: bytes, *, replace: bool) -> bool:
    """Write a key 0600 from its first byte, complete or not at all. ``replace`` False: an
    existing file is kept (returns False: another process, or an earlier run, was first)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits, but be explicit
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
