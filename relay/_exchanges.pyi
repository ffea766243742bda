"""Stub of relay/_exchanges.pyx (HTTP exchanges: status, bytes, duration)."""

from typing import Any

#: Upper bounds (seconds) of the request duration histogram (+Inf after).
DURATION_BUCKETS: tuple[float, ...]

def http_counts() -> dict[str, Any]: ...
def endpoint_http_counts(count: int) -> list[list[int]]: ...

LOG_OFF: int
LOG_TEXT: int
LOG_RECORDS: int

def set_logging(mode: int) -> None: ...
def take_finished() -> list[Any]:
    """Blocks of text lines (``bytes``) in ``LOG_TEXT`` mode; record tuples in
    ``LOG_RECORDS`` mode."""

class Exchanges:
    def __init__(self, kind: int, endpoint: str, visitor: str, metric_slot: int = 0) -> None: ...
    def request(self, method: bytes, target: bytes) -> None: ...
    def response_bytes(self, data: bytes) -> None: ...
    def close(self) -> None: ...
