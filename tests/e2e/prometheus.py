"""Debian's Prometheus and promtool, run for real against real edges.

``Prometheus`` writes a config and keeps its TSDB in a directory of the test's, listens on
127.0.0.1 only and is stopped by its PID (SIGTERM, then SIGKILL), also when the test
fails. scripts/install-prometheus.sh installs both binaries; without them the tests that
need them are skipped, saying what to install.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.procs import Proc, free_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"

needs_prometheus = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
    reason="prometheus/promtool not installed (scripts/install-prometheus.sh, "
    "or apt-get install prometheus)",
)


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run promtool; (exit code, stdout + stderr)."""
    done = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60, cwd=cwd)
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


class PrometheusError(RuntimeError):
    """The HTTP API answered with an error (a query that does not parse, say)."""


class Prometheus:
    """One Prometheus server with ``config`` (a prometheus.yml as a dict)."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.storage = workdir / "tsdb"
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.proc = Proc(
            [
                PROMETHEUS,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.proc.poll() is not None:
                raise RuntimeError("prometheus exited at start:\n" + self.proc.text())
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready within {timeout}s:\n" + self.proc.text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10.0)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=20) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as err:  # 400/422: the answer names the error
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's samples (``{"metric": labels, "value": [t, "v"]}``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])


def finite(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples that hold a number: a NaN (0/0, a quantile of nothing) draws nothing."""
    return [s for s in samples if math.isfinite(float(s["value"][1]))]
