"""``relay keys list|rotate|retire``: the key-encryption keys (KEKs) of secrets at rest.

Every sealed secret (today: certificate private keys and ACME account keys, files under the
data directory; the store holds none) has its data key wrapped by a KEK
(relay/control/secrets.py). ``rotate`` re-wraps every data key under the current KEK, keeping
each secret's ciphertext — after making a new KEK when the KEK lives in the data directory —
``retire`` deletes the data directory's old KEK files once no blob needs them, and ``list``
shows ids (never key bytes), which is current, and how many blobs each wraps.

Run them with the environment the edge runs with (``RELAY_KEK``/``RELAY_KEK_FILE``): they
read the keys exactly as the edge does. A running edge needs no restart: it re-reads the key
files when they change, and on SIGHUP.

relay/cli.py imports this module at its end to register these commands (``register``), so
this module imports relay/cli.py only inside functions (at load time it would be a cycle).
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from relay.certs.local_ca import write_file_atomic
from relay.certs.sealed import SealedFile, locked, sealed_files
from relay.cli_options import data_dir_option
from relay.control.keyring import (
    KEK_ENV,
    KEK_FILE,
    KEK_FILE_ENV,
    KeySet,
    data_dir_key_files,
    delete_key_files,
    keys_lock,
    load_keyset,
    rotate_data_dir_kek,
)
from relay.control.secrets import MAGIC, SecretBox, sealed_key_id
from relay.errors import DataDirError, MalformedSecret, RelayError

__all__ = ["register"]

#: A sealed secret is a key or a password: a file far bigger than this is not one.
MAX_BLOB = 1024 * 1024
#: How many blobs a message names before it says "and N more".
SHOWN = 5


@dataclass
class Scan:
    """Every file under the data directory that is a sealed blob, by the KEK id it names."""

    blobs: dict[Path, str] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)

    def by_key(self) -> Counter[str]:
        return Counter(self.blobs.values())

    def under(self, kid: str) -> list[Path]:
        return sorted(p for p, k in self.blobs.items() if k == kid)


def scan_blobs(data_dir: Path) -> Scan:
    """Look at the head of every regular file under ``data_dir`` (symlinks are not followed):
    wherever a blob lies — also one relay does not know the owner of — ``retire`` must not
    delete the key it needs."""
    scan = Scan()
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                # Non-blocking: a FIFO someone left here must not hang the command.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # gone since the listing (a database journal, a temporary file)
            except OSError as exc:
                if not path.is_symlink():
                    scan.unreadable[path] = exc.strerror or str(exc)
                continue
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode) or f.read(len(MAGIC)) != MAGIC:
                    continue
                head = MAGIC + f.read(MAX_BLOB)
            try:
                scan.blobs[path] = sealed_key_id(head)
            except MalformedSecret:
                continue  # starts like a blob, is not one: no key can open it anyway
    return scan


@dataclass
class Rewrapped:
    moved: int = 0
    already: int = 0
    failed: dict[Path, str] = field(default_factory=dict)


def rewrap_all(items: list[SealedFile], box: SecretBox) -> Rewrapped:
    """Re-wrap every item under ``box``'s current KEK: only their 32-byte data keys are
    wrapped again; each ciphertext is kept (checked, in memory, before)."""
    result = Rewrapped()
    for item in items:
        try:
            # The manager writes a new key file under the same lock: never write back an
            # older key over a certificate renewed meanwhile.
            with locked(item.path.parent):
                blob = item.path.read_bytes()
                if not box.needs_rewrap(blob):
                    result.already += 1
                    continue
                new = box.rewrap(blob, owner=item.owner, name=item.name)
                write_file_atomic(item.path, new, 0o600)
                result.moved += 1
        except OSError as exc:
            result.failed[item.path] = exc.strerror or str(exc)
        except RelayError as exc:
            result.failed[item.path] = exc.one_line()
    return result


def _named(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _where(keys: KeySet) -> str:
    if keys.mode == "file":
        return f"first key in {KEK_FILE_ENV} ({os.environ.get(KEK_FILE_ENV, '').strip()})"
    if keys.mode == "env":
        return f"first key in {KEK_ENV}"
    return str(keys.keys[0].source)


def _run(action: Callable[[], None]) -> None:
    from relay.cli import fail

    try:
        action()
    except RelayError as err:
        fail(err)


def _directory(data_dir: Path | None) -> Path:
    from relay.config import default_data_dir

    directory = data_dir or default_data_dir()
    if not directory.is_dir():
        raise DataDirError(
            f"no edge data directory at {directory}: pass the --data-dir `relay edge` uses, "
            "or set RELAY_DATA_DIR"
        )
    return directory


# -- the commands ----------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Key-encryption keys of secrets at rest: list, rotate, retire.

    \b
    Rotating a key kept in the data directory, with the edge running:
        relay keys rotate       # new key; every secret re-wrapped under it
        systemctl reload relay  # (SIGHUP) edges read the keys again
        relay keys retire       # the old key is deleted once nothing needs it
    With RELAY_KEK or RELAY_KEK_FILE, put the new key first there, then `relay keys rotate`
    re-wraps every secret under it and names any old key still in use.
    """


@keys.command("list")
@data_dir_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def list_keys(data_dir: Path | None, output: str) -> None:
    """Key ids (never the keys), which one is current, and how many blobs each wraps."""

    def action() -> None:
        directory = _directory(data_dir)
        keyset = load_keyset(directory, os.environ, create=False)
        counts = _scan_or_fail(directory).by_key()
        rows = [
            {
                "id": kek.kid,
                "state": "current" if kek.kid == keyset.current else "old",
                "source": kek.source,
                "blobs": counts.get(kek.kid, 0),
            }
            for kek in keyset.keys
        ]
        configured = {kek.kid for kek in keyset.keys}
        rows += [
            {"id": kid, "state": "missing", "source": "(not configured)", "blobs": n}
            for kid, n in sorted(counts.items())
            if kid not in configured
        ]
        if output == "json":
            click.echo(json.dumps({"current": keyset.current, "keys": rows}))
            return
        click.echo(f"{'KEY ID':<18} {'STATE':<8} {'BLOBS':>6}  SOURCE")
        for row in rows:
            click.echo(f"{row['id']:<18} {row['state']:<8} {row['blobs']:>6}  {row['source']}")
        if any(row["state"] == "missing" for row in rows):
            click.echo(
                "blobs under a missing key do not open: restore that key (RELAY_KEK, "
                f"{KEK_FILE_ENV}, or {directory / 'kek.retired-<id>'})",
                err=True,
            )

    _run(action)


@keys.command()
@data_dir_option
def rotate(data_dir: Path | None) -> None:
    """Re-wrap every secret's data key under a new key-encryption key.

    With the key in the data directory: a new key becomes DATA_DIR/kek, the old one moves
    to DATA_DIR/kek.retired-<id> (it still opens what is not re-wrapped yet). With RELAY_KEK
    or RELAY_KEK_FILE: the first key given is the new one. Only the secrets' 32-byte data
    keys are wrapped again; their ciphertexts stay as they are. Running edges need no restart.
    """

    def action() -> None:
        directory = _directory(data_dir)
        with keys_lock(directory):
            before = load_keyset(directory, os.environ, create=False)
            if before.mode == "data_dir":
                old_id, new_id = rotate_data_dir_kek(directory)
                click.echo(
                    f"new key-encryption key {new_id} is current ({directory / KEK_FILE}); "
                    f"{old_id} moved to {directory / f'kek.retired-{old_id}'}"
                )
            box = SecretBox.load(directory)
            if before.mode != "data_dir":
                click.echo(f"current key-encryption key {box.current} ({_where(box.keys)})")
            if before.mode == "env":
                click.echo(
                    f"note: an edge reads {KEK_ENV} only at start; it opens what is re-wrapped "
                    f"now only once it runs with {box.current} in {KEK_ENV} ({KEK_FILE_ENV} "
                    "needs no restart)",
                    err=True,
                )
            items, unnamed = sealed_files(directory)
            result = rewrap_all(items, box)
            click.echo(
                f"re-wrapped {result.moved} secrets under {box.current} "
                f"({result.already} already were; {len(items)} in all)"
            )
            for path, why in result.failed.items():
                click.echo(f"not re-wrapped: {path}: {why}", err=True)
            for path in unnamed:
                click.echo(
                    f"not re-wrapped: {path}: its owner and name cannot be told "
                    "(an ACME account key without account.json)",
                    err=True,
                )
            _report_in_use(directory, box)
        if result.failed or unnamed:
            raise DataDirError(
                f"{len(result.failed) + len(unnamed)} secrets were not re-wrapped (above); "
                "the old keys they need stay"
            )

    _run(action)


def _report_in_use(directory: Path, box: SecretBox) -> None:
    scan = _scan_or_fail(directory)
    old = {kid: n for kid, n in sorted(scan.by_key().items()) if kid != box.current}
    if old:
        for kid, n in old.items():
            state = "configured" if kid in box.key_ids else "NOT configured: they do not open"
            click.echo(
                f"still in use: {kid} ({state}) by {n} blobs: {_named(scan.under(kid))}",
                err=True,
            )
    else:
        click.echo(f"every sealed secret is wrapped under {box.current}; no old key is in use")
    unused = sorted(k.kid for k in box.keys.keys if k.kid != box.current and k.kid not in old)
    if box.keys.mode == "data_dir":
        if unused:
            click.echo(
                "next: send SIGHUP to running edges (`systemctl reload relay`), then "
                f"`relay keys retire` deletes {', '.join(unused)}"
            )
        return
    in_data_dir = {kid for _, kid in data_dir_key_files(directory)}
    listed = [kid for kid in unused if kid not in in_data_dir]
    if listed:
        where = KEK_FILE_ENV if box.keys.mode == "file" else KEK_ENV
        click.echo(f"next: remove {', '.join(listed)} from {where}, then SIGHUP or restart edges")
    if any(kid in in_data_dir for kid in unused):
        click.echo("next: `relay keys retire` deletes the data directory's old key files")


@keys.command()
@data_dir_option
def retire(data_dir: Path | None) -> None:
    """Delete the data directory's old key-encryption keys once no blob needs them.

    Refuses, naming the blob, while any sealed secret is still wrapped under one of them
    (run `relay keys rotate` first). The current key is never deleted.
    """

    def action() -> None:
        directory = _directory(data_dir)
        with keys_lock(directory):
            keyset = load_keyset(directory, os.environ, create=False)
            old = [(p, kid) for p, kid in data_dir_key_files(directory) if kid != keyset.current]
            if not old:
                click.echo("no old key-encryption key to retire")
                return
            scan = _scan_or_fail(directory)
            for path, kid in old:
                needing = scan.under(kid)
                if needing:
                    raise DataDirError(
                        f"refusing to retire {kid} ({path}): {_named(needing)} "
                        f"{'is' if len(needing) == 1 else 'are'} still wrapped under it; "
                        "run `relay keys rotate` first"
                    )
            delete_key_files([p for p, _ in old])
            for path, kid in old:
                click.echo(f"retired {kid}: deleted {path}")
        click.echo("running edges forget it at their next SIGHUP (`systemctl reload relay`)")

    _run(action)


def _scan_or_fail(directory: Path) -> Scan:
    scan = scan_blobs(directory)
    if scan.unreadable:
        paths = sorted(scan.unreadable)
        raise DataDirError(
            f"cannot read {_named(paths)} ({scan.unreadable[paths[0]]}), so which keys "
            "they need cannot be told; run this as the user the edge runs as"
        )
    return scan


def register(main: click.Group) -> None:
    """Add ``relay keys`` to the ``relay`` group (relay/cli.py calls this)."""
    main.add_command(keys)
