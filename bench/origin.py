"""The HTTP origin every contestant forwards to: nginx from Debian, on 127.0.0.1.

Started by the harness with its own config in a temp dir (`daemon off; master_process off`, so
the one process is stopped by PID), serving `return 200 "ok"` on `/` and two static files it
generates (1 MiB and 100 MiB of pseudo-random bytes) whose SHA-256 the harness knows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from bench.procs import BenchError, Proc, free_port, run_tool, wait_listening

NGINX = "/usr/sbin/nginx"
FILES = {"1m.bin": 1 << 20, "100m.bin": 100 << 20}


def nginx_binary() -> str | None:
    if os.access(NGINX, os.X_OK):
        return NGINX
    return shutil.which("nginx")


def nginx_version() -> str:
    b = nginx_binary()
    if not b:
        return "not installed"
    r = run_tool([b, "-v"])
    return (r.stderr or r.stdout).strip() or "unknown"


class Origin:
    def __init__(self, work: Path) -> None:
        self.dir = work / "origin"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: Proc | None = None
        self.sha256: dict[str, str] = {}
        self.config = ""

    def _make_files(self) -> None:
        www = self.dir / "www"
        www.mkdir(exist_ok=True)
        for name, size in FILES.items():
            h = hashlib.sha256()
            block = os.urandom(1 << 20)  # fresh random block per file; repeated with a counter
            with (www / name).open("wb") as f:
                for i in range(size >> 20):
                    chunk = i.to_bytes(8, "little") + block[8:]
                    f.write(chunk)
                    h.update(chunk)
            self.sha256[name] = h.hexdigest()

    def start(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise BenchError("nginx not installed (apt-get install nginx-light)")
        self._make_files()
        self.port = free_port()
        d = self.dir
        self.config = f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 32768; }}
worker_rlimit_nofile 65536;
http {{
    access_log off;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fastcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096 reuseport;
        server_name _;
        location = / {{ return 200 "ok"; }}
        location /files/ {{ alias {d}/www/; }}
    }}
}}
"""
        cfg = d / "nginx.conf"
        cfg.write_text(self.config)
        self.proc = Proc("origin-nginx", [binary, "-p", str(d), "-c", str(cfg)], d)
        wait_listening(self.port, "nginx origin", 15.0, [self.proc])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
