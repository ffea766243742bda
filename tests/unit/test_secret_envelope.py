"""Envelope encryption of secrets at rest: round trip, tamper detection, AAD, rotation, KEKs."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.control.secrets import KEK_ENV, SecretBox, kek_id
from relay.errors import (
    ConfigError,
    DataDirError,
    MalformedSecret,
    SecretAuthenticationFailed,
    SecretError,
    UnknownKeyId,
    error_from_code,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
BOX = SecretBox({"k1": K1}, "k1")
SEALED = BOX.seal(b"the basic-auth password", owner="endpoint:abc", name="basic_auth")


@given(
    plaintext=st.binary(max_size=4096),
    owner=st.text(max_size=40),
    name=st.text(max_size=40),
)
@settings(max_examples=100, deadline=None)
def test_round_trip(plaintext: bytes, owner: str, name: str) -> None:
    blob = BOX.seal(plaintext, owner=owner, name=name)
    assert BOX.open(blob, owner=owner, name=name) == plaintext
    assert len(plaintext) < 16 or plaintext not in blob


def test_fresh_data_key_and_nonce_every_time() -> None:
    a = BOX.seal(b"same", owner="o", name="n")
    b = BOX.seal(b"same", owner="o", name="n")
    assert a != b
    assert a[:6] == b[:6]  # magic, version, key id length
    assert BOX.open(a, owner="o", name="n") == BOX.open(b, owner="o", name="n") == b"same"


def test_blob_is_self_describing() -> None:
    assert SEALED.startswith(b"RLYS\x01\x02k1")
    # magic 4 + version 1 + kid len 1 + kid 2 + wrap nonce 12 + wrapped DEK 48 + nonce 12 + tag 16
    assert len(SEALED) == 4 + 1 + 1 + 2 + 12 + 48 + 12 + len(b"the basic-auth password") + 16


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_byte_flipped_is_detected(mask: int) -> None:
    for i in range(len(SEALED)):
        tampered = bytearray(SEALED)
        tampered[i] ^= mask
        with pytest.raises(SecretError):
            BOX.open(bytes(tampered), owner="endpoint:abc", name="basic_auth")


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_byte_flip_is_detected(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(SEALED) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(SEALED)
    tampered[index] ^= mask
    with pytest.raises(SecretError):
        BOX.open(bytes(tampered), owner="endpoint:abc", name="basic_auth")


@given(cut=st.integers(0, len(SEALED) - 1))
def test_truncation_is_malformed_or_fails_authentication(cut: int) -> None:
    with pytest.raises((MalformedSecret, SecretAuthenticationFailed)):
        BOX.open(SEALED[:cut], owner="endpoint:abc", name="basic_auth")


def test_extension_fails_authentication() -> None:
    with pytest.raises(SecretAuthenticationFailed):
        BOX.open(SEALED + b"\x00", owner="endpoint:abc", name="basic_auth")


def test_not_a_blob() -> None:
    with pytest.raises(MalformedSecret, match="magic"):
        BOX.open(b"-----BEGIN PRIVATE KEY-----", owner="o", name="n")
    with pytest.raises(MalformedSecret, match="version"):
        BOX.open(b"RLYS\x02" + SEALED[5:], owner="endpoint:abc", name="basic_auth")


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        ("endpoint:abd", "basic_auth"),
        ("endpoint:abc", "basic_auth2"),
        ("endpoint:ab", "cbasic_auth"),  # same concatenation, different split
        ("basic_auth", "endpoint:abc"),
        ("", ""),
    ],
)
def test_wrong_owner_or_name_fails(owner: str, name: str) -> None:
    with pytest.raises(SecretAuthenticationFailed) as exc_info:
        BOX.open(SEALED, owner=owner, name=name)
    assert exc_info.value.code == "RLY_902"


def test_blob_moved_to_another_secret_does_not_open() -> None:
    a = BOX.seal(b"A", owner="o", name="a")
    with pytest.raises(SecretAuthenticationFailed):
        BOX.open(a, owner="o", name="b")


def test_unknown_key_id() -> None:
    other = SecretBox({"k2": K2}, "k2")
    with pytest.raises(UnknownKeyId, match="k1") as exc_info:
        other.open(SEALED, owner="endpoint:abc", name="basic_auth")
    assert exc_info.value.code == "RLY_903"


def test_same_id_different_key_bytes_fails_authentication() -> None:
    impostor = SecretBox({"k1": K2}, "k1")
    with pytest.raises(SecretAuthenticationFailed):
        impostor.open(SEALED, owner="endpoint:abc", name="basic_auth")


def test_rotation_and_rewrap() -> None:
    rotated = SecretBox({"k1": K1, "k2": K2}, "k2")
    # Old blobs still open; new ones go to the new key.
    assert rotated.open(SEALED, owner="endpoint:abc", name="basic_auth").startswith(b"the")
    assert rotated.seal(b"x", owner="o", name="n")[6:8] == b"k2"
    assert rotated.needs_rewrap(SEALED)

    moved = rotated.rewrap(SEALED, owner="endpoint:abc", name="basic_auth")
    assert not rotated.needs_rewrap(moved)
    assert moved[6:8] == b"k2"
    # Only the data key was re-wrapped: the data nonce and ciphertext are untouched.
    tail = 12 + len(b"the basic-auth password") + 16
    assert moved[-tail:] == SEALED[-tail:]
    assert rotated.rewrap(moved, owner="endpoint:abc", name="basic_auth") == moved

    # Once rewrapped, the old key can be dropped.
    only_new = SecretBox({"k2": K2}, "k2")
    assert only_new.open(moved, owner="endpoint:abc", name="basic_auth") == (
        b"the basic-auth password"
    )
    with pytest.raises(UnknownKeyId):
        only_new.open(SEALED, owner="endpoint:abc", name="basic_auth")


def test_rewrap_refuses_tampered_or_foreign_blob() -> None:
    rotated = SecretBox({"k1": K1, "k2": K2}, "k2")
    tampered = bytearray(SEALED)
    tampered[-1] ^= 1
    with pytest.raises(SecretAuthenticationFailed):
        rotated.rewrap(bytes(tampered), owner="endpoint:abc", name="basic_auth")
    with pytest.raises(SecretAuthenticationFailed):
        rotated.rewrap(SEALED, owner="endpoint:abc", name="other")


def test_box_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="current"):
        SecretBox({"k1": K1}, "k2")
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretBox({"k1": b"short"}, "k1")
    with pytest.raises(ConfigError, match="invalid KEK id"):
        SecretBox({"k 1": K1}, "k 1")


def test_error_codes_travel() -> None:
    for cls, code in (
        (SecretError, "RLY_901"),
        (SecretAuthenticationFailed, "RLY_902"),
        (UnknownKeyId, "RLY_903"),
        (MalformedSecret, "RLY_904"),
    ):
        assert cls.code == code
        assert type(error_from_code(code, "m")) is cls


# -- where the KEK comes from --------------------------------------------------------------


def test_kek_file_created_0600_and_stable(tmp_path: Path) -> None:
    box = SecretBox.load(tmp_path, environ={})
    path = tmp_path / "kek"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert box.current == kek_id(path.read_bytes())
    blob = box.seal(b"s", owner="o", name="n")
    again = SecretBox.load(tmp_path, environ={})
    assert again.current == box.current
    assert again.open(blob, owner="o", name="n") == b"s"
    assert not list(tmp_path.glob(".kek.*"))  # no temp file left behind


def test_kek_file_with_bad_mode_or_length_is_refused(tmp_path: Path) -> None:
    SecretBox.load(tmp_path, environ={})
    path = tmp_path / "kek"
    os.chmod(path, 0o644)
    with pytest.raises(DataDirError, match="0600"):
        SecretBox.load(tmp_path, environ={})
    os.chmod(path, 0o600)
    path.write_bytes(b"x" * 31)
    with pytest.raises(DataDirError, match="wrong length"):
        SecretBox.load(tmp_path, environ={})
    assert path.read_bytes() == b"x" * 31  # refused, not replaced


def test_env_kek_takes_over_and_file_still_opens_old_blobs(tmp_path: Path) -> None:
    from_file = SecretBox.load(tmp_path, environ={})
    old_blob = from_file.seal(b"old", owner="o", name="n")
    env = {KEK_ENV: base64.b64encode(K2).decode()}
    box = SecretBox.load(tmp_path, environ=env)
    assert box.current == kek_id(K2)
    assert box.key_ids == {kek_id(K2), from_file.current}
    assert box.open(old_blob, owner="o", name="n") == b"old"
    new_blob = box.rewrap(old_blob, owner="o", name="n")
    assert SecretBox({kek_id(K2): K2}, kek_id(K2)).open(new_blob, owner="o", name="n") == b"old"


def test_env_kek_list_first_is_current_and_no_file_is_created(tmp_path: Path) -> None:
    env = {KEK_ENV: f"{base64.b64encode(K1).decode()}, {base64.urlsafe_b64encode(K2).decode()}"}
    box = SecretBox.load(tmp_path, environ=env)
    assert box.current == kek_id(K1)
    assert box.key_ids == {kek_id(K1), kek_id(K2)}
    assert not (tmp_path / "kek").exists()


@pytest.mark.parametrize("value", ["not base64!!", base64.b64encode(b"too short").decode()])
def test_bad_env_kek_is_a_config_error_that_does_not_echo_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        SecretBox.load(tmp_path, environ={KEK_ENV: value})
    assert value not in str(exc_info.value)
