"""Log lines on stderr: text for people (the default), or one JSON object per line for
log pipelines (``--log-format json``), for every logger of the process."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Control characters (C0, DEL, C1) and Unicode's line and paragraph separators as
#: escapes: a message is one line whatever an agent or visitor put in the text it
#: carries (an agent's version, a refused name), so nobody writes lines of their own into
#: the edge's log.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def cut(text: str, limit: int) -> str:
    """``text``, cut after ``limit`` characters: what a peer sent may be up to a control
    message long (64 KiB); a log line or an audit entry of it is not."""
    return text if len(text) <= limit else text[:limit] + "…"


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, each message on one line (:data:`_ESCAPES`)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # A traceback keeps its lines, each indented (and escaped within): an exception's
        # message may carry a peer's text, and no line of it may look like a record's.
        lines = super().formatException(ei).split("\n")
        return "\n".join("  " + line.translate(_ESCAPES) for line in lines)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"[, "exception"]}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def setup_logging(level: str, fmt: str = "text") -> None:
    logging.basicConfig(level=_level(level), format=TEXT_FORMAT, stream=sys.stderr)
    # Alembic says which plugins it set up each time a process imports it: not news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    use_format(fmt)


def _level(name: str) -> int:
    level = getattr(logging, name.upper(), None)
    return level if isinstance(level, int) else logging.INFO


def in_use() -> tuple[str, str]:
    """The level and format this process logs with, as :func:`setup_logging` takes them:
    what a process it starts (an agent's link process) is told to use too."""
    root = logging.getLogger()
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level).lower(), "json" if json_format else "text"


def use_level(level: str) -> None:
    """Log from ``level`` ("debug", "info", "warning", "error") up, from now on."""
    logging.getLogger().setLevel(_level(level))


def use_format(fmt: str) -> None:
    """Switch every root handler to ``fmt`` ("text" or "json")."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
