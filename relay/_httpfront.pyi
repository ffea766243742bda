"""Stub of the Cython HTTP front (relay/_httpfront.pyx)."""

from typing import Any

from relay._fastpath import Pump

#: ``HttpFront.handed_by_name``'s answer when a visitor's head must be parsed first.
PARSE_FIRST: object

def plain_host(data: bytes) -> str | None: ...

class HttpVisitor(Pump):
    scheme: str
    upgraded: bool
    host: str
    response_started: bool
    requests: int
    def __init__(
        self,
        front: Any,
        scheme: str,
        tls_endpoint: str | None = None,
        handed_in: bytes | None = None,
        peer: Any = None,
    ) -> None: ...
