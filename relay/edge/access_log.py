"""The edge's access log: one line per HTTP(S) request and one per TCP or TLS visitor
connection, as text or JSON.

Nothing runs per request or per connection in Python: the byte path keeps records in
compiled code (relay/_exchanges.pyx for requests, relay/_fastpath.pyx for connections)
and this writer drains them every ``FLUSH_INTERVAL`` seconds, formatting a batch and
writing it with one call. Past 100,000 records between two drains, records are dropped
and counted (relay_access_log_dropped_total): a log that cannot keep up must not grow the
edge without bound.

Text (one line, space separated; ``-`` for unknown)::

    2026-12-02T23:59:59.123Z https shop.example.com 203.0.113.7 r1f GET /a 200 in=0 out=512 0.003s
    2026-12-02T23:59:59.456Z tcp tcp://edge:20017 203.0.113.9:51000 closed in=812 out=4096 1.250s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from relay import _exchanges, _fastpath
from relay.edge.tcp import format_address

log = logging.getLogger("relay.edge.access_log")

FLUSH_INTERVAL = 0.25
KINDS = _fastpath.KINDS

#: An open destination: the stream to write, and the file to close with it (None for
#: stderr, which is not ours to close).
Output = tuple[IO[bytes], IO[bytes] | None]


def open_output(destination: str) -> Output:
    """Open ``destination`` for appending ("-": stderr); OSError if it cannot be."""
    if destination == "-":
        return sys.stderr.buffer, None
    owned = Path(destination).open("ab")  # noqa: SIM115
    return owned, owned


class AccessLog:
    """Writes the access log to ``destination`` ("-" for stderr, or a file appended to)
    in ``fmt`` ("text" or "json") until ``close()``. ``output``: the destination opened
    already (:func:`open_output`)."""

    def __init__(self, destination: str, fmt: str, output: Output | None = None) -> None:
        self.destination = destination
        self.fmt = fmt
        self.stream, self._owned = output or open_output(destination)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def switch(self, destination: str, fmt: str, output: Output) -> None:
        """Write to ``output`` (``destination`` opened anew) in ``fmt`` from now on; what
        was recorded so far goes to the old file, in the old format, first. After a log
        rotation's rename this starts the new file, which is why a reload always
        reopens."""
        try:
            self.flush()
        except OSError as exc:  # the old file's trouble must not keep the new one out
            log.warning("access log: the last lines for %s are lost: %s", self.destination, exc)
        if self._owned is not None:
            with contextlib.suppress(OSError):
                self._owned.close()
        self.destination = destination
        self.stream, self._owned = output
        if fmt != self.fmt:
            self.fmt = fmt
            if self._loop is not None:  # nothing is recorded between the flush and this
                self._record()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._record()
        _fastpath.set_logging(True)
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _record(self) -> None:
        # Text lines are formatted in C as requests finish; JSON from records here.
        _exchanges.set_logging(
            _exchanges.LOG_RECORDS if self.fmt == "json" else _exchanges.LOG_TEXT
        )

    def _tick(self) -> None:
        assert self._loop is not None
        self.flush()
        self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> None:
        requests = _exchanges.take_finished()
        connections, _ = _fastpath.take_closed()
        if not requests and not connections:
            return
        if self.fmt == "json":
            text = [_json_request(r) for r in requests]
            text += [_json_connection(c) for c in connections]
            chunk = ("\n".join(text) + "\n").encode("utf-8", "replace")
        else:
            chunk = b"".join(requests)  # each already a line, formatted in C
            if connections:
                lines = [_text_connection(c) for c in connections]
                chunk += ("\n".join(lines) + "\n").encode("utf-8", "replace")
        self.stream.write(chunk)
        self.stream.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        _exchanges.set_logging(_exchanges.LOG_OFF)
        _fastpath.set_logging(False)
        if self._owned is not None:
            self._owned.close()
            self._owned = None


class _Timestamps:
    """``2026-12-02T23:59:59.123Z``, the date and time formatted once per second: a
    batch holds thousands of lines of the same second, and formatting a datetime for
    each cost more than the rest of the line (measured: 1.6 of 2.6 µs)."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, wall: float) -> str:
        second = int(wall)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((wall - second) * 1000):03d}Z"


_time = _Timestamps()


def _visitor(peer: Any) -> str:
    return format_address(peer) if peer is not None else "-"


# A request record (relay/_exchanges.pyx, JSON mode): (start, seconds, kind, endpoint,
# visitor, request number, method, target, status, bytes in, bytes out). Text lines are
# formatted by relay/_exchanges.pyx itself.


def _json_request(r: tuple[Any, ...]) -> str:
    return json.dumps(
        {
            "time": _time(r[0]),
            "kind": KINDS[r[2]],
            "endpoint": r[3],
            "visitor": r[4],
            "request_id": f"r{r[5]:x}",
            "method": r[6].decode("latin-1"),
            "target": r[7].decode("latin-1"),
            "status": r[8] or None,
            "bytes_in": r[9],
            "bytes_out": r[10],
            "duration_s": round(r[1], 6),
        },
        separators=(",", ":"),
    )


# A connection record (relay/_fastpath.pyx): (start, seconds, kind, endpoint, visitor
# peername, close reason, bytes from the visitor, bytes to the visitor).


def _text_connection(c: tuple[Any, ...]) -> str:
    return (
        f"{_time(c[0])} {KINDS[c[2]]} {c[3]} {_visitor(c[4])} {c[5]} "
        f"in={c[6]} out={c[7]} {c[1]:.3f}s"
    )


def _json_connection(c: tuple[Any, ...]) -> str:
    return json.dumps(
        {
            "time": _time(c[0]),
            "kind": KINDS[c[2]],
            "endpoint": c[3],
            "visitor": _visitor(c[4]),
            "close": c[5],
            "bytes_in": c[6],
            "bytes_out": c[7],
            "duration_s": round(c[1], 6),
        },
        separators=(",", ":"),
    )
