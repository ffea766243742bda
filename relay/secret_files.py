"""Reading a secret from a file that only its owner may read: the certificate keys of
relay/certs and the key-encryption keys of relay/control both need it, and neither may
import the other (DESIGN.md, "Which way imports run"), so it lives on this floor below."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from relay.errors import DataDirError


def read_owner_only_file(path: Path) -> bytes:
    """The bytes of ``path``, a regular file (not a symlink) that group and others cannot
    read; otherwise DataDirError saying which of these it is not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DataDirError(f"cannot open key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DataDirError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise DataDirError(
                f"key file {path} is accessible by group/other "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); it must be 0600"
            )
        return f.read()
