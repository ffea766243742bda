"""Authtoken format, parsing, one-way hashing, and the server pepper file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.control.tokens import (
    MAX_TOKEN_LENGTH,
    generate_token,
    hash_secret,
    load_or_create_pepper,
    new_salt,
    parse_token,
    verify_secret,
)
from relay.errors import DataDirError, InvalidToken

TOKEN_RE = re.compile(r"rly_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")

# -- format ------------------------------------------------------------------------------


def test_generated_token_has_documented_shape_and_round_trips() -> None:
    plaintext, token_id, secret = generate_token()
    assert TOKEN_RE.fullmatch(plaintext)
    assert plaintext == f"rly_{token_id}_{secret}"
    assert parse_token(plaintext) == (token_id, secret)


def test_secret_carries_256_random_bits() -> None:
    _, _, secret = generate_token()
    raw = base64.urlsafe_b64decode(secret + "=")
    assert len(raw) == 32


def test_tokens_are_unique() -> None:
    tokens = [generate_token() for _ in range(2000)]
    assert len({t[1] for t in tokens}) == 2000
    assert len({t[2] for t in tokens}) == 2000


def test_secret_may_start_with_underscore_or_dash() -> None:
    # urlsafe base64 uses "_" and "-": the separator must not confuse the parser.
    for first in "_-":
        secret = first + "A" * 42
        assert parse_token(f"rly_abcdefgh2345_{secret}") == ("abcdefgh2345", secret)


# -- malformed input: only ever InvalidToken ----------------------------------------------

VALID = "rly_abcdefgh2345_" + "A" * 43


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "rly",
        "rly_",
        "rly__",
        "rly_abcdefgh2345",
        "rly_abcdefgh2345_",
        "RLY_abcdefgh2345_" + "A" * 43,  # prefix is case-sensitive
        "xyz_abcdefgh2345_" + "A" * 43,
        "rly_ABCDEFGH2345_" + "A" * 43,  # id is lowercase base32
        "rly_abcdefgh0189_" + "A" * 43,  # 0, 1, 8, 9 are not base32
        "rly_abcdefgh234_" + "A" * 43,  # id too short
        "rly_abcdefgh23456_" + "A" * 43,  # id too long
        "rly_abcdefgh2345_" + "A" * 42,  # secret too short
        "rly_abcdefgh2345_" + "A" * 44,  # secret too long
        "rly_abcdefgh2345_" + "A" * 42 + "=",  # padding is not part of the format
        "rly_abcdefgh2345_" + "A" * 42 + "+",  # standard (not urlsafe) base64
        "rly_abcdefgh2345_" + "A" * 42 + "\u0410",  # Cyrillic A look-alike
        "rly_abcdefgh2345_" + "A" * 42 + "\x00",
        "rly_abcdefgh2345_" + "A" * 42 + "\n",
        VALID + "\n",
        " " + VALID,
        VALID + VALID,
        "rly_" + "a" * 1000,
        "x" * (MAX_TOKEN_LENGTH + 1),
        "x" * 10_000_000,
    ],
)
def test_malformed_tokens_raise_invalid_token(bad: str) -> None:
    with pytest.raises(InvalidToken) as exc_info:
        parse_token(bad)
    assert exc_info.value.code == "RLY_101"
    if len(bad.strip()) > 10:
        # Never echo the input: it may be someone's real secret pasted in the wrong place.
        assert bad.strip() not in str(exc_info.value)


@pytest.mark.parametrize("bad", [None, 42, b"rly_abcdefgh2345_" + b"A" * 43, ["rly"], object()])
def test_non_string_tokens_raise_invalid_token(bad: object) -> None:
    with pytest.raises(InvalidToken):
        parse_token(bad)


def test_trailing_newline_gets_a_helpful_message() -> None:
    with pytest.raises(InvalidToken, match="whitespace"):
        parse_token(VALID + "\n")


def test_overlong_input_is_rejected_before_parsing() -> None:
    with pytest.raises(InvalidToken, match="too long"):
        parse_token("rly_" + "_" * 10_000)


def _check_parse(text: str) -> None:
    try:
        token_id, secret = parse_token(text)
    except InvalidToken:
        return
    # Anything accepted must be exactly a token in canonical form.
    assert text == f"rly_{token_id}_{secret}"
    assert TOKEN_RE.fullmatch(text)


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_invalid_token(text: str) -> None:
    _check_parse(text)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decoded_parse_or_raise_invalid_token(data: bytes) -> None:
    _check_parse(data.decode("latin-1"))


@given(st.data())
def test_mutated_valid_tokens_parse_or_raise_invalid_token(data: st.DataObject) -> None:
    plaintext, _, _ = generate_token()
    chars = list(plaintext)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        i = data.draw(st.integers(0, max(len(chars) - 1, 0)))
        ch = data.draw(st.characters())
        if op == "replace" and chars:
            chars[i] = ch
        elif op == "delete" and chars:
            del chars[i]
        else:
            chars.insert(i, ch)
    _check_parse("".join(chars))


# -- hashing -----------------------------------------------------------------------------


def test_hash_is_hmac_sha256_of_salt_and_secret_keyed_by_pepper() -> None:
    _, _, secret = generate_token()
    salt, pepper = os.urandom(16), os.urandom(32)
    expected = hmac.new(pepper, salt + secret.encode(), hashlib.sha256).digest()
    assert hash_secret(secret, salt, pepper) == expected
    assert len(expected) == 32


def test_hash_depends_on_secret_salt_and_pepper() -> None:
    _, _, secret = generate_token()
    _, _, other = generate_token()
    salt, pepper = new_salt(), os.urandom(32)
    h = hash_secret(secret, salt, pepper)
    assert hash_secret(other, salt, pepper) != h
    assert hash_secret(secret, new_salt(), pepper) != h
    assert hash_secret(secret, salt, os.urandom(32)) != h
    assert secret.encode() not in h


def test_verify_secret_accepts_only_the_right_secret() -> None:
    _, _, secret = generate_token()
    salt, pepper = new_salt(), os.urandom(32)
    stored = hash_secret(secret, salt, pepper)
    assert verify_secret(secret, salt, pepper, stored)
    assert not verify_secret(
        secret[:-1] + ("B" if secret[-1] != "B" else "C"), salt, pepper, stored
    )
    assert not verify_secret(secret, salt, pepper, stored[:-1])
    assert not verify_secret(secret, salt, pepper, b"")


def test_hash_rejects_bad_salt_or_pepper_length() -> None:
    with pytest.raises(ValueError):
        hash_secret("s", b"short", os.urandom(32))
    with pytest.raises(ValueError):
        hash_secret("s", new_salt(), b"")


# -- pepper ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pepper_is_created_0600_and_stable(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pepper = load_or_create_pepper(data_dir)
    assert len(pepper) == 32
    assert _mode(data_dir / "pepper") == 0o600
    assert (data_dir / "pepper").read_bytes() == pepper
    assert load_or_create_pepper(data_dir) == pepper
    assert sorted(p.name for p in data_dir.iterdir()) == ["pepper"]  # no temp files left


def test_pepper_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_pepper(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "pepper") == 0o600


def test_peppers_differ_between_data_dirs(tmp_path: Path) -> None:
    assert load_or_create_pepper(tmp_path / "a") != load_or_create_pepper(tmp_path / "b")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o004])
def test_pepper_with_group_or_other_permissions_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_pepper(tmp_path)
    os.chmod(tmp_path / "pepper", mode)
    with pytest.raises(DataDirError, match="0600") as exc_info:
        load_or_create_pepper(tmp_path)
    assert exc_info.value.code == "RLY_402"


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_pepper_of_wrong_length_is_refused_not_replaced(tmp_path: Path, length: int) -> None:
    path = tmp_path / "pepper"
    path.write_bytes(b"x" * length)
    os.chmod(path, 0o600)
    with pytest.raises(DataDirError, match="wrong length"):
        load_or_create_pepper(tmp_path)
    assert path.read_bytes() == b"x" * length


def test_pepper_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(os.urandom(32))
    os.chmod(target, 0o600)
    (tmp_path / "pepper").symlink_to(target)
    with pytest.raises(DataDirError):
        load_or_create_pepper(tmp_path)


def test_pepper_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pepper").mkdir(mode=0o700)
    with pytest.raises(DataDirError):
        load_or_create_pepper(tmp_path)


def test_concurrent_first_start_agrees_on_one_pepper(tmp_path: Path) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        try:
            results.append(load_or_create_pepper(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8 and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pepper"]
