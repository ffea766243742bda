"""Pending ACME challenges, shared by every process of one edge through its data directory.

With ``--workers N`` the CA's validation request lands on whichever worker the kernel
gives it (SO_REUSEPORT), not necessarily the one whose order is pending: the holder of a
name may have moved to another worker mid-order (its agent reconnected), or a pool of the
name spans workers. So each challenge an order sets up is written to
``<data_dir>/acme/challenges/`` (0600, in a 0700 directory) as well as kept in memory, and
a worker that does not know a token or name looks there.

* HTTP-01: ``http-01.<token>`` holds the key authorization. Tokens are base64url
  (RFC 8555 §8.1): anything else is never looked up, so no request path reaches outside
  the directory.
* TLS-ALPN-01: ``tls-alpn-01.<name>.sealed`` holds the RFC 8737 certificate and its key
  (a throwaway key made for the challenge, not the certificate's), sealed by the edge's
  SecretBox like every private key relay writes (owner ``acme``, name ``challenge
  <name>``): no private key is on disk in plaintext, even for a minute.

A file lives as long as its order: removed when the order ends, and one older than
:data:`MAX_AGE` (a worker killed mid-order) is ignored and removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from relay.certs.local_ca import write_file_atomic
from relay.control.secrets import SecretBox
from relay.errors import SecretError

__all__ = ["MAX_AGE", "SharedChallenges"]

log = logging.getLogger("relay.certs.acme")

#: A challenge file older than this belongs to an order that cannot still be pending (an
#: order is given 90 s by default).
MAX_AGE = 3600.0
#: RFC 8555 §8.1: a token is base64url without padding (128 bits at least).
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: A normalized hostname (what the CA validates): lowercase labels, no wildcard.
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_PEM_KEY = b"-----BEGIN PRIVATE KEY-----"
#: The SecretBox owner of a sealed challenge (its name: ``challenge <hostname>``).
CHALLENGE_OWNER = "acme"


class SharedChallenges:
    """The challenges of this process's pending orders (in memory) and of every other
    process's of the same data directory (files)."""

    def __init__(
        self, directory: Path, box: SecretBox, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.box = box
        self._now = clock
        self._http01: dict[str, bytes] = {}
        self._alpn: dict[str, tuple[bytes, bytes]] = {}
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale()

    # -- this process's orders ----------------------------------------------------------------

    def put_http01(self, token: str, key_authorization: bytes) -> None:
        if _TOKEN.fullmatch(token) is None:
            raise ValueError(f"not an ACME token: {token!r}")
        self._http01[token] = key_authorization
        self._write(f"http-01.{token}", key_authorization)

    def put_tls_alpn01(self, name: str, pair: tuple[bytes, bytes]) -> None:
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"not a hostname to validate: {name!r}")
        self._alpn[name] = pair
        sealed = self.box.seal(pair[0] + pair[1], owner=CHALLENGE_OWNER, name=f"challenge {name}")
        self._write(f"tls-alpn-01.{name}.sealed", sealed)

    def drop_http01(self, token: str) -> None:
        self._http01.pop(token, None)
        self._remove(f"http-01.{token}")

    def drop_tls_alpn01(self, name: str) -> None:
        self._alpn.pop(name, None)
        self._remove(f"tls-alpn-01.{name}.sealed")

    # -- what a front asks -------------------------------------------------------------------

    def http01(self, token: str) -> bytes | None:
        """The key authorization for ``token``, whichever process's order it belongs to."""
        found = self._http01.get(token)
        if found is not None or _TOKEN.fullmatch(token) is None:
            return found
        return self._read(f"http-01.{token}")

    def tls_alpn01(self, name: str) -> tuple[bytes, bytes] | None:
        """``(cert PEM, key PEM)`` of the challenge certificate for ``name``."""
        found = self._alpn.get(name)
        if found is not None or _NAME.fullmatch(name) is None:
            return found
        sealed = self._read(f"tls-alpn-01.{name}.sealed")
        if sealed is None:
            return None
        try:
            data = self.box.open(sealed, owner=CHALLENGE_OWNER, name=f"challenge {name}")
        except SecretError as exc:
            log.warning("ACME challenge for %s does not open: %s", name, exc.one_line())
            return None
        cut = data.find(_PEM_KEY)
        if cut <= 0:
            return None  # half-written by hand, or not ours: no challenge
        return data[:cut], data[cut:]

    # -- files --------------------------------------------------------------------------------

    def _write(self, filename: str, data: bytes) -> None:
        try:
            write_file_atomic(self.directory / filename, data, 0o600)
        except OSError as exc:
            # This process still answers it; only another worker's visitor would miss it.
            log.warning("ACME challenge not shared with the other workers: %s", exc)

    def _read(self, filename: str) -> bytes | None:
        path = self.directory / filename
        try:
            with open(path, "rb") as file:
                if self._now() - os.fstat(file.fileno()).st_mtime > MAX_AGE:
                    raise _Stale
                return file.read()
        except FileNotFoundError:
            return None
        except _Stale:
            self._remove(filename)
            return None
        except OSError as exc:
            log.warning("ACME challenge %s unreadable: %s", filename, exc)
            return None

    def _remove(self, filename: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / filename).unlink()

    def _remove_stale(self) -> None:
        now = self._now()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > MAX_AGE:
                        os.unlink(entry.path)


class _Stale(Exception):
    pass
