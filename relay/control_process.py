"""`relay control`: the control plane as a process of its own, apart from any edge.

It serves the REST API (relay/control/api) — to operators, and to edges started with
``--control-url`` (relay/control/for_edge.py) — plus ``/healthz``, ``/readyz`` and
``/metrics``, on one listener: loopback by default, HTTPS with ``--tls-cert/--tls-key``
for edges on other hosts. The store and the pepper stay here; an edge never sees them.
Live state (sessions, endpoints, certificates) is on the edges: those routes answer
RLY_601 here, saying so.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.edge.auth_guard import AuthGuard, source_of

if TYPE_CHECKING:
    from relay.control.api import ControlPlane

log = logging.getLogger("relay.control")

DEFAULT_LISTEN = "127.0.0.1:9191"
#: Threads the API's store calls run on for PostgreSQL: every edge's agents are verified
#: here, so one slow call must not queue the rest behind it.
STORE_THREADS = 4


@dataclass(frozen=True)
class ControlConfig:
    data_dir: Path
    store: str = ""
    listen: str = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The edges' base domains (ControlPlane.shared_domains).
    base_domains: tuple[str, ...] = ()
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    auth_block_time: float = 300.0


class _Guard:
    """Failed API keys per source (relay/edge/auth_guard.py), audited when a source is
    refused."""

    def __init__(self, config: ControlConfig, plane: ControlPlane) -> None:
        self.config = config
        self.plane = plane
        self.guard = AuthGuard(
            config.auth_failure_limit, config.auth_failure_window, config.auth_block_time
        )
        self._writes: set[asyncio.Task[None]] = set()

    def blocked_for(self, host: str) -> float:
        return self.guard.blocked_for(source_of(host))

    def failed(self, host: str) -> None:
        source = source_of(host)
        if not self.guard.failed(source):
            return
        log.warning("API requests from %s refused for %gs", source, self.config.auth_block_time)
        detail = self.guard.block_detail(source)
        # Written off the loop like every store call; the refusal does not wait for it.
        task = asyncio.get_running_loop().create_task(self._record_block(host, detail))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record_block(self, host: str, detail: dict[str, Any]) -> None:
        store = self.plane.store
        try:
            await self.plane.ask(
                lambda: store.audit.append(f"api@{host}", "auth.block", "", detail)
            )
        except Exception as exc:
            log.warning("could not record the block of %s in the audit log: %s", host, exc)


async def serve(config: ControlConfig, stopped: asyncio.Event) -> None:
    """Serve until ``stopped`` is set."""
    # Imported here, not at the top: `relay --help` and the agent's commands load this
    # module with the CLI and must not pay for the server's imports.
    from relay.admin import AdminServer
    from relay.config import parse_host_port
    from relay.control.api import ControlPlane, create_app
    from relay.control.tokens import load_or_create_pepper
    from relay.edge.server import open_store, prepare_data_dir
    from relay.metrics import Metrics

    prepare_data_dir(config.data_dir)
    store = open_store(config.data_dir, config.store)
    plane = ControlPlane(
        store,
        load_or_create_pepper(config.data_dir),
        shared_domains=config.base_domains,
        store_threads=STORE_THREADS,
    )
    plane.guard = _Guard(config, plane)
    if not config.base_domains:
        log.warning(
            "no --base-domain: a member's key may reserve a wildcard over an edge's whole "
            "base domain (*.<base>) and so take every other account's names there; give "
            "the edges' base domains"
        )
    plane.calls.start(asyncio.get_running_loop())
    metrics = Metrics("control")

    def ready() -> tuple[bool, str]:
        try:
            plane.calls.ping()
        except Exception as exc:
            return False, f"store unreachable: {exc}"
        return True, ""

    def status() -> dict[str, Any]:
        return {"role": "control", "version": __version__, "ready": ready()[0]}

    app = create_app(plane)  # built at start: serving the API is this process's job
    server = AdminServer(metrics, ready, status, api=lambda: app)
    host, port = parse_host_port(config.listen, what="listen")
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        # A plain HTTPS server context (no ALPN of relay's own): clients are HTTP clients.
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    try:
        await server.start(host, port, flag="--listen", ssl_context=tls)
        assert server.address is not None
        scheme = "https" if tls is not None else "http"
        log.info("control plane listening on %s://%s:%d", scheme, *server.address)
        print(
            f"control plane serving on {scheme}://{server.address[0]}:{server.address[1]}",
            flush=True,
        )
        await stopped.wait()
    finally:
        server.close()
        await plane.calls.close()
        store.close()
