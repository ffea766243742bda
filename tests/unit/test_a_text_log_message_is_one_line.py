"""The text log (relay/logs.py ``TextFormatter``) writes each message on one line: control
characters (C0, DEL, C1) and Unicode's line separators in it are escaped, whoever put
them there, so a log reader can trust that a line starting with a date and a level is
the edge's. A traceback keeps its lines, each indented."""

from __future__ import annotations

import logging
import sys

from relay.logs import TextFormatter


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("relay.edge", logging.INFO, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]


def test_control_characters_in_a_message_are_escaped() -> None:
    line = TextFormatter().format(
        record("agent %s authenticated", "h/0\r\n2026-01-01 ERROR forged\tx\x00\x1b[31m\x7f")
    )
    assert "\n" not in line and "\r" not in line
    assert line.endswith(
        "relay.edge: agent h/0\\r\\n2026-01-01 ERROR forged\\tx\\x00\\x1b[31m\\x7f authenticated"
    )


def test_unicode_line_breaks_are_escaped_too() -> None:
    line = TextFormatter().format(record("a\u0085b\u2028c\u2029d\x9be"))
    assert line.endswith("relay.edge: a\\x85b\\u2028c\\u2029d\\x9be")
    assert len(line.splitlines()) == 1


def test_printable_text_is_left_as_it_is() -> None:
    text = "café ☃ — 'quoted' \"too\" \\ back"
    assert TextFormatter().format(record(text)).endswith(f"relay.edge: {text}")


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom\nsecond")
    except ValueError:
        info = sys.exc_info()
    lines = TextFormatter().format(record("failed:\nhere", exc_info=info)).splitlines()
    assert lines[0].endswith("relay.edge: failed:\\nhere")
    assert lines[1] == "  Traceback (most recent call last):"
    assert lines[-2:] == ["  ValueError: boom", "  second"]  # no line of its own
    assert all(line.startswith("  ") for line in lines[1:])
