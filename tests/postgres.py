"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, a cluster made
with ``initdb`` in a temporary directory, listening on 127.0.0.1 only, stopped by its
process id. PostgreSQL refuses to run as root; as root the server runs as the package's
``postgres`` user.

``.ci/run`` installs the package (scripts/install-test-deps.sh); where it is missing the
tests that need it are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.ports import free_port

#: How long the server may take to accept connections after it starts.
START_TIMEOUT = 30.0


def server_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres`` (the newest installed version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if server_binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (make setup installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


class PostgresServer:
    """One throw-away cluster in a directory of its own under the system's temporary
    directory (pytest's is private to root, and the server may not run as root); removed
    by :meth:`stop`. :meth:`database` makes a fresh database per test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="relay-postgres-"))
        self.data = self.root / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._as_user: dict[str, int] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid}

    def start(self) -> PostgresServer:
        binaries = server_binaries()
        assert binaries is not None
        if self._as_user:
            os.chown(self.root, self._as_user["user"], self._as_user["group"])
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "relay",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **self._as_user,  # type: ignore[call-overload]
        )
        self.port = free_port()
        log = (self.root / "server.log").open("wb")
        if self._as_user:
            os.chown(self.root / "server.log", self._as_user["user"], self._as_user["group"])
        self.proc = subprocess.Popen(
            [
                str(binaries / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as_user,  # type: ignore[call-overload]
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            try:
                psycopg.connect(self.url("postgres", driver=False), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")[-2000:]
        return "(no log)"

    def url(self, database: str, *, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://relay@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url("postgres", driver=False), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._stop_server()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_server(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT: "fast shutdown" (disconnect clients, stop). Then by force.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # The server's own process group (start_new_session): its backends too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def dump(url: str) -> bytes:
    """Everything a database at ``url`` holds, as ``pg_dump`` writes it."""
    binaries = server_binaries()
    assert binaries is not None
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return subprocess.run(
        [str(binaries / "pg_dump"), "--dbname", plain],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
