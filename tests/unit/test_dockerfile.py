"""The Dockerfile: hadolint-clean, built by the script tests run, and its HEALTHCHECK works.

No container engine runs here, so the image itself is never built by a test. What can be
checked without one is checked: the lint, that the builder stage runs exactly
scripts/install-prefix.sh (which tests/e2e/test_image_build_script.py runs for real), the
runtime stage's user, volume, ports and stop signal, and the HEALTHCHECK command, run
against a loopback HTTP server standing in for the admin listener's /readyz.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.config import EdgeConfig
from tests.e2e.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]


def stages() -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else parts[0]
            result.append(Stage(name, parts[0]))
        elif result:
            result[-1].instructions.append((keyword, args.strip()))
    return result


def stage(name: str) -> Stage:
    found = [s for s in stages() if s.name == name]
    assert found, f"no stage {name!r} in the Dockerfile"
    return found[0]


def env_of(s: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in s.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_dockerfile_is_clean_under_hadolint(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev lock: run `make setup`"
    # No pragmas and no config file (its own or a user's) may excuse a finding.
    result = subprocess.run(
        [str(hadolint), "--no-color", "--disable-ignore-pragma", "-t", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_builder_stage_runs_the_script_the_tests_run() -> None:
    builder = stage("builder")
    assert builder.all("RUN") == ["scripts/install-prefix.sh /opt/relay"]
    runtime = stages()[-1]
    assert "--from=builder /opt/relay /opt/relay" in runtime.all("COPY")
    # Nothing is built in the runtime stage: it has no compiler.
    assert not any("install-prefix" in run or "pip" in run for run in runtime.all("RUN"))


def test_both_python_stages_use_the_same_python() -> None:
    """The venv's interpreter link points at the builder's Python."""
    bases = {s.name: s.base for s in stages()}
    assert bases["builder"].split(":")[0] == "python"
    runtime = stages()[-1]
    assert runtime.base.split(":")[0] == "python"
    assert bases["builder"].split(":")[1].split("-")[0] == runtime.base.split(":")[1].split("-")[0]


def test_runtime_runs_the_edge_unprivileged_with_its_data_on_a_volume() -> None:
    runtime = stages()[-1]
    user = runtime.one("USER").split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), "a numeric non-root user"
    data_dir = env_of(runtime)["RELAY_DATA_DIR"]
    assert json.loads(runtime.one("VOLUME")) == [data_dir]
    assert runtime.one("STOPSIGNAL") == "SIGTERM"
    assert json.loads(runtime.one("ENTRYPOINT")) == ["relay"]
    assert json.loads(runtime.one("CMD")) == ["edge"]


def test_runtime_exposes_the_edges_default_ports() -> None:
    """EXPOSE documents what `relay edge` listens on without flags."""
    defaults = EdgeConfig()
    wanted = {
        str(defaults.listen_address()[1]),
        defaults.http_listen.rsplit(":", 1)[1],
        defaults.https_listen.rsplit(":", 1)[1],
        f"{defaults.tcp_ports.first}-{defaults.tcp_ports.last}",
    }
    assert set(stages()[-1].one("EXPOSE").split()) == wanted


# --- the HEALTHCHECK, run for real ---------------------------------------------------------


class Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[http.server.ThreadingHTTPServer]:
    """A stand-in for the edge's admin listener on loopback; its status is settable."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def healthcheck(url: str, **env: str) -> int:
    """Run the HEALTHCHECK command as docker would, with this interpreter for `python`."""
    args = stages()[-1].one("HEALTHCHECK").split(" CMD ", 1)[1]
    command = json.loads(args)
    assert command[0] == "python"
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, *command[1:]],
        env={**clean, "RELAY_HEALTH_URL": url, **env},
        capture_output=True,
        timeout=30,
    ).returncode


def test_healthcheck_probes_the_admin_listener_on_loopback_by_default() -> None:
    command = stages()[-1].one("HEALTHCHECK")
    assert "'http://127.0.0.1:9190/readyz'" in command


def test_healthcheck_passes_when_readyz_answers_200(
    admin: http.server.ThreadingHTTPServer,
) -> None:
    Readyz.status = 200
    assert healthcheck(f"http://127.0.0.1:{admin.server_address[1]}/readyz") == 0


def test_healthcheck_fails_when_readyz_answers_503(
    admin: http.server.ThreadingHTTPServer,
) -> None:
    Readyz.status = 503
    try:
        assert healthcheck(f"http://127.0.0.1:{admin.server_address[1]}/readyz") != 0
    finally:
        Readyz.status = 200


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert healthcheck(f"http://127.0.0.1:{free_port()}/readyz") != 0


def test_healthcheck_ignores_a_proxy_in_the_environment(
    admin: http.server.ThreadingHTTPServer,
) -> None:
    """A container's HTTP_PROXY must not send the loopback probe to the proxy."""
    Readyz.status = 200
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    url = f"http://127.0.0.1:{admin.server_address[1]}/readyz"
    assert healthcheck(url, http_proxy=dead_proxy, HTTP_PROXY=dead_proxy, no_proxy="") == 0
