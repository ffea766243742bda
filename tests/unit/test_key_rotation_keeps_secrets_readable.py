"""`relay keys rotate|retire|list` on a real data directory (the commands run as processes):
rotation keeps every sealed secret readable and moves it to the new key without re-encrypting
it, retire refuses while any blob needs an old key, a blob moved onto another owner or name
never opens, no key byte is ever printed, a running box follows a rotation without being
told, and no plaintext private key lies anywhere in the data directory or the database."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.certs.acme_issuer import AcmeIssuer
from relay.certs.issuers import LocalCAIssuer
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertificateManager
from relay.certs.sealed import ACCOUNT_OWNER, CERTS_OWNER, acme_account_secret, sealed_files
from relay.control.keyring import KEK_ENV, KEK_FILE_ENV, kek_id, load_keyset
from relay.control.secrets import SecretBox, sealed_key_id
from relay.control.tokens import load_or_create_pepper
from relay.edge.server import open_store
from relay.errors import ConfigError, SecretAuthenticationFailed, UnknownKeyId

RELAY = [sys.executable, "-m", "relay.cli"]
NAMES = ["a.example.com", "*.w.example.com", "b.example.com"]
ACME_URL = "https://acme.invalid/directory"


def relay_keys(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (KEK_ENV, KEK_FILE_ENV)}
    return subprocess.run(
        [*RELAY, "keys", *args, "--data-dir", str(data_dir)],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def data_dir_with_secrets(tmp_path: Path, env: dict[str, str] | None = None) -> Path:
    """A data directory as an edge leaves it: a store with a token, three certificates with
    sealed keys, and an ACME account key (sealed, with its account.json)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    store = open_store(data_dir)
    try:
        store.create_token(description="laptop", pepper=load_or_create_pepper(data_dir))
    finally:
        store.close()
    box = SecretBox.load(data_dir, environ=env or {})
    manager = CertificateManager(data_dir, LocalCAIssuer(LocalCA.load_or_create(data_dir)), box)

    async def issue() -> None:
        for name in NAMES:
            await manager.ensure(name)

    asyncio.run(issue())
    # The account key as AcmeIssuer makes it before it first talks to a CA (no network).
    AcmeIssuer(ACME_URL, None, data_dir, box)._load_or_create_account_key()
    return data_dir


def plaintexts(data_dir: Path, box: SecretBox) -> dict[Path, bytes]:
    items, unnamed = sealed_files(data_dir)
    assert not unnamed
    return {i.path: box.open(i.path.read_bytes(), owner=i.owner, name=i.name) for i in items}


def blob_ids(data_dir: Path) -> dict[Path, str]:
    items, _ = sealed_files(data_dir)
    return {i.path: sealed_key_id(i.path.read_bytes()) for i in items}


def only(data_dir: Path, kid: str) -> SecretBox:
    """A box holding only the key ``kid`` (read from the data directory's files)."""
    keys = load_keyset(data_dir, {}, create=False).by_id()
    return SecretBox({kid: keys[kid]}, kid)


def current_id(data_dir: Path) -> str:
    return kek_id((data_dir / "kek").read_bytes())


def test_rotating_twice_keeps_every_secret_readable_and_retire_waits_for_every_blob(
    tmp_path: Path,
) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    first = current_id(data_dir)
    before = plaintexts(data_dir, SecretBox.load(data_dir, environ={}))
    assert len(before) == len(NAMES) + 1
    stale = {p: p.read_bytes() for p in before}  # as sealed under the first key

    out = relay_keys(data_dir, "rotate")
    assert out.returncode == 0, out.stderr
    second = current_id(data_dir)
    assert second != first
    assert f"re-wrapped 4 secrets under {second}" in out.stdout
    assert (data_dir / f"kek.retired-{first}").read_bytes() != (data_dir / "kek").read_bytes()
    assert oct((data_dir / f"kek.retired-{first}").stat().st_mode & 0o777) == "0o600"
    assert oct((data_dir / "kek").stat().st_mode & 0o777) == "0o600"
    assert set(blob_ids(data_dir).values()) == {second}
    assert plaintexts(data_dir, only(data_dir, second)) == before
    for path, old in stale.items():
        # Only the data key was wrapped again: the secret's nonce and ciphertext are as they were.
        tail = 12 + len(before[path]) + 16
        assert path.read_bytes()[-tail:] == old[-tail:]

    # A blob still under the first key (as if sealed a moment before the rotation): retire
    # refuses, naming it, and deletes nothing.
    laggard = data_dir / "certs" / "b.example.com.key.sealed"
    laggard.write_bytes(stale[laggard])
    refused = relay_keys(data_dir, "retire")
    assert refused.returncode == 1
    assert first in refused.stderr and str(laggard) in refused.stderr
    assert (data_dir / f"kek.retired-{first}").exists()

    out = relay_keys(data_dir, "rotate")
    assert out.returncode == 0, out.stderr
    third = current_id(data_dir)
    assert len({first, second, third}) == 3
    assert f"re-wrapped 4 secrets under {third}" in out.stdout
    assert "no old key is in use" in out.stdout
    assert set(blob_ids(data_dir).values()) == {third}

    out = relay_keys(data_dir, "retire")
    assert out.returncode == 0, out.stderr
    assert f"retired {first}" in out.stdout and f"retired {second}" in out.stdout
    assert sorted(p.name for p in data_dir.glob("kek*")) == ["kek"]
    assert plaintexts(data_dir, only(data_dir, third)) == before
    assert relay_keys(data_dir, "retire").stdout.startswith("no old key-encryption key")

    # The edge's certificate manager loads every certificate under the new key alone.
    ca = LocalCA.load_or_create(data_dir)
    manager = CertificateManager(data_dir, LocalCAIssuer(ca), SecretBox.load(data_dir, environ={}))
    assert manager.names() == sorted(NAMES)


def test_a_blob_moved_to_another_owner_or_name_does_not_open_nor_rotate(tmp_path: Path) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    box = SecretBox.load(data_dir, environ={})
    certs = data_dir / "certs"
    blob = (certs / "a.example.com.key.sealed").read_bytes()
    for owner, name in ((CERTS_OWNER, "b.example.com"), (ACCOUNT_OWNER, "a.example.com")):
        with pytest.raises(SecretAuthenticationFailed):
            box.open(blob, owner=owner, name=name)
    first = current_id(data_dir)

    # a.example.com's key copied onto c.example.com's file: it cannot be re-wrapped either.
    shutil.copy(certs / "a.example.com.pem", certs / "c.example.com.pem")
    (certs / "c.example.com.key.sealed").write_bytes(blob)
    out = relay_keys(data_dir, "rotate")
    assert out.returncode == 1
    assert "c.example.com.key.sealed" in out.stderr and "failed authentication" in out.stderr
    assert f"still in use: {first}" in out.stderr
    assert "re-wrapped 4 secrets" in out.stdout  # the others moved
    refused = relay_keys(data_dir, "retire")
    assert refused.returncode == 1 and "c.example.com.key.sealed" in refused.stderr

    # The ACME account key's name is its directory URL: under another URL it does not open.
    items, _ = sealed_files(data_dir)
    account = next(i for i in items if i.owner == ACCOUNT_OWNER)
    assert account.name == acme_account_secret(ACME_URL)
    moved = SecretBox.load(data_dir, environ={})
    with pytest.raises(SecretAuthenticationFailed):
        moved.open(account.path.read_bytes(), owner=ACCOUNT_OWNER, name="account https://x/")
    assert moved.open(account.path.read_bytes(), owner=ACCOUNT_OWNER, name=account.name)


def key_forms(key: bytes) -> list[str]:
    return [
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        key.hex(),
        base64.b64encode(key).decode().rstrip("="),
    ]


def test_keys_list_shows_ids_state_and_counts_never_key_bytes(tmp_path: Path) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    assert relay_keys(data_dir, "rotate").returncode == 0
    keys = load_keyset(data_dir, {}, create=False)
    text = relay_keys(data_dir, "list")
    listed = relay_keys(data_dir, "list", "-o", "json")
    assert text.returncode == listed.returncode == 0, text.stderr + listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)["keys"]}
    assert rows[keys.current]["state"] == "current" and rows[keys.current]["blobs"] == 4
    (old,) = [k for k in rows if k != keys.current]
    assert rows[old] == {
        "id": old,
        "state": "old",
        "source": str(data_dir / f"kek.retired-{old}"),
        "blobs": 0,
    }
    assert keys.current in text.stdout and "current" in text.stdout
    printed = text.stdout + text.stderr + listed.stdout + listed.stderr
    for kek in keys.keys:
        assert kek.key.decode("latin-1") not in printed
        for form in key_forms(kek.key):
            assert form not in printed
            assert form not in repr(kek)

    # A blob under a key nobody holds any more is shown as missing.
    gone = SecretBox({"kgone": os.urandom(32)}, "kgone")
    (data_dir / "certs" / "x.key.sealed").write_bytes(gone.seal(b"x", owner="certs", name="x"))
    listed = relay_keys(data_dir, "list", "-o", "json")
    rows = {row["id"]: row for row in json.loads(listed.stdout)["keys"]}
    assert rows["kgone"] == {
        "id": "kgone",
        "state": "missing",
        "source": "(not configured)",
        "blobs": 1,
    }


def test_environment_kek_rotation_rewraps_under_the_first_key_and_names_old_ids(
    tmp_path: Path,
) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    from_file = current_id(data_dir)
    new_key = os.urandom(32)
    env = {KEK_ENV: base64.b64encode(new_key).decode()}
    out = relay_keys(data_dir, "rotate", env=env)
    assert out.returncode == 0, out.stderr
    assert f"current key-encryption key {kek_id(new_key)} (first key in {KEK_ENV})" in out.stdout
    assert set(blob_ids(data_dir).values()) == {kek_id(new_key)}
    # The data directory's kek is the old key now: retire deletes it once nothing needs it.
    assert "`relay keys retire` deletes the data directory's old key files" in out.stdout
    out = relay_keys(data_dir, "retire", env=env)
    assert out.returncode == 0 and f"retired {from_file}" in out.stdout
    assert not (data_dir / "kek").exists()

    # Then to a secret manager's file (a symlink to a 0400 file, as Kubernetes mounts it):
    # the new key first, the old one still listed. Rotate names the old id as unused.
    newer = os.urandom(32)
    secret = tmp_path / "secret" / "..data" / "kek"
    secret.parent.mkdir(parents=True)
    secret.write_text(
        f"# relay KEKs, current first\n{base64.b64encode(newer).decode()}\n\n"
        f"{base64.urlsafe_b64encode(new_key).decode()}\n"
    )
    secret.chmod(0o400)
    mounted = tmp_path / "secret" / "kek"
    mounted.symlink_to(secret)
    file_env = {KEK_FILE_ENV: str(mounted)}
    out = relay_keys(data_dir, "rotate", env=file_env)
    assert out.returncode == 0, out.stderr
    assert f"re-wrapped 4 secrets under {kek_id(newer)}" in out.stdout
    assert f"next: remove {kek_id(new_key)} from {KEK_FILE_ENV}" in out.stdout
    box = SecretBox.load(data_dir, environ=file_env)
    assert box.current == kek_id(newer)
    assert len(plaintexts(data_dir, box)) == 4
    with pytest.raises(UnknownKeyId):
        plaintexts(data_dir, SecretBox.load(data_dir, environ=env))  # the old key alone


def test_key_file_from_the_environment_must_be_private_and_alone(tmp_path: Path) -> None:
    path = tmp_path / "keks"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="group/other"):
        SecretBox.load(tmp_path / "data", environ={KEK_FILE_ENV: str(path)})
    path.chmod(0o600)
    assert SecretBox.load(tmp_path / "data", environ={KEK_FILE_ENV: str(path)})
    assert not (tmp_path / "data" / "kek").exists()  # no data directory key made
    both = {KEK_FILE_ENV: str(path), KEK_ENV: base64.b64encode(os.urandom(32)).decode()}
    with pytest.raises(ConfigError, match="both"):
        SecretBox.load(tmp_path / "data", environ=both)
    path.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="holds no key"):
        SecretBox.load(tmp_path / "data", environ={KEK_FILE_ENV: str(path)})
    path.write_text("not base64 at all!\n")
    with pytest.raises(ConfigError, match="line 1 is not valid base64") as exc_info:
        SecretBox.load(tmp_path / "data", environ={KEK_FILE_ENV: str(path)})
    assert "at all" not in str(exc_info.value)


def test_a_running_box_follows_a_rotation_without_being_told(tmp_path: Path) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    running = SecretBox.load(data_dir, environ={})
    first = running.current
    assert relay_keys(data_dir, "rotate").returncode == 0
    second = current_id(data_dir)
    # Every blob now names a key this box never read: it reads the files again and opens.
    assert len(plaintexts(data_dir, running)) == 4
    assert running.current == second and running.key_ids == {first, second}
    # What it seals from now on goes under the new key (checked before each seal).
    assert relay_keys(data_dir, "rotate").returncode == 0
    third = current_id(data_dir)
    assert sealed_key_id(running.seal(b"s", owner="o", name="n")) == third
    # After a retirement, reading the keys again (SIGHUP) drops the deleted ones.
    assert relay_keys(data_dir, "retire").returncode == 0
    keys = running.read_keys()
    assert keys is not None
    running.use(keys)
    assert running.key_ids == {third}
    assert len(plaintexts(data_dir, running)) == 4


def test_no_plaintext_private_key_in_the_data_directory_or_the_database(tmp_path: Path) -> None:
    data_dir = data_dir_with_secrets(tmp_path)
    assert relay_keys(data_dir, "rotate").returncode == 0
    secrets_in_clear = plaintexts(data_dir, SecretBox.load(data_dir, environ={}))
    assert (data_dir / "relay.db").stat().st_size > 0
    dump = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert data_dir / "relay.db" in dump
    for pem in secrets_in_clear.values():
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        # The PEM's first two base64 lines hold the private scalar; the last one only the
        # public key, which the certificate beside it holds too.
        body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
        for path, data in dump.items():
            for needle in (pem, der, scalar, scalar.hex().encode(), *body[:2]):
                assert needle not in data, path
