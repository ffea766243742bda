"""Debian's HAProxy as a real PROXY protocol consumer (``accept-proxy``).

It answers every request itself with the addresses the PROXY header told it, so a test
sees exactly what a service behind the agent would log. 127.0.0.1 only; stopped by PID.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import Proc, free_port, wait_for_port

HAPROXY = "/usr/sbin/haproxy"

needs_haproxy = pytest.mark.skipif(
    shutil.which(HAPROXY) is None, reason="haproxy not installed (apt-get install -y haproxy)"
)

CONFIG = """\
global
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain \
lf-string "%[src] %[src_port] %[dst] %[dst_port] %[fc_pp_authority]"
"""


def run_haproxy(workdir: Path) -> Iterator[int]:
    """Start HAProxy with CONFIG; yield its port; stop it by PID afterwards."""
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(CONFIG.format(port=port))
    proc = Proc([HAPROXY, "-db", "-f", str(cfg)])
    try:
        wait_for_port(port, timeout=10.0, proc=proc.proc)
        yield port
    finally:
        proc.stop(timeout=5.0)
