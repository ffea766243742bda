"""The data directory holds the pepper, the CA key and the token database: nobody but its
owner may read any of it, also when it existed before with looser modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from relay.control.tokens import load_or_create_pepper
from relay.edge.server import open_store, prepare_data_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_dir_and_its_database_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: new files readable by everyone
    try:
        data_dir = tmp_path / "relay"
        prepare_data_dir(data_dir)
        store = open_store(data_dir)
        record, _ = store.create_token(pepper=load_or_create_pepper(data_dir))
        store.close()
    finally:
        os.umask(old)
    assert record.id
    assert mode(data_dir) == 0o700
    for name in ("relay.db", "pepper"):
        assert mode(data_dir / name) == 0o600, name
    for leftover in data_dir.glob("relay.db-*"):  # SQLite's -wal/-shm, if still there
        assert mode(leftover) & 0o077 == 0, leftover


def test_an_existing_world_readable_data_dir_and_database_are_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    (data_dir / "relay.db").touch()
    os.chmod(data_dir / "relay.db", 0o644)
    prepare_data_dir(data_dir)
    open_store(data_dir).close()
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "relay.db") == 0o600
