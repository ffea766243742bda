"""Ports for the servers the tests start, on 127.0.0.1.

Every port comes from below the kernel's ephemeral range. A port the kernel picked for
``bind(0)`` is an ephemeral one: once the probe socket closes, any outgoing connection
(the test's own, a client's, a benchmark's beside it) may take it as its source port
before the server binds it, and the server then fails with "address already in use".
Ports handed out once are not handed out again in the same run, so two servers of one
test (or an edge's TCP range and a server beside it) never get the same port.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: The lowest port handed out: well above the well-known and registered services.
LOWEST = 10000
_handed_out: set[int] = set()
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(size: int = 20) -> tuple[int, int]:
    """``size`` consecutive ports, free now and never handed out before in this run."""
    top = max(LOWEST + size + 1, _ephemeral_low() - size)
    for _ in range(500):
        first = _rng.randrange(LOWEST, top)
        ports = range(first, first + size)
        if _handed_out.isdisjoint(ports) and all(_port_free(p) for p in ports):
            _handed_out.update(ports)
            return first, first + size - 1
    raise RuntimeError(f"no {size} free ports found below {top + size}")


def free_port() -> int:
    """One port, free now and never handed out before in this run."""
    return free_port_range(1)[0]
