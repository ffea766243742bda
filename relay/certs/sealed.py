"""The sealed secrets relay/certs keeps in a data directory, with the owner and name each was
sealed for: what ``relay keys rotate`` needs to re-wrap them (the wrap's associated data is
the owner and name, so a blob cannot be re-wrapped, or opened, without them).

* ``certs/<name>.key.sealed``: a certificate's private key, owner ``certs``, name = the
  hostname (``_.example.com`` on disk is ``*.example.com``);
* ``acme/<sha256(directory)[:16]>/account.key.sealed``: an ACME account key, owner ``acme``,
  name ``account <directory URL>``; the URL is in ``account.json`` beside it.

A key file is replaced while :func:`locked` holds its directory, both by the certificate
manager (a new certificate) and by a rotation (a re-wrapped key), so that a rotation never
writes back an older key over a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACCOUNT_OWNER",
    "CERTS_OWNER",
    "SealedFile",
    "acme_account_dir",
    "acme_account_secret",
    "cert_name",
    "cert_paths",
    "locked",
    "sealed_files",
]

#: The SecretBox owner of certificate private keys; the secret's name is the hostname.
CERTS_OWNER = "certs"
#: The SecretBox owner of ACME account keys; the name is ``account <directory URL>``.
ACCOUNT_OWNER = "acme"
KEY_SUFFIX = ".key.sealed"
ACCOUNT_KEY = "account.key.sealed"
ACCOUNT_META = "account.json"


@dataclass(frozen=True)
class SealedFile:
    path: Path
    owner: str
    name: str


def cert_paths(certs_dir: Path, name: str) -> tuple[Path, Path]:
    """``(chain, sealed key)`` of hostname ``name`` (a wildcard's ``*`` is ``_`` on disk:
    ``_`` is not a valid hostname label, so it cannot collide)."""
    stem = "_" + name[1:] if name.startswith("*.") else name
    return certs_dir / f"{stem}.pem", certs_dir / f"{stem}{KEY_SUFFIX}"


def cert_name(key_path: Path) -> str:
    stem = key_path.name[: -len(KEY_SUFFIX)]
    return "*" + stem[1:] if stem.startswith("_.") else stem


def acme_account_dir(data_dir: Path, directory_url: str) -> Path:
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
    return Path(data_dir) / "acme" / digest


def acme_account_secret(directory_url: str) -> str:
    return f"account {directory_url}"


def sealed_files(data_dir: Path) -> tuple[list[SealedFile], list[Path]]:
    """Every sealed secret of relay/certs under ``data_dir`` with its owner and name, and
    the sealed files whose name cannot be told (an ACME account key without its
    ``account.json``)."""
    found: list[SealedFile] = []
    unnamed: list[Path] = []
    for path in sorted((data_dir / "certs").glob(f"*{KEY_SUFFIX}")):
        if path.is_file() and not path.name.startswith("."):
            found.append(SealedFile(path, CERTS_OWNER, cert_name(path)))
    for path in sorted((data_dir / "acme").glob(f"*/{ACCOUNT_KEY}")):
        url = _account_directory(path.parent)
        if url is not None and acme_account_dir(data_dir, url) == path.parent:
            found.append(SealedFile(path, ACCOUNT_OWNER, acme_account_secret(url)))
        else:
            unnamed.append(path)
    return found, unnamed


def _account_directory(account_dir: Path) -> str | None:
    try:
        meta = json.loads((account_dir / ACCOUNT_META).read_text())
    except (OSError, ValueError):
        return None
    url = meta.get("directory") if isinstance(meta, dict) else None
    return url if isinstance(url, str) else None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (flock on the directory itself: no lock file
    to leave behind). Held for a file write or two; a waiter blocks that long."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
