"""``relay http --host-header`` and an agent config's ``host_header`` take what the edge
takes (relay/protocol.py ``is_host_header_value``): a bad value is refused before the
agent connects, with the option's name, instead of failing its bind at the edge."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.protocol import MAX_HOST_HEADER, is_host_header_value


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("upstream.local", True),
        ("upstream.local:8080", True),
        ("[::1]:8080", True),
        ("x" * MAX_HOST_HEADER, True),
        ("x" * (MAX_HOST_HEADER + 1), False),
        ("", False),
        ("two words", False),
        ("a\r\nx: y", False),
        ("caf\u00e9.local", False),
        ("\x7f", False),
    ],
)
def test_what_a_host_header_value_is(value: str, taken: bool) -> None:
    assert is_host_header_value(value) is taken


@pytest.mark.parametrize("value", ["two words", "x" * (MAX_HOST_HEADER + 1), "caf\u00e9"])
def test_the_cli_refuses_a_bad_host_header_before_connecting(value: str) -> None:
    result = CliRunner().invoke(
        main,
        ["http", "8080", "--edge", "127.0.0.1:1", "--token", "rly_x", "--host-header", value],
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--host-header'" in result.output
    assert "visible ASCII characters, without spaces" in result.output
